//! The command line: outputs of `compile` and `simulate`, and clear errors (exit 2,
//! `file:line:col`, no panic, nothing written) for bad input.

mod common;

use serde_json::Value;
use std::path::Path;

fn compile(spec: &Path, out: &Path) -> std::process::Output {
    common::bin().arg("compile").arg(spec).arg("-o").arg(out).output().unwrap()
}

const GOOD: &str = "[pipeline]\nschedule = \"dualpipev\"\nranks = 4\nmicrobatches = 10\n";

#[test]
fn compile_writes_programs_report_picture_and_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("plan");
    let run = compile(&common::root().join("specs/dualpipev.toml"), &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("makespan"), "summary missing: {stdout}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(report["makespan"].as_f64().unwrap() > 0.0);
    let ranks = report["ranks"].as_array().unwrap();
    assert_eq!(ranks.len(), 4);
    for (i, r) in ranks.iter().enumerate() {
        assert_eq!(r["rank"], i);
        for key in ["busy", "idle", "peak_in_flight", "peak_activation_bytes"] {
            assert!(!r[key].is_null(), "rank {i} lacks {key}");
        }
        let total = r["busy"].as_f64().unwrap() + r["idle"].as_f64().unwrap();
        assert!((total - report["makespan"].as_f64().unwrap()).abs() < 1e-9);
    }

    let programs: Value = serde_json::from_str(&std::fs::read_to_string(out.join("programs.json")).unwrap()).unwrap();
    assert_eq!(programs["programs"].as_array().unwrap().len(), 4);
    assert_eq!(programs["layout"]["stages"], 8);

    let svg = std::fs::read_to_string(out.join("schedule.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for r in 0..4 {
        assert!(svg.contains(&format!(">rank {r}</text>")), "no row for rank {r}");
    }
    assert!(svg.matches("<rect").count() > 40, "the picture has no cells");

    let trace: Value = serde_json::from_str(&std::fs::read_to_string(out.join("trace.json")).unwrap()).unwrap();
    let spans = trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").count();
    assert!(spans > 40, "trace has {spans} spans");
    let counters = trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "C").count();
    assert!(counters > 4 * 10, "the memory timeline is missing from the trace ({counters} samples)");
}

#[test]
fn json_flag_prints_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let run = common::bin()
        .args(["compile", "--json", "-o"])
        .arg(tmp.path())
        .arg(common::root().join("specs/1f1b.toml"))
        .output()
        .unwrap();
    assert!(run.status.success());
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["schedule"], "1f1b");
}

#[test]
fn spec_without_memory_reports_null_activation_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("s.toml");
    std::fs::write(&spec, GOOD).unwrap();
    let run = compile(&spec, &tmp.path().join("o"));
    assert!(run.status.success());
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("o/report.json")).unwrap()).unwrap();
    assert!(report["ranks"][0]["peak_activation_bytes"].is_null());
}

