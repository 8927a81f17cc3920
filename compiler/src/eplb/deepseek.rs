//! DeepSeek's reference EPLB (`deepseek-ai/EPLB`, `rebalance_experts`), reproduced with its
//! arithmetic (float32) and tie-breaking (stable descending sort; the first of equally
//! loaded packs; the first of equal per-replica loads), so that `logcnt` and each layer's
//! GPU loads equal the reference's.
//!
//! Hierarchical when groups % nodes == 0: pack groups onto nodes, replicate experts within
//! each node, pack each node's replicas onto its GPUs. Otherwise the same with one group on
//! one node.

use super::Params;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// A float32 pack weight with a total order.
#[derive(PartialEq, Clone, Copy)]
struct Weight(f32);
impl Eq for Weight {}
impl PartialOrd for Weight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Weight {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Packs `weights` into `packs` packs of equal item count, heaviest item first into the
/// lightest pack with room. Returns (pack, rank in pack) per item.
pub fn balanced_packing(weights: &[f32], packs: usize) -> Vec<(usize, usize)> {
    let n = weights.len();
    let per_pack = n / packs;
    if per_pack == 1 {
        return (0..n).map(|i| (i, 0)).collect();
    }
    let mut order: Vec<usize> = (0..n).collect();
    // Heaviest first, lower index first among equals: the order of a stable sort.
    order.sort_unstable_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
    // The lightest pack with room, the lowest index among equals (Python's `min`).
    let mut heap: BinaryHeap<Reverse<(Weight, usize)>> = (0..packs).map(|p| Reverse((Weight(0.0), p))).collect();
    let mut pack_items = vec![0usize; packs];
    let mut out = vec![(0, 0); n];
    for item in order {
        let Some(Reverse((Weight(load), best))) = heap.pop() else { break };
        out[item] = (best, pack_items[best]);
        pack_items[best] += 1;
        if pack_items[best] < per_pack {
            heap.push(Reverse((Weight(load + weights[item]), best)));
        }
    }
    out
}

/// A replica candidate: per-replica load, then the lower index wins ties (torch's argmax).
#[derive(PartialEq)]
struct Candidate(f32, usize);
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.partial_cmp(&other.0).unwrap_or(Ordering::Equal).then(other.1.cmp(&self.1))
    }
}

/// Replicates `weights.len()` experts into `slots` replicas, each extra replica going to the
/// expert with the highest load per replica. Returns (slot → expert, replica counts).
pub fn replicate(weights: &[f32], slots: usize) -> (Vec<usize>, Vec<u32>) {
    let n = weights.len();
    let mut phy2log: Vec<usize> = (0..n).collect();
    let mut count = vec![1u32; n];
    let mut heap: BinaryHeap<Candidate> = (0..n).map(|e| Candidate(weights[e], e)).collect();
    for _ in n..slots {
        let Some(Candidate(_, e)) = heap.pop() else { break };
        phy2log.push(e);
        count[e] += 1;
        heap.push(Candidate(weights[e] / count[e] as f32, e));
    }
    (phy2log, count)
}

/// Places one layer: `phy2log` of its slots.
pub fn layer(w: &[f64], p: &Params) -> Vec<u32> {
    let (groups, nodes) = if p.hierarchical() { (p.groups, p.nodes) } else { (1, 1) };
    let w32: Vec<f32> = w.iter().map(|&x| x as f32).collect();
    let experts = w.len();
    let group_size = experts / groups;
    let groups_per_node = groups / nodes;
    let per_node_experts = experts / nodes;
    let per_node_slots = p.replicas / nodes;
    let gpus_per_node = p.gpus / nodes;
    let per_gpu = p.per_gpu();

    // Step 1: groups onto nodes.
    let group_load: Vec<f32> = w32.chunks(group_size).map(|c| c.iter().sum()).collect();
    let group_pack = balanced_packing(&group_load, nodes);
    // log2mlog: logical expert → position among the experts of its node (node-major).
    let mut mlog2log = vec![0usize; experts];
    for (g, &(pack, rank)) in group_pack.iter().enumerate() {
        for j in 0..group_size {
            let mlog = (pack * groups_per_node + rank) * group_size + j;
            mlog2log[mlog] = g * group_size + j;
        }
    }

    let mut phy2log = vec![0u32; p.replicas];
    for node in 0..nodes {
        let local: Vec<f32> = (0..per_node_experts).map(|i| w32[mlog2log[node * per_node_experts + i]]).collect();
        // Step 2: replicate within the node.
        let (phy2mlog, count) = replicate(&local, per_node_slots);
        // Step 3: replicas onto the node's GPUs.
        let replica_load: Vec<f32> = phy2mlog.iter().map(|&m| local[m] / count[m] as f32).collect();
        let packing = balanced_packing(&replica_load, gpus_per_node);
        for (phy, &(pack, rank)) in packing.iter().enumerate() {
            let slot = node * per_node_slots + pack * per_gpu + rank;
            phy2log[slot] = mlog2log[node * per_node_experts + phy2mlog[phy]] as u32;
        }
    }
    phy2log
}
