//! Topic access rules in Mosquitto's `acl_file` syntax.
//!
//! ```text
//! # comment
//! topic read public/#          # before any `user` line: anonymous clients
//! user alice
//! topic readwrite alice/#      # alice only
//! topic deny alice/secret
//! pattern write devices/%c/#   # everyone; %c = client id, %u = username
//! ```
//!
//! A decision follows Mosquitto 2's default ACL check:
//! 1. the client's own rules (its `user` section, or for a client without a
//!    username the lines before any `user` line): a matching `deny` refuses;
//!    else a matching rule granting the access allows;
//! 2. then the `pattern` rules, the same way; a pattern with `%u` is skipped
//!    for a client without a username, and a client whose username or client
//!    id contains `+` or `#` is refused by the patterns;
//! 3. anything not allowed is refused.
//!
//! `%u` and `%c` are substituted where they are a whole topic level. As in
//! Mosquitto, a rule whose first level is a wildcard does not match topics
//! beginning with `$`. `topic X` without an access type means `readwrite X`.

use std::collections::HashMap;
use std::path::Path;

use tern_codec::topic::is_valid_topic_filter;

use super::AuthError;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive messages (and subscribe).
    Read,
    /// Publish (and set a will).
    Write,
}

/// Who asks: the client's username (if any) and client id.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

/// Client ids beginning so belong to this broker's bridges (their local,
/// in-process sessions); a client from the network cannot take one.
pub const BRIDGE_CLIENT_PREFIX: &str = "$bridge/";

impl Identity<'_> {
    /// One of this broker's bridges, which forwards what its configuration
    /// names: the ACL, written for clients, does not restrict it (as in
    /// Mosquitto).
    pub fn is_bridge(&self) -> bool {
        self.client_id.starts_with(BRIDGE_CLIENT_PREFIX)
    }
}

/// One level of a rule's topic.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(Box<str>),
    /// `+`
    Plus,
    /// `#` (always last)
    Hash,
    /// `%u` in a `pattern` line.
    Username,
    /// `%c` in a `pattern` line.
    ClientId,
}

#[derive(Debug, Clone)]
struct Rule {
    levels: Vec<Level>,
    /// `deny` rules refuse; others allow what `read`/`write` say.
    deny: bool,
    read: bool,
    write: bool,
    uses_username: bool,
}

/// How much of a subscription filter a client may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterAccess {
    /// Some topic under the filter may be readable: the subscription is
    /// granted. (When unsure this is true; deliveries are checked anyway.)
    pub granted: bool,
    /// Every topic under the filter is readable: deliveries need no check.
    /// (When unsure this is false.)
    pub whole: bool,
}

