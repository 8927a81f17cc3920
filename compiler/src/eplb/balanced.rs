//! The `balanced` policy: better-balanced placements than the reference, never worse.
//!
//! Per layer:
//! 1. Replica counts by water-filling (each extra replica to the expert with the highest
//!    load per replica, which minimises the largest replica), then packed.
//! 2. Packing: heaviest replica first, onto the lightest GPU with room that does not yet
//!    hold that expert (two copies on one GPU waste a slot). Then swaps between the most
//!    loaded GPU and lighter ones while the maximum drops.
//! 3. Counts chosen *with* the packing: while the most loaded GPU's load is dominated by a
//!    replica, move one replica from the expert that misses it least to that expert, repack,
//!    and keep the change if the maximum dropped.
//! 4. Small layers (≤ 16 slots) are solved exactly by branch and bound over the packing of
//!    every count vector that could beat the best found.
//! 5. DeepSeek's placement is computed too, and the better of the two is kept, so no layer
//!    is ever worse than the reference.
//!
//! With hierarchical constraints, groups are first packed onto nodes (the same packing,
//! one item per group), then each node is solved on its own.

use super::{deepseek, gpu_loads, max, Params};

/// Places one layer; `respect_groups` keeps every group's experts on one node.
pub fn layer(w: &[f64], p: &Params, respect_groups: bool) -> Vec<u32> {
    let reference = deepseek::layer(w, p);
    // Starting from the reference and only swapping to lower the maximum can never end
    // worse than the reference. This holds for any layout that satisfies the constraints:
    // a global one whenever groups are ignored, and the reference's own hierarchical one.
    let global_start = !respect_groups || p.nodes == 1 || !p.hierarchical();
    let ours = if respect_groups && p.nodes > 1 {
        hierarchical(w, p)
    } else {
        let start = if global_start && p.hierarchical() && p.nodes > 1 {
            // The reference kept groups on nodes; ignoring them, start from its global run.
            deepseek::layer(w, &Params { groups: 1, nodes: 1, ..*p })
        } else {
            reference.clone()
        };
        global_from(w, p.replicas, p.gpus, &start)
    };
    if max_load(w, &reference, p.per_gpu()) < max_load(w, &ours, p.per_gpu()) {
        reference
    } else {
        ours
    }
}

/// [`global`], refining `start` (a valid layout) first: the result is never worse.
fn global_from(w: &[f64], slots: usize, gpus: usize, start: &[u32]) -> Vec<u32> {
    let per_gpu = slots / gpus;
    let mut count = vec![0u32; w.len()];
    for &e in start {
        count[e as usize] += 1;
    }
    let sizes: Vec<f64> = start.iter().map(|&e| w[e as usize] / count[e as usize] as f64).collect();
    let mut items: Vec<Vec<usize>> = (0..gpus).map(|g| (g * per_gpu..(g + 1) * per_gpu).collect()).collect();
    let mut load: Vec<f64> = items.iter().map(|i| i.iter().map(|&j| sizes[j]).sum()).collect();
    dedup(&sizes, start, &mut items, &mut load);
    refine(&sizes, start, &mut items, &mut load);
    let refined: Vec<u32> = items.iter().flatten().map(|&j| start[j]).collect();
    // Within 0.5% of the lower bound, other replica counts cannot gain enough to pay.
    if max(&load) <= super::lower_bound(w, slots, gpus) * 1.005 {
        return refined;
    }
    let heuristic = global(w, slots, gpus);
    if max_load(w, &heuristic, per_gpu) < max(&load) {
        heuristic
    } else {
        refined
    }
}

/// The most loaded GPU's load under `phy2log`.
pub fn max_load(w: &[f64], phy2log: &[u32], per_gpu: usize) -> f64 {
    let mut count = vec![0u32; w.len()];
    for &x in phy2log {
        count[x as usize] += 1;
    }
    max(&gpu_loads(phy2log, w, &count, per_gpu))
}

fn hierarchical(w: &[f64], p: &Params) -> Vec<u32> {
    let group_size = w.len() / p.groups;
    let group_load: Vec<f64> = w.chunks(group_size).map(|c| c.iter().sum()).collect();
    let tags: Vec<u32> = (0..p.groups as u32).collect();
    let (node_groups, _) = pack(&group_load, &tags, p.nodes, p.groups / p.nodes);
    let mut phy2log = Vec::with_capacity(p.replicas);
    for groups in node_groups {
        let experts: Vec<usize> = groups.iter().flat_map(|&g| g * group_size..(g + 1) * group_size).collect();
        let local_w: Vec<f64> = experts.iter().map(|&e| w[e]).collect();
        let local = global(&local_w, p.replicas / p.nodes, p.gpus / p.nodes);
        phy2log.extend(local.iter().map(|&i| experts[i as usize] as u32));
    }
    phy2log
}

