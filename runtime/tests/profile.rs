//! `profile`'s arithmetic, without a GPU: per-op timings of a DualPipeV plan (as the CUDA
//! events would report them) become the spec's `[costs]` table per stage, the ideal step,
//! and a Chrome trace with one event per op.

use pipewright_compiler::emit::emit;
use pipewright_compiler::families::Family;
use pipewright_plan::{Dtype, Hashes, Model, OpSpan, Plan, Training};
use pipewright_runtime::exec::RunReport;
use pipewright_runtime::profile::{
    calibration_peer, calibration_shape, chrome_trace, contention, costs_toml, graph_breakdown, node_stats,
    nodes_table, rank_profile, transfers, with_simulated, RankProfile, Timeline, GRAPH_PID, SIMULATED_PID,
};

/// The plan of `family` on 2 ranks, 4 microbatches, for an MLP of (hidden, ffn, seq,
/// microbatch size) with one layer per stage, GELU fused.
fn plan(family: Family, dims: (u32, u32, u32, u32), dtype: Dtype) -> Plan {
    plan_of(family, 4, dims, dtype)
}

/// The same with `microbatches` microbatches.
fn plan_of(
    family: Family,
    microbatches: u32,
    (hidden, ffn, seq, microbatch_size): (u32, u32, u32, u32),
    dtype: Dtype,
) -> Plan {
    let set = family.generate(2, microbatches, 1);
    let model = Model {
        kind: "mlp".into(),
        hidden,
        ffn,
        seq,
        microbatch_size,
        layers_per_stage: 1,
        dtype,
        seed: 0,
        fuse_gelu: true,
        mirror_bf16: false,
    };
    let training = Training { optimizer: "sgd".into(), lr: 0.1, steps: 1, checkpoint_every: 0 };
    let hashes = Hashes { spec: "s".into(), programs: "p".into(), certificates: "c".into() };
    emit(&set, &model, &training, hashes).unwrap()
}

/// A profiled run's report of three steps (the first a slow warm-up) with these op and
/// node timings.
fn report(rank: u32, op_times: Vec<Vec<(f64, f64)>>, node_ms: Vec<f64>) -> RunReport {
    RunReport {
        rank,
        first_step: 0,
        losses: vec![],
        step_ms: vec![9.0, 5.0, 5.0],
        launch_us: vec![],
        op_times,
        node_ms,
        graph_nodes: Default::default(),
        graph_device_launch: false,
        warmup_steps: 0,
        alone_ms: vec![],
        alone_op_times: vec![],
        graph_op_times: vec![],
        graph_step_ms: vec![],
        after_alone_ms: vec![],
        p2p_calibration: vec![],
        transport: Default::default(),
    }
}

/// Every rank's profile of three eager steps in which each op took `ms(rank, op)`.
fn profiles_timed(plan: &Plan, ms: impl Fn(u32, &OpSpan) -> f64) -> Vec<RankProfile> {
    plan.ranks
        .iter()
        .map(|r| {
            let step: Vec<(f64, f64)> = r.ops.iter().map(|o| (0.0, ms(r.rank, o))).collect();
            rank_profile(plan, r.rank, &report(r.rank, vec![step.clone(), step.clone(), step], vec![]))
        })
        .collect()
}

