//! Expert-parallel load balancing (EPLB): how many replicas each logical expert of a
//! mixture-of-experts layer gets, and which GPU holds each replica, so that the most loaded
//! GPU carries as little as possible.
//!
//! Model (facts.md): an expert with load w and r replicas sends w/r to each replica; a GPU's
//! load is the sum over its replicas; imbalance = max GPU load / mean GPU load. Physical
//! slots g·k … g·k+k−1 (k = replicas / GPUs) live on GPU g.
//!
//! Policies:
//! - [`Policy::DeepSeek`]: DeepSeek's `rebalance_experts`, reproduced in float32 with its
//!   tie-breaking ([`deepseek`]).
//! - [`Policy::Balanced`] (default): replica counts chosen with the packing, no two copies of
//!   one expert on one GPU where avoidable, swap refinement, exact search on small layers;
//!   never worse than DeepSeek on any layer (both are computed, the better is kept)
//!   ([`balanced`]). Hierarchical constraints hold when groups % nodes == 0.
//! - [`Policy::BalancedGlobal`]: the same, ignoring groups and nodes.
//!
//! [`migrate`] rebalances from a previous layout while moving as few slots as possible.

pub mod balanced;
pub mod deepseek;
pub mod io;
pub mod migrate;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The shape of an EPLB problem.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Params {
    /// Physical expert slots (replicas) per layer.
    pub replicas: usize,
    /// Expert groups (a group's experts stay on one node in hierarchical placement).
    pub groups: usize,
    /// Server nodes.
    pub nodes: usize,
    /// GPUs.
    pub gpus: usize,
}

/// The placement policy.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// DeepSeek's reference algorithm.
    #[serde(rename = "deepseek")]
    DeepSeek,
    /// Better-balanced, keeping hierarchical constraints when they apply.
    #[default]
    Balanced,
    /// Better-balanced, ignoring groups and nodes.
    BalancedGlobal,
}

impl Policy {
    /// Parses a policy name as the CLI and specs write it.
    pub fn from_name(s: &str) -> Option<Policy> {
        match s {
            "deepseek" => Some(Policy::DeepSeek),
            "balanced" => Some(Policy::Balanced),
            "balanced-global" => Some(Policy::BalancedGlobal),
            _ => None,
        }
    }
}

/// A malformed EPLB input.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum EplbError {
    #[error("the load matrix is empty")]
    Empty,
    #[error("row {row} has {got} experts but row 0 has {want}: every layer needs the same number of experts")]
    Ragged { row: usize, got: usize, want: usize },
    #[error("load of layer {layer}, expert {expert} is {value}: loads must be finite and ≥ 0")]
    BadLoad { layer: usize, expert: usize, value: f64 },
    #[error("{0}")]
    Shape(String),
}

/// Per-layer loads: `[layers][experts]`.
#[derive(Clone, PartialEq, Debug)]
pub struct Loads {
    pub rows: Vec<Vec<f64>>,
}

impl Loads {
    /// Checks the matrix: non-empty, rectangular, finite and non-negative.
    pub fn new(rows: Vec<Vec<f64>>) -> Result<Loads, EplbError> {
        let want = rows.first().map(|r| r.len()).filter(|&n| n > 0).ok_or(EplbError::Empty)?;
        for (l, row) in rows.iter().enumerate() {
            if row.len() != want {
                return Err(EplbError::Ragged { row: l, got: row.len(), want });
            }
            if let Some((e, &v)) = row.iter().enumerate().find(|(_, v)| !v.is_finite() || **v < 0.0) {
                return Err(EplbError::BadLoad { layer: l, expert: e, value: v });
            }
        }
        Ok(Loads { rows })
    }
    /// Number of logical experts.
    pub fn experts(&self) -> usize {
        self.rows[0].len()
    }
}

impl Params {
    /// Checks the shape against `experts` logical experts.
    pub fn check(&self, experts: usize) -> Result<(), EplbError> {
        let p = self;
        let fail = |m: String| Err(EplbError::Shape(m));
        if p.gpus == 0 || p.nodes == 0 || p.groups == 0 {
            return fail("gpus, nodes and groups must be ≥ 1".into());
        }
        if p.replicas < experts {
            return fail(format!("replicas ({}) must be ≥ the number of experts ({experts})", p.replicas));
        }
        if p.replicas % p.gpus != 0 {
            return fail(format!("replicas ({}) must be a multiple of gpus ({})", p.replicas, p.gpus));
        }
        if p.gpus % p.nodes != 0 {
            return fail(format!("gpus ({}) must be a multiple of nodes ({})", p.gpus, p.nodes));
        }
        if experts % p.groups != 0 {
            return fail(format!("experts ({experts}) must be a multiple of groups ({})", p.groups));
        }
        if self.hierarchical() && (p.replicas / p.nodes) < experts / p.nodes {
            return fail("each node needs at least one slot per expert it holds".into());
        }
        if self.hierarchical() && p.replicas % p.nodes != 0 {
            return fail(format!("replicas ({}) must be a multiple of nodes ({})", p.replicas, p.nodes));
        }
        Ok(())
    }

