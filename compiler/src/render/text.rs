//! A plain-text rendering of programs and their simulation, stable enough for snapshots.

use crate::ir::ProgramSet;
use crate::sim::Simulation;
use std::fmt::Write;

/// Each rank's program, one event per token, then per-rank statistics.
///
/// Tokens: `F<dir>.<mb>`, `B…`, `I…`, `W…`, `F<dir>.<mb>+B<dir>.<mb>` for an overlapped
/// pair, and `[>peer f dir.mb <peer b dir.mb …]` for a COMM batch (`>` send, `<` receive,
/// `f` activation, `b` gradient).
pub fn render(set: &ProgramSet, sim: &Simulation) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "schedule {} ranks {} microbatches {}", set.schedule, set.ranks, set.chunks);
    if let Some(l) = &set.layout {
        for (r, mods) in l.modules.iter().enumerate() {
            let mods: Vec<String> = mods.iter().map(|m| format!("p{}s{}", m.pipe, m.stage)).collect();
            let _ = writeln!(s, "layout rank {r}: {}", mods.join(" "));
        }
    }
    for (r, program) in set.programs.iter().enumerate() {
        let tokens: Vec<String> = program.iter().map(|e| e.to_string()).collect();
        let _ = writeln!(s, "rank {r}: {}", tokens.join(" "));
    }
    let _ = writeln!(s, "makespan {}", fmt_num(sim.makespan));
    for st in &sim.ranks {
        let _ = writeln!(
            s,
            "rank {}: busy {} idle {} peak_in_flight {}",
            st.rank,
            fmt_num(st.busy),
            fmt_num(st.idle),
            st.peak_in_flight
        );
    }
    s
}

/// A number with at most 6 decimals and no trailing zeros.
fn fmt_num(x: f64) -> String {
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}
