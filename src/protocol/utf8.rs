//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! A text message may be split across frames and a frame across reads, and a code point may be
//! split anywhere. We validate each piece as it arrives and fail at the first byte that can never
//! become valid (RFC 6455 section 8.1; Autobahn 6.4.x checks that we fail fast), carrying at most
//! three bytes of an unfinished code point between pieces.

/// Validation state between pieces: the bytes of an unfinished code point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

/// The input can never be valid UTF-8, whatever follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no code point is left unfinished (the message may end here).
    pub fn is_complete(&self) -> bool {
        self.pending_len == 0
    }

    /// Feeds the next piece. Errors as soon as the bytes seen so far cannot start valid UTF-8.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            // Complete the carried code point one byte at a time (at most 3 steps).
            let needed = utf8_width(self.pending[0]);
            while usize::from(self.pending_len) < needed {
                let Some((&b, rest)) = input.split_first() else {
                    return Ok(());
                };
                self.pending[usize::from(self.pending_len)] = b;
                self.pending_len += 1;
                input = rest;
                let have = &self.pending[..usize::from(self.pending_len)];
                match std::str::from_utf8(have) {
                    Ok(_) => break,
                    Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                    Err(_) => {}
                }
            }
            self.pending_len = 0;
        }
        match std::str::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(InvalidUtf8),
                None => {
                    // A valid prefix of a code point is cut off at the end: carry it.
                    let tail = &input[e.valid_up_to()..];
                    self.pending[..tail.len()].copy_from_slice(tail);
                    self.pending_len = tail.len() as u8;
                    Ok(())
                }
            },
        }
    }
}

/// Byte length of the code point a lead byte starts (0 for bytes that cannot lead).
fn utf8_width(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<bool, InvalidUtf8> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let cut = cut.clamp(start, bytes.len());
            v.feed(&bytes[start..cut])?;
            start = cut;
        }
        Ok(v.is_complete())
    }

    #[test]
    fn every_split_agrees_with_std() {
        let samples: &[&[u8]] = &[
            "Hello-µ@ßöäüàá-UTF-8!!".as_bytes(),
            "κόσμε".as_bytes(),
            "\u{10FFFF}\u{FFFF}\u{800}\u{7FF}".as_bytes(),
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf0\x8f\xbf\xbf",
            b"\xed\xbf\xbf",
            b"ab\xff",
            b"\xf0\x9f\x98",
        ];
        for sample in samples {
            let expected_valid = std::str::from_utf8(sample).is_ok();
            for a in 0..=sample.len() {
                for b in a..=sample.len() {
                    let got = validate_in_pieces(sample, &[a, b]);
                    assert_eq!(matches!(got, Ok(true)), expected_valid, "{sample:x?} split {a},{b}");
                }
            }
        }
    }

    #[test]
    fn fails_at_first_impossible_byte() {
        // U+10FFFF + 1 starts F4 90: invalid after its second byte, before the rest arrives.
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"ok\xf4").is_ok());
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));
        // A surrogate (ED A0) is invalid at its second byte.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xed\xa0"), Err(InvalidUtf8));
        // A lone continuation byte is invalid at once.
        assert_eq!(Utf8Validator::new().feed(b"\x80"), Err(InvalidUtf8));
    }

    #[test]
    fn unfinished_code_point_is_not_complete() {
        let mut v = Utf8Validator::new();
        v.feed(b"\xe2\x82").unwrap();
        assert!(!v.is_complete());
        v.feed(b"\xac").unwrap();
        assert!(v.is_complete());
    }
}
