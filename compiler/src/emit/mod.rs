//! The emitter: a verified program set and a `[model]` become the plan artifact the runtime
//! replays (`pipewright-plan`): per rank an arena with every buffer at a fixed offset, and
//! the ordered nodes of one training step.
//!
//! Lowering, per event of a rank's program (layers `l` of the module's stage, T tokens):
//! - **F**: `h_l = x_l·W1_l`, `a_l = gelu(h_l)`, `x_{l+1} = a_l·W2_l`; on a pipe's last
//!   stage `mse_loss` writes the loss and the output gradient. The first stage's input and
//!   the last stage's target are generated (`synth_data`) on the forward's stream right
//!   before it (`Rank::data`).
//! - **I** (input gradient): `da = dy_l·W2_lᵀ`, `dh_l = gelu'(h_l)·da`, `dy_{l−1} = dh_l·W1_lᵀ`.
//! - **W** (weight gradient, accumulated in f32): `G2_l += a_lᵀ·dy_l`, `G1_l += x_lᵀ·dh_l`.
//! - With `fuse_gelu` (`[model] gelu`), GELU lives in the products' epilogues: F's first
//!   product writes `a_l` and keeps `h_l` (`Epilogue::Gelu`), I's first writes `dh_l`
//!   directly (`Epilogue::GeluGrad`), and neither needs a kernel or the `da` scratch.
//! - **B** = I then W. **FB**: the forward on stream 1 and the backward on stream 0,
//!   joined by events.
//! - **COMM**: one NCCL group on stream 2, after the compute stream reaches it. Blocking
//!   p2p: the compute stream then waits for it where it stands. Async p2p
//!   ([`emit_with`]): the batch records its own event, and a compute stream waits for it
//!   only before a node that reads a buffer it received or overwrites one it sent (slots
//!   are reused), so it overlaps compute as the async semantics say; the compute stream
//!   joins the last batch before the epilogue. Under [`CommMode::Async`] (not
//!   `AsyncInOrder`) a batch after a B waits for the B's input gradient and for the last
//!   use of each buffer it moves, not for the B's weight gradient, which then runs beside
//!   the transfer ("early batches", as the simulator times them: `dag::posts_early`).
//!
//! A microbatch's activations live in a *slot* of its module, taken when its forward input
//! arrives and given back once its backward and its input-gradient send are done, so the
//! arena holds as many slots per module as the verified order keeps in flight. The step
//! starts by zeroing the gradients and the losses and ends with DualPipe's mirror-gradient
//! sum (mirrored stages exchange gradients, in the order they become final) and the
//! optimizer (`emit/epilogue.rs`).

mod epilogue;
mod units;

use crate::cost::CommMode;
use crate::dag::payload;
use crate::ir::{CommKind, Event, Layout, ProgramSet, UnitKind};
use pipewright_plan::node::{Epilogue, Gemm, Kernel, Node, P2p};
use pipewright_plan::{Buffer, Dtype, Hashes, Model, OpSpan, Plan, RankPlan, Training, PLAN_VERSION};
use std::collections::{HashMap, HashSet};
use thiserror::Error;

/// Why a program set cannot be emitted.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum EmitError {
    #[error("the program set has no usable layout")]
    NoLayout,
    #[error("model kind \"{0}\" is not supported (only \"mlp\")")]
    Kind(String),
    #[error("rank {rank}, event {event}: {what}")]
    Event { rank: u32, event: u32, what: String },
}

const COMPUTE: u32 = 0;
const OVERLAP: u32 = 1;
const COMM: u32 = pipewright_plan::COMM_STREAM;

/// The buffers of one microbatch slot of a module.
#[derive(Clone, Debug)]
struct Slot {
    /// x_0 (stage input) … x_L (stage output).
    x: Vec<u32>,
    h: Vec<u32>,
    a: Vec<u32>,
    /// dy_l: gradient of x_{l+1}.
    dy: Vec<u32>,
    dh: Vec<u32>,
    /// Gradient of the stage input (sent to the previous stage).
    dx0: u32,
}

