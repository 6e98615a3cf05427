//! Topic patterns from a token's `wshub` claim, compiled once per connection.
//!
//! A pattern is a topic name (`"news"`: that topic only) or a prefix ending in `*` (`"news.*"`
//! matches `news.sport` and `news.`, not `news`; `"*"` matches every topic). A `*` anywhere
//! else is an ordinary character. `{sub}` stands for the token's subject and is substituted
//! when the pattern is compiled: `"user.{sub}"` with `sub = "42"` is the exact topic `user.42`.
//! Whether a pattern is a prefix is decided on the pattern as written, before substitution, so a
//! subject such as `"*"` can never turn an exact pattern into a wildcard. A pattern that uses
//! `{sub}` grants nothing to an anonymous token (empty `sub`): anonymous users share no private
//! topic.
//!
//! Cost: a set is one boxed string holding every pattern back to back and one boxed slice of
//! end offsets (the top bit marks a prefix). An empty set allocates nothing; matching is a scan
//! of the few patterns a token carries, with no allocation.

use std::fmt;

/// The placeholder for the token's subject.
pub const SUB_PLACEHOLDER: &str = "{sub}";
/// Most patterns one claim list may carry; longer lists make the token malformed (a token is
/// bounded in size already, this bounds the work per check).
pub const MAX_PATTERNS: usize = 64;

const PREFIX_BIT: u32 = 1 << 31;

/// A compiled list of topic patterns.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PatternSet {
    text: Box<str>,
    /// End offset of each pattern in `text`, `PREFIX_BIT` set for prefixes.
    ends: Box<[u32]>,
}

impl PatternSet {
    /// Compiles `patterns` for the subject `sub`. `None` when there are more than
    /// [`MAX_PATTERNS`] (the caller refuses the token).
    pub fn compile<S: AsRef<str>>(patterns: &[S], sub: &str) -> Option<PatternSet> {
        if patterns.len() > MAX_PATTERNS {
            return None;
        }
        let mut text = String::new();
        let mut ends = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let pattern = pattern.as_ref();
            let (body, prefix) = match pattern.strip_suffix('*') {
                Some(body) => (body, true),
                None => (pattern, false),
            };
            if body.contains(SUB_PLACEHOLDER) {
                if sub.is_empty() {
                    continue;
                }
                text.push_str(&body.replace(SUB_PLACEHOLDER, sub));
            } else {
                text.push_str(body);
            }
            let end = u32::try_from(text.len()).ok().filter(|&e| e < PREFIX_BIT)?;
            ends.push(if prefix { end | PREFIX_BIT } else { end });
        }
        Some(PatternSet { text: text.into_boxed_str(), ends: ends.into_boxed_slice() })
    }

    /// Whether some pattern matches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        let mut start = 0usize;
        for &end in self.ends.iter() {
            let stop = (end & !PREFIX_BIT) as usize;
            let body = &self.text[start..stop];
            start = stop;
            let hit = if end & PREFIX_BIT != 0 { topic.starts_with(body) } else { topic == body };
            if hit {
                return true;
            }
        }
        false
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Heap bytes held (for the memory accounting in tests and reports).
    pub fn heap_bytes(&self) -> usize {
        self.text.len() + self.ends.len() * std::mem::size_of::<u32>()
    }

    fn iter(&self) -> impl Iterator<Item = (&str, bool)> {
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let stop = (end & !PREFIX_BIT) as usize;
            let body = &self.text[start..stop];
            start = stop;
            (body, end & PREFIX_BIT != 0)
        })
    }
}

impl fmt::Debug for PatternSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for (body, prefix) in self.iter() {
            list.entry(&format_args!("{body}{}", if prefix { "*" } else { "" }));
        }
        list.finish()
    }
}

/// What one connection may do, from its token: compiled once at connect (and on refresh).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The token's subject (user id); empty for anonymous.
    pub sub: Box<str>,
    /// Expiry, milliseconds since the Unix epoch (the `exp` claim, in seconds, times 1000).
    pub exp_ms: u64,
    pub subscribe: PatternSet,
    pub publish: PatternSet,
    pub broadcast: bool,
}

impl Grant {
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.matches(topic)
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.matches(topic)
    }

    pub fn may_broadcast(&self) -> bool {
        self.broadcast
    }

    /// Heap bytes held besides the `Grant` itself.
    pub fn heap_bytes(&self) -> usize {
        self.sub.len() + self.subscribe.heap_bytes() + self.publish.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line per case, httparse style: patterns, subject, topic, expected.
    macro_rules! case {
        ($patterns:expr, $sub:expr, $topic:expr => $expected:expr) => {{
            let set = PatternSet::compile(&$patterns, $sub).expect("compiles");
            assert_eq!(
                set.matches($topic),
                $expected,
                "patterns {:?} sub {:?} topic {:?}",
                $patterns,
                $sub,
                $topic
            );
        }};
    }

    #[test]
    fn pattern_table() {
        case!(["news"], "u", "news" => true);
        case!(["news"], "u", "news.sport" => false);
        case!(["news"], "u", "new" => false);
        case!(["news"], "u", "NEWS" => false);
        case!(["news.*"], "u", "news.sport" => true);
        case!(["news.*"], "u", "news." => true);
        case!(["news.*"], "u", "news" => false);
        case!(["news.*"], "u", "newsroom" => false);
        case!(["news*"], "u", "newsroom" => true);
        case!(["*"], "u", "anything" => true);
        case!(["*"], "u", "x" => true);
        case!(["a*b"], "u", "a*b" => true);
        case!(["a*b"], "u", "axb" => false);
        case!(["a**"], "u", "a*c" => true);
        case!(["a**"], "u", "ac" => false);
        case!(["user.{sub}"], "42", "user.42" => true);
        case!(["user.{sub}"], "42", "user.43" => false);
        case!(["user.{sub}"], "42", "user.{sub}" => false);
        case!(["user.{sub}.*"], "42", "user.42.inbox" => true);
        case!(["user.{sub}.*"], "42", "user.4" => false);
        case!(["{sub}.{sub}"], "ab", "ab.ab" => true);
        case!(["user.{sub}"], "*", "user.*" => true);
        case!(["user.{sub}"], "*", "user.other" => false);
        case!(["user.{sub}"], "", "user." => false);
        case!(["user.{sub}", "lobby"], "", "lobby" => true);
        case!(["a", "b.*", "c"], "u", "c" => true);
        case!(["a", "b.*", "c"], "u", "b.x" => true);
        case!(["a", "b.*", "c"], "u", "d" => false);
        case!(Vec::<&str>::new(), "u", "news" => false);
        case!([""], "u", "" => true);
        case!(["é.*"], "u", "é.x" => true);
    }

    #[test]
    fn too_many_patterns_is_refused() {
        let many = vec!["t"; MAX_PATTERNS + 1];
        assert!(PatternSet::compile(&many, "u").is_none());
        assert!(PatternSet::compile(&many[..MAX_PATTERNS], "u").is_some());
    }

    #[test]
    fn empty_set_allocates_nothing_and_debug_shows_patterns() {
        let empty = PatternSet::compile::<&str>(&[], "u").unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.heap_bytes(), 0);
        let set = PatternSet::compile(&["user.{sub}", "news.*"], "7").unwrap();
        assert_eq!(format!("{set:?}"), r#"[user.7, news.*]"#);
        assert_eq!(set.heap_bytes(), "user.7news.".len() + 8);
    }
}
