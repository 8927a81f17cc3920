//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod interp;

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture directory: `$VAR` when set, else `../shared/fixtures/<name>` beside the repo.
pub fn fixture_dir(var: &str, name: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| root().join("../shared/fixtures").join(name))
}

/// Every `*.json` file of `dir`, sorted; panics when there is none, so a missing or empty
/// fixture directory fails the test instead of passing vacuously.
pub fn json_files(dir: &std::path::Path) -> Vec<PathBuf> {
    files_with_extension(dir, "json")
}

/// Every `*.<ext>` file of `dir`, sorted; panics when there is none.
pub fn files_with_extension(dir: &std::path::Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read fixture directory {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.{ext} fixture in {}", dir.display());
    files
}

/// A valid (ranks, microbatches) for `family`, from a rank hint `r` ≥ 1 and a spread
/// `extra` (DualPipe gets an even rank count, every family at least its minimum).
pub fn family_size(family: pipewright_compiler::families::Family, r: u32, extra: u32) -> (u32, u32) {
    use pipewright_compiler::families::Family;
    let ranks = if family == Family::DualPipe { 2 * r.div_ceil(2) } else { r };
    let m = match family {
        Family::GPipe => 1 + extra,
        Family::OneFOneB | Family::ZbH1 => ranks + extra,
        Family::Interleaved1F1B => ranks * (1 + extra % 3),
        Family::ZbV => 2 * ranks - 1 + extra,
        Family::DualPipe => 2 * ranks + 2 * (extra / 2),
        Family::DualPipeV => 2 * ranks + extra,
    };
    (ranks, m)
}

/// The pipewright binary.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_pipewright"))
}

/// The node of each group's replicas in one layer's `phy2log`; Err names a group that
/// spans several nodes.
pub fn groups_on_one_node(row: &[u32], experts: usize, groups: usize, nodes: usize) -> Result<(), String> {
    let group = experts / groups;
    let per_node = row.len() / nodes;
    for g in 0..groups {
        let spans: std::collections::BTreeSet<usize> =
            row.iter().enumerate().filter(|(_, &e)| e as usize / group == g).map(|(s, _)| s / per_node).collect();
        if spans.len() != 1 {
            return Err(format!("group {g} spans nodes {spans:?}"));
        }
    }
    Ok(())
}
