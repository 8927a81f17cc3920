//! `pipewright`: the command-line edge of the compiler.
//!
//! Exit codes: 0 success; 1 the input is well-formed but the schedule cannot run (it
//! deadlocks); 2 unreadable or malformed input (the message names the file, and for specs
//! the line and column).

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use pipewright_compiler::cost::CostModel;
use pipewright_compiler::dag::PlanError;
use pipewright_compiler::ir::ProgramSet;
use pipewright_compiler::render::{svg, text, trace};
use pipewright_compiler::report::Report;
use pipewright_compiler::sim::Simulation;
use pipewright_compiler::{compile_with, lower_and_simulate, spec, verify, CompileError};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A formally checked schedule compiler for pipeline-parallel training.
#[derive(Parser, Debug)]
#[command(name = "pipewright", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a plan on this node's GPUs: `pipewright-runtime run|launch|profile|gemm-rate`,
    /// with the same arguments (e.g. `pipewright launch --gpus 4 out/plan --steps 10`).
    /// The runtime is its own binary (no Z3, no egg), found beside this one or on PATH.
    #[command(name = "run", disable_help_flag = true)]
    RuntimeRun(RuntimeArgs),
    #[command(
        name = "launch",
        disable_help_flag = true,
        about = "Start N local ranks of `run` (pipewright-runtime launch)"
    )]
    RuntimeLaunch(RuntimeArgs),
    #[command(
        name = "profile",
        disable_help_flag = true,
        about = "Measure every op of a plan on GPUs (pipewright-runtime profile)"
    )]
    RuntimeProfile(RuntimeArgs),
    /// Compile a schedule spec into a plan directory.
    ///
    /// Writes DIR/programs.json (per-rank programs, interchange format), DIR/report.json
    /// (makespan, per-rank busy/idle time, peak in-flight microbatches and memory),
    /// DIR/schedule.svg (rank × time picture) and DIR/trace.json (Chrome/Perfetto trace).
    /// Nothing is written unless the whole compilation succeeds.
    Compile {
        /// The spec (TOML), e.g. specs/dualpipev.toml.
        spec: PathBuf,
        /// Output directory (created if missing).
        #[arg(short, long, default_value = "out")]
        output: PathBuf,
        /// Print report.json to stdout instead of the human summary.
        #[arg(long)]
        json: bool,
        /// Also print the text rendering of the programs and the timeline statistics.
        #[arg(long)]
        text: bool,
        /// Run the optimiser (e-graph rewrites, every result re-verified) on the family's
        /// plan, with the spec's [optimize] limits (or 10 s). A spec with [optimize] is
        /// always optimised.
        #[arg(long)]
        optimize: bool,
    },
    /// Run the optimiser's results suite: every spec in DIR (one stage per rank, the model
    /// of every family), best family against optimised schedule and lower bound, as a
    /// Markdown table. Exit 1 if any optimised plan fails verification.
    Suite {
        /// Directory of suite specs, e.g. specs/suite.
        dir: PathBuf,
        /// Also write the rows as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Override every spec's optimiser time limit (seconds).
        #[arg(long)]
        time_limit: Option<f64>,
    },
    /// Simulate a program file (interchange format, e.g. a DualPipe fixture).
    ///
    /// Costs and memory come from --spec; its rank count must match the programs'. Without
    /// --spec, F = 1, B = 2, W = 1, FB = 3 and p2p = 0 on every stage, blocking p2p.
    Simulate {
        /// The programs (JSON, interchange format).
        programs: PathBuf,
        /// A spec whose [costs] and [memory] to use.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Also write report.json, schedule.svg and trace.json to this directory.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Print the report as JSON instead of the human summary.
        #[arg(long)]
        json: bool,
    },
    /// Verify a program file: deadlock-freedom, payload agreement, completeness and order,
    /// and memory when --spec gives [memory].
    ///
    /// Exit 0 when every property holds, 1 when one fails (counterexample on stderr), 2 for
    /// unreadable or malformed input.
    Verify {
        /// The programs (JSON, interchange format; fixture files are valid).
        #[arg(long, required_unless_present = "torch_csv", conflicts_with = "torch_csv")]
        programs: Option<PathBuf>,
        /// A torch.distributed.pipelining schedule (`_dump_csv` format), verified under
        /// PyTorch's runtime semantics: one communicator (one FIFO per rank pair), each p2p
        /// op its own batch, receives waited for by their consumers. Compute-only files get
        /// communication inserted first.
        #[arg(long)]
        torch_csv: Option<PathBuf>,
        /// A spec supplying [memory] and the comm mode.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Print the verification as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Re-check a compiled plan's certificates with the z3 binary, and that they belong to
    /// the plan (hashes; certificates re-derived from programs.json).
    Check {
        /// The plan directory written by `compile`.
        dir: PathBuf,
        /// The z3 binary to run.
        #[arg(long, default_value = "z3")]
        z3: String,
    },
    /// Write a program file as a torch.distributed.pipelining `_dump_csv` schedule, so
    /// PyTorch users can run what pipewright compiled.
    ExportTorch {
        /// The programs (JSON, interchange format).
        programs: PathBuf,
        /// The CSV to write (stdout when absent).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Place mixture-of-experts replicas on GPUs (expert-parallel load balancing).
    ///
    /// Writes JSON with phy2log, log2phy, logcnt, gpu_load, imbalance, lower_bound, gap and
    /// moved_slots; prints a summary (per-layer imbalance, worst layers, replicas per
    /// expert) on stderr.
    Eplb(EplbArgs),
}

/// Arguments of `pipewright eplb`.
#[derive(clap::Args, Debug)]
struct EplbArgs {
    /// Load statistics: JSON with a "weight" matrix (layers × experts; an EPLB fixture's
    /// "params" supply the shape), CSV (one layer per line) or NumPy .npy (2-D).
    #[arg(long)]
    input: PathBuf,
    /// Physical expert slots per layer (default: the input's params).
    #[arg(long)]
    replicas: Option<usize>,
    /// Expert groups (a group's experts stay on one node when groups % nodes == 0).
    #[arg(long)]
    groups: Option<usize>,
    /// Server nodes.
    #[arg(long)]
    nodes: Option<usize>,
    /// GPUs (replicas must be a multiple).
    #[arg(long)]
    gpus: Option<usize>,
    /// deepseek | balanced | balanced-global.
    #[arg(long, default_value = "balanced")]
    policy: String,
    /// Current layout (JSON with "phy2log", e.g. an earlier output): rebalance moving as few
    /// slots as possible.
    #[arg(long)]
    previous: Option<PathBuf>,
    /// With --previous: accept a max GPU load up to (1 + tolerance) × a fresh placement's.
    #[arg(long, default_value_t = 0.01)]
    tolerance: f64,
    /// With --previous: keep the current layout when within (1 + threshold) × fresh.
    #[arg(long, default_value_t = 0.01)]
    threshold: f64,
    /// Write the placement JSON here instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Arguments passed through to `pipewright-runtime`.
#[derive(clap::Args, Debug)]
struct RuntimeArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<std::ffi::OsString>,
}

/// Runs `pipewright-runtime COMMAND ARGS…` and returns its exit code.
fn forward_to_runtime(command: &str, args: &[std::ffi::OsString]) -> Result<u8, Failure> {
    let name = format!("pipewright-runtime{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(&name)));
    let exe = match beside.filter(|p| p.is_file()) {
        Some(p) => p,
        None => PathBuf::from(&name),
    };
    let status = std::process::Command::new(&exe).arg(command).args(args).status().map_err(|e| Failure {
        code: 2,
        message: format!(
            "error: cannot start {} ({e}): build it with `cargo build --release -p pipewright-runtime`, \
             and put it beside pipewright or on PATH",
            exe.display()
        ),
    })?;
    Ok(status.code().map_or(1, |c| c.clamp(0, 255) as u8))
}

/// An error with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure { code: 2, message: format!("error: {e:#}") }
    }
}