    /// Whether the reference uses its hierarchical policy (groups % nodes == 0).
    pub fn hierarchical(&self) -> bool {
        self.groups % self.nodes == 0
    }

    /// Slots per GPU.
    pub fn per_gpu(&self) -> usize {
        self.replicas / self.gpus
    }
}

/// One layer's `log2phy`: `width` slots per expert, flat (one allocation per layer).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(from = "Vec<Vec<i64>>", into = "Vec<Vec<i64>>")]
pub struct SlotTable {
    pub width: usize,
    pub data: Vec<i64>,
}

impl SlotTable {
    /// The slots of expert `e` (−1 padded).
    pub fn expert(&self, e: usize) -> &[i64] {
        &self.data[e * self.width..(e + 1) * self.width]
    }
}

impl From<Vec<Vec<i64>>> for SlotTable {
    fn from(rows: Vec<Vec<i64>>) -> Self {
        let width = rows.first().map_or(0, Vec::len);
        SlotTable { width, data: rows.into_iter().flatten().collect() }
    }
}

impl From<SlotTable> for Vec<Vec<i64>> {
    fn from(t: SlotTable) -> Self {
        t.data.chunks(t.width.max(1)).map(<[i64]>::to_vec).collect()
    }
}

/// A placement of every layer, with its metrics. Serialised with `log2phy` (derived from
/// `phy2log` on the way out, see [`Placement::log2phy`]).
#[derive(Clone, PartialEq, Debug)]
pub struct Placement {
    /// `phy2log[layer][slot]`: the logical expert in each physical slot.
    pub phy2log: Vec<Vec<u32>>,
    /// `logcnt[layer][expert]`: replicas of each expert.
    pub logcnt: Vec<Vec<u32>>,
    /// `gpu_load[layer][gpu]`.
    pub gpu_load: Vec<Vec<f64>>,
    /// `imbalance[layer]`: max GPU load / mean GPU load.
    pub imbalance: Vec<f64>,
    /// `lower_bound[layer]`: no placement's max GPU load is below this.
    pub lower_bound: Vec<f64>,
    /// `gap[layer]`: max GPU load / lower bound − 1.
    pub gap: Vec<f64>,
    /// Slots whose expert changed against `--previous` (after free GPU relabelling).
    pub moved_slots: Option<usize>,
}

impl Serialize for Placement {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Placement", 9)?;
        st.serialize_field("phy2log", &self.phy2log)?;
        st.serialize_field("log2phy", &self.log2phy())?;
        st.serialize_field("logcnt", &self.logcnt)?;
        st.serialize_field("gpu_load", &self.gpu_load)?;
        st.serialize_field("imbalance", &self.imbalance)?;
        st.serialize_field("lower_bound", &self.lower_bound)?;
        st.serialize_field("gap", &self.gap)?;
        st.serialize_field("moved_slots", &self.moved_slots)?;
        st.end()
    }
}

impl Placement {
    /// `log2phy[layer]`: for each expert its slots, −1 padded to the largest replica count
    /// of any layer (DeepSeek's `logical_to_physical_map`).
    pub fn log2phy(&self) -> Vec<SlotTable> {
        let width = self.logcnt.iter().flatten().copied().max().unwrap_or(1) as usize;
        self.phy2log
            .iter()
            .zip(&self.logcnt)
            .map(|(row, counts)| {
                let e = counts.len();
                let mut table = SlotTable { width, data: vec![-1i64; width * e] };
                let mut fill = vec![0usize; e];
                for (slot, &x) in row.iter().enumerate() {
                    table.data[x as usize * width + fill[x as usize]] = slot as i64;
                    fill[x as usize] += 1;
                }
                table
            })
            .collect()
    }

