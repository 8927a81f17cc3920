//! pipewright's compiler: schedule specs → Schedule IR → Plan DAG → simulation → outputs.
//!
//! The whole pipeline reads as one function, [`compile`]. See `ARCHITECTURE.md` at the
//! repository root for the data flow, the code map and the invariants.

pub mod bound;
pub mod cost;
pub mod dag;
pub mod diag;
pub mod emit;
pub mod eplb;
pub mod families;
pub mod ir;
pub mod mirror;
pub mod optimize;
pub mod render;
pub mod report;
pub mod sim;
pub mod spec;
pub mod suite;
pub mod torch;
pub mod verify;

use cost::{CostModel, MemoryModel};
use dag::{PlanDag, PlanError};
use ir::ProgramSet;
use report::Report;
use sim::Simulation;
use spec::Spec;

/// Everything `compile` produces for one spec.
#[derive(Debug)]
pub struct Compiled {
    pub spec: Spec,
    /// The per-rank programs (the interchange format).
    pub programs: ProgramSet,
    /// The Plan DAG the programs lower to.
    pub dag: PlanDag,
    /// The simulated timeline.
    pub simulation: Simulation,
    /// The summary written to `report.json`.
    pub report: Report,
    /// The verifier's judgement of `programs`.
    pub verification: verify::Verification,
    /// The expert placement, when the spec has `[moe]` with its loads read.
    pub experts: Option<eplb::Placement>,
}

/// Why a spec does not compile.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CompileError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The optimiser proposed a plan the verifier rejects: a bug in the optimiser, never a
    /// result.
    #[error("optimiser bug: its plan fails verification ({0}); compile without --optimize and report this")]
    OptimizerBug(String),
    #[error("the optimiser found no plan: {0}")]
    Optimizer(#[from] optimize::OptimizeError),
}

/// Compiles a checked spec: expand the family into per-rank programs, lower them to the
/// Plan DAG (which rejects unmatched or mismatched p2p, duplicate ops and ops without
/// inputs), simulate under the spec's costs, verify, and place the experts of `[moe]`.
pub fn compile(spec: Spec) -> Result<Compiled, CompileError> {
    compile_with(spec, None)
}

/// [`compile`], and with `optimize`, the optimiser's pass between lowering and output.
/// The verifier runs on every plan a pass produced: **the optimiser is untrusted**.
/// Under `comm = "async"` the optimiser's programs are planned, verified and emitted with
/// batches in program order (`async_in_order`, what `Compiled::spec` then says) unless
/// [`optimize::Options::early_batches`]; and the family with its early batches is kept
/// instead when the simulator times its step no slower (the start wins ties: the
/// optimiser never makes a plan worse).
pub fn compile_with(mut spec: Spec, optimize: Option<&optimize::Options>) -> Result<Compiled, CompileError> {
    let family = spec.family.generate(spec.ranks, spec.microbatches, spec.chunks_per_rank);
    let memory = spec.memory.as_ref();
    let (programs, baseline) = match optimize {
        None => (family, None),
        Some(options) => {
            // The family's costs, with its early batches, when the optimiser plans in order.
            let early =
                (spec.costs.comm == cost::CommMode::Async && !options.early_batches).then(|| spec.costs.clone());
            if early.is_some() {
                spec.costs.comm = cost::CommMode::AsyncInOrder;
            }
            let mut outcome = optimize::optimize(&family, &spec.costs, memory, options)?;
            if let Some(early) = early {
                if keep_early_family(family, &early, &spec.costs, memory, &mut outcome) {
                    spec.costs = early;
                }
            }
            (outcome.programs, Some((outcome.baseline_makespan, outcome.stats)))
        }
    };
    let (dag, simulation, mut report) = lower_and_simulate(&programs, &spec.costs, memory)?;
    let verification = verify::verify_dag(&programs, &dag, memory)?;
    if let Some((base, stats)) = baseline {
        if !verification.ok() {
            let failed: Vec<&str> = verification.violations.iter().map(|v| v.property()).collect();
            return Err(CompileError::OptimizerBug(failed.join(", ")));
        }
        report.baseline_makespan = Some(base);
        report.optimizer = Some(stats);
    }
    let experts = spec.moe.as_ref().and_then(|m| {
        // The spec's checks already validated the shape against these loads.
        m.loads.as_ref().and_then(|loads| eplb::rebalance(loads, &m.params, m.policy).ok())
    });
    Ok(Compiled { spec, programs, dag, simulation, report, verification, experts })
}

/// [`compile_with`]'s choice under `comm = "async"` between the optimiser's `outcome`,
/// planned under `in_order` costs, and the `family` with its early batches (`early`
/// costs): the family, put into `outcome`, when its simulated step (within the budget) is
/// no longer; returns whether it was. Records the family's step in the outcome's stats.
fn keep_early_family(
    family: ProgramSet,
    early: &CostModel,
    in_order: &CostModel,
    memory: Option<&MemoryModel>,
    outcome: &mut optimize::Outcome,
) -> bool {
    let simulated = |set: &ProgramSet, costs: &CostModel| {
        let runs = |r: &Report| r.memory.as_ref().is_none_or(|m| m.within_budget);
        lower_and_simulate(set, costs, memory)
            .ok()
            .filter(|(_, _, r)| runs(r))
            .map(|(_, s, r)| (s.makespan, r.step_time))
    };
    let kept = simulated(&family, early);
    outcome.stats.early_family_step = kept.map(|k| k.1);
    let Some((makespan, step)) = kept else { return false };
    if simulated(&outcome.programs, in_order).is_some_and(|(_, optimised)| optimised < step) {
        return false;
    }
    outcome.baseline_makespan = Some(makespan);
    outcome.time = match outcome.stats.objective {
        optimize::Objective::Step => step,
        optimize::Objective::Makespan => makespan,
    };
    outcome.stats.baseline = Some(outcome.time);
    outcome.programs = family;
    true
}

/// Lowers any program set (a family's, an imported or a hand-written one) to its Plan DAG
/// and simulates it.
pub fn lower_and_simulate(
    programs: &ProgramSet,
    costs: &CostModel,
    memory: Option<&MemoryModel>,
) -> Result<(PlanDag, Simulation, Report), PlanError> {
    let dag = PlanDag::build(programs, costs)?;
    if let Some(problem) = dag.mismatches.first().or(dag.misordered.first()) {
        return Err(problem.clone());
    }
    let simulation = sim::simulate(programs, &dag, memory)?;
    let lower_bound = bound::spec_lower_bound(&dag.layout, costs);
    let step =
        mirror::step_time(&dag.layout, programs, &mirror::timeline_ends(&simulation), simulation.makespan, costs);
    let budget = memory.map(|m| m.budget);
    let outside = step - simulation.makespan;
    let report = Report::new(programs, dag.layout.stages, costs.comm, &simulation, budget, (lower_bound, outside));
    Ok((dag, simulation, report))
}
