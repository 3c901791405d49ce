//! The subscription index: which subscriptions a PUBLISH goes to.
//!
//! Every message the broker routes asks this tree for the subscriptions whose
//! filters match its topic, so a match must cost in proportion to the matching
//! branches, not to the number of subscriptions. Filters are therefore kept in a
//! trie keyed by topic level. Each node has its literal children, at most one
//! `+` child, the subscriptions whose filter ends at the node, and those whose
//! filter is the node's path followed by `#`. Matching a topic follows the one
//! literal child for each level, every `+` child on the way, and reports the
//! `#` subscriptions of each node it passes.
//!
//! The tree owns the filters' levels and one value per subscription (the broker
//! stores the session and the subscription options there). Members of a shared
//! subscription (`$share/{group}/{filter}`) are grouped, so that the broker can
//! pick one member of each matching group per message.
//!
//! A filter or topic can have tens of thousands of levels, chosen by a client,
//! so nothing here recurses over levels: walks are loops with explicit stacks,
//! and nodes are dropped iteratively.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::mem;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tern_codec::ByteStr;

use crate::level_map::LevelMap;

/// Every subscription the broker holds, indexed by filter level.
pub struct TopicTree<T> {
    root: Node<T>,
    len: usize,
}

impl<T> TopicTree<T> {
    /// An empty tree.
    pub fn new() -> Self {
        TopicTree {
            root: Node::default(),
            len: 0,
        }
    }

    /// Adds or replaces the subscription of `client_id` to `filter`, or, with
    /// `share_group = Some(g)`, its membership of the shared subscription group
    /// `g` on `filter` (`$share/g/filter`). Returns the previous value for the
    /// same (filter, group, client_id), if any, so that a repeated SUBSCRIBE
    /// replaces the subscription instead of adding a second one [MQTT-3.8.4-3].
    pub fn insert(
        &mut self,
        filter: &str,
        share_group: Option<&str>,
        client_id: &ByteStr,
        value: T,
    ) -> Option<T> {
        let (path, multi) = split_filter(filter);
        let node = levels(path).fold(&mut self.root, Node::child_or_insert);
        let previous = node
            .subscriptions_mut(multi)
            .insert(share_group, filter, client_id, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes that subscription; prunes nodes left empty so memory does not
    /// grow with churn. Returns the removed value.
    pub fn remove(
        &mut self,
        filter: &str,
        share_group: Option<&str>,
        client_id: &str,
    ) -> Option<T> {
        let (path, multi) = split_filter(filter);
        let node = self.root.find_mut(path)?;
        let removed = node
            .subscriptions_mut(multi)
            .remove(share_group, client_id)?;
        self.len -= 1;
        self.root.prune(path);
        Some(removed)
    }

    /// Number of subscriptions held (shared memberships count one each).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no subscriptions are held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `on_match` once for every non-shared subscription whose filter
    /// matches `topic`, and once for every shared group (distinct (group,
    /// filter) pair) whose filter matches `topic`; the caller picks the member.
    /// Topics starting with `$` are not matched by filters starting with a
    /// wildcard [MQTT-4.7.2-1].
    pub fn for_each_match<'a>(&'a self, topic: &str, mut on_match: impl FnMut(Matched<'a, T>)) {
        let wildcards_at_root = !topic.starts_with('$');
        let mut pending = Vec::new();
        let mut next = self
            .root
            .step(Some(topic), wildcards_at_root, &mut pending, &mut on_match);
        while let Some((node, rest)) = next.or_else(|| pending.pop()) {
            next = node.step(rest, true, &mut pending, &mut on_match);
        }
    }

    /// Nodes in the trie, the root included; for checking that removal prunes.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut stack = vec![&self.root];
        let mut count = 0;
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.literal.values());
            stack.extend(node.plus.as_deref());
        }
        count
    }
}

impl<T> Default for TopicTree<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// One match reported by [`TopicTree::for_each_match`].
pub enum Matched<'a, T> {
    /// A non-shared subscription: the message goes to this client.
    /// `first`: the first reported of its filter's subscribers (which are
    /// all different clients), so a caller that sees only one filter's
    /// knows it has no client twice.
    Subscriber {
        client_id: &'a ByteStr,
        value: &'a T,
        first: bool,
    },
    /// A shared subscription group: the message goes to one of its members.
    Shared(&'a SharedGroup<T>),
}

