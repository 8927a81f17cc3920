//! The plan artifact: what the emitter writes for a `[model]` computes the model. Every
//! family's plan, run on the CPU executor (every rank a thread, NCCL groups as channels),
//! gives the per-microbatch losses and the weight gradients of the model computed
//! directly, one microbatch after another; plans are refused when they do not fit.

use pipewright_compiler::emit::{emit, emit_with};
use pipewright_compiler::families::Family;
use pipewright_compiler::verify::verify;
use pipewright_plan::{cpu, data, reference, Dtype, Hashes, Model, Node, Plan, PlanRefusal, Training};

fn model(layers_per_stage: u32) -> Model {
    Model {
        kind: "mlp".into(),
        hidden: 8,
        ffn: 16,
        seq: 3,
        microbatch_size: 2,
        layers_per_stage,
        dtype: Dtype::F32,
        seed: 7,
        fuse_gelu: true,
        mirror_bf16: false,
    }
}

fn training() -> Training {
    Training { optimizer: "sgd".into(), lr: 0.1, steps: 1, checkpoint_every: 0 }
}

fn hashes() -> Hashes {
    Hashes { spec: "s".into(), programs: "p".into(), certificates: "c".into() }
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Runs the first step of `plan` (one layer per stage, 4 microbatches) on the CPU
/// executor and compares every layer's W1 gradient with the model computed directly.
fn first_step_matches_the_reference(plan: &Plan, model: &Model) {
    let mut memory = cpu::initial_memory(plan);
    cpu::run(plan, &mut memory, 1).unwrap();
    let weights: Vec<_> = (0..plan.stages).map(|l| data::layer_weights(model, l)).collect();
    let want = reference::step(model, &weights, 4, 0);
    for (l, (g1, _)) in want.grads.iter().enumerate() {
        let got = memory.iter().find_map(|m| m.get(&format!("g1.{l}"))).unwrap();
        assert!(rel(got, g1) <= 1e-5, "layer {l}");
    }
}

/// Emits `family` at (ranks, m), with GELU fused into the GEMMs and as kernels of its own,
/// runs one step on the CPU and compares with the reference.
fn check(family: Family, ranks: u32, m: u32, layers_per_stage: u32) {
    for fuse_gelu in [true, false] {
        check_one(family, ranks, m, Model { fuse_gelu, ..model(layers_per_stage) });
    }
}

fn check_one(family: Family, ranks: u32, m: u32, model: Model) {
    let set = family.generate(ranks, m, 2);
    assert!(verify(&set, pipewright_compiler::cost::CommMode::Blocking, None).unwrap().ok());
    let layers_per_stage = model.layers_per_stage;
    let plan = emit(&set, &model, &training(), hashes()).unwrap();
    let gelu_kernels = plan_gelu_kernels(&plan);
    assert_eq!(gelu_kernels == 0, model.fuse_gelu, "{}: GELU kernels {gelu_kernels}", family.name());
    plan.validate().unwrap_or_else(|e| panic!("{}: {e}", family.name()));
    let mut memory = cpu::initial_memory(&plan);
    cpu::run(&plan, &mut memory, 1).unwrap_or_else(|e| panic!("{}: {e}", family.name()));

    let layers = plan.stages * layers_per_stage;
    let weights: Vec<_> = (0..layers).map(|l| data::layer_weights(&model, l)).collect();
    let total = plan.pipes * plan.microbatches;
    let want = reference::step(&model, &weights, total, 0);
    // Losses, from whichever rank holds each pipe's last stage.
    let mut losses = vec![f32::NAN; total as usize];
    for mem in &memory {
        if let Some(l) = mem.get("loss") {
            for (g, v) in l.iter().enumerate() {
                if *v != 0.0 {
                    losses[g] = v * total as f32;
                }
            }
        }
    }
    let err = rel(&losses, &want.losses);
    assert!(err <= 1e-5, "{} {ranks}x{m}: losses {losses:?} vs {:?}", family.name(), want.losses);
    // Gradients: every copy of every layer holds the step's whole gradient.
    for (l, (g1, g2)) in want.grads.iter().enumerate() {
        let mut copies = 0;
        for mem in &memory {
            if let (Some(a), Some(b)) = (mem.get(&format!("g1.{l}")), mem.get(&format!("g2.{l}"))) {
                copies += 1;
                assert!(rel(a, g1) <= 1e-5, "{} layer {l}: dW1 off by {}", family.name(), rel(a, g1));
                assert!(rel(b, g2) <= 1e-5, "{} layer {l}: dW2 off by {}", family.name(), rel(b, g2));
            }
        }
        assert!(copies >= 1, "{}: layer {l} is held nowhere", family.name());
        // And the SGD update was applied once: w = w0 − lr·g.
        let (w0, _) = &weights[l];
        for mem in &memory {
            if let Some(w) = mem.get(&format!("w1.{l}")) {
                let want_w: Vec<f32> = w0.iter().zip(g1).map(|(w, g)| w - 0.1 * g).collect();
                assert!(rel(w, &want_w) <= 1e-6, "{} layer {l}: update", family.name());
            }
        }
    }
}

/// GELU kernels (forward or backward) in every rank's nodes.
fn plan_gelu_kernels(plan: &Plan) -> usize {
    plan.ranks
        .iter()
        .flat_map(|r| &r.nodes)
        .filter(|n| matches!(n, pipewright_plan::Node::Kernel(k) if k.name.starts_with("gelu")))
        .count()
}

#[test]
fn every_family_plan_computes_the_model() {
    check(Family::OneFOneB, 2, 4, 1);
    check(Family::OneFOneB, 4, 8, 2);
    check(Family::GPipe, 3, 4, 1);
    check(Family::ZbH1, 4, 6, 1);
    check(Family::Interleaved1F1B, 2, 4, 1);
    check(Family::ZbV, 2, 4, 1);
    check(Family::DualPipeV, 1, 2, 1);
    check(Family::DualPipeV, 2, 6, 1);
    check(Family::DualPipe, 2, 4, 1);
    check(Family::DualPipe, 4, 8, 1);
}

#[test]
fn every_step_trains_on_fresh_data() {
    // Three SGD steps of a DualPipe plan on the CPU executor against the model computed
    // directly, step by step, each on its own data (the plan regenerates it in place).
    let set = Family::DualPipe.generate(2, 4, 1);
    let model = model(1);
    let plan = emit(&set, &model, &training(), hashes()).unwrap();
    let mut memory = cpu::initial_memory(&plan);
    let total = plan.pipes * plan.microbatches;
    let mut weights: Vec<_> = (0..plan.stages).map(|l| data::layer_weights(&model, l)).collect();
    for step in 0..3 {
        cpu::run(&plan, &mut memory, 1).unwrap();
        let want = reference::step(&model, &weights, total, step);
        let mut losses = vec![f32::NAN; total as usize];
        for mem in &memory {
            for (g, v) in mem.get("loss").into_iter().flatten().enumerate() {
                if *v != 0.0 {
                    losses[g] = v * total as f32;
                }
            }
        }
        assert!(rel(&losses, &want.losses) <= 1e-5, "step {step}: {losses:?} vs {:?}", want.losses);
        // Fresh data: the same weights on the previous step's data give other losses.
        if step > 0 {
            let stale = reference::step(&model, &weights, total, step - 1);
            assert!(rel(&losses, &stale.losses) > 1e-2, "step {step} repeats the previous step's data");
        }
        for (w, g) in weights.iter_mut().zip(&want.grads) {
            w.0.iter_mut().zip(&g.0).for_each(|(w, g)| *w -= 0.1 * g);
            w.1.iter_mut().zip(&g.1).for_each(|(w, g)| *w -= 0.1 * g);
        }
    }
    // The generator is counter-based: any element on its own equals the array's.
    let x = data::input(&model, 2, 5);
    assert_eq!(x[7], data::synth_value(model.seed, data::INPUT_TAG, 2, 5, 7));
    assert_ne!(data::input(&model, 1, 5), x);
}

#[test]
fn dualpipe_can_exchange_its_mirrored_gradients_in_bf16() {
    // `mirror_sum = "bf16"`: each gradient matrix is rounded into a bf16 buffer of its own
    // on the communication stream (after the event of its last product), that buffer
    // travels (half the bytes), and the compute stream adds the peer's bf16 copy into the
    // f32 gradient. The CPU executor holds f32, so the plan still computes the model.
    use pipewright_plan::Node;
    let set = Family::DualPipe.generate(2, 4, 1);
    let bf16 = Model { dtype: Dtype::Bf16, ..model(1) };
    let f32_sum = emit(&set, &bf16, &training(), hashes()).unwrap();
    let model = Model { mirror_bf16: true, ..bf16.clone() };
    let plan = emit(&set, &model, &training(), hashes()).unwrap();
    plan.validate().unwrap();
    let exchanged = |plan: &Plan, r: usize| -> u64 {
        let rp = &plan.ranks[r];
        rp.ops.iter().filter(|o| o.label.starts_with("mirror-sum")).map(|o| o.bytes).sum()
    };
    for r in &plan.ranks {
        let i = r.rank as usize;
        assert_eq!(2 * exchanged(&plan, i), exchanged(&f32_sum, i), "rank {}: half the bytes", r.rank);
        let ticks = r.nodes.iter().rposition(|n| matches!(n, Node::Kernel(k) if k.name == "tick")).unwrap();
        let groups: Vec<usize> = (ticks..r.nodes.len()).filter(|&i| matches!(r.nodes[i], Node::Group { .. })).collect();
        assert_eq!(groups.len(), 4, "rank {}", r.rank);
        for &at in &groups {
            let Node::Group { ops, .. } = &r.nodes[at] else { unreachable!() };
            let Node::Kernel(cast) = &r.nodes[at - 1] else { panic!("rank {}: no cast before the group", r.rank) };
            assert_eq!((cast.name.as_str(), cast.stream), ("cast_bf16", 2), "rank {}", r.rank);
            assert!(matches!(r.nodes[at - 2], Node::Wait { stream: 2, .. }), "the cast waits for the gradient");
            assert_eq!(ops[0].buffer, cast.buffers[1], "what travels is the rounded copy");
            for o in ops.iter() {
                assert_eq!(r.buffers[o.buffer as usize].dtype, Dtype::Bf16, "rank {}", r.rank);
            }
        }
        let adds = r.nodes[ticks..].iter().filter(|n| matches!(n, Node::Kernel(k) if k.name == "accumulate_bf16"));
        assert_eq!(adds.count(), 4, "rank {}: one bf16 accumulation per matrix", r.rank);
    }
    first_step_matches_the_reference(&plan, &model);
}

#[test]
fn a_bf16_plan_keeps_f32_master_weights_and_gradients() {
    let set = Family::DualPipeV.generate(2, 4, 1);
    // GELU as kernels here, so that their bf16 variants show.
    let model = Model { dtype: Dtype::Bf16, fuse_gelu: false, ..model(1) };
    let plan = emit(&set, &model, &training(), hashes()).unwrap();
    plan.validate().unwrap();
    for r in &plan.ranks {
        let dtype = |name: &str| r.buffers.iter().find(|b| b.name == name).map(|b| b.dtype);
        for b in r.buffers.iter().filter(|b| b.name.starts_with("w1.")) {
            assert_eq!(b.dtype, Dtype::Bf16, "{}", b.name);
            assert_eq!(dtype(&format!("master.{}", b.name)), Some(Dtype::F32), "master of {}", b.name);
            assert_eq!(dtype(&b.name.replacen("w1.", "g1.", 1)), Some(Dtype::F32), "gradient of {}", b.name);
        }
        let kernels: Vec<&str> = r
            .nodes
            .iter()
            .filter_map(|n| match n {
                pipewright_plan::node::Node::Kernel(k) => Some(k.name.as_str()),
                _ => None,
            })
            .collect();
        for k in ["gelu_forward_bf16", "gelu_backward_bf16", "sgd_update_bf16"] {
            assert!(kernels.contains(&k), "rank {}: no {k}", r.rank);
        }
        assert!(!kernels.contains(&"gelu_forward"), "rank {}: an f32 kernel on bf16 activations", r.rank);
        // SGD updates the f32 master and writes its bf16 copy in the same pass.
        for n in &r.nodes {
            let pipewright_plan::node::Node::Kernel(k) = n else { continue };
            if k.name == "sgd_update_bf16" {
                let [master, grad, copy] = k.buffers[..] else { panic!("{k:?}") };
                let (master, grad, copy) =
                    (&r.buffers[master as usize], &r.buffers[grad as usize], &r.buffers[copy as usize]);
                assert_eq!(master.name, format!("master.{}", copy.name), "rank {}", r.rank);
                assert_eq!((master.dtype, grad.dtype, copy.dtype), (Dtype::F32, Dtype::F32, Dtype::Bf16));
            }
        }
    }
    // The CPU executor holds f32, so the bf16 plan computes the f32 model exactly there.
    first_step_matches_the_reference(&plan, &model);
}

/// DualPipe's epilogue with SGD adds the mirror copy's f32 gradient in the update's own
/// pass (one `sgd_update_sum[_bf16]` per mirrored matrix, no `accumulate`); with AdamW the
/// sum is a pass of its own before the update (and the cast). Either way the step computes
/// the model's gradients.
#[test]
fn dualpipe_sums_the_mirror_gradient_in_the_sgd_pass() {
    let set = Family::DualPipe.generate(2, 4, 1);
    for (dtype, optimizer) in [(Dtype::F32, "sgd"), (Dtype::Bf16, "sgd"), (Dtype::Bf16, "adamw")] {
        let model = Model { dtype, ..model(1) };
        let training = Training { optimizer: optimizer.into(), ..training() };
        let plan = emit(&set, &model, &training, hashes()).unwrap();
        plan.validate().unwrap();
        for r in &plan.ranks {
            let count = |name: &str| {
                r.nodes.iter().filter(|n| matches!(n, pipewright_plan::node::Node::Kernel(k) if k.name == name)).count()
            };
            // Two mirrored stages a rank, two matrices each.
            let (sum, add, adamw) = (
                count(&pipewright_plan::node::kernel_name("sgd_update_sum", dtype)),
                count("accumulate"),
                count("adamw_update"),
            );
            let case = format!("{dtype:?} {optimizer}, rank {}", r.rank);
            if optimizer == "sgd" {
                assert_eq!((sum, add, adamw), (4, 0, 0), "{case}");
            } else {
                assert_eq!((sum, add, adamw, count("cast_bf16")), (0, 4, 4, 4), "{case}");
            }
        }
        first_step_matches_the_reference(&plan, &model);
    }
}

#[test]
fn async_plans_wait_for_a_batch_only_where_its_buffers_are_used() {
    use pipewright_compiler::cost::CommMode;
    for (family, ranks, m) in
        [(Family::ZbV, 2, 4), (Family::OneFOneB, 4, 8), (Family::DualPipe, 4, 8), (Family::Interleaved1F1B, 2, 4)]
    {
        let set = family.generate(ranks, m, 2);
        assert!(verify(&set, CommMode::Async, None).unwrap().ok());
        let plan = emit_with(&set, &model(1), &training(), hashes(), CommMode::Async).unwrap();
        plan.validate().unwrap();
        // Per-batch events, and no batch waited for where it stands.
        let groups: usize = plan
            .ranks
            .iter()
            .map(|r| r.nodes.iter().filter(|n| matches!(n, pipewright_plan::node::Node::Group { .. })).count())
            .sum();
        assert!(check_stream_order(&plan).batch_waits > 0 && groups > 0, "{}", family.name());
        let blocking = emit(&set, &model(1), &training(), hashes()).unwrap();
        check_stream_order(&blocking);
        // And it computes the model, like the blocking plan.
        let mut want = cpu::initial_memory(&blocking);
        cpu::run(&blocking, &mut want, 1).unwrap();
        // So does it with every batch after the whole op before it (AsyncInOrder).
        let in_order = emit_with(&set, &model(1), &training(), hashes(), CommMode::AsyncInOrder).unwrap();
        check_stream_order(&in_order);
        for plan in [&plan, &in_order] {
            let mut memory = cpu::initial_memory(plan);
            cpu::run(plan, &mut memory, 1).unwrap();
            for (a, b) in memory.iter().zip(&want) {
                for (name, v) in a.iter().filter(|(n, _)| n.starts_with("g1.") || n.starts_with("loss")) {
                    assert_eq!(v, &b[name], "{} {name}", family.name());
                }
            }
        }
    }
}

#[test]
fn an_optimised_plan_computes_the_model_too() {
    let spec_text =
        "[pipeline]\nschedule = \"zb-v\"\nranks = 2\nmicrobatches = 4\n[costs]\ncomm = \"async\"\np2p = 0.1\n";
    let spec = pipewright_compiler::spec::parse("t.toml", spec_text).unwrap();
    let options = pipewright_compiler::optimize::Options { time_limit: 1.0, ..Default::default() };
    let compiled = pipewright_compiler::compile_with(spec, Some(&options)).unwrap();
    let model = model(1);
    let plan = emit(&compiled.programs, &model, &training(), hashes()).unwrap();
    first_step_matches_the_reference(&plan, &model);
}

#[test]
fn the_arena_reuses_slots_as_the_verified_order_allows() {
    // 1F1B keeps at most ranks − r microbatches in flight on rank r: that many slots.
    let set = Family::OneFOneB.generate(4, 16, 1);
    let plan = emit(&set, &model(1), &training(), hashes()).unwrap();
    for r in &plan.ranks {
        let slots: std::collections::HashSet<&str> = r
            .buffers
            .iter()
            .filter_map(|b| b.name.strip_prefix("slot0."))
            .filter_map(|n| n.split('.').next())
            .collect();
        assert_eq!(slots.len() as u32, 4 - r.rank, "rank {}: {slots:?}", r.rank);
    }
}

#[test]
fn mismatched_plans_are_refused_with_the_reason() {
    let set = Family::OneFOneB.generate(2, 4, 1);
    let plan = emit(&set, &model(1), &training(), hashes()).unwrap();
    assert_eq!(plan.refuse_mismatch(2, 2, 2, "c"), Ok(()));
    assert!(matches!(plan.refuse_mismatch(4, 2, 2, "c"), Err(PlanRefusal::WorldSize { plan: 2, job: 4 })));
    assert!(matches!(plan.refuse_mismatch(2, 2, 1, "c"), Err(PlanRefusal::Gpus { need: 2, visible: 1 })));
    assert!(matches!(plan.refuse_mismatch(2, 2, 2, "other"), Err(PlanRefusal::CertificateHash { .. })));
    let mut old = plan.clone();
    old.version = 0;
    assert!(matches!(old.validate(), Err(PlanRefusal::Version { found: 0, .. })));
    // Internal damage: a buffer past the arena, a node naming a missing buffer, a peer
    // that is the rank itself.
    let mut bad: Plan = plan.clone();
    bad.ranks[0].buffers[0].bytes = bad.ranks[0].arena_bytes + 256;
    assert!(matches!(bad.validate(), Err(PlanRefusal::Malformed { .. })));
    let mut bad = plan.clone();
    if let Some(pipewright_plan::Node::Gemm(g)) =
        bad.ranks[1].nodes.iter_mut().find(|n| matches!(n, pipewright_plan::Node::Gemm(_)))
    {
        g.a = 10_000;
    }
    assert!(bad.validate().unwrap_err().to_string().contains("buffer 10000"));
    let mut bad = plan.clone();
    for n in &mut bad.ranks[0].nodes {
        if let pipewright_plan::Node::Group { ops, .. } = n {
            ops[0].peer = 0;
        }
    }
    assert!(bad.validate().unwrap_err().to_string().contains("peer 0"));
    // An op span past the rank's nodes.
    let mut bad = plan.clone();
    let n = bad.ranks[1].nodes.len() as u32;
    bad.ranks[1].ops.last_mut().unwrap().last = n;
    assert!(bad.validate().unwrap_err().to_string().contains("spans nodes"));
    // A kernel with a scalar missing (the runtime would launch it with a parameter unset)
    // or one buffer too many.
    fn kernel<'a>(plan: &'a mut Plan, name: &str) -> &'a mut pipewright_plan::node::Kernel {
        plan.ranks[1]
            .nodes
            .iter_mut()
            .find_map(|n| match n {
                pipewright_plan::Node::Kernel(k) if k.name == name => Some(k),
                _ => None,
            })
            .unwrap()
    }
    let mut bad = plan.clone();
    kernel(&mut bad, "mse_loss").scalars.pop();
    assert!(bad.validate().unwrap_err().to_string().contains("kernel mse_loss takes 2 scalars, got 1"));
    let mut bad = plan.clone();
    kernel(&mut bad, "sgd_update").buffers.push(0);
    assert!(bad.validate().unwrap_err().to_string().contains("kernel sgd_update takes 2 buffers, got 3"));
}

