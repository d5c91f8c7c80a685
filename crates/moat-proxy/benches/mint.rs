//! Leaf minting cost: a fresh certificate for a new host, and a cache hit.

#![expect(clippy::unwrap_used, reason = "benchmarks fail loudly")]

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use criterion::Criterion;
use criterion::criterion_group;
use criterion::criterion_main;
use moat_proxy::CertificateAuthority;

fn mint(c: &mut Criterion) {
    let ca = CertificateAuthority::generate().unwrap();
    let n = AtomicU64::new(0);
    c.bench_function("mint_leaf (new host)", |b| {
        b.iter(|| {
            let i = n.fetch_add(1, Ordering::Relaxed);
            ca.mint_leaf(&format!("host{i}.example.com")).unwrap()
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    c.bench_function("server_config (new host, uncached)", |b| {
        b.iter(|| {
            let i = n.fetch_add(1, Ordering::Relaxed);
            rt.block_on(ca.server_config(&format!("h{i}.example.com")))
                .unwrap()
        })
    });
    rt.block_on(ca.server_config("cached.example.com")).unwrap();
    c.bench_function("server_config (cache hit)", |b| {
        b.iter(|| rt.block_on(ca.server_config("cached.example.com")).unwrap())
    });
}

criterion_group!(benches, mint);
criterion_main!(benches);
