//! Interleaved 1F1B (Megatron-LM's virtual pipeline), v chunks per rank.
//!
//! Rank r holds stages r, r+PP, …, r+(v−1)·PP (chunk c = module c). Virtual microbatch k
//! runs forward on chunk (k / PP) mod v with microbatch (k / (PP·v))·PP + k mod PP, and
//! backward on chunk v−1−((k / PP) mod v), same microbatch. Warm-up: (PP−r−1)·2 + (v−1)·PP
//! forwards (capped at m·v), then 1F1B, then cool-down. Needs m a multiple of PP.
//! Bubble (PP−1)(F+B)/v; activations PP·(1 + (PP−1)/(PP·v)) microbatches of one stage.

use crate::ir::Event;

fn chunk_and_mb(k: u32, ranks: u32, v: u32, backward: bool) -> (u32, u32) {
    let c = (k / ranks) % v;
    let mb = (k / (ranks * v)) * ranks + k % ranks;
    (if backward { v - 1 - c } else { c }, mb)
}

/// The compute order of `rank`.
pub fn order(ranks: u32, rank: u32, m: u32, v: u32) -> Vec<Event> {
    let total = m * v;
    let warmup = ((ranks - rank - 1) * 2 + (v - 1) * ranks).min(total);
    let fwd = |k: u32| {
        let (dir, mb) = chunk_and_mb(k, ranks, v, false);
        Event::F { dir, mb }
    };
    let bwd = |k: u32| {
        let (dir, mb) = chunk_and_mb(k, ranks, v, true);
        Event::B { dir, mb }
    };
    let mut ops: Vec<Event> = (0..warmup).map(fwd).collect();
    for i in 0..total - warmup {
        ops.push(fwd(warmup + i));
        ops.push(bwd(i));
    }
    ops.extend((total - warmup..total).map(bwd));
    ops
}
