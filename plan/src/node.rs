//! The nodes of a rank's step: what the runtime issues, in order, on which stream.

use crate::{Dtype, RankPlan};
use serde::{Deserialize, Serialize};

/// An element-wise kernel a plan may name: its buffers, which of them hold one value per
/// element (the others hold one value), and how many f32 scalars follow its element count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelSig {
    pub name: &'static str,
    pub per_element: &'static [bool],
    pub scalars: usize,
}

/// The element-wise kernels a plan may name. Their sources are in `kernels/` (compiled for
/// sm_90 with NVRTC by the runtime; `runtime/tests/kernel_sources.rs` checks each
/// signature against its source).
pub const KERNELS: &[KernelSig] = &[
    // y = gelu(x)                              (x, y)
    KernelSig { name: "gelu_forward", per_element: &[true, true], scalars: 0 },
    // dx = dy · gelu'(x)                       (x, dy, dx)
    KernelSig { name: "gelu_backward", per_element: &[true, true, true], scalars: 0 },
    // loss[i] += scale·Σ(y − t)²; dy = 2·scale·(y − t)  (y, t, dy, loss, partials, counter);
    // partials holds one f32 per block (at most MSE_BLOCKS), counter one u32
    KernelSig { name: "mse_loss", per_element: &[true, true, true, false, false, false], scalars: 2 },
    // acc(f32) += g                            (g, acc)
    KernelSig { name: "accumulate", per_element: &[true, true], scalars: 0 },
    // w −= lr · g(f32)                         (w, g)
    KernelSig { name: "sgd_update", per_element: &[true, true], scalars: 1 },
    // g += r; w −= lr · g (f32): a mirrored gradient's sum and SGD in one pass  (w, g, r)
    KernelSig { name: "sgd_update_sum", per_element: &[true, true, true], scalars: 1 },
    // AdamW on w with f32 moments m, v and the step count  (w, g, m, v, step)
    KernelSig { name: "adamw_update", per_element: &[true, true, true, true, false], scalars: 5 },
    // step += 1                                (step)
    KernelSig { name: "tick", per_element: &[false], scalars: 0 },
    // y = x                                    (x, y)
    KernelSig { name: "copy", per_element: &[true, true], scalars: 0 },
    // x = 0                                    (x)
    KernelSig { name: "zero", per_element: &[true], scalars: 0 },
    // x = the synthetic dataset's array (tag, index) of the step held in `step`
    // (data::synth_value); scalars [tag, index, seed in four 16-bit pieces]  (x, step)
    KernelSig { name: "synth_data", per_element: &[true, false], scalars: 6 },
    // bf16 variants (kernels/bf16.cu): the same, on bf16 activations (f32 arithmetic).
    KernelSig { name: "gelu_forward_bf16", per_element: &[true, true], scalars: 0 },
    KernelSig { name: "gelu_backward_bf16", per_element: &[true, true, true], scalars: 0 },
    KernelSig { name: "mse_loss_bf16", per_element: &[true, true, true, false, false, false], scalars: 2 },
    KernelSig { name: "copy_bf16", per_element: &[true, true], scalars: 0 },
    KernelSig { name: "synth_data_bf16", per_element: &[true, false], scalars: 6 },
    // w(bf16) = master(f32)                     (master, w)
    KernelSig { name: "cast_bf16", per_element: &[true, true], scalars: 0 },
    // acc(f32) += g(bf16)                      (g, acc)
    KernelSig { name: "accumulate_bf16", per_element: &[true, true], scalars: 0 },
    // w(f32) −= lr · g; copy(bf16) = w         (w, g, copy)
    KernelSig { name: "sgd_update_bf16", per_element: &[true, true, true], scalars: 1 },
    // g += r; w(f32) −= lr · g; copy(bf16) = w  (w, g, r, copy)
    KernelSig { name: "sgd_update_sum_bf16", per_element: &[true, true, true, true], scalars: 1 },
];

/// The signature of kernel `name`, if a plan may name it.
pub fn kernel_sig(name: &str) -> Option<&'static KernelSig> {
    KERNELS.iter().find(|k| k.name == name)
}

/// The element-wise kernel `base` of [`KERNELS`] for activations of `dtype`: its `_bf16`
/// variant in bf16.
pub fn kernel_name(base: &str, dtype: Dtype) -> String {
    match dtype {
        Dtype::F32 => base.into(),
        Dtype::Bf16 => format!("{base}_bf16"),
    }
}

/// Blocks of the `mse_loss` kernel: the size of its `partials` buffer.
pub const MSE_BLOCKS: u64 = 512;

/// One matrix product: `C = alpha · op(A) · op(B) + beta · C`, row-major, with op(A) of
/// shape m × k, op(B) k × n and C m × n (cuBLAS is column-major; the runtime swaps the
/// operands accordingly).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Gemm {
    pub stream: u32,
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
    /// What happens to the product before it is written (a cuBLASLt epilogue).
    #[serde(default, skip_serializing_if = "Epilogue::is_none")]
    pub epilogue: Epilogue,
}

