//! Snapshots (insta) of every spec in `specs/`: the compiled programs in text form and the
//! simulated per-rank statistics. A change to a family or the simulator shows up here.

mod common;

use pipewright_compiler::render::text;
use pipewright_compiler::{compile, spec};

#[test]
fn every_spec_in_the_corpus() {
    let dir = common::root().join("specs");
    let mut specs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    specs.sort();
    assert!(specs.len() >= 7, "the corpus has one spec per family at least");
    for path in specs {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let source = std::fs::read_to_string(&path).unwrap();
        let mut spec = spec::parse(&name, &source).unwrap_or_else(|e| panic!("{}", e.render()));
        spec::load_costs(&mut spec, &name, &source, &dir).unwrap_or_else(|e| panic!("{}", e.render()));
        let compiled = compile(spec).unwrap();
        insta::assert_snapshot!(name, text::render(&compiled.programs, &compiled.simulation));
    }
}