/// Every send of a plan meets a receive of its size (what NCCL needs, and what the
/// runtime's copy-engine transport writes straight into); a plan where one does not is
/// refused, naming the op.
#[test]
fn every_send_meets_a_receive_of_its_size() {
    use pipewright_plan::transfers::transfers;
    use pipewright_plan::Node;
    for (family, ranks, m) in
        [(Family::DualPipe, 4, 8), (Family::DualPipeV, 4, 8), (Family::ZbH1, 4, 8), (Family::OneFOneB, 2, 4)]
    {
        let plan = emit(&family.generate(ranks, m, 2), &model(1), &training(), hashes()).unwrap();
        let all = transfers(&plan).unwrap();
        let ops: usize = plan
            .ranks
            .iter()
            .flat_map(|r| &r.nodes)
            .map(|n| if let Node::Group { ops, .. } = n { ops.len() } else { 0 })
            .sum();
        assert_eq!(all.len() * 2, ops, "{}: every op in exactly one transfer", family.name());
        for t in &all {
            let (s, r) = (&plan.ranks[t.send.rank as usize], &plan.ranks[t.recv.rank as usize]);
            let Node::Group { ops: sent, .. } = &s.nodes[t.send.node] else { panic!("not a group") };
            let Node::Group { ops: got, .. } = &r.nodes[t.recv.node] else { panic!("not a group") };
            assert!(sent[t.send.op].send && !got[t.recv.op].send);
            assert_eq!((sent[t.send.op].peer, got[t.recv.op].peer), (t.recv.rank, t.send.rank));
            assert_eq!(s.buffers[t.send.buffer as usize].bytes, r.buffers[t.recv.buffer as usize].bytes);
        }
        // Slots number each rank's p2p ops in program order.
        for r in &plan.ranks {
            let mut slots: Vec<u32> =
                all.iter().flat_map(|t| [t.send, t.recv]).filter(|e| e.rank == r.rank).map(|e| e.slot).collect();
            slots.sort_unstable();
            assert!(slots.iter().enumerate().all(|(i, &s)| s == i as u32));
        }
    }
    let plan = emit(&Family::DualPipe.generate(4, 8, 2), &model(1), &training(), hashes()).unwrap();
    // A receive dropped from rank 2's first group that has one: rank 1 or 3 sends into nothing.
    let mut bad = plan.clone();
    let (node, ops) = bad.ranks[2]
        .nodes
        .iter_mut()
        .enumerate()
        .find_map(|(i, n)| match n {
            Node::Group { ops, .. } if ops.len() > 1 && ops.iter().any(|o| !o.send) => Some((i, ops)),
            _ => None,
        })
        .unwrap();
    let at = ops.iter().position(|o| !o.send).unwrap();
    let from = ops.remove(at).peer;
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains(&format!("rank {from}")) && err.contains("has no receive there"), "{err} (node {node})");
    // A receive into a buffer of another size.
    let mut bad = plan.clone();
    let r = &mut bad.ranks[1];
    let recv = r
        .nodes
        .iter_mut()
        .find_map(|n| match n {
            Node::Group { ops, .. } => ops.iter_mut().find(|o| !o.send),
            _ => None,
        })
        .unwrap();
    let size = r.buffers[recv.buffer as usize].bytes;
    let other = r.buffers.iter().position(|b| b.bytes != size).unwrap();
    let peer = recv.peer;
    recv.buffer = other as u32;
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains(&format!("rank {peer}")) && err.contains("the sizes differ"), "{err}");
}

