//! `compile` and `suite`: specs in, verified plan directories out (what `compile` writes,
//! and nothing a runtime would execute unless the verifier accepts it).

use super::{bad_input, plan_failure, Failure};
use crate::eplb::experts_json;
use anyhow::Context as _;
use pipewright_compiler::ir::ProgramSet;
use pipewright_compiler::render::{svg, text, trace};
use pipewright_compiler::report::Report;
use pipewright_compiler::{compile_with, spec, verify, CompileError};
use std::fs;
use std::path::{Path, PathBuf};

pub(crate) fn read_spec(path: &Path) -> Result<spec::Spec, Failure> {
    let source = fs::read_to_string(path).with_context(|| format!("cannot read spec {}", path.display()))?;
    let name = path.display().to_string();
    let mut spec = spec::parse(&name, &source).map_err(|e| Failure { code: 2, message: e.render() })?;
    let base = path.parent().unwrap_or(Path::new("."));
    spec::load_moe(&mut spec, &name, &source, base).map_err(|e| Failure { code: 2, message: e.render() })?;
    spec::load_costs(&mut spec, &name, &source, base).map_err(|e| Failure { code: 2, message: e.render() })?;
    Ok(spec)
}

pub(crate) fn run_compile(
    spec_path: &Path,
    out: &Path,
    json: bool,
    show_text: bool,
    optimize: bool,
) -> Result<(), Failure> {
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
        let mut plan =
            pipewright_compiler::emit::emit_with(&compiled.programs, model, training, hashes, comm).map_err(|e| {
                Failure { code: 2, message: format!("error: emitting the plan of {}: {e}\n", spec_path.display()) }
            })?;
        // Planned under costs measured with this transport: the runtime's default for it.
        plan.transport = compiled.spec.costs.transport;
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

pub(crate) fn run_suite(dir: &Path, json: Option<&Path>, time_limit: Option<f64>) -> Result<(), Failure> {
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

pub(crate) fn print_result(report: &Report, json: bool) {
    if json {
        println!("{}", report_json(report));
    } else {
        print!("{}", report.summary());
    }
}

pub(crate) fn report_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_default()
}

/// The interchange format with one event per line: compact, and diffs stay readable.
pub(crate) fn programs_json(set: &ProgramSet) -> String {
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
pub(crate) fn write_all(dir: &Path, files: &[(&str, String)]) -> Result<(), Failure> {
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
