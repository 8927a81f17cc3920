//! After the program: DualPipe's mirror-gradient sum, and the optimizer.
//!
//! With mirrored pipes each stage's weights live on two ranks (one per direction), and
//! each copy's gradient is half of the step's: the two ranks exchange them and both add.
//! A copy's gradient is final after its last weight gradient, and the two copies of a
//! stage finish at different times (DualPipe: one early in the tail, one at the very end).
//! So the exchange goes by *finishing order*, not by stage: the groups of a pair of ranks
//! move this rank's `i`-th finished stage and receive the peer's `i`-th finished (both
//! ranks compute both orders from the programs, so the groups match op for op), one
//! group per gradient matrix in the order the weight gradient writes them, on the
//! communication stream after the program's last batch, each group waiting only for the
//! last product into the matrix it sends. The early stage thus travels while the tail
//! still computes, and the last one matrix by matrix: its first while the last weight
//! gradient computes the others, each added and updated while the next is in flight.
//! (Measured on 2 × H200, per matrix was no faster than per stage: there the exchange's
//! bandwidth, not when it starts, bounds the tail; `[model] mirror_sum = "bf16"` halves
//! its bytes.)
//!
//! Deadlock-free: every group comes after all of the program's batches on its rank's
//! communication stream, a group waits only for its own rank's compute (which never waits
//! for an exchange before the epilogue), and the groups of a pair are posted in the same
//! order on both sides; pairs go in one global order (by the lower rank, then the higher).

use super::{step_span, Rank, COMM, COMPUTE};
use crate::ir::{Layout, ProgramSet};
use crate::mirror::mirror_of;
use pipewright_plan::node::{self, Kernel, Node, P2p};
use pipewright_plan::{Dtype, OpSpan, Training};

/// The rank holding the mirror copy of module `dir` of `rank`, if its pipe is mirrored.
pub(super) fn mirror_peer(rank: &Rank, dir: u32) -> Option<u32> {
    mirror_of(rank.layout, rank.rank, dir).map(|(peer, _)| peer)
}

/// The stages of `rank`'s modules mirrored on `peer`, in finishing order.
fn finishing_order(layout: &Layout, set: &ProgramSet, rank: u32, peer: u32) -> Vec<u32> {
    crate::mirror::finishing_order(layout, set, rank, peer).into_iter().map(|(stage, _)| stage).collect()
}

/// The epilogue of `rank`: the step counters, the mirror-gradient exchange, the
/// accumulation and the optimizer (module doc).
pub(super) fn epilogue(rank: &mut Rank, training: &Training, set: &ProgramSet, spans: &mut Vec<OpSpan>) {
    let first = rank.nodes.len() as u32;
    let step = ticks(rank, training);
    spans.extend(step_span("epilogue", first, rank.nodes.len() as u32));
    let dirs = rank.layout.modules[rank.rank as usize].len() as u32;
    // One global order of pairs: by the lower rank, then the higher.
    for peer in crate::mirror::peers(rank.layout, rank.rank) {
        exchange_with(rank, training, set, step, peer, spans);
    }
    // The stages no one mirrors.
    let first = rank.nodes.len() as u32;
    let unmirrored: Vec<u32> = (0..dirs).filter(|&d| mirror_peer(rank, d).is_none()).collect();
    for dir in unmirrored {
        let stage = rank.stage(dir).1;
        for l in 0..rank.model.layers_per_stage {
            update(rank, training, step, stage, l);
        }
    }
    spans.extend(step_span("epilogue: updates", first, rank.nodes.len() as u32));
}

/// The dtype mirrored gradient copies travel in (`[model] mirror_sum`).
fn travel_dtype(rank: &Rank) -> Dtype {
    if rank.model.mirror_bf16 {
        Dtype::Bf16
    } else {
        Dtype::F32
    }
}

