//! `profile`: what each op of a plan costs on this machine, measured with CUDA events
//! around every op of eager steps ([`crate::exec::RunOptions::profile`]) — a compute op's
//! cost, with `profile --alone-steps N`, from replays of the rank's step without its p2p
//! instead, the events captured with the step (the op as the graph runs it, with nothing
//! to wait for) — turned into
//! - a `[costs]` table for the spec (per stage F, B, W, FB in milliseconds, the p2p time,
//!   and the step's own work and mirror-gradient sum once a step), so that the simulator
//!   predicts real runs (`report.json`'s `step_time`);
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
//! after the first, which connects NCCL and warms caches). A p2p batch's time is the fastest batch's duration on the
//! communication stream: most batches also wait for their peer (rendezvous), the fastest
//! comes closest to the transfer itself.

mod comm;

pub use comm::{contention, evidence, fit_batches, graph_breakdown, transfers, Breakdown, Contention};

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
}

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
            let full = pipewright_plan::node::KERNELS.iter().find(|(n, _)| *n == k.name).map(|(_, f)| *f)?;
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

/// Compute beside batches in flight (ms, all ranks) below which a profile says nothing
/// about contention: too little to tell it from noise.
pub const MIN_CONTENTION_EVIDENCE_MS: f64 = 2.0;

/// The `[costs]` table of the measured ops (TOML text with a header comment).
pub fn costs_toml(plan: &Plan, profiles: &[RankProfile], device: &str) -> String {
    costs_toml_with(plan, profiles, device, None)
}

/// [`costs_toml`] with the contention evidence of other profiles (`from`: it, and what
/// they are, for the header) instead of this one's: a family's batches are mostly short
/// transfers with little compute beside them, the optimiser's programs' are not.
pub fn costs_toml_with(
    plan: &Plan,
    profiles: &[RankProfile],
    device: &str,
    from: Option<(Contention, &str)>,
) -> String {
    let stages = plan.stages as usize;
    let mut by: BTreeMap<(&str, u32), Vec<f64>> = BTreeMap::new();
    // Each measured FB pair by (forward's stage, backward's stage).
    let mut pairs: BTreeMap<(u32, u32), Vec<f64>> = BTreeMap::new();
    // Each p2p batch (transfers in its busier direction, ms).
    let mut batches = Vec::new();
    let contended = from.map_or_else(|| evidence(plan, profiles), |(c, _)| c);
    for (p, rp) in profiles.iter().zip(&plan.ranks) {
        let scale = p.calibration();
        for (i, op) in p.ops.iter().enumerate() {
            match op.kind.as_str() {
                "COMM" if op.label.starts_with('[') => batches.push((transfers(rp, i), op.ms)),
                "COMM" => {}
                "STEP" => {}
                "FB" => {
                    for &s in &op.stages {
                        by.entry(("FB", s)).or_default().push(op.ms * scale);
                    }
                    if let [f, b] = op.stages[..] {
                        pairs.entry((f, b)).or_default().push(op.ms * scale);
                    }
                }
                k => by.entry((k, op.stages.first().copied().unwrap_or(0))).or_default().push(op.ms * scale),
            }
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
    // The pairs as measured (the per-stage `overlapped` above, the medians of every pair a
    // stage is in, stays for pairs the plan did not run).
    let pair_list = pairs
        .iter()
        .map(|(&(f, b), v)| format!("{{ f = {f}, b = {b}, ms = {:.4} }}", median(v.clone())))
        .collect::<Vec<_>>();
    let pair_line =
        if pair_list.is_empty() { String::new() } else { format!("overlapped_pairs = [{}]\n", pair_list.join(", ")) };
    let (p2p, per_transfer) = fit_batches(&batches).unwrap_or((0.0, 0.0));
    let per_transfer_line =
        if per_transfer > 0.0 { format!("p2p_per_transfer = {per_transfer:.4}\n") } else { String::new() };
    // Contention only from enough evidence: a few milliseconds of compute beside batches.
    let contention_line = if contended.overlap_ms >= MIN_CONTENTION_EVIDENCE_MS {
        format!("p2p_contention = {:.4}\n", (contended.excess_ms / contended.overlap_ms).clamp(0.0, 0.9))
    } else {
        String::new()
    };
    // Once a step: each rank's own work (prologue, epilogue), and the busiest rank's mirror
    // sum.
    let per_rank = |keep: &dyn Fn(&OpTime) -> bool, scaled: bool| -> Vec<f64> {
        profiles
            .iter()
            .map(|p| {
                let scale = if scaled { p.calibration() } else { 1.0 };
                p.ops.iter().filter(|o| keep(o)).map(|o| o.ms * scale).sum::<f64>()
            })
            .collect()
    };
    let per_step = match per_rank(&|o| o.kind == "STEP", true)[..] {
        [one] => format!("{one:.4}"),
        ref each => format!("[{}]", list(each)),
    };
    let mirror_sum =
        per_rank(&|o| o.kind == "COMM" && o.label.starts_with("mirror-sum"), false).into_iter().fold(0.0, f64::max);
    let scales: Vec<String> = profiles.iter().map(|p| format!("{:.3}", p.calibration())).collect();
    format!(
        "# Measured by `pipewright-runtime profile` on {device}: plan {} ({} ranks, {} stages, {} microbatches{}),\n\
         # milliseconds per op, medians: {}; p2p and p2p_per_transfer: a line through the\n\
         # fastest batch of each size (transfers in its busier direction) of the eager steps;\n\
         # p2p_contention: the compute ops' excess in the whole step replayed as a graph over\n\
         # their overlap with batches in flight ({}); each rank's compute ops scaled to its step\n\
         # graph's compute without p2p (by {}, rank by rank). To simulate this machine:\n\
         # `[costs] from = \"<this file>\"` in the spec (whose own `comm` says how the plan\n\
         # communicates).\n\
         [costs]\nforward = [{}]\nbackward = [{}]\nweight = [{}]\noverlapped = [{}]\n{pair_line}p2p = {:.4}\n\
         {per_transfer_line}{contention_line}per_step = {}\nmirror_sum = {:.4}\n",
        plan.schedule,
        plan.world_size,
        plan.stages,
        plan.pipes * plan.microbatches,
        if plan.pipes > 1 { format!(", {} pipes of {}", plan.pipes, plan.microbatches) } else { String::new() },
        if profiles.iter().all(|p| p.timed_alone) {
            "compute ops over replays of each rank's step without p2p (nothing to wait for)"
        } else {
            "every op over the profiled eager steps"
        },
        from.map_or("this plan's", |(_, what)| what),
        scales.join(", "),
        list(&forward),
        list(&backward),
        list(&weights),
        list(&overlapped),
        p2p,
        per_step,
        mirror_sum,
    )
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
