//! Execution of a rank's plan: every node issued in order on its stream. The first step runs
//! eagerly (NCCL connects lazily, kernels load); then, unless `eager`, the whole step —
//! forward, backward, the mirror-gradient sum, the optimizer — is captured once as one CUDA
//! graph on the compute stream (the other streams join and leave through the plan's own
//! events) and replayed every step.

use crate::error::driver;
use crate::gpu::{Communicator, Gpu, HostMark};
use crate::launch::{HostGroup, Place};
use crate::timing::{node_spans, op_spans, OpTimer};
use crate::watchdog::Watchdog;
use crate::RuntimeError;
use pipewright_plan::node::Node;
use pipewright_plan::{cpu, Plan};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run until this step (counted from the start of training, resumed or not).
    pub steps: u32,
    /// Issue every node every step instead of replaying a captured graph.
    pub eager: bool,
    /// Where checkpoints go (every `training.checkpoint_every` steps) and come from.
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Continue from the checkpoint in `checkpoint_dir`.
    pub resume: bool,
    /// Write the initial weights, inputs and targets, and the final weights and gradients,
    /// as safetensors here (for the PyTorch cross-check, `tests/torch_reference.py`).
    pub dump: Option<std::path::PathBuf>,
    /// End the rank when a step (or joining the communicator) makes no progress for this
    /// long (zero: never; NCCL errors still end it). See [`crate::watchdog`].
    pub watchdog: Duration,
    /// Time every op of the program with CUDA events (eager steps only; see
    /// [`crate::profile`]).
    pub profile: bool,
    /// With `profile`: steps run untimed first, so that the timed ones find the GPU at the
    /// clocks it sustains (an H200's first steps under load run faster than the rest).
    pub profile_warmup: u32,
    /// With `profile`: last, replay the rank's step without its p2p (as for
    /// `alone_steps`) this many times as a graph captured with its ops' timing events
    /// ([`RunReport::alone_op_times`]): each compute op's cost as the graph runs it, with
    /// nothing to wait for.
    pub profile_alone_steps: u32,
    /// With `profile`: after the run, replay the whole step (p2p included) this many times
    /// as a graph captured with its ops' timing events ([`RunReport::graph_op_times`]):
    /// the timeline as the graph runs it in training, without the eager steps' launch
    /// gaps, to set beside the simulated one.
    pub profile_graph_steps: u32,
    /// Replay the graph as captured, with cuBLASLt's memset nodes, instead of rewriting them
    /// as kernel nodes (what cuts the host launch time, see [`crate::graph`]).
    pub keep_memsets: bool,
    /// Give the communication stream the device's greatest priority (see [`Gpu::open`]).
    /// Off by default: on 2 × H200 DualPipe's and DualPipeV's steps with it were −0.8% to
    /// +1.2% of those without (12 comparisons), within run-to-run noise.
    pub comm_high_priority: bool,
    /// SMs the matrix products leave to the NCCL kernels ([`crate::gpu::Sharing`]).
    pub comm_sms: u32,
    /// Fuse every epilogue cuBLASLt can, unraced ([`crate::gpu::Sharing::always_fuse`]).
    pub always_fuse: bool,
    /// How p2p groups move their bytes: NCCL's kernels, or the copy engines (every peer on
    /// this host; see [`crate::gpu::Transport`]).
    pub p2p: crate::gpu::Transport,
    /// After the run (and its checkpoints and dumps), replay this many times the rank's
    /// step without its p2p groups, the rest of the graph as it is: the rank's compute
    /// with nothing to wait for, its bubble-free ideal step as the graph runs it. Its
    /// receive buffers hold the last real step's data (products of zeros would run faster
    /// than real ones); what it computes is meaningless, so it comes last. In a graph run
    /// of more than one rank as many replays of the whole step follow (see
    /// [`RunReport::after_alone_ms`]).
    pub alone_steps: u32,
    /// Ranks sharing each GPU: rank r runs on GPU `LOCAL_RANK / ranks_per_gpu` (0 and 1:
    /// one GPU a rank). For checking plans of more ranks than the machine has GPUs —
    /// correctness, not speed: the ranks of a GPU take turns on it. NCCL refuses two ranks
    /// on one GPU, so more than one needs the copy-engine transport, and no NCCL
    /// communicator is made (the ranks line up over TCP instead).
    pub ranks_per_gpu: u32,
}

