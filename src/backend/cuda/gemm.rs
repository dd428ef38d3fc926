//! The launches of `kernels/gemm.cu` (twin: `cpu/gemm.rs`), and the plan that picks one of its kernels for each
//! product from the shape and the GPU's SM count.

use cudarc::driver::{DevicePtr, LaunchConfig};

use super::launch::{
    grid_1d, DevPtr, GEMM_BK, GEMM_LARGE_THREADS, GEMM_LARGE_TILE, GEMM_MAX_DIM, GEMM_THREADS,
    GEMM_TILE, MAX_GRID_Y,
};
use super::memory::assert_disjoint;
use super::CudaBackend;
use crate::activation::Activation;
use crate::backend::{Gemm, Region, Trans};
use crate::error::{Error, Result};

/// Which kernel of kernels/gemm.cu runs a product (see gemm.cu). `Tile64` and `Large` compute the same C;
/// `SplitK` (the 64×64 kernel over slices of K, then `gemm_split_reduce`) sums in another, fixed order.
/// `Auto` picks `Large` when its 128×128 tiles alone fill every SM at least once; `SplitK` when the 64×64
/// tiles would leave more than half of the SMs idle and K is deep enough to share out (the 256-row
/// products of a training step on a big GPU); `Tile64` otherwise. `TIEDAE_CUDA_GEMM=64`, `=128` or
/// `=splitk` forces one, to measure one against the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmKernel {
    Auto,
    Tile64,
    Large,
    SplitK,
}

/// How one product runs: the kernel, and for split-K the depth of a split and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmPlan {
    Tile64,
    Large,
    SplitK { k_split: usize, splits: usize },
}

/// Split-K gives each split at least this much of K (a split must outweigh its partials' round trip).
const SPLIT_MIN_K: usize = 128;

impl GemmKernel {
    /// `TIEDAE_CUDA_GEMM`: unset or `auto`, `64`, `128`, `splitk`.
    pub(super) fn from_env() -> Result<GemmKernel> {
        match std::env::var("TIEDAE_CUDA_GEMM").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(GemmKernel::Auto),
            Ok("64") => Ok(GemmKernel::Tile64),
            Ok("128") => Ok(GemmKernel::Large),
            Ok("splitk") => Ok(GemmKernel::SplitK),
            Ok(other) => Err(Error::Device(format!(
                "TIEDAE_CUDA_GEMM={other} is not one of auto, 64, 128, splitk"
            ))),
        }
    }

    /// How `self` runs an m×n×k product on a GPU with `sms` multiprocessors.
    pub fn plan(self, m: usize, n: usize, k: usize, sms: usize) -> GemmPlan {
        let tiles64 = (m.div_ceil(GEMM_TILE) * n.div_ceil(GEMM_TILE)).max(1);
        // The splits that give every SM a block.
        let to_fill = sms.div_ceil(tiles64);
        match self {
            _ if k == 0 => GemmPlan::Tile64,
            GemmKernel::Tile64 => GemmPlan::Tile64,
            GemmKernel::Large => GemmPlan::Large,
            GemmKernel::SplitK => GemmPlan::split_k(k, to_fill.max(2)),
            GemmKernel::Auto => {
                let large_tiles = m.div_ceil(GEMM_LARGE_TILE) * n.div_ceil(GEMM_LARGE_TILE);
                if large_tiles >= sms {
                    GemmPlan::Large
                } else if 2 * tiles64 <= sms && k >= 2 * SPLIT_MIN_K {
                    GemmPlan::split_k(k, to_fill.min(k / SPLIT_MIN_K))
                } else {
                    GemmPlan::Tile64
                }
            }
        }
    }
}

impl GemmPlan {
    /// K (> 0) cut into about `wanted` splits of whole BK slices; fewer when K has fewer slices.
    fn split_k(k: usize, wanted: usize) -> GemmPlan {
        let k_split = k.div_ceil(wanted.max(1)).div_ceil(GEMM_BK) * GEMM_BK;
        GemmPlan::SplitK {
            k_split,
            splits: k.div_ceil(k_split),
        }
    }
}

impl CudaBackend {
    /// Forces one GEMM tiling (benchmarks and tests compare them); `GemmKernel::Auto` is the default.
    pub fn set_gemm_kernel(&mut self, kernel: GemmKernel) {
        self.gemm_kernel = kernel;
    }

    /// Whether `gemm_bias_act` fuses bias and activation into the GEMM (the default, unless
    /// `TIEDAE_CUDA_FUSE=0`).
    pub fn set_fuse_epilogue(&mut self, fuse: bool) {
        self.fuse_epilogue = fuse;
    }

