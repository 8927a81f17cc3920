//! The spec's `[moe]` section: what EPLB places, and with what; and the load statistics
//! it names, read relative to the spec.

use super::{out_of_range, positive, Spec};
use crate::diag::SourceError;
use crate::eplb::{self, Loads, Params, Policy};
use serde::Deserialize;
use std::ops::Range;
use toml::Spanned;

/// The `[moe]` section: what EPLB places, and with what.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeSpec {
    pub experts: usize,
    pub top_k: usize,
    /// The load statistics file as written in the spec.
    pub load: String,
    /// Where `load` stands in the spec (for errors about the file's contents).
    pub load_span: Range<usize>,
    pub params: Params,
    pub policy: Policy,
    /// The loads, once [`load_moe`] has read them.
    pub loads: Option<Loads>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMoe {
    experts: Spanned<i64>,
    top_k: Spanned<i64>,
    load: Spanned<String>,
    replicas: Spanned<i64>,
    groups: Spanned<i64>,
    nodes: Spanned<i64>,
    gpus: Spanned<i64>,
    policy: Option<Spanned<String>>,
}

/// The `[moe]` section from its raw form.
pub(super) fn moe(file: &str, source: &str, raw: &RawMoe) -> Result<MoeSpec, SourceError> {
    let count = |key: &str, v: &Spanned<i64>| -> Result<usize, SourceError> {
        positive(v.get_ref(), 1 << 24)
            .map(|x| x as usize)
            .ok_or_else(|| SourceError::new(file, source, Some(v.span()), out_of_range(key, *v.get_ref(), 1 << 24)))
    };
    let experts = count("experts", &raw.experts)?;
    let top_k = count("top_k", &raw.top_k)?;
    if top_k > experts {
        return Err(SourceError::new(
            file,
            source,
            Some(raw.top_k.span()),
            format!("top_k ({top_k}) exceeds experts ({experts})"),
        ));
    }
    let params = Params {
        replicas: count("replicas", &raw.replicas)?,
        groups: count("groups", &raw.groups)?,
        nodes: count("nodes", &raw.nodes)?,
        gpus: count("gpus", &raw.gpus)?,
    };
    params.check(experts).map_err(|e| {
        SourceError::new(file, source, Some(raw.replicas.span()), e.to_string())
            .with_help("replicas must be a multiple of gpus and ≥ experts; gpus a multiple of nodes; experts of groups")
    })?;
    let policy = match &raw.policy {
        None => Policy::Balanced,
        Some(p) => Policy::from_name(p.get_ref()).ok_or_else(|| {
            SourceError::new(file, source, Some(p.span()), format!("unknown policy \"{}\"", p.get_ref()))
                .with_help("use deepseek, balanced or balanced-global")
        })?,
    };
    Ok(MoeSpec {
        experts,
        top_k,
        load: raw.load.get_ref().clone(),
        load_span: raw.load.span(),
        params,
        policy,
        loads: None,
    })
}

/// Reads the `[moe]` load statistics named by `spec` (relative to `base`, the spec's
/// directory); errors point at the `load` key.
pub fn load_moe(spec: &mut Spec, file: &str, source: &str, base: &std::path::Path) -> Result<(), SourceError> {
    let Some(moe) = spec.moe.as_mut() else { return Ok(()) };
    let err = |msg: String| SourceError::new(file, source, Some(moe.load_span.clone()), msg);
    let input = eplb::io::read(&base.join(&moe.load))
        .map_err(|e| err(e).with_help("load names a .json, .csv or .npy file of per-layer expert loads"))?;
    let loads = Loads::new(input.rows).map_err(|e| err(format!("{}: {e}", moe.load)))?;
    if loads.experts() != moe.experts {
        return Err(err(format!(
            "{} has {} experts per layer, but experts = {}",
            moe.load,
            loads.experts(),
            moe.experts
        )));
    }
    moe.loads = Some(loads);
    Ok(())
}
