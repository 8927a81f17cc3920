//! Seeds: list schedules of the problem's work, built by simulating every rank at once.
//!
//! Whenever a rank is free it runs the best of the ops whose inputs have arrived, under a
//! [`Policy`]. Forwards and backwards of each module run in microbatch order (what the
//! families do, and what keeps each p2p channel in FIFO order); weight gradients (W) wait
//! in a queue and fill the idle time, unless memory needs them. A forward allocates its
//! activation and is held back while that would exceed the policy's share of the budget.
//!
//! The time model here is the async one (a value arrives `p2p` after it is produced); the
//! real judge is [`Problem::evaluate`], which places communication and simulates.

use super::problem::Problem;
use crate::ir::{Chunk, Event, UnitKind};
use pipewright_plan::data::Rng;
use std::collections::VecDeque;

/// How a rank chooses among ready ops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Split backwards into I + W (where the costs make it a choice) and defer W.
    pub split: bool,
    /// Prefer a ready backward over a ready forward (1F1B's rule); otherwise forwards go
    /// first while memory allows (GPipe's).
    pub backward_first: bool,
    /// Share of the activation headroom (budget − parameters) forwards may fill.
    pub headroom: f64,
    /// Most microbatches in flight per module (forward done, backward not), if capped.
    pub in_flight: Option<u32>,
    /// Run a ready forward and a ready backward as one overlapped FB when that is cheaper.
    pub pair: bool,
    /// Randomise the choices (seeded): which module's ready forward or backward runs,
    /// and now and then the other kind than `backward_first` says. The rule-based
    /// policies fix every tie the same way; sampling around them finds fills and drains
    /// they miss on uneven stages.
    pub jitter: Option<u64>,
}

/// How often a jittered policy goes against `backward_first`.
const JITTER_FLIP: f64 = 0.2;

impl Policy {
    /// A short name for reports.
    pub fn name(&self) -> String {
        format!(
            "list({}{}{}{}{}{})",
            if self.backward_first { "b-first" } else { "f-first" },
            if self.split { ",split" } else { "" },
            if self.pair { ",pair" } else { "" },
            if self.headroom < 1.0 { format!(",mem {:.0}%", self.headroom * 100.0) } else { String::new() },
            self.in_flight.map(|c| format!(",cap {c}")).unwrap_or_default(),
            self.jitter.map(|j| format!(",jitter {j}")).unwrap_or_default(),
        )
    }
}

/// Per-module progress on one rank.
#[derive(Clone, Default)]
struct Module {
    next_f: u32,
    next_b: u32,
}

/// A choice for a rank: what to run next.
#[derive(Clone, Copy, Debug)]
enum Pick {
    F(u32),
    Back(u32),
    W,
    Pair(u32, u32),
}

