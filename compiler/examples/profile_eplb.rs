//! Runs one EPLB case in a loop, for profilers: `profile_eplb FILE POLICY [ITERATIONS]`.
use pipewright_compiler::eplb::{io, rebalance, Loads, Policy};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let input = io::read(std::path::Path::new(&args[1])).expect("fixture");
    let p = input.params.expect("params");
    let loads = Loads::new(input.rows).expect("loads");
    let policy = Policy::from_name(&args[2]).expect("policy");
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(300);
    for _ in 0..n {
        std::hint::black_box(rebalance(&loads, &p, policy).expect("placement"));
    }
}
