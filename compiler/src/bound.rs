//! A lower bound on the makespan of a spec: of every program set that does its work on
//! its layout, whatever the order of the ops, whether backwards are split into I + W, and
//! which forwards and backwards run as overlapped pairs.
//!
//! On the data dependencies alone (F(s−1) → F(s), F(s) → B/I(s), B/I(s+1) → B/I(s),
//! I → W; a transfer between ranks adds at least one `p2p`), with each unit at its own cost
//! (an FB's forward is never available before its F-alone time), let `head(u)` be the
//! longest chain ending just before u starts and `tail(u)` the longest chain after u ends.
//! Then every execution takes at least
//! - the critical path, max over u of head(u) + cost(u) + tail(u), and
//! - for every rank r: min head(u) over r's units (it cannot start earlier) + r's busy time
//!   (its ops run one at a time) + min tail(u) over r's units (whatever r runs last still
//!   has that much work after it).
//!
//! To hold for every plan of the spec, the bound splits every backward whose split is a
//! choice (I is on the gradient chain, W is not), counts each unit at the cheaper of its
//! own cost and its overlapped cost, and takes from each rank's busy time the most that
//! pairing could save: one pair per microbatch and module, each saving at most the best
//! `F + B − FB` of that rank's stages.

use crate::cost::CostModel;
use crate::dag::UnitKey;
use crate::ir::{Layout, UnitKind};

/// Dense index of a unit: (kind, pipe, stage, mb).
struct Index {
    pipes: usize,
    stages: usize,
    mbs: usize,
}

impl Index {
    fn of(&self, u: &UnitKey) -> Option<usize> {
        let k = match u.kind {
            UnitKind::F => 0,
            UnitKind::B => 1,
            UnitKind::I => 2,
            UnitKind::W => 3,
        };
        let (p, s, m) = (u.pipe as usize, u.stage as usize, u.mb as usize);
        (p < self.pipes && s < self.stages && m < self.mbs)
            .then(|| ((k * self.pipes + p) * self.stages + s) * self.mbs + m)
    }
    fn len(&self) -> usize {
        4 * self.pipes * self.stages * self.mbs
    }
}

/// The lower bound of every plan of `layout` under `costs` (see the module doc).
pub fn spec_lower_bound(layout: &Layout, costs: &CostModel) -> f64 {
    if costs.stages() != layout.stages as usize {
        return 0.0;
    }
    let splittable = |s: u32| costs.weight[s as usize] > 0.0 && costs.weight[s as usize] < costs.backward[s as usize];
    let mut units: Vec<Vec<UnitKey>> = Vec::with_capacity(layout.modules.len());
    let mut busy = Vec::with_capacity(layout.modules.len());
    for mods in &layout.modules {
        let mut mine = Vec::new();
        let mut work = 0.0;
        let mut saving = 0.0f64;
        for a in mods {
            for b in mods {
                let (fa, bb) = (costs.forward[a.stage as usize], costs.backward[b.stage as usize]);
                saving = saving.max(fa + bb - costs.overlapped(a.stage, b.stage));
            }
            let (p, s) = (a.pipe, a.stage);
            for mb in 0..layout.microbatches {
                let u = |kind| UnitKey { kind, pipe: p, stage: s, mb };
                mine.push(u(UnitKind::F));
                if splittable(s) {
                    mine.extend([u(UnitKind::I), u(UnitKind::W)]);
                } else {
                    mine.push(u(UnitKind::B));
                }
                work += costs.forward[s as usize] + costs.backward[s as usize];
            }
        }
        let pairs = mods.len() as f64 * layout.microbatches as f64;
        busy.push(work - pairs * saving.max(0.0));
        units.push(mine);
    }
    let cost = |u: &UnitKey| {
        let own = costs.unit(u.kind, u.stage);
        match u.kind {
            UnitKind::W => own,
            _ => own.min(costs.min_overlapped_with(u.stage)),
        }
    };
    lower_bound(layout, &units, cost, costs.hop(), &busy)
}