fn plan_failure(context: &str, e: PlanError) -> Failure {
    let code = if matches!(e, PlanError::Deadlock { .. }) { 1 } else { 2 };
    Failure { code, message: format!("error: {context}: {e}") }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let forwarded = match &cli.command {
        Command::RuntimeRun(a) => Some(("run", &a.args)),
        Command::RuntimeLaunch(a) => Some(("launch", &a.args)),
        Command::RuntimeProfile(a) => Some(("profile", &a.args)),
        _ => None,
    };
    if let Some((command, args)) = forwarded {
        return match forward_to_runtime(command, args) {
            Ok(code) => ExitCode::from(code),
            Err(f) => {
                eprintln!("{}", f.message);
                ExitCode::from(f.code)
            }
        };
    }
    let result = match cli.command {
        Command::RuntimeRun(_) | Command::RuntimeLaunch(_) | Command::RuntimeProfile(_) => Ok(()),
        Command::Compile { spec, output, json, text, optimize } => run_compile(&spec, &output, json, text, optimize),
        Command::Suite { dir, json, time_limit } => run_suite(&dir, json.as_deref(), time_limit),
        Command::Simulate { programs, spec, output, json } => {
            run_simulate(&programs, spec.as_deref(), output.as_deref(), json)
        }
        Command::Eplb(args) => run_eplb(&args),
        Command::Verify { programs, torch_csv, spec, json } => {
            run_verify(programs.as_deref(), torch_csv.as_deref(), spec.as_deref(), json)
        }
        Command::ExportTorch { programs, output } => run_export_torch(&programs, output.as_deref()),
        Command::Check { dir, z3 } => run_check(&dir, &z3),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprint!("{}", f.message);
            if !f.message.ends_with('\n') {
                eprintln!();
            }
            ExitCode::from(f.code)
        }
    }
}

