//! Unmasking of client payloads (RFC 6455 section 5.3), in place.
//!
//! Hot path: every byte a client sends passes through here. We XOR a word at a time and handle
//! the unaligned head and tail byte by byte; the compiler vectorises the word loop.

/// XORs `buf` with the 4-byte `key`, as if `buf` started at byte `offset` of the payload
/// (so a payload that arrives in pieces can be unmasked piece by piece).
/// Masking is its own inverse: applying it twice gives the input back.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate_key(key, offset);
    let (head, words, tail) = unsafe_free_align(buf);
    // Head bytes: keep the key rotating so the word loop starts at key phase `head.len()`.
    for (i, b) in head.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
    let phased = rotate_key(key, head.len());
    let word = u64::from_ne_bytes([
        phased[0], phased[1], phased[2], phased[3], phased[0], phased[1], phased[2], phased[3],
    ]);
    for chunk in words.chunks_exact_mut(8) {
        let v = u64::from_ne_bytes(chunk.try_into().expect("chunk of 8")) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    let done = head.len() + words.len();
    for (i, b) in tail.iter_mut().enumerate() {
        *b ^= key[(done + i) & 3];
    }
}

/// The key as seen from payload byte `offset`.
#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut k = key;
    k.rotate_left(offset & 3);
    k
}

/// Splits `buf` into a head that brings us to 8-byte alignment, a run of whole 8-byte words,
/// and a tail. Pure slice arithmetic: no `unsafe` needed for a simple XOR.
#[inline]
fn unsafe_free_align(buf: &mut [u8]) -> (&mut [u8], &mut [u8], &mut [u8]) {
    let misalign = buf.as_ptr() as usize & 7;
    let head_len = if misalign == 0 { 0 } else { (8 - misalign).min(buf.len()) };
    let (head, rest) = buf.split_at_mut(head_len);
    let words_len = rest.len() & !7;
    let (words, tail) = rest.split_at_mut(words_len);
    (head, words, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    #[test]
    fn matches_naive_for_every_alignment_length_and_offset() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let source: Vec<u8> = (0..100u8).collect();
        for start in 0..8 {
            for len in 0..40 {
                for offset in 0..4 {
                    let mut a = source.clone();
                    let mut b = source.clone();
                    apply_mask(&mut a[start..start + len], key, offset);
                    naive(&mut b[start..start + len], key, offset);
                    assert_eq!(a, b, "start {start} len {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 section 5.7: a masked "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }

    #[test]
    fn piecewise_equals_whole() {
        let key = [1, 2, 3, 4];
        let mut whole: Vec<u8> = (0..57u8).collect();
        let mut pieces = whole.clone();
        apply_mask(&mut whole, key, 0);
        let (a, b) = pieces.split_at_mut(13);
        apply_mask(a, key, 0);
        apply_mask(b, key, 13);
        assert_eq!(whole, pieces);
    }
}
