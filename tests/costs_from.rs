//! `[costs] from = "FILE"`: a spec takes the keys it does not give from a costs file (what
//! `pipewright profile` writes), and every error names the file and line it is about.

use pipewright_compiler::spec;
use std::path::Path;

/// Parses `spec_text` as `dir/spec.toml` and loads its costs file.
fn load(dir: &Path, spec_text: &str) -> Result<spec::Spec, String> {
    let name = dir.join("spec.toml").display().to_string();
    let mut s = spec::parse(&name, spec_text).map_err(|e| e.render())?;
    spec::load_costs(&mut s, &name, spec_text, dir).map_err(|e| e.render())?;
    Ok(s)
}

const PIPELINE: &str = "[pipeline]\nschedule = \"1f1b\"\nranks = 2\nmicrobatches = 4\n";

/// The error of a spec whose `[costs]` come from a file holding `[costs]` and `body`.
fn error_from_file(dir: &Path, body: &str) -> String {
    std::fs::write(dir.join("bad.toml"), format!("[costs]\n{body}\n")).unwrap();
    load(dir, &format!("{PIPELINE}[costs]\nfrom = \"bad.toml\"\n")).unwrap_err()
}

#[test]
fn the_file_gives_what_the_spec_does_not() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        "[costs]\nforward = [1.5, 2.5]\nbackward = [3.0, 4.0]\nweight = [1.0, 1.5]\np2p = 0.25\ncomm = \"async\"\n\
         per_step = 0.75\nmirror_sum = 2.0\nmirror_update = 0.25\n",
    )
    .unwrap();
    let s = load(dir.path(), &format!("{PIPELINE}[costs]\nfrom = \"m.toml\"\nforward = 2.0\n")).unwrap();
    assert_eq!(s.costs.forward, vec![2.0, 2.0], "the spec's own key wins");
    assert_eq!(s.costs.backward, vec![3.0, 4.0]);
    assert_eq!(s.costs.weight, vec![1.0, 1.5]);
    assert_eq!(s.costs.overlapped, vec![5.0, 6.0], "defaults follow the merged keys");
    assert_eq!(s.costs.p2p, 0.25);
    assert_eq!(s.costs.comm, pipewright_compiler::cost::CommMode::Async);
    assert_eq!((s.costs.per_step, s.costs.mirror_sum, s.costs.mirror_update), (0.75, 2.0, 0.25));
}

#[test]
fn the_step_time_adds_the_work_outside_the_programs() {
    use pipewright_compiler::lower_and_simulate;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), "[costs]\nforward = 1.0\nper_step = 0.75\nmirror_sum = 2.0\n").unwrap();
    // 1F1B: the step's own work. DualPipe: that, and of its 2 ms exchange only the stage
    // that finishes last (1 ms): the other travels during the programs' tails.
    for (family, outside) in [("1f1b", 0.75), ("dualpipe", 1.75)] {
        let text =
            format!("[pipeline]\nschedule = \"{family}\"\nranks = 2\nmicrobatches = 4\n[costs]\nfrom = \"m.toml\"\n");
        let s = load(dir.path(), &text).unwrap();
        let set = s.family.generate(s.ranks, s.microbatches, s.chunks_per_rank);
        let (_, _, report) = lower_and_simulate(&set, &s.costs, None).unwrap();
        assert!((report.step_time - report.makespan - outside).abs() < 1e-9, "{family}: {report:?}");
    }
    // With mirror_update 0.25 of per_step: stage 1's update runs right after the program
    // (its group ended in the tail), stage 0's after its group (1 ms after the programs),
    // then the rest of per_step (0.75 − 2 × 0.25): 1 + 0.25 + 0.25 = 1.5, not 1.75.
    let text = "[pipeline]\nschedule = \"dualpipe\"\nranks = 2\nmicrobatches = 4\n[costs]\nfrom = \"m.toml\"\nmirror_update = 0.25\n";
    let s = load(dir.path(), text).unwrap();
    let set = s.family.generate(s.ranks, s.microbatches, s.chunks_per_rank);
    let (_, _, report) = lower_and_simulate(&set, &s.costs, None).unwrap();
    assert!((report.step_time - report.makespan - 1.5).abs() < 1e-9, "{report:?}");
    // A negative time is an error at its line.
    let e = error_from_file(dir.path(), "per_step = -1.0");
    assert!(e.contains("bad.toml:2:12") && e.contains("per_step must be ≥ 0"), "{e}");
}

