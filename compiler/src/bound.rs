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
use std::collections::HashMap;

/// The lower bound for the program set behind `dag`; `busy[r]` is rank r's compute time.
pub fn makespan_lower_bound(dag: &PlanDag, costs: &CostModel, busy: &[f64]) -> f64 {
    let layout = &dag.layout;
    // Every unit, where it runs.
    let mut rank_of: HashMap<UnitKey, u32> = HashMap::new();
    for (r, events) in dag.units.iter().enumerate() {
        for u in events.iter().flatten() {
            rank_of.insert(*u, r as u32);
        }
    }
    let cost = |u: &UnitKey| costs.unit(u.kind, u.stage);
    // The producer of a unit's inputs (a gradient from the next stage's B, or its I).
    let inputs = |u: &UnitKey| -> Vec<UnitKey> {
        let at = |kind, stage| UnitKey { kind, stage, ..*u };
        let grad = |stage| {
            let b = at(UnitKind::B, stage);
            if rank_of.contains_key(&b) {
                b
            } else {
                at(UnitKind::I, stage)
            }
        };
        match u.kind {
            UnitKind::F if u.stage > 0 => vec![at(UnitKind::F, u.stage - 1)],
            UnitKind::F => vec![],
            UnitKind::B | UnitKind::I if u.stage + 1 < layout.stages => {
                vec![at(UnitKind::F, u.stage), grad(u.stage + 1)]
            }
            UnitKind::B | UnitKind::I => vec![at(UnitKind::F, u.stage)],
            UnitKind::W => vec![at(UnitKind::I, u.stage)],
        }
    };
    let hop = |a: &UnitKey, b: &UnitKey| if rank_of.get(a) != rank_of.get(b) { costs.p2p } else { 0.0 };
    // Units in dependency order: by pipe and microbatch, forwards by stage, then backwards
    // from the last stage down, W last.
    let mut order: Vec<UnitKey> = rank_of.keys().copied().collect();
    let position = |u: &UnitKey| -> (u32, u32, u32, i64) {
        let phase = match u.kind {
            UnitKind::F => (0, u.stage as i64),
            UnitKind::B | UnitKind::I => (1, -(u.stage as i64)),
            UnitKind::W => (2, u.stage as i64),
        };
        (u.pipe, u.mb, phase.0, phase.1)
    };
    order.sort_by_key(position);
    let mut head: HashMap<UnitKey, f64> = HashMap::with_capacity(order.len());
    for u in &order {
        let h = inputs(u).iter().filter_map(|p| head.get(p).map(|hp| hp + cost(p) + hop(p, u))).fold(0.0, f64::max);
        head.insert(*u, h);
    }
    let mut tail: HashMap<UnitKey, f64> = order.iter().map(|u| (*u, 0.0)).collect();
    for u in order.iter().rev() {
        let after = tail[u] + cost(u);
        for p in inputs(u) {
            if let Some(t) = tail.get_mut(&p) {
                *t = t.max(after + hop(&p, u));
            }
        }
    }
    let critical = order.iter().map(|u| head[u] + cost(u) + tail[u]).fold(0.0, f64::max);
    let per_rank = dag
        .units
        .iter()
        .enumerate()
        .map(|(r, events)| {
            let units: Vec<&UnitKey> = events.iter().flatten().collect();
            if units.is_empty() {
                return 0.0;
            }
            let first = units.iter().map(|u| head[u]).fold(f64::INFINITY, f64::min);
            let last = units.iter().map(|u| tail[u]).fold(f64::INFINITY, f64::min);
            first + busy.get(r).copied().unwrap_or(0.0) + last
        })
        .fold(0.0, f64::max);
    critical.max(per_rank)
}