/// Each bad spec, the place its error must point at, and words the message must contain.
const BAD: &[(&str, &str, &str)] = &[
    ("[pipeline]\nschedule = \"dualpipe\"\nranks = 3\nmicrobatches = 12\n", ":3:9", "even number of ranks"),
    ("[pipeline]\nschedule = \"dualpipev\"\nranks = 4\nmicrobatches = 6\n", ":4:16", "microbatches ≥ 2·ranks"),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 8\nmicrobatches = 4\n", ":4:16", "microbatches ≥ ranks"),
    ("[pipeline]\nschedule = \"zigzag\"\nranks = 4\nmicrobatches = 8\n", ":2:12", "unknown schedule"),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 4\nmicrobatches = 8\nbogus = 1\n", ":5:1", "unknown field"),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 4\nmicrobatches = 8\n[costs]\nforward = -1.0\n", ":6:11", "forward must be ≥ 0"),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 4\nmicrobatches = 8\n[costs]\nbackward = 2.0\nweight = 3.0\n", ":7:10", "exceeds backward"),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 4\nmicrobatches = 8\n[costs]\nforward = [1.0, 2.0]\n", ":6:11", "4 stages"),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 4\nmicrobatches = 8\n[costs]\ncomm = \"eager\"\n", ":6:8", "unknown comm mode"),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 4\nmicrobatches = 8\n[costs]\ntransport = \"ib\"\n", ":6:13", "unknown transport"),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 4\nmicrobatches = 8\nchunks_per_rank = 2\n", ":5:19", "interleaved-1f1b only"),
    ("[pipeline]\nschedule = \"interleaved-1f1b\"\nranks = 4\nmicrobatches = 6\n", ":4:16", "multiple of ranks"),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 0\nmicrobatches = 8\n", ":3:9", "positive"),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 100000\nmicrobatches = 8\n", ":3:9", "ranks must be at most 65536, got 100000"),
    (
        "[pipeline]\nschedule = \"dualpipev\"\nranks = 1\nmicrobatches = 4\n[costs]\nper_step = [1.0, 2.0]\n",
        ":6:12",
        "per_step lists 2 values, but this pipeline has 1 rank",
    ),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 65536\nmicrobatches = 16000000\n", ":4:16", "too large a plan"),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 4\n", ":1:1", "missing field"),
    ("[pipeline\nschedule = 1", ":1:10", ""),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 4\nmicrobatches = 8\n[memory]\nactivation = 10\nweight_grad_part = 20\nbudget = 100\n", ":7:20", "exceeds activation"),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 4\nmicrobatches = 8\n[memory]\nactivation = 10\nbudget = -5\n", ":7:10", "budget must be > 0"),
    ("[pipeline]\nschedule = \"1f1b\"\nranks = 2\nmicrobatches = 4\n[model]\nkind = \"mlp\"\nhidden = 8\nseq = 4\nmicrobatch_size = 1\ngelu = \"sometimes\"\n", ":10:8", "unknown gelu"),
    ("[pipeline]\nschedule = \"dualpipe\"\nranks = 2\nmicrobatches = 4\n[model]\nkind = \"mlp\"\nhidden = 8\nseq = 4\nmicrobatch_size = 1\nmirror_sum = \"bf16\"\n", ":10:14", "needs dtype = \"bf16\""),
    ("[pipeline]\nschedule = \"dualpipe\"\nranks = 2\nmicrobatches = 4\n[model]\nkind = \"mlp\"\nhidden = 8\nseq = 4\nmicrobatch_size = 1\ndtype = \"bf16\"\nmirror_sum = \"f16\"\n", ":11:14", "unknown mirror_sum"),
];

#[test]
fn gelu_is_fused_into_the_gemms_in_bf16_and_a_kernel_in_f32_unless_the_spec_says() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (dtype, gelu, fused)) in [
        ("bf16", "", true),
        ("f32", "", false),
        ("f32", "gelu = \"fused\"\n", true),
        ("bf16", "gelu = \"kernel\"\n", false),
    ]
    .into_iter()
    .enumerate()
    {
        let spec = tmp.path().join(format!("s{i}.toml"));
        std::fs::write(
            &spec,
            format!(
                "[pipeline]\nschedule = \"1f1b\"\nranks = 2\nmicrobatches = 4\n[model]\nkind = \"mlp\"\nhidden = 8\n\
                 seq = 4\nmicrobatch_size = 1\ndtype = \"{dtype}\"\n{gelu}"
            ),
        )
        .unwrap();
        let out = tmp.path().join(format!("o{i}"));
        let run = compile(&spec, &out);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let plan: Value = serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
        assert_eq!(plan["model"]["fuse_gelu"], fused, "case {i}");
        let nodes = plan["ranks"].as_array().unwrap().iter().flat_map(|r| r["nodes"].as_array().unwrap().iter());
        let (epilogues, kernels) = nodes.fold((0, 0), |(e, k), n| {
            (
                e + n.get("epilogue").is_some() as usize,
                k + n["name"].as_str().is_some_and(|s| s.starts_with("gelu")) as usize,
            )
        });
        assert_eq!((epilogues > 0, kernels > 0), (fused, !fused), "case {i}: {epilogues} epilogues, {kernels} kernels");
    }
}

/// The plan carries the transport its costs were measured with (`[costs] transport`), the
/// runtime's default for it: NCCL unless the costs say "copy".
#[test]
fn the_plan_carries_the_transport_its_costs_were_measured_with() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (line, want)) in [("", "nccl"), ("transport = \"copy\"\n", "copy")].into_iter().enumerate() {
        let spec = tmp.path().join(format!("s{i}.toml"));
        std::fs::write(
            &spec,
            format!(
                "[pipeline]\nschedule = \"1f1b\"\nranks = 2\nmicrobatches = 4\n[costs]\n{line}[model]\nkind = \"mlp\"\n\
                 hidden = 8\nseq = 4\nmicrobatch_size = 1\n"
            ),
        )
        .unwrap();
        let out = tmp.path().join(format!("o{i}"));
        let run = compile(&spec, &out);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let plan: Value = serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
        assert_eq!(plan["transport"], want, "case {i}");
    }
}

