//! `pipewright-runtime`: the runtime-only binary for GPU nodes (no Z3, no egg).
//!
//! ```text
//! pipewright-runtime check DIR                 # load and validate DIR/plan.json against this job
//! pipewright-runtime run DIR [--steps K] [--reference] [--eager] [--watchdog S] ...
//! pipewright-runtime launch --gpus N DIR [same options as run]
//! ```

use anyhow::Context;
use clap::{Parser, Subcommand};
use pipewright_plan::Plan;
use pipewright_runtime::exec;
use pipewright_runtime::launch::Place;
use pipewright_runtime::RuntimeError;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "pipewright-runtime", version, about = "Replays pipewright plans on GPUs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load DIR/plan.json, validate it, and check it against this job (world size, GPUs,
    /// certificate hash). Exit 0 when it would run, 2 with the reason when not.
    Check { dir: PathBuf },
    /// Run this rank's part of the plan (rank and world from RANK/WORLD_SIZE/LOCAL_RANK or
    /// SLURM_*) and print the losses per step.
    Run {
        dir: PathBuf,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Measure every op of the plan with CUDA events over K eager steps on N local GPUs;
    /// write OUT/costs.toml (a [costs] table for the spec), OUT/measured-trace.json (the
    /// measured timeline), OUT/compare-trace.json (it and DIR/trace.json, the simulated
    /// one, in one trace) and OUT/rank<r>.json.
    Profile {
        #[arg(long)]
        gpus: u32,
        dir: PathBuf,
        #[arg(long, default_value_t = 6)]
        steps: u32,
        /// Steps run untimed before those: an H200 runs its first steps under load at
        /// higher clocks than it sustains, and the costs should be the sustained ones.
        #[arg(long, default_value_t = 10)]
        warmup: u32,
        /// Then this many replays of each rank's step without its p2p, as a graph with every
        /// op timed: the compute ops' costs come from them — as the graph runs each op, with
        /// nothing to wait for — (0: from the eager steps, whose op spans also hold the
        /// waits inside the ops: an overlapped pair waiting for its second input, which the
        /// simulator adds again). Measured on 2 × H200, the optimiser's DualPipe and
        /// DualPipeV programs under those costs ran 0.4–4.4% faster than the families';
        /// under eager costs, up to 1.5% slower (README, Runtime).
        #[arg(long, default_value_t = 10)]
        alone_steps: u32,
        /// Output directory (default: DIR/profile).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Measure this GPU's GEMM rate at one shape (C[m×n] = A[m×k]·B[k×n], f32 or bf16
    /// inputs, f32 accumulation): the rate behind the benchmarks' FLOP floor.
    GemmRate {
        #[arg(long, default_value = "bf16")]
        dtype: String,
        #[arg(long)]
        m: u64,
        #[arg(long)]
        n: u64,
        #[arg(long)]
        k: u64,
        #[arg(long, default_value_t = 50)]
        iters: u32,
        /// op(A) = Aᵀ (A stored k × m).
        #[arg(long)]
        trans_a: bool,
        /// op(B) = Bᵀ (B stored n × k).
        #[arg(long)]
        trans_b: bool,
        /// What the product goes through: none, gelu (GELU_AUX) or gelu-grad (DGELU).
        #[arg(long, default_value = "none")]
        epilogue: String,
        /// C in f32 with beta = 1 (how weight gradients accumulate).
        #[arg(long)]
        accumulate: bool,
    },
    /// Start N local ranks of `run` (one per GPU) and wait for all; if one fails, stop the
    /// others.
    Launch {
        #[arg(long)]
        gpus: u32,
        dir: PathBuf,
        #[command(flatten)]
        args: RunArgs,
    },
}

/// The options of `run`, which `launch` passes on to every rank.
#[derive(clap::Args, Clone, Debug, PartialEq)]
struct RunArgs {
    #[arg(long, default_value_t = 1)]
    steps: u32,
    /// Also run the plan on the CPU executor and print the largest relative error of
    /// the losses and of this rank's weight gradients and weights.
    #[arg(long)]
    reference: bool,
    /// Issue every node every step instead of replaying a captured CUDA graph.
    #[arg(long)]
    eager: bool,
    /// Write checkpoints here every `checkpoint_every` steps of [training].
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Continue from the checkpoint in --checkpoint-dir.
    #[arg(long, requires = "checkpoint_dir")]
    resume: bool,
    /// Write initial and final weights, inputs, targets and gradients (safetensors).
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Seconds without progress (a step, or joining the communicator) after which the
    /// rank aborts NCCL and exits with code 3, naming the p2p group it is stuck in
    /// (0: never).
    #[arg(long, default_value_t = 30.0)]
    watchdog: f64,
    /// Time every op (eager steps) and write this rank's profile to DIR/rank<r>.json
    /// (what `profile` runs on every rank).
    #[arg(long)]
    profile_out: Option<PathBuf>,
    /// With --profile-out: run this many steps untimed before the timed ones.
    #[arg(long, default_value_t = 0)]
    profile_warmup: u32,
    /// With --profile-out: last, replay the step without its p2p this many times as a
    /// graph with every op timed (what the compute ops' costs then come from).
    #[arg(long, default_value_t = 0)]
    profile_alone: u32,
    /// Replay the captured graph with cuBLASLt's memset nodes as they are, instead of
    /// turning them into kernel nodes (which launch faster; this is for comparison).
    #[arg(long)]
    keep_memsets: bool,
    /// Give the communication stream (p2p, DualPipe's gradient exchange) the device's
    /// greatest priority, so that its kernels take SMs ahead of the products' (measured on
    /// 2 × H200: no gain beyond noise, hence off by default).
    #[arg(long)]
    comm_high_priority: bool,
    /// After the run, replay the step this many times without its p2p (each rank's compute
    /// with nothing to wait for: the bubble-free ideal step) and print the median; the
    /// training state is meaningless after it, so it comes after checkpoints and dumps.
    #[arg(long, default_value_t = 0)]
    compute_alone: u32,
}

impl RunArgs {
    fn options(&self) -> exec::RunOptions {
        exec::RunOptions {
            steps: self.steps,
            eager: self.eager,
            checkpoint_dir: self.checkpoint_dir.clone(),
            resume: self.resume,
            dump: self.dump.clone(),
            watchdog: std::time::Duration::from_secs_f64(self.watchdog.max(0.0)),
            profile: self.profile_out.is_some(),
            profile_warmup: self.profile_warmup,
            profile_alone_steps: self.profile_alone,
            keep_memsets: self.keep_memsets,
            comm_high_priority: self.comm_high_priority,
            alone_steps: self.compute_alone,
        }
    }

    /// The same options as command-line arguments of `run`.
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut out: Vec<std::ffi::OsString> = vec![
            "--steps".into(),
            self.steps.to_string().into(),
            "--watchdog".into(),
            self.watchdog.to_string().into(),
            "--profile-warmup".into(),
            self.profile_warmup.to_string().into(),
            "--profile-alone".into(),
            self.profile_alone.to_string().into(),
            "--compute-alone".into(),
            self.compute_alone.to_string().into(),
        ];
        let flags = [
            (self.reference, "--reference"),
            (self.eager, "--eager"),
            (self.resume, "--resume"),
            (self.keep_memsets, "--keep-memsets"),
            (self.comm_high_priority, "--comm-high-priority"),
        ];
        for (on, flag) in flags {
            if on {
                out.push(flag.into());
            }
        }
        let paths =
            [(&self.checkpoint_dir, "--checkpoint-dir"), (&self.dump, "--dump"), (&self.profile_out, "--profile-out")];
        for (path, flag) in paths {
            if let Some(p) = path {
                out.push(flag.into());
                out.push(p.clone().into());
            }
        }
        out
    }
}