#[test]
fn dualpipe_exchanges_mirrored_gradients_in_finishing_order_while_the_tail_computes() {
    // DualPipe on 2 ranks: each rank holds both stages, one copy per pipe. On both ranks
    // stage 1's copy is final early in the tail (rank 0: B1.7; rank 1: B0.7) and stage
    // 0's at the very end (the last W). So the exchange moves stage 1 first, then stage 0,
    // one gradient matrix per group in the order the weight gradient writes them (per
    // layer: w2's, then w1's); stage 1's groups may start before the program's last batch,
    // and each matrix is added and updated as soon as its groups are done, while the
    // next travels.
    use pipewright_plan::Node;
    let set = Family::DualPipe.generate(2, 8, 1);
    let plan = emit(&set, &model(2), &training(), hashes()).unwrap();
    for r in &plan.ranks {
        let name = |b: u32| r.buffers[b as usize].name.as_str();
        // "g2.3" (this rank's gradient) or "mirror.g2.3" (the peer's): (matrix, layer).
        let matrix = |b: u32| {
            let mut parts = name(b).rsplit('.');
            let layer: u32 = parts.next().unwrap().parse().unwrap();
            (parts.next().unwrap().to_owned(), layer)
        };
        let ticks = r.nodes.iter().rposition(|n| matches!(n, Node::Kernel(k) if k.name == "tick")).unwrap();
        // (node index, its ops as (send, matrix)).
        type Groups = Vec<(usize, Vec<(bool, (String, u32))>)>;
        let groups: Groups = r.nodes[ticks..]
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match n {
                Node::Group { ops, .. } => Some((ticks + i, ops.iter().map(|o| (o.send, matrix(o.buffer))).collect())),
                _ => None,
            })
            .collect();
        // Layers 2 and 3 are stage 1, layers 0 and 1 stage 0 (two layers per stage); each
        // group sends one matrix and receives the peer's copy of the same one.
        let order: Vec<(String, u32)> =
            [2, 3, 0, 1].into_iter().flat_map(|l| [("g2".to_owned(), l), ("g1".to_owned(), l)]).collect();
        assert_eq!(groups.len(), order.len(), "rank {}", r.rank);
        for ((_, ops), want) in groups.iter().zip(&order) {
            assert_eq!(ops, &vec![(true, want.clone()), (false, want.clone())], "rank {}", r.rank);
        }
        // Each group waits (on the communication stream) for the event recorded right after
        // the last product into the matrix it sends: stage 1's before the program's last
        // batch, stage 0's after it.
        let last_batch = r.nodes[..ticks].iter().rposition(|n| matches!(n, Node::Group { .. })).unwrap();
        for (k, &(at, ref ops)) in groups.iter().enumerate() {
            let Node::Wait { stream: 2, event } = r.nodes[at - 1] else {
                panic!("rank {}: group {k} waits for nothing", r.rank)
            };
            let recorded =
                r.nodes[..at].iter().rposition(|n| matches!(n, Node::Record { event: e, .. } if *e == event));
            let recorded = recorded.unwrap_or_else(|| panic!("rank {}: event {event} never recorded", r.rank));
            let Node::Gemm(product) = &r.nodes[recorded - 1] else {
                panic!("rank {}: group {k}'s event follows no product", r.rank)
            };
            assert_eq!(matrix(product.c), ops[0].1, "rank {}: group {k} waits for its own matrix", r.rank);
            let last_write =
                r.nodes[..ticks].iter().rposition(|n| matches!(n, Node::Gemm(g) if g.c == product.c)).unwrap();
            assert_eq!(last_write, recorded - 1, "rank {}: group {k} waits for the last product", r.rank);
            assert_eq!(recorded < last_batch, k < 4, "rank {}: group {k} final at node {recorded}", r.rank);
        }
        // The compute stream waits for each matrix's group, then adds and updates that
        // matrix only: stage 1's four before any of stage 0's.
        let compute_waits: Vec<usize> =
            (groups[0].0..r.nodes.len()).filter(|&i| matches!(r.nodes[i], Node::Wait { stream: 0, .. })).collect();
        assert_eq!(compute_waits.len(), order.len(), "rank {}", r.rank);
        for (k, (&at, want)) in compute_waits.iter().zip(&order).enumerate() {
            let end = compute_waits.get(k + 1).copied().unwrap_or(r.nodes.len());
            let updated: Vec<(String, u32)> = r.nodes[at..end]
                .iter()
                .filter_map(|n| match n {
                    Node::Kernel(k) if k.name == "sgd_update_sum" => Some(matrix(k.buffers[1])),
                    _ => None,
                })
                .collect();
            assert_eq!(updated, vec![want.clone()], "rank {}: after compute wait {k}", r.rank);
        }
    }
    // And the plan still computes the model.
    check(Family::DualPipe, 2, 8, 2);
}

