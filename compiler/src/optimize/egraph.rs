//! E-graph refinement of rank-local windows (the approach is in the parent module's doc).
//!
//! For a window of `Options::window` consecutive compute ops on one rank, the other ranks
//! held fixed at their current timing ([`comm::compute_times`]):
//! - `release(op)`: when the inputs it reads from other ranks arrive;
//! - `tail(op)`: the longest chain of work after it, through the data dependencies and the
//!   other ranks' program order (its own rank's order, which the window changes, left out);
//! - `rest`: the work of the rank after the window.
//!
//! The cost of a prefix `(seq P op)` is computed from P's: `finish = max(finish(P),
//! release(op)) + duration(op)`, `lateness = max(lateness(P), finish + tail(op))`, and the
//! live bytes and their peak (a prefix over the memory budget costs infinity). The key a
//! window's order is judged by is `max(lateness, finish + work still to do)`, an estimate
//! of the makespan it leads to; a second extraction judges by lateness alone (a small beam).
//! Both are monotone in the children's costs, so egg's bottom-up extraction finds the best
//! order in the e-graph exactly. The estimate is local; the global simulation decides.

use super::lang::{window_ops, window_term, OpData, OpInfo, Sched, Tok};
use super::problem::{Candidate, Problem};
use super::rules::{rules, RuleCtx};
use super::{Options, Stats};
use crate::families::comm;
use crate::ir::{Event, UnitKind};
use egg::{CostFunction, EGraph, Extractor, Id, Runner, SimpleScheduler, StopReason};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cost of an op e-class.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
struct OpCost {
    release: f64,
    duration: f64,
    tail: f64,
    /// Work at whole-unit cost (an FB counts F + B), to estimate what is left.
    nominal: f64,
    alloc: i64,
    delta: i64,
    /// The unit's stage (an FB's: its forward's), for what a pair of it costs.
    stage: u32,
}