fn read_spec(path: &Path) -> Result<spec::Spec, Failure> {
    let source = fs::read_to_string(path).with_context(|| format!("cannot read spec {}", path.display()))?;
    let name = path.display().to_string();
    let mut spec = spec::parse(&name, &source).map_err(|e| Failure { code: 2, message: e.render() })?;
    let base = path.parent().unwrap_or(Path::new("."));
    spec::load_moe(&mut spec, &name, &source, base).map_err(|e| Failure { code: 2, message: e.render() })?;
    spec::load_costs(&mut spec, &name, &source, base).map_err(|e| Failure { code: 2, message: e.render() })?;
    Ok(spec)
}

fn run_compile(spec_path: &Path, out: &Path, json: bool, show_text: bool, optimize: bool) -> Result<(), Failure> {
    let spec = read_spec(spec_path)?;
    let title = format!("{} ({})", spec.family.name(), spec_path.display());
    let options = match (&spec.optimize, optimize) {
        (Some(o), _) => Some(o.clone()),
        (None, true) => Some(pipewright_compiler::optimize::Options::default()),
        (None, false) => None,
    };
    let context = format!("compiling {}", spec_path.display());
    let mut compiled = compile_with(spec, options.as_ref()).map_err(|e| match e {
        CompileError::Plan(e) => plan_failure(&context, e),
        other => Failure { code: 1, message: format!("error: {context}: {other}\n") },
    })?;
    // Nothing a runtime would execute is written unless the verifier accepts it.
    let comm = compiled.spec.costs.comm;
    let memory = compiled.spec.memory.clone();
    let verification = compiled.verification.clone();
    if !verification.ok() {
        let mut message = format!("error: the plan of {} fails verification\n", spec_path.display());
        for v in &verification.violations {
            message.push_str(&verify::counterexample::render(&compiled.programs, v));
        }
        return Err(Failure { code: 1, message });
    }
    compiled.report.verified = Some(verification.verdicts.clone());
    let programs_text = programs_json(&compiled.programs);
    let plan_hash = verify::certificate::sha256(programs_text.as_bytes());
    let certificates =
        verify::certificate::all_from(&compiled.programs, &compiled.dag, comm, memory.as_ref(), &plan_hash)
            .map_err(|e| plan_failure("writing certificates", e))?;
    let manifest = verify::certificate::Manifest {
        plan_hash: plan_hash.clone(),
        comm,
        memory: memory.clone(),
        certificates: certificates
            .iter()
            .map(|(file, property, expect, text)| verify::certificate::CertificateEntry {
                file: file.clone(),
                property: property.clone(),
                expect: expect.clone(),
                sha256: verify::certificate::sha256(text.as_bytes()),
            })
            .collect(),
    };
    let manifest_text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    let mut files: Vec<(String, String)> = vec![
        ("programs.json".into(), programs_text),
        ("report.json".into(), report_json(&compiled.report)),
        ("schedule.svg".into(), svg::render(&compiled.programs, &compiled.simulation, &title)),
        ("trace.json".into(), trace::render(&compiled.programs, &compiled.simulation).to_string()),
        ("proof/manifest.json".into(), manifest_text.clone()),
    ];
    if let Some((model, training)) = &compiled.spec.model {
        let spec_bytes = fs::read(spec_path).with_context(|| format!("cannot read spec {}", spec_path.display()))?;
        let hashes = pipewright_plan::Hashes {
            spec: verify::certificate::sha256(&spec_bytes),
            programs: plan_hash.clone(),
            certificates: verify::certificate::sha256(manifest_text.as_bytes()),
        };
        let comm = compiled.spec.costs.comm;
        let plan =
            pipewright_compiler::emit::emit_with(&compiled.programs, model, training, hashes, comm).map_err(|e| {
                Failure { code: 2, message: format!("error: emitting the plan of {}: {e}\n", spec_path.display()) }
            })?;
        plan.validate().map_err(|e| Failure { code: 1, message: format!("error: emitter bug: {e}\n") })?;
        files.push(("plan.json".into(), serde_json::to_string(&plan).unwrap_or_default()));
    }
    files.extend(certificates.into_iter().map(|(file, _, _, text)| (format!("proof/{file}"), text)));
    if let (Some(placement), Some(moe)) = (&compiled.experts, &compiled.spec.moe) {
        files.push(("experts.json".into(), experts_json(placement, moe)));
    }
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    write_all(out, &files)?;
    print_result(&compiled.report, json);
    if let (Some(p), false) = (&compiled.experts, json) {
        let mean = p.imbalance.iter().sum::<f64>() / p.imbalance.len().max(1) as f64;
        let worst = p.imbalance.iter().copied().fold(0.0, f64::max);
        println!("experts: {} layers placed, imbalance mean {mean:.4}, worst {worst:.4}", p.imbalance.len());
    }
    if show_text {
        print!("{}", text::render(&compiled.programs, &compiled.simulation));
    }
    if !json {
        let extra = if compiled.experts.is_some() { ", experts.json" } else { "" };
        println!(
            "verified: deadlock-free, payload agreement, complete and ordered{}",
            match verification.verdicts.within_budget {
                Some(true) => ", within the memory budget over every permitted order",
                _ => "",
            }
        );
        println!("wrote {}/{{programs.json, report.json, schedule.svg, trace.json, proof/{extra}}}", out.display());
    }
    Ok(())
}

