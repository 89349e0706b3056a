//! The one seeded pseudo-random generator of the project (splitmix64): small, fast, and a
//! pure function of its seed, so that election jitter, simulations, fault schedules and
//! random test cases replay exactly from the seed they print. Not for anything secret.

use std::time::Duration;

/// A deterministic pseudo-random sequence.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A sequence from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A duration between `low` and `high` milliseconds, both included.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items` (not empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a sequence is a function of its seed (what every replay relies on) and pins the
    // first numbers, so that a change of algorithm, which would change every recorded seed's
    // run, cannot pass unnoticed.
    #[test]
    fn sequences_replay_from_their_seed() {
        let first: Vec<u64> = {
            let mut rng = Rng::new(7);
            (0..3).map(|_| rng.next_u64()).collect()
        };
        let mut again = Rng::new(7);
        assert_eq!(first, (0..3).map(|_| again.next_u64()).collect::<Vec<_>>());
        assert_ne!(Rng::new(8).next_u64(), first[0]);
        let mut zero = Rng::new(0);
        assert_eq!(zero.next_u64(), 0xe220_a839_7b1d_cdaf);
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            assert!(rng.below(10) < 10);
            let d = rng.millis(5, 7);
            assert!(d >= Duration::from_millis(5) && d <= Duration::from_millis(7));
        }
    }
}
