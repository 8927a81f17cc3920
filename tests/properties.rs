//! Property tests over random (family, ranks, microbatches, costs, comm mode):
//! - every required unit of work appears exactly once, on the rank that owns its stage;
//! - every dependency holds in the simulated timeline (checked from the programs and the
//!   timeline alone, independently of the Plan DAG's edges);
//! - the makespan is at least every rank's total work;
//! - the spec's lower bound is below the family's and the optimiser's makespans, also with
//!   heterogeneous stage costs.

mod common;

use pipewright_compiler::cost::{CommMode, CostModel};
use pipewright_compiler::families::Family;
use pipewright_compiler::ir::{Event, ProgramSet, UnitKind};
use pipewright_compiler::sim::Simulation;
use pipewright_compiler::{lower_and_simulate, optimize};
use proptest::prelude::*;
use std::collections::HashMap;

type Unit = (UnitKind, u32, u32, u32); // kind, pipe, stage, mb

fn case() -> impl Strategy<Value = (Family, u32, u32)> {
    (0usize..7, 1u32..=6, 0u32..10).prop_map(|(f, r, extra)| {
        let family = Family::ALL[f];
        let (ranks, m) = common::family_size(family, r, extra);
        (family, ranks, m)
    })
}

type Costs = (f64, f64, f64, f64, f64, CommMode);

fn costs() -> impl Strategy<Value = Costs> {
    let comm = prop_oneof![Just(CommMode::Blocking), Just(CommMode::Async), Just(CommMode::AsyncInOrder)];
    (0.5f64..3.0, 0.5f64..4.0, 0.0f64..1.0, 0.5f64..1.5, 0.0f64..1.5, comm)
        .prop_map(|(f, b, wfrac, fbfrac, p2p, comm)| (f, b, b * wfrac, (f + b) * fbfrac, p2p, comm))
}

/// The same costs on every one of `stages` stages, with the comm mode `c` draws.
fn uniform(stages: u32, c: Costs) -> CostModel {
    let mut costs = CostModel::uniform(stages, c.0, c.1, c.2, c.3, c.4);
    costs.comm = c.5;
    costs
}

/// The lower bound of `set` under `costs` is at most the family's simulated makespan and
/// the optimiser's (the tightest schedules at hand).
fn bound_holds(set: &ProgramSet, costs: &CostModel) -> Result<(), TestCaseError> {
    let layout = set.layout.as_ref().unwrap();
    let bound = pipewright_compiler::bound::spec_lower_bound(layout, costs);
    let (_, sim, _) = lower_and_simulate(set, costs, None).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    prop_assert!(bound <= sim.makespan + 1e-9, "bound {} above the family's makespan {}", bound, sim.makespan);
    let options = optimize::Options { time_limit: 0.3, ..Default::default() };
    let best = optimize::optimize(set, costs, None, &options).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let (_, sim, _) =
        lower_and_simulate(&best.programs, costs, None).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    prop_assert!(bound <= sim.makespan + 1e-9, "bound {} above the optimised makespan {}", bound, sim.makespan);
    // The step the optimiser minimised is never shorter than its programs.
    prop_assert!(best.time + 1e-9 >= sim.makespan, "step {} below the makespan {}", best.time, sim.makespan);
    Ok(())
}

/// Where each unit runs and when: (rank, start, when its output is final).
fn unit_times(set: &ProgramSet, sim: &Simulation) -> HashMap<Unit, Vec<(u32, f64, f64)>> {
    let layout = set.layout.as_ref().unwrap();
    let mut at: HashMap<Unit, Vec<(u32, f64, f64)>> = HashMap::new();
    for (r, program) in set.programs.iter().enumerate() {
        for (e, span) in program.iter().zip(&sim.timeline[r]) {
            for (k, c) in e.units() {
                let m = layout.modules[r][c.dir as usize];
                at.entry((k, m.pipe, m.stage, c.mb)).or_default().push((r as u32, span.start, span.output));
            }
        }
    }
    at
}

