//! Schedule specs: the TOML a user writes, parsed and checked with every error pointing at
//! `file:line:col`.
//!
//! ```toml
//! [pipeline]
//! schedule = "dualpipev"   # gpipe | 1f1b | interleaved-1f1b | zb-h1 | zb-v | dualpipe | dualpipev
//! ranks = 4
//! microbatches = 10
//! chunks_per_rank = 2      # interleaved-1f1b only
//!
//! [costs]                  # a number, or a list with one entry per stage
//! from = "costs.toml"      # optional: a costs file (e.g. `pipewright profile`'s) for the keys not given here
//! forward = 1.0
//! backward = 2.0
//! weight = 1.0
//! overlapped = 2.5
//! overlapped_pairs = [{ f = 1, b = 0, ms = 2.2 }]  # optional: FB pairs measured as such
//!                          # (F of stage f with B of stage b; the others: forward + backward)
//! p2p = 0.0
//! p2p_per_transfer = 0.0   # each transfer of a batch's busier direction adds this
//! p2p_contention = 0.0     # async: compute runs this fraction slower beside a batch in flight
//! comm = "blocking"        # or "async" (a batch after a B waits for its input gradient
//!                          # only), or "async_in_order" (after the whole B)
//! transport = "nccl"       # or "copy": the p2p transport the costs were measured with (the
//!                          # plan carries it: the runtime's default)
//! per_step = 0.0           # once a step, outside the programs (prologue, optimizer); or
//!                          # a list, one per rank (step_time: the latest rank's end plus its own)
//! prologue = 0.0           # of per_step: what runs before the program (data), or one per rank
//! mirror_sum = 0.0         # once a step where pipes are mirrored: a rank's gradient exchange
//!                          # (step_time counts what outlasts the programs, crate::mirror)
//! mirror_update = 0.0      # of per_step: one mirrored stage's update after its exchange (the
//!                          # last stage's follows the exchange, the others run beside it)
//!
//! [memory]                 # optional, bytes
//! activation = 1_000_000
//! weight_grad_part = 400_000
//! parameters = 0
//! p2p_buffer = 0           # bytes of one received activation/gradient
//! budget = 8_000_000_000
//!
//! [moe]                    # optional: expert placement (EPLB) baked into the plan
//! experts = 256            # logical experts per MoE layer
//! top_k = 8                # experts each token is routed to
//! load = "stats.json"      # per-layer expert loads (.json/.csv/.npy), relative to the spec
//! replicas = 288
//! groups = 8
//! nodes = 4
//! gpus = 32
//! policy = "balanced"      # deepseek | balanced | balanced-global
//!
//! [model]                  # optional: what the runtime trains (compile then writes plan.json)
//! kind = "mlp"             # each stage: layers_per_stage × (Linear(h→ffn), GELU, Linear(ffn→h))
//! hidden = 512
//! ffn = 2048               # default 4·hidden
//! seq = 256
//! microbatch_size = 3
//! layers_per_stage = 1
//! dtype = "f32"            # or "bf16" (gradients accumulate in f32 either way)
//! seed = 0
//! gelu = "auto"            # fused into the GEMMs (cuBLASLt epilogues), "kernel", or auto:
//!                          # fused in bf16, a kernel in f32 (the runtime runs a fused
//!                          # product unfused where that races faster on the GPU)
//! mirror_sum = "f32"       # DualPipe: the dtype mirrored gradient copies travel in; "bf16"
//!                          # (bf16 models only) halves the exchange's bytes, each copy
//!                          # rounded to bf16 once before it is added in f32
//!
//! [training]               # optional, with [model]
//! optimizer = "sgd"        # or "adamw"
//! lr = 0.001
//! steps = 10
//! checkpoint_every = 0     # steps between checkpoints; 0: none
//!
//! [optimize]               # optional: limits of `compile --optimize` (see `optimize`)
//! time_limit = 10.0        # seconds for the whole search
//! node_limit = 20000       # e-nodes per window e-graph
//! window = 8               # ops per rank-local window
//! objective = "step"       # or "makespan": the simulated step (the makespan, then each
//!                          # rank's work after its program, e.g. DualPipe's exchange)
//! early_batches = false    # comm = "async": the optimiser's programs post a batch after a
//!                          # B behind its input gradient too (default: after the whole B)
//! ```

