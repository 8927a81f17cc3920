//! ZB-V, from "Pipeline Parallelism with Controllable Memory" (Qi et al., NeurIPS 2024), in
//! the order torch.distributed.pipelining's `ScheduleZBVZeroBubble` runs.
//!
//! Rank r holds stages r (chunk 0, outgoing leg) and 2·PP−1−r (chunk 1, returning leg).
//! Warm-up: 2(PP−r)−1 forwards of chunk 0, r pairs (F chunk 1, F chunk 0), PP−r triples
//! (F, I, W of chunk 1); steady state: F I W of chunk 0 then of chunk 1; cool-down: r pairs
//! of I's, PP−r (I, W) of chunk 0, then the remaining W's. Needs m ≥ 2·PP−1. Zero bubble
//! when F = I = W; activations of PP microbatches of one stage.

use crate::ir::Event;

/// The compute order of `rank`.
pub fn order(ranks: u32, rank: u32, m: u32) -> Vec<Event> {
    let mut ops = Vec::new();
    let (mut f0, mut f1, mut b0, mut b1) = (0, 0, 0, 0);
    let f = |dir, mb| Event::F { dir, mb };
    for _ in 0..2 * (ranks - rank) - 1 {
        ops.push(f(0, f0));
        f0 += 1;
    }
    for _ in 0..rank {
        ops.push(f(1, f1));
        f1 += 1;
        ops.push(f(0, f0));
        f0 += 1;
    }
    for _ in 0..ranks - rank {
        ops.extend([f(1, f1), Event::I { dir: 1, mb: b1 }, Event::W { dir: 1, mb: b1 }]);
        f1 += 1;
        b1 += 1;
    }
    while f1 < f0 || f0 < m {
        if f0 < m {
            ops.push(f(0, f0));
            f0 += 1;
        }
        ops.extend([Event::I { dir: 0, mb: b0 }, Event::W { dir: 0, mb: b0 }]);
        b0 += 1;
        ops.extend([f(1, f1), Event::I { dir: 1, mb: b1 }, Event::W { dir: 1, mb: b1 }]);
        f1 += 1;
        b1 += 1;
    }
    let (mut w0, mut w1) = (b0, b1);
    for _ in 0..rank {
        ops.extend([Event::I { dir: 0, mb: b0 }, Event::I { dir: 1, mb: b1 }]);
        b0 += 1;
        b1 += 1;
    }
    for _ in 0..ranks - rank {
        ops.extend([Event::I { dir: 0, mb: b0 }, Event::W { dir: 0, mb: w0 }]);
        b0 += 1;
        w0 += 1;
    }
    ops.extend((w1..b1).map(|mb| Event::W { dir: 1, mb }));
    w1 = b1;
    ops.extend((w0..b0).map(|mb| Event::W { dir: 0, mb }));
    debug_assert_eq!(w1, m);
    ops
}
