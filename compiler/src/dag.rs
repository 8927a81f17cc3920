//! The Plan DAG: the one structure the simulator, the verifier, the optimiser and the
//! emitter read.
//!
//! Nodes are the ops of every rank's program; a COMM batch is split into the points that
//! matter to its partners:
//! - `Post`: the rank reaches the batch in its program (duration 0);
//! - `Start` (async only): the rank's communication stream reaches the batch;
//! - `Done`: every op of the batch has been matched and transferred (its duration: the
//!   cost model's [`CostModel::batch`] of its sends and receives).
//!
//! Under async p2p ([`CommMode::Async`]) a B (or an FB pair with a B) right before a batch
//! is split in two: a `Head` node, until its input gradient (and the pair's forward output)
//! is done — what the batch sends, and where the batch is posted — and the `Compute` node
//! of the rest (the weight gradient), which the next compute op waits for
//! ([`posts_early`]).
//!
//! Edges are program order on each stream, send↔recv matches (a batch is done only once
//! every partner batch holding one of its ops' partners has been posted — rendezvous and
//! group atomicity), and data dependencies (an op waits for the values it reads). Sends
//! from rank a to rank b match receives on b from a in FIFO order.
//!
//! Under these semantics a cycle is a deadlock, and the longest path to a node is the
//! earliest time it can finish.

use crate::cost::{CommMode, CostModel};
use crate::ir::{Chunk, CommKind, Event, Layout, ProgramSet, StageRef, UnitKind};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::HashMap;
use thiserror::Error;

/// What a node of the Plan DAG stands for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NodeKind {
    /// A compute event (F, B, I, W or FB), or the rest of one after its `Head`.
    Compute,
    /// The first part of a compute event that a batch right after it is posted behind
    /// ([`posts_early`]): a B's input gradient; in an FB pair, until both the forward's
    /// output and the backward's input gradient are done.
    Head,
    /// A COMM batch reached in program order.
    Post,
    /// A COMM batch reached on the communication stream (async mode).
    Start,
    /// A COMM batch completed.
    Done,
}

/// One node: an op (or a point of a COMM batch) of one rank.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Node {
    pub rank: u32,
    /// Index of the event in the rank's program.
    pub event: u32,
    pub kind: NodeKind,
    pub duration: f64,
}

/// Why one node must come after another.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dep {
    /// Program order on one stream.
    Program,
    /// A batch cannot complete before a partner batch is posted.
    Match,
    /// An op reads a value another op produces.
    Data,
    /// A batch cannot complete before a batch tied to it through matches, not directly,
    /// is posted (NCCL's group atomicity, conservatively). Deadlock-freedom is decided with
    /// these edges; timing ignores them (in practice NCCL's ops do progress apart).
    Group,
}

/// The nodes one event became.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EventNodes {
    /// Where the event begins in program order (Compute or Post).
    pub first: NodeIndex,
    /// What partner batches wait for (Post, or Start in async mode; Compute otherwise).
    pub ready: NodeIndex,
    /// The node whose end is the event's end (Compute or Done).
    pub last: NodeIndex,
    /// The node whose end is when the values the event produces for other ops are final:
    /// its `Head` when it has one, else `last`.
    pub output: NodeIndex,
}

impl EventNodes {
    /// The compute nodes of a compute event (its `Head` and the rest, or its one node);
    /// none for a batch.
    pub fn compute_parts(&self, graph: &DiGraph<Node, Dep>) -> impl Iterator<Item = NodeIndex> {
        let compute = graph[self.first].kind != NodeKind::Post;
        let rest = (self.last != self.first).then_some(self.last);
        [Some(self.first), rest].into_iter().flatten().filter(move |_| compute)
    }
}

/// A unit of work, identified independently of where it runs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct UnitKey {
    pub kind: UnitKind,
    pub pipe: u32,
    pub stage: u32,
    pub mb: u32,
}

/// One matched send/recv pair: `(rank, event, op index)` of each side.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Match {
    pub send: (u32, u32, u32),
    pub recv: (u32, u32, u32),
}

