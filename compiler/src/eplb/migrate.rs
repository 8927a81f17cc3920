//! Migration-aware rebalancing: from the current layout, reach a placement whose maximum GPU
//! load is within `tolerance` of a fresh placement's while moving as few expert slots as
//! possible. Renumbering GPUs is free, so a slot counts as moved only when its GPU (after
//! the best renumbering) no longer holds that expert.
//!
//! Per layer:
//! 1. If the current layout's maximum is within `threshold` of the fresh one's, keep it
//!    (0 moves): the gain does not pay for the migration.
//! 2. Otherwise, two candidates. (a) The fresh placement, renumbered to overlap the current
//!    one as much as possible (greedy matching of GPUs by common experts). (b) A local search
//!    from the current layout: while the maximum is above the target, apply the move with
//!    the best reduction of the hottest GPU's load per moved slot. A move either swaps two
//!    slots between the hottest GPU and another GPU without lifting that one above it (2
//!    slots), or gives one slot of the expert that misses it least to the hottest GPU's
//!    heaviest expert (1 slot, accepted when it lowers the overall maximum).
//! 3. Keep the candidate that reaches the target with fewer moves; (a) always reaches it.

use super::balanced::max_load;
use super::{balanced, deepseek, EplbError, Loads, Params, Placement, Policy};

/// Knobs of migration-aware rebalancing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Migration {
    /// Accept a maximum GPU load up to (1 + tolerance) × the fresh placement's.
    pub tolerance: f64,
    /// Keep the current layout when it is within (1 + threshold) × the fresh maximum.
    pub threshold: f64,
}

impl Default for Migration {
    fn default() -> Self {
        Migration { tolerance: 0.01, threshold: 0.01 }
    }
}

/// Rebalances every layer from `previous` (its `phy2log`).
pub fn rebalance_from(
    loads: &Loads,
    p: &Params,
    policy: Policy,
    previous: &[Vec<u32>],
    opts: Migration,
) -> Result<Placement, EplbError> {
    p.check(loads.experts())?;
    if previous.len() != loads.rows.len() {
        return Err(EplbError::Shape(format!(
            "the previous layout has {} layers but the loads have {}",
            previous.len(),
            loads.rows.len()
        )));
    }
    let k = p.per_gpu();
    let mut total_moved = 0;
    let mut out = Vec::with_capacity(previous.len());
    for (l, (w, prev)) in loads.rows.iter().zip(previous).enumerate() {
        if prev.len() != p.replicas || prev.iter().any(|&e| e as usize >= w.len()) {
            return Err(EplbError::Shape(format!(
                "previous layout, layer {l}: needs {} slots holding experts below {}",
                p.replicas,
                w.len()
            )));
        }
        let fresh = match policy {
            Policy::DeepSeek => deepseek::layer(w, p),
            Policy::Balanced => balanced::layer(w, p, p.hierarchical()),
            Policy::BalancedGlobal => balanced::layer(w, p, false),
        };
        let fresh_max = max_load(w, &fresh, k);
        let (layout, moved) = if max_load(w, prev, k) <= fresh_max * (1.0 + opts.threshold) {
            (prev.clone(), 0)
        } else {
            let target = fresh_max * (1.0 + opts.tolerance);
            let relabelled = align(prev, &fresh, k);
            let moved_fresh = moved_slots(prev, &relabelled, k);
            match local_search(w, prev, k, target, moved_fresh) {
                Some((layout, moved)) if moved < moved_fresh => (layout, moved),
                _ => (relabelled, moved_fresh),
            }
        };
        total_moved += moved;
        out.push(layout);
    }
    let mut placement = Placement::from_phy2log(loads, p, out);
    placement.moved_slots = Some(total_moved);
    Ok(placement)
}

/// Slots of `new` whose GPU did not hold that expert in `old` (same GPU numbering).
pub fn moved_slots(old: &[u32], new: &[u32], k: usize) -> usize {
    old.chunks(k).zip(new.chunks(k)).map(|(a, b)| k - common(a, b)).sum()
}

/// Size of the multiset intersection of two small slot lists.
fn common(a: &[u32], b: &[u32]) -> usize {
    let mut rest: Vec<u32> = a.to_vec();
    b.iter()
        .filter(|x| {
            if let Some(i) = rest.iter().position(|y| y == *x) {
                rest.swap_remove(i);
                true
            } else {
                false
            }
        })
        .count()
}