#[test]
fn measured_ops_become_a_costs_table_an_ideal_and_a_trace() {
    let plan = plan(Family::ZbV, (8, 32, 4, 1), Dtype::F32);
    // Stage s costs (s + 1) ms per F, 2(s + 1) per I, 0.5(s + 1) per W; every other p2p
    // batch 0.05 ms plus 0.1 per transfer in its busier direction, the rest 0.7 (waiting
    // for their peer: the fastest of a size is the transfer); the step's own work 0.25;
    // the first (warm-up) step everything 10× slower.
    let transfers_of = |rank: u32, index: usize| transfers(&plan.ranks[rank as usize], index) as f64;
    let cost = |kind: &str, stage: u32, (rank, index): (u32, usize)| -> f64 {
        let s = stage as f64 + 1.0;
        match kind {
            "F" => s,
            "I" => 2.0 * s,
            "W" => 0.5 * s,
            "B" => 2.5 * s,
            "STEP" => 0.25,
            _ if index % 2 == 0 => 0.05 + 0.1 * transfers_of(rank, index),
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
                            let d = warm * cost(&o.kind, o.stages.first().copied().unwrap_or(0), (r.rank, i));
                            t += d;
                            (t - d, d)
                        })
                        .collect()
                })
                .collect();
            rank_profile(&plan, r.rank, &report(r.rank, times, vec![]))
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
    // ZB-V's batches on 2 ranks each hold one transfer in their busier direction: the
    // fastest is the p2p time, with nothing per transfer.
    let one = |r: &pipewright_plan::RankPlan| {
        (0..r.ops.len()).filter(|&i| r.ops[i].kind == "COMM").all(|i| transfers(r, i) == 1)
    };
    assert!(plan.ranks.iter().all(one));
    assert!((costs["p2p"].as_float().unwrap() - 0.15).abs() < 1e-9, "{toml_text}");
    assert!(costs.get("p2p_per_transfer").is_none(), "{toml_text}");
    assert!(costs.get("p2p_contention").is_none(), "no graph replays, no contention: {toml_text}");
    // The step's own work once a step, rank by rank (prologue and epilogue parts, 0.25
    // each); no mirrored pipes.
    let parts = |r: &pipewright_plan::RankPlan, kind: &str| r.ops.iter().filter(|o| o.kind == kind).count();
    assert!(plan.ranks.iter().all(|r| parts(r, "STEP") >= 2), "a prologue and an epilogue");
    let per_step: Vec<f64> = costs["per_step"].as_array().unwrap().iter().map(|v| v.as_float().unwrap()).collect();
    assert_eq!(per_step, plan.ranks.iter().map(|r| 0.25 * parts(r, "STEP") as f64).collect::<Vec<_>>());
    assert_eq!(costs["mirror_sum"].as_float(), Some(0.0), "{toml_text}");
    assert!(costs.get("mirror_update").is_none(), "no mirrored stages, no update of one: {toml_text}");
    // The ideal: each rank's compute (its ops and the step's own work), not its p2p.
    for (r, p) in plan.ranks.iter().zip(&profiles) {
        let want: f64 = r
            .ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.kind != "COMM")
            .map(|(i, o)| cost(&o.kind, o.stages.first().copied().unwrap_or(0), (r.rank, i)))
            .sum();
        assert!((p.compute_ms - want).abs() < 1e-9, "rank {}: {} vs {want}", r.rank, p.compute_ms);
        assert_eq!(p.step_ms, 5.0, "the first (warm-up) step is left out");
    }
    let trace = chrome_trace(&profiles, Timeline::Eager);
    assert!(graph_breakdown(&profiles[0]).is_none(), "no whole-step graph replays timed");
    let graph = chrome_trace(&profiles, Timeline::Graph);
    assert_eq!(graph["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").count(), 0);
    let ops: usize = plan.ranks.iter().map(|r| r.ops.len()).sum();
    let spans = trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").count();
    assert_eq!(spans, ops);
    // Side by side with a simulated trace (compile's format: one process, a thread per rank).
    let simulated = serde_json::json!({"traceEvents": [
        {"name": "F0.0", "ph": "X", "pid": 0, "tid": 0, "ts": 0.0, "dur": 1000.0},
        {"name": "F0.0", "ph": "X", "pid": 0, "tid": 1, "ts": 1000.0, "dur": 2000.0},
    ]});
    let both = with_simulated(&trace, None, &simulated);
    let events = both["traceEvents"].as_array().unwrap();
    let sim: Vec<_> = events.iter().filter(|e| e["ph"] == "X" && e["pid"] == SIMULATED_PID).collect();
    assert_eq!(sim.len(), 2);
    assert_eq!(events.iter().filter(|e| e["ph"] == "X").count(), ops + 2);
    assert!(events.iter().any(|e| e["name"] == "process_name" && e["pid"] == SIMULATED_PID));
}

