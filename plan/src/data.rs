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

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }

    fn fill(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

const W1: u64 = 1;
const W2: u64 = 2;
const INPUT: u64 = 3;
const TARGET: u64 = 4;

/// Initial weights of global layer `layer`: W1 (hidden × ffn) and W2 (ffn × hidden),
/// row-major, normal with standard deviation 1/√fan-in.
pub fn layer_weights(m: &Model, layer: u32) -> (Vec<f32>, Vec<f32>) {
    let (h, f) = (m.hidden as usize, m.ffn as usize);
    let w1 = Rng::new(m.seed, W1, layer as u64).fill(h * f, 1.0 / (h as f32).sqrt());
    let w2 = Rng::new(m.seed, W2, layer as u64).fill(f * h, 1.0 / (f as f32).sqrt());
    (w1, w2)
}

/// Tag of the inputs in [`synth_value`].
pub const INPUT_TAG: u32 = INPUT as u32;
/// Tag of the targets in [`synth_value`].
pub const TARGET_TAG: u32 = TARGET as u32;

/// Inputs of microbatch `g` of step `step` (tokens × hidden).
pub fn input(m: &Model, step: u32, g: u32) -> Vec<f32> {
    synth(m.seed, INPUT_TAG, step, g, m.tokens() * m.hidden as u64)
}

/// Targets of microbatch `g` of step `step` (tokens × hidden).
pub fn target(m: &Model, step: u32, g: u32) -> Vec<f32> {
    synth(m.seed, TARGET_TAG, step, g, m.tokens() * m.hidden as u64)
}

/// `n` values of the synthetic dataset (see [`synth_value`]).
pub fn synth(seed: u64, tag: u32, step: u32, index: u32, n: u64) -> Vec<f32> {
    let base = synth_base(seed, tag, step, index);
    (0..n).map(|e| synth_data(base, e)).collect()
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