/// One rank's plan under construction.
struct Rank<'a> {
    rank: u32,
    layout: &'a Layout,
    model: &'a Model,
    buffers: Vec<Buffer>,
    by_name: HashMap<String, u32>,
    end: u64,
    nodes: Vec<Node>,
    /// Per module: slots, the free list, and (mb → slot, outstanding uses).
    slots: Vec<Vec<Slot>>,
    free: Vec<Vec<usize>>,
    live: Vec<HashMap<u32, (usize, u32)>>,
    microbatches_in_step: u32,
    /// Async p2p: compute waits for a batch only where it uses one of its buffers.
    async_comm: bool,
    /// [`CommMode::Async`]: a batch after a B waits for its input gradient, not its
    /// weight gradient ([`Rank::await_units`]).
    early: bool,
    /// Async p2p: the event of the last batch that sent or received each buffer.
    pending: HashMap<u32, u32>,
    /// Async p2p: per compute stream (0, 1), the latest batch event it has waited for
    /// (batches complete in order, so that covers every earlier one).
    waited: [u32; 2],
    /// The next free event id (0–3 are the fixed fork/join events).
    next_event: u32,
    /// Async p2p: the event of the last batch so far.
    last_batch: Option<u32>,
    /// Per module whose gradients a mirror copy shares (DualPipe): per gradient matrix, in
    /// the order the weight gradient writes them ([`epilogue::matrices`]), the event
    /// recorded after each product into it, so that the epilogue's exchange of a matrix
    /// waits for its last product only, not for the whole program.
    grad_events: Vec<Option<Vec<u32>>>,
    /// The step's inputs and targets generated so far ([`Rank::data`]).
    generated: HashSet<u32>,
    /// Async p2p: per buffer, the compute stream and the event recorded at the end of the
    /// last unit (F, I, W) that read or wrote it: what a batch sending or receiving it
    /// waits for, instead of everything the compute stream did before the batch.
    touched: HashMap<u32, (u32, u32)>,
    /// Async p2p: the buffers the unit being emitted reads or writes.
    unit_buffers: Vec<u32>,
    /// Async p2p: per compute stream (0, 1), the latest of its events the communication
    /// stream has waited for (events of a stream are recorded in emission order).
    comm_waited: [Option<u32>; 2],
    /// Async p2p: per compute stream, the event at the end of its last unit that is not
    /// the weight gradient of a B: where the program stands for its next batch.
    position: [Option<u32>; 2],
    /// Early batches: per module, the slots given back since the last batch (a receive
    /// into one of them would wait for the unit that just gave it back).
    recent: Vec<HashSet<usize>>,
    /// Async p2p: the event recorded on the compute stream when the step starts, which the
    /// first batch waits for when its buffers need nothing else: the runtime captures the
    /// step from the compute stream, and a stream joins the capture by waiting for an
    /// event recorded in it.
    start: Option<u32>,
    /// Early batches: the events of unit ends and of the step's start, whose records
    /// [`drop_unwaited_records`] removes where no wait uses them.
    unit_events: HashSet<u32>,
}

impl<'a> Rank<'a> {
    /// Microbatch `g`'s input (the first stage's) or `target` (the last stage's),
    /// generated in place on `stream` (data::synth_value, from the step counter
    /// `data.step`, which the epilogue advances) right before its first use. Why there and not all in the
    /// prologue: a program starts after its prologue, and its peers' first ops wait for its
    /// first forward — DualPipeV's first rank generated 16 microbatches' data (1.2 ms at
    /// hidden 2048) before the second rank could start.
    fn data(&mut self, stream: u32, target: bool, g: u32) -> u32 {
        let (t, h) = (self.model.tokens(), self.model.hidden as u64);
        let (name, tag) = if target {
            (format!("target.{g}"), pipewright_plan::data::TARGET_TAG)
        } else {
            (format!("input.{g}"), pipewright_plan::data::INPUT_TAG)
        };
        let x = self.buffer(name, t * h, self.model.dtype);
        if self.generated.insert(x) {
            let step = self.buffer("data.step".into(), 1, Dtype::F32);
            let mut scalars = vec![tag as f32, g as f32];
            scalars.extend(pipewright_plan::data::seed_scalars(self.model.seed));
            let synth = self.act_kernel("synth_data");
            self.kernel(stream, &synth, vec![x, step], t * h, scalars);
        }
        x
    }

