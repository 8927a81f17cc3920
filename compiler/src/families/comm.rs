//! Places p2p batches into compute-only programs, with the reference's blocking discipline.
//!
//! - A send becomes pending right after the op that produced its value, and is issued with
//!   the next batch, as in DualPipe's `_commit_and_wait_comm` and Megatron's combined
//!   `send_forward_recv_backward`.
//! - Sends from rank a to rank b and receives on b from a match in FIFO order (one NCCL
//!   communicator, no tags). So b posts its receives from a **in the order a sends**, each
//!   no later than the op that consumes it: when a value sent later is consumed first, the
//!   earlier one is received early too. This is what keeps V-shaped and interleaved
//!   schedules, where one rank pair carries both activations and gradients, from pairing a
//!   send with the wrong receive.
//! - Before each compute op, the pending sends and the receives due there are issued as one
//!   batch and waited for.
//!
//! A transfer whose two ends are on the same rank needs no communication.
//!
//! Issuing sends as early as that can deadlock under rendezvous: in V-shaped and interleaved
//! schedules a rank may post a send its peer will only receive after the peer's own send
//! to it, which waits in turn ([`repair`]). The repair runs the Plan DAG and, wherever a
//! rank is stuck at a batch, issues that batch's waiting sends later (with the next receive
//! from the same peer when there is one), until the program set runs; the DAG, not this
//! heuristic, is what decides.
//!
//! When the repair cannot untangle a plan, [`lockstep`] places communication in a way that
//! cannot deadlock: it walks one global order of the compute ops that respects every data
//! dependency, and posts each transfer's send and receive at the same point of that order.
//! Every wait-for edge then points forward in the order, so the Plan DAG is acyclic.

use crate::cost::{CommMode, CostModel};
use crate::dag::PlanDag;
use crate::ir::{Chunk, CommKind, CommOp, Event, Layout, ProgramSet, UnitKind};
use crate::sim::{finish_times_strict, stuck_events};
use std::collections::HashMap;

/// A transferred value: (pipe, stage of the producing module, microbatch, is a gradient).
type ValueKey = (u32, u32, u32, bool);

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

/// The value a p2p op carries: (pipe, stage of the producing module, mb, is gradient).
fn value(layout: &Layout, rank: u32, op: &CommOp) -> Option<ValueKey> {
    crate::dag::payload(layout, rank, op.kind, op.dir, op.mb).map(|u| (u.pipe, u.stage, u.mb, u.kind == UnitKind::B))
}

/// Adds COMM batches to compute-only programs (`order[rank]`).
pub fn insert(layout: &Layout, order: &[Vec<Event>]) -> Vec<Vec<Event>> {
    let ranks = order.len();
    // Sends of each rank, in program order, with the position after which they are pending.
    let sends: Vec<Vec<(usize, CommOp)>> = order
        .iter()
        .enumerate()
        .map(|(r, ops)| {
            ops.iter()
                .enumerate()
                .flat_map(|(i, op)| {
                    op.units().into_iter().filter_map(move |(k, c)| send_for(layout, r as u32, k, c).map(|s| (i, s)))
                })
                .collect()
        })
        .collect();
    // Receives of each rank, each with the position of the op that consumes it.
    let mut due: Vec<HashMap<(u32, ValueKey), (usize, CommOp)>> = vec![HashMap::new(); ranks];
    for (r, ops) in order.iter().enumerate() {
        for (i, op) in ops.iter().enumerate() {
            for (k, c) in op.units() {
                if let Some(recv) = recv_for(layout, r as u32, k, c) {
                    if let Some(v) = value(layout, r as u32, &recv) {
                        due[r].insert((recv.peer, v), (i, recv));
                    }
                }
            }
        }
    }
    // Post position of each receive: the sender's order, each no later than its consumer.
    let mut posts: Vec<Vec<Vec<CommOp>>> = order.iter().map(|ops| vec![Vec::new(); ops.len()]).collect();
    let mut unmatched: Vec<Vec<(usize, CommOp)>> = vec![Vec::new(); ranks];
    for (a, list) in sends.iter().enumerate() {
        for b in 0..ranks {
            let channel: Vec<(usize, CommOp)> = list
                .iter()
                .filter(|(_, s)| s.peer as usize == b)
                .filter_map(|(_, s)| {
                    let v = value(layout, a as u32, s)?;
                    due[b].remove(&(a as u32, v))
                })
                .collect();
            let mut latest = usize::MAX;
            let mut placed: Vec<(usize, CommOp)> = channel
                .iter()
                .rev()
                .map(|&(at, op)| {
                    latest = latest.min(at);
                    (latest, op)
                })
                .collect();
            placed.reverse();
            for (at, op) in placed {
                posts[b][at].push(op);
            }
        }
    }
    // Receives nobody sends stay before their consumer; the Plan DAG reports them.
    for (b, rest) in due.into_iter().enumerate() {
        unmatched[b].extend(rest.into_values());
    }
    for (b, rest) in unmatched.iter_mut().enumerate() {
        rest.sort_by_key(|&(at, op)| (at, op.peer, op.mb));
        for &(at, op) in rest.iter() {
            posts[b][at].push(op);
        }
    }

    order
        .iter()
        .enumerate()
        .map(|(r, ops)| {
            let mut out = Vec::with_capacity(ops.len() * 2);
            let mut pending: Vec<CommOp> = Vec::new();
            let mut next_send = sends[r].iter().peekable();
            for (i, op) in ops.iter().enumerate() {
                pending.append(&mut posts[r][i]);
                if !pending.is_empty() {
                    out.push(Event::Comm { ops: std::mem::take(&mut pending) });
                }
                out.push(op.clone());
                while let Some(&&(at, s)) = next_send.peek() {
                    if at != i {
                        break;
                    }
                    pending.push(s);
                    next_send.next();
                }
            }
            if !pending.is_empty() {
                out.push(Event::Comm { ops: pending });
            }
            out
        })
        .collect()
}

