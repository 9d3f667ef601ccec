//! What the access control costs a request, in-process: identifying a caller by
//! its bearer key (SHA-256, looked up among the stored hashes and the match
//! confirmed in constant time) or by its certificate's subject, then permitting it (scope, model
//! list, rate bucket), with 1 and 100 keys in the file.
//!   cargo bench -p kiln-access --bench access

use criterion::{criterion_group, criterion_main, Criterion};
use kiln_access::keys::hash_secret;
use kiln_access::{Access, AccessOptions, Credentials, Scope, Target};
use std::hint::black_box;

fn access(keys: usize, dir: &tempfile::TempDir) -> Access {
    let mut text = String::new();
    for i in 0..keys {
        let hash: String = hash_secret(&format!("key-{i}"))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        text.push_str(&format!(
            "[[key]]\nid = \"k{i}\"\nsha256 = \"{hash}\"\nscopes = [\"infer\"]\nmodels = [\"mlp_*\"]\nrate = 1e9\n\n"
        ));
    }
    text.push_str("[[key]]\nid = \"cert\"\nsubject = \"CN=client\"\nscopes = [\"infer\"]\n");
    let path = dir.path().join(format!("keys-{keys}.toml"));
    std::fs::write(&path, text).unwrap();
    let opts = AccessOptions {
        key_file: Some(path),
        open_health: true,
        default_rate: None,
    };
    Access::new(opts, |_| true).unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let open = Access::new(AccessOptions::default(), |_| true).unwrap();
    c.bench_function("open server", |b| {
        b.iter(|| {
            let caller = open.identify(Credentials::default());
            black_box(open.permit(&caller, Scope::Infer, Target::Model("mlp_tiny"))).unwrap()
        })
    });
    for keys in [1, 100] {
        let a = access(keys, &dir);
        let auth = format!("Bearer key-{}", keys - 1);
        c.bench_function(&format!("bearer key, {keys} keys"), |b| {
            b.iter(|| {
                let caller = a.identify(Credentials {
                    authorization: Some(black_box(&auth)),
                    ..Default::default()
                });
                black_box(a.permit(&caller, Scope::Infer, Target::Model("mlp_tiny"))).unwrap()
            })
        });
        c.bench_function(&format!("certificate subject, {keys} keys"), |b| {
            b.iter(|| {
                let caller = a.identify(Credentials {
                    subject: Some(black_box("CN=client")),
                    ..Default::default()
                });
                black_box(a.permit(&caller, Scope::Infer, Target::Server)).unwrap()
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
