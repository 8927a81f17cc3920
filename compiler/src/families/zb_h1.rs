//! ZB-H1 (ZB1P), from "Zero Bubble Pipeline Parallelism" (Qi et al., ICLR 2024).
//!
//! 1F1B with every backward split into I (input gradient, on the critical path) and W
//! (weight gradient, deferrable). Rank r runs 1F1B's warm-up, then F, I and — lagging r
//! microbatches behind the I's — W; the last W's fill the cool-down, where 1F1B leaves
//! ranks idle. The lag keeps at most PP microbatches in flight on every rank, the same
//! peak as 1F1B's rank 0. Bubble (PP−1)(F+B−2W) = (PP−1)(F+I−W) per rank.

use super::one_f_one_b::warmup;
use crate::ir::Event;

/// The compute order of `rank`.
pub fn order(ranks: u32, rank: u32, m: u32) -> Vec<Event> {
    let w = warmup(ranks, rank, m);
    let lag = rank;
    let mut ops: Vec<Event> = (0..w).map(|mb| Event::F { dir: 0, mb }).collect();
    let mut next_w = 0;
    for i in 0..m {
        if i + w < m {
            ops.push(Event::F { dir: 0, mb: i + w });
        }
        ops.push(Event::I { dir: 0, mb: i });
        if i >= lag {
            ops.push(Event::W { dir: 0, mb: next_w });
            next_w += 1;
        }
    }
    ops.extend((next_w..m).map(|mb| Event::W { dir: 0, mb }));
    ops
}