    fn buffer(&mut self, name: String, elements: u64, dtype: Dtype) -> u32 {
        if let Some(&id) = self.by_name.get(&name) {
            return id;
        }
        let offset = self.end.div_ceil(256) * 256;
        let bytes = elements * dtype.size();
        self.end = offset + bytes;
        let id = self.buffers.len() as u32;
        self.buffers.push(Buffer { name: name.clone(), offset, bytes, dtype });
        self.by_name.insert(name, id);
        id
    }

    /// A fresh event id.
    fn new_event(&mut self) -> u32 {
        self.next_event += 1;
        self.next_event - 1
    }

    fn stage(&self, dir: u32) -> (u32, u32) {
        let m = self.layout.modules[self.rank as usize][dir as usize];
        (m.pipe, m.stage)
    }

    fn global_layer(&self, stage: u32, l: u32) -> u32 {
        stage * self.model.layers_per_stage + l
    }

    fn weights(&mut self, stage: u32, l: u32) -> (u32, u32, u32, u32) {
        let (h, f, dt) = (self.model.hidden as u64, self.model.ffn as u64, self.model.dtype);
        let gl = self.global_layer(stage, l);
        (
            self.buffer(format!("w1.{gl}"), h * f, dt),
            self.buffer(format!("w2.{gl}"), f * h, dt),
            self.buffer(format!("g1.{gl}"), h * f, Dtype::F32),
            self.buffer(format!("g2.{gl}"), f * h, Dtype::F32),
        )
    }

    /// The slot of (module, mb), taken on first use.
    fn slot(&mut self, dir: u32, mb: u32) -> Slot {
        self.take_slot(dir, mb, false)
    }

    /// [`Rank::slot`], taken (on first use) for a batch's receive when `receive`.
    fn take_slot(&mut self, dir: u32, mb: u32, receive: bool) -> Slot {
        let d = dir as usize;
        if let Some(&(k, _)) = self.live[d].get(&mb) {
            return self.slots[d][k].clone();
        }
        // Early batches, for a receive: the free slot given back longest ago, and none
        // given back since the last batch (the batch would wait for the unit that gave it
        // back; one more slot lets it start as soon as what it sends is ready). Otherwise
        // the slot given back last.
        let pick = if self.early && receive {
            self.free[d].iter().position(|k| !self.recent[d].contains(k))
        } else {
            self.free[d].len().checked_sub(1)
        };
        let k = match pick.map(|i| self.free[d].remove(i)) {
            Some(k) => k,
            None => {
                let k = self.slots[d].len();
                let (t, h, f, dt) =
                    (self.model.tokens(), self.model.hidden as u64, self.model.ffn as u64, self.model.dtype);
                let layers = self.model.layers_per_stage;
                let name = |s: &str| format!("slot{dir}.{k}.{s}");
                let x = (0..=layers).map(|l| name(&format!("x{l}"))).collect::<Vec<_>>();
                let hs = (0..layers).map(|l| name(&format!("h{l}"))).collect::<Vec<_>>();
                let a = (0..layers).map(|l| name(&format!("a{l}"))).collect::<Vec<_>>();
                let dy = (0..layers).map(|l| name(&format!("dy{l}"))).collect::<Vec<_>>();
                let dh = (0..layers).map(|l| name(&format!("dh{l}"))).collect::<Vec<_>>();
                let dx0 = name("dx0");
                let slot = Slot {
                    x: x.into_iter().map(|n| self.buffer(n, t * h, dt)).collect(),
                    h: hs.into_iter().map(|n| self.buffer(n, t * f, dt)).collect(),
                    a: a.into_iter().map(|n| self.buffer(n, t * f, dt)).collect(),
                    dy: dy.into_iter().map(|n| self.buffer(n, t * h, dt)).collect(),
                    dh: dh.into_iter().map(|n| self.buffer(n, t * f, dt)).collect(),
                    dx0: self.buffer(dx0, t * h, dt),
                };
                self.slots[d].push(slot);
                k
            }
        };
        let (pipe, stage) = self.stage(dir);
        // Uses: the backward (B, or W after I), and the send of the input gradient.
        let sends_back = stage > 0 && self.layout.locate(pipe, stage - 1).is_some_and(|(r, _)| r != self.rank);
        self.live[d].insert(mb, (k, 1 + sends_back as u32));
        self.slots[d][k].clone()
    }

