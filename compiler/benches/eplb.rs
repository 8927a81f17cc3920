//! EPLB on the fixture shapes: 58 layers × 256 experts → 288 replicas on 32 GPUs
//! (hierarchical, case A) and → 320 replicas on 64 GPUs (global, case B).
//! Targets (issue 5): balanced < 5 ms and deepseek < 2 ms per call on a 2-core machine.

use criterion::{criterion_group, criterion_main, Criterion};
use pipewright_compiler::eplb::{io, rebalance, Loads, Policy};
use std::hint::black_box;
use std::path::PathBuf;

fn fixture(name: &str) -> (Loads, pipewright_compiler::eplb::Params) {
    let dir = std::env::var_os("EPLB_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/eplb"));
    let input = io::read(&dir.join(name)).expect("EPLB fixture");
    (Loads::new(input.rows).expect("valid loads"), input.params.expect("fixture params"))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("eplb");
    g.sample_size(30);
    for (case, file) in
        [("A_32gpu_hier", "A_prefill_hier__lognorm1.0.json"), ("B_64gpu_global", "B_decode_global__lognorm1.0.json")]
    {
        let (loads, p) = fixture(file);
        for (name, policy) in [("deepseek", Policy::DeepSeek), ("balanced", Policy::Balanced)] {
            g.bench_function(format!("{case}/{name}"), |b| {
                b.iter(|| black_box(rebalance(&loads, &p, policy).unwrap()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
