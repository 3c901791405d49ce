//! Test support: a small deterministic generator (SplitMix64), so failures
//! reproduce, with the random topics and filters the trie tests (the
//! subscription index and the retained store) check against
//! `tern_codec::topic::filter_matches`.

/// A SplitMix64 generator; the `u64` is its seed.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }

    /// One of `from`.
    pub(crate) fn pick<'s>(&mut self, from: &[&'s str]) -> &'s str {
        from[self.below(from.len())]
    }

    /// A topic name of one to four levels, some empty, some starting with `$`.
    pub(crate) fn topic(&mut self) -> String {
        let levels: Vec<&str> = (0..=self.below(4))
            .map(|_| self.pick(&["a", "b", "$x", ""]))
            .collect();
        levels.join("/")
    }

    /// A topic filter of one to four levels, with `+` levels and sometimes a
    /// trailing `#`.
    pub(crate) fn filter(&mut self) -> String {
        let mut levels: Vec<&str> = (0..=self.below(4))
            .map(|_| self.pick(&["a", "b", "$x", "", "+", "+"]))
            .collect();
        if let Some(last) = levels.last_mut().filter(|_| self.below(3) == 0) {
            *last = "#";
        }
        levels.join("/")
    }
}
