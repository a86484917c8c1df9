//! Jitter for retries, so that candidates and watches do not retry in step: a small
//! xorshift generator seeded from a name. (No randomness crate: the draws need not be
//! unpredictable, only spread.)

/// A source of draws in [0, 1).
pub(crate) struct Jitter(u64);

impl Jitter {
    /// Draws seeded from `name` (an identity, a watch's kind).
    pub(crate) fn new(name: &str) -> Jitter {
        let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Jitter(seed | 1)
    }

    /// The next draw in [0, 1).
    pub(crate) fn next(&mut self) -> f64 {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
