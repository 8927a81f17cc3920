//! Places p2p batches into compute-only programs, with the reference's blocking discipline.
//!
//! Before each compute op, the receives it needs join the pending sends, and all of them
//! are issued as one batch and waited for; after the op, its outputs' sends become
//! pending. So a send rides with the next op's receive, as in Megatron's
//! `send_forward_recv_backward` and DualPipe's `_commit_and_wait_comm`: two neighbours
//! that exchange in opposite directions post one batch each and never wait on each other
//! in a cycle. A transfer whose two ends are on the same rank needs no communication.

use crate::ir::{Chunk, CommKind, CommOp, Event, Layout, UnitKind};

/// The p2p op that brings the input of `unit` to `rank`, if one is needed.
pub fn recv_for(layout: &Layout, rank: u32, kind: UnitKind, c: Chunk) -> Option<CommOp> {
    let m = layout.module(rank, c.dir)?;
    let (peer_stage, comm) = match kind {
        UnitKind::F if m.stage > 0 => (m.stage - 1, CommKind::RecvF),
        UnitKind::B | UnitKind::I if m.stage + 1 < layout.stages => (m.stage + 1, CommKind::RecvB),
        _ => return None,
    };
    let (peer, _) = layout.locate(m.pipe, peer_stage)?;
    (peer != rank).then_some(CommOp { kind: comm, peer, dir: c.dir, mb: c.mb })
}

/// The p2p op that ships the output of `unit` from `rank`, if one is needed.
pub fn send_for(layout: &Layout, rank: u32, kind: UnitKind, c: Chunk) -> Option<CommOp> {
    let m = layout.module(rank, c.dir)?;
    let (peer_stage, comm) = match kind {
        UnitKind::F if m.stage + 1 < layout.stages => (m.stage + 1, CommKind::SendF),
        UnitKind::B | UnitKind::I if m.stage > 0 => (m.stage - 1, CommKind::SendB),
        _ => return None,
    };
    let (peer, _) = layout.locate(m.pipe, peer_stage)?;
    (peer != rank).then_some(CommOp { kind: comm, peer, dir: c.dir, mb: c.mb })
}

/// Adds COMM batches to compute-only programs (`order[rank]`).
pub fn insert(layout: &Layout, order: &[Vec<Event>]) -> Vec<Vec<Event>> {
    order
        .iter()
        .enumerate()
        .map(|(r, ops)| {
            let rank = r as u32;
            let mut out = Vec::with_capacity(ops.len() * 2);
            let mut pending: Vec<CommOp> = Vec::new();
            for op in ops {
                let units = op.units();
                pending.extend(units.iter().filter_map(|&(k, c)| recv_for(layout, rank, k, c)));
                if !pending.is_empty() {
                    out.push(Event::Comm { ops: std::mem::take(&mut pending) });
                }
                out.push(op.clone());
                pending.extend(units.iter().filter_map(|&(k, c)| send_for(layout, rank, k, c)));
            }
            if !pending.is_empty() {
                out.push(Event::Comm { ops: pending });
            }
            out
        })
        .collect()
}
