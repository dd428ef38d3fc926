//! The noise op (`Backend::corrupt_rows`, src/backend/noise.rs) as statistics: swap noise replaces the share of
//! cells it says, each with the same column's value from another row drawn uniformly; mask noise likewise;
//! Gaussian noise is normal at the stated sigma; the noise of a cell depends on its row, not on where the batch
//! put it, and changes with the epoch. That the GPU draws the same bits is tests/gpu_kernels.rs and
//! tests/kernels_on_cpu.rs.
//!
//! Every bound is stated with its level; the generator is deterministic, so a test that passes passes always.

use tiedae::backend::noise::{key_words, threshold};
use tiedae::backend::{Backend, CpuBackend, Donors, IdxRegion, NoiseParams, NoiseSource, Region};

/// A training set where every value names its cell: column c of row r holds c·100 000 + r (exact in f32).
fn named_cells(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows)
        .flat_map(|r| (0..cols).map(move |c| (c * 100_000 + r) as f32))
        .collect()
}

/// corrupt_rows of the rows `idx` of `data` (rows × cols, also the donors) on the CPU backend.
fn corrupt(
    data: &[f32],
    cols: usize,
    idx: &[u32],
    fill: &[f32],
    key: [u32; 3],
    params: NoiseParams,
) -> Vec<f32> {
    let mut cpu = CpuBackend::<f32>::new();
    let mut put = |v: &[f32]| {
        let r = Region::whole(cpu.alloc(v.len()).unwrap(), v.len());
        cpu.upload(r, v).unwrap();
        r
    };
    let clean: Vec<f32> = idx
        .iter()
        .flat_map(|&r| data[r as usize * cols..(r as usize + 1) * cols].to_vec())
        .collect();
    let (d, c, f, out) = (
        put(data),
        put(&clean),
        put(fill),
        put(&vec![f32::NAN; clean.len()]),
    );
    let ib = cpu.alloc_indices(idx.len()).unwrap();
    cpu.upload_indices(ib, 0, idx).unwrap();
    let kb = cpu.alloc_indices(3).unwrap();
    cpu.upload_indices(kb, 0, &key).unwrap();
    let source = NoiseSource {
        donors: Donors::F32(d),
        donor_rows: data.len() / cols,
        fill: f,
        key: IdxRegion {
            buf: kb,
            offset: 0,
            len: 3,
        },
        params,
    };
    let batch = IdxRegion {
        buf: ib,
        offset: 0,
        len: idx.len(),
    };
    cpu.corrupt_rows(c, cols, batch, source, out).unwrap();
    let mut got = vec![0.0; clean.len()];
    cpu.download(out, &mut got).unwrap();
    got
}

/// A permutation of 0..rows (not the identity): batch position and training row differ.
fn scrambled(rows: usize) -> Vec<u32> {
    (0..rows).map(|i| ((i * 7919 + 11) % rows) as u32).collect()
}

/// |count − n·p| ≤ 5 standard deviations of a binomial(n, p): false with probability below 6·10⁻⁷.
fn assert_binomial(what: &str, count: usize, n: usize, p: f64) {
    let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
    assert!(
        (count as f64 - mean).abs() <= 5.0 * sd,
        "{what}: {count} of {n}, expected {mean:.0} ± {:.0} (5 sd)",
        5.0 * sd
    );
}

/// The χ² value that `df` degrees of freedom exceed with probability 1e-4 (Wilson and Hilferty).
fn chi2_limit(df: f64) -> f64 {
    let c = 2.0 / (9.0 * df);
    df * (1.0 - c + 3.719 * c.sqrt()).powi(3)
}