/// One layer without groups: `slots` replicas on `gpus` GPUs.
pub fn global(w: &[f64], slots: usize, gpus: usize) -> Vec<u32> {
    let per_gpu = slots / gpus;
    let mut counts = super::water_fill(w, slots).0;
    let (mut best, mut best_max) = pack_counts(w, &counts, gpus, per_gpu);
    if slots <= 16 {
        if let Some((exact, _)) = exact(w, slots, gpus, best_max) {
            return flatten(&exact);
        }
    }
    // Counts chosen with the packing (step 3 of the module doc), when the packing is more
    // than 0.5% above the lower bound (below that, repacking costs more than it can gain).
    let bound = super::lower_bound(w, slots, gpus);
    for _ in 0..8 {
        if best_max <= bound * 1.005 {
            break;
        }
        let loads: Vec<f64> =
            best.iter().map(|g| g.iter().map(|&e| w[e as usize] / counts[e as usize] as f64).sum()).collect();
        let hot = (0..gpus).max_by(|&a, &b| loads[a].total_cmp(&loads[b])).unwrap_or(0);
        let mut candidates: Vec<u32> = best[hot].clone();
        candidates.sort_by(|&a, &b| {
            (w[b as usize] / counts[b as usize] as f64).total_cmp(&(w[a as usize] / counts[a as usize] as f64))
        });
        candidates.dedup();
        let mut improved = false;
        // More replicas than GPUs would force two copies onto one GPU.
        for x in candidates.into_iter().filter(|&x| (counts[x as usize] as usize) < gpus).take(2) {
            // The expert that misses a replica least: smallest load per replica after losing one.
            let donor = (0..w.len())
                .filter(|&y| y != x as usize && counts[y] >= 2)
                .min_by(|&a, &b| (w[a] / (counts[a] - 1) as f64).total_cmp(&(w[b] / (counts[b] - 1) as f64)));
            let Some(donor) = donor else { continue };
            let mut trial = counts.clone();
            trial[x as usize] += 1;
            trial[donor] -= 1;
            let (packed, m) = pack_counts(w, &trial, gpus, per_gpu);
            if m < best_max * (1.0 - 1e-12) {
                counts = trial;
                best = packed;
                best_max = m;
                improved = true;
                break;
            }
        }
        if !improved {
            break;
        }
    }
    flatten(&best)
}

fn flatten(gpus: &[Vec<u32>]) -> Vec<u32> {
    gpus.iter().flatten().copied().collect()
}

/// Packs the replicas of `counts`; returns each GPU's experts and the max load.
fn pack_counts(w: &[f64], counts: &[u32], gpus: usize, per_gpu: usize) -> (Vec<Vec<u32>>, f64) {
    let mut sizes = Vec::with_capacity(gpus * per_gpu);
    let mut tags = Vec::with_capacity(gpus * per_gpu);
    for (e, &c) in counts.iter().enumerate() {
        for _ in 0..c {
            sizes.push(w[e] / c as f64);
            tags.push(e as u32);
        }
    }
    let (packs, m) = pack(&sizes, &tags, gpus, per_gpu);
    (packs.into_iter().map(|items| items.into_iter().map(|i| tags[i]).collect()).collect(), m)
}

