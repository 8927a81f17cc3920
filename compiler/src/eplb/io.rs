//! Reading load statistics: JSON (a `weight` matrix, e.g. an EPLB fixture, whose `params`
//! then supply the shape), CSV (one layer per line) or NumPy `.npy` (a 2-D array of floats
//! or integers, C order).

use super::Params;
use serde_json::Value;
use std::path::Path;

/// What an input file holds: the loads, and the shape if the file names one.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub rows: Vec<Vec<f64>>,
    pub params: Option<Params>,
}

/// Reads `path` by its extension (`.json`, `.csv`, `.npy`).
pub fn read(path: &Path) -> Result<Input, String> {
    let name = path.display();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    match ext.as_str() {
        "json" => json(&bytes).map_err(|e| format!("{name}: {e}")),
        "csv" => csv(&bytes).map_err(|e| format!("{name}: {e}")),
        "npy" => npy(&bytes).map_err(|e| format!("{name}: {e}")),
        other => Err(format!("{name}: unknown input format \".{other}\"; use .json, .csv or .npy")),
    }
}

fn json(bytes: &[u8]) -> Result<Input, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("{}:{}: {e}", e.line(), e.column()))?;
    let matrix = match &v {
        Value::Array(_) => &v,
        Value::Object(o) => o.get("weight").ok_or("no \"weight\" matrix (layers × experts)")?,
        _ => return Err("expected a matrix or an object with a \"weight\" matrix".into()),
    };
    let rows = matrix
        .as_array()
        .ok_or("\"weight\" must be a list of rows")?
        .iter()
        .enumerate()
        .map(|(l, row)| {
            row.as_array()
                .ok_or(format!("weight row {l} is not a list"))?
                .iter()
                .enumerate()
                .map(|(e, x)| x.as_f64().ok_or(format!("weight[{l}][{e}] is not a number: {x}")))
                .collect::<Result<Vec<f64>, String>>()
        })
        .collect::<Result<Vec<_>, String>>()?;
    let params = v.get("params").map(|p| -> Result<Params, String> {
        let get = |k: &str| p.get(k).and_then(Value::as_u64).map(|x| x as usize).ok_or(format!("params.{k} missing"));
        Ok(Params {
            replicas: get("num_replicas")?,
            groups: get("num_groups")?,
            nodes: get("num_nodes")?,
            gpus: get("num_gpus")?,
        })
    });
    Ok(Input { rows, params: params.transpose()? })
}

fn csv(bytes: &[u8]) -> Result<Input, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text")?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: Result<Vec<f64>, _> = cells.iter().map(|c| c.parse::<f64>()).collect();
        match parsed {
            Ok(r) => rows.push(r),
            // A header line (names, not numbers) is allowed first.
            Err(_) if rows.is_empty() && i == 0 => continue,
            Err(e) => return Err(format!("line {}: {e}", i + 1)),
        }
    }
    Ok(Input { rows, params: None })
}

fn npy(bytes: &[u8]) -> Result<Input, String> {
    let file = npyz::NpyFile::new(bytes).map_err(|e| format!("not a .npy file: {e}"))?;
    let shape: Vec<u64> = file.shape().to_vec();
    if shape.len() != 2 {
        return Err(format!("expected a 2-D array (layers × experts), got shape {shape:?}"));
    }
    if file.order() != npyz::Order::C {
        return Err("Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into());
    }
    let descr = file.dtype().descr();
    let flat: Vec<f64> = match descr.trim_matches(['\'', '"']).trim_start_matches(['<', '|', '=']) {
        "f8" => file.into_vec::<f64>().map_err(|e| e.to_string())?,
        "f4" => file.into_vec::<f32>().map_err(|e| e.to_string())?.into_iter().map(f64::from).collect(),
        "i8" => file.into_vec::<i64>().map_err(|e| e.to_string())?.into_iter().map(|x| x as f64).collect(),
        "i4" => file.into_vec::<i32>().map_err(|e| e.to_string())?.into_iter().map(f64::from).collect(),
        "u8" => file.into_vec::<u64>().map_err(|e| e.to_string())?.into_iter().map(|x| x as f64).collect(),
        "u4" => file.into_vec::<u32>().map_err(|e| e.to_string())?.into_iter().map(f64::from).collect(),
        other => return Err(format!("unsupported dtype {other}; use float32/64 or (u)int32/64")),
    };
    let cols = shape[1] as usize;
    Ok(Input { rows: flat.chunks(cols.max(1)).map(<[f64]>::to_vec).collect(), params: None })
}
