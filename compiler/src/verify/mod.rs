//! The verifier: decides, for a program set as it will run, the properties every plan must
//! have, with graph algorithms on the [`PlanDag`], and explains every failure.
//!
//! Properties checked (design.md, "Properties every emitted plan carries a proof of"):
//! 1. **Deadlock-freedom** under NCCL semantics: per-stream program order, FIFO matching of
//!    sends a→b with receives on b from a, rendezvous (no op completes before its partner
//!    is posted; eager completion is never assumed), group atomicity. The Plan DAG encodes
//!    exactly these waits, so the plan is deadlock-free iff the DAG is acyclic and every
//!    send has a receive. A failure shows the cycle of waits.
//! 2. **Payload agreement**: every FIFO-matched pair carries the same kind, stage, pipe and
//!    microbatch (a mismatch is silent gradient corruption even when nothing hangs).
//! 3. **Completeness and order**: every (pipe, stage, microbatch) has exactly one F and
//!    exactly one B or one I and one W, on the rank that owns the stage; no op runs before
//!    its input exists on its own rank (a B before its F, a W before its I, a consumer
//!    before the receive that brings its input, a send before the op that computes what
//!    it sends); every value read from another rank is received. (Such a misordered
//!    dependency is not a wait: the value is just not there, and the op reads garbage.)
//! 4. **Memory** (when a memory model is given): per-rank peak bytes — activations from F
//!    to B (or to I, and the weight-grad part to W), receive buffers from their post to
//!    their consumer, resident parameters — ≤ budget over every execution order the
//!    streams permit. Every allocation and free happens on the rank's one compute stream
//!    (p2p only posts there), so the permitted orders agree on the sequence of memory
//!    events and the worst case is its largest prefix sum — with one reordering under
//!    async p2p: a batch posted behind a B's input gradient ([`crate::dag::posts_early`])
//!    allocates its receives before the B's weight gradient ends and frees.
//! 5. **Buffer safety**: applies once buffers are assigned (the runtime's plan artifact);
//!    reported as not applicable until then.
//!
//! [`certificate`] writes SMT-LIB2 certificates of 1 and 4 that a stock `z3` re-checks.

pub mod certificate;
pub mod counterexample;

use crate::cost::{CommMode, CostModel, MemoryModel};
use crate::dag::{unit_name, PlanDag, PlanError, UnitKey};
use crate::ir::{CommKind, Event, Layout, ProgramSet, UnitKind};
use crate::sim::finish_times_strict;
use petgraph::graph::NodeIndex;
use petgraph::Direction;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The verdict on each property; `None` where a property does not apply.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct Verdicts {
    pub deadlock_free: bool,
    pub payload_agreement: bool,
    pub complete_and_ordered: bool,
    pub within_budget: Option<bool>,
    pub buffer_safe: Option<bool>,
}

/// Why a property fails.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(tag = "property", rename_all = "snake_case")]
pub enum Violation {
    /// A cycle of waits: each (rank, event) waits for the next, the last for the first.
    Deadlock { cycle: Vec<(u32, u32)>, reason: String },
    /// A matched send/recv pair with different payloads.
    Payload { send: (u32, u32), recv: (u32, u32), reason: String },
    /// A unit missing, duplicated, misplaced, or run before its input.
    Completeness { at: Option<(u32, u32)>, reason: String },
    /// A rank's peak memory above the budget.
    Memory { rank: u32, event: u32, peak: u64, budget: u64 },
}

impl Violation {
    /// The property's name as `report.json` spells it.
    pub fn property(&self) -> &'static str {
        match self {
            Violation::Deadlock { .. } => "deadlock_free",
            Violation::Payload { .. } => "payload_agreement",
            Violation::Completeness { .. } => "complete_and_ordered",
            Violation::Memory { .. } => "within_budget",
        }
    }
}

/// The verifier's result.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Verification {
    pub verdicts: Verdicts,
    pub violations: Vec<Violation>,
    /// Per-rank worst-case peak bytes over every permitted order, with a memory model.
    pub peak_bytes: Option<Vec<u64>>,
}

