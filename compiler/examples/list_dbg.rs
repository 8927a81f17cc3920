use pipewright_compiler::{compile, optimize::{list, problem::Problem}, spec, families::comm, ir::ProgramSet};
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let src = std::fs::read_to_string(&path).unwrap();
    let s = spec::parse(&path, &src).unwrap();
    let costs = s.costs.clone(); let mem = s.memory.clone();
    let c = compile(s).unwrap();
    let p = Problem::new(&c.programs, &costs, mem.as_ref()).unwrap();
    let pol = list::Policy { split: true, backward_first: true, headroom: 1.0, in_flight: None, pair: false };
    let order = list::schedule(&p, &pol).unwrap();
    for (r, o) in order.iter().enumerate().take(3) { println!("{r}: {}", o.iter().take(30).map(|e| e.to_string()).collect::<Vec<_>>().join(" ")); }
    let t = comm::timed(&p.layout, &order, &costs).unwrap();
    let set = ProgramSet { schedule: "x".into(), ranks: p.ranks, chunks: p.chunks, layout: Some(p.layout.clone()), programs: t };
    println!("timed makespan {:?}", p.makespan(&set));
    for (r, o) in set.programs.iter().enumerate().take(3) { println!("{r}: {}", o.iter().take(30).map(|e| e.to_string()).collect::<Vec<_>>().join(" ")); }
    let (st, en) = comm::compute_times(&p.layout, &order, &costs).unwrap();
    println!("{:?}\n{:?}", &st[1][..10], &en[1][..10]);
}