/// The gradient matrices of `stage` on `rank`, in the order a weight gradient writes them
/// (per layer: w2's, then w1's): (gradient, the peer's copy as received, elements, layer,
/// which: 1 or 2).
pub(super) fn matrices(rank: &mut Rank, stage: u32) -> Vec<(u32, u32, u64, u32, u32)> {
    let (h, f) = (rank.model.hidden as u64, rank.model.ffn as u64);
    let travel = travel_dtype(rank);
    let mut out = Vec::new();
    for l in 0..rank.model.layers_per_stage {
        let gl = rank.global_layer(stage, l);
        let (_, _, g1, g2) = rank.weights(stage, l);
        let s2 = rank.buffer(format!("mirror.g2.{gl}"), f * h, travel);
        let s1 = rank.buffer(format!("mirror.g1.{gl}"), h * f, travel);
        out.extend([(g2, s2, f * h, l, 2), (g1, s1, h * f, l, 1)]);
    }
    out
}

/// The groups with `peer` in finishing order, one per gradient matrix, then each matrix's
/// accumulation and update once the groups that moved it are done.
fn exchange_with(
    rank: &mut Rank,
    training: &Training,
    set: &ProgramSet,
    step: Option<u32>,
    peer: u32,
    spans: &mut Vec<OpSpan>,
) {
    let mine = finishing_order(rank.layout, set, rank.rank, peer);
    let theirs = finishing_order(rank.layout, set, peer, rank.rank);
    let dir_of = |rank: &Rank, stage: u32| {
        (0..rank.grad_events.len() as u32).find(|&d| rank.stage(d).1 == stage && mirror_peer(rank, d) == Some(peer))
    };
    // The group events: ((stage, matrix), the event of the group that sent it, of the one
    // that received its mirror).
    let mut sent = Vec::new();
    let mut received = Vec::new();
    for (i, (&send, &recv)) in mine.iter().zip(&theirs).enumerate() {
        let events = dir_of(rank, send).and_then(|d| rank.grad_events[d as usize].clone());
        let out = matrices(rank, send);
        let inn = matrices(rank, recv);
        for (j, (&(g, _, n, ..), &(_, s, ..))) in out.iter().zip(&inn).enumerate() {
            if let Some(events) = &events {
                rank.nodes.push(Node::Wait { stream: COMM, event: events[j] });
            }
            let first = rank.nodes.len() as u32;
            // In bf16, the copy to send is rounded into a buffer of its own, on the
            // communication stream (what the compute stream does meanwhile is unaffected).
            let sent_copy = if travel_dtype(rank) == Dtype::Bf16 {
                let name = format!("mirror.send.{}", rank.buffers[g as usize].name);
                let copy = rank.buffer(name, n, Dtype::Bf16);
                let cast = Kernel {
                    stream: COMM,
                    name: "cast_bf16".into(),
                    buffers: vec![g, copy],
                    elements: n,
                    scalars: vec![],
                };
                rank.nodes.push(Node::Kernel(cast));
                copy
            } else {
                g
            };
            let ops = vec![P2p { send: true, peer, buffer: sent_copy }, P2p { send: false, peer, buffer: s }];
            let bytes = ops.iter().map(|o| rank.buffers[o.buffer as usize].bytes).sum();
            let group = rank.nodes.len() as u32;
            rank.nodes.push(Node::Group { stream: COMM, ops });
            let done = rank.new_event();
            rank.nodes.push(Node::Record { stream: COMM, event: done });
            spans.push(OpSpan {
                label: format!("mirror-sum {i}.{j} with rank {peer}"),
                kind: "COMM".into(),
                stages: vec![send, recv],
                stream: COMM,
                first,
                last: group,
                bytes,
            });
            sent.push(((send, j), done));
            received.push(((recv, j), done));
        }
    }
    // A matrix is ready once both its groups are done (groups complete in order).
    let mut ready: Vec<(u32, (u32, usize))> =
        sent.iter().filter_map(|&(m, e)| received.iter().find(|r| r.0 == m).map(|&(_, r)| (e.max(r), m))).collect();
    ready.sort();
    for (event, (stage, j)) in ready {
        let first = rank.nodes.len() as u32;
        rank.nodes.push(Node::Wait { stream: COMPUTE, event });
        let (g, s, n, l, which) = matrices(rank, stage)[j];
        // SGD adds the peer's f32 copy in its own pass; else the sum is a pass of its own.
        let fused = step.is_none() && travel_dtype(rank) == Dtype::F32;
        if !fused {
            let accumulate = node::kernel_name("accumulate", travel_dtype(rank));
            rank.kernel(COMPUTE, &accumulate, vec![s, g], n, vec![]);
        }
        update_matrix(rank, training, step, (stage, l, which), fused.then_some(s));
        let label = format!("epilogue: stage {stage} w{which}.{}", rank.global_layer(stage, l));
        spans.extend(step_span(&label, first, rank.nodes.len() as u32));
    }
}