#[test]
fn each_input_and_target_is_generated_right_before_its_first_use() {
    // Not in the prologue: a rank's program starts after it, and its peers wait for its
    // first forward (DualPipeV's first rank generated every microbatch's data before the
    // second could start). Each input and target once a step, on the stream and just
    // ahead of the first node that reads it.
    for (family, ranks, m) in [(Family::DualPipeV, 2, 6), (Family::DualPipe, 2, 4), (Family::OneFOneB, 4, 8)] {
        let plan = emit(&family.generate(ranks, m, 1), &model(1), &training(), hashes()).unwrap();
        let mut generated = 0;
        for rp in &plan.ranks {
            let prologue = rp.ops.iter().find(|o| o.label == "prologue").unwrap();
            for (i, node) in rp.nodes.iter().enumerate() {
                let Node::Kernel(k) = node else { continue };
                if !k.name.starts_with("synth_data") {
                    continue;
                }
                generated += 1;
                let name = &rp.buffers[k.buffers[0] as usize].name;
                assert!(i > prologue.last as usize, "{family:?} rank {}: {name} in the prologue", rp.rank);
                let reads = |n: &Node| match n {
                    Node::Gemm(g) => g.a == k.buffers[0] || g.b == k.buffers[0],
                    Node::Kernel(other) => {
                        other.buffers[1..].contains(&k.buffers[0]) && !other.name.starts_with("synth")
                    }
                    _ => false,
                };
                let first_read = rp.nodes.iter().position(reads).unwrap();
                assert!(first_read > i, "{family:?} rank {}: {name} read before it is generated", rp.rank);
                // Nothing but this rank's other work on that stream between the two.
                let stream_of = |n: &Node| match n {
                    Node::Gemm(g) => Some(g.stream),
                    Node::Kernel(k) => Some(k.stream),
                    _ => None,
                };
                assert_eq!(stream_of(&rp.nodes[first_read]), Some(k.stream), "{family:?} {name}");
                assert!(
                    rp.nodes[i + 1..first_read]
                        .iter()
                        .all(|n| !matches!(n, Node::Kernel(k) if k.name.starts_with("synth"))),
                    "{family:?} rank {}: {name} generated ahead of another's first use",
                    rp.rank
                );
            }
        }
        // Every microbatch's input and target: two per microbatch of each pipe.
        assert_eq!(generated, 2 * plan.pipes * plan.microbatches, "{family:?}");
    }
}

