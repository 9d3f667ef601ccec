//! Drives a target for one phase (warm-up or measurement): a closed loop of
//! workers, or an open loop that sends on schedule, until the phase's end.

use crate::schedule::{Arrivals, Load};
use crate::stats::{Latency, Recorder};
use crate::target::Target;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// When a phase ends: after a time, or after a number of requests.
#[derive(Debug, Clone, Copy)]
pub enum End {
    After(Duration),
    Requests(u64),
}

/// Counts shared with the progress line.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub failed: AtomicU64,
}

/// What one phase measured.
pub struct Phase {
    pub recorder: Recorder,
    pub not_sent: u64,
    /// Open loop: how late requests were sent after their intended time.
    pub send_lag: Option<Latency>,
    pub elapsed: Duration,
}

pub async fn phase(
    target: &Target,
    load: Load,
    end: End,
    max_inflight: usize,
    seed: u64,
    progress: Arc<Progress>,
) -> Phase {
    let start = Instant::now();
    let (recorder, not_sent, send_lag) = match load {
        Load::Closed { concurrency } => {
            let r = closed(target, concurrency, end, start, progress).await;
            (r, 0, None)
        }
        Load::Open { rate, poisson } => {
            let arrivals = Arrivals::new(rate, poisson, seed);
            open(target, arrivals, end, start, max_inflight, progress).await
        }
    };
    Phase {
        recorder,
        not_sent,
        send_lag,
        elapsed: start.elapsed(),
    }
}

fn record(r: &mut Recorder, p: &Progress, result: Result<(), String>, latency: Duration) {
    match result {
        Ok(()) => r.ok(latency),
        Err(status) => {
            r.error(status);
            p.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    p.done.fetch_add(1, Ordering::Relaxed);
}

/// `concurrency` workers, each sending its next request once its previous one
/// is answered; latency from each send.
async fn closed(
    target: &Target,
    concurrency: usize,
    end: End,
    start: Instant,
    progress: Arc<Progress>,
) -> Recorder {
    let issued = Arc::new(AtomicU64::new(0));
    // One recorder for all workers (a histogram is a few hundred KB: one per
    // worker would grow with the concurrency); uncontended on the default
    // single-threaded runtime.
    let shared = Arc::new(Mutex::new(Recorder::default()));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (target, issued, progress) = (target.clone(), issued.clone(), progress.clone());
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    let over = match end {
                        End::After(d) => start.elapsed() >= d,
                        End::Requests(total) => n >= total,
                    };
                    if over {
                        return;
                    }
                    let sent = Instant::now();
                    let result = target.call(n).await;
                    let latency = sent.elapsed();
                    let mut r = shared.lock().unwrap_or_else(|p| p.into_inner());
                    record(&mut r, &progress, result, latency);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let r = shared.lock().unwrap_or_else(|p| p.into_inner());
    r.clone()
}

/// Sends at each intended time whether answers keep up or not; latency from the
/// intended time. At most `max_inflight` outstanding: a request due when that
/// many are is not sent, and counted.
async fn open(
    target: &Target,
    arrivals: Arrivals,
    end: End,
    start: Instant,
    max_inflight: usize,
    progress: Arc<Progress>,
) -> (Recorder, u64, Option<Latency>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Result<(), String>, Duration)>();
    let inflight = Arc::new(AtomicU64::new(0));
    let collector = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut r = Recorder::default();
            while let Some((result, latency)) = rx.recv().await {
                record(&mut r, &progress, result, latency);
            }
            r
        })
    };
    // The schedule is kept by a thread of its own: tokio's timer has a 1 ms
    // grain, which would send gaps shorter than that in bursts and count the
    // client's lateness as the server's. The thread sleeps to each due time
    // (nanosleep, with the timer slack cut to 1 us) and hands the request over.
    let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, std::time::Instant)>();
    let origin = start.into_std();
    let dispatcher = std::thread::Builder::new()
        .name("kiln-bench-schedule".into())
        .spawn(move || {
            // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
            for (n, at) in arrivals.enumerate() {
                let n = n as u64;
                let over = match end {
                    End::After(d) => at >= d,
                    End::Requests(total) => n >= total,
                };
                if over {
                    return;
                }
                let due = origin + at;
                let now = std::time::Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if due_tx.send((n, due)).is_err() {
                    return;
                }
            }
        });
    let mut not_sent = 0;
    // How late each request was sent after its intended time.
    let mut lag = Recorder::default();
    while let Some((n, due)) = due_rx.recv().await {
        lag.ok(due.elapsed());
        if inflight.load(Ordering::Relaxed) >= max_inflight as u64 {
            not_sent += 1;
            continue;
        }
        inflight.fetch_add(1, Ordering::Relaxed);
        let (target, tx, inflight) = (target.clone(), tx.clone(), inflight.clone());
        tokio::spawn(async move {
            let result = target.call(n).await;
            let _ = tx.send((result, due.elapsed()));
            inflight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    if let Ok(thread) = dispatcher {
        let _ = thread.join();
    }
    drop(tx);
    let mut r = collector.await.unwrap_or_default();
    for _ in 0..not_sent {
        r.error("not sent: --max-inflight outstanding".into());
    }
    (r, not_sent, Some(lag.latency()))
}
