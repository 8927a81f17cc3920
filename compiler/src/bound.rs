//! A lower bound on the makespan of a program set, whatever the order of its ops.
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

use crate::cost::CostModel;
use crate::dag::{PlanDag, UnitKey};
use crate::ir::UnitKind;

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

/// The lower bound for the program set behind `dag`; `busy[r]` is rank r's compute time.
pub fn makespan_lower_bound(dag: &PlanDag, costs: &CostModel, busy: &[f64]) -> f64 {
    let layout = &dag.layout;
    // Microbatches as the layout counts them (units naming others are invalid and left out:
    // the verifier reports them), so that a stray huge number cannot blow up the arrays.
    let mbs = layout.microbatches as usize;
    let ix = Index { pipes: layout.pipes as usize, stages: layout.stages as usize, mbs };
    // Where every unit runs (u32::MAX: absent).
    let mut rank_of = vec![u32::MAX; ix.len()];
    for (r, events) in dag.units.iter().enumerate() {
        for u in events.iter().flatten() {
            if let Some(i) = ix.of(u) {
                rank_of[i] = r as u32;
            }
        }
    }
    let present = |u: &UnitKey| ix.of(u).is_some_and(|i| rank_of[i] != u32::MAX);
    let cost = |u: &UnitKey| costs.unit(u.kind, u.stage);
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
    let hop = |a: &UnitKey, b: &UnitKey| if rank(a) != rank(b) { costs.p2p } else { 0.0 };
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
    let per_rank = dag
        .units
        .iter()
        .enumerate()
        .map(|(r, events)| {
            let units: Vec<&UnitKey> = events.iter().flatten().collect();
            if units.is_empty() {
                return 0.0;
            }
            let first = units.iter().map(|u| at(&head, u)).fold(f64::INFINITY, f64::min);
            let last = units.iter().map(|u| at(&tail, u)).fold(f64::INFINITY, f64::min);
            first + busy.get(r).copied().unwrap_or(0.0) + last
        })
        .fold(0.0, f64::max);
    critical.max(per_rank)
}