/// The parsed rules of one ACL file.
#[derive(Debug, Default)]
pub struct Acl {
    /// Rules before any `user` line: clients without a username.
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// A topic filter or name split into levels, the first-level `$` noted.
fn levels(text: &str) -> impl Iterator<Item = &str> {
    text.split('/')
}

impl Acl {
    /// Reads `path`; any line that cannot be understood is an error naming
    /// the file, the line and why (as Mosquitto refuses such a file).
    pub fn load(path: &Path) -> Result<Acl, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|reason| AuthError::AclFile {
            path: path.to_owned(),
            reason,
        })?;
        Self::parse(&text).map_err(|(line, reason)| AuthError::AclLine {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    /// How many rules it has in all, and how many `user` sections.
    pub fn size(&self) -> (usize, usize) {
        let user_rules: usize = self.users.values().map(Vec::len).sum();
        let rules = self.anonymous.len() + user_rules + self.patterns.len();
        (rules, self.users.len())
    }

    /// Parses ACL text; `Err((line number, why))`.
    pub fn parse(text: &str) -> Result<Acl, (usize, String)> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |why: String| (n + 1, why);
            let (keyword, rest) = line
                .split_once([' ', '\t'])
                .map_or((line, ""), |(k, r)| (k, r.trim()));
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` without a username".into()));
                    }
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let pattern = keyword == "pattern";
                    if rest.is_empty() {
                        return Err(err(format!("`{keyword}` without a topic")));
                    }
                    // `topic X` is readwrite; with a second word the first is
                    // the access type (the topic may contain spaces).
                    let (access, topic) = match rest.split_once([' ', '\t']) {
                        Some((a, t)) => (a, t.trim()),
                        None => ("readwrite", rest),
                    };
                    let (deny, read, write) = match access {
                        "read" => (false, true, false),
                        "write" => (false, false, true),
                        "readwrite" => (false, true, true),
                        "deny" => (true, false, false),
                        other => {
                            return Err(err(format!(
                                "unknown access type {other:?} (read, write, readwrite or deny)"
                            )));
                        }
                    };
                    if !is_valid_topic_filter(topic) {
                        return Err(err(format!("invalid topic filter {topic:?}")));
                    }
                    let levels: Vec<Level> = levels(topic)
                        .map(|l| match l {
                            "+" => Level::Plus,
                            "#" => Level::Hash,
                            "%u" if pattern => Level::Username,
                            "%c" if pattern => Level::ClientId,
                            _ => Level::Literal(l.into()),
                        })
                        .collect();
                    let uses_username = levels.contains(&Level::Username);
                    let rule = Rule {
                        levels,
                        deny,
                        read,
                        write,
                        uses_username,
                    };
                    if pattern {
                        acl.patterns.push(rule);
                    } else {
                        match &user {
                            Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                            None => acl.anonymous.push(rule),
                        }
                    }
                }
                other => return Err(err(format!("unknown keyword {other:?}"))),
            }
        }
        Ok(acl)
    }

    /// The rules of `text`, which has no `user` lines, for one client
    /// whose username is `username`: its `topic` rules are that user's own
    /// (the anonymous ones without a username), `pattern` rules as ever.
    /// The username is not put into the text, so nothing in it is parsed.
    pub fn parse_for(text: &str, username: Option<&str>) -> Result<Acl, (usize, String)> {
        let mut acl = Acl::parse(text)?;
        if let Some(username) = username {
            let own = std::mem::take(&mut acl.anonymous);
            acl.users.insert(username.to_owned(), own);
        }
        Ok(acl)
    }

    /// The client's own rules (its `user` section, or the anonymous ones).
    fn own_rules(&self, id: &Identity) -> &[Rule] {
        match id.username {
            Some(u) => self.users.get(u).map_or(&[], Vec::as_slice),
            None => &self.anonymous,
        }
    }

    /// The pattern rules that apply to this client; `None`: the patterns
    /// refuse it (a wildcard in its username or client id).
    fn patterns(&self, id: &Identity) -> Option<impl Iterator<Item = &Rule>> {
        let dangerous = |s: &str| s.contains(['+', '#']);
        if !self.patterns.is_empty()
            && (id.username.is_some_and(dangerous) || dangerous(id.client_id))
        {
            return None;
        }
        Some(
            self.patterns
                .iter()
                .filter(|r| !(r.uses_username && id.username.is_none())),
        )
    }

    /// Whether the client may read or write `topic` (a topic name).
    pub fn allows(&self, id: &Identity, topic: &str, access: Access) -> bool {
        if id.is_bridge() {
            return true;
        }
        let grants = |r: &Rule| match access {
            Access::Read => r.read,
            Access::Write => r.write,
        };
        let decide = |rules: &mut dyn Iterator<Item = &Rule>| {
            let mut allowed = false;
            for r in rules {
                if matches_topic(&r.levels, topic, id) {
                    if r.deny {
                        return Some(false);
                    }
                    allowed |= grants(r);
                }
            }
            allowed.then_some(true)
        };
        if let Some(d) = decide(&mut self.own_rules(id).iter()) {
            return d;
        }
        match self.patterns(id) {
            Some(mut patterns) => decide(&mut patterns).unwrap_or(false),
            None => false,
        }
    }

    /// What a subscription to `filter` (without `$share/group/`) may read.
    pub fn filter_access(&self, id: &Identity, filter: &str) -> FilterAccess {
        if id.is_bridge() {
            return FilterAccess {
                granted: true,
                whole: true,
            };
        }
        let mut granted = None;
        let mut whole = None;
        judge(
            self.own_rules(id).iter(),
            filter,
            id,
            &mut granted,
            &mut whole,
        );
        if granted.is_none() || whole.is_none() {
            match self.patterns(id) {
                Some(patterns) => judge(patterns, filter, id, &mut granted, &mut whole),
                None => {
                    granted.get_or_insert(false);
                    whole.get_or_insert(false);
                }
            }
        }
        FilterAccess {
            granted: granted.unwrap_or(false),
            whole: whole.unwrap_or(false),
        }
    }
}

/// One list of rules' say on a filter, where the lists before had none:
/// `granted` is decided by a deny covering the filter or a read rule
/// meeting it; `whole` by a deny meeting it or a read rule covering it.
fn judge<'r>(
    rules: impl Iterator<Item = &'r Rule>,
    filter: &str,
    id: &Identity,
    granted: &mut Option<bool>,
    whole: &mut Option<bool>,
) {
    let rules: Vec<&Rule> = rules.collect();
    let denies = || rules.iter().filter(|r| r.deny);
    let reads = || rules.iter().filter(|r| !r.deny && r.read);
    if granted.is_none() {
        if denies().any(|r| covers(&r.levels, filter, id)) {
            *granted = Some(false);
        } else if reads().any(|r| intersects(&r.levels, filter, id)) {
            *granted = Some(true);
        }
    }
    if whole.is_none() {
        if denies().any(|r| intersects(&r.levels, filter, id)) {
            *whole = Some(false);
        } else if reads().any(|r| covers(&r.levels, filter, id)) {
            *whole = Some(true);
        }
    }
}

/// A rule level as a literal for this client (`None` for wildcards).
fn resolve<'a>(level: &'a Level, id: &Identity<'a>) -> Option<&'a str> {
    match level {
        Level::Literal(s) => Some(s),
        Level::Username => Some(id.username.unwrap_or("")),
        Level::ClientId => Some(id.client_id),
        Level::Plus | Level::Hash => None,
    }
}

/// A wildcard in the first level never matches a `$` topic [MQTT-4.7.2-1].
fn dollar_guard(rule_first: &Level, other_first: &str, id: &Identity) -> bool {
    other_first.starts_with('$') && resolve(rule_first, id).is_none()
}

/// Whether the rule matches the topic name.
fn matches_topic(rule: &[Level], topic: &str, id: &Identity) -> bool {
    let mut t = levels(topic);
    if let (Some(first), Some(r)) = (topic.split('/').next(), rule.first())
        && dollar_guard(r, first, id)
    {
        return false;
    }
    for level in rule {
        match level {
            Level::Hash => return true,
            Level::Plus => {
                if t.next().is_none() {
                    return false;
                }
            }
            lit => match t.next() {
                Some(l) if Some(l) == resolve(lit, id) => {}
                _ => return false,
            },
        }
    }
    t.next().is_none()
}

/// A filter level, parsed.
fn filter_level(l: &str) -> Option<&str> {
    (l != "+" && l != "#").then_some(l)
}

/// Whether every topic the filter matches is matched by the rule.
fn covers(rule: &[Level], filter: &str, id: &Identity) -> bool {
    if let (Some(first), Some(r)) = (filter.split('/').next(), rule.first())
        && dollar_guard(r, first, id)
    {
        return false;
    }
    let mut f = levels(filter).peekable();
    for level in rule {
        if *level == Level::Hash {
            return true;
        }
        let Some(fl) = f.next() else {
            return false;
        };
        match (level, filter_level(fl)) {
            // The filter's `#` or `+` reaches topics only a `#` or `+` rule covers.
            (Level::Plus, _) => {
                if fl == "#" {
                    return false;
                }
            }
            (_, None) => return false,
            (lit, Some(fl)) => {
                if resolve(lit, id) != Some(fl) {
                    return false;
                }
            }
        }
    }
    f.next().is_none()
}