#[test]
fn errors_name_the_file_and_line_they_are_about() {
    let dir = tempfile::tempdir().unwrap();
    let spec_with = |file: &str| format!("{PIPELINE}[costs]\nfrom = \"{file}\"\n");
    // A missing file: at `from` in the spec.
    let e = load(dir.path(), &spec_with("nope.toml")).unwrap_err();
    assert!(e.contains("spec.toml:6:8") && e.contains("cannot read") && e.contains("nope.toml"), "{e}");
    // A bad value: in the costs file, at its line.
    std::fs::write(dir.path().join("bad.toml"), "[costs]\nforward = [1.0, 2.0]\nbackward = [-1.0, 2.0]\n").unwrap();
    let e = load(dir.path(), &spec_with("bad.toml")).unwrap_err();
    assert!(e.contains("bad.toml:3:12") && e.contains("backward must be ≥ 0"), "{e}");
    // The wrong stage count: in the costs file.
    std::fs::write(dir.path().join("three.toml"), "[costs]\nforward = [1.0, 2.0, 3.0]\n").unwrap();
    let e = load(dir.path(), &spec_with("three.toml")).unwrap_err();
    assert!(e.contains("three.toml:2:11") && e.contains("3 values, but this pipeline has 2 stages"), "{e}");
    // A chain of files is refused.
    std::fs::write(dir.path().join("chain.toml"), "[costs]\nfrom = \"three.toml\"\n").unwrap();
    let e = load(dir.path(), &spec_with("chain.toml")).unwrap_err();
    assert!(e.contains("chain.toml:2:8") && e.contains("cannot name another"), "{e}");
    // A clash between the two (the spec's weight above the file's backward): at `from`.
    std::fs::write(dir.path().join("b.toml"), "[costs]\nbackward = 1.0\n").unwrap();
    let e = load(dir.path(), &format!("{PIPELINE}[costs]\nfrom = \"b.toml\"\nweight = 2.0\n")).unwrap_err();
    assert!(e.contains("spec.toml:6:8") && e.contains("weight (2) exceeds backward (1)"), "{e}");
}

#[test]
fn measured_pairs_come_from_the_file_and_are_checked_where_they_stand() {
    use pipewright_compiler::cost::PairCost;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        "[costs]\nforward = 1.0\noverlapped = 3.0\noverlapped_pairs = [{ f = 1, b = 0, ms = 2.25 }, { f = 0, b = 1, ms = 2.75 }]\n",
    )
    .unwrap();
    let s = load(dir.path(), &format!("{PIPELINE}[costs]\nfrom = \"m.toml\"\n")).unwrap();
    assert_eq!(s.costs.pairs, vec![PairCost { f: 1, b: 0, ms: 2.25 }, PairCost { f: 0, b: 1, ms: 2.75 }]);
    assert_eq!((s.costs.overlapped(1, 0), s.costs.overlapped(0, 1), s.costs.overlapped(0, 0)), (2.25, 2.75, 3.0));
    // The spec's own list replaces the file's.
    let own = format!("{PIPELINE}[costs]\nfrom = \"m.toml\"\noverlapped_pairs = [{{ f = 0, b = 0, ms = 1 }}]\n");
    let s = load(dir.path(), &own).unwrap();
    assert_eq!(s.costs.pairs, vec![PairCost { f: 0, b: 0, ms: 1.0 }]);
    // A stage this pipeline does not have, a pair given twice, a negative time, a key no
    // pair has: errors at the list, in the file that has it.
    for (pairs, says) in [
        ("[{ f = 2, b = 0, ms = 1.0 }]", "names stage 2 but this pipeline has 2 stages"),
        ("[{ f = 0, b = 1, ms = 1.0 }, { f = 0, b = 1, ms = 2.0 }]", "lists the pair f = 0, b = 1 twice"),
        ("[{ f = 0, b = 1, ms = -1.0 }]", "has ms = -1"),
        ("[{ f = 0, b = 1, time = 1.0 }]", "unknown field `time`"),
    ] {
        let e = error_from_file(dir.path(), &format!("overlapped_pairs = {pairs}"));
        assert!(e.contains("bad.toml:2:") && e.contains(says), "{pairs}: {e}");
    }
}

