//! The core in-process: routing, the canary split, hot swap with requests in
//! flight, drain, rollback and load errors, on a fake runtime and an in-memory
//! repository (see `support/`). Each runs in milliseconds.

mod support;

use kiln_core::audit::Actor;
use kiln_core::traffic::policy::TrafficUpdate;
use kiln_core::{Core, ErrorKind, Version};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::{core, infer, request, Behaviour, FakeRuntime, MemoryRepository};

fn setup(versions: &[u64], config: &str) -> (Arc<MemoryRepository>, FakeRuntime, kiln_core::Core) {
    let repo = Arc::new(MemoryRepository::default());
    let runtime = FakeRuntime::default();
    for &v in versions {
        repo.put("m", v);
        runtime.set(
            "m",
            v,
            Behaviour {
                add: v as f32,
                ..Default::default()
            },
        );
    }
    repo.config("m", config);
    let core = core(&repo, &runtime);
    (repo, runtime, core)
}

/// Model `m` version 1 loaded, taking 40 ms a request.
async fn slow_v1() -> (Arc<MemoryRepository>, FakeRuntime, Core) {
    let (repo, rt, core) = setup(&[1], "");
    let slow = Behaviour {
        add: 1.0,
        delay: Duration::from_millis(40),
        fail: false,
    };
    rt.set("m", 1, slow);
    core.load_repository().await.unwrap();
    (repo, rt, core)
}

type Answer = Result<(u64, f32), kiln_core::KilnError>;

/// `n` unpinned requests to `m`, running.
fn spawn_requests(core: &Core, n: usize) -> Vec<tokio::task::JoinHandle<Answer>> {
    (0..n)
        .map(|_| {
            let core = core.clone();
            tokio::spawn(async move { infer(&core, request("m", None, 0.0)).await })
        })
        .collect()
}

