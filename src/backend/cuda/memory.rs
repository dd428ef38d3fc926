//! Device memory and the copies between host and device: buffers (`alloc`), uploads and downloads, the raw
//! addresses a kernel receives (`ptr`: why they are sound is said there), and `prefetch`, the batch of a data
//! set kept on the host copied up on a second stream while the compute stream runs the step before it.

use cudarc::driver::result as cu;
use cudarc::driver::{
    CudaEvent, CudaSlice, CudaStream, DevicePtr, DeviceRepr, PinnedHostSlice, ValidAsZeroBits,
};
use std::sync::Arc;

use super::device::device_error;
use super::launch::DevPtr;
use super::CudaBackend;
use crate::backend::{Backend, BufId, HalfId, IdxId, IdxRegion, Region};
use crate::error::Result;

/// Panics when `out` and `input` share an element: the trait forbids it, and a kernel would silently read
/// values it has already overwritten.
pub(super) fn assert_disjoint(op: &str, out: Region, input: Region) {
    let overlap = out.buf == input.buf
        && out.len > 0
        && input.len > 0
        && out.offset < input.offset + input.len
        && input.offset < out.offset + out.len;
    assert!(!overlap, "{op}: output {out:?} overlaps {input:?}");
}

/// `prefetch`'s machinery: a stream of its own for the copies, so that they run while `stream` computes; two
/// page-locked staging buffers used by turns (the DMA engine reads them directly, and the host fills one
/// while the other is being copied); and the events that order the two streams.
pub(super) struct Copies {
    pub(super) stream: Arc<CudaStream>,
    staging: [Option<PinnedHostSlice<f32>>; 2],
    /// Recorded on the copy stream after the copy out of `staging[i]`: the host waits for it before
    /// refilling that buffer.
    copied: [Option<CudaEvent>; 2],
    /// The staging buffer the next call fills.
    next: usize,
    /// Recorded on the compute stream at the previous call: the ops queued before it, which the next copy
    /// waits for.
    before_previous: Option<CudaEvent>,
}

impl CudaBackend {
    /// The device address of `r`'s first element, after checking that `r` lies inside its buffer.
    ///
    /// Why passing raw addresses is sound: device memory is never borrowed as Rust memory, so no Rust
    /// aliasing rule applies to it; what a kernel may touch is decided by the address and the count we pass,
    /// and every op checks (with `assert!`, before launching) that each region lies inside its live buffer
    /// and that the counts it passes match the regions. The buffers stay alive until the backend is dropped,
    /// and `Drop` waits for the stream first. Because outputs and inputs are separate regions (asserted), an
    /// output may live in the same buffer as an input, which `&mut`/`&` views of one `CudaSlice` could not
    /// express. No cudarc event is skipped: event tracking is off (see `new`), so the guard that
    /// `device_ptr` returns is empty.
    pub(super) fn ptr(&self, r: Region) -> DevPtr {
        self.address(&self.bufs, r.buf.0, r.offset, r.len, "buffer")
    }

    /// The device address of `r`'s first index; see [`CudaBackend::ptr`].
    pub(super) fn idx_ptr(&self, r: IdxRegion) -> DevPtr {
        self.address(&self.indices, r.buf.0, r.offset, r.len, "index buffer")
    }

