//! The retained-message store: the last retained message of each topic.
//!
//! A retained PUBLISH replaces its topic's entry (an empty one removes it), and
//! every SUBSCRIBE asks for the entries whose topics match each of its filters.
//! That lookup must not scan every retained topic, so the store is a trie keyed
//! by topic level, holding at most one value per topic: a literal filter level
//! looks up one child, `+` visits the children of one node, and `#` visits one
//! subtree.
//!
//! The store owns its values (the broker keeps the message there), and each
//! value knows its full topic ([`Topical`]): a match hands out the topic
//! without joining levels again, and the trie keeps no copy of it.
//!
//! [`Retained`] is the broker's retained messages in such a store, with who
//! set each and the totals the retained quotas are checked against.
//!
//! [`RetainedMessages`] is the retained-storage seam: what the broker asks of
//! wherever retained messages are kept. [`LocalRetained`] keeps them in a
//! [`Retained`] in memory and, with persistence on, in the store; a cluster
//! keeps them where every node sees them, and nothing else changes.
//!
//! A topic can have tens of thousands of levels, chosen by a client, so nothing
//! here recurses over levels: walks are loops with explicit stacks, and nodes
//! are dropped iteratively.

use std::collections::HashMap;
use std::ptr;
use std::sync::Arc;
use std::time::Instant;

use crate::level_map::LevelMap;
use crate::lock::{Mutex, RwLock, rank};
use crate::message::Message;
use crate::store::Store;

/// Where retained messages are kept: the retained-storage seam.
pub trait RetainedMessages: Send + Sync {
    /// Makes `message` its topic's retained message, set by `owner`, or
    /// clears the topic if its payload is empty [MQTT-3.3.1-10]. Returns the
    /// ticket the publisher's acknowledgement waits for (0: none).
    fn set(&self, message: &Arc<Message>, owner: Option<&Arc<str>>) -> u64;
    /// Calls `f` with every retained message whose topic matches `filter`.
    fn for_each_match(&self, filter: &str, f: &mut dyn FnMut(&Arc<Message>));
    /// Whether `owner` may set `topic`'s message to one of `size` bytes
    /// within `quotas`.
    fn admits(&self, topic: &str, size: usize, owner: Option<&Arc<str>>, quotas: Quotas) -> bool;
    /// How many topics have a retained message.
    fn count(&self) -> usize;
    /// Drops the messages whose Message Expiry Interval has run out at `now`.
    fn purge_expired(&self, now: Instant);
    /// Puts back a message kept from before a restart (not stored again).
    fn restore(&self, message: Arc<Message>, owner: Option<Arc<str>>);
}

/// The single node's retained messages: a [`Retained`] trie, and the store.
pub struct LocalRetained {
    trie: RwLock<Retained, { rank::RETAINED }>,
    /// Taken before the trie's lock is let go and held while a change is
    /// submitted to the store: the file sees changes to one topic in the
    /// order the trie does, and readers of the trie never wait for the store.
    writes: Mutex<(), { rank::RETAINED_WRITES }>,
    store: Option<Arc<Store>>,
}

impl LocalRetained {
    pub fn new(store: Option<Arc<Store>>) -> LocalRetained {
        LocalRetained {
            trie: RwLock::new(Retained::default()),
            writes: Mutex::new(()),
            store,
        }
    }
}

impl RetainedMessages for LocalRetained {
    /// The store's writer encodes the record. `$SYS` messages (no origin)
    /// are not stored.
    fn set(&self, message: &Arc<Message>, owner: Option<&Arc<str>>) -> u64 {
        let kept = !message.payload.is_empty();
        let stored = self.store.as_ref().filter(|_| message.origin.is_some());
        let mut trie = self.trie.write();
        if kept {
            trie.insert(message.clone(), owner.cloned());
        } else {
            trie.remove(&message.topic);
        }
        let Some(store) = stored else {
            return 0;
        };
        let order = self.writes.lock();
        drop(trie);
        let ticket = if kept {
            store.retain(message, owner)
        } else {
            store.clear_retained(&message.topic)
        };
        drop(order);
        ticket
    }

