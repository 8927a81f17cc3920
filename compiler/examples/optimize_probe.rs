use pipewright_compiler::{compile, optimize, spec};
fn main() {
    for path in std::env::args().skip(1) {
        let src = std::fs::read_to_string(&path).unwrap();
        let s = spec::parse(&path, &src).unwrap_or_else(|e| panic!("{e:?}"));
        let costs = s.costs.clone();
        let mem = s.memory.clone();
        let c = compile(s).unwrap();
        let t = std::time::Instant::now();
        let o = optimize::optimize(&c.programs, &costs, mem.as_ref(), &optimize::Options::default()).unwrap();
        if std::env::var("I").is_ok() { idle(&o.programs, &costs); }
        println!("{path}: base {:?} opt {} lb {} ({:.2}s)", o.baseline_makespan, o.makespan, c.report.lower_bound, t.elapsed().as_secs_f64());
        if std::env::var("V").is_ok() { for (n, m) in &o.stats.seeds { println!("   {n}: {m:?}"); } } else { println!("   best seed {}", o.stats.best_seed); }
    }
}
#[allow(dead_code)]
fn dbg() {}
pub fn idle(set: &pipewright_compiler::ir::ProgramSet, costs: &pipewright_compiler::cost::CostModel) {
    let (_, sim, _) = pipewright_compiler::lower_and_simulate(set, costs, None).unwrap();
    for (r, st) in sim.ranks.iter().enumerate() {
        let t = &sim.timeline[r];
        let first = set.programs[r].iter().position(|e| !e.is_comm()).unwrap();
        let last = set.programs[r].iter().rposition(|e| !e.is_comm()).unwrap();
        println!("  rank {r}: idle {:.1} first start {:.1} last end {:.1} last op {}", st.idle, t[first].start, t[last].end, set.programs[r][last]);
    }
}
