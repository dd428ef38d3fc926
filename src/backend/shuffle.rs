//! The row order of a training epoch, computed position by position: position `i` of the epoch reads row
//! `shuffled_row(i, rows, …)`. This is the CPU twin of `shuffle_order` in kernels/data.cu. That kernel
//! writes the same order straight into the GPU's order buffer, so no order is copied up at each epoch, and a
//! recorded CUDA graph reads the new order where it already looks. The CPU, the GPU and a data set kept on
//! the host all get the same order from the same seed.
//!
//! The order is a keyed bijection of `0..rows`. It is built from a Feistel network over the bits that hold
//! `rows - 1` (see `Feistel`): each of `ROUNDS` rounds swaps the two parts and XORs one of them with a hash
//! of the other and the round key. Any such network is a bijection of `0..2^bits`. Applying it again while
//! the value is `≥ rows` ("cycle walking") restricts it to a bijection of `0..rows`, because it follows the
//! cycle of `i` to the next member below `rows`. From 128 rows up `2^bits < 2·rows`, so that takes fewer
//! than 2 applications on average. Eight rounds of a full-avalanche hash, twice Luby and Rackoff's four,
//! leave no pattern the tests below can find in where rows land or in which rows end up side by side.

/// Feistel rounds per application.
pub const ROUNDS: u32 = 8;

/// The fewest bits the network works on. With parts of one or two bits a Feistel network reaches only a
/// small, uneven family of permutations: with 3 bits for 5 rows, 400 000 epochs put some rows at position 0
/// far more often than others (χ² 314 for 4 degrees of freedom). With 8 bits (parts of 4) the same test
/// finds no bias. Below 128 rows this costs more walking, on a handful of rows.
pub const MIN_BITS: u32 = 8;

/// SplitMix64's finalizer: a bijective 64-bit mix.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Chris Wellons' "lowbias32": a full-avalanche 32-bit hash. The kernel has the same function.
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
}

/// The key of epoch `epoch` of a run seeded with `seed`. Each epoch has its own key, so a resumed run
/// rebuilds any epoch's order from the seed and the epoch alone.
pub fn shuffle_key(seed: u64, epoch: u64) -> u64 {
    splitmix64(seed ^ splitmix64(epoch))
}

/// The round keys of `key`: one hash of the key's two halves per round.
pub fn round_keys(key: u64) -> [u32; ROUNDS as usize] {
    let (lo, hi) = (key as u32, (key >> 32) as u32);
    std::array::from_fn(|r| mix32(lo.wrapping_add((r as u32).wrapping_mul(0x9E37_79B9)) ^ hi))
}

/// The Feistel network of an order of `rows` (≥ 2) rows: `bits` = the bits of `rows - 1` (at least
/// MIN_BITS), split into a left part of `bits / 2` bits and a right part of the rest. A round replaces
/// (left, right) by (right, left ^ hash(right)), so the two parts swap widths each round and, after an even
/// number of rounds, are back where they started. Unlike the usual equal halves this allows an odd `bits`,
/// so that `2^bits < 2·rows` (from 128 rows up) and cycle walking needs fewer than 2 applications on
/// average.
#[derive(Clone, Copy)]
struct Feistel {
    left_bits: u32,
    right_bits: u32,
}

const _: () = assert!(
    ROUNDS.is_multiple_of(2),
    "the parts must end at their starting widths"
);

/// The low `bits` (≤ 16) bits.
fn low(bits: u32) -> u32 {
    (1u32 << bits) - 1
}

impl Feistel {
    fn new(rows: u32) -> Feistel {
        let bits = (u32::BITS - (rows - 1).leading_zeros()).max(MIN_BITS);
        Feistel {
            left_bits: bits / 2,
            right_bits: bits - bits / 2,
        }
    }