    fn for_each_match(&self, filter: &str, f: &mut dyn FnMut(&Arc<Message>)) {
        self.trie.read().for_each_match(filter, f);
    }

    fn admits(&self, topic: &str, size: usize, owner: Option<&Arc<str>>, quotas: Quotas) -> bool {
        self.trie.read().admits(topic, size, owner, quotas)
    }

    fn count(&self) -> usize {
        self.trie.read().len()
    }

    /// Their records' deletes are submitted as [`LocalRetained::set`]'s are.
    fn purge_expired(&self, now: Instant) {
        let mut expired = Vec::new();
        let mut trie = self.trie.write();
        trie.retain(|m| {
            let keep = m.remaining_expiry(now).is_some();
            if !keep {
                expired.push(m.topic.clone());
            }
            keep
        });
        let Some(store) = &self.store else {
            return;
        };
        let order = self.writes.lock();
        drop(trie);
        for topic in expired {
            store.clear_retained(&topic);
        }
        drop(order);
    }

    fn restore(&self, message: Arc<Message>, owner: Option<Arc<str>>) {
        self.trie.write().insert(message, owner);
    }
}

/// A value that knows its topic: the store reports it from there, not from a
/// copy of its own (a million retained topics, a million copies).
pub trait Topical {
    fn topic(&self) -> &str;
}

/// Retained messages, indexed by topic level.
pub struct RetainedStore<T> {
    root: Node<T>,
    len: usize,
}

impl<T: Topical> RetainedStore<T> {
    /// An empty store.
    pub fn new() -> Self {
        RetainedStore {
            root: Node::default(),
            len: 0,
        }
    }

    /// Stores `value` as the retained message of `topic`, returning the one it
    /// replaces: a topic keeps only its latest retained message.
    pub fn insert(&mut self, topic: &str, value: T) -> Option<T> {
        debug_assert_eq!(value.topic(), topic);
        let previous = match self.root.find_mut(topic) {
            Some(node) => node.value.replace(value),
            None => self.root.create(topic).value.replace(value),
        };
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes the retained message of `topic`, pruning nodes left empty so
    /// memory does not grow with churn.
    pub fn remove(&mut self, topic: &str) -> Option<T> {
        let value = self.root.find_mut(topic)?.value.take()?;
        self.len -= 1;
        self.root.prune(topic);
        Some(value)
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&T> {
        let node = topic.split('/').try_fold(&self.root, Node::child)?;
        node.value.as_ref()
    }

    /// Number of topics with a retained message.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no message is retained.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` with every stored (topic, value) whose topic matches `filter`,
    /// walking only matching branches (a literal level looks up one child;
    /// `+` visits all children of that node; `#` visits the whole subtree
    /// including the node itself). Topics starting with `$` are not matched by
    /// a filter starting with a wildcard [MQTT-4.7.2-1].
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &T)) {
        let mut pending = vec![(&self.root, Some(filter))];
        while let Some((node, rest)) = pending.pop() {
            let Some(rest) = rest else {
                node.report(&mut f);
                continue;
            };
            let (level, tail) = match rest.split_once('/') {
                Some((level, tail)) => (level, Some(tail)),
                None => (rest, None),
            };
            let hide_dollar = ptr::eq(node, &self.root);
            let wildcard_children = node.children_for_wildcard(hide_dollar);
            match level {
                "#" => {
                    node.report(&mut f);
                    pending.extend(wildcard_children.map(|child| (child, Some("#"))));
                }
                "+" => pending.extend(wildcard_children.map(|child| (child, tail))),
                _ => pending.extend(node.children.get(level).map(|child| (child, tail))),
            }
        }
    }

    /// Keeps only the values for which `keep` returns true (used to drop
    /// expired messages), pruning empty nodes.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut dropped = Vec::new();
        let mut pending = vec![&mut self.root];
        while let Some(node) = pending.pop() {
            if let Some(value) = node.value.take_if(|value| !keep(value)) {
                dropped.push(value);
            }
            pending.extend(node.children.values_mut());
        }
        self.len -= dropped.len();
        for value in &dropped {
            self.root.prune(value.topic());
        }
    }

    /// Nodes in the trie, the root included; for checking that removal prunes.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut stack = vec![&self.root];
        let mut count = 0;
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.children.values());
        }
        count
    }
}

