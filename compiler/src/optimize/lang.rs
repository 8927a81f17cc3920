//! The e-graph language of a rank-local window: a program prefix as a snoc list.
//!
//! `(seq P op)` is the prefix `P` followed by `op`; `nil` is the window's start. An op is a
//! unit of compute (`F0.3`: forward of module 0, microbatch 3; `B`, `I`, `W` likewise) or
//! an overlapped pair `(fb F B)`. Two terms are in one e-class when they run the same work
//! from the same starting point, so the e-class of a prefix is, in effect, the *set* of
//! ops done, and its e-nodes are the ways of reaching that set. Because every prefix
//! extends a shorter one, a window's finish time and lateness are computed bottom-up (see
//! [`super::egraph`]), which is what makes plain extraction exact here.

use crate::ir::{Chunk, Event, UnitKind};
use egg::{define_language, merge_option, Analysis, DidMerge, EGraph, Id, RecExpr};
use std::fmt;
use std::str::FromStr;

/// One unit of compute on the window's rank.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Tok {
    pub kind: UnitKind,
    pub dir: u32,
    pub mb: u32,
}

impl Tok {
    pub fn chunk(&self) -> Chunk {
        Chunk { dir: self.dir, mb: self.mb }
    }
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}.{}", self.kind.letter(), self.dir, self.mb)
    }
}

impl FromStr for Tok {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut chars = s.chars();
        let kind = match chars.next() {
            Some('F') => UnitKind::F,
            Some('B') => UnitKind::B,
            Some('I') => UnitKind::I,
            Some('W') => UnitKind::W,
            _ => return Err(format!("not a unit: {s}")),
        };
        let (dir, mb) = chars.as_str().split_once('.').ok_or_else(|| format!("not a unit: {s}"))?;
        Ok(Tok {
            kind,
            dir: dir.parse().map_err(|_| format!("bad module in {s}"))?,
            mb: mb.parse().map_err(|_| format!("bad microbatch in {s}"))?,
        })
    }
}

define_language! {
    /// A window's program prefixes.
    pub enum Sched {
        "nil" = Nil,
        "seq" = Seq([Id; 2]),
        "fb" = Pair([Id; 2]),
        Op(Tok),
    }
}

/// What an op e-class computes: one unit, or an overlapped forward and backward.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum OpData {
    Unit(Tok),
    Pair(Tok, Tok),
}

impl OpData {
    /// The units, forward first.
    pub fn units(&self) -> Vec<Tok> {
        match *self {
            OpData::Unit(t) => vec![t],
            OpData::Pair(f, b) => vec![f, b],
        }
    }

    /// The program event.
    pub fn event(&self) -> Event {
        match *self {
            OpData::Unit(t) => match t.kind {
                UnitKind::F => Event::F { dir: t.dir, mb: t.mb },
                UnitKind::B => Event::B { dir: t.dir, mb: t.mb },
                UnitKind::I => Event::I { dir: t.dir, mb: t.mb },
                UnitKind::W => Event::W { dir: t.dir, mb: t.mb },
            },
            OpData::Pair(f, b) => Event::FB { f: f.chunk(), b: b.chunk() },
        }
    }

    /// The op of a compute event (`None` for COMM).
    pub fn of(e: &Event) -> Option<OpData> {
        let t = |kind, dir, mb| Tok { kind, dir, mb };
        Some(match *e {
            Event::F { dir, mb } => OpData::Unit(t(UnitKind::F, dir, mb)),
            Event::B { dir, mb } => OpData::Unit(t(UnitKind::B, dir, mb)),
            Event::I { dir, mb } => OpData::Unit(t(UnitKind::I, dir, mb)),
            Event::W { dir, mb } => OpData::Unit(t(UnitKind::W, dir, mb)),
            Event::FB { f, b } => OpData::Pair(t(UnitKind::F, f.dir, f.mb), t(UnitKind::B, b.dir, b.mb)),
            Event::Comm { .. } => return None,
        })
    }
}

/// Records, for op e-classes, the op they hold (rules read it to check their conditions).
#[derive(Default, Clone, Debug)]
pub struct OpInfo;

impl Analysis<Sched> for OpInfo {
    type Data = Option<OpData>;

    fn make(egraph: &mut EGraph<Sched, Self>, enode: &Sched) -> Self::Data {
        match enode {
            Sched::Op(t) => Some(OpData::Unit(*t)),
            Sched::Pair([f, b]) => match (egraph[*f].data, egraph[*b].data) {
                (Some(OpData::Unit(f)), Some(OpData::Unit(b))) => Some(OpData::Pair(f, b)),
                _ => None,
            },
            Sched::Nil | Sched::Seq(_) => None,
        }
    }

    fn merge(&mut self, a: &mut Self::Data, b: Self::Data) -> DidMerge {
        merge_option(a, b, |_, _| DidMerge(false, false))
    }
}

/// The term of a window: `(seq (seq (seq nil op1) op2) op3)`.
pub fn window_term(ops: &[OpData]) -> RecExpr<Sched> {
    let mut expr = RecExpr::default();
    let mut prefix = expr.add(Sched::Nil);
    for op in ops {
        let id = match *op {
            OpData::Unit(t) => expr.add(Sched::Op(t)),
            OpData::Pair(f, b) => {
                let f = expr.add(Sched::Op(f));
                let b = expr.add(Sched::Op(b));
                expr.add(Sched::Pair([f, b]))
            }
        };
        prefix = expr.add(Sched::Seq([prefix, id]));
    }
    expr
}

/// The ops of an extracted window term, in program order.
pub fn window_ops(expr: &RecExpr<Sched>) -> Option<Vec<OpData>> {
    let nodes = expr.as_ref();
    let op = |id: Id| -> Option<OpData> {
        match &nodes[usize::from(id)] {
            Sched::Op(t) => Some(OpData::Unit(*t)),
            Sched::Pair([f, b]) => match (&nodes[usize::from(*f)], &nodes[usize::from(*b)]) {
                (Sched::Op(f), Sched::Op(b)) => Some(OpData::Pair(*f, *b)),
                _ => None,
            },
            _ => None,
        }
    };
    let mut out = Vec::new();
    let mut at = Id::from(nodes.len().checked_sub(1)?);
    loop {
        match &nodes[usize::from(at)] {
            Sched::Nil => break,
            Sched::Seq([p, o]) => {
                out.push(op(*o)?);
                at = *p;
            }
            _ => return None,
        }
    }
    out.reverse();
    Some(out)
}
