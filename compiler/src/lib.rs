//! pipewright's compiler: schedule specs → Schedule IR → Plan DAG → simulation → outputs.
//!
//! See `ARCHITECTURE.md` at the repository root for the data flow and the code map.

pub mod cost;
pub mod diag;
pub mod families;
pub mod ir;
pub mod spec;
pub mod dag;
pub mod sim;
