//! CUDA-event timing of a rank's step for `profile` ([`crate::exec`]): events around spans
//! of nodes — the plan's ops, or every node on its own — recorded as the step is issued
//! (eager), or captured with it into a graph as external event-record nodes (timed at
//! every replay, so an op costs what it costs as the graph runs it), read back as (start,
//! duration) from the step's start.

use crate::error::driver;
use crate::gpu::Gpu;
use crate::RuntimeError;
use cudarc::driver::CudaEvent;
use pipewright_plan::node::Node;
use std::collections::HashMap;

/// CUDA events around spans of nodes of one step: a start event before a span's first node
/// and an end event after its last, on the span's stream, and one at the step's start. The
/// spans are the plan's ops, or each node on its own. Built while the step is captured,
/// the records become graph nodes and every replay re-records them.
#[derive(Debug)]
pub struct OpTimer {
    origin: CudaEvent,
    /// Span index by its first and its last node.
    starts: HashMap<usize, usize>,
    ends: HashMap<usize, usize>,
    streams: Vec<usize>,
    events: Vec<(Option<CudaEvent>, Option<CudaEvent>)>,
    /// Node timing: each compute stream's span waits for the other's last one, so that the
    /// two never overlap and every node's time is its own, not shared with a concurrent one.
    serial: bool,
    /// The last span ended on each compute stream (0, 1).
    last: [Option<usize>; 2],
    /// Being captured: events are recorded as external (timing) event-record nodes.
    in_graph: bool,
}

/// Every op as a span (first, last, stream), starting after the waits it opens with: with
/// async p2p an op's first node is often the wait for the batch that brought its input,
/// and an op's cost is its compute, not how long its data took to arrive.
pub fn op_spans(rp: &pipewright_plan::RankPlan) -> Vec<(usize, usize, usize)> {
    rp.ops
        .iter()
        .map(|o| {
            let (mut first, last) = (o.first as usize, o.last as usize);
            while first < last && matches!(rp.nodes[first], Node::Wait { .. }) {
                first += 1;
            }
            (first, last, o.stream as usize)
        })
        .collect()
}

/// Every node as its own span (first, last, stream); event records and waits as empty
/// spans that are never timed.
pub fn node_spans(nodes: &[Node]) -> Vec<(usize, usize, usize)> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| match n {
            Node::Gemm(g) => (i, i, g.stream as usize),
            Node::Kernel(k) => (i, i, k.stream as usize),
            Node::Group { stream, .. } => (i, i, *stream as usize),
            Node::Record { .. } | Node::Wait { .. } => (usize::MAX, usize::MAX, 0),
        })
        .collect()
}

impl OpTimer {
    /// A timer of `spans` whose origin is recorded now on the compute stream; `in_graph`
    /// when the step is being captured.
    pub fn new(
        gpu: &Gpu,
        spans: Vec<(usize, usize, usize)>,
        serial: bool,
        in_graph: bool,
    ) -> Result<OpTimer, RuntimeError> {
        let origin = record(gpu, 0, in_graph)?;
        Ok(OpTimer {
            in_graph,
            serial,
            last: [None, None],
            origin,
            starts: spans.iter().enumerate().map(|(i, s)| (s.0, i)).collect(),
            ends: spans.iter().enumerate().map(|(i, s)| (s.1, i)).collect(),
            streams: spans.iter().map(|s| s.2).collect(),
            events: spans.iter().map(|_| (None, None)).collect(),
        })
    }

    pub fn before(&mut self, gpu: &Gpu, node: usize) -> Result<(), RuntimeError> {
        if let Some(&op) = self.starts.get(&node) {
            let s = self.streams[op];
            if self.serial && s < 2 {
                if let Some(e) = self.last[1 - s].and_then(|other| self.events[other].1.as_ref()) {
                    gpu.streams[s].wait(e).map_err(driver)?;
                }
            }
            self.events[op].0 = Some(record(gpu, s, self.in_graph)?);
        }
        Ok(())
    }

    pub fn after(&mut self, gpu: &Gpu, node: usize) -> Result<(), RuntimeError> {
        if let Some(&op) = self.ends.get(&node) {
            let s = self.streams[op];
            self.events[op].1 = Some(record(gpu, s, self.in_graph)?);
            if s < 2 {
                self.last[s] = Some(op);
            }
        }
        Ok(())
    }

    /// Each op's (start, duration) in ms from the step's start (waits for the step).
    pub fn times(&self) -> Result<Vec<(f64, f64)>, RuntimeError> {
        self.events
            .iter()
            .map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => {
                    let start = self.origin.elapsed_ms(a).map_err(driver)? as f64;
                    Ok((start, a.elapsed_ms(b).map_err(driver)? as f64))
                }
                _ => Ok((f64::NAN, f64::NAN)),
            })
            .collect()
    }
}

/// A timing event recorded on `stream`: while capturing, as an external record node (a
/// plain record would only order the streams, and could not be timed after a replay).
fn record(gpu: &Gpu, stream: usize, in_graph: bool) -> Result<CudaEvent, RuntimeError> {
    let stream = &gpu.streams[stream];
    if !in_graph {
        return stream.record_event(Some(TIMED)).map_err(driver);
    }
    let event = gpu.ctx.new_event(Some(TIMED)).map_err(driver)?;
    // SAFETY: a live event and stream of this context.
    unsafe {
        cudarc::driver::sys::cuEventRecordWithFlags(
            event.cu_event(),
            stream.cu_stream(),
            cudarc::driver::sys::CUevent_record_flags::CU_EVENT_RECORD_EXTERNAL as u32,
        )
    }
    .result()
    .map_err(driver)?;
    Ok(event)
}

/// Events that record time (the default flags; not `DISABLE_TIMING`).
pub(crate) const TIMED: cudarc::driver::sys::CUevent_flags = cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
