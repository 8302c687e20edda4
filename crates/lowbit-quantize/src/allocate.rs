//! Mixed precision to a byte budget: the exact multiple-choice knapsack.
//!
//! Every item (a block linear) takes exactly one of its options (a scheme with its stored bytes
//! and its predicted cost); the chosen bytes must fit the budget and the summed cost is minimal.
//! Solved by dynamic programming over a byte grid: each option's bytes are rounded **up** to the
//! grid unit (so a solution that fits the grid fits the true budget), and the unit is the
//! smallest that keeps the table at most [`MAX_CELLS`] wide. On instances whose budget is below
//! [`MAX_CELLS`] bytes the unit is 1 and the answer is the exact optimum (tests check it against
//! brute force); on a model the grid costs at most `items * unit` bytes of the budget (0.2% for
//! SmolLM2's 210 layers).

use crate::{QuantizeError, Result};

/// Most cells of the grid (the DP's width): 2^17, so 210 items x 16 options take ~0.5 s.
pub const MAX_CELLS: usize = 1 << 17;

/// One way to store an item.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// Stored bytes.
    pub bytes: usize,
    /// Predicted cost (finite, non-negative).
    pub cost: f64,
}

/// What [`solve`] chose.
#[derive(Clone, Debug, PartialEq)]
pub struct Solution {
    /// Per item, the index of its chosen option.
    pub choice: Vec<usize>,
    /// Bytes of the chosen options.
    pub bytes: usize,
    /// Summed cost of the chosen options.
    pub cost: f64,
    /// The grid unit in bytes (1: exact optimum).
    pub unit: usize,
}

/// Smallest and largest total bytes the items can take.
pub fn byte_range(items: &[Vec<Choice>]) -> (usize, usize) {
    let lo = items.iter().map(|o| o.iter().map(|c| c.bytes).min().unwrap_or(0)).sum();
    let hi = items.iter().map(|o| o.iter().map(|c| c.bytes).max().unwrap_or(0)).sum();
    (lo, hi)
}

/// The options of minimal summed cost whose bytes fit `budget` (see the module docs).
pub fn solve(items: &[Vec<Choice>], budget: usize) -> Result<Solution> {
    let bad = |r: String| QuantizeError::input("mixed precision", r);
    if items.iter().any(|o| o.is_empty() || o.len() > usize::from(u8::MAX)) {
        return Err(bad("every layer needs between 1 and 255 candidate schemes".into()));
    }
    if let Some(c) = items.iter().flatten().find(|c| !c.cost.is_finite() || c.cost < 0.0) {
        return Err(bad(format!("a candidate's predicted error is {} (not a finite, non-negative number)", c.cost)));
    }
    let (lo, _) = byte_range(items);
    if budget < lo {
        return Err(bad(format!("a budget of {budget} bytes is below the smallest allocation ({lo} bytes)")));
    }
    let unit = budget.div_ceil(MAX_CELLS).max(1);
    let cap = budget / unit;
    let width = cap + 1;
    // best[j]: least cost of the items so far in at most j units; pick[i][j]: item i's option.
    let mut best = vec![0f64; width];
    let mut next = vec![f64::INFINITY; width];
    let mut pick = vec![0u8; items.len() * width];
    for (i, opts) in items.iter().enumerate() {
        next.fill(f64::INFINITY);
        let row = &mut pick[i * width..(i + 1) * width];
        for (k, c) in opts.iter().enumerate() {
            let w = c.bytes.div_ceil(unit);
            for j in w..width {
                let v = best[j - w] + c.cost;
                if v < next[j] {
                    next[j] = v;
                    row[j] = k as u8;
                }
            }
        }
        std::mem::swap(&mut best, &mut next);
    }
    if !best[cap].is_finite() {
        // Rounding up to the grid lost the last few bytes: only the smallest options fit.
        let choice: Vec<usize> = items.iter().map(|o| argmin_by(o, |c| (c.bytes, c.cost))).collect();
        return Ok(finish(items, choice, unit));
    }
    let mut choice = vec![0usize; items.len()];
    let mut j = cap;
    for i in (0..items.len()).rev() {
        let k = usize::from(pick[i * width + j]);
        choice[i] = k;
        j -= items[i][k].bytes.div_ceil(unit);
    }
    Ok(finish(items, choice, unit))
}

fn argmin_by<K: PartialOrd>(opts: &[Choice], key: impl Fn(&Choice) -> K) -> usize {
    let mut best = 0;
    for (k, c) in opts.iter().enumerate() {
        if key(c) < key(&opts[best]) {
            best = k;
        }
    }
    best
}

