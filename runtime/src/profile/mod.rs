//! `profile`: what each op of a plan costs on this machine, measured with CUDA events
//! around every op of eager steps ([`crate::exec::RunOptions::profile`]) — a compute op's
//! cost, with `profile --alone-steps N`, from replays of the rank's step without its p2p
//! instead, the events captured with the step (the op as the graph runs it, with nothing
//! to wait for) — turned into
//! - a `[costs]` table for the spec (`costs.rs`: per stage F, B, W, FB in milliseconds, the
//!   p2p time and contention, and once a step each rank's own work and the mirror-gradient
//!   sum), so that the simulator predicts real runs (`report.json`'s `step_time`);
//! - the measured per-rank timeline as a Chrome trace (`measured-trace.json`), and, when
//!   the plan directory holds `compile`'s simulated `trace.json`, both in one trace
//!   (`compare-trace.json`) to view side by side;
//! - each rank's compute time per step (its ops, and the step's own work before and after
//!   them), the same as the sum of its compute nodes each timed alone (the last profiled
//!   step), and its step graph replayed without p2p (`run --compute-alone`, after the
//!   rest): the bubble-free ideal step is the busiest rank's graph without p2p, and the
//!   costs table scales each rank's compute costs to it ([`RankProfile::calibration`]);
//! - with `profile --graph-steps N`, the timeline of the whole step replayed as a graph
//!   with every op timed (`graph-trace.json`, and in `compare-trace.json` beside the
//!   others): the step as training runs it, without eager launch gaps, and where it goes
//!   ([`graph_breakdown`]: compute busy and idle, ops slower than alone, p2p stream busy).
//!
//! `profile` runs warm-up steps before the timed ones: an H200's first steps under load
//! run at higher clocks than it sustains (measured: a 2048 DualPipe step takes 20.1 ms at
//! first, 22 ms from the fifth step on), and the costs should be the sustained ones.
//!
//! Per-op durations are medians over the profiled steps (without warm-up steps, those
//! after the first, which connects NCCL and warms caches). The p2p costs come from
//! batches of 1, 2, … transfers of the plan's most common size that each pair of ranks
//! posts at the same moment after the steps, by the run's transport (`Gpu::time_exchanges`,
//! the fastest of [`CALIBRATION_REPS`] per size on each rank): a batch inside a step also
//! waits for its peer to post (rendezvous), and in a tight program every batch of a size
//! may. Without them (a profile written before they were) from the fastest batch of each
//! size on the communication stream (`comm.rs`), which comes closest to the transfer.

mod comm;
mod costs;

pub use comm::{
    calibration_peer, calibration_shape, contention, evidence, fit_batches, graph_breakdown, transfers, Breakdown,
    Contention, MAX_CALIBRATION_TRANSFERS,
};
pub use costs::{costs_toml, costs_toml_with, MIN_CONTENTION_EVIDENCE_MS};

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
    /// Median duration over the profiled steps (or, for a compute op, the timed replays
    /// without p2p), ms.
    pub ms: f64,
    /// Start in the last timed replay of the whole step as a graph (`profile
    /// --graph-steps`), ms from the step's start; none without such replays.
    #[serde(default)]
    pub graph_start_ms: Option<f64>,
    /// Median duration over those replays, ms: as the op runs in training, waits after its
    /// first compute node (an overlapped pair's second input) and the GPU shared with p2p
    /// kernels included.
    #[serde(default)]
    pub graph_ms: Option<f64>,
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
    /// Sum of the rank's compute nodes (products and kernels, not p2p groups) in the
    /// node-timed step, each timed on its own with the compute streams serialised, ms; none
    /// when no step timed nodes. The purer measure of the rank's compute: timed ops of an
    /// eager step include the launch gaps and waits inside them, and the ops of its two
    /// compute streams may overlap, so their sum is not the work alone.
    #[serde(default)]
    pub node_compute_ms: Option<f64>,
    /// The rank's step graph replayed without its p2p (`run --compute-alone`), median ms:
    /// its compute as the graph runs it, with nothing to wait for.
    #[serde(default)]
    pub alone_ms: Option<f64>,
    /// Whether the compute ops' durations come from replays of the step without p2p
    /// (`profile --alone-steps`), else from the eager steps (p2p batches always do).
    #[serde(default)]
    pub timed_alone: bool,
    /// Median wall time of the timed replays of the whole step as a graph, ms.
    #[serde(default)]
    pub graph_step_ms: Option<f64>,
    pub ops: Vec<OpTime>,
    /// The node-timed step's nodes, by kind (empty when fewer than 3 steps were profiled).
    #[serde(default)]
    pub nodes: Vec<NodeStat>,
    /// P2p batches timed with nothing to wait for (`Gpu::time_exchanges`): (transfers in
    /// each direction, ms) per timed batch; empty without (one rank, an older profile).
    #[serde(default)]
    pub p2p_calibration: Vec<(u32, f64)>,
    /// The p2p transport the profiled run used (the costs are that transport's).
    #[serde(default)]
    pub transport: pipewright_plan::Transport,
}

