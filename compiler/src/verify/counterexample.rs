//! Readable counterexamples: the cycle of waits behind a deadlock, and a rank × step grid
//! with the ops involved marked, named as the programs name them.

use super::{stuck_preds, Violation};
use crate::dag::{Dep, PlanDag};
use crate::ir::ProgramSet;
use petgraph::graph::NodeIndex;
use std::collections::HashMap;
use std::fmt::Write;

/// Finds a cycle among the nodes that never finish: each has a predecessor that never
/// finishes, so walking back must repeat a node.
pub fn deadlock_cycle(set: &ProgramSet, dag: &PlanDag, end: &[f64]) -> Violation {
    let Some(start) = (0..end.len())
        .filter(|&i| end[i].is_nan())
        .map(NodeIndex::new)
        .min_by_key(|&n| (dag.graph[n].event, dag.graph[n].rank))
    else {
        return Violation::Deadlock { cycle: vec![], reason: "no stuck op".into() };
    };
    let mut seen: HashMap<NodeIndex, usize> = HashMap::new();
    let mut path: Vec<NodeIndex> = Vec::new();
    let mut n = start;
    let cycle_nodes = loop {
        if let Some(&i) = seen.get(&n) {
            break path[i..].to_vec();
        }
        seen.insert(n, path.len());
        path.push(n);
        // Prefer a cross-rank wait: it is what makes the cycle a deadlock.
        let preds: Vec<NodeIndex> = stuck_preds(dag, end, n).collect();
        let Some(&p) = preds.iter().find(|&&p| dag.graph[p].rank != dag.graph[n].rank).or(preds.first()) else {
            break path.clone();
        };
        n = p;
    };
    // The walk went backwards along waits: each node waits for the next one in the list.
    let mut cycle: Vec<(u32, u32)> = Vec::new();
    let mut reason = String::new();
    let nodes = cycle_nodes;
    let text = |r: u32, e: u32| set.programs[r as usize][e as usize].to_string();
    for (i, &n) in nodes.iter().enumerate() {
        let node = dag.graph[n];
        if cycle.last() != Some(&(node.rank, node.event)) && cycle.first() != Some(&(node.rank, node.event)) {
            cycle.push((node.rank, node.event));
        }
        let p = nodes[(i + 1) % nodes.len()];
        let pred = dag.graph[p];
        if (pred.rank, pred.event) == (node.rank, node.event) {
            continue;
        }
        let why = match dag.graph.find_edge(p, n).map(|e| dag.graph[e]) {
            Some(Dep::Match) => "its p2p partner: rendezvous",
            Some(Dep::Data) => "its input",
            _ => "program order",
        };
        let _ = write!(
            reason,
            "rank {} event {} ({}) waits for rank {} event {} ({}) [{why}]; ",
            node.rank,
            node.event,
            text(node.rank, node.event),
            pred.rank,
            pred.event,
            text(pred.rank, pred.event)
        );
    }
    let reason = format!("a cycle of waits: {}", reason.trim_end_matches("; "));
    Violation::Deadlock { cycle, reason }
}

/// A rank × step grid around the ops a violation involves, with those ops marked `>>op<<`.
pub fn render(set: &ProgramSet, v: &Violation) -> String {
    let (marked, headline): (Vec<(u32, u32)>, String) = match v {
        Violation::Deadlock { cycle, reason } => (cycle.clone(), format!("deadlock: {reason}")),
        Violation::Payload { send, recv, reason } => (vec![*send, *recv], format!("payload mismatch: {reason}")),
        Violation::Completeness { at, reason } => {
            (at.iter().copied().collect(), format!("completeness/order: {reason}"))
        }
        Violation::Memory { rank, event, peak, budget } => (
            vec![(*rank, *event)],
            format!(
                "memory: rank {rank} peaks at {peak} bytes at event {event}, over the budget of {budget} (by {} bytes)",
                peak - budget
            ),
        ),
    };
    let mut s = format!("{headline}\n");
    if marked.is_empty() {
        return s;
    }
    let lo = marked.iter().map(|m| m.1).min().unwrap_or(0).saturating_sub(3) as usize;
    let hi = marked.iter().map(|m| m.1).max().unwrap_or(0) as usize + 4;
    let _ = writeln!(s, "  (events {lo}..{hi} of each rank; marked: the ops involved)");
    for (r, program) in set.programs.iter().enumerate() {
        let end = hi.min(program.len());
        let tokens: Vec<String> = (lo.min(end)..end)
            .map(|i| {
                let t = program[i].to_string();
                if marked.contains(&(r as u32, i as u32)) {
                    format!(">>{t}<<")
                } else {
                    t
                }
            })
            .collect();
        let _ = writeln!(s, "  rank {r:>3} | {}", tokens.join(" "));
    }
    s
}
