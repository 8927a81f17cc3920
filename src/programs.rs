//! Commands on programs and plans already written: `verify`, `check` (z3 on the
//! certificates), `simulate` and `export-torch`.

use super::{bad_input, plan_failure, Failure};
use crate::compile::{print_result, read_spec, report_json, write_all};
use anyhow::Context as _;
use pipewright_compiler::cost::CostModel;
use pipewright_compiler::dag::PlanError;
use pipewright_compiler::ir::ProgramSet;
use pipewright_compiler::render::{svg, trace};
use pipewright_compiler::report::Report;
use pipewright_compiler::sim::Simulation;
use pipewright_compiler::{lower_and_simulate, spec, verify};
use std::fs;
use std::path::Path;

pub(crate) fn read_programs(programs: &Path) -> Result<ProgramSet, Failure> {
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
pub(crate) fn spec_for_programs(
    path: &Path,
    programs: &Path,
    set: &ProgramSet,
    need_stages: bool,
) -> Result<spec::Spec, Failure> {
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

pub(crate) fn run_verify(
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
        // PyTorch's runtime issues each p2p op on its own, after the whole op before it
        // (its backward computes both gradients at once), and only consumers wait.
        None if torch => (pipewright_compiler::cost::CommMode::AsyncInOrder, None),
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

pub(crate) fn run_check(dir: &Path, z3: &str) -> Result<(), Failure> {
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

pub(crate) fn run_simulate(
    programs: &Path,
    spec_path: Option<&Path>,
    out: Option<&Path>,
    json: bool,
) -> Result<(), Failure> {
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

pub(crate) fn run_export_torch(programs: &Path, output: Option<&Path>) -> Result<(), Failure> {
    let set = read_programs(programs)?;
    let csv =
        pipewright_compiler::torch::export(&set).map_err(|e| bad_input(format!("{}: {e}", programs.display())))?;
    match output {
        Some(path) => fs::write(path, csv).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{csv}"),
    }
    Ok(())
}