/// Timed calibration batches of each size, per rank (see the module doc).
pub const CALIBRATION_REPS: u32 = 7;

/// One kind of node (same product shape, or same kernel and size) as measured on one rank
/// in the node-timed step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NodeStat {
    /// What it is: `gemm bf16 4096x16384x4096 NN gelu`, `copy_bf16 × 1048576`, `p2p 1048576 B`.
    pub what: String,
    /// How many such nodes the step ran.
    pub count: usize,
    /// Their summed duration, ms.
    pub ms: f64,
    /// Work per node: FLOPs for a product, bytes read and written for a kernel or a p2p
    /// group (`unit` says which rate it gives).
    pub work: f64,
    pub unit: String,
}

/// What a node is, for [`NodeStat::what`], and its work (FLOPs, or bytes) and rate unit.
fn describe(rp: &pipewright_plan::RankPlan, node: &pipewright_plan::Node) -> Option<(String, f64, &'static str)> {
    use pipewright_plan::{Dtype, Epilogue, Node};
    let dt = |b: u32| match rp.buffers[b as usize].dtype {
        Dtype::F32 => "f32",
        Dtype::Bf16 => "bf16",
    };
    match node {
        Node::Gemm(g) => {
            let trans = format!("{}{}", if g.trans_a { "T" } else { "N" }, if g.trans_b { "T" } else { "N" });
            let epilogue = match g.epilogue {
                Epilogue::None => "",
                Epilogue::Gelu { .. } => " gelu",
                Epilogue::GeluGrad { .. } => " gelu-grad",
            };
            let acc = if g.beta != 0.0 { format!(" {} C +=", dt(g.c)) } else { String::new() };
            let what = format!("gemm {} {}x{}x{} {trans}{epilogue}{acc}", dt(g.a), g.m, g.n, g.k);
            Some((what, 2.0 * (g.m * g.n * g.k) as f64, "TFLOP/s"))
        }
        Node::Kernel(k) => {
            let full = pipewright_plan::node::kernel_sig(&k.name)?.per_element;
            let bytes: u64 = k
                .buffers
                .iter()
                .zip(full)
                .filter(|(_, &f)| f)
                .map(|(&b, _)| k.elements * rp.buffers[b as usize].dtype.size())
                .sum();
            Some((format!("{} × {}", k.name, k.elements), bytes as f64, "GB/s"))
        }
        Node::Group { ops, .. } => {
            let bytes: u64 = ops.iter().map(|o| rp.buffers[o.buffer as usize].bytes).sum();
            Some((format!("p2p group of {} ({bytes} B)", ops.len()), bytes as f64, "GB/s"))
        }
        Node::Record { .. } | Node::Wait { .. } => None,
    }
}

/// The node-timed step's nodes of `rank`, grouped by what they are, largest total first.
pub fn node_stats(plan: &Plan, rank: u32, node_ms: &[f64]) -> Vec<NodeStat> {
    let rp = &plan.ranks[rank as usize];
    let mut by: BTreeMap<String, NodeStat> = BTreeMap::new();
    for (node, &ms) in rp.nodes.iter().zip(node_ms) {
        let Some((what, work, unit)) = describe(rp, node) else { continue };
        if !ms.is_finite() {
            continue;
        }
        let e = by.entry(what.clone()).or_insert(NodeStat { what, count: 0, ms: 0.0, work, unit: unit.into() });
        e.count += 1;
        e.ms += ms;
    }
    let mut v: Vec<NodeStat> = by.into_values().collect();
    v.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    v
}