/// Builds the compute order of `policy`; `None` when the policy stalls (memory too tight
/// for any rank to proceed).
pub fn schedule(p: &Problem, policy: &Policy) -> Option<Vec<Vec<Event>>> {
    let l = &p.layout;
    let (pipes, stages, mbs) = (l.pipes as usize, l.stages as usize, l.microbatches);
    let idx = |pipe: u32, stage: u32, mb: u32| (pipe as usize * stages + stage as usize) * mbs as usize + mb as usize;
    let n = pipes * stages * mbs as usize;
    let mut f_end = vec![f64::NAN; n];
    let mut g_end = vec![f64::NAN; n];
    let ranks = p.ranks as usize;
    let mut free = vec![0.0f64; ranks];
    let mut mods: Vec<Vec<Module>> = l.modules.iter().map(|m| vec![Module::default(); m.len()]).collect();
    let mut wq: Vec<VecDeque<Chunk>> = vec![VecDeque::new(); ranks];
    let mut out: Vec<Vec<Event>> = vec![Vec::new(); ranks];
    let mem = p.memory.as_ref();
    let params: Vec<i64> = (0..ranks)
        .map(|r| mem.map_or(0, |m| l.modules[r].iter().map(|s| m.parameters[s.stage as usize] as i64).sum()))
        .collect();
    let limit: Vec<i64> = (0..ranks)
        .map(|r| match mem {
            Some(m) => params[r] + ((m.budget as f64 - params[r] as f64).max(0.0) * policy.headroom) as i64,
            None => i64::MAX,
        })
        .collect();
    let mut live = params.clone();
    let total: usize = l.modules.iter().map(|m| m.len()).sum::<usize>() * mbs as usize;
    let mut done_back = 0usize;
    let hop = |from: u32, to: u32| if from != to { p.costs.hop() } else { 0.0 };
    let mut rng = policy.jitter.map(|seed| Rng::new(seed, 0x4a17, 0));

    while done_back < total || wq.iter().any(|q| !q.is_empty()) {
        let mut best: Option<(f64, usize, Pick)> = None;
        for r in 0..ranks {
            let ru = r as u32;
            // Ready time of each candidate (NaN: an input is not produced yet).
            let mut fwd: Vec<(f64, u32)> = Vec::new();
            let mut back: Vec<(f64, u32)> = Vec::new();
            for (d, m) in mods[r].iter().enumerate() {
                let s = l.modules[r][d];
                if m.next_f < mbs {
                    let mb = m.next_f;
                    let t = if s.stage == 0 {
                        0.0
                    } else {
                        let (pr, _) = p.holder(s.pipe, s.stage - 1);
                        f_end[idx(s.pipe, s.stage - 1, mb)] + hop(pr, ru)
                    };
                    let act = mem.map_or(0, |m| m.activation[s.stage as usize] as i64);
                    let capped = policy.in_flight.is_some_and(|c| m.next_f - m.next_b >= c);
                    let fits = live[r] + act <= limit[r] || live[r] == params[r];
                    if !t.is_nan() && fits && !capped {
                        fwd.push((t, d as u32));
                    }
                }
                if m.next_b < m.next_f {
                    let mb = m.next_b;
                    let own = f_end[idx(s.pipe, s.stage, mb)];
                    let t = if s.stage as usize + 1 == stages {
                        own
                    } else {
                        let (pr, _) = p.holder(s.pipe, s.stage + 1);
                        let grad = g_end[idx(s.pipe, s.stage + 1, mb)] + hop(pr, ru);
                        // NaN (not produced yet) must win: f64::max would drop it.
                        if grad.is_nan() {
                            grad
                        } else {
                            own.max(grad)
                        }
                    };
                    if !t.is_nan() {
                        back.push((t, d as u32));
                    }
                }
            }
            let earliest = fwd
                .iter()
                .chain(&back)
                .map(|x| x.0)
                .fold(f64::INFINITY, f64::min)
                .min(if wq[r].is_empty() { f64::INFINITY } else { free[r] });
            if earliest.is_infinite() {
                continue;
            }
            let t = free[r].max(earliest);
            // The earliest microbatch first (module order breaks ties), or, jittered, any.
            let ready_f = choose(&fwd, t, |d| mods[r][d as usize].next_f, rng.as_mut());
            let ready_b = choose(&back, t, |d| mods[r][d as usize].next_b, rng.as_mut());
            let flip = rng.as_mut().is_some_and(|rng| rng.uniform() < JITTER_FLIP);
            let backward_first = policy.backward_first != flip;
            let pick = match (ready_f.as_ref(), ready_b.as_ref()) {
                (Some(&(_, fd)), Some(&(_, bd))) if policy.pair && pair_pays(p, ru, fd, bd) => Pick::Pair(fd, bd),
                (Some(&(_, fd)), Some(&(_, bd))) => {
                    if backward_first {
                        Pick::Back(bd)
                    } else {
                        Pick::F(fd)
                    }
                }
                (Some(&(_, fd)), None) => Pick::F(fd),
                (None, Some(&(_, bd))) => Pick::Back(bd),
                (None, None) => Pick::W,
            };
            if best.is_none_or(|(bt, _, _)| t < bt) {
                best = Some((t, r, pick));
            }
        }
        let (t, r, pick) = best?;
        let stage_of = |d: u32| l.modules[r][d as usize];
        let act = |d: u32| mem.map_or(0, |m| m.activation[stage_of(d).stage as usize] as i64);
        let keep = |d: u32| mem.map_or(0, |m| m.weight_grad_part[stage_of(d).stage as usize] as i64);
        let mut run_f = |d: u32, end: f64, live: &mut i64, mods: &mut Vec<Vec<Module>>| {
            let s = stage_of(d);
            let mb = mods[r][d as usize].next_f;
            f_end[idx(s.pipe, s.stage, mb)] = end;
            mods[r][d as usize].next_f += 1;
            *live += act(d);
            Chunk { dir: d, mb }
        };
        match pick {
            Pick::F(d) => {
                let end = t + p.costs.forward[stage_of(d).stage as usize];
                let c = run_f(d, end, &mut live[r], &mut mods);
                out[r].push(Event::F { dir: c.dir, mb: c.mb });
                free[r] = end;
            }
            Pick::W => {
                let c = wq[r].pop_front()?;
                free[r] = t + p.costs.weight[stage_of(c.dir).stage as usize];
                live[r] -= keep(c.dir);
                out[r].push(Event::W { dir: c.dir, mb: c.mb });
            }
            Pick::Back(d) | Pick::Pair(_, d) => {
                let s = stage_of(d);
                let mb = mods[r][d as usize].next_b;
                let split = policy.split && p.splittable(s.stage);
                let (dur, f) = match pick {
                    Pick::Pair(fd, _) => {
                        let dur = p.costs.overlapped(stage_of(fd).stage, s.stage);
                        (dur, Some(run_f(fd, t + dur, &mut live[r], &mut mods)))
                    }
                    _ if split => (p.costs.unit(UnitKind::I, s.stage), None),
                    _ => (p.costs.backward[s.stage as usize], None),
                };
                let end = t + dur;
                g_end[idx(s.pipe, s.stage, mb)] = end;
                mods[r][d as usize].next_b += 1;
                done_back += 1;
                free[r] = end;
                let b = Chunk { dir: d, mb };
                out[r].push(match f {
                    Some(f) => Event::FB { f, b },
                    None if split => Event::I { dir: d, mb },
                    None => Event::B { dir: d, mb },
                });
                if split && f.is_none() {
                    live[r] -= act(d) - keep(d);
                    wq[r].push_back(b);
                } else {
                    live[r] -= act(d);
                }
            }
        }
    }
    Some(out.into_iter().map(merge_adjacent).collect())
}

