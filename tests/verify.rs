//! The verifier on real programs: every fixture and family verifies; generated mutants of
//! each are rejected with the right property named; certificates re-check with `z3` and
//! `pipewright check` refuses a tampered plan or certificate.

mod common;

use pipewright_compiler::cost::{CommMode, MemoryModel};
use pipewright_compiler::families::Family;
use pipewright_compiler::ir::{CommOp, Event, ProgramSet};
use pipewright_compiler::verify::{verify, Verification};

fn corpus() -> Vec<(String, ProgramSet)> {
    let mut out = Vec::new();
    for path in common::json_files(&common::fixture_dir("DUALPIPE_FIXTURES", "dualpipe")) {
        let set: ProgramSet = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        out.push((path.file_name().unwrap().to_string_lossy().into_owned(), set));
    }
    for family in Family::ALL {
        for ranks in [2u32, 3, 4] {
            for extra in [0u32, 3] {
                let m = match family {
                    Family::DualPipe | Family::DualPipeV => 2 * ranks + 2 * extra,
                    Family::ZbV => 2 * ranks - 1 + extra,
                    Family::Interleaved1F1B => ranks * (1 + extra / 3),
                    _ => ranks + extra,
                };
                if family.check_size(ranks, m, 2).is_ok() {
                    out.push((format!("{} r{ranks} m{m}", family.name()), family.generate(ranks, m, 2)));
                }
            }
        }
    }
    out
}

fn check(set: &ProgramSet) -> Verification {
    verify(set, CommMode::Blocking, None).expect("well-formed")
}

fn names(v: &Verification) -> Vec<&'static str> {
    v.violations.iter().map(|x| x.property()).collect()
}

/// Every (rank, event, op) that is a send or a receive.
fn p2p_ops(set: &ProgramSet) -> Vec<(usize, usize, usize, CommOp)> {
    let mut out = Vec::new();
    for (r, p) in set.programs.iter().enumerate() {
        for (i, e) in p.iter().enumerate() {
            if let Event::Comm { ops } = e {
                out.extend(ops.iter().enumerate().map(|(j, op)| (r, i, j, *op)));
            }
        }
    }
    out
}

/// Index of the batch holding the k-th op of `kind` from `from` to `to` (sends on `from`,
/// receives on `to`).
fn nth_on_channel(set: &ProgramSet, rank: usize, peer: u32, send: bool, k: usize) -> Option<usize> {
    let mut seen = 0;
    for (i, e) in set.programs[rank].iter().enumerate() {
        if let Event::Comm { ops } = e {
            for op in ops {
                if op.peer == peer && op.kind.is_send() == send {
                    if seen == k {
                        return Some(i);
                    }
                    seen += 1;
                }
            }
        }
    }
    None
}

fn position_on_channel(set: &ProgramSet, rank: usize, event: usize, op: usize) -> usize {
    let target = match &set.programs[rank][event] {
        Event::Comm { ops } => ops[op],
        _ => unreachable!(),
    };
    let mut k = 0;
    for (i, e) in set.programs[rank].iter().enumerate() {
        if let Event::Comm { ops } = e {
            for (j, o) in ops.iter().enumerate() {
                if (i, j) == (event, op) {
                    return k;
                }
                if o.peer == target.peer && o.kind.is_send() == target.kind.is_send() {
                    k += 1;
                }
            }
        }
    }
    k
}

