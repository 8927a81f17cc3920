//! DualPipe and DualPipeV, in exactly the order of DeepSeek's reference (`DualPipe.step`,
//! `DualPipeV.step`); `fixtures/dualpipe/ALGORITHM.md` describes the construction.
//!
//! Both share one construction. For rank r of N with M microbatches:
//!
//! | | DualPipe | DualPipeV |
//! |---|---|---|
//! | P (half-pipe length) | N/2 | N |
//! | h (distance to the nearer end) | min(r, N−1−r) | r |
//! | C (microbatches per direction) | M/2 | M |
//! | turn rank(s) | N/2−1 and N/2 | N−1 |
//! | module of phase p | p XOR (r ≥ N/2) | p |
//!
//! Constraints: DualPipe needs N even, M even and M ≥ 2N; DualPipeV needs M ≥ 2N.
//! Largest bubble (P'/2−1)(FB+B−3W), P' the stages of one pipe: exact when F = I = W and
//! FB ≥ B (measured; facts.md states it for I = F, which is not enough when W ≠ F).
//! Peak in flight: P'+1 microbatches of one stage; parameters of two stages per rank.
//!
//! p2p ops that an end of the pipe does not need, or whose partner module is on the same
//! rank (DualPipeV's turn), are skipped; which ones follows from the [`Layout`].

use super::comm::{recv_for, send_for};
use crate::ir::{Chunk, CommOp, Event, Layout, UnitKind};
use std::collections::VecDeque;

/// The programs of every rank.
pub fn programs(v_shape: bool, layout: &Layout, ranks: u32, m: u32) -> Vec<Vec<Event>> {
    (0..ranks).map(|r| RankBuilder::new(v_shape, layout, ranks, r).build(m)).collect()
}

/// Replays the reference's `step` for one rank, recording events instead of running them.
struct RankBuilder<'a> {
    layout: &'a Layout,
    rank: u32,
    /// XOR applied to a phase to get the module (DualPipe's second half of ranks).
    flip: u32,
    turn: bool,
    half_pipe: u32,
    half_rank: u32,
    per_direction: fn(u32) -> u32,
    events: Vec<Event>,
    pending: Vec<CommOp>,
    next_f: [u32; 2],
    next_b: [u32; 2],
    next_send_f: [u32; 2],
    next_send_b: [u32; 2],
    next_recv_f: [u32; 2],
    next_recv_b: [u32; 2],
    deferred_w: VecDeque<Chunk>,
}

impl<'a> RankBuilder<'a> {
    fn new(v_shape: bool, layout: &'a Layout, n: u32, r: u32) -> Self {
        let (flip, turn, half_pipe, half_rank, per_direction): (u32, bool, u32, u32, fn(u32) -> u32) = if v_shape {
            (0, r == n - 1, n, r, |m| m)
        } else {
            (u32::from(r >= n / 2), r == n / 2 - 1 || r == n / 2, n / 2, r.min(n - 1 - r), |m| m / 2)
        };
        RankBuilder {
            layout,
            rank: r,
            flip,
            turn,
            half_pipe,
            half_rank,
            per_direction,
            events: Vec::new(),
            pending: Vec::new(),
            next_f: [0; 2],
            next_b: [0; 2],
            next_send_f: [0; 2],
            next_send_b: [0; 2],
            next_recv_f: [0; 2],
            next_recv_b: [0; 2],
            deferred_w: VecDeque::new(),
        }
    }

    fn module(&self, phase: u32) -> u32 {
        phase ^ self.flip
    }

    /// Adds a p2p op to the pending list unless the layout makes it unnecessary.
    fn add(&mut self, op: Option<CommOp>, counter: fn(&mut Self) -> &mut [u32; 2], dir: u32) {
        if let Some(mut op) = op {
            let c = counter(self);
            op.mb = c[dir as usize];
            c[dir as usize] += 1;
            self.pending.push(op);
        }
    }

    fn recv_f(&mut self, phase: u32) {
        let dir = self.module(phase);
        let op = recv_for(self.layout, self.rank, UnitKind::F, Chunk { dir, mb: 0 });
        self.add(op, |s| &mut s.next_recv_f, dir);
    }
    fn send_f(&mut self, phase: u32) {
        let dir = self.module(phase);
        let op = send_for(self.layout, self.rank, UnitKind::F, Chunk { dir, mb: 0 });
        self.add(op, |s| &mut s.next_send_f, dir);
    }
    fn recv_b(&mut self, phase: u32) {
        let dir = self.module(phase);
        let op = recv_for(self.layout, self.rank, UnitKind::B, Chunk { dir, mb: 0 });
        self.add(op, |s| &mut s.next_recv_b, dir);
    }
    fn send_b(&mut self, phase: u32) {
        let dir = self.module(phase);
        let op = send_for(self.layout, self.rank, UnitKind::B, Chunk { dir, mb: 0 });
        self.add(op, |s| &mut s.next_send_b, dir);
    }

