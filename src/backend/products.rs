//! A backend that computes nothing and lists the matrix products it is asked for: run a training step on it
//! and it says which products that step runs, in order (`train::step_products`, behind `tiedae bench
//! --step-gemms`). Every other op does nothing, and a download reads zeros.

use super::{
    AdamConfig, Backend, BufId, Gemm, HalfFormat, HalfId, IdxId, IdxRegion, NoiseSource, Region,
};
use crate::activation::Activation;
use crate::error::Result;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ProductLog {
    /// Every `gemm` so far, in order (`gemm_pair` and `gemm_bias_act` are theirs: the trait's defaults).
    pub products: Vec<Gemm>,
    buffers: usize,
    index_buffers: usize,
    half_buffers: usize,
    bytes: usize,
}

impl Backend for ProductLog {
    type Scalar = f32;

    fn name(&self) -> String {
        "product log".into()
    }
    fn alloc(&mut self, len: usize) -> Result<BufId> {
        self.buffers += 1;
        self.bytes += 4 * len;
        Ok(BufId(self.buffers - 1))
    }
    fn alloc_indices(&mut self, len: usize) -> Result<IdxId> {
        self.index_buffers += 1;
        self.bytes += 4 * len;
        Ok(IdxId(self.index_buffers - 1))
    }
    fn allocated_bytes(&self) -> usize {
        self.bytes
    }
    fn upload(&mut self, _dst: Region, _src: &[f32]) -> Result<()> {
        Ok(())
    }
    fn upload_indices(&mut self, _dst: IdxId, _offset: usize, _src: &[u32]) -> Result<()> {
        Ok(())
    }
    fn download(&mut self, _src: Region, dst: &mut [f32]) -> Result<()> {
        dst.fill(0.0);
        Ok(())
    }
    fn fill(&mut self, _dst: Region, _value: f32) -> Result<()> {
        Ok(())
    }
    fn alloc_half(&mut self, len: usize) -> Result<HalfId> {
        self.half_buffers += 1;
        self.bytes += 2 * len;
        Ok(HalfId(self.half_buffers - 1))
    }
    fn upload_half(&mut self, _dst: HalfId, _src: &[u16]) -> Result<()> {
        Ok(())
    }
    fn gather_rows_half(
        &mut self,
        _data: HalfId,
        _format: HalfFormat,
        _cols: usize,
        _idx: IdxRegion,
        _out: Region,
    ) -> Result<()> {
        Ok(())
    }
    fn gather_rows(
        &mut self,
        _data: Region,
        _cols: usize,
        _idx: IdxRegion,
        _out: Region,
    ) -> Result<()> {
        Ok(())
    }
    fn corrupt_rows(
        &mut self,
        _clean: Region,
        _cols: usize,
        _idx: IdxRegion,
        _source: NoiseSource,
        _out: Region,
    ) -> Result<()> {
        Ok(())
    }
    fn gemm(&mut self, g: Gemm, _a: Region, _b: Region, _c: Region) -> Result<()> {
        self.products.push(g);
        Ok(())
    }
    fn bias_act(
        &mut self,
        _z: Region,
        _cols: usize,
        _bias: Region,
        _act: Activation,
    ) -> Result<()> {
        Ok(())
    }
    fn act_backward(&mut self, _grad: Region, _y: Region, _act: Activation) -> Result<()> {
        Ok(())
    }
    fn mse_backward(
        &mut self,
        _pred: Region,
        _target: Region,
        _act: Activation,
        _count: usize,
        _grad: Region,
        _loss: Region,
    ) -> Result<()> {
        Ok(())
    }
    fn col_sum(&mut self, _m: Region, _cols: usize, _out: Region) -> Result<()> {
        Ok(())
    }
    fn sgd_step(&mut self, _w: Region, _g: Region, _v: Region, _lr: f32, _m: f32) -> Result<()> {
        Ok(())
    }
    fn adam_step(
        &mut self,
        _w: Region,
        _g: Region,
        _m: Region,
        _v: Region,
        _alpha: Region,
        _cfg: AdamConfig,
    ) -> Result<()> {
        Ok(())
    }
    fn diagonal_affine(&mut self, _m: Region, _n: usize, _scale: f32, _shift: f32) -> Result<()> {
        Ok(())
    }
    fn sum_squares(&mut self, _x: Region, _out: Region) -> Result<()> {
        Ok(())
    }
    fn div_by_sqrt(&mut self, _x: Region, _sum_sq: Region) -> Result<()> {
        Ok(())
    }
    fn normalize_columns(&mut self, _m: Region, _cols: usize) -> Result<()> {
        Ok(())
    }
    fn center_columns(&mut self, _m: Region, _cols: usize, _out: Region) -> Result<()> {
        Ok(())
    }
    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }
}
