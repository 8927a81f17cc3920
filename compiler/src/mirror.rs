//! DualPipe's mirror-gradient exchange: which ranks exchange which stages' gradient copies,
//! in which order (what the emitter lays out, `emit/epilogue.rs`), and when it ends in a
//! simulated step (what `report.json`'s `step_time` counts).
//!
//! With mirrored pipes each stage's weights live on two ranks, one per direction, and the
//! two copies' gradients are summed once a step. A copy's gradient is final after its last
//! backward (B, W, or the backward of an FB); the exchange of a pair of ranks goes in
//! *finishing order*: its `i`-th group moves each rank's `i`-th finished copy, after every
//! batch of the program on that rank's communication stream. So the copies that finish
//! early travel while the programs' tails still compute, and only what finishes last is
//! necessarily exposed.

use crate::cost::CostModel;
use crate::ir::{Event, Layout, ProgramSet};
use crate::sim::Simulation;

/// The rank holding the mirror copy of module `dir` of `rank`, and its stage, if its pipe
/// is mirrored.
pub fn mirror_of(layout: &Layout, rank: u32, dir: u32) -> Option<(u32, u32)> {
    let m = layout.modules.get(rank as usize)?.get(dir as usize)?;
    if layout.mirrored_pipes.is_empty() || (m.pipe != 0 && !layout.mirrored_pipes.contains(&m.pipe)) {
        return None;
    }
    let other = if m.pipe == 0 { 1 } else { 0 };
    layout.locate(other, m.stage).map(|(peer, _)| (peer, m.stage))
}

/// The ranks `rank` exchanges gradient copies with, in the one global order of pairs (by
/// the lower rank, then the higher) that every rank follows.
pub fn peers(layout: &Layout, rank: u32) -> Vec<u32> {
    let dirs = layout.modules.get(rank as usize).map_or(0, |m| m.len() as u32);
    let mut peers: Vec<u32> = (0..dirs).filter_map(|d| mirror_of(layout, rank, d).map(|(p, _)| p)).collect();
    peers.sort_by_key(|&p| (p.min(rank), p.max(rank)));
    peers.dedup();
    peers
}

/// The stages of `rank`'s modules mirrored on `peer` in the order their gradients become
/// final in `rank`'s program, each with the number of program events up to and including
/// its last backward (0: none; ties, and stages without one, by stage).
pub fn finishing_order(layout: &Layout, set: &ProgramSet, rank: u32, peer: u32) -> Vec<(u32, usize)> {
    let mirrored = |dir: u32| mirror_of(layout, rank, dir).filter(|&(p, _)| p == peer).map(|(_, stage)| stage);
    let dirs = layout.modules[rank as usize].len() as u32;
    let mut last: Vec<(usize, u32)> = (0..dirs).filter_map(|d| mirrored(d).map(|s| (0, s))).collect();
    for (i, event) in set.programs[rank as usize].iter().enumerate() {
        let dir = match event {
            Event::B { dir, .. } | Event::W { dir, .. } => *dir,
            Event::FB { b, .. } => b.dir,
            _ => continue,
        };
        if let Some(stage) = mirrored(dir) {
            for entry in last.iter_mut().filter(|e| e.1 == stage) {
                entry.0 = i + 1;
            }
        }
    }
    last.sort();
    last.into_iter().map(|(events, stage)| (stage, events)).collect()
}

/// When the last group of the exchange ends, each stage's copies taking `mirror_sum`
/// divided by the busier rank's mirrored stages (`mirror_sum` is a rank's whole exchange
/// per step, as `profile` measures it): a group starts once both ranks' copies are final,
/// both ranks' programs have posted their last batch, and the pair's previous group is
/// done. `ends[rank][event]`: when each program event ends (a simulation's timeline, or
/// the optimiser's finish times). None without mirrored pipes.
pub fn exchange_end(layout: &Layout, set: &ProgramSet, ends: &[Vec<f64>], mirror_sum: f64) -> Option<f64> {
    group_ends(layout, set, ends, mirror_sum).map(|ends| ends.iter().flatten().copied().fold(0.0, f64::max))
}

