//! Property tests of the e-graph rewrites: every program a window's e-graph holds — sampled
//! by extracting with random weights — does the same work as the window and, spliced into
//! its plan, respects every dependency (the plan still runs, and verifies).

mod common;

use egg::{CostFunction, Extractor, Id, Language};
use pipewright_compiler::cost::{CommMode, CostModel};
use pipewright_compiler::dag::UnitKey;
use pipewright_compiler::families::Family;
use pipewright_compiler::ir::UnitKind;
use pipewright_compiler::optimize::egraph::explore;
use pipewright_compiler::optimize::lang::{window_ops, OpData, Sched};
use pipewright_compiler::optimize::problem::{compute_order, work, Problem};
use pipewright_compiler::optimize::rules::RuleCtx;
use pipewright_compiler::optimize::Options;
use pipewright_compiler::verify::verify;
use proptest::prelude::*;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// AST size with a random positive weight per e-node: monotone, so extraction is valid,
/// and different salts pick different members of an e-class.
struct RandomWeights(u64);

impl CostFunction<Sched> for RandomWeights {
    type Cost = u64;
    fn cost<C: FnMut(Id) -> u64>(&mut self, enode: &Sched, mut costs: C) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.0, enode).hash(&mut h);
        1 + h.finish() % 64 + enode.children().iter().map(|&c| costs(c)).sum::<u64>()
    }
}

fn case() -> impl Strategy<Value = (Family, u32, u32, u32, usize, usize, u64)> {
    (0..Family::ALL.len(), 2u32..5, 0u32..4, 0u32..8, 0usize..64, 3usize..9, any::<u64>()).prop_map(
        |(f, r, extra, rank, at, len, salt)| {
            let family = Family::ALL[f];
            let (ranks, m) = common::family_size(family, r, extra);
            (family, ranks, m, rank % ranks, at, len, salt)
        },
    )
}

/// Whether unit `u` reads what `v` produces (both on one rank), from the data dependencies
/// of the Schedule IR, written out independently of the rules.
fn reads(u: &UnitKey, v: &UnitKey) -> bool {
    if u.pipe != v.pipe || u.mb != v.mb {
        return false;
    }
    match (u.kind, v.kind) {
        (UnitKind::F, UnitKind::F) => u.stage == v.stage + 1,
        (UnitKind::B | UnitKind::I | UnitKind::W, UnitKind::F) => u.stage == v.stage,
        (UnitKind::B | UnitKind::I, UnitKind::B | UnitKind::I) => u.stage + 1 == v.stage,
        (UnitKind::W, UnitKind::I) => u.stage == v.stage,
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn rewrites_preserve_work_and_dependencies((family, ranks, m, rank, at, len, salt) in case()) {
        let set = family.generate(ranks, m, 2);
        let layout = set.resolved_layout().unwrap();
        // FB cheaper than F + B, so that `pair` fires too; async p2p.
        let mut costs = CostModel::uniform(layout.stages, 1.0, 2.0, 1.0, 2.5, 0.1);
        costs.comm = CommMode::Async;
        let problem = Problem::new(&set, &costs, None).unwrap();
        let order = compute_order(&set);
        let r = rank as usize;
        let a = at % order[r].len();
        let b = (a + len).min(order[r].len());
        let ops: Vec<OpData> = order[r][a..b].iter().filter_map(OpData::of).collect();
        let ctx = Arc::new(RuleCtx { modules: layout.modules[r].clone(), costs: costs.clone() });
        let options = Options { node_limit: 5_000, window: len, ..Options::default() };
        let (egraph, root, _) = explore(&ctx, &ops, &options, Duration::from_secs(2));
        prop_assert!(egraph.number_of_classes() >= ops.len());
        for k in 0..4u64 {
            let (_, expr) = Extractor::new(&egraph, RandomWeights(salt.wrapping_add(k))).find_best(root);
            let new_ops = window_ops(&expr).expect("the root holds window terms only");
            let mut changed = order.clone();
            changed[r].splice(a..b, new_ops.iter().map(OpData::event));
            prop_assert_eq!(work(&changed), work(&order), "{:?} → {:?}", ops, new_ops);
            // No unit runs before a unit of its own rank that it reads.
            let units: Vec<UnitKey> = changed[r]
                .iter()
                .flat_map(|e| e.units())
                .map(|(kind, c)| {
                    let m = layout.modules[r][c.dir as usize];
                    UnitKey { kind, pipe: m.pipe, stage: m.stage, mb: c.mb }
                })
                .collect();
            for (i, u) in units.iter().enumerate() {
                for v in &units[i + 1..] {
                    prop_assert!(!reads(u, v), "{:?} runs before {:?}, which it reads: {:?} → {:?}", u, v, ops, new_ops);
                }
            }
            // Other ranks' orders are held fixed, so a local reorder can still close a cycle
            // of waits across ranks; the optimiser's judge rejects it (and the verifier
            // would). Whatever runs must verify.
            if let Some(candidate) = problem.evaluate(changed) {
                let v = verify(&candidate.set, CommMode::Async, None).unwrap();
                prop_assert!(v.ok(), "{:?}", v.violations);
            }
        }
    }
}

#[test]
fn the_egraph_holds_every_dependency_respecting_order_of_a_small_window() {
    // F0, F1, F2 of a last stage (each followed by nothing it needs) and B0: B0 reads F0.
    // Orders of {F0, F1, F2, B0} with F0 before B0: 4!/2 = 12; with B0 split into I0 W0
    // and W0 after I0, and pairs F1+B0 / F2+B0, the root class holds many more.
    let set = Family::OneFOneB.generate(2, 4, 1);
    let layout = set.resolved_layout().unwrap();
    let costs = CostModel::uniform(layout.stages, 1.0, 2.0, 1.0, 2.5, 0.0);
    let t = |s: &str| OpData::Unit(s.parse().unwrap());
    let ops = vec![t("F0.0"), t("F0.1"), t("F0.2"), t("B0.0")];
    let ctx = Arc::new(RuleCtx { modules: layout.modules[1].clone(), costs });
    let (egraph, root, reason) = explore(&ctx, &ops, &Options::default(), Duration::from_secs(5));
    assert_eq!(reason, "saturated");
    let mut seen = std::collections::HashSet::new();
    for salt in 0..400u64 {
        let (_, expr) = Extractor::new(&egraph, RandomWeights(salt)).find_best(root);
        seen.insert(window_ops(&expr).unwrap());
    }
    // Plain reorders alone give 12; the sample must go beyond them (splits and pairs).
    assert!(seen.len() > 12, "only {} distinct programs sampled", seen.len());
    let at = |ops: &[OpData], kind: UnitKind| {
        ops.iter().position(|op| op.units().iter().any(|u| u.kind == kind && u.dir == 0 && u.mb == 0))
    };
    for ops in &seen {
        let f = at(ops, UnitKind::F).unwrap();
        let back = at(ops, UnitKind::B).or(at(ops, UnitKind::I)).unwrap();
        assert!(f < back, "B0/I0 before F0: {ops:?}");
        if let (Some(i), Some(w)) = (at(ops, UnitKind::I), at(ops, UnitKind::W)) {
            assert!(i < w, "W0 before I0: {ops:?}");
        }
    }
}
