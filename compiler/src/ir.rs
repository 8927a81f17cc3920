//! The Schedule IR: one ordered program per rank, and its JSON interchange format.
//!
//! The format is the one of DeepSeek's DualPipe fixtures (`fixtures/dualpipe/README.md`),
//! extended with an optional `layout` that names, for every rank, which model stage each of
//! its modules (`dir`) holds. Fixture files, which have no layout, stay valid: the layout
//! of the families is derived from the schedule name ([`Layout::for_family`]).
//!
//! Identities used throughout the compiler:
//! - a *module* is `(rank, dir)`; it holds one stage of one pipe;
//! - a *pipe* is one stream of microbatches through stages `0..stages` (DualPipe has two,
//!   entering at opposite ends; every other family has one);
//! - a *unit* of work is `(kind, pipe, stage, mb)`, with kind F, B, I or W.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A module and a microbatch: what one compute op works on.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Default)]
pub struct Chunk {
    /// Module index on the rank.
    pub dir: u32,
    /// Microbatch number, counted within the module's pipe.
    pub mb: u32,
}

/// The kind of one p2p operation.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum CommKind {
    /// Send a forward activation to the next stage.
    SendF,
    /// Receive a forward activation from the previous stage.
    RecvF,
    /// Send an input gradient to the previous stage.
    SendB,
    /// Receive an output gradient from the next stage.
    RecvB,
}

impl CommKind {
    /// Whether this op sends.
    pub fn is_send(self) -> bool {
        matches!(self, CommKind::SendF | CommKind::SendB)
    }
    /// The kind of the op that matches this one on the peer.
    pub fn partner(self) -> CommKind {
        match self {
            CommKind::SendF => CommKind::RecvF,
            CommKind::RecvF => CommKind::SendF,
            CommKind::SendB => CommKind::RecvB,
            CommKind::RecvB => CommKind::SendB,
        }
    }
    /// The name used in the interchange format.
    pub fn name(self) -> &'static str {
        match self {
            CommKind::SendF => "send_f",
            CommKind::RecvF => "recv_f",
            CommKind::SendB => "send_b",
            CommKind::RecvB => "recv_b",
        }
    }
}

/// One p2p operation inside a COMM batch.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CommOp {
    /// What is transferred, and in which direction.
    pub kind: CommKind,
    /// The other rank.
    pub peer: u32,
    /// The module on *this* rank that produced (send) or will consume (recv) the payload.
    pub dir: u32,
    /// Microbatch number within the module's pipe.
    pub mb: u32,
}

/// One event of a rank's program.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[serde(tag = "op")]
pub enum Event {
    /// Forward of one microbatch through one module.
    F { dir: u32, mb: u32 },
    /// Full backward (input and weight gradients).
    B { dir: u32, mb: u32 },
    /// Backward for inputs only; its weight gradient is deferred to a later W.
    I { dir: u32, mb: u32 },
    /// The deferred weight gradient of an earlier I.
    W { dir: u32, mb: u32 },
    /// A forward and a full backward of different microbatches, run overlapped.
    FB { f: Chunk, b: Chunk },
    /// One batch of p2p ops, issued together (one NCCL group).
    #[serde(rename = "COMM")]
    Comm { ops: Vec<CommOp> },
}

/// The kind of one unit of compute work.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum UnitKind {
    F,
    B,
    I,
    W,
}

impl UnitKind {
    /// One-letter name.
    pub fn letter(self) -> char {
        match self {
            UnitKind::F => 'F',
            UnitKind::B => 'B',
            UnitKind::I => 'I',
            UnitKind::W => 'W',
        }
    }
}

impl Event {
    /// The compute units of this event, in the order they count (an FB's forward first).
    pub fn units(&self) -> Vec<(UnitKind, Chunk)> {
        match *self {
            Event::F { dir, mb } => vec![(UnitKind::F, Chunk { dir, mb })],
            Event::B { dir, mb } => vec![(UnitKind::B, Chunk { dir, mb })],
            Event::I { dir, mb } => vec![(UnitKind::I, Chunk { dir, mb })],
            Event::W { dir, mb } => vec![(UnitKind::W, Chunk { dir, mb })],
            Event::FB { f, b } => vec![(UnitKind::F, f), (UnitKind::B, b)],
            Event::Comm { .. } => vec![],
        }
    }

    /// Whether this event is a COMM batch.
    pub fn is_comm(&self) -> bool {
        matches!(self, Event::Comm { .. })
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::F { dir, mb } => write!(f, "F{dir}.{mb}"),
            Event::B { dir, mb } => write!(f, "B{dir}.{mb}"),
            Event::I { dir, mb } => write!(f, "I{dir}.{mb}"),
            Event::W { dir, mb } => write!(f, "W{dir}.{mb}"),
            Event::FB { f: fw, b } => write!(f, "F{}.{}+B{}.{}", fw.dir, fw.mb, b.dir, b.mb),
            Event::Comm { ops } => {
                write!(f, "[")?;
                for (i, op) in ops.iter().enumerate() {
                    if i > 0 {
                        write!(f, " ")?;
                    }
                    let arrow = if op.kind.is_send() { '>' } else { '<' };
                    let what = match op.kind {
                        CommKind::SendF | CommKind::RecvF => 'f',
                        CommKind::SendB | CommKind::RecvB => 'b',
                    };
                    write!(f, "{arrow}{}{what}{}.{}", op.peer, op.dir, op.mb)?;
                }
                write!(f, "]")
            }
        }
    }
}