/// Members of one shared subscription group on one filter, in join order.
pub struct SharedGroup<T> {
    name: Arc<str>,
    /// `{group}/{filter}`: names this group on every node of a cluster.
    key: Arc<str>,
    members: Vec<(ByteStr, T)>,
    cursor: AtomicUsize,
}

impl<T> SharedGroup<T> {
    fn new(name: Arc<str>, filter: &str) -> Self {
        SharedGroup {
            key: format!("{name}/{filter}").into(),
            name,
            members: Vec::new(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The group's name, the `{group}` of `$share/{group}/{filter}`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `{group}/{filter}`, the subscription without `$share/`: one group
    /// has the same key on every node of a cluster.
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }

    /// The members, in join order; a member that resubscribes keeps its place.
    pub fn members(&self) -> &[(ByteStr, T)] {
        &self.members
    }

    /// A start index for round-robin selection that advances by one on each
    /// call, always < `members().len()` when non-empty. Takes `&self` because
    /// it is called while routing, under a shared lock on the tree.
    pub fn next_start(&self) -> usize {
        match self.members.len() {
            0 => 0,
            n => self.cursor.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// Adds a member, or replaces its value in place.
    fn insert(&mut self, client_id: &ByteStr, value: T) -> Option<T> {
        match self.members.iter_mut().find(|(id, _)| id == client_id) {
            Some((_, old)) => Some(mem::replace(old, value)),
            None => {
                self.members.push((client_id.clone(), value));
                None
            }
        }
    }

    /// Removes a member, keeping the others in join order.
    fn remove(&mut self, client_id: &str) -> Option<T> {
        let index = self.members.iter().position(|(id, _)| **id == *client_id)?;
        Some(self.members.remove(index).1)
    }
}

/// The subscriptions attached to one place in the trie. Most places in a
/// fleet's index hold one subscriber or none, and none of a shared group: so
/// no map is allocated for those.
struct Subscriptions<T> {
    /// Non-shared subscriptions, by client id.
    direct: Direct<T>,
    /// Shared subscription groups, by group name; `None`: none.
    #[allow(clippy::box_collection, reason = "one pointer where there are none")]
    shared: Option<Box<HashMap<Arc<str>, SharedGroup<T>>>>,
}

impl<T> Default for Subscriptions<T> {
    fn default() -> Self {
        Subscriptions {
            direct: Direct::Few(Vec::new()),
            shared: None,
        }
    }
}

impl<T> Subscriptions<T> {
    fn insert(
        &mut self,
        share_group: Option<&str>,
        filter: &str,
        client_id: &ByteStr,
        value: T,
    ) -> Option<T> {
        match share_group {
            None => self.direct.insert(client_id, value),
            Some(name) => self.group_or_insert(name, filter).insert(client_id, value),
        }
    }

    fn group_or_insert(&mut self, name: &str, filter: &str) -> &mut SharedGroup<T> {
        match self
            .shared
            .get_or_insert_with(Box::default)
            .entry(name.into())
        {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let name = entry.key().clone();
                entry.insert(SharedGroup::new(name, filter))
            }
        }
    }

    /// Removes one subscription, and its group if that was the last member.
    fn remove(&mut self, share_group: Option<&str>, client_id: &str) -> Option<T> {
        let Some(name) = share_group else {
            return self.direct.remove(client_id);
        };
        let groups = self.shared.as_mut()?;
        let group = groups.get_mut(name)?;
        let removed = group.remove(client_id)?;
        if group.members.is_empty() {
            groups.remove(name);
            if groups.is_empty() {
                self.shared = None;
            }
        }
        Some(removed)
    }

    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_none()
    }

    fn report<'a>(&'a self, on_match: &mut impl FnMut(Matched<'a, T>)) {
        self.direct.report(on_match);
        for group in self.shared.iter().flat_map(|groups| groups.values()) {
            on_match(Matched::Shared(group));
        }
    }
}

/// Most subscriptions a place keeps in a list (looked through by client id)
/// before it keeps them in a map.
const FEW: usize = 8;

/// The non-shared subscriptions of one place: a list sized to fit while they
/// are few (a map of one subscriber would take four slots), a map beyond.
enum Direct<T> {
    Few(Vec<(ByteStr, T)>),
    #[allow(
        clippy::box_collection,
        reason = "the list's 24 bytes for the enum, not 48"
    )]
    Many(Box<HashMap<ByteStr, T>>),
}

