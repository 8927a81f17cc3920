//! The MLP's units as nodes of a rank (the model is `[model] kind = "mlp"`): a forward
//! (per layer Linear, GELU, Linear: GELU fused into the first product's epilogue or a
//! kernel of its own; the loss at the last stage), an input gradient, a weight gradient
//! (whose products into a mirrored stage's gradients each record the event the epilogue's
//! exchange waits for), and B = I then W.

use super::Rank;
use crate::ir::UnitKind;
use pipewright_plan::node::{Epilogue, Node};
use pipewright_plan::Dtype;

impl Rank<'_> {
    fn forward(&mut self, stream: u32, dir: u32, mb: u32) {
        let (pipe, stage) = self.stage(dir);
        let (t, h, f) = (self.model.tokens(), self.model.hidden as u64, self.model.ffn as u64);
        let g = self.global_mb(pipe, mb);
        let slot = self.slot(dir, mb);
        let x0 = if stage == 0 { self.data(stream, false, g) } else { slot.x[0] };
        for l in 0..self.model.layers_per_stage as usize {
            let (w1, w2, _, _) = self.weights(stage, l as u32);
            let x = if l == 0 { x0 } else { slot.x[l] };
            if self.model.fuse_gelu {
                let gelu = Epilogue::Gelu { pre: slot.h[l] };
                self.gemm_then(stream, (x, w1, slot.a[l]), (t, f, h), (false, false), 0.0, gelu);
            } else {
                self.gemm(stream, (x, w1, slot.h[l]), (t, f, h), (false, false), 0.0);
                let gelu = self.act_kernel("gelu_forward");
                self.kernel(stream, &gelu, vec![slot.h[l], slot.a[l]], t * f, vec![]);
            }
            self.gemm(stream, (slot.a[l], w2, slot.x[l + 1]), (t, h, f), (false, false), 0.0);
        }
        let last = self.model.layers_per_stage as usize;
        if stage + 1 == self.layout.stages {
            let target = self.data(stream, true, g);
            let loss = self.buffer("loss".into(), self.microbatches_in_step as u64, Dtype::F32);
            let scale = 1.0 / (t * h) as f32 / self.microbatches_in_step as f32;
            let partials = self.buffer("scratch.loss_partials".into(), pipewright_plan::node::MSE_BLOCKS, Dtype::F32);
            let counter = self.buffer("scratch.loss_counter".into(), 1, Dtype::F32);
            let mse = self.act_kernel("mse_loss");
            self.kernel(
                stream,
                &mse,
                vec![slot.x[last], target, slot.dy[last - 1], loss, partials, counter],
                t * h,
                vec![scale, g as f32],
            );
        } else if let Some((_, d2)) = self.layout.locate(pipe, stage + 1).filter(|&(r, _)| r == self.rank) {
            let next = self.slot(d2, mb);
            let copy = self.act_kernel("copy");
            self.kernel(stream, &copy, vec![slot.x[last], next.x[0]], t * h, vec![]);
        }
    }

    fn input_grad(&mut self, stream: u32, dir: u32, mb: u32) {
        let (pipe, stage) = self.stage(dir);
        let (t, h, f) = (self.model.tokens(), self.model.hidden as u64, self.model.ffn as u64);
        let slot = self.slot(dir, mb);
        for l in (0..self.model.layers_per_stage as usize).rev() {
            let (w1, w2, _, _) = self.weights(stage, l as u32);
            if self.model.fuse_gelu {
                let gelu_grad = Epilogue::GeluGrad { pre: slot.h[l] };
                self.gemm_then(stream, (slot.dy[l], w2, slot.dh[l]), (t, f, h), (false, true), 0.0, gelu_grad);
            } else {
                let da = self.buffer("scratch.da".into(), t * f, self.model.dtype);
                self.gemm(stream, (slot.dy[l], w2, da), (t, f, h), (false, true), 0.0);
                let gelu = self.act_kernel("gelu_backward");
                self.kernel(stream, &gelu, vec![slot.h[l], da, slot.dh[l]], t * f, vec![]);
            }
            if l > 0 {
                self.gemm(stream, (slot.dh[l], w1, slot.dy[l - 1]), (t, h, f), (false, true), 0.0);
            } else if stage > 0 {
                self.gemm(stream, (slot.dh[l], w1, slot.dx0), (t, h, f), (false, true), 0.0);
            }
        }
        if stage > 0 {
            if let Some((_, d2)) = self.layout.locate(pipe, stage - 1).filter(|&(r, _)| r == self.rank) {
                let prev = self.slot(d2, mb);
                let top = prev.dy[self.model.layers_per_stage as usize - 1];
                let copy = self.act_kernel("copy");
                self.kernel(stream, &copy, vec![slot.dx0, top], t * h, vec![]);
            }
        }
    }

    fn weight_grad(&mut self, stream: u32, dir: u32, mb: u32) {
        let (pipe, stage) = self.stage(dir);
        let (t, h, f) = (self.model.tokens(), self.model.hidden as u64, self.model.ffn as u64);
        let g = self.global_mb(pipe, mb);
        let slot = self.slot(dir, mb);
        for l in 0..self.model.layers_per_stage as usize {
            let (_, _, g1, g2) = self.weights(stage, l as u32);
            let x = if l == 0 && stage == 0 {
                self.buffer(format!("input.{g}"), t * h, self.model.dtype)
            } else {
                slot.x[l]
            };
            let events = self.grad_events.get(dir as usize).cloned().flatten();
            self.gemm(stream, (slot.a[l], slot.dy[l], g2), (f, h, t), (true, false), 1.0);
            if let Some(events) = &events {
                self.nodes.push(Node::Record { stream, event: events[2 * l] });
            }
            self.gemm(stream, (x, slot.dh[l], g1), (h, f, t), (true, false), 1.0);
            if let Some(events) = &events {
                self.nodes.push(Node::Record { stream, event: events[2 * l + 1] });
            }
        }
        self.release(dir, mb);
    }

    /// Emits unit `kind` of (`dir`, `mb`) on `stream`; B as I then W, each ending as a
    /// unit of its own (`end_unit`: what async batches wait for; a B's W does not hold
    /// back the batch after it).
    pub(super) fn unit(&mut self, stream: u32, kind: UnitKind, dir: u32, mb: u32) {
        match kind {
            UnitKind::F => self.forward(stream, dir, mb),
            UnitKind::I => self.input_grad(stream, dir, mb),
            UnitKind::W => self.weight_grad(stream, dir, mb),
            UnitKind::B => {
                self.input_grad(stream, dir, mb);
                self.end_unit(stream, true);
                self.weight_grad(stream, dir, mb);
                self.end_unit(stream, false);
                return;
            }
        }
        self.end_unit(stream, true);
    }
}
