//! `gemm-rate`: this GPU's rate for one matrix product, the way the plans run it (cuBLASLt,
//! f32 accumulation, the same transposes and epilogues), on random data — a product on
//! zeros runs faster than on real data and would flatter the benchmarks' FLOP floor.

use crate::blas::Fused;
use crate::error::driver;
use crate::gpu::Gpu;
use crate::RuntimeError;
use pipewright_plan::{Buffer, Dtype, Epilogue, Gemm};

/// One product to time.
#[derive(Debug, Clone)]
pub struct GemmCase {
    pub dtype: Dtype,
    pub mnk: (u64, u64, u64),
    pub trans: (bool, bool),
    pub epilogue: Fused,
    /// C in f32 with beta = 1 (the weight-gradient form).
    pub accumulate: bool,
}

impl GemmCase {
    /// From `gemm-rate`'s arguments.
    pub fn parse(
        dtype: &str,
        mnk: (u64, u64, u64),
        trans: (bool, bool),
        epilogue: &str,
        accumulate: bool,
    ) -> Result<GemmCase, RuntimeError> {
        let dtype = match dtype {
            "f32" => Dtype::F32,
            "bf16" => Dtype::Bf16,
            other => return Err(RuntimeError::Environment(format!("--dtype {other}: use f32 or bf16"))),
        };
        let epilogue = match epilogue {
            "none" => Fused::Nothing,
            "gelu" => Fused::Gelu,
            "gelu-grad" => Fused::GeluGrad,
            other => return Err(RuntimeError::Environment(format!("--epilogue {other}: use none, gelu or gelu-grad"))),
        };
        if accumulate && epilogue != Fused::Nothing {
            return Err(RuntimeError::Environment("--accumulate takes no epilogue (it needs beta = 0)".into()));
        }
        Ok(GemmCase { dtype, mnk, trans, epilogue, accumulate })
    }

    /// How the case is written in `gemm-rate`'s output: the plain forward form keeps the
    /// short `gemm DTYPE MxNxK` that the bench table reads as the FLOP floor's rate.
    pub fn label(&self) -> String {
        let (m, n, k) = self.mnk;
        let dtype = if self.dtype == Dtype::F32 { "f32" } else { "bf16" };
        let mut extra = Vec::new();
        if self.trans != (false, false) {
            extra.push(format!("{}{}", if self.trans.0 { "T" } else { "N" }, if self.trans.1 { "T" } else { "N" }));
        }
        match self.epilogue {
            Fused::Gelu => extra.push("gelu".into()),
            Fused::GeluGrad => extra.push("gelu-grad".into()),
            Fused::Nothing => {}
        }
        if self.accumulate {
            extra.push("f32 C += ".into());
        }
        let extra = if extra.is_empty() { String::new() } else { format!(" [{}]", extra.join(", ")) };
        format!("gemm {dtype} {m}x{n}x{k}{extra}")
    }

    /// Times `iters` products after 3 warm-ups on GPU 0, its SMs used per `sharing`: the
    /// line `gemm-rate` prints.
    pub fn measure(&self, iters: u32, sharing: crate::gpu::Sharing) -> Result<String, RuntimeError> {
        let (m, n, k) = self.mnk;
        let dt = self.dtype;
        let c_dtype = if self.accumulate { Dtype::F32 } else { dt };
        let mut end = 0u64;
        let mut buffer = |name: &str, elements: u64, dtype: Dtype| {
            let offset = end.div_ceil(256) * 256;
            end = offset + elements * dtype.size();
            Buffer { name: name.into(), offset, bytes: elements * dtype.size(), dtype }
        };
        let buffers = vec![
            buffer("a", m * k, dt),
            buffer("b", k * n, dt),
            buffer("c", m * n, c_dtype),
            buffer("pre", m * n, dt),
            buffer("step", 1, Dtype::F32),
        ];
        let cache = crate::cache_dir();
        let mut gpu = Gpu::open(0, 1, 0, end, &cache, sharing)?;
        // Random operands (and pre-activation), from the plans' own generator.
        let synth = pipewright_plan::node::kernel_name("synth_data", dt);
        for (tag, b) in [&buffers[0], &buffers[1], &buffers[3]].into_iter().enumerate() {
            let elements = b.bytes / b.dtype.size();
            gpu.kernel(0, &synth, &[b.offset, buffers[4].offset], elements, &[tag as f32, 0.0, 1.0, 2.0, 3.0, 4.0])?;
        }
        let epilogue = match self.epilogue {
            Fused::Gelu => Epilogue::Gelu { pre: 3 },
            Fused::GeluGrad => Epilogue::GeluGrad { pre: 3 },
            Fused::Nothing => Epilogue::None,
        };
        let gemm = Gemm {
            stream: 0,
            a: 0,
            b: 1,
            c: 2,
            m,
            n,
            k,
            trans_a: self.trans.0,
            trans_b: self.trans.1,
            alpha: 1.0,
            beta: if self.accumulate { 1.0 } else { 0.0 },
            epilogue,
        };
        gpu.prepare_gemms(&[pipewright_plan::Node::Gemm(gemm.clone())], &buffers)?;
        let choice = gpu.gemm_choice(&gemm, &buffers).unwrap_or_default();
        for _ in 0..3 {
            gpu.gemm(&gemm, &buffers)?;
        }
        let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = gpu.streams[0].record_event(timed).map_err(driver)?;
        for _ in 0..iters {
            gpu.gemm(&gemm, &buffers)?;
        }
        let stop = gpu.streams[0].record_event(timed).map_err(driver)?;
        let ms = start.elapsed_ms(&stop).map_err(driver)? as f64 / iters as f64;
        let tflops = 2.0 * (m * n * k) as f64 / (ms * 1e-3) / 1e12;
        Ok(format!("{}: {ms:.4} ms, {tflops:.1} TFLOP/s (random data; algorithm {choice})", self.label()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_forward_form_keeps_the_label_the_bench_table_reads() {
        // scripts/bench-table.py reads `gemm DTYPE MxNxK: ... ms, R TFLOP/s` as the rate.
        let plain = GemmCase::parse("bf16", (4096, 16384, 4096), (false, false), "none", false).unwrap();
        assert_eq!(plain.label(), "gemm bf16 4096x16384x4096");
        let grad = GemmCase::parse("bf16", (4096, 16384, 4096), (false, true), "gelu-grad", false).unwrap();
        assert_eq!(grad.label(), "gemm bf16 4096x16384x4096 [NT, gelu-grad]");
        let weight = GemmCase::parse("f32", (512, 2048, 768), (true, false), "none", true).unwrap();
        assert_eq!(weight.label(), "gemm f32 512x2048x768 [TN, f32 C += ]");
    }

    #[test]
    fn bad_arguments_say_what_to_use() {
        let e = GemmCase::parse("fp8", (1, 1, 1), (false, false), "none", false).unwrap_err().to_string();
        assert!(e.contains("--dtype fp8") && e.contains("f32 or bf16"), "{e}");
        let e = GemmCase::parse("bf16", (1, 1, 1), (false, false), "relu", false).unwrap_err().to_string();
        assert!(e.contains("--epilogue relu") && e.contains("gelu-grad"), "{e}");
        let e = GemmCase::parse("bf16", (1, 1, 1), (false, false), "gelu", true).unwrap_err().to_string();
        assert!(e.contains("--accumulate"), "{e}");
    }
}
