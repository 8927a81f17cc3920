//! The cost model: time of each kind of work per stage, p2p time and semantics, and the
//! memory each unit of work leaves behind.

use crate::ir::UnitKind;
use serde::{Deserialize, Serialize};

/// How COMM batches interact with compute.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub enum CommMode {
    /// Each batch is waited for where it stands in the program (DualPipe's reference).
    #[default]
    Blocking,
    /// Batches run in order on a communication stream per rank; only the compute op that
    /// consumes a received value waits for its batch. A batch right after a B (or an FB
    /// pair's B) is posted once the B's input gradient is done — what it sends — so the
    /// B's weight gradient runs beside the transfer instead of delaying it ("early
    /// batches"). Why: measured on 2 × H200, DualPipe's programs posted so ran their steps
    /// 3–5% faster than with every batch after the whole B.
    Async,
    /// [`CommMode::Async`] with each batch posted after the whole op before it in program
    /// order (the B's weight gradient too): what `compile --optimize` plans async programs
    /// with (measured, the optimiser's programs ran faster so; [`crate::compile_with`]),
    /// what PyTorch's runtime does (`verify --torch-csv`), and a baseline to compare with.
    AsyncInOrder,
}

impl CommMode {
    /// Whether batches run on a communication stream of their own.
    pub fn is_async(self) -> bool {
        self != CommMode::Blocking
    }

    /// The spec's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            CommMode::Blocking => "blocking",
            CommMode::Async => "async",
            CommMode::AsyncInOrder => "async_in_order",
        }
    }
}

/// One FB pair's measured time: the forward of stage `f` overlapped with the backward of
/// stage `b` (as a spec's `overlapped_pairs` lists it: no other keys).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct PairCost {
    pub f: u32,
    pub b: u32,
    pub ms: f64,
}

/// Time of one stage's work on one microbatch, per stage, plus communication.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct CostModel {
    /// `forward[s]`: F of stage s.
    pub forward: Vec<f64>,
    /// `backward[s]`: full B of stage s (input and weight gradients).
    pub backward: Vec<f64>,
    /// `weight[s]`: the W part of B; I = B − W.
    pub weight: Vec<f64>,
    /// `overlapped[s]`: an FB pair. An FB of stages a (forward) and b (backward) costs
    /// `max(overlapped[a], overlapped[b])` when `pairs` is empty.
    pub overlapped: Vec<f64>,
    /// FB pairs measured as such (`pipewright profile` writes them): a pair listed here
    /// costs its own time, and once any pair is listed, one that is not costs its halves
    /// one after the other (no overlap is assumed where none was measured). Why: one number
    /// per stage cannot say that a pair is as slow as its halves — measured on 2 × H200,
    /// DualPipe's F1+B0 pairs took 1.04 ms and its F0+B1 pairs 1.23 (the first stage
    /// computes no input gradient), and the rule above charged both the same; and a pair
    /// the profiled plan never ran is unknown — the optimiser, charging DualPipe's
    /// unmeasured pairs of stage 1's forward with its own backward the per-stage 1.08 ms,
    /// made five of them a rank, and they took 1.26–1.33 (their halves: 1.34), so that
    /// its program ran 3% slower than simulated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairCost>,
    /// One COMM batch's time: its latency, and with `p2p_per_transfer` its transfers'.
    pub p2p: f64,
    /// Each transfer of a batch in its busier direction adds this (a batch of 2 sends and
    /// 2 receives, or of 2 sends, takes `p2p + 2·p2p_per_transfer`). Why: measured on
    /// 2 × H200, the fastest of DualPipe's and DualPipeV's batches of one 16 MiB transfer
    /// each way took 0.08–0.09 ms, those of two 0.14–0.19 ms, and one number per batch
    /// cannot tell a few large batches from many small ones.
    #[serde(default)]
    pub p2p_per_transfer: f64,
    /// While a batch is in flight on a rank's communication stream (async; from reaching it,
    /// through its wait for the peer, to its completion), the rank's compute runs this
    /// fraction slower: NCCL's kernels hold SMs (and memory bandwidth) beside the products.
    /// Measured on 2 × H200 (`profile --graph-steps` on optimised DualPipe and DualPipeV
    /// programs): 0.12–0.32 at hidden 2048, 0.02–0.11 at 4096. The simulator stretches each compute op by this times its overlap with
    /// the rank's batches in flight ([`crate::sim::finish_times`]).
    #[serde(default)]
    pub p2p_contention: f64,
    /// Blocking or asynchronous communication.
    pub comm: CommMode,
    /// The p2p transport these costs were measured with (`[costs] transport`): what the
    /// plan is meant to run with, and the runtime's default for it.
    #[serde(default, skip_serializing_if = "is_nccl")]
    pub transport: pipewright_plan::Transport,
    /// Once per training step, outside the programs: the runtime's prologue and epilogue
    /// (zeroing, the step's data, the optimizer). Not part of the makespan; the report's
    /// `step_time` adds it.
    #[serde(default)]
    pub per_step: f64,
    /// The same rank by rank, when measured so (empty: every rank `per_step`). Why: in
    /// DualPipeV the first rank computes the loss and the second does not (measured on
    /// 2 × H200: 1.58 and 0.49 ms), and adding the busiest rank's to the latest rank's end
    /// over-predicted the step by 1.1 ms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_step_by_rank: Vec<f64>,
    /// Rank by rank, the part of its `per_step` that runs before its program (the step's
    /// prologue: zeroing), so that its program starts that much later (empty: every
    /// program starts at 0, all of `per_step` after it). Why: a rank's peers wait for its
    /// first forward, which follows its prologue — measured on 2 × H200 at 2048, DualPipeV's
    /// first rank's prologue (which then also generated every microbatch's data) took
    /// 1.19 ms against the second rank's 0.08, and charged after the programs the step
    /// came out 1–2% short.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prologue_by_rank: Vec<f64>,
    /// Once per step where pipes are mirrored (DualPipe): a rank's whole exchange of its
    /// mirrored stages' gradients. `step_time` counts what of it outlasts the programs
    /// ([`crate::mirror::exchange_end`]).
    #[serde(default)]
    pub mirror_sum: f64,
    /// Where pipes are mirrored: the part of `per_step` that adds a mirrored stage's two
    /// copies of its gradients and updates its weights, once that stage's exchange is
    /// done. Each rank's compute stream runs these after its program, in the exchange's
    /// order, so all but the last run beside the later stages' exchange instead of after
    /// it (0: `per_step` as one block after the exchange). Why: measured on 2 × H200, a
    /// DualPipe step ended with the exchange's last group and one update, while charging
    /// all of `per_step` after the exchange over-predicted DualPipe's steps by 1.5–3%.
    #[serde(default)]
    pub mirror_update: f64,
}