/// Delays sends until `set` runs without deadlock (see the module doc). Returns how many
/// rounds it took, or `None` when a stuck rank has no send left to delay.
pub fn repair(set: &mut ProgramSet) -> Option<usize> {
    let layout = set.resolved_layout()?;
    let costs = CostModel::uniform(layout.stages, 1.0, 2.0, 1.0, 3.0, 0.0);
    // Every round moves or splits something. Converging placements take a few dozen
    // rounds; one that needs more gets lockstep. Each round is a whole Plan DAG, so the
    // repair also gives up when no round has let the programs run further for `STALL`
    // rounds: a split undone by a later merge, as in the interleaved and zb-v placements,
    // which stall from their first rounds (interleaved-1f1b on 8 ranks × 1024 spent 80
    // rounds, 181 s, before lockstep). Converging placements (every family at 2–16 ranks,
    // 8–96 microbatches) never stalled more than one round. (How far the programs run is
    // no measure of how close the repair is: fixing the last stuck batch can free
    // everything behind it at once, as in GPipe on 16 ranks.)
    const STALL: usize = 8;
    let limit = 64 + 2 * set.ranks as usize;
    let (mut best, mut best_at) = (0usize, 0usize);
    for round in 0..limit {
        let dag = PlanDag::build(set, &costs).ok().filter(|d| d.mismatches.is_empty() && d.misordered.is_empty())?;
        let end = finish_times_strict(&dag);
        let stuck = stuck_events(&dag, &end);
        if stuck.is_empty() {
            return Some(round);
        }
        let reached = end.iter().filter(|t| !t.is_nan()).count();
        if reached > best {
            (best, best_at) = (reached, round);
        }
        if round - best_at >= STALL {
            return None;
        }
        // A send waits if its partner receive has not been posted.
        let waiting: std::collections::HashSet<(u32, u32, u32)> = dag
            .matches
            .iter()
            .filter(|m| end[dag.at(m.recv.0, m.recv.1).ready.index()].is_nan())
            .map(|m| m.send)
            .collect();
        let mut moved = false;
        for &(rank, event) in &stuck {
            // A batch holding a send to and a receive from one peer ties them into one NCCL
            // sendrecv; when the peer posts them apart, that can hang: post the sends, then
            // the receives, as two batches.
            if let Event::Comm { ops } = &set.programs[rank as usize][event as usize] {
                let tied =
                    ops.iter().any(|a| a.kind.is_send() && ops.iter().any(|b| !b.kind.is_send() && b.peer == a.peer));
                if tied {
                    let (sends, recvs): (Vec<CommOp>, Vec<CommOp>) = ops.iter().partition(|o| o.kind.is_send());
                    let program = &mut set.programs[rank as usize];
                    program[event as usize] = Event::Comm { ops: sends };
                    program.insert(event as usize + 1, Event::Comm { ops: recvs });
                    moved = true;
                }
            }
        }
        if moved {
            continue;
        }
        for (rank, event) in stuck {
            let Event::Comm { ops } = &set.programs[rank as usize][event as usize] else { continue };
            let delay: Vec<bool> = (0..ops.len() as u32).map(|j| waiting.contains(&(rank, event, j))).collect();
            moved |= delay_sends(&mut set.programs[rank as usize], event as usize, &delay);
        }
        if !moved {
            return None;
        }
    }
    None
}

