//! `profile`: what each op of a plan costs on this machine, measured with CUDA events
//! around every op of eager steps ([`crate::exec::RunOptions::profile`]), turned into
//! - a `[costs]` table for the spec (per stage F, B, W, FB in milliseconds, and the p2p
//!   time), so that the simulator predicts real runs;
//! - the measured per-rank timeline as a Chrome trace (`measured-trace.json`), and, when
//!   the plan directory holds `compile`'s simulated `trace.json`, both in one trace
//!   (`compare-trace.json`) to view side by side;
//! - each rank's compute time per step (its ops, and the step's own work before and after
//!   them): the bubble-free ideal step is the busiest rank's.
//!
//! Per-op durations are medians over the profiled steps after the first (which connects
//! NCCL and warms caches). A p2p batch's time is the fastest batch's duration on the
//! communication stream: most batches also wait for their peer (rendezvous), the fastest
//! comes closest to the transfer itself.

use crate::exec::RunReport;
use pipewright_plan::Plan;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One op as measured on one rank.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct OpTime {
    pub label: String,
    pub kind: String,
    pub stages: Vec<u32>,
    pub stream: u32,
    pub bytes: u64,
    /// Start in the last profiled step, ms from the step's start.
    pub start_ms: f64,
    /// Median duration over the profiled steps, ms.
    pub ms: f64,
}

/// One rank's profile (`rank<r>.json` in the output directory).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RankProfile {
    pub rank: u32,
    /// Median eager step time with timing events, ms.
    pub step_ms: f64,
    /// Sum of the rank's compute: its ops (F, B, I, W, FB) and the step's own work (STEP:
    /// zeroing, data, the accumulation of mirrored gradients, the optimizer), ms; not the
    /// mirror-gradient exchange, which is communication (COMM).
    pub compute_ms: f64,
    pub ops: Vec<OpTime>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The profile of `rank` from a profiled run's report.
pub fn rank_profile(plan: &Plan, rank: u32, report: &RunReport) -> RankProfile {
    let spans = &plan.ranks[rank as usize].ops;
    // Skip the first step (NCCL connects, caches warm) when there are others.
    let steps: &[Vec<(f64, f64)>] =
        if report.op_times.len() > 1 { &report.op_times[1..] } else { &report.op_times[..] };
    let step_times: &[f64] = if report.step_ms.len() > 1 { &report.step_ms[1..] } else { &report.step_ms[..] };
    let ops: Vec<OpTime> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| OpTime {
            label: s.label.clone(),
            kind: s.kind.clone(),
            stages: s.stages.clone(),
            stream: s.stream,
            bytes: s.bytes,
            start_ms: steps.last().and_then(|t| t.get(i)).map_or(f64::NAN, |t| t.0),
            ms: median(steps.iter().filter_map(|t| t.get(i)).map(|t| t.1).collect()),
        })
        .collect();
    let compute_ms = ops.iter().filter(|o| o.kind != "COMM").map(|o| o.ms).filter(|x| x.is_finite()).sum();
    RankProfile { rank, step_ms: median(step_times.to_vec()), compute_ms, ops }
}

