//! What the optimiser may change, and how it judges a candidate.
//!
//! A [`Problem`] fixes everything a rewrite must keep: the layout (which rank holds which
//! stage), the cost and memory models, and the set of work — one forward and one backward
//! (whole, or split into I + W) per stage and microbatch. A candidate is a compute order
//! per rank; [`Problem::evaluate`] places the p2p batches the way the families do
//! ([`comm::insert`], then [`comm::repair`], then [`comm::lockstep`]), lowers the result to
//! the Plan DAG and simulates it. Only a candidate that runs (acyclic DAG, every input
//! present) and stays within the memory budget over every permitted order has a time:
//! its simulated step or makespan, per the [`Objective`].

use super::Objective;
use crate::cost::{CostModel, MemoryModel};
use crate::dag::PlanDag;
use crate::families::comm;
use crate::ir::{Event, Layout, ProgramSet, UnitKind};
use crate::sim::{finish_times, finish_times_strict, stuck_events};
use crate::verify::worst_case_memory;

/// The fixed part of an optimisation.
#[derive(Debug, Clone)]
pub struct Problem {
    pub schedule: String,
    pub ranks: u32,
    pub chunks: u32,
    pub layout: Layout,
    pub costs: CostModel,
    pub memory: Option<MemoryModel>,
    pub objective: Objective,
    /// `where_[pipe][stage]`: (rank, dir) holding it.
    where_: Vec<Vec<(u32, u32)>>,
}

/// A candidate that runs: its compute order, the program set with communication placed,
/// its time (what the optimiser minimises: [`Problem::time`]) and its makespan.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub order: Vec<Vec<Event>>,
    pub set: ProgramSet,
    pub time: f64,
    pub makespan: f64,
}

impl Problem {
    /// The problem of re-ordering `set`'s work; `None` when the set names no usable layout.
    pub fn new(set: &ProgramSet, costs: &CostModel, memory: Option<&MemoryModel>) -> Option<Problem> {
        let layout = set.resolved_layout()?;
        layout.check().ok()?;
        if costs.stages() != layout.stages as usize {
            return None;
        }
        let mut where_ = vec![vec![(0, 0); layout.stages as usize]; layout.pipes as usize];
        for (r, mods) in layout.modules.iter().enumerate() {
            for (d, m) in mods.iter().enumerate() {
                where_[m.pipe as usize][m.stage as usize] = (r as u32, d as u32);
            }
        }
        Some(Problem {
            schedule: set.schedule.clone(),
            ranks: set.ranks,
            chunks: set.chunks,
            layout,
            costs: costs.clone(),
            memory: memory.cloned(),
            objective: Objective::default(),
            where_,
        })
    }

    /// The problem judged by `objective` instead of the default.
    pub fn with_objective(self, objective: Objective) -> Problem {
        Problem { objective, ..self }
    }

    /// No candidate's time is below this: the makespan's lower bound ([`crate::bound`]),
    /// and for the step, plus the least work a rank does after its program (a step ends
    /// no earlier than the last program's end and that rank's work after it).
    pub fn lower_bound(&self) -> f64 {
        let makespan = crate::bound::spec_lower_bound(&self.layout, &self.costs);
        match self.objective {
            Objective::Makespan => makespan,
            Objective::Step => {
                let after = (0..self.ranks as usize).map(|r| self.costs.per_step_of(r) - self.costs.prologue_of(r));
                makespan + after.fold(f64::INFINITY, f64::min).max(0.0)
            }
        }
    }

    /// (rank, dir) of a stage.
    pub fn holder(&self, pipe: u32, stage: u32) -> (u32, u32) {
        self.where_[pipe as usize][stage as usize]
    }

    /// Whether splitting stage `s`'s backward into I + W is a real choice there.
    pub fn splittable(&self, stage: u32) -> bool {
        let w = self.costs.weight[stage as usize];
        w > 0.0 && w < self.costs.backward[stage as usize]
    }

    /// Duration of a compute event.
    pub fn duration(&self, rank: u32, e: &Event) -> f64 {
        let stage = |dir: u32| self.layout.modules[rank as usize][dir as usize].stage;
        match *e {
            Event::FB { f, b } => self.costs.overlapped(stage(f.dir), stage(b.dir)),
            Event::Comm { .. } => 0.0,
            _ => e.units().iter().map(|(k, c)| self.costs.unit(*k, stage(c.dir))).sum(),
        }
    }

