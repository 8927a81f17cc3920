//! Discrete-event simulation of a program set: the reference for makespan, idle time per
//! rank ("bubble"), in-flight microbatches and the memory timeline.
//!
//! Every node of the [`PlanDag`] starts when all its predecessors have ended and lasts its
//! duration, so the simulation is a longest-path pass in topological order (Kahn's
//! algorithm, linear in the DAG). Nodes the pass never reaches wait on a cycle: the
//! program set deadlocks, and the first such event of each rank is where it hangs.
//!
//! Under `comm = "blocking"` this is exactly the semantics of the DualPipe fixtures: a COMM
//! batch completes `p2p` after its rank and every peer batch holding a matched op have
//! arrived, and the rank waits for it.
//!
//! With async p2p and a contention cost ([`crate::cost::CostModel::p2p_contention`]), a
//! second pass stretches every compute op by that fraction of the time the first pass had
//! a batch of its rank in flight beside it (NCCL's kernels share the SMs), and times the
//! DAG again with the stretched durations: delays carry over to other ranks through the
//! DAG's edges. One correction, not a fixed point: the stretch is measured on the
//! unstretched timeline.

use crate::cost::MemoryModel;
use crate::dag::{Dep, NodeKind, PlanDag, PlanError, UnitKey};
use crate::ir::{ProgramSet, UnitKind};
use petgraph::graph::NodeIndex;
use petgraph::Direction;
use pipewright_plan::intervals;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// When one event ran: for a COMM batch, from reaching it to its completion.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
pub struct Span {
    pub start: f64,
    pub end: f64,
    /// When the values it produces for other ops are final: a B split at its head (async
    /// p2p, a batch right after it: [`crate::dag::posts_early`]) has its input gradient
    /// before its end; otherwise its end.
    pub output: f64,
}

/// Per-rank results.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct RankStats {
    pub rank: u32,
    /// Time spent computing.
    pub busy: f64,
    /// Makespan minus busy time: the rank's bubble.
    pub idle: f64,
    /// Most microbatches whose forward has started here and whose weight gradient (B or W)
    /// has not finished, counted per module.
    pub peak_in_flight: u32,
    /// Peak bytes of live activations; `None` without a memory model.
    pub peak_activation_bytes: Option<u64>,
    /// Peak activations plus resident parameters; `None` without a memory model.
    pub peak_memory_bytes: Option<u64>,
}

/// The result of a simulation.
#[derive(Clone, PartialEq, Debug)]
pub struct Simulation {
    /// When the last rank finishes.
    pub makespan: f64,
    /// `timeline[rank][event]`.
    pub timeline: Vec<Vec<Span>>,
    /// Per-rank statistics.
    pub ranks: Vec<RankStats>,
    /// `memory[rank]`: (time, live activation bytes from then on), when memory is modelled.
    pub memory: Vec<Vec<(f64, u64)>>,
}

/// Runs the program set whose DAG is `dag`.
pub fn simulate(set: &ProgramSet, dag: &PlanDag, memory: Option<&MemoryModel>) -> Result<Simulation, PlanError> {
    let g = &dag.graph;
    let (duration, end) = timed(dag);
    // A plan that may hang on NCCL is refused, even if it would run when NCCL is kind.
    let stuck = stuck_events(dag, &finish_times_strict(dag));
    if let Some(&(rank, event)) = stuck.first() {
        let text = set.programs[rank as usize][event as usize].to_string();
        let others = stuck[1..]
            .iter()
            .map(|&(r, e)| format!("rank {r} at event {e} ({})", set.programs[r as usize][e as usize]))
            .collect();
        return Err(PlanError::Deadlock { rank, event, text, others });
    }

    let makespan = end.iter().copied().fold(0.0, f64::max);
    let mut timeline = Vec::with_capacity(set.programs.len());
    let mut ranks = Vec::with_capacity(set.programs.len());
    let mut mem_timelines = Vec::with_capacity(set.programs.len());
    for (r, nodes) in dag.nodes.iter().enumerate() {
        let spans: Vec<Span> = nodes
            .iter()
            .map(|en| Span {
                start: end[en.ready.index()] - duration[en.ready.index()],
                end: end[en.last.index()],
                output: end[en.output.index()],
            })
            .collect();
        let busy: f64 = nodes.iter().flat_map(|en| en.compute_parts(g)).map(|n| duration[n.index()]).sum();
        let peak_in_flight = peak_in_flight(&dag.units[r]);
        let (peak_act, peak_mem, timeline_r) = match memory {
            Some(m) => {
                let (peak, t) = activation_timeline(&dag.units[r], &spans, m);
                let params: u64 = dag.layout.modules[r].iter().map(|s| m.parameters[s.stage as usize]).sum();
                (Some(peak), Some(peak + params), t)
            }
            None => (None, None, Vec::new()),
        };
        ranks.push(RankStats {
            rank: r as u32,
            busy,
            idle: makespan - busy,
            peak_in_flight,
            peak_activation_bytes: peak_act,
            peak_memory_bytes: peak_mem,
        });
        timeline.push(spans);
        mem_timelines.push(timeline_r);
    }
    Ok(Simulation { makespan, timeline, ranks, memory: mem_timelines })
}

/// Finish time of every node: a longest-path pass in topological order (Kahn's
/// algorithm). Nodes on or behind a cycle never become ready and stay NaN. Timing follows
/// the waits NCCL makes in practice: [`Dep::Group`] edges are left out (see
/// [`finish_times_strict`] for deciding deadlock-freedom).
/// Under contention, compute nodes take their stretched durations ([`timed`]).
pub fn finish_times(dag: &PlanDag) -> Vec<f64> {
    timed(dag).1
}

