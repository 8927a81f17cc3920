//! SMT-LIB2 certificates that a stock `z3` re-checks, each carrying the hash of the plan it
//! is about.
//!
//! - `deadlock.smt2` (expected `sat`): a witness value for every Plan DAG node and one `<`
//!   per edge (program order, p2p matches with rendezvous and group atomicity, data
//!   dependencies; edges the per-rank chains imply are left out). Values satisfying every
//!   edge are a topological order, so `sat` proves the DAG acyclic: nothing waits forever.
//! - `memory.smt2` (expected `unsat`): each rank's live bytes after every run of memory
//!   events of its compute stream, each step's arithmetic, and the claim that one of the
//!   totals exceeds the budget.
//!
//! `pipewright check` re-derives both files from the plan and runs `z3` on them.

use super::memory_events;
use crate::cost::{CommMode, CostModel, MemoryModel};
use crate::dag::{NodeKind, PlanDag, PlanError};
use crate::ir::ProgramSet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// Hex SHA-256 of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// What `proof/manifest.json` records: enough to re-derive every certificate.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Manifest {
    /// SHA-256 of `programs.json`.
    pub plan_hash: String,
    pub comm: CommMode,
    pub memory: Option<MemoryModel>,
    pub certificates: Vec<CertificateEntry>,
}

/// One certificate file.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct CertificateEntry {
    pub file: String,
    pub property: String,
    /// What `z3` must answer: "sat" or "unsat".
    pub expect: String,
    pub sha256: String,
}

fn node_name(dag: &PlanDag, n: petgraph::graph::NodeIndex) -> String {
    let node = dag.graph[n];
    let suffix = match node.kind {
        NodeKind::Compute => "",
        NodeKind::Head => "i",
        NodeKind::Post => "p",
        NodeKind::Start => "s",
        NodeKind::Done => "d",
    };
    format!("r{}e{}{suffix}", node.rank, node.event)
}

/// The Plan DAG that `set` lowers to under `comm` (durations are irrelevant here).
fn structure(set: &ProgramSet, comm: CommMode) -> Result<PlanDag, PlanError> {
    let layout = set.resolved_layout().ok_or_else(|| PlanError::NoLayout(set.schedule.clone()))?;
    let mut costs = CostModel::uniform(layout.stages, 1.0, 2.0, 1.0, 3.0, 0.0);
    costs.comm = comm;
    PlanDag::build(set, &costs)
}

/// The deadlock-freedom certificate, or the error when the plan has no topological order.
pub fn deadlock(set: &ProgramSet, comm: CommMode, plan_hash: &str) -> Result<String, PlanError> {
    deadlock_from(set, &structure(set, comm)?, comm, plan_hash)
}

/// [`deadlock`] from the Plan DAG already built for `set` under `comm`. The text depends on
/// the DAG's structure only, so any costs give the same certificate.
pub fn deadlock_from(set: &ProgramSet, dag: &PlanDag, comm: CommMode, plan_hash: &str) -> Result<String, PlanError> {
    let order = petgraph::algo::toposort(&dag.graph, None).map_err(|c| {
        let (rank, event, text) = dag.describe(set, c.node_id());
        PlanError::Deadlock { rank, event, text, others: vec![] }
    })?;
    let mut witness = vec![0usize; dag.graph.node_count()];
    for (i, n) in order.iter().enumerate() {
        witness[n.index()] = i;
    }
    let mut s = String::with_capacity(dag.graph.node_count() * 60 + dag.graph.edge_count() * 24);
    let _ = writeln!(s, "; pipewright certificate: deadlock-freedom");
    let _ = writeln!(s, "; plan sha256 {plan_hash}");
    let _ = writeln!(s, "; comm {comm:?}; {} nodes, {} edges", dag.graph.node_count(), dag.graph.edge_count());
    let _ = writeln!(s, "; r<rank>e<event>[p|s|d]: an op, or a p2p batch's post/stream start/completion");
    let _ = writeln!(s, "; expected: sat (the witness orders every wait before its waiter)");
    let _ = writeln!(s, "(set-logic QF_LIA)");
    // The witness: one value per node, as a definition, so that every wait below is a
    // comparison z3 evaluates.
    for n in dag.graph.node_indices() {
        let _ = writeln!(s, "(define-fun {} () Int {})", node_name(dag, n), witness[n.index()]);
    }
    // Program order on the compute stream of each rank, as one chained `<`; every other
    // edge (the p2p stream, matches, data across streams or ranks) one by one, except those
    // the chain already implies by transitivity.
    let mut chained = std::collections::HashSet::new();
    // Position of each node in a run of its rank's chain: an edge between two nodes of one
    // run, forward, is implied by the run and needs no assertion of its own.
    let mut position: Vec<Option<(usize, usize)>> = vec![None; dag.graph.node_count()];
    let mut runs = 0usize;
    for rank_nodes in &dag.nodes {
        let mut chain: Vec<petgraph::graph::NodeIndex> = Vec::new();
        for en in rank_nodes {
            chain.push(en.first);
            if en.last != en.first && dag.graph.find_edge(en.first, en.last).is_some() && en.ready == en.first {
                chain.push(en.last);
            }
        }
        // The chain asserted in runs of direct edges: a split B's rest and the batch
        // posted behind its head are not ordered (dag::posts_early).
        let mut run: Vec<String> = Vec::new();
        for (i, &n) in chain.iter().enumerate() {
            let edge = i.checked_sub(1).and_then(|p| dag.graph.find_edge(chain[p], n));
            match edge {
                Some(e) => {
                    chained.insert(e);
                }
                None => {
                    flush_run(&mut s, &mut run);
                    runs += 1;
                }
            }
            position[n.index()] = Some((runs, i));
            run.push(node_name(dag, n));
        }
        flush_run(&mut s, &mut run);
    }
    for e in dag.graph.edge_indices() {
        if chained.contains(&e) {
            continue;
        }
        if let Some((a, b)) = dag.graph.edge_endpoints(e) {
            let implied = matches!((position[a.index()], position[b.index()]), (Some((ra, pa)), Some((rb, pb))) if ra == rb && pa < pb);
            if !implied {
                let _ = writeln!(s, "(assert (< {} {}))", node_name(dag, a), node_name(dag, b));
            }
        }
    }
    s.push_str("(check-sat)\n");
    Ok(s)
}