/// A program set that cannot be turned into a Plan DAG.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PlanError {
    #[error("the program set names no layout and schedule \"{0}\" does not imply one; add a \"layout\"")]
    NoLayout(String),
    #[error("bad layout: {0}")]
    BadLayout(String),
    #[error("the program set has {programs} programs but says ranks = {ranks}")]
    RankCount { programs: usize, ranks: u32 },
    #[error("rank {rank}, event {event} ({text}): module {dir} does not exist on this rank")]
    NoModule { rank: u32, event: u32, text: String, dir: u32 },
    #[error("rank {rank}, event {event}: peer {peer} is not a rank of this {ranks}-rank plan")]
    BadPeer { rank: u32, event: u32, peer: u32, ranks: u32 },
    #[error("{unit} appears twice: rank {first_rank} event {first_event} and rank {rank} event {event}")]
    Duplicate { unit: String, first_rank: u32, first_event: u32, rank: u32, event: u32 },
    #[error("rank {rank}, event {event}: {unit} reads {input}, which no op provides on rank {rank}")]
    MissingInput { rank: u32, event: u32, unit: String, input: String },
    #[error("{sends} sends from rank {from} to rank {to} but {recvs} receives on rank {to} from rank {from}: the extra ones never complete")]
    Unmatched { from: u32, to: u32, sends: usize, recvs: usize },
    #[error("send {send} (rank {from}, event {send_event}) is matched with receive {recv} (rank {to}, event {recv_event}): payloads differ")]
    PayloadMismatch { from: u32, send_event: u32, send: String, to: u32, recv_event: u32, recv: String },
    #[error("rank {rank}, event {event} ({text}) uses {input} before rank {rank} has it (event {available}): it would read garbage")]
    OutOfOrder { rank: u32, event: u32, text: String, input: String, available: u32 },
    #[error("deadlock: rank {rank} waits forever at event {event} ({text}){}", others.iter().map(|o| format!("; {o}")).collect::<String>())]
    Deadlock { rank: u32, event: u32, text: String, others: Vec<String> },
    #[error("the cost model covers {costs} stages but the layout has {layout}")]
    CostStages { costs: usize, layout: u32 },
}

/// Whether event `i` of `program` is split at its head under `comm`: async p2p
/// ([`CommMode::Async`]), a B or an FB pair (whose backward is a B), and a batch right
/// after it, which is posted once the B's input gradient (and the pair's forward) is done.
/// The emitter posts it there (a B's weight gradient does not move the point the next
/// batch waits for), and the verifier's memory order frees the B's activations only after
/// that batch.
pub fn posts_early(program: &[Event], i: usize, comm: CommMode) -> bool {
    comm == CommMode::Async
        && matches!(program.get(i), Some(Event::B { .. } | Event::FB { .. }))
        && program.get(i + 1).is_some_and(Event::is_comm)
}

/// How long the head of a split event lasts ([`posts_early`]), of its `whole` duration: a
/// B's input gradient alone; in an FB pair, the later of the forward and the input
/// gradient, both stretched as much as the pair stretches its longer half.
fn head_duration(costs: &CostModel, keys: &[UnitKey], whole: f64) -> f64 {
    let head = match keys {
        [b] => costs.unit(UnitKind::I, b.stage),
        [f, b] => {
            let (fwd, bwd) = (costs.unit(UnitKind::F, f.stage), costs.unit(UnitKind::B, b.stage));
            let longer = fwd.max(bwd);
            let stretch = if longer > 0.0 { (whole / longer).max(1.0) } else { 1.0 };
            fwd.max(costs.unit(UnitKind::I, b.stage)) * stretch
        }
        _ => whole,
    };
    head.clamp(0.0, whole)
}

/// A unit's human name, e.g. `B(stage 3, mb 7)`.
pub fn unit_name(u: &UnitKey, pipes: u32) -> String {
    if pipes > 1 {
        format!("{}(pipe {}, stage {}, mb {})", u.kind.letter(), u.pipe, u.stage, u.mb)
    } else {
        format!("{}(stage {}, mb {})", u.kind.letter(), u.stage, u.mb)
    }
}