#[test]
fn swap_noise_replaces_a_binomial_share_of_cells_with_the_same_columns_values_from_other_rows() {
    let (rows, cols) = (3000, 40);
    let data = named_cells(rows, cols);
    let idx = scrambled(rows);
    let fill = vec![-1.0; cols];
    for p in [0.15f32, 0.5] {
        let params = NoiseParams {
            swap_below: threshold(p),
            ..Default::default()
        };
        let out = corrupt(&data, cols, &idx, &fill, key_words(42, 3), params);
        let mut swapped = 0;
        let mut donors = vec![0u32; rows];
        for (b, &row) in idx.iter().enumerate() {
            for c in 0..cols {
                let v = out[b * cols + c] as usize;
                let (col, donor) = (v / 100_000, v % 100_000);
                assert_eq!(col, c, "p {p}: cell ({row}, {c}) took column {col}'s value");
                if donor != row as usize {
                    swapped += 1;
                    donors[donor] += 1;
                }
            }
        }
        // Every swap takes another row's value, so the share changed is the swap probability itself.
        assert_binomial(&format!("swap:{p}"), swapped, rows * cols, p as f64);
        // Donors are uniform over the rows: χ² at a level of 1e-4.
        let expected = swapped as f64 / rows as f64;
        let chi2: f64 = donors
            .iter()
            .map(|&k| (k as f64 - expected).powi(2) / expected)
            .sum();
        let limit = chi2_limit((rows - 1) as f64);
        assert!(chi2 < limit, "swap:{p}: donors χ² {chi2:.0} ≥ {limit:.0}");
    }
}

#[test]
fn swap_noise_on_a_set_of_two_rows_takes_the_other_row() {
    let data = named_cells(2, 300);
    let params = NoiseParams {
        swap_below: threshold(1.0),
        ..Default::default()
    };
    let out = corrupt(&data, 300, &[1, 0], &[0.0; 300], key_words(1, 1), params);
    let want: Vec<f32> = data[..300].iter().chain(&data[300..]).copied().collect();
    assert_eq!(out, want, "row 1 becomes row 0 and row 0 becomes row 1");
}

#[test]
fn mask_noise_fills_a_binomial_share_and_comes_after_swap() {
    let (rows, cols) = (2000, 30);
    let data = named_cells(rows, cols);
    let idx = scrambled(rows);
    let fill: Vec<f32> = (0..cols).map(|c| -(c as f32) - 1.0).collect();
    let mask_only = NoiseParams {
        mask_below: threshold(0.2),
        ..Default::default()
    };
    let out = corrupt(&data, cols, &idx, &fill, key_words(7, 1), mask_only);
    let masked = out.iter().filter(|&&v| v < 0.0).count();
    assert_binomial("mask:0.2", masked, rows * cols, 0.2);
    for (i, &v) in out.iter().enumerate() {
        let (b, c) = (i / cols, i % cols);
        let clean = data[idx[b] as usize * cols + c];
        assert!(v == clean || v == fill[c], "cell {i}: {v}");
    }
    // Both: a masked cell holds its fill whatever the swap drew, and the masked cells are the same ones.
    let both = NoiseParams {
        swap_below: threshold(0.3),
        ..mask_only
    };
    let out2 = corrupt(&data, cols, &idx, &fill, key_words(7, 1), both);
    for (i, (&a, &b)) in out.iter().zip(&out2).enumerate() {
        assert_eq!(a < 0.0, b < 0.0, "cell {i}: masked in one run only");
        if a < 0.0 {
            assert_eq!(a, b);
        }
    }
    let swapped = out2
        .iter()
        .enumerate()
        .filter(|&(i, &v)| v >= 0.0 && v != data[idx[i / cols] as usize * cols + i % cols])
        .count();
    // Swapped and not masked: 0.3 · 0.8 of the cells.
    assert_binomial("swap:0.3 then mask:0.2", swapped, rows * cols, 0.3 * 0.8);
}

/// Φ, the standard normal CDF, from erfc (Numerical Recipes' Chebyshev fit, fractional error < 1.2e-7: far
/// below the Kolmogorov–Smirnov bound used here).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

/// The Kolmogorov–Smirnov statistic of `sorted` against N(0, sigma²).
fn ks_statistic(sorted: &[f64], sigma: f64) -> f64 {
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = normal_cdf(x / sigma);
            (f - i as f64 / n).max((i + 1) as f64 / n - f)
        })
        .fold(0.0, f64::max)
}

