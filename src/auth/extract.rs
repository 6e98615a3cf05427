//! Finding the token in an upgrade request, sans-IO.
//!
//! Browsers cannot set headers on a WebSocket upgrade, so the token may come in the request
//! target (`/ws?token=eyJ...`, percent-decoded); other clients may send
//! `Authorization: Bearer eyJ...`. When both are present the header wins. Only `token=` in the
//! query counts (other parameters are ignored); two `token=` parameters are ambiguous and
//! refused as malformed. The token is bounded ([`MAX_TOKEN_LEN`]) before any decoding work, and
//! borrowed from the request when it needs no decoding.

use std::borrow::Cow;

use super::Refusal;

/// Longest token accepted, in bytes after percent-decoding. Real connection tokens are a few
/// hundred bytes; the request head (8 KiB by default) bounds it anyway.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The connection token of a request: from `authorization` (the raw `Authorization` header
/// value, if any) or else the `token` query parameter of `target`.
pub fn find_token<'a>(target: &'a str, authorization: Option<&'a [u8]>) -> Result<Cow<'a, str>, Refusal> {
    if let Some(token) = authorization.and_then(bearer) {
        return checked(token).map(Cow::Borrowed);
    }
    let query = match target.split_once('?') {
        Some((_, query)) => query,
        None => return Err(Refusal::Missing),
    };
    // A fragment never reaches a server, but a hostile client may send one: it is not query.
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "token" {
            continue;
        }
        if found.is_some() {
            return Err(Refusal::Malformed);
        }
        found = Some(value);
    }
    let raw = found.ok_or(Refusal::Missing)?;
    // Percent-decoding never makes a string longer, so the raw bound is checked first: no work
    // is done on a value that could not fit.
    if raw.len() > 3 * MAX_TOKEN_LEN {
        return Err(Refusal::Malformed);
    }
    let token = percent_decode(raw)?;
    checked(&token)?;
    Ok(token)
}

/// `Bearer <token>`, the scheme case-insensitive (RFC 9110 section 11.1); other schemes are not
/// ours and count as no token in the header.
fn bearer(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim_start())
}

fn checked(token: &str) -> Result<&str, Refusal> {
    if token.is_empty() {
        Err(Refusal::Missing)
    } else if token.len() > MAX_TOKEN_LEN {
        Err(Refusal::Malformed)
    } else {
        Ok(token)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 percent-decoding; a bad escape or a result that is not UTF-8 is malformed. `+`
/// stays `+` (it is not a space outside HTML forms, and no JWT contains either).
fn percent_decode(raw: &str) -> Result<Cow<'_, str>, Refusal> {
    if !raw.contains('%') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex).ok_or(Refusal::Malformed)?;
            let lo = bytes.get(i + 2).copied().and_then(hex).ok_or(Refusal::Malformed)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| Refusal::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line per case: target, Authorization header, expected token or refusal.
    macro_rules! case {
        ($target:expr, $auth:expr => Ok($token:expr)) => {
            assert_eq!(
                find_token($target, $auth).as_deref(),
                Ok($token),
                "target {:?} auth {:?}",
                $target,
                $auth
            );
        };
        ($target:expr, $auth:expr => Err($refusal:ident)) => {
            assert_eq!(
                find_token($target, $auth).as_deref(),
                Err(&Refusal::$refusal),
                "target {:?} auth {:?}",
                $target,
                $auth
            );
        };
    }

    const NONE: Option<&[u8]> = None;

    #[test]
    fn extraction_table() {
        case!("/ws?token=abc", NONE => Ok("abc"));
        case!("/ws?x=1&token=abc&y=2", NONE => Ok("abc"));
        case!("/ws?token=a%2Eb%2ec", NONE => Ok("a.b.c"));
        case!("/ws?token=a+b", NONE => Ok("a+b"));
        case!("/ws?token=abc#frag", NONE => Ok("abc"));
        case!("/ws?token=%C3%A9", NONE => Ok("é"));
        case!("/ws", NONE => Err(Missing));
        case!("/ws?", NONE => Err(Missing));
        case!("/ws?tok=abc", NONE => Err(Missing));
        case!("/ws?token=", NONE => Err(Missing));
        case!("/ws?token", NONE => Err(Missing));
        case!("/ws?xtoken=abc", NONE => Err(Missing));
        case!("/ws?token=a&token=b", NONE => Err(Malformed));
        case!("/ws?token=%", NONE => Err(Malformed));
        case!("/ws?token=%4", NONE => Err(Malformed));
        case!("/ws?token=%zz", NONE => Err(Malformed));
        case!("/ws?token=%FF", NONE => Err(Malformed));
        case!("/ws", Some(&b"Bearer abc"[..]) => Ok("abc"));
        case!("/ws", Some(&b"bearer   abc "[..]) => Ok("abc"));
        case!("/ws", Some(&b"BEARER abc"[..]) => Ok("abc"));
        case!("/ws?token=q", Some(&b"Bearer h"[..]) => Ok("h"));
        case!("/ws?token=q", Some(&b"Basic dXNlcg=="[..]) => Ok("q"));
        case!("/ws", Some(&b"Basic dXNlcg=="[..]) => Err(Missing));
        case!("/ws", Some(&b"Bearer"[..]) => Err(Missing));
        case!("/ws", Some(&b"Bearer "[..]) => Err(Missing));
        case!("/ws", Some(&b"\xff\xfe"[..]) => Err(Missing));
    }

    #[test]
    fn long_tokens_are_malformed_before_decoding() {
        let fits = format!("/ws?token={}", "a".repeat(MAX_TOKEN_LEN));
        assert_eq!(find_token(&fits, None).map(|t| t.len()), Ok(MAX_TOKEN_LEN));
        let long = format!("/ws?token={}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(find_token(&long, None), Err(Refusal::Malformed));
        let escaped = format!("/ws?token={}", "%41".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(find_token(&escaped, None), Err(Refusal::Malformed));
        let huge = format!("/ws?token={}", "%41".repeat(10 * MAX_TOKEN_LEN));
        assert_eq!(find_token(&huge, None), Err(Refusal::Malformed));
        let header = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(find_token("/ws", Some(header.as_bytes())), Err(Refusal::Malformed));
    }

    #[test]
    fn plain_tokens_are_borrowed() {
        assert!(matches!(find_token("/ws?token=abc", None), Ok(Cow::Borrowed("abc"))));
    }
}