/// The Plan DAG of one program set under one cost model.
#[derive(Debug)]
pub struct PlanDag {
    pub graph: DiGraph<Node, Dep>,
    pub layout: Layout,
    /// `nodes[rank][event]`: the nodes of each event.
    pub nodes: Vec<Vec<EventNodes>>,
    /// Every matched send/recv pair.
    pub matches: Vec<Match>,
    /// `units[rank][event]`: the units an event computes, resolved to stages.
    pub units: Vec<Vec<Vec<UnitKey>>>,
    /// FIFO-matched pairs whose payloads differ ([`PlanError::PayloadMismatch`]). They are
    /// still matched (that is what NCCL would do), so the DAG stays usable for deadlock
    /// analysis; the simulator refuses such plans.
    pub mismatches: Vec<PlanError>,
    /// Ops placed before the op or receive that provides their input on the same rank
    /// ([`PlanError::OutOfOrder`]), or whose input nothing provides there
    /// ([`PlanError::MissingInput`]). Such a dependency is not a wait (the value is simply
    /// not there), so it gets no edge; the verifier reports it, the simulator refuses.
    pub misordered: Vec<PlanError>,
    /// How much slower compute runs beside a batch in flight on its rank
    /// ([`CostModel::p2p_contention`]; 0 with blocking p2p, where compute waits anyway).
    pub contention: f64,
    /// The p2p semantics the DAG was built under.
    pub comm: CommMode,
    /// When each rank's program can start: after its prologue
    /// ([`CostModel::prologue_of`]; 0 without).
    pub starts: Vec<f64>,
}

fn resolve(layout: &Layout, rank: u32, event: u32, e: &Event, kind: UnitKind, c: Chunk) -> Result<UnitKey, PlanError> {
    let m: StageRef = layout.module(rank, c.dir).ok_or_else(|| PlanError::NoModule {
        rank,
        event,
        text: e.to_string(),
        dir: c.dir,
    })?;
    Ok(UnitKey { kind, pipe: m.pipe, stage: m.stage, mb: c.mb })
}

/// The value a p2p op carries, named by the unit that produced it (a gradient is named
/// by kind B, whether a B or an I computed it).
pub fn payload(layout: &Layout, rank: u32, kind: CommKind, dir: u32, mb: u32) -> Option<UnitKey> {
    let m = layout.module(rank, dir)?;
    let (k, stage) = match kind {
        CommKind::SendF => (UnitKind::F, m.stage),
        CommKind::RecvF => (UnitKind::F, m.stage.checked_sub(1)?),
        CommKind::SendB => (UnitKind::B, m.stage),
        CommKind::RecvB => (UnitKind::B, m.stage + 1),
    };
    Some(UnitKey { kind: k, pipe: m.pipe, stage, mb })
}