/// The bound for the units `units[rank]` (each at `cost`), ranks busy at least `busy`.
fn lower_bound(layout: &Layout, units: &[Vec<UnitKey>], cost: impl Fn(&UnitKey) -> f64, p2p: f64, busy: &[f64]) -> f64 {
    // Microbatches as the layout counts them (units naming others are invalid and left out:
    // the verifier reports them), so that a stray huge number cannot blow up the arrays.
    let mbs = layout.microbatches as usize;
    let ix = Index { pipes: layout.pipes as usize, stages: layout.stages as usize, mbs };
    // Where every unit runs (u32::MAX: absent).
    let mut rank_of = vec![u32::MAX; ix.len()];
    for (r, events) in units.iter().enumerate() {
        for u in events {
            if let Some(i) = ix.of(u) {
                rank_of[i] = r as u32;
            }
        }
    }
    let present = |u: &UnitKey| ix.of(u).is_some_and(|i| rank_of[i] != u32::MAX);
    // The producers of a unit's inputs (a gradient from the next stage's B, or its I).
    let inputs = |u: &UnitKey| -> [Option<UnitKey>; 2] {
        let at = |kind, stage| UnitKey { kind, stage, ..*u };
        let grad = |stage| {
            let b = at(UnitKind::B, stage);
            if present(&b) {
                b
            } else {
                at(UnitKind::I, stage)
            }
        };
        match u.kind {
            UnitKind::F if u.stage > 0 => [Some(at(UnitKind::F, u.stage - 1)), None],
            UnitKind::F => [None, None],
            UnitKind::B | UnitKind::I if u.stage + 1 < layout.stages => {
                [Some(at(UnitKind::F, u.stage)), Some(grad(u.stage + 1))]
            }
            UnitKind::B | UnitKind::I => [Some(at(UnitKind::F, u.stage)), None],
            UnitKind::W => [Some(at(UnitKind::I, u.stage)), None],
        }
    };
    let rank = |u: &UnitKey| ix.of(u).map_or(u32::MAX, |i| rank_of[i]);
    let hop = |a: &UnitKey, b: &UnitKey| if rank(a) != rank(b) { p2p } else { 0.0 };
    // A dependency order: per pipe and microbatch, forwards up the stages, backwards down,
    // W last.
    let mut order: Vec<UnitKey> = Vec::with_capacity(ix.len() / 2);
    for pipe in 0..layout.pipes {
        for mb in 0..mbs as u32 {
            let unit = |kind, stage| UnitKey { kind, pipe, stage, mb };
            order.extend((0..layout.stages).map(|s| unit(UnitKind::F, s)));
            for s in (0..layout.stages).rev() {
                order.extend([unit(UnitKind::B, s), unit(UnitKind::I, s)]);
            }
            order.extend((0..layout.stages).map(|s| unit(UnitKind::W, s)));
        }
    }
    order.retain(|u| present(u));
    let at = |v: &[f64], u: &UnitKey| ix.of(u).map_or(0.0, |i| v[i]);
    let mut head = vec![0.0f64; ix.len()];
    for u in &order {
        let h = inputs(u)
            .iter()
            .flatten()
            .filter(|p| present(p))
            .map(|p| at(&head, p) + cost(p) + hop(p, u))
            .fold(0.0, f64::max);
        if let Some(i) = ix.of(u) {
            head[i] = h;
        }
    }
    let mut tail = vec![0.0f64; ix.len()];
    for u in order.iter().rev() {
        let after = at(&tail, u) + cost(u);
        for p in inputs(u).iter().flatten().filter(|p| present(p)) {
            if let Some(i) = ix.of(p) {
                tail[i] = tail[i].max(after + hop(p, u));
            }
        }
    }
    let critical = order.iter().map(|u| at(&head, u) + cost(u) + at(&tail, u)).fold(0.0, f64::max);
    // Order statistics (see `throughput_releases`): `release[ix(k)]` bounds the start of the
    // k-th unit of its group to start, `delivery[ix(k)]` the time after the k-th to end last.
    let (release, delivery) = throughput_releases(&order, &ix, &inputs, &cost, &hop);
    let per_rank = units
        .iter()
        .enumerate()
        .map(|(r, units)| {
            if units.is_empty() {
                return 0.0;
            }
            let first = units.iter().map(|u| at(&head, u)).fold(f64::INFINITY, f64::min);
            let last = units.iter().map(|u| at(&tail, u)).fold(f64::INFINITY, f64::min);
            let busy = busy.get(r).copied().unwrap_or(0.0);
            let simple = first + busy + last;
            // Without pairing every unit runs alone at its cost: the rank is one machine
            // with release dates (heads) and delivery times (tails).
            let work: f64 = units.iter().map(&cost).sum();
            if busy >= work - 1e-9 {
                let jobs: Vec<(f64, f64, f64)> = units
                    .iter()
                    .map(|u| {
                        let reversed = UnitKey { mb: (mbs as u32 - 1).saturating_sub(u.mb), ..*u };
                        (at(&release, u), cost(u), at(&delivery, &reversed))
                    })
                    .collect();
                simple.max(preemptive_jackson(jobs))
            } else {
                simple
            }
        })
        .fold(0.0, f64::max);
    critical.max(per_rank)
}

