//! The noise of a denoising autoencoder, cell by cell: the CPU twin of the generator in `kernels/noise.cu`
//! (whose op, `corrupt_rows`, is twinned in `cpu/noise.rs`; a data set kept on the host is corrupted with
//! [`corrupt_row`] here too). The CPU, the GPU and a set kept on the host draw the same noise, bit for bit.
//!
//! The generator is counter-based: the draws of a cell are a function of the seed, the epoch, the cell's row
//! in the training set and its column, and of nothing else (not of the batch, the step or the device). So a
//! resumed run draws again what the interrupted one drew, a recorded CUDA graph replays with the key of the
//! epoch it runs in (the key is read from backend memory), and the noise of a row does not depend on where
//! the epoch's shuffle put it. The function is Philox4x32-10 (Salmon et al., "Parallel random numbers: as
//! easy as 1, 2, 3", SC 2011; checked against Random123's known answers below): key = the seed, counter =
//! (column, row, epoch, block). Block 0 decides swap noise (word 0), picks the donor row (word 1) and decides
//! mask noise (word 2); block 1, drawn only for Gaussian noise, gives its two uniforms.
//!
//! A cell's noise, in this order:
//! 1. swap, with probability `swap`: the value becomes the same column's value in another row of the
//!    training set, drawn uniformly from the others (a set of one row has no other: nothing is swapped);
//! 2. mask, with probability `mask`: the value becomes the column's fill value (0, in the model's normalized
//!    units, until missing-value imputation gives a better one: `Network::set_mask_fill`);
//! 3. Gaussian: `sigma·z` is added, z standard normal, to every cell (swapped and masked ones too).
//!
//! Probabilities are resolved to 2⁻²⁴: a cell is hit when the top 24 bits of its word are below
//! `round(p·2²⁴)`.
//!
//! Bit for bit on every device: z comes from Box–Muller, `√(−2 ln u₁)·cos(2π u₂)`, with the logarithm and
//! the cosine computed here from IEEE single-precision `+ − × ÷ √` alone (libm's `logf`/`cosf` and CUDA's
//! differ in the last bit), each operation rounded once (the kernel keeps nvcc from fusing a product into a
//! sum with `__fmul_rn`). The cosine of a uniform angle is drawn as a random sign times the cosine of a
//! uniform angle in [0, π/2), the same distribution, which keeps the polynomials on [0, π/4] where a few
//! terms are accurate to an ulp or two. u₁ lies in (0, 1] on a grid of 2⁻²⁴, so |z| ≤ 5.77: the noise has
//! no tails beyond 5.77σ (a normal variate passes that once in 10⁸ draws).

use crate::real::Real;

/// Philox4x32's multipliers and key increments (Random123's PHILOX_M4x32_0/1 and PHILOX_W32_0/1).
const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;
/// Rounds: 10, Random123's default and the count its known answers are for.
const PHILOX_ROUNDS: usize = 10;

/// Philox4x32-10 of `counter` under `key`: four independent uniform 32-bit words.
#[inline(always)]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..PHILOX_ROUNDS {
        if round > 0 {
            k0 = k0.wrapping_add(PHILOX_W0);
            k1 = k1.wrapping_add(PHILOX_W1);
        }
        let p0 = u64::from(PHILOX_M0) * u64::from(c0);
        let p1 = u64::from(PHILOX_M1) * u64::from(c2);
        (c0, c1, c2, c3) = (
            (p1 >> 32) as u32 ^ c1 ^ k0,
            p1 as u32,
            (p0 >> 32) as u32 ^ c3 ^ k1,
            p0 as u32,
        );
    }
    [c0, c1, c2, c3]
}

/// The key of epoch `epoch` of a run seeded with `seed`, as the backend holds it: `[seed_lo, seed_hi,
/// epoch]` (the epoch wraps at 2³², a run's key words repeat after four billion epochs).
pub fn key_words(seed: u64, epoch: u64) -> [u32; 3] {
    [seed as u32, (seed >> 32) as u32, epoch as u32]
}

/// What the noise op needs besides its buffers, as `corrupt_rows` in kernels/noise.cu receives it (by
/// value: `KernelNoiseConfig` in cuda/launch.rs).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NoiseParams {
    /// Swap a cell when the top 24 bits of its word are below this: `round(p·2²⁴)`, 0 for none.
    pub swap_below: u32,
    /// Mask a cell likewise.
    pub mask_below: u32,
    /// The standard deviation of the Gaussian noise added to every cell (0: none).
    pub sigma: f32,
}