/// Every read or write of a buffer by one stream of a rank happens after the last
/// conflicting access by another (a write before a read, any access before a write), as
/// the GPU orders streams: each stream in issue order, a `Wait` ordering its stream after
/// everything the event's latest `Record` (in issue order) followed. Groups read what they
/// send and write what they receive; a kernel counts as writing every buffer it is given.
/// And every stream but the compute stream joins it (waits, directly or not, for an event
/// recorded there) before it does anything: the runtime captures the step from the
/// compute stream, and work on a stream that never joined would fall outside the graph
/// (CUDA refuses the capture).
fn check_stream_order(plan: &Plan) -> StreamOrder {
    use pipewright_plan::node::{Epilogue, Node};
    use std::collections::HashMap;
    type Clock = Vec<u64>;
    let mut checked = StreamOrder { accesses: 0, batch_waits: 0 };
    for r in &plan.ranks {
        // Events recorded on the communication stream: a compute stream waiting for one
        // waits for a batch.
        let mut batch_events: std::collections::HashSet<u32> = Default::default();
        let n = r.streams as usize;
        let mut clock: Vec<Clock> = vec![vec![0; n]; n];
        let mut events: HashMap<u32, Clock> = HashMap::new();
        // Per buffer: the last write (stream, its time), and the reads since.
        let mut last_write: HashMap<u32, (usize, u64)> = HashMap::new();
        let mut reads: HashMap<u32, Vec<(usize, u64)>> = HashMap::new();
        let mut joined = vec![false; n];
        joined[0] = true;
        let mut joined_events: std::collections::HashSet<u32> = Default::default();
        for (i, node) in r.nodes.iter().enumerate() {
            let on = |s: u32| {
                assert!(
                    joined[s as usize],
                    "rank {} node {i} ({node:?}): stream {s} has not joined the compute stream",
                    r.rank
                )
            };
            let (stream, accesses): (usize, Vec<(u32, bool)>) = match node {
                Node::Record { stream, event } => {
                    on(*stream);
                    joined_events.insert(*event);
                    if *stream == pipewright_plan::COMM_STREAM {
                        batch_events.insert(*event);
                    } else {
                        batch_events.remove(event);
                    }
                    events.insert(*event, clock[*stream as usize].clone());
                    continue;
                }
                Node::Wait { stream, event } => {
                    let s = *stream as usize;
                    let e = events.get(event).unwrap_or_else(|| panic!("rank {} node {i}: wait before record", r.rank));
                    for k in 0..n {
                        clock[s][k] = clock[s][k].max(e[k]);
                    }
                    joined[s] |= joined_events.contains(event);
                    if *stream != pipewright_plan::COMM_STREAM && batch_events.contains(event) {
                        checked.batch_waits += 1;
                    }
                    continue;
                }
                Node::Gemm(g) => {
                    let mut a = vec![(g.a, false), (g.b, false), (g.c, true)];
                    match g.epilogue {
                        Epilogue::Gelu { pre } => a.push((pre, true)),
                        Epilogue::GeluGrad { pre } => a.push((pre, false)),
                        Epilogue::None => {}
                    }
                    (g.stream as usize, a)
                }
                Node::Kernel(k) => (k.stream as usize, k.buffers.iter().map(|&b| (b, true)).collect()),
                Node::Group { stream, ops } => (*stream as usize, ops.iter().map(|o| (o.buffer, !o.send)).collect()),
            };
            on(stream as u32);
            clock[stream][stream] += 1;
            let now = clock[stream].clone();
            let ordered = |(s, t): (usize, u64)| s == stream || now[s] >= t;
            for (b, write) in accesses {
                let name = &r.buffers[b as usize].name;
                if let Some(&w) = last_write.get(&b) {
                    assert!(
                        ordered(w),
                        "rank {} node {i} ({node:?}): {name} races the write on stream {}",
                        r.rank,
                        w.0
                    );
                }
                if write {
                    for &rd in reads.get(&b).into_iter().flatten() {
                        assert!(ordered(rd), "rank {} node {i}: writes {name} before stream {}'s read", r.rank, rd.0);
                    }
                    last_write.insert(b, (stream, now[stream]));
                    reads.remove(&b);
                } else {
                    reads.entry(b).or_default().push((stream, now[stream]));
                }
                checked.accesses += 1;
            }
        }
    }
    checked
}