/// Release and delivery times by order statistics. The units of one group (kind, pipe,
/// stage: one per microbatch) run on one rank, one at a time, at one cost, and microbatches
/// are interchangeable; so whatever the schedule, the k-th unit of a group to start needs
/// k + 1 distinct microbatches to have finished each of its inputs' groups, and a group's
/// (k+1)-th completion is at least the single-machine schedule of its first k + 1
/// releases: `fin(k) = max(fin(k−1), release(k)) + cost`. This is what makes a rank that
/// is fed by a slower one idle during the fill, which per-unit heads miss (every
/// microbatch has the same head). The same recursion on the reversed dependencies gives
/// delivery times for the k-th unit to end, counted from the last. Units are indexed with
/// the order statistic k in place of the microbatch.
fn throughput_releases(
    order: &[UnitKey],
    ix: &Index,
    inputs: &impl Fn(&UnitKey) -> [Option<UnitKey>; 2],
    cost: &impl Fn(&UnitKey) -> f64,
    hop: &impl Fn(&UnitKey, &UnitKey) -> f64,
) -> (Vec<f64>, Vec<f64>) {
    // Groups in dependency order: the order of microbatch 0's units.
    let groups: Vec<UnitKey> = order.iter().filter(|u| u.mb == 0).copied().collect();
    let with_mb = |u: &UnitKey, k: usize| UnitKey { mb: k as u32, ..*u };
    let mut release = vec![0.0f64; ix.len()];
    let mut finish = vec![0.0f64; ix.len()];
    for g in &groups {
        let mut prev = 0.0f64;
        for k in 0..ix.mbs {
            let u = with_mb(g, k);
            let Some(i) = ix.of(&u) else { continue };
            let r = inputs(&u)
                .iter()
                .flatten()
                .filter_map(|p| ix.of(p).map(|j| finish[j] + hop(p, &u)))
                .fold(0.0, f64::max);
            release[i] = r;
            prev = prev.max(r) + cost(&u);
            finish[i] = prev;
        }
    }
    let mut delivery = vec![0.0f64; ix.len()];
    for g in groups.iter().rev() {
        let mut prev = 0.0f64;
        for k in 0..ix.mbs {
            let u = with_mb(g, k);
            let Some(i) = ix.of(&u) else { continue };
            prev = prev.max(delivery[i]) + cost(&u);
            for p in inputs(&u).iter().flatten() {
                if let Some(j) = ix.of(p) {
                    delivery[j] = delivery[j].max(prev + hop(p, &u));
                }
            }
        }
    }
    (release, delivery)
}

/// The optimum of one machine with release dates, processing times and delivery times
/// when jobs may be preempted (`1|r_j, pmtn, q_j|C_max`): run, at every moment, the
/// released job with the longest delivery time. No non-preemptive schedule of the same
/// jobs ends earlier, so this is a lower bound on a rank that runs them. `jobs`:
/// (release, processing, delivery).
pub fn preemptive_jackson(mut jobs: Vec<(f64, f64, f64)>) -> f64 {
    use std::cmp::Ordering;
    use std::collections::BinaryHeap;
    #[derive(PartialEq)]
    struct Ready(f64, f64);
    impl Eq for Ready {}
    impl PartialOrd for Ready {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Ready {
        fn cmp(&self, other: &Self) -> Ordering {
            self.0.total_cmp(&other.0)
        }
    }
    jobs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut ready: BinaryHeap<Ready> = BinaryHeap::new();
    let (mut t, mut i, mut end) = (0.0f64, 0usize, 0.0f64);
    while i < jobs.len() || !ready.is_empty() {
        if ready.is_empty() {
            t = t.max(jobs[i].0);
        }
        while i < jobs.len() && jobs[i].0 <= t {
            ready.push(Ready(jobs[i].2, jobs[i].1));
            i += 1;
        }
        let Some(Ready(q, left)) = ready.pop() else { continue };
        let next = jobs.get(i).map_or(f64::INFINITY, |j| j.0);
        if t + left <= next {
            t += left;
            end = end.max(t + q);
        } else {
            ready.push(Ready(q, left - (next - t)));
            t = next;
        }
    }
    end
}
