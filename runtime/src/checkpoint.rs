//! Checkpoints and dumps in safetensors: a rank's named buffers (f32) and the step, written
//! atomically (a temporary file, then a rename), so a kill mid-write never leaves a torn
//! checkpoint behind.

use crate::RuntimeError;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::Path;

fn io(path: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Environment(format!("{}: {e}", path.display()))
}

/// A named f32 tensor: (name, shape, values).
pub type Tensor = (String, Vec<usize>, Vec<f32>);

/// Writes `tensors` and `step` to `path`, atomically.
pub fn save(path: &Path, tensors: &[Tensor], step: u32) -> Result<(), RuntimeError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, shape, v)| (n.clone(), shape.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, shape, b)| TensorView::new(Dtype::F32, shape.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io(path, e))?;
    let meta = HashMap::from([("step".to_string(), step.to_string())]);
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| io(path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// Reads a file written by [`save`]: the tensors by name, and the step.
pub fn load(path: &Path) -> Result<(HashMap<String, Vec<f32>>, u32), RuntimeError> {
    let data = std::fs::read(path).map_err(|e| io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&data).map_err(|e| io(path, e))?;
    let step = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("step"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io(path, "no step in the checkpoint's metadata"))?;
    let st = safetensors::SafeTensors::deserialize(&data).map_err(|e| io(path, e))?;
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
        .collect();
    Ok((tensors, step))
}
