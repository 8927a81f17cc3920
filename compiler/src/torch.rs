//! torch.distributed.pipelining schedules: import of `_dump_csv` files and export of any
//! single-pipe program set to that format.
//!
//! A file has one row per rank and one action per cell (empty cells are bubbles):
//! `{stage}{F|I|W|B}{mb}`, `{stage}{SEND_F|RECV_F|SEND_B|RECV_B}{mb}`,
//! `({s}F{m};{s}B{m})OVERLAP_F_B`, and actions pipewright does not model because they use
//! other communicators (`UNSHARD`, `RESHARD`, `REDUCE_GRAD`, `WAIT_REDUCE_GRAD`) or only
//! wait for a send to finish (`WAIT_SEND_F`, `WAIT_SEND_B`).
//!
//! The stages a row names are the stages of that rank (sorted: module `dir` 0 is the
//! lowest). A RECV names the stage that consumes the value, a SEND the stage that produced
//! it. Imported programs are meant to be verified under the semantics PyTorch's runtime has:
//! each p2p op is its own batch on the group's one communicator (one FIFO per rank pair),
//! and receives are waited for by their consumers — pipewright's `comm = "async"`.
//! Compute-only files get communication placed as PyTorch's own pass does, each receive
//! where a global simulation has issued its send ([`crate::families::comm::lockstep`]).

use crate::families::comm;
use crate::ir::{Chunk, CommKind, CommOp, Event, Layout, ProgramSet, StageRef};
use std::collections::BTreeSet;
use thiserror::Error;

/// A malformed torch CSV file.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TorchError {
    #[error("line {line}, cell {cell}: cannot read action \"{action}\"")]
    Action { line: usize, cell: usize, action: String },
    #[error("stage {stage} appears on rank {first} and on rank {second}")]
    StageTwice { stage: u32, first: u32, second: u32 },
    #[error("stage {0} is on no rank")]
    StageMissing(u32),
    #[error("the file has no actions")]
    Empty,
    #[error("cannot export {0}: the torch format has one pipe, this program set has several (DualPipe)")]
    Pipes(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Compute(char, u32, u32),
    Overlap((u32, u32), (u32, u32)),
    P2p(CommKind, u32, u32),
    Ignored,
}

fn split_stage(s: &str) -> Option<(u32, &str)> {
    let digits = s.find(|c: char| !c.is_ascii_digit())?;
    Some((s[..digits].parse().ok()?, &s[digits..]))
}

fn parse_action(cell: &str) -> Option<Action> {
    let cell = cell.trim();
    if let Some(inner) = cell.strip_prefix('(').and_then(|c| c.strip_suffix(")OVERLAP_F_B")) {
        let (f, b) = inner.split_once(';')?;
        let (fs, fr) = split_stage(f)?;
        let (bs, br) = split_stage(b)?;
        return Some(Action::Overlap(
            (fs, fr.strip_prefix('F')?.parse().ok()?),
            (bs, br.strip_prefix('B')?.parse().ok()?),
        ));
    }
    let (stage, rest) = split_stage(cell)?;
    for (name, kind) in [
        ("SEND_F", CommKind::SendF),
        ("RECV_F", CommKind::RecvF),
        ("SEND_B", CommKind::SendB),
        ("RECV_B", CommKind::RecvB),
    ] {
        if let Some(mb) = rest.strip_prefix(name) {
            return Some(Action::P2p(kind, stage, mb.parse().ok()?));
        }
    }
    for ignored in ["WAIT_SEND_F", "WAIT_SEND_B", "UNSHARD", "RESHARD", "REDUCE_GRAD", "WAIT_REDUCE_GRAD"] {
        if rest.starts_with(ignored) {
            return Some(Action::Ignored);
        }
    }
    let kind = rest.chars().next().filter(|c| "FIWB".contains(*c))?;
    Some(Action::Compute(kind, stage, rest[1..].parse().ok()?))
}

