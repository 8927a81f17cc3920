//! Prints the README's EPLB table: per fixture case and policy, mean and worst-layer
//! imbalance, mean gap to the lower bound, and time per call (median of 11 runs).
//!
//! ```sh
//! cargo run --release -p pipewright-compiler --example eplb_table [FIXTURE_DIR]
//! ```

use pipewright_compiler::eplb::{io, rebalance, Loads, Policy};
use std::time::Instant;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "../shared/fixtures/eplb".into());
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("fixture dir").filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.retain(|p| p.extension().is_some_and(|x| x == "json"));
    files.sort();
    println!("| case | policy | mean imbalance | worst layer | mean gap to bound | time per call |");
    println!("|---|---|---|---|---|---|");
    for path in files {
        let input = io::read(&path).expect("readable fixture");
        let p = input.params.expect("params");
        let loads = Loads::new(input.rows).expect("valid loads");
        let case = path.file_stem().unwrap().to_string_lossy().into_owned();
        for (name, policy) in [
            ("deepseek", Policy::DeepSeek),
            ("balanced", Policy::Balanced),
            ("balanced-global", Policy::BalancedGlobal),
        ] {
            let mut times = Vec::new();
            let mut placement = None;
            for _ in 0..11 {
                let t = Instant::now();
                placement = Some(rebalance(&loads, &p, policy).expect("placement"));
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            let pl = placement.unwrap();
            let n = pl.imbalance.len() as f64;
            let mean = pl.imbalance.iter().sum::<f64>() / n;
            let worst = pl.imbalance.iter().copied().fold(0.0, f64::max);
            let gap = 100.0 * pl.gap.iter().sum::<f64>() / n;
            println!("| {case} | {name} | {mean:.4} | {worst:.4} | {gap:.2}% | {:.2} ms |", times[5]);
        }
    }
}
