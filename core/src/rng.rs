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
        let mut left = bytes;
        while left > 0 {
            let take = left.min(8);
            out.push_str(Hex::of(self.next_u64(), take).as_str());
            left -= take;
        }
    }

    /// Up to 8 random bytes as lowercase hex, drawn as [`Rng::hex`] draws them,
    /// held on the stack: a tag written into each message needs no allocation.
    pub fn hex_word(&mut self, bytes: usize) -> Hex {
        Hex::of(self.next_u64(), bytes.min(8))
    }
}

/// The first `len` digits of a word's 16 lowercase hex digits, most significant first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hex {
    digits: [u8; 16],
    len: u8,
}

impl Hex {
    /// The first `bytes` bytes (at most 8) of `word`, big-endian, as hex.
    pub(crate) fn of(word: u64, bytes: usize) -> Self {
        let mut digits = [0u8; 16];
        let (high, low) = digits.split_at_mut(8);
        high.copy_from_slice(&hex_digits((word >> 32) as u32).to_be_bytes());
        low.copy_from_slice(&hex_digits(word as u32).to_be_bytes());
        Hex {
            digits,
            len: (bytes.min(8) * 2) as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and letters are ever written.
        self.digits
            .get(..usize::from(self.len))
            .and_then(|d| std::str::from_utf8(d).ok())
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The eight hex digits of `x`, most significant in the highest byte: each nibble
/// spread into a byte of its own, then turned into its digit all at once. Per
/// message (branches, tags, Call-IDs), one digit at a time cost four times this.
fn hex_digits(x: u32) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let x = u64::from(x);
    let x = ((x & 0xFFFF_0000) << 16) | (x & 0x0000_FFFF);
    let x = ((x & 0x0000_FF00_0000_FF00) << 8) | (x & 0x0000_00FF_0000_00FF);
    let x = ((x & 0x00F0_00F0_00F0_00F0) << 4) | (x & 0x000F_000F_000F_000F);
    // 1 in each byte whose nibble is above 9: adding 6 carries it into bit 4.
    let letter = ((x + ONES * 6) >> 4) & ONES;
    x + ONES * u64::from(b'0') + letter * u64::from(b'a' - b'9' - 1)
}

#[cfg(test)]
mod tests {
    use super::{Hex, Rng};

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

    #[test]
    fn hex_words_are_what_formatting_writes() {
        let mut r = Rng::new(3);
        let mut words = vec![0, u64::MAX, 0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
        words.extend((0..10_000).map(|_| r.next_u64()));
        for w in words {
            let full = format!("{w:016x}");
            for bytes in 0..=8 {
                assert_eq!(Hex::of(w, bytes).as_str(), &full[..bytes * 2], "{w:#x}");
            }
        }
        let (mut a, mut b) = (Rng::new(4), Rng::new(4));
        assert_eq!(a.hex_word(6).as_str(), b.hex(6));
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
