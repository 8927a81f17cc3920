//! The synthetic training data and the initial weights, from the model's seed alone: the
//! same on every run and for every rank count, so that a pipeline run can be compared with
//! a single-GPU run of the same model and data.
//!
//! A weight is identified by its *global* layer (`stage · layers_per_stage + layer`), so a
//! 2-stage plan with 2 layers per stage and a 4-stage plan with 1 trains the same model.
//! Microbatch `g` of step `s` (numbered over the whole step: DualPipe's pipe 1 holds the
//! second half) has its inputs and targets, fresh every step.

use crate::Model;

/// splitmix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The stream for (`tag`, `index`) under `seed`.
    pub fn new(seed: u64, tag: u64, index: u64) -> Rng {
        let mut r = Rng(seed ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

const W1: u32 = 1;
const W2: u32 = 2;
/// Tag of the inputs in [`synth_value`].
pub const INPUT_TAG: u32 = 3;
/// Tag of the targets in [`synth_value`].
pub const TARGET_TAG: u32 = 4;

/// Which matrix of a layer: `W1` (hidden × ffn) or `W2` (ffn × hidden).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matrix {
    W1,
    W2,
}

/// The initial `which` of global layer `layer`, row-major: uniform with standard deviation
/// 1/√fan-in, from the same counter-based hash as the data (so any element can be computed
/// on its own, and a large matrix in parallel).
pub fn layer_matrix(m: &Model, layer: u32, which: Matrix) -> Vec<f32> {
    let (h, f) = (m.hidden as u64, m.ffn as u64);
    let (tag, fan_in) = match which {
        Matrix::W1 => (W1, h),
        Matrix::W2 => (W2, f),
    };
    let scale = 1.0 / (fan_in as f32).sqrt();
    let mut out = synth(m.seed, tag, 0, layer, h * f);
    out.iter_mut().for_each(|v| *v *= scale);
    out
}

/// Initial weights of global layer `layer`: W1 (hidden × ffn) and W2 (ffn × hidden)
/// ([`layer_matrix`]).
pub fn layer_weights(m: &Model, layer: u32) -> (Vec<f32>, Vec<f32>) {
    (layer_matrix(m, layer, Matrix::W1), layer_matrix(m, layer, Matrix::W2))
}

/// Inputs of microbatch `g` of step `step` (tokens × hidden).
pub fn input(m: &Model, step: u32, g: u32) -> Vec<f32> {
    synth(m.seed, INPUT_TAG, step, g, m.tokens() * m.hidden as u64)
}

/// Targets of microbatch `g` of step `step` (tokens × hidden).
pub fn target(m: &Model, step: u32, g: u32) -> Vec<f32> {
    synth(m.seed, TARGET_TAG, step, g, m.tokens() * m.hidden as u64)
}

/// `n` values of the synthetic dataset (see [`synth_value`]), computed in parallel chunks
/// when there are many.
pub fn synth(seed: u64, tag: u32, step: u32, index: u32, n: u64) -> Vec<f32> {
    let base = synth_base(seed, tag, step, index);
    let mut out = vec![0.0f32; n as usize];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let chunk = out.len().div_ceil(threads).max(1 << 20);
    std::thread::scope(|scope| {
        for (c, part) in out.chunks_mut(chunk).enumerate() {
            scope.spawn(move || {
                let first = (c * chunk) as u64;
                part.iter_mut().enumerate().for_each(|(i, v)| *v = synth_data(base, first + i as u64));
            });
        }
    });
    out
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn synth_base(seed: u64, tag: u32, step: u32, index: u32) -> u64 {
    mix(mix(mix(seed) ^ tag as u64) ^ (((step as u64) << 32) | index as u64))
}

fn synth_data(base: u64, element: u64) -> f32 {
    let h = mix(base ^ element.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let u = ((h >> 40) as f64 + 0.5) / (1u64 << 24) as f64;
    ((2.0 * u - 1.0) * SQRT_3) as f32
}

/// √3: a uniform variable on (−√3, √3) has unit variance.
const SQRT_3: f64 = 1.732_050_807_568_877_2;

/// Element `element` of the synthetic dataset's array (`tag`, `step`, `index`): uniform on
/// (−√3, √3) (zero mean, unit variance) from a counter-based hash, so that any element can
/// be computed on its own. The plan's `synth_data` kernel (`kernels/common.cuh`) generates
/// each step's inputs and targets on the GPU, inside the captured graph, with exactly this
/// arithmetic (integer hashing, then one f64 multiply-add, each exactly rounded), so the
/// GPU's data equal the CPU's bit for bit — and cost no transcendental functions.
pub fn synth_value(seed: u64, tag: u32, step: u32, index: u32, element: u64) -> f32 {
    synth_data(synth_base(seed, tag, step, index), element)
}

/// The seed as four 16-bit pieces, each exact in an f32 kernel scalar.
pub fn seed_scalars(seed: u64) -> [f32; 4] {
    [0, 16, 32, 48].map(|s| ((seed >> s) & 0xFFFF) as f32)
}

/// The seed back from [`seed_scalars`].
pub fn seed_from_scalars(s: &[f32]) -> u64 {
    s.iter().take(4).enumerate().fold(0, |acc, (i, &v)| acc | ((v as u64 & 0xFFFF) << (16 * i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(hidden: u32, ffn: u32) -> Model {
        Model {
            kind: "mlp".into(),
            hidden,
            ffn,
            seq: 4,
            microbatch_size: 1,
            layers_per_stage: 1,
            dtype: crate::Dtype::F32,
            seed: 11,
            fuse_gelu: true,
            mirror_bf16: false,
        }
    }

    #[test]
    fn weights_have_the_fan_in_scale_and_are_counter_based() {
        // Large enough to be generated in several chunks (1 Mi values each).
        let m = model(512, 4096);
        for (which, fan_in) in [(Matrix::W1, 512.0f64), (Matrix::W2, 4096.0)] {
            let w = layer_matrix(&m, 3, which);
            assert_eq!(w.len(), 512 * 4096);
            let n = w.len() as f64;
            let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
            let std = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            let want = 1.0 / fan_in.sqrt();
            assert!(mean.abs() < 0.01 * want, "{which:?}: mean {mean}");
            assert!((std / want - 1.0).abs() < 0.01, "{which:?}: std {std} vs {want}");
            // Uniform: nothing beyond √3 standard deviations.
            assert!(w.iter().all(|&x| (x as f64).abs() <= 3f64.sqrt() * want * 1.0001));
            // Any element on its own, also past the first chunk.
            let tag = if which == Matrix::W1 { W1 } else { W2 };
            for e in [0usize, 7, (1 << 20) + 5, w.len() - 1] {
                assert_eq!(w[e], synth_value(m.seed, tag, 0, 3, e as u64) * (1.0 / (fan_in as f32).sqrt()));
            }
        }
        // Layers, matrices and seeds give different weights.
        assert_ne!(layer_matrix(&m, 3, Matrix::W1)[..64], layer_matrix(&m, 4, Matrix::W1)[..64]);
        assert_ne!(layer_matrix(&m, 3, Matrix::W1)[..64], layer_matrix(&m, 3, Matrix::W2)[..64]);
        assert_ne!(
            layer_matrix(&m, 3, Matrix::W1)[..64],
            layer_matrix(&Model { seed: 12, ..m.clone() }, 3, Matrix::W1)[..64]
        );
    }
}
