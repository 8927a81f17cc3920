//! Golden tests against DeepSeek's DualPipe/DualPipeV reference programs
//! (`$DUALPIPE_FIXTURES`, default `../shared/fixtures/dualpipe`): `pipewright compile`
//! reproduces every program op for op, and the simulator every `expected` block.

mod common;

use pipewright_compiler::cost::CostModel;
use pipewright_compiler::ir::ProgramSet;
use pipewright_compiler::lower_and_simulate;
use serde_json::Value;

fn fixtures() -> Vec<(String, Value)> {
    let dir = common::fixture_dir("DUALPIPE_FIXTURES", "dualpipe");
    common::json_files(&dir)
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), serde_json::from_str(&text).unwrap())
        })
        .collect()
}

#[test]
fn compile_reproduces_every_reference_program() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, fx) in fixtures() {
        let spec = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &spec,
            format!(
                "[pipeline]\nschedule = \"{}\"\nranks = {}\nmicrobatches = {}\n",
                fx["schedule"].as_str().unwrap(),
                fx["ranks"],
                fx["chunks"]
            ),
        )
        .unwrap();
        let out = tmp.path().join(&name);
        let run = common::bin().arg("compile").arg(&spec).arg("-o").arg(&out).output().unwrap();
        assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));
        let got: Value = serde_json::from_str(&std::fs::read_to_string(out.join("programs.json")).unwrap()).unwrap();
        assert_eq!(got["programs"], fx["programs"], "{name}: programs differ from the reference");
        assert_eq!(got["ranks"], fx["ranks"], "{name}");
        assert_eq!(got["chunks"], fx["chunks"], "{name}");
    }
}

#[test]
fn simulator_reproduces_every_expected_block() {
    let mut checked = 0;
    for (name, fx) in fixtures() {
        let set: ProgramSet = serde_json::from_value(fx.clone()).unwrap();
        let stages = set.resolved_layout().unwrap().stages;
        for exp in fx["expected"].as_array().unwrap() {
            let c = &exp["costs"];
            let g = |k: &str| c[k].as_f64().unwrap();
            let costs = CostModel::uniform(stages, g("F"), g("B"), g("W"), g("FB"), g("p2p"));
            let (_, sim, _) = lower_and_simulate(&set, &costs, None).unwrap();
            let close = |a: f64, b: &Value| (a - b.as_f64().unwrap()).abs() <= 1e-6;
            assert!(
                close(sim.makespan, &exp["makespan"]),
                "{name} {c}: makespan {} vs {}",
                sim.makespan,
                exp["makespan"]
            );
            let want_idle = exp["idle"].as_array().unwrap();
            let want_pif = exp["peak_in_flight"].as_array().unwrap();
            assert_eq!(sim.ranks.len(), want_idle.len(), "{name}");
            for (r, st) in sim.ranks.iter().enumerate() {
                assert!(close(st.idle, &want_idle[r]), "{name} {c}: rank {r} idle {} vs {}", st.idle, want_idle[r]);
                assert_eq!(
                    u64::from(st.peak_in_flight),
                    want_pif[r].as_u64().unwrap(),
                    "{name} {c}: rank {r} in flight"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "fixtures carry no expected blocks");
}

#[test]
fn simulate_command_reads_fixture_files_as_they_are() {
    let dir = common::fixture_dir("DUALPIPE_FIXTURES", "dualpipe");
    let file = common::json_files(&dir).into_iter().next().unwrap();
    let run = common::bin().arg("simulate").arg(&file).arg("--json").output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert!(report["makespan"].as_f64().unwrap() > 0.0);
}
