//! A spec's `[costs]`: the keys a table gives, each checked where it stands
//! (`file:line:col`), their defaults, and `from = "FILE"`, a costs file (what `pipewright
//! profile` writes) that gives every key the spec's own table does not.

use super::{per_stage, PerStage, Spec};
use crate::cost::{CommMode, CostModel, PairCost};
use crate::diag::SourceError;
use serde::Deserialize;
use std::ops::Range;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCosts {
    /// A costs file (e.g. `pipewright profile`'s `costs.toml`), relative to the spec: its
    /// `[costs]` give every key this table does not.
    pub(super) from: Option<Spanned<String>>,
    forward: Option<Spanned<PerStage<f64>>>,
    pub(super) backward: Option<Spanned<PerStage<f64>>>,
    pub(super) weight: Option<Spanned<PerStage<f64>>>,
    overlapped: Option<Spanned<PerStage<f64>>>,
    overlapped_pairs: Option<Spanned<Vec<PairCost>>>,
    p2p: Option<Spanned<f64>>,
    p2p_per_transfer: Option<Spanned<f64>>,
    p2p_contention: Option<Spanned<f64>>,
    comm: Option<Spanned<String>>,
    transport: Option<Spanned<String>>,
    per_step: Option<Spanned<PerStage<f64>>>,
    prologue: Option<Spanned<PerStage<f64>>>,
    mirror_sum: Option<Spanned<f64>>,
    mirror_update: Option<Spanned<f64>>,
}

/// The cost keys a `[costs]` table gives, each checked on its own (not yet defaulted).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct GivenCosts {
    forward: Option<Vec<f64>>,
    backward: Option<Vec<f64>>,
    weight: Option<Vec<f64>>,
    overlapped: Option<Vec<f64>>,
    pairs: Option<Vec<PairCost>>,
    p2p: Option<f64>,
    p2p_per_transfer: Option<f64>,
    p2p_contention: Option<f64>,
    comm: Option<CommMode>,
    transport: Option<pipewright_plan::Transport>,
    /// The busiest rank's, and each rank's when the table lists them.
    per_step: Option<(f64, Vec<f64>)>,
    /// Each rank's part of `per_step` before its program.
    prologue: Option<Vec<f64>>,
    mirror_sum: Option<f64>,
    mirror_update: Option<f64>,
}

impl GivenCosts {
    /// Each key from `self`, or else from `other`.
    pub(super) fn or(self, other: GivenCosts) -> GivenCosts {
        GivenCosts {
            forward: self.forward.or(other.forward),
            backward: self.backward.or(other.backward),
            weight: self.weight.or(other.weight),
            overlapped: self.overlapped.or(other.overlapped),
            pairs: self.pairs.or(other.pairs),
            p2p: self.p2p.or(other.p2p),
            p2p_per_transfer: self.p2p_per_transfer.or(other.p2p_per_transfer),
            p2p_contention: self.p2p_contention.or(other.p2p_contention),
            comm: self.comm.or(other.comm),
            transport: self.transport.or(other.transport),
            per_step: self.per_step.or(other.per_step),
            prologue: self.prologue.or(other.prologue),
            mirror_sum: self.mirror_sum.or(other.mirror_sum),
            mirror_update: self.mirror_update.or(other.mirror_update),
        }
    }
}