    /// `len` zeros on the device, counted in `allocated_bytes`. A zero-length allocation is not valid in
    /// CUDA: it keeps one element and counts none.
    pub(super) fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &mut self,
        len: usize,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        self.refuse_while_capturing(&format!("allocating {len} {what}"))?;
        let buf = self.stream.alloc_zeros::<T>(len.max(1)).map_err(|e| {
            device_error(&format!("allocating {len} {what} on {}", self.info.name), e)
        })?;
        self.bytes += len * std::mem::size_of::<T>();
        Ok(buf)
    }

    /// The device address of element `offset` of `bufs[buf]`, after checking that `offset + len` fits.
    pub(super) fn address<T>(
        &self,
        bufs: &[CudaSlice<T>],
        buf: usize,
        offset: usize,
        len: usize,
        what: &str,
    ) -> DevPtr {
        let slice = bufs
            .get(buf)
            .unwrap_or_else(|| panic!("no such {what} {buf}"));
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|end| end <= slice.len()),
            "{what} {buf}: {offset}+{len} exceeds its {} elements",
            slice.len()
        );
        let (base, _no_event) = slice.device_ptr(&self.stream);
        base + (offset * std::mem::size_of::<T>()) as u64
    }

    pub(super) fn alloc(&mut self, len: usize) -> Result<BufId> {
        let buf = self.alloc_zeros::<f32>(len, "floats")?;
        self.bufs.push(buf);
        Ok(BufId(self.bufs.len() - 1))
    }

    pub(super) fn alloc_indices(&mut self, len: usize) -> Result<IdxId> {
        let buf = self.alloc_zeros::<u32>(len, "indices")?;
        self.indices.push(buf);
        Ok(IdxId(self.indices.len() - 1))
    }

    pub(super) fn alloc_half(&mut self, len: usize) -> Result<HalfId> {
        let buf = self.alloc_zeros::<u16>(len, "16-bit floats")?;
        self.halves.push(buf);
        self.half_lens.push(len);
        Ok(HalfId(self.halves.len() - 1))
    }

    pub(super) fn upload_half(&mut self, dst: HalfId, src: &[u16]) -> Result<()> {
        self.refuse_while_capturing("a copy from the host")?;
        if src.is_empty() {
            return Ok(());
        }
        let buf = &mut self.halves[dst.0];
        assert!(
            src.len() <= buf.len(),
            "upload_half: {} exceeds its buffer",
            src.len()
        );
        let mut view = buf.slice_mut(0..src.len());
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(|e| device_error("copying 16-bit data to the GPU", e))
    }

    pub(super) fn allocated_bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn upload(&mut self, dst: Region, src: &[f32]) -> Result<()> {
        self.refuse_while_capturing("a copy from the host")?;
        assert_eq!(src.len(), dst.len, "upload length");
        if dst.len == 0 {
            return Ok(());
        }
        let buf = &mut self.bufs[dst.buf.0];
        assert!(
            dst.offset + dst.len <= buf.len(),
            "upload: {dst:?} exceeds its buffer"
        );
        let mut view = buf.slice_mut(dst.offset..dst.offset + dst.len);
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(|e| device_error("copying to the GPU", e))
    }

    /// See the trait: the copy runs on a stream of its own, after the compute stream has passed the point of
    /// the previous call, and the compute stream waits for it before the ops queued after this call.
    pub(super) fn prefetch(&mut self, dst: Region, src: &[f32]) -> Result<()> {
        self.refuse_while_capturing("a copy from the host")?;
        assert_eq!(src.len(), dst.len, "prefetch length");
        if dst.len == 0 {
            return Ok(());
        }
        let p_dst = self.ptr(dst);
        let what = |step: &str| format!("{step} (copying a batch to {})", self.info.name);
        if self.copies.is_none() {
            let stream = self
                .ctx
                .new_stream()
                .map_err(|e| device_error(&what("creating a copy stream"), e))?;
            self.copies = Some(Copies {
                stream,
                staging: [None, None],
                copied: [None, None],
                next: 0,
                before_previous: None,
            });
        }
        let ctx = self.ctx.clone();
        let compute = self.stream.clone();
        let c = self.copies.as_mut().expect("set up above");
        let now = compute
            .record_event(None)
            .map_err(|e| device_error(&what("recording an event"), e))?;
        // The copy waits for the ops queued before the previous call; the first copy, which has no previous
        // call, for every op queued so far (among them the allocation and zeroing of `dst` itself, queued on
        // the compute stream: the two streams are not ordered otherwise).
        let wait_for = match &c.before_previous {
            Some(before) => before,
            None => &now,
        };
        c.stream
            .wait(wait_for)
            .map_err(|e| device_error(&what("ordering the copy stream"), e))?;
        c.before_previous = Some(now);
        let slot = c.next;
        c.next ^= 1;
        if let Some(copied) = &c.copied[slot] {
            // The previous copy out of this staging buffer must be done before it is refilled.
            copied
                .synchronize()
                .map_err(|e| device_error(&what("waiting for an earlier copy"), e))?;
        }
        if c.staging[slot].as_ref().is_none_or(|b| b.len() < src.len()) {
            // SAFETY: the new buffer's contents are written below before anything reads them.
            let buf = unsafe { ctx.alloc_pinned::<f32>(src.len()) }
                .map_err(|e| device_error(&what("allocating page-locked memory"), e))?;
            c.staging[slot] = Some(buf);
        }
        let staging = c.staging[slot].as_mut().expect("allocated above");
        let host = staging
            .as_mut_ptr()
            .map_err(|e| device_error(&what("reaching page-locked memory"), e))?;
        // SAFETY: the staging buffer holds at least src.len() floats (grown above) and no copy reads it any
        // more (its last copy was waited for above); `src` is a separate host slice.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), host, src.len()) };
        // SAFETY: p_dst addresses dst.len = src.len() floats of a live buffer (checked by `ptr`); the host
        // slice is page-locked and stays untouched until `copied[slot]` completes (waited for before the
        // next refill, and the buffer lives until the backend is dropped, after the streams are drained).
        unsafe {
            cu::memcpy_htod_async(
                p_dst,
                std::slice::from_raw_parts(host as *const f32, src.len()),
                c.stream.cu_stream(),
            )
        }
        .map_err(|e| device_error(&what("queuing the copy"), e))?;
        let ordered = c.stream.record_event(None).and_then(|copied| {
            compute.wait(&copied)?;
            Ok(copied)
        });
        match ordered {
            Ok(copied) => {
                c.copied[slot] = Some(copied);
                Ok(())
            }
            Err(e) => {
                // Nothing orders the queued copy now: let it finish before its buffers can be refilled or
                // freed. (Its own error, if any, is the one reported.)
                let _ = c.stream.synchronize();
                Err(device_error(&what("ordering the compute stream"), e))
            }
        }
    }

    pub(super) fn upload_indices(&mut self, dst: IdxId, offset: usize, src: &[u32]) -> Result<()> {
        self.refuse_while_capturing("a copy from the host")?;
        if src.is_empty() {
            return Ok(());
        }
        let buf = &mut self.indices[dst.0];
        assert!(
            offset + src.len() <= buf.len(),
            "upload_indices: {offset}+{} exceeds its buffer",
            src.len()
        );
        let mut view = buf.slice_mut(offset..offset + src.len());
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(|e| device_error("copying indices to the GPU", e))
    }

    pub(super) fn download(&mut self, src: Region, dst: &mut [f32]) -> Result<()> {
        assert_eq!(src.len, dst.len(), "download length");
        self.refuse_while_capturing("a copy to the host")?;
        if src.len > 0 {
            let buf = &self.bufs[src.buf.0];
            assert!(
                src.offset + src.len <= buf.len(),
                "download: {src:?} exceeds its buffer"
            );
            let view = buf.slice(src.offset..src.offset + src.len);
            self.stream.memcpy_dtoh(&view, dst).map_err(|e| {
                device_error("copying from the GPU (a queued kernel may have failed)", e)
            })?;
        }
        self.synchronize()
    }

    pub(super) fn free_memory(&self) -> Option<usize> {
        // cuMemGetInfo reports on the context current on this thread.
        self.ctx.bind_to_thread().ok()?;
        cu::mem_get_info().ok().map(|(free, _total)| free)
    }
}
