//! Schedule families: each turns (ranks, microbatches) into per-rank programs.
//!
//! | family | stages | constraint | bubble per rank (uniform costs, free p2p) |
//! |---|---|---|---|
//! | gpipe | PP | m ≥ 1 | (PP−1)(F+B) |
//! | 1f1b | PP | m ≥ PP | (PP−1)(F+B) |
//! | interleaved-1f1b | v·PP | m ≥ PP, m % PP = 0, v ≥ 2 | (PP−1)(F+B)/v |
//! | zb-h1 | PP | m ≥ PP | (PP−1)(F+B−2W) |
//! | zb-v | 2·PP | m ≥ 2·PP−1 | 0 when F = I = W |
//! | dualpipe | PP (two pipes) | PP even, m even, m ≥ 2·PP | max (PP/2−1)(FB+B−3W), exact when F = I = W, FB ≥ B |
//! | dualpipev | 2·PP | m ≥ 2·PP | as DualPipe with PP = 2·ranks |
//!
//! DualPipe and DualPipeV follow DeepSeek's reference order exactly ([`dualpipe`]); the
//! others produce a compute order ([`gpipe`], [`one_f_one_b`], [`interleaved`], [`zb_h1`],
//! [`zb_v`]) into which [`comm::insert`] places the p2p batches.

pub mod comm;
pub mod dualpipe;
pub mod gpipe;
pub mod interleaved;
pub mod one_f_one_b;
pub mod zb_h1;
pub mod zb_v;

use crate::ir::{Event, Layout, ProgramSet};
use serde::{Deserialize, Serialize};

/// A schedule family.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Family {
    GPipe,
    OneFOneB,
    Interleaved1F1B,
    ZbH1,
    ZbV,
    DualPipe,
    DualPipeV,
}

/// Why a (ranks, microbatches) pair does not fit a family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeProblem {
    /// The constraint that fails, with the numbers.
    pub message: String,
    /// How to fix it.
    pub help: String,
    /// Whether the rank count (rather than the microbatch count) is at fault.
    pub about_ranks: bool,
}

impl Family {
    /// Every family, in the order of the docs.
    pub const ALL: [Family; 7] = [
        Family::GPipe,
        Family::OneFOneB,
        Family::Interleaved1F1B,
        Family::ZbH1,
        Family::ZbV,
        Family::DualPipe,
        Family::DualPipeV,
    ];
    /// The spec names of [`Family::ALL`].
    pub const NAMES: [&'static str; 7] =
        ["gpipe", "1f1b", "interleaved-1f1b", "zb-h1", "zb-v", "dualpipe", "dualpipev"];

    /// The family named `name` in a spec.
    pub fn from_name(name: &str) -> Option<Family> {
        Self::NAMES.iter().position(|n| *n == name).map(|i| Self::ALL[i])
    }

    /// The spec name.
    pub fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|f| *f == self).unwrap_or(0)]
    }

    /// Modules (stages) each rank holds, when the family fixes it.
    pub fn modules_per_rank(self) -> u32 {
        match self {
            Family::GPipe | Family::OneFOneB | Family::ZbH1 => 1,
            Family::Interleaved1F1B | Family::ZbV | Family::DualPipe | Family::DualPipeV => 2,
        }
    }

    /// Number of stages of one pipe.
    pub fn stages(self, ranks: u32, chunks_per_rank: u32) -> u32 {
        match self {
            Family::GPipe | Family::OneFOneB | Family::ZbH1 | Family::DualPipe => ranks,
            Family::Interleaved1F1B => ranks * chunks_per_rank,
            Family::ZbV | Family::DualPipeV => 2 * ranks,
        }
    }

    /// Checks the family's constraints on ranks and microbatches.
    pub fn check_size(self, ranks: u32, m: u32, _chunks_per_rank: u32) -> Result<(), SizeProblem> {
        let mb = |message: String, help: String| Err(SizeProblem { message, help, about_ranks: false });
        match self {
            Family::GPipe => Ok(()),
            Family::OneFOneB | Family::ZbH1 if m < ranks => mb(
                format!("{} needs microbatches ≥ ranks, got {m} < {ranks}", self.name()),
                format!("use at least {ranks} microbatches: with fewer, the warm-up waits for microbatches that never come (torchtitan #775)"),
            ),
            Family::Interleaved1F1B if m < ranks || m % ranks != 0 => mb(
                format!("interleaved-1f1b needs microbatches to be a multiple of ranks (≥ ranks), got {m} with {ranks} ranks"),
                format!("use a multiple of {ranks}, e.g. {}", ranks * m.div_ceil(ranks).max(1)),
            ),
            Family::ZbV if m + 1 < 2 * ranks => mb(
                format!("zb-v needs microbatches ≥ 2·ranks − 1, got {m} < {}", 2 * ranks - 1),
                format!("use at least {} microbatches", 2 * ranks - 1),
            ),
            Family::DualPipe if ranks % 2 != 0 => Err(SizeProblem {
                message: format!("dualpipe needs an even number of ranks, got {ranks}"),
                help: "use an even rank count, or schedule = \"dualpipev\", which runs on any".into(),
                about_ranks: true,
            }),
            Family::DualPipe if m % 2 != 0 || m < 2 * ranks => mb(
                format!("dualpipe needs an even number of microbatches ≥ 2·ranks, got {m} with {ranks} ranks"),
                format!("use an even count of at least {} (half enter at each end)", 2 * ranks),
            ),
            Family::DualPipeV if m < 2 * ranks => mb(
                format!("dualpipev needs microbatches ≥ 2·ranks, got {m} < {}", 2 * ranks),
                format!("use at least {} microbatches", 2 * ranks),
            ),
            _ => Ok(()),
        }
    }

    /// The programs of this family; the size must have passed [`Family::check_size`].
    pub fn generate(self, ranks: u32, m: u32, chunks_per_rank: u32) -> ProgramSet {
        let v = if self == Family::Interleaved1F1B { chunks_per_rank } else { self.modules_per_rank() };
        let layout = Layout::for_family(self.name(), ranks, m, v).expect("every family has a layout");
        let programs = match self {
            Family::DualPipe | Family::DualPipeV => dualpipe::programs(self == Family::DualPipeV, &layout, ranks, m),
            _ => {
                let order: Vec<Vec<Event>> = (0..ranks)
                    .map(|r| match self {
                        Family::GPipe => gpipe::order(m),
                        Family::OneFOneB => one_f_one_b::order(ranks, r, m),
                        Family::Interleaved1F1B => interleaved::order(ranks, r, m, v),
                        Family::ZbH1 => zb_h1::order(ranks, r, m),
                        _ => zb_v::order(ranks, r, m),
                    })
                    .collect();
                let mut set = ProgramSet {
                    schedule: self.name().to_owned(),
                    ranks,
                    chunks: m,
                    layout: Some(layout.clone()),
                    programs: comm::insert(&layout, &order),
                };
                // Batched placement when it runs (after repair), lock-step otherwise.
                if comm::repair(&mut set).is_some() {
                    return set;
                }
                comm::lockstep(&layout, &order)
            }
        };
        ProgramSet { schedule: self.name().to_owned(), ranks, chunks: m, layout: Some(layout), programs }
    }
}
