//! A CPU executor of plans: every rank a thread, NCCL groups as channels, streams in issue
//! order. It is the reference the GPU runtime is compared with, and how the tests check
//! that what the compiler emits computes the model (against [`crate::reference`]).
//!
//! Buffers are held in f32 whatever their dtype (bf16 rounding is the GPU's business).

use crate::math::{gelu, gelu_grad, gemm};
use crate::node::{Epilogue, Gemm, Kernel, Node};
use crate::{data, Plan};
use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};

/// Every rank's buffers after the run, by name.
pub type Memory = Vec<HashMap<String, Vec<f32>>>;

/// Initialises every rank's buffers the way the runtime does: weights from
/// [`data::layer_weights`] (buffers named `w1.<layer>` / `w2.<layer>` by global layer),
/// inputs and targets from [`data::input`] / [`data::target`] (`input.<g>`, `target.<g>`),
/// zeros elsewhere.
pub fn initial_memory(plan: &Plan) -> Memory {
    plan.ranks
        .iter()
        .map(|r| {
            r.buffers
                .iter()
                .map(|b| {
                    let n = (b.bytes / b.dtype.size()) as usize;
                    let mut v = init(plan, &b.name).unwrap_or_default();
                    v.resize(n, 0.0);
                    (b.name.clone(), v)
                })
                .collect()
        })
        .collect()
}

/// The initial contents of the buffer named `name`, if it has any (weights, inputs, targets).
pub fn init(plan: &Plan, name: &str) -> Option<Vec<f32>> {
    // bf16 plans keep f32 master weights beside the bf16 copies: the same values.
    let name = name.strip_prefix("master.").unwrap_or(name);
    let (kind, index) = name.split_once('.')?;
    let index: u32 = index.parse().ok()?;
    match kind {
        "w1" => Some(data::layer_matrix(&plan.model, index, data::Matrix::W1)),
        "w2" => Some(data::layer_matrix(&plan.model, index, data::Matrix::W2)),
        // Step 0's data, which the plan's `synth_data` kernels regenerate every step.
        "input" => Some(data::input(&plan.model, 0, index)),
        "target" => Some(data::target(&plan.model, 0, index)),
        _ => None,
    }
}

/// Runs `steps` steps of `plan` on `memory`.
pub fn run(plan: &Plan, memory: &mut Memory, steps: u32) -> Result<(), String> {
    plan.validate().map_err(|e| e.to_string())?;
    let n = plan.world_size as usize;
    for _ in 0..steps {
        // channel[from][to]
        let mut senders: Vec<Vec<Option<Sender<Vec<f32>>>>> = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut receivers: Vec<Vec<Option<Receiver<Vec<f32>>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        for (from, row) in senders.iter_mut().enumerate() {
            for (to, slot) in row.iter_mut().enumerate() {
                let (s, r) = channel();
                *slot = Some(s);
                receivers[to][from] = Some(r);
            }
        }
        let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = memory
                .iter_mut()
                .zip(senders)
                .zip(receivers)
                .enumerate()
                .map(|(rank, ((mem, tx), rx))| scope.spawn(move || run_rank(plan, rank, mem, tx, rx)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a rank panicked".into()))).collect()
        });
        results.into_iter().collect::<Result<Vec<()>, String>>()?;
    }
    Ok(())
}

