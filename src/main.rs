//! `pipewright`: the command-line edge of the compiler.
//!
//! Exit codes: 0 success; 1 the input is well-formed but the schedule cannot run (it
//! deadlocks); 2 unreadable or malformed input (the message names the file, and for specs
//! the line and column).

use clap::{Parser, Subcommand};
use pipewright_compiler::dag::PlanError;
use std::path::PathBuf;
use std::process::ExitCode;

mod compile;
mod eplb;
mod programs;

use compile::{run_compile, run_suite};
use eplb::{run_eplb, EplbArgs};
use programs::{run_check, run_export_torch, run_simulate, run_verify};

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

fn bad_input(message: String) -> Failure {
    Failure { code: 2, message: format!("error: {message}\n") }
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