fn read_programs(programs: &Path) -> Result<ProgramSet, Failure> {
    let text = fs::read_to_string(programs).with_context(|| format!("cannot read programs {}", programs.display()))?;
    serde_json::from_str(&text).map_err(|e| Failure {
        code: 2,
        message: format!(
            "error: {}:{}:{}: not a program file: {e}\n  = help: the format is described in README.md, section \"Interchange format\"\n",
            programs.display(),
            e.line(),
            e.column()
        ),
    })
}

/// Reads the spec at `path` for the program set read from `programs`: same world size, and
/// (when `need_stages`, or when the spec models memory) the same number of stages.
fn spec_for_programs(path: &Path, programs: &Path, set: &ProgramSet, need_stages: bool) -> Result<spec::Spec, Failure> {
    let spec = read_spec(path)?;
    if spec.ranks != set.ranks {
        return Err(bad_input(format!(
            "{} is for {} ranks but {} has {} programs\n  = help: use a spec of the same world size",
            path.display(),
            spec.ranks,
            programs.display(),
            set.ranks
        )));
    }
    let stages = set.resolved_layout().map_or(0, |l| l.stages);
    if (need_stages || spec.memory.is_some()) && spec.stages() != stages {
        return Err(bad_input(format!(
            "{} describes {} stages but the programs in {} have {}\n  = help: use a spec of the same schedule shape",
            path.display(),
            spec.stages(),
            programs.display(),
            stages
        )));
    }
    Ok(spec)
}