/// `round(p·2²⁴)` for a probability p: the threshold a cell's 24 bits are compared with.
pub fn threshold(p: f32) -> u32 {
    (f64::from(p.clamp(0.0, 1.0)) * f64::from(1u32 << 24)).round() as u32
}

impl NoiseParams {
    /// Whether these parameters change nothing.
    pub fn is_off(&self) -> bool {
        self.swap_below == 0 && self.mask_below == 0 && self.sigma == 0.0
    }
}

/// What the generator drew for one cell (before the values it reads).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// The row whose value the cell takes (swap noise), if it is swapped.
    pub donor: Option<u32>,
    /// Whether the cell takes its column's fill value (mask noise).
    pub masked: bool,
    /// The standard normal variate of the Gaussian noise (0 without it).
    pub z: f32,
}

/// The draws of cell (`row`, `col`) of the training set of `donor_rows` rows, under `key` ([`key_words`]).
#[inline(always)]
pub fn draw(row: u32, col: u32, key: &[u32; 3], params: &NoiseParams, donor_rows: u32) -> Draw {
    let seed = [key[0], key[1]];
    let [swap_word, donor_word, mask_word, _] = philox4x32_10([col, row, key[2], 0], seed);
    let z = if params.sigma != 0.0 {
        let [u, angle, _, _] = philox4x32_10([col, row, key[2], 1], seed);
        standard_normal(u, angle)
    } else {
        0.0
    };
    decide(
        [swap_word, donor_word, mask_word],
        z,
        row,
        params,
        donor_rows,
    )
}

/// A cell's draws from the words of its block 0 and its normal variate.
#[inline(always)]
fn decide(words: [u32; 3], z: f32, row: u32, params: &NoiseParams, donor_rows: u32) -> Draw {
    let [swap_word, donor_word, mask_word] = words;
    let donor = ((swap_word >> 8) < params.swap_below && donor_rows > 1).then(|| {
        // Uniform over the other rows: one of donor_rows − 1, skipping `row` itself.
        let d = ((u64::from(donor_word) * u64::from(donor_rows - 1)) >> 32) as u32;
        d + u32::from(d >= row)
    });
    let masked = (mask_word >> 8) < params.mask_below;
    Draw { donor, masked, z }
}

/// Row `row` of the training set (`clean`, one value per column) with its noise, into `out`: the same
/// values `corrupt_rows` writes on any backend (each cell is [`draw`]'s). `donor(d, c)` reads column c of
/// training row d; `fill` holds each column's mask value.
#[allow(clippy::too_many_arguments)] // the op's arguments, one row at a time
#[inline]
pub fn corrupt_row<T: Real>(
    clean: &[T],
    out: &mut [T],
    row: u32,
    key: &[u32; 3],
    params: &NoiseParams,
    donor_rows: u32,
    donor: impl Fn(u32, usize) -> T,
    fill: &[T],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2 (checked).
        return unsafe { corrupt_row_avx2(clean, out, row, key, params, donor_rows, donor, fill) };
    }
    corrupt_row_lanes(clean, out, row, key, params, donor_rows, donor, fill)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn corrupt_row_avx2<T: Real>(
    clean: &[T],
    out: &mut [T],
    row: u32,
    key: &[u32; 3],
    params: &NoiseParams,
    donor_rows: u32,
    donor: impl Fn(u32, usize) -> T,
    fill: &[T],
) {
    corrupt_row_lanes(clean, out, row, key, params, donor_rows, donor, fill)
}

