//! `report.json`: what a compiled plan costs, per rank and overall.

use crate::cost::CommMode;
use crate::ir::ProgramSet;
use crate::sim::{RankStats, Simulation};
use serde::{Deserialize, Serialize};

/// Memory summary, when the spec models memory.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct MemorySummary {
    /// Per-rank budget in bytes.
    pub budget: u64,
    /// Largest per-rank peak (activations and parameters) in the simulated order.
    pub peak_bytes: u64,
    /// Rank with that peak.
    pub peak_rank: u32,
    /// Whether the simulated order stays within the budget. (The verifier proves the
    /// bound over every permitted order.)
    pub within_budget: bool,
}

/// The report of one compiled or simulated program set.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Report {
    pub schedule: String,
    pub world_size: u32,
    pub microbatches: u32,
    pub stages: u32,
    pub comm: CommMode,
    /// When the last rank finishes, in cost units.
    pub makespan: f64,
    /// One training step: the makespan, the step's own work outside the programs
    /// (`[costs] per_step`) and, where pipes are mirrored, the part of the mirror-gradient
    /// exchange (`mirror_sum`) that outlasts the programs ([`crate::mirror::exchange_end`]).
    /// Equal to the makespan when the costs give neither.
    #[serde(default)]
    pub step_time: f64,
    /// Idle time over all ranks divided by ranks × makespan.
    pub bubble_fraction: f64,
    /// No execution of these programs finishes earlier (see `bound`).
    pub lower_bound: f64,
    /// makespan / lower_bound − 1.
    pub gap: f64,
    pub ranks: Vec<RankStats>,
    pub memory: Option<MemorySummary>,
    /// The verifier's verdicts, once the plan has been verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<crate::verify::Verdicts>,
    /// With `--optimize`: the family's makespan before optimisation (`null` when the
    /// family's plan deadlocks or breaks the budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_makespan: Option<Option<f64>>,
    /// With `--optimize`: how the search went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<crate::optimize::Stats>,
}

impl Report {
    /// Summarises a simulation, with its lower bound and the time a step spends outside
    /// the programs (see `step_time`).
    pub fn new(
        set: &ProgramSet,
        stages: u32,
        comm: CommMode,
        sim: &Simulation,
        budget: Option<u64>,
        (lower_bound, outside): (f64, f64),
    ) -> Report {
        let idle: f64 = sim.ranks.iter().map(|r| r.idle).sum();
        let denom = sim.makespan * sim.ranks.len() as f64;
        let memory = budget.and_then(|budget| {
            let (rank, peak) = sim
                .ranks
                .iter()
                .filter_map(|r| r.peak_memory_bytes.map(|p| (r.rank, p)))
                .max_by_key(|&(r, p)| (p, std::cmp::Reverse(r)))?;
            Some(MemorySummary { budget, peak_bytes: peak, peak_rank: rank, within_budget: peak <= budget })
        });
        Report {
            schedule: set.schedule.clone(),
            world_size: set.ranks,
            microbatches: set.chunks,
            stages,
            comm,
            makespan: sim.makespan,
            step_time: sim.makespan + outside,
            bubble_fraction: if denom > 0.0 { idle / denom } else { 0.0 },
            lower_bound,
            gap: if lower_bound > 0.0 { sim.makespan / lower_bound - 1.0 } else { 0.0 },
            ranks: sim.ranks.clone(),
            memory,
            verified: None,
            baseline_makespan: None,
            optimizer: None,
        }
    }

    /// A short human summary.
    pub fn summary(&self) -> String {
        let comm = self.comm.name();
        let mut s = format!(
            "{}: {} ranks, {} stages, {} microbatches, {comm} p2p\nmakespan {:.3}, bubble {:.1}%, lower bound {:.3} (gap {:.1}%)\n",
            self.schedule,
            self.world_size,
            self.stages,
            self.microbatches,
            self.makespan,
            100.0 * self.bubble_fraction,
            self.lower_bound,
            100.0 * self.gap
        );
        if self.step_time > self.makespan {
            s.push_str(&format!(
                "step time {:.3} (the makespan, and {:.3} of work outside the programs)\n",
                self.step_time,
                self.step_time - self.makespan
            ));
        }
        if let (Some(base), Some(o)) = (&self.baseline_makespan, &self.optimizer) {
            let base = base.map_or("does not run within the budget".to_owned(), |b| format!("{b:.3}"));
            // The step too where it is what the search minimised and differs from the makespan.
            let step = match (o.objective, o.baseline) {
                (crate::optimize::Objective::Step, Some(b)) if self.step_time > self.makespan => {
                    format!(", step {b:.3} → {:.3}", self.step_time)
                }
                _ => String::new(),
            };
            s.push_str(&format!(
                "optimised for the {}: family makespan {base} → {:.3}{step}; best seed {}; {} windows ({} improved), {} candidates ({} rejected), {:.2} s\n",
                o.objective.name(), self.makespan, o.best_seed, o.windows, o.improved, o.evaluated, o.rejected, o.seconds
            ));
            if let Some(step) = o.early_family_step {
                let verdict = if self.schedule.ends_with("+optimized") {
                    "slower: the optimised program kept"
                } else {
                    "no slower: kept instead"
                };
                s.push_str(&format!(
                    "optimised in order (async_in_order); the family with early batches takes {step:.3} a step, {verdict}\n"
                ));
            }
        }
        s.push_str("rank       busy       idle  in-flight  peak activation\n");
        for r in &self.ranks {
            let act = r.peak_activation_bytes.map_or_else(|| "-".to_owned(), human_bytes);
            s.push_str(&format!(
                "{:>4} {:>10.3} {:>10.3} {:>10} {:>16}\n",
                r.rank, r.busy, r.idle, r.peak_in_flight, act
            ));
        }
        if let Some(m) = &self.memory {
            s.push_str(&format!(
                "memory: peak {} on rank {} of budget {} ({} in the simulated order)\n",
                human_bytes(m.peak_bytes),
                m.peak_rank,
                human_bytes(m.budget),
                if m.within_budget { "within" } else { "OVER" }
            ));
        }
        s
    }
}

/// Bytes with a binary unit, e.g. `1.5 MiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}