fn run_export_torch(programs: &Path, output: Option<&Path>) -> Result<(), Failure> {
    let set = read_programs(programs)?;
    let csv =
        pipewright_compiler::torch::export(&set).map_err(|e| bad_input(format!("{}: {e}", programs.display())))?;
    match output {
        Some(path) => fs::write(path, csv).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{csv}"),
    }
    Ok(())
}

fn run_verify(
    programs: Option<&Path>,
    torch_csv: Option<&Path>,
    spec_path: Option<&Path>,
    json: bool,
) -> Result<(), Failure> {
    // Where each event is written, so that counterexamples point into the user's file.
    let lines = programs.and_then(|p| fs::read_to_string(p).ok()).and_then(|t| verify::counterexample::event_lines(&t));
    let (set, programs, torch) = match (programs, torch_csv) {
        (Some(p), _) => (read_programs(p)?, p, false),
        (None, Some(csv)) => {
            let text = fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
            let name = csv.file_stem().and_then(|s| s.to_str()).unwrap_or("torch").to_owned();
            let set = pipewright_compiler::torch::import(&name, &text)
                .map_err(|e| bad_input(format!("{}: {e}", csv.display())))?;
            (set, csv, true)
        }
        (None, None) => return Err(bad_input("give --programs FILE.json or --torch-csv FILE.csv".into())),
    };
    let (comm, memory) = match spec_path {
        Some(p) => {
            let spec = spec_for_programs(p, programs, &set, false)?;
            (spec.costs.comm, spec.memory)
        }
        // PyTorch's runtime issues each p2p op on its own and only consumers wait.
        None if torch => (pipewright_compiler::cost::CommMode::Async, None),
        None => (pipewright_compiler::cost::CommMode::Blocking, None),
    };
    let result = verify::verify(&set, comm, memory.as_ref())
        .map_err(|e| Failure { code: 2, message: format!("error: {}: {e}\n", programs.display()) })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result).unwrap_or_default());
    }
    if result.ok() {
        if !json {
            let v = &result.verdicts;
            println!("{}: verified", programs.display());
            println!("  deadlock-free        yes");
            println!("  payload agreement    yes");
            println!("  complete and ordered yes");
            match v.within_budget {
                Some(_) => println!("  within memory budget yes (every permitted order)"),
                None => println!("  within memory budget not checked (no [memory] in a --spec)"),
            }
            println!("  buffer safety        not applicable (no buffers assigned)");
        }
        Ok(())
    } else {
        let mut message = format!("{}: verification failed\n", programs.display());
        let file = programs.display().to_string();
        for v in &result.violations {
            message.push_str(&verify::counterexample::render_located(&set, v, &file, lines.as_deref()));
        }
        Err(Failure { code: 1, message })
    }
}

