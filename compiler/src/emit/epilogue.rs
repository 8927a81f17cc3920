//! After the program: DualPipe's mirror-gradient sum, and the optimizer.
//!
//! With mirrored pipes each stage's weights live on two ranks (one per direction), and
//! each copy's gradient is half of the step's: the two ranks exchange them and both add.
//! A copy's gradient is final after its last weight gradient, and the two copies of a
//! stage finish at different times (DualPipe: one early in the tail, one at the very end).
//! So the exchange goes by *finishing order*, not by stage: group `i` of a pair of ranks
//! sends this rank's `i`-th finished stage and receives the peer's `i`-th finished (both
//! ranks compute both orders from the programs, so the groups match op for op), on the
//! communication stream after the program's last batch, each group waiting only for the
//! last weight gradient of what it sends. The early group thus travels while the tail
//! still computes. A stage is added and updated as soon as the groups that sent and
//! received it are done, while later groups are in flight.
//!
//! Deadlock-free: every group comes after all of the program's batches on its rank's
//! communication stream, a group waits only for its own rank's compute (which never waits
//! for an exchange before the epilogue), and the groups of a pair are posted in the same
//! order on both sides; pairs go in one global order (by the lower rank, then the higher).

use super::{step_span, Rank, COMM, COMPUTE};
use crate::ir::{Event, Layout, ProgramSet};
use pipewright_plan::node::{Node, P2p};
use pipewright_plan::{Dtype, OpSpan, Training};

/// The rank holding the mirror copy of module `dir` of `rank` in `layout`, and the stage,
/// if its pipe is mirrored.
fn mirror_of(layout: &Layout, rank: u32, dir: u32) -> Option<(u32, u32)> {
    let m = layout.modules[rank as usize].get(dir as usize)?;
    if layout.mirrored_pipes.is_empty() || (m.pipe != 0 && !layout.mirrored_pipes.contains(&m.pipe)) {
        return None;
    }
    let other = if m.pipe == 0 { 1 } else { 0 };
    layout.locate(other, m.stage).map(|(peer, _)| (peer, m.stage))
}

/// The rank holding the mirror copy of module `dir` of `rank`, if its pipe is mirrored.
pub(super) fn mirror_peer(rank: &Rank, dir: u32) -> Option<u32> {
    mirror_of(rank.layout, rank.rank, dir).map(|(peer, _)| peer)
}

/// The stages of `rank`'s modules mirrored on `peer`, in the order their gradients become
/// final in `rank`'s program (its last B, W, or FB backward of each; ties, and a stage
/// with none, by stage).
fn finishing_order(layout: &Layout, set: &ProgramSet, rank: u32, peer: u32) -> Vec<u32> {
    let mirrored = |dir: u32| mirror_of(layout, rank, dir).filter(|&(p, _)| p == peer).map(|(_, stage)| stage);
    let dirs = layout.modules[rank as usize].len() as u32;
    let mut last: Vec<(usize, u32)> = (0..dirs).filter_map(|d| mirrored(d).map(|s| (0, s))).collect();
    for (i, event) in set.programs[rank as usize].iter().enumerate() {
        let dir = match event {
            Event::B { dir, .. } | Event::W { dir, .. } => *dir,
            Event::FB { b, .. } => b.dir,
            _ => continue,
        };
        if let Some(stage) = mirrored(dir) {
            for entry in last.iter_mut().filter(|e| e.1 == stage) {
                entry.0 = i + 1;
            }
        }
    }
    last.sort();
    last.into_iter().map(|(_, s)| s).collect()
}

