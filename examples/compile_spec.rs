//! Using the compiler as a library: parse a spec, compile it, and print the text rendering
//! and the makespan.
//!
//! ```sh
//! cargo run --example compile_spec -- specs/dualpipev.toml
//! ```

use pipewright_compiler::render::text;
use pipewright_compiler::{compile, spec};

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "specs/dualpipev.toml".into());
    let source = std::fs::read_to_string(&path)?;
    let spec = spec::parse(&path, &source).map_err(|e| anyhow::anyhow!(e.render()))?;
    let compiled = compile(spec)?;
    print!("{}", text::render(&compiled.programs, &compiled.simulation));
    println!("makespan {}", compiled.report.makespan);
    Ok(())
}