fn run_check(dir: &Path, z3: &str) -> Result<(), Failure> {
    use verify::certificate::{self, Manifest};
    let fail = |m: String| Failure { code: 1, message: format!("check failed: {m}\n") };
    let programs_path = dir.join("programs.json");
    let programs_text =
        fs::read_to_string(&programs_path).with_context(|| format!("cannot read {}", programs_path.display()))?;
    let manifest_path = dir.join("proof/manifest.json");
    let manifest: Manifest = serde_json::from_str(
        &fs::read_to_string(&manifest_path).with_context(|| format!("cannot read {}", manifest_path.display()))?,
    )
    .map_err(|e| bad_input(format!("{}: {e}", manifest_path.display())))?;
    let hash = certificate::sha256(programs_text.as_bytes());
    if hash != manifest.plan_hash {
        return Err(fail(format!(
            "{} does not match the plan the certificates were written for",
            programs_path.display()
        )));
    }
    let set = read_programs(&programs_path)?;
    let expected = certificate::all(&set, manifest.comm, manifest.memory.as_ref(), &hash)
        .map_err(|e| fail(format!("the plan in {} does not verify: {e}", programs_path.display())))?;
    if expected.len() != manifest.certificates.len() {
        return Err(fail("the manifest lists other certificates than the plan needs".into()));
    }
    for (entry, (file, property, expect, text)) in manifest.certificates.iter().zip(&expected) {
        let path = dir.join("proof").join(&entry.file);
        let on_disk = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if entry.file != *file || entry.property != *property || entry.expect != *expect {
            return Err(fail(format!("manifest entry {} does not describe the plan's certificate", entry.file)));
        }
        if on_disk != *text || certificate::sha256(on_disk.as_bytes()) != entry.sha256 {
            return Err(fail(format!("{} is not the certificate of this plan (tampered or stale)", path.display())));
        }
        let started = std::time::Instant::now();
        let run = std::process::Command::new(z3).arg("-smt2").arg(&path).output().map_err(|e| Failure {
            code: 2,
            message: format!(
                "error: cannot run {z3}: {e}\n  = help: install the z3 binary (Debian: apt-get install z3)\n"
            ),
        })?;
        let answer = String::from_utf8_lossy(&run.stdout).lines().next().unwrap_or("").trim().to_owned();
        if answer != entry.expect {
            return Err(fail(format!("z3 answers \"{answer}\" on {}, expected \"{}\"", path.display(), entry.expect)));
        }
        println!("ok  {} ({property}: z3 says {answer}, {:.2} s)", path.display(), started.elapsed().as_secs_f64());
    }
    println!("all certificates of {} hold", dir.display());
    Ok(())
}

fn run_simulate(programs: &Path, spec_path: Option<&Path>, out: Option<&Path>, json: bool) -> Result<(), Failure> {
    let set = read_programs(programs)?;
    let layout = set
        .resolved_layout()
        .ok_or_else(|| plan_failure(&programs.display().to_string(), PlanError::NoLayout(set.schedule.clone())))?;
    let (costs, memory) = match spec_path {
        Some(p) => {
            let spec = spec_for_programs(p, programs, &set, true)?;
            (spec.costs, spec.memory)
        }
        None => (CostModel::uniform(layout.stages, 1.0, 2.0, 1.0, 3.0, 0.0), None),
    };
    let (_, sim, report): (_, Simulation, Report) = lower_and_simulate(&set, &costs, memory.as_ref())
        .map_err(|e| plan_failure(&programs.display().to_string(), e))?;
    if let Some(out) = out {
        let title = format!("{} ({})", set.schedule, programs.display());
        write_all(
            out,
            &[
                ("report.json", report_json(&report)),
                ("schedule.svg", svg::render(&set, &sim, &title)),
                ("trace.json", trace::render(&set, &sim).to_string()),
            ],
        )?;
    }
    print_result(&report, json);
    Ok(())
}

fn print_result(report: &Report, json: bool) {
    if json {
        println!("{}", report_json(report));
    } else {
        print!("{}", report.summary());
    }
}

fn report_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_default()
}

/// The interchange format with one event per line: compact, and diffs stay readable.
fn programs_json(set: &ProgramSet) -> String {
    let mut s = String::from("{\n");
    s.push_str(&format!("  \"schedule\": {},\n", serde_json::Value::from(set.schedule.as_str())));
    s.push_str(&format!("  \"ranks\": {},\n  \"chunks\": {},\n", set.ranks, set.chunks));
    if let Some(layout) = &set.layout {
        s.push_str(&format!("  \"layout\": {},\n", serde_json::to_string(layout).unwrap_or_default()));
    }
    s.push_str("  \"programs\": [\n");
    for (r, program) in set.programs.iter().enumerate() {
        s.push_str("    [\n");
        for (i, e) in program.iter().enumerate() {
            let sep = if i + 1 < program.len() { "," } else { "" };
            s.push_str(&format!("      {}{sep}\n", serde_json::to_string(e).unwrap_or_default()));
        }
        s.push_str(if r + 1 < set.programs.len() { "    ],\n" } else { "    ]\n" });
    }
    s.push_str("  ]\n}\n");
    s
}