pub(super) fn given_costs(
    file: &str,
    source: &str,
    raw: Option<&RawCosts>,
    (stages, ranks): (u32, u32),
) -> Result<GivenCosts, SourceError> {
    let get = |key: &str, v: Option<&Spanned<PerStage<f64>>>| -> Result<Option<Vec<f64>>, SourceError> {
        let Some(v) = v else { return Ok(None) };
        let list = per_stage(file, source, key, v, stages)?;
        if let Some(bad) = list.iter().find(|x| !x.is_finite() || **x < 0.0) {
            return Err(SourceError::new(file, source, Some(v.span()), format!("{key} must be ≥ 0, got {bad}"))
                .with_help("costs are durations: give non-negative numbers"));
        }
        Ok(Some(list))
    };
    let scalar = |key: &str, v: Option<&Spanned<f64>>, what: &str| -> Result<Option<f64>, SourceError> {
        match v {
            Some(v) if !v.get_ref().is_finite() || *v.get_ref() < 0.0 => {
                Err(SourceError::new(file, source, Some(v.span()), format!("{key} must be ≥ 0, got {}", v.get_ref()))
                    .with_help(what.to_owned()))
            }
            v => Ok(v.map(|v| *v.get_ref())),
        }
    };
    let p2p = scalar("p2p", raw.and_then(|r| r.p2p.as_ref()), "p2p is the time of one batch")?;
    let p2p_per_transfer = scalar(
        "p2p_per_transfer",
        raw.and_then(|r| r.p2p_per_transfer.as_ref()),
        "p2p_per_transfer is the time each transfer adds to its batch",
    )?;
    let p2p_contention = match raw.and_then(|r| r.p2p_contention.as_ref()) {
        Some(v) if !(0.0..1.0).contains(v.get_ref()) => {
            return Err(SourceError::new(
                file,
                source,
                Some(v.span()),
                format!("p2p_contention must be in [0, 1), got {}", v.get_ref()),
            )
            .with_help("it is the fraction by which compute slows beside a batch in flight, e.g. 0.15"))
        }
        v => v.map(|v| *v.get_ref()),
    };
    let per_step = match raw.and_then(|r| r.per_step.as_ref()) {
        None => None,
        Some(v) => {
            let (list, by_rank) = match v.get_ref() {
                PerStage::One(x) => (vec![*x], false),
                PerStage::Many(list) if list.len() == ranks as usize => (list.clone(), true),
                PerStage::Many(list) => {
                    return Err(SourceError::new(
                        file,
                        source,
                        Some(v.span()),
                        format!(
                            "per_step lists {}, but this pipeline has {}",
                            crate::diag::quantity(list.len(), "value"),
                            crate::diag::quantity(ranks as usize, "rank")
                        ),
                    )
                    .with_help(format!("give one value per rank ({ranks}), or a single number for the busiest")))
                }
            };
            if let Some(bad) = list.iter().find(|x| !x.is_finite() || **x < 0.0) {
                return Err(SourceError::new(file, source, Some(v.span()), format!("per_step must be ≥ 0, got {bad}"))
                    .with_help("per_step is the time of the step's own work outside the programs"));
            }
            let busiest = list.iter().copied().fold(0.0, f64::max);
            Some((busiest, if by_rank { list } else { Vec::new() }))
        }
    };
    let prologue = match raw.and_then(|r| r.prologue.as_ref()) {
        None => None,
        Some(v) => {
            let err =
                |message: String, help: String| SourceError::new(file, source, Some(v.span()), message).with_help(help);
            let list = match v.get_ref() {
                PerStage::One(x) => vec![*x; ranks as usize],
                PerStage::Many(list) if list.len() == ranks as usize => list.clone(),
                PerStage::Many(list) => {
                    return Err(err(
                        format!(
                            "prologue lists {}, but this pipeline has {}",
                            crate::diag::quantity(list.len(), "value"),
                            crate::diag::quantity(ranks as usize, "rank")
                        ),
                        format!("give one value per rank ({ranks}), or a single number for every rank"),
                    ))
                }
            };
            if let Some(bad) = list.iter().find(|x| !x.is_finite() || **x < 0.0) {
                return Err(err(
                    format!("prologue must be ≥ 0, got {bad}"),
                    "prologue is the time of each rank's own work before its program".into(),
                ));
            }
            // Part of per_step: checked against it where the same table gives both.
            if let Some((busiest, by_rank)) = &per_step {
                let of = |r: usize| by_rank.get(r).copied().unwrap_or(*busiest);
                if let Some(r) = (0..list.len()).find(|&r| list[r] > of(r) + 1e-9) {
                    return Err(err(
                        format!("rank {r}'s prologue ({}) exceeds its per_step ({})", list[r], of(r)),
                        "prologue is the part of per_step that runs before the program: at most per_step".into(),
                    ));
                }
            }
            Some(list)
        }
    };
    let mirror_sum =
        scalar("mirror_sum", raw.and_then(|r| r.mirror_sum.as_ref()), "mirror_sum is the time of one exchange")?;
    let mirror_update = scalar(
        "mirror_update",
        raw.and_then(|r| r.mirror_update.as_ref()),
        "mirror_update is the time of one mirrored stage's update, part of per_step",
    )?;
    let pairs = match raw.and_then(|r| r.overlapped_pairs.as_ref()) {
        None => None,
        Some(v) => {
            let err = |message: String, help: &str| {
                SourceError::new(file, source, Some(v.span()), message).with_help(help.to_owned())
            };
            let mut out: Vec<PairCost> = Vec::new();
            for p in v.get_ref() {
                if p.f >= stages || p.b >= stages {
                    return Err(err(
                        format!(
                            "overlapped_pairs names stage {} but this pipeline has {}",
                            p.f.max(p.b),
                            crate::diag::quantity(stages as usize, "stage")
                        ),
                        "f and b are stages, 0-based: the forward's and the backward's of the pair",
                    ));
                }
                if !p.ms.is_finite() || p.ms < 0.0 {
                    return Err(err(
                        format!("overlapped_pairs: the pair f = {}, b = {} has ms = {}", p.f, p.b, p.ms),
                        "a pair's time is a duration: give a non-negative number",
                    ));
                }
                if out.iter().any(|q| q.f == p.f && q.b == p.b) {
                    return Err(err(
                        format!("overlapped_pairs lists the pair f = {}, b = {} twice", p.f, p.b),
                        "give each (f, b) once",
                    ));
                }
                out.push(*p);
            }
            Some(out)
        }
    };
    let comm = match raw.and_then(|r| r.comm.as_ref()) {
        None => None,
        Some(v) => Some(match v.get_ref().as_str() {
            "blocking" => CommMode::Blocking,
            "async" => CommMode::Async,
            "async_in_order" => CommMode::AsyncInOrder,
            other => {
                return Err(SourceError::new(file, source, Some(v.span()), format!("unknown comm mode \"{other}\""))
                    .with_help("use \"blocking\", \"async\" or \"async_in_order\""))
            }
        }),
    };
    let transport = match raw.and_then(|r| r.transport.as_ref()) {
        None => None,
        Some(v) => {
            use pipewright_plan::Transport;
            let named = [Transport::Nccl, Transport::Copy].into_iter().find(|t| t.name() == v.get_ref());
            Some(named.ok_or_else(|| {
                SourceError::new(file, source, Some(v.span()), format!("unknown transport \"{}\"", v.get_ref()))
                    .with_help("use \"nccl\" or \"copy\": the p2p transport these costs were measured with")
            })?)
        }
    };
    Ok(GivenCosts {
        forward: get("forward", raw.and_then(|r| r.forward.as_ref()))?,
        backward: get("backward", raw.and_then(|r| r.backward.as_ref()))?,
        weight: get("weight", raw.and_then(|r| r.weight.as_ref()))?,
        overlapped: get("overlapped", raw.and_then(|r| r.overlapped.as_ref()))?,
        pairs,
        p2p,
        p2p_per_transfer,
        p2p_contention,
        comm,
        transport,
        per_step,
        prologue,
        mirror_sum,
        mirror_update,
    })
}