fn load(dir: &Path) -> Result<(Plan, String), RuntimeError> {
    let path = dir.join("plan.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|source| RuntimeError::Read { path: path.display().to_string(), source })?;
    let plan: Plan = serde_json::from_str(&text)
        .map_err(|e| RuntimeError::NotAPlan { path: path.display().to_string(), message: e.to_string() })?;
    let manifest = dir.join("proof/manifest.json");
    let bytes = std::fs::read(&manifest)
        .map_err(|source| RuntimeError::Read { path: manifest.display().to_string(), source })?;
    let sha = pipewright_runtime::sha256_hex(&bytes);
    Ok((plan, sha))
}

fn visible_gpus() -> u32 {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').count() as u32,
        _ => u32::MAX,
    }
}

fn checked(dir: &Path, local_ranks: u32) -> Result<(Plan, Place), RuntimeError> {
    let (plan, sha) = load(dir)?;
    plan.validate()?;
    let place = Place::from_env(|k| std::env::var(k).ok())?;
    plan.refuse_mismatch(place.world_size, local_ranks, visible_gpus(), &sha)?;
    Ok((plan, place))
}

/// NCCL's settings this runtime needs unless the user set them. NCCL_GRAPH_MIXING_SUPPORT=0:
/// with mixing support on (NCCL's default), NCCL captures event nodes around every p2p group
/// so that graph launches and uncaptured NCCL calls may be outstanding at once, and every
/// replay pays host time for them; a rank here never has both (each step ends with the
/// streams synchronised before the next is issued or launched), which is when NCCL's
/// documentation allows turning it off.
const NCCL_DEFAULTS: [(&str, &str); 1] = [("NCCL_GRAPH_MIXING_SUPPORT", "0")];