#[test]
fn bad_specs_are_located_errors_with_exit_code_2_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (text, place, words)) in BAD.iter().enumerate() {
        let spec = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&spec, text).unwrap();
        let out = tmp.path().join(format!("out{i}"));
        let run = compile(&spec, &out);
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "case {i}: {err}");
        assert!(err.contains(&format!("bad{i}.toml{place}")), "case {i}: expected location {place} in:\n{err}");
        assert!(err.contains(words), "case {i}: expected '{words}' in:\n{err}");
        assert!(!err.contains("panicked"), "case {i} panicked: {err}");
        assert!(!out.exists(), "case {i}: output written despite the error");
    }
}

#[test]
fn missing_spec_file_is_exit_2() {
    let run = common::bin().args(["compile", "/nonexistent/spec.toml"]).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("/nonexistent/spec.toml"));
}

#[test]
fn simulate_refuses_a_spec_for_another_world_size() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("s.toml");
    std::fs::write(&spec, GOOD.replace("ranks = 4", "ranks = 2").replace("= 10", "= 8")).unwrap();
    let out = tmp.path().join("o");
    assert!(compile(&common::root().join("specs/dualpipev.toml"), &out).status.success());
    let run = common::bin().arg("simulate").arg(out.join("programs.json")).arg("--spec").arg(&spec).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("world size"));
}

#[test]
fn simulate_reports_a_deadlock_with_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    // Both ranks receive before they send: each waits for the other forever.
    let programs = r#"{"schedule": "1f1b", "ranks": 2, "chunks": 2, "programs": [
        [{"op":"F","dir":0,"mb":0},{"op":"COMM","ops":[{"kind":"recv_b","peer":1,"dir":0,"mb":0}]},
         {"op":"COMM","ops":[{"kind":"send_f","peer":1,"dir":0,"mb":0}]},{"op":"B","dir":0,"mb":0},
         {"op":"F","dir":0,"mb":1},{"op":"COMM","ops":[{"kind":"send_f","peer":1,"dir":0,"mb":1},{"kind":"recv_b","peer":1,"dir":0,"mb":1}]},{"op":"B","dir":0,"mb":1}],
        [{"op":"COMM","ops":[{"kind":"recv_f","peer":0,"dir":0,"mb":0}]},{"op":"F","dir":0,"mb":0},{"op":"B","dir":0,"mb":0},
         {"op":"COMM","ops":[{"kind":"send_b","peer":0,"dir":0,"mb":0},{"kind":"recv_f","peer":0,"dir":0,"mb":1}]},{"op":"F","dir":0,"mb":1},{"op":"B","dir":0,"mb":1},
         {"op":"COMM","ops":[{"kind":"send_b","peer":0,"dir":0,"mb":1}]}]]}"#;
    let file = tmp.path().join("p.json");
    std::fs::write(&file, programs).unwrap();
    let run = common::bin().arg("simulate").arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(err.contains("deadlock"), "{err}");
    assert!(err.contains("rank 0 at event 1 ([<1b0.0])") && err.contains("rank 1 waits forever at event 0"), "{err}");
}

#[test]
fn simulate_rejects_malformed_programs_with_a_location() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("p.json");
    std::fs::write(&file, "{\"schedule\": \"1f1b\",\n \"ranks\": \"two\"}").unwrap();
    let run = common::bin().arg("simulate").arg(&file).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("p.json:2:"));
}

