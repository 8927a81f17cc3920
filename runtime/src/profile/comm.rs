//! What communication costs, from a profile: the p2p batch's latency and the time each
//! transfer adds ([`fit_batches`]: through the batches `profile` times with nothing to
//! wait for, [`calibration_shape`], else the fastest batch of each size), how much slower
//! compute runs beside a batch in flight ([`contention`], from the timed replays of the
//! whole step as a graph), and where each rank's step goes in those replays
//! ([`graph_breakdown`]).

use super::RankProfile;
use pipewright_plan::intervals::{overlap, union, union_length};
use pipewright_plan::node::Node;
use pipewright_plan::{Plan, RankPlan};

/// The most transfers in one direction a calibration batch holds.
pub const MAX_CALIBRATION_TRANSFERS: u32 = 4;

/// Transfers in the busier direction of the p2p groups of op `i` of `rp` (0 for an op
/// without any): what a batch's time grows with ([`fit_batches`]). `rp` is validated
/// (`Plan::validate`: every op's nodes lie inside the rank's).
pub fn transfers(rp: &RankPlan, i: usize) -> u32 {
    let op = &rp.ops[i];
    let (mut sends, mut recvs) = (0u32, 0u32);
    for node in &rp.nodes[op.first as usize..=op.last as usize] {
        if let Node::Group { ops, .. } = node {
            sends += ops.iter().filter(|o| o.send).count() as u32;
            recvs += ops.iter().filter(|o| !o.send).count() as u32;
        }
    }
    sends.max(recvs)
}

/// What `profile` times p2p batches with when nothing waits (`Gpu::time_exchanges`): the
/// most common transfer size in bytes of the plan's p2p batches (the larger of equally
/// common ones; not the mirror-gradient exchange, which the simulator charges apart) and
/// the most transfers one of them moves in one direction (at most
/// [`MAX_CALIBRATION_TRANSFERS`]); none for a plan without p2p batches. `plan` is
/// validated.
pub fn calibration_shape(plan: &Plan) -> Option<(usize, u32)> {
    let mut sizes: std::collections::BTreeMap<u64, usize> = std::collections::BTreeMap::new();
    let mut most = 0u32;
    for rp in &plan.ranks {
        for (i, op) in rp.ops.iter().enumerate().filter(|(_, o)| o.kind == "COMM" && o.label.starts_with('[')) {
            for node in &rp.nodes[op.first as usize..=op.last as usize] {
                if let Node::Group { ops, .. } = node {
                    for p2p in ops {
                        *sizes.entry(rp.buffers[p2p.buffer as usize].bytes).or_default() += 1;
                    }
                }
            }
            most = most.max(transfers(rp, i));
        }
    }
    let (&bytes, _) = sizes.iter().filter(|(&b, _)| b > 0).max_by_key(|(&b, &n)| (n, b))?;
    Some((bytes as usize, most.min(MAX_CALIBRATION_TRANSFERS)))
}

/// The rank `rank` exchanges calibration batches with: its neighbour in pairs (0–1, 2–3,
/// …), none for the last rank of an odd world.
pub fn calibration_peer(rank: u32, world: u32) -> Option<u32> {
    Some(rank ^ 1).filter(|&p| p < world)
}

/// `(p2p, p2p_per_transfer)` from measured batches `(transfers, ms)`: the fastest batch
/// of each size is the one that waited least for its peer, so the line is fitted (least
/// squares) through those lower envelope points; with a single size, that batch's time
/// and no per-transfer part. Neither part is negative: a line that would start below 0
/// goes through the origin instead.
pub fn fit_batches(batches: &[(u32, f64)]) -> Option<(f64, f64)> {
    let mut fastest: std::collections::BTreeMap<u32, f64> = std::collections::BTreeMap::new();
    for &(k, ms) in batches.iter().filter(|(k, ms)| *k > 0 && ms.is_finite() && *ms >= 0.0) {
        let e = fastest.entry(k).or_insert(ms);
        *e = e.min(ms);
    }
    let points: Vec<(f64, f64)> = fastest.into_iter().map(|(k, ms)| (k as f64, ms)).collect();
    match points.len() {
        0 => None,
        1 => Some((points[0].1, 0.0)),
        n => {
            let n = n as f64;
            let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
            let (mx, my) = (sx / n, sy / n);
            let sxx: f64 = points.iter().map(|&(x, _)| (x - mx) * (x - mx)).sum();
            let sxy: f64 = points.iter().map(|&(x, y)| (x - mx) * (y - my)).sum();
            let slope = (sxy / sxx).max(0.0);
            let intercept = my - slope * mx;
            if intercept >= 0.0 {
                Some((intercept, slope))
            } else {
                let through_origin =
                    points.iter().map(|&(x, y)| x * y).sum::<f64>() / points.iter().map(|&(x, _)| x * x).sum::<f64>();
                Some((0.0, through_origin.max(0.0)))
            }
        }
    }
}

/// Evidence of contention on one rank, from the whole step replayed as a graph: how much
/// longer its compute ops took there than alone, and how long a p2p batch was in flight
/// beside them, both summed over the ops that wait for no batch inside their span (an
/// overlapped pair whose second half waits for a receive would count the wait), and that
/// overlap no mirror-gradient exchange (the simulator charges that apart).
#[derive(Clone, Copy, PartialEq, Debug, Default)]
pub struct Contention {
    pub excess_ms: f64,
    pub overlap_ms: f64,
}

