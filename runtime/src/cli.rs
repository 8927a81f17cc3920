//! The command line of `pipewright-runtime`: its subcommands, and the options of `run`
//! that `launch` passes on to every rank (as arguments again: [`RunArgs::to_args`]).

use clap::{Parser, Subcommand};
use pipewright_runtime::exec;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "pipewright-runtime", version, about = "Replays pipewright plans on GPUs")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load DIR/plan.json, validate it, and check it against this job (world size, GPUs,
    /// certificate hash). Exit 0 when it would run, 2 with the reason when not.
    Check { dir: PathBuf },
    /// Run this rank's part of the plan (rank and world from RANK/WORLD_SIZE/LOCAL_RANK or
    /// SLURM_*) and print the losses per step.
    Run {
        dir: PathBuf,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Measure every op of the plan with CUDA events over K eager steps on N local GPUs
    /// (and each compute op again in replays of the rank's step without p2p, what its cost
    /// comes from, and p2p batches that pairs of ranks post at once, what the p2p costs come
    /// from); write OUT/costs.toml (a [costs] table for the spec),
    /// OUT/measured-trace.json (the measured timeline), OUT/compare-trace.json (it and
    /// DIR/trace.json, the simulated one, in one trace), OUT/nodes.md and OUT/rank<r>.json.
    Profile {
        #[arg(long)]
        gpus: u32,
        dir: PathBuf,
        #[arg(long, default_value_t = 6)]
        steps: u32,
        /// Steps run untimed before those: an H200 runs its first steps under load at
        /// higher clocks than it sustains, and the costs should be the sustained ones.
        #[arg(long, default_value_t = 10)]
        warmup: u32,
        /// Then this many replays of each rank's step without its p2p, as a graph with every
        /// op timed: the compute ops' costs come from them — as the graph runs each op, with
        /// nothing to wait for — (0: from the eager steps, whose op spans also hold the
        /// waits inside the ops: an overlapped pair waiting for its second input, which the
        /// simulator adds again). Measured on 2 × H200, the optimiser's DualPipe and
        /// DualPipeV programs under those costs ran 0.4–4.4% faster than the families';
        /// under eager costs, up to 1.5% slower (README, Runtime).
        #[arg(long, default_value_t = 10)]
        alone_steps: u32,
        /// Then this many replays of the whole step (p2p included) as a graph with every op
        /// timed: OUT/graph-trace.json, the timeline as training runs it, set beside the
        /// simulated one in OUT/compare-trace.json, and where each rank's step goes.
        #[arg(long, default_value_t = 10)]
        graph_steps: u32,
        /// Leave this many SMs free of matrix products, as `run --comm-sms` (the costs
        /// are those of the runs with the same setting; default: the transport's, as `run`).
        #[arg(long)]
        comm_sms: Option<u32>,
        /// How p2p groups move their bytes, as `run --p2p` (the costs are those of runs
        /// with the same transport; default: the plan's, as `run`).
        #[arg(long, value_enum)]
        p2p: Option<pipewright_runtime::gpu::Transport>,
        /// Output directory (default: DIR/profile).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Measure this GPU's GEMM rate at one shape (C[m×n] = A[m×k]·B[k×n], f32 or bf16
    /// inputs, f32 accumulation): the rate behind the benchmarks' FLOP floor.
    GemmRate {
        #[arg(long, default_value = "bf16")]
        dtype: String,
        #[arg(long)]
        m: u64,
        #[arg(long)]
        n: u64,
        #[arg(long)]
        k: u64,
        #[arg(long, default_value_t = 50)]
        iters: u32,
        /// op(A) = Aᵀ (A stored k × m).
        #[arg(long)]
        trans_a: bool,
        /// op(B) = Bᵀ (B stored n × k).
        #[arg(long)]
        trans_b: bool,
        /// What the product goes through: none, gelu (GELU_AUX) or gelu-grad (DGELU).
        #[arg(long, default_value = "none")]
        epilogue: String,
        /// C in f32 with beta = 1 (how weight gradients accumulate).
        #[arg(long)]
        accumulate: bool,
        /// The product on the GPU's SMs less these (as `run --comm-sms`).
        #[arg(long, default_value_t = 0)]
        comm_sms: u32,
        /// Keep the epilogue fused even where the plain product and the GELU kernel race
        /// faster (as `run --always-fuse`).
        #[arg(long)]
        always_fuse: bool,
    },
    /// Write DIR/profile/costs.toml again from the per-rank profiles `profile` left there
    /// (rank<r>.json), with this version's derivation; no GPU needed.
    Costs {
        dir: PathBuf,
        /// The profile's output directory (default: DIR/profile).
        #[arg(long)]
        profile: Option<PathBuf>,
        /// The machine the profile was measured on, for the file's header.
        #[arg(long, default_value = "this machine")]
        device: String,
        /// Take `p2p_contention` from these profiles instead (their evidence pooled):
        /// PLAN_DIR, whose profile is PLAN_DIR/profile, or PLAN_DIR=PROFILE_DIR. Other plans
        /// of the same model, e.g. the optimiser's programs, whose batches run beside
        /// compute (a family's are mostly short transfers, too little to tell).
        #[arg(long = "contention-from", value_name = "PLAN_DIR[=PROFILE_DIR]")]
        contention_from: Vec<String>,
    },
    /// Start N local ranks of `run` (one per GPU, or --ranks-per-gpu per GPU) and wait for
    /// all; if one fails, stop the others.
    Launch {
        #[arg(long)]
        gpus: u32,
        dir: PathBuf,
        #[command(flatten)]
        args: RunArgs,
    },
}

/// The options of `run`, which `launch` passes on to every rank.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct RunArgs {
    #[arg(long, default_value_t = 1)]
    pub steps: u32,
    /// Also run the plan on the CPU executor and print the largest relative error of
    /// the losses and of this rank's weight gradients and weights.
    #[arg(long)]
    pub reference: bool,
    /// Issue every node every step instead of replaying a captured CUDA graph.
    #[arg(long)]
    pub eager: bool,
    /// Write checkpoints here every `checkpoint_every` steps of [training].
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from the checkpoint in --checkpoint-dir.
    #[arg(long, requires = "checkpoint_dir")]
    pub resume: bool,
    /// Write initial and final weights, inputs, targets and gradients (safetensors).
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Seconds without progress (a step, or joining the communicator) after which the
    /// rank aborts NCCL and exits with code 3, naming the p2p group it is stuck in
    /// (0: never).
    #[arg(long, default_value_t = 30.0)]
    pub watchdog: f64,
    /// Time every op (eager steps) and write this rank's profile to DIR/rank<r>.json
    /// (what `profile` runs on every rank).
    #[arg(long)]
    pub profile_out: Option<PathBuf>,
    /// With --profile-out: run this many steps untimed before the timed ones.
    #[arg(long, default_value_t = 0)]
    pub profile_warmup: u32,
    /// With --profile-out: last, replay the step without its p2p this many times as a
    /// graph with every op timed (what the compute ops' costs then come from).
    #[arg(long, default_value_t = 0)]
    pub profile_alone: u32,
    /// With --profile-out: after the run, replay the whole step this many times as a graph
    /// with every op timed (the timeline as training runs it).
    #[arg(long, default_value_t = 0)]
    pub profile_graph: u32,
    /// Replay the captured graph with cuBLASLt's memset nodes as they are, instead of
    /// turning them into kernel nodes (which launch faster; this is for comparison).
    #[arg(long)]
    pub keep_memsets: bool,
    /// Give the communication stream (p2p, DualPipe's gradient exchange) the device's
    /// greatest priority, so that its kernels take SMs ahead of the products' (measured on
    /// 2 × H200: no gain beyond noise, hence off by default).
    #[arg(long)]
    pub comm_high_priority: bool,
    /// Leave this many SMs free of matrix products (cuBLASLt's SM count target: the GPU's
    /// SMs less these), for the communication's kernels: a product holding every SM keeps
    /// a kernel launched beside it waiting until its blocks retire (0: products on every
    /// SM). Default: 0 with NCCL, 2 with `--p2p copy` (its flags are one-thread kernels).
    #[arg(long)]
    pub comm_sms: Option<u32>,
    /// Fuse every GELU epilogue cuBLASLt can fuse, instead of racing each fused product
    /// against the plain product and the GELU kernel at start-up and running the faster
    /// (for comparison).
    #[arg(long)]
    pub always_fuse: bool,
    /// How p2p groups move their bytes: `nccl` (NCCL's send/receive kernels, any hosts) or
    /// `copy` (the GPUs' copy engines through CUDA IPC, straight into the receiver's
    /// buffer: no SM busy moving bytes, 2 left free of the products for its flags by default,
    /// `--comm-sms`; every rank on one host). Default: the plan's, the transport its spec's
    /// costs were measured with (`[costs] transport`; NCCL unless it says `copy`).
    #[arg(long, value_enum)]
    pub p2p: Option<pipewright_runtime::gpu::Transport>,
    /// After the run, replay the step this many times without its p2p (each rank's compute
    /// with nothing to wait for: the bubble-free ideal step) and print the median; the
    /// training state is meaningless after it, so it comes after checkpoints and dumps.
    #[arg(long, default_value_t = 0)]
    pub compute_alone: u32,
    /// Run this many ranks on each GPU (rank r on GPU LOCAL_RANK / K): to check a plan of
    /// more ranks than the machine has GPUs (4 ranks on 2 GPUs), for correctness, not speed
    /// — the ranks of a GPU take turns on it. Needs --p2p copy (NCCL refuses two ranks on
    /// one GPU); the ranks then make no NCCL communicator and line up over TCP.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub ranks_per_gpu: u32,
}

impl RunArgs {
    /// The transport of a run of a plan planned for `planned`: `--p2p`, else the plan's.
    pub fn transport(&self, planned: pipewright_plan::Transport) -> pipewright_runtime::gpu::Transport {
        self.p2p.unwrap_or(planned)
    }

    /// The options of a run of a plan planned for `planned` (its transport, the default of
    /// `--p2p` and through it of `--comm-sms`).
    pub fn options(&self, planned: pipewright_plan::Transport) -> exec::RunOptions {
        let p2p = self.transport(planned);
        exec::RunOptions {
            steps: self.steps,
            eager: self.eager,
            checkpoint_dir: self.checkpoint_dir.clone(),
            resume: self.resume,
            dump: self.dump.clone(),
            watchdog: std::time::Duration::from_secs_f64(self.watchdog.max(0.0)),
            profile: self.profile_out.is_some(),
            profile_warmup: self.profile_warmup,
            profile_alone_steps: self.profile_alone,
            profile_graph_steps: self.profile_graph,
            keep_memsets: self.keep_memsets,
            comm_high_priority: self.comm_high_priority,
            comm_sms: self.comm_sms.unwrap_or(pipewright_runtime::gpu::default_comm_sms(p2p)),
            always_fuse: self.always_fuse,
            p2p,
            alone_steps: self.compute_alone,
            ranks_per_gpu: self.ranks_per_gpu,
        }
    }

    /// The same options as command-line arguments of `run`.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut out: Vec<std::ffi::OsString> = Vec::new();
        let values = [
            ("--steps", self.steps.to_string()),
            ("--watchdog", self.watchdog.to_string()),
            ("--profile-warmup", self.profile_warmup.to_string()),
            ("--profile-alone", self.profile_alone.to_string()),
            ("--profile-graph", self.profile_graph.to_string()),
            ("--compute-alone", self.compute_alone.to_string()),
            ("--ranks-per-gpu", self.ranks_per_gpu.to_string()),
        ];
        for (flag, value) in values {
            out.push(flag.into());
            out.push(value.into());
        }
        let flags = [
            (self.reference, "--reference"),
            (self.eager, "--eager"),
            (self.resume, "--resume"),
            (self.keep_memsets, "--keep-memsets"),
            (self.comm_high_priority, "--comm-high-priority"),
            (self.always_fuse, "--always-fuse"),
        ];
        for (on, flag) in flags {
            if on {
                out.push(flag.into());
            }
        }
        let paths =
            [(&self.checkpoint_dir, "--checkpoint-dir"), (&self.dump, "--dump"), (&self.profile_out, "--profile-out")];
        for (path, flag) in paths {
            if let Some(p) = path {
                out.push(flag.into());
                out.push(p.clone().into());
            }
        }
        // Given or not, as given: the defaults are the plan's (each rank reads it).
        if let Some(t) = self.p2p {
            out.push("--p2p".into());
            out.push(t.name().into());
        }
        if let Some(n) = self.comm_sms {
            out.push("--comm-sms".into());
            out.push(n.to_string().into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser)]
    struct Just {
        #[command(flatten)]
        args: RunArgs,
    }

    /// `launch` gives every rank the options it was given: each flag and value survives
    /// `to_args` and parsing back.
    #[test]
    fn launch_passes_every_run_option_on() {
        let given = [
            "x",
            "--steps",
            "7",
            "--reference",
            "--eager",
            "--checkpoint-dir",
            "/c",
            "--resume",
            "--dump",
            "/d",
            "--watchdog",
            "12.5",
            "--profile-out",
            "/p",
            "--profile-warmup",
            "3",
            "--profile-alone",
            "5",
            "--profile-graph",
            "6",
            "--keep-memsets",
            "--comm-high-priority",
            "--compute-alone",
            "4",
            "--comm-sms",
            "16",
            "--p2p",
            "copy",
        ];
        let parsed = Just::parse_from(given).args;
        assert!(parsed.comm_high_priority && parsed.keep_memsets && parsed.resume && parsed.compute_alone == 4);
        assert_eq!(
            (parsed.comm_sms, parsed.profile_graph, parsed.p2p),
            (Some(16), 6, Some(pipewright_runtime::gpu::Transport::Copy))
        );
        assert_eq!(parsed.options(pipewright_plan::Transport::Nccl).comm_sms, 16);
        let again = Just::parse_from(std::iter::once("x".into()).chain(parsed.to_args())).args;
        assert_eq!(again, parsed);
        let plain = Just::parse_from(["x"]).args;
        assert_eq!(Just::parse_from(std::iter::once("x".into()).chain(plain.to_args())).args, plain);
    }

    /// Without `--comm-sms` the products leave the transport's SMs free: none for NCCL,
    /// 2 for the copy engines' one-thread flag kernels; given, it is what was given.
    #[test]
    fn the_sms_left_to_communication_default_by_transport() {
        let sms = |args: &[&str]| {
            Just::parse_from(std::iter::once("x").chain(args.iter().copied()))
                .args
                .options(pipewright_plan::Transport::Nccl)
                .comm_sms
        };
        assert_eq!(sms(&[]), 0);
        assert_eq!(sms(&["--p2p", "nccl"]), 0);
        assert_eq!(sms(&["--p2p", "copy"]), 2);
        assert_eq!(sms(&["--p2p", "copy", "--comm-sms", "0"]), 0);
        assert_eq!(sms(&["--comm-sms", "8"]), 8);
    }

    /// Without `--p2p` a run takes the transport its plan was planned for (and that
    /// transport's SMs for communication); `--p2p` overrides it.
    #[test]
    fn a_run_takes_the_transport_its_plan_was_planned_for() {
        use pipewright_plan::Transport as Planned;
        use pipewright_runtime::gpu::Transport;
        let options = |args: &[&str], planned| {
            let o = Just::parse_from(std::iter::once("x").chain(args.iter().copied())).args.options(planned);
            (o.p2p, o.comm_sms)
        };
        assert_eq!(options(&[], Planned::Nccl), (Transport::Nccl, 0));
        assert_eq!(options(&[], Planned::Copy), (Transport::Copy, 2));
        assert_eq!(options(&["--p2p", "nccl"], Planned::Copy), (Transport::Nccl, 0));
        assert_eq!(options(&["--p2p", "copy"], Planned::Nccl), (Transport::Copy, 2));
    }
}