    fn release(&mut self, dir: u32, mb: u32) {
        let d = dir as usize;
        if let Some(entry) = self.live[d].get_mut(&mb) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                let k = entry.0;
                self.live[d].remove(&mb);
                self.free[d].push(k);
                if self.early {
                    self.recent[d].insert(k);
                }
            }
        }
    }

    /// Async p2p: makes `stream` wait for the batches that last moved any of `buffers`
    /// (a receive it reads, or a send whose buffer it would overwrite).
    fn await_buffers(&mut self, stream: u32, buffers: &[u32]) {
        let Some(e) = buffers.iter().filter_map(|b| self.pending.get(b)).copied().max() else { return };
        let w = &mut self.waited[stream as usize]; // compute streams only (0, 1)
        if e > *w {
            *w = e;
            self.nodes.push(Node::Wait { stream, event: e });
        }
    }

    /// Async p2p: makes the communication stream wait, before a batch of `ops`, for what
    /// the program did before it except the weight-gradient half of a B (or of an FB
    /// pair's B) right before it, and for the units that last read or wrote its buffers
    /// (a send's producer, the last use of the slot a receive overwrites). A B's input
    /// gradient is what it sends; its weight gradient, as long as the input gradient
    /// again, then overlaps the transfer instead of delaying it (DualPipe's families
    /// post every batch after such a pair). Never later than the program says: each wait
    /// is for an event recorded at or before the batch's place on its stream, so every
    /// dependency of the verified order stays (a receive waits for the last use of its
    /// buffer; a compute that reads it waits for the batch).
    fn await_units(&mut self, ops: &[P2p]) {
        let mut need: [Option<u32>; 2] = self.position;
        for o in ops {
            if let Some(&(stream, event)) = self.touched.get(&o.buffer) {
                let n = &mut need[stream as usize];
                *n = (*n).max(Some(event));
            }
        }
        if self.comm_waited == [None, None] && need == [None, None] {
            need[COMPUTE as usize] = self.start;
        }
        for (stream, event) in need.into_iter().enumerate() {
            if let Some(e) = event.filter(|&e| Some(e) > self.comm_waited[stream]) {
                self.nodes.push(Node::Wait { stream: COMM, event: e });
                self.comm_waited[stream] = Some(e);
            }
        }
        for r in &mut self.recent {
            r.clear();
        }
    }

    /// Async p2p: ends a unit emitted on `stream`: records an event there and notes it as
    /// the last use of every buffer the unit touched, and (`advance`: unless it is the
    /// weight gradient of a B) as where the program stands ([`Self::await_units`]).
    fn end_unit(&mut self, stream: u32, advance: bool) {
        if !self.early {
            return;
        }
        let e = self.new_event();
        self.nodes.push(Node::Record { stream, event: e });
        self.unit_events.insert(e);
        for b in std::mem::take(&mut self.unit_buffers) {
            self.touched.insert(b, (stream, e));
        }
        if advance {
            self.position[stream as usize] = Some(e);
        }
    }

    /// `c = op(a)·op(b) + beta·c`; `abc` the buffers, `mnk` the shape.
    fn gemm(&mut self, stream: u32, abc: (u32, u32, u32), mnk: (u64, u64, u64), trans: (bool, bool), beta: f32) {
        self.gemm_then(stream, abc, mnk, trans, beta, Epilogue::None);
    }

    /// [`Self::gemm`] with an epilogue applied to the product before it is written.
    fn gemm_then(
        &mut self,
        stream: u32,
        abc: (u32, u32, u32),
        mnk: (u64, u64, u64),
        trans: (bool, bool),
        beta: f32,
        epilogue: Epilogue,
    ) {
        let ((a, b, c), (m, n, k)) = (abc, mnk);
        let pre = epilogue.pre();
        let used: Vec<u32> = [a, b, c].into_iter().chain(pre).collect();
        self.await_buffers(stream, &used);
        if self.early {
            self.unit_buffers.extend(used);
        }
        self.nodes.push(Node::Gemm(Gemm {
            stream,
            a,
            b,
            c,
            m,
            n,
            k,
            trans_a: trans.0,
            trans_b: trans.1,
            alpha: 1.0,
            beta,
            epilogue,
        }));
    }

    /// The variant of element-wise kernel `name` for the model's activation dtype.
    fn act_kernel(&self, name: &str) -> String {
        pipewright_plan::node::kernel_name(name, self.model.dtype)
    }

    fn kernel(&mut self, stream: u32, name: &str, buffers: Vec<u32>, elements: u64, scalars: Vec<f32>) {
        self.await_buffers(stream, &buffers);
        if self.early {
            self.unit_buffers.extend(&buffers);
        }
        self.nodes.push(Node::Kernel(Kernel { stream, name: name.into(), buffers, elements, scalars }));
    }

    fn global_mb(&self, pipe: u32, mb: u32) -> u32 {
        pipe * self.layout.microbatches + mb
    }
}