fn main() -> ExitCode {
    // Set before any thread starts (and before NCCL reads its environment); `launch`'s
    // ranks inherit it.
    for (key, value) in NCCL_DEFAULTS {
        if std::env::var_os(key).is_none() {
            std::env::set_var(key, value);
        }
    }
    let cli = Cli::parse();
    let result: Result<(), RuntimeError> = match cli.command {
        Command::Check { dir } => checked(&dir, 1).map(|(plan, place)| {
            let bytes: u64 = plan.ranks.iter().map(|r| r.arena_bytes).max().unwrap_or(0);
            println!(
                "{}: {} ranks, {} stages, {} microbatches/pipe, largest arena {:.1} MiB; fits this job (rank {} of {})",
                plan.schedule,
                plan.world_size,
                plan.stages,
                plan.microbatches,
                bytes as f64 / (1 << 20) as f64,
                place.rank,
                place.world_size
            );
        }),
        Command::GemmRate { dtype, m, n, k, iters, trans_a, trans_b, epilogue, accumulate } => {
            pipewright_runtime::bench::GemmCase::parse(&dtype, (m, n, k), (trans_a, trans_b), &epilogue, accumulate)
                .and_then(|case| case.measure(iters))
                .map(|line| println!("{line}"))
        }
        Command::Run { dir, args } => run(&dir, &args),
        Command::Profile { gpus, dir, steps, warmup, alone_steps, out } => {
            match profile(gpus, &dir, steps, warmup, alone_steps, out) {
                Ok(code) => return code,
                Err(e) => Err(RuntimeError::Environment(format!("{e:#}"))),
            }
        }
        Command::Launch { gpus, dir, args } => match launch(gpus, &dir, &args) {
            Ok(code) => return code,
            Err(e) => Err(RuntimeError::Environment(format!("{e:#}"))),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(dir: &Path, args: &RunArgs) -> Result<(), RuntimeError> {
    let opts = &args.options();
    let (steps, eager) = (opts.steps, opts.eager || opts.profile);
    let (plan, place) = checked(dir, 1)?;
    let cache = pipewright_runtime::cache_dir();
    let (report, gpu) = exec::run(&plan, &place, opts, &cache)?;
    if let Some(out) = &args.profile_out {
        let p = pipewright_runtime::profile::rank_profile(&plan, place.rank, &report);
        let path = out.join(format!("rank{}.json", place.rank));
        std::fs::create_dir_all(out)
            .and_then(|_| std::fs::write(&path, serde_json::to_string_pretty(&p).unwrap_or_default()))
            .map_err(|e| RuntimeError::Environment(format!("{}: {e}", path.display())))?;
    }
    if let Some(d) = &opts.dump {
        let losses = serde_json::json!({ "first_step": report.first_step, "losses": report.losses });
        let path = d.join(format!("rank{}-losses.json", place.rank));
        std::fs::write(&path, losses.to_string())
            .map_err(|e| RuntimeError::Environment(format!("{}: {e}", path.display())))?;
    }
    for (i, (losses, ms)) in report.losses.iter().zip(&report.step_ms).enumerate() {
        let s = report.first_step as usize + i;
        let shown: Vec<String> = losses.iter().filter(|v| !v.is_nan()).map(|v| format!("{v:.6}")).collect();
        println!("rank {} step {s}: {:.3} ms, losses [{}]", place.rank, ms, shown.join(", "));
    }
    if !report.graph_nodes.is_empty() {
        let kinds: Vec<String> = report.graph_nodes.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!(
            "rank {}: graph of {} nodes ({})",
            place.rank,
            report.graph_nodes.values().sum::<usize>(),
            kinds.join(", ")
        );
    }
    if report.step_ms.len() > 2 {
        let median = |v: &[f64]| pipewright_runtime::profile::median(v.to_vec());
        println!(
            "rank {} {}: median step {:.3} ms over steps 2..{steps}, median host launch {:.1} µs",
            place.rank,
            if eager { "eager" } else { "graph" },
            median(&report.step_ms[2..]),
            median(&report.launch_us)
        );
    }
    if !report.alone_ms.is_empty() {
        println!(
            "rank {} compute alone (the step's graph without its p2p): median step {:.3} ms over {} replays",
            place.rank,
            pipewright_runtime::profile::median(report.alone_ms.clone()),
            report.alone_ms.len()
        );
    }
    if !report.after_alone_ms.is_empty() {
        println!(
            "rank {} whole step right after the compute alone: median step {:.3} ms over {} replays",
            place.rank,
            pipewright_runtime::profile::median(report.after_alone_ms.clone()),
            report.after_alone_ms.len()
        );
    }
    if args.reference && report.first_step == 0 {
        // The same plan on the CPU executor (itself tested against the model computed
        // directly): losses of every step, and this rank's weights and gradients after.
        let mut memory = pipewright_plan::cpu::initial_memory(&plan);
        let total = (plan.pipes * plan.microbatches) as f32;
        let rp = &plan.ranks[place.rank as usize];
        let mut worst_loss = 0.0f64;
        for got in &report.losses {
            pipewright_plan::cpu::run(&plan, &mut memory, 1)
                .map_err(|e| RuntimeError::Environment(format!("CPU reference: {e}")))?;
            if let Some(want) = memory[place.rank as usize].get("loss") {
                for (g, &v) in got.iter().enumerate() {
                    if !v.is_nan() {
                        let w = want[g] * total;
                        worst_loss = worst_loss.max(((v - w) / w).abs() as f64);
                    }
                }
            }
        }
        let (mut worst_grad, mut worst_weight) = (0.0f64, 0.0f64);
        for b in &rp.buffers {
            let is_grad = b.name.starts_with("g1.") || b.name.starts_with("g2.");
            let is_weight = b.name.starts_with("w1.") || b.name.starts_with("w2.");
            if !is_grad && !is_weight {
                continue;
            }
            let want = &memory[place.rank as usize][&b.name];
            let got = gpu.download(b, want.len())?;
            let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
            let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
            let err = (num / den.max(1e-30)).sqrt();
            if is_grad {
                worst_grad = worst_grad.max(err);
            } else {
                worst_weight = worst_weight.max(err);
            }
        }
        println!(
            "rank {} reference ({steps} steps): worst loss rel. error {worst_loss:.2e}, weight-gradient {worst_grad:.2e}, weights {worst_weight:.2e}",
            place.rank
        );
    }
    Ok(())
}

fn profile(
    gpus: u32,
    dir: &Path,
    steps: u32,
    warmup: u32,
    alone_steps: u32,
    out: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use pipewright_runtime::profile::{chrome_trace, costs_toml, RankProfile};
    let out = out.unwrap_or_else(|| dir.join("profile"));
    let args = RunArgs {
        steps: steps + warmup,
        reference: false,
        eager: true,
        checkpoint_dir: None,
        resume: false,
        dump: None,
        watchdog: 60.0,
        profile_out: Some(out.clone()),
        profile_warmup: warmup,
        profile_alone: alone_steps,
        keep_memsets: false,
        comm_high_priority: false,
        // Each rank's step graph without p2p, last: what its ops' costs are scaled to.
        compute_alone: 10,
    };
    let code = launch(gpus, dir, &args)?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let (plan, _) = load(dir)?;
    let mut profiles = Vec::new();
    for r in 0..plan.world_size {
        let path = out.join(format!("rank{r}.json"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        profiles.push(serde_json::from_str::<RankProfile>(&text).with_context(|| path.display().to_string())?);
    }
    std::fs::write(out.join("costs.toml"), costs_toml(&plan, &profiles, "this machine"))?;
    std::fs::write(out.join("nodes.md"), pipewright_runtime::profile::nodes_table(&profiles))?;
    let measured = chrome_trace(&profiles);
    std::fs::write(out.join("measured-trace.json"), measured.to_string())?;
    // Beside the simulated timeline, when the plan directory has compile's trace.json.
    if let Some(simulated) = std::fs::read_to_string(dir.join("trace.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    {
        let both = pipewright_runtime::profile::with_simulated(&measured, &simulated);
        std::fs::write(out.join("compare-trace.json"), both.to_string())?;
    }
    let ideal = profiles.iter().map(|p| p.ideal_ms()).fold(0.0, f64::max);
    for p in &profiles {
        let nodes = p.node_compute_ms.map_or(String::new(), |ms| format!(", its nodes alone {ms:.3} ms"));
        let alone = p.alone_ms.map_or(String::new(), |ms| format!(", its step graph without p2p {ms:.3} ms"));
        let timed =
            if p.timed_alone { "its compute ops timed in its step without p2p" } else { "its ops in eager steps" };
        println!(
            "rank {}: compute {:.3} ms per step ({timed}){nodes}{alone}, eager step with timing {:.3} ms, \
             costs scaled by {:.3}",
            p.rank,
            p.compute_ms,
            p.step_ms,
            p.calibration()
        );
    }
    println!(
        "ideal step (busiest rank's compute: its step graph without p2p) {ideal:.3} ms; wrote {}/costs.toml and \
         measured-trace.json",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn launch(gpus: u32, dir: &Path, args: &RunArgs) -> anyhow::Result<ExitCode> {
    // Refuse a plan that cannot run before starting anything: one message, not N.
    let refuse = |e: RuntimeError| {
        eprintln!("error: {e}");
        Ok(ExitCode::from(e.exit_code()))
    };
    match load(dir) {
        Err(e) => return refuse(e),
        Ok((plan, _)) => {
            if let Err(e) = plan.validate() {
                return refuse(e.into());
            }
            if plan.world_size != gpus {
                return refuse(RuntimeError::Environment(format!(
                    "{} is a plan for {} ranks, not --gpus {gpus}; use --gpus {} or recompile with ranks = {gpus}",
                    dir.display(),
                    plan.world_size,
                    plan.world_size
                )));
            }
        }
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut children = Vec::new();
    for rank in 0..gpus {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("run").arg(dir).args(args.to_args());
        cmd.env("RANK", rank.to_string())
            .env("WORLD_SIZE", gpus.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("NCCL_NVLS_ENABLE", "0");
        children.push(cmd.spawn().with_context(|| format!("cannot start rank {rank}"))?);
    }
    // Wait for all; the first failure stops the rest, so that nothing hangs.
    let mut code = ExitCode::SUCCESS;
    let mut running: Vec<(u32, std::process::Child)> = (0..gpus).zip(children).collect();
    while !running.is_empty() {
        let mut i = 0;
        while i < running.len() {
            match running[i].1.try_wait()? {
                Some(status) => {
                    let (rank, _) = running.remove(i);
                    if !status.success() && code == ExitCode::SUCCESS {
                        // The first failure names the cause; the ranks stopped after it do not.
                        eprintln!("error: rank {rank} failed ({status}); stopping the other ranks");
                        for (_, c) in &mut running {
                            let _ = c.kill();
                        }
                        code = ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8);
                    }
                }
                None => i += 1,
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser)]
    struct Just {
        #[command(flatten)]
        args: RunArgs,
    }

    /// `launch` gives every rank the options it was given: each flag and value survives
    /// `to_args` and parsing back.
    #[test]
    fn launch_passes_every_run_option_on() {
        let given = [
            "x",
            "--steps",
            "7",
            "--reference",
            "--eager",
            "--checkpoint-dir",
            "/c",
            "--resume",
            "--dump",
            "/d",
            "--watchdog",
            "12.5",
            "--profile-out",
            "/p",
            "--profile-warmup",
            "3",
            "--profile-alone",
            "5",
            "--keep-memsets",
            "--comm-high-priority",
            "--compute-alone",
            "4",
        ];
        let parsed = Just::parse_from(given).args;
        assert!(parsed.comm_high_priority && parsed.keep_memsets && parsed.resume && parsed.compute_alone == 4);
        let again = Just::parse_from(std::iter::once("x".into()).chain(parsed.to_args())).args;
        assert_eq!(again, parsed);
        let plain = Just::parse_from(["x"]).args;
        assert_eq!(Just::parse_from(std::iter::once("x".into()).chain(plain.to_args())).args, plain);
    }
}
