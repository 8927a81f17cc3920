//! An independent interpreter of NCCL point-to-point semantics under blocking batches, for
//! checking the verifier: ranks step through their programs; a COMM batch is posted when
//! its rank reaches it and completes once every batch tied to it has been posted: its
//! partners (the k-th send a→b pairs with the k-th receive on b from a) and, since the ops
//! a batch holds with one peer run as one NCCL sendrecv, the partners' other ops with the
//! same peers, transitively. The rank waits for it. A
//! compute op never waits: every earlier batch has completed, and a value that only a
//! later op provides is simply not there (an order error, not a hang). It shares no code
//! with the Plan DAG.

use pipewright_compiler::ir::{Event, ProgramSet};
use std::collections::{HashMap, HashSet};

/// A batch: (rank, event index).
type Batch = (usize, usize);

/// A batch's ops with one peer: (batch, peer).
type Part = (Batch, usize);

/// Whether every rank reaches the end of its program.
pub fn runs_to_completion(set: &ProgramSet) -> bool {
    let ranks = set.programs.len();
    // Partner batch of each p2p op, by FIFO order per channel.
    let mut sends: HashMap<(usize, usize), Vec<(usize, usize)>> = HashMap::new();
    let mut recvs: HashMap<(usize, usize), Vec<(usize, usize)>> = HashMap::new();
    for (r, p) in set.programs.iter().enumerate() {
        for (i, e) in p.iter().enumerate() {
            if let Event::Comm { ops } = e {
                for op in ops {
                    let peer = op.peer as usize;
                    if op.kind.is_send() {
                        sends.entry((r, peer)).or_default().push((r, i));
                    } else {
                        recvs.entry((peer, r)).or_default().push((r, i));
                    }
                }
            }
        }
    }
    // partners[(rank, event)] = list of partner batches (None when unmatched).
    let mut partners: HashMap<Batch, Vec<Option<Batch>>> = HashMap::new();
    let mut channels: HashSet<(usize, usize)> = sends.keys().copied().collect();
    channels.extend(recvs.keys().copied());
    for ch in channels {
        let s = sends.get(&ch).cloned().unwrap_or_default();
        let rv = recvs.get(&ch).cloned().unwrap_or_default();
        for k in 0..s.len().max(rv.len()) {
            if let Some(&x) = s.get(k) {
                partners.entry(x).or_default().push(rv.get(k).copied());
            }
            if let Some(&y) = rv.get(k) {
                partners.entry(y).or_default().push(s.get(k).copied());
            }
        }
    }
    // The batches tied to each batch through matches, per peer: the ops a batch holds with
    // one peer run as one NCCL sendrecv, so they wait for every batch tied to them; parts
    // with different peers progress apart (breadth-first search over (batch, peer) parts).
    let mut peer_partners: HashMap<Part, Vec<Option<Part>>> = HashMap::new();
    for (ch, s) in &sends {
        let rv = recvs.get(ch).cloned().unwrap_or_default();
        for (k, &x) in s.iter().enumerate() {
            let y = rv.get(k).copied();
            peer_partners.entry((x, ch.1)).or_default().push(y.map(|y| (y, ch.0)));
            if let Some(y) = y {
                peer_partners.entry((y, ch.0)).or_default().push(Some((x, ch.1)));
            }
        }
    }
    for (ch, rv) in &recvs {
        let s = sends.get(ch).cloned().unwrap_or_default();
        for (k, &y) in rv.iter().enumerate() {
            if s.get(k).is_none() {
                peer_partners.entry((y, ch.0)).or_default().push(None);
            }
        }
    }
    let mut component: HashMap<Batch, Vec<Option<Batch>>> = HashMap::new();
    for &start in peer_partners.keys() {
        let mut seen: HashSet<Part> = HashSet::from([start]);
        let mut todo = vec![start];
        let mut members: Vec<Option<Batch>> = Vec::new();
        while let Some(part) = todo.pop() {
            for p in peer_partners.get(&part).into_iter().flatten() {
                match p {
                    None => members.push(None),
                    Some(q) if seen.insert(*q) => {
                        members.push(Some(q.0));
                        todo.push(*q);
                    }
                    Some(_) => {}
                }
            }
        }
        component.entry(start.0).or_default().extend(members);
    }
    let partners = component;
    let mut pc = vec![0usize; ranks];
    let mut posted: HashSet<(usize, usize)> = HashSet::new();
    loop {
        let mut progress = false;
        for (r, at) in pc.iter_mut().enumerate() {
            while let Some(e) = set.programs[r].get(*at) {
                if e.is_comm() {
                    posted.insert((r, *at));
                    let done = partners
                        .get(&(r, *at))
                        .is_some_and(|ps| ps.iter().all(|p| p.is_some_and(|p| posted.contains(&p))));
                    if !done {
                        break;
                    }
                }
                *at += 1;
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    pc.iter().zip(&set.programs).all(|(&p, prog)| p == prog.len())
}
