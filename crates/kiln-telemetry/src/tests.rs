use super::*;

/// Runs `f` with a subscriber that records every span (no exporter: whether a
/// span exists is what these tests look at).
fn with_spans<T>(f: impl FnOnce() -> T) -> T {
    tracing::subscriber::with_default(tracing_subscriber::registry(), f)
}

const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const NOT_SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

fn traced(t: &Telemetry, traceparent: Option<&'static str>) -> bool {
    with_spans(|| {
        t.begin("http", "m", |k| traceparent.filter(|_| k == "traceparent"))
            .traced()
    })
}

#[test]
fn a_callers_sampling_decision_is_followed() {
    let never = Telemetry::new(true, 0.0, 0.0);
    assert!(
        traced(&never, Some(SAMPLED)),
        "a sampled parent is honoured at ratio 0"
    );
    let always = Telemetry::new(true, 1.0, 0.0);
    assert!(
        !traced(&always, Some(NOT_SAMPLED)),
        "an unsampled parent is honoured at ratio 1"
    );
    // A malformed traceparent is no parent: the ratio decides.
    assert!(traced(&always, Some("00-zz-00f067aa0ba902b7-01")));
    assert!(!traced(&never, Some("garbage")));
    assert!(traced(&always, None));
    assert!(!traced(&never, None));
}

#[test]
fn nothing_is_traced_without_an_exporter() {
    let off = Telemetry::off();
    assert!(!traced(&off, Some(SAMPLED)));
    let scope = with_spans(|| off.begin("grpc", "m", |_| None));
    assert!(scope.decode().is_disabled() && scope.encode().is_disabled());
}

#[test]
fn the_ratio_is_a_probability() {
    let t = Telemetry::new(true, 0.3, 0.0);
    let n = 4000;
    let hits = (0..n).filter(|_| traced(&t, None)).count() as f64;
    // Binomial(4000, 0.3): mean 1200, sd 29; 5 sd either side.
    assert!((1055.0..=1345.0).contains(&hits), "{hits} of {n} traced");
}

#[test]
fn request_ids_are_the_callers_or_new() {
    assert_eq!(request_id(Some("abc")), "abc");
    let a = request_id(Some(""));
    let b = request_id(None);
    assert_eq!(a.len(), 32);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
    let long = "é".repeat(200);
    let cut = request_id(Some(&long));
    assert!(cut.len() <= MAX_REQUEST_ID_BYTES && long.starts_with(&cut) && !cut.is_empty());
}
