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
            Some(Dep::Group) => "a batch its NCCL group is tied to (ops of one group may block each other)",
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

/// Where each event of a program file is written: `lines[rank][event]` is the 1-based line
/// of the event's `{`. Scans the JSON text for the `"programs"` array by bracket depth
/// (strings skipped); `None` when the text has no such array.
pub fn event_lines(json: &str) -> Option<Vec<Vec<usize>>> {
    let start = json.find("\"programs\"")?;
    let open = start + json[start..].find('[')?;
    let (mut depth, mut line) = (0usize, 1 + json[..open].matches('\n').count());
    let (mut in_string, mut escaped) = (false, false);
    let mut out: Vec<Vec<usize>> = Vec::new();
    for c in json[open..].chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            if c == '\n' {
                line += 1;
            }
            continue;
        }
        match c {
            '\n' => line += 1,
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                if depth == 2 && c == '[' {
                    out.push(Vec::new());
                } else if depth == 3 && c == '{' {
                    out.last_mut()?.push(line);
                }
            }
            ']' | '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(out);
                }
            }
            _ => {}
        }
    }
    None
}

/// [`render`], followed by the `file:line` of every op involved, when the lines are known.
pub fn render_located(set: &ProgramSet, v: &Violation, file: &str, lines: Option<&[Vec<usize>]>) -> String {
    let mut s = render(set, v);
    let Some(lines) = lines else { return s };
    for (r, e) in involved(v) {
        if let Some(line) = lines.get(r as usize).and_then(|l| l.get(e as usize)) {
            let _ = writeln!(s, "  {file}:{line}: rank {r} event {e} ({})", set.programs[r as usize][e as usize]);
        }
    }
    s
}

/// The (rank, event) pairs a violation concerns.
fn involved(v: &Violation) -> Vec<(u32, u32)> {
    match v {
        Violation::Deadlock { cycle, .. } => cycle.clone(),
        Violation::Payload { send, recv, .. } => vec![*send, *recv],
        Violation::Completeness { at, .. } => at.iter().copied().collect(),
        Violation::Memory { rank, event, .. } => vec![(*rank, *event)],
    }
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

#[cfg(test)]
mod tests {
    use super::event_lines;

    #[test]
    fn lines_of_events_in_a_program_file() {
        let text = "{\"schedule\": \"x [not an array]\", \"programs\": [\n  [\n    {\"op\":\"F\",\"dir\":0,\"mb\":0},\n    {\"op\":\"COMM\",\"ops\":[{\"kind\":\"send_f\",\"peer\":1,\"dir\":0,\"mb\":0}]}\n  ],\n  [{\"op\":\"F\",\"dir\":0,\"mb\":0}, {\"op\":\"B\",\"dir\":0,\"mb\":0}]\n]}";
        assert_eq!(event_lines(text), Some(vec![vec![3, 4], vec![6, 6]]));
        assert_eq!(event_lines("{\"schedule\": \"none\"}"), None);
    }
}