impl Verification {
    /// Whether every applicable property holds.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Verifies `set` under `comm` semantics and, when given, `memory`. Errors only for input
/// that is not a program set at all (no layout, wrong rank count, unknown modules/peers).
pub fn verify(set: &ProgramSet, comm: CommMode, memory: Option<&MemoryModel>) -> Result<Verification, PlanError> {
    let layout = set.resolved_layout().ok_or_else(|| PlanError::NoLayout(set.schedule.clone()))?;
    let mut costs = CostModel::uniform(layout.stages, 1.0, 2.0, 1.0, 3.0, 0.0);
    costs.comm = comm;
    check(set, PlanDag::build(set, &costs).as_ref(), comm, memory)
}

/// [`verify`] on the Plan DAG already built for `set` (durations play no part: only which
/// op waits for which).
pub fn verify_dag(set: &ProgramSet, dag: &PlanDag, memory: Option<&MemoryModel>) -> Result<Verification, PlanError> {
    check(set, Ok(dag), dag.comm, memory)
}

fn check(
    set: &ProgramSet,
    dag: Result<&PlanDag, &PlanError>,
    comm: CommMode,
    memory: Option<&MemoryModel>,
) -> Result<Verification, PlanError> {
    let layout = set.resolved_layout().ok_or_else(|| PlanError::NoLayout(set.schedule.clone()))?;
    if set.programs.len() != set.ranks as usize || layout.modules.len() != set.ranks as usize {
        return Err(PlanError::RankCount { programs: set.programs.len(), ranks: set.ranks });
    }
    layout.check().map_err(PlanError::BadLayout)?;
    let mut violations = completeness(set, &layout)?;

    let mut deadlock_free = true;
    let mut payload_ok = true;
    match dag {
        Ok(dag) => {
            for m in &dag.mismatches {
                if let PlanError::PayloadMismatch { from, send_event, send, to, recv_event, recv } = m {
                    payload_ok = false;
                    violations.push(Violation::Payload {
                        send: (*from, *send_event),
                        recv: (*to, *recv_event),
                        reason: format!("rank {from} sends {send} but rank {to} receives it as {recv}"),
                    });
                }
            }
            for m in &dag.misordered {
                if let PlanError::OutOfOrder { rank, event, .. } | PlanError::MissingInput { rank, event, .. } = m {
                    violations.push(Violation::Completeness { at: Some((*rank, *event)), reason: m.to_string() });
                }
            }
            let end = finish_times_strict(dag);
            if end.iter().any(|t| t.is_nan()) {
                deadlock_free = false;
                violations.push(counterexample::deadlock_cycle(set, dag, &end));
            }
        }
        Err(PlanError::Unmatched { from, to, sends, recvs }) => {
            deadlock_free = false;
            violations.push(Violation::Deadlock {
                cycle: vec![],
                reason: format!(
                    "{sends} sends from rank {from} to rank {to} but {recvs} receives on rank {to} from rank {from}: \
                     under rendezvous the unmatched ones never complete"
                ),
            });
        }
        Err(e @ (PlanError::Duplicate { .. } | PlanError::MissingInput { .. })) => {
            // Already explained by the completeness and order checks when they caught it.
            if !violations.iter().any(|v| matches!(v, Violation::Completeness { .. })) {
                violations.push(Violation::Completeness { at: None, reason: e.to_string() });
            }
        }
        Err(e) => return Err(e.clone()),
    }

    let (within_budget, peak_bytes) = match memory {
        Some(m) => {
            let peaks = worst_case_memory(set, &layout, m, comm);
            let mut ok = true;
            for (r, &(peak, event)) in peaks.iter().enumerate() {
                if peak > m.budget {
                    ok = false;
                    violations.push(Violation::Memory { rank: r as u32, event, peak, budget: m.budget });
                }
            }
            (Some(ok), Some(peaks.iter().map(|p| p.0).collect()))
        }
        None => (None, None),
    };
    let complete = !violations.iter().any(|v| matches!(v, Violation::Completeness { .. }));
    Ok(Verification {
        verdicts: Verdicts {
            deadlock_free,
            payload_agreement: payload_ok,
            complete_and_ordered: complete,
            within_budget,
            buffer_safe: None,
        },
        violations,
        peak_bytes,
    })
}

/// Units by identity → where they run.
fn units(set: &ProgramSet, layout: &Layout) -> Result<HashMap<UnitKey, Vec<(u32, u32)>>, PlanError> {
    let mut at: HashMap<UnitKey, Vec<(u32, u32)>> = HashMap::new();
    for (r, program) in set.programs.iter().enumerate() {
        for (i, e) in program.iter().enumerate() {
            for (kind, c) in e.units() {
                let m = layout.module(r as u32, c.dir).ok_or_else(|| PlanError::NoModule {
                    rank: r as u32,
                    event: i as u32,
                    text: e.to_string(),
                    dir: c.dir,
                })?;
                at.entry(UnitKey { kind, pipe: m.pipe, stage: m.stage, mb: c.mb })
                    .or_default()
                    .push((r as u32, i as u32));
            }
        }
    }
    Ok(at)
}

fn completeness(set: &ProgramSet, layout: &Layout) -> Result<Vec<Violation>, PlanError> {
    let at = units(set, layout)?;
    let mut out = Vec::new();
    let name = |u: &UnitKey| unit_name(u, layout.pipes);
    for pipe in 0..layout.pipes {
        for stage in 0..layout.stages {
            let owner = layout.locate(pipe, stage).map(|(r, _)| r);
            for mb in 0..layout.microbatches {
                let key = |kind| UnitKey { kind, pipe, stage, mb };
                let count = |kind| at.get(&key(kind)).map_or(0, Vec::len);
                let (f, b, i, w) = (count(UnitKind::F), count(UnitKind::B), count(UnitKind::I), count(UnitKind::W));
                if f != 1 {
                    out.push(Violation::Completeness {
                        at: at.get(&key(UnitKind::F)).and_then(|v| v.get(1).copied()),
                        reason: format!("{} runs {f} times (exactly once is required)", name(&key(UnitKind::F))),
                    });
                }
                if !((b == 1 && i == 0 && w == 0) || (b == 0 && i == 1 && w == 1)) {
                    out.push(Violation::Completeness {
                        at: None,
                        reason: format!(
                            "the backward of {} runs as {b} B, {i} I and {w} W (one B, or one I and one W)",
                            name(&key(UnitKind::F)).trim_start_matches('F')
                        ),
                    });
                }
                for kind in [UnitKind::F, UnitKind::B, UnitKind::I, UnitKind::W] {
                    for &(r, e) in at.get(&key(kind)).into_iter().flatten() {
                        if Some(r) != owner {
                            out.push(Violation::Completeness {
                                at: Some((r, e)),
                                reason: format!(
                                    "{} runs on rank {r}, which does not hold that stage",
                                    name(&key(kind))
                                ),
                            });
                        }
                    }
                }
            }
        }
    }
    // Units outside the layout's range (a microbatch that does not exist).
    for (u, places) in &at {
        if u.mb >= layout.microbatches {
            out.push(Violation::Completeness {
                at: places.first().copied(),
                reason: format!("{} names microbatch {}, but there are {}", name(u), u.mb, layout.microbatches),
            });
        }
    }
    Ok(out)
}

/// Per rank: the worst-case peak bytes over every permitted order and the event where it
/// is reached (see the module doc, property 4).
pub fn worst_case_memory(set: &ProgramSet, layout: &Layout, m: &MemoryModel, comm: CommMode) -> Vec<(u64, u32)> {
    memory_events(set, layout, m, comm)
        .iter()
        .enumerate()
        .map(|(r, events)| {
            let base: i64 = layout.modules[r].iter().map(|s| m.parameters[s.stage as usize] as i64).sum();
            let mut live = base;
            let mut peak = (base, 0u32);
            for &(event, delta) in events {
                live += delta;
                if live > peak.0 {
                    peak = (live, event);
                }
            }
            (peak.0.max(0) as u64, peak.1)
        })
        .collect()
}

/// Each rank's memory events in the order its compute stream issues them: (event, bytes).
/// Within one op, allocations come before frees. Under async p2p a B whose batch is posted
/// behind its input gradient ([`crate::dag::posts_early`]) frees after that batch's
/// receives are allocated (its weight gradient still reads its activations meanwhile).
pub fn memory_events(set: &ProgramSet, layout: &Layout, m: &MemoryModel, comm: CommMode) -> Vec<Vec<(u32, i64)>> {
    set.programs
        .iter()
        .enumerate()
        .map(|(r, program)| {
            let mut out = Vec::new();
            // Receive buffers wait for their consumer: (unit that consumes) → bytes.
            let mut pending: HashMap<(UnitKind, u32, u32, u32), i64> = HashMap::new();
            // The frees of a B whose batch is posted early, until the next compute op.
            let mut deferred: Vec<(u32, i64)> = Vec::new();
            for (i, e) in program.iter().enumerate() {
                let event = i as u32;
                if !e.is_comm() {
                    out.append(&mut deferred);
                }
                match e {
                    Event::Comm { ops } => {
                        for op in ops.iter().filter(|o| !o.kind.is_send()) {
                            let Some(md) = layout.module(r as u32, op.dir) else { continue };
                            let bytes = m.p2p_buffer[md.stage as usize] as i64;
                            let consumer = if op.kind == CommKind::RecvF { UnitKind::F } else { UnitKind::B };
                            *pending.entry((consumer, md.pipe, md.stage, op.mb)).or_default() += bytes;
                            out.push((event, bytes));
                        }
                    }
                    _ => {
                        let units = e.units();
                        let mut frees = Vec::new();
                        for (kind, c) in &units {
                            let Some(md) = layout.module(r as u32, c.dir) else { continue };
                            let d = m.delta(*kind, md.stage);
                            if d > 0 {
                                out.push((event, d));
                            } else if d < 0 {
                                frees.push(d);
                            }
                            let consumer = if *kind == UnitKind::F { UnitKind::F } else { UnitKind::B };
                            if let Some(bytes) = pending.remove(&(consumer, md.pipe, md.stage, c.mb)) {
                                frees.push(-bytes);
                            }
                        }
                        let frees = frees.into_iter().map(|d| (event, d));
                        if crate::dag::posts_early(program, i, comm) {
                            deferred.extend(frees);
                        } else {
                            out.extend(frees);
                        }
                    }
                }
            }
            out.append(&mut deferred);
            out
        })
        .collect()
}

/// The predecessors of `n` that never finish (for cycle search).
pub(crate) fn stuck_preds<'a>(dag: &'a PlanDag, end: &'a [f64], n: NodeIndex) -> impl Iterator<Item = NodeIndex> + 'a {
    let stuck = end[n.index()].is_nan();
    dag.graph.neighbors_directed(n, Direction::Incoming).filter(move |p| stuck && end[p.index()].is_nan())
}