#[test]
fn gaussian_noise_is_normal_at_the_stated_sigma() {
    let (rows, cols, sigma) = (2000usize, 100usize, 0.3f32);
    let data = vec![0.0f32; rows * cols];
    let params = NoiseParams {
        sigma,
        ..Default::default()
    };
    let out = corrupt(
        &data,
        cols,
        &scrambled(rows),
        &[0.0; 100],
        key_words(9, 4),
        params,
    );
    let mut x: Vec<f64> = out.iter().map(|&v| v as f64).collect();
    let n = x.len() as f64;
    let s = sigma as f64;
    // Mean and variance within 5 standard errors (a variance's is σ²·√(2/n) for a normal).
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    assert!(mean.abs() <= 5.0 * s / n.sqrt(), "mean {mean}");
    assert!(
        (var - s * s).abs() <= 5.0 * s * s * (2.0 / n).sqrt(),
        "variance {var} for sigma² {}",
        s * s
    );
    // Kolmogorov–Smirnov against N(0, σ²) at a level of 0.001: D ≤ 1.9495/√n.
    x.sort_by(f64::total_cmp);
    let critical = 1.9495 / n.sqrt();
    let d = ks_statistic(&x, s);
    assert!(d <= critical, "KS D = {d:.5} > {critical:.5}");
    // The test has teeth: the same draws fail it for a sigma 3% off.
    let off = ks_statistic(&x, s * 1.03);
    assert!(off > critical, "KS cannot tell sigma 3% off: D = {off:.5}");
    eprintln!(
        "{} draws at sigma {s}: mean {mean:.2e}, variance {var:.6}, KS D {d:.5} (critical {critical:.5}; \
         {off:.5} against sigma·1.03)",
        x.len()
    );
    // Tails: |z| > 3 in 0.27% of draws (a binomial bound), and none past 5.8σ (the generator's limit).
    let beyond3 = x.iter().filter(|&&v| v.abs() > 3.0 * s).count();
    assert_binomial("|z| > 3", beyond3, x.len(), 2.0 * (1.0 - normal_cdf(3.0)));
    assert!(x.iter().all(|v| v.abs() <= 5.78 * s), "a draw past 5.78σ");
}

#[test]
fn a_cells_noise_depends_on_its_row_and_the_epoch_not_on_the_batch() {
    let (rows, cols) = (500, 12);
    let data = named_cells(rows, cols);
    let fill = vec![0.5; cols];
    let params = NoiseParams {
        swap_below: threshold(0.3),
        mask_below: threshold(0.1),
        sigma: 0.25,
    };
    let key = key_words(42, 2);
    let in_order: Vec<u32> = (0..rows as u32).collect();
    let by_row = corrupt(&data, cols, &in_order, &fill, key, params);
    // The same rows in another order, and a batch of a few of them: each row gets the same noise.
    let idx = scrambled(rows);
    let shuffled = corrupt(&data, cols, &idx, &fill, key, params);
    for (b, &r) in idx.iter().enumerate() {
        let r = r as usize;
        assert_eq!(
            shuffled[b * cols..(b + 1) * cols],
            by_row[r * cols..(r + 1) * cols]
        );
    }
    let few = corrupt(&data, cols, &[17, 3], &fill, key, params);
    assert_eq!(few[..cols], by_row[17 * cols..18 * cols]);
    // Another epoch, another seed: other noise.
    let next_epoch = corrupt(&data, cols, &in_order, &fill, key_words(42, 3), params);
    let other_seed = corrupt(&data, cols, &in_order, &fill, key_words(43, 2), params);
    for other in [next_epoch, other_seed] {
        let same = other.iter().zip(&by_row).filter(|(a, b)| a == b).count();
        assert!(
            same < by_row.len() / 10,
            "{same} of {} cells alike",
            by_row.len()
        );
    }
}
