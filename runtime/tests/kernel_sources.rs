//! The kernel sources the runtime compiles with NVRTC at start-up, checked where there is
//! no CUDA: every function the runtime loads is defined in its file, and each file (as the
//! runtime assembles it, `common.cuh` prepended) compiles as C++ with the CUDA built-ins
//! stubbed (`kernels/host-syntax.h`). A kernel that does not compile fails every GPU run.

use pipewright_runtime::gpu::{functions_of, KERNEL_SOURCES};
use std::process::Command;

#[test]
fn every_kernel_the_runtime_loads_is_defined_in_its_file() {
    for (file, source) in KERNEL_SOURCES {
        let names = functions_of(file);
        assert!(!names.is_empty(), "{file}: nothing loaded from it");
        for name in names {
            let definition = format!("extern \"C\" __global__ void {name}(");
            assert!(source.contains(&definition), "{file} defines no {name}");
        }
    }
    // Every element-wise kernel of the plan format has a home.
    for k in pipewright_plan::node::KERNELS {
        assert!(
            KERNEL_SOURCES.iter().any(|(file, _)| functions_of(file).contains(&k.name)),
            "no kernel file defines {}",
            k.name
        );
    }
}

/// The parameters of kernel `name` as `source` declares it.
fn parameters<'a>(source: &'a str, name: &str) -> Vec<&'a str> {
    let head = format!("__global__ void {name}(");
    let start = source.find(&head).unwrap_or_else(|| panic!("{name} not defined")) + head.len();
    let end = start + source[start..].find(')').unwrap();
    source[start..end].split(',').map(str::trim).filter(|p| !p.is_empty()).collect()
}

#[test]
fn every_plan_kernel_takes_the_buffers_and_scalars_its_signature_says() {
    // What the runtime passes (gpu/kernels.rs, `launch`): the buffers' pointers, the element
    // count (a long long; `tick` takes none), then the scalars. A plan validated against a
    // signature that disagreed with its kernel would launch it with the wrong arguments.
    for k in pipewright_plan::node::KERNELS {
        let (_, source) = KERNEL_SOURCES.iter().find(|(file, _)| functions_of(file).contains(&k.name)).unwrap();
        let params = parameters(source, k.name);
        let pointers = params.iter().filter(|p| p.contains('*')).count();
        let counts = params.iter().filter(|p| p.starts_with("long long")).count();
        let scalars = params.len() - pointers - counts;
        assert_eq!(pointers, k.per_element.len(), "{}: buffers of {params:?}", k.name);
        assert_eq!(scalars, k.scalars, "{}: scalars of {params:?}", k.name);
        assert_eq!(counts, usize::from(k.name != "tick"), "{}: element count in {params:?}", k.name);
    }
}

#[test]
fn every_kernel_file_compiles_as_cpp_with_cuda_stubbed() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        println!("skipped: no C++ compiler ({cxx}) to check the kernel sources with");
        return;
    }
    let stubs = concat!(env!("CARGO_MANIFEST_DIR"), "/../kernels/host-syntax.h");
    let dir = tempfile::tempdir().unwrap();
    for (file, source) in KERNEL_SOURCES {
        let path = dir.path().join(format!("{file}.cpp"));
        std::fs::write(&path, source).unwrap();
        let out = Command::new(&cxx)
            .args(["-std=c++17", "-fsyntax-only", "-Wall", "-Wno-unused-function", "-include", stubs])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{file} does not compile:\n{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// f32 → the nearest bf16 (ties to even), as bits: what `kernels/common.cuh`'s `to_bf16` does.
fn bf16_bits(x: f32) -> u32 {
    let u = x.to_bits();
    (u + 0x7fff + ((u >> 16) & 1)) >> 16
}

#[test]
fn the_gelu_kernels_run_on_the_cpu_as_the_cpu_executor_computes() {
    // The GELU passes run when an epilogue is not fused (runtime/src/blas/fusion.rs) and in
    // f32 plans: their 16-byte path, their one-element path (a misaligned start, and the
    // tail past the last whole vector), and in place, against plan/src/math.rs.
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        println!("skipped: no C++ compiler ({cxx}) to run the kernels on the CPU with");
        return;
    }
    let stubs = concat!(env!("CARGO_MANIFEST_DIR"), "/../kernels/host-syntax.h");
    let driver = include_str!("host/run_gelu.cpp");
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