/// Emits the plan of `set` (verified) for `model` and `training`, with blocking p2p.
pub fn emit(set: &ProgramSet, model: &Model, training: &Training, hashes: Hashes) -> Result<Plan, EmitError> {
    emit_with(set, model, training, hashes, CommMode::Blocking)
}

/// Emits the plan of `set`, verified under `comm`. With async p2p a batch is waited for
/// only by the compute that reads what it received or overwrites what it sent (per-batch
/// events), so communication overlaps compute as the async semantics say; batches are
/// posted where the program places them, and under [`CommMode::Async`] one right after a
/// B (alone, or as an FB pair's backward) once the B's input gradient is done — what it
/// sends — while the B's weight gradient runs beside the transfer
/// ([`crate::dag::posts_early`]); a receive it makes goes to a slot not given back since
/// the last batch (one more slot where needed).
pub fn emit_with(
    set: &ProgramSet,
    model: &Model,
    training: &Training,
    hashes: Hashes,
    comm: CommMode,
) -> Result<Plan, EmitError> {
    if model.kind != "mlp" {
        return Err(EmitError::Kind(model.kind.clone()));
    }
    let layout = set.resolved_layout().ok_or(EmitError::NoLayout)?;
    let microbatches_in_step = layout.pipes * layout.microbatches;
    let mut ranks = Vec::with_capacity(set.programs.len());
    for (r, program) in set.programs.iter().enumerate() {
        let modules = layout.modules[r].len();
        let mut rank = Rank {
            rank: r as u32,
            layout: &layout,
            model,
            buffers: Vec::new(),
            by_name: HashMap::new(),
            end: 0,
            nodes: Vec::new(),
            slots: vec![Vec::new(); modules],
            free: vec![Vec::new(); modules],
            live: vec![HashMap::new(); modules],
            microbatches_in_step,
            async_comm: comm.is_async(),
            early: comm == CommMode::Async,
            pending: HashMap::new(),
            waited: [0; 2],
            next_event: 4,
            last_batch: None,
            grad_events: Vec::new(),
            generated: Default::default(),
            touched: HashMap::new(),
            unit_buffers: Vec::new(),
            comm_waited: [None; 2],
            position: [None; 2],
            recent: vec![HashSet::new(); modules],
            start: None,
            unit_events: HashSet::new(),
        };
        if rank.early {
            let e = rank.new_event();
            rank.nodes.push(Node::Record { stream: COMPUTE, event: e });
            rank.start = Some(e);
            rank.unit_events.insert(e);
        }
        let matrices = 2 * model.layers_per_stage as usize;
        rank.grad_events = (0..modules as u32)
            .map(|dir| {
                epilogue::mirror_peer(&rank, dir).is_some().then(|| (0..matrices).map(|_| rank.new_event()).collect())
            })
            .collect();
        prologue(&mut rank);
        let mut spans = Vec::with_capacity(program.len() + 2);
        spans.extend(step_span("prologue", 0, rank.nodes.len() as u32));
        for (i, event) in program.iter().enumerate() {
            let fail = |what: String| EmitError::Event { rank: r as u32, event: i as u32, what };
            let first = rank.nodes.len() as u32;
            match event {
                Event::Comm { ops } => {
                    let mut p2p = Vec::with_capacity(ops.len());
                    for op in ops {
                        payload(&layout, r as u32, op.kind, op.dir, op.mb).ok_or_else(|| fail("bad p2p op".into()))?;
                        let slot = rank.take_slot(op.dir, op.mb, !op.kind.is_send());
                        let last = model.layers_per_stage as usize;
                        let buffer = match op.kind {
                            CommKind::SendF => slot.x[last],
                            CommKind::RecvF => slot.x[0],
                            CommKind::SendB => slot.dx0,
                            CommKind::RecvB => slot.dy[last - 1],
                        };
                        p2p.push(P2p { send: op.kind.is_send(), peer: op.peer, buffer });
                        if op.kind == CommKind::SendB {
                            rank.release(op.dir, op.mb);
                        }
                    }
                    if rank.early {
                        rank.await_units(&p2p);
                    } else {
                        rank.nodes.push(Node::Record { stream: COMPUTE, event: 0 });
                        rank.nodes.push(Node::Wait { stream: COMM, event: 0 });
                    }
                    if rank.async_comm {
                        let e = rank.new_event();
                        rank.last_batch = Some(e);
                        for o in &p2p {
                            rank.pending.insert(o.buffer, e);
                        }
                        rank.nodes.push(Node::Group { stream: COMM, ops: p2p });
                        rank.nodes.push(Node::Record { stream: COMM, event: e });
                    } else {
                        rank.nodes.push(Node::Group { stream: COMM, ops: p2p });
                        rank.nodes.push(Node::Record { stream: COMM, event: 1 });
                        rank.nodes.push(Node::Wait { stream: COMPUTE, event: 1 });
                    }
                }
                Event::FB { f, b } => {
                    rank.nodes.push(Node::Record { stream: COMPUTE, event: 2 });
                    rank.nodes.push(Node::Wait { stream: OVERLAP, event: 2 });
                    // The fork carries over every batch the compute stream has waited for.
                    rank.waited[1] = rank.waited[1].max(rank.waited[0]);
                    rank.unit(OVERLAP, UnitKind::F, f.dir, f.mb);
                    rank.unit(COMPUTE, UnitKind::B, b.dir, b.mb);
                    rank.nodes.push(Node::Record { stream: OVERLAP, event: 3 });
                    rank.nodes.push(Node::Wait { stream: COMPUTE, event: 3 });
                }
                other => {
                    for (kind, c) in other.units() {
                        rank.unit(COMPUTE, kind, c.dir, c.mb);
                    }
                }
            }
            spans.push(span(&rank, event, first));
        }
        // Async p2p: the compute stream joins the communication stream before the
        // epilogue (and so before the step, or a captured graph, ends).
        if let Some(last) = rank.last_batch {
            rank.nodes.push(Node::Wait { stream: COMPUTE, event: last });
            rank.waited[0] = last;
        }
        epilogue::epilogue(&mut rank, training, set, &mut spans);
        drop_unwaited_records(&mut rank.nodes, &mut spans, &rank.unit_events);
        let arena_bytes = rank.end.div_ceil(256) * 256;
        ranks.push(RankPlan {
            rank: r as u32,
            arena_bytes,
            buffers: rank.buffers,
            streams: 3,
            events: rank.next_event,
            nodes: rank.nodes,
            ops: spans,
        });
    }
    Ok(Plan {
        version: PLAN_VERSION,
        schedule: set.schedule.clone(),
        world_size: set.ranks,
        pipes: layout.pipes,
        stages: layout.stages,
        microbatches: layout.microbatches,
        hashes,
        model: model.clone(),
        training: training.clone(),
        // What the costs were measured with is the spec's, not the programs': the caller
        // sets it (`compile` from `[costs] transport`).
        transport: Default::default(),
        ranks,
    })
}

