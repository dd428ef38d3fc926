//! `Recorder`: the CPU backend with two things of a GPU's, for tests on machines without one: graphs
//! recorded the way a CUDA stream records them, and a device memory that can run out (`free_memory`).

use tiedae::activation::Activation;
use tiedae::backend::{
    AdamConfig, Backend, BufId, CpuBackend, Donors, Gemm, GraphId, HalfFormat, HalfId, IdxId,
    IdxRegion, NoiseSource, Region,
};
use tiedae::error::{Error, Result};

/// One recorded op: the call, with its arguments, replayed on the CPU backend.
type Op = Box<dyn Fn(&mut CpuBackend<f32>) -> Result<()>>;

/// The CPU backend with graphs the way a CUDA stream records them: between `begin_capture` and
/// `end_capture` the ops are kept with their arguments and not run; allocations, copies and waits fail.
pub struct Recorder {
    cpu: CpuBackend<f32>,
    recording: Option<Vec<Op>>,
    graphs: Vec<Vec<Op>>,
    /// Ops run one by one, and ops run by replays: tests check that replays did run.
    pub ops_called: usize,
    pub ops_replayed: usize,
    /// A deliberate bug, to show the tests can fail: recorded Adam steps read the first alpha slot.
    pub stale_alpha: bool,
    /// What `free_memory` says (None: unlimited, as the CPU).
    pub free_memory: Option<usize>,
    /// Regions the ops queued since the last `prefetch` used: a prefetch into one of them breaks its
    /// contract (the copy could overwrite what a running op reads), and panics here.
    since_prefetch: Vec<Region>,
    /// `prefetch` calls so far.
    pub prefetches: usize,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            cpu: CpuBackend::new(),
            recording: None,
            graphs: Vec::new(),
            ops_called: 0,
            ops_replayed: 0,
            stale_alpha: false,
            free_memory: None,
            since_prefetch: Vec::new(),
            prefetches: 0,
        }
    }

    /// Runs `op` now, or keeps it while recording.
    fn op(&mut self, op: impl Fn(&mut CpuBackend<f32>) -> Result<()> + 'static) -> Result<()> {
        match &mut self.recording {
            Some(ops) => {
                ops.push(Box::new(op));
                Ok(())
            }
            None => {
                self.ops_called += 1;
                op(&mut self.cpu)
            }
        }
    }

    /// Notes the regions an op uses, for `prefetch`'s check.
    fn touch(&mut self, regions: &[Region]) {
        self.since_prefetch.extend_from_slice(regions);
    }

    /// Fails while recording, as CUDA does for what a graph cannot hold.
    fn not_recording(&self, what: &str) -> Result<()> {
        match self.recording {
            Some(_) => Err(Error::Device(format!("{what} while recording"))),
            None => Ok(()),
        }
    }
}

impl Backend for Recorder {
    type Scalar = f32;

