//! CUDA graphs: a run of training steps recorded once from the stream and replayed with one launch
//! (`Backend::begin_capture` and the rest). While the stream records, an op that would allocate, copy or wait
//! is refused (`refuse_while_capturing`), since a graph would not hold it.

use cudarc::driver::sys;

use super::device::device_error;
use super::CudaBackend;
use crate::backend::GraphId;
use crate::error::{Error, Result};

impl CudaBackend {
    /// Fails while the stream records a graph: `what` (an allocation, a copy from or to the host, a wait)
    /// would not be recorded as an op of the graph but done once, now, or would break the recording.
    pub(super) fn refuse_while_capturing(&self, what: &str) -> Result<()> {
        if self.capturing {
            return Err(Error::Device(format!(
                "{what} is not possible while a CUDA graph is being recorded"
            )));
        }
        Ok(())
    }

    pub(super) fn can_capture(&self) -> bool {
        true
    }

    pub(super) fn begin_capture(&mut self) -> Result<()> {
        assert!(!self.capturing, "begin_capture while recording");
        // Thread-local mode: only this thread's calls that cannot be recorded fail (another thread's work on
        // another context is none of this recording's business).
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| device_error("starting a CUDA graph recording", e))?;
        self.capturing = true;
        Ok(())
    }

    pub(super) fn end_capture(&mut self) -> Result<GraphId> {
        assert!(self.capturing, "end_capture without begin_capture");
        self.capturing = false;
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(|e| device_error("ending a CUDA graph recording", e))?
            .ok_or_else(|| Error::Device("the CUDA graph recording captured nothing".into()))?;
        // Uploading now keeps the first replay from paying for it.
        graph
            .upload()
            .map_err(|e| device_error("uploading a CUDA graph", e))?;
        self.graphs.push(graph);
        Ok(GraphId(self.graphs.len() - 1))
    }

    pub(super) fn abort_capture(&mut self) {
        if self.capturing {
            self.capturing = false;
            // An invalidated recording ends with an error and no graph; a valid one ends with a graph that
            // is dropped here. Either way the stream is no longer recording.
            let _ = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        }
    }

    pub(super) fn replay(&mut self, graph: GraphId) -> Result<()> {
        self.refuse_while_capturing("replaying a CUDA graph")?;
        let g = self
            .graphs
            .get(graph.0)
            .ok_or_else(|| Error::Device(format!("no CUDA graph {}", graph.0)))?;
        g.launch().map_err(|e| self.launch_error("a CUDA graph", e))
    }

    pub(super) fn clear_graphs(&mut self) {
        // An executable graph still running is freed when it completes (cuGraphExecDestroy).
        self.graphs.clear();
        if !self.retired_partials.is_empty() {
            // The scratch of replays still queued is freed once they are done. An error here was reported
            // by the op that caused it.
            let _ = self.stream.synchronize();
            for old in self.retired_partials.drain(..) {
                self.bytes -= old.len() * std::mem::size_of::<f32>();
            }
        }
    }
}