/// Columns drawn together by `corrupt_row`: the Philox rounds and the polynomials run on this many lanes at
/// once, loops the compiler turns into vector instructions. Each lane does the scalar functions' operations,
/// so the values are theirs (tested).
const LANES: usize = 16;

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn corrupt_row_lanes<T: Real>(
    clean: &[T],
    out: &mut [T],
    row: u32,
    key: &[u32; 3],
    params: &NoiseParams,
    donor_rows: u32,
    donor: impl Fn(u32, usize) -> T,
    fill: &[T],
) {
    let sigma = T::from_f32(params.sigma);
    let seed = [key[0], key[1]];
    for (chunk, (outs, xs)) in out.chunks_mut(LANES).zip(clean.chunks(LANES)).enumerate() {
        let first = (chunk * LANES) as u32;
        let [swap_words, donor_words, mask_words, _] = philox_lanes(first, row, key[2], 0, seed);
        let z = if params.sigma != 0.0 {
            let [u, angle, _, _] = philox_lanes(first, row, key[2], 1, seed);
            standard_normal_lanes(&u, &angle)
        } else {
            [0.0; LANES]
        };
        for (l, (o, &x)) in outs.iter_mut().zip(xs).enumerate() {
            let c = chunk * LANES + l;
            let words = [swap_words[l], donor_words[l], mask_words[l]];
            let d = decide(words, z[l], row, params, donor_rows);
            let mut v = match d.donor {
                Some(r) => donor(r, c),
                None => x,
            };
            if d.masked {
                v = fill[c];
            }
            if params.sigma != 0.0 {
                v += sigma * T::from_f32(d.z);
            }
            *o = v;
        }
    }
}

/// [`philox4x32_10`] of the counters (first + l, row, epoch, block) for every lane l.
#[inline(always)]
fn philox_lanes(first: u32, row: u32, epoch: u32, block: u32, key: [u32; 2]) -> [[u32; LANES]; 4] {
    let mut c0: [u32; LANES] = std::array::from_fn(|l| first.wrapping_add(l as u32));
    let (mut c1, mut c2, mut c3) = ([row; LANES], [epoch; LANES], [block; LANES]);
    let [mut k0, mut k1] = key;
    for round in 0..PHILOX_ROUNDS {
        if round > 0 {
            k0 = k0.wrapping_add(PHILOX_W0);
            k1 = k1.wrapping_add(PHILOX_W1);
        }
        for l in 0..LANES {
            let p0 = u64::from(PHILOX_M0) * u64::from(c0[l]);
            let p1 = u64::from(PHILOX_M1) * u64::from(c2[l]);
            (c0[l], c1[l], c2[l], c3[l]) = (
                (p1 >> 32) as u32 ^ c1[l] ^ k0,
                p1 as u32,
                (p0 >> 32) as u32 ^ c3[l] ^ k1,
                p0 as u32,
            );
        }
    }
    [c0, c1, c2, c3]
}

/// [`standard_normal`] of every lane, stage by stage and without branches: both polynomials are computed
/// and the one `standard_normal` would take is kept.
#[inline(always)]
fn standard_normal_lanes(u: &[u32; LANES], angle: &[u32; LANES]) -> [f32; LANES] {
    let mut ln = [0.0f32; LANES];
    for l in 0..LANES {
        ln[l] = ln_unit_select(((u[l] >> 8) + 1) as f32 * TWO_POW_M24);
    }
    let mut z = [0.0f32; LANES];
    for l in 0..LANES {
        let radius = (-2.0 * ln[l]).sqrt();
        let v = (angle[l] & 0x007F_FFFF) as f32 * TWO_POW_M23;
        let c = cos_eighth(v * HALF_PI);
        let s = sin_eighth((1.0 - v) * HALF_PI);
        let r = radius * if v < 0.5 { c } else { s };
        z[l] = if angle[l] >> 31 == 1 { -r } else { r };
    }
    z
}

/// [`ln_unit`] with its branch as a selection (the same operations on the value it keeps).
#[inline(always)]
fn ln_unit_select(x: f32) -> f32 {
    let bits = x.to_bits();
    let big = bits & 0x007F_FFFF > 0x0035_04F3;
    let m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F80_0000);
    let m = if big { m * 0.5 } else { m };
    let e = ((bits >> 23) & 0xFF) as i32 - 127 + i32::from(big);
    ln_series(m, e)
}

/// 2⁻²⁴ and 2⁻²³, exact.
const TWO_POW_M24: f32 = 1.0 / 16_777_216.0;
const TWO_POW_M23: f32 = 1.0 / 8_388_608.0;
/// π/2 rounded to f32.
const HALF_PI: f32 = std::f32::consts::FRAC_PI_2;