/// `nodes.md`: every rank's node kinds together (count and time summed over ranks), with
/// the rate each reached (TFLOP/s for products, GB/s for kernels and p2p groups).
pub fn nodes_table(profiles: &[RankProfile]) -> String {
    let mut by: BTreeMap<String, NodeStat> = BTreeMap::new();
    for n in profiles.iter().flat_map(|p| &p.nodes) {
        let e = by.entry(n.what.clone()).or_insert(NodeStat { ms: 0.0, count: 0, ..n.clone() });
        e.count += n.count;
        e.ms += n.ms;
    }
    let mut rows: Vec<NodeStat> = by.into_values().collect();
    rows.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let total: f64 = rows.iter().map(|r| r.ms).sum();
    let mut out =
        String::from("| node | count | total ms | share | mean ms | rate |\n|---|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let mean = r.ms / r.count.max(1) as f64;
        let rate = match r.unit.as_str() {
            "TFLOP/s" => r.work / (mean * 1e-3) / 1e12,
            _ => r.work / (mean * 1e-3) / 1e9,
        };
        out.push_str(&format!(
            "| {} | {} | {:.3} | {:.1}% | {:.4} | {:.1} {} |\n",
            r.what,
            r.count,
            r.ms,
            100.0 * r.ms / total.max(1e-12),
            mean,
            rate,
            r.unit
        ));
    }
    out
}

/// The median of the finite values of `v` (NaN when none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// The profile of `rank` from a profiled run's report.
pub fn rank_profile(plan: &Plan, rank: u32, report: &RunReport) -> RankProfile {
    let rp = &plan.ranks[rank as usize];
    // Without warm-up steps, skip the first timed step (NCCL connects, caches warm) when
    // there are others.
    let skip = usize::from(report.warmup_steps == 0 && report.op_times.len() > 1);
    let steps = &report.op_times[skip..];
    // The compute ops' durations from the timed replays without p2p when there are any.
    let timed_alone = !report.alone_op_times.is_empty();
    // The steps whose ops were timed (after the warm-up, before the one timing nodes).
    let timed = report.step_ms.iter().skip(report.warmup_steps as usize).take(report.op_times.len());
    let step_times: Vec<f64> = timed.skip(skip).copied().collect();
    let in_graph = !report.graph_op_times.is_empty();
    let graph_ms = |i: usize| median(report.graph_op_times.iter().filter_map(|t| t.get(i)).map(|t| t.1).collect());
    let ops: Vec<OpTime> = rp
        .ops
        .iter()
        .enumerate()
        .map(|(i, s)| OpTime {
            label: s.label.clone(),
            kind: s.kind.clone(),
            stages: s.stages.clone(),
            stream: s.stream,
            bytes: s.bytes,
            start_ms: steps.last().and_then(|t| t.get(i)).map_or(f64::NAN, |t| t.0),
            ms: median(
                if timed_alone && s.kind != "COMM" { &report.alone_op_times[..] } else { steps }
                    .iter()
                    .filter_map(|t| t.get(i))
                    .map(|t| t.1)
                    .collect(),
            ),
            graph_start_ms: report.graph_op_times.last().and_then(|t| t.get(i)).map(|t| t.0),
            graph_ms: in_graph.then(|| graph_ms(i)),
        })
        .collect();
    let compute_ms = ops.iter().filter(|o| o.kind != "COMM").map(|o| o.ms).filter(|x| x.is_finite()).sum();
    let nodes = node_stats(plan, rank, &report.node_ms);
    let node_compute_ms = (!report.node_ms.is_empty()).then(|| {
        rp.nodes
            .iter()
            .zip(&report.node_ms)
            .filter(|(n, ms)| !matches!(n, pipewright_plan::Node::Group { .. }) && ms.is_finite())
            .map(|(_, ms)| ms)
            .sum()
    });
    let alone_ms = (!report.alone_ms.is_empty()).then(|| median(report.alone_ms.clone()));
    let graph_step_ms = in_graph.then(|| median(report.graph_step_ms.clone()));
    RankProfile {
        rank,
        step_ms: median(step_times),
        compute_ms,
        node_compute_ms,
        alone_ms,
        timed_alone,
        graph_step_ms,
        ops,
        nodes,
        p2p_calibration: report.p2p_calibration.clone(),
        transport: report.transport,
    }
}