impl<T> Direct<T> {
    fn insert(&mut self, client_id: &ByteStr, value: T) -> Option<T> {
        let few = match self {
            Direct::Many(map) => return map.insert(client_id.clone(), value),
            Direct::Few(few) => few,
        };
        if let Some((_, old)) = few.iter_mut().find(|(id, _)| id == client_id) {
            return Some(mem::replace(old, value));
        }
        if few.len() < FEW {
            few.reserve_exact(1);
            few.push((client_id.clone(), value));
        } else {
            let mut map: HashMap<ByteStr, T> = mem::take(few).into_iter().collect();
            map.insert(client_id.clone(), value);
            *self = Direct::Many(Box::new(map));
        }
        None
    }

    fn remove(&mut self, client_id: &str) -> Option<T> {
        match self {
            Direct::Few(few) => {
                let index = few.iter().position(|(id, _)| **id == *client_id)?;
                let (_, removed) = few.swap_remove(index);
                few.shrink_to_fit();
                Some(removed)
            }
            Direct::Many(map) => {
                let removed = map.remove(client_id);
                if map.is_empty() {
                    *self = Direct::Few(Vec::new());
                }
                removed
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Direct::Few(few) => few.is_empty(),
            Direct::Many(map) => map.is_empty(),
        }
    }

    fn report<'a>(&'a self, on_match: &mut impl FnMut(Matched<'a, T>)) {
        let mut report = |i: usize, client_id, value| {
            on_match(Matched::Subscriber {
                client_id,
                value,
                first: i == 0,
            })
        };
        match self {
            Direct::Few(few) => {
                for (i, (client_id, value)) in few.iter().enumerate() {
                    report(i, client_id, value);
                }
            }
            Direct::Many(map) => {
                for (i, (client_id, value)) in map.iter().enumerate() {
                    report(i, client_id, value);
                }
            }
        }
    }
}

/// A node still to be matched against the topic levels `rest` (`None` when
/// every level has been consumed).
type Cursor<'a, 't, T> = (&'a Node<T>, Option<&'t str>);

/// One filter level: the filters that continue below it, or end at it.
struct Node<T> {
    literal: LevelMap<Node<T>>,
    plus: Option<Box<Node<T>>>,
    /// Filters whose last level is this node.
    exact: Subscriptions<T>,
    /// Filters that are this node's path followed by `/#` (or `#` at the root).
    multi: Subscriptions<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literal: LevelMap::default(),
            plus: None,
            exact: Subscriptions::default(),
            multi: Subscriptions::default(),
        }
    }
}