fn check(family: Family, ranks: u32, m: u32, c: Costs) -> Result<(), TestCaseError> {
    let set = family.generate(ranks, m, 2);
    let layout = set.layout.clone().unwrap();
    let costs = uniform(layout.stages, c);
    let (_, sim, report) = lower_and_simulate(&set, &costs, None).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    // The lower bound holds for every execution, so for the simulated one too.
    prop_assert!(
        report.lower_bound <= sim.makespan + 1e-9,
        "bound {} above makespan {}",
        report.lower_bound,
        sim.makespan
    );
    let at = unit_times(&set, &sim);

    // Exactly once, on the owning rank: F, and B or (I and W).
    let mut expected = 0;
    for pipe in 0..layout.pipes {
        for stage in 0..layout.stages {
            let (owner, _) = layout.locate(pipe, stage).unwrap();
            for mb in 0..layout.microbatches {
                let count = |k| at.get(&(k, pipe, stage, mb)).map_or(0, |v| v.len());
                prop_assert_eq!(count(UnitKind::F), 1, "F pipe {} stage {} mb {}", pipe, stage, mb);
                let split = (count(UnitKind::I), count(UnitKind::W));
                prop_assert!(
                    (count(UnitKind::B) == 1 && split == (0, 0)) || (count(UnitKind::B) == 0 && split == (1, 1)),
                    "backward of pipe {} stage {} mb {}: B {} I/W {:?}",
                    pipe,
                    stage,
                    mb,
                    count(UnitKind::B),
                    split
                );
                for k in [UnitKind::F, UnitKind::B, UnitKind::I, UnitKind::W] {
                    for &(r, _, _) in at.get(&(k, pipe, stage, mb)).into_iter().flatten() {
                        prop_assert_eq!(r, owner);
                    }
                }
                expected += if count(UnitKind::B) == 1 { 2 } else { 3 };
            }
        }
    }
    let total: usize = at.values().map(|v| v.len()).sum();
    prop_assert_eq!(total, expected, "extra units beyond the required ones");

    // Dependencies in the timeline.
    let end_of = |u: Unit| at.get(&u).and_then(|v| v.first()).map(|&(_, _, e)| e);
    let eps = 1e-9;
    for (&(k, pipe, stage, mb), places) in &at {
        let (_, start, _) = places[0];
        let mut inputs = Vec::new();
        match k {
            UnitKind::F if stage > 0 => inputs.push((UnitKind::F, stage - 1)),
            UnitKind::F => {}
            UnitKind::B | UnitKind::I => {
                inputs.push((UnitKind::F, stage));
                if stage + 1 < layout.stages {
                    let next =
                        if end_of((UnitKind::B, pipe, stage + 1, mb)).is_some() { UnitKind::B } else { UnitKind::I };
                    inputs.push((next, stage + 1));
                }
            }
            UnitKind::W => inputs.push((UnitKind::I, stage)),
        }
        for (ik, is) in inputs {
            let done = end_of((ik, pipe, is, mb)).expect("input exists");
            prop_assert!(
                start + eps >= done,
                "{:?} pipe {} stage {} mb {} starts at {} before its input {:?} stage {} ends at {}",
                k,
                pipe,
                stage,
                mb,
                start,
                ik,
                is,
                done
            );
        }
    }

    // The makespan covers every rank's work.
    for r in &sim.ranks {
        prop_assert!(sim.makespan + eps >= r.busy);
        prop_assert!(r.idle >= -eps);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn families_are_complete_ordered_and_bounded((family, ranks, m) in case(), c in costs()) {
        check(family, ranks, m, c)?;
    }

    /// Early batches (async p2p, a batch after a B posted behind its input gradient) only
    /// relax waits: without contention no step takes longer than with every batch after
    /// the whole op before it, and every rank computes as long. Under blocking p2p the
    /// two async modes' programs are not split at all.
    #[test]
    fn early_batches_never_lengthen_a_step_without_contention((family, ranks, m) in case(), c in costs()) {
        let set = family.generate(ranks, m, 2);
        let stages = set.layout.as_ref().unwrap().stages;
        let mut costs = uniform(stages, c);
        let mut run = |comm| {
            costs.comm = comm;
            lower_and_simulate(&set, &costs, None).map_err(|e| TestCaseError::fail(format!("{e}")))
        };
        let (_, in_order, _) = run(CommMode::AsyncInOrder)?;
        let (dag, early, _) = run(CommMode::Async)?;
        prop_assert!(early.makespan <= in_order.makespan + 1e-9, "{} > {}", early.makespan, in_order.makespan);
        for (a, b) in early.ranks.iter().zip(&in_order.ranks) {
            prop_assert!((a.busy - b.busy).abs() < 1e-9, "rank {}: busy {} vs {}", a.rank, a.busy, b.busy);
        }
        // Split exactly where a batch follows a B or an FB pair, and the head ends first.
        for (r, program) in set.programs.iter().enumerate() {
            for (i, en) in dag.nodes[r].iter().enumerate() {
                let split = en.output != en.last && !program[i].is_comm();
                prop_assert_eq!(split, pipewright_compiler::dag::posts_early(program, i, CommMode::Async));
                let span = early.timeline[r][i];
                prop_assert!(span.start <= span.output + 1e-9 && span.output <= span.end + 1e-9);
            }
        }
    }

    /// The lower bound holds under heterogeneous stage costs too, for the family's plan
    /// and for the optimiser's (the tightest schedules at hand), which is where the
    /// order-statistic releases of `bound.rs` could be wrong.
    #[test]
    fn the_lower_bound_holds_for_heterogeneous_stages(
        (family, ranks, m) in case(),
        c in costs(),
        scale in proptest::collection::vec(0.4f64..2.5, 32),
    ) {
        let set = family.generate(ranks, m, 2);
        let stages = set.layout.as_ref().unwrap().stages;
        let mut costs = uniform(stages, c);
        for (s, k) in scale.iter().cycle().take(stages as usize).enumerate() {
            for v in [&mut costs.forward, &mut costs.backward, &mut costs.weight, &mut costs.overlapped] {
                v[s] *= k;
            }
        }
        bound_holds(&set, &costs)?;
    }

    /// The lower bound holds when FB pairs carry their own measured times (`[costs]
    /// overlapped_pairs`), some below every stage's `overlapped`, for the family's plan and
    /// the optimiser's; and the simulator charges a listed pair its own time.
    #[test]
    fn the_lower_bound_holds_with_measured_pairs(
        (family, ranks, m) in case(),
        c in costs(),
        fracs in proptest::collection::vec(0.4f64..1.3, 64),
    ) {
        let set = family.generate(ranks, m, 2);
        let n = set.layout.as_ref().unwrap().stages;
        let mut costs = uniform(n, c);
        let mut k = fracs.iter().cycle();
        for f in 0..n {
            for b in 0..n {
                let ms = (costs.forward[f as usize] + costs.backward[b as usize]) * k.next().unwrap();
                costs.pairs.push(pipewright_compiler::cost::PairCost { f, b, ms });
            }
        }
        for p in &costs.pairs {
            prop_assert_eq!(costs.overlapped(p.f, p.b), p.ms);
            prop_assert!(costs.min_overlapped_with(p.f) <= p.ms && costs.min_overlapped_with(p.b) <= p.ms);
        }
        bound_holds(&set, &costs)?;
    }

    /// A batch's time growing with its transfers, and compute slowed beside batches in
    /// flight: the bound still holds for the family's plan and the optimiser's; neither
    /// ever shortens the simulated makespan (each only lengthens durations); and under
    /// contention each rank computes longer by exactly the fraction of its compute that
    /// overlapped its batches in flight in the uncontended timeline.
    #[test]
    fn transfer_costs_and_contention_only_lengthen_and_keep_the_bound(
        (family, ranks, m) in case(),
        c in costs(),
        per_transfer in 0.0f64..1.0,
        contention in 0.0f64..0.9,
    ) {
        let set = family.generate(ranks, m, 2);
        let n = set.layout.as_ref().unwrap().stages;
        let mut costs = uniform(n, c);
        costs.comm = CommMode::Async;
        let simulate = |costs: &CostModel| lower_and_simulate(&set, costs, None).map(|(dag, sim, _)| (dag, sim));
        let (_, plain) = simulate(&costs).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        costs.p2p_per_transfer = per_transfer;
        let (_, sized) = simulate(&costs).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(sized.makespan + 1e-9 >= plain.makespan);
        costs.p2p_contention = contention;
        let (dag, contended) = simulate(&costs).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(contended.makespan + 1e-9 >= sized.makespan);
        for (r, spans) in sized.timeline.iter().enumerate() {
            let program = &set.programs[r];
            let mut flight: Vec<(f64, f64)> =
                spans.iter().zip(program).filter(|(_, e)| e.is_comm()).map(|(s, _)| (s.start, s.end)).collect();
            flight.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut merged: Vec<(f64, f64)> = Vec::new();
            for (a, b) in flight {
                match merged.last_mut() {
                    Some(last) if a <= last.1 => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            let overlap: f64 = spans
                .iter()
                .zip(program)
                .filter(|(_, e)| !e.is_comm())
                .map(|(s, _)| merged.iter().map(|iv| (iv.1.min(s.end) - iv.0.max(s.start)).max(0.0)).sum::<f64>())
                .sum();
            let want = sized.ranks[r].busy + contention * overlap;
            prop_assert!((contended.ranks[r].busy - want).abs() < 1e-6, "rank {}: busy {} vs {}", r, contended.ranks[r].busy, want);
        }
        prop_assert_eq!(dag.contention, contention);
        bound_holds(&set, &costs)?;
        // Blocking p2p: compute waits for each batch, nothing runs beside it.
        costs.comm = CommMode::Blocking;
        let (_, blocking) = simulate(&costs).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        costs.p2p_contention = 0.0;
        let (_, uncontended) = simulate(&costs).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(blocking.makespan, uncontended.makespan);
    }

    /// Prologues ([`CostModel::prologue_by_rank`]) start each rank's program later: the
    /// makespan grows, by no more than the longest prologue (every node is delayed by at
    /// most that), each rank's first event starts no earlier than its prologue, and the
    /// lower bound still holds.
    #[test]
    fn prologues_delay_the_programs_by_at_most_the_longest(
        (family, ranks, m) in case(),
        c in costs(),
        prologues in proptest::collection::vec(0.0f64..3.0, 8),
    ) {
        let set = family.generate(ranks, m, 2);
        let n = set.layout.as_ref().unwrap().stages;
        let mut costs = uniform(n, c);
        let simulate = |costs: &CostModel| {
            lower_and_simulate(&set, costs, None).map(|(_, sim, _)| sim).map_err(|e| TestCaseError::fail(format!("{e}")))
        };
        let plain = simulate(&costs)?;
        costs.prologue_by_rank = prologues[..ranks as usize].to_vec();
        costs.per_step = 3.0;
        let delayed = simulate(&costs)?;
        let longest = costs.prologue_by_rank.iter().copied().fold(0.0, f64::max);
        prop_assert!(delayed.makespan + 1e-9 >= plain.makespan);
        prop_assert!(delayed.makespan <= plain.makespan + longest + 1e-9, "{} vs {} + {}", delayed.makespan, plain.makespan, longest);
        for (r, spans) in delayed.timeline.iter().enumerate() {
            prop_assert!(spans[0].start + 1e-9 >= costs.prologue_by_rank[r], "rank {}", r);
        }
        bound_holds(&set, &costs)?;
    }

    /// Every family's plan at every size, emitted for blocking and async p2p: valid (every
    /// node's buffers, streams, events and peers exist, every product's operands large
    /// enough) and every send meeting a receive of its size on its peer, each p2p op in
    /// exactly one transfer — what NCCL needs, and what the copy-engine transport writes
    /// straight into.
    #[test]
    fn emitted_plans_pair_every_send_with_a_receive_of_its_size(
        (family, ranks, m) in case(),
        async_comm in any::<bool>(),
        fuse_gelu in any::<bool>(),
    ) {
        use pipewright_plan::{Dtype, Hashes, Model, Node, Training};
        let set = family.generate(ranks, m, 2);
        let model = Model {
            kind: "mlp".into(), hidden: 4, ffn: 8, seq: 2, microbatch_size: 1, layers_per_stage: 1,
            dtype: Dtype::F32, seed: 1, fuse_gelu, mirror_bf16: false,
        };
        let training = Training { optimizer: "sgd".into(), lr: 0.1, steps: 1, checkpoint_every: 0 };
        let hashes = Hashes { spec: "s".into(), programs: "p".into(), certificates: "c".into() };
        let comm = if async_comm { CommMode::Async } else { CommMode::Blocking };
        let plan = pipewright_compiler::emit::emit_with(&set, &model, &training, hashes, comm)
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", family.name())))?;
        plan.validate().map_err(|e| TestCaseError::fail(format!("{}: {e}", family.name())))?;
        let transfers = pipewright_plan::transfers::transfers(&plan).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let ops: usize = plan.ranks.iter().flat_map(|r| &r.nodes)
            .map(|n| if let Node::Group { ops, .. } = n { ops.len() } else { 0 })
            .sum();
        prop_assert_eq!(transfers.len() * 2, ops);
    }

    #[test]
    fn generated_programs_roundtrip_through_json((family, ranks, m) in case()) {
        let set = family.generate(ranks, m, 2);
        let text = serde_json::to_string(&set).unwrap();
        let back: ProgramSet = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(back, set);
    }
}

/// A pair listed far below the per-stage `overlapped`: the families that pair charge it,
/// and the lower bound stays below their makespans.
#[test]
fn cheap_measured_pairs_lower_the_bound_with_the_makespan() {
    for (family, ranks, m) in
        [(Family::DualPipeV, 1, 2), (Family::DualPipeV, 1, 4), (Family::DualPipeV, 2, 4), (Family::DualPipe, 2, 4)]
    {
        let set = family.generate(ranks, m, 2);
        let layout = set.layout.clone().unwrap();
        let mut costs = CostModel::uniform(layout.stages, 1.0, 2.0, 1.0, 3.0, 0.0);
        for f in 0..layout.stages {
            for b in 0..layout.stages {
                costs.pairs.push(pipewright_compiler::cost::PairCost { f, b, ms: 0.5 });
            }
        }
        let (_, cheap, _) = lower_and_simulate(&set, &costs, None).unwrap();
        let bound = pipewright_compiler::bound::spec_lower_bound(&layout, &costs);
        assert!(bound <= cheap.makespan + 1e-9, "{family:?} {ranks}: bound {bound} above makespan {}", cheap.makespan);
        let without = CostModel::uniform(layout.stages, 1.0, 2.0, 1.0, 3.0, 0.0);
        let (_, dear, _) = lower_and_simulate(&set, &without, None).unwrap();
        assert!(cheap.makespan < dear.makespan, "{family:?} {ranks}: the listed pairs were not charged");
    }
}

#[test]
fn every_family_at_every_small_size_runs() {
    for family in Family::ALL {
        for ranks in 1..=8u32 {
            if family == Family::DualPipe && ranks % 2 == 1 {
                continue;
            }
            for m in 1..=3 * ranks + 2 {
                if family.check_size(ranks, m, 2).is_err() {
                    continue;
                }
                let comm = [CommMode::Blocking, CommMode::Async, CommMode::AsyncInOrder][m as usize % 3];
                let c = (1.0, 2.0, 1.0, 2.5, 0.1, comm);
                check(family, ranks, m, c).unwrap_or_else(|e| panic!("{} r={ranks} m={m}: {e}", family.name()));
            }
        }
    }
    // Events round-trip through their text form used by the snapshots.
    assert_eq!(Event::F { dir: 1, mb: 3 }.to_string(), "F1.3");
}
