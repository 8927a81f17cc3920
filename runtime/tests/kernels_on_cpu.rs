//! The element-wise kernels of `kernels/` run on the CPU, where there is no GPU: each kernel
//! file, assembled as the runtime hands it to NVRTC, is compiled as C++ after
//! `kernels/host-syntax.h` and `host/emulate.h` (the CUDA built-ins defined, the grid run
//! one thread at a time), and what the kernels compute is compared with the CPU executor
//! (`plan/src/cpu.rs`), the plan format's definition. CI has no GPU; a kernel that computes
//! something else would only show on the GPU machine, as a failed correctness run.

mod common;

use common::{cxx, parameters};
use pipewright_runtime::gpu::{functions_of, KERNEL_SOURCES};
use std::process::Command;

/// f32 → the nearest bf16 (ties to even), as bits: the runtime's rounding, which is
/// `kernels/common.cuh`'s `to_bf16`.
fn bf16_bits(x: f32) -> u32 {
    u32::from(pipewright_runtime::gpu::bf16_bits(x))
}

#[test]
fn the_gelu_kernels_run_on_the_cpu_as_the_cpu_executor_computes() {
    // The GELU passes run when an epilogue is not fused (runtime/src/blas/fusion.rs) and in
    // f32 plans: their 16-byte path, their one-element path (a misaligned start, and the
    // tail past the last whole vector), and in place, against plan/src/math.rs.
    let Some(cxx) = cxx("run the kernels on the CPU with") else { return };
    let stubs = concat!(env!("CARGO_MANIFEST_DIR"), "/../kernels/host-syntax.h");
    let driver = concat!(include_str!("host/emulate.h"), include_str!("host/run_gelu.cpp"));
    let dir = tempfile::tempdir().unwrap();
    let n = 1003; // 125 vectors of 8 bf16 (250 of 4 f32) and a tail of 3
    for (file, bf16) in [("elementwise.cu", false), ("bf16.cu", true)] {
        let (_, source) = KERNEL_SOURCES.iter().find(|(f, _)| *f == file).unwrap();
        let src = dir.path().join(format!("run-{file}.cpp"));
        let bin = dir.path().join(format!("run-{file}"));
        std::fs::write(&src, format!("{source}\n{driver}")).unwrap();
        let mut compile = Command::new(&cxx);
        compile.args(["-std=c++17", "-O1", "-include", stubs]);
        if bf16 {
            compile.arg("-DPW_BF16");
        }
        let out = compile.arg(&src).arg("-o").arg(&bin).output().unwrap();
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        let out = Command::new(&bin).arg(n.to_string()).output().unwrap();
        assert!(out.status.success(), "{file}: the run failed");
        let rows: Vec<Vec<u32>> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').skip(1).map(|w| u32::from_str_radix(w, 16).unwrap()).collect())
            .collect();
        assert_eq!(rows.len(), 2 * n, "{file}");
        let (aligned, misaligned) = rows.split_at(n);
        // Per element the same arithmetic on either path, and in place as out of place.
        if let Some(i) = (0..n).find(|&i| aligned[i] != misaligned[i]) {
            panic!(
                "{file}: element {i}: the 16-byte path gives {:x?}, the one-element path {:x?}",
                aligned[i], misaligned[i]
            );
        }
        let value = |bits: u32| if bf16 { f32::from_bits(bits << 16) } else { f32::from_bits(bits) };
        for row in aligned {
            let (x, dy, y, dx, inplace) = (value(row[0]), value(row[1]), value(row[2]), value(row[3]), row[4]);
            assert_eq!(inplace, row[3], "{file}: in place differs at x = {x}");
            let close = |got: f32, want: f32| {
                if bf16 {
                    // One bf16 step of the reference (its fast tanh may round the other way).
                    let r = bf16_bits(want);
                    let step = (f32::from_bits((r + 1) << 16) - f32::from_bits(r << 16)).abs();
                    (got - f32::from_bits(r << 16)).abs() <= step.max(1e-6)
                } else {
                    (got - want).abs() <= 1e-6 * want.abs().max(1.0)
                }
            };
            let (want_y, want_dx) = (pipewright_plan::math::gelu(x), dy * pipewright_plan::math::gelu_grad(x));
            assert!(close(y, want_y), "{file}: gelu({x}) = {y}, the CPU executor {want_y}");
            assert!(close(dx, want_dx), "{file}: {dy}·gelu'({x}) = {dx}, the CPU executor {want_dx}");
        }
    }
}

