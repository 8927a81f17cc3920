//! `schedule.svg`: a rank × time picture in the style of the DualPipe README's figures.
//!
//! One row per rank; a cell per compute op at its simulated time, coloured by kind (darker
//! for the second module of a rank), labelled with its microbatch; an overlapped FB is one
//! cell, forward colour above and backward colour below; COMM batches that take time are a
//! thin grey bar under the row; idle time is the empty row background.

use crate::ir::{Event, ProgramSet};
use crate::sim::Simulation;
use std::fmt::Write;

const ROW: f64 = 28.0;
const LEFT: f64 = 64.0;
const TOP: f64 = 36.0;

fn colour(kind: char, dir: u32) -> &'static str {
    match (kind, dir % 2) {
        ('F', 0) => "#9ecae1",
        ('F', _) => "#4292c6",
        ('B', 0) => "#fdae6b",
        ('B', _) => "#e6550d",
        ('I', 0) => "#a1d99b",
        ('I', _) => "#31a354",
        (_, 0) => "#dadaeb",
        _ => "#9e9ac8",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The SVG document.
pub fn render(set: &ProgramSet, sim: &Simulation, title: &str) -> String {
    let span = sim.makespan.max(1e-9);
    let scale = (2400.0 / span).clamp(0.05, 48.0);
    let width = LEFT + span * scale + 20.0;
    let legend_y = TOP + ROW * set.ranks as f64 + 16.0;
    let height = legend_y + 40.0;
    let total: usize = set.programs.iter().map(|p| p.len()).sum();
    let labels = total <= 100_000;
    let mut s = String::with_capacity(total * 120 + 4096);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.1} {height:.1}" font-family="sans-serif" font-size="10">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ =
        writeln!(s, r#"<text x="{LEFT}" y="16" font-size="13">{} — makespan {:.3}</text>"#, esc(title), sim.makespan);
    for r in 0..set.ranks {
        let y = TOP + ROW * r as f64;
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="#f2f2f2"/>"##,
            span * scale,
            ROW - 4.0
        );
        let _ = writeln!(s, r#"<text x="4" y="{:.1}">rank {r}</text>"#, y + ROW / 2.0);
    }
    for (r, (program, spans)) in set.programs.iter().zip(&sim.timeline).enumerate() {
        let y = TOP + ROW * r as f64;
        let h = ROW - 4.0;
        for (e, sp) in program.iter().zip(spans) {
            let x = LEFT + sp.start * scale;
            let w = ((sp.end - sp.start) * scale).max(0.0);
            let tip = esc(&e.to_string());
            match e {
                Event::Comm { .. } => {
                    if w > 0.0 {
                        let _ = writeln!(
                            s,
                            r##"<rect x="{x:.2}" y="{:.1}" width="{w:.2}" height="3" fill="#888"><title>{tip}</title></rect>"##,
                            y + h
                        );
                    }
                }
                Event::FB { f, b } => {
                    let _ = writeln!(
                        s,
                        r##"<g><title>{tip}</title><rect x="{x:.2}" y="{y:.1}" width="{w:.2}" height="{:.1}" fill="{}"/><rect x="{x:.2}" y="{:.1}" width="{w:.2}" height="{:.1}" fill="{}"/><rect x="{x:.2}" y="{y:.1}" width="{w:.2}" height="{h:.1}" fill="none" stroke="#333" stroke-width="0.5"/></g>"##,
                        h / 2.0,
                        colour('F', f.dir),
                        y + h / 2.0,
                        h / 2.0,
                        colour('B', b.dir)
                    );
                    if labels && w >= 18.0 {
                        let _ = writeln!(
                            s,
                            r#"<text x="{:.2}" y="{:.1}" text-anchor="middle">{}|{}</text>"#,
                            x + w / 2.0,
                            y + h / 2.0 + 3.5,
                            f.mb,
                            b.mb
                        );
                    }
                }
                _ => {
                    let (kind, c) =
                        e.units().first().map(|(k, c)| (k.letter(), *c)).unwrap_or(('W', Default::default()));
                    let _ = writeln!(
                        s,
                        r##"<rect x="{x:.2}" y="{y:.1}" width="{w:.2}" height="{h:.1}" fill="{}" stroke="#333" stroke-width="0.5"><title>{tip}</title></rect>"##,
                        colour(kind, c.dir)
                    );
                    if labels && w >= 9.0 {
                        let _ = writeln!(
                            s,
                            r#"<text x="{:.2}" y="{:.1}" text-anchor="middle">{}</text>"#,
                            x + w / 2.0,
                            y + h / 2.0 + 3.5,
                            c.mb
                        );
                    }
                }
            }
        }
    }
    let items = [("F", 'F'), ("B", 'B'), ("I", 'I'), ("W", 'W')];
    let mut x = LEFT;
    for (name, k) in items {
        for dir in 0..2 {
            let _ =
                writeln!(s, r#"<rect x="{x:.1}" y="{legend_y:.1}" width="12" height="12" fill="{}"/>"#, colour(k, dir));
            x += 14.0;
        }
        let _ = writeln!(s, r#"<text x="{x:.1}" y="{:.1}">{name} (module 0, 1)</text>"#, legend_y + 10.0);
        x += 100.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{x:.1}" y="{:.1}">FB: forward above, backward below · grey bar: p2p · empty: idle</text>"#,
        legend_y + 10.0
    );
    s.push_str("</svg>\n");
    s
}