/// Moves the sends marked in `delay` of the batch at `at` to a later batch: the rank's next batch that
/// receives from the same peer (so the crossing pair completes as one group, like
/// Megatron's `send_backward_recv_backward`), else the commit point after the next compute
/// op. Returns whether anything moved.
fn delay_sends(program: &mut Vec<Event>, at: usize, delay: &[bool]) -> bool {
    let Some(Event::Comm { ops }) = program.get_mut(at) else { return false };
    let sends: Vec<CommOp> = ops.iter().zip(delay).filter(|(_, &d)| d).map(|(o, _)| *o).collect();
    if sends.is_empty() {
        return false;
    }
    let mut keep = delay.iter().map(|d| !d);
    ops.retain(|_| keep.next().unwrap_or(true));
    let emptied = ops.is_empty();
    let peers: Vec<u32> = sends.iter().map(|s| s.peer).collect();
    let meets_peer = (at + 1..program.len()).find(|&i| match &program[i] {
        Event::Comm { ops } => ops.iter().any(|o| !o.kind.is_send() && peers.contains(&o.peer)),
        _ => false,
    });
    let next_compute = (at + 1..program.len()).find(|&i| !program[i].is_comm());
    let target = meets_peer.unwrap_or_else(|| next_compute.map_or(program.len(), |i| i + 1));
    match program.get_mut(target) {
        Some(Event::Comm { ops }) => {
            // Earlier sends go first: FIFO order on each channel is kept.
            let mut merged = sends;
            merged.append(ops);
            *ops = merged;
        }
        _ => program.insert(target, Event::Comm { ops: sends }),
    }
    if emptied {
        program.remove(at);
    }
    true
}