impl RankProfile {
    /// This rank's compute per step, for the bubble-free ideal: its step graph without p2p
    /// when it was replayed, else its nodes' when they were timed, else its ops'.
    pub fn ideal_ms(&self) -> f64 {
        self.alone_ms.or(self.node_compute_ms).unwrap_or(self.compute_ms)
    }

    /// What this rank's compute ops (and the step's own work) are scaled by in the costs
    /// table: its compute as the graph runs it over the sum of its ops' times (1 when the
    /// graph was not replayed alone). Timed in eager steps, ops carry launch gaps, waits
    /// and the GPU shared with p2p kernels, and their sum exceeded the graph's compute by
    /// 4–11% on 2 × H200 (DualPipe and DualPipeV plans); timed in the graph without p2p
    /// (`timed_alone`), the sum is that graph's compute within −6…+2.4%, and this only
    /// corrects the difference in clocks between the two measurements.
    pub fn calibration(&self) -> f64 {
        match self.alone_ms {
            Some(alone) if alone.is_finite() && alone > 0.0 && self.compute_ms > 0.0 => alone / self.compute_ms,
            _ => 1.0,
        }
    }
}

/// Which measured timeline: the last profiled eager step's, or the last timed replay of
/// the whole step as a graph.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Timeline {
    Eager,
    Graph,
}

/// A measured timeline as a Chrome trace: one process per rank, one thread per stream;
/// each rank's clock starts at its step's start.
pub fn chrome_trace(profiles: &[RankProfile], timeline: Timeline) -> serde_json::Value {
    let stream_name = |s: u32| match s {
        0 => "compute",
        1 => "overlap",
        _ => "p2p",
    };
    let mut events = Vec::new();
    for p in profiles {
        let what = if timeline == Timeline::Eager { "measured, eager" } else { "measured, graph" };
        events.push(serde_json::json!({"name": "process_name", "ph": "M", "pid": p.rank,
            "args": {"name": format!("rank {} ({what})", p.rank)}}));
        for s in 0..3u32 {
            events.push(serde_json::json!({"name": "thread_name", "ph": "M", "pid": p.rank, "tid": s,
                "args": {"name": stream_name(s)}}));
        }
        for op in &p.ops {
            let (start, ms) = match timeline {
                Timeline::Eager => (op.start_ms, op.ms),
                Timeline::Graph => (op.graph_start_ms.unwrap_or(f64::NAN), op.graph_ms.unwrap_or(f64::NAN)),
            };
            if !(start.is_finite() && ms.is_finite()) {
                continue;
            }
            events.push(serde_json::json!({
                "name": op.label, "cat": op.kind, "ph": "X", "pid": p.rank, "tid": op.stream,
                "ts": start * 1e3, "dur": ms * 1e3,
                "args": {"stages": op.stages, "bytes": op.bytes},
            }));
        }
    }
    serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}

/// Process id offset of the simulated timeline in [`with_simulated`].
pub const SIMULATED_PID: u64 = 1000;

/// Process id offset of the graph timeline in [`with_simulated`].
pub const GRAPH_PID: u64 = 500;

/// One trace with the measured timeline (the eager one, and the graph one at process ids
/// from [`GRAPH_PID`] when given) and the simulated one (`compile`'s `trace.json`, where 1
/// cost unit shows as 1 ms — so with measured costs, all are in ms): the simulated events
/// move to process ids from [`SIMULATED_PID`], named "simulated".
pub fn with_simulated(
    measured: &serde_json::Value,
    graph: Option<&serde_json::Value>,
    simulated: &serde_json::Value,
) -> serde_json::Value {
    let mut events: Vec<serde_json::Value> = measured["traceEvents"].as_array().cloned().unwrap_or_default();
    for mut e in graph.and_then(|g| g["traceEvents"].as_array().cloned()).unwrap_or_default() {
        e["pid"] = (GRAPH_PID + e["pid"].as_u64().unwrap_or(0)).into();
        events.push(e);
    }
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