impl<T: Topical> Default for RetainedStore<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// One topic level: the topics that continue below it, and the retained
/// message of the topic that ends at it.
struct Node<T> {
    children: LevelMap<Node<T>>,
    /// The value of the topic that ends here; it knows its topic, so
    /// matches need not rebuild it from the levels.
    value: Option<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: LevelMap::default(),
            value: None,
        }
    }
}

impl<T> Node<T> {
    fn child(&self, level: &str) -> Option<&Node<T>> {
        self.children.get(level)
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<T>> {
        self.children.get_mut(level)
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<T> {
        self.children.get_or_default(level)
    }

    fn find_mut(&mut self, topic: &str) -> Option<&mut Node<T>> {
        topic.split('/').try_fold(self, Node::child_mut)
    }

    /// Creates the path to `topic`; only called when some of it is missing, so
    /// replacing a retained message allocates nothing for the path.
    fn create(&mut self, topic: &str) -> &mut Node<T> {
        topic.split('/').fold(self, Node::child_or_insert)
    }

    fn report(&self, f: &mut impl FnMut(&str, &T))
    where
        T: Topical,
    {
        if let Some(value) = &self.value {
            f(value.topic(), value);
        }
    }

    /// The children a `+` or `#` level visits: all of them, except those
    /// starting with `$` when `hide_dollar` (at the first level).
    fn children_for_wildcard(&self, hide_dollar: bool) -> impl Iterator<Item = &Node<T>> {
        self.children
            .iter()
            .filter(move |(level, _)| !(hide_dollar && level.starts_with('$')))
            .map(|(_, child)| child)
    }

    /// Detaches the deepest run of nodes along `topic` that hold nothing but
    /// the next node of the run, so removing a value leaves no empty nodes.
    fn prune(&mut self, topic: &str) {
        let Some(cut) = self.bare_from(topic) else {
            return;
        };
        let mut levels = topic.split('/');
        let parent = levels.by_ref().take(cut).try_fold(self, Node::child_mut);
        if let (Some(parent), Some(level)) = (parent, levels.next()) {
            parent.children.remove(level);
        }
    }

    /// The depth (0 for a child of `self`) of the shallowest node on `topic`
    /// from which every node down to the end of `topic` is empty but for the
    /// next one, if the last node is empty.
    fn bare_from(&self, topic: &str) -> Option<usize> {
        let mut node = self;
        let mut cut = None;
        for (depth, level) in topic.split('/').enumerate() {
            node = node.child(level)?;
            let bare = node.value.is_none() && node.children.len() <= 1;
            cut = if bare { cut.or(Some(depth)) } else { None };
        }
        if node.children.is_empty() { cut } else { None }
    }
}

/// Drops the subtree with a loop: the default drop would recurse once per
/// level, and a client can make a branch deep enough to overflow the stack.
impl<T> Drop for Node<T> {
    fn drop(&mut self) {
        let mut orphans: Vec<Node<T>> = self.children.take_all().collect();
        while let Some(mut node) = orphans.pop() {
            orphans.extend(node.children.take_all());
        }
    }
}

/// The broker's retained messages, with who set each and what each user
/// holds, for the quotas (`max_retained_messages`, `max_retained_bytes`,
/// and their `_per_user` forms). A message's size is its topic and payload.
#[derive(Default)]
pub struct Retained {
    topics: RetainedStore<Held>,
    total: Usage,
    per_user: HashMap<Arc<str>, Usage>,
}

/// A retained message and the user whose PUBLISH set it (`None`: an
/// anonymous client, or the broker).
struct Held {
    message: Arc<Message>,
    owner: Option<Arc<str>>,
}

impl Topical for Held {
    fn topic(&self) -> &str {
        &self.message.topic
    }
}

/// Retained messages and their bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub messages: usize,
    pub bytes: usize,
}

impl Usage {
    fn add(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes;
    }