/// Early batches record an event at every unit's end, before knowing whether a batch
/// will wait for it; most hold back nothing, and each record is a node every replay
/// launches. Drops the records of `candidates` no wait uses, keeping each span on the
/// nodes it covered.
fn drop_unwaited_records(nodes: &mut Vec<Node>, spans: &mut [OpSpan], candidates: &HashSet<u32>) {
    let waited: HashSet<u32> = nodes
        .iter()
        .filter_map(|n| match n {
            Node::Wait { event, .. } => Some(*event),
            _ => None,
        })
        .collect();
    let keep: Vec<bool> = nodes
        .iter()
        .map(|n| !matches!(n, Node::Record { event, .. } if candidates.contains(event) && !waited.contains(event)))
        .collect();
    // kept_before[i]: the kept nodes among the first i, i.e. node i's new index if kept.
    let mut kept_before = Vec::with_capacity(nodes.len() + 1);
    kept_before.push(0u32);
    for &k in &keep {
        kept_before.push(kept_before[kept_before.len() - 1] + k as u32);
    }
    for span in spans.iter_mut() {
        span.first = kept_before[span.first as usize];
        span.last = kept_before[span.last as usize + 1] - 1;
    }
    let mut keep = keep.into_iter();
    nodes.retain(|_| keep.next().unwrap_or(true));
}