/// The `[costs]` table of the measured ops (TOML text with a header comment).
pub fn costs_toml(plan: &Plan, profiles: &[RankProfile], device: &str) -> String {
    let stages = plan.stages as usize;
    let mut by: BTreeMap<(&str, u32), Vec<f64>> = BTreeMap::new();
    let mut comm = Vec::new();
    for op in profiles.iter().flat_map(|p| &p.ops) {
        match op.kind.as_str() {
            "COMM" => comm.push(op.ms),
            "STEP" => {}
            "FB" => {
                for &s in &op.stages {
                    by.entry(("FB", s)).or_default().push(op.ms);
                }
            }
            k => by.entry((k, op.stages.first().copied().unwrap_or(0))).or_default().push(op.ms),
        }
    }
    let get = |k: &str, s: usize| by.get(&(k, s as u32)).map(|v| median(v.clone()));
    let forward: Vec<f64> = (0..stages).map(|s| get("F", s).unwrap_or(f64::NAN)).collect();
    let weight: Vec<Option<f64>> = (0..stages).map(|s| get("W", s)).collect();
    let backward: Vec<f64> = (0..stages)
        .map(|s| match (get("B", s), get("I", s), weight[s]) {
            (Some(b), _, _) => b,
            (None, Some(i), Some(w)) => i + w,
            _ => f64::NAN,
        })
        .collect();
    // W where it was measured; where backwards ran whole, the spec's default (B/2) stays.
    let weights: Vec<f64> = (0..stages).map(|s| weight[s].unwrap_or(backward[s] / 2.0)).collect();
    let overlapped: Vec<f64> = (0..stages).map(|s| get("FB", s).unwrap_or(forward[s] + backward[s])).collect();
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", ");
    let p2p = percentile(comm, 0.0);
    format!(
        "# Measured by `pipewright-runtime profile` on {device}: plan {} ({} ranks, {} stages, {} microbatches),\n\
         # milliseconds per op (medians over the profiled steps after the first; p2p: the fastest\n\
         # batch). To simulate this machine: `[costs] from = \"<this file>\"` in the spec.\n\
         [costs]\nforward = [{}]\nbackward = [{}]\nweight = [{}]\noverlapped = [{}]\np2p = {:.4}\ncomm = \"blocking\"\n",
        plan.schedule,
        plan.world_size,
        plan.stages,
        plan.microbatches,
        list(&forward),
        list(&backward),
        list(&weights),
        list(&overlapped),
        if p2p.is_finite() { p2p } else { 0.0 },
    )
}

/// The measured timeline of the last profiled step as a Chrome trace: one process per
/// rank, one thread per stream; each rank's clock starts at its step's start.
pub fn chrome_trace(profiles: &[RankProfile]) -> serde_json::Value {
    let stream_name = |s: u32| match s {
        0 => "compute",
        1 => "overlap",
        _ => "p2p",
    };
    let mut events = Vec::new();
    for p in profiles {
        events.push(serde_json::json!({"name": "process_name", "ph": "M", "pid": p.rank,
            "args": {"name": format!("rank {} (measured)", p.rank)}}));
        for s in 0..3u32 {
            events.push(serde_json::json!({"name": "thread_name", "ph": "M", "pid": p.rank, "tid": s,
                "args": {"name": stream_name(s)}}));
        }
        for op in p.ops.iter().filter(|o| o.start_ms.is_finite() && o.ms.is_finite()) {
            events.push(serde_json::json!({
                "name": op.label, "cat": op.kind, "ph": "X", "pid": p.rank, "tid": op.stream,
                "ts": op.start_ms * 1e3, "dur": op.ms * 1e3,
                "args": {"stages": op.stages, "bytes": op.bytes},
            }));
        }
    }
    serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}

/// Process id offset of the simulated timeline in [`with_simulated`].
pub const SIMULATED_PID: u64 = 1000;

/// One trace with the measured timeline and the simulated one (`compile`'s `trace.json`,
/// where 1 cost unit shows as 1 ms — so with measured costs, both are in ms): the
/// simulated events move to process ids from [`SIMULATED_PID`], named "simulated".
pub fn with_simulated(measured: &serde_json::Value, simulated: &serde_json::Value) -> serde_json::Value {
    let mut events: Vec<serde_json::Value> = measured["traceEvents"].as_array().cloned().unwrap_or_default();
    let theirs = simulated.get("traceEvents").unwrap_or(simulated).as_array().cloned().unwrap_or_default();
    let mut pids = std::collections::BTreeSet::new();
    for mut e in theirs {
        let pid = SIMULATED_PID + e["pid"].as_u64().unwrap_or(0);
        pids.insert(pid);
        e["pid"] = pid.into();
        events.push(e);
    }
    for pid in pids {
        events.push(serde_json::json!({"name": "process_name", "ph": "M", "pid": pid,
            "args": {"name": "simulated (compile's trace.json)"}}));
    }
    serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}
