//! `profile`'s arithmetic, without a GPU: per-op timings of a DualPipeV plan (as the CUDA
//! events would report them) become the spec's `[costs]` table per stage, the ideal step,
//! and a Chrome trace with one event per op.

use pipewright_compiler::emit::emit;
use pipewright_compiler::families::Family;
use pipewright_plan::{Dtype, Hashes, Model, Training};
use pipewright_runtime::exec::RunReport;
use pipewright_runtime::profile::{chrome_trace, costs_toml, rank_profile, with_simulated, SIMULATED_PID};

#[test]
fn measured_ops_become_a_costs_table_an_ideal_and_a_trace() {
    let set = Family::ZbV.generate(2, 4, 1);
    let model = Model {
        kind: "mlp".into(),
        hidden: 8,
        ffn: 32,
        seq: 4,
        microbatch_size: 1,
        layers_per_stage: 1,
        dtype: Dtype::F32,
        seed: 0,
    };
    let training = Training { optimizer: "sgd".into(), lr: 0.1, steps: 1, checkpoint_every: 0 };
    let hashes = Hashes { spec: "s".into(), programs: "p".into(), certificates: "c".into() };
    let plan = emit(&set, &model, &training, hashes).unwrap();
    // Stage s costs (s + 1) ms per F, 2(s + 1) per I, 0.5(s + 1) per W; every other p2p
    // batch 0.1 ms, the rest 0.7 (waiting for their peer: the fastest is the transfer);
    // the step's own work 0.25; the first (warm-up) step everything 10× slower.
    let cost = |kind: &str, stage: u32, index: usize| -> f64 {
        let s = stage as f64 + 1.0;
        match kind {
            "F" => s,
            "I" => 2.0 * s,
            "W" => 0.5 * s,
            "B" => 2.5 * s,
            "STEP" => 0.25,
            _ if index % 2 == 0 => 0.1,
            _ => 0.7,
        }
    };
    let profiles: Vec<_> = plan
        .ranks
        .iter()
        .map(|r| {
            let times: Vec<Vec<(f64, f64)>> = (0..3)
                .map(|step| {
                    let mut t = 0.0;
                    r.ops
                        .iter()
                        .enumerate()
                        .map(|(i, o)| {
                            let warm = if step == 0 { 10.0 } else { 1.0 };
                            let d = warm * cost(&o.kind, o.stages.first().copied().unwrap_or(0), i);
                            t += d;
                            (t - d, d)
                        })
                        .collect()
                })
                .collect();
            let report = RunReport {
                rank: r.rank,
                first_step: 0,
                losses: vec![],
                step_ms: vec![9.0, 5.0, 5.0],
                launch_us: vec![],
                op_times: times,
            };
            rank_profile(&plan, r.rank, &report)
        })
        .collect();
    let toml_text = costs_toml(&plan, &profiles, "test");
    let table: toml::Value = toml::from_str(&toml_text).unwrap();
    let costs = &table["costs"];
    let list = |k: &str| -> Vec<f64> { costs[k].as_array().unwrap().iter().map(|v| v.as_float().unwrap()).collect() };
    let stages = plan.stages as usize;
    assert_eq!(list("forward"), (0..stages).map(|s| s as f64 + 1.0).collect::<Vec<_>>());
    assert_eq!(list("weight"), (0..stages).map(|s| 0.5 * (s as f64 + 1.0)).collect::<Vec<_>>());
    assert_eq!(list("backward"), (0..stages).map(|s| 2.5 * (s as f64 + 1.0)).collect::<Vec<_>>());
    assert!((costs["p2p"].as_float().unwrap() - 0.1).abs() < 1e-9, "{toml_text}");
    // The ideal: each rank's compute (its ops and the step's own work), not its p2p.
    for (r, p) in plan.ranks.iter().zip(&profiles) {
        let want: f64 = r
            .ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.kind != "COMM")
            .map(|(i, o)| cost(&o.kind, o.stages.first().copied().unwrap_or(0), i))
            .sum();
        assert!((p.compute_ms - want).abs() < 1e-9, "rank {}: {} vs {want}", r.rank, p.compute_ms);
        assert_eq!(p.step_ms, 5.0, "the first (warm-up) step is left out");
    }
    let trace = chrome_trace(&profiles);
    let ops: usize = plan.ranks.iter().map(|r| r.ops.len()).sum();
    let spans = trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").count();
    assert_eq!(spans, ops);
    // Side by side with a simulated trace (compile's format: one process, a thread per rank).
    let simulated = serde_json::json!({"traceEvents": [
        {"name": "F0.0", "ph": "X", "pid": 0, "tid": 0, "ts": 0.0, "dur": 1000.0},
        {"name": "F0.0", "ph": "X", "pid": 0, "tid": 1, "ts": 1000.0, "dur": 2000.0},
    ]});
    let both = with_simulated(&trace, &simulated);
    let events = both["traceEvents"].as_array().unwrap();
    let sim: Vec<_> = events.iter().filter(|e| e["ph"] == "X" && e["pid"] == SIMULATED_PID).collect();
    assert_eq!(sim.len(), 2);
    assert_eq!(events.iter().filter(|e| e["ph"] == "X").count(), ops + 2);
    assert!(events.iter().any(|e| e["name"] == "process_name" && e["pid"] == SIMULATED_PID));
}
