//! A small seeded pseudo-random generator. The core takes its randomness (stream ids,
//! a dialback secret when none is configured) from a seed handed in at construction,
//! so that the same inputs give the same outputs.

/// SplitMix64: tiny, fast, and well distributed; not for key material beyond the
/// dialback secret fallback, which is derived through HMAC anyway.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `bytes` random bytes as lowercase hex.
    pub fn hex(&mut self, bytes: usize) -> String {
        let mut out = String::with_capacity(bytes * 2);
        self.push_hex(&mut out, bytes);
        out
    }

    /// Appends `bytes` random bytes as lowercase hex to `out`, drawing from the
    /// generator as [`Rng::hex`] does.
    pub fn push_hex(&mut self, out: &mut String, bytes: usize) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut left = bytes;
        while left > 0 {
            for b in self.next_u64().to_be_bytes() {
                if left > 0 {
                    // Per message (branches, tags, Call-IDs): no formatting machinery.
                    out.push(char::from(DIGITS[usize::from(b >> 4)]));
                    out.push(char::from(DIGITS[usize::from(b & 0xf)]));
                    left -= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn same_seed_same_sequence_and_hex_length() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert_eq!(a.hex(9), b.hex(9));
        assert_eq!(a.hex(5).len(), 10);
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        // Big-endian bytes of the first SplitMix64 output of seed 0.
        assert_eq!(
            Rng::new(0).hex(8),
            format!("{:016x}", Rng::new(0).next_u64())
        );
        assert_eq!(
            Rng::new(0).hex(3),
            format!("{:016x}", Rng::new(0).next_u64())[..6]
        );
    }
}