mod costs;
mod model;
mod moe;

pub use costs::load_costs;
pub use moe::{load_moe, MoeSpec};

use crate::cost::{CostModel, MemoryModel};
use crate::diag::SourceError;
use crate::families::Family;
use costs::{given_costs, resolve_costs, weight_exceeds, GivenCosts, RawCosts};
use model::{model, RawModel, RawTraining};
use moe::{moe, RawMoe};
use serde::Deserialize;
use std::ops::Range;
use toml::Spanned;

/// A checked spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The schedule family.
    pub family: Family,
    /// Number of ranks (GPUs) in the pipeline.
    pub ranks: u32,
    /// Total number of microbatches per step (DualPipe: both directions together).
    pub microbatches: u32,
    /// Stages per rank for interleaved-1f1b (1 otherwise, 2 for V shapes and DualPipe).
    pub chunks_per_rank: u32,
    /// Per-stage costs.
    pub costs: CostModel,
    /// Per-stage memory, when the spec has `[memory]`.
    pub memory: Option<MemoryModel>,
    /// Expert placement, when the spec has `[moe]`.
    pub moe: Option<MoeSpec>,
    /// Optimiser limits, when the spec has `[optimize]`.
    pub optimize: Option<crate::optimize::Options>,
    /// The model the runtime trains, when the spec has `[model]`, and how.
    pub model: Option<(pipewright_plan::Model, pipewright_plan::Training)>,
    /// `[costs] from`: the costs file to read (by [`load_costs`]).
    pub costs_from: Option<CostsFrom>,
}

/// `[costs] from = "FILE"` as the spec gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct CostsFrom {
    /// The file as written, relative to the spec.
    pub path: String,
    /// Where `from` stands in the spec.
    pub span: Range<usize>,
    /// The keys the spec's own `[costs]` gives, which win over the file's.
    own: GivenCosts,
}

impl Spec {
    /// Number of stages of one pipe.
    pub fn stages(&self) -> u32 {
        self.family.stages(self.ranks, self.chunks_per_rank)
    }

