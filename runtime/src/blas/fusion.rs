//! Whether a product's GELU epilogue runs fused (cuBLASLt's `GELU_AUX` and `DGELU`) or as
//! the plain product followed by the GELU kernel: measured per product, fused only where it
//! pays.
//!
//! Why measure: fusing saves a pass over the activation (a kernel reading and writing its
//! m × n elements), but a fused algorithm can run slower than the plain product's by more
//! than that pass costs, and by how much depends on the shape, the epilogue and the GPU
//! (on an H200, inside a step at hidden 4096, the GELU-gradient product reached 573 TFLOP/s
//! against 668–685 for the plain ones). So a product with an epilogue is prepared both ways
//! and raced on scratch operands, the two ways alternating ([`ROUNDS`] each after a warm-up,
//! medians, so that both see the same clocks); it runs unfused only when the product plus
//! the kernel is faster by more than [`FUSION_MARGIN`] (one fewer graph node, and the
//! fused pass rounds once). The outcome is published and kept like an algorithm
//! ([`crate::tuning`]): every rank and every later run on the machine, and a resumed run,
//! runs the product the same way (the two ways round differently).

use super::{destroy, Fused, Lt, Prepared, Ready, Shape};
use crate::profile::median;
use crate::tuning::{Algo, Choice};
use crate::RuntimeError;

/// How much faster (fraction of the fused time) the plain product and the kernel must be
/// for the epilogue to run unfused.
pub const FUSION_MARGIN: f64 = 0.02;

/// Timed rounds of each way, after one warm-up round.
const ROUNDS: usize = 7;

/// Whether fusing pays: the fused product takes `fused_ms`, the plain one `plain_ms` and
/// the epilogue's kernel `kernel_ms`.
pub fn fusion_pays(fused_ms: f64, plain_ms: f64, kernel_ms: f64) -> bool {
    plain_ms + kernel_ms >= fused_ms * (1.0 - FUSION_MARGIN)
}

/// The medians of a race, in ms.
struct Race {
    fused: f64,
    plain: f64,
    kernel: f64,
}

impl std::fmt::Display for Race {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fused {:.4} ms against the product {:.4} + the kernel {:.4} ms, medians of {ROUNDS}",
            self.fused, self.plain, self.kernel
        )
    }
}

impl Lt {
    /// Prepares `s` (once) and says whether it runs as one product. `false`: a product with
    /// an epilogue that runs unfused — cuBLASLt cannot fuse it at this shape, or the plain
    /// product plus the epilogue's kernel (one run of it on scratch operands timed by
    /// `kernel_ms`) raced faster (module doc) — whose caller then runs the plain product
    /// (prepared too) and the kernel. Unless recorded, the choice is published to the
    /// machine's cache, and the first published wins.
    pub fn supports(
        &mut self,
        s: Shape,
        kernel_ms: &mut dyn FnMut(Shape) -> Result<f64, RuntimeError>,
    ) -> Result<bool, RuntimeError> {
        if let Some(ready) = self.prepared.get(&s) {
            return Ok(matches!(ready, Ready::Run(_)));
        }
        let (mut ready, recorded) = self.prepare(s)?;
        let plain = Shape { epilogue: Fused::Nothing, ..s };
        if !recorded {
            let mut choice = match &ready {
                Ready::Run(p) => Choice::Algo(p.algo.data),
                Ready::Unfused(_) => Choice::Unfused,
            };
            let mut race = None;
            if let (Ready::Run(p), true) = (&ready, s.epilogue != Fused::Nothing && !self.always_fuse) {
                let raced = self.race(p, s, kernel_ms);
                let raced = match raced {
                    Ok(r) => r,
                    Err(e) => {
                        destroy(p.desc, &p.layouts);
                        return Err(e);
                    }
                };
                if !fusion_pays(raced.fused, raced.plain, raced.kernel) {
                    choice = Choice::Unfused;
                }
                race = Some(raced);
            }
            let first = match &self.cache {
                Some(cache) => cache.publish(&s, choice),
                None => choice,
            };
            ready = self.settle(ready, choice, first, race);
        }
        if matches!(ready, Ready::Unfused(_)) {
            self.supports(plain, kernel_ms)?;
        }
        let runs = matches!(ready, Ready::Run(_));
        self.prepared.insert(s, ready);
        Ok(runs)
    }

