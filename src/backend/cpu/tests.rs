//! Unit tests of the CPU backend's arena and of the ops it splits across threads.

use super::*;
use crate::backend::Trans;

/// Uploads `len` values in [-1, 1) (a fixed sequence per `seed`) into a new buffer.
fn values(be: &mut CpuBackend<f32>, len: usize, seed: u32) -> Region {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let host: Vec<f32> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    let r = Region::whole(be.alloc(len).unwrap(), len);
    be.upload(r, &host).unwrap();
    r
}

fn read(be: &mut CpuBackend<f32>, r: Region) -> Vec<u32> {
    let mut out = vec![0.0; r.len];
    be.download(r, &mut out).unwrap();
    out.iter().map(|v| v.to_bits()).collect()
}

/// The operands of a product (`g`'s stored shapes), C holding values for β = 1.
fn operands(be: &mut CpuBackend<f32>, g: Gemm, seed: u32) -> GemmArgs {
    let a = values(be, g.m * g.k, seed);
    let b = values(be, g.k * g.n, seed + 1);
    let c = values(be, g.m * g.n, seed + 2);
    (g, a, b, c)
}

/// Every buffer starts on a cache line, small or large (a large `Vec` would start 16 bytes past one), in
/// f32 and f64, holds `len` zeros, and stays so after an op has taken it out and put it back.
#[test]
fn buffers_start_on_a_cache_line() {
    fn check<T: Real>(be: &mut CpuBackend<T>, len: usize) -> BufId {
        let id = be.alloc(len).unwrap();
        let buf = &be.bufs[id.0];
        assert_eq!(
            buf.as_ptr() as usize % BUFFER_ALIGN,
            0,
            "{len} {}",
            std::any::type_name::<T>()
        );
        assert_eq!(buf.len(), len);
        assert!(buf.iter().all(|&x| x == T::zero()));
        id
    }
    let mut be = CpuBackend::<f32>::new();
    for len in [0, 1, 5, 1000, 200_000, 3_000_001] {
        let out = Region::whole(check(&mut be, len), len);
        // An op that writes it: the column sums of one row of twos.
        let twos = Region::whole(be.alloc(len).unwrap(), len);
        be.fill(twos, 2.0).unwrap();
        be.col_sum(twos, len, out).unwrap();
        assert_eq!(
            be.bufs[out.buf.0].as_ptr() as usize % BUFFER_ALIGN,
            0,
            "{len} after"
        );
        assert!(be.bufs[out.buf.0].iter().all(|&x| x == 2.0), "{len} after");
    }
    let mut be64 = CpuBackend::<f64>::new();
    for len in [1, 3, 300_000] {
        check(&mut be64, len);
    }
}

/// An op reads inputs that live in its output's own buffer, before and after the output (the training
/// step keeps pairs of tensors in one buffer), and gets the bits it gets from separate buffers.
#[test]
fn inputs_in_the_output_buffer_are_read_around_the_output() {
    let g = Gemm::new(Trans::T, Trans::N, 7, 5, 6).accumulate();
    let (a_len, b_len, c_len) = (g.k * g.m, g.k * g.n, g.m * g.n);
    let mut apart = CpuBackend::<f32>::new();
    let (_, a, b, c) = operands(&mut apart, g, 3);
    // One buffer: [a | c | b], filled with the same values.
    let mut shared = CpuBackend::<f32>::new();
    let whole = Region::whole(
        shared.alloc(a_len + c_len + b_len).unwrap(),
        a_len + c_len + b_len,
    );
    let (sa, sc, sb) = (
        whole.sub(0, a_len),
        whole.sub(a_len, c_len),
        whole.sub(a_len + c_len, b_len),
    );
    for (from, to) in [(a, sa), (b, sb), (c, sc)] {
        let mut host = vec![0.0f32; from.len];
        apart.download(from, &mut host).unwrap();
        shared.upload(to, &host).unwrap();
    }
    apart.gemm(g, a, b, c).unwrap();
    shared.gemm(g, sa, sb, sc).unwrap();
    assert_eq!(read(&mut shared, sc), read(&mut apart, c), "gemm");
    // mse_backward: the target before the gradient in one buffer, against separate buffers.
    let (target, grad) = (sa.sub(0, 30), sb.sub(0, 30));
    let (pred, loss) = (values(&mut shared, 30, 9), values(&mut shared, 1, 0));
    shared
        .mse_backward(pred, target, Activation::Tanh, 30, grad, loss)
        .unwrap();
    let (apart_target, apart_grad) = (values(&mut apart, 30, 0), values(&mut apart, 30, 0));
    let mut host = vec![0.0f32; 30];
    shared.download(target, &mut host).unwrap();
    apart.upload(apart_target, &host).unwrap();
    let (apart_pred, apart_loss) = (values(&mut apart, 30, 9), values(&mut apart, 1, 0));
    apart
        .mse_backward(
            apart_pred,
            apart_target,
            Activation::Tanh,
            30,
            apart_grad,
            apart_loss,
        )
        .unwrap();
    assert_eq!(
        read(&mut shared, grad),
        read(&mut apart, apart_grad),
        "mse gradient"
    );
    assert_eq!(
        read(&mut shared, loss),
        read(&mut apart, apart_loss),
        "mse loss"
    );
}

