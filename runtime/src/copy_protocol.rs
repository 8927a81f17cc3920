//! The copy-engine p2p transport's protocol (`run --p2p copy`), without CUDA: what each
//! rank's communication stream does for each p2p group, as [`Step`]s that
//! `gpu::peer` issues on the GPU and the tests (`runtime/tests/copy_protocol.rs`) run on
//! threads, for every rank of real plans, to show that it moves every transfer's bytes and
//! never deadlocks.
//!
//! Each transfer is a send at rank s meeting a receive at rank r, paired as NCCL pairs
//! them ([`pipewright_plan::transfers`]); it has two flags, each a u32 in the flag table of
//! the rank that waits on it, at that rank's slot for the op:
//! - r, reaching the receive's group, signals s's *ready* flag: its buffer is free;
//! - s, reaching the send's group, awaits ready (and resets it), copies its buffer into r's
//!   (through r's arena, mapped by CUDA IPC), then signals r's *done* flag — after a
//!   system-wide fence, so that the bytes land first;
//! - r, once its group's sends are done, awaits done (and resets it).
//!
//! Every flag is back at 0 when a step ends, so a captured graph replays the same signals
//! and awaits every step. A group posts its receives before any of its sends awaits, and
//! its sends to different peers run on streams of their own (forked from the
//! communication stream, joined back), so that, as in an NCCL group, no op of a group
//! waits behind another: an order the verifier proves free of deadlock for NCCL groups is
//! free of it here too.

use pipewright_plan::transfers::{transfers, Transfer};
use pipewright_plan::{Plan, PlanRefusal};
use std::collections::{BTreeMap, HashMap};

/// One of a rank's p2p ops: its transfer, and where its bytes come from (the sender's
/// buffer, in its arena) and go to (the receiver's buffer, in its arena).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub t: Transfer,
    pub from: u64,
    pub to: u64,
}

/// One thing a stream does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Set flag `slot` of `peer`'s table (after a system-wide fence).
    Signal { peer: u32, slot: u32 },
    /// Wait until this rank's flag `slot` is set, then reset it.
    Await { slot: u32 },
    /// Copy `bytes` from this rank's arena at `from` into `peer`'s at `to`.
    Copy { peer: u32, from: u64, to: u64, bytes: u64 },
    /// Run each list on a stream of its own (one per peer: its sends), forked from here and
    /// joined back before the next step.
    Fork(Vec<(u32, Vec<Step>)>),
}

/// `rank`'s p2p ops by (node, index in its group), and how many there are (its flag
/// table's slots).
pub fn links(plan: &Plan, rank: u32) -> Result<HashMap<(usize, usize), Link>, PlanRefusal> {
    let offset =
        |end: &pipewright_plan::transfers::Endpoint| plan.ranks[end.rank as usize].buffers[end.buffer as usize].offset;
    Ok(transfers(plan)?
        .into_iter()
        .flat_map(|t| [(t.send, t), (t.recv, t)])
        .filter(|(end, _)| end.rank == rank)
        .map(|(end, t)| ((end.node, end.op), Link { t, from: offset(&t.send), to: offset(&t.recv) }))
        .collect())
}

/// `rank`'s sends to `peer` of `bytes` each, one per receive buffer of the peer's that
/// they land in (the earliest send into each), as (this rank's offset, the peer's offset)
/// ordered by the peer's: what `profile` times the copy engines with between steps
/// (`gpu::calibrate`).
pub fn calibration_links(plan: &Plan, rank: u32, peer: u32, bytes: u64) -> Result<Vec<(u64, u64)>, PlanRefusal> {
    let mut sends: Vec<(u64, u32, u64)> = links(plan, rank)?
        .into_values()
        .filter(|l| l.t.send.rank == rank && l.t.recv.rank == peer && l.t.bytes == bytes)
        .map(|l| (l.to, l.t.send.slot, l.from))
        .collect();
    sends.sort_unstable();
    sends.dedup_by_key(|s| s.0);
    Ok(sends.into_iter().map(|(to, _, from)| (from, to)).collect())
}

/// What `rank`'s communication stream does for its group node `node` of `n` ops.
pub fn group_steps(
    links: &HashMap<(usize, usize), Link>,
    rank: u32,
    node: usize,
    n: usize,
) -> Result<Vec<Step>, String> {
    let ops: Vec<&Link> = (0..n)
        .map(|op| links.get(&(node, op)).ok_or_else(|| format!("op {op} of group node {node} has no transfer")))
        .collect::<Result<_, _>>()?;
    let recvs: Vec<&Transfer> = ops.iter().map(|l| &l.t).filter(|t| t.recv.rank == rank).collect();
    let mut steps: Vec<Step> = recvs.iter().map(|t| Step::Signal { peer: t.send.rank, slot: t.send.slot }).collect();
    let mut sends: BTreeMap<u32, Vec<Step>> = BTreeMap::new();
    for l in ops.iter().filter(|l| l.t.send.rank == rank) {
        let t = &l.t;
        sends.entry(t.recv.rank).or_default().extend([
            Step::Await { slot: t.send.slot },
            Step::Copy { peer: t.recv.rank, from: l.from, to: l.to, bytes: t.bytes },
            Step::Signal { peer: t.recv.rank, slot: t.recv.slot },
        ]);
    }
    match sends.len() {
        0 => {}
        1 => steps.extend(sends.into_values().flatten()),
        _ => steps.push(Step::Fork(sends.into_iter().collect())),
    }
    steps.extend(recvs.iter().map(|t| Step::Await { slot: t.recv.slot }));
    Ok(steps)
}