#[test]
fn warm_up_steps_and_the_node_timed_step_are_not_the_profiled_step_time() {
    // Two untimed warm-up steps (fast: the GPU's clocks have not dropped yet), three
    // op-timed steps (all kept: the warm-up already connected and warmed everything), then
    // the node-timed step (compute streams serialised: slow).
    let plan = plan(Family::OneFOneB, (64, 256, 4, 2), Dtype::F32);
    let ops = plan.ranks[0].ops.len();
    let times: Vec<Vec<(f64, f64)>> = [5.0, 8.0, 9.0].iter().map(|&ms| vec![(0.0, ms); ops]).collect();
    let mut r = report(0, times, vec![]);
    r.step_ms = vec![3.0, 3.0, 5.0, 8.0, 9.0, 40.0];
    r.warmup_steps = 2;
    let p = rank_profile(&plan, 0, &r);
    assert_eq!(p.step_ms, 8.0, "the median of the three op-timed steps");
    let computing = plan.ranks[0].ops.iter().filter(|o| o.kind != "COMM").count() as f64;
    assert_eq!(p.compute_ms, 8.0 * computing, "each op's median over the three");
    assert_eq!(p.node_compute_ms, None, "no step timed nodes");
    assert_eq!(p.ideal_ms(), p.compute_ms, "so the ideal counts the ops");
}

#[test]
fn compute_ops_timed_without_p2p_are_the_costs_when_there_are_any() {
    // Eager steps time every op at 9 ms (from 1 ms into the step), the timed replays
    // without p2p at 2, 4 and 3 ms: a compute op costs the replays' median, 3 ms; p2p
    // batches and every start stay the eager steps'; without replays, all are eager.
    let plan = plan(Family::OneFOneB, (64, 256, 4, 2), Dtype::F32);
    let ops = plan.ranks[0].ops.len();
    let eager: Vec<Vec<(f64, f64)>> = (0..3).map(|_| vec![(1.0, 9.0); ops]).collect();
    let mut r = report(0, eager, vec![]);
    r.alone_op_times = [2.0, 4.0, 3.0].iter().map(|&ms| vec![(ms, ms); ops]).collect();
    let p = rank_profile(&plan, 0, &r);
    assert!(p.timed_alone);
    assert!(p.ops.iter().any(|o| o.kind == "COMM") && p.ops.iter().any(|o| o.kind != "COMM"));
    for o in &p.ops {
        assert_eq!(o.ms, if o.kind == "COMM" { 9.0 } else { 3.0 }, "{o:?}");
        assert_eq!(o.start_ms, 1.0, "{o:?}");
    }
    let computing = plan.ranks[0].ops.iter().filter(|o| o.kind != "COMM").count() as f64;
    assert_eq!(p.compute_ms, 3.0 * computing);
    // The costs file says where its numbers come from (here rank 0's profile stands for
    // both ranks).
    let text = costs_toml(&plan, &[p.clone(), p], "test");
    assert!(text.contains("compute ops over replays of each rank's step without p2p"), "{text}");
    r.alone_op_times.clear();
    let p = rank_profile(&plan, 0, &r);
    assert!(!p.timed_alone);
    assert!(p.ops.iter().all(|o| o.ms == 9.0), "{:?}", p.ops);
    let text = costs_toml(&plan, &[p.clone(), p], "test");
    assert!(text.contains("every op over the profiled eager steps"), "{text}");
}

#[test]
fn compute_costs_are_scaled_to_the_step_graph_without_p2p() {
    // Every op 1 ms in the eager steps; each rank's step graph without its p2p took half
    // its ops' sum: F, B, W, FB and the step's own work are halved, p2p is not, and the
    // ideal is the graph's.
    let plan = plan(Family::ZbV, (8, 32, 4, 1), Dtype::F32);
    let profiles: Vec<_> = plan
        .ranks
        .iter()
        .map(|r| {
            let step = vec![(0.0, 1.0); r.ops.len()];
            let computing = r.ops.iter().filter(|o| o.kind != "COMM").count() as f64;
            let mut rep = report(r.rank, vec![step.clone(), step.clone(), step], vec![]);
            rep.alone_ms = vec![computing / 2.0; 5];
            let p = rank_profile(&plan, r.rank, &rep);
            assert_eq!(p.calibration(), 0.5, "rank {}", r.rank);
            assert_eq!(p.ideal_ms(), computing / 2.0, "rank {}", r.rank);
            p
        })
        .collect();
    let text = costs_toml(&plan, &profiles, "test");
    let costs = &toml::from_str::<toml::Value>(&text).unwrap()["costs"];
    let list = |k: &str| -> Vec<f64> { costs[k].as_array().unwrap().iter().map(|v| v.as_float().unwrap()).collect() };
    assert!(list("forward").iter().all(|&f| f == 0.5), "{text}");
    assert!(list("weight").iter().all(|&w| w == 0.5), "{text}");
    assert_eq!(costs["p2p"].as_float(), Some(1.0), "every batch 1 ms, whatever its size: {text}");
    assert!(costs.get("p2p_per_transfer").is_none(), "{text}");
    let steps = |r: &pipewright_plan::RankPlan| r.ops.iter().filter(|o| o.kind == "STEP").count() as f64;
    let per_step: Vec<f64> = costs["per_step"].as_array().unwrap().iter().map(|v| v.as_float().unwrap()).collect();
    assert_eq!(per_step, plan.ranks.iter().map(|r| 0.5 * steps(r)).collect::<Vec<_>>(), "{text}");
    assert!(text.contains("(by 0.500, 0.500, rank by rank)"), "{text}");
}

