//! The kernel sources the runtime compiles with NVRTC at start-up, checked where there is
//! no CUDA: every function the runtime loads is defined in its file, and each file (as the
//! runtime assembles it, `common.cuh` prepended) compiles as C++ with the CUDA built-ins
//! stubbed (`kernels/host-syntax.h`). A kernel that does not compile fails every GPU run.

mod common;

use common::{cxx, parameters};
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
    let Some(cxx) = cxx("check the kernel sources with") else { return };
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