/// Whether some topic is matched by both the rule and the filter.
fn intersects(rule: &[Level], filter: &str, id: &Identity) -> bool {
    let first = filter.split('/').next().unwrap_or("");
    if let Some(r) = rule.first() {
        if dollar_guard(r, first, id) {
            return false;
        }
        // A filter starting with a wildcard reaches no `$` topic.
        if filter_level(first).is_none() && resolve(r, id).is_some_and(|l| l.starts_with('$')) {
            return false;
        }
    }
    let mut f = levels(filter);
    let mut r = rule.iter();
    loop {
        match (r.next(), f.next()) {
            (None, None) => return true,
            (Some(Level::Hash), _) | (_, Some("#")) => return true,
            (None, Some(_)) | (Some(_), None) => {
                // The shorter side ends; the other must be a lone `#` to meet
                // it at the parent level (handled above when it is next).
                return false;
            }
            (Some(Level::Plus), Some(_)) | (Some(_), Some("+")) => {}
            (Some(lit), Some(fl)) => {
                if resolve(lit, id) != Some(fl) {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<'a>(username: Option<&'a str>, client_id: &'a str) -> Identity<'a> {
        Identity {
            username,
            client_id,
        }
    }

    const FILE: &str = "\
# anonymous
topic read public/#
topic deny public/secret

user alice
topic readwrite alice/#
topic deny alice/private/#
topic read $SYS/#
topic sensors

user bob
topic write bob/+/out

pattern readwrite devices/%c/#
pattern read users/%u/inbox
";

    #[test]
    fn own_rules_and_deny_precedence() {
        let acl = Acl::parse(FILE).unwrap();
        let anon = id(None, "c1");
        let alice = id(Some("alice"), "c2");
        assert!(acl.allows(&anon, "public/news", Access::Read));
        assert!(!acl.allows(&anon, "public/news", Access::Write));
        assert!(!acl.allows(&anon, "public/secret", Access::Read));
        assert!(!acl.allows(&alice, "public/news", Access::Read));
        assert!(acl.allows(&alice, "alice/x/y", Access::Write));
        assert!(acl.allows(&alice, "alice", Access::Read));
        assert!(!acl.allows(&alice, "alice/private/x", Access::Read));
        assert!(acl.allows(&alice, "sensors", Access::Write));
        assert!(acl.allows(&alice, "$SYS/broker/uptime", Access::Read));
        assert!(!acl.allows(&anon, "$SYS/broker/uptime", Access::Read));
        let bob = id(Some("bob"), "c3");
        assert!(acl.allows(&bob, "bob/1/out", Access::Write));
        assert!(!acl.allows(&bob, "bob/1/out", Access::Read));
        assert!(!acl.allows(&bob, "bob/1/2/out", Access::Write));
    }

    #[test]
    fn patterns_substitute() {
        let acl = Acl::parse(FILE).unwrap();
        let carol = id(Some("carol"), "dev7");
        assert!(acl.allows(&carol, "devices/dev7/temp", Access::Write));
        assert!(!acl.allows(&carol, "devices/dev8/temp", Access::Write));
        assert!(acl.allows(&carol, "users/carol/inbox", Access::Read));
        assert!(!acl.allows(&carol, "users/dave/inbox", Access::Read));
        // %u patterns do not apply without a username; %c ones do.
        let anon = id(None, "dev9");
        assert!(!acl.allows(&anon, "users//inbox", Access::Read));
        assert!(acl.allows(&anon, "devices/dev9/x", Access::Read));
        // Wildcards in the identity are refused by the patterns.
        assert!(!acl.allows(&id(None, "#"), "devices/x/y", Access::Read));
        assert!(!acl.allows(&id(Some("+"), "c"), "users/x/inbox", Access::Read));
        // A client id with '/' never matches one level.
        assert!(!acl.allows(&id(None, "a/b"), "devices/a/b/c", Access::Read));
    }

    #[test]
    fn filters() {
        let acl = Acl::parse(FILE).unwrap();
        let anon = id(None, "c1");
        let alice = id(Some("alice"), "c2");
        let fa = |who: &Identity, f: &str| {
            let a = acl.filter_access(who, f);
            (a.granted, a.whole)
        };
        assert_eq!(fa(&anon, "public/news"), (true, true));
        assert_eq!(fa(&anon, "public/#"), (true, false));
        assert_eq!(fa(&anon, "public/+"), (true, false));
        assert_eq!(fa(&anon, "public/secret"), (false, false));
        assert_eq!(fa(&anon, "#"), (true, false));
        assert_eq!(fa(&anon, "other/#"), (false, false));
        assert_eq!(fa(&alice, "alice/#"), (true, false));
        assert_eq!(fa(&alice, "alice/public/+"), (true, true));
        assert_eq!(fa(&alice, "alice/private/#"), (false, false));
        assert_eq!(fa(&alice, "$SYS/#"), (true, true));
        assert_eq!(fa(&anon, "$SYS/#"), (false, false));
        assert_eq!(fa(&alice, "+/x"), (true, false));
        let dev = id(None, "d1");
        assert_eq!(fa(&dev, "devices/d1/#"), (true, true));
        assert_eq!(fa(&dev, "devices/+/x"), (true, false));
        assert_eq!(fa(&dev, "devices/d2/#"), (false, false));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(Acl::parse("topic read a\nfoo bar\n").unwrap_err().0, 2);
        assert_eq!(Acl::parse("\ntopic maybe a/b\n").unwrap_err().0, 2);
        assert_eq!(Acl::parse("topic read a/#/b").unwrap_err().0, 1);
        assert_eq!(Acl::parse("user\n").unwrap_err().0, 1);
        assert_eq!(Acl::parse("topic\n").unwrap_err().0, 1);
    }

    #[test]
    fn topic_names_with_spaces() {
        let acl = Acl::parse("topic read a b/c").unwrap();
        assert!(acl.allows(&id(None, "x"), "a b/c", Access::Read));
    }
}