    /// `gemm` and `gemm_bias_act`: one launch of the tiling `self.gemm_kernel` picks for the shape.
    fn launch_gemm(
        &mut self,
        g: Gemm,
        a: Region,
        b: Region,
        c: Region,
        epilogue: Option<(Region, Activation)>,
    ) -> Result<()> {
        let Gemm { m, n, k, .. } = g;
        assert_eq!(a.len, m * k, "gemm A size");
        assert_eq!(b.len, k * n, "gemm B size");
        assert_eq!(c.len, m * n, "gemm C size");
        assert_disjoint("gemm", c, a);
        assert_disjoint("gemm", c, b);
        if m == 0 || n == 0 {
            return Ok(());
        }
        assert!(
            m <= GEMM_MAX_DIM && n <= GEMM_MAX_DIM && k <= GEMM_MAX_DIM,
            "gemm dimensions {m}×{n}×{k} exceed the kernel's int indices"
        );
        // K == 0 leaves beta·C (or 0); the kernel's accumulators are 0, and alpha·0 must not become NaN.
        let alpha = if k == 0 { 0.0f32 } else { g.alpha };
        let (p_a, p_b, p_c) = (self.ptr(a), self.ptr(b), self.ptr(c));
        // A null bias means no bias and no activation (the kernel's contract).
        let (p_bias, act) = match epilogue {
            Some((bias, act)) => (self.ptr(bias), act.code()),
            None => (0 as DevPtr, Activation::Linear.code()),
        };
        let (m_i, n_i, k_i) = (m as i32, n as i32, k as i32);
        let trans_a = i32::from(g.trans_a == Trans::T);
        let trans_b = i32::from(g.trans_b == Trans::T);
        let plan = self.gemm_kernel.plan(m, n, k, self.info.multiprocessors);
        let (tile, threads, splits, k_split) = match plan {
            GemmPlan::Large => (GEMM_LARGE_TILE, GEMM_LARGE_THREADS, 1, 0),
            GemmPlan::Tile64 => (GEMM_TILE, GEMM_THREADS, 1, 0),
            GemmPlan::SplitK { k_split, splits } => (GEMM_TILE, GEMM_THREADS, splits, k_split),
        };
        // Split-K's partial sums: splits·m·n floats of the backend's scratch, grown when too small.
        let p_partials = if let GemmPlan::SplitK { .. } = plan {
            let need = splits * m * n;
            if self.gemm_partials.as_ref().is_none_or(|p| p.len() < need) {
                // Before the old scratch is freed: a recording keeps it.
                self.refuse_while_capturing("growing the split-K scratch")?;
                if let Some(old) = self.gemm_partials.take() {
                    if self.graphs.is_empty() {
                        self.bytes -= old.len() * std::mem::size_of::<f32>();
                    } else {
                        self.retired_partials.push(old);
                    }
                }
                self.gemm_partials = Some(self.alloc_zeros::<f32>(need, "split-K partial sums")?);
            }
            let partials = self.gemm_partials.as_ref().expect("allocated above");
            let (p, _) = partials.device_ptr(&self.stream);
            p
        } else {
            0 as DevPtr // null: no split
        };
        let cfg = LaunchConfig {
            grid_dim: (
                m.div_ceil(tile) as u32, // <= 2^25: within gridDim.x's 2^31 - 1
                n.div_ceil(tile).min(MAX_GRID_Y) as u32,
                splits as u32, // <= max(2, SMs): within gridDim.z's 65535
            ),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let k_split_i = k_split as i32;
        // SAFETY (both plans): gemm_large takes (A, B, C, M, N, K, trans_a, trans_b, alpha, beta, bias, act),
        // and gemm the same followed by (partials, k_split) (the kernel table in cuda/launch.rs). A, B, C
        // hold exactly m·k, k·n, m·n floats (asserted) inside live buffers (checked by `ptr`), bias is null
        // or n floats (asserted by gemm_bias_act, checked by `ptr`), M, N, K fit the kernels' int arithmetic
        // (asserted), and the kernels bounds-check every element against M, N, K and read bias[j] for j < N
        // only; C overlaps neither A, B nor the bias (asserted). Both stride over tiles, so any grid works.
        // partials is null (gridDim.z = 1), or holds splits·m·n floats (grown above) and gridDim.z = splits
        // = ⌈K / k_split⌉ with k_split a multiple of BK, so block z writes only partials[z] and every k lies
        // in one split.
        if plan == GemmPlan::Large {
            // SAFETY: as said above.
            unsafe {
                self.launch(
                    &self.k.gemm_large,
                    cfg,
                    (
                        p_a, p_b, p_c, m_i, n_i, k_i, trans_a, trans_b, alpha, g.beta, p_bias, act,
                    ),
                )
            }?;
        } else {
            // SAFETY: as said above.
            unsafe {
                self.launch(
                    &self.k.gemm,
                    cfg,
                    (
                        p_a, p_b, p_c, m_i, n_i, k_i, trans_a, trans_b, alpha, g.beta, p_bias, act,
                        p_partials, k_split_i,
                    ),
                )
            }?;
        }
        if let GemmPlan::SplitK { splits, .. } = plan {
            let splits_i = splits as i32;
            // SAFETY: gemm_split_reduce(partials, splits, C, M, N, alpha, beta, bias, act): partials holds
            // splits·m·n floats, all written by the launch above (stream order), C holds m·n floats, bias is
            // null or n floats (see the launch above); a grid-stride loop, so any grid works.
            unsafe {
                self.launch(
                    &self.k.gemm_split_reduce,
                    grid_1d(m * n),
                    (
                        p_partials, splits_i, p_c, m_i, n_i, alpha, g.beta, p_bias, act,
                    ),
                )
            }?;
        }
        Ok(())
    }

    /// C = alpha·op(A)·op(B) + beta·C. A is (m,k), or (k,m) when trans_a; B is (k,n), or (n,k) when trans_b;
    /// C is (m,n); all row-major. Twin of `gemm` in cpu/gemm.rs.
    pub(super) fn gemm(&mut self, g: Gemm, a: Region, b: Region, c: Region) -> Result<()> {
        self.launch_gemm(g, a, b, c, None)
    }

    /// The same product with bias is (n) and C = f(C + bias) in the GEMM's epilogue (gemm.cu). Equals `gemm`
    /// followed by `bias_act` bit for bit (same rounding, see `gemm_epilogue`).
    pub(super) fn gemm_bias_act(
        &mut self,
        g: Gemm,
        a: Region,
        b: Region,
        c: Region,
        bias: Region,
        act: Activation,
    ) -> Result<()> {
        assert_eq!(bias.len, g.n, "gemm_bias_act bias size");
        assert_disjoint("gemm_bias_act", c, bias);
        if !self.fuse_epilogue {
            self.launch_gemm(g, a, b, c, None)?;
            return self.bias_act(c, g.n, bias, act);
        }
        self.launch_gemm(g, a, b, c, Some((bias, act)))
    }
}

#[cfg(test)]
mod tests {
    use super::{GemmKernel, GemmPlan};
    use crate::backend::cuda::launch::GEMM_BK;

