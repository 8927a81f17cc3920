//! `eplb`: expert placement from a spec's `[moe]` section or a load file.

use super::{bad_input, Failure};
use crate::compile::write_all;
use anyhow::Context as _;
use pipewright_compiler::spec;
use std::fs;
use std::path::{Path, PathBuf};

/// Arguments of `pipewright eplb`.
#[derive(clap::Args, Debug)]
pub(crate) struct EplbArgs {
    /// Load statistics: JSON with a "weight" matrix (layers × experts; an EPLB fixture's
    /// "params" supply the shape), CSV (one layer per line) or NumPy .npy (2-D).
    #[arg(long)]
    input: PathBuf,
    /// Physical expert slots per layer (default: the input's params).
    #[arg(long)]
    replicas: Option<usize>,
    /// Expert groups (a group's experts stay on one node when groups % nodes == 0).
    #[arg(long)]
    groups: Option<usize>,
    /// Server nodes.
    #[arg(long)]
    nodes: Option<usize>,
    /// GPUs (replicas must be a multiple).
    #[arg(long)]
    gpus: Option<usize>,
    /// deepseek | balanced | balanced-global.
    #[arg(long, default_value = "balanced")]
    policy: String,
    /// Current layout (JSON with "phy2log", e.g. an earlier output): rebalance moving as few
    /// slots as possible.
    #[arg(long)]
    previous: Option<PathBuf>,
    /// With --previous: accept a max GPU load up to (1 + tolerance) × a fresh placement's.
    #[arg(long, default_value_t = 0.01)]
    tolerance: f64,
    /// With --previous: keep the current layout when within (1 + threshold) × fresh.
    #[arg(long, default_value_t = 0.01)]
    threshold: f64,
    /// Write the placement JSON here instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub(crate) fn run_eplb(a: &EplbArgs) -> Result<(), Failure> {
    use pipewright_compiler::eplb::{self, io, migrate, Loads, Params, Policy};
    let input = io::read(&a.input).map_err(bad_input)?;
    let from_file = input.params;
    let pick = |flag: Option<usize>, file: Option<usize>, name: &str| {
        flag.or(file).ok_or_else(|| bad_input(format!("--{name} is needed: {} names no {name}", a.input.display())))
    };
    let params = Params {
        replicas: pick(a.replicas, from_file.map(|p| p.replicas), "replicas")?,
        groups: pick(a.groups, from_file.map(|p| p.groups), "groups")?,
        nodes: pick(a.nodes, from_file.map(|p| p.nodes), "nodes")?,
        gpus: pick(a.gpus, from_file.map(|p| p.gpus), "gpus")?,
    };
    let policy = Policy::from_name(&a.policy).ok_or_else(|| {
        bad_input(format!("unknown policy \"{}\": use deepseek, balanced or balanced-global", a.policy))
    })?;
    let loads = Loads::new(input.rows).map_err(|e| bad_input(format!("{}: {e}", a.input.display())))?;
    let placement = match &a.previous {
        None => eplb::rebalance(&loads, &params, policy),
        Some(prev) => {
            let text = fs::read_to_string(prev).with_context(|| format!("cannot read {}", prev.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad_input(format!("{}: {e}", prev.display())))?;
            let table = v.get("phy2log").or_else(|| v.get("reference").and_then(|r| r.get("phy2log")));
            let phy2log: Vec<Vec<u32>> = table
                .and_then(|t| serde_json::from_value(t.clone()).ok())
                .ok_or_else(|| bad_input(format!("{}: no \"phy2log\" layout", prev.display())))?;
            let opts = migrate::Migration { tolerance: a.tolerance, threshold: a.threshold };
            migrate::rebalance_from(&loads, &params, policy, &phy2log, opts)
        }
    }
    .map_err(|e| bad_input(format!("{}: {e}", a.input.display())))?;

    let mut out = serde_json::to_value(&placement).map_err(|e| bad_input(e.to_string()))?;
    out["policy"] = serde_json::Value::from(a.policy.as_str());
    out["params"] = serde_json::to_value(params).unwrap_or_default();
    let text = serde_json::to_string(&out).unwrap_or_default();
    match &a.output {
        Some(path) => write_all(
            path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")),
            &[(path.file_name().and_then(|n| n.to_str()).unwrap_or("eplb.json"), text)],
        )?,
        None => println!("{text}"),
    }
    eprint!("{}", eplb_summary(&placement, &params));
    Ok(())
}

/// `experts.json`: the placement, and for each EP GPU the logical expert of each of its
/// slots per layer (what it must hold), plus the dispatch table `log2phy`.
pub(crate) fn experts_json(p: &pipewright_compiler::eplb::Placement, moe: &spec::MoeSpec) -> String {
    let k = moe.params.per_gpu();
    let gpus: Vec<serde_json::Value> = (0..moe.params.gpus)
        .map(|g| {
            let slots: Vec<&[u32]> = p.phy2log.iter().map(|row| &row[g * k..(g + 1) * k]).collect();
            serde_json::json!({"gpu": g, "first_slot": g * k, "experts": slots})
        })
        .collect();
    let mut v = serde_json::to_value(p).unwrap_or_default();
    v["gpus"] = serde_json::Value::from(gpus);
    v["policy"] = serde_json::to_value(moe.policy).unwrap_or_default();
    v["params"] = serde_json::to_value(moe.params).unwrap_or_default();
    v["experts_per_layer"] = serde_json::Value::from(moe.experts);
    v["top_k"] = serde_json::Value::from(moe.top_k);
    v["load"] = serde_json::Value::from(moe.load.as_str());
    v.to_string()
}

pub(crate) fn eplb_summary(
    p: &pipewright_compiler::eplb::Placement,
    params: &pipewright_compiler::eplb::Params,
) -> String {
    let layers = p.imbalance.len();
    let mut s = format!(
        "EPLB: {layers} layers, {} replicas on {} GPUs ({} nodes, {} groups)\n",
        params.replicas, params.gpus, params.nodes, params.groups
    );
    s.push_str("layer  imbalance   max load  lower bound     gap\n");
    for l in 0..layers {
        let max = p.gpu_load[l].iter().copied().fold(0.0, f64::max);
        s.push_str(&format!(
            "{l:>5} {:>10.4} {max:>10.1} {:>12.1} {:>6.2}%\n",
            p.imbalance[l],
            p.lower_bound[l],
            100.0 * p.gap[l]
        ));
    }
    let mut worst: Vec<usize> = (0..layers).collect();
    worst.sort_by(|&a, &b| p.imbalance[b].total_cmp(&p.imbalance[a]));
    let names: Vec<String> = worst.iter().take(5).map(|&l| format!("{l} ({:.4})", p.imbalance[l])).collect();
    s.push_str(&format!("worst layers: {}\n", names.join(", ")));
    let mean = p.imbalance.iter().sum::<f64>() / layers.max(1) as f64;
    s.push_str(&format!("mean imbalance {mean:.4}\n"));
    let mut hist: std::collections::BTreeMap<u32, usize> = std::collections::BTreeMap::new();
    for c in p.logcnt.iter().flatten() {
        *hist.entry(*c).or_default() += 1;
    }
    let h: Vec<String> = hist.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    s.push_str(&format!("replicas per expert (count: experts over all layers): {}\n", h.join(", ")));
    if let Some(m) = p.moved_slots {
        let total = params.replicas * layers;
        s.push_str(&format!("moved slots: {m} of {total} ({:.1}%)\n", 100.0 * m as f64 / total.max(1) as f64));
    }
    s
}
