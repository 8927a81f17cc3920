//! The optimiser: searches program sets equivalent to a starting one — the same work on
//! the same ranks, every dependency respected — for a shorter simulated step (or makespan:
//! [`Objective`]) under the memory budget.
//!
//! **The optimiser is untrusted.** It only proposes; [`crate::compile`] runs the verifier
//! on its output before anything is written, and a candidate that fails is reported as an
//! optimiser bug, never kept.
//!
//! The search, in [`optimize`]:
//! 1. *Seeds.* The starting program set, and list schedules of the same work under a few
//!    policies ([`list`]): backward-first or forward-first, whole or split backwards,
//!    overlapped pairs, shares of the memory budget. Each is judged by
//!    [`Problem::evaluate`]: communication placed, the Plan DAG simulated, the budget
//!    checked over every permitted order. Then, for a quarter of the time limit, list
//!    schedules sampled around the two best policies ([`list::Policy::jitter`]); the best
//!    samples join the seeds.
//! 2. *E-graph refinement* ([`egraph`]). Makespan is not a sum over a term, so the e-graph
//!    works on rank-local windows where a sound cost exists: with the other ranks fixed,
//!    each op of the window has a release time (when its inputs from other ranks arrive)
//!    and a tail (the longest path from its end to the end of the schedule through other
//!    ranks); a window's order then has a cost computed bottom-up — finish time and the
//!    largest finish + tail — which egg's extractor minimises exactly over the e-graph.
//!    Rewrites reorder independent ops, split and merge backwards, pair and unpair
//!    forwards with backwards. The extracted window is spliced in and the *whole* plan
//!    re-simulated; it is kept only if its time (step or makespan) drops.
//! 3. The best candidate wins; the start wins ties, so the optimiser never makes a plan
//!    worse.

pub mod egraph;
pub mod lang;
pub mod list;
pub mod problem;
pub mod rules;

use crate::cost::{CostModel, MemoryModel};
use crate::ir::ProgramSet;
use problem::{compute_order, Candidate, Problem};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How many of the best seeds the e-graph refinement starts from.
const REFINED_SEEDS: usize = 3;

/// Share of the time limit spent sampling jittered list schedules (see [`list::Policy`]).
const JITTER_SHARE: f64 = 0.25;

/// What the optimiser minimises.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// The simulated step, what the runtime's step takes: the makespan, then each rank's
    /// work after its program — where pipes are mirrored, the gradient exchange's exposed
    /// part and the updates after it ([`crate::mirror::step_time`]). The same as the
    /// makespan (plus a constant) when every rank's work outside its program is alike and
    /// nothing is mirrored; not where it is: two programs of one makespan can differ by a
    /// group of the exchange in their step (DualPipe on 4 × H200, `specs/mlp-dualpipe-r4-*`).
    #[default]
    Step,
    /// The simulated makespan: when the last program ends.
    Makespan,
}

impl Objective {
    /// The name a spec gives it (`[optimize] objective`).
    pub fn name(self) -> &'static str {
        match self {
            Objective::Step => "step",
            Objective::Makespan => "makespan",
        }
    }
}

/// Limits of one optimisation (`[optimize]` in a spec).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Options {
    /// Wall-clock limit of the whole search, seconds.
    pub time_limit: f64,
    /// Most e-nodes of one window's e-graph.
    pub node_limit: usize,
    /// Ops per rank-local window.
    pub window: usize,
    pub objective: Objective,
    /// Under `comm = "async"`, whether [`crate::compile_with`] plans and emits the
    /// optimiser's programs with early batches too (a batch after a B posted behind the B's
    /// input gradient) or, by default, with every batch after the whole op before it
    /// (`async_in_order`). Why: measured on 2 × H200, the optimiser's programs posted
    /// early ran 1.4% slower (DualPipe at 2048: 20.92 → 21.21 ms; DualPipeV 44.20 →
    /// 44.53; session 11), which the simulator does not predict — it times the same
    /// programs alike both ways, their batches' contention moving from one op to the
    /// next — while the families' programs ran 3–5% faster early.
    #[serde(default)]
    pub early_batches: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            time_limit: 10.0,
            node_limit: 20_000,
            window: 8,
            objective: Objective::default(),
            early_batches: false,
        }
    }
}