    /// Places communication into `order` and simulates; `None` if the result deadlocks,
    /// misorders a dependency or exceeds the memory budget.
    ///
    /// The placement by time ([`comm::timed`]) is tried first. Under blocking p2p, or when
    /// it does not run, the families' placement is tried too ([`comm::insert`], repaired,
    /// else [`comm::lockstep`]), and the faster kept. (Under async p2p the timed placement
    /// is what the families' would converge to, at a fraction of the repair's cost.)
    pub fn evaluate(&self, order: Vec<Vec<Event>>) -> Option<Candidate> {
        let set = |programs| ProgramSet {
            schedule: self.schedule.clone(),
            ranks: self.ranks,
            chunks: self.chunks,
            layout: Some(self.layout.clone()),
            programs,
        };
        let timed =
            comm::timed(&self.layout, &order, &self.costs).map(set).and_then(|s| self.judge(&s).map(|t| (s, t)));
        if self.costs.comm.is_async() {
            if let Some((set, (time, makespan))) = timed {
                return Some(Candidate { order, set, time, makespan });
            }
        }
        let mut inserted = set(comm::insert(&self.layout, &order));
        if comm::repair(&mut inserted).is_none() {
            inserted.programs = comm::lockstep(&self.layout, &order);
        }
        let inserted = self.judge(&inserted).map(|t| (inserted, t));
        let (set, (time, makespan)) = match (timed, inserted) {
            (Some(a), Some(b)) => {
                if a.1 .0 <= b.1 .0 {
                    a
                } else {
                    b
                }
            }
            (a, b) => a.or(b)?,
        };
        Some(Candidate { order, set, time, makespan })
    }

    /// A program set as a candidate as it is (communication where it stands), if it runs.
    pub fn candidate(&self, set: &ProgramSet) -> Option<Candidate> {
        let (time, makespan) = self.judge(set)?;
        Some(Candidate { order: compute_order(set), set: set.clone(), time, makespan })
    }

    /// What the optimiser minimises for a program set, if it runs within the budget: its
    /// simulated makespan, or its step ([`crate::mirror::step_time`]: the makespan and each
    /// rank's work after its program, the mirror exchange's exposed part included).
    pub fn time(&self, set: &ProgramSet) -> Option<f64> {
        self.judge(set).map(|(time, _)| time)
    }

    /// [`Problem::time`] and the makespan.
    fn judge(&self, set: &ProgramSet) -> Option<(f64, f64)> {
        let (dag, end) = self.simulated(set)?;
        let makespan = end.iter().copied().fold(0.0, f64::max);
        let time = match self.objective {
            Objective::Makespan => makespan,
            Objective::Step => {
                let ends: Vec<Vec<f64>> =
                    dag.nodes.iter().map(|events| events.iter().map(|en| end[en.last.index()]).collect()).collect();
                crate::mirror::step_time(&self.layout, set, &ends, makespan, &self.costs)
            }
        };
        Some((time, makespan))
    }

    /// The simulated makespan of a program set, if it runs within the budget.
    pub fn makespan(&self, set: &ProgramSet) -> Option<f64> {
        self.simulated(set).map(|(_, end)| end.iter().copied().fold(0.0, f64::max))
    }

    /// A program set's Plan DAG and its nodes' finish times, if it runs within the budget.
    fn simulated(&self, set: &ProgramSet) -> Option<(PlanDag, Vec<f64>)> {
        let dag = PlanDag::build(set, &self.costs).ok()?;
        if !dag.mismatches.is_empty() || !dag.misordered.is_empty() {
            return None;
        }
        let end = finish_times(&dag);
        if !stuck_events(&dag, &finish_times_strict(&dag)).is_empty() {
            return None;
        }
        if let Some(m) = &self.memory {
            if worst_case_memory(set, &self.layout, m, self.costs.comm).iter().any(|&(peak, _)| peak > m.budget) {
                return None;
            }
        }
        Some((dag, end))
    }
}

/// The compute events of each program (communication stripped).
pub fn compute_order(set: &ProgramSet) -> Vec<Vec<Event>> {
    set.programs.iter().map(|p| p.iter().filter(|e| !e.is_comm()).cloned().collect()).collect()
}

/// The multiset of work units of an order, with B counted as I + W, sorted: what every
/// rewrite must preserve.
pub fn work(order: &[Vec<Event>]) -> Vec<(u32, UnitKind, u32, u32)> {
    let mut out = Vec::new();
    for (r, ops) in order.iter().enumerate() {
        for e in ops {
            for (k, c) in e.units() {
                match k {
                    UnitKind::B => {
                        out.push((r as u32, UnitKind::I, c.dir, c.mb));
                        out.push((r as u32, UnitKind::W, c.dir, c.mb));
                    }
                    _ => out.push((r as u32, k, c.dir, c.mb)),
                }
            }
        }
    }
    out.sort();
    out
}
