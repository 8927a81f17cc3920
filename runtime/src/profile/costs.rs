//! The `[costs]` table a profile gives a spec: per stage F, B, W and FB (and each FB pair
//! as measured), the p2p line and contention, and once a step each rank's own work and the
//! mirror-gradient sum — from the compute ops timed without p2p, scaled to each rank's
//! step graph without p2p ([`super::RankProfile::calibration`]).

use super::{evidence, fit_batches, median, transfers, Contention, OpTime, RankProfile};
use pipewright_plan::Plan;
use std::collections::BTreeMap;

/// Compute beside batches in flight (ms, all ranks) below which a profile says nothing
/// about contention: too little to tell it from noise.
pub const MIN_CONTENTION_EVIDENCE_MS: f64 = 2.0;

/// The `[costs]` table of the measured ops (TOML text with a header comment).
pub fn costs_toml(plan: &Plan, profiles: &[RankProfile], device: &str) -> String {
    costs_toml_with(plan, profiles, device, None)
}

/// [`costs_toml`] with the contention evidence of other profiles (`from`: it, and what
/// they are, for the header) instead of this one's: a family's batches are mostly short
/// transfers with little compute beside them, the optimiser's programs' are not.
pub fn costs_toml_with(
    plan: &Plan,
    profiles: &[RankProfile],
    device: &str,
    from: Option<(Contention, &str)>,
) -> String {
    let stages = plan.stages as usize;
    let mut by: BTreeMap<(&str, u32), Vec<f64>> = BTreeMap::new();
    // Each measured FB pair by (forward's stage, backward's stage).
    let mut pairs: BTreeMap<(u32, u32), Vec<f64>> = BTreeMap::new();
    // Each p2p batch (transfers in its busier direction, ms).
    let mut batches = Vec::new();
    let contended = from.map_or_else(|| evidence(plan, profiles), |(c, _)| c);
    for (p, rp) in profiles.iter().zip(&plan.ranks) {
        let scale = p.calibration();
        for (i, op) in p.ops.iter().enumerate() {
            match op.kind.as_str() {
                "COMM" if op.label.starts_with('[') => batches.push((transfers(rp, i), op.ms)),
                "COMM" => {}
                "STEP" => {}
                "FB" => {
                    for &s in &op.stages {
                        by.entry(("FB", s)).or_default().push(op.ms * scale);
                    }
                    if let [f, b] = op.stages[..] {
                        pairs.entry((f, b)).or_default().push(op.ms * scale);
                    }
                }
                k => by.entry((k, op.stages.first().copied().unwrap_or(0))).or_default().push(op.ms * scale),
            }
        }
    }
    let get = |k: &str, s: usize| by.get(&(k, s as u32)).map(|v| median(v.clone()));
    let forward: Vec<f64> = (0..stages).map(|s| get("F", s).unwrap_or(f64::NAN)).collect();
    let weight: Vec<Option<f64>> = (0..stages).map(|s| get("W", s)).collect();
    let backward: Vec<f64> = (0..stages)
        .map(|s| match (get("B", s), get("I", s), weight[s]) {
            (Some(b), _, _) => b,
            (None, Some(i), Some(w)) => i + w,
            _ => f64::NAN,
        })
        .collect();
    // W where it was measured; where backwards ran whole, the spec's default (B/2) stays.
    let weights: Vec<f64> = (0..stages).map(|s| weight[s].unwrap_or(backward[s] / 2.0)).collect();
    let overlapped: Vec<f64> = (0..stages).map(|s| get("FB", s).unwrap_or(forward[s] + backward[s])).collect();
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", ");
    // The pairs as measured (with them listed, a pair the plan did not run costs its halves
    // in the simulator: `CostModel::pairs`; the per-stage `overlapped` above, the medians of
    // every pair a stage is in, serves a spec that drops the list).
    let pair_list = pairs
        .iter()
        .map(|(&(f, b), v)| format!("{{ f = {f}, b = {b}, ms = {:.4} }}", median(v.clone())))
        .collect::<Vec<_>>();
    let pair_line =
        if pair_list.is_empty() { String::new() } else { format!("overlapped_pairs = [{}]\n", pair_list.join(", ")) };
    // The batches timed with nothing to wait for where the profile has them.
    let calibrated: Vec<(u32, f64)> = profiles.iter().flat_map(|p| p.p2p_calibration.iter().copied()).collect();
    let (p2p, per_transfer) =
        fit_batches(if calibrated.is_empty() { &batches } else { &calibrated }).unwrap_or((0.0, 0.0));
    let p2p_source = if calibrated.is_empty() {
        "the fastest batch of each size (transfers in its busier direction) of the eager steps"
    } else {
        "the fastest of the batches of each size that pairs of ranks posted at once (calibration)"
    };
    let per_transfer_line =
        if per_transfer > 0.0 { format!("p2p_per_transfer = {per_transfer:.4}\n") } else { String::new() };
    // Contention only from enough evidence: a few milliseconds of compute beside batches.
    let contention_line = if contended.overlap_ms >= MIN_CONTENTION_EVIDENCE_MS {
        format!("p2p_contention = {:.4}\n", (contended.excess_ms / contended.overlap_ms).clamp(0.0, 0.9))
    } else {
        String::new()
    };
    // Once a step: each rank's own work (prologue, epilogue), and the busiest rank's mirror
    // sum.
    let per_rank = |keep: &dyn Fn(&OpTime) -> bool, scaled: bool| -> Vec<f64> {
        profiles
            .iter()
            .map(|p| {
                let scale = if scaled { p.calibration() } else { 1.0 };
                p.ops.iter().filter(|o| keep(o)).map(|o| o.ms * scale).sum::<f64>()
            })
            .collect()
    };
    let per_step = match per_rank(&|o| o.kind == "STEP", true)[..] {
        [one] => format!("{one:.4}"),
        ref each => format!("[{}]", list(each)),
    };
    // Of it, what runs before the program (the prologue): the program starts after it.
    let prologue = per_rank(&|o| o.kind == "STEP" && o.label == "prologue", true);
    let prologue_line =
        if prologue.iter().all(|&x| x <= 0.0) { String::new() } else { format!("prologue = [{}]\n", list(&prologue)) };
    let mirror_sum =
        per_rank(&|o| o.kind == "COMM" && o.label.starts_with("mirror-sum"), false).into_iter().fold(0.0, f64::max);
    // Of the step's own work: a mirrored stage's update after its exchange (the
    // epilogue's `epilogue: stage S ...` ops, summed per stage), the median over ranks.
    let update = |o: &OpTime| o.kind == "STEP" && o.label.starts_with("epilogue: stage ");
    let per_stage: Vec<f64> = (profiles.iter().zip(per_rank(&update, true)))
        .filter_map(|(p, total)| {
            let stages: std::collections::BTreeSet<&str> =
                p.ops.iter().filter(|o| update(o)).filter_map(|o| o.label.split_whitespace().nth(2)).collect();
            (!stages.is_empty()).then(|| total / stages.len() as f64)
        })
        .collect();
    let mirror_update_line =
        if per_stage.is_empty() { String::new() } else { format!("mirror_update = {:.4}\n", median(per_stage)) };
    let scales: Vec<String> = profiles.iter().map(|p| format!("{:.3}", p.calibration())).collect();
    // Measured with the copy engines: a plan compiled with these costs runs with them.
    let transport_line = match profiles.first().map(|p| p.transport) {
        Some(t @ pipewright_plan::Transport::Copy) => format!("transport = \"{}\"\n", t.name()),
        _ => String::new(),
    };
    format!(
        "# Measured by `pipewright-runtime profile` on {device}: plan {} ({} ranks, {} stages, {} microbatches{}),\n\
         # milliseconds per op, medians: {}; p2p and p2p_per_transfer: a line through\n\
         # {p2p_source};\n\
         # p2p_contention: the compute ops' excess in the whole step replayed as a graph over\n\
         # their overlap with batches in flight ({}); each rank's compute ops scaled to its step\n\
         # graph's compute without p2p (by {}, rank by rank). To simulate this machine:\n\
         # `[costs] from = \"<this file>\"` in the spec (whose own `comm` says how the plan\n\
         # communicates).\n\
         [costs]\n{transport_line}forward = [{}]\nbackward = [{}]\nweight = [{}]\noverlapped = [{}]\n{pair_line}p2p = {:.4}\n\
         {per_transfer_line}{contention_line}per_step = {}\n{prologue_line}mirror_sum = {:.4}\n{mirror_update_line}",
        plan.schedule,
        plan.world_size,
        plan.stages,
        plan.pipes * plan.microbatches,
        if plan.pipes > 1 { format!(", {} pipes of {}", plan.pipes, plan.microbatches) } else { String::new() },
        if profiles.iter().all(|p| p.timed_alone) {
            "compute ops over replays of each rank's step without p2p (nothing to wait for)"
        } else {
            "every op over the profiled eager steps"
        },
        from.map_or("this plan's", |(_, what)| what),
        scales.join(", "),
        list(&forward),
        list(&backward),
        list(&weights),
        list(&overlapped),
        p2p,
        per_step,
        mirror_sum,
    )
}
