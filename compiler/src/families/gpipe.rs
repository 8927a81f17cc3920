//! GPipe: every forward, then every backward.
//!
//! Each rank keeps all m microbatches' activations (peak in flight m); bubble (PP−1)(F+B).

use crate::ir::Event;

/// The compute order of any rank (all ranks run the same one).
pub fn order(m: u32) -> Vec<Event> {
    let mut ops: Vec<Event> = (0..m).map(|mb| Event::F { dir: 0, mb }).collect();
    ops.extend((0..m).map(|mb| Event::B { dir: 0, mb }));
    ops
}