/// Whether `t` is the default transport (left out of serialised cost models).
fn is_nccl(t: &pipewright_plan::Transport) -> bool {
    *t == pipewright_plan::Transport::Nccl
}

impl CostModel {
    /// The same costs on every one of `stages` stages.
    pub fn uniform(stages: u32, f: f64, b: f64, w: f64, fb: f64, p2p: f64) -> Self {
        let n = stages as usize;
        CostModel {
            forward: vec![f; n],
            backward: vec![b; n],
            weight: vec![w; n],
            overlapped: vec![fb; n],
            pairs: Vec::new(),
            p2p,
            p2p_per_transfer: 0.0,
            p2p_contention: 0.0,
            comm: CommMode::Blocking,
            transport: pipewright_plan::Transport::Nccl,
            per_step: 0.0,
            per_step_by_rank: Vec::new(),
            prologue_by_rank: Vec::new(),
            mirror_sum: 0.0,
            mirror_update: 0.0,
        }
    }

    /// Number of stages the model covers.
    pub fn stages(&self) -> usize {
        self.forward.len()
    }

    /// Duration of one unit of `kind` on `stage`.
    pub fn unit(&self, kind: UnitKind, stage: u32) -> f64 {
        let s = stage as usize;
        match kind {
            UnitKind::F => self.forward[s],
            UnitKind::B => self.backward[s],
            UnitKind::I => self.backward[s] - self.weight[s],
            UnitKind::W => self.weight[s],
        }
    }

    /// What `rank` does once a step outside the programs.
    pub fn per_step_of(&self, rank: usize) -> f64 {
        self.per_step_by_rank.get(rank).copied().unwrap_or(self.per_step)
    }

    /// What `rank` does before its program (part of [`CostModel::per_step_of`]).
    pub fn prologue_of(&self, rank: usize) -> f64 {
        self.prologue_by_rank.get(rank).copied().unwrap_or(0.0).min(self.per_step_of(rank))
    }

    /// Duration of a COMM batch of `sends` sends and `recvs` receives on one rank.
    pub fn batch(&self, sends: usize, recvs: usize) -> f64 {
        self.p2p + self.p2p_per_transfer * sends.max(recvs) as f64
    }

    /// The least time a value takes from one rank to another: a batch of one transfer.
    pub fn hop(&self) -> f64 {
        self.batch(1, 0)
    }

    /// Duration of an FB pair: forward on stage `f`, backward on stage `b`.
    pub fn overlapped(&self, f: u32, b: u32) -> f64 {
        match self.pairs.iter().find(|p| p.f == f && p.b == b) {
            Some(p) => p.ms,
            // Pairs were measured, this one was not: no overlap assumed.
            None if !self.pairs.is_empty() => self.forward[f as usize] + self.backward[b as usize],
            None => self.overlapped[f as usize].max(self.overlapped[b as usize]),
        }
    }