    /// The same model and step scheduled by another family, to compare families fairly.
    ///
    /// This spec must have one stage per rank (its costs and memory then describe the
    /// model's layers, one rank's share each). A family with `k` stages per rank splits
    /// every share evenly: stage `j` holds `1/k` of share `j / k`, so it costs `1/k` of its
    /// time and holds `1/k` of its activations and parameters (a received activation is
    /// as large as before). DualPipe's two pipes each hold the whole model.
    pub fn for_family(&self, family: Family, chunks_per_rank: u32) -> Result<Spec, String> {
        if self.stages() != self.ranks {
            return Err(format!(
                "comparing families needs a spec with one stage per rank; {} has {} stages on {} ranks",
                self.family.name(),
                self.stages(),
                self.ranks
            ));
        }
        let v = if family == Family::Interleaved1F1B { chunks_per_rank } else { family.modules_per_rank() };
        family.check_size(self.ranks, self.microbatches, v).map_err(|p| p.message)?;
        let stages = family.stages(self.ranks, v);
        let k = (stages / self.ranks).max(1);
        let split = |xs: &[f64]| -> Vec<f64> { (0..stages).map(|j| xs[(j / k) as usize] / k as f64).collect() };
        let split_bytes = |xs: &[u64]| -> Vec<u64> { (0..stages).map(|j| xs[(j / k) as usize] / k as u64).collect() };
        let keep_bytes = |xs: &[u64]| -> Vec<u64> { (0..stages).map(|j| xs[(j / k) as usize]).collect() };
        let c = &self.costs;
        let costs = CostModel {
            forward: split(&c.forward),
            backward: split(&c.backward),
            weight: split(&c.weight),
            overlapped: split(&c.overlapped),
            // Measured pairs name this spec's stages: they only carry over to as many.
            pairs: if stages as usize == c.stages() { c.pairs.clone() } else { Vec::new() },
            p2p: c.p2p,
            p2p_per_transfer: c.p2p_per_transfer,
            p2p_contention: c.p2p_contention,
            comm: c.comm,
            transport: c.transport,
            per_step: c.per_step,
            // What each rank does once a step depends on the family (which rank holds the
            // loss): only the busiest rank's carries over to another.
            per_step_by_rank: if family == self.family { c.per_step_by_rank.clone() } else { Vec::new() },
            prologue_by_rank: if family == self.family { c.prologue_by_rank.clone() } else { Vec::new() },
            mirror_sum: c.mirror_sum,
            mirror_update: c.mirror_update,
        };
        let memory = self.memory.as_ref().map(|m| MemoryModel {
            activation: split_bytes(&m.activation),
            weight_grad_part: split_bytes(&m.weight_grad_part),
            parameters: split_bytes(&m.parameters),
            p2p_buffer: keep_bytes(&m.p2p_buffer),
            budget: m.budget,
        });
        Ok(Spec { family, chunks_per_rank: v, costs, memory, ..self.clone() })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    pipeline: RawPipeline,
    costs: Option<RawCosts>,
    memory: Option<RawMemory>,
    moe: Option<RawMoe>,
    optimize: Option<RawOptimize>,
    model: Option<RawModel>,
    training: Option<RawTraining>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptimize {
    time_limit: Option<Spanned<f64>>,
    node_limit: Option<Spanned<i64>>,
    window: Option<Spanned<i64>>,
    objective: Option<Spanned<String>>,
    early_batches: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    schedule: Spanned<String>,
    ranks: Spanned<i64>,
    microbatches: Spanned<i64>,
    chunks_per_rank: Option<Spanned<i64>>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum PerStage<T> {
    One(T),
    Many(Vec<T>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemory {
    activation: Spanned<PerStage<i64>>,
    weight_grad_part: Option<Spanned<PerStage<i64>>>,
    parameters: Option<Spanned<PerStage<i64>>>,
    p2p_buffer: Option<Spanned<PerStage<i64>>>,
    budget: Spanned<i64>,
}

/// Parses and checks the spec in `source`, read from `file`.
pub fn parse(file: &str, source: &str) -> Result<Spec, SourceError> {
    let err = |span: Range<usize>, msg: String| SourceError::new(file, source, Some(span), msg);
    let raw: RawSpec = toml::from_str(source).map_err(|e| {
        let msg = e.message().trim().to_owned();
        let help = if msg.contains("unknown field") {
            "see README.md, section \"Spec\", for every key"
        } else if msg.contains("missing field") {
            "add the key; README.md, section \"Spec\", lists what each section needs"
        } else {
            "the spec must be valid TOML with the keys README.md documents"
        };
        SourceError::new(file, source, e.span(), msg).with_help(help)
    })?;

    let p = &raw.pipeline;
    let family = Family::from_name(p.schedule.get_ref()).ok_or_else(|| {
        err(p.schedule.span(), format!("unknown schedule \"{}\"", p.schedule.get_ref()))
            .with_help(format!("use one of: {}", Family::NAMES.join(", ")))
    })?;
    let ranks = positive(p.ranks.get_ref(), 1 << 16)
        .ok_or_else(|| err(p.ranks.span(), out_of_range("ranks", *p.ranks.get_ref(), 1 << 16)))?;
    let microbatches = positive(p.microbatches.get_ref(), 1 << 24)
        .ok_or_else(|| err(p.microbatches.span(), out_of_range("microbatches", *p.microbatches.get_ref(), 1 << 24)))?;
    let chunks_per_rank = match (&p.chunks_per_rank, family) {
        (Some(c), Family::Interleaved1F1B) => positive(c.get_ref(), 1 << 10).filter(|&v| v >= 2).ok_or_else(|| {
            err(c.span(), format!("chunks_per_rank must be at least 2, got {}", c.get_ref()))
                .with_help("with one chunk per rank, use schedule = \"1f1b\"")
        })?,
        (Some(c), _) => {
            return Err(err(
                c.span(),
                format!("chunks_per_rank applies to interleaved-1f1b only, not {}", family.name()),
            )
            .with_help("remove the key: this family fixes the stages per rank"))
        }
        (None, Family::Interleaved1F1B) => 2,
        (None, f) => f.modules_per_rank(),
    };
    if let Err(problem) = family.check_size(ranks, microbatches, chunks_per_rank) {
        let span = if problem.about_ranks { p.ranks.span() } else { p.microbatches.span() };
        return Err(err(span, problem.message).with_help(problem.help));
    }
    let stages = family.stages(ranks, chunks_per_rank);
    // Each (stage, microbatch) is two or three ops plus their p2p: keep plans in memory.
    const MAX_UNITS: u64 = 10_000_000;
    if stages as u64 * microbatches as u64 > MAX_UNITS {
        return Err(err(
            p.microbatches.span(),
            format!("{stages} stages × {microbatches} microbatches is too large a plan (at most {MAX_UNITS} stage-microbatch pairs)"),
        )
        .with_help("use fewer microbatches or ranks"));
    }

    let own = given_costs(file, source, raw.costs.as_ref(), (stages, ranks))?;
    let costs_from = raw.costs.as_ref().and_then(|c| c.from.as_ref()).map(|f| CostsFrom {
        path: f.get_ref().clone(),
        span: f.span(),
        own: own.clone(),
    });
    let costs = resolve_costs(own, stages as usize).map_err(|clash| {
        let span = raw.costs.as_ref().and_then(|r| r.weight.as_ref().or(r.backward.as_ref())).map(|v| v.span());
        weight_exceeds(file, source, span, clash)
    })?;
    let memory = match &raw.memory {
        Some(m) => Some(memory(file, source, m, stages)?),
        None => None,
    };
    let moe = match &raw.moe {
        Some(m) => Some(moe(file, source, m)?),
        None => None,
    };
    let optimize = match &raw.optimize {
        Some(o) => Some(optimize_options(file, source, o)?),
        None => None,
    };
    let model = match (&raw.model, &raw.training) {
        (Some(m), t) => Some(model(file, source, m, t.as_ref())?),
        (None, Some(_)) => {
            let span = source.find("[training]").map(|i| i..i + "[training]".len());
            return Err(SourceError::new(file, source, span, "[training] without [model]".to_string())
                .with_help("add a [model] section: training needs a model to train"));
        }
        (None, None) => None,
    };
    Ok(Spec { family, ranks, microbatches, chunks_per_rank, costs, memory, moe, optimize, model, costs_from })
}

/// `v` as a u32 when it is in 1..=max.
pub(super) fn positive(v: &i64, max: i64) -> Option<u32> {
    (*v >= 1 && *v <= max).then_some(*v as u32)
}

/// What is wrong with `v` for `key` when [`positive`] refuses it: not positive, or above
/// `max`.
pub(super) fn out_of_range(key: &str, v: i64, max: i64) -> String {
    if v < 1 {
        format!("{key} must be a positive integer, got {v}")
    } else {
        format!("{key} must be at most {max}, got {v}")
    }
}

/// Expands a scalar or per-stage list to one value per stage, checking the list's length.
fn per_stage<T: Copy + std::fmt::Display>(
    file: &str,
    source: &str,
    key: &str,
    value: &Spanned<PerStage<T>>,
    stages: u32,
) -> Result<Vec<T>, SourceError> {
    match value.get_ref() {
        PerStage::One(v) => Ok(vec![*v; stages as usize]),
        PerStage::Many(list) if list.len() == stages as usize => Ok(list.clone()),
        PerStage::Many(list) => Err(SourceError::new(
            file,
            source,
            Some(value.span()),
            format!(
                "{key} lists {}, but this pipeline has {}",
                crate::diag::quantity(list.len(), "value"),
                crate::diag::quantity(stages as usize, "stage")
            ),
        )
        .with_help(format!("give one value per stage ({stages}), or a single number for all"))),
    }
}

fn memory(file: &str, source: &str, raw: &RawMemory, stages: u32) -> Result<MemoryModel, SourceError> {
    let bytes = |key: &str, v: &Spanned<PerStage<i64>>| -> Result<Vec<u64>, SourceError> {
        let list = per_stage(file, source, key, v, stages)?;
        if let Some(bad) = list.iter().find(|x| **x < 0) {
            return Err(SourceError::new(file, source, Some(v.span()), format!("{key} must be ≥ 0 bytes, got {bad}")));
        }
        Ok(list.into_iter().map(|x| x as u64).collect())
    };
    let activation = bytes("activation", &raw.activation)?;
    let weight_grad_part = match &raw.weight_grad_part {
        Some(v) => {
            let list = bytes("weight_grad_part", v)?;
            if let Some(s) = (0..list.len()).find(|&s| list[s] > activation[s]) {
                return Err(SourceError::new(
                    file,
                    source,
                    Some(v.span()),
                    format!("weight_grad_part ({}) exceeds activation ({}) on stage {s}", list[s], activation[s]),
                )
                .with_help("it is the part of the activations kept from I until W"));
            }
            list
        }
        None => vec![0; stages as usize],
    };
    let parameters = match &raw.parameters {
        Some(v) => bytes("parameters", v)?,
        None => vec![0; stages as usize],
    };
    let p2p_buffer = match &raw.p2p_buffer {
        Some(v) => bytes("p2p_buffer", v)?,
        None => vec![0; stages as usize],
    };
    let budget = *raw.budget.get_ref();
    if budget <= 0 {
        return Err(SourceError::new(
            file,
            source,
            Some(raw.budget.span()),
            format!("budget must be > 0 bytes, got {budget}"),
        ));
    }
    Ok(MemoryModel { activation, weight_grad_part, parameters, p2p_buffer, budget: budget as u64 })
}

fn optimize_options(file: &str, source: &str, raw: &RawOptimize) -> Result<crate::optimize::Options, SourceError> {
    let mut o = crate::optimize::Options::default();
    if let Some(t) = &raw.time_limit {
        let v = *t.get_ref();
        if !v.is_finite() || v <= 0.0 || v > 86_400.0 {
            return Err(SourceError::new(
                file,
                source,
                Some(t.span()),
                format!("time_limit must be in (0, 86400] seconds, got {v}"),
            )
            .with_help("give the optimiser's wall-clock limit in seconds, e.g. 10.0"));
        }
        o.time_limit = v;
    }
    let count = |v: &Spanned<i64>, key: &str, min: i64, max: i64| -> Result<usize, SourceError> {
        let x = *v.get_ref();
        if x < min || x > max {
            return Err(SourceError::new(
                file,
                source,
                Some(v.span()),
                format!("{key} must be in {min}..={max}, got {x}"),
            ));
        }
        Ok(x as usize)
    };
    if let Some(n) = &raw.node_limit {
        o.node_limit = count(n, "node_limit", 100, 10_000_000)?;
    }
    if let Some(w) = &raw.window {
        o.window = count(w, "window", 2, 16)?;
    }
    if let Some(early) = raw.early_batches {
        o.early_batches = early;
    }
    if let Some(obj) = &raw.objective {
        o.objective = match obj.get_ref().as_str() {
            "step" => crate::optimize::Objective::Step,
            "makespan" => crate::optimize::Objective::Makespan,
            other => {
                return Err(SourceError::new(file, source, Some(obj.span()), format!("unknown objective \"{other}\""))
                    .with_help(
                        "the optimiser minimises \"step\" (the default: the makespan and each rank's work after \
                         its program, e.g. DualPipe's mirror-gradient exchange) or \"makespan\" (when the last \
                         program ends); the memory budget is always a constraint",
                    ))
            }
        };
    }
    Ok(o)
}