#[test]
fn help_documents_every_flag() {
    for (cmd, flags) in
        [("compile", &["--output", "--json", "--text"][..]), ("simulate", &["--spec", "--output", "--json"][..])]
    {
        let run = common::bin().args([cmd, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&run.stdout);
        for f in flags {
            assert!(text.contains(f), "{cmd} --help lacks {f}");
        }
    }
}

#[test]
fn moe_spec_places_experts_and_writes_experts_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("plan");
    let run = compile(&common::root().join("specs/moe-dualpipev.toml"), &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(out.join("experts.json")).unwrap()).unwrap();
    assert_eq!(v["phy2log"].as_array().unwrap().len(), 8, "one row per MoE layer");
    let gpus = v["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 8);
    assert_eq!(gpus[0]["experts"][0].as_array().unwrap().len(), 10, "80 replicas on 8 GPUs");
    assert!(v["log2phy"].is_array() && v["imbalance"].is_array());
    assert!(String::from_utf8_lossy(&run.stdout).contains("experts: 8 layers placed"));
}

#[test]
fn moe_errors_point_at_the_spec() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("loads.csv"), "1,2,3,4\n5,6,7,8\n").unwrap();
    let head = "[pipeline]\nschedule = \"1f1b\"\nranks = 4\nmicrobatches = 8\n[moe]\n";
    let cases = [
        ("experts = 4\ntop_k = 2\nload = \"missing.csv\"\nreplicas = 8\ngroups = 1\nnodes = 1\ngpus = 4\n", ":8:8", "cannot read"),
        ("experts = 6\ntop_k = 2\nload = \"loads.csv\"\nreplicas = 12\ngroups = 1\nnodes = 1\ngpus = 4\n", ":8:8", "experts = 6"),
        ("experts = 4\ntop_k = 2\nload = \"loads.csv\"\nreplicas = 6\ngroups = 1\nnodes = 1\ngpus = 4\n", ":9:12", "multiple of gpus"),
        ("experts = 4\ntop_k = 9\nload = \"loads.csv\"\nreplicas = 8\ngroups = 1\nnodes = 1\ngpus = 4\n", ":7:9", "exceeds experts"),
        ("experts = 4\ntop_k = 2\nload = \"loads.csv\"\nreplicas = 8\ngroups = 1\nnodes = 1\ngpus = 4\npolicy = \"best\"\n", ":13:10", "unknown policy"),
    ];
    for (i, (moe, place, words)) in cases.iter().enumerate() {
        let spec = tmp.path().join(format!("moe{i}.toml"));
        std::fs::write(&spec, format!("{head}{moe}")).unwrap();
        let out = tmp.path().join(format!("out{i}"));
        let run = compile(&spec, &out);
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "case {i}: {err}");
        assert!(err.contains(&format!("moe{i}.toml{place}")), "case {i}: expected {place} in {err}");
        assert!(err.contains(words), "case {i}: expected '{words}' in {err}");
        assert!(!out.exists(), "case {i}: output written");
    }
}

#[test]
fn compile_refuses_a_plan_over_its_memory_budget_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("tight.toml");
    std::fs::write(
        &spec,
        "[pipeline]\nschedule = \"1f1b\"\nranks = 4\nmicrobatches = 8\n[memory]\nactivation = 1000\nbudget = 3500\n",
    )
    .unwrap();
    let out = tmp.path().join("plan");
    let run = compile(&spec, &out);
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    // Rank 0 keeps 4 microbatches' activations (4000 bytes) at its peak.
    assert!(err.contains("memory: rank 0 peaks at 4000 bytes"), "{err}");
    assert!(!out.exists(), "a plan that fails verification was written");
}

#[test]
fn a_layout_naming_a_stage_out_of_range_is_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("p.json");
    std::fs::write(
        &file,
        r#"{"schedule": "custom", "ranks": 1, "chunks": 1,
            "layout": {"pipes": 1, "stages": 1, "microbatches": 1, "modules": [[{"pipe": 0, "stage": 5}]]},
            "programs": [[{"op": "F", "dir": 0, "mb": 0}, {"op": "B", "dir": 0, "mb": 0}]]}"#,
    )
    .unwrap();
    for cmd in [&["simulate"][..], &["verify", "--programs"][..]] {
        let run = common::bin().args(cmd).arg(&file).output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(err.contains("bad layout") && !err.contains("panicked"), "{cmd:?}: {err}");
    }
}

#[test]
fn run_launch_and_profile_go_to_the_runtime_binary() {
    // Forwarded to pipewright-runtime (beside this binary when the workspace is built, or
    // on PATH): either it refuses the missing plan, or the forwarder says how to get the
    // runtime. Both exit 2 with a message, never a panic.
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-plan");
    for command in ["run", "launch", "profile"] {
        let mut cmd = common::bin();
        cmd.arg(command);
        if command != "run" {
            cmd.args(["--gpus", "2"]);
        }
        let out = cmd.arg(&missing).env_remove("WORLD_SIZE").env_remove("RANK").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("plan.json") || stderr.contains("pipewright-runtime"),
            "{command}: unclear error: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{command}: {stderr}");
    }
}