impl RunOptions {
    /// How the products use the GPU's SMs.
    pub fn sharing(&self) -> crate::gpu::Sharing {
        crate::gpu::Sharing {
            comm_first: self.comm_high_priority,
            comm_sms: self.comm_sms,
            always_fuse: self.always_fuse,
        }
    }
}

/// Whole steps replayed after the compute alone but not timed: the ranks start them lined
/// up by a barrier, and need a step or two to fall back into the skew they keep in
/// training (measured: timed from the barrier, DualPipeV's 2-rank step took 3.8% longer
/// than back to back).
const SETTLING_STEPS: u32 = 2;

/// What a run measured.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub rank: u32,
    /// The first step run (0, or the resumed checkpoint's step).
    pub first_step: u32,
    /// Per step: the losses of the microbatches this rank's last stages computed (index
    /// over the step's microbatches; NaN where another rank holds them).
    pub losses: Vec<Vec<f32>>,
    /// Per step, milliseconds (until the losses are back on the host).
    pub step_ms: Vec<f64>,
    /// Per replayed step, microseconds the host spent launching it (empty when eager).
    pub launch_us: Vec<f64>,
    /// With `profile`: per step, each op's (start, duration) in ms from the step's start.
    pub op_times: Vec<Vec<(f64, f64)>>,
    /// With `profile` and [`RunOptions::profile_alone_steps`]: the same per timed replay of
    /// the step without its p2p (where a p2p batch's span holds nothing: only the compute
    /// ops' are used).
    pub alone_op_times: Vec<Vec<(f64, f64)>>,
    /// With `profile` and [`RunOptions::profile_graph_steps`]: the same per timed replay
    /// of the whole step.
    pub graph_op_times: Vec<Vec<(f64, f64)>>,
    /// Those replays' wall times, ms.
    pub graph_step_ms: Vec<f64>,
    /// With `profile` and at least 3 steps: each node's duration in ms in the last step,
    /// which times every node instead of every op (NaN for event records and waits).
    pub node_ms: Vec<f64>,
    /// The captured graph's nodes by type (empty when eager).
    pub graph_nodes: std::collections::BTreeMap<String, usize>,
    /// Whether the step's graph was instantiated for device launch (see [`crate::graph`]).
    pub graph_device_launch: bool,
    /// With `profile`: the untimed steps before the timed ones.
    pub warmup_steps: u32,
    /// Per replay of the step without p2p ([`RunOptions::alone_steps`]), ms.
    pub alone_ms: Vec<f64>,
    /// Per replay of the whole step right after those (graph runs of more than one rank),
    /// ms: steps measured next to the compute alone, so that the ideal and the step see
    /// the same clocks (an H200's drift by a few percent over a run).
    pub after_alone_ms: Vec<f64>,
    /// With `profile` and more than one rank: p2p batches timed with nothing to wait for,
    /// (transfers in each direction, ms) each ([`Gpu::time_exchanges`]).
    pub p2p_calibration: Vec<(u32, f64)>,
    /// The p2p transport the run used.
    pub transport: crate::gpu::Transport,
}