#[test]
fn communication_costs_and_each_ranks_own_work_are_read_and_checked() {
    use pipewright_compiler::lower_and_simulate;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        "[costs]\nforward = 1.0\np2p = 0.1\np2p_per_transfer = 0.2\np2p_contention = 0.15\ncomm = \"async\"\n\
         per_step = [0.5, 2.0]\n",
    )
    .unwrap();
    let s = load(dir.path(), &format!("{PIPELINE}[costs]\nfrom = \"m.toml\"\n")).unwrap();
    assert_eq!((s.costs.p2p_per_transfer, s.costs.p2p_contention), (0.2, 0.15));
    assert_eq!((s.costs.batch(2, 1), s.costs.hop()), (0.1 + 0.2 * 2.0, 0.1 + 0.2));
    assert_eq!((s.costs.per_step, s.costs.per_step_by_rank.clone()), (2.0, vec![0.5, 2.0]));
    // The step: each rank's program end plus its own work, the latest of them.
    let set = s.family.generate(s.ranks, s.microbatches, s.chunks_per_rank);
    let (_, sim, report) = lower_and_simulate(&set, &s.costs, None).unwrap();
    let end = |r: usize| sim.timeline[r].iter().map(|x| x.end).fold(0.0, f64::max);
    let want = (end(0) + 0.5).max(end(1) + 2.0);
    assert!((report.step_time - want).abs() < 1e-9, "{} vs {want}", report.step_time);
    // A single number: every rank's; the spec's own key wins over the file's list.
    let s = load(dir.path(), &format!("{PIPELINE}[costs]\nfrom = \"m.toml\"\nper_step = 0.25\n")).unwrap();
    assert_eq!((s.costs.per_step, s.costs.per_step_by_rank.len(), s.costs.per_step_of(1)), (0.25, 0, 0.25));
    // Out of range, or a list for another rank count: errors at the value.
    for (line, says) in [
        ("p2p_contention = 1.5", "p2p_contention must be in [0, 1), got 1.5"),
        ("p2p_contention = -0.1", "p2p_contention must be in [0, 1)"),
        ("p2p_per_transfer = -1.0", "p2p_per_transfer must be ≥ 0"),
        ("mirror_update = -0.5", "mirror_update must be ≥ 0"),
        ("per_step = [1.0, 2.0, 3.0]", "per_step lists 3 values, but this pipeline has 2 ranks"),
        ("per_step = [1.0, -2.0]", "per_step must be ≥ 0, got -2"),
    ] {
        let e = error_from_file(dir.path(), line);
        assert!(e.contains("bad.toml:2:") && e.contains(says), "{line}: {e}");
    }
}

