use super::*;
use std::io::Write;

fn key_file(dir: &tempfile::TempDir, body: &str) -> PathBuf {
    let path = dir.path().join("keys.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(body.as_bytes()).unwrap();
    path
}

fn entry(id: &str, secret: &str, scopes: &str, extra: &str) -> String {
    format!(
        "[[key]]\nid = \"{id}\"\nsha256 = \"{}\"\nscopes = [{scopes}]\n{extra}\n",
        hex::encode(hash_secret(secret))
    )
}

fn closed(body: &str) -> (tempfile::TempDir, Access) {
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(&dir, body);
    let opts = AccessOptions {
        key_file: Some(path),
        open_health: true,
        default_rate: None,
    };
    let access = Access::new(opts, |m| m == "resnet").unwrap();
    (dir, access)
}

fn bearer_of(secret: &str) -> String {
    format!("Bearer {secret}")
}

fn kind(r: Result<(), KilnError>) -> Option<ErrorKind> {
    r.err().map(|e| e.kind)
}

#[test]
fn an_open_server_lets_everyone_in() {
    let access = Access::new(AccessOptions::default(), |_| true).unwrap();
    let c = access.identify(Credentials::default());
    assert_eq!(c.name(), "anonymous");
    for scope in [Scope::Infer, Scope::Admin, Scope::Metrics] {
        assert_eq!(kind(access.permit(&c, scope, Target::AllModels)), None);
    }
}

#[test]
fn keys_are_checked_for_scope_and_model() {
    let (_dir, access) = closed(&format!(
        "{}{}",
        entry("app", "s-app", "\"infer\"", "models = [\"resnet\"]"),
        entry("ops", "s-ops", "\"admin\", \"metrics\"", "")
    ));
    let app = access.identify(Credentials {
        authorization: Some(&bearer_of("s-app")),
        ..Default::default()
    });
    assert_eq!(app.name(), "app");
    assert_eq!(
        kind(access.permit(&app, Scope::Infer, Target::Model("resnet"))),
        None
    );
    assert_eq!(
        kind(access.permit(&app, Scope::Infer, Target::Server)),
        None
    );
    let denied = access
        .permit(&app, Scope::Infer, Target::Model("bert"))
        .unwrap_err();
    assert_eq!(denied.kind, ErrorKind::PermissionDenied);
    assert!(denied.message.contains("'bert'"), "{}", denied.message);
    assert_eq!(
        kind(access.permit(&app, Scope::Admin, Target::Model("resnet"))),
        Some(ErrorKind::PermissionDenied)
    );
    assert_eq!(
        kind(access.permit(&app, Scope::Infer, Target::AllModels)),
        Some(ErrorKind::PermissionDenied)
    );
    let ops = access.identify(Credentials {
        authorization: Some("bearer  s-ops "),
        ..Default::default()
    });
    assert_eq!(
        kind(access.permit(&ops, Scope::Admin, Target::AllModels)),
        None
    );
    assert_eq!(
        kind(access.permit(&ops, Scope::Infer, Target::Model("resnet"))),
        Some(ErrorKind::PermissionDenied)
    );
}

#[test]
fn missing_wrong_and_malformed_credentials_get_the_same_answer() {
    let (_dir, access) = closed(&entry("app", "s-app", "\"infer\"", ""));
    let answers: Vec<String> = [
        None,
        Some("Bearer nope"),
        Some("Basic czphcHA="),
        Some("s-app"),
        Some("Bearer "),
    ]
    .into_iter()
    .map(|authorization| {
        let c = access.identify(Credentials {
            authorization,
            ..Default::default()
        });
        let e = access.permit(&c, Scope::Infer, Target::Server).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthenticated);
        assert_eq!(
            kind(access.authenticated(&c, Scope::Infer)),
            Some(ErrorKind::Unauthenticated)
        );
        e.message
    })
    .collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    // Health stays open for probes.
    let nobody = access.identify(Credentials::default());
    assert_eq!(
        kind(access.permit(&nobody, Scope::Health, Target::Server)),
        None
    );
    assert_eq!(kind(access.authenticated(&nobody, Scope::Health)), None);
}

#[test]
fn closed_health_needs_any_key() {
    let dir = tempfile::tempdir().unwrap();
    let opts = AccessOptions {
        key_file: Some(key_file(&dir, &entry("m", "s-m", "\"metrics\"", ""))),
        open_health: false,
        default_rate: None,
    };
    let access = Access::new(opts, |_| true).unwrap();
    let nobody = access.identify(Credentials::default());
    assert_eq!(
        kind(access.permit(&nobody, Scope::Health, Target::Server)),
        Some(ErrorKind::Unauthenticated)
    );
    let m = access.identify(Credentials {
        authorization: Some("Bearer s-m"),
        ..Default::default()
    });
    assert_eq!(kind(access.permit(&m, Scope::Health, Target::Server)), None);
}

