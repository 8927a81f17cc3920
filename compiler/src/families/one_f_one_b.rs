//! 1F1B (PipeDream-flush, Megatron's non-interleaved schedule).
//!
//! Rank r runs w = min(PP−1−r, m) warm-up forwards, then alternates one forward and one
//! backward, then drains the remaining w backwards. At most PP−r microbatches are in flight
//! on rank r; the bubble is (PP−1)(F+B) per rank. Needs m ≥ PP.

use crate::ir::Event;

/// Warm-up forwards on `rank`.
pub fn warmup(ranks: u32, rank: u32, m: u32) -> u32 {
    (ranks - 1 - rank).min(m)
}

/// The compute order of `rank`.
pub fn order(ranks: u32, rank: u32, m: u32) -> Vec<Event> {
    let w = warmup(ranks, rank, m);
    let mut ops: Vec<Event> = (0..w).map(|mb| Event::F { dir: 0, mb }).collect();
    for i in 0..m - w {
        ops.push(Event::F { dir: 0, mb: w + i });
        ops.push(Event::B { dir: 0, mb: i });
    }
    ops.extend((m - w..m).map(|mb| Event::B { dir: 0, mb }));
    ops
}
