//! Chrome/Perfetto trace (`trace.json`) of a simulated timeline.
//!
//! One process; per rank a compute track (tid = rank) and a p2p track (tid = 10000 + rank),
//! and, when memory is modelled, a counter track "rank r activation bytes" with the
//! memory timeline. One cost unit is shown as one millisecond (1000 µs of trace time).

use super::class;
use crate::ir::{Event, ProgramSet};
use crate::sim::Simulation;
use serde_json::{json, Value};

/// Trace time per cost unit, in microseconds.
pub const US_PER_UNIT: f64 = 1000.0;

/// The trace as a JSON value.
pub fn render(set: &ProgramSet, sim: &Simulation) -> Value {
    let mut events = Vec::new();
    for r in 0..set.ranks {
        events.push(json!({"ph": "M", "name": "thread_name", "pid": 0, "tid": r, "args": {"name": format!("rank {r} compute")}}));
        events.push(json!({"ph": "M", "name": "thread_name", "pid": 0, "tid": 10000 + r, "args": {"name": format!("rank {r} p2p")}}));
        events.push(json!({"ph": "M", "name": "thread_sort_index", "pid": 0, "tid": r, "args": {"sort_index": 2 * r}}));
        events.push(json!({"ph": "M", "name": "thread_sort_index", "pid": 0, "tid": 10000 + r, "args": {"sort_index": 2 * r + 1}}));
    }
    for (r, (program, spans)) in set.programs.iter().zip(&sim.timeline).enumerate() {
        for (i, (e, sp)) in program.iter().zip(spans).enumerate() {
            let tid = if e.is_comm() { 10000 + r } else { r };
            let args = match e {
                Event::Comm { ops } => json!({"event": i, "ops": ops}),
                _ => json!({"event": i}),
            };
            events.push(json!({
                "name": e.to_string(),
                "cat": class(e),
                "ph": "X",
                "pid": 0,
                "tid": tid,
                "ts": sp.start * US_PER_UNIT,
                "dur": (sp.end - sp.start) * US_PER_UNIT,
                "args": args,
            }));
        }
    }
    for (r, timeline) in sim.memory.iter().enumerate() {
        for &(t, bytes) in timeline {
            events.push(json!({
                "name": format!("rank {r} activation bytes"),
                "ph": "C",
                "pid": 0,
                "ts": t * US_PER_UNIT,
                "args": {"bytes": bytes},
            }));
        }
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"schedule": set.schedule, "makespan": sim.makespan}})
}
