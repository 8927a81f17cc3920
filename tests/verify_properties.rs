//! The verifier's deadlock verdict against an independent interpreter of the same NCCL
//! semantics (`common::interp`), on thousands of random program sets, most of them
//! mutated: p2p batches moved, split, merged, or ops deleted.

mod common;

use pipewright_compiler::cost::CommMode;
use pipewright_compiler::families::Family;
use pipewright_compiler::ir::{Event, ProgramSet};
use pipewright_compiler::verify::verify;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Mutation {
    /// Move the k-th COMM batch of a rank to another position of that rank.
    MoveBatch { rank: usize, k: usize, to: usize },
    /// Split the k-th batch of a rank in two.
    Split { rank: usize, k: usize },
    /// Merge the k-th batch of a rank into the next batch.
    Merge { rank: usize, k: usize },
    /// Delete one p2p op.
    DeleteOp { rank: usize, k: usize },
}

fn apply(set: &mut ProgramSet, m: &Mutation) {
    let comm_positions =
        |p: &[Event]| -> Vec<usize> { p.iter().enumerate().filter(|(_, e)| e.is_comm()).map(|(i, _)| i).collect() };
    let ranks = set.programs.len();
    match *m {
        Mutation::MoveBatch { rank, k, to } => {
            let p = &mut set.programs[rank % ranks];
            let pos = comm_positions(p);
            if pos.is_empty() {
                return;
            }
            let e = p.remove(pos[k % pos.len()]);
            let to = to % (p.len() + 1);
            p.insert(to, e);
        }
        Mutation::Split { rank, k } => {
            let p = &mut set.programs[rank % ranks];
            let pos = comm_positions(p);
            if let Some(&i) = pos.get(k % pos.len().max(1)) {
                if let Event::Comm { ops } = p[i].clone() {
                    if ops.len() > 1 {
                        let (a, b) = ops.split_at(ops.len() / 2);
                        p[i] = Event::Comm { ops: a.to_vec() };
                        p.insert(i + 1, Event::Comm { ops: b.to_vec() });
                    }
                }
            }
        }
        Mutation::Merge { rank, k } => {
            let p = &mut set.programs[rank % ranks];
            let pos = comm_positions(p);
            if pos.len() >= 2 {
                let i = k % (pos.len() - 1);
                let (a, b) = (pos[i], pos[i + 1]);
                if let (Event::Comm { ops: first }, Event::Comm { ops: second }) = (p[a].clone(), p[b].clone()) {
                    let mut all = first;
                    all.extend(second);
                    p[b] = Event::Comm { ops: all };
                    p.remove(a);
                }
            }
        }
        Mutation::DeleteOp { rank, k } => {
            let p = &mut set.programs[rank % ranks];
            let pos = comm_positions(p);
            if let Some(&i) = pos.get(k % pos.len().max(1)) {
                if let Event::Comm { ops } = &mut p[i] {
                    let j = k % ops.len();
                    ops.remove(j);
                    if ops.is_empty() {
                        p.remove(i);
                    }
                }
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..8, 0usize..64, 0usize..256).prop_map(|(rank, k, to)| Mutation::MoveBatch { rank, k, to }),
        (0usize..8, 0usize..64).prop_map(|(rank, k)| Mutation::Split { rank, k }),
        (0usize..8, 0usize..64).prop_map(|(rank, k)| Mutation::Merge { rank, k }),
        (0usize..8, 0usize..64).prop_map(|(rank, k)| Mutation::DeleteOp { rank, k }),
    ]
}

fn program_set() -> impl Strategy<Value = ProgramSet> {
    (0usize..7, 1u32..=4, 0u32..4).prop_map(|(f, r, extra)| {
        let family = Family::ALL[f];
        let (ranks, m) = common::family_size(family, r, extra);
        family.generate(ranks, m, 2)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn deadlock_verdict_matches_an_independent_interpreter(
        mut set in program_set(),
        mutations in prop::collection::vec(mutation(), 0..3),
    ) {
        for m in &mutations {
            apply(&mut set, m);
        }
        let v = verify(&set, CommMode::Blocking, None).expect("mutants stay well-formed");
        prop_assert_eq!(v.verdicts.deadlock_free, common::interp::runs_to_completion(&set), "{:?}", mutations);
    }
}
