//! The rewrite rules of a window's e-graph, grouped by topic. Every rule is an equality of
//! programs: both sides do the same work on the same rank, and a rule fires only where no
//! data dependency on this rank is broken (other ranks' inputs are timing, not order: the
//! window's cost accounts for them, and the whole plan is re-simulated and re-verified).
//!
//! - **Reorder**: `swap` exchanges two adjacent independent ops. Repeated, it reaches every
//!   order of the window that respects its dependencies — including moving a W later into
//!   idle time and shifting microbatches between warm-up and steady state.
//! - **Split and merge**: `split-backward` turns B into I then W (when the costs make W a
//!   separate choice); `merge-backward` turns an I directly followed by its W back into B.
//! - **Overlap**: `pair` runs an adjacent independent forward and full backward as one
//!   overlapped FB (DualPipe's trick) where that costs less than running them in turn;
//!   `unpair` splits an FB back into its forward and its backward.
//!
//! Communication is not in the window's terms: the p2p batches are placed afresh around
//! every candidate ([`super::problem::Problem::evaluate`]), which is where sends are hoisted,
//! receives sunk and batches merged or split; the simulator and the verifier decide.

use super::lang::{OpData, OpInfo, Sched, Tok};
use crate::cost::CostModel;
use crate::ir::{StageRef, UnitKind};
use egg::{Applier, EGraph, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var};
use std::sync::Arc;

/// What the rules know of the window's rank.
#[derive(Debug)]
pub struct RuleCtx {
    /// `modules[dir]`: the stage module `dir` holds.
    pub modules: Vec<StageRef>,
    pub costs: CostModel,
}

impl RuleCtx {
    fn stage(&self, t: Tok) -> Option<StageRef> {
        self.modules.get(t.dir as usize).copied()
    }

    /// Whether unit `later` reads what unit `earlier` produces on this rank.
    fn reads(&self, later: Tok, earlier: Tok) -> bool {
        let (Some(a), Some(b)) = (self.stage(earlier), self.stage(later)) else { return true };
        if a.pipe != b.pipe || earlier.mb != later.mb {
            return false;
        }
        use UnitKind::*;
        match (earlier.kind, later.kind) {
            (F, F) => b.stage == a.stage + 1,
            (F, B | I | W) => b.stage == a.stage,
            (B | I, B | I) => b.stage + 1 == a.stage,
            (I, W) => b.stage == a.stage,
            _ => false,
        }
    }

    /// Whether op `later` depends on op `earlier` (some unit of one reads the other's).
    pub fn depends(&self, later: OpData, earlier: OpData) -> bool {
        later.units().iter().any(|&l| earlier.units().iter().any(|&e| self.reads(l, e)))
    }

    /// Whether an FB of forward `f` and backward `b` costs less than running them in turn.
    fn pair_pays(&self, f: Tok, b: Tok) -> bool {
        let (Some(sf), Some(sb)) = (self.stage(f), self.stage(b)) else { return false };
        let c = &self.costs;
        c.overlapped(sf.stage, sb.stage) < c.forward[sf.stage as usize] + c.backward[sb.stage as usize]
    }

    fn splittable(&self, t: Tok) -> bool {
        self.stage(t).is_some_and(|s| {
            let w = self.costs.weight[s.stage as usize];
            w > 0.0 && w < self.costs.backward[s.stage as usize]
        })
    }
}

fn var(name: &str) -> Var {
    // The names below are all valid pattern variables.
    name.parse().unwrap_or_else(|_| Var::from_u32(0))
}

fn pattern(text: &str) -> Pattern<Sched> {
    text.parse().unwrap_or_else(|_| Pattern::new(PatternAst::default()))
}