    const H100_SMS: usize = 132;
    const GTX1060_SMS: usize = 10;

    #[test]
    fn auto_plan_follows_the_shape_and_the_gpu() {
        let auto = GemmKernel::Auto;
        // Big products: 128×128 tiles (1024 of them at 4096², 64 at 1024² on a 10-SM card).
        assert_eq!(auto.plan(4096, 4096, 4096, H100_SMS), GemmPlan::Large);
        assert_eq!(auto.plan(1024, 1024, 1024, GTX1060_SMS), GemmPlan::Large);
        // mnist's x·W (256×256×784): 16 tiles of 64 leave an H100 idle, so K is split six ways (784 / 128
        // caps it); a GTX 1060 is filled by the 16 tiles alone.
        assert_eq!(
            auto.plan(256, 256, 784, H100_SMS),
            GemmPlan::SplitK {
                k_split: 144,
                splits: 6
            }
        );
        assert_eq!(auto.plan(256, 256, 784, GTX1060_SMS), GemmPlan::Tile64);
        // K too shallow to share out, and K = 0.
        assert_eq!(auto.plan(256, 64, 64, H100_SMS), GemmPlan::Tile64);
        assert_eq!(auto.plan(5, 3, 0, H100_SMS), GemmPlan::Tile64);
    }

    #[test]
    fn split_plans_cover_k_exactly_in_whole_slices() {
        for k in [1, 15, 16, 17, 100, 255, 256, 784, 1000, 4097] {
            for (m, n) in [(1, 1), (64, 64), (256, 784), (5000, 5000)] {
                for sms in [1, GTX1060_SMS, H100_SMS] {
                    for kernel in [GemmKernel::Auto, GemmKernel::SplitK] {
                        if let GemmPlan::SplitK { k_split, splits } = kernel.plan(m, n, k, sms) {
                            assert_eq!(k_split % GEMM_BK, 0, "{m}×{n}×{k} on {sms}");
                            assert!(splits * k_split >= k && (splits - 1) * k_split < k);
                            assert!((1..=sms.max(2)).contains(&splits), "{splits} splits");
                        }
                    }
                }
            }
        }
        // Forced split-K splits whenever K has two slices.
        assert!(matches!(
            GemmKernel::SplitK.plan(4096, 4096, 64, H100_SMS),
            GemmPlan::SplitK { splits: 2, .. }
        ));
    }
}