    fn sub(&mut self, bytes: usize) {
        self.messages = self.messages.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Whether adding `bytes` as one more message (after `freed` was taken
    /// out) stays within `max_messages` and `max_bytes` (0: no limit).
    fn fits(self, freed: Usage, bytes: usize, max_messages: usize, max_bytes: usize) -> bool {
        let messages = self.messages - freed.messages + 1;
        let total = self.bytes - freed.bytes + bytes;
        (max_messages == 0 || messages <= max_messages) && (max_bytes == 0 || total <= max_bytes)
    }
}

/// The retained-message quotas; 0 means no limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quotas {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub max_messages_per_user: usize,
    pub max_bytes_per_user: usize,
}

impl Retained {
    /// Stores `message` as its topic's retained message, set by `owner`.
    pub fn insert(&mut self, message: Arc<Message>, owner: Option<Arc<str>>) {
        let size = message.size();
        self.charge(owner.as_ref(), size);
        let topic = message.topic.clone();
        if let Some(old) = self.topics.insert(&topic, Held { message, owner }) {
            self.refund(&old);
        }
    }

    /// Removes the retained message of `topic`.
    pub fn remove(&mut self, topic: &str) {
        if let Some(old) = self.topics.remove(topic) {
            self.refund(&old);
        }
    }

    /// Whether `owner` may set `topic`'s retained message to one of `size`
    /// bytes within `quotas`; replacing a message frees what it held.
    pub fn admits(
        &self,
        topic: &str,
        size: usize,
        owner: Option<&Arc<str>>,
        quotas: Quotas,
    ) -> bool {
        let old = self.topics.get(topic);
        let freed = |held: Option<&Held>| match held {
            Some(h) => Usage {
                messages: 1,
                bytes: h.message.size(),
            },
            None => Usage::default(),
        };
        if !self
            .total
            .fits(freed(old), size, quotas.max_messages, quotas.max_bytes)
        {
            return false;
        }
        let Some(owner) = owner else {
            return true;
        };
        let own = self.per_user.get(owner).copied().unwrap_or_default();
        let own_old = old.filter(|h| h.owner.as_ref() == Some(owner));
        own.fits(
            freed(own_old),
            size,
            quotas.max_messages_per_user,
            quotas.max_bytes_per_user,
        )
    }

    /// Calls `f` with every retained message whose topic matches `filter`
    /// (see [`RetainedStore::for_each_match`]).
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&Arc<Message>)) {
        self.topics
            .for_each_match(filter, |_, held| f(&held.message));
    }

