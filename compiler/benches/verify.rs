//! Verify + write certificates for dualpipev, 64 ranks × 512 microbatches (issue 3 target:
//! under 5 s on a 2-core machine). The `z3` re-check of the same certificates is timed by
//! `scripts/bench-z3-check.sh`.

use criterion::{criterion_group, criterion_main, Criterion};
use pipewright_compiler::cost::{CommMode, MemoryModel};
use pipewright_compiler::families::Family;
use pipewright_compiler::verify::{certificate, verify};
use std::hint::black_box;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let set = Family::DualPipeV.generate(64, 512, 2);
    let stages = set.layout.as_ref().map_or(0, |l| l.stages as usize);
    let memory = MemoryModel {
        activation: vec![1_000_000; stages],
        weight_grad_part: vec![400_000; stages],
        parameters: vec![100_000_000; stages],
        p2p_buffer: vec![100_000; stages],
        budget: 1 << 40,
    };
    let mut g = c.benchmark_group("verify");
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    g.bench_function("dualpipev_64x512_verify_and_certificates", |b| {
        b.iter(|| {
            let v = verify(&set, CommMode::Blocking, Some(&memory)).expect("well-formed");
            assert!(v.ok());
            black_box(certificate::all(&set, CommMode::Blocking, Some(&memory), "bench").expect("certificates"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