impl PlanDag {
    /// Builds the DAG of `set` under `costs`.
    pub fn build(set: &ProgramSet, costs: &CostModel) -> Result<PlanDag, PlanError> {
        let layout = set.resolved_layout().ok_or_else(|| PlanError::NoLayout(set.schedule.clone()))?;
        if set.programs.len() != set.ranks as usize || layout.modules.len() != set.ranks as usize {
            return Err(PlanError::RankCount { programs: set.programs.len(), ranks: set.ranks });
        }
        layout.check().map_err(PlanError::BadLayout)?;
        if costs.stages() != layout.stages as usize {
            return Err(PlanError::CostStages { costs: costs.stages(), layout: layout.stages });
        }
        let ranks = set.ranks;
        let async_comm = costs.comm.is_async();
        let total: usize = set.programs.iter().map(|p| p.len()).sum();
        let mut graph = DiGraph::with_capacity(total * 2, total * 4);
        let mut nodes = Vec::with_capacity(ranks as usize);
        let mut units = Vec::with_capacity(ranks as usize);
        // Where each unit runs, and which batch receives each value on each rank.
        let mut producer: HashMap<UnitKey, (u32, u32)> = HashMap::with_capacity(total);
        let mut received: HashMap<(u32, UnitKey), u32> = HashMap::new();
        // FIFO channels: (from, to) → sends in order; (from, to) → receives in order.
        let mut sends: HashMap<(u32, u32), Vec<(u32, u32)>> = HashMap::new();
        let mut recvs: HashMap<(u32, u32), Vec<(u32, u32)>> = HashMap::new();

        for (r, program) in set.programs.iter().enumerate() {
            let rank = r as u32;
            let mut rank_nodes = Vec::with_capacity(program.len());
            let mut rank_units = Vec::with_capacity(program.len());
            // What the next compute op waits for (the op before it, or in async mode the
            // batch posted before it and a split B's rest), and what the next batch is
            // posted behind.
            let mut compute_after: Vec<NodeIndex> = Vec::new();
            let mut post_after: Option<NodeIndex> = None;
            let mut split_rest: Option<NodeIndex> = None;
            let mut last_comm_stream: Option<NodeIndex> = None;
            for (i, e) in program.iter().enumerate() {
                let event = i as u32;
                let node = |kind, duration| Node { rank, event, kind, duration };
                let (en, keys) = match e {
                    Event::Comm { ops } => {
                        for (j, op) in ops.iter().enumerate() {
                            if op.peer >= ranks {
                                return Err(PlanError::BadPeer { rank, event, peer: op.peer, ranks });
                            }
                            let key = if op.kind.is_send() { (rank, op.peer) } else { (op.peer, rank) };
                            let list = if op.kind.is_send() { &mut sends } else { &mut recvs };
                            list.entry(key).or_default().push((event, j as u32));
                            if !op.kind.is_send() {
                                if let Some(p) = payload(&layout, rank, op.kind, op.dir, op.mb) {
                                    received.insert((rank, p), event);
                                }
                            }
                        }
                        let post = graph.add_node(node(NodeKind::Post, 0.0));
                        let sends = ops.iter().filter(|o| o.kind.is_send()).count();
                        let done = graph.add_node(node(NodeKind::Done, costs.batch(sends, ops.len() - sends)));
                        if async_comm {
                            let start = graph.add_node(node(NodeKind::Start, 0.0));
                            graph.add_edge(post, start, Dep::Program);
                            if let Some(prev) = last_comm_stream {
                                graph.add_edge(prev, start, Dep::Program);
                            }
                            graph.add_edge(start, done, Dep::Program);
                            last_comm_stream = Some(done);
                            (EventNodes { first: post, ready: start, last: done, output: done }, Vec::new())
                        } else {
                            graph.add_edge(post, done, Dep::Program);
                            (EventNodes { first: post, ready: post, last: done, output: done }, Vec::new())
                        }
                    }
                    _ => {
                        let keys = e
                            .units()
                            .into_iter()
                            .map(|(k, c)| resolve(&layout, rank, event, e, k, c))
                            .collect::<Result<Vec<_>, _>>()?;
                        let duration = match keys.as_slice() {
                            [f, b] => costs.overlapped(f.stage, b.stage),
                            [u] => costs.unit(u.kind, u.stage),
                            _ => 0.0,
                        };
                        for k in &keys {
                            if let Some(&(fr, fe)) = producer.get(k) {
                                return Err(PlanError::Duplicate {
                                    unit: unit_name(k, layout.pipes),
                                    first_rank: fr,
                                    first_event: fe,
                                    rank,
                                    event,
                                });
                            }
                            producer.insert(*k, (rank, event));
                        }
                        if posts_early(program, i, costs.comm) {
                            let head_ms = head_duration(costs, &keys, duration);
                            let head = graph.add_node(node(NodeKind::Head, head_ms));
                            let rest = graph.add_node(node(NodeKind::Compute, duration - head_ms));
                            graph.add_edge(head, rest, Dep::Program);
                            (EventNodes { first: head, ready: head, last: rest, output: head }, keys)
                        } else {
                            let n = graph.add_node(node(NodeKind::Compute, duration));
                            (EventNodes { first: n, ready: n, last: n, output: n }, keys)
                        }
                    }
                };
                let after = if e.is_comm() { post_after.as_slice() } else { compute_after.as_slice() };
                for &prev in after {
                    graph.add_edge(prev, en.first, Dep::Program);
                }
                if !e.is_comm() {
                    compute_after = vec![en.last];
                    post_after = Some(en.output);
                    split_rest = (en.output != en.last).then_some(en.last);
                } else if async_comm {
                    // The compute stream moves on right after posting a batch, but not past
                    // the rest of a split B.
                    compute_after = [Some(en.first), split_rest].into_iter().flatten().collect();
                    post_after = Some(en.first);
                } else {
                    compute_after = vec![en.last];
                    post_after = Some(en.last);
                }
                rank_nodes.push(en);
                rank_units.push(keys);
            }
            nodes.push(rank_nodes);
            units.push(rank_units);
        }

        let mut dag = PlanDag {
            graph,
            layout,
            nodes,
            matches: Vec::new(),
            units,
            mismatches: Vec::new(),
            misordered: Vec::new(),
            contention: if async_comm { costs.p2p_contention } else { 0.0 },
            comm: costs.comm,
            starts: (0..ranks as usize).map(|r| costs.prologue_of(r)).collect(),
        };
        dag.add_matches(set, &sends, &recvs)?;
        dag.add_data_deps(set, &producer, &received)?;
        Ok(dag)
    }