fn run_rank(
    plan: &Plan,
    rank: usize,
    mem: &mut HashMap<String, Vec<f32>>,
    tx: Vec<Option<Sender<Vec<f32>>>>,
    rx: Vec<Option<Receiver<Vec<f32>>>>,
) -> Result<(), String> {
    let r = &plan.ranks[rank];
    let name = |b: u32| r.buffers[b as usize].name.clone();
    for (i, node) in r.nodes.iter().enumerate() {
        let fail = |what: String| format!("rank {rank} node {i}: {what}");
        match node {
            Node::Gemm(g) => {
                let Gemm { a, b, c, m, n, k, trans_a, trans_b, alpha, beta, epilogue, .. } = g;
                let av = mem[&name(*a)].clone();
                let bv = mem[&name(*b)].clone();
                let cv = mem.get_mut(&name(*c)).ok_or_else(|| fail("missing C".into()))?;
                gemm(&av, &bv, cv, *m as usize, *n as usize, *k as usize, *trans_a, *trans_b, *alpha, *beta);
                let len = (*m * *n) as usize;
                match *epilogue {
                    Epilogue::None => {}
                    Epilogue::Gelu { pre } => {
                        let product = cv[..len].to_vec();
                        cv[..len].iter_mut().for_each(|v| *v = gelu(*v));
                        let p = mem.get_mut(&name(pre)).ok_or_else(|| fail("missing pre-activation".into()))?;
                        p[..len].copy_from_slice(&product);
                    }
                    Epilogue::GeluGrad { pre } => {
                        let p = mem[&name(pre)].clone();
                        let cv = mem.get_mut(&name(*c)).ok_or_else(|| fail("missing C".into()))?;
                        cv[..len].iter_mut().zip(&p).for_each(|(v, &x)| *v *= gelu_grad(x));
                    }
                }
            }
            Node::Kernel(k) => kernel(k, mem, &name).map_err(fail)?,
            Node::Group { ops, .. } => {
                // NCCL posts every op of a group before completing any: sends first here.
                for op in ops.iter().filter(|o| o.send) {
                    let data = mem[&name(op.buffer)].clone();
                    let ch = tx[op.peer as usize].as_ref().ok_or_else(|| fail("no channel".into()))?;
                    ch.send(data).map_err(|_| fail(format!("peer {} is gone", op.peer)))?;
                }
                for op in ops.iter().filter(|o| !o.send) {
                    let ch = rx[op.peer as usize].as_ref().ok_or_else(|| fail("no channel".into()))?;
                    let data = ch
                        .recv_timeout(std::time::Duration::from_secs(30))
                        .map_err(|_| fail(format!("receive from {} never completed", op.peer)))?;
                    let dst = mem.get_mut(&name(op.buffer)).ok_or_else(|| fail("missing buffer".into()))?;
                    let len = data.len().min(dst.len());
                    dst[..len].copy_from_slice(&data[..len]);
                }
            }
            Node::Record { .. } | Node::Wait { .. } => {}
        }
    }
    Ok(())
}

/// Runs the element-wise kernel node `k` on `buffers` (what `k.buffers` index; every buffer
/// held in f32, as this executor holds bf16 ones): the semantics the GPU kernels must have.
pub fn run_kernel(k: &Kernel, buffers: &mut [Vec<f32>]) -> Result<(), String> {
    let mut mem: HashMap<String, Vec<f32>> =
        buffers.iter().enumerate().map(|(i, b)| (i.to_string(), b.clone())).collect();
    if let Some(b) = k.buffers.iter().find(|&&b| b as usize >= buffers.len()) {
        return Err(format!("kernel {} names buffer {b} of {}", k.name, buffers.len()));
    }
    kernel(k, &mut mem, &|b| b.to_string())?;
    for (i, b) in buffers.iter_mut().enumerate() {
        if let Some(v) = mem.remove(&i.to_string()) {
            *b = v;
        }
    }
    Ok(())
}