#[tokio::test]
async fn routes_by_version_label_and_policy() {
    let (_repo, _rt, core) = setup(
        &[1, 2, 3],
        "version_policy = { all = true }\n[traffic]\nstable = 1\ncanary = 2\ncanary_percent = 0\n",
    );
    core.load_repository().await.unwrap();
    assert!(core.is_ready());
    assert_eq!(core.versions("m"), [Version(1), Version(2), Version(3)]);
    // No share: every unpinned request goes to stable; pins and labels win.
    for _ in 0..50 {
        assert_eq!(
            infer(&core, request("m", None, 0.0)).await.unwrap(),
            (1, 1.0)
        );
    }
    assert_eq!(
        infer(&core, request("m", Some("3"), 0.0)).await.unwrap(),
        (3, 3.0)
    );
    assert_eq!(
        infer(&core, request("m", Some("canary"), 0.0))
            .await
            .unwrap()
            .0,
        2
    );
    assert_eq!(
        infer(&core, request("m", Some("stable"), 0.0))
            .await
            .unwrap()
            .0,
        1
    );
    assert_eq!(core.model("m", None).unwrap().version, Version(1));
    for (version, kind) in [("9", ErrorKind::NotFound), ("x", ErrorKind::NotFound)] {
        let e = infer(&core, request("m", Some(version), 0.0))
            .await
            .unwrap_err();
        assert_eq!(e.kind, kind, "{version}: {e}");
    }
    let e = infer(&core, request("nope", None, 0.0)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    // Bad input is the client's error.
    let mut bad = request("m", None, 0.0);
    bad.inputs[0].name = "z".into();
    assert_eq!(
        infer(&core, bad).await.unwrap_err().kind,
        ErrorKind::InvalidArgument
    );
}

#[tokio::test]
async fn the_canary_takes_its_share_and_routing_keys_stick() {
    let (_repo, _rt, core) = setup(
        &[1, 2],
        "version_policy = { all = true }\n[traffic]\nstable = 1\ncanary = 2\ncanary_percent = 30\n",
    );
    core.load_repository().await.unwrap();
    let n = 2000;
    let mut to_canary = 0;
    for _ in 0..n {
        if infer(&core, request("m", None, 0.0)).await.unwrap().0 == 2 {
            to_canary += 1;
        }
    }
    assert!(
        (450..750).contains(&to_canary),
        "{to_canary} of {n} to the canary"
    );
    for k in 0..20 {
        let key = format!("user-{k}");
        let mut req = request("m", None, 0.0);
        req.routing_key = Some(key.clone());
        let first = infer(&core, req.clone()).await.unwrap().0;
        for _ in 0..10 {
            assert_eq!(infer(&core, req.clone()).await.unwrap().0, first, "{key}");
        }
    }
    // Through the API: all of it to the canary.
    let update = TrafficUpdate {
        canary_percent: Some(100.0),
        ..Default::default()
    };
    let view = core.set_traffic(&Actor::kiln(), "m", &update).unwrap();
    assert_eq!(
        (view.stable, view.canary),
        (Some(Version(1)), Some(Version(2)))
    );
    for _ in 0..50 {
        assert_eq!(infer(&core, request("m", None, 0.0)).await.unwrap().0, 2);
    }
    let bad = TrafficUpdate {
        canary: Some(Some(Version(7))),
        ..Default::default()
    };
    assert_eq!(
        core.set_traffic(&Actor::kiln(), "m", &bad)
            .unwrap_err()
            .kind,
        ErrorKind::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swap_drops_no_request_in_flight() {
    let (repo, rt, core) = slow_v1().await;
    assert_eq!(rt.alive.load(Ordering::SeqCst), 1);
    let in_flight = spawn_requests(&core, 8);
    tokio::time::sleep(Duration::from_millis(10)).await;
    repo.put("m", 2);
    rt.set(
        "m",
        2,
        Behaviour {
            add: 2.0,
            ..Default::default()
        },
    );
    let report = core.load(&Actor::kiln(), "m", None).await.unwrap();
    assert_eq!(
        (report.serving, report.loaded, report.retired),
        (vec![Version(2)], vec![Version(2)], vec![Version(1)])
    );
    // New requests go to version 2 at once ...
    assert_eq!(
        infer(&core, request("m", None, 0.0)).await.unwrap(),
        (2, 2.0)
    );
    // ... while those admitted before the swap finish on version 1.
    for r in in_flight {
        assert_eq!(r.await.unwrap().unwrap(), (1, 1.0));
    }
    // Version 1 is released once its last request ended.
    for _ in 0..100 {
        if rt.alive.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(rt.alive.load(Ordering::SeqCst), 1, "version 1 still loaded");
    // An unchanged repository reloads nothing.
    let again = core.load(&Actor::kiln(), "m", None).await.unwrap();
    assert!(again.loaded.is_empty() && again.retired.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_finishes_admitted_requests_and_refuses_new_ones() {
    let (_repo, _rt, core) = slow_v1().await;
    let admitted = spawn_requests(&core, 3);
    while core.in_flight() < 3 {
        tokio::task::yield_now().await;
    }
    core.begin_drain();
    assert!(!core.is_ready());
    let e = infer(&core, request("m", None, 0.0)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    tokio::time::timeout(Duration::from_secs(5), core.drained())
        .await
        .expect("the drain finished");
    assert_eq!(core.in_flight(), 0);
    for r in admitted {
        assert_eq!(r.await.unwrap().unwrap(), (1, 1.0));
    }
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_and_bad_input_never_counts() {
    let (_repo, rt, core) = setup(
        &[1, 2],
        "version_policy = { all = true }\n[traffic]\nstable = 1\ncanary = 2\ncanary_percent = 50\n[rollback]\nmin_requests = 10\nwindow_secs = 60\n",
    );
    core.load_repository().await.unwrap();
    // The canary is fed invalid requests only: the client's fault, never the canary's.
    for _ in 0..100 {
        let mut bad = request("m", Some("canary"), 0.0);
        bad.inputs[0].name = "z".into();
        let _ = infer(&core, bad).await;
        let _ = infer(&core, request("m", Some("stable"), 0.0)).await;
    }
    core.watch_rollbacks();
    assert!(core.traffic("m").unwrap().state.rolled_back.is_none());
    // Now the canary fails for real.
    rt.set(
        "m",
        2,
        Behaviour {
            fail: true,
            ..Default::default()
        },
    );
    for _ in 0..200 {
        let _ = infer(&core, request("m", None, 0.0)).await;
    }
    core.watch_rollbacks();
    let view = core.traffic("m").unwrap();
    let rb = view.state.rolled_back.expect("the canary was rolled back");
    assert_eq!(rb.version, Version(2));
    assert!(rb.reason.contains("error rate"), "{}", rb.reason);
    assert_eq!(view.state.policy.canary_percent, 0.0);
    for _ in 0..50 {
        assert_eq!(infer(&core, request("m", None, 0.0)).await.unwrap().0, 1);
    }
    let index = core.index(false).await.unwrap();
    let line = index
        .iter()
        .find(|l| l.version == Some(Version(2)))
        .unwrap();
    assert!(
        line.reason.starts_with("canary rolled back"),
        "{}",
        line.reason
    );
}

#[tokio::test]
async fn load_errors_tell_the_config_from_the_runtime() {
    let (repo, _rt, core) = setup(&[1], "max_batch = 3\n");
    core.load_repository().await.unwrap();
    // A bad config.toml: the operator's mistake, and nothing serves.
    let e = core.load(&Actor::kiln(), "m", None).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.message.contains("max_batch"), "{e}");
    assert!(!core.is_ready());
    assert_eq!(
        core.load(&Actor::kiln(), "absent", None)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
    assert_eq!(
        core.unload(&Actor::kiln(), "absent")
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
    // Fixed, it serves; a broken new version leaves it serving.
    repo.config("m", "");
    core.load(&Actor::kiln(), "m", None).await.unwrap();
    repo.put_broken("m", 2);
    let e = core.load(&Actor::kiln(), "m", None).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("version 2"), "{e}");
    assert_eq!(infer(&core, request("m", None, 0.0)).await.unwrap().0, 1);
    // A runtime that cannot run here is the server's failure.
    let runtime = FakeRuntime {
        unavailable: Some("no library".into()),
        ..Default::default()
    };
    let other = support::core(&repo, &runtime);
    let e = other.load(&Actor::kiln(), "m", None).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal, "{e}");
    assert!(e.message.contains("no library"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_is_rolled_back_on_p99() {
    let (_repo, rt, core) = setup(
        &[1, 2],
        "version_policy = { all = true }\n[traffic]\nstable = 1\ncanary = 2\ncanary_percent = 30\n[rollback]\nmin_requests = 20\nwindow_secs = 60\nmax_p99_ratio = 3.0\n",
    );
    let slow = Behaviour {
        add: 2.0,
        delay: Duration::from_millis(5),
        fail: false,
    };
    rt.set("m", 2, slow);
    core.load_repository().await.unwrap();
    for _ in 0..200 {
        infer(&core, request("m", None, 0.0)).await.unwrap();
    }
    core.watch_rollbacks();
    let rb = core.traffic("m").unwrap().state.rolled_back;
    let rb = rb.expect("the slow canary was rolled back");
    assert!(rb.reason.contains("p99"), "{}", rb.reason);
}
