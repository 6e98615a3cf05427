//! What a connection's token grants, compiled once per connection (at connect and refresh).
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
//! Cost: a [`Grant`] is 48 bytes and two heap blocks: one string holding the subject and every
//! pattern back to back, and one slice of end offsets (the top bit marks a prefix). Matching is a
//! scan of the few patterns a token carries, with no allocation.

use std::fmt;

/// The placeholder for the token's subject.
pub const SUB_PLACEHOLDER: &str = "{sub}";
/// Most patterns one claim list may carry; longer lists make the token malformed (a token is
/// bounded in size already, this bounds the work per check).
pub const MAX_PATTERNS: usize = 64;

const PREFIX_BIT: u32 = 1 << 31;

/// What one connection may do, from its token.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    /// The subject, then the subscribe patterns, then the publish patterns.
    text: Box<str>,
    /// End offsets in `text`: the subject's, then one per pattern (`PREFIX_BIT` set for a
    /// prefix).
    ends: Box<[u32]>,
    /// How many of `ends` (after the subject's) are subscribe patterns.
    subscribe_count: u8,
    /// A client may broadcast.
    pub broadcast: bool,
    /// Expiry, milliseconds since the Unix epoch (the `exp` claim, in seconds, times 1000).
    pub exp_ms: u64,
}

/// A run of compiled patterns inside a grant.
#[derive(Clone, Copy)]
struct Patterns<'a> {
    text: &'a str,
    /// Where the first pattern starts in `text`.
    start: usize,
    ends: &'a [u32],
}

impl<'a> Patterns<'a> {
    fn iter(self) -> impl Iterator<Item = (&'a str, bool)> {
        let mut start = self.start;
        self.ends.iter().map(move |&end| {
            let stop = (end & !PREFIX_BIT) as usize;
            let body = &self.text[start..stop];
            start = stop;
            (body, end & PREFIX_BIT != 0)
        })
    }

    fn matches(self, topic: &str) -> bool {
        self.iter().any(|(body, prefix)| if prefix { topic.starts_with(body) } else { topic == body })
    }
}

/// Appends the compiled `patterns` for `sub` to `text`/`ends`; false when there are too many.
fn compile<S: AsRef<str>>(
    patterns: &[S],
    sub: &str,
    text: &mut String,
    ends: &mut Vec<u32>,
) -> Option<usize> {
    if patterns.len() > MAX_PATTERNS {
        return None;
    }
    let before = ends.len();
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
    Some(ends.len() - before)
}

impl Grant {
    /// Compiles a token's claims. `None` when a list has more than [`MAX_PATTERNS`] patterns
    /// (the caller refuses the token as malformed).
    pub fn new<S: AsRef<str>>(
        sub: &str,
        subscribe: &[S],
        publish: &[S],
        broadcast: bool,
        exp_ms: u64,
    ) -> Option<Grant> {
        let mut text = String::from(sub);
        let mut ends = Vec::with_capacity(1 + subscribe.len() + publish.len());
        ends.push(u32::try_from(text.len()).ok().filter(|&e| e < PREFIX_BIT)?);
        let subscribe_count = compile(subscribe, sub, &mut text, &mut ends)?;
        compile(publish, sub, &mut text, &mut ends)?;
        Some(Grant {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
            subscribe_count: u8::try_from(subscribe_count).ok()?,
            broadcast,
            exp_ms,
        })
    }

    /// The token's subject (user id); empty for anonymous.
    pub fn sub(&self) -> &str {
        &self.text[..self.ends[0] as usize]
    }

    fn subscribe(&self) -> Patterns<'_> {
        let n = 1 + usize::from(self.subscribe_count);
        Patterns { text: &self.text, start: self.ends[0] as usize, ends: &self.ends[1..n] }
    }

    fn publish(&self) -> Patterns<'_> {
        let n = 1 + usize::from(self.subscribe_count);
        let start = (self.ends[n - 1] & !PREFIX_BIT) as usize;
        Patterns { text: &self.text, start, ends: &self.ends[n..] }
    }

    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe().matches(topic)
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish().matches(topic)
    }

    pub fn may_broadcast(&self) -> bool {
        self.broadcast
    }

    /// Heap bytes held besides the `Grant` itself (before allocator rounding).
    pub fn heap_bytes(&self) -> usize {
        self.text.len() + self.ends.len() * std::mem::size_of::<u32>()
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct List<'a>(Patterns<'a>);
        impl fmt::Debug for List<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut list = f.debug_list();
                for (body, prefix) in self.0.iter() {
                    list.entry(&format_args!("{body}{}", if prefix { "*" } else { "" }));
                }
                list.finish()
            }
        }
        f.debug_struct("Grant")
            .field("sub", &self.sub())
            .field("subscribe", &List(self.subscribe()))
            .field("publish", &List(self.publish()))
            .field("broadcast", &self.broadcast)
            .field("exp_ms", &self.exp_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line per case, httparse style: patterns, subject, topic, expected. Each case checks
    /// the patterns as subscribe and as publish lists (they compile the same way).
    macro_rules! case {
        ($patterns:expr, $sub:expr, $topic:expr => $expected:expr) => {{
            let patterns: &[&str] = &$patterns;
            let as_subscribe = Grant::new($sub, patterns, &[], false, 0).expect("compiles");
            let as_publish = Grant::new($sub, &[], patterns, false, 0).expect("compiles");
            let what = format!("patterns {:?} sub {:?} topic {:?}", patterns, $sub, $topic);
            assert_eq!(as_subscribe.may_subscribe($topic), $expected, "{what}");
            assert_eq!(as_publish.may_publish($topic), $expected, "{what}");
            assert!(!as_subscribe.may_publish($topic) && !as_publish.may_subscribe($topic), "{what}");
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
        case!([], "u", "news" => false);
        case!([""], "u", "" => true);
        case!(["é.*"], "u", "é.x" => true);
    }

    #[test]
    fn subscribe_and_publish_lists_stay_apart() {
        let g = Grant::new("7", &["in.*", "user.{sub}"], &["out", "chat.*"], true, 5).unwrap();
        assert_eq!(g.sub(), "7");
        assert!(g.may_subscribe("in.x") && g.may_subscribe("user.7"));
        assert!(!g.may_subscribe("out") && !g.may_subscribe("chat.a"));
        assert!(g.may_publish("out") && g.may_publish("chat.a"));
        assert!(!g.may_publish("in.x") && !g.may_publish("user.7") && !g.may_publish("7"));
        assert!(g.may_broadcast());
        assert_eq!(
            format!("{g:?}"),
            r#"Grant { sub: "7", subscribe: [in.*, user.7], publish: [out, chat.*], broadcast: true, exp_ms: 5 }"#
        );
    }

    #[test]
    fn too_many_patterns_is_refused() {
        let many = vec!["t"; MAX_PATTERNS + 1];
        assert!(Grant::new("u", &many, &[], false, 0).is_none());
        assert!(Grant::new("u", &[], &many, false, 0).is_none());
        assert!(Grant::new("u", &many[..MAX_PATTERNS], &many[..MAX_PATTERNS], false, 0).is_some());
    }

    #[test]
    fn a_grant_is_small() {
        assert!(std::mem::size_of::<Grant>() <= 48, "{}", std::mem::size_of::<Grant>());
        let g = Grant::new("user-123456", &["news.*", "user.{sub}"], &["chat"], false, 0).unwrap();
        assert_eq!(g.heap_bytes(), "user-123456news.user.user-123456chat".len() + 4 * 4);
    }
}