/// Which stage of which pipe a module holds.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct StageRef {
    /// The pipe (stream of microbatches); 0 except in DualPipe.
    pub pipe: u32,
    /// The stage within that pipe, 0 = where microbatches enter.
    pub stage: u32,
}

/// Placement of stages on ranks: the interchange format's extension over the fixtures.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct Layout {
    /// Number of pipes (streams of microbatches).
    pub pipes: u32,
    /// Number of stages of each pipe.
    pub stages: u32,
    /// Number of microbatches entering each pipe.
    pub microbatches: u32,
    /// `modules[rank][dir]`: what module `dir` of `rank` holds.
    pub modules: Vec<Vec<StageRef>>,
    /// Pipes whose stage `s` shares parameters with stage `s` of pipe 0, so that their
    /// gradients must be summed once per step (DualPipe's mirrored copies). Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrored_pipes: Vec<u32>,
}

impl Layout {
    /// The layout a family implies, or `None` when the name does not fix one.
    ///
    /// `chunks` is the interchange file's microbatch count (DualPipe: both directions).
    pub fn for_family(schedule: &str, ranks: u32, chunks: u32, modules_per_rank: u32) -> Option<Layout> {
        let n = ranks;
        let layout = match schedule {
            "dualpipe" => Layout {
                pipes: 2,
                stages: n,
                microbatches: chunks / 2,
                modules: (0..n)
                    .map(|r| vec![StageRef { pipe: 0, stage: r }, StageRef { pipe: 1, stage: n - 1 - r }])
                    .collect(),
                mirrored_pipes: vec![1],
            },
            "dualpipev" | "zb-v" => Layout {
                pipes: 1,
                stages: 2 * n,
                microbatches: chunks,
                modules: (0..n)
                    .map(|r| vec![StageRef { pipe: 0, stage: r }, StageRef { pipe: 0, stage: 2 * n - 1 - r }])
                    .collect(),
                mirrored_pipes: vec![],
            },
            "gpipe" | "1f1b" | "zb-h1" | "interleaved-1f1b" => {
                let v = modules_per_rank.max(1);
                Layout {
                    pipes: 1,
                    stages: n * v,
                    microbatches: chunks,
                    modules: (0..n).map(|r| (0..v).map(|c| StageRef { pipe: 0, stage: c * n + r }).collect()).collect(),
                    mirrored_pipes: vec![],
                }
            }
            _ => return None,
        };
        Some(layout)
    }

    /// Checks that every module names an existing pipe and stage and that every stage of
    /// every pipe is held exactly once.
    pub fn check(&self) -> Result<(), String> {
        if self.pipes as u64 * self.stages as u64 > 1 << 24 {
            return Err(format!("{} pipes × {} stages is too large", self.pipes, self.stages));
        }
        let mut held = vec![0u32; (self.pipes * self.stages) as usize];
        for (r, mods) in self.modules.iter().enumerate() {
            for (d, m) in mods.iter().enumerate() {
                if m.pipe >= self.pipes || m.stage >= self.stages {
                    return Err(format!(
                        "rank {r} module {d} holds pipe {} stage {}, outside the layout's {} pipes × {} stages",
                        m.pipe, m.stage, self.pipes, self.stages
                    ));
                }
                held[(m.pipe * self.stages + m.stage) as usize] += 1;
            }
        }
        if let Some(i) = held.iter().position(|&n| n != 1) {
            let (p, st) = (i as u32 / self.stages.max(1), i as u32 % self.stages.max(1));
            return Err(format!("pipe {p} stage {st} is held by {} modules (exactly one is required)", held[i]));
        }
        Ok(())
    }

    /// The stage module `dir` of `rank` holds, if both exist.
    pub fn module(&self, rank: u32, dir: u32) -> Option<StageRef> {
        self.modules.get(rank as usize)?.get(dir as usize).copied()
    }

    /// Where stage `stage` of `pipe` lives: `(rank, dir)`.
    pub fn locate(&self, pipe: u32, stage: u32) -> Option<(u32, u32)> {
        let want = StageRef { pipe, stage };
        self.modules
            .iter()
            .enumerate()
            .find_map(|(r, mods)| mods.iter().position(|m| *m == want).map(|d| (r as u32, d as u32)))
    }
}

/// A set of per-rank programs: what `compile` writes to `programs.json`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct ProgramSet {
    /// Family name, or "custom".
    pub schedule: String,
    /// Number of ranks.
    pub ranks: u32,
    /// Total number of microbatches (DualPipe: both directions together).
    pub chunks: u32,
    /// Stage placement. Optional on input for the named families.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// `programs[rank]`: the rank's events in program order.
    pub programs: Vec<Vec<Event>>,
}

impl ProgramSet {
    /// The explicit layout, or the one the schedule's family implies.
    pub fn resolved_layout(&self) -> Option<Layout> {
        if let Some(l) = &self.layout {
            return Some(l.clone());
        }
        let modules = self
            .programs
            .iter()
            .flat_map(|p| p.iter())
            .flat_map(|e| match e {
                Event::Comm { ops } => ops.iter().map(|o| o.dir).collect::<Vec<_>>(),
                other => other.units().iter().map(|(_, c)| c.dir).collect(),
            })
            .max()
            .map_or(1, |d| d + 1);
        Layout::for_family(&self.schedule, self.ranks, self.chunks, modules)
    }
}