/// The epilogue of `rank`: the step counters, the mirror-gradient exchange, the
/// accumulation and the optimizer (module doc).
pub(super) fn epilogue(rank: &mut Rank, training: &Training, set: &ProgramSet, spans: &mut Vec<OpSpan>) {
    let first = rank.nodes.len() as u32;
    let step = ticks(rank, training);
    spans.extend(step_span("epilogue", first, rank.nodes.len() as u32));
    let dirs = rank.layout.modules[rank.rank as usize].len() as u32;
    let mut peers: Vec<u32> = (0..dirs).filter_map(|d| mirror_peer(rank, d)).collect();
    peers.sort();
    peers.dedup();
    // One global order of pairs: by the lower rank, then the higher.
    peers.sort_by_key(|&p| (p.min(rank.rank), p.max(rank.rank)));
    for peer in peers {
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

/// The groups with `peer` in finishing order, then each stage's accumulation and update
/// once the groups that moved it are done.
fn exchange_with(
    rank: &mut Rank,
    training: &Training,
    set: &ProgramSet,
    step: Option<u32>,
    peer: u32,
    spans: &mut Vec<OpSpan>,
) {
    let (h, f) = (rank.model.hidden as u64, rank.model.ffn as u64);
    let mine = finishing_order(rank.layout, set, rank.rank, peer);
    let theirs = finishing_order(rank.layout, set, peer, rank.rank);
    let dir_of = |rank: &Rank, stage: u32| {
        (0..rank.grad_events.len() as u32).find(|&d| rank.stage(d).1 == stage && mirror_peer(rank, d) == Some(peer))
    };
    // Per stage: (gradients, mirror scratch) of each of its layers.
    let buffers = |rank: &mut Rank, stage: u32| -> Vec<(u32, u32, u64)> {
        let mut out = Vec::new();
        for l in 0..rank.model.layers_per_stage {
            let gl = rank.global_layer(stage, l);
            let (_, _, g1, g2) = rank.weights(stage, l);
            let s1 = rank.buffer(format!("mirror.g1.{gl}"), h * f, Dtype::F32);
            let s2 = rank.buffer(format!("mirror.g2.{gl}"), f * h, Dtype::F32);
            out.extend([(g1, s1, h * f), (g2, s2, f * h)]);
        }
        out
    };
    // The group events: (stage, the event of the group that sent it, of the one that
    // received its mirror).
    let mut sent = Vec::new();
    let mut received = Vec::new();
    for (i, (&send, &recv)) in mine.iter().zip(&theirs).enumerate() {
        if let Some(Some(e)) = dir_of(rank, send).map(|d| rank.grad_events[d as usize]) {
            rank.nodes.push(Node::Wait { stream: COMM, event: e });
        }
        let out = buffers(rank, send);
        let inn = buffers(rank, recv);
        let mut ops: Vec<P2p> = out.iter().map(|&(g, _, _)| P2p { send: true, peer, buffer: g }).collect();
        ops.extend(inn.iter().map(|&(_, s, _)| P2p { send: false, peer, buffer: s }));
        let bytes = ops.iter().map(|o| rank.buffers[o.buffer as usize].bytes).sum();
        let group = rank.nodes.len() as u32;
        rank.nodes.push(Node::Group { stream: COMM, ops });
        let done = rank.new_event();
        rank.nodes.push(Node::Record { stream: COMM, event: done });
        spans.push(OpSpan {
            label: format!("mirror-sum {i} with rank {peer}"),
            kind: "COMM".into(),
            stages: vec![send, recv],
            stream: COMM,
            first: group,
            last: group,
            bytes,
        });
        sent.push((send, done));
        received.push((recv, done));
    }
    // A stage is ready once both its groups are done (groups complete in order).
    let mut ready: Vec<(u32, u32)> = sent
        .iter()
        .filter_map(|&(stage, e)| received.iter().find(|r| r.0 == stage).map(|&(_, r)| (e.max(r), stage)))
        .collect();
    ready.sort();
    for (event, stage) in ready {
        let first = rank.nodes.len() as u32;
        rank.nodes.push(Node::Wait { stream: COMPUTE, event });
        for (g, s, n) in buffers(rank, stage) {
            rank.kernel(COMPUTE, "accumulate", vec![s, g], n, vec![]);
        }
        for l in 0..rank.model.layers_per_stage {
            update(rank, training, step, stage, l);
        }
        spans.extend(step_span(&format!("epilogue: stage {stage}"), first, rank.nodes.len() as u32));
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
/// SGD); bf16: on the f32 master weights, then a cast into the bf16 copy.
fn update(rank: &mut Rank, training: &Training, step: Option<u32>, stage: u32, l: u32) {
    let (h, f) = (rank.model.hidden as u64, rank.model.ffn as u64);
    let lr = training.lr as f32;
    let gl = rank.global_layer(stage, l);
    let (w1, w2, g1, g2) = rank.weights(stage, l);
    for (w, g, n, which) in [(w1, g1, h * f, 1), (w2, g2, f * h, 2)] {
        let bf16 = rank.model.dtype == Dtype::Bf16;
        let copy = w;
        let w = if bf16 { rank.buffer(format!("master.w{which}.{gl}"), n, Dtype::F32) } else { w };
        match step {
            Some(step) => {
                let m = rank.buffer(format!("adam.m{which}.{gl}"), n, Dtype::F32);
                let v = rank.buffer(format!("adam.v{which}.{gl}"), n, Dtype::F32);
                rank.kernel(COMPUTE, "adamw_update", vec![w, g, m, v, step], n, vec![lr, 0.9, 0.999, 1e-8, 0.01]);
            }
            None => rank.kernel(COMPUTE, "sgd_update", vec![w, g], n, vec![lr]),
        }
        if bf16 {
            rank.kernel(COMPUTE, "cast_bf16", vec![w, copy], n, vec![]);
        }
    }
}