/// A receive moved ahead of an earlier send to the same peer whose partner receive the peer
/// posts strictly before the moved receive's partner send: each rank then waits for a batch
/// the other only reaches after its own wait ends.
fn recv_ahead_of_send(set: &ProgramSet) -> Option<ProgramSet> {
    for (r, i, j, op) in p2p_ops(set) {
        if op.kind.is_send() {
            continue;
        }
        let b = op.peer as usize;
        let z = nth_on_channel(set, b, r as u32, true, position_on_channel(set, r, i, j))?;
        for x in (0..i).rev() {
            let Event::Comm { ops } = &set.programs[r][x] else { continue };
            for (xj, s) in ops.iter().enumerate() {
                if !(s.kind.is_send() && s.peer == op.peer) {
                    continue;
                }
                let y = nth_on_channel(set, b, r as u32, false, position_on_channel(set, r, x, xj))?;
                // Keep the receive's FIFO position: no other receive from b in between.
                let crosses = (x..i).any(|k| match &set.programs[r][k] {
                    Event::Comm { ops } => ops
                        .iter()
                        .enumerate()
                        .any(|(kj, o)| !o.kind.is_send() && o.peer == op.peer && (k, kj) != (i, j)),
                    _ => false,
                });
                if y < z && !crosses {
                    let mut m = set.clone();
                    if let Event::Comm { ops } = &mut m.programs[r][i] {
                        ops.remove(j);
                        if ops.is_empty() {
                            m.programs[r].remove(i);
                        }
                    }
                    m.programs[r].insert(x, Event::Comm { ops: vec![op] });
                    return Some(m);
                }
            }
        }
    }
    None
}

/// Two sends on one channel with different payloads, their contents swapped.
fn swap_sends(set: &ProgramSet) -> Option<ProgramSet> {
    let ops = p2p_ops(set);
    for (a, &(r, i, j, s)) in ops.iter().enumerate() {
        if !s.kind.is_send() {
            continue;
        }
        for &(r2, i2, j2, t) in &ops[a + 1..] {
            if r2 == r && t.kind.is_send() && t.peer == s.peer && (t.kind, t.dir, t.mb) != (s.kind, s.dir, s.mb) {
                let mut m = set.clone();
                if let Event::Comm { ops } = &mut m.programs[r][i] {
                    ops[j] = t;
                }
                if let Event::Comm { ops } = &mut m.programs[r2][i2] {
                    ops[j2] = s;
                }
                return Some(m);
            }
        }
    }
    None
}

fn delete_recv(set: &ProgramSet) -> Option<ProgramSet> {
    let (r, i, j, _) = p2p_ops(set).into_iter().find(|o| !o.3.kind.is_send())?;
    let mut m = set.clone();
    if let Event::Comm { ops } = &mut m.programs[r][i] {
        ops.remove(j);
        if ops.is_empty() {
            m.programs[r].remove(i);
        }
    }
    Some(m)
}

/// A backward (B or I) moved right before the forward it needs on its own rank.
fn backward_before_forward(set: &ProgramSet) -> Option<ProgramSet> {
    for (r, p) in set.programs.iter().enumerate() {
        for (i, e) in p.iter().enumerate() {
            let (Event::B { dir, mb } | Event::I { dir, mb }) = e else { continue };
            let f = p.iter().position(|x| matches!(x, Event::F { dir: d, mb: m } if d == dir && m == mb))?;
            let mut m = set.clone();
            let moved = m.programs[r].remove(i);
            m.programs[r].insert(f, moved);
            return Some(m);
        }
    }
    None
}

/// Every batch with more than one op, split in two (sends first).
fn batch_splits(set: &ProgramSet) -> Vec<ProgramSet> {
    let mut out = Vec::new();
    for (r, p) in set.programs.iter().enumerate() {
        for (i, e) in p.iter().enumerate() {
            if let Event::Comm { ops } = e {
                if ops.len() > 1 {
                    let mut m = set.clone();
                    let (first, second) = ops.split_at(ops.len() / 2);
                    m.programs[r][i] = Event::Comm { ops: first.to_vec() };
                    m.programs[r].insert(i + 1, Event::Comm { ops: second.to_vec() });
                    out.push(m);
                }
            }
        }
    }
    out
}

#[test]
fn every_fixture_and_family_verifies() {
    for (name, set) in corpus() {
        let v = check(&set);
        assert!(v.ok(), "{name}: {:?}", v.violations);
        assert!(common::interp::runs_to_completion(&set), "{name}: the interpreter disagrees");
    }
}