/// A standard normal variate from two uniform words (Box–Muller, see the module doc): `u` gives u₁ =
/// (top 24 bits + 1)·2⁻²⁴ in (0, 1], `angle` a sign (its top bit) and v = (low 23 bits)·2⁻²³ in [0, 1).
#[inline(always)]
pub fn standard_normal(u: u32, angle: u32) -> f32 {
    let u1 = ((u >> 8) + 1) as f32 * TWO_POW_M24;
    let radius = (-2.0 * ln_unit(u1)).sqrt();
    let v = (angle & 0x007F_FFFF) as f32 * TWO_POW_M23;
    // cos(v·π/2) on [0, π/4] directly, on (π/4, π/2) as sin((1 − v)·π/2) (1 − v is exact).
    let c = if v < 0.5 {
        cos_eighth(v * HALF_PI)
    } else {
        sin_eighth((1.0 - v) * HALF_PI)
    };
    let z = radius * c;
    if angle >> 31 == 1 {
        -z
    } else {
        z
    }
}

/// ln 2 in two parts: `LN2_HI` has 16 significant bits, so e·LN2_HI is exact for any exponent here.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// ln x for a normal positive x ≤ 1 (u₁ of `standard_normal`), from `+ − × ÷` alone: x = m·2ᵉ with m in
/// [√½, √2), ln m = 2s(1 + s²/3 + s⁴/5 + s⁶/7 + s⁸/9) with s = (m − 1)/(m + 1), |s| ≤ 0.172 (the series'
/// next term is below 10⁻⁹). Within 2 ulp of the true value (tested).
#[inline(always)]
pub fn ln_unit(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xFF) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F80_0000);
    if bits & 0x007F_FFFF > 0x0035_04F3 {
        // m > √2: halve it (exact).
        m *= 0.5;
        e += 1;
    }
    ln_series(m, e)
}

/// e·ln 2 + ln m for m in [√½, √2] (see `ln_unit`).
#[inline(always)]
fn ln_series(m: f32, e: i32) -> f32 {
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut p = 0.111_111_11;
    p = p * s2 + 0.142_857_15;
    p = p * s2 + 0.2;
    p = p * s2 + 0.333_333_34;
    p = p * s2 + 1.0;
    let ln_m = 2.0 * s * p;
    let e = e as f32;
    e * LN2_HI + (e * LN2_LO + ln_m)
}

/// cos x for x in [0, π/4]: Taylor to x¹⁰ (the next term is below 2·10⁻¹⁰).
#[inline(always)]
pub fn cos_eighth(x: f32) -> f32 {
    let x2 = x * x;
    let mut p = -2.755_732e-7;
    p = p * x2 + 2.480_158_8e-5;
    p = p * x2 - 1.388_888_9e-3;
    p = p * x2 + 4.166_666_8e-2;
    p = p * x2 - 0.5;
    p * x2 + 1.0
}