#[test]
fn a_ranks_prologue_delays_its_program_and_the_ranks_that_wait_for_it() {
    use pipewright_compiler::lower_and_simulate;
    let dir = tempfile::tempdir().unwrap();
    // 1F1B on 2 ranks, F = 1, B = 2: rank 0's prologue of 1.5 (of its per_step of 2.0)
    // delays its first forward and so rank 1's, by 1.5; the rest of each per_step comes
    // after the rank's program.
    let costs = "[costs]\nforward = 1.0\nper_step = [2.0, 0.5]\n";
    std::fs::write(dir.path().join("m.toml"), costs).unwrap();
    let plain = load(dir.path(), &format!("{PIPELINE}[costs]\nfrom = \"m.toml\"\n")).unwrap();
    let with = load(dir.path(), &format!("{PIPELINE}[costs]\nfrom = \"m.toml\"\nprologue = [1.5, 0.25]\n")).unwrap();
    assert_eq!(with.costs.prologue_by_rank, vec![1.5, 0.25]);
    assert_eq!((with.costs.prologue_of(0), with.costs.prologue_of(1)), (1.5, 0.25));
    let set = plain.family.generate(plain.ranks, plain.microbatches, plain.chunks_per_rank);
    let (_, before, report_before) = lower_and_simulate(&set, &plain.costs, None).unwrap();
    let (_, after, report_after) = lower_and_simulate(&set, &with.costs, None).unwrap();
    // Rank 0's first event (its first forward) starts after its prologue; rank 1's (the
    // receive of that forward's output) is posted after its own, and done 1.5 later.
    let first = |sim: &pipewright_compiler::sim::Simulation, r: usize| sim.timeline[r][0];
    assert_eq!((first(&before, 0).start, first(&after, 0).start), (0.0, 1.5));
    assert_eq!((first(&before, 1).start, first(&after, 1).start), (0.0, 0.25));
    assert_eq!(first(&after, 1).end, first(&before, 1).end + 1.5);
    assert!((after.makespan - before.makespan - 1.5).abs() < 1e-9, "{} vs {}", after.makespan, before.makespan);
    // The step: each rank's program end plus the rest of its own work.
    let end = |r: usize| after.timeline[r].iter().map(|x| x.end).fold(0.0, f64::max);
    let want = (end(0) + 0.5).max(end(1) + 0.25);
    assert!((report_after.step_time - want).abs() < 1e-9, "{} vs {want}", report_after.step_time);
    // Rank 0 ends last, and before its prologue was charged after its program: the same
    // step. Rank 1's prologue, though, now delays what rank 0 waits for.
    assert!((report_after.step_time - report_before.step_time).abs() < 1e-9);
    let costs = "[costs]\nforward = 1.0\nper_step = [0.5, 2.0]\n";
    std::fs::write(dir.path().join("m.toml"), costs).unwrap();
    let steps: Vec<f64> = ["", "prologue = [0.0, 1.5]\n"]
        .iter()
        .map(|line| {
            let s = load(dir.path(), &format!("{PIPELINE}[costs]\nfrom = \"m.toml\"\n{line}")).unwrap();
            lower_and_simulate(&set, &s.costs, None).unwrap().2.step_time
        })
        .collect();
    assert!(steps[1] > steps[0] + 0.25, "{steps:?}");
    // One number is every rank's; more than a rank's per_step, a list for another rank
    // count, a negative time: errors at the value.
    let one = load(dir.path(), &format!("{PIPELINE}[costs]\nfrom = \"m.toml\"\nprologue = 0.5\n")).unwrap();
    assert_eq!(one.costs.prologue_by_rank, vec![0.5, 0.5]);
    for (line, says) in [
        ("per_step = [2.0, 0.5]\nprologue = [1.0, 1.0]", "rank 1's prologue (1) exceeds its per_step (0.5)"),
        ("prologue = [1.0, 2.0, 3.0]", "prologue lists 3 values, but this pipeline has 2 ranks"),
        ("prologue = -1.0", "prologue must be ≥ 0, got -1"),
    ] {
        let e = error_from_file(dir.path(), line);
        assert!(e.contains("bad.toml:") && e.contains(says), "{line}: {e}");
    }
}

/// `transport`: the p2p transport the costs were measured with (what `profile --p2p copy`
/// writes), from the file unless the spec says otherwise; the plan carries it and the
/// runtime runs with it by default. Anything but "nccl" or "copy" is refused where it stands.
#[test]
fn the_costs_say_which_transport_they_were_measured_with() {
    use pipewright_plan::Transport;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), "[costs]\ntransport = \"copy\"\nforward = 1.0\n").unwrap();
    let from_file = load(dir.path(), &format!("{PIPELINE}[costs]\nfrom = \"m.toml\"\n")).unwrap();
    assert_eq!(from_file.costs.transport, Transport::Copy);
    let own = load(dir.path(), &format!("{PIPELINE}[costs]\nfrom = \"m.toml\"\ntransport = \"nccl\"\n")).unwrap();
    assert_eq!(own.costs.transport, Transport::Nccl, "the spec's own key wins");
    let none = load(dir.path(), PIPELINE).unwrap();
    assert_eq!(none.costs.transport, Transport::Nccl, "NCCL unless the costs say otherwise");
    let e = error_from_file(dir.path(), "transport = \"rdma\"");
    assert!(e.contains("bad.toml:2:13") && e.contains("unknown transport \"rdma\"") && e.contains("\"copy\""), "{e}");
}
