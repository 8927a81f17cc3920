//! How the sends and receives of a plan's ranks meet.
//!
//! NCCL pairs point-to-point operations per ordered pair of ranks, in issue order: the
//! k-th send from rank s to rank r meets the k-th receive at r from s. [`transfers`]
//! pairs them so, and refuses a plan where they cannot meet — a send without its receive
//! (the sender would wait forever) or a pair of different sizes (NCCL truncates or fails
//! at run time). [`crate::Plan::validate`] runs it, and the runtime's copy-engine
//! transport (which writes straight into the receiver's buffer) is built on it.

use crate::{Node, Plan, PlanRefusal};
use std::collections::BTreeMap;

/// One side of a transfer: where it is in its rank's program.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Endpoint {
    pub rank: u32,
    /// The group node holding it.
    pub node: usize,
    /// Its index among that group's ops.
    pub op: usize,
    /// Its index among all its rank's p2p ops, in program order: a slot of its own in
    /// per-rank tables (the copy-engine transport's flags).
    pub slot: u32,
    /// Its buffer.
    pub buffer: u32,
}

/// A send and the receive it meets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Transfer {
    pub send: Endpoint,
    pub recv: Endpoint,
    pub bytes: u64,
}

/// Every transfer of the plan's step, each send paired with its receive. Expects a plan
/// whose nodes name existing buffers and peers (checked before, by `validate`).
pub fn transfers(plan: &Plan) -> Result<Vec<Transfer>, PlanRefusal> {
    // Per (from, to), the sends and the receives in issue order.
    let mut sends: BTreeMap<(u32, u32), Vec<Endpoint>> = BTreeMap::new();
    let mut recvs: BTreeMap<(u32, u32), Vec<Endpoint>> = BTreeMap::new();
    for r in &plan.ranks {
        let mut slot = 0;
        for (node, n) in r.nodes.iter().enumerate() {
            let Node::Group { ops, .. } = n else { continue };
            for (op, o) in ops.iter().enumerate() {
                let at = Endpoint { rank: r.rank, node, op, slot, buffer: o.buffer };
                slot += 1;
                if o.send {
                    sends.entry((r.rank, o.peer)).or_default().push(at);
                } else {
                    recvs.entry((o.peer, r.rank)).or_default().push(at);
                }
            }
        }
    }
    let bytes = |e: &Endpoint| plan.ranks[e.rank as usize].buffers.get(e.buffer as usize).map_or(0, |b| b.bytes);
    let name = |e: &Endpoint| {
        plan.ranks[e.rank as usize].buffers.get(e.buffer as usize).map_or("?", |b| b.name.as_str()).to_owned()
    };
    let mut out = Vec::new();
    let pairs: std::collections::BTreeSet<(u32, u32)> = sends.keys().chain(recvs.keys()).copied().collect();
    for (from, to) in pairs {
        let (s, r) = (sends.remove(&(from, to)).unwrap_or_default(), recvs.remove(&(from, to)).unwrap_or_default());
        if s.len() != r.len() {
            let (rank, what) = if s.len() > r.len() {
                let e = &s[r.len()];
                (from, format!("node {}: send {} of {} to rank {to} has no receive there (rank {to} receives {} from rank {from}, rank {from} sends {})", e.node, r.len() + 1, name(e), r.len(), s.len()))
            } else {
                let e = &r[s.len()];
                (to, format!("node {}: receive {} into {} from rank {from} has no send there (rank {from} sends {} to rank {to}, rank {to} receives {})", e.node, s.len() + 1, name(e), s.len(), r.len()))
            };
            return Err(PlanRefusal::Malformed { rank, what });
        }
        for (k, (send, recv)) in s.into_iter().zip(r).enumerate() {
            let (a, b) = (bytes(&send), bytes(&recv));
            if a != b {
                return Err(PlanRefusal::Malformed {
                    rank: from,
                    what: format!(
                        "node {}: send {} to rank {to} ({}, {a} bytes) meets rank {to}'s receive into {} ({b} bytes, its node {}): the sizes differ",
                        send.node,
                        k + 1,
                        name(&send),
                        name(&recv),
                        recv.node
                    ),
                });
            }
            out.push(Transfer { send, recv, bytes: a });
        }
    }
    Ok(out)
}