/// Evidence pooled: both sums added.
impl std::ops::AddAssign for Contention {
    fn add_assign(&mut self, other: Contention) {
        self.excess_ms += other.excess_ms;
        self.overlap_ms += other.overlap_ms;
    }
}

/// [`Contention`] of rank `rp`'s profile `p`; none without timed graph replays.
pub fn contention(rp: &RankPlan, p: &RankProfile) -> Option<Contention> {
    p.graph_step_ms?;
    let span = |o: &super::OpTime| Some((o.graph_start_ms?, o.graph_start_ms? + o.graph_ms?));
    let comm = |mirror: bool| -> Vec<(f64, f64)> {
        p.ops.iter().filter(|o| o.kind == "COMM" && o.label.starts_with('[') != mirror).filter_map(span).collect()
    };
    let (batches, mirrors) = (union(comm(false)), union(comm(true)));
    // Events the communication stream records: a wait for one inside an op is a wait for
    // a batch.
    let from_comm: std::collections::HashSet<u32> = rp
        .nodes
        .iter()
        .filter_map(|n| match n {
            Node::Record { stream, event } if *stream == pipewright_plan::COMM_STREAM => Some(*event),
            _ => None,
        })
        .collect();
    let mut out = Contention::default();
    for (o, op) in p.ops.iter().zip(&rp.ops).filter(|(o, _)| o.kind != "COMM") {
        let nodes = &rp.nodes[op.first as usize..=op.last as usize];
        let body = nodes.iter().skip_while(|n| matches!(n, Node::Wait { .. }));
        let waits_inside = body.clone().any(|n| matches!(n, Node::Wait { event, .. } if from_comm.contains(event)));
        let (Some(s), Some(ms)) = (span(o), o.graph_ms) else { continue };
        if waits_inside || overlap(&mirrors, s) > 0.0 || !(ms.is_finite() && o.ms.is_finite()) {
            continue;
        }
        out.excess_ms += ms - o.ms;
        out.overlap_ms += overlap(&batches, s);
    }
    Some(out)
}

/// The contention evidence of a whole profile: every rank's whose compute ops were timed
/// without p2p (`timed_alone`: their excess is over that), summed.
pub fn evidence(plan: &pipewright_plan::Plan, profiles: &[RankProfile]) -> Contention {
    let mut sum = Contention::default();
    for (rp, p) in plan.ranks.iter().zip(profiles) {
        if let Some(c) = contention(rp, p).filter(|_| p.timed_alone) {
            sum += c;
        }
    }
    sum
}

/// Where one rank's step goes, from the timed replays of the whole step as a graph.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Breakdown {
    /// The replays' median wall time, ms.
    pub step_ms: f64,
    /// Time some compute op runs on either compute stream (the union of their spans), ms.
    pub compute_busy_ms: f64,
    /// The compute ops' summed durations in the whole step, and alone (`ms`: with
    /// `timed_alone`, from the step without p2p), ms: the first exceeds the second by the
    /// waits inside ops and by the GPU shared with the p2p kernels.
    pub ops_in_step_ms: f64,
    pub ops_alone_ms: f64,
    /// Time the communication stream holds a p2p batch (waits for peers included), ms.
    pub comm_busy_ms: f64,
}

/// Where `p`'s step goes, when it was replayed as a graph with every op timed.
pub fn graph_breakdown(p: &RankProfile) -> Option<Breakdown> {
    let step_ms = p.graph_step_ms?;
    let spans = |compute: bool| -> Vec<(f64, f64)> {
        p.ops
            .iter()
            .filter(|o| (o.kind != "COMM") == compute)
            .filter_map(|o| Some((o.graph_start_ms?, o.graph_start_ms? + o.graph_ms?)))
            .collect()
    };
    let compute = p.ops.iter().filter(|o| o.kind != "COMM");
    let finite = |x: &f64| x.is_finite();
    Some(Breakdown {
        step_ms,
        compute_busy_ms: union_length(spans(true)),
        ops_in_step_ms: compute.clone().filter_map(|o| o.graph_ms).filter(finite).sum(),
        ops_alone_ms: compute.map(|o| o.ms).filter(finite).sum(),
        comm_busy_ms: union_length(spans(false)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_goes_through_the_fastest_batch_of_each_size() {
        // Size 1: 0.3 (waited) and 0.15; size 2: 0.25; size 3: 0.35 — the line 0.05 + 0.1k.
        let batches = [(1, 0.3), (1, 0.15), (2, 0.25), (3, 0.9), (3, 0.35), (0, 0.01)];
        let (p2p, per) = fit_batches(&batches).unwrap();
        assert!((p2p - 0.05).abs() < 1e-12 && (per - 0.1).abs() < 1e-12, "{p2p} {per}");
        // One size: its fastest batch, nothing per transfer.
        assert_eq!(fit_batches(&[(2, 0.4), (2, 0.3)]), Some((0.3, 0.0)));
        // A line that would start below 0 goes through the origin; one falling with size is flat.
        let (p2p, per) = fit_batches(&[(1, 0.05), (2, 0.2)]).unwrap();
        assert_eq!(p2p, 0.0);
        assert!((per - 0.09).abs() < 1e-12, "{per}");
        let (p2p, per) = fit_batches(&[(1, 0.3), (2, 0.1)]).unwrap();
        assert_eq!(per, 0.0);
        assert!((p2p - 0.2).abs() < 1e-12, "{p2p}");
        assert_eq!(fit_batches(&[(0, 1.0), (1, f64::NAN)]), None);
    }
}