    /// Races `fused` (the fused product of `s`) against the plain product and the
    /// epilogue's kernel (module doc); prepares the plain product.
    fn race(
        &mut self,
        fused: &Prepared,
        s: Shape,
        kernel_ms: &mut dyn FnMut(Shape) -> Result<f64, RuntimeError>,
    ) -> Result<Race, RuntimeError> {
        let plain_shape = Shape { epilogue: Fused::Nothing, ..s };
        self.supports(plain_shape, kernel_ms)?;
        let Some(Ready::Run(plain)) = self.prepared.get(&plain_shape) else {
            return Err(RuntimeError::Blas(format!("the plain product of {s:?} was not prepared")));
        };
        let (fused_ops, plain_ops) = (self.scratch(s)?, self.scratch(plain_shape)?);
        self.warm_up(fused, &fused_ops)?;
        let (mut f, mut p, mut k) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..=ROUNDS {
            let times = (self.time_once(fused, &fused_ops)?, self.time_once(plain, &plain_ops)?, kernel_ms(s)?);
            if round > 0 {
                f.push(times.0);
                p.push(times.1);
                k.push(times.2);
            }
        }
        Ok(Race { fused: median(f), plain: median(p), kernel: median(k) })
    }

    /// How `s` runs once `first` (the first choice published, this one's `choice` if none
    /// before) is known ([`settled`]): `ready` as prepared, or switched to `first`.
    fn settle(&self, ready: Ready, choice: Choice, first: Choice, race: Option<Race>) -> Ready {
        let published_first = "as recorded: another rank's choice, published first";
        let fusable = matches!(ready, Ready::Run(_));
        match (settled(choice, first, fusable), ready) {
            (Settled::Unfused { raced }, Ready::Run(p)) => {
                destroy(p.desc, &p.layouts);
                Ready::Unfused(match race {
                    Some(race) if raced => format!("it raced faster: {race}"),
                    _ => published_first.into(),
                })
            }
            (Settled::Fused { adopt: Some(algo) }, Ready::Run(mut p)) if self.accepts(p.desc, &p.layouts, &algo) => {
                p.algo = cudarc::cublaslt::sys::cublasLtMatmulAlgo_t { data: algo };
                p.choice = published_first.into();
                Ready::Run(p)
            }
            (_, Ready::Run(mut p)) => {
                if let Some(race) = race {
                    p.choice = format!("{}; {race}", p.choice);
                }
                Ready::Run(p)
            }
            // Settled::CannotFuse: as prepared.
            (_, unfused) => unfused,
        }
    }
}

/// What a rank does with a product once the first choice published for it is known.
#[derive(Debug, PartialEq)]
enum Settled {
    /// Fused, with the first publisher's algorithm where it differs from this rank's.
    Fused { adopt: Option<Algo> },
    /// Unfused; `raced`: this rank's own race said so (else another rank's did).
    Unfused { raced: bool },
    /// Unfused because cuBLASLt cannot fuse it here, whatever was published.
    CannotFuse,
}

/// The first published choice wins (every rank and run computes the same bits), except
/// that a rank that cannot fuse the product (`fusable`: cuBLASLt had an algorithm for it)
/// runs it unfused; `mine` is this rank's own choice.
fn settled(mine: Choice, first: Choice, fusable: bool) -> Settled {
    match (fusable, first) {
        (false, _) => Settled::CannotFuse,
        (true, Choice::Unfused) => Settled::Unfused { raced: mine == Choice::Unfused },
        (true, Choice::Algo(algo)) => Settled::Fused { adopt: (mine != first).then_some(algo) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusing_pays_unless_the_plain_product_and_the_kernel_are_clearly_faster() {
        // The GELU-gradient product at hidden 4096: 573 TFLOP/s fused, 675 plain.
        assert!(!fusion_pays(0.960, 0.815, 0.110));
        // The forward: 628 fused, a kernel reading and writing the activation once.
        assert!(fusion_pays(0.876, 0.815, 0.077));
        // Within the margin fusing is kept.
        assert!(fusion_pays(1.0, 0.90, 0.085));
        assert!(!fusion_pays(1.0, 0.90, 0.075));
    }

    #[test]
    fn the_first_published_choice_wins_unless_this_rank_cannot_fuse() {
        let (a, b) = (Choice::Algo([1; 8]), Choice::Algo([2; 8]));
        // Alone, or agreeing with the first: as raced.
        assert_eq!(settled(a, a, true), Settled::Fused { adopt: None });
        assert_eq!(settled(Choice::Unfused, Choice::Unfused, true), Settled::Unfused { raced: true });
        // Another rank published first: its choice, algorithm or not.
        assert_eq!(settled(a, b, true), Settled::Fused { adopt: Some([2; 8]) });
        assert_eq!(settled(Choice::Unfused, b, true), Settled::Fused { adopt: Some([2; 8]) });
        assert_eq!(settled(a, Choice::Unfused, true), Settled::Unfused { raced: false });
        // A product cuBLASLt cannot fuse here runs unfused whatever was published.
        assert_eq!(settled(Choice::Unfused, a, false), Settled::CannotFuse);
    }
}