    fn add_matches(
        &mut self,
        set: &ProgramSet,
        sends: &HashMap<(u32, u32), Vec<(u32, u32)>>,
        recvs: &HashMap<(u32, u32), Vec<(u32, u32)>>,
    ) -> Result<(), PlanError> {
        let mut channels: Vec<&(u32, u32)> = sends.keys().chain(recvs.keys()).collect();
        channels.sort();
        channels.dedup();
        for &(from, to) in channels {
            let s = sends.get(&(from, to)).map_or(&[][..], |v| v.as_slice());
            let r = recvs.get(&(from, to)).map_or(&[][..], |v| v.as_slice());
            if s.len() != r.len() {
                return Err(PlanError::Unmatched { from, to, sends: s.len(), recvs: r.len() });
            }
            for (&(se, so), &(re, ro)) in s.iter().zip(r) {
                let Event::Comm { ops: sops } = &set.programs[from as usize][se as usize] else { continue };
                let Event::Comm { ops: rops } = &set.programs[to as usize][re as usize] else { continue };
                let (sop, rop) = (sops[so as usize], rops[ro as usize]);
                let sp = payload(&self.layout, from, sop.kind, sop.dir, sop.mb);
                let rp = payload(&self.layout, to, rop.kind, rop.dir, rop.mb);
                if sop.kind.partner() != rop.kind || sp.is_none() || sp != rp {
                    let name = |p: Option<UnitKey>, k: CommKind| match p {
                        Some(u) => format!("{} of {}", k.name(), unit_name(&u, self.layout.pipes)),
                        None => format!("{} (module {})", k.name(), sop.dir),
                    };
                    self.mismatches.push(PlanError::PayloadMismatch {
                        from,
                        send_event: se,
                        send: name(sp, sop.kind),
                        to,
                        recv_event: re,
                        recv: name(rp, rop.kind),
                    });
                }
                let (s, r) = (self.at(from, se), self.at(to, re));
                self.graph.update_edge(r.ready, s.last, Dep::Match);
                self.graph.update_edge(s.ready, r.last, Dep::Match);
                self.matches.push(Match { send: (from, se, so), recv: (to, re, ro) });
            }
        }
        self.add_group_waits();
        Ok(())
    }

    /// Group atomicity with one peer, as NCCL gives it: the sends and receives one batch
    /// holds with one peer run as one NCCL sendrecv and may block each other (NVIDIA: "it is
    /// not safe to assume that all calls within a group will progress without blocking each
    /// other"; the documented safe pattern is to post a send and a receive with a peer in
    /// one group on both sides). So a batch can complete its part with a peer only once every
    /// batch tied to that part through matches — the partners, their other parts with the
    /// same peers, and so on — has been posted. A rank that groups a send and a receive with
    /// a peer that posts them in two batches with work in between therefore deadlocks: seen
    /// on H200s, where pipewright's first optimised zb-h1 plan hung until this rule existed.
    /// Parts with different peers are taken to progress apart (NCCL drives them on separate
    /// connections), which the families' batches rely on.
    fn add_group_waits(&mut self) {
        // A node of the tie graph: (rank, event, peer).
        let mut index: HashMap<(u32, u32, u32), usize> = HashMap::new();
        let mut parts: Vec<(u32, u32, u32)> = Vec::new();
        let mut id = |p: (u32, u32, u32), parts: &mut Vec<(u32, u32, u32)>| {
            *index.entry(p).or_insert_with(|| {
                parts.push(p);
                parts.len() - 1
            })
        };
        let pairs: Vec<(usize, usize)> = self
            .matches
            .iter()
            .map(|m| {
                let (a, b) = (m.send, m.recv);
                (id((a.0, a.1, b.0), &mut parts), id((b.0, b.1, a.0), &mut parts))
            })
            .collect();
        let mut parent: Vec<usize> = (0..parts.len()).collect();
        fn find(parent: &mut [usize], mut x: usize) -> usize {
            while parent[x] != x {
                parent[x] = parent[parent[x]];
                x = parent[x];
            }
            x
        }
        for (a, b) in pairs {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            parent[ra] = rb;
        }
        // Ordered maps: the edges (and so the certificates) are the same on every run.
        let mut components: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
        for p in 0..parts.len() {
            let root = find(&mut parent, p);
            components.entry(root).or_default().push(p);
        }
        for members in components.values() {
            // Two parts: a send and its receive, already tied by their Match edges.
            if members.len() <= 2 {
                continue;
            }
            let mut batches: Vec<(u32, u32)> = members.iter().map(|&p| (parts[p].0, parts[p].1)).collect();
            batches.sort();
            batches.dedup();
            for &x in &batches {
                for &y in &batches {
                    if x != y {
                        let (nx, ny) = (self.at(x.0, x.1), self.at(y.0, y.1));
                        self.graph.add_edge(ny.ready, nx.last, Dep::Group);
                    }
                }
            }
        }
    }