/// Each node's duration as the simulation times it, and its finish time: the nodes' own
/// durations, or under contention ([`PlanDag::contention`]) the compute nodes stretched by
/// the time a batch of their rank was in flight beside them (see the module's doc).
pub fn timed(dag: &PlanDag) -> (Vec<f64>, Vec<f64>) {
    let own = own_durations(dag);
    let end = longest_paths(dag, false, &own);
    if dag.contention <= 0.0 {
        return (own, end);
    }
    let stretched = stretch(dag, &own, &end);
    let end = longest_paths(dag, false, &stretched);
    (stretched, end)
}

/// `duration` with each compute node lengthened by `dag.contention` × its overlap, in the
/// timeline `end`, with the union of its rank's batches in flight (reached on the
/// communication stream until done).
fn stretch(dag: &PlanDag, duration: &[f64], end: &[f64]) -> Vec<f64> {
    let g = &dag.graph;
    let mut out = duration.to_vec();
    for events in &dag.nodes {
        let flight = intervals::union(
            events
                .iter()
                .filter(|en| g[en.first].kind == NodeKind::Post)
                .map(|en| (end[en.ready.index()], end[en.last.index()]))
                .collect(),
        );
        if flight.is_empty() {
            continue;
        }
        for i in events.iter().flat_map(|en| en.compute_parts(g)).map(|n| n.index()) {
            let (a, b) = (end[i] - duration[i], end[i]);
            if !(a.is_finite() && b.is_finite()) {
                continue;
            }
            out[i] += dag.contention * intervals::overlap(&flight, (a, b));
        }
    }
    out
}

/// [`finish_times`] with every wait NCCL is allowed to make, group atomicity included: a
/// node left NaN here may hang on real hardware. Deadlock-freedom is decided with this
/// (the nodes' own durations: contention changes when nodes finish, not whether they do).
pub fn finish_times_strict(dag: &PlanDag) -> Vec<f64> {
    longest_paths(dag, true, &own_durations(dag))
}

/// Every node's own duration, by index.
fn own_durations(dag: &PlanDag) -> Vec<f64> {
    dag.graph.node_weights().map(|n| n.duration).collect()
}

fn longest_paths(dag: &PlanDag, strict: bool, duration: &[f64]) -> Vec<f64> {
    use petgraph::visit::EdgeRef;
    let g = &dag.graph;
    let n = g.node_count();
    let counts = |e: &petgraph::graph::EdgeReference<'_, Dep>| strict || *e.weight() != Dep::Group;
    let mut indegree: Vec<u32> = (0..n)
        .map(|i| g.edges_directed(NodeIndex::new(i), Direction::Incoming).filter(|e| counts(e)).count() as u32)
        .collect();
    // A rank's nodes start no earlier than its program (after its prologue).
    let mut ready_at: Vec<f64> =
        g.node_weights().map(|node| dag.starts.get(node.rank as usize).copied().unwrap_or(0.0)).collect();
    let mut end = vec![f64::NAN; n];
    let mut queue: Vec<NodeIndex> = (0..n).filter(|&i| indegree[i] == 0).map(NodeIndex::new).collect();
    while let Some(v) = queue.pop() {
        let finish = ready_at[v.index()] + duration[v.index()];
        end[v.index()] = finish;
        for e in g.edges_directed(v, Direction::Outgoing).filter(|e| counts(e)) {
            let w = e.target();
            let wi = w.index();
            ready_at[wi] = ready_at[wi].max(finish);
            indegree[wi] -= 1;
            if indegree[wi] == 0 {
                queue.push(w);
            }
        }
    }
    end
}

/// For every rank that never finishes, the first event it cannot complete, ordered by
/// event index (the earliest hang first).
pub fn stuck_events(dag: &PlanDag, end: &[f64]) -> Vec<(u32, u32)> {
    let mut stuck: Vec<(u32, u32)> = dag
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(r, events)| {
            events.iter().position(|en| end[en.last.index()].is_nan()).map(|e| (r as u32, e as u32))
        })
        .collect();
    stuck.sort_by_key(|&(r, e)| (e, r));
    stuck
}

/// Peak in-flight microbatches from program order (an FB counts its forward first).
fn peak_in_flight(units: &[Vec<UnitKey>]) -> u32 {
    let mut live: HashSet<(u32, u32, u32)> = HashSet::new();
    let mut peak = 0;
    for u in units.iter().flatten() {
        let id = (u.pipe, u.stage, u.mb);
        match u.kind {
            UnitKind::F => {
                live.insert(id);
                peak = peak.max(live.len() as u32);
            }
            UnitKind::B | UnitKind::W => {
                live.remove(&id);
            }
            UnitKind::I => {}
        }
    }
    peak
}

/// Live activation bytes over time: allocated when a forward starts, freed when the
/// backward (or I, then W) that releases them ends. At equal times frees come first: on
/// one stream the next op starts only after the previous one ended.
fn activation_timeline(units: &[Vec<UnitKey>], spans: &[Span], m: &MemoryModel) -> (u64, Vec<(f64, u64)>) {
    let mut changes: Vec<(f64, i64)> = Vec::new();
    for (keys, span) in units.iter().zip(spans) {
        for u in keys {
            let d = m.delta(u.kind, u.stage);
            if d > 0 {
                changes.push((span.start, d));
            } else if d < 0 {
                changes.push((span.end, d));
            }
        }
    }
    changes.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut live: i64 = 0;
    let mut peak: i64 = 0;
    let mut out: Vec<(f64, u64)> = vec![(0.0, 0)];
    for (t, d) in changes {
        live += d;
        peak = peak.max(live);
        match out.last_mut() {
            Some(last) if last.0 == t => last.1 = live.max(0) as u64,
            _ => out.push((t, live.max(0) as u64)),
        }
    }
    (peak.max(0) as u64, out)
}