/// [`exchange_end`]'s groups: per rank, when each of its groups ends, in the order it runs
/// them (pair by pair, each pair's in finishing order). None without mirrored pipes.
pub fn group_ends(layout: &Layout, set: &ProgramSet, ends: &[Vec<f64>], mirror_sum: f64) -> Option<Vec<Vec<f64>>> {
    if layout.mirrored_pipes.is_empty() {
        return None;
    }
    let ranks = set.programs.len();
    let time_after = |rank: u32, events: usize| -> f64 {
        events.checked_sub(1).and_then(|i| ends[rank as usize].get(i)).map_or(0.0, |&t| t)
    };
    // Each rank's communication stream is free after its program's last batch.
    let mut free: Vec<f64> = (0..ranks)
        .map(|r| {
            let program = &set.programs[r];
            let last = program.iter().rposition(|e| matches!(e, Event::Comm { .. }));
            last.map_or(0.0, |i| ends[r][i])
        })
        .collect();
    let mirrored =
        |r: u32| (0..layout.modules[r as usize].len() as u32).filter(|&d| mirror_of(layout, r, d).is_some()).count();
    let mut out = vec![Vec::new(); ranks];
    for r in 0..ranks as u32 {
        for p in peers(layout, r).into_iter().filter(|&p| p > r) {
            let each = mirror_sum / mirrored(r).max(mirrored(p)).max(1) as f64;
            let (mine, theirs) = (finishing_order(layout, set, r, p), finishing_order(layout, set, p, r));
            for (&(_, a), &(_, b)) in mine.iter().zip(&theirs) {
                let start = free[r as usize].max(free[p as usize]).max(time_after(r, a)).max(time_after(p, b));
                free[r as usize] = start + each;
                free[p as usize] = start + each;
                out[r as usize].push(start + each);
                out[p as usize].push(start + each);
            }
        }
    }
    Some(out)
}

/// The step: when the last rank is done with its program and, after it, its own work
/// once a step — its prologue before its program (the DAG starts the program there), the
/// rest after the program's end and, where pipes are mirrored, after the gradient
/// exchange (the copies that finish early travel during the programs' tails; what
/// outlasts them counts), each mirrored stage's update after its group
/// ([`rank_step_end`]). `ends[rank][event]` as in [`exchange_end`]; never below
/// `makespan`.
pub fn step_time(layout: &Layout, set: &ProgramSet, ends: &[Vec<f64>], makespan: f64, costs: &CostModel) -> f64 {
    let groups = group_ends(layout, set, ends, costs.mirror_sum).unwrap_or_default();
    (ends.iter().enumerate())
        .map(|(r, events)| {
            let end = events.iter().copied().fold(0.0, f64::max);
            let mine = groups.get(r).map_or(&[][..], Vec::as_slice);
            let after = costs.per_step_of(r) - costs.prologue_of(r);
            rank_step_end(end, mine, after, costs.mirror_update)
        })
        .fold(makespan, f64::max)
}

/// The event ends of a simulation's timeline, as [`step_time`] takes them.
pub fn timeline_ends(sim: &Simulation) -> Vec<Vec<f64>> {
    sim.timeline.iter().map(|spans| spans.iter().map(|s| s.end).collect()).collect()
}

