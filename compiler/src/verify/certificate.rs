//! SMT-LIB2 certificates that a stock `z3` re-checks, each carrying the hash of the plan it
//! is about.
//!
//! - `deadlock.smt2` (expected `sat`): one integer per Plan DAG node, one `<` per edge
//!   (program order, p2p matches with rendezvous and group atomicity, data dependencies),
//!   and a witness value for every node. A solution is a topological order, so `sat` with
//!   the witness is a proof that the DAG is acyclic: nothing waits forever.
//! - `memory.smt2` (expected `unsat`): each rank's live bytes after every memory event of
//!   its compute stream, and the claim that one of them exceeds the budget.
//!
//! `pipewright check` re-derives both files from the plan and runs `z3` on them.

use super::memory_events;
use crate::cost::{CommMode, CostModel, MemoryModel};
use crate::dag::{NodeKind, PlanDag, PlanError};
use crate::ir::ProgramSet;
use petgraph::Direction;
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
        NodeKind::Post => "p",
        NodeKind::Start => "s",
        NodeKind::Done => "d",
    };
    format!("r{}e{}{suffix}", node.rank, node.event)
}

/// The deadlock-freedom certificate, or the error when the plan has no topological order.
pub fn deadlock(set: &ProgramSet, comm: CommMode, plan_hash: &str) -> Result<String, PlanError> {
    let layout = set.resolved_layout().ok_or_else(|| PlanError::NoLayout(set.schedule.clone()))?;
    let mut costs = CostModel::uniform(layout.stages, 1.0, 2.0, 1.0, 3.0, 0.0);
    costs.comm = comm;
    let dag = PlanDag::build(set, &costs)?;
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
    for n in dag.graph.node_indices() {
        let _ = writeln!(s, "(declare-const {} Int)", node_name(&dag, n));
    }
    for n in dag.graph.node_indices() {
        let name = node_name(&dag, n);
        let succs: Vec<String> =
            dag.graph.neighbors_directed(n, Direction::Outgoing).map(|m| node_name(&dag, m)).collect();
        let _ = write!(s, "(assert (and (= {name} {})", witness[n.index()]);
        for m in succs {
            let _ = write!(s, " (< {name} {m})");
        }
        s.push_str("))\n");
    }
    s.push_str("(check-sat)\n");
    Ok(s)
}

/// The memory certificate: expected `unsat`.
pub fn memory(set: &ProgramSet, m: &MemoryModel, plan_hash: &str) -> Option<String> {
    let layout = set.resolved_layout()?;
    let events = memory_events(set, &layout, m);
    let mut s = String::new();
    let _ = writeln!(s, "; pipewright certificate: per-rank memory within budget over every permitted order");
    let _ = writeln!(s, "; plan sha256 {plan_hash}");
    let _ = writeln!(s, "; m<rank>_<i>: live bytes after the i-th memory event of the rank's compute stream");
    let _ = writeln!(s, "; (all allocations and frees are issued by that one stream, in program order)");
    let _ = writeln!(s, "; expected: unsat (no rank ever exceeds the budget of {} bytes)", m.budget);
    let _ = writeln!(s, "(set-logic QF_LIA)");
    let mut over = Vec::new();
    for (r, evs) in events.iter().enumerate() {
        let base: u64 = layout.modules[r].iter().map(|st| m.parameters[st.stage as usize]).sum();
        let _ = writeln!(s, "(declare-const m{r}_0 Int)\n(assert (= m{r}_0 {base}))");
        over.push(format!("(> m{r}_0 {})", m.budget));
        for (i, &(_, delta)) in evs.iter().enumerate() {
            let (a, b) = (i, i + 1);
            let _ = writeln!(s, "(declare-const m{r}_{b} Int)\n(assert (= m{r}_{b} (+ m{r}_{a} {})))", smt_int(delta));
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
    let mut out = vec![("deadlock.smt2".into(), "deadlock_free".into(), "sat".into(), deadlock(set, comm, plan_hash)?)];
    if let Some(m) = memory_model {
        if let Some(text) = memory(set, m, plan_hash) {
            out.push(("memory.smt2".into(), "within_budget".into(), "unsat".into(), text));
        }
    }
    Ok(out)
}