#[test]
fn mutants_are_rejected_with_the_right_property() {
    let mut counts = [0usize; 4];
    for (name, set) in corpus() {
        if let Some(m) = recv_ahead_of_send(&set) {
            let v = check(&m);
            assert!(names(&v).contains(&"deadlock_free"), "{name}: receive moved ahead: {:?}", v.violations);
            assert!(!common::interp::runs_to_completion(&m), "{name}: the interpreter finishes the mutant");
            counts[0] += 1;
        }
        if let Some(m) = swap_sends(&set) {
            let v = check(&m);
            assert!(names(&v).contains(&"payload_agreement"), "{name}: swapped sends: {:?}", v.violations);
            counts[1] += 1;
        }
        if let Some(m) = delete_recv(&set) {
            let v = check(&m);
            assert!(names(&v).contains(&"deadlock_free"), "{name}: deleted receive: {:?}", v.violations);
            counts[2] += 1;
        }
        if let Some(m) = backward_before_forward(&set) {
            let v = check(&m);
            assert!(names(&v).contains(&"complete_and_ordered"), "{name}: backward first: {:?}", v.violations);
            counts[3] += 1;
        }
        // A split batch may or may not hang: the verifier must agree with the interpreter.
        for m in batch_splits(&set).into_iter().take(6) {
            let v = check(&m);
            assert_eq!(v.verdicts.deadlock_free, common::interp::runs_to_completion(&m), "{name}: split batch");
        }
    }
    assert!(counts.iter().all(|&c| c >= 20), "too few mutants generated: {counts:?}");
}

#[test]
fn a_budget_one_byte_below_the_peak_is_rejected() {
    for (name, set) in corpus() {
        let stages = set.resolved_layout().unwrap().stages as usize;
        let mut memory = MemoryModel {
            activation: (0..stages as u64).map(|s| 1000 + 10 * s).collect(),
            weight_grad_part: vec![400; stages],
            parameters: vec![10_000; stages],
            p2p_buffer: vec![100; stages],
            budget: u64::MAX / 4,
        };
        let v = verify(&set, CommMode::Blocking, Some(&memory)).unwrap();
        let peak = *v.peak_bytes.as_ref().unwrap().iter().max().unwrap();
        memory.budget = peak;
        assert!(verify(&set, CommMode::Blocking, Some(&memory)).unwrap().ok(), "{name}: budget = peak rejected");
        memory.budget = peak - 1;
        let v = verify(&set, CommMode::Blocking, Some(&memory)).unwrap();
        assert!(!v.ok() && names(&v).iter().all(|n| *n == "within_budget"), "{name}: {:?}", v.violations);
    }
}

#[test]
fn early_batches_keep_a_backwards_activations_beside_its_batchs_receives() {
    // Async p2p posts a batch right after a B behind the B's input gradient, while its
    // weight gradient still reads the activations: the worst case counts them beside the
    // batch's receive buffers. Never below the in-order count, above it somewhere, and a
    // budget that fits batches in order is then refused.
    let mut grew = Vec::new();
    for (name, set) in corpus() {
        let stages = set.resolved_layout().unwrap().stages as usize;
        let mut memory = MemoryModel {
            activation: vec![1000; stages],
            weight_grad_part: vec![400; stages],
            parameters: vec![10_000; stages],
            p2p_buffer: vec![300; stages],
            budget: u64::MAX / 4,
        };
        let peaks = |comm, memory: &MemoryModel| verify(&set, comm, Some(memory)).unwrap().peak_bytes.unwrap();
        let in_order = peaks(CommMode::AsyncInOrder, &memory);
        let early = peaks(CommMode::Async, &memory);
        assert_eq!(in_order, peaks(CommMode::Blocking, &memory), "{name}");
        assert!(early.iter().zip(&in_order).all(|(e, o)| e >= o), "{name}: {early:?} < {in_order:?}");
        if early != in_order {
            memory.budget = *in_order.iter().max().unwrap();
            let v = verify(&set, CommMode::Async, Some(&memory)).unwrap();
            assert!(!v.ok() && names(&v).iter().all(|n| *n == "within_budget"), "{name}: {:?}", v.violations);
            grew.push(name);
        }
    }
    assert!(grew.iter().any(|n| n.starts_with("dualpipe")) && grew.iter().any(|n| n.starts_with("1f1b")), "{grew:?}");
}