/// When rank `r`'s step ends after its program (which ends at `program_end`): with
/// `mirror_update` (the part of `per_step` that updates one mirrored stage once its group
/// is done) the rank's compute stream runs each group's update after its program and
/// that group, one after another, and the rest of `per_step` once; without it, all of
/// `per_step` after the program and the whole exchange.
pub fn rank_step_end(program_end: f64, groups: &[f64], per_step: f64, mirror_update: f64) -> f64 {
    if mirror_update <= 0.0 || groups.is_empty() {
        return groups.iter().copied().fold(program_end, f64::max) + per_step;
    }
    let updates = mirror_update * groups.len() as f64;
    let mut t = program_end;
    for &end in groups {
        t = t.max(end) + mirror_update;
    }
    t + (per_step - updates).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::CostModel;
    use crate::families::Family;

    fn simulated(family: Family, ranks: u32, m: u32) -> (ProgramSet, Layout, Simulation) {
        let set = family.generate(ranks, m, 2);
        let stages = set.resolved_layout().unwrap().stages;
        let costs = CostModel::uniform(stages, 1.0, 2.0, 1.0, 2.5, 0.0);
        let (dag, sim, _) = crate::lower_and_simulate(&set, &costs, None).unwrap();
        (set, dag.layout, sim)
    }

    #[test]
    fn dualpipe_pairs_exchange_the_copy_that_finished_first_first() {
        // Two ranks, each holding both stages: stage 1's copies are final early in the
        // tail on both (rank 0: B1.last; rank 1: B0.last), stage 0's at the very end.
        let (set, layout, _) = simulated(Family::DualPipe, 2, 8);
        for r in 0..2 {
            assert_eq!(peers(&layout, r), vec![1 - r]);
            let order: Vec<u32> = finishing_order(&layout, &set, r, 1 - r).into_iter().map(|(s, _)| s).collect();
            assert_eq!(order, vec![1, 0], "rank {r}");
        }
        // Four ranks: rank r pairs with rank 3 − r only.
        let (_, layout, _) = simulated(Family::DualPipe, 4, 8);
        assert_eq!((0..4).map(|r| peers(&layout, r)).collect::<Vec<_>>(), vec![vec![3], vec![2], vec![1], vec![0]]);
        // No mirrored pipes, no exchange.
        let (set, layout, sim) = simulated(Family::DualPipeV, 2, 8);
        assert_eq!(exchange_end(&layout, &set, &timeline_ends(&sim), 5.0), None);
    }

    #[test]
    fn only_the_last_update_follows_the_exchange() {
        // Groups ending at 10 and 12 after a program ending at 11; per_step 3, of which
        // each group's update 1: the first update waits for the program (11 → 12), the
        // second for its group (12 → 13), then the rest of per_step (1) → 14. Without
        // mirror_update all of per_step follows the exchange: 12 + 3 = 15.
        assert_eq!(rank_step_end(11.0, &[10.0, 12.0], 3.0, 1.0), 14.0);
        assert_eq!(rank_step_end(11.0, &[10.0, 12.0], 3.0, 0.0), 15.0);
        // A late group makes its update wait: 11 → 12, then max(12, 20) + 1 = 21, + 1.
        assert_eq!(rank_step_end(11.0, &[10.0, 20.0], 3.0, 1.0), 22.0);
        // No exchange: the program end plus per_step, whatever mirror_update says.
        assert_eq!(rank_step_end(11.0, &[], 3.0, 1.0), 14.0);
        // The groups of a DualPipe step, per rank: one per mirrored stage, in finishing order.
        let (set, layout, sim) = simulated(Family::DualPipe, 2, 8);
        let ends = group_ends(&layout, &set, &timeline_ends(&sim), 2.0).unwrap();
        assert!(ends.iter().all(|e| e.len() == 2 && e[0] <= e[1]), "{ends:?}");
        assert_eq!(ends[0], ends[1], "a pair's groups end together");
        assert_eq!(exchange_end(&layout, &set, &timeline_ends(&sim), 2.0), Some(ends[0][1]));
    }

    #[test]
    fn the_step_is_the_latest_rank_with_its_work_after_its_program() {
        // No mirrored pipes: each rank's end plus its per_step (less its prologue, which
        // the DAG puts before its program); the latest wins, never below the makespan.
        let (set, layout, sim) = simulated(Family::DualPipeV, 2, 8);
        let mut costs = CostModel::uniform(4, 1.0, 2.0, 1.0, 2.5, 0.0);
        costs.per_step_by_rank = vec![3.0, 0.5];
        costs.prologue_by_rank = vec![1.0, 0.0];
        let ends = timeline_ends(&sim);
        let end = |r: usize| ends[r].iter().copied().fold(0.0, f64::max);
        let want = (end(0) + 2.0).max(end(1) + 0.5);
        assert!((step_time(&layout, &set, &ends, sim.makespan, &costs) - want).abs() < 1e-9);
        // DualPipe: the exchange's last group, then its update and the rest of per_step.
        let (set, layout, sim) = simulated(Family::DualPipe, 2, 8);
        let mut costs = CostModel::uniform(2, 1.0, 2.0, 1.0, 2.5, 0.0);
        (costs.mirror_sum, costs.mirror_update, costs.per_step) = (4.0, 0.5, 1.5);
        let ends = timeline_ends(&sim);
        let last = exchange_end(&layout, &set, &ends, 4.0).unwrap();
        assert!(last > sim.makespan, "a 2 ms group is not hidden by a 2 ms tail here");
        let step = step_time(&layout, &set, &ends, sim.makespan, &costs);
        assert!((step - (last + 0.5 + 0.5)).abs() < 1e-9, "step {step}, last group {last}");
    }

    #[test]
    fn only_what_finishes_last_is_exposed() {
        // DualPipe on 2 ranks: the tail after stage 1's last backward (stage 0's last I and
        // W, 1 + 1 ms here) is longer than stage 1's half of a 2 ms exchange, so that half
        // is hidden and the exchange ends one half (1 ms) after the programs.
        let (set, layout, sim) = simulated(Family::DualPipe, 2, 8);
        let end = exchange_end(&layout, &set, &timeline_ends(&sim), 2.0).unwrap();
        assert!((end - sim.makespan - 1.0).abs() < 1e-9, "end {end}, makespan {}", sim.makespan);
        // An exchange longer than the tail is exposed beyond its last half.
        let end = exchange_end(&layout, &set, &timeline_ends(&sim), 10.0).unwrap();
        assert!(end - sim.makespan > 5.0, "end {end}, makespan {}", sim.makespan);
        assert!(end - sim.makespan < 10.0, "end {end}, makespan {}", sim.makespan);
    }
}