    /// Keeps only the messages for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Message) -> bool) {
        let mut dropped = Vec::new();
        self.topics.retain(|held| {
            let kept = keep(&held.message);
            if !kept {
                dropped.push((held.owner.clone(), held.message.size()));
            }
            kept
        });
        for (owner, size) in dropped {
            self.uncharge(owner.as_ref(), size);
        }
    }

    /// Topics with a retained message.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    fn charge(&mut self, owner: Option<&Arc<str>>, size: usize) {
        self.total.add(size);
        if let Some(owner) = owner {
            self.per_user.entry(owner.clone()).or_default().add(size);
        }
    }

    fn refund(&mut self, old: &Held) {
        self.uncharge(old.owner.as_ref(), old.message.size());
    }

    fn uncharge(&mut self, owner: Option<&Arc<str>>, size: usize) {
        self.total.sub(size);
        if let Some(owner) = owner
            && let Some(usage) = self.per_user.get_mut(owner)
        {
            usage.sub(size);
            if usage.messages == 0 {
                self.per_user.remove(owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tern_codec::topic::filter_matches;

    use super::*;
    use crate::test_rng::Rng;

    /// A number set on a topic, which it knows.
    #[derive(Debug, PartialEq)]
    struct Set(String, u32);

    impl Topical for Set {
        fn topic(&self) -> &str {
            &self.0
        }
    }

    /// A store of numbers, set and read back without their topics.
    #[derive(Default)]
    struct Store(RetainedStore<Set>);

    impl Store {
        fn new() -> Store {
            Store::default()
        }

        fn insert(&mut self, topic: &str, value: u32) -> Option<u32> {
            let old = self.0.insert(topic, Set(topic.to_string(), value));
            old.map(|Set(_, v)| v)
        }

        fn remove(&mut self, topic: &str) -> Option<u32> {
            self.0.remove(topic).map(|Set(_, v)| v)
        }

        fn get(&self, topic: &str) -> Option<&u32> {
            self.0.get(topic).map(|Set(_, v)| v)
        }

        fn retain(&mut self, mut keep: impl FnMut(&u32) -> bool) {
            self.0.retain(|Set(_, v)| keep(v));
        }

        fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &u32)) {
            self.0
                .for_each_match(filter, |topic, Set(_, v)| f(topic, v));
        }

        fn len(&self) -> usize {
            self.0.len()
        }

        fn is_empty(&self) -> bool {
            self.0.is_empty()
        }

        fn node_count(&self) -> usize {
            self.0.node_count()
        }
    }

    /// The (topic, value) pairs matching `filter`, sorted.
    fn matches(store: &Store, filter: &str) -> Vec<(String, u32)> {
        let mut found = Vec::new();
        store.for_each_match(filter, |topic, value| {
            found.push((topic.to_string(), *value))
        });
        found.sort();
        found
    }

    fn topics(store: &Store, filter: &str) -> Vec<String> {
        matches(store, filter).into_iter().map(|(t, _)| t).collect()
    }

    fn store_of(topics: &[&str]) -> Store {
        let mut store = Store::new();
        for (value, topic) in (0..).zip(topics) {
            assert_eq!(store.insert(topic, value), None);
        }
        store
    }

    #[test]
    fn insert_get_replace_remove() {
        let mut store = Store::new();
        assert_eq!(store.insert("a/b", 1), None);
        assert_eq!(store.insert("a", 2), None);
        assert_eq!(store.get("a/b"), Some(&1));
        assert_eq!(store.get("a"), Some(&2));
        assert_eq!(store.get("a/b/c"), None);
        assert_eq!(store.get("b"), None);
        assert_eq!(store.insert("a/b", 3), Some(1));
        assert_eq!(store.get("a/b"), Some(&3));
        assert_eq!(store.len(), 2);
        assert_eq!(store.remove("a/b"), Some(3));
        assert_eq!(store.remove("a/b"), None);
        assert_eq!(store.remove("x"), None);
        assert_eq!(store.get("a"), Some(&2));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn exact_filter() {
        let store = store_of(&["a/b", "a", "a/b/c", "a/c"]);
        assert_eq!(matches(&store, "a/b"), [("a/b".to_string(), 0)]);
        assert_eq!(topics(&store, "a"), ["a"]);
        assert!(topics(&store, "b").is_empty());
        assert!(topics(&store, "a/b/c/d").is_empty());
    }

    #[test]
    fn plus_matches_one_level() {
        let store = store_of(&["a", "a/b", "a/c", "x/b", "a/b/c"]);
        assert_eq!(topics(&store, "+"), ["a"]);
        assert_eq!(topics(&store, "a/+"), ["a/b", "a/c"]);
        assert_eq!(topics(&store, "+/b"), ["a/b", "x/b"]);
        assert_eq!(topics(&store, "+/+/+"), ["a/b/c"]);
    }

    #[test]
    fn hash_matches_parent_and_children() {
        let store = store_of(&["a", "a/b", "a/b/c/d", "ab", "b/a"]);
        assert_eq!(topics(&store, "a/#"), ["a", "a/b", "a/b/c/d"]);
        assert_eq!(topics(&store, "#"), ["a", "a/b", "a/b/c/d", "ab", "b/a"]);
        assert_eq!(topics(&store, "+/#"), ["a", "a/b", "a/b/c/d", "ab", "b/a"]);
        assert_eq!(topics(&store, "a/b/#"), ["a/b", "a/b/c/d"]);
        assert_eq!(topics(&store, "+/a/#"), ["b/a"]);
    }

    #[test]
    fn empty_levels() {
        let store = store_of(&["a//b", "/a", "/", "a/b"]);
        assert_eq!(topics(&store, "a//b"), ["a//b"]);
        assert_eq!(topics(&store, "a/+/b"), ["a//b"]);
        assert_eq!(topics(&store, "+/+"), ["/", "/a", "a/b"]);
        assert_eq!(topics(&store, "/#"), ["/", "/a"]);
        assert_eq!(topics(&store, "/"), ["/"]);
    }

    #[test]
    fn dollar_topics_skip_leading_wildcards() {
        let store = store_of(&["$SYS/x", "$SYS", "a/x", "a$/x"]);
        assert_eq!(topics(&store, "#"), ["a$/x", "a/x"]);
        assert_eq!(topics(&store, "+/x"), ["a$/x", "a/x"]);
        assert_eq!(topics(&store, "$SYS/#"), ["$SYS", "$SYS/x"]);
        assert_eq!(topics(&store, "$SYS/+"), ["$SYS/x"]);
    }

    #[test]
    fn remove_prunes() {
        let mut store = store_of(&["a/b/c/d", "a/b", "a/x"]);
        let before = store.node_count();
        store.insert("a/b/e/f", 9);
        assert_eq!(store.node_count(), before + 2);
        assert_eq!(store.remove("a/b/e/f"), Some(9));
        assert_eq!(store.node_count(), before);
        assert_eq!(store.remove("a/b/c/d"), Some(0));
        // root, a, b, x
        assert_eq!(store.node_count(), 4);
        assert_eq!(store.remove("a/b"), Some(1));
        assert_eq!(store.remove("a/x"), Some(2));
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 1);
    }

    #[test]
    fn retain_drops_and_prunes() {
        let mut store = store_of(&["a/b/c", "a/b", "a", "x/y/z", "x//"]);
        store.retain(|value| value % 2 == 0);
        assert_eq!(store.len(), 3);
        assert_eq!(topics(&store, "#"), ["a", "a/b/c", "x//"]);
        // root, a, b, c, x, "", ""
        assert_eq!(store.node_count(), 7);
        store.retain(|_| false);
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 1);
    }

    #[test]
    fn len_counts_topics() {
        let mut store = Store::default();
        assert!(store.is_empty());
        store.insert("a", 1);
        store.insert("a", 2);
        store.insert("a/b", 3);
        assert_eq!(store.len(), 2);
        assert!(!store.is_empty());
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        let run = || {
            let deep = "/".repeat(60_000);
            let mut store = Store::new();
            store.insert(&deep, 1);
            store.insert(&format!("{deep}x"), 2);
            assert_eq!(store.get(&deep), Some(&1));
            assert_eq!(topics(&store, "#").len(), 2);
            assert_eq!(topics(&store, &deep.replace('/', "+/")), [deep.as_str()]);
            store.retain(|value| *value == 2);
            assert_eq!(store.remove(&deep), None);
            store.insert("x", 3);
            // Dropped with a deep branch left in it.
        };
        let thread = std::thread::Builder::new().stack_size(128 * 1024);
        let handle = thread.spawn(run).expect("spawn a thread");
        assert!(handle.join().is_ok());
    }

    #[test]
    fn agrees_with_filter_matches() {
        let mut rng = Rng(11);
        let mut store = Store::new();
        let mut model = BTreeMap::new();
        for round in 0..40u32 {
            for _ in 0..20 {
                let topic = rng.topic();
                assert_eq!(store.insert(&topic, round), model.insert(topic, round));
            }
            for _ in 0..5 {
                let topic = rng.topic();
                assert_eq!(store.remove(&topic), model.remove(&topic));
            }
            let cutoff = round.saturating_sub(5);
            store.retain(|value| *value >= cutoff);
            model.retain(|_, value| *value >= cutoff);
            assert_eq!(store.len(), model.len());
            for _ in 0..50 {
                let filter = rng.filter();
                let want: Vec<(String, u32)> = model
                    .iter()
                    .filter(|(topic, _)| filter_matches(&filter, topic))
                    .map(|(topic, value)| (topic.clone(), *value))
                    .collect();
                let mut found = Vec::new();
                store.for_each_match(&filter, |t, v| found.push((t.to_string(), *v)));
                found.sort();
                assert_eq!(found, want, "round {round}, filter {filter:?}");
            }
        }
        store.retain(|_| false);
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 1);
    }
}