    fn add_data_deps(
        &mut self,
        set: &ProgramSet,
        producer: &HashMap<UnitKey, (u32, u32)>,
        received: &HashMap<(u32, UnitKey), u32>,
    ) -> Result<(), PlanError> {
        let stages = self.layout.stages;
        for rank in 0..set.ranks {
            for event in 0..set.programs[rank as usize].len() as u32 {
                if let Event::Comm { ops } = &set.programs[rank as usize][event as usize] {
                    // A send ships a value this rank computed before.
                    for op in ops.iter().filter(|o| o.kind.is_send()) {
                        let value = payload(&self.layout, rank, op.kind, op.dir, op.mb);
                        let local = value.and_then(|v| {
                            producer
                                .get(&v)
                                .copied()
                                .or_else(|| producer.get(&UnitKey { kind: UnitKind::I, ..v }).copied())
                        });
                        match local {
                            Some((pr, pe)) if pr == rank => self.depend(set, rank, pe, event, value),
                            _ => self.misordered.push(PlanError::MissingInput {
                                rank,
                                event,
                                unit: format!("{} to rank {}", op.kind.name(), op.peer),
                                input: value.map_or_else(
                                    || format!("the output of module {}", op.dir),
                                    |v| unit_name(&v, self.layout.pipes),
                                ),
                            }),
                        }
                    }
                }
                let keys = self.units[rank as usize][event as usize].clone();
                for u in &keys {
                    let mut inputs: Vec<UnitKey> = Vec::with_capacity(2);
                    let at = |kind, stage| UnitKey { kind, pipe: u.pipe, stage, mb: u.mb };
                    match u.kind {
                        UnitKind::F if u.stage > 0 => inputs.push(at(UnitKind::F, u.stage - 1)),
                        UnitKind::F => {}
                        UnitKind::B | UnitKind::I => {
                            inputs.push(at(UnitKind::F, u.stage));
                            if u.stage + 1 < stages {
                                inputs.push(at(UnitKind::B, u.stage + 1));
                            }
                        }
                        UnitKind::W => inputs.push(at(UnitKind::I, u.stage)),
                    }
                    for input in inputs {
                        // A gradient comes from the B or the I of the next stage.
                        let found = producer.get(&input).copied().or_else(|| {
                            (input.kind == UnitKind::B)
                                .then(|| producer.get(&UnitKey { kind: UnitKind::I, ..input }).copied())
                                .flatten()
                        });
                        let source = match found {
                            Some((pr, pe)) if pr == rank => Some(pe),
                            Some(_) => received.get(&(rank, input)).copied(),
                            None => None,
                        };
                        let Some(source) = source else {
                            self.misordered.push(PlanError::MissingInput {
                                rank,
                                event,
                                unit: unit_name(u, self.layout.pipes),
                                input: unit_name(&input, self.layout.pipes).replace("B(", "gradient of B("),
                            });
                            continue;
                        };
                        if source != event {
                            self.depend(set, rank, source, event, Some(input));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Records that event `to` of `rank` reads what event `from` provides: a wait when
    /// `from` comes first in program order, an order violation otherwise.
    fn depend(&mut self, set: &ProgramSet, rank: u32, from: u32, to: u32, value: Option<UnitKey>) {
        if from < to {
            let (source, consumer) = (self.at(rank, from).output, self.at(rank, to).first);
            self.graph.update_edge(source, consumer, Dep::Data);
        } else {
            self.misordered.push(PlanError::OutOfOrder {
                rank,
                event: to,
                text: set.programs[rank as usize][to as usize].to_string(),
                input: value.map_or_else(|| "its input".to_owned(), |v| unit_name(&v, self.layout.pipes)),
                available: from,
            });
        }
    }

    /// The nodes of event `event` of `rank`.
    pub fn at(&self, rank: u32, event: u32) -> EventNodes {
        self.nodes[rank as usize][event as usize]
    }

    /// The event text of a node, for messages.
    pub fn describe(&self, set: &ProgramSet, n: NodeIndex) -> (u32, u32, String) {
        let node = self.graph[n];
        let text = set.programs[node.rank as usize][node.event as usize].to_string();
        (node.rank, node.event, text)
    }
}
