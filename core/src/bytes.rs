//! Byte searches in the short pieces the protocols are made of (names, header
//! lines and values, addresses). Most matches are a few dozen bytes in, where
//! `memchr`'s setup costs more than the search itself: the first bytes are
//! searched a word at a time, and only a longer search goes to `memchr`.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// How far the word loop looks before handing the rest to `memchr`.
const NEAR: usize = 64;

/// Where the first `b` in `hay` is.
#[inline]
pub(crate) fn find(b: u8, hay: &[u8]) -> Option<usize> {
    let (near, far) = hay.split_at(hay.len().min(NEAR));
    let pattern = ONES * u64::from(b);
    let mut chunks = near.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word) ^ pattern;
        // The high bit of each zero byte of `v`; a borrow only runs upward from
        // a real zero, so the lowest bit set is always a real match.
        let zero = v.wrapping_sub(ONES) & !v & HIGH;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    if let Some(i) = chunks.remainder().iter().position(|&x| x == b) {
        return Some(at + i);
    }
    if far.is_empty() {
        return None;
    }
    memchr::memchr(b, far).map(|i| near.len() + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_memchr_finds() {
        // Every length around the word and `NEAR` boundaries, every position,
        // with bytes that differ from the target by one bit (borrow cases).
        for len in 0..(NEAR + 40) {
            for target in [b';', 0x00, 0x80, 0xff] {
                let filler: Vec<u8> = (0..len).map(|i| target ^ (1 << (i % 8))).collect();
                assert_eq!(find(target, &filler), None, "len {len}");
                for at in 0..len {
                    let mut hay = filler.clone();
                    hay[at] = target;
                    if at + 1 < len {
                        hay[len - 1] = target;
                    }
                    assert_eq!(
                        find(target, &hay),
                        memchr::memchr(target, &hay),
                        "len {len} at {at}"
                    );
                    assert_eq!(find(target, &hay), Some(at));
                }
            }
        }
    }
}
