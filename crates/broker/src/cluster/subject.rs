//! MQTT topics and filters as NATS subjects, without ambiguity.
//!
//! An MQTT topic level may hold any character, `.`, `*`, `>` and spaces
//! included, and may be empty; a NATS subject token may hold none of those.
//! So each level becomes one token with every byte outside `[A-Za-z0-9_-]`
//! (and outside non-ASCII UTF-8, which NATS takes as it is) written `~XX` in
//! hex, and an empty level becomes the token `~` (which no escaped level
//! can be). Different topics thus map to different subjects, and `+` maps
//! to `*` exactly: one level, one token.
//!
//! Subjects are `<cluster>.m.<levels…>` for topics, and `<cluster>.d.<…>`
//! for topics beginning with `$`, so that filters beginning with a wildcard
//! (`#`, `+/…`), which MQTT forbids to match `$` topics [MQTT-4.7.2-1], are
//! subscribed under `m` only.

use std::fmt::Write;

/// The subject a message to `topic` is published on.
pub fn topic_subject(cluster: &str, topic: &str) -> String {
    let mut subject = root(cluster, topic);
    for level in topic.split('/') {
        subject.push('.');
        escape_level(level, &mut subject);
    }
    subject
}

/// The subject a stream keeps `topic`'s messages under: `area` (`r` for
/// retained, `s` for stored messages) after the cluster's name, then the
/// topic's subject: `<cluster>.m.…` → `<cluster>.<area>.m.…`.
pub fn kept_subject(cluster: &str, area: &str, topic: &str) -> String {
    let topic_subject = topic_subject(cluster, topic);
    let rest = topic_subject.get(cluster.len() + 1..).unwrap_or_default();
    format!("{cluster}.{area}.{rest}")
}

/// The topic of a message a stream keeps under `subject` in `area`
/// ([`kept_subject`]); `None` if the subject is not one.
pub fn kept_topic(cluster: &str, area: &str, subject: &str) -> Option<String> {
    let rest = subject
        .strip_prefix(cluster)?
        .strip_prefix('.')?
        .strip_prefix(area)?
        .strip_prefix('.')?;
    let (kind, levels) = rest.split_once('.')?;
    if kind != "m" && kind != "d" {
        return None;
    }
    let mut topic = String::with_capacity(levels.len());
    for (i, token) in levels.split('.').enumerate() {
        if i > 0 {
            topic.push('/');
        }
        unescape_level(token, &mut topic)?;
    }
    Some(topic)
}

/// The subjects whose messages a subscription to `filter` (without
/// `$share/…`) needs: one, or two for a filter ending in `#`, which also
/// matches its parent level (`a/#` matches `a`) while NATS's `>` needs at
/// least one more token.
pub fn filter_subjects(cluster: &str, filter: &str) -> Vec<String> {
    let mut subject = root(cluster, filter);
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level == "#" && levels.peek().is_none() {
            let parent = subject.clone();
            subject.push_str(".>");
            // `#` alone has no parent level to match.
            return if filter == "#" {
                vec![subject]
            } else {
                vec![parent, subject]
            };
        }
        subject.push('.');
        if level == "+" {
            subject.push('*');
        } else {
            escape_level(level, &mut subject);
        }
    }
    vec![subject]
}

/// `<cluster>.d` for `$` topics and filters beginning with a literal `$`,
/// `<cluster>.m` for the rest.
fn root(cluster: &str, topic: &str) -> String {
    let kind = if topic.starts_with('$') { "d" } else { "m" };
    format!("{cluster}.{kind}")
}

/// Any string as one NATS subject token, the same on every node: the queue
/// group of a shared subscription group (from its key, `{group}/{filter}`),
/// a node's name in a subject. Every byte outside `[A-Za-z0-9_-]` is
/// written `~XX`, so it holds no space or dot and also serves as a header
/// value; one longer than [`TOKEN`] bytes so written becomes `~h` and its
/// SHA-256 in hex, to stay far within NATS's control line.
pub fn token(key: &str) -> String {
    let mut name = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            name.push(char::from(b));
        } else {
            let _ = write!(name, "~{b:02X}");
        }
    }
    if name.len() <= TOKEN {
        return name;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut hashed = String::from("~h");
    for b in digest.as_ref() {
        let _ = write!(hashed, "{b:02x}");
    }
    hashed
}

/// The longest token written out in full.
const TOKEN: usize = 256;