/// What [`check_stream_order`] checked: buffer accesses, and the waits of a compute stream
/// for a batch.
struct StreamOrder {
    accesses: usize,
    batch_waits: usize,
}

#[test]
fn no_stream_touches_a_buffer_another_has_not_finished_with() {
    use pipewright_compiler::cost::CommMode;
    for (family, ranks, m) in [
        (Family::ZbV, 2, 4),
        (Family::OneFOneB, 4, 8),
        (Family::ZbH1, 4, 8),
        (Family::DualPipe, 2, 8),
        (Family::DualPipe, 4, 8),
        (Family::DualPipeV, 2, 8),
        (Family::DualPipeV, 4, 10),
        (Family::Interleaved1F1B, 2, 4),
    ] {
        let set = family.generate(ranks, m, 2);
        for comm in [CommMode::Blocking, CommMode::AsyncInOrder, CommMode::Async] {
            for layers in [1, 2] {
                let plan = emit_with(&set, &model(layers), &training(), hashes(), comm).unwrap();
                plan.validate().unwrap();
                assert!(check_stream_order(&plan).accesses > 0, "{}", family.name());
            }
        }
    }
}

#[test]
fn the_race_check_catches_a_batch_moved_before_the_units_it_waits_for() {
    // Mutation: the first batch of an async DualPipe plan with early batches waits for
    // nothing; its send then races the product that writes it.
    use pipewright_compiler::cost::CommMode;
    let set = Family::DualPipe.generate(2, 8, 2);
    let mut plan = emit_with(&set, &model(1), &training(), hashes(), CommMode::Async).unwrap();
    let r = &mut plan.ranks[0];
    let i = r.nodes.iter().position(|n| matches!(n, Node::Wait { stream: 2, .. })).unwrap();
    r.nodes.remove(i);
    let caught = std::panic::catch_unwind(|| check_stream_order(&plan));
    assert!(caught.is_err(), "the race went unnoticed");
}

