//! The algorithm chosen for each product, kept beyond the run that chose it.
//!
//! Why: tuning ([`crate::blas`]) times candidates, and timings are noisy, so two runs of the
//! same plan may pick different algorithms for a product, and different algorithms round
//! differently (a split-K sum adds in another order). A resumed run would then not
//! continue the uninterrupted run bitwise. So every choice is kept:
//!
//! - **per machine**, in a cache directory: one file per (library, GPU, product). The first
//!   run (or rank) to tune a product publishes its choice with an atomic hard link, which
//!   fails if another published first; the loser adopts the winner's choice, so every rank
//!   and every later run on the machine uses the same algorithm;
//! - **in each checkpoint** (`rank<r>-tuning.json`): a resumed run uses what the
//!   checkpointed run used, on whatever machine it resumes, as long as the cuBLASLt version
//!   and the GPU model are the same (otherwise it tunes anew and says so).
//!
//! A recorded algorithm is only a candidate: cuBLASLt checks it against the product's
//! descriptors before it is used ([`crate::blas`]), so a stale or foreign entry costs a
//! re-tuning, never a wrong product.

use crate::blas::Shape;
use crate::RuntimeError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// An algorithm as cuBLASLt stores it (`cublasLtMatmulAlgo_t`'s opaque words).
pub type Algo = [u64; 8];

/// How one product runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Choice {
    /// With this algorithm (its epilogue, if any, fused).
    Algo(Algo),
    /// A product with an epilogue: as the plain product, then the epilogue's kernel
    /// (cuBLASLt cannot fuse it at this shape, or that measured faster than fused).
    Unfused,
}

/// One product's choice, as written: its algorithm, or `unfused`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Tuned {
    pub shape: Shape,
    /// Meaningless (zeros) when `unfused`.
    pub algo: Algo,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unfused: bool,
}

impl Tuned {
    pub fn new(shape: Shape, choice: Choice) -> Tuned {
        match choice {
            Choice::Algo(algo) => Tuned { shape, algo, unfused: false },
            Choice::Unfused => Tuned { shape, algo: [0; 8], unfused: true },
        }
    }

    pub fn choice(&self) -> Choice {
        if self.unfused {
            Choice::Unfused
        } else {
            Choice::Algo(self.algo)
        }
    }
}

/// Every product's algorithm on one rank, and what they are valid for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Record {
    /// The cuBLASLt version and the GPU model (see [`library`]).
    pub library: String,
    pub products: Vec<Tuned>,
}

/// What an algorithm is valid for: `cuBLASLt <version> on <GPU name>`.
pub fn library(cublaslt_version: usize, gpu: &str) -> String {
    format!("cuBLASLt {cublaslt_version} on {gpu}")
}

fn io(path: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Environment(format!("{}: {e}", path.display()))
}

