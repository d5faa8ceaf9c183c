//! Topic names and topic filters (spec 4.7, 4.8.2): validation, shared subscriptions and
//! matching. Small and free of the rest of the codec so the router reuses it.

/// Why a topic name or filter is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters are at least one character long [MQTT-4.7.3-1].
    #[error("topic is empty")]
    Empty,
    /// Longer than the 65 535 bytes of an MQTT string.
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// A topic name (PUBLISH, will) must not contain `+` or `#` [MQTT-3.3.2-2].
    #[error("topic name contains a wildcard")]
    WildcardInName,
    /// `+` and `#` must occupy a whole level, and `#` must be last [MQTT-4.7.1-1, 4.7.1-2].
    #[error("wildcard is not a whole level, or # is not the last level")]
    BadWildcard,
    /// U+0000 is not allowed [MQTT-4.7.3-2].
    #[error("topic contains U+0000")]
    NullChar,
    /// `$share/{group}/{filter}`: the group is empty or contains `/`, `+` or `#`, or the
    /// filter is missing [MQTT-4.8.2-1, 4.8.2-2].
    #[error("invalid shared subscription: $share/{{group}}/{{filter}} needs a group without / + # and a filter")]
    BadShare,
}

const MAX_LEN: usize = 65_535;

/// Checks a topic name (as used in PUBLISH and wills).
///
/// ```
/// use promptmq_broker::codec::topic::{validate_name, TopicError};
/// assert!(validate_name("sensors/room1/temp").is_ok());
/// assert_eq!(validate_name("sensors/+/temp"), Err(TopicError::WildcardInName));
/// ```
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    common(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

fn common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::NullChar);
    }
    Ok(())
}

/// Checks a topic filter (SUBSCRIBE, UNSUBSCRIBE), including a `$share/` prefix.
///
/// ```
/// use promptmq_broker::codec::topic::validate_filter;
/// assert!(validate_filter("a/+/c/#").is_ok());
/// assert!(validate_filter("$share/workers/jobs/#").is_ok());
/// assert!(validate_filter("a/b#").is_err());
/// ```
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    common(filter)?;
    let plain = match parse_shared(filter) {
        Some(shared) => shared?.filter,
        None => filter,
    };
    let mut levels = plain.split('/').peekable();
    while let Some(level) = levels.next() {
        let has_wild = level.contains(['+', '#']);
        if has_wild && level.len() != 1 {
            return Err(TopicError::BadWildcard);
        }
        if level == "#" && levels.peek().is_some() {
            return Err(TopicError::BadWildcard);
        }
    }
    Ok(())
}

/// A `$share/{group}/{filter}` subscription, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shared<'a> {
    /// The share name.
    pub group: &'a str,
    /// The filter after the group.
    pub filter: &'a str,
}

/// Splits a shared subscription; `None` if `filter` is not one.
pub fn parse_shared(filter: &str) -> Option<Result<Shared<'_>, TopicError>> {
    let rest = filter.strip_prefix("$share/")?;
    Some(match rest.split_once('/') {
        Some((group, f)) if !group.is_empty() && !group.contains(['+', '#']) && !f.is_empty() => {
            Ok(Shared { group, filter: f })
        }
        _ => Err(TopicError::BadShare),
    })
}

/// Whether the (valid, non-shared) `filter` matches the topic `name`. Wildcards at the first
/// level do not match names starting with `$` [MQTT-4.7.2-1].
///
/// ```
/// use promptmq_broker::codec::topic::matches;
/// assert!(matches("a/+/c", "a/b/c"));
/// assert!(matches("a/#", "a"));             // # also matches the parent level
/// assert!(!matches("#", "$SYS/uptime"));
/// assert!(matches("$SYS/#", "$SYS/uptime"));
/// ```
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The part of `filter` before its first wildcard level, without the separator that ends it:
/// every name the filter matches starts with it (`a/#` matches `a` itself, so `a/#` gives
/// `a`, not `a/`). The whole filter when it has no wildcard.
///
/// ```
/// use promptmq_broker::codec::topic::literal_prefix;
/// assert_eq!(literal_prefix("a/b/+/c"), "a/b");
/// assert_eq!(literal_prefix("a/#"), "a");
/// assert_eq!(literal_prefix("a/b"), "a/b");
/// ```
pub fn literal_prefix(filter: &str) -> &str {
    let mut end = 0usize;
    for level in filter.split('/') {
        if level == "+" || level == "#" {
            return &filter[..end.saturating_sub(1)];
        }
        end += level.len() + 1;
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("a/b/c"), "a/b/c");
        assert_eq!(literal_prefix("a/b/+/c"), "a/b");
        assert_eq!(literal_prefix("a/#"), "a");
        assert_eq!(literal_prefix("#"), "");
        assert_eq!(literal_prefix("+/x"), "");
        assert_eq!(literal_prefix("/+"), "");
        assert_eq!(literal_prefix("a//+"), "a/");
    }

    #[test]
    fn names() {
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a\0b"), Err(TopicError::NullChar));
        assert!(validate_name("/").is_ok());
        assert!(validate_name("$SYS/broker/uptime").is_ok());
        assert_eq!(validate_name(&"a".repeat(65_536)), Err(TopicError::TooLong));
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "+/+", "a/#", "/+", "a//b", "sport/+/player1", "$share/g/a/+", "$share/g/#"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["a#", "a/#/b", "a+", "+a/b", "", "$share/", "$share//a", "$share/g", "$share/g/", "$share/g+/a"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_shared("$share/g/a/b"), Some(Ok(Shared { group: "g", filter: "a/b" })));
        assert_eq!(parse_shared("a/b"), None);
    }

    #[test]
    fn matching() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
            ("sport/#", "sport", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/b", "a/b/c", false),
        ];
        for (f, n, want) in cases {
            assert_eq!(matches(f, n), want, "{f} vs {n}");
        }
    }
}