#[test]
fn node_timings_group_by_kind_with_their_rates() {
    // A 1F1B plan with GELU fused: every product 2 ms, every kernel 0.5 ms, every p2p group
    // 0.25 ms, as the node-timed step would report them (event records and waits untimed).
    let plan = plan(Family::OneFOneB, (64, 256, 4, 2), Dtype::Bf16);
    use pipewright_plan::Node;
    let ms = |n: &Node| match n {
        Node::Gemm(_) => 2.0,
        Node::Kernel(_) => 0.5,
        Node::Group { .. } => 0.25,
        _ => f64::NAN,
    };
    let profiles: Vec<_> = plan
        .ranks
        .iter()
        .map(|r| {
            let node_ms: Vec<f64> = r.nodes.iter().map(ms).collect();
            let stats = node_stats(&plan, r.rank, &node_ms);
            let gemms = r.nodes.iter().filter(|n| matches!(n, Node::Gemm(_))).count();
            let counted: usize = stats.iter().filter(|s| s.what.starts_with("gemm")).map(|s| s.count).sum();
            assert_eq!(counted, gemms, "rank {}: every product counted once", r.rank);
            assert!(stats.windows(2).all(|w| w[0].ms >= w[1].ms), "largest total first");
            // The forward's first product (8 tokens × 64 → 256) with GELU fused: 2·8·256·64
            // FLOPs in 2 ms.
            let fused = stats.iter().find(|s| s.what == "gemm bf16 8x256x64 NN gelu").expect("the fused forward");
            assert_eq!(fused.work, 2.0 * 8.0 * 256.0 * 64.0);
            assert!(stats.iter().all(|s| !s.what.starts_with("gelu_")), "no GELU kernels when fused");
            let p = rank_profile(&plan, r.rank, &report(r.rank, vec![], node_ms));
            assert_eq!(p.nodes, stats);
            // The rank's compute, its nodes alone: products 2 ms, kernels 0.5; not its p2p
            // groups (0.25 each), nor the untimed records and waits.
            let kernels = r.nodes.iter().filter(|n| matches!(n, Node::Kernel(_))).count();
            let want = 2.0 * gemms as f64 + 0.5 * kernels as f64;
            assert_eq!(p.node_compute_ms, Some(want), "rank {}", r.rank);
            assert_eq!(p.ideal_ms(), want, "the ideal counts the nodes when they were timed");
            p
        })
        .collect();
    let table = nodes_table(&profiles);
    let row = table.lines().find(|l| l.starts_with("| gemm bf16 8x256x64 NN gelu |")).unwrap();
    // Both ranks run the forward of their stage once per microbatch: 8 products, 16 ms,
    // 2·8·256·64 FLOPs per 2 ms = 0.0000262 TFLOP/s.
    assert!(row.contains("| 8 | 16.000 |"), "{row}");
    assert!(row.ends_with("| 2.0000 | 0.0 TFLOP/s |"), "{row}");
}

