//! Optimises one family's plan of a suite spec and prints what the search did: the family's
//! makespan, the optimised one, the layout's lower bound, the best seeds and egg's stats.
//!
//! `cargo run --release -p pipewright-compiler --example optimize_family -- specs/suite/hetero-r4-m8.toml interleaved-1f1b [seconds]`

use pipewright_compiler::bound::spec_lower_bound;
use pipewright_compiler::families::Family;
use pipewright_compiler::{optimize, spec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: optimize_family SPEC FAMILY [SECONDS]";
    let path = args.next().ok_or(usage)?;
    let family = args.next().and_then(|f| Family::from_name(&f)).ok_or(usage)?;
    let time_limit: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10.0);
    let source = std::fs::read_to_string(&path)?;
    let spec = spec::parse(&path, &source).map_err(|e| e.render())?.for_family(family, 2)?;
    let start = family.generate(spec.ranks, spec.microbatches, spec.chunks_per_rank);
    let options = optimize::Options { time_limit, ..Default::default() };
    let outcome = optimize::optimize(&start, &spec.costs, spec.memory.as_ref(), &options)?;
    let layout = start.resolved_layout().ok_or("no layout")?;
    let mut stats = outcome.stats.clone();
    stats.seeds.retain(|s| s.1.is_some());
    stats.seeds.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal));
    stats.seeds.truncate(5);
    println!(
        "{}: family {:?}, optimised {:.3} (by the {}), lower bound of the makespan {:.3}",
        family.name(),
        outcome.stats.baseline,
        outcome.time,
        outcome.stats.objective.name(),
        spec_lower_bound(&layout, &spec.costs)
    );
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}