    /// One application to each of `LANES` values, round by round: the lanes' hash chains are independent,
    /// so the core overlaps them, where one value at a time would wait on each multiply in turn.
    #[inline(always)]
    fn apply<const LANES: usize>(self, x: &mut [u32; LANES], round_keys: &[u32; ROUNDS as usize]) {
        let mut left = x.map(|v| v >> self.right_bits);
        let mut right = x.map(|v| v & low(self.right_bits));
        let (mut left_bits, mut right_bits) = (self.left_bits, self.right_bits);
        for &k in round_keys {
            let mask = low(left_bits);
            for (l, r) in left.iter_mut().zip(right.iter_mut()) {
                (*l, *r) = (*r, *l ^ (mix32(*r ^ k) & mask));
            }
            (left_bits, right_bits) = (right_bits, left_bits);
        }
        for ((v, l), r) in x.iter_mut().zip(left).zip(right) {
            *v = (l << right_bits) | r;
        }
    }
}

/// The row that position `i` (< `rows`) of the order keyed by `round_keys` reads.
pub fn shuffled_row(i: u32, rows: u32, round_keys: &[u32; ROUNDS as usize]) -> u32 {
    debug_assert!(i < rows, "position {i} of {rows}");
    if rows <= 1 {
        return i;
    }
    let net = Feistel::new(rows);
    let mut x = [i];
    loop {
        net.apply(&mut x, round_keys);
        if x[0] < rows {
            return x[0];
        }
    }
}

/// The whole order: `order[i] = shuffled_row(i, order.len(), …)` for the round keys of `key`.
pub fn fill_order(order: &mut [u32], key: u64) {
    let rows = order.len();
    fill_order_part(order, 0, rows, key);
}

/// Positions `first..first + part.len()` of the order of `rows` rows keyed by `key` (`part[j]` is position
/// `first + j`): parts of one order can be computed by different threads. Computed 32 values at a time
/// (`Feistel::apply`; with AVX2, four vectors whose hash chains the core overlaps): first every position
/// of a block of 1024 once, then the positions that landed at or past `rows`, gathered 32 at a time, until
/// none is left.
pub fn fill_order_part(part: &mut [u32], first: usize, rows: usize, key: u64) {
    assert!(first + part.len() <= rows, "positions past the order");
    let rows = u32::try_from(rows).expect("at most u32::MAX rows");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2 (checked).
        return unsafe { fill_order_avx2(part, first, rows, key) };
    }
    fill_order_lanes(part, first, rows, key)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_order_avx2(part: &mut [u32], first: usize, rows: u32, key: u64) {
    fill_order_lanes(part, first, rows, key)
}