/// Writes every file, or none: each goes to a temporary name first, then all are renamed.
/// Names may hold one subdirectory (`proof/deadlock.smt2`).
fn write_all(dir: &Path, files: &[(&str, String)]) -> Result<(), Failure> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let mut staged = Vec::new();
    for (name, contents) in files {
        let target = dir.join(name);
        let parent = target.parent().unwrap_or(dir);
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let file_name = target.file_name().and_then(|f| f.to_str()).unwrap_or("out");
        let tmp = parent.join(format!(".{file_name}.tmp"));
        fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
        staged.push((tmp, target));
    }
    for (tmp, target) in staged {
        fs::rename(&tmp, &target).with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(())
}

/// `experts.json`: the placement, and for each EP GPU the logical expert of each of its
/// slots per layer (what it must hold), plus the dispatch table `log2phy`.
fn experts_json(p: &pipewright_compiler::eplb::Placement, moe: &spec::MoeSpec) -> String {
    let k = moe.params.per_gpu();
    let gpus: Vec<serde_json::Value> = (0..moe.params.gpus)
        .map(|g| {
            let slots: Vec<&[u32]> = p.phy2log.iter().map(|row| &row[g * k..(g + 1) * k]).collect();
            serde_json::json!({"gpu": g, "first_slot": g * k, "experts": slots})
        })
        .collect();
    let mut v = serde_json::to_value(p).unwrap_or_default();
    v["gpus"] = serde_json::Value::from(gpus);
    v["policy"] = serde_json::to_value(moe.policy).unwrap_or_default();
    v["params"] = serde_json::to_value(moe.params).unwrap_or_default();
    v["experts_per_layer"] = serde_json::Value::from(moe.experts);
    v["top_k"] = serde_json::Value::from(moe.top_k);
    v["load"] = serde_json::Value::from(moe.load.as_str());
    v.to_string()
}

fn bad_input(message: String) -> Failure {
    Failure { code: 2, message: format!("error: {message}\n") }
}

