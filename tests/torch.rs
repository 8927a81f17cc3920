//! torch.distributed.pipelining schedules (`$TORCH_FIXTURES`, default
//! `../shared/fixtures/torch`): import and verification under PyTorch's runtime semantics,
//! and export of pipewright's programs to that format.

mod common;

use pipewright_compiler::cost::CommMode;
use pipewright_compiler::families::Family;
use pipewright_compiler::ir::Event;
use pipewright_compiler::torch;
use pipewright_compiler::verify::{verify, Violation};

fn csv_files() -> Vec<std::path::PathBuf> {
    common::files_with_extension(&common::fixture_dir("TORCH_FIXTURES", "torch"), "csv")
}

#[test]
fn every_torch_schedule_is_verified() {
    for path in csv_files() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let set = torch::import(&name, &std::fs::read_to_string(&path).unwrap()).unwrap();
        let v = verify(&set, CommMode::Async, None).unwrap();
        if name == "1F1B-pp4-m8" {
            // This dump is wrong: rank 3 runs forwards of microbatches 1..=8 instead of
            // 0..=7 (and backward 0 without its forward). The verifier must say so.
            let reasons: Vec<String> = v
                .violations
                .iter()
                .filter_map(|x| match x {
                    Violation::Completeness { reason, .. } => Some(reason.clone()),
                    _ => None,
                })
                .collect();
            assert!(reasons.iter().any(|r| r.contains("F(stage 3, mb 0) runs 0 times")), "{reasons:?}");
            assert!(reasons.iter().any(|r| r.contains("microbatch 8")), "{reasons:?}");
        } else {
            assert!(v.ok(), "{name}: {:?}", v.violations);
        }
    }
}

#[test]
fn cli_verifies_torch_csv_with_exit_codes() {
    for path in csv_files() {
        let run = common::bin().args(["verify", "--torch-csv"]).arg(&path).output().unwrap();
        let want = if path.file_stem().is_some_and(|s| s == "1F1B-pp4-m8") { 1 } else { 0 };
        assert_eq!(run.status.code(), Some(want), "{}: {}", path.display(), String::from_utf8_lossy(&run.stderr));
    }
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "0F0,0JUMP1\n").unwrap();
    let run = common::bin().args(["verify", "--torch-csv"]).arg(&bad).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("cell 2"));
}

#[test]
fn exported_programs_read_back_and_verify() {
    for family in
        [Family::GPipe, Family::OneFOneB, Family::Interleaved1F1B, Family::ZbH1, Family::ZbV, Family::DualPipeV]
    {
        for ranks in [2u32, 4] {
            let m = if matches!(family, Family::ZbV | Family::DualPipeV) { 2 * ranks + 1 } else { 2 * ranks };
            let set = family.generate(ranks, m, 2);
            let csv = torch::export(&set).unwrap();
            let back = torch::import("roundtrip", &csv).unwrap();
            // The same compute order; communication one op per batch, placed so that it runs
            // under PyTorch's semantics.
            let compute =
                |p: &[Event]| -> Vec<String> { p.iter().filter(|e| !e.is_comm()).map(|e| e.to_string()).collect() };
            for r in 0..ranks as usize {
                assert_eq!(
                    compute(&back.programs[r]),
                    compute(&set.programs[r]),
                    "{} r{ranks} rank {r}",
                    family.name()
                );
                assert!(back.programs[r].iter().all(|e| !matches!(e, Event::Comm { ops } if ops.len() != 1)));
            }
            let v = verify(&back, CommMode::Async, None).unwrap();
            assert!(v.ok(), "{} r{ranks}: {:?}", family.name(), v.violations);
            // Exporting what was imported changes nothing.
            assert_eq!(torch::export(&back).unwrap(), csv, "{}", family.name());
        }
    }
    // DualPipe has two pipes, which the torch format cannot express.
    assert!(torch::export(&Family::DualPipe.generate(2, 4, 2)).is_err());
}
