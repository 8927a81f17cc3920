//! The spec's `[model]` and `[training]` sections: what the runtime trains, checked, with
//! errors at the offending key.

use crate::diag::SourceError;
use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    kind: Spanned<String>,
    hidden: Spanned<i64>,
    ffn: Option<Spanned<i64>>,
    seq: Spanned<i64>,
    microbatch_size: Spanned<i64>,
    layers_per_stage: Option<Spanned<i64>>,
    dtype: Option<Spanned<String>>,
    seed: Option<Spanned<i64>>,
    gelu: Option<Spanned<String>>,
    mirror_sum: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTraining {
    optimizer: Option<Spanned<String>>,
    lr: Option<Spanned<f64>>,
    steps: Option<Spanned<i64>>,
    checkpoint_every: Option<Spanned<i64>>,
}

/// The model and its training from their raw sections (`training` may be absent: defaults).
pub(super) fn model(
    file: &str,
    source: &str,
    raw: &RawModel,
    training: Option<&RawTraining>,
) -> Result<(pipewright_plan::Model, pipewright_plan::Training), SourceError> {
    let count = |v: &Spanned<i64>, key: &str, max: i64| -> Result<u32, SourceError> {
        let x = *v.get_ref();
        if x < 1 || x > max {
            return Err(SourceError::new(file, source, Some(v.span()), format!("{key} must be in 1..={max}, got {x}")));
        }
        Ok(x as u32)
    };
    if raw.kind.get_ref() != "mlp" {
        return Err(SourceError::new(
            file,
            source,
            Some(raw.kind.span()),
            format!("unknown model kind \"{}\"", raw.kind.get_ref()),
        )
        .with_help("the runtime trains kind = \"mlp\" (Linear → GELU → Linear per layer)"));
    }
    let hidden = count(&raw.hidden, "hidden", 65_536)?;
    let ffn = match &raw.ffn {
        Some(f) => count(f, "ffn", 262_144)?,
        None => 4 * hidden,
    };
    let dtype = match raw.dtype.as_ref().map(|d| d.get_ref().as_str()) {
        None | Some("f32") => pipewright_plan::Dtype::F32,
        Some("bf16") => pipewright_plan::Dtype::Bf16,
        Some(other) => {
            let span = raw.dtype.as_ref().map(|d| d.span());
            return Err(SourceError::new(file, source, span, format!("unknown dtype \"{other}\""))
                .with_help("use \"f32\" or \"bf16\""));
        }
    };
    let seed = match &raw.seed {
        Some(v) if *v.get_ref() < 0 => {
            return Err(SourceError::new(
                file,
                source,
                Some(v.span()),
                format!("seed must be ≥ 0, got {}", v.get_ref()),
            ))
        }
        Some(v) => *v.get_ref() as u64,
        None => 0,
    };
    // Fused by default in bf16; in f32 cuBLASLt's GELU epilogue costs an order of magnitude
    // of gradient accuracy (measured: 4.7e-6 against 4.7e-7 relative) for little time.
    let fuse_gelu = match raw.gelu.as_ref().map(|g| g.get_ref().as_str()) {
        None | Some("auto") => dtype == pipewright_plan::Dtype::Bf16,
        Some("fused") => true,
        Some("kernel") => false,
        Some(other) => {
            let span = raw.gelu.as_ref().map(|g| g.span());
            return Err(SourceError::new(file, source, span, format!("unknown gelu \"{other}\""))
                .with_help("use \"auto\" (fused in bf16), \"fused\" (in the GEMMs' epilogues) or \"kernel\""));
        }
    };
    let mirror_bf16 = match raw.mirror_sum.as_ref().map(|m| m.get_ref().as_str()) {
        None | Some("f32") => false,
        Some("bf16") if dtype == pipewright_plan::Dtype::Bf16 => true,
        Some(other) => {
            let span = raw.mirror_sum.as_ref().map(|m| m.span());
            let why = if other == "bf16" {
                "mirror_sum = \"bf16\" needs dtype = \"bf16\"".to_owned()
            } else {
                format!("unknown mirror_sum \"{other}\"")
            };
            return Err(SourceError::new(file, source, span, why)
                .with_help("use \"f32\" (the default) or, in a bf16 model, \"bf16\""));
        }
    };
    let model = pipewright_plan::Model {
        kind: "mlp".into(),
        hidden,
        ffn,
        seq: count(&raw.seq, "seq", 1 << 20)?,
        microbatch_size: count(&raw.microbatch_size, "microbatch_size", 1 << 16)?,
        layers_per_stage: match &raw.layers_per_stage {
            Some(l) => count(l, "layers_per_stage", 1024)?,
            None => 1,
        },
        dtype,
        seed,
        fuse_gelu,
        mirror_bf16,
    };
    let optimizer = match training.and_then(|t| t.optimizer.as_ref()) {
        None => "sgd".to_owned(),
        Some(o) if o.get_ref() == "sgd" || o.get_ref() == "adamw" => o.get_ref().clone(),
        Some(o) => {
            return Err(SourceError::new(
                file,
                source,
                Some(o.span()),
                format!("unknown optimizer \"{}\"", o.get_ref()),
            )
            .with_help("use \"sgd\" or \"adamw\""))
        }
    };
    let lr = match training.and_then(|t| t.lr.as_ref()) {
        Some(v) if !v.get_ref().is_finite() || *v.get_ref() <= 0.0 => {
            return Err(SourceError::new(file, source, Some(v.span()), format!("lr must be > 0, got {}", v.get_ref())))
        }
        Some(v) => *v.get_ref(),
        None => 1e-3,
    };
    let steps = match training.and_then(|t| t.steps.as_ref()) {
        Some(v) => count(v, "steps", 1 << 30)?,
        None => 10,
    };
    let checkpoint_every = match training.and_then(|t| t.checkpoint_every.as_ref()) {
        Some(v) if *v.get_ref() == 0 => 0,
        Some(v) => count(v, "checkpoint_every", 1 << 30)?,
        None => 0,
    };
    Ok((model, pipewright_plan::Training { optimizer, lr, steps, checkpoint_every }))
}