/// Packs items (with a tag each: items of one tag avoid sharing a pack) into `packs` packs
/// of exactly `per_pack` items: heaviest first to the lightest pack with room, then swaps.
/// Returns the items of each pack and the largest pack weight.
fn pack(sizes: &[f64], tags: &[u32], packs: usize, per_pack: usize) -> (Vec<Vec<usize>>, f64) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| sizes[b].total_cmp(&sizes[a]).then(a.cmp(&b)));
    let mut items: Vec<Vec<usize>> = vec![Vec::with_capacity(per_pack); packs];
    let mut load = vec![0.0f64; packs];
    // Packs with room, lightest first (loads as ordered bits: all are ≥ 0).
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = (0..packs).map(|p| Reverse((0, p))).collect();
    let mut skipped: Vec<Reverse<(u64, usize)>> = Vec::new();
    for i in order {
        // The lightest pack without this tag; the lightest one at all if every pack has it.
        let mut chosen = None;
        while let Some(top) = heap.pop() {
            let p = top.0 .1;
            if items[p].iter().any(|&j| tags[j] == tags[i]) {
                skipped.push(top);
            } else {
                chosen = Some(p);
                break;
            }
        }
        let p = match chosen {
            Some(p) => p,
            None => match skipped.first() {
                Some(&Reverse((_, p))) => {
                    skipped.remove(0);
                    p
                }
                None => break,
            },
        };
        heap.extend(skipped.drain(..));
        items[p].push(i);
        load[p] += sizes[i];
        if items[p].len() < per_pack {
            heap.push(Reverse((load[p].to_bits(), p)));
        }
    }
    refine(sizes, tags, &mut items, &mut load);
    let m = max(&load);
    (items, m)
}

/// Removes second copies of a tag from a pack: swaps the copy with an item of another pack
/// that holds neither tag, when neither pack then exceeds the current maximum.
fn dedup(sizes: &[f64], tags: &[u32], items: &mut [Vec<usize>], load: &mut [f64]) {
    let limit = max(load) * (1.0 + 1e-12);
    for p in 0..items.len() {
        'copies: loop {
            let dup = items[p]
                .iter()
                .enumerate()
                .find_map(|(i, &a)| items[p][..i].iter().any(|&b| tags[b] == tags[a]).then_some(i));
            let Some(ai) = dup else { break };
            let a = items[p][ai];
            for q in (0..items.len()).filter(|&q| q != p) {
                if items[q].iter().any(|&x| tags[x] == tags[a]) {
                    continue;
                }
                for bi in 0..items[q].len() {
                    let b = items[q][bi];
                    let new_p = load[p] - sizes[a] + sizes[b];
                    let new_q = load[q] - sizes[b] + sizes[a];
                    if !items[p].iter().any(|&x| tags[x] == tags[b]) && new_p <= limit && new_q <= limit {
                        items[p][ai] = b;
                        items[q][bi] = a;
                        load[p] = new_p;
                        load[q] = new_q;
                        continue 'copies;
                    }
                }
            }
            break; // no partner: the copy stays
        }
    }
}

/// Swaps an item of the most loaded pack with a lighter item elsewhere while that lowers
/// the maximum, never putting two items of one tag in one pack. For each candidate pack,
/// the swap taken is the one that moves the most weight off the hot pack without making
/// the other pack the new maximum.
fn refine(sizes: &[f64], tags: &[u32], items: &mut [Vec<usize>], load: &mut [f64]) {
    let packs = items.len();
    let holds = |items: &[Vec<usize>], p: usize, tag: u32, except: usize| {
        items[p].iter().any(|&j| j != except && tags[j] == tag)
    };
    if items.iter().all(|i| i.len() <= 1) {
        // Swapping single items only exchanges loads.
        return;
    }
    let mean = load.iter().sum::<f64>() / packs as f64;
    // Packs by load, kept sorted across rounds: a swap changes two loads, which are
    // re-placed by binary search.
    let mut order: Vec<usize> = (0..packs).collect();
    order.sort_by(|&a, &b| load[a].total_cmp(&load[b]));
    let reposition = |order: &mut Vec<usize>, load: &[f64], p: usize| {
        if let Some(i) = order.iter().position(|&x| x == p) {
            order.remove(i);
        }
        let j = order.partition_point(|&x| load[x] < load[p]);
        order.insert(j, p);
    };
    // Each round fixes the hottest pack; a few rounds per pack reach a local optimum.
    for _ in 0..2 * packs {
        let hot = order[packs - 1];
        if load[hot] <= mean * (1.0 + 2e-3) {
            return; // within 0.2% of the mean: what is left is not worth the time
        }
        let mut swap: Option<(usize, usize, usize)> = None;
        for &other in &order[..packs - 1] {
            let room = load[hot] - load[other];
            if room <= load[hot] * 1e-12 {
                break;
            }
            // Moving d = s_a − s_b off the hot pack helps when 0 < d < room; best near room/2.
            let mut best: Option<(f64, usize, usize)> = None;
            for (ai, &a) in items[hot].iter().enumerate() {
                for (bi, &b) in items[other].iter().enumerate() {
                    let d = sizes[a] - sizes[b];
                    if d <= 0.0 || d >= room {
                        continue;
                    }
                    let score = (d - room / 2.0).abs();
                    if best.is_none_or(|(s, ..)| score < s)
                        && (tags[a] == tags[b] || (!holds(items, other, tags[a], b) && !holds(items, hot, tags[b], a)))
                    {
                        best = Some((score, ai, bi));
                    }
                }
            }
            if let Some((_, ai, bi)) = best {
                swap = Some((ai, other, bi));
                break;
            }
        }
        let Some((ai, other, bi)) = swap else { return };
        let a = items[hot][ai];
        let b = items[other][bi];
        items[hot][ai] = b;
        items[other][bi] = a;
        load[hot] += sizes[b] - sizes[a];
        load[other] += sizes[a] - sizes[b];
        reposition(&mut order, load, hot);
        reposition(&mut order, load, other);
    }
}

