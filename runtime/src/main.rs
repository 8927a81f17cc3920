//! `pipewright-runtime`: the runtime-only binary for GPU nodes (no Z3, no egg).
//!
//! ```text
//! pipewright-runtime check DIR                 # load and validate DIR/plan.json against this job
//! pipewright-runtime run DIR [--steps K] [--reference] [--eager] [--watchdog S] ...
//! pipewright-runtime launch --gpus N DIR [same options as run]
//! ```

use anyhow::Context;
use clap::Parser;
use pipewright_plan::Plan;
use pipewright_runtime::exec;
use pipewright_runtime::launch::Place;
use pipewright_runtime::RuntimeError;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod cli;

use cli::{Cli, Command, RunArgs};

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

/// DIR/plan.json, validated (for the profile's arithmetic, what it indexes by: every op's
/// nodes inside its rank's), without the job checks of [`checked`].
fn load_valid(dir: &Path) -> Result<Plan, RuntimeError> {
    let (plan, _) = load(dir)?;
    plan.validate()?;
    Ok(plan)
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
        Command::GemmRate { dtype, m, n, k, iters, trans_a, trans_b, epilogue, accumulate, comm_sms, always_fuse } => {
            let sharing = pipewright_runtime::gpu::Sharing { comm_first: false, comm_sms, always_fuse };
            pipewright_runtime::bench::GemmCase::parse(&dtype, (m, n, k), (trans_a, trans_b), &epilogue, accumulate)
                .and_then(|case| case.measure(iters, sharing))
                .map(|line| println!("{line}"))
        }
        Command::Run { dir, args } => run(&dir, &args),
        Command::Profile { gpus, dir, steps, warmup, alone_steps, graph_steps, comm_sms, p2p, out } => {
            let replays = Replays { alone: alone_steps, graph: graph_steps };
            match profile(gpus, &dir, steps, warmup, replays, (comm_sms, p2p), out) {
                Ok(code) => return code,
                Err(e) => Err(RuntimeError::Environment(format!("{e:#}"))),
            }
        }
        Command::Costs { dir, profile, device, contention_from } => {
            costs(&dir, profile, &device, &contention_from).map_err(|e| RuntimeError::Environment(format!("{e:#}")))
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
    let (plan, place) = checked(dir, 1)?;
    let opts = &args.options(plan.transport);
    let (steps, eager) = (opts.steps, opts.eager || opts.profile);
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
            "rank {}: graph of {} nodes ({}){}",
            place.rank,
            report.graph_nodes.values().sum::<usize>(),
            kinds.join(", "),
            if report.graph_device_launch { ", instantiated for device launch" } else { "" }
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
    let replays = [
        ("compute alone (the step's graph without its p2p)", &report.alone_ms),
        ("whole step right after the compute alone", &report.after_alone_ms),
    ];
    for (what, ms) in replays.into_iter().filter(|(_, ms)| !ms.is_empty()) {
        let median = pipewright_runtime::profile::median(ms.clone());
        println!("rank {} {what}: median step {median:.3} ms over {} replays", place.rank, ms.len());
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

/// The timed replays `profile` asks every rank for after its eager steps.
struct Replays {
    /// Of the step without p2p (the compute ops' costs).
    alone: u32,
    /// Of the whole step (the timeline as training runs it).
    graph: u32,
}

fn profile(
    gpus: u32,
    dir: &Path,
    steps: u32,
    warmup: u32,
    replays: Replays,
    (comm_sms, p2p): (Option<u32>, Option<pipewright_runtime::gpu::Transport>),
    out: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use pipewright_runtime::profile::{chrome_trace, costs_toml, graph_breakdown, with_simulated, Timeline};
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
        profile_alone: replays.alone,
        profile_graph: replays.graph,
        keep_memsets: false,
        comm_high_priority: false,
        comm_sms,
        always_fuse: false,
        p2p,
        // Each rank's step graph without p2p, last: what its ops' costs are scaled to.
        compute_alone: 10,
        // Costs are for ranks with a GPU each.
        ranks_per_gpu: 1,
    };
    let code = launch(gpus, dir, &args)?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let plan = load_valid(dir)?;
    let profiles = read_profiles(&plan, &out)?;
    std::fs::write(out.join("costs.toml"), costs_toml(&plan, &profiles, "this machine"))?;
    std::fs::write(out.join("nodes.md"), pipewright_runtime::profile::nodes_table(&profiles))?;
    let measured = chrome_trace(&profiles, Timeline::Eager);
    std::fs::write(out.join("measured-trace.json"), measured.to_string())?;
    let graph = (replays.graph > 0).then(|| chrome_trace(&profiles, Timeline::Graph));
    if let Some(g) = &graph {
        std::fs::write(out.join("graph-trace.json"), g.to_string())?;
    }
    // Beside the simulated timeline, when the plan directory has compile's trace.json.
    if let Some(simulated) = std::fs::read_to_string(dir.join("trace.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    {
        let both = with_simulated(&measured, graph.as_ref(), &simulated);
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
    for (p, b) in profiles.iter().filter_map(|p| Some((p, graph_breakdown(p)?))) {
        println!(
            "rank {}, whole step as a graph with every op timed: {:.3} ms; compute busy {:.3} ms (idle {:.3}); \
             its ops take {:.3} ms there, {:.3} alone ({:+.1}%); p2p stream busy {:.3} ms",
            p.rank,
            b.step_ms,
            b.compute_busy_ms,
            b.step_ms - b.compute_busy_ms,
            b.ops_in_step_ms,
            b.ops_alone_ms,
            100.0 * (b.ops_in_step_ms / b.ops_alone_ms - 1.0),
            b.comm_busy_ms
        );
    }
    println!(
        "ideal step (busiest rank's compute: its step graph without p2p) {ideal:.3} ms; wrote {}/costs.toml, \
         measured-trace.json{}",
        out.display(),
        if graph.is_some() { " and graph-trace.json" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Every rank's profile (`rank<r>.json`) in `out`.
fn read_profiles(plan: &Plan, out: &Path) -> anyhow::Result<Vec<pipewright_runtime::profile::RankProfile>> {
    (0..plan.world_size)
        .map(|r| {
            let path = out.join(format!("rank{r}.json"));
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let profile: pipewright_runtime::profile::RankProfile =
                serde_json::from_str(&text).with_context(|| format!("{} is not a rank's profile", path.display()))?;
            // Ops are matched to the plan's by index.
            let ops = plan.ranks[r as usize].ops.len();
            if profile.ops.len() != ops {
                anyhow::bail!(
                    "{} has {} ops, rank {r} of the plan {ops}: it is the profile of another plan",
                    path.display(),
                    profile.ops.len()
                );
            }
            Ok(profile)
        })
        .collect()
}

/// `costs`: the `[costs]` table of a profile already measured, written again (what a newer
/// pipewright derives from the same measurements), no GPU needed.
fn costs(dir: &Path, profile: Option<PathBuf>, device: &str, contention_from: &[String]) -> anyhow::Result<()> {
    use pipewright_runtime::profile::{costs_toml_with, evidence, Contention};
    let out = profile.unwrap_or_else(|| dir.join("profile"));
    let plan = load_valid(dir)?;
    let profiles = read_profiles(&plan, &out)?;
    // Other profiles' contention evidence, pooled.
    let mut pooled = Contention::default();
    let mut names = Vec::new();
    for source in contention_from {
        let (plan_dir, profile_dir) = match source.split_once('=') {
            Some((p, q)) => (PathBuf::from(p), PathBuf::from(q)),
            None => (PathBuf::from(source), Path::new(source).join("profile")),
        };
        let other = load_valid(&plan_dir)?;
        let c = evidence(&other, &read_profiles(&other, &profile_dir)?);
        println!(
            "{}: compute {:.3} ms longer than alone beside {:.3} ms of batches in flight",
            plan_dir.display(),
            c.excess_ms,
            c.overlap_ms
        );
        pooled += c;
        names.push(plan_dir.file_name().map_or(source.clone(), |n| n.to_string_lossy().into_owned()));
    }
    let what = format!("from the profiles of {}, pooled", names.join(", "));
    let from = (!contention_from.is_empty()).then_some((pooled, what.as_str()));
    let path = out.join("costs.toml");
    std::fs::write(&path, costs_toml_with(&plan, &profiles, device, from))
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn launch(gpus: u32, dir: &Path, args: &RunArgs) -> anyhow::Result<ExitCode> {
    // Refuse a plan that cannot run before starting anything: one message, not N.
    let refuse = |e: RuntimeError| {
        eprintln!("error: {e}");
        Ok(ExitCode::from(e.exit_code()))
    };
    match load_valid(dir) {
        Err(e) => return refuse(e),
        Ok(plan) => {
            if let Err(e) = exec::check_sharing(args.ranks_per_gpu, args.transport(plan.transport)) {
                return refuse(e);
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