/// sin x for x in [0, π/4]: Taylor to x⁹ (the next term is below 2·10⁻⁹).
#[inline(always)]
pub fn sin_eighth(x: f32) -> f32 {
    let x2 = x * x;
    let mut p = 2.755_731_9e-6;
    p = p * x2 - 1.984_127e-4;
    p = p * x2 + 8.333_334e-3;
    p = p * x2 - 1.666_666_7e-1;
    p = p * x2 + 1.0;
    x * p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's known answers for Philox4x32-10 (its tests/kat_vectors): counter, key, output.
    #[test]
    fn philox_gives_random123s_known_answers() {
        let cases = [
            (
                [0u32; 4],
                [0u32; 2],
                [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
            ),
            (
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0],
                [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
            ),
        ];
        for (counter, key, want) in cases {
            assert_eq!(philox4x32_10(counter, key), want, "counter {counter:x?}");
        }
    }

    /// Distance in ulps between two floats of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn the_logarithm_is_within_two_ulp_on_the_whole_grid_of_u1() {
        // Every 97th point of the 2²⁴ values u₁ takes, and both ends and both sides of √½ and √2 scaled.
        let mut worst = (0u32, 0.0f32);
        let points = (1u32..=1 << 24).step_by(97).chain([
            1,
            2,
            3,
            1 << 23,
            (1 << 24) - 1,
            1 << 24,
            11_863_283,
            11_863_284,
        ]);
        for k in points {
            let x = k as f32 * TWO_POW_M24;
            let want = (x as f64).ln() as f32;
            let got = ln_unit(x);
            let d = if x == 1.0 {
                got.to_bits() & 0x7FFF_FFFF // ±0 wanted
            } else {
                ulps(got, want)
            };
            if d > worst.0 {
                worst = (d, x);
            }
        }
        assert!(worst.0 <= 2, "ln off by {} ulp at {}", worst.0, worst.1);
    }

    #[test]
    fn the_cosine_and_sine_are_within_two_ulp_on_their_eighth_of_a_turn() {
        for k in 0..=(1 << 22) {
            let v = k as f32 * TWO_POW_M23; // [0, 0.5]
            let x = v * HALF_PI;
            let (c, s) = ((x as f64).cos() as f32, (x as f64).sin() as f32);
            assert!(
                ulps(cos_eighth(x), c) <= 2,
                "cos {x}: {} vs {c}",
                cos_eighth(x)
            );
            if x > 0.0 {
                assert!(
                    ulps(sin_eighth(x), s) <= 2,
                    "sin {x}: {} vs {s}",
                    sin_eighth(x)
                );
            }
        }
    }

    #[test]
    fn a_normal_variate_is_box_muller_to_a_few_ulp() {
        // Against the same formula in f64 with the library's ln and cos.
        for i in 0..200_000u32 {
            let [u, angle, _, _] = philox4x32_10([i, 7, 3, 1], [42, 0]);
            let z = standard_normal(u, angle);
            let u1 = ((u >> 8) + 1) as f64 / 16_777_216.0;
            let v = (angle & 0x007F_FFFF) as f64 / 8_388_608.0;
            let sign = if angle >> 31 == 1 { -1.0 } else { 1.0 };
            let want = sign * (-2.0 * u1.ln()).sqrt() * (v * std::f64::consts::FRAC_PI_2).cos();
            assert!(
                (z as f64 - want).abs() <= 4e-7 * want.abs().max(1e-3) + 1e-9,
                "u {u:#x}, angle {angle:#x}: {z} vs {want}"
            );
        }
    }

    #[test]
    fn a_swapped_cell_takes_another_row() {
        let params = NoiseParams {
            swap_below: threshold(1.0),
            mask_below: 0,
            sigma: 0.0,
        };
        let key = key_words(5, 1);
        for rows in [2u32, 3, 10] {
            for row in 0..rows {
                for col in 0..50 {
                    let d = draw(row, col, &key, &params, rows);
                    let donor = d.donor.expect("p = 1 swaps every cell");
                    assert!(
                        donor < rows && donor != row,
                        "{rows} rows: {row} took {donor}"
                    );
                }
            }
        }
        // One row has no other: nothing is swapped.
        assert_eq!(draw(0, 0, &key, &params, 1).donor, None);
    }

    /// `corrupt_row` draws its lanes together: the same values as `draw`, cell by cell, over rows whose
    /// width is not a multiple of the lanes, every noise on (and with AVX2 where the CPU has it).
    #[test]
    fn the_lanes_draw_what_draw_draws() {
        let params = NoiseParams {
            swap_below: threshold(0.3),
            mask_below: threshold(0.2),
            sigma: 0.7,
        };
        let cols = 3 * LANES + 5;
        let donor_rows = 1000u32;
        for row in [0u32, 1, 999, 123_456] {
            for key in [key_words(42, 1), key_words(u64::MAX, 77)] {
                let clean: Vec<f32> = (0..cols).map(|c| c as f32).collect();
                let fill: Vec<f32> = (0..cols).map(|c| -(c as f32)).collect();
                let donor = |d: u32, c: usize| (d as usize * 1000 + c) as f32 + 0.5;
                let mut out = vec![0.0f32; cols];
                corrupt_row(
                    &clean, &mut out, row, &key, &params, donor_rows, donor, &fill,
                );
                for c in 0..cols {
                    let d = draw(row, c as u32, &key, &params, donor_rows);
                    let mut v = d.donor.map_or(clean[c], |r| donor(r, c));
                    if d.masked {
                        v = fill[c];
                    }
                    v += params.sigma * d.z;
                    assert_eq!(out[c].to_bits(), v.to_bits(), "row {row}, column {c}");
                }
            }
        }
    }

    #[test]
    fn thresholds_cover_the_whole_range() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(1.0), 1 << 24);
        assert_eq!(threshold(0.5), 1 << 23);
        let off = NoiseParams::default();
        assert!(off.is_off());
        let d = draw(3, 4, &key_words(1, 1), &off, 100);
        assert_eq!((d.donor, d.masked, d.z), (None, false, 0.0));
    }
}
