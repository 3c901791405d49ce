//! The children of a node in a trie keyed by topic level: the subscription
//! index ([`crate::topic_tree`]) and the retained messages
//! ([`crate::retained`]).
//!
//! Most nodes of a big trie are leaves: a fleet's topics and filters end in a
//! level of their own per device. An empty `HashMap` still takes 48 bytes in
//! its node, and each node is a slot in its parent's map, where every byte
//! counts again for the map's spare capacity. So the map exists only once a
//! node has a child: a leaf's children cost one pointer.

use std::collections::HashMap;

/// Children by level; allocated with the first, freed with the last.
#[allow(
    clippy::box_collection,
    reason = "one pointer in a leaf, not a map's 48 bytes"
)]
pub struct LevelMap<N>(Option<Box<HashMap<Box<str>, N>>>);

impl<N> Default for LevelMap<N> {
    fn default() -> Self {
        LevelMap(None)
    }
}

impl<N> LevelMap<N> {
    pub fn get(&self, level: &str) -> Option<&N> {
        self.0.as_ref()?.get(level)
    }

    pub fn get_mut(&mut self, level: &str) -> Option<&mut N> {
        self.0.as_mut()?.get_mut(level)
    }

    /// The child at `level`, created empty if missing.
    pub fn get_or_default(&mut self, level: &str) -> &mut N
    where
        N: Default,
    {
        self.0
            .get_or_insert_with(Box::default)
            .entry(level.into())
            .or_default()
    }

    /// Removes the child at `level`; the map goes with the last child.
    pub fn remove(&mut self, level: &str) -> Option<N> {
        let map = self.0.as_mut()?;
        let removed = map.remove(level);
        if map.is_empty() {
            self.0 = None;
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |map| map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &N)> {
        self.0
            .iter()
            .flat_map(|map| map.iter().map(|(level, child)| (&**level, child)))
    }

    #[cfg(test)]
    pub fn values(&self) -> impl Iterator<Item = &N> {
        self.0.iter().flat_map(|map| map.values())
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut N> {
        self.0.iter_mut().flat_map(|map| map.values_mut())
    }

    /// Takes every child out, leaving no map.
    pub fn take_all(&mut self) -> impl Iterator<Item = N> {
        self.0.take().into_iter().flat_map(|map| map.into_values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_exists_only_while_there_are_children() {
        let mut map: LevelMap<u32> = LevelMap::default();
        assert!(map.is_empty() && map.get("a").is_none() && map.remove("a").is_none());
        *map.get_or_default("a") += 1;
        *map.get_or_default("a") += 1;
        *map.get_or_default("b") += 5;
        assert_eq!(
            (map.len(), map.get("a"), map.get("b")),
            (2, Some(&2), Some(&5))
        );
        let mut levels: Vec<_> = map
            .iter()
            .map(|(level, n)| (level.to_string(), *n))
            .collect();
        levels.sort();
        assert_eq!(levels, [("a".to_string(), 2), ("b".to_string(), 5)]);
        assert_eq!(map.remove("a"), Some(2));
        assert!(!map.is_empty());
        assert_eq!(map.remove("b"), Some(5));
        assert!(map.is_empty() && map.0.is_none());
        map.get_or_default("c");
        assert_eq!(map.take_all().count(), 1);
        assert!(map.is_empty());
    }
}