/// Runs `steps` steps of this rank's part of `plan` on GPU `place.local_rank`.
pub fn run(
    plan: &Plan,
    place: &Place,
    opts: &RunOptions,
    cache: &std::path::Path,
) -> Result<(RunReport, Gpu), RuntimeError> {
    let (steps, eager) = (opts.steps, opts.eager);
    plan.validate()?;
    let rp = &plan.ranks[place.rank as usize];
    let per_gpu = opts.ranks_per_gpu.max(1);
    check_sharing(per_gpu, opts.p2p)?;
    let mut gpu =
        Gpu::open((place.local_rank / per_gpu) as usize, rp.streams, rp.events, rp.arena_bytes, cache, opts.sharing())?;
    // Initial weights: the same generator as the CPU reference, once per matrix (a bf16
    // plan's f32 master holds the same values as its bf16 copy). Inputs and targets are
    // generated in place during each step, before each one's first use; only `--dump`
    // wants the first step's before it runs.
    let mut made: HashMap<&str, Vec<f32>> = HashMap::new();
    for b in &rp.buffers {
        let name = b.name.strip_prefix("master.").unwrap_or(&b.name);
        if (name.starts_with("input.") || name.starts_with("target.")) && opts.dump.is_none() {
            continue;
        }
        if !made.contains_key(name) {
            if let Some(data) = cpu::init(plan, name) {
                made.insert(name, data);
            }
        }
        if let Some(data) = made.get(name) {
            gpu.upload(b, data)?;
        }
    }
    drop(made);
    let state = |name: &str| ["w1.", "w2.", "master.", "adam.", "data."].iter().any(|p| name.starts_with(p));
    let checkpoint = opts.checkpoint_dir.as_ref().map(|d| d.join(format!("rank{}.safetensors", place.rank)));
    // The products' algorithms go with the checkpoint (crate::tuning): a resumed run uses
    // the checkpointed run's, so that it continues it bitwise.
    let tuning = opts.checkpoint_dir.as_ref().map(|d| d.join(format!("rank{}-tuning.json", place.rank)));
    if let (true, Some(path)) = (opts.resume, &tuning) {
        let adopted = match crate::tuning::load(path) {
            Ok(record) => gpu.adopt_tuning(record),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = adopted {
            eprintln!(
                "note: rank {}: the checkpoint's GEMM algorithms are not used ({why}); products are tuned anew, \
                 so the resumed steps may differ from an uninterrupted run's in the last bits",
                place.rank
            );
        }
    }
    gpu.prepare_gemms(&rp.nodes, &rp.buffers)?;
    let mut first_step = 0;
    if opts.resume {
        let path =
            checkpoint.as_ref().ok_or_else(|| RuntimeError::Environment("--resume needs --checkpoint-dir".into()))?;
        let (saved, step) = crate::checkpoint::load(path)?;
        for b in rp.buffers.iter().filter(|b| state(&b.name)) {
            let data = saved.get(&b.name).ok_or_else(|| {
                RuntimeError::Environment(format!(
                    "{} has no {}: it is not this plan's checkpoint",
                    path.display(),
                    b.name
                ))
            })?;
            gpu.upload(b, data)?;
        }
        first_step = step;
    }
    if let Some(dir) = &opts.dump {
        let keep = |n: &str| {
            n.starts_with("w1.") || n.starts_with("w2.") || n.starts_with("input.") || n.starts_with("target.")
        };
        crate::checkpoint::save(
            &dir.join(format!("rank{}-initial.safetensors", place.rank)),
            &tensors(plan, &gpu, place.rank, keep)?,
            first_step,
        )?;
    }
    let dog = Watchdog::start(place.rank, opts.watchdog);
    let fabric = if plan.world_size > 1 {
        // Not a watchdog phase: ranks arrive as their start-up (kernels, tuning) ends, and
        // the join has a timeout of its own that names the ranks missing.
        let host = HostGroup::join(place, Duration::from_secs(60))?;
        gpu.agree_on_transport(&host, place.rank, opts.p2p, per_gpu)?;
        let nccl = if per_gpu > 1 {
            None
        } else {
            let id = if place.rank == 0 {
                let id = cudarc::nccl::Id::new().map_err(|e| RuntimeError::Nccl { rank: 0, what: format!("{e:?}") })?;
                Some(id.internal().map(|c| c as u8))
            } else {
                None
            };
            let id = host.broadcast_id(id)?;
            dog.phase(format!("joining the NCCL communicator of {} ranks", plan.world_size));
            let comm = Arc::new(gpu.communicator(place.rank, plan.world_size, id)?);
            dog.done();
            dog.watch_comm(comm.clone());
            Some(comm)
        };
        if opts.p2p == crate::gpu::Transport::Copy {
            dog.phase("mapping the peers' memory for copy-engine p2p");
            gpu.connect_peers(&host, plan, place.rank)?;
            dog.done();
        }
        let mark = Arc::new(HostMark::new(&gpu.ctx)?);
        dog.watch_progress(mark.clone(), describe_groups(plan, place.rank));
        Some(Fabric { host, nccl, mark })
    } else {
        None
    };
    let comm = fabric.as_ref();
    let loss = rp.buffers.iter().find(|b| b.name == "loss").cloned();
    let mut report = RunReport {
        rank: place.rank,
        first_step,
        losses: Vec::new(),
        step_ms: Vec::new(),
        launch_us: Vec::new(),
        op_times: Vec::new(),
        alone_op_times: Vec::new(),
        graph_op_times: Vec::new(),
        graph_step_ms: Vec::new(),
        node_ms: Vec::new(),
        graph_nodes: Default::default(),
        graph_device_launch: false,
        alone_ms: Vec::new(),
        after_alone_ms: Vec::new(),
        p2p_calibration: Vec::new(),
        warmup_steps: if opts.profile { opts.profile_warmup.min(steps.saturating_sub(first_step + 1)) } else { 0 },
        transport: opts.p2p,
    };
    let mut graph: Option<crate::graph::Replay> = None;
    for step in first_step..steps {
        let began = Instant::now();
        dog.phase(format!("step {step}{}", if eager || step == first_step { " (eager)" } else { " (graph replay)" }));
        let profiled = opts.profile && step >= first_step + report.warmup_steps;
        if profiled && step + 1 == steps && steps - first_step - report.warmup_steps >= 3 {
            // The last profiled step times every node (for `nodes.md`), one compute stream
            // at a time; the others every op, as the plan runs them.
            let mut timer = OpTimer::new(&gpu, node_spans(&rp.nodes), true, false)?;
            issue(&mut gpu, plan, place.rank, comm, Some(&mut timer))?;
            report.node_ms = timer.times()?.into_iter().map(|(_, ms)| ms).collect();
        } else if profiled {
            let mut timer = OpTimer::new(&gpu, op_spans(rp), false, false)?;
            issue(&mut gpu, plan, place.rank, comm, Some(&mut timer))?;
            report.op_times.push(timer.times()?);
        } else if eager || step == first_step {
            issue(&mut gpu, plan, place.rank, comm, None)?;
        } else {
            if graph.is_none() {
                let (g, _) = capture(&mut gpu, plan, place.rank, comm, opts.keep_memsets, None)?;
                report.graph_nodes = crate::graph::graph_census(g.graph())?;
                report.graph_device_launch = g.device_launch();
                graph = Some(g);
            }
            if let Some(g) = &graph {
                let launch = Instant::now();
                g.launch()?;
                report.launch_us.push(launch.elapsed().as_secs_f64() * 1e6);
            }
        }
        let losses = match &loss {
            Some(b) => gpu.download(b, usize::MAX)?,
            None => {
                gpu.synchronize()?;
                Vec::new()
            }
        };
        dog.done();
        report.step_ms.push(began.elapsed().as_secs_f64() * 1e3);
        let total = plan.pipes * plan.microbatches;
        report.losses.push(losses.iter().map(|&v| if v == 0.0 { f32::NAN } else { v * total as f32 }).collect());
        let every = plan.training.checkpoint_every;
        if let Some(path) = &checkpoint {
            if every > 0 && (step + 1) % every == 0 {
                // The algorithms first: a checkpoint whose tensors exist is complete.
                if let Some(tuning) = &tuning {
                    crate::tuning::save(tuning, &gpu.tuning())?;
                }
                crate::checkpoint::save(path, &tensors(plan, &gpu, place.rank, state)?, step + 1)?;
            }
        }
    }
    if let Some(dir) = &opts.dump {
        let keep =
            |n: &str| n.starts_with("w1.") || n.starts_with("w2.") || n.starts_with("g1.") || n.starts_with("g2.");
        crate::checkpoint::save(
            &dir.join(format!("rank{}-final.safetensors", place.rank)),
            &tensors(plan, &gpu, place.rank, keep)?,
            steps,
        )?;
    }
    if let (true, Some(c)) = (opts.profile, comm.and_then(|f| f.nccl.as_deref())) {
        // What a batch costs with nothing to wait for (see crate::profile): every rank
        // takes part, in pairs of neighbours, by its transport.
        if let Some((bytes, most)) = crate::profile::calibration_shape(plan) {
            dog.phase("timing p2p batches posted at once (profile)");
            let peer = crate::profile::calibration_peer(place.rank, plan.world_size);
            report.p2p_calibration =
                gpu.time_exchanges(c, plan, place.rank, peer, bytes, most, crate::profile::CALIBRATION_REPS)?;
            dog.done();
        }
    }
    if opts.profile && opts.profile_graph_steps > 0 {
        // The whole step with every op timed, from ranks lined up by a barrier, the first
        // replays untimed while they fall back into their usual skew.
        let (g, timer) = capture_timed(&mut gpu, plan, place.rank, comm, opts.keep_memsets)?;
        if let Some(f) = &fabric {
            f.barrier(&gpu, place.rank)?;
        }
        let what = "of the whole step, every op timed (profile)";
        replay_each(&gpu, &g, opts.profile_graph_steps + SETTLING_STEPS, &dog, what, |i, ms| {
            if i >= SETTLING_STEPS {
                report.graph_step_ms.push(ms);
                report.graph_op_times.push(timer.times()?);
            }
            Ok(())
        })?;
        dog.done();
    }
    if opts.alone_steps > 0 {
        // Last, as it leaves the training state meaningless: see RunOptions::alone_steps.
        let (alone, _) = capture(&mut gpu, plan, place.rank, None, opts.keep_memsets, None)?;
        let what = "of the step without its p2p (compute alone)";
        report.alone_ms = timed_replays(&gpu, &alone, opts.alone_steps, &dog, what)?;
        // Then as many whole steps, back to back as in training, from ranks lined up by a
        // barrier (the first few left out while they fall back into their usual skew).
        if let (Some(g), Some(f)) = (&graph, &fabric) {
            f.barrier(&gpu, place.rank)?;
            let what = "of the whole step after the compute alone";
            let mut after = timed_replays(&gpu, g, opts.alone_steps + SETTLING_STEPS, &dog, what)?;
            report.after_alone_ms = after.split_off(SETTLING_STEPS as usize);
        }
        dog.done();
    }
    if opts.profile && opts.profile_alone_steps > 0 {
        // Each compute op as the graph runs it with nothing to wait for: timed in an eager
        // step, or in the whole graph, an op's span also holds the waits inside it (the
        // second half of an overlapped pair waiting for its input), which the simulator
        // adds again. Last: the training state is meaningless after it.
        let (g, timer) = capture_timed(&mut gpu, plan, place.rank, None, opts.keep_memsets)?;
        let what = "of the step without its p2p, every op timed (profile)";
        replay_each(&gpu, &g, opts.profile_alone_steps, &dog, what, |_, _| {
            report.alone_op_times.push(timer.times()?);
            Ok(())
        })?;
        dog.done();
    }
    Ok((report, gpu))
}

/// Refuses ranks sharing GPUs (`ranks_per_gpu` above 1) with any transport but the copy
/// engines: NCCL refuses two ranks on one GPU.
pub fn check_sharing(ranks_per_gpu: u32, p2p: crate::gpu::Transport) -> Result<(), RuntimeError> {
    if ranks_per_gpu > 1 && p2p != crate::gpu::Transport::Copy {
        return Err(RuntimeError::Environment(format!(
            "--ranks-per-gpu {ranks_per_gpu} needs --p2p copy: NCCL refuses two ranks on one GPU"
        )));
    }
    Ok(())
}

/// How the ranks of a job of more than one reach each other.
struct Fabric {
    /// Always: the ranks joined over TCP (NCCL's id, the copy engines' handles, checks).
    host: HostGroup,
    /// Unless ranks share GPUs ([`RunOptions::ranks_per_gpu`]).
    nccl: Option<Arc<Communicator>>,
    /// The watchdog's progress mark, written by the communication stream.
    mark: Arc<HostMark>,
}

impl Fabric {
    /// Returns once every rank has called it, with this rank's GPU idle: through NCCL (an
    /// all-reduce on the communication stream, which lines the ranks up on their GPUs), or
    /// over TCP without it.
    fn barrier(&self, gpu: &Gpu, rank: u32) -> Result<(), RuntimeError> {
        match &self.nccl {
            Some(c) => gpu.barrier(c, rank),
            None => {
                gpu.synchronize()?;
                self.host.barrier()
            }
        }
    }
}

/// Replays `g` `count` times, each waited for (the watchdog told which replay `what` it
/// is in), and returns each replay's wall time, ms.
fn timed_replays(
    gpu: &Gpu,
    g: &crate::graph::Replay,
    count: u32,
    dog: &Watchdog,
    what: &str,
) -> Result<Vec<f64>, RuntimeError> {
    let mut times = Vec::with_capacity(count as usize);
    replay_each(gpu, g, count, dog, what, |_, ms| {
        times.push(ms);
        Ok(())
    })?;
    Ok(times)
}

/// Replays `g` `count` times as [`timed_replays`] does, calling `each` with the replay's
/// index and wall time (ms) after each one (while its timing events are readable).
fn replay_each(
    gpu: &Gpu,
    g: &crate::graph::Replay,
    count: u32,
    dog: &Watchdog,
    what: &str,
    mut each: impl FnMut(u32, f64) -> Result<(), RuntimeError>,
) -> Result<(), RuntimeError> {
    for i in 0..count {
        dog.phase(format!("replay {i} {what}"));
        let began = Instant::now();
        g.launch()?;
        gpu.synchronize()?;
        each(i, began.elapsed().as_secs_f64() * 1e3)?;
    }
    Ok(())
}

/// Captures this rank's whole step as a graph (without p2p when `fabric` is none: see
/// [`issue`]), with its memset nodes rewritten as kernels unless `keep_memsets`, and
/// uploads it, so that replays only launch. With `timed` spans, their timing events are
/// captured with it (see [`OpTimer`]), and the timer comes back to read them after each
/// replay.
fn capture(
    gpu: &mut Gpu,
    plan: &Plan,
    rank: u32,
    fabric: Option<&Fabric>,
    keep_memsets: bool,
    timed: Option<Vec<(usize, usize, usize)>>,
) -> Result<(crate::graph::Replay, Option<OpTimer>), RuntimeError> {
    let mode = cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL;
    gpu.streams[0].begin_capture(mode).map_err(driver)?;
    let issued = (|| {
        let mut timer = timed.map(|spans| OpTimer::new(gpu, spans, false, true)).transpose()?;
        issue(gpu, plan, rank, fabric, timer.as_mut())?;
        Ok::<_, RuntimeError>(timer)
    })();
    // Ended whatever happened, so that the streams leave capture mode.
    let flags = crate::graph::instantiate_flags(gpu.sharing.comm_first);
    let captured = crate::graph::end_capture(&gpu.streams[0]);
    let timer = issued?;
    let g = captured?.ok_or_else(|| RuntimeError::Driver("the capture is empty".into()))?;
    let g = if keep_memsets {
        crate::graph::Replay::captured(g, gpu.streams[0].cu_stream(), flags)?
    } else {
        let fill = gpu.function(crate::gpu::FILL_KERNEL)?.cu_function();
        crate::graph::Replay::without_memsets(g, fill, gpu.streams[0].cu_stream(), flags)?.0
    };
    g.upload()?;
    Ok((g, timer))
}

/// [`capture`] with every op of the rank's program timed.
fn capture_timed(
    gpu: &mut Gpu,
    plan: &Plan,
    rank: u32,
    fabric: Option<&Fabric>,
    keep_memsets: bool,
) -> Result<(crate::graph::Replay, OpTimer), RuntimeError> {
    let spans = op_spans(&plan.ranks[rank as usize]);
    let (g, timer) = capture(gpu, plan, rank, fabric, keep_memsets, Some(spans))?;
    Ok((g, timer.ok_or_else(|| RuntimeError::Driver("the timed capture returned no timer".into()))?))
}

/// Issues every node of this rank's step, in order, on its stream.
/// With more than one rank, `fabric` gives the NCCL communicator (none when ranks share
/// GPUs: the copy engines move every group then) and the watchdog's progress mark:
/// zeroed when the step starts, then after each p2p group node i set to i + 1; without it,
/// p2p groups are left out (a one-rank plan has none; a rank's compute alone, see
/// [`RunOptions::alone_steps`], runs without them).
/// With `timer`, every op of the program is timed.
fn issue(
    gpu: &mut Gpu,
    plan: &Plan,
    rank: u32,
    fabric: Option<&Fabric>,
    mut timer: Option<&mut OpTimer>,
) -> Result<(), RuntimeError> {
    let rp = &plan.ranks[rank as usize];
    let off = |b: u32| rp.buffers[b as usize].offset;
    // The reset goes on the compute stream: the step (and a graph capture) starts there,
    // and the communication stream only joins through the plan's events, which follow.
    if let Some(f) = fabric {
        gpu.mark(0, &f.mark, 0)?;
    }
    for (i, node) in rp.nodes.iter().enumerate() {
        if let Some(t) = timer.as_deref_mut() {
            t.before(gpu, i)?;
        }
        match node {
            Node::Gemm(g) => gpu.gemm(g, &rp.buffers)?,
            Node::Kernel(k) => {
                let offsets: Vec<u64> = k.buffers.iter().map(|&b| off(b)).collect();
                gpu.kernel(k.stream as usize, &k.name, &offsets, k.elements, &k.scalars)?
            }
            Node::Group { ops, .. } => {
                if let Some(f) = fabric {
                    let ops: Vec<(bool, u32, u64, usize)> = ops
                        .iter()
                        .map(|o| {
                            let b = &rp.buffers[o.buffer as usize];
                            (o.send, o.peer, b.offset, b.bytes as usize)
                        })
                        .collect();
                    gpu.group(f.nccl.as_deref(), rank, i, &ops)?;
                    gpu.mark(2, &f.mark, i as u32 + 1)?
                }
            }
            Node::Record { stream, event } => gpu.record(*stream as usize, *event as usize)?,
            Node::Wait { stream, event } => gpu.wait(*stream as usize, *event as usize)?,
        }
        if let Some(t) = timer.as_deref_mut() {
            t.after(gpu, i)?;
        }
    }
    Ok(())
}

/// For the watchdog's messages: each p2p group node described by its ops (`None` for other
/// nodes).
fn describe_groups(plan: &Plan, rank: u32) -> Vec<Option<String>> {
    let rp = &plan.ranks[rank as usize];
    rp.nodes
        .iter()
        .map(|n| match n {
            Node::Group { ops, .. } => Some(format!(
                "p2p group [{}]",
                ops.iter()
                    .map(|o| {
                        let b = &rp.buffers[o.buffer as usize];
                        let dir = if o.send { "send to" } else { "recv from" };
                        format!("{dir} rank {} {} ({} bytes)", o.peer, b.name, b.bytes)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => None,
        })
        .collect()
}

/// The rank's buffers whose names `keep` accepts, read back, with their shapes.
fn tensors(
    plan: &Plan,
    gpu: &Gpu,
    rank: u32,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<crate::checkpoint::Tensor>, RuntimeError> {
    let (h, f, t) = (plan.model.hidden as usize, plan.model.ffn as usize, plan.model.tokens() as usize);
    let mut out = Vec::new();
    for b in plan.ranks[rank as usize].buffers.iter().filter(|b| keep(&b.name)) {
        let n = (b.bytes / b.dtype.size()) as usize;
        let shape = match b.name.trim_start_matches("master.").split('.').next().unwrap_or("") {
            "w1" | "g1" => vec![h, f],
            "w2" | "g2" => vec![f, h],
            "input" | "target" => vec![t, h],
            _ if b.name.starts_with("adam.m1") || b.name.starts_with("adam.v1") => vec![h, f],
            _ if b.name.starts_with("adam.m2") || b.name.starts_with("adam.v2") => vec![f, h],
            _ => vec![n],
        };
        out.push((b.name.clone(), shape, gpu.download(b, n)?));
    }
    Ok(out)
}