/// Renumbers the GPUs of `new` to overlap `old` (greedy on common experts), and orders
/// each GPU's slots so that kept experts stay in their old slots.
pub fn align(old: &[u32], new: &[u32], k: usize) -> Vec<u32> {
    let gpus = old.len() / k;
    let old_gpus: Vec<&[u32]> = old.chunks(k).collect();
    let new_gpus: Vec<&[u32]> = new.chunks(k).collect();
    let mut pairs: Vec<(usize, usize, usize)> = Vec::new();
    for (n, ng) in new_gpus.iter().enumerate() {
        for (o, og) in old_gpus.iter().enumerate() {
            let c = common(og, ng);
            if c > 0 {
                pairs.push((c, n, o));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut new_to_old: Vec<Option<usize>> = vec![None; gpus];
    let mut old_taken = vec![false; gpus];
    for (_, n, o) in pairs {
        if new_to_old[n].is_none() && !old_taken[o] {
            new_to_old[n] = Some(o);
            old_taken[o] = true;
        }
    }
    let mut free = (0..gpus).filter(|&o| !old_taken[o]);
    let mut out = vec![0u32; old.len()];
    for (n, ng) in new_gpus.iter().enumerate() {
        let o = new_to_old[n].unwrap_or_else(|| free.next().unwrap_or(n));
        let mut remaining: Vec<u32> = ng.to_vec();
        let slots = &mut out[o * k..(o + 1) * k];
        let mut filled = vec![false; k];
        for (i, &e) in old_gpus[o].iter().enumerate() {
            if let Some(j) = remaining.iter().position(|&x| x == e) {
                slots[i] = e;
                filled[i] = true;
                remaining.swap_remove(j);
            }
        }
        let mut rest = remaining.into_iter();
        for i in 0..k {
            if !filled[i] {
                slots[i] = rest.next().unwrap_or(0);
            }
        }
    }
    out
}

/// Improves `start` by cheap moves until its maximum is ≤ `target`; None if it cannot get
/// there within `limit` moved slots.
fn local_search(w: &[f64], start: &[u32], k: usize, target: f64, limit: usize) -> Option<(Vec<u32>, usize)> {
    let mut layout = start.to_vec();
    let n = w.len();
    let gpus = layout.len() / k;
    for _ in 0..4 * layout.len() {
        let mut count = vec![0u32; n];
        for &e in &layout {
            count[e as usize] += 1;
        }
        let load_of = |layout: &[u32], count: &[u32], g: usize| -> f64 {
            layout[g * k..(g + 1) * k].iter().map(|&e| w[e as usize] / count[e as usize] as f64).sum()
        };
        let loads: Vec<f64> = (0..gpus).map(|g| load_of(&layout, &count, g)).collect();
        let current = super::max(&loads);
        if current <= target {
            return Some((layout.clone(), moved_slots(start, &layout, k)));
        }
        if moved_slots(start, &layout, k) >= limit {
            return None;
        }
        let hot = (0..gpus).max_by(|&a, &b| loads[a].total_cmp(&loads[b]))?;
        // Best move by reduction of the maximum per slot moved.
        let mut best: Option<(f64, Vec<(usize, u32)>)> = None;
        let mut consider = |gain: f64, cost: usize, edits: Vec<(usize, u32)>| {
            if gain > 1e-12 && best.as_ref().is_none_or(|(g, _)| gain / cost as f64 > *g) {
                best = Some((gain / cost as f64, edits));
            }
        };
        // Swaps between the hottest GPU and another.
        for a in hot * k..(hot + 1) * k {
            let sa = w[layout[a] as usize] / count[layout[a] as usize] as f64;
            for g in (0..gpus).filter(|&g| g != hot) {
                for b in g * k..(g + 1) * k {
                    let sb = w[layout[b] as usize] / count[layout[b] as usize] as f64;
                    if sb >= sa {
                        continue;
                    }
                    // Lower the hottest GPU without lifting its partner above it: each such
                    // move shrinks the sorted load vector, so the search cannot cycle.
                    let peak = (loads[hot] - sa + sb).max(loads[g] - sb + sa);
                    consider(loads[hot] - peak, 2, vec![(a, layout[b]), (b, layout[a])]);
                }
            }
        }
        // Re-replication: one slot of the cheapest donor becomes a replica of a hot expert.
        for a in hot * k..(hot + 1) * k {
            let x = layout[a] as usize;
            let donor = (0..n)
                .filter(|&y| y != x && count[y] >= 2)
                .min_by(|&p, &q| (w[p] / (count[p] - 1) as f64).total_cmp(&(w[q] / (count[q] - 1) as f64)));
            let Some(y) = donor else { continue };
            // The donor's slot on the least loaded GPU that holds it.
            let slot = (0..layout.len())
                .filter(|&s| layout[s] as usize == y)
                .min_by(|&s, &t| loads[s / k].total_cmp(&loads[t / k]))?;
            let mut trial = layout.clone();
            trial[slot] = x as u32;
            let mut c2 = count.clone();
            c2[x] += 1;
            c2[y] -= 1;
            let peak = (0..gpus).map(|g| load_of(&trial, &c2, g)).fold(0.0, f64::max);
            consider(current - peak, 1, vec![(slot, x as u32)]);
        }
        let (_, edits) = best?;
        for (slot, e) in edits {
            layout[slot] = e;
        }
    }
    None
}