fn kernel(k: &Kernel, mem: &mut HashMap<String, Vec<f32>>, name: &dyn Fn(u32) -> String) -> Result<(), String> {
    let n = k.elements as usize;
    let get = |mem: &HashMap<String, Vec<f32>>, i: usize| mem[&name(k.buffers[i])].clone();
    let set = |mem: &mut HashMap<String, Vec<f32>>, i: usize, v: Vec<f32>| {
        if let Some(dst) = mem.get_mut(&name(k.buffers[i])) {
            dst[..v.len()].copy_from_slice(&v);
        }
    };
    let s = |i: usize| k.scalars.get(i).copied().unwrap_or(0.0);
    // bf16 variants compute the same; this executor holds every buffer in f32.
    match k.name.trim_end_matches("_bf16") {
        "gelu_forward" => {
            let x = get(mem, 0);
            set(mem, 1, x[..n].iter().map(|&v| gelu(v)).collect());
        }
        "gelu_backward" => {
            let (x, dy) = (get(mem, 0), get(mem, 1));
            set(mem, 2, (0..n).map(|i| dy[i] * gelu_grad(x[i])).collect());
        }
        "mse_loss" => {
            // scalars: [scale, loss index]: loss[index] += scale·Σd², dy = 2·scale·d.
            let (y, t) = (get(mem, 0), get(mem, 1));
            let d: Vec<f32> = (0..n).map(|i| y[i] - t[i]).collect();
            let sum: f64 = d.iter().map(|&v| v as f64 * v as f64).sum();
            set(mem, 2, d.iter().map(|&v| 2.0 * s(0) * v).collect());
            let at = s(1) as usize;
            if let Some(loss) = mem.get_mut(&name(k.buffers[3])) {
                loss[at] += (s(0) as f64 * sum) as f32;
            }
        }
        "accumulate" => {
            let (g, mut acc) = (get(mem, 0), get(mem, 1));
            acc[..n].iter_mut().zip(&g).for_each(|(a, v)| *a += v);
            set(mem, 1, acc[..n].to_vec());
        }
        "copy" | "cast" => {
            let x = get(mem, 0);
            set(mem, 1, x[..n].to_vec());
        }
        "sgd_update" => {
            // (w, g), and in bf16 the weights' copy (w, g, copy).
            let (mut w, g) = (get(mem, 0), get(mem, 1));
            w[..n].iter_mut().zip(&g).for_each(|(w, g)| *w -= s(0) * g);
            set(mem, 0, w[..n].to_vec());
            if k.buffers.len() > 2 {
                set(mem, 2, w[..n].to_vec());
            }
        }
        "sgd_update_sum" => {
            // (w, g, r), and in bf16 the weights' copy (w, g, r, copy): g += r, then SGD.
            let (mut w, mut g, r) = (get(mem, 0), get(mem, 1), get(mem, 2));
            g[..n].iter_mut().zip(&r).for_each(|(g, r)| *g += r);
            w[..n].iter_mut().zip(&g).for_each(|(w, g)| *w -= s(0) * g);
            set(mem, 1, g[..n].to_vec());
            set(mem, 0, w[..n].to_vec());
            if k.buffers.len() > 3 {
                set(mem, 3, w[..n].to_vec());
            }
        }
        "tick" => {
            let mut t = get(mem, 0);
            t[0] += 1.0;
            set(mem, 0, t);
        }
        "adamw_update" => {
            // scalars: [lr, beta1, beta2, eps, weight decay]; buffer 4 holds the step (≥ 1).
            let (mut w, g, mut m, mut v, step) = (get(mem, 0), get(mem, 1), get(mem, 2), get(mem, 3), get(mem, 4));
            let (lr, b1, b2, eps, wd) = (s(0), s(1), s(2), s(3), s(4));
            let t = step[0].max(1.0);
            let (c1, c2) = (1.0 - b1.powf(t), 1.0 - b2.powf(t));
            for i in 0..n {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                w[i] -= lr * (wd * w[i] + (m[i] / c1) / ((v[i] / c2).sqrt() + eps));
            }
            set(mem, 0, w[..n].to_vec());
            set(mem, 2, m[..n].to_vec());
            set(mem, 3, v[..n].to_vec());
        }
        "zero" => set(mem, 0, vec![0.0; n]),
        "synth_data" => {
            // scalars: [tag, index, seed in four 16-bit pieces]; buffer 1 holds the step.
            let step = get(mem, 1)[0] as u32;
            let seed = data::seed_from_scalars(&k.scalars[2.min(k.scalars.len())..]);
            set(mem, 0, data::synth(seed, s(0) as u32, step, s(1) as u32, n as u64));
        }
        other => return Err(format!("unknown kernel {other}")),
    }
    Ok(())
}
