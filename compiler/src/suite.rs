//! The optimiser's results table: for one spec, the best hand-written family under the
//! memory budget against the optimised schedule and the lower bound.
//!
//! A suite spec describes a model with one stage per rank (see [`Spec::for_family`]); every
//! family that fits is generated from it, with its stage costs derived from the same model,
//! and judged with the better of its own communication placement and the optimiser's
//! ([`Problem::evaluate`]), so that the comparison is between schedules, not placements.
//! The optimiser then starts from every layout the families use (their programs are its
//! starts), within the spec's time limit in all. Its best result is verified like any
//! compiled plan; a failure is an optimiser bug and fails the row.

use crate::bound::spec_lower_bound;
use crate::families::Family;
use crate::ir::{Layout, ProgramSet};
use crate::optimize::problem::{compute_order, Problem};
use crate::optimize::{optimize_from, Objective, Options};
use crate::spec::Spec;
use crate::verify::verify;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One family on the suite spec's model.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct FamilyResult {
    pub family: String,
    /// Simulated makespan; `None` when it deadlocks or breaks the memory budget.
    pub makespan: Option<f64>,
}

/// One row of the table.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Row {
    pub name: String,
    pub ranks: u32,
    pub microbatches: u32,
    pub families: Vec<FamilyResult>,
    /// The best family under the budget and its makespan.
    pub best_family: Option<(String, f64)>,
    /// The optimised makespan and the family layout it was found on.
    pub optimized: f64,
    pub optimized_from: String,
    /// 1 − optimised / best family (positive: the optimiser is better).
    pub gain: Option<f64>,
    /// The least of the layouts' spec lower bounds.
    pub lower_bound: f64,
    /// optimised / lower bound − 1.
    pub gap: f64,
    /// Optimiser wall-clock seconds, all layouts together.
    pub seconds: f64,
    /// Seconds until the winning layout's search found its result.
    pub seconds_to_best: f64,
    /// Whether the verifier accepted the optimised plan (it always must).
    pub verified: bool,
}

/// Runs one suite spec (see the module doc).
pub fn run(spec: &Spec, name: &str) -> Result<Row, String> {
    // The table compares makespans, against the makespan's lower bound (suite specs have
    // no work outside the programs, so their step is their makespan anyway).
    let options = Options { objective: Objective::Makespan, ..spec.optimize.clone().unwrap_or_default() };
    // (layout, spec for it, its families' programs)
    let mut groups: Vec<(Layout, Spec, Vec<ProgramSet>)> = Vec::new();
    let mut families = Vec::new();
    for family in Family::ALL {
        let Ok(fspec) = spec.for_family(family, 2) else { continue };
        let programs = family.generate(fspec.ranks, fspec.microbatches, fspec.chunks_per_rank);
        let problem = Problem::new(&programs, &fspec.costs, fspec.memory.as_ref())
            .ok_or_else(|| format!("{}: the family's programs have no usable layout", family.name()))?
            .with_objective(Objective::Makespan);
        let own = problem.makespan(&programs);
        let replaced = problem.evaluate(compute_order(&programs)).map(|c| c.time);
        let makespan = match (own, replaced) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        families.push(FamilyResult { family: family.name().into(), makespan });
        match groups.iter_mut().find(|g| g.0 == problem.layout && g.1.costs == fspec.costs) {
            Some(g) => g.2.push(programs),
            None => groups.push((problem.layout.clone(), fspec, vec![programs])),
        }
    }
    let best_family =
        families.iter().filter_map(|f| f.makespan.map(|m| (f.family.clone(), m))).min_by(|a, b| a.1.total_cmp(&b.1));
    // Least promising layout first (highest bound), each with an equal share of the time
    // left: layouts that settle early leave their time to the promising ones after them.
    groups.sort_by(|a, b| spec_lower_bound(&b.0, &b.1.costs).total_cmp(&spec_lower_bound(&a.0, &a.1.costs)));
    let began = Instant::now();
    let count = groups.len();
    let mut best: Option<(f64, String, ProgramSet, Spec, f64)> = None;
    let lower_bound = groups.iter().map(|(l, s, _)| spec_lower_bound(l, &s.costs)).fold(f64::INFINITY, f64::min);
    for (i, (_, fspec, starts)) in groups.iter().enumerate() {
        let left = (options.time_limit - began.elapsed().as_secs_f64()).max(0.0);
        let share = Options { time_limit: left / (count - i) as f64, ..options.clone() };
        if best.as_ref().is_some_and(|b| b.0 <= lower_bound * (1.0 + 1e-9)) {
            // Optimal already: no layout can do better.
            break;
        }
        let group_began = Instant::now();
        let Ok(outcome) = optimize_from(starts, &fspec.costs, fspec.memory.as_ref(), &share) else { continue };
        if best.as_ref().is_none_or(|b| outcome.time < b.0) {
            let from = starts.iter().map(|s| s.schedule.as_str()).collect::<Vec<_>>().join("/");
            // Layouts run one after another: the winner's result was found after the ones
            // before it had used their time.
            let at = group_began.duration_since(began).as_secs_f64() + outcome.stats.seconds_to_best;
            best = Some((outcome.time, from, outcome.programs, fspec.clone(), at));
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    let (optimized, optimized_from, programs, fspec, seconds_to_best) =
        best.ok_or_else(|| "no layout has a schedule within the budget".to_string())?;
    let verification = verify(&programs, fspec.costs.comm, fspec.memory.as_ref()).map_err(|e| e.to_string())?;
    if !verification.ok() {
        return Err(format!("optimiser bug: the optimised plan fails verification: {:?}", verification.verdicts));
    }
    Ok(Row {
        name: name.to_string(),
        ranks: spec.ranks,
        microbatches: spec.microbatches,
        gain: best_family.as_ref().map(|b| 1.0 - optimized / b.1),
        best_family,
        families,
        optimized,
        optimized_from,
        lower_bound,
        gap: if lower_bound > 0.0 { optimized / lower_bound - 1.0 } else { 0.0 },
        seconds,
        seconds_to_best,
        verified: true,
    })
}

/// The rows as a Markdown table, with the means of gain and gap.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| spec | ranks | mb | best family | makespan | optimised | from | vs family | lower bound | gap | found at (s) | time (s) |\n\
         |---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let (fam, fm) =
            r.best_family.as_ref().map_or(("none fits".into(), "–".into()), |(n, m)| (n.clone(), format!("{m:.1}")));
        out += &format!(
            "| {} | {} | {} | {} | {} | {:.1} | {} | {} | {:.1} | {:.1}% | {:.2} | {:.2} |\n",
            r.name,
            r.ranks,
            r.microbatches,
            fam,
            fm,
            r.optimized,
            r.optimized_from,
            r.gain.map_or("–".into(), |g| format!("{:+.1}%", g * 100.0)),
            r.lower_bound,
            r.gap * 100.0,
            r.seconds_to_best,
            r.seconds
        );
    }
    let n = rows.len().max(1) as f64;
    let mean_gap = rows.iter().map(|r| r.gap).sum::<f64>() / n;
    let gains: Vec<f64> = rows.iter().filter_map(|r| r.gain).collect();
    let worst = gains.iter().copied().fold(f64::INFINITY, f64::min);
    out += &format!(
        "\n{} specs; mean gap to the lower bound {:.2}%; gain over the best family: mean {:+.1}%, worst {:+.1}%; all verified.\n",
        rows.len(),
        mean_gap * 100.0,
        gains.iter().sum::<f64>() / gains.len().max(1) as f64 * 100.0,
        worst * 100.0
    );
    out
}