/// Exact optimum of a small layer by branch and bound, among placements with no two copies
/// of an expert on one GPU: over replica-count vectors whose largest replica could beat the
/// incumbent, the best packing of each. Returns a strictly
/// better placement than `incumbent`, or None when there is none or the node budget ran out
/// (then the caller's heuristic result stands).
fn exact(w: &[f64], slots: usize, gpus: usize, incumbent: f64) -> Option<(Vec<Vec<u32>>, f64)> {
    let mut search = Exact { w, per_gpu: slots / gpus, gpus, bound: incumbent, best: None, budget: 2_000_000 };
    let mut counts = vec![1u32; w.len()];
    let complete = search.counts(0, (slots - w.len()) as u32, &mut counts);
    if complete {
        search.best
    } else {
        None
    }
}

/// State of the exact search; `bound` is the best maximum found so far.
struct Exact<'a> {
    w: &'a [f64],
    per_gpu: usize,
    gpus: usize,
    bound: f64,
    best: Option<(Vec<Vec<u32>>, f64)>,
    budget: u64,
}

impl Exact<'_> {
    /// Chooses the count of expert `e` onwards with `spare` extra replicas left; false when
    /// the budget ran out.
    fn counts(&mut self, e: usize, spare: u32, counts: &mut [u32]) -> bool {
        if e == self.w.len() {
            return spare != 0 || self.pack_all(counts);
        }
        for extra in 0..=spare {
            let c = 1 + extra;
            // A replica as large as the bound cannot be part of a better placement.
            if self.w[e] / c as f64 >= self.bound * (1.0 - 1e-12) {
                continue;
            }
            counts[e] = c;
            if !self.counts(e + 1, spare - extra, counts) {
                return false;
            }
        }
        counts[e] = 1;
        true
    }

    fn pack_all(&mut self, counts: &[u32]) -> bool {
        let mut items: Vec<(f64, u32)> = Vec::new();
        for (x, &c) in counts.iter().enumerate() {
            items.extend((0..c).map(|_| (self.w[x] / c as f64, x as u32)));
        }
        items.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut packs: Vec<Vec<u32>> = vec![Vec::new(); self.gpus];
        let mut load = vec![0.0; self.gpus];
        self.pack(0, &items, &mut packs, &mut load)
    }

    fn pack(&mut self, i: usize, items: &[(f64, u32)], packs: &mut [Vec<u32>], load: &mut [f64]) -> bool {
        if self.budget == 0 {
            return false;
        }
        self.budget -= 1;
        if i == items.len() {
            let m = max(load);
            if m < self.bound * (1.0 - 1e-12) {
                self.bound = m;
                self.best = Some((packs.to_vec(), m));
            }
            return true;
        }
        let (s, tag) = items[i];
        let mut tried: Vec<(f64, usize)> = Vec::new();
        for p in 0..packs.len() {
            // Full, too heavy, or already holding this expert (a second copy on one GPU
            // wastes a slot: the search is over placements without one).
            if packs[p].len() >= self.per_gpu || load[p] + s >= self.bound * (1.0 - 1e-12) || packs[p].contains(&tag) {
                continue;
            }
            // Packs with the same load and fill are interchangeable: try one of them.
            if tried.iter().any(|&(l, c)| l == load[p] && c == packs[p].len()) {
                continue;
            }
            tried.push((load[p], packs[p].len()));
            packs[p].push(tag);
            load[p] += s;
            let ok = self.pack(i + 1, items, packs, load);
            load[p] -= s;
            packs[p].pop();
            if !ok {
                return false;
            }
        }
        true
    }
}