/// Per batch of the program on each rank: the weight-gradient products (into `g1.*`,
/// `g2.*`) issued after the last compute event its communication stream waited for, and
/// before it; summed.
fn weight_products_overlapping_batches(plan: &Plan) -> usize {
    let mut count = 0;
    for r in &plan.ranks {
        let mut recorded: std::collections::HashMap<u32, usize> = Default::default();
        let mut waited = 0;
        for (i, n) in r.nodes.iter().enumerate() {
            match n {
                Node::Record { stream, event } if *stream < 2 => {
                    recorded.insert(*event, i);
                }
                Node::Wait { stream: 2, event } => waited = waited.max(recorded.get(event).copied().unwrap_or(0)),
                // The program's batches (the epilogue's mirror-gradient groups overlap the
                // products on purpose).
                Node::Group { ops, .. }
                    if ops.iter().all(|o| r.buffers[o.buffer as usize].name.starts_with("slot")) =>
                {
                    count += r.nodes[waited..i]
                        .iter()
                        .filter(|m| {
                            matches!(m, Node::Gemm(g) if ["g1.", "g2."].iter().any(|p| r.buffers[g.c as usize].name.starts_with(p)))
                        })
                        .count();
                }
                _ => {}
            }
        }
    }
    count
}

#[test]
fn early_batches_leave_a_backwards_weight_gradient_to_overlap_the_transfer() {
    use pipewright_compiler::cost::CommMode;
    for (family, ranks, m) in
        [(Family::DualPipe, 2, 8), (Family::DualPipeV, 2, 8), (Family::OneFOneB, 4, 8), (Family::DualPipeV, 1, 16)]
    {
        let set = family.generate(ranks, m, 2);
        let emit = |comm| emit_with(&set, &model(1), &training(), hashes(), comm).unwrap();
        let (in_order, early) = (emit(CommMode::AsyncInOrder), emit(CommMode::Async));
        assert_eq!(weight_products_overlapping_batches(&in_order), 0, "{}", family.name());
        // (One rank has no batches, and must not pay a slot for them.)
        assert!(ranks == 1 || weight_products_overlapping_batches(&early) > 0, "{}", family.name());
        // At the cost of at most one slot a module more.
        let slots = |p: &Plan| {
            p.ranks.iter().map(|r| r.buffers.iter().filter(|b| b.name.ends_with(".dx0")).count()).sum::<usize>()
        };
        let modules: usize =
            in_order.ranks.iter().map(|r| r.buffers.iter().filter(|b| b.name.starts_with("g1.")).count()).sum();
        assert!(
            slots(&early) <= slots(&in_order) + modules,
            "{}: {} slots against {}",
            family.name(),
            slots(&early),
            slots(&in_order)
        );
    }
}