/// The nodes `first..end` outside the program's ops (zeroing and data before them; the
/// accumulation of mirrored gradients and the optimizer after), timed as kind STEP; none
/// when empty.
fn step_span(label: &str, first: u32, end: u32) -> Option<OpSpan> {
    (end > first).then(|| OpSpan {
        label: label.into(),
        kind: "STEP".into(),
        stages: vec![],
        stream: COMPUTE,
        first,
        last: end - 1,
        bytes: 0,
    })
}

/// The span of nodes from `first` to the last emitted, which implement `event`.
fn span(rank: &Rank, event: &Event, first: u32) -> OpSpan {
    let last = rank.nodes.len() as u32 - 1;
    let stage = |dir: u32| rank.stage(dir).1;
    let (kind, stages, stream, first, last, bytes) = match event {
        // The group itself, on the communication stream: from the first of the waits
        // before it (blocking: for the compute stream; async: for the units whose
        // buffers it moves, if any) to the Group.
        Event::Comm { .. } => {
            let nodes = &rank.nodes[first as usize..];
            let group = nodes.iter().position(|n| matches!(n, Node::Group { .. })).unwrap_or(0);
            let start =
                nodes[..group].iter().position(|n| matches!(n, Node::Wait { stream: COMM, .. })).unwrap_or(group);
            let bytes = match &nodes[group] {
                Node::Group { ops: p2p, .. } => p2p.iter().map(|o| rank.buffers[o.buffer as usize].bytes).sum(),
                _ => 0,
            };
            ("COMM", vec![], COMM, first + start as u32, first + group as u32, bytes)
        }
        Event::FB { f, b } => ("FB", vec![stage(f.dir), stage(b.dir)], COMPUTE, first, last, 0),
        Event::F { dir, .. } => ("F", vec![stage(*dir)], COMPUTE, first, last, 0),
        Event::B { dir, .. } => ("B", vec![stage(*dir)], COMPUTE, first, last, 0),
        Event::I { dir, .. } => ("I", vec![stage(*dir)], COMPUTE, first, last, 0),
        Event::W { dir, .. } => ("W", vec![stage(*dir)], COMPUTE, first, last, 0),
    };
    OpSpan { label: event.to_string(), kind: kind.into(), stages, stream, first, last, bytes }
}

/// Zeroes the gradients and the losses: the step starts clean (`optimizer.zero_grad()`).
fn prologue(rank: &mut Rank) {
    let (h, f) = (rank.model.hidden as u64, rank.model.ffn as u64);
    for dir in 0..rank.layout.modules[rank.rank as usize].len() as u32 {
        let (_, stage) = rank.stage(dir);
        for l in 0..rank.model.layers_per_stage {
            let (_, _, g1, g2) = rank.weights(stage, l);
            rank.kernel(COMPUTE, "zero", vec![g1], h * f, vec![]);
            rank.kernel(COMPUTE, "zero", vec![g2], f * h, vec![]);
        }
    }
    let modules = &rank.layout.modules[rank.rank as usize];
    let holds_last = modules.iter().any(|m| m.stage + 1 == rank.layout.stages);
    // The step counter the inputs and targets are generated from ([`Rank::data`], before
    // each one's first use), which the epilogue advances.
    if holds_last || modules.iter().any(|m| m.stage == 0) {
        rank.buffer("data.step".into(), 1, Dtype::F32);
    }
    if holds_last {
        let loss = rank.buffer("loss".into(), rank.microbatches_in_step as u64, Dtype::F32);
        rank.kernel(COMPUTE, "zero", vec![loss], rank.microbatches_in_step as u64, vec![]);
    }
}
