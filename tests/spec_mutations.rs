//! Bad input never panics: the corpus specs (`specs/*.toml`), mutated at random — a line
//! dropped or doubled, a value replaced by a wrong, extreme or mistyped one, the text cut
//! short — either compile (parse, costs read, lowered, simulated, verified) or are
//! refused with an error that names the file and, where a value is at fault, its line
//! and column. Whatever compiles has a finite step no shorter than its makespan.

mod common;

use pipewright_compiler::{compile, spec};
use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::OnceLock;

/// What a mutated value becomes: wrong types, signs, non-finite floats, and a count above
/// every limit. (Not a large count within the limits: a plan of 8 ranks and 65537
/// microbatches is valid, and compiling it takes minutes.)
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "3",
    "7",
    "2.5",
    "-0.5",
    "1e300",
    "-1e300",
    "nan",
    "inf",
    "-inf",
    "\"x\"",
    "\"\"",
    "[]",
    "[1.0]",
    "[1.0, -2.0]",
    "true",
    "{}",
    "16777217",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Drop line `n` (modulo the line count).
    Drop(usize),
    /// Write line `n` twice.
    Double(usize),
    /// Replace the value of the `n`-th `key = value` line by `VALUES[v]`.
    Value(usize, usize),
    /// Keep only the first `n` per mille of the text (on a character boundary).
    Cut(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Drop),
        any::<usize>().prop_map(Mutation::Double),
        (any::<usize>(), 0..VALUES.len()).prop_map(|(n, v)| Mutation::Value(n, v)),
        (0usize..1000).prop_map(Mutation::Cut),
    ]
}

/// The corpus specs and their texts, read once for every case.
fn corpus() -> &'static [(PathBuf, String)] {
    static CORPUS: OnceLock<Vec<(PathBuf, String)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut specs: Vec<(PathBuf, String)> = common::files_with_extension(&common::root().join("specs"), "toml")
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                (p, text)
            })
            .collect();
        specs.sort();
        specs
    })
}

fn mutate(text: &str, m: &Mutation) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match *m {
        Mutation::Drop(n) => {
            out.remove(n % lines.len());
        }
        Mutation::Double(n) => {
            let i = n % lines.len();
            out.insert(i, lines[i].to_string());
        }
        Mutation::Value(n, v) => {
            let keyed: Vec<usize> = (0..lines.len())
                .filter(|&i| lines[i].contains(" = ") && !lines[i].trim_start().starts_with('#'))
                .collect();
            if let Some(&i) = keyed.get(n % keyed.len().max(1)) {
                let key = lines[i].split(" = ").next().unwrap();
                out[i] = format!("{key} = {}", VALUES[v]);
            }
        }
        Mutation::Cut(per_mille) => {
            let mut at = text.len() * per_mille / 1000;
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            return text[..at].to_string();
        }
    }
    out.join("\n") + "\n"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_specs_compile_or_are_refused_with_a_location(which in any::<usize>(), m in mutation()) {
        let specs = corpus();
        let (path, text) = &specs[which % specs.len()];
        let mutated = mutate(text, &m);
        let name = "mutated.toml";
        // Refused: the error names the spec, or the costs file it reads (`[costs] from`)
        // where the file's values do not fit what the mutated spec says.
        let refused = |e: &pipewright_compiler::diag::SourceError| -> Result<(), TestCaseError> {
            let rendered = e.render();
            prop_assert!(e.file == name || e.file.ends_with(".toml"), "{}: {rendered}", path.display());
            prop_assert!(rendered.starts_with(&format!("error: {}", e.file)), "{}: {rendered}", path.display());
            if e.span.is_some() {
                let location = e.location();
                let line_col: Vec<&str> = location.rsplitn(3, ':').collect();
                prop_assert!(
                    line_col.len() == 3 && line_col[..2].iter().all(|n| n.parse::<usize>().is_ok()),
                    "{}: {location}",
                    path.display()
                );
            }
            Ok(())
        };
        let mut parsed = match spec::parse(name, &mutated) {
            Ok(s) => s,
            Err(e) => return refused(&e),
        };
        if let Err(e) = spec::load_costs(&mut parsed, name, &mutated, path.parent().unwrap()) {
            return refused(&e);
        }
        // The spec is accepted: it compiles, or says why not (an impossible plan, a
        // budget it cannot meet) without panicking.
        if let Ok(compiled) = compile(parsed) {
            let r = &compiled.report;
            prop_assert!(r.makespan.is_finite() && r.step_time.is_finite(), "{}: {mutated}", path.display());
            prop_assert!(r.step_time + 1e-9 >= r.makespan, "{}", path.display());
        }
    }
}