/// Asserts the nodes of `run` in increasing order (one `<` chain) and empties it.
fn flush_run(s: &mut String, run: &mut Vec<String>) {
    if run.len() > 1 {
        let _ = writeln!(s, "(assert (< {}))", run.join(" "));
    }
    run.clear();
}

/// The memory certificate: expected `unsat`.
pub fn memory(set: &ProgramSet, m: &MemoryModel, comm: CommMode, plan_hash: &str) -> Option<String> {
    let layout = set.resolved_layout()?;
    let events = memory_events(set, &layout, m, comm);
    let mut s = String::new();
    let _ = writeln!(s, "; pipewright certificate: per-rank memory within budget over every permitted order");
    let _ = writeln!(s, "; plan sha256 {plan_hash}");
    let _ = writeln!(
        s,
        "; m<rank>_<i>: live bytes after the i-th run of allocations or frees of the rank's compute stream"
    );
    let _ = writeln!(s, "; (all allocations and frees are issued by that one stream, in program order)");
    let _ = writeln!(s, "; expected: unsat (no rank ever exceeds the budget of {} bytes)", m.budget);
    let _ = writeln!(s, "(set-logic QF_LIA)");
    let mut over = Vec::new();
    for (r, evs) in events.iter().enumerate() {
        // Consecutive allocations (or frees) form one step: a peak can only be reached at
        // the end of a run of allocations, so nothing is lost.
        let mut steps: Vec<(u32, i64)> = Vec::new();
        for &(event, delta) in evs {
            match steps.last_mut() {
                Some(last) if (last.1 >= 0) == (delta >= 0) => last.1 += delta,
                _ => steps.push((event, delta)),
            }
        }
        let evs = &steps;
        let base: u64 = layout.modules[r].iter().map(|st| m.parameters[st.stage as usize]).sum();
        // Each running total is defined as a constant and its step asserted, so z3 checks
        // the arithmetic of every step and then that no total exceeds the budget.
        let _ = writeln!(s, "(define-fun m{r}_0 () Int {base})");
        over.push(format!("(> m{r}_0 {})", m.budget));
        let mut live = base as i64;
        for (i, &(_, delta)) in evs.iter().enumerate() {
            let (a, b) = (i, i + 1);
            live += delta;
            let _ = writeln!(s, "(define-fun m{r}_{b} () Int {})", smt_int(live));
            let _ = writeln!(s, "(assert (= m{r}_{b} (+ m{r}_{a} {})))", smt_int(delta));
            over.push(format!("(> m{r}_{b} {})", m.budget));
        }
    }
    let _ = writeln!(s, "(assert (or {}))", over.join(" "));
    s.push_str("(check-sat)\n");
    Some(s)
}

fn smt_int(x: i64) -> String {
    if x < 0 {
        format!("(- {})", x.unsigned_abs())
    } else {
        x.to_string()
    }
}

/// Every certificate of a verified plan: (file name, property, expected answer, contents).
pub fn all(
    set: &ProgramSet,
    comm: CommMode,
    memory_model: Option<&MemoryModel>,
    plan_hash: &str,
) -> Result<Vec<(String, String, String, String)>, PlanError> {
    all_from(set, &structure(set, comm)?, comm, memory_model, plan_hash)
}

/// [`all`] from the Plan DAG already built for `set` under `comm`.
pub fn all_from(
    set: &ProgramSet,
    dag: &PlanDag,
    comm: CommMode,
    memory_model: Option<&MemoryModel>,
    plan_hash: &str,
) -> Result<Vec<(String, String, String, String)>, PlanError> {
    let mut out =
        vec![("deadlock.smt2".into(), "deadlock_free".into(), "sat".into(), deadlock_from(set, dag, comm, plan_hash)?)];
    if let Some(m) = memory_model {
        if let Some(text) = memory(set, m, comm, plan_hash) {
            out.push(("memory.smt2".into(), "within_budget".into(), "unsat".into(), text));
        }
    }
    Ok(out)
}