impl<T> Node<T> {
    fn child(&self, level: &str) -> Option<&Node<T>> {
        match level {
            "+" => self.plus.as_deref(),
            _ => self.literal.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<T>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            _ => self.literal.get_mut(level),
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<T> {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            _ => self.literal.get_or_default(level),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            _ => {
                self.literal.remove(level);
            }
        }
    }

    fn child_count(&self) -> usize {
        self.literal.len() + usize::from(self.plus.is_some())
    }

    fn has_subscriptions(&self) -> bool {
        !self.exact.is_empty() || !self.multi.is_empty()
    }

    fn subscriptions_mut(&mut self, multi: bool) -> &mut Subscriptions<T> {
        if multi {
            &mut self.multi
        } else {
            &mut self.exact
        }
    }

    fn find_mut(&mut self, path: Option<&str>) -> Option<&mut Node<T>> {
        levels(path).try_fold(self, Node::child_mut)
    }

    /// Detaches the deepest run of nodes along `path` that hold nothing but the
    /// next node of the run, so removing a subscription leaves no empty nodes.
    fn prune(&mut self, path: Option<&str>) {
        let Some(cut) = self.bare_from(path) else {
            return;
        };
        let mut levels = levels(path);
        let parent = levels.by_ref().take(cut).try_fold(self, Node::child_mut);
        if let (Some(parent), Some(level)) = (parent, levels.next()) {
            parent.remove_child(level);
        }
    }

    /// The depth (0 for a child of `self`) of the shallowest node on `path`
    /// from which every node down to the end of `path` is empty but for the
    /// next one, if the last node is empty.
    fn bare_from(&self, path: Option<&str>) -> Option<usize> {
        let mut node = self;
        let mut cut = None;
        for (depth, level) in levels(path).enumerate() {
            node = node.child(level)?;
            let bare = !node.has_subscriptions() && node.child_count() <= 1;
            cut = if bare { cut.or(Some(depth)) } else { None };
        }
        if node.child_count() == 0 { cut } else { None }
    }

    /// Reports this node's subscriptions that match a topic whose unmatched
    /// levels are `rest`, queues the `+` child on `pending` and returns the
    /// literal child to continue with. `wildcards` is false only at the root
    /// for a `$` topic.
    fn step<'a, 't>(
        &'a self,
        rest: Option<&'t str>,
        wildcards: bool,
        pending: &mut Vec<Cursor<'a, 't, T>>,
        on_match: &mut impl FnMut(Matched<'a, T>),
    ) -> Option<Cursor<'a, 't, T>> {
        if wildcards {
            self.multi.report(on_match);
        }
        let Some(rest) = rest else {
            self.exact.report(on_match);
            return None;
        };
        let (level, tail) = match rest.split_once('/') {
            Some((level, tail)) => (level, Some(tail)),
            None => (rest, None),
        };
        if let Some(plus) = self.plus.as_deref().filter(|_| wildcards) {
            pending.push((plus, tail));
        }
        self.literal.get(level).map(|child| (child, tail))
    }

    fn move_children_to(&mut self, out: &mut Vec<Node<T>>) {
        out.extend(self.literal.take_all());
        out.extend(self.plus.take().map(|child| *child));
    }
}

/// Drops the subtree with a loop: the default drop would recurse once per
/// level, and a client can make a branch deep enough to overflow the stack.
impl<T> Drop for Node<T> {
    fn drop(&mut self) {
        let mut orphans = Vec::new();
        self.move_children_to(&mut orphans);
        while let Some(mut node) = orphans.pop() {
            node.move_children_to(&mut orphans);
        }
    }
}

/// Splits a filter into the levels that name trie nodes (`None`: no levels,
/// the filter is `#` alone) and whether it ends with `#`, which is kept on the
/// last of those nodes rather than as a node of its own.
fn split_filter(filter: &str) -> (Option<&str>, bool) {
    if filter == "#" {
        return (None, true);
    }
    match filter.strip_suffix("/#") {
        Some(path) => (Some(path), true),
        None => (Some(filter), false),
    }
}

fn levels(path: Option<&str>) -> impl Iterator<Item = &str> {
    path.into_iter().flat_map(|path| path.split('/'))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tern_codec::topic::filter_matches;

    use super::*;
    use crate::test_rng::Rng;

    /// What a match reported, comparable across runs: non-shared subscriptions
    /// as (client, value), groups as (group name, members' values).
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum Hit {
        Sub(String, u32),
        Group(String, Vec<u32>),
    }

    fn hits(tree: &TopicTree<u32>, topic: &str) -> Vec<Hit> {
        let mut hits = Vec::new();
        tree.for_each_match(topic, |matched| {
            hits.push(match matched {
                Matched::Subscriber {
                    client_id, value, ..
                } => Hit::Sub(client_id.to_string(), *value),
                Matched::Shared(group) => Hit::Group(
                    group.name().to_string(),
                    group.members().iter().map(|(_, v)| *v).collect(),
                ),
            })
        });
        hits.sort();
        hits
    }

    fn values(tree: &TopicTree<u32>, topic: &str) -> Vec<u32> {
        let mut values: Vec<u32> = hits(tree, topic)
            .into_iter()
            .flat_map(|hit| match hit {
                Hit::Sub(_, v) => vec![v],
                Hit::Group(_, vs) => vs,
            })
            .collect();
        values.sort();
        values
    }

    fn sub(tree: &mut TopicTree<u32>, filter: &str, value: u32) {
        let client = ByteStr::from(format!("c{value}"));
        assert_eq!(tree.insert(filter, None, &client, value), None);
    }

    #[test]
    fn exact_match() {
        let mut tree = TopicTree::new();
        sub(&mut tree, "a/b", 1);
        sub(&mut tree, "a", 2);
        sub(&mut tree, "a/b/c", 3);
        assert_eq!(values(&tree, "a/b"), [1]);
        assert_eq!(values(&tree, "a"), [2]);
        assert_eq!(values(&tree, "a/b/c"), [3]);
        assert!(values(&tree, "a/c").is_empty());
        assert!(values(&tree, "b").is_empty());
        assert!(values(&tree, "a/b/c/d").is_empty());
    }

    #[test]
    fn plus_matches_one_level() {
        let mut tree = TopicTree::new();
        sub(&mut tree, "+", 1);
        sub(&mut tree, "a/+", 2);
        sub(&mut tree, "+/b", 3);
        sub(&mut tree, "+/+", 4);
        assert_eq!(values(&tree, "a"), [1]);
        assert_eq!(values(&tree, "a/b"), [2, 3, 4]);
        assert_eq!(values(&tree, "a/c"), [2, 4]);
        assert_eq!(values(&tree, "x/b"), [3, 4]);
        assert!(values(&tree, "a/b/c").is_empty());
    }

    #[test]
    fn hash_matches_parent_and_children() {
        let mut tree = TopicTree::new();
        sub(&mut tree, "#", 1);
        sub(&mut tree, "a/#", 2);
        sub(&mut tree, "a/+/#", 3);
        assert_eq!(values(&tree, "a"), [1, 2]);
        assert_eq!(values(&tree, "a/b"), [1, 2, 3]);
        assert_eq!(values(&tree, "a/b/c/d"), [1, 2, 3]);
        assert_eq!(values(&tree, "b"), [1]);
        assert_eq!(values(&tree, "ab"), [1]);
    }

    #[test]
    fn empty_levels() {
        let mut tree = TopicTree::new();
        sub(&mut tree, "a//b", 1);
        sub(&mut tree, "/a", 2);
        sub(&mut tree, "+/+", 3);
        sub(&mut tree, "/#", 4);
        sub(&mut tree, "+", 5);
        assert_eq!(values(&tree, "a//b"), [1]);
        assert_eq!(values(&tree, "/a"), [2, 3, 4]);
        assert_eq!(values(&tree, "/"), [3, 4]);
        assert!(values(&tree, "a/b").contains(&3));
    }

    #[test]
    fn dollar_topics_skip_leading_wildcards() {
        let mut tree = TopicTree::new();
        sub(&mut tree, "#", 1);
        sub(&mut tree, "+/x", 2);
        sub(&mut tree, "$SYS/#", 3);
        sub(&mut tree, "$SYS/+", 4);
        sub(&mut tree, "+", 5);
        assert_eq!(values(&tree, "$SYS/x"), [3, 4]);
        assert_eq!(values(&tree, "$SYS"), [3]);
        assert_eq!(values(&tree, "a/x"), [1, 2]);
        assert_eq!(values(&tree, "a$/x"), [1, 2]);
    }

    #[test]
    fn insert_replaces_and_returns_previous() {
        let mut tree = TopicTree::new();
        let c = ByteStr::from("c");
        assert_eq!(tree.insert("a/+", None, &c, 1), None);
        assert_eq!(tree.insert("a/+", None, &c, 2), Some(1));
        assert_eq!(tree.insert("a/+", Some("g"), &c, 3), None);
        assert_eq!(tree.insert("a/+", Some("g"), &c, 4), Some(3));
        assert_eq!(tree.len(), 2);
        assert_eq!(
            hits(&tree, "a/b"),
            [Hit::Sub("c".into(), 2), Hit::Group("g".into(), vec![4])]
        );
    }

    #[test]
    fn remove_returns_value_and_prunes() {
        let mut tree = TopicTree::new();
        let c = ByteStr::from("c");
        for filter in ["a/b/c", "a/+/c/#", "#", "a/b", "+/+/+", "x//y/#"] {
            tree.insert(filter, None, &c, 1);
            tree.insert(filter, Some("g"), &c, 2);
        }
        assert_eq!(tree.len(), 12);
        assert_eq!(tree.remove("a/b/c", None, "other"), None);
        assert_eq!(tree.remove("a/b/c/d", None, "c"), None);
        assert_eq!(tree.remove("a/b/c", Some("h"), "c"), None);
        for filter in ["a/b/c", "a/+/c/#", "#", "a/b", "+/+/+", "x//y/#"] {
            assert_eq!(tree.remove(filter, None, "c"), Some(1));
            assert_eq!(tree.remove(filter, None, "c"), None);
            assert_eq!(tree.remove(filter, Some("g"), "c"), Some(2));
        }
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
    }

    #[test]
    fn prune_keeps_nodes_still_in_use() {
        let mut tree = TopicTree::new();
        sub(&mut tree, "a/b/c/d", 1);
        sub(&mut tree, "a/b", 2);
        sub(&mut tree, "a/+/x", 3);
        let before = tree.node_count();
        sub(&mut tree, "a/b/e/f", 4);
        assert_eq!(tree.node_count(), before + 2);
        assert_eq!(tree.remove("a/b/e/f", None, "c4"), Some(4));
        assert_eq!(tree.node_count(), before);
        assert_eq!(tree.remove("a/b/c/d", None, "c1"), Some(1));
        assert_eq!(values(&tree, "a/b"), [2]);
        assert_eq!(values(&tree, "a/q/x"), [3]);
        // root, a, b, +, x
        assert_eq!(tree.node_count(), 5);
        assert_eq!(tree.remove("a/b", None, "c2"), Some(2));
        assert_eq!(tree.node_count(), 4);
        assert_eq!(tree.remove("a/+/x", None, "c3"), Some(3));
        assert_eq!(tree.node_count(), 1);
    }

    #[test]
    fn shared_group_round_robin() {
        let mut tree = TopicTree::new();
        let (a, b) = (ByteStr::from("a"), ByteStr::from("b"));
        tree.insert("t/+", Some("g"), &a, 1);
        tree.insert("t/+", Some("g"), &b, 2);
        let mut starts = Vec::new();
        for _ in 0..4 {
            tree.for_each_match("t/x", |matched| match matched {
                Matched::Shared(group) => {
                    assert_eq!(group.name(), "g");
                    let ids: Vec<&str> = group.members().iter().map(|(id, _)| &**id).collect();
                    assert_eq!(ids, ["a", "b"]);
                    starts.push(group.next_start());
                }
                Matched::Subscriber { .. } => panic!("no direct subscriptions"),
            });
        }
        assert_eq!(starts, [0, 1, 0, 1]);
        // A member that resubscribes keeps its place in the join order.
        assert_eq!(tree.insert("t/+", Some("g"), &a, 3), Some(1));
        assert_eq!(hits(&tree, "t/x"), [Hit::Group("g".into(), vec![3, 2])]);
        assert_eq!(tree.remove("t/+", Some("g"), "a"), Some(3));
        assert_eq!(hits(&tree, "t/x"), [Hit::Group("g".into(), vec![2])]);
    }

    #[test]
    fn every_group_and_direct_subscription_is_reported() {
        let mut tree = TopicTree::new();
        let c = ByteStr::from("c");
        tree.insert("t/#", Some("g1"), &c, 1);
        tree.insert("t/#", Some("g2"), &c, 2);
        tree.insert("t/#", None, &c, 3);
        tree.insert("t/+", Some("g1"), &c, 4);
        assert_eq!(tree.len(), 4);
        assert_eq!(
            hits(&tree, "t/x"),
            [
                Hit::Sub("c".into(), 3),
                Hit::Group("g1".into(), vec![1]),
                Hit::Group("g1".into(), vec![4]),
                Hit::Group("g2".into(), vec![2]),
            ]
        );
    }

    /// One filter's subscribers past the few a list holds, and back: each
    /// reported once, replaced in place, removed, and the node pruned.
    #[test]
    fn a_place_with_many_subscribers_keeps_each_once() {
        let mut tree = TopicTree::new();
        let clients: Vec<ByteStr> = (0..3 * FEW as u32)
            .map(|i| format!("c{i}").into())
            .collect();
        for (value, client) in (0..).zip(&clients) {
            assert_eq!(tree.insert("a/b", None, client, value), None);
            assert_eq!(tree.insert("a/b", None, client, value + 100), Some(value));
        }
        let firsts = |tree: &TopicTree<u32>| {
            let mut firsts = 0;
            tree.for_each_match("a/b", |m| {
                if let Matched::Subscriber { first: true, .. } = m {
                    firsts += 1;
                }
            });
            firsts
        };
        assert_eq!(
            values(&tree, "a/b"),
            (100..100 + 3 * FEW as u32).collect::<Vec<_>>()
        );
        assert_eq!(firsts(&tree), 1);
        for (value, client) in (0..).zip(&clients).skip(1) {
            assert_eq!(tree.remove("a/b", None, client), Some(value + 100));
        }
        assert_eq!(values(&tree, "a/b"), [100]);
        assert_eq!(tree.remove("a/b", None, &clients[0]), Some(100));
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
    }

    #[test]
    fn len_counts_subscriptions() {
        let mut tree = TopicTree::default();
        assert!(tree.is_empty());
        let (a, b) = (ByteStr::from("a"), ByteStr::from("b"));
        tree.insert("x", None, &a, 1);
        tree.insert("x", None, &b, 1);
        tree.insert("x", None, &a, 1);
        tree.insert("x", Some("g"), &a, 1);
        tree.insert("x", Some("g"), &b, 1);
        tree.insert("x/#", None, &a, 1);
        assert_eq!(tree.len(), 5);
        tree.remove("x", Some("g"), "a");
        tree.remove("x", Some("g"), "a");
        assert_eq!(tree.len(), 4);
        assert!(!tree.is_empty());
    }

    #[test]
    fn next_start_on_empty_group_is_zero() {
        let group: SharedGroup<u32> = SharedGroup::new("g".into(), "a/+");
        assert_eq!(group.next_start(), 0);
    }

    #[test]
    fn deep_filters_do_not_overflow_the_stack() {
        let run = || {
            let deep = "/".repeat(60_000);
            let mut tree = TopicTree::new();
            let c = ByteStr::from("c");
            tree.insert(&deep, None, &c, 1);
            tree.insert(&format!("{deep}/#"), None, &c, 2);
            tree.insert(&deep.replace('/', "+/"), None, &c, 3);
            assert_eq!(values(&tree, &deep), [1, 2, 3]);
            assert_eq!(tree.remove(&deep, None, "c"), Some(1));
            tree.insert("/x", None, &c, 4);
            // Dropped with a deep branch left in it.
        };
        let thread = std::thread::Builder::new().stack_size(128 * 1024);
        let handle = thread.spawn(run).expect("spawn a thread");
        assert!(handle.join().is_ok());
    }

    type Subscription = (String, Option<&'static str>, String);

    /// What `filter_matches` says the tree should report for `topic`.
    fn expected(subscriptions: &BTreeSet<Subscription>, topic: &str) -> Vec<String> {
        let mut expected: Vec<String> = subscriptions
            .iter()
            .filter(|(filter, _, _)| filter_matches(filter, topic))
            .map(|(filter, group, client)| match group {
                None => format!("{filter} {client}"),
                Some(group) => format!("{filter} ${group}"),
            })
            .collect();
        expected.dedup();
        expected
    }

    /// What the tree reports for `topic`, in the same form; each value is its
    /// subscription's filter, so shared groups can be told apart.
    fn reported(tree: &TopicTree<String>, topic: &str) -> Vec<String> {
        let mut reported = Vec::new();
        tree.for_each_match(topic, |matched| {
            reported.push(match matched {
                Matched::Subscriber {
                    client_id, value, ..
                } => format!("{value} {client_id}"),
                Matched::Shared(group) => {
                    let filter = group.members().first().map_or("", |(_, f)| f.as_str());
                    format!("{filter} ${}", group.name())
                }
            })
        });
        reported.sort();
        reported
    }

    #[test]
    fn agrees_with_filter_matches() {
        let mut rng = Rng(7);
        let mut tree = TopicTree::new();
        let mut subscriptions = BTreeSet::new();
        for round in 0..40 {
            for _ in 0..30 {
                let filter = rng.filter();
                let group = [None, None, Some("g"), Some("h")][rng.below(4)];
                let client = rng.pick(&["c1", "c2", "c3"]).to_string();
                let previous = tree.insert(&filter, group, &client.as_str().into(), filter.clone());
                let added = subscriptions.insert((filter, group, client));
                assert_eq!(previous.is_none(), added);
            }
            let doomed: Vec<Subscription> = subscriptions
                .iter()
                .filter(|_| rng.below(3) == 0)
                .cloned()
                .collect();
            for (filter, group, client) in doomed {
                assert_eq!(tree.remove(&filter, group, &client).as_ref(), Some(&filter));
                subscriptions.remove(&(filter, group, client));
            }
            assert_eq!(tree.len(), subscriptions.len());
            for _ in 0..50 {
                let topic = rng.topic();
                let mut want = expected(&subscriptions, &topic);
                want.sort();
                assert_eq!(
                    reported(&tree, &topic),
                    want,
                    "round {round}, topic {topic:?}"
                );
            }
        }
        for (filter, group, client) in std::mem::take(&mut subscriptions) {
            assert_eq!(tree.remove(&filter, group, &client).as_ref(), Some(&filter));
        }
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
    }
}