/// An input that overlaps the output is refused (the trait rules it out), not read half-written.
#[test]
#[should_panic(expected = "overlaps output")]
fn an_input_overlapping_the_output_panics() {
    let mut be = CpuBackend::<f32>::new();
    let r = values(&mut be, 12, 1);
    be.act_backward(r.sub(0, 8), r.sub(4, 8), Activation::Tanh)
        .unwrap();
}

/// Column sums split across threads are the sums of each column's rows in row order, as on one thread.
#[test]
fn col_sum_split_across_threads_sums_each_column_in_row_order() {
    let mut be = CpuBackend::<f32>::new();
    for (rows, cols) in [(256, 784), (300, 130), (3, 5)] {
        let m = values(&mut be, rows * cols, 7);
        let out = Region::whole(be.alloc(cols).unwrap(), cols);
        be.col_sum_on(m, cols, out, 2);
        let mut host = vec![0.0f32; rows * cols];
        be.download(m, &mut host).unwrap();
        let mut want = vec![0.0f32; cols];
        for row in host.chunks_exact(cols) {
            for (w, &x) in want.iter_mut().zip(row) {
                *w += x;
            }
        }
        let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
        assert_eq!(read(&mut be, out), want, "{rows}×{cols}");
    }
}

/// A pair run side by side on two threads gives the bits of the two run in turn; a pair that is too
/// large, too small or dependent (the second reads the first's output) runs in turn.
#[test]
fn a_pair_side_by_side_equals_the_two_in_turn() {
    let (n, t) = (Trans::N, Trans::T);
    // (first, second, expected side by side): the backward pass's pairs of the workloads.
    let cases = [
        // mnist's 256↔64 layer: the tied gradient [h; dz_dec]ᵀ·[dz_enc; g] (depth 2·256) with
        // dh = dz·Wᵀ.
        (
            Gemm::new(t, n, 256, 64, 512),
            Gemm::new(n, t, 256, 256, 64),
            true,
        ),
        // The same shapes at depth 256, with β = 1 and the other orientations; a smaller pair, and an odd
        // shape with a scaled product.
        (
            Gemm::new(t, n, 256, 64, 256).accumulate(),
            Gemm::new(n, n, 256, 64, 256),
            true,
        ),
        (
            Gemm::new(t, n, 64, 32, 256),
            Gemm::new(n, n, 256, 32, 64),
            true,
        ),
        (
            Gemm::new(t, n, 77, 45, 129).scaled(0.5),
            Gemm::new(n, t, 129, 77, 45),
            true,
        ),
        // Too small (digits' 32↔8 layer) and too large (mnist's 784↔256 layer): in turn.
        (
            Gemm::new(t, n, 32, 8, 512),
            Gemm::new(n, t, 256, 32, 8),
            false,
        ),
        (
            Gemm::new(t, n, 784, 256, 512),
            Gemm::new(n, t, 256, 784, 256),
            false,
        ),
    ];
    for (i, &(g1, g2, expected)) in cases.iter().enumerate() {
        let seed = 10 * i as u32;
        let mut paired = CpuBackend::<f32>::new();
        let (p1, p2) = (
            operands(&mut paired, g1, seed),
            operands(&mut paired, g2, seed + 5),
        );
        let side_by_side = paired.gemm_pair_on(p1, p2, 2).unwrap();
        assert_eq!(side_by_side, expected, "case {i}: side by side");
        let mut in_turn = CpuBackend::<f32>::new();
        let (q1, q2) = (
            operands(&mut in_turn, g1, seed),
            operands(&mut in_turn, g2, seed + 5),
        );
        in_turn.gemm(q1.0, q1.1, q1.2, q1.3).unwrap();
        in_turn.gemm(q2.0, q2.1, q2.2, q2.3).unwrap();
        assert_eq!(
            read(&mut paired, p1.3),
            read(&mut in_turn, q1.3),
            "case {i}: first"
        );
        assert_eq!(
            read(&mut paired, p2.3),
            read(&mut in_turn, q2.3),
            "case {i}: second"
        );
    }
    // Dependent: the second product reads the first's output, which must be written first.
    let g1 = Gemm::new(n, n, 64, 64, 64);
    let mut paired = CpuBackend::<f32>::new();
    let p1 = operands(&mut paired, g1, 1);
    let b2 = values(&mut paired, 64 * 64, 9);
    let c2 = values(&mut paired, 64 * 64, 10);
    let p2 = (Gemm::new(n, n, 64, 64, 64), p1.3, b2, c2);
    assert!(
        !paired.gemm_pair_on(p1, p2, 2).unwrap(),
        "dependent: in turn"
    );
    let mut in_turn = CpuBackend::<f32>::new();
    let q1 = operands(&mut in_turn, g1, 1);
    let b2 = values(&mut in_turn, 64 * 64, 9);
    let c2 = values(&mut in_turn, 64 * 64, 10);
    in_turn.gemm(q1.0, q1.1, q1.2, q1.3).unwrap();
    in_turn
        .gemm(Gemm::new(n, n, 64, 64, 64), q1.3, b2, c2)
        .unwrap();
    assert_eq!(
        read(&mut paired, p2.3),
        read(&mut in_turn, c2),
        "dependent: second"
    );
}
