//! numpy's `default_rng(seed).integers(low, high, n)`, reproduced bit for bit so the calibration
//! protocol (`numpy.random.default_rng(0).integers(0, len(ids) - 512, 128)`) needs no Python.
//!
//! Three pieces of numpy (1.17+, `numpy/random`):
//! * `SeedSequence(seed)` (`bit_generator.pyx`): the entropy is hashed into a 4-word pool
//!   (`mix_entropy`) and `generate_state(4, uint64)` draws PCG64's seed and increment.
//! * `PCG64` (`pcg64.h`): 128-bit LCG, `pcg_setseq_128_srandom_r`, XSL-RR output; `next_uint32`
//!   buffers the high half of a 64-bit draw.
//! * `Generator.integers` for int64 with a range below 2^32 (`distributions.c`,
//!   `random_bounded_uint64_fill`): Lemire's multiply-shift rejection on 32-bit draws.

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const POOL_SIZE: usize = 4;
const PCG_MULT: u128 = (2_549_297_995_355_413_924u128 << 64) | 4_865_540_595_714_422_341u128;

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut v = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    v = v.wrapping_mul(*hash_const);
    v ^ (v >> 16)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L.wrapping_mul(x).wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> 16)
}

/// `SeedSequence(seed).generate_state(n_words)` as u32 words.
fn seed_sequence_state(seed: u64, n_words: usize) -> Vec<u32> {
    // numpy splits an integer seed into little-endian u32 words (at least one).
    let mut entropy = vec![seed as u32];
    if seed >> 32 != 0 {
        entropy.push((seed >> 32) as u32);
    }
    let mut pool = [0u32; POOL_SIZE];
    let mut hc = INIT_A;
    for (i, p) in pool.iter_mut().enumerate() {
        *p = hashmix(entropy.get(i).copied().unwrap_or(0), &mut hc);
    }
    for i_src in 0..POOL_SIZE {
        for i_dst in 0..POOL_SIZE {
            if i_src != i_dst {
                let h = hashmix(pool[i_src], &mut hc);
                pool[i_dst] = mix(pool[i_dst], h);
            }
        }
    }
    for &e in entropy.iter().skip(POOL_SIZE) {
        for p in pool.iter_mut() {
            let h = hashmix(e, &mut hc);
            *p = mix(*p, h);
        }
    }
    let mut hc = INIT_B;
    (0..n_words)
        .map(|i| {
            let mut v = pool[i % POOL_SIZE] ^ hc;
            hc = hc.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hc);
            v ^ (v >> 16)
        })
        .collect()
}

/// numpy's `PCG64` bit generator seeded through `SeedSequence`.
pub(crate) struct NumpyPcg64 {
    state: u128,
    inc: u128,
    buffered: Option<u32>,
}

impl NumpyPcg64 {
    /// `numpy.random.PCG64(seed)` (what `default_rng(seed)` wraps).
    pub(crate) fn new(seed: u64) -> Self {
        let w = seed_sequence_state(seed, 8);
        let word = |i: usize| u64::from(w[2 * i]) | (u64::from(w[2 * i + 1]) << 32);
        let initstate = (u128::from(word(0)) << 64) | u128::from(word(1));
        let initseq = (u128::from(word(2)) << 64) | u128::from(word(3));
        let mut rng = NumpyPcg64 { state: 0, inc: (initseq << 1) | 1, buffered: None };
        rng.step();
        rng.state = rng.state.wrapping_add(initstate);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// `next_uint64`: XSL-RR output of the advanced state.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.step();
        let s = self.state;
        ((s >> 64) as u64 ^ s as u64).rotate_right((s >> 122) as u32)
    }

    /// `next_uint32`: the low half of a 64-bit draw, then its high half.
    pub(crate) fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.buffered.take() {
            return v;
        }
        let v = self.next_u64();
        self.buffered = Some((v >> 32) as u32);
        v as u32
    }

    /// `Generator.integers(low, high, n)` (int64, `high` exclusive) for `high - low <= 2^32`.
    pub(crate) fn integers(&mut self, low: i64, high: i64, n: usize) -> Option<Vec<i64>> {
        let rng = high.checked_sub(1)?.checked_sub(low)?;
        if rng < 0 || rng >= u32::MAX as i64 {
            return None;
        }
        if rng == 0 {
            return Some(vec![low; n]);
        }
        let rng = rng as u32;
        let excl = rng + 1;
        Some(
            (0..n)
                .map(|_| {
                    let mut m = u64::from(self.next_u32()) * u64::from(excl);
                    let mut leftover = m as u32;
                    if leftover < excl {
                        let threshold = (u32::MAX - rng) % excl;
                        while leftover < threshold {
                            m = u64::from(self.next_u32()) * u64::from(excl);
                            leftover = m as u32;
                        }
                    }
                    low + (m >> 32) as i64
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_default_rng() {
        // Printed by numpy 2.4.6: default_rng(0).bit_generator.random_raw(2),
        // default_rng(0).integers(0, 1000, 5), default_rng(12345678901).integers(0, 250000, 6).
        let mut r = NumpyPcg64::new(0);
        assert_eq!([r.next_u64(), r.next_u64()], [11749869230777074271, 4976686463289251617]);
        assert_eq!(NumpyPcg64::new(0).integers(0, 1000, 5).unwrap(), [850, 636, 511, 269, 307]);
        assert_eq!(
            NumpyPcg64::new(12_345_678_901).integers(0, 250_000, 6).unwrap(),
            [21984, 209034, 184608, 79176, 19950, 16216]
        );
    }
}