/// Places p2p ops along one global order of the compute ops (see the module doc): after
/// each op, one batch per transfer of its outputs, on the sender and on the receiver at
/// once.
pub fn lockstep(layout: &Layout, order: &[Vec<Event>]) -> Vec<Vec<Event>> {
    let ranks = order.len();
    let mut out: Vec<Vec<Event>> = order.iter().map(|o| Vec::with_capacity(o.len() * 3)).collect();
    let mut next = vec![0usize; ranks];
    let mut free_at = vec![0.0f64; ranks];
    // Time each produced value (by pipe, stage, mb, is-gradient) is available.
    let mut produced: HashMap<ValueKey, f64> = HashMap::new();
    let key = |rank: u32, k: UnitKind, c: Chunk| -> Option<(ValueKey, Option<ValueKey>)> {
        let m = layout.module(rank, c.dir)?;
        Some(match k {
            UnitKind::F => ((m.pipe, m.stage, c.mb, false), m.stage.checked_sub(1).map(|s| (m.pipe, s, c.mb, false))),
            UnitKind::B | UnitKind::I => (
                (m.pipe, m.stage, c.mb, true),
                (m.stage + 1 < layout.stages).then_some((m.pipe, m.stage + 1, c.mb, true)),
            ),
            UnitKind::W => ((m.pipe, m.stage, c.mb, true), None),
        })
    };
    loop {
        // The rank whose next op can start earliest runs it (list scheduling, unit costs).
        let mut best: Option<(f64, usize)> = None;
        for r in 0..ranks {
            let Some(op) = order[r].get(next[r]) else { continue };
            let mut ready = Some(free_at[r]);
            for (k, c) in op.units() {
                let input = key(r as u32, k, c).and_then(|(_, i)| i);
                if let Some(i) = input {
                    ready = match (ready, produced.get(&i)) {
                        (Some(t), Some(&p)) => Some(t.max(p)),
                        _ => None,
                    };
                }
            }
            if let Some(t) = ready {
                if best.is_none_or(|(bt, _)| t < bt) {
                    best = Some((t, r));
                }
            }
        }
        let Some((start, r)) = best else { break };
        let op = &order[r][next[r]];
        next[r] += 1;
        let dur: f64 = op.units().iter().map(|(k, _)| if *k == UnitKind::B { 2.0 } else { 1.0 }).sum();
        free_at[r] = start + dur;
        out[r].push(op.clone());
        for (k, c) in op.units() {
            if let Some((v, _)) = key(r as u32, k, c) {
                if k != UnitKind::W {
                    produced.insert(v, free_at[r]);
                }
            }
            if let Some(send) = send_for(layout, r as u32, k, c) {
                let peer_stage = match k {
                    UnitKind::F => layout.module(r as u32, c.dir).map(|m| (m.pipe, m.stage + 1)),
                    _ => layout.module(r as u32, c.dir).map(|m| (m.pipe, m.stage - 1)),
                };
                let Some((peer, peer_dir)) = peer_stage.and_then(|(p, s)| layout.locate(p, s)) else { continue };
                let recv_kind = send.kind.partner();
                out[r].push(Event::Comm { ops: vec![send] });
                out[peer as usize].push(Event::Comm {
                    ops: vec![CommOp { kind: recv_kind, peer: r as u32, dir: peer_dir, mb: c.mb }],
                });
            }
        }
    }
    // Ops that never became ready (an infeasible order) keep their place; the DAG reports.
    for r in 0..ranks {
        out[r].extend(order[r][next[r]..].iter().cloned());
    }
    out
}

/// Places p2p ops by time: simulates the compute order under `costs` (each op starts when
/// its rank is free and its inputs have arrived, `p2p` after they were produced on another
/// rank), then posts every transfer at the moment its value is produced — the send right
/// after the producing op, the receive at the same moment on the consumer's rank (under
/// blocking communication before the first op that starts after it, so that no running
/// op is held up; under async before the op running then, so the receive is posted in
/// time). Every rank's batches are then in the order of one global clock, as in
/// [`lockstep`], but at real costs. `None` when the order cannot run (an op whose input is
/// never produced).
pub fn timed(layout: &Layout, order: &[Vec<Event>], costs: &CostModel) -> Option<Vec<Vec<Event>>> {
    let ranks = order.len();
    let (start, end) = compute_times(layout, order, costs)?;
    // Transfers: (time, sender, op index, unit index) → ops placed on both sides.
    let mut transfers: Vec<(f64, u32, usize, usize, CommOp, u32, CommOp)> = Vec::new();
    for (r, ops) in order.iter().enumerate() {
        for (i, e) in ops.iter().enumerate() {
            for (j, (k, c)) in e.units().into_iter().enumerate() {
                let Some(send) = send_for(layout, r as u32, k, c) else { continue };
                let m = layout.module(r as u32, c.dir)?;
                let peer_stage = if k == UnitKind::F { m.stage + 1 } else { m.stage - 1 };
                let (peer, peer_dir) = layout.locate(m.pipe, peer_stage)?;
                let recv = CommOp { kind: send.kind.partner(), peer: r as u32, dir: peer_dir, mb: c.mb };
                transfers.push((end[r][i], r as u32, i, j, send, peer, recv));
            }
        }
    }
    transfers.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2, a.3).cmp(&(b.1, b.2, b.3))));
    // before[r][i]: comm ops issued just before compute op i of rank r (i = len: at the end).
    let mut before: Vec<Vec<Vec<(f64, CommOp)>>> = order.iter().map(|o| vec![Vec::new(); o.len() + 1]).collect();
    let blocking = costs.comm == CommMode::Blocking;
    for (t, from, i, _, send, peer, recv) in transfers {
        before[from as usize][i + 1].push((t, send));
        let p = peer as usize;
        let at = (0..order[p].len())
            .find(|&k| if blocking { start[p][k] >= t } else { end[p][k] > t })
            .unwrap_or(order[p].len());
        before[p][at].push((t, recv));
    }
    // Blocking: one batch per gap between compute ops (the rank waits there anyway, and a
    // group costs one transfer time). Async: one batch per moment, so that a receive
    // posted early never holds back one that could complete sooner.
    Some(
        (0..ranks)
            .map(|r| {
                let mut out = Vec::with_capacity(order[r].len() * 2);
                for (i, slot) in before[r].iter_mut().enumerate() {
                    // Stable: at equal times, transfers keep the global order.
                    slot.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let mut batch: Vec<CommOp> = Vec::new();
                    let mut at = f64::NAN;
                    for (t, op) in slot.drain(..) {
                        if !blocking && !batch.is_empty() && t != at {
                            out.push(Event::Comm { ops: std::mem::take(&mut batch) });
                        }
                        at = t;
                        batch.push(op);
                    }
                    if !batch.is_empty() {
                        out.push(Event::Comm { ops: batch });
                    }
                    if let Some(e) = order[r].get(i) {
                        out.push(e.clone());
                    }
                }
                out
            })
            .collect(),
    )
}

