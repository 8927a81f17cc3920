//! Pictures and traces of a simulated schedule: SVG, Chrome/Perfetto trace, plain text.

pub mod svg;
pub mod text;
pub mod trace;

use crate::ir::Event;

/// Display class of an event, for colours and trace categories.
pub fn class(e: &Event) -> &'static str {
    match e {
        Event::F { .. } => "F",
        Event::B { .. } => "B",
        Event::I { .. } => "I",
        Event::W { .. } => "W",
        Event::FB { .. } => "FB",
        Event::Comm { .. } => "COMM",
    }
}