/// The cost model of the given keys with the defaults for the rest; `Err((stage, weight,
/// backward))` when a weight exceeds its backward.
pub(super) fn resolve_costs(g: GivenCosts, n: usize) -> Result<CostModel, (usize, f64, f64)> {
    let forward = g.forward.unwrap_or_else(|| vec![1.0; n]);
    let backward = g.backward.unwrap_or_else(|| forward.iter().map(|f| 2.0 * f).collect());
    let weight = g.weight.unwrap_or_else(|| backward.iter().map(|b| b / 2.0).collect());
    if let Some(s) = (0..n).find(|&s| weight[s] > backward[s]) {
        return Err((s, weight[s], backward[s]));
    }
    let overlapped = g.overlapped.unwrap_or_else(|| (0..n).map(|s| forward[s] + backward[s]).collect());
    Ok(CostModel {
        forward,
        backward,
        weight,
        overlapped,
        pairs: g.pairs.unwrap_or_default(),
        p2p: g.p2p.unwrap_or(0.0),
        p2p_per_transfer: g.p2p_per_transfer.unwrap_or(0.0),
        p2p_contention: g.p2p_contention.unwrap_or(0.0),
        comm: g.comm.unwrap_or(CommMode::Blocking),
        transport: g.transport.unwrap_or_default(),
        per_step: g.per_step.as_ref().map_or(0.0, |p| p.0),
        per_step_by_rank: g.per_step.map(|p| p.1).unwrap_or_default(),
        prologue_by_rank: g.prologue.unwrap_or_default(),
        mirror_sum: g.mirror_sum.unwrap_or(0.0),
        mirror_update: g.mirror_update.unwrap_or(0.0),
    })
}

pub(super) fn weight_exceeds(
    file: &str,
    source: &str,
    span: Option<Range<usize>>,
    (s, w, b): (usize, f64, f64),
) -> SourceError {
    SourceError::new(file, source, span, format!("weight ({w}) exceeds backward ({b}) on stage {s}"))
        .with_help("weight is the weight-gradient part of backward, so weight ≤ backward")
}

/// `[costs] from = "FILE"`: reads FILE's `[costs]` (relative to `base`, the spec's
/// directory) and gives the spec every key its own `[costs]` does not. Errors in FILE
/// point into FILE; a clash between the two (a weight above its backward) at `from`.
pub fn load_costs(spec: &mut Spec, file: &str, source: &str, base: &std::path::Path) -> Result<(), SourceError> {
    #[derive(Deserialize)]
    struct CostsFile {
        costs: RawCosts,
    }
    let Some(from) = spec.costs_from.clone() else { return Ok(()) };
    let span = from.span;
    let at_from = |msg: String| SourceError::new(file, source, Some(span.clone()), msg);
    let path = base.join(&from.path);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        at_from(format!("cannot read {}: {e}", path.display()))
            .with_help("`from` names a TOML file with a [costs] table (pipewright profile writes costs.toml), relative to the spec")
    })?;
    let name = path.display().to_string();
    let included: CostsFile = toml::from_str(&text).map_err(|e| {
        SourceError::new(&name, &text, e.span(), e.message().trim().to_owned())
            .with_help("a costs file holds one [costs] table with the keys of a spec's [costs]")
    })?;
    if let Some(nested) = &included.costs.from {
        return Err(SourceError::new(
            &name,
            &text,
            Some(nested.span()),
            "a costs file cannot name another with `from`",
        )
        .with_help("copy the keys you need into this file"));
    }
    let theirs = given_costs(&name, &text, Some(&included.costs), (spec.stages(), spec.ranks))?;
    spec.costs = resolve_costs(from.own.or(theirs), spec.stages() as usize)
        .map_err(|clash| weight_exceeds(file, source, Some(span.clone()), clash))?;
    Ok(())
}