#[inline(always)]
fn fill_order_lanes(part: &mut [u32], first: usize, rows: u32, key: u64) {
    const LANES: usize = 32;
    const BLOCK: usize = 1024;
    if rows <= 1 {
        part.iter_mut()
            .enumerate()
            .for_each(|(j, v)| *v = (first + j) as u32);
        return;
    }
    let (net, keys) = (Feistel::new(rows), round_keys(key));
    for (b, block) in part.chunks_mut(BLOCK).enumerate() {
        let mut walkers = [0usize; BLOCK]; // positions in the block still at or past `rows`
        let mut waiting = 0;
        for (c, chunk) in block.chunks_mut(LANES).enumerate() {
            let start = first + b * BLOCK + c * LANES;
            let mut x: [u32; LANES] = std::array::from_fn(|l| {
                if l < chunk.len() {
                    (start + l) as u32
                } else {
                    0
                }
            });
            net.apply(&mut x, &keys);
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
        for (j, &v) in block.iter().enumerate() {
            if v >= rows {
                walkers[waiting] = j;
                waiting += 1;
            }
        }
        while waiting > 0 {
            let mut still = 0;
            for g in (0..waiting).step_by(LANES) {
                let group: [usize; LANES] =
                    std::array::from_fn(|l| walkers[(g + l).min(waiting - 1)]);
                let mut x = group.map(|j| block[j]);
                net.apply(&mut x, &keys);
                for (&j, v) in group.iter().zip(x).take(waiting - g) {
                    block[j] = v;
                    if v >= rows {
                        walkers[still] = j;
                        still += 1;
                    }
                }
            }
            waiting = still;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(rows: usize, key: u64) -> Vec<u32> {
        let mut v = vec![0; rows];
        fill_order(&mut v, key);
        v
    }

    #[test]
    fn every_order_is_a_permutation() {
        for rows in [
            0usize, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 256, 257, 1000, 1797,
            4096, 50_000, 60_000, 65_536, 65_537,
        ] {
            for key in [0, 1, shuffle_key(42, 1), shuffle_key(42, 2), u64::MAX] {
                let mut v = order(rows, key);
                v.sort_unstable();
                assert!(
                    v.iter().copied().eq(0..rows as u32),
                    "rows {rows}, key {key:#x}: not a permutation"
                );
            }
        }
    }

    #[test]
    fn the_whole_order_is_the_positions_one_by_one() {
        for rows in [2u32, 3, 9, 17, 1797, 4099] {
            let key = shuffle_key(5, rows as u64);
            let keys = round_keys(key);
            let whole = order(rows as usize, key);
            for (i, &r) in whole.iter().enumerate() {
                assert_eq!(
                    r,
                    shuffled_row(i as u32, rows, &keys),
                    "rows {rows}, position {i}"
                );
            }
        }
    }

    #[test]
    fn parts_of_an_order_are_its_positions() {
        for rows in [1usize, 7, 1500, 5000] {
            let key = shuffle_key(11, rows as u64);
            let whole = order(rows, key);
            for cut in [0, 1, rows / 3, rows - 1, rows] {
                let mut head = vec![0; cut];
                let mut tail = vec![0; rows - cut];
                fill_order_part(&mut head, 0, rows, key);
                fill_order_part(&mut tail, cut, rows, key);
                head.extend(tail);
                assert_eq!(head, whole, "{rows} rows cut at {cut}");
            }
        }
    }

    /// The CPU backend's op computes the order in parts (one per chunk of its thread pool).
    #[test]
    fn the_cpu_backend_writes_the_order() {
        use crate::backend::{Backend, CpuBackend, IdxRegion, Region};
        let mut cpu = CpuBackend::<f32>::new();
        for rows in [1usize, 1797, 60_000] {
            let key = shuffle_key(3, rows as u64);
            let idx = cpu.alloc_indices(rows).unwrap();
            cpu.shuffle_order(idx, rows, key).unwrap();
            // Read back through a gather of a column holding each row's number (exact in f32).
            let numbers: Vec<f32> = (0..rows).map(|r| r as f32).collect();
            let (data, out) = (cpu.alloc(rows).unwrap(), cpu.alloc(rows).unwrap());
            let (data, out) = (Region::whole(data, rows), Region::whole(out, rows));
            cpu.upload(data, &numbers).unwrap();
            let all = IdxRegion {
                buf: idx,
                offset: 0,
                len: rows,
            };
            cpu.gather_rows(data, 1, all, out).unwrap();
            let mut got = vec![0.0; rows];
            cpu.download(out, &mut got).unwrap();
            let got: Vec<u32> = got.iter().map(|&v| v as u32).collect();
            assert_eq!(got, order(rows, key), "{rows} rows");
        }
    }

    #[test]
    fn the_widest_halves_stay_in_range() {
        // rows - 1 needs 32 bits: two 16-bit parts, the widest the network uses. Positions near the top.
        let rows = u32::MAX;
        let keys = round_keys(shuffle_key(7, 3));
        let mut seen: Vec<u32> = (0..64)
            .map(|d| shuffled_row(rows - 1 - d, rows, &keys))
            .collect();
        assert!(seen.iter().all(|&r| r < rows));
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 64, "distinct positions gave the same row");
    }

    #[test]
    fn each_epoch_and_seed_has_its_own_order() {
        let base = order(1797, shuffle_key(42, 1));
        assert_ne!(base, order(1797, shuffle_key(42, 2)), "epochs");
        assert_ne!(base, order(1797, shuffle_key(43, 1)), "seeds");
        assert_eq!(base, order(1797, shuffle_key(42, 1)), "the same key");
        // A shuffle leaves about one row in place (a Poisson(1) count), not a structured share of them.
        let fixed = base
            .iter()
            .enumerate()
            .filter(|&(i, &r)| i as u32 == r)
            .count();
        assert!(fixed <= 8, "{fixed} of 1797 rows stayed in place");
    }

    /// The χ² value that `df` degrees of freedom exceed with probability 1e-4 (Wilson and Hilferty's
    /// approximation: 3% high at 4 degrees of freedom, closer above).
    fn chi2_limit(df: f64) -> f64 {
        const Z: f64 = 3.719; // the normal quantile of 1 - 1e-4
        let c = 2.0 / (9.0 * df);
        df * (1.0 - c + Z * c.sqrt()).powi(3)
    }

    /// Over `epochs` epochs of `rows` rows: χ² of the rows seen at each position (the largest over the
    /// positions, with its position) and of the ordered pairs of rows seen at positions 0 and 1.
    fn uniformity(rows: usize, epochs: u64) -> ((f64, usize), f64) {
        let mut at = vec![vec![0u32; rows]; rows]; // at[position][row]
        let mut pairs = vec![vec![0u32; rows]; rows]; // pairs[row at 0][row at 1]
        for epoch in 0..epochs {
            let v = order(rows, shuffle_key(9, epoch));
            for (p, &r) in v.iter().enumerate() {
                at[p][r as usize] += 1;
            }
            pairs[v[0] as usize][v[1] as usize] += 1;
        }
        let chi2 = |counts: &mut dyn Iterator<Item = u32>, expected: f64| -> f64 {
            counts
                .map(|c| (c as f64 - expected).powi(2) / expected)
                .sum()
        };
        let expected = epochs as f64 / rows as f64;
        let worst = at
            .iter()
            .map(|row| chi2(&mut row.iter().copied(), expected))
            .enumerate()
            .map(|(p, x)| (x, p))
            .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a });
        assert!((0..rows).all(|a| pairs[a][a] == 0), "a row next to itself");
        let expected = epochs as f64 / (rows * (rows - 1)) as f64;
        let mut off_diagonal = (0..rows)
            .flat_map(|a| (0..rows).map(move |b| (a, b)))
            .filter(|(a, b)| a != b)
            .map(|(a, b)| pairs[a][b]);
        (worst, chi2(&mut off_diagonal, expected))
    }

    /// Over many epochs, every row is as likely at every position, and every ordered pair of rows as likely
    /// side by side: χ² tests at a level of 1e-4 each. A network of 2 rounds fails them, and so does one
    /// with parts of one or two bits (MIN_BITS 2: 5 rows on 3 bits); checked by hand.
    #[test]
    fn rows_land_uniformly_and_neighbours_are_unrelated() {
        for (rows, epochs) in [(5, 40_000), (10, 40_000), (37, 40_000)] {
            let ((worst, at), pairs) = uniformity(rows, epochs);
            let limit = chi2_limit((rows - 1) as f64);
            assert!(
                worst < limit,
                "{rows} rows, position {at}: χ² {worst:.1} ≥ {limit:.1}"
            );
            let limit = chi2_limit((rows * (rows - 1) - 1) as f64);
            assert!(
                pairs < limit,
                "{rows} rows, neighbours: χ² {pairs:.1} ≥ {limit:.1}"
            );
        }
    }

    #[test]
    fn the_chi2_limit_matches_tables() {
        // P(χ² > x) = 1e-4, x computed from the incomplete gamma function.
        for (df, x) in [(4.0, 23.513), (9.0, 33.720), (19.0, 50.795), (89.0, 147.35)] {
            let got = chi2_limit(df);
            assert!((got - x).abs() < 0.03 * x, "df {df}: {got:.2} against {x}");
        }
    }
}