    /// Derives every metric from `phy2log`.
    pub fn from_phy2log(loads: &Loads, p: &Params, phy2log: Vec<Vec<u32>>) -> Placement {
        use rayon::prelude::*;
        let e = loads.experts();
        let logcnt: Vec<Vec<u32>> = phy2log
            .par_iter()
            .map(|row| {
                let mut c = vec![0u32; e];
                for &x in row {
                    c[x as usize] += 1;
                }
                c
            })
            .collect();
        let per_layer: Vec<(Vec<f64>, f64, f64)> = phy2log
            .par_iter()
            .zip(&loads.rows)
            .zip(&logcnt)
            .map(|((row, w), c)| {
                let g = gpu_loads(row, w, c, p.per_gpu());
                let lb = lower_bound(w, p.replicas, p.gpus);
                let gap = if lb > 0.0 { max(&g) / lb - 1.0 } else { 0.0 };
                (g, lb, gap)
            })
            .collect();
        let mut placement = Placement {
            phy2log,
            logcnt,
            gpu_load: Vec::with_capacity(per_layer.len()),
            imbalance: Vec::with_capacity(per_layer.len()),
            lower_bound: Vec::with_capacity(per_layer.len()),
            gap: Vec::with_capacity(per_layer.len()),
            moved_slots: None,
        };
        for (g, lb, gap) in per_layer {
            placement.imbalance.push(imbalance(&g));
            placement.gpu_load.push(g);
            placement.lower_bound.push(lb);
            placement.gap.push(gap);
        }
        placement
    }
}

/// Per-GPU loads of one layer.
pub fn gpu_loads(phy2log: &[u32], w: &[f64], logcnt: &[u32], per_gpu: usize) -> Vec<f64> {
    phy2log
        .chunks(per_gpu)
        .map(|slots| slots.iter().map(|&x| w[x as usize] / logcnt[x as usize] as f64).sum())
        .collect()
}

/// Largest element (0 for none).
pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// Max over mean (1 when everything is zero).
pub fn imbalance(loads: &[f64]) -> f64 {
    let mean = loads.iter().sum::<f64>() / loads.len().max(1) as f64;
    if mean > 0.0 {
        max(loads) / mean
    } else {
        1.0
    }
}

/// A lower bound on the best achievable maximum GPU load of one layer.
///
/// Two facts bound it. The mean GPU load is one. A GPU holding a replica of expert e carries
/// at least w_e / r_e, so no placement beats the smallest possible largest replica,
/// min over counts (Σ r_e = replicas, r_e ≥ 1) of max_e w_e / r_e. Water-filling (each
/// extra replica to the largest per-replica load) attains that minimum exactly.
pub fn lower_bound(w: &[f64], replicas: usize, gpus: usize) -> f64 {
    let mean = w.iter().sum::<f64>() / gpus as f64;
    mean.max(water_fill(w, replicas).1)
}

/// Water-filling replica counts in f64, and the largest per-replica load they leave.
pub fn water_fill(w: &[f64], slots: usize) -> (Vec<u32>, f64) {
    use std::collections::BinaryHeap;
    #[derive(PartialEq)]
    struct Key(f64, usize);
    impl Eq for Key {}
    impl PartialOrd for Key {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Key {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            self.0.total_cmp(&o.0).then(o.1.cmp(&self.1))
        }
    }
    let mut count = vec![1u32; w.len()];
    let mut heap: BinaryHeap<Key> = w.iter().enumerate().map(|(e, &x)| Key(x, e)).collect();
    for _ in w.len()..slots {
        let Some(Key(_, e)) = heap.pop() else { break };
        count[e] += 1;
        heap.push(Key(w[e] / count[e] as f64, e));
    }
    let largest = heap.peek().map_or(0.0, |k| k.0);
    (count, largest)
}

/// Places every layer with `policy`.
pub fn rebalance(loads: &Loads, p: &Params, policy: Policy) -> Result<Placement, EplbError> {
    p.check(loads.experts())?;
    use rayon::prelude::*;
    // Layers are independent: one per task.
    let phy2log: Vec<Vec<u32>> = match policy {
        Policy::DeepSeek => loads.rows.par_iter().map(|w| deepseek::layer(w, p)).collect(),
        Policy::Balanced | Policy::BalancedGlobal => {
            let respect_groups = policy == Policy::Balanced && p.hierarchical();
            loads.rows.par_iter().map(|w| balanced::layer(w, p, respect_groups)).collect()
        }
    };
    Ok(Placement::from_phy2log(loads, p, phy2log))
}
