//! What the kernel tests share: the C++ compiler they check and run kernels with, and a
//! kernel's parameters as its source declares them.

use std::process::Command;

/// The host C++ compiler (`$CXX`, else `c++`), or none, said once, when there is none (the
/// test then has nothing to do: `purpose` says what it would have done).
pub fn cxx(purpose: &str) -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        println!("skipped: no C++ compiler ({cxx}) to {purpose}");
        return None;
    }
    Some(cxx)
}

/// The parameters of kernel `name` as `source` declares it.
pub fn parameters<'a>(source: &'a str, name: &str) -> Vec<&'a str> {
    let head = format!("__global__ void {name}(");
    let start = source.find(&head).unwrap_or_else(|| panic!("{name} not defined")) + head.len();
    let end = start + source[start..].find(')').unwrap();
    source[start..end].split(',').map(str::trim).filter(|p| !p.is_empty()).collect()
}
