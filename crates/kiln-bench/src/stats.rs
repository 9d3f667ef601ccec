//! What a run measured: latencies in an HDR histogram (microseconds, 3
//! significant digits, up to an hour), errors by status, and the report made of
//! them.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// A phase's answers.
#[derive(Clone)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    pub ok: u64,
    /// Failed requests by status (`grpc UNAVAILABLE`, `http 503`, `transport`).
    pub errors: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            // 1 µs to 1 hour at 3 significant digits: a fixed ~200 KB per recorder.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl Recorder {
    pub fn ok(&mut self, latency: Duration) {
        self.ok += 1;
        self.latency_us
            .saturating_record(latency.as_micros().max(1) as u64);
    }

    pub fn error(&mut self, status: String) {
        *self.errors.entry(status).or_default() += 1;
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn latency(&self) -> Latency {
        let h = &self.latency_us;
        let q = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        Latency {
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
            p50_us: q(0.50),
            p90_us: q(0.90),
            p95_us: q(0.95),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
        }
    }
}

/// Latency of the successful requests, microseconds (each within 0.1%).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// CPU time spent over the measured window, and per successful request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cpu {
    pub seconds: f64,
    pub us_per_request: f64,
}

impl Cpu {
    pub fn new(seconds: f64, requests: u64) -> Self {
        Cpu {
            seconds,
            us_per_request: if requests == 0 {
                0.0
            } else {
                seconds * 1e6 / requests as f64
            },
        }
    }
}

/// The report of a run's measured window (warm-up excluded).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub protocol: String,
    pub model: String,
    pub load: String,
    pub seconds: f64,
    pub requests: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub throughput_per_sec: f64,
    pub latency: Latency,
    /// Open loop: requests not sent because `--max-inflight` were outstanding
    /// (the client could not keep the schedule; they count as failed).
    pub not_sent: u64,
    /// Open loop: how late the client sent, after each intended time.
    pub send_lag: Option<Latency>,
    pub client_cpu: Cpu,
    /// The server's whole process tree, when its pid was given.
    pub server_cpu: Option<Cpu>,
}

impl Report {
    /// A summary in perf_analyzer's words, for eyes used to it.
    pub fn summary(&self) -> String {
        let l = &self.latency;
        let mut s = format!(
            "*** Measurement Settings ***\n  Target: {} ({}), model {}\n  Load: {}\n  Measured: {:.2} s\n\n\
             Client:\n    Request count: {}\n    Throughput: {:.1} infer/sec\n    Avg latency: {:.0} usec\n    \
             p50 latency: {} usec\n    p90 latency: {} usec\n    p95 latency: {} usec\n    p99 latency: {} usec\n    \
             p99.9 latency: {} usec\n    max latency: {} usec\n    Failed: {}",
            self.target,
            self.protocol,
            self.model,
            self.load,
            self.seconds,
            self.requests,
            self.throughput_per_sec,
            l.mean_us,
            l.p50_us,
            l.p90_us,
            l.p95_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            self.failed,
        );
        for (status, n) in &self.errors {
            s.push_str(&format!("\n      {status}: {n}"));
        }
        if let Some(lag) = &self.send_lag {
            s.push_str(&format!(
                "\n    Send lag: p50 {} usec, p99 {} usec, max {} usec",
                lag.p50_us, lag.p99_us, lag.max_us
            ));
        }
        s.push_str(&format!(
            "\n    Client CPU: {:.1} usec/infer",
            self.client_cpu.us_per_request
        ));
        if let Some(c) = &self.server_cpu {
            s.push_str(&format!(
                "\nServer:\n    CPU: {:.1} usec/infer ({:.2} s)",
                c.us_per_request, c.seconds
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_latencies_within_their_precision() {
        let mut a = Recorder::default();
        for us in 1..=1000u64 {
            a.ok(Duration::from_micros(us));
        }
        a.error("grpc UNAVAILABLE".into());
        a.error("grpc UNAVAILABLE".into());
        a.error("http 503".into());
        assert_eq!(a.ok, 1000);
        assert_eq!(a.failed(), 3);
        assert_eq!(a.errors["grpc UNAVAILABLE"], 2);
        let l = a.latency();
        let near =
            |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.001 + 1.0;
        assert!(near(l.p50_us, 500), "{l:?}");
        assert!(near(l.p90_us, 900), "{l:?}");
        assert!(near(l.p99_us, 990), "{l:?}");
        assert!(near(l.p999_us, 999), "{l:?}");
        assert!(near(l.max_us, 1000), "{l:?}");
        assert!((l.mean_us - 500.5).abs() < 1.0, "{l:?}");
        // Sub-microsecond answers count as 1 µs, not as nothing.
        let mut fast = Recorder::default();
        fast.ok(Duration::from_nanos(200));
        assert_eq!(fast.latency().max_us, 1);
        assert_eq!(Recorder::default().latency().p99_us, 0);
    }

    #[test]
    fn cpu_per_request_divides_by_successes() {
        assert_eq!(Cpu::new(0.5, 10_000).us_per_request, 50.0);
        assert_eq!(Cpu::new(0.5, 0).us_per_request, 0.0);
    }
}
