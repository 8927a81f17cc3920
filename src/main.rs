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
use pipewright_compiler::{compile, lower_and_simulate, spec};
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
    let result = match cli.command {
        Command::Compile { spec, output, json, text } => run_compile(&spec, &output, json, text),
        Command::Simulate { programs, spec, output, json } => {
            run_simulate(&programs, spec.as_deref(), output.as_deref(), json)
        }
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
    spec::parse(&path.display().to_string(), &source).map_err(|e| Failure { code: 2, message: e.render() })
}

fn run_compile(spec_path: &Path, out: &Path, json: bool, show_text: bool) -> Result<(), Failure> {
    let spec = read_spec(spec_path)?;
    let title = format!("{} ({})", spec.family.name(), spec_path.display());
    let compiled = compile(spec).map_err(|e| plan_failure(&format!("compiling {}", spec_path.display()), e))?;
    let files = [
        ("programs.json", programs_json(&compiled.programs)),
        ("report.json", report_json(&compiled.report)),
        ("schedule.svg", svg::render(&compiled.programs, &compiled.simulation, &title)),
        ("trace.json", trace::render(&compiled.programs, &compiled.simulation).to_string()),
    ];
    write_all(out, &files)?;
    print_result(&compiled.report, json);
    if show_text {
        print!("{}", text::render(&compiled.programs, &compiled.simulation));
    }
    if !json {
        println!("wrote {}/{{programs.json, report.json, schedule.svg, trace.json}}", out.display());
    }
    Ok(())
}

fn run_simulate(programs: &Path, spec_path: Option<&Path>, out: Option<&Path>, json: bool) -> Result<(), Failure> {
    let text = fs::read_to_string(programs).with_context(|| format!("cannot read programs {}", programs.display()))?;
    let set: ProgramSet = serde_json::from_str(&text).map_err(|e| Failure {
        code: 2,
        message: format!(
            "error: {}:{}:{}: not a program file: {e}\n  = help: the format is described in README.md, section \"Interchange format\"\n",
            programs.display(),
            e.line(),
            e.column()
        ),
    })?;
    let layout = set
        .resolved_layout()
        .ok_or_else(|| plan_failure(&programs.display().to_string(), PlanError::NoLayout(set.schedule.clone())))?;
    let (costs, memory) = match spec_path {
        Some(p) => {
            let spec = read_spec(p)?;
            if spec.ranks != set.ranks {
                return Err(Failure {
                    code: 2,
                    message: format!(
                        "error: {} is for {} ranks but {} has {} programs\n  = help: simulate with a spec of the same world size\n",
                        p.display(),
                        spec.ranks,
                        programs.display(),
                        set.ranks
                    ),
                });
            }
            if spec.stages() != layout.stages {
                return Err(Failure {
                    code: 2,
                    message: format!(
                        "error: {} describes {} stages but the programs in {} have {}\n  = help: use a spec of the same schedule shape\n",
                        p.display(),
                        spec.stages(),
                        programs.display(),
                        layout.stages
                    ),
                });
            }
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
fn write_all(dir: &Path, files: &[(&str, String)]) -> Result<(), Failure> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let mut staged = Vec::new();
    for (name, contents) in files {
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
        staged.push((tmp, dir.join(name)));
    }
    for (tmp, target) in staged {
        fs::rename(&tmp, &target).with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(())
}