/// What [`escape_level`] wrote, back; `None` if it is not that.
fn unescape_level(token: &str, out: &mut String) -> Option<()> {
    if token == "~" {
        return Some(());
    }
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            let hex: String = chars.by_ref().take(2).collect();
            out.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
        } else {
            out.push(c);
        }
    }
    Some(())
}

fn escape_level(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('~');
        return;
    }
    for c in level.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' || !c.is_ascii() {
            out.push(c);
        } else {
            // An ASCII character: one byte, two hex digits.
            let _ = write!(out, "~{:02X}", c as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::topic::filter_matches;

    /// NATS's own subject matching: `*` one token, `>` one or more at the end.
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let mut p = pattern.split('.');
        let mut s = subject.split('.');
        loop {
            match (p.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    const TOPICS: &[&str] = &[
        "house/room1/temp",
        "house/room.1/temp",
        "house/room~1/temp",
        "house/room 1/temp",
        "house//temp",
        "/house",
        "house/",
        "a/b*c/d>e",
        "a/*/>",
        "a",
        "a/b",
        "a/b/c/d",
        "$SYS/broker/uptime",
        "$x/y",
        "x/$y",
        "größe/℃",
        "~",
        "~7E",
    ];

    const FILTERS: &[&str] = &[
        "#",
        "+",
        "+/+",
        "house/+/temp",
        "house/#",
        "a/#",
        "a/+/#",
        "+/b",
        "$SYS/#",
        "$x/+",
        "+/$y",
        "house//temp",
        "house/+",
        "/#",
        "a/b*c/d>e",
        "a/*/>",
        "~",
        "größe/#",
    ];

    /// For every filter and topic above, the NATS subjects match exactly
    /// when MQTT says the filter matches the topic: odd characters, empty
    /// levels, `#` on its parent, and the `$` rule included.
    #[test]
    fn subjects_match_as_mqtt_filters_do() {
        for filter in FILTERS {
            let patterns = filter_subjects("t", filter);
            for topic in TOPICS {
                let subject = topic_subject("t", topic);
                let nats = patterns.iter().any(|p| nats_matches(p, &subject));
                assert_eq!(
                    nats,
                    filter_matches(filter, topic),
                    "filter {filter:?} ({patterns:?}) and topic {topic:?} ({subject:?})"
                );
            }
        }
    }

    #[test]
    fn a_kept_subject_gives_its_topic_back() {
        for topic in TOPICS {
            let subject = kept_subject("t", "s", topic);
            assert_eq!(kept_topic("t", "s", &subject).as_deref(), Some(*topic));
        }
        assert_eq!(kept_topic("t", "s", "t.s.p"), None, "a probe");
        assert_eq!(kept_topic("t", "s", "u.s.m.a"), None, "another cluster");
        assert_eq!(kept_topic("t", "s", "t.s.m.a~Z"), None, "not an escape");
    }

    #[test]
    fn different_topics_get_different_subjects() {
        let mut seen = std::collections::HashMap::new();
        for topic in TOPICS {
            if let Some(other) = seen.insert(topic_subject("t", topic), topic) {
                panic!("{topic:?} and {other:?} share a subject");
            }
        }
    }

    #[test]
    fn subjects_hold_only_safe_tokens() {
        assert_eq!(
            topic_subject("t", "house/room 1/temp"),
            "t.m.house.room~201.temp"
        );
        assert_eq!(topic_subject("t", "a.b/*/>"), "t.m.a~2Eb.~2A.~3E");
        assert_eq!(topic_subject("t", "a//b/"), "t.m.a.~.b.~");
        assert_eq!(topic_subject("t", "$SYS/x"), "t.d.~24SYS.x");
        assert_eq!(filter_subjects("t", "a/#"), ["t.m.a", "t.m.a.>"]);
        assert_eq!(filter_subjects("t", "#"), ["t.m.>"]);
        assert_eq!(filter_subjects("t", "+/x"), ["t.m.*.x"]);
    }

    #[test]
    fn tokens_are_safe_distinct_and_bounded() {
        assert_eq!(token("g/a/+"), "g~2Fa~2F~2B");
        assert_eq!(token("g 1/é"), "g~201~2F~C3~A9");
        assert_ne!(token("g/a_b"), token("g/a~5Fb"));
        let long = format!("g/{}", "x/".repeat(200));
        let hashed = token(&long);
        assert!(hashed.starts_with("~h") && hashed.len() == 66, "{hashed}");
        assert_ne!(hashed, token(&format!("{long}y")));
    }
}
