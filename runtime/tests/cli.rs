//! The runtime binary on CPU-only machines (CI): plan loading and validation, refusal of
//! plans that do not fit the job, and a clear error — exit 2, never a panic — when CUDA is
//! missing. On a GPU machine the last test runs a plan for real against the CPU executor.

use pipewright_compiler::emit::emit;
use pipewright_compiler::families::Family;
use pipewright_plan::{Dtype, Hashes, Model, Training};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Command, Output};

fn runtime(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipewright-runtime"));
    cmd.args(args).arg(dir).env_remove("WORLD_SIZE").env_remove("RANK").env_remove("SLURM_NTASKS");
    cmd.env_remove("SLURM_PROCID").env_remove("CUDA_VISIBLE_DEVICES");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A compiled plan directory: plan.json and a manifest whose hash the plan records.
fn plan_dir(family: Family, ranks: u32, m: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!("{{\"plan\": \"{}-{ranks}-{m}\"}}", family.name());
    std::fs::create_dir_all(dir.path().join("proof")).unwrap();
    std::fs::write(dir.path().join("proof/manifest.json"), &manifest).unwrap();
    let sha: String = Sha256::digest(manifest.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let model = Model {
        kind: "mlp".into(),
        hidden: 16,
        ffn: 32,
        seq: 4,
        microbatch_size: 2,
        layers_per_stage: 1,
        dtype: Dtype::F32,
        seed: 3,
        fuse_gelu: true,
        mirror_bf16: false,
    };
    let training = Training { optimizer: "sgd".into(), lr: 0.05, steps: 2, checkpoint_every: 0 };
    let set = family.generate(ranks, m, 2);
    let plan =
        emit(&set, &model, &training, Hashes { spec: "-".into(), programs: "-".into(), certificates: sha }).unwrap();
    std::fs::write(dir.path().join("plan.json"), serde_json::to_string(&plan).unwrap()).unwrap();
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_accepts_a_plan_for_its_world() {
    let dir = plan_dir(Family::OneFOneB, 2, 4);
    let out = runtime(dir.path(), &["check"], &[("WORLD_SIZE", "2"), ("RANK", "1")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fits this job (rank 1 of 2)"));
    // Slurm's variables work as well as torchrun's.
    let out = runtime(dir.path(), &["check"], &[("SLURM_NTASKS", "2"), ("SLURM_PROCID", "0")]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn plans_that_do_not_fit_the_job_are_refused_with_the_reason() {
    let dir = plan_dir(Family::DualPipe, 2, 4);
    let out = runtime(dir.path(), &["check"], &[("WORLD_SIZE", "4"), ("RANK", "0")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("the plan is for a world of 2 ranks but this job has 4"), "{}", stderr(&out));

    let out = runtime(dir.path(), &["check"], &[("WORLD_SIZE", "2"), ("RANK", "2")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("rank 2 is not in a world of 2"), "{}", stderr(&out));

    // Certificates from another compilation.
    std::fs::write(dir.path().join("proof/manifest.json"), "{\"plan\": \"another\"}").unwrap();
    let out = runtime(dir.path(), &["check"], &[("WORLD_SIZE", "2"), ("RANK", "0")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("different compilations"), "{}", stderr(&out));
}

#[test]
fn launch_refuses_a_plan_for_another_rank_count_before_starting_any_rank() {
    let dir = plan_dir(Family::OneFOneB, 2, 4);
    let out = runtime(dir.path(), &["launch", "--gpus", "3"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("a plan for 2 ranks, not --gpus 3") && err.contains("use --gpus 2"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "one message, not one per rank: {err}");
}

#[test]
fn ranks_sharing_a_gpu_need_the_copy_engines() {
    // NCCL refuses two ranks on one GPU: refused before any rank starts (launch), and by
    // each rank started another way (torchrun, srun), before it opens a GPU.
    let dir = plan_dir(Family::DualPipe, 4, 8);
    let out = runtime(dir.path(), &["launch", "--gpus", "4", "--ranks-per-gpu", "2"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("--ranks-per-gpu 2 needs --p2p copy"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "one message, not one per rank: {err}");
    let out = runtime(dir.path(), &["run", "--ranks-per-gpu", "2"], &[("WORLD_SIZE", "4"), ("RANK", "1")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--ranks-per-gpu 2 needs --p2p copy"), "{}", stderr(&out));
    let out = runtime(dir.path(), &["run", "--ranks-per-gpu", "0"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn malformed_or_foreign_plans_are_refused() {
    let dir = plan_dir(Family::OneFOneB, 2, 4);
    let path = dir.path().join("plan.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let version = format!("\"version\":{}", pipewright_plan::PLAN_VERSION);
    assert!(text.contains(&version));
    std::fs::write(&path, text.replacen(&version, "\"version\":99", 1)).unwrap();
    let out = runtime(dir.path(), &["check"], &[("WORLD_SIZE", "2")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("plan format version 99"), "{}", stderr(&out));

    std::fs::write(&path, "{\"schedule\": 3}").unwrap();
    let out = runtime(dir.path(), &["check"], &[("WORLD_SIZE", "2")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is not a plan"), "{}", stderr(&out));

    std::fs::remove_file(&path).unwrap();
    let out = runtime(dir.path(), &["check"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

#[test]
fn costs_rederives_a_profiles_table_without_a_gpu() {
    // A DualPipe profile as `profile` leaves it: one rank<r>.json per rank, every op 0.5 ms
    // and every FB pair 1 ms (not a GPU in sight).
    let dir = plan_dir(Family::DualPipe, 2, 8);
    let plan: pipewright_plan::Plan =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("plan.json")).unwrap()).unwrap();
    let prof = tempfile::tempdir().unwrap();
    for r in &plan.ranks {
        let ops: Vec<serde_json::Value> = r
            .ops
            .iter()
            .map(|o| {
                serde_json::json!({"label": o.label, "kind": o.kind, "stages": o.stages, "stream": o.stream,
                    "bytes": o.bytes, "start_ms": 0.0, "ms": if o.kind == "FB" { 1.0 } else { 0.5 }})
            })
            .collect();
        let rank = serde_json::json!({"rank": r.rank, "step_ms": 10.0, "compute_ms": 9.0, "ops": ops});
        std::fs::write(prof.path().join(format!("rank{}.json", r.rank)), rank.to_string()).unwrap();
    }
    let profile = prof.path().display().to_string();
    let out = runtime(dir.path(), &["costs", "--profile", &profile, "--device", "a test"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(prof.path().join("costs.toml")).unwrap();
    assert!(text.contains("on a test") && text.contains("forward = [0.5000, 0.5000]"), "{text}");
    assert!(
        text.contains("overlapped_pairs = [{ f = 0, b = 1, ms = 1.0000 }, { f = 1, b = 0, ms = 1.0000 }]"),
        "{text}"
    );
    assert!(!text.contains("\np2p_contention ="), "no whole-step replays, no contention: {text}");
    // The contention from another profile of the plan, with the whole step replayed: every
    // compute op 0.5 ms alone and 0.6 beside batches in flight the whole time (mirror sums
    // far away), so 0.1 of excess over 0.6 of overlap, whichever ops count.
    let other = tempfile::tempdir().unwrap();
    for r in &plan.ranks {
        let ops: Vec<serde_json::Value> = r
            .ops
            .iter()
            .map(|o| {
                let (start, ms) = match o.kind.as_str() {
                    "COMM" if o.label.starts_with("mirror-sum") => (100.0, 1.0),
                    "COMM" => (0.0, 2.0),
                    _ => (0.0, 0.6),
                };
                serde_json::json!({"label": o.label, "kind": o.kind, "stages": o.stages, "stream": o.stream,
                    "bytes": o.bytes, "start_ms": 0.0, "ms": 0.5, "graph_start_ms": start, "graph_ms": ms})
            })
            .collect();
        let rank = serde_json::json!({"rank": r.rank, "step_ms": 10.0, "compute_ms": 9.0, "timed_alone": true,
            "graph_step_ms": 10.0, "ops": ops});
        std::fs::write(other.path().join(format!("rank{}.json", r.rank)), rank.to_string()).unwrap();
    }
    let from = format!("{}={}", dir.path().display(), other.path().display());
    let out = runtime(dir.path(), &["costs", "--profile", &profile, "--contention-from", &from], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(prof.path().join("costs.toml")).unwrap();
    assert!(text.contains("p2p_contention = 0.1667") && text.contains("pooled"), "{text}");
    // A source that is not a profile: exit 2, naming it.
    let out = runtime(dir.path(), &["costs", "--profile", &profile, "--contention-from", "/nonexistent"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("/nonexistent"), "{}", stderr(&out));
    // A profile of another plan (an op fewer): exit 2, naming the file, not a panic.
    let path = other.path().join("rank0.json");
    let mut rank: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    rank["ops"].as_array_mut().unwrap().pop();
    std::fs::write(&path, rank.to_string()).unwrap();
    let out = runtime(dir.path(), &["costs", "--profile", &profile, "--contention-from", &from], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("rank0.json") && stderr(&out).contains("another plan"), "{}", stderr(&out));
    // A profile missing a rank: exit 2, naming the file.
    std::fs::remove_file(prof.path().join("rank1.json")).unwrap();
    let out = runtime(dir.path(), &["costs", "--profile", &profile], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("rank1.json"), "{}", stderr(&out));
}

fn gpu_present() -> bool {
    pipewright_runtime::gpu::require_all().is_ok()
}

#[test]
fn without_cuda_run_is_a_clear_error_not_a_panic() {
    if gpu_present() {
        eprintln!("skipped: the CUDA libraries are present here (this test is for CPU-only machines)");
        return;
    }
    let dir = plan_dir(Family::DualPipeV, 1, 2);
    let out = runtime(dir.path(), &["run"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot be loaded") && err.contains("LD_LIBRARY_PATH"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn on_a_gpu_a_plan_matches_the_cpu_executor() {
    if !gpu_present() {
        eprintln!("skipped: no CUDA libraries (CPU-only machine); scripts/gpu-run.sh runs this on the GPU machine");
        return;
    }
    let dir = plan_dir(Family::DualPipeV, 1, 2);
    let out = runtime(dir.path(), &["run", "--steps", "3", "--reference"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("reference")).unwrap();
    let errs: Vec<f64> = line.split([' ', ',']).filter_map(|w| w.parse::<f64>().ok()).collect();
    assert!(errs.iter().all(|e| *e <= 1e-5), "{line}");
}
