//! pipewright's compiler: schedule specs → Schedule IR → Plan DAG → simulation → outputs.
//!
//! The whole pipeline reads as one function, [`compile`]. See `ARCHITECTURE.md` at the
//! repository root for the data flow, the code map and the invariants.

pub mod bound;
pub mod cost;
pub mod dag;
pub mod diag;
pub mod eplb;
pub mod families;
pub mod ir;
pub mod render;
pub mod report;
pub mod sim;
pub mod spec;
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
    /// The expert placement, when the spec has `[moe]` with its loads read.
    pub experts: Option<eplb::Placement>,
}

/// Compiles a checked spec: expand the family into per-rank programs, lower them to the
/// Plan DAG (which rejects unmatched or mismatched p2p, duplicate ops and ops without
/// inputs), simulate under the spec's costs, and place the experts of `[moe]`.
pub fn compile(spec: Spec) -> Result<Compiled, PlanError> {
    let programs = spec.family.generate(spec.ranks, spec.microbatches, spec.chunks_per_rank);
    let (dag, simulation, report) = lower_and_simulate(&programs, &spec.costs, spec.memory.as_ref())?;
    let experts = spec.moe.as_ref().and_then(|m| {
        // The spec's checks already validated the shape against these loads.
        m.loads.as_ref().and_then(|loads| eplb::rebalance(loads, &m.params, m.policy).ok())
    });
    Ok(Compiled { spec, programs, dag, simulation, report, experts })
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
    let busy: Vec<f64> = simulation.ranks.iter().map(|r| r.busy).collect();
    let lower_bound = bound::makespan_lower_bound(&dag, costs, &busy);
    let report =
        Report::new(programs, dag.layout.stages, costs.comm, &simulation, memory.map(|m| m.budget), lower_bound);
    Ok((dag, simulation, report))
}