/// Of the candidates ready at `t`, the earliest microbatch (module order breaks ties) or,
/// jittered, any.
fn choose(cands: &[(f64, u32)], t: f64, next: impl Fn(u32) -> u32, rng: Option<&mut Rng>) -> Option<(f64, u32)> {
    let ready = || cands.iter().filter(|x| x.0 <= t).copied();
    match rng {
        Some(rng) => match ready().count() {
            n if n > 1 => ready().nth(((rng.uniform() * n as f64) as usize).min(n - 1)),
            _ => ready().next(),
        },
        None => ready().min_by_key(|x| (next(x.1), x.1)),
    }
}

/// Whether an overlapped pair costs less than its two halves on `rank`.
fn pair_pays(p: &Problem, rank: u32, fd: u32, bd: u32) -> bool {
    let st = |d: u32| p.layout.modules[rank as usize][d as usize].stage;
    let (sf, sb) = (st(fd), st(bd));
    p.costs.overlapped(sf, sb) < p.costs.forward[sf as usize] + p.costs.backward[sb as usize]
}

/// Turns an I directly followed by its own W back into one B.
pub fn merge_adjacent(ops: Vec<Event>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::with_capacity(ops.len());
    for e in ops {
        if let (Event::W { dir, mb }, Some(Event::I { dir: d2, mb: m2 })) = (&e, out.last()) {
            if dir == d2 && mb == m2 {
                let (dir, mb) = (*dir, *mb);
                out.pop();
                out.push(Event::B { dir, mb });
                continue;
            }
        }
        out.push(e);
    }
    out
}