/// Every rule, for a window on a rank described by `ctx`.
pub fn rules(ctx: &Arc<RuleCtx>) -> Vec<Rewrite<Sched, OpInfo>> {
    let two = "(seq (seq ?p ?a) ?b)";
    let one = "(seq ?p ?a)";
    let mk = |name: &str, searcher: &str, applier: Rule| Rewrite::new(name, pattern(searcher), applier).ok();
    let r = |kind| Rule { kind, ctx: ctx.clone(), p: var("?p"), a: var("?a"), b: var("?b") };
    [
        // Reorder.
        mk("swap", two, r(RuleKind::Swap)),
        // Split and merge.
        mk("split-backward", one, r(RuleKind::Split)),
        mk("merge-backward", two, r(RuleKind::Merge)),
        // Overlap.
        mk("pair", two, r(RuleKind::Pair)),
        mk("unpair", one, r(RuleKind::Unpair)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[derive(Debug, Clone, Copy)]
enum RuleKind {
    Swap,
    Split,
    Merge,
    Pair,
    Unpair,
}

/// One conditional rule: the condition reads the ops bound to `?a` and `?b`.
#[derive(Debug)]
struct Rule {
    kind: RuleKind,
    ctx: Arc<RuleCtx>,
    p: Var,
    a: Var,
    b: Var,
}

impl Applier<Sched, OpInfo> for Rule {
    fn apply_one(
        &self,
        eg: &mut EGraph<Sched, OpInfo>,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<Sched>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let (Some(&p), Some(&a)) = (subst.get(self.p), subst.get(self.a)) else { return vec![] };
        let b = subst.get(self.b).copied();
        let Some(da) = eg[a].data else { return vec![] };
        let db = b.and_then(|b| eg[b].data);
        let unit = |kind, t: Tok| Sched::Op(Tok { kind, ..t });
        let new = match (self.kind, da, db) {
            (RuleKind::Swap, _, Some(db)) if !self.ctx.depends(db, da) => {
                let Some(b) = b else { return vec![] };
                let inner = eg.add(Sched::Seq([p, b]));
                eg.add(Sched::Seq([inner, a]))
            }
            (RuleKind::Split, OpData::Unit(t), _) if t.kind == UnitKind::B && self.ctx.splittable(t) => {
                let i = eg.add(unit(UnitKind::I, t));
                let w = eg.add(unit(UnitKind::W, t));
                let inner = eg.add(Sched::Seq([p, i]));
                eg.add(Sched::Seq([inner, w]))
            }
            (RuleKind::Merge, OpData::Unit(i), Some(OpData::Unit(w)))
                if i.kind == UnitKind::I && w.kind == UnitKind::W && (i.dir, i.mb) == (w.dir, w.mb) =>
            {
                let whole = eg.add(unit(UnitKind::B, i));
                eg.add(Sched::Seq([p, whole]))
            }
            (RuleKind::Pair, OpData::Unit(x), Some(OpData::Unit(y))) => {
                let Some(second) = b else { return vec![] };
                let (f, bk, fid, bid) = match (x.kind, y.kind) {
                    (UnitKind::F, UnitKind::B) => (x, y, a, second),
                    (UnitKind::B, UnitKind::F) => (y, x, second, a),
                    _ => return vec![],
                };
                let (ox, oy) = (OpData::Unit(x), OpData::Unit(y));
                if self.ctx.depends(oy, ox) || self.ctx.depends(ox, oy) || !self.ctx.pair_pays(f, bk) {
                    return vec![];
                }
                let pair = eg.add(Sched::Pair([fid, bid]));
                eg.add(Sched::Seq([p, pair]))
            }
            (RuleKind::Unpair, OpData::Pair(f, bk), _) => {
                let f = eg.add(Sched::Op(f));
                let bk = eg.add(Sched::Op(bk));
                let inner = eg.add(Sched::Seq([p, f]));
                eg.add(Sched::Seq([inner, bk]))
            }
            _ => return vec![],
        };
        if eg.union(eclass, new) {
            vec![eclass]
        } else {
            vec![]
        }
    }
}