/// Cost of a prefix e-class.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
struct SeqCost {
    key: f64,
    finish: f64,
    lateness: f64,
    done: f64,
    live: i64,
    peak: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
enum Cost {
    Op(OpCost),
    Seq(SeqCost),
    /// Not a well-formed prefix (never chosen).
    Bad,
}

/// Everything the cost of one window needs.
#[derive(Debug)]
struct Window {
    ctx: Arc<RuleCtx>,
    /// Per unit of the window: (release, tail).
    timing: HashMap<Tok, (f64, f64)>,
    start: f64,
    live: i64,
    limit: i64,
    total: f64,
    rest: f64,
    activation: Vec<i64>,
    keep: Vec<i64>,
    lateness_only: bool,
}

impl Window {
    fn unit(&self, t: Tok) -> OpCost {
        let stage = self.ctx.modules.get(t.dir as usize).map_or(0, |m| m.stage) as usize;
        let c = &self.ctx.costs;
        let (release, tail) = self.timing.get(&t).copied().unwrap_or((0.0, 0.0));
        let duration = match t.kind {
            UnitKind::F => c.forward[stage],
            UnitKind::B => c.backward[stage],
            UnitKind::I => c.backward[stage] - c.weight[stage],
            UnitKind::W => c.weight[stage],
        };
        let (act, keep) = (self.activation[stage], self.keep[stage]);
        let (alloc, delta) = match t.kind {
            UnitKind::F => (act, act),
            UnitKind::B => (0, -act),
            UnitKind::I => (0, -(act - keep)),
            UnitKind::W => (0, -keep),
        };
        OpCost { release, duration, tail, nominal: duration, alloc, delta, stage: stage as u32 }
    }
}

impl CostFunction<Sched> for &Window {
    type Cost = Cost;
    fn cost<C: FnMut(Id) -> Cost>(&mut self, enode: &Sched, mut costs: C) -> Cost {
        match enode {
            Sched::Op(t) => Cost::Op(self.unit(*t)),
            Sched::Pair([f, b]) => match (costs(*f), costs(*b)) {
                (Cost::Op(f), Cost::Op(b)) => Cost::Op(OpCost {
                    release: f.release.max(b.release),
                    duration: self.ctx.costs.overlapped(f.stage, b.stage),
                    tail: f.tail.max(b.tail),
                    nominal: f.nominal + b.nominal,
                    alloc: f.alloc,
                    delta: f.delta + b.delta,
                    stage: f.stage,
                }),
                _ => Cost::Bad,
            },
            Sched::Nil => Cost::Seq(SeqCost {
                key: self.start + self.total + self.rest,
                finish: self.start,
                lateness: self.start,
                done: 0.0,
                live: self.live,
                peak: self.live,
            }),
            Sched::Seq([p, o]) => {
                let (Cost::Seq(p), Cost::Op(o)) = (costs(*p), costs(*o)) else { return Cost::Bad };
                let finish = p.finish.max(o.release) + o.duration;
                let lateness = p.lateness.max(finish + o.tail);
                let done = p.done + o.nominal;
                let peak = p.peak.max(p.live + o.alloc);
                let estimate = finish + (self.total - done).max(0.0) + self.rest;
                let key = if peak > self.limit {
                    f64::INFINITY
                } else if self.lateness_only {
                    lateness
                } else {
                    lateness.max(estimate)
                };
                Cost::Seq(SeqCost { key, finish, lateness, done, live: p.live + o.delta, peak })
            }
        }
    }
}

/// Refines `best` in place until `deadline` or until no window improves it.
///
/// Windows start around the largest idle gaps, `o.window` ops wide; when a whole pass
/// finds nothing, the windows grow by half (up to twice the size) before giving up.
/// Returns when the last improvement was found, if any.
pub fn refine(p: &Problem, best: &mut Candidate, o: &Options, deadline: Instant, stats: &mut Stats) -> Option<Instant> {
    let mut last = None;
    let bound = p.lower_bound();
    let mut tried: HashSet<(usize, Vec<OpData>)> = HashSet::new();
    let mut o = o.clone();
    let widest = 2 * o.window;
    loop {
        let Some((start, end)) = comm::compute_times(&p.layout, &best.order, &p.costs) else { return last };
        let mut windows: Vec<(f64, usize, usize)> = Vec::new();
        for (r, ops) in best.order.iter().enumerate() {
            for i in 0..ops.len() {
                let prev = if i == 0 { 0.0 } else { end[r][i - 1] };
                let gap = start[r][i] - prev;
                if gap > 1e-9 {
                    let a = i.saturating_sub(o.window / 2);
                    let b = (a + o.window).min(ops.len());
                    windows.push((gap, r, a.min(b.saturating_sub(o.window))));
                }
            }
        }
        windows.sort_by(|x, y| y.0.total_cmp(&x.0));
        windows.dedup_by_key(|w| (w.1, w.2));
        let mut improved = false;
        for &(_, r, a) in windows.iter().take(WINDOWS_PER_PASS) {
            if Instant::now() >= deadline {
                return last;
            }
            let b = (a + o.window).min(best.order[r].len());
            if !tried.insert((r, best.order[r][a..b].iter().filter_map(OpData::of).collect())) {
                continue;
            }
            for order in window_candidates(p, best, r, a, b, &start, &end, &o, deadline, stats) {
                stats.evaluated += 1;
                match p.evaluate(order) {
                    Some(c) if c.time < best.time - 1e-9 => {
                        *best = c;
                        last = Some(Instant::now());
                        stats.improved += 1;
                        if best.time <= bound * (1.0 + 1e-9) {
                            // At the lower bound: optimal.
                            return last;
                        }
                        improved = true;
                        break;
                    }
                    Some(_) => {}
                    None => stats.rejected += 1,
                }
            }
            if improved {
                break;
            }
        }
        if !improved {
            if o.window >= widest {
                return last;
            }
            o.window = (o.window + o.window / 2).min(widest);
        }
    }
}

/// Windows tried per pass, largest gaps first.
const WINDOWS_PER_PASS: usize = 64;

/// Builds the e-graph of window `a..b` of rank `r`, runs the rules and extracts the best
/// orders (one per cost); returns the whole-plan orders that differ from the current one.
#[allow(clippy::too_many_arguments)]
fn window_candidates(
    p: &Problem,
    best: &Candidate,
    r: usize,
    a: usize,
    b: usize,
    start: &[Vec<f64>],
    end: &[Vec<f64>],
    o: &Options,
    deadline: Instant,
    stats: &mut Stats,
) -> Vec<Vec<Vec<Event>>> {
    let ops: Vec<OpData> = best.order[r][a..b].iter().filter_map(OpData::of).collect();
    let ctx = Arc::new(RuleCtx { modules: p.layout.modules[r].clone(), costs: p.costs.clone() });
    let timing = timing(p, &best.order, start, end, r, &ops);
    let stage = |d: u32| p.layout.modules[r][d as usize].stage as usize;
    let (activation, keep, live, limit) = match &p.memory {
        Some(m) => {
            let params: i64 = p.layout.modules[r].iter().map(|s| m.parameters[s.stage as usize] as i64).sum();
            let mut live = params;
            for e in &best.order[r][..a] {
                for (k, c) in e.units() {
                    live += m.delta(k, stage(c.dir) as u32);
                }
            }
            let act = m.activation.iter().map(|&x| x as i64).collect();
            let keep = m.weight_grad_part.iter().map(|&x| x as i64).collect();
            (act, keep, live, m.budget as i64)
        }
        None => (vec![0; p.layout.stages as usize], vec![0; p.layout.stages as usize], 0, i64::MAX),
    };
    let rest: f64 = best.order[r][b..].iter().map(|e| p.duration(r as u32, e)).sum();
    let total: f64 = ops.iter().map(|op| op.units().iter().map(|t| unit_cost(p, r, *t)).sum::<f64>()).sum();
    let window_start = if a == 0 { 0.0 } else { end[r][a - 1] };
    let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
    let (egraph, root, reason) = explore(&ctx, &ops, o, left);
    *stats.stop_reasons.entry(reason).or_default() += 1;
    stats.windows += 1;
    stats.max_egraph_nodes = stats.max_egraph_nodes.max(egraph.total_number_of_nodes());
    stats.max_egraph_classes = stats.max_egraph_classes.max(egraph.number_of_classes());
    let mut out = Vec::new();
    for lateness_only in [false, true] {
        let window = Window {
            ctx: ctx.clone(),
            timing: timing.clone(),
            start: window_start,
            live,
            limit,
            total,
            rest,
            activation: activation.clone(),
            keep: keep.clone(),
            lateness_only,
        };
        let extractor = Extractor::new(&egraph, &window);
        let (_, expr) = extractor.find_best(root);
        let Some(new_ops) = window_ops(&expr) else { continue };
        if new_ops == ops {
            continue;
        }
        let mut order = best.order.clone();
        order[r].splice(a..b, new_ops.iter().map(OpData::event));
        if !out.contains(&order) {
            out.push(order);
        }
    }
    out
}

/// Builds the e-graph of the window `ops` on a rank described by `ctx` and runs every rule
/// until saturation or a limit; returns it, the window's e-class and why egg stopped.
pub fn explore(ctx: &Arc<RuleCtx>, ops: &[OpData], o: &Options, time: Duration) -> (EGraph<Sched, OpInfo>, Id, String) {
    let term = window_term(ops);
    let runner = Runner::<Sched, OpInfo, ()>::new(OpInfo)
        .with_expr(&term)
        .with_node_limit(o.node_limit)
        .with_iter_limit(4 * o.window + 4)
        .with_time_limit(time)
        .with_scheduler(SimpleScheduler)
        .run(&rules(ctx));
    let reason = match &runner.stop_reason {
        Some(StopReason::Saturated) => "saturated".to_owned(),
        Some(StopReason::IterationLimit(_)) => "iteration limit".to_owned(),
        Some(StopReason::NodeLimit(_)) => "node limit".to_owned(),
        Some(StopReason::TimeLimit(_)) => "time limit".to_owned(),
        Some(StopReason::Other(s)) => s.clone(),
        None => "not run".to_owned(),
    };
    let root = runner.roots.first().copied().unwrap_or_else(|| Id::from(0usize));
    (runner.egraph, root, reason)
}

fn unit_cost(p: &Problem, r: usize, t: Tok) -> f64 {
    p.costs.unit(t.kind, p.layout.modules[r][t.dir as usize].stage)
}

/// Release and tail of every unit of the window's ops (see the module doc).
fn timing(
    p: &Problem,
    order: &[Vec<Event>],
    start: &[Vec<f64>],
    end: &[Vec<f64>],
    rank: usize,
    ops: &[OpData],
) -> HashMap<Tok, (f64, f64)> {
    type Value = (u32, u32, u32, bool);
    let l = &p.layout;
    let value_of = |r: usize, k: UnitKind, dir: u32, mb: u32| -> (Value, [Option<Value>; 2]) {
        let m = l.modules[r][dir as usize];
        let own = (m.pipe, m.stage, mb, k != UnitKind::F);
        let inputs = match k {
            UnitKind::F => [m.stage.checked_sub(1).map(|s| (m.pipe, s, mb, false)), None],
            UnitKind::B | UnitKind::I => [
                Some((m.pipe, m.stage, mb, false)),
                (m.stage + 1 < l.stages).then_some((m.pipe, m.stage + 1, mb, true)),
            ],
            UnitKind::W => [Some((m.pipe, m.stage, mb, true)), None],
        };
        (own, inputs)
    };
    // Producer of each value, and each op's successors (op, hop).
    let mut producer: HashMap<Value, (usize, usize)> = HashMap::new();
    for (r, ev) in order.iter().enumerate() {
        for (i, e) in ev.iter().enumerate() {
            for (k, c) in e.units() {
                if k != UnitKind::W {
                    producer.insert(value_of(r, k, c.dir, c.mb).0, (r, i));
                }
            }
        }
    }
    let mut succ: Vec<Vec<Vec<(usize, usize, f64)>>> = order.iter().map(|o| vec![Vec::new(); o.len()]).collect();
    let mut release: HashMap<Tok, f64> = HashMap::new();
    for (r, ev) in order.iter().enumerate() {
        for (i, e) in ev.iter().enumerate() {
            if r != rank && i + 1 < ev.len() {
                succ[r][i].push((r, i + 1, 0.0));
            }
            for (k, c) in e.units() {
                let (_, inputs) = value_of(r, k, c.dir, c.mb);
                for input in inputs.into_iter().flatten() {
                    let Some(&(pr, pi)) = producer.get(&input) else { continue };
                    let hop = if pr != r { p.costs.hop() } else { 0.0 };
                    if (pr, pi) != (r, i) {
                        succ[pr][pi].push((r, i, hop));
                    }
                    if r == rank && pr != r {
                        let t = Tok { kind: k, dir: c.dir, mb: c.mb };
                        let at = release.entry(t).or_insert(0.0);
                        *at = at.max(end[pr][pi] + hop);
                    }
                }
            }
        }
    }
    // Tails in reverse time order (successors start no earlier than their predecessors end).
    let mut nodes: Vec<(usize, usize)> =
        order.iter().enumerate().flat_map(|(r, ev)| (0..ev.len()).map(move |i| (r, i))).collect();
    nodes.sort_by(|x, y| {
        (end[y.0][y.1], start[y.0][y.1])
            .partial_cmp(&(end[x.0][x.1], start[x.0][x.1]))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut tail: Vec<Vec<f64>> = order.iter().map(|o| vec![0.0; o.len()]).collect();
    for &(r, i) in &nodes {
        let t = succ[r][i]
            .iter()
            .map(|&(sr, si, hop)| hop + (end[sr][si] - start[sr][si]) + tail[sr][si])
            .fold(0.0, f64::max);
        tail[r][i] = t;
    }
    let mut out = HashMap::new();
    for (i, e) in order[rank].iter().enumerate() {
        for (k, c) in e.units() {
            let t = Tok { kind: k, dir: c.dir, mb: c.mb };
            out.insert(t, (release.get(&t).copied().unwrap_or(0.0), tail[rank][i]));
        }
    }
    // Units the window may create (I and W of a B, B of an I/W pair) share their op's timing.
    for op in ops {
        for t in op.units() {
            let base = out.get(&t).copied().unwrap_or((0.0, 0.0));
            for kind in [UnitKind::B, UnitKind::I, UnitKind::W] {
                if t.kind != UnitKind::F {
                    out.entry(Tok { kind, ..t }).or_insert(base);
                }
            }
        }
    }
    out
}
