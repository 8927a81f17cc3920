//! The model computed directly, one microbatch after another on one device: what every
//! plan must agree with (per-microbatch losses, and the step's weight gradients).

use crate::math::{gelu, gelu_grad, gemm};
use crate::{data, Model};

/// One step's results.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Mean squared error of each microbatch.
    pub losses: Vec<f32>,
    /// Per global layer: gradients of W1 and W2 of the step's objective, the mean of the
    /// microbatches' losses.
    pub grads: Vec<(Vec<f32>, Vec<f32>)>,
}

/// Runs step `step` (its data: [`data::input`]) of `model` with `layers` layers in all over `microbatches` microbatches,
/// from the weights `weights` (per global layer; [`data::layer_weights`] initially).
pub fn step(model: &Model, weights: &[(Vec<f32>, Vec<f32>)], microbatches: u32, step: u32) -> Step {
    let (h, f, t) = (model.hidden as usize, model.ffn as usize, model.tokens() as usize);
    let layers = weights.len();
    let mut grads: Vec<(Vec<f32>, Vec<f32>)> = (0..layers).map(|_| (vec![0.0; h * f], vec![0.0; f * h])).collect();
    let mut losses = Vec::new();
    let scale = 1.0 / (t * h) as f32 / microbatches as f32;
    for g in 0..microbatches {
        let mut xs = vec![data::input(model, step, g)];
        let mut hs = Vec::new();
        let mut acts = Vec::new();
        for (w1, w2) in weights {
            let x = xs.last().cloned().unwrap_or_default();
            let mut pre = vec![0.0; t * f];
            gemm(&x, w1, &mut pre, t, f, h, false, false, 1.0, 0.0);
            let a: Vec<f32> = pre.iter().map(|&v| gelu(v)).collect();
            let mut y = vec![0.0; t * h];
            gemm(&a, w2, &mut y, t, h, f, false, false, 1.0, 0.0);
            hs.push(pre);
            acts.push(a);
            xs.push(y);
        }
        let target = data::target(model, step, g);
        let y = xs.last().cloned().unwrap_or_default();
        let d: Vec<f32> = y.iter().zip(&target).map(|(a, b)| a - b).collect();
        let mse: f64 = d.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / (t * h) as f64;
        losses.push(mse as f32);
        let mut dy: Vec<f32> = d.iter().map(|&v| 2.0 * scale * v).collect();
        for l in (0..layers).rev() {
            let (w1, w2) = &weights[l];
            let mut da = vec![0.0; t * f];
            gemm(&dy, w2, &mut da, t, f, h, false, true, 1.0, 0.0);
            let dh: Vec<f32> = da.iter().zip(&hs[l]).map(|(g, &x)| g * gelu_grad(x)).collect();
            gemm(&acts[l], &dy, &mut grads[l].1, f, h, t, true, false, 1.0, 1.0);
            gemm(&xs[l], &dh, &mut grads[l].0, h, f, t, true, false, 1.0, 1.0);
            let mut dx = vec![0.0; t * h];
            gemm(&dh, w1, &mut dx, t, h, f, false, true, 1.0, 0.0);
            dy = dx;
        }
    }
    Step { losses, grads }
}
