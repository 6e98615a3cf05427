//! Close codes (RFC 6455 section 7.4).

/// Close codes the server sends. Plain `u16` on the wire; named here so call sites say why.
pub mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// Whether a peer may send `code` in a close frame: 1000-1003, 1007-1011 and the
/// registered/private range 3000-4999. 1004-1006 and 1015 are reserved for local use and must
/// never appear on the wire; 1012-1014 are IANA-registered later but not in RFC 6455 itself, and
/// we follow the RFC's list strictly (as the Autobahn suite does).
pub fn is_valid_on_wire(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_edges() {
        let table: &[(u16, bool)] = &[
            (0, false),
            (999, false),
            (1000, true),
            (1001, true),
            (1002, true),
            (1003, true),
            (1004, false),
            (1005, false),
            (1006, false),
            (1007, true),
            (1008, true),
            (1009, true),
            (1010, true),
            (1011, true),
            (1012, false),
            (1015, false),
            (1016, false),
            (2999, false),
            (3000, true),
            (3999, true),
            (4000, true),
            (4999, true),
            (5000, false),
            (65535, false),
        ];
        for &(code, ok) in table {
            assert_eq!(is_valid_on_wire(code), ok, "code {code}");
        }
    }
}