    /// Issues the pending ops as one batch and waits for it (nothing if none).
    fn commit(&mut self) {
        if !self.pending.is_empty() {
            let ops = std::mem::take(&mut self.pending);
            self.events.push(Event::Comm { ops });
        }
    }

    fn take_f(&mut self, phase: u32) -> Chunk {
        let dir = self.module(phase);
        let mb = self.next_f[dir as usize];
        self.next_f[dir as usize] += 1;
        Chunk { dir, mb }
    }
    fn take_b(&mut self, phase: u32) -> Chunk {
        let dir = self.module(phase);
        let mb = self.next_b[dir as usize];
        self.next_b[dir as usize] += 1;
        Chunk { dir, mb }
    }

    fn forward(&mut self, phase: u32, recv: bool, send: bool) {
        if recv {
            self.recv_f(phase);
        }
        self.commit();
        let Chunk { dir, mb } = self.take_f(phase);
        self.events.push(Event::F { dir, mb });
        if send {
            self.send_f(phase);
        }
    }

    fn backward(&mut self, phase: u32, zero_bubble: bool, recv: bool, send: bool) {
        if recv {
            self.recv_b(phase);
        }
        self.commit();
        let c = self.take_b(phase);
        if zero_bubble {
            self.events.push(Event::I { dir: c.dir, mb: c.mb });
            self.deferred_w.push_back(c);
        } else {
            self.events.push(Event::B { dir: c.dir, mb: c.mb });
        }
        if send {
            self.send_b(phase);
        }
    }

    fn forward_backward(&mut self, f_phase: u32, b_phase: u32, recv_first: bool) {
        if recv_first {
            self.recv_f(f_phase);
        }
        self.recv_b(b_phase);
        self.commit();
        let f = self.take_f(f_phase);
        let b = self.take_b(b_phase);
        self.events.push(Event::FB { f, b });
        self.send_f(f_phase);
        self.send_b(b_phase);
    }

    fn weight(&mut self) {
        self.commit();
        // The queue is never empty here: every W follows its I in the phases below.
        if let Some(Chunk { dir, mb }) = self.deferred_w.pop_front() {
            self.events.push(Event::W { dir, mb });
        }
    }

    fn build(mut self, m: u32) -> Vec<Event> {
        let (p, h, turn) = (self.half_pipe, self.half_rank, self.turn);
        let c = (self.per_direction)(m);
        // Phase 1: nF0.
        for _ in 0..(p - h - 1) * 2 {
            self.forward(0, true, true);
        }
        // Phase 2: nF0F1.
        self.recv_f(0);
        for i in 0..h + 1 {
            self.forward(0, false, turn);
            self.recv_f(0);
            self.forward(1, true, !turn || i < h);
            if !turn {
                self.send_f(0);
            }
        }
        // Phase 3: nB1W1F1, zero bubble.
        for _ in 0..p - h - 1 {
            self.backward(1, true, true, true);
            self.recv_f(1);
            self.weight();
            self.forward(1, false, true);
        }
        // Phase 4, the steady state: nF0B1F1B0.
        for i in 0..c + h + 1 - 2 * p {
            if i == 0 && turn {
                // The reference does not overlap these two, to shorten the bubble.
                self.forward(0, false, false);
                self.send_f(1);
                self.backward(1, false, true, false);
                self.send_f(0);
                self.send_b(1);
            } else {
                self.forward_backward(0, 1, i != 0);
            }
            self.forward_backward(1, 0, true);
        }
        // Phase 5: nB1F1B0.
        for _ in 0..p - h - 1 {
            self.backward(1, false, true, true);
            self.forward_backward(1, 0, true);
        }
        // Phase 6: nB1B0, the second half with zero bubble.
        let mut zb = false;
        let switch_at = h.div_ceil(2); // (h + 1) div 2
        for i in 0..h + 1 {
            if i == switch_at && h % 2 == 1 {
                zb = true;
            }
            self.backward(1, zb, true, true);
            if i == switch_at && h % 2 == 0 {
                zb = true;
            }
            self.backward(0, zb, true, true);
        }
        // Phase 7: nWB0, zero bubble.
        for _ in 0..p - h - 1 {
            self.weight();
            self.backward(0, true, true, true);
        }
        // Phase 8: nW.
        for _ in 0..h + 1 {
            self.weight();
        }
        debug_assert!(self.deferred_w.is_empty());
        self.commit();
        self.events
    }
}