fn run_eplb(a: &EplbArgs) -> Result<(), Failure> {
    use pipewright_compiler::eplb::{self, io, migrate, Loads, Params, Policy};
    let input = io::read(&a.input).map_err(bad_input)?;
    let from_file = input.params;
    let pick = |flag: Option<usize>, file: Option<usize>, name: &str| {
        flag.or(file).ok_or_else(|| bad_input(format!("--{name} is needed: {} names no {name}", a.input.display())))
    };
    let params = Params {
        replicas: pick(a.replicas, from_file.map(|p| p.replicas), "replicas")?,
        groups: pick(a.groups, from_file.map(|p| p.groups), "groups")?,
        nodes: pick(a.nodes, from_file.map(|p| p.nodes), "nodes")?,
        gpus: pick(a.gpus, from_file.map(|p| p.gpus), "gpus")?,
    };
    let policy = Policy::from_name(&a.policy).ok_or_else(|| {
        bad_input(format!("unknown policy \"{}\": use deepseek, balanced or balanced-global", a.policy))
    })?;
    let loads = Loads::new(input.rows).map_err(|e| bad_input(format!("{}: {e}", a.input.display())))?;
    let placement = match &a.previous {
        None => eplb::rebalance(&loads, &params, policy),
        Some(prev) => {
            let text = fs::read_to_string(prev).with_context(|| format!("cannot read {}", prev.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad_input(format!("{}: {e}", prev.display())))?;
            let table = v.get("phy2log").or_else(|| v.get("reference").and_then(|r| r.get("phy2log")));
            let phy2log: Vec<Vec<u32>> = table
                .and_then(|t| serde_json::from_value(t.clone()).ok())
                .ok_or_else(|| bad_input(format!("{}: no \"phy2log\" layout", prev.display())))?;
            let opts = migrate::Migration { tolerance: a.tolerance, threshold: a.threshold };
            migrate::rebalance_from(&loads, &params, policy, &phy2log, opts)
        }
    }
    .map_err(|e| bad_input(format!("{}: {e}", a.input.display())))?;

    let mut out = serde_json::to_value(&placement).map_err(|e| bad_input(e.to_string()))?;
    out["policy"] = serde_json::Value::from(a.policy.as_str());
    out["params"] = serde_json::to_value(params).unwrap_or_default();
    let text = serde_json::to_string(&out).unwrap_or_default();
    match &a.output {
        Some(path) => write_all(
            path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")),
            &[(path.file_name().and_then(|n| n.to_str()).unwrap_or("eplb.json"), text)],
        )?,
        None => println!("{text}"),
    }
    eprint!("{}", eplb_summary(&placement, &params));
    Ok(())
}

fn eplb_summary(p: &pipewright_compiler::eplb::Placement, params: &pipewright_compiler::eplb::Params) -> String {
    let layers = p.imbalance.len();
    let mut s = format!(
        "EPLB: {layers} layers, {} replicas on {} GPUs ({} nodes, {} groups)\n",
        params.replicas, params.gpus, params.nodes, params.groups
    );
    s.push_str("layer  imbalance   max load  lower bound     gap\n");
    for l in 0..layers {
        let max = p.gpu_load[l].iter().copied().fold(0.0, f64::max);
        s.push_str(&format!(
            "{l:>5} {:>10.4} {max:>10.1} {:>12.1} {:>6.2}%\n",
            p.imbalance[l],
            p.lower_bound[l],
            100.0 * p.gap[l]
        ));
    }
    let mut worst: Vec<usize> = (0..layers).collect();
    worst.sort_by(|&a, &b| p.imbalance[b].total_cmp(&p.imbalance[a]));
    let names: Vec<String> = worst.iter().take(5).map(|&l| format!("{l} ({:.4})", p.imbalance[l])).collect();
    s.push_str(&format!("worst layers: {}\n", names.join(", ")));
    let mean = p.imbalance.iter().sum::<f64>() / layers.max(1) as f64;
    s.push_str(&format!("mean imbalance {mean:.4}\n"));
    let mut hist: std::collections::BTreeMap<u32, usize> = std::collections::BTreeMap::new();
    for c in p.logcnt.iter().flatten() {
        *hist.entry(*c).or_default() += 1;
    }
    let h: Vec<String> = hist.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    s.push_str(&format!("replicas per expert (count: experts over all layers): {}\n", h.join(", ")));
    if let Some(m) = p.moved_slots {
        let total = params.replicas * layers;
        s.push_str(&format!("moved slots: {m} of {total} ({:.1}%)\n", 100.0 * m as f64 / total.max(1) as f64));
    }
    s
}

fn run_suite(dir: &Path, json: Option<&Path>, time_limit: Option<f64>) -> Result<(), Failure> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read suite directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    if paths.is_empty() {
        return Err(bad_input(format!("{} holds no .toml specs", dir.display())));
    }
    // Natural order: profile, then ranks, then microbatches.
    paths.sort_by_key(|p| {
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let nums: Vec<u32> = stem.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
        (stem.split('-').next().unwrap_or("").to_owned(), nums)
    });
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for path in &paths {
        let mut spec = read_spec(path)?;
        if let Some(t) = time_limit {
            spec.optimize.get_or_insert_with(Default::default).time_limit = t;
        }
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match pipewright_compiler::suite::run(&spec, &name) {
            Ok(row) => {
                eprintln!("{name}: {:.2} (lower bound {:.2}) in {:.2} s", row.optimized, row.lower_bound, row.seconds);
                rows.push(row);
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                failed.push(format!("{}: {e}", path.display()));
            }
        }
    }
    print!("{}", pipewright_compiler::suite::markdown(&rows));
    if let Some(j) = json {
        let text = serde_json::to_string_pretty(&rows).unwrap_or_default();
        fs::write(j, text).with_context(|| format!("cannot write {}", j.display()))?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: 1,
            message: format!("error: {} suite specs failed:\n{}\n", failed.len(), failed.join("\n")),
        })
    }
}
