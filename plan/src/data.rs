//! The synthetic training data and the initial weights, from the model's seed alone: the
//! same on every run and for every rank count, so that a pipeline run can be compared with
//! a single-GPU run of the same model and data.
//!
//! A weight is identified by its *global* layer (`stage · layers_per_stage + layer`), so a
//! 2-stage plan with 2 layers per stage and a 4-stage plan with 1 trains the same model.
//! Microbatch `g` (numbered over the whole step: DualPipe's pipe 1 holds the second half)
//! has its inputs and targets.

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

/// Inputs of microbatch `g` (tokens × hidden).
pub fn input(m: &Model, g: u32) -> Vec<f32> {
    Rng::new(m.seed, INPUT, g as u64).fill(m.tokens() as usize * m.hidden as usize, 1.0)
}

/// Targets of microbatch `g` (tokens × hidden).
pub fn target(m: &Model, g: u32) -> Vec<f32> {
    Rng::new(m.seed, TARGET, g as u64).fill(m.tokens() as usize * m.hidden as usize, 1.0)
}