/// `times[rank][op]`: one number per compute op of a program.
pub type Times = Vec<Vec<f64>>;

/// Start and end of every compute op of `order` when each runs as soon as its rank is free
/// and its inputs are there; `None` when some op's input is never produced.
pub fn compute_times(layout: &Layout, order: &[Vec<Event>], costs: &CostModel) -> Option<(Times, Times)> {
    let ranks = order.len();
    let mut start: Vec<Vec<f64>> = order.iter().map(|o| vec![0.0; o.len()]).collect();
    let mut end: Vec<Vec<f64>> = order.iter().map(|o| vec![0.0; o.len()]).collect();
    let mut next = vec![0usize; ranks];
    let mut free = vec![0.0f64; ranks];
    // When each value is available on the rank that produced it: (pipe, stage, mb, grad).
    let mut produced: HashMap<ValueKey, (u32, f64)> = HashMap::new();
    let stage_of = |r: usize, dir: u32| layout.module(r as u32, dir);
    let mut remaining: usize = order.iter().map(|o| o.len()).sum();
    while remaining > 0 {
        let mut best: Option<(f64, usize)> = None;
        for r in 0..ranks {
            let Some(op) = order[r].get(next[r]) else { continue };
            let mut ready = Some(free[r]);
            for (k, c) in op.units() {
                let m = stage_of(r, c.dir)?;
                let inputs: [Option<ValueKey>; 2] = match k {
                    UnitKind::F => [m.stage.checked_sub(1).map(|s| (m.pipe, s, c.mb, false)), None],
                    UnitKind::B | UnitKind::I => [
                        Some((m.pipe, m.stage, c.mb, false)),
                        (m.stage + 1 < layout.stages).then_some((m.pipe, m.stage + 1, c.mb, true)),
                    ],
                    // W reads what its I left; the I ran earlier on this rank.
                    UnitKind::W => [Some((m.pipe, m.stage, c.mb, true)), None],
                };
                for input in inputs.into_iter().flatten() {
                    ready = match (ready, produced.get(&input)) {
                        (Some(t), Some(&(at, p))) => Some(t.max(if at as usize == r { p } else { p + costs.hop() })),
                        _ => None,
                    };
                }
            }
            if let Some(t) = ready {
                if best.is_none_or(|(bt, _)| t < bt) {
                    best = Some((t, r));
                }
            }
        }
        let (t, r) = best?;
        let i = next[r];
        let op = &order[r][i];
        let dur = match *op {
            Event::FB { f, b } => costs.overlapped(stage_of(r, f.dir)?.stage, stage_of(r, b.dir)?.stage),
            _ => op.units().iter().map(|(k, c)| stage_of(r, c.dir).map_or(0.0, |m| costs.unit(*k, m.stage))).sum(),
        };
        start[r][i] = t;
        end[r][i] = t + dur;
        free[r] = t + dur;
        next[r] += 1;
        remaining -= 1;
        for (k, c) in op.units() {
            let m = stage_of(r, c.dir)?;
            if k != UnitKind::W {
                produced.insert((m.pipe, m.stage, c.mb, k != UnitKind::F), (r as u32, t + dur));
            }
        }
    }
    Some((start, end))
}