fn z3_available() -> bool {
    std::process::Command::new("z3").arg("-version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn check_accepts_compiled_plans_and_refuses_tampering() {
    if !z3_available() {
        assert!(std::env::var_os("CI").is_none(), "CI must install the z3 binary (.ci/run does)");
        eprintln!("skipped: no z3 binary on PATH (Debian: apt-get install z3)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("plan");
    let run =
        common::bin().arg("compile").arg(common::root().join("specs/zb-v.toml")).arg("-o").arg(&plan).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(plan.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["verified"]["deadlock_free"], true);
    assert_eq!(report["verified"]["within_budget"], true);
    let ok = common::bin().arg("check").arg(&plan).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).matches("z3 says").count(), 2);

    // A tampered certificate: one witness value changed.
    let cert = plan.join("proof/deadlock.smt2");
    let original = std::fs::read_to_string(&cert).unwrap();
    let tampered = original.replacen("(< r0e0 ", "(> r0e0 ", 1);
    assert_ne!(tampered, original, "nothing to tamper with");
    std::fs::write(&cert, tampered).unwrap();
    let bad = common::bin().arg("check").arg(&plan).output().unwrap();
    assert_eq!(bad.status.code(), Some(1), "tampered certificate accepted");
    std::fs::write(&cert, &original).unwrap();

    // A tampered plan: one microbatch number changed.
    let programs = plan.join("programs.json");
    let text = std::fs::read_to_string(&programs).unwrap();
    let tampered = text.replacen("\"mb\":3", "\"mb\":4", 1);
    assert_ne!(tampered, text, "nothing to tamper with");
    std::fs::write(&programs, tampered).unwrap();
    let bad = common::bin().arg("check").arg(&plan).output().unwrap();
    assert_eq!(bad.status.code(), Some(1), "tampered plan accepted");
}

#[test]
fn verify_command_exit_codes() {
    let dir = common::fixture_dir("DUALPIPE_FIXTURES", "dualpipe");
    let file = common::json_files(&dir).into_iter().next().unwrap();
    let ok = common::bin().args(["verify", "--programs"]).arg(&file).output().unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));

    let set: ProgramSet = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let mutant = delete_recv(&set).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mutant.json");
    std::fs::write(&path, serde_json::to_string(&mutant).unwrap()).unwrap();
    let bad = common::bin().args(["verify", "--json", "--programs"]).arg(&path).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["verdicts"]["deadlock_free"], false);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("deadlock"));

    std::fs::write(&path, "{\"ranks\": 2}").unwrap();
    let malformed = common::bin().args(["verify", "--programs"]).arg(&path).output().unwrap();
    assert_eq!(malformed.status.code(), Some(2));
}

#[test]
fn verify_refuses_a_spec_of_another_shape() {
    let dir = common::fixture_dir("DUALPIPE_FIXTURES", "dualpipe");
    let file = dir.join("dualpipev-r4-m8.json");
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("s.toml");
    // 4 ranks, but 1f1b has 4 stages where these dualpipev programs have 8.
    std::fs::write(
        &spec,
        "[pipeline]\nschedule = \"1f1b\"\nranks = 4\nmicrobatches = 8\n[memory]\nactivation = 10\nbudget = 1000\n",
    )
    .unwrap();
    let run = common::bin().args(["verify", "--programs"]).arg(&file).arg("--spec").arg(&spec).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("4 stages") && err.contains("have 8"), "{err}");
}