/// Writes `record` to `path` atomically (a temporary file, then a rename).
pub fn save(path: &Path, record: &Record) -> Result<(), RuntimeError> {
    let text = serde_json::to_string_pretty(record).map_err(|e| io(path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// Reads a record written by [`save`].
pub fn load(path: &Path) -> Result<Record, RuntimeError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    serde_json::from_str(&text).map_err(|e| io(path, format!("not a tuning record: {e}")))
}

/// The per-machine cache of chosen algorithms (see the module doc).
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    library: String,
}

impl Cache {
    /// A cache under `dir` for algorithms of `library` (see [`library`]).
    pub fn new(dir: &Path, library: &str) -> Cache {
        Cache { dir: dir.to_path_buf(), library: library.to_owned() }
    }

    fn path(&self, shape: &Shape) -> PathBuf {
        let key = format!("{}\n{shape:?}", self.library);
        self.dir.join(format!("{}.json", &crate::sha256_hex(key.as_bytes())[..24]))
    }

    /// The choice published for `shape`, if any (an entry for another library or
    /// product, or an unreadable one, counts as none).
    pub fn get(&self, shape: &Shape) -> Option<Choice> {
        let record = load(&self.path(shape)).ok()?;
        match record.products.as_slice() {
            [t] if record.library == self.library && t.shape == *shape => Some(t.choice()),
            _ => None,
        }
    }

    /// Publishes `choice` as `shape`'s unless another was published first; returns the one
    /// to use (the first published). The cache is an optimisation of reproducibility, not
    /// a requirement: when it cannot be written, `choice`.
    pub fn publish(&self, shape: &Shape, choice: Choice) -> Choice {
        let path = self.path(shape);
        let record = Record { library: self.library.clone(), products: vec![Tuned::new(*shape, choice)] };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&tmp, serde_json::to_string_pretty(&record).unwrap_or_default()));
        if written.is_err() {
            return choice;
        }
        // A hard link never replaces an existing file: exactly one publisher succeeds.
        let _ = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        self.get(shape).unwrap_or(choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blas::Fused;
    use pipewright_plan::Dtype;

    fn shape(m: u64) -> Shape {
        Shape {
            m,
            n: 8192,
            k: 2048,
            trans_a: false,
            trans_b: true,
            dtypes: (Dtype::Bf16, Dtype::Bf16, Dtype::Bf16),
            epilogue: Fused::GeluGrad,
            accumulate: false,
        }
    }

    #[test]
    fn the_first_published_choice_wins_for_every_later_publisher() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), &library(130000, "NVIDIA H200"));
        assert_eq!(cache.get(&shape(4096)), None);
        assert_eq!(cache.publish(&shape(4096), Choice::Algo([1; 8])), Choice::Algo([1; 8]));
        // A second rank (or run) that tuned differently adopts the first choice.
        assert_eq!(cache.publish(&shape(4096), Choice::Algo([2; 8])), Choice::Algo([1; 8]));
        assert_eq!(cache.get(&shape(4096)), Some(Choice::Algo([1; 8])));
        // Another product is another entry.
        assert_eq!(cache.publish(&shape(2048), Choice::Algo([3; 8])), Choice::Algo([3; 8]));
        assert_eq!(cache.get(&shape(4096)), Some(Choice::Algo([1; 8])));
        // No temporary file is left behind.
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".json")), "{names:?}");
    }

    #[test]
    fn an_entry_of_another_library_or_gpu_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let h200 = Cache::new(dir.path(), &library(130000, "NVIDIA H200"));
        h200.publish(&shape(4096), Choice::Algo([1; 8]));
        let newer = Cache::new(dir.path(), &library(130100, "NVIDIA H200"));
        let h100 = Cache::new(dir.path(), &library(130000, "NVIDIA H100 80GB HBM3"));
        assert_eq!(newer.get(&shape(4096)), None);
        assert_eq!(h100.get(&shape(4096)), None);
        assert_eq!(newer.publish(&shape(4096), Choice::Algo([5; 8])), Choice::Algo([5; 8]));
        assert_eq!(h200.get(&shape(4096)), Some(Choice::Algo([1; 8])));
    }

    #[test]
    fn an_unwritable_cache_still_gives_the_tuned_choice() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, "x").unwrap();
        let cache = Cache::new(&file, &library(130000, "NVIDIA H200"));
        assert_eq!(cache.publish(&shape(4096), Choice::Algo([7; 8])), Choice::Algo([7; 8]));
        assert_eq!(cache.get(&shape(4096)), None);
    }

    #[test]
    fn a_record_round_trips_and_garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints/rank0-tuning.json");
        let record = Record {
            library: library(130000, "NVIDIA H200"),
            products: vec![Tuned::new(shape(4096), Choice::Algo([9; 8])), Tuned::new(shape(1), Choice::Unfused)],
        };
        save(&path, &record).unwrap();
        assert_eq!(load(&path).unwrap(), record);
        std::fs::write(&path, "{\"library\": 3}").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("rank0-tuning.json") && err.contains("not a tuning record"), "{err}");
    }

    #[test]
    fn an_unfused_choice_is_published_and_kept_like_an_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), &library(130000, "NVIDIA H200"));
        assert_eq!(cache.publish(&shape(4096), Choice::Unfused), Choice::Unfused);
        // A rank that measured fusion faster still runs it unfused, as the first did.
        assert_eq!(cache.publish(&shape(4096), Choice::Algo([4; 8])), Choice::Unfused);
        assert_eq!(cache.get(&shape(4096)), Some(Choice::Unfused));
    }

    #[test]
    fn a_record_written_before_unfused_choices_existed_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rank0-tuning.json");
        let mut value = serde_json::to_value(Record {
            library: library(130000, "NVIDIA H200"),
            products: vec![Tuned::new(shape(4096), Choice::Algo([3; 8]))],
        })
        .unwrap();
        // An algorithm's entry is written without the flag, as before it existed.
        assert!(value["products"][0].get("unfused").is_none(), "{value}");
        value["products"][0].as_object_mut().unwrap().remove("unfused");
        std::fs::write(&path, value.to_string()).unwrap();
        assert_eq!(load(&path).unwrap().products[0].choice(), Choice::Algo([3; 8]));
    }
}