/// How the search went: written to `report.json` as `"optimizer"`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
pub struct Stats {
    /// What the search minimised: the simulated step or makespan.
    #[serde(default)]
    pub objective: Objective,
    /// The first start's time by that objective (`null`: it deadlocked or broke the budget).
    #[serde(default)]
    pub baseline: Option<f64>,
    /// Each seed and its time (`null`: it deadlocked or broke the budget).
    pub seeds: Vec<(String, Option<f64>)>,
    /// The seed the refinement started from.
    pub best_seed: String,
    /// Windows whose e-graph was built and extracted.
    pub windows: usize,
    /// Windows whose extraction, spliced in, lowered the time.
    pub improved: usize,
    /// Jittered list schedules sampled (only those that entered the pool are in `seeds`).
    pub sampled: usize,
    /// Candidates simulated in all.
    pub evaluated: usize,
    /// Candidates that deadlocked or broke the budget (discarded).
    pub rejected: usize,
    /// How many window runs egg stopped for each reason.
    pub stop_reasons: BTreeMap<String, usize>,
    /// Largest window e-graph: e-nodes and e-classes.
    pub max_egraph_nodes: usize,
    pub max_egraph_classes: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Seconds until the result was found (the rest of the time found nothing better).
    pub seconds_to_best: f64,
    /// Under `comm = "async"`, planned in order ([`Options::early_batches`] false): the
    /// family's simulated step with its early batches, which [`crate::compile_with`] keeps
    /// instead of the optimised program unless that one's step is shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_family_step: Option<f64>,
}

/// The optimiser's result.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The best program set found (the first start, unchanged, when nothing beat it).
    pub programs: ProgramSet,
    /// The first start's simulated makespan; `None` when it deadlocks or breaks the budget.
    pub baseline_makespan: Option<f64>,
    /// The time of `programs` by the objective (`stats.baseline` is the first start's).
    pub time: f64,
    pub stats: Stats,
}

/// Why the optimiser has no result.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum OptimizeError {
    #[error("nothing to optimise: no starting program set was given")]
    NoStart,
    #[error("the program set has no usable layout, or the costs cover another stage count")]
    NoProblem,
    #[error("the starting program sets have different layouts; optimise each layout on its own")]
    MixedLayouts,
    #[error("no candidate runs within the memory budget of {budget} bytes, the start included")]
    NothingFits { budget: u64 },
}

/// Optimises `start` (see the module doc).
pub fn optimize(
    start: &ProgramSet,
    costs: &CostModel,
    memory: Option<&MemoryModel>,
    options: &Options,
) -> Result<Outcome, OptimizeError> {
    optimize_from(std::slice::from_ref(start), costs, memory, options)
}

