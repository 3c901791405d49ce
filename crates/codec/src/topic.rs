//! Topic name and topic filter rules (spec 4.7).
//!
//! The decoder only checks that topics are well-formed UTF-8; whether a string
//! is a valid name or filter is checked by the broker and client with these
//! functions, so each can answer with its own reason code.

/// A topic name a PUBLISH may carry: at least one character, no wildcards
/// [MQTT-4.7.1-1], [MQTT-4.7.3-1].
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['+', '#'])
}

/// A topic filter a SUBSCRIBE may carry: at least one character; `#` only as
/// the whole last level [MQTT-4.7.1-2]; `+` only as a whole level [MQTT-4.7.1-3].
pub fn is_valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" if levels.peek().is_none() => {}
            "+" => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// True if `filter` matches `topic` (both already valid). Topics starting with
/// `$` are not matched by a filter starting with a wildcard [MQTT-4.7.2-1].
/// This is the reference rule; the broker's subscription tree must agree with it.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_topic_name("a/b"));
        assert!(is_valid_topic_name("/"));
        assert!(!is_valid_topic_name(""));
        assert!(!is_valid_topic_name("a/+"));
        assert!(!is_valid_topic_name("a/#"));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "a//b",
            "sport/tennis/#",
        ] {
            assert!(is_valid_topic_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "#/a", "##"] {
            assert!(!is_valid_topic_filter(bad), "{bad}");
        }
    }

    #[test]
    fn matching() {
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("#", "a/b"));
        assert!(filter_matches("+/b", "a/b"));
        assert!(filter_matches("+", ""));
        assert!(!filter_matches("+", "a/b"));
        assert!(filter_matches("+/+", "/"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(!filter_matches("+/x", "$SYS/x"));
        assert!(filter_matches("$SYS/#", "$SYS/x"));
    }
}