fn finish(items: &[Vec<Choice>], choice: Vec<usize>, unit: usize) -> Solution {
    let bytes = items.iter().zip(&choice).map(|(o, &k)| o[k].bytes).sum();
    let cost = items.iter().zip(&choice).map(|(o, &k)| o[k].cost).sum();
    Solution { choice, bytes, cost, unit }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), so the instances are reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn brute(items: &[Vec<Choice>], budget: usize) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut idx = vec![0usize; items.len()];
        loop {
            let bytes: usize = items.iter().zip(&idx).map(|(o, &k)| o[k].bytes).sum();
            let cost: f64 = items.iter().zip(&idx).map(|(o, &k)| o[k].cost).sum();
            if bytes <= budget && best.is_none_or(|b| cost < b) {
                best = Some(cost);
            }
            let mut i = 0;
            loop {
                if i == items.len() {
                    return best;
                }
                idx[i] += 1;
                if idx[i] < items[i].len() {
                    break;
                }
                idx[i] = 0;
                i += 1;
            }
        }
    }

    fn instance(rng: &mut Rng, n: usize, max_opts: u64, max_bytes: u64) -> Vec<Vec<Choice>> {
        (0..n)
            .map(|_| {
                (0..1 + rng.below(max_opts))
                    .map(|_| Choice { bytes: 1 + rng.below(max_bytes) as usize, cost: rng.below(1000) as f64 / 7.0 })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_on_small_random_instances() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..400 {
            let n = 1 + rng.below(6) as usize;
            let items = instance(&mut rng, n, 4, 40);
            let (lo, hi) = byte_range(&items);
            let budget = lo + rng.below((hi - lo + 1) as u64) as usize;
            let s = solve(&items, budget).unwrap();
            assert_eq!(s.unit, 1);
            assert!(s.bytes <= budget);
            let want = brute(&items, budget).unwrap();
            assert!((s.cost - want).abs() < 1e-9, "dp {} vs brute force {want} on {items:?} budget {budget}", s.cost);
            let recount: f64 = items.iter().zip(&s.choice).map(|(o, &k)| o[k].cost).sum();
            assert!((recount - s.cost).abs() < 1e-9);
        }
    }

    #[test]
    fn coarse_grid_stays_within_budget_and_near_optimal() {
        // Bytes in the millions: the grid unit is > 1, the answer must still fit the budget and
        // lose at most what the rounding can.
        let mut rng = Rng(42);
        for _ in 0..50 {
            let items: Vec<Vec<Choice>> = instance(&mut rng, 5, 4, 30)
                .into_iter()
                .map(|o| o.into_iter().map(|c| Choice { bytes: c.bytes * 100_003, ..c }).collect())
                .collect();
            let (lo, hi) = byte_range(&items);
            let budget = lo + rng.below((hi - lo + 1) as u64) as usize;
            let s = solve(&items, budget).unwrap();
            assert!(s.unit > 1);
            assert!(s.bytes <= budget, "{} > {budget}", s.bytes);
            // At least as good as the optimum for the budget shrunk by the worst rounding.
            if let Some(want) = brute(&items, budget.saturating_sub(items.len() * s.unit)) {
                assert!(s.cost <= want + 1e-9, "{} vs {want}", s.cost);
            }
        }
    }

    #[test]
    fn prefers_spending_bytes_where_cost_drops_most() {
        let items = vec![
            vec![Choice { bytes: 2, cost: 100.0 }, Choice { bytes: 4, cost: 1.0 }],
            vec![Choice { bytes: 2, cost: 10.0 }, Choice { bytes: 4, cost: 9.0 }],
        ];
        assert_eq!(solve(&items, 6).unwrap().choice, vec![1, 0]);
        assert_eq!(solve(&items, 8).unwrap().choice, vec![1, 1]);
        assert_eq!(solve(&items, 4).unwrap().choice, vec![0, 0]);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let items = vec![vec![Choice { bytes: 10, cost: 1.0 }]];
        let e = solve(&items, 9).unwrap_err().to_string();
        assert!(e.contains("below the smallest allocation"), "{e}");
        let nan = vec![vec![Choice { bytes: 1, cost: f64::NAN }]];
        assert!(solve(&nan, 9).unwrap_err().to_string().contains("finite"));
        assert!(solve(&[vec![]], 9).is_err());
    }
}