/// Optimises from several program sets of one layout (e.g. the families that share it):
/// each is a seed, as is its compute order with communication placed anew. The first
/// start is the baseline.
pub fn optimize_from(
    starts: &[ProgramSet],
    costs: &CostModel,
    memory: Option<&MemoryModel>,
    options: &Options,
) -> Result<Outcome, OptimizeError> {
    let began = Instant::now();
    let deadline = began + Duration::from_secs_f64(options.time_limit.max(0.0));
    let first = starts.first().ok_or(OptimizeError::NoStart)?;
    let problem = Problem::new(first, costs, memory).ok_or(OptimizeError::NoProblem)?.with_objective(options.objective);
    if starts.iter().any(|s| s.resolved_layout().as_ref() != Some(&problem.layout)) {
        return Err(OptimizeError::MixedLayouts);
    }
    let mut stats = Stats { objective: options.objective, ..Stats::default() };
    // The best few seeds, best first, with their names.
    // (name, candidate, when it was found).
    let mut pool: Vec<(String, Candidate, Instant)> = Vec::new();
    let consider =
        |name: String, c: Option<Candidate>, stats: &mut Stats, pool: &mut Vec<(String, Candidate, Instant)>| {
            stats.evaluated += 1;
            if c.is_none() {
                stats.rejected += 1;
            }
            stats.seeds.push((name.clone(), c.as_ref().map(|c| c.time)));
            let Some(c) = c else { return };
            if pool.iter().any(|(_, p, _)| p.set == c.set) {
                return;
            }
            let at = pool.iter().position(|(_, p, _)| c.time < p.time - 1e-9).unwrap_or(pool.len());
            pool.insert(at, (name, c, Instant::now()));
            pool.truncate(REFINED_SEEDS);
        };
    // Each start as it is, simulated once: the first is also the baseline.
    let as_is: Vec<Option<Candidate>> = starts.iter().map(|s| problem.candidate(s)).collect();
    let baseline_makespan = as_is[0].as_ref().map(|c| c.makespan);
    stats.baseline = as_is[0].as_ref().map(|c| c.time);
    for (start, as_is) in starts.iter().zip(as_is) {
        consider(start.schedule.clone(), as_is, &mut stats, &mut pool);
        consider(
            format!("{} (re-placed)", start.schedule),
            problem.evaluate(compute_order(start)),
            &mut stats,
            &mut pool,
        );
    }
    // The rule-based policies that ran, with their times and makespans (sampling starts
    // from them).
    let mut ranked: Vec<(f64, f64, list::Policy)> = Vec::new();
    for policy in seed_policies(&problem) {
        if Instant::now() > deadline {
            break;
        }
        let seed = list::schedule(&problem, &policy).and_then(|order| problem.evaluate(order));
        if let Some(c) = &seed {
            ranked.push((c.time, c.makespan, policy));
        }
        consider(policy.name(), seed, &mut stats, &mut pool);
    }
    // A plan at the lower bound is optimal: nothing is left to search.
    let bound = problem.lower_bound();
    let optimal = |c: &Candidate| c.time <= bound * (1.0 + 1e-9);
    // Sample around the two best rule-based policies for a share of the time (unless a
    // seed is optimal already): the best sample joins the pool when it beats one there.
    // Judged by the step, also around the policy of the shortest makespan: a step is a
    // makespan and a tail, and the samples of a policy whose programs end first often end
    // their tails first too (DualPipe on 4 ranks at 4096, under session 11's estimated
    // costs: 91.00 ms without it, 90.30 with it, as the makespan's search found).
    let shortest = ranked.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map(|r| r.2);
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut around: Vec<list::Policy> = ranked.into_iter().take(2).map(|r| r.2).collect();
    if let Some(p) = shortest.filter(|p| problem.objective != Objective::Makespan && !around.contains(p)) {
        around.push(p);
    }
    let sampling_ends = Instant::now() + Duration::from_secs_f64(options.time_limit.max(0.0) * JITTER_SHARE);
    let mut sample = 0u64;
    while !around.is_empty()
        && Instant::now() < sampling_ends.min(deadline)
        && !pool.first().is_some_and(|(_, c, _)| optimal(c))
    {
        let policy = list::Policy { jitter: Some(sample), ..around[sample as usize % around.len()] };
        sample += 1;
        stats.sampled += 1;
        let c = list::schedule(&problem, &policy).and_then(|order| problem.evaluate(order));
        match c {
            Some(c) if pool.len() < REFINED_SEEDS || pool.last().is_some_and(|(_, w, _)| c.time < w.time - 1e-9) => {
                consider(policy.name(), Some(c), &mut stats, &mut pool)
            }
            // Simulated, but not kept (and not listed in `seeds`).
            c => {
                stats.evaluated += 1;
                stats.rejected += c.is_none() as usize;
            }
        }
    }
    if pool.is_empty() {
        return Err(OptimizeError::NothingFits { budget: memory.map_or(0, |m| m.budget) });
    }
    // Refine the best seeds in turn while time is left; the best result wins.
    let mut best: Option<Candidate> = None;
    for (name, mut c, found_at) in pool {
        if best.as_ref().is_some_and(|b| Instant::now() >= deadline || optimal(b)) {
            break;
        }
        let found = if optimal(&c) {
            found_at
        } else {
            egraph::refine(&problem, &mut c, options, deadline, &mut stats).unwrap_or(found_at)
        };
        if best.as_ref().is_none_or(|b| c.time < b.time - 1e-9) {
            stats.best_seed = name;
            stats.seconds_to_best = (found - began).as_secs_f64();
            best = Some(c);
        }
    }
    let Some(best) = best else { return Err(OptimizeError::NothingFits { budget: memory.map_or(0, |m| m.budget) }) };
    stats.seconds = began.elapsed().as_secs_f64();
    let mut programs = best.set;
    match stats.baseline {
        Some(b) if best.time >= b - 1e-9 => programs = first.clone(),
        _ => programs.schedule = format!("{}+optimized", first.schedule),
    }
    let time = stats.baseline.map_or(best.time, |b| best.time.min(b));
    Ok(Outcome { programs, baseline_makespan, time, stats })
}

/// The list-scheduling policies tried as seeds.
fn seed_policies(p: &Problem) -> Vec<list::Policy> {
    let can_split = (0..p.layout.stages).any(|s| p.splittable(s));
    let can_pair = p.costs.pairing_pays();
    let headrooms: &[f64] = if p.memory.is_some() { &[1.0, 0.75, 0.5] } else { &[1.0] };
    let caps: Vec<Option<u32>> = vec![None, Some(p.ranks), Some(2 * p.ranks)];
    let mut out = Vec::new();
    for &split in if can_split { &[true, false][..] } else { &[false][..] } {
        for &pair in if can_pair { &[false, true][..] } else { &[false][..] } {
            for &backward_first in &[true, false] {
                for &headroom in headrooms {
                    for &in_flight in &caps {
                        out.push(list::Policy { split, backward_first, headroom, in_flight, pair, jitter: None });
                    }
                }
            }
        }
    }
    out
}