/// The step counters the epilogue advances: the data's step, and AdamW's (returned).
fn ticks(rank: &mut Rank, training: &Training) -> Option<u32> {
    if let Some(&data_step) = rank.by_name.get("data.step") {
        rank.kernel(COMPUTE, "tick", vec![data_step], 1, vec![]);
    }
    let step = (training.optimizer == "adamw").then(|| rank.buffer("adam.step".into(), 1, Dtype::F32));
    if let Some(step) = step {
        rank.kernel(COMPUTE, "tick", vec![step], 1, vec![]);
    }
    step
}

/// The optimizer's update of layer `l` of `stage` (AdamW when `step` is its counter, else
/// SGD); bf16: on the f32 master weights, and into the bf16 copy.
fn update(rank: &mut Rank, training: &Training, step: Option<u32>, stage: u32, l: u32) {
    for which in [1, 2] {
        update_matrix(rank, training, step, (stage, l, which), None);
    }
}

/// [`update`] of one matrix of the layer: w1 (`which` 1) or w2, with `sum` (SGD only) the
/// mirror copy's f32 gradient to add first. SGD is one pass over the matrix — the sum, the
/// update and the bf16 copy fused (`sgd_update[_sum][_bf16]`: the epilogue runs beside the
/// next gradient exchange, which the memory traffic of separate passes slowed); AdamW is
/// its update, then in bf16 a cast.
fn update_matrix(
    rank: &mut Rank,
    training: &Training,
    step: Option<u32>,
    (stage, l, which): (u32, u32, u32),
    sum: Option<u32>,
) {
    let n = rank.model.hidden as u64 * rank.model.ffn as u64;
    let lr = training.lr as f32;
    let gl = rank.global_layer(stage, l);
    let (w1, w2, g1, g2) = rank.weights(stage, l);
    let (w, g) = if which == 1 { (w1, g1) } else { (w2, g2) };
    let dtype = rank.model.dtype;
    let copy = w;
    let w = if dtype == Dtype::Bf16 { rank.buffer(format!("master.w{which}.{gl}"), n, Dtype::F32) } else { w };
    match step {
        Some(step) => {
            debug_assert!(sum.is_none(), "AdamW's plans sum the mirror copy in a pass of its own");
            let m = rank.buffer(format!("adam.m{which}.{gl}"), n, Dtype::F32);
            let v = rank.buffer(format!("adam.v{which}.{gl}"), n, Dtype::F32);
            rank.kernel(COMPUTE, "adamw_update", vec![w, g, m, v, step], n, vec![lr, 0.9, 0.999, 1e-8, 0.01]);
            if dtype == Dtype::Bf16 {
                rank.kernel(COMPUTE, "cast_bf16", vec![w, copy], n, vec![]);
            }
        }
        None => {
            let (base, mut buffers) = match sum {
                Some(r) => ("sgd_update_sum", vec![w, g, r]),
                None => ("sgd_update", vec![w, g]),
            };
            if dtype == Dtype::Bf16 {
                buffers.push(copy);
            }
            rank.kernel(COMPUTE, &node::kernel_name(base, dtype), buffers, n, vec![lr]);
        }
    }
}
