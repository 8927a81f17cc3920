//! Property tests of EPLB placements on random loads and shapes, for every policy:
//! every expert has ≥ 1 replica; each GPU holds exactly replicas / GPUs slots; log2phy
//! inverts phy2log; hierarchical placements keep each group on one node; the lower bound
//! never exceeds the achieved maximum; balanced is never worse than deepseek.
//! And migration: re-running on noisy loads moves far fewer slots than a fresh placement.

mod common;

use pipewright_compiler::eplb::{io, migrate, rebalance, Loads, Params, Placement, Policy};
use proptest::prelude::*;

fn shape() -> impl Strategy<Value = (usize, Params)> {
    // experts = groups × group size; nodes | gpus; replicas = gpus × per-GPU slots ≥ experts.
    (1usize..=4, 1usize..=4, 1usize..=3, 1usize..=4, 1usize..=3).prop_flat_map(
        |(groups, group_size, nodes, gpn, extra)| {
            let experts = groups * group_size;
            let gpus = nodes * gpn;
            let per_gpu = experts.div_ceil(gpus) + extra - 1;
            let mut replicas = gpus * per_gpu.max(1);
            if groups % nodes == 0 {
                // Hierarchical: every node needs a slot for each of its experts.
                while replicas / nodes < experts / nodes {
                    replicas += gpus;
                }
            }
            Just((experts, Params { replicas, groups, nodes, gpus }))
        },
    )
}

fn loads(layers: usize, experts: usize) -> impl Strategy<Value = Vec<Vec<f64>>> {
    prop::collection::vec(prop::collection::vec(prop_oneof![Just(0.0), 0.0f64..1000.0, 0.0f64..10.0], experts), layers)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn check(p: &Placement, loads: &Loads, params: &Params, hierarchical: bool) -> Result<(), TestCaseError> {
    let k = params.replicas / params.gpus;
    let log2phy = p.log2phy();
    for (l, row) in p.phy2log.iter().enumerate() {
        prop_assert_eq!(row.len(), params.replicas);
        prop_assert_eq!(row.len(), k * params.gpus, "every GPU holds exactly k slots");
        prop_assert!(p.logcnt[l].iter().all(|&c| c >= 1), "expert without replica");
        prop_assert_eq!(p.logcnt[l].iter().sum::<u32>() as usize, params.replicas);
        for (e, &c) in p.logcnt[l].iter().enumerate() {
            let slots: Vec<i64> = log2phy[l].expert(e).iter().copied().filter(|&s| s >= 0).collect();
            prop_assert_eq!(slots.len(), c as usize);
            for s in slots {
                prop_assert_eq!(row[s as usize] as usize, e, "log2phy does not invert phy2log");
            }
        }
        if hierarchical {
            let check = common::groups_on_one_node(row, loads.experts(), params.groups, params.nodes);
            prop_assert!(check.is_ok(), "{:?}", check);
        }
        prop_assert!(p.lower_bound[l] <= max(&p.gpu_load[l]) * (1.0 + 1e-9) + 1e-9, "bound above achieved");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn placements_are_valid_and_balanced_is_never_worse(
        (experts, params) in shape(),
        rows in (1usize..=3).prop_flat_map(|l| loads(l, 16)),
    ) {
        let rows: Vec<Vec<f64>> = rows.into_iter().map(|r| r[..experts].to_vec()).collect();
        let loads = Loads::new(rows).unwrap();
        let reference = rebalance(&loads, &params, Policy::DeepSeek).unwrap();
        check(&reference, &loads, &params, params.hierarchical())?;
        for policy in [Policy::Balanced, Policy::BalancedGlobal] {
            let ours = rebalance(&loads, &params, policy).unwrap();
            check(&ours, &loads, &params, policy == Policy::Balanced && params.hierarchical())?;
            for l in 0..ours.gpu_load.len() {
                prop_assert!(max(&ours.gpu_load[l]) <= max(&reference.gpu_load[l]) * (1.0 + 1e-9) + 1e-9);
            }
            // Extra copies of an expert on one GPU (a wasted slot) are only ever accepted for
            // a strictly lower maximum load than the reference's.
            let k = params.replicas / params.gpus;
            for l in 0..ours.phy2log.len() {
                let (mine, theirs) = (same_gpu_copies(&ours.phy2log[l..=l], k), same_gpu_copies(&reference.phy2log[l..=l], k));
                if mine > theirs {
                    prop_assert!(
                        max(&ours.gpu_load[l]) < max(&reference.gpu_load[l]),
                        "layer {}: {} same-GPU copies against {} without a lower maximum", l, mine, theirs
                    );
                }
            }
        }
    }
}

/// Slots holding an expert that the same GPU already holds.
fn same_gpu_copies(phy2log: &[Vec<u32>], k: usize) -> usize {
    phy2log
        .iter()
        .flat_map(|row| row.chunks(k))
        .map(|gpu| gpu.iter().enumerate().filter(|(i, e)| gpu[..*i].contains(e)).count())
        .sum()
}

/// Deterministic multiplicative noise of about ±`amp`.
fn noisy(rows: &[Vec<f64>], amp: f64, seed: u64) -> Vec<Vec<f64>> {
    let mut state = seed;
    rows.iter()
        .map(|r| {
            r.iter()
                .map(|&x| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                    (x * (1.0 + amp * (2.0 * u - 1.0))).round()
                })
                .collect()
        })
        .collect()
}

#[test]
fn migration_moves_far_fewer_slots_than_a_fresh_placement_under_noise() {
    let dir = common::fixture_dir("EPLB_FIXTURES", "eplb");
    for case in ["B_decode_global__lognorm1.0.json", "A_prefill_hier__lognorm1.0.json"] {
        let input = io::read(&dir.join(case)).unwrap();
        let params = input.params.unwrap();
        let before = Loads::new(input.rows.clone()).unwrap();
        let after = Loads::new(noisy(&input.rows, 0.05, 7)).unwrap();
        let total = params.replicas * input.rows.len();
        let k = params.replicas / params.gpus;

        // What the reference does: a fresh run on the new window.
        let old = rebalance(&before, &params, Policy::DeepSeek).unwrap();
        let new = rebalance(&after, &params, Policy::DeepSeek).unwrap();
        let fresh_moved: usize = old
            .phy2log
            .iter()
            .zip(&new.phy2log)
            .map(|(a, b)| migrate::moved_slots(a, &migrate::align(a, b, k), k))
            .sum();

        let current = rebalance(&before, &params, Policy::Balanced).unwrap();
        let opts = migrate::Migration::default();
        let moved = migrate::rebalance_from(&after, &params, Policy::Balanced, &current.phy2log, opts).unwrap();
        let ours = moved.moved_slots.unwrap();
        let fresh_best = rebalance(&after, &params, Policy::Balanced).unwrap();
        for l in 0..moved.gpu_load.len() {
            let (got, best) = (max(&moved.gpu_load[l]), max(&fresh_best.gpu_load[l]));
            assert!(
                got <= best * (1.0 + opts.tolerance.max(opts.threshold)) + 1e-9,
                "{case} layer {l}: {got} vs fresh {best}"
            );
        }
        println!(
            "{case}: fresh deepseek moves {fresh_moved}/{total} slots ({:.1}%), migration-aware moves {ours} ({:.1}%)",
            100.0 * fresh_moved as f64 / total as f64,
            100.0 * ours as f64 / total as f64
        );
        assert!(ours * 4 < fresh_moved, "{case}: migration-aware moved {ours}, fresh {fresh_moved}");
    }
}