#[test]
fn a_dualpipe_profile_gives_the_mirror_sum_and_update_once_a_step() {
    // Every op 1 ms, the step's own work 0.5 ms a part, and each mirror-gradient exchange
    // group 3 ms on rank 0 and 2 ms on rank 1: once a step, the busiest rank's. Each p2p
    // batch 0.05 ms and 0.1 per transfer in its busier direction (DualPipe runs batches
    // of one and of two each way).
    let plan = plan(Family::DualPipe, (8, 32, 4, 1), Dtype::F32);
    let batch = |rank: u32, o: &OpSpan| {
        let r = &plan.ranks[rank as usize];
        let i = r.ops.iter().position(|x| x == o).unwrap();
        0.05 + 0.1 * transfers(r, i) as f64
    };
    let profiles = profiles_timed(&plan, |rank, o| match o.kind.as_str() {
        "STEP" => 0.5,
        "COMM" if o.label.starts_with("mirror-sum") => 3.0 - rank as f64,
        "COMM" => batch(rank, o),
        _ => 1.0,
    });
    let text = costs_toml(&plan, &profiles, "test");
    let costs = &toml::from_str::<toml::Value>(&text).unwrap()["costs"];
    // Both ranks hold both stages of the 2-stage DualPipe (one layer each), each mirrored:
    // an exchange group per gradient matrix (2 stages × 2), and STEP parts: the prologue,
    // the counters, and one per matrix after its exchange.
    for r in &plan.ranks {
        let kinds = |k: &str, prefix: &str| r.ops.iter().filter(|o| o.kind == k && o.label.starts_with(prefix)).count();
        assert_eq!(kinds("COMM", "mirror-sum"), 4, "rank {}", r.rank);
        assert_eq!(kinds("STEP", "epilogue: stage"), 4, "rank {}", r.rank);
        assert_eq!(kinds("STEP", ""), 6, "rank {}", r.rank);
    }
    assert_eq!(costs["mirror_sum"].as_float(), Some(12.0), "{text}");
    // Of per_step (6 parts × 0.5 = 3), a mirrored stage's update: its two matrices' parts.
    assert_eq!(
        costs["per_step"].as_array().unwrap().iter().map(|v| v.as_float().unwrap()).collect::<Vec<_>>(),
        [3.0, 3.0]
    );
    assert_eq!(costs["mirror_update"].as_float(), Some(1.0), "{text}");
    // Of per_step, the prologue (before the program): one part of 0.5 on each rank.
    let prologue: Vec<f64> = costs["prologue"].as_array().unwrap().iter().map(|v| v.as_float().unwrap()).collect();
    assert_eq!(prologue, [0.5, 0.5], "{text}");
    let sizes: std::collections::BTreeSet<u32> = (plan.ranks.iter())
        .flat_map(|r| (0..r.ops.len()).filter(|&i| r.ops[i].label.starts_with('[')).map(move |i| transfers(r, i)))
        .collect();
    assert_eq!(sizes.into_iter().collect::<Vec<_>>(), [1, 2]);
    assert!((costs["p2p"].as_float().unwrap() - 0.05).abs() < 1e-9, "{text}");
    assert!((costs["p2p_per_transfer"].as_float().unwrap() - 0.1).abs() < 1e-9, "{text}");
    assert_eq!(costs["per_step"].as_array().map(|a| a.len()), Some(2), "{text}");
    assert!(costs["per_step"].as_array().unwrap().iter().all(|v| v.as_float() == Some(3.0)), "{text}");
}

#[test]
fn batches_posted_at_once_give_the_p2p_line_when_the_profile_has_them() {
    // The step's batches all waited for their peer (1 ms and more, by size); the
    // calibration's, posted by both ranks at once, took 0.02 + 0.09 per transfer (plus
    // slower repetitions): the line goes through the calibration's fastest of each size.
    let plan = plan(Family::DualPipe, (8, 32, 4, 1), Dtype::F32);
    let mut profiles = profiles_timed(&plan, |rank, o| match o.kind.as_str() {
        "COMM" if o.label.starts_with('[') => {
            let r = &plan.ranks[rank as usize];
            1.0 + 0.5 * transfers(r, r.ops.iter().position(|x| x == o).unwrap()) as f64
        }
        _ => 1.0,
    });
    let line = |text: &str| {
        let costs = toml::from_str::<toml::Value>(text).unwrap()["costs"].clone();
        (costs["p2p"].as_float().unwrap(), costs.get("p2p_per_transfer").and_then(|v| v.as_float()).unwrap_or(0.0))
    };
    let waited = costs_toml(&plan, &profiles, "test");
    let (p2p, per) = line(&waited);
    assert!((p2p - 1.0).abs() < 1e-9 && (per - 0.5).abs() < 1e-9, "{waited}");
    assert!(waited.contains("of the eager steps"), "{waited}");
    profiles[0].p2p_calibration = vec![(1, 0.2), (1, 0.11), (2, 0.2), (2, 0.5)];
    profiles[1].p2p_calibration = vec![(1, 0.12), (2, 0.3)];
    let calibrated = costs_toml(&plan, &profiles, "test");
    let (p2p, per) = line(&calibrated);
    assert!((p2p - 0.02).abs() < 1e-9 && (per - 0.09).abs() < 1e-9, "{calibrated}");
    assert!(calibrated.contains("posted at once (calibration)"), "{calibrated}");
    // The field survives the profile's file (and an older file without it reads as none).
    let json = serde_json::to_string(&profiles[0]).unwrap();
    let back: RankProfile = serde_json::from_str(&json).unwrap();
    assert_eq!(back.p2p_calibration, profiles[0].p2p_calibration);
    let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
    old.as_object_mut().unwrap().remove("p2p_calibration");
    assert!(serde_json::from_value::<RankProfile>(old).unwrap().p2p_calibration.is_empty());
}

