//! Compile + simulate: the family's programs, the Plan DAG, the simulation.
//! Target (issue 2): dualpipev with 64 ranks × 512 microbatches under 1 s.

use criterion::{criterion_group, criterion_main, Criterion};
use pipewright_compiler::cost::CostModel;
use pipewright_compiler::families::Family;
use pipewright_compiler::lower_and_simulate;
use std::hint::black_box;
use std::time::Duration;

fn compile_and_simulate(family: Family, ranks: u32, m: u32) -> f64 {
    let set = family.generate(ranks, m, 2);
    let stages = set.layout.as_ref().map_or(0, |l| l.stages);
    let costs = CostModel::uniform(stages, 1.0, 2.0, 1.0, 2.5, 0.1);
    let (_, sim, _) = lower_and_simulate(&set, &costs, None).expect("family programs run");
    sim.makespan
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile_simulate");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("dualpipev_64x512", |b| b.iter(|| black_box(compile_and_simulate(Family::DualPipeV, 64, 512))));
    g.bench_function("dualpipe_64x512", |b| b.iter(|| black_box(compile_and_simulate(Family::DualPipe, 64, 512))));
    g.bench_function("1f1b_16x64", |b| b.iter(|| black_box(compile_and_simulate(Family::OneFOneB, 16, 64))));
    g.bench_function("zb-v_16x64", |b| b.iter(|| black_box(compile_and_simulate(Family::ZbV, 16, 64))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