/// Reads a `_dump_csv` file into a program set (`schedule` names it in messages).
pub fn import(schedule: &str, text: &str) -> Result<ProgramSet, TorchError> {
    let mut rows: Vec<Vec<Action>> = Vec::new();
    for (l, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut row = Vec::new();
        for (c, cell) in line.split(',').enumerate() {
            if cell.trim().is_empty() {
                continue; // a deliberate bubble
            }
            row.push(parse_action(cell).ok_or_else(|| TorchError::Action {
                line: l + 1,
                cell: c + 1,
                action: cell.into(),
            })?);
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(TorchError::Empty);
    }
    // Stages and microbatches each row names.
    let mut stages_of: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); rows.len()];
    let mut max_mb = 0;
    for (r, row) in rows.iter().enumerate() {
        for a in row {
            match *a {
                Action::Compute(_, s, m) | Action::P2p(_, s, m) => {
                    stages_of[r].insert(s);
                    max_mb = max_mb.max(m);
                }
                Action::Overlap((fs, fm), (bs, bm)) => {
                    stages_of[r].extend([fs, bs]);
                    max_mb = max_mb.max(fm).max(bm);
                }
                Action::Ignored => {}
            }
        }
    }
    let stages = stages_of.iter().flatten().max().map_or(0, |s| s + 1);
    let mut owner = vec![None; stages as usize];
    for (r, set) in stages_of.iter().enumerate() {
        for &s in set {
            if let Some(first) = owner[s as usize] {
                return Err(TorchError::StageTwice { stage: s, first, second: r as u32 });
            }
            owner[s as usize] = Some(r as u32);
        }
    }
    if let Some(s) = owner.iter().position(Option::is_none) {
        return Err(TorchError::StageMissing(s as u32));
    }
    let modules: Vec<Vec<StageRef>> =
        stages_of.iter().map(|set| set.iter().map(|&stage| StageRef { pipe: 0, stage }).collect()).collect();
    // Microbatches: the most distinct forwards any stage runs (not the largest number named:
    // a row naming a microbatch that does not exist is the verifier's to report).
    let mut forwards: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); stages as usize];
    for row in &rows {
        for a in row {
            match *a {
                Action::Compute('F', s, m) | Action::Overlap((s, m), _) => {
                    forwards[s as usize].insert(m);
                }
                _ => {}
            }
        }
    }
    let microbatches = forwards.iter().map(BTreeSet::len).max().unwrap_or(0).max(1) as u32;
    let _ = max_mb;
    let layout = Layout { pipes: 1, stages, microbatches, modules, mirrored_pipes: vec![] };
    let dir = |r: usize, s: u32| stages_of[r].iter().position(|&x| x == s).unwrap_or(0) as u32;
    let peer = |s: i64| -> u32 { owner.get(s as usize).copied().flatten().unwrap_or(u32::MAX) };
    let mut has_comm = false;
    let programs: Vec<Vec<Event>> = rows
        .iter()
        .enumerate()
        .map(|(r, row)| {
            row.iter()
                .filter_map(|a| match *a {
                    Action::Compute(k, s, mb) => {
                        let (dir, mb) = (dir(r, s), mb);
                        Some(match k {
                            'F' => Event::F { dir, mb },
                            'B' => Event::B { dir, mb },
                            'I' => Event::I { dir, mb },
                            _ => Event::W { dir, mb },
                        })
                    }
                    Action::Overlap((fs, fm), (bs, bm)) => {
                        Some(Event::FB { f: Chunk { dir: dir(r, fs), mb: fm }, b: Chunk { dir: dir(r, bs), mb: bm } })
                    }
                    Action::P2p(kind, s, mb) => {
                        has_comm = true;
                        let other = match kind {
                            CommKind::SendF => s as i64 + 1,
                            CommKind::RecvF | CommKind::SendB => s as i64 - 1,
                            CommKind::RecvB => s as i64 + 1,
                        };
                        Some(Event::Comm { ops: vec![CommOp { kind, peer: peer(other), dir: dir(r, s), mb }] })
                    }
                    Action::Ignored => None,
                })
                .collect()
        })
        .collect();
    // Like PyTorch's own pass, which posts each receive where a global simulation of the
    // schedule has issued its send: lock-step placement, one op per batch.
    let programs = if has_comm { programs } else { comm::lockstep(&layout, &programs) };
    Ok(ProgramSet {
        schedule: schedule.to_owned(),
        ranks: rows.len() as u32,
        chunks: layout.microbatches,
        layout: Some(layout),
        programs,
    })
}

/// Writes a single-pipe program set as a `_dump_csv` file (one row per rank).
///
/// PyTorch issues every p2p op on its own, so a batch of several ops loses its group
/// atomicity there, and neighbours whose sends cross would block each other on their NCCL
/// streams. A program set with such batches therefore keeps its compute order and gets its
/// communication re-placed as PyTorch's own pass places it ([`comm::lockstep`]): each
/// receive where a global simulation has issued its send, one op per batch.
pub fn export(set: &ProgramSet) -> Result<String, TorchError> {
    let layout = set.resolved_layout().ok_or(TorchError::Empty)?;
    if layout.pipes != 1 {
        return Err(TorchError::Pipes(layout.pipes as usize));
    }
    let grouped = set.programs.iter().flatten().any(|e| matches!(e, Event::Comm { ops } if ops.len() > 1));
    let replaced;
    let set = if grouped {
        let order: Vec<Vec<Event>> =
            set.programs.iter().map(|p| p.iter().filter(|e| !e.is_comm()).cloned().collect()).collect();
        replaced = ProgramSet { programs: comm::lockstep(&layout, &order), ..set.clone() };
        &replaced
    } else {
        set
    };
    let stage = |r: usize, d: u32| layout.modules[r].get(d as usize).map_or(0, |m| m.stage);
    let mut out = String::new();
    for (r, program) in set.programs.iter().enumerate() {
        let mut cells: Vec<String> = Vec::new();
        for e in program {
            match e {
                Event::F { dir, mb } => cells.push(format!("{}F{mb}", stage(r, *dir))),
                Event::B { dir, mb } => cells.push(format!("{}B{mb}", stage(r, *dir))),
                Event::I { dir, mb } => cells.push(format!("{}I{mb}", stage(r, *dir))),
                Event::W { dir, mb } => cells.push(format!("{}W{mb}", stage(r, *dir))),
                Event::FB { f, b } => {
                    cells.push(format!("({}F{};{}B{})OVERLAP_F_B", stage(r, f.dir), f.mb, stage(r, b.dir), b.mb))
                }
                Event::Comm { ops } => {
                    for op in ops {
                        let name = match op.kind {
                            CommKind::SendF => "SEND_F",
                            CommKind::RecvF => "RECV_F",
                            CommKind::SendB => "SEND_B",
                            CommKind::RecvB => "RECV_B",
                        };
                        cells.push(format!("{}{name}{}", stage(r, op.dir), op.mb));
                    }
                }
            }
        }
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    Ok(out)
}