/// What a GEMM does to its product `P = alpha · op(A) · op(B)` before writing C: GELU fused
/// into the GEMM (cuBLASLt's `GELU_AUX` and `DGELU` epilogues), so that the activation
/// costs no pass of its own over the `tokens × ffn` matrices. Both need `beta = 0`; `pre`
/// has C's shape and dtype.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Epilogue {
    /// C = P.
    #[default]
    None,
    /// `pre = P` (the pre-activation, kept for the backward) and `C = gelu(P)`.
    Gelu { pre: u32 },
    /// `C = P ⊙ gelu'(pre)`: the gradient through the GELU whose input was `pre`.
    GeluGrad { pre: u32 },
}

impl Epilogue {
    pub fn is_none(&self) -> bool {
        matches!(self, Epilogue::None)
    }

    /// The pre-activation buffer it reads or writes.
    pub fn pre(&self) -> Option<u32> {
        match *self {
            Epilogue::None => None,
            Epilogue::Gelu { pre } | Epilogue::GeluGrad { pre } => Some(pre),
        }
    }
}

impl Gemm {
    /// Every buffer the GEMM reads or writes: A, B, C and an epilogue's pre-activation.
    pub fn buffers(&self) -> impl Iterator<Item = u32> {
        [self.a, self.b, self.c].into_iter().chain(self.epilogue.pre())
    }
}

/// One element-wise kernel launch over `elements` elements.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Kernel {
    pub stream: u32,
    pub name: String,
    pub buffers: Vec<u32>,
    pub elements: u64,
    /// Scalar arguments (learning rate, step, …), in the kernel's order.
    #[serde(default)]
    pub scalars: Vec<f32>,
}

/// One side of a p2p transfer inside an NCCL group.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct P2p {
    pub send: bool,
    pub peer: u32,
    pub buffer: u32,
}

/// One node of a rank's step.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Node {
    Gemm(Gemm),
    Kernel(Kernel),
    /// One NCCL group of sends and receives (a verified COMM batch).
    Group {
        stream: u32,
        ops: Vec<P2p>,
    },
    /// Record `event` on `stream`.
    Record {
        stream: u32,
        event: u32,
    },
    /// Make `stream` wait for `event`.
    Wait {
        stream: u32,
        event: u32,
    },
}

impl Node {
    /// Checks the node against its rank's plan (see [`crate::Plan::validate`]).
    pub(crate) fn check(&self, r: &RankPlan, world: u32) -> Result<(), String> {
        let stream = |s: u32| if s < r.streams { Ok(()) } else { Err(format!("stream {s} of {}", r.streams)) };
        let buffer = |b: u32| r.buffers.get(b as usize).ok_or_else(|| format!("buffer {b} of {}", r.buffers.len()));
        match self {
            Node::Gemm(g) => {
                stream(g.stream)?;
                for (name, id, rows, cols) in [("A", g.a, g.m, g.k), ("B", g.b, g.k, g.n), ("C", g.c, g.m, g.n)] {
                    let buf = buffer(id)?;
                    let need = rows.saturating_mul(cols).saturating_mul(buf.dtype.size());
                    if buf.bytes < need {
                        return Err(format!(
                            "GEMM operand {name} ({}) holds {} bytes, needs {need}",
                            buf.name, buf.bytes
                        ));
                    }
                }
                if let Some(pre) = g.epilogue.pre() {
                    let (p, c) = (buffer(pre)?, buffer(g.c)?);
                    if g.beta != 0.0 || p.dtype != c.dtype || p.bytes < g.m.saturating_mul(g.n) * p.dtype.size() {
                        return Err(format!(
                            "GEMM epilogue {:?} needs beta 0 and a pre-activation ({}) of C's dtype and shape",
                            g.epilogue, p.name
                        ));
                    }
                }
                Ok(())
            }
            Node::Kernel(k) => {
                stream(k.stream)?;
                let sig = kernel_sig(&k.name).ok_or_else(|| format!("unknown kernel {}", k.name))?;
                let per_element = sig.per_element;
                if k.scalars.len() != sig.scalars {
                    return Err(format!("kernel {} takes {} scalars, got {}", k.name, sig.scalars, k.scalars.len()));
                }
                if k.buffers.len() != per_element.len() {
                    return Err(format!(
                        "kernel {} takes {} buffers, got {}",
                        k.name,
                        per_element.len(),
                        k.buffers.len()
                    ));
                }
                for (&b, &full) in k.buffers.iter().zip(per_element) {
                    let buf = buffer(b)?;
                    let need = if full { k.elements } else { 1 }.saturating_mul(buf.dtype.size());
                    if buf.bytes < need {
                        return Err(format!("kernel {} over {} elements overruns {}", k.name, k.elements, buf.name));
                    }
                }
                Ok(())
            }
            Node::Group { stream: s, ops } => {
                stream(*s)?;
                if ops.is_empty() {
                    return Err("empty p2p group".into());
                }
                for op in ops {
                    buffer(op.buffer)?;
                    if op.peer >= world || op.peer == r.rank {
                        return Err(format!("peer {} is not another rank of {world}", op.peer));
                    }
                }
                Ok(())
            }
            Node::Record { stream: s, event } | Node::Wait { stream: s, event } => {
                stream(*s)?;
                if *event >= r.events {
                    return Err(format!("event {event} of {}", r.events));
                }
                Ok(())
            }
        }
    }
}