    fn name(&self) -> String {
        "recording cpu".into()
    }
    fn alloc(&mut self, len: usize) -> Result<BufId> {
        self.not_recording("alloc")?;
        self.cpu.alloc(len)
    }
    fn alloc_indices(&mut self, len: usize) -> Result<IdxId> {
        self.not_recording("alloc_indices")?;
        self.cpu.alloc_indices(len)
    }
    fn allocated_bytes(&self) -> usize {
        self.cpu.allocated_bytes()
    }
    fn free_memory(&self) -> Option<usize> {
        self.free_memory
    }
    fn upload(&mut self, dst: Region, src: &[f32]) -> Result<()> {
        self.not_recording("upload")?;
        self.touch(&[dst]);
        self.cpu.upload(dst, src)
    }
    fn upload_indices(&mut self, dst: IdxId, offset: usize, src: &[u32]) -> Result<()> {
        self.not_recording("upload_indices")?;
        self.cpu.upload_indices(dst, offset, src)
    }
    fn prefetch(&mut self, dst: Region, src: &[f32]) -> Result<()> {
        self.not_recording("prefetch")?;
        let overlaps = |r: &Region| {
            r.buf == dst.buf && r.offset < dst.offset + dst.len && dst.offset < r.offset + r.len
        };
        // Stricter than the trait for the first call, which may overlap nothing queued before it at all:
        // the trainer needs no such latitude, so the check is the same for every call.
        if let Some(r) = self.since_prefetch.iter().find(|r| overlaps(r)) {
            panic!(
                "prefetch into {dst:?}, which an op queued since the last prefetch uses ({r:?})"
            );
        }
        self.since_prefetch.clear();
        self.prefetches += 1;
        self.cpu.upload(dst, src)
    }
    fn download(&mut self, src: Region, dst: &mut [f32]) -> Result<()> {
        self.not_recording("download")?;
        self.touch(&[src]);
        self.cpu.download(src, dst)
    }
    fn fill(&mut self, dst: Region, value: f32) -> Result<()> {
        self.touch(&[dst]);
        self.op(move |c| c.fill(dst, value))
    }
    fn alloc_half(&mut self, len: usize) -> Result<HalfId> {
        self.not_recording("alloc_half")?;
        self.cpu.alloc_half(len)
    }
    fn upload_half(&mut self, dst: HalfId, src: &[u16]) -> Result<()> {
        self.not_recording("upload_half")?;
        self.cpu.upload_half(dst, src)
    }
    fn gather_rows_half(
        &mut self,
        data: HalfId,
        format: HalfFormat,
        cols: usize,
        idx: IdxRegion,
        out: Region,
    ) -> Result<()> {
        self.touch(&[out]);
        self.op(move |c| c.gather_rows_half(data, format, cols, idx, out))
    }
    fn gather_rows(
        &mut self,
        data: Region,
        cols: usize,
        idx: IdxRegion,
        out: Region,
    ) -> Result<()> {
        self.touch(&[data, out]);
        self.op(move |c| c.gather_rows(data, cols, idx, out))
    }
    fn corrupt_rows(
        &mut self,
        clean: Region,
        cols: usize,
        idx: IdxRegion,
        source: NoiseSource,
        out: Region,
    ) -> Result<()> {
        self.touch(&[clean, out, source.fill]);
        if let Donors::F32(data) = source.donors {
            self.touch(&[data]);
        }
        self.op(move |c| c.corrupt_rows(clean, cols, idx, source, out))
    }
    fn gemm(&mut self, g: Gemm, a: Region, b: Region, c: Region) -> Result<()> {
        self.touch(&[a, b, c]);
        self.op(move |cpu| cpu.gemm(g, a, b, c))
    }
    fn bias_act(&mut self, z: Region, cols: usize, bias: Region, act: Activation) -> Result<()> {
        self.touch(&[z, bias]);
        self.op(move |c| c.bias_act(z, cols, bias, act))
    }
    fn act_backward(&mut self, grad: Region, y: Region, act: Activation) -> Result<()> {
        self.touch(&[grad, y]);
        self.op(move |c| c.act_backward(grad, y, act))
    }
    fn mse_backward(
        &mut self,
        pred: Region,
        target: Region,
        act: Activation,
        count: usize,
        grad: Region,
        loss: Region,
    ) -> Result<()> {
        self.touch(&[pred, target, grad, loss]);
        self.op(move |c| c.mse_backward(pred, target, act, count, grad, loss))
    }
    fn col_sum(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
        self.touch(&[m, out]);
        self.op(move |c| c.col_sum(m, cols, out))
    }
    fn sgd_step(&mut self, w: Region, g: Region, v: Region, lr: f32, momentum: f32) -> Result<()> {
        self.touch(&[w, g, v]);
        self.op(move |c| c.sgd_step(w, g, v, lr, momentum))
    }
    fn adam_step(
        &mut self,
        w: Region,
        g: Region,
        m: Region,
        v: Region,
        alpha: Region,
        cfg: AdamConfig,
    ) -> Result<()> {
        let alpha = if self.stale_alpha && self.recording.is_some() {
            Region::whole(alpha.buf, 1)
        } else {
            alpha
        };
        self.touch(&[w, g, m, v, alpha]);
        self.op(move |c| c.adam_step(w, g, m, v, alpha, cfg))
    }
    fn diagonal_affine(&mut self, m: Region, n: usize, scale: f32, shift: f32) -> Result<()> {
        self.touch(&[m]);
        self.op(move |c| c.diagonal_affine(m, n, scale, shift))
    }
    fn sum_squares(&mut self, x: Region, out: Region) -> Result<()> {
        self.touch(&[x, out]);
        self.op(move |c| c.sum_squares(x, out))
    }
    fn div_by_sqrt(&mut self, x: Region, sum_sq: Region) -> Result<()> {
        self.touch(&[x, sum_sq]);
        self.op(move |c| c.div_by_sqrt(x, sum_sq))
    }
    fn normalize_columns(&mut self, m: Region, cols: usize) -> Result<()> {
        self.touch(&[m]);
        self.op(move |c| c.normalize_columns(m, cols))
    }
    fn center_columns(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
        self.touch(&[m, out]);
        self.op(move |c| c.center_columns(m, cols, out))
    }
    fn synchronize(&mut self) -> Result<()> {
        self.not_recording("synchronize")
    }

    fn can_capture(&self) -> bool {
        true
    }
    fn begin_capture(&mut self) -> Result<()> {
        assert!(self.recording.is_none(), "begin_capture while recording");
        self.recording = Some(Vec::new());
        Ok(())
    }
    fn end_capture(&mut self) -> Result<GraphId> {
        let ops = self
            .recording
            .take()
            .expect("end_capture without begin_capture");
        self.graphs.push(ops);
        Ok(GraphId(self.graphs.len() - 1))
    }
    fn abort_capture(&mut self) {
        self.recording = None;
    }
    fn replay(&mut self, graph: GraphId) -> Result<()> {
        self.not_recording("replay")?;
        for op in &self.graphs[graph.0] {
            self.ops_replayed += 1;
            op(&mut self.cpu)?;
        }
        Ok(())
    }
    fn clear_graphs(&mut self) {
        self.graphs.clear();
    }
}
