//! The plan artifact: what `pipewright compile` hands the runtime for a spec with `[model]`.
//!
//! Per rank: one arena with every buffer at a fixed offset (weights, gradients, optimizer
//! state, activations, receive and send buffers, workspace), the streams, and the ordered
//! nodes the rank issues — cuBLAS GEMMs, element-wise kernels (by name, from `kernels/`),
//! NCCL sends and receives grouped as the verified program batches them, and event
//! record/wait between streams — plus the hashes that tie the plan to its spec, its
//! programs and their certificates.
//!
//! This crate is the contract between the compiler and the runtime, and depends on neither
//! (nor on Z3 or egg): GPU nodes build the runtime without them. [`Plan::validate`] checks
//! the plan's internal consistency, [`Plan::refuse_mismatch`] its fit to the job that
//! loads it.

pub mod cpu;
pub mod data;
pub mod intervals;
pub mod math;
pub mod node;
pub mod reference;
pub mod transfers;

pub use node::{Epilogue, Gemm, Kernel, Node};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The plan format this build writes and reads. 3: the fused SGD kernels
/// (`sgd_update_sum`, `sgd_update_bf16`, `sgd_update_sum_bf16`), which a runtime of
/// version 2 does not know.
pub const PLAN_VERSION: u32 = 3;

/// Element type of a buffer.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }
}

/// How p2p groups move their bytes: what a plan is meant to run with (the transport its
/// spec's costs were measured with, `[costs] transport`), and what a run uses (`run
/// --p2p`, by default the plan's).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// NCCL send/receive kernels (any ranks, any hosts).
    #[default]
    Nccl,
    /// The copy engines, through CUDA IPC (every peer on this host; see the runtime's
    /// `copy_protocol`).
    Copy,
}

impl Transport {
    /// Its name in specs, costs files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Nccl => "nccl",
            Transport::Copy => "copy",
        }
    }
}

/// The model a plan trains (the spec's `[model]`).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Model {
    /// `"mlp"`: every stage is `layers_per_stage` × (Linear(h → ffn), GELU, Linear(ffn → h)),
    /// no bias; loss = mean squared error against targets.
    pub kind: String,
    pub hidden: u32,
    pub ffn: u32,
    pub seq: u32,
    pub microbatch_size: u32,
    pub layers_per_stage: u32,
    /// Activations and weights; gradients accumulate in f32 either way.
    pub dtype: Dtype,
    pub seed: u64,
    /// GELU fused into the GEMMs around it (cuBLASLt epilogues, [`node::Epilogue`]) rather
    /// than run as kernels of its own.
    #[serde(default = "yes")]
    pub fuse_gelu: bool,
    /// DualPipe's mirrored gradient copies travel as bf16 (each rounded once, then added
    /// in f32), half the bytes of f32; bf16 models only.
    #[serde(default)]
    pub mirror_bf16: bool,
}

fn yes() -> bool {
    true
}

impl Model {
    /// Rows of one microbatch's activations (tokens).
    pub fn tokens(&self) -> u64 {
        self.seq as u64 * self.microbatch_size as u64
    }
}

/// How it trains (the spec's `[training]`).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Training {
    /// `"sgd"` or `"adamw"`.
    pub optimizer: String,
    pub lr: f64,
    pub steps: u32,
    /// Steps between checkpoints (0: never).
    pub checkpoint_every: u32,
}

/// What ties a plan to where it came from.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct Hashes {
    /// sha256 of the spec file.
    pub spec: String,
    /// sha256 of programs.json (the verified program set).
    pub programs: String,
    /// sha256 of proof/manifest.json (which holds each certificate's hash).
    pub certificates: String,
}

/// One buffer of a rank's arena.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct Buffer {
    pub name: String,
    pub offset: u64,
    pub bytes: u64,
    pub dtype: Dtype,
}

/// The stream of a rank's p2p groups (and of DualPipe's mirror-gradient exchange); 0 is
/// the compute stream, 1 the second compute stream of overlapped pairs.
pub const COMM_STREAM: u32 = 2;

/// One rank's part of the plan.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct RankPlan {
    pub rank: u32,
    /// Bytes of the arena; every buffer lies inside it.
    pub arena_bytes: u64,
    pub buffers: Vec<Buffer>,
    /// Number of streams (0: compute, 1: the second compute stream of overlapped pairs,
    /// 2: communication).
    pub streams: u32,
    /// Number of CUDA events the nodes record and wait on.
    pub events: u32,
    /// The rank's step, in issue order.
    pub nodes: Vec<Node>,
    /// Which nodes implement each op of the rank's program (for `profile`), in order.
    #[serde(default)]
    pub ops: Vec<OpSpan>,
}

/// The nodes `first..=last` implement one op of the program; `stream` is where the op
/// begins and ends (the communication stream for a p2p batch, else the compute stream).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct OpSpan {
    /// The op as the programs print it, e.g. `F0.3`, `FB(F1.2,B0.0)`, `[>1f0.3 <1b0.1]`.
    pub label: String,
    /// F, B, I, W, FB or COMM.
    pub kind: String,
    /// The stages computed: one, or an FB's forward stage then its backward stage.
    pub stages: Vec<u32>,
    pub stream: u32,
    pub first: u32,
    pub last: u32,
    /// Bytes a COMM op moves (sent + received); 0 for compute.
    pub bytes: u64,
}