#[test]
fn calibration_batches_have_the_plans_transfer_size_and_most_transfers() {
    // DualPipe on 2 ranks sends activations and gradients of one size (microbatch × seq ×
    // hidden × 4 bytes in f32), at most two each way in a group; 1F1B one at a time.
    let dualpipe = plan(Family::DualPipe, (8, 32, 4, 1), Dtype::F32);
    assert_eq!(calibration_shape(&dualpipe), Some((4 * 8 * 4, 2)));
    let bf16 = plan(Family::DualPipe, (16, 64, 8, 2), Dtype::Bf16);
    assert_eq!(calibration_shape(&bf16), Some((2 * 16 * 8 * 2, 2)));
    let one_f_one_b = plan(Family::OneFOneB, (8, 32, 4, 1), Dtype::F32);
    assert_eq!(calibration_shape(&one_f_one_b).map(|s| s.1), Some(1));
    // Ranks pair with their neighbour; the last of an odd world sits out.
    let pairs: Vec<Option<u32>> = (0..5).map(|r| calibration_peer(r, 5)).collect();
    assert_eq!(pairs, [Some(1), Some(0), Some(3), Some(2), None]);
    assert_eq!(calibration_peer(0, 1), None);
}

#[test]
fn each_measured_fb_pair_keeps_its_own_time() {
    // DualPipe on 2 ranks pairs F of stage 1 with B of stage 0, and F of stage 0 with B of
    // stage 1; here the first kind takes 1 ms and the second 2 ms. The per-stage
    // `overlapped` cannot tell them apart (each stage is in both kinds); the listed pairs
    // can, and a spec reads them back.
    let plan = plan_of(Family::DualPipe, 8, (8, 32, 4, 1), Dtype::F32);
    let profiles = profiles_timed(&plan, |_, o| match (o.kind.as_str(), &o.stages[..]) {
        ("FB", [1, 0]) => 1.0,
        ("FB", _) => 2.0,
        _ => 0.5,
    });
    let ran = |pair: [u32; 2]| plan.ranks.iter().any(|r| r.ops.iter().any(|o| o.kind == "FB" && o.stages == pair));
    assert!(ran([1, 0]) && ran([0, 1]), "the plan runs both kinds of pair");
    let text = costs_toml(&plan, &profiles, "test");
    assert!(
        text.contains("overlapped_pairs = [{ f = 0, b = 1, ms = 2.0000 }, { f = 1, b = 0, ms = 1.0000 }]"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("costs.toml"), &text).unwrap();
    let spec_text =
        "[pipeline]\nschedule = \"dualpipe\"\nranks = 2\nmicrobatches = 8\n[costs]\nfrom = \"costs.toml\"\n";
    let mut s = pipewright_compiler::spec::parse("spec.toml", spec_text).unwrap();
    pipewright_compiler::spec::load_costs(&mut s, "spec.toml", spec_text, dir.path()).unwrap();
    assert_eq!((s.costs.overlapped(1, 0), s.costs.overlapped(0, 1)), (1.0, 2.0));
}

#[test]
fn timed_graph_replays_give_the_graph_timeline_and_where_the_step_goes() {
    let plan = plan(Family::OneFOneB, (64, 256, 4, 2), Dtype::F32);
    // Alone, every compute op 1 ms; in the whole step, the compute ops one after another
    // with a 0.5 ms gap before each and 1.25 ms each (contention, waits inside), each p2p
    // batch 0.75 ms from where the previous op ended (batches never overlap each other).
    let replayed = |rp: &pipewright_plan::RankPlan| {
        let alone: Vec<(f64, f64)> = rp.ops.iter().map(|_| (0.0, 1.0)).collect();
        let mut graph = Vec::new();
        let (mut clock, mut busy, mut comm) = (0.0, 0.0, 0.0);
        for o in &rp.ops {
            if o.kind == "COMM" {
                graph.push((clock, 0.75));
                comm += 0.75;
            } else {
                clock += 0.5;
                graph.push((clock, 1.25));
                clock += 1.25;
                busy += 1.25;
            }
        }
        let mut r = report(rp.rank, vec![alone.clone(); 3], vec![]);
        r.alone_op_times = vec![alone; 3];
        // Two replays: the breakdown takes the median step, the trace the last replay's starts.
        r.graph_op_times = vec![graph.iter().map(|&(s, ms)| (s + 7.0, ms)).collect(), graph.clone()];
        r.graph_step_ms = vec![clock + 1.0, clock + 1.0];
        (rank_profile(&plan, rp.rank, &r), graph, clock, busy, comm)
    };
    let rp = &plan.ranks[0];
    let (p, graph, clock, busy, comm) = replayed(rp);
    let b = graph_breakdown(&p).expect("the whole step was replayed timed");
    let computing = rp.ops.iter().filter(|o| o.kind != "COMM").count() as f64;
    let batches = rp.ops.len() as f64 - computing;
    assert!(batches > 0.0 && computing > 1.0);
    assert!((b.compute_busy_ms - busy).abs() < 1e-9, "{b:?}");
    assert!((b.ops_in_step_ms - 1.25 * computing).abs() < 1e-9, "{b:?}");
    assert!((b.ops_alone_ms - computing).abs() < 1e-9, "{b:?}");
    assert!((b.comm_busy_ms - comm).abs() < 1e-9, "{b:?}");
    assert_eq!(b.step_ms, clock + 1.0);
    // Contention evidence: every compute op took 0.25 ms longer than alone, and those
    // right after a batch had it in flight beside them for their first 0.25 ms (a 1F1B op
    // waits for its batches before it starts, never inside).
    let after_batch = (1..rp.ops.len()).filter(|&i| rp.ops[i].kind != "COMM" && rp.ops[i - 1].kind == "COMM").count();
    let c = contention(rp, &p).expect("graph replays");
    assert!((c.excess_ms - 0.25 * computing).abs() < 1e-9, "{c:?}");
    assert!((c.overlap_ms - 0.25 * after_batch as f64).abs() < 1e-9, "{c:?} vs {after_batch} ops after a batch");
    // The graph timeline: one event per op at the last replay's starts and median spans.
    let trace = chrome_trace(std::slice::from_ref(&p), Timeline::Graph);
    let events: Vec<_> = trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").cloned().collect();
    assert_eq!(events.len(), rp.ops.len());
    let first = rp.ops.iter().position(|o| o.kind != "COMM").unwrap();
    let e = events.iter().find(|e| e["name"] == rp.ops[first].label.as_str()).unwrap();
    assert_eq!((e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap()), (graph[first].0 * 1e3, 1250.0));
    // All three timelines in one trace, each in its own processes.
    let eager = chrome_trace(std::slice::from_ref(&p), Timeline::Eager);
    let simulated =
        serde_json::json!({"traceEvents": [{"name": "F0.0", "ph": "X", "pid": 0, "tid": 0, "ts": 0.0, "dur": 1.0}]});
    let all = with_simulated(&eager, Some(&trace), &simulated);
    let spans =
        |pid: u64| all["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X" && e["pid"] == pid).count();
    assert_eq!((spans(0), spans(GRAPH_PID), spans(SIMULATED_PID)), (rp.ops.len(), rp.ops.len(), 1));
    // The costs table: their ratio over both ranks (capped at 0.9: compute at a tenth of
    // its speed is no measurement).
    let both: Vec<RankProfile> = plan.ranks.iter().map(|r| replayed(r).0).collect();
    let evidence: Vec<_> = plan.ranks.iter().zip(&both).map(|(r, p)| contention(r, p).unwrap()).collect();
    let ratio = evidence.iter().map(|c| c.excess_ms).sum::<f64>() / evidence.iter().map(|c| c.overlap_ms).sum::<f64>();
    let text = costs_toml(&plan, &both, "test");
    let costs = &toml::from_str::<toml::Value>(&text).unwrap()["costs"];
    assert!((costs["p2p_contention"].as_float().unwrap() - ratio.min(0.9)).abs() < 1e-4, "{text}");
}