/// A buffer's element type, from its parameter's declaration.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Elem {
    F32,
    Bf16,
}

/// f32 `x` as its `elem`'s bits, and the f32 those bits hold.
fn stored(elem: Elem, x: f32) -> (u32, f32) {
    match elem {
        Elem::F32 => (x.to_bits(), x),
        Elem::Bf16 => {
            let b = bf16_bits(x);
            (b, f32::from_bits(b << 16))
        }
    }
}

/// The scalars each kernel gets in this test (a plan's values of the kind it passes).
fn test_scalars(base: &str) -> Vec<f32> {
    match base {
        "sgd_update" | "sgd_update_sum" => vec![0.01],
        "adamw_update" => vec![1e-3, 0.9, 0.999, 1e-8, 0.01],
        "synth_data" => vec![2.0, 7.0, 1.0, 2.0, 3.0, 4.0],
        _ => vec![],
    }
}

#[test]
fn every_element_wise_kernel_runs_on_the_cpu_as_the_cpu_executor_computes() {
    // Each kernel of the plan format but the loss (a reduction across a block, which a
    // grid run one thread at a time cannot emulate) on one input, its grid run on the CPU
    // (host/emulate.h) against plan/src/cpu.rs, every buffer compared after the run.
    let Some(cxx) = cxx("run the kernels on the CPU with") else { return };
    let stubs = concat!(env!("CARGO_MANIFEST_DIR"), "/../kernels/host-syntax.h");
    let dir = tempfile::tempdir().unwrap();
    let n = 1003usize;
    let mut tested = 0;
    for (file, source) in KERNEL_SOURCES.iter().filter(|(f, _)| *f == "elementwise.cu" || *f == "bf16.cu") {
        let mut main = String::from(
            "static void* aligned(size_t bytes) { void* p = nullptr; if (posix_memalign(&p, 16, bytes + 16)) std::abort(); return p; }\n\
             template <typename T> void dump(const char* k, int i, const T* p, long long len) {\n\
             std::printf(\"%s %d\", k, i); for (long long j = 0; j < len; ++j) std::printf(\" %x\", bits(p[j])); std::printf(\"\\n\"); }\n\
             int main() {\n",
        );
        // Per kernel: its buffers (element type, values as stored) and scalars.
        let mut cases = Vec::new();
        for sig in pipewright_plan::node::KERNELS.iter().filter(|k| functions_of(file).contains(&k.name)) {
            let base = sig.name.trim_end_matches("_bf16");
            if base == "mse_loss" {
                continue;
            }
            let params = parameters(source, sig.name);
            let elements = if base == "tick" { 1 } else { n };
            let mut buffers = Vec::new();
            for (j, (&full, p)) in sig.per_element.iter().zip(params.iter().filter(|p| p.contains('*'))).enumerate() {
                let elem = if p.contains("bf16") { Elem::Bf16 } else { Elem::F32 };
                let len = if full { elements } else { 1 };
                let values: Vec<f32> = (0..len)
                    .map(|i| {
                        if !full {
                            return 3.0; // a step count
                        }
                        let u = ((i * 2_654_435_761 + j * 7919) % 10_007) as f32 / 10_007.0;
                        // AdamW's second moment (buffer 3) is never negative.
                        if base == "adamw_update" && j == 3 {
                            u
                        } else {
                            4.0 * u - 2.0
                        }
                    })
                    .map(|x| stored(elem, x).1)
                    .collect();
                let ty = &p[..p.rfind('*').unwrap() + 1];
                buffers.push((elem, values, ty.to_owned()));
            }
            let scalars = test_scalars(base);
            assert_eq!(scalars.len(), sig.scalars, "{}", sig.name);
            // Twice: every buffer 16-byte aligned (the kernels' vector path), and every buffer
            // one element off (their one-element path).
            for shift in 0..2 {
                main += "  {\n";
                for (j, (elem, values, _)) in buffers.iter().enumerate() {
                    let store = if *elem == Elem::Bf16 { "bf16" } else { "float" };
                    let words: Vec<String> = values.iter().map(|&v| format!("0x{:x}u", stored(*elem, v).0)).collect();
                    let len = values.len();
                    main += &format!(
                        "  static const unsigned w{j}[] = {{{w}}};\n  {store}* p{j} = ({store}*)aligned(({len} + 1) * sizeof({store})) + {shift};\n  \
                         for (int i = 0; i < {len}; ++i) {{ unsigned w = w{j}[i]; std::memcpy(&p{j}[i], &w, sizeof({store})); }}\n",
                        w = words.join(","),
                    );
                }
                let mut args: Vec<String> =
                    buffers.iter().enumerate().map(|(j, (_, _, ty))| format!("({ty})p{j}")).collect();
                if base != "tick" {
                    args.push(format!("(long long){elements}"));
                }
                args.extend(scalars.iter().map(|s| format!("__uint_as_float(0x{:x}u)", s.to_bits())));
                main += &format!("  grid({elements}, [&] {{ {}({}); }});\n", sig.name, args.join(", "));
                for (j, (_, values, _)) in buffers.iter().enumerate() {
                    main += &format!("  dump(\"{}@{shift}\", {j}, p{j}, {});\n", sig.name, values.len());
                }
                main += "  }\n";
            }
            cases.push((sig, elements, buffers, scalars));
        }
        main += "  return 0;\n}\n";
        let src = dir.path().join(format!("all-{file}.cpp"));
        let bin = dir.path().join(format!("all-{file}"));
        std::fs::write(&src, format!("{source}\n{}\n{main}", include_str!("host/emulate.h"))).unwrap();
        let out = Command::new(&cxx)
            .args(["-std=c++17", "-O1", "-include", stubs])
            .arg(&src)
            .arg("-o")
            .arg(&bin)
            .output()
            .unwrap();
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        let out = Command::new(&bin).output().unwrap();
        assert!(out.status.success(), "{file}: the run failed");
        let text = String::from_utf8(out.stdout).unwrap();
        let got: std::collections::HashMap<(String, usize), Vec<u32>> = text
            .lines()
            .map(|l| {
                let mut words = l.split(' ');
                let name = words.next().unwrap().to_owned();
                let index = words.next().unwrap().parse().unwrap();
                ((name, index), words.map(|w| u32::from_str_radix(w, 16).unwrap()).collect())
            })
            .collect();
        for (sig, elements, buffers, scalars) in cases {
            let node = pipewright_plan::node::Kernel {
                stream: 0,
                name: sig.name.into(),
                buffers: (0..buffers.len() as u32).collect(),
                elements: elements as u64,
                scalars,
            };
            let mut want: Vec<Vec<f32>> = buffers.iter().map(|(_, v, _)| v.clone()).collect();
            pipewright_plan::cpu::run_kernel(&node, &mut want).unwrap();
            for (j, ((elem, _, _), want)) in buffers.iter().zip(&want).enumerate() {
                for shift in 0..2 {
                    let got = &got[&(format!("{}@{shift}", sig.name), j)];
                    assert_eq!(got.len(), want.len(), "{} (shifted {shift}): buffer {j}", sig.name);
                    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                        let (w_bits, w) = stored(*elem, w);
                        let g_value = if *elem == Elem::Bf16 { f32::from_bits(g << 16) } else { f32::from_bits(g) };
                        let ok = if sig.name.starts_with("synth_data") {
                            g == w_bits // the dataset is equal bit for bit (plan/src/data.rs)
                        } else if *elem == Elem::Bf16 {
                            let step = (f32::from_bits((w_bits + 1) << 16) - w).abs();
                            (g_value - w).abs() <= step.max(1e-6)
                        } else {
                            (g_value - w).abs() <= 1e-5 * w.abs().max(1.0)
                        };
                        assert!(
                        ok,
                        "{} (shifted {shift}): buffer {j}, element {i}: the kernel gives {g_value}, the CPU executor {w}",
                        sig.name
                    );
                    }
                }
            }
            tested += 1;
        }
    }
    // Every kernel of the format but the loss's two.
    assert_eq!(tested, pipewright_plan::node::KERNELS.len() - 2);
}