/// The whole plan.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Plan {
    pub version: u32,
    pub schedule: String,
    pub world_size: u32,
    pub pipes: u32,
    pub stages: u32,
    /// Microbatches per pipe and step.
    pub microbatches: u32,
    pub hashes: Hashes,
    pub model: Model,
    pub training: Training,
    /// The p2p transport it was planned for (the runtime's default).
    #[serde(default)]
    pub transport: Transport,
    pub ranks: Vec<RankPlan>,
}

/// Why a plan is refused.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PlanRefusal {
    #[error("plan format version {found}, but this runtime reads version {supported}; recompile the spec with this pipewright")]
    Version { found: u32, supported: u32 },
    #[error("the plan is for a world of {plan} ranks but this job has {job} (WORLD_SIZE / SLURM_NTASKS); launch {plan} processes or recompile with ranks = {job}")]
    WorldSize { plan: u32, job: u32 },
    #[error("the plan needs {need} GPUs on this node but {visible} are visible (CUDA_VISIBLE_DEVICES); make {need} visible or run fewer ranks per node")]
    Gpus { need: u32, visible: u32 },
    #[error("the plan's certificate hash {plan} does not match proof/manifest.json ({found}): the plan and its proofs are from different compilations; recompile")]
    CertificateHash { plan: String, found: String },
    #[error("malformed plan: rank {rank}: {what}")]
    Malformed { rank: u32, what: String },
}

impl Plan {
    /// Checks that the plan is internally consistent: one rank plan per rank, buffers
    /// inside the arena and not overlapping, every node naming existing buffers, streams,
    /// events and peers, every GEMM's operands large enough for its shape, and every send
    /// meeting a receive of its size on its peer ([`transfers::transfers`]).
    pub fn validate(&self) -> Result<(), PlanRefusal> {
        if self.version != PLAN_VERSION {
            return Err(PlanRefusal::Version { found: self.version, supported: PLAN_VERSION });
        }
        let bad = |rank: u32, what: String| PlanRefusal::Malformed { rank, what };
        if self.ranks.len() != self.world_size as usize {
            return Err(bad(0, format!("{} rank plans for a world of {}", self.ranks.len(), self.world_size)));
        }
        for (i, r) in self.ranks.iter().enumerate() {
            if r.rank as usize != i {
                return Err(bad(i as u32, format!("rank plan {i} says it is rank {}", r.rank)));
            }
            let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(r.buffers.len());
            for b in &r.buffers {
                let end = b.offset.checked_add(b.bytes).filter(|&e| e <= r.arena_bytes);
                let Some(end) = end else {
                    return Err(bad(r.rank, format!("buffer {} ends past the {}-byte arena", b.name, r.arena_bytes)));
                };
                if b.bytes % b.dtype.size() != 0 || b.offset % 256 != 0 {
                    return Err(bad(r.rank, format!("buffer {} is misaligned or not whole elements", b.name)));
                }
                spans.push((b.offset, end, &b.name));
            }
            spans.sort();
            if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
                return Err(bad(r.rank, format!("buffers {} and {} overlap", w[0].2, w[1].2)));
            }
            for (k, n) in r.nodes.iter().enumerate() {
                n.check(r, self.world_size).map_err(|what| bad(r.rank, format!("node {k}: {what}")))?;
            }
            // Op spans (timed by `profile`) cover existing nodes, on existing streams.
            for o in &r.ops {
                if o.first > o.last || o.last as usize >= r.nodes.len() || o.stream >= r.streams {
                    return Err(bad(
                        r.rank,
                        format!(
                            "op {} spans nodes {}..={} on stream {} ({} nodes, {} streams)",
                            o.label,
                            o.first,
                            o.last,
                            o.stream,
                            r.nodes.len(),
                            r.streams
                        ),
                    ));
                }
            }
        }
        // Every send meets a receive of its size (see [`transfers`]).
        transfers::transfers(self)?;
        Ok(())
    }

    /// Refuses a plan that does not fit the job loading it: another world size, more local
    /// ranks than visible GPUs, or certificates from another compilation.
    pub fn refuse_mismatch(
        &self,
        world_size: u32,
        local_ranks: u32,
        visible_gpus: u32,
        manifest_sha256: &str,
    ) -> Result<(), PlanRefusal> {
        if self.version != PLAN_VERSION {
            return Err(PlanRefusal::Version { found: self.version, supported: PLAN_VERSION });
        }
        if self.world_size != world_size {
            return Err(PlanRefusal::WorldSize { plan: self.world_size, job: world_size });
        }
        if local_ranks > visible_gpus {
            return Err(PlanRefusal::Gpus { need: local_ranks, visible: visible_gpus });
        }
        if self.hashes.certificates != manifest_sha256 {
            return Err(PlanRefusal::CertificateHash {
                plan: self.hashes.certificates.clone(),
                found: manifest_sha256.to_owned(),
            });
        }
        Ok(())
    }
}
