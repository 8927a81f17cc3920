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
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read fixture directory {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixture in {}", dir.display());
    files
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