#[test]
fn certificate_subjects_name_keys() {
    let (_dir, access) =
        closed("[[key]]\nid = \"lt\"\nsubject = \"CN=loadtest\"\nscopes = [\"infer\"]\n");
    let c = access.identify(Credentials {
        subject: Some("CN=loadtest"),
        ..Default::default()
    });
    assert_eq!(c.name(), "lt");
    assert_eq!(
        kind(access.permit(&c, Scope::Infer, Target::Model("x"))),
        None
    );
    let other = access.identify(Credentials {
        subject: Some("CN=someone"),
        ..Default::default()
    });
    assert_eq!(
        kind(access.permit(&other, Scope::Infer, Target::Server)),
        Some(ErrorKind::Unauthenticated)
    );
    // A wrong bearer key does not fall back to the certificate.
    let both = access.identify(Credentials {
        authorization: Some("Bearer wrong"),
        subject: Some("CN=loadtest"),
        ..Default::default()
    });
    assert_eq!(
        kind(access.permit(&both, Scope::Infer, Target::Server)),
        Some(ErrorKind::Unauthenticated)
    );
}

#[test]
fn a_reload_revokes_and_a_bad_file_keeps_the_keys_in_force() {
    let (dir, access) = closed(&format!(
        "{}{}",
        entry("a", "s-a", "\"infer\"", ""),
        entry("b", "s-b", "\"infer\"", "")
    ));
    let who = |s: &str| {
        let auth = bearer_of(s);
        let c = access.identify(Credentials {
            authorization: Some(&auth),
            ..Default::default()
        });
        kind(access.permit(&c, Scope::Infer, Target::Server))
    };
    assert_eq!((who("s-a"), who("s-b")), (None, None));
    assert_eq!(access.reload().unwrap(), Reloaded::Unchanged);
    key_file(&dir, &entry("a", "s-a", "\"infer\"", ""));
    assert_eq!(
        access.reload().unwrap(),
        Reloaded::Changed {
            before: vec!["a".into(), "b".into()],
            after: vec!["a".into()]
        }
    );
    assert_eq!(
        (who("s-a"), who("s-b")),
        (None, Some(ErrorKind::Unauthenticated))
    );
    for bad in ["[[key]]\nid = 3\n", ""] {
        std::fs::write(dir.path().join("keys.toml"), bad).unwrap();
        if bad.is_empty() {
            // An empty file is valid: no keys, everyone refused (never open).
            access.reload().unwrap();
            assert_eq!(who("s-a"), Some(ErrorKind::Unauthenticated));
        } else {
            assert!(access.reload().is_err());
            assert_eq!(who("s-a"), None, "the previous keys stay in force");
        }
    }
    std::fs::remove_file(dir.path().join("keys.toml")).unwrap();
    assert!(matches!(access.reload(), Err(KeyFileError::Read { .. })));
    assert_eq!(who("s-a"), Some(ErrorKind::Unauthenticated));
}

#[test]
fn rates_are_per_key_and_survive_a_reload() {
    let (dir, access) = closed(&format!(
        "{}{}",
        entry("slow", "s-slow", "\"infer\"", "rate = 0.01\nburst = 2"),
        entry("free", "s-free", "\"infer\"", "")
    ));
    let call = |s: &str, model: &str| {
        let auth = bearer_of(s);
        let c = access.identify(Credentials {
            authorization: Some(&auth),
            ..Default::default()
        });
        access.permit(&c, Scope::Infer, Target::Model(model)).err()
    };
    assert!(call("s-slow", "resnet").is_none() && call("s-slow", "resnet").is_none());
    let e = call("s-slow", "resnet").unwrap();
    assert!(
        matches!(e.kind, ErrorKind::RateLimited { retry_after_secs } if (90..=100).contains(&retry_after_secs)),
        "{e:?}"
    );
    for _ in 0..100 {
        assert!(
            call("s-free", "resnet").is_none(),
            "another key is unaffected"
        );
    }
    // A reload that leaves the key's rate alone keeps its (empty) bucket.
    let text = std::fs::read_to_string(dir.path().join("keys.toml")).unwrap();
    key_file(&dir, &format!("{text}\n# touched\n"));
    assert!(matches!(access.reload(), Ok(Reloaded::Changed { .. })));
    assert!(call("s-slow", "resnet").is_some());
}

#[test]
fn an_open_server_limits_each_address() {
    let opts = AccessOptions {
        key_file: None,
        open_health: true,
        default_rate: Some(keys::rate(0.01, Some(1)).unwrap()),
    };
    let access = Access::new(opts, |_| true).unwrap();
    let from = |a: [u8; 4]| {
        access.identify(Credentials {
            addr: Some(IpAddr::from(a)),
            ..Default::default()
        })
    };
    let a = from([10, 0, 0, 1]);
    assert!(access.permit(&a, Scope::Infer, Target::Server).is_ok());
    assert!(access.permit(&a, Scope::Infer, Target::Server).is_err());
    assert!(
        access.permit(&a, Scope::Health, Target::Server).is_ok(),
        "probes are not limited"
    );
    assert!(access
        .permit(&from([10, 0, 0, 2]), Scope::Infer, Target::Server)
        .is_ok());
}

#[test]
fn bearer_values_parse() {
    assert_eq!(bearer("Bearer abc"), Some("abc"));
    assert_eq!(bearer("BEARER  abc "), Some("abc"));
    assert_eq!(bearer("Basic abc"), None);
    assert_eq!(bearer("Bearer"), None);
    assert_eq!(bearer("abc"), None);
}