    /// A lower bound on the duration of any FB pair one of whose halves is on `stage`: a
    /// listed pair's time, or what an unlisted pair costs — `overlapped[stage]` without a
    /// table (the rule never charges less), its halves one after the other with one (the
    /// cheapest partner).
    pub fn min_overlapped_with(&self, stage: u32) -> f64 {
        let s = stage as usize;
        let unlisted = if self.pairs.is_empty() {
            self.overlapped[s]
        } else {
            let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
            (self.forward[s] + min(&self.backward)).min(min(&self.forward) + self.backward[s])
        };
        self.pairs.iter().filter(|p| p.f == stage || p.b == stage).map(|p| p.ms).fold(unlisted, f64::min)
    }

    /// Whether pairing can pay: a stage whose `overlapped` is below its forward and
    /// backward one after the other, or a listed pair below its halves'.
    pub fn pairing_pays(&self) -> bool {
        (0..self.stages()).any(|s| self.overlapped[s] < self.forward[s] + self.backward[s])
            || self.pairs.iter().any(|p| p.ms < self.forward[p.f as usize] + self.backward[p.b as usize])
    }
}

/// Bytes that work leaves live on a rank.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct MemoryModel {
    /// `activation[s]`: bytes one microbatch's F leaves live on stage s until its B (or W).
    pub activation: Vec<u64>,
    /// `weight_grad_part[s]`: the part of it still needed between I and W.
    pub weight_grad_part: Vec<u64>,
    /// `parameters[s]`: resident bytes of stage s (weights, gradients, optimizer state).
    pub parameters: Vec<u64>,
    /// `p2p_buffer[s]`: bytes of one received activation or gradient for stage s, live
    /// from the receive's post to its consumer.
    #[serde(default)]
    pub p2p_buffer: Vec<u64>,
    /// Per-rank limit.
    pub budget: u64,
}

impl MemoryModel {
    /// Bytes allocated when `kind` starts on `stage` (positive) or freed when it ends.
    pub fn delta(&self, kind: UnitKind, stage: u32) -> i64 {
        let s = stage as usize;
        let act = self.activation[s] as i64;
        let keep = self.weight_grad_part[s] as i64;
        match kind {
            UnitKind::F => act,
            UnitKind::B => -act,
            UnitKind::I => -(act - keep),
            UnitKind::W => -keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_pair_costs_its_own_time_and_can_make_pairing_pay() {
        // F 1, B 2, and an FB no cheaper than both one after the other: pairing cannot pay.
        let mut c = CostModel::uniform(3, 1.0, 2.0, 1.0, 3.0, 0.0);
        assert!(!c.pairing_pays());
        assert_eq!((c.overlapped(0, 2), c.min_overlapped_with(1)), (3.0, 3.0));
        // Measured: F of stage 2 with B of stage 0 in 2.5. Only that pair overlaps now:
        // the others were not measured, and cost their halves (F 1 + B 2 = 3).
        c.pairs.push(PairCost { f: 2, b: 0, ms: 2.5 });
        assert!(c.pairing_pays());
        assert_eq!((c.overlapped(2, 0), c.overlapped(0, 2)), (2.5, 3.0), "only the listed direction");
        assert_eq!((c.min_overlapped_with(0), c.min_overlapped_with(1), c.min_overlapped_with(2)), (2.5, 3.0, 2.5));
        // A listed pair dearer than its halves is charged as listed, and bounds nothing lower.
        c.pairs.push(PairCost { f: 1, b: 1, ms: 3.5 });
        assert_eq!((c.overlapped(1, 1), c.min_overlapped_with(1)), (3.5, 3.0));
    }

    #[test]
    fn with_measured_pairs_an_unmeasured_pair_is_not_assumed_to_overlap() {
        // Per stage: pairs at 2.2, below F 1 + B 2. Without a table every pair costs 2.2.
        let mut c = CostModel::uniform(2, 1.0, 2.0, 1.0, 2.2, 0.0);
        assert_eq!((c.overlapped(0, 1), c.overlapped(1, 1), c.min_overlapped_with(1)), (2.2, 2.2, 2.2));
        // DualPipe's measured kinds, F1+B0 and F0+B1: a same-stage pair was never run.
        c.backward[1] = 2.5;
        c.pairs = vec![PairCost { f: 1, b: 0, ms: 2.1 }, PairCost { f: 0, b: 1, ms: 2.4 }];
        assert_eq!((c.overlapped(1, 0), c.overlapped(0, 1)), (2.1, 2.4));
        assert_eq!((c.overlapped(1, 1), c.overlapped(0, 0)), (3.5, 3.0), "its halves, one after the other");
        // The bound: the cheapest pair a stage can be in, listed or not.
        assert_eq!((c.min_overlapped_with(0), c.min_overlapped_with(1)), (2.1, 2.1));
        assert!(c.pairing_pays());
    }
}
