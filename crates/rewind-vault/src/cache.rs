//! The bounded caches every reader of a vault shares: open segment files and loaded delta
//! maps. A vault of 100,000 intervals must not hold 100,000 file descriptors or every map
//! it ever read, so each cache keeps at most a budget (handles, bytes of maps) and drops the
//! least recently used values past it. Values are `Arc`s: a read (or a view) that holds one
//! keeps it valid after the cache dropped it; the next one that asks opens or loads it
//! again (and checks it again).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// How much the caches of one vault keep. See [`crate::Vault::set_cache_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Open read handles of segment files.
    pub segment_files: usize,
    /// Bytes of memory the delta maps kept loaded may take, heads and entries (see
    /// `DeltaMap::memory_bytes`).
    pub map_bytes: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            segment_files: 64,
            // Extents of 32 bytes and 4 bytes a written block: 64 MiB holds the maps of
            // ~16 M scattered block writes, or millions of intervals of runs.
            map_bytes: 64 << 20,
        }
    }
}

/// What the caches hold now (see [`crate::Vault::cache_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub segment_files: usize,
    pub maps: usize,
    pub map_bytes: u64,
    /// Runs in the chain index (~40 bytes each; see `chain_index.rs`).
    pub index_runs: u64,
}

/// A least-recently-used map whose values have weights, kept at or under a total weight
/// (one value heavier than the whole budget is still kept, alone).
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    budget: u64,
    weight: u64,
    tick: u64,
    values: HashMap<K, (V, u64, u64)>,
    /// Last use -> key, oldest first.
    order: BTreeMap<u64, K>,
}

impl<K: Hash + Eq + Copy, V: Clone> Lru<K, V> {
    pub(crate) fn new(budget: u64) -> Lru<K, V> {
        Lru {
            budget,
            weight: 0,
            tick: 0,
            values: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// The value of `key`, now the most recently used.
    pub(crate) fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        let (v, used, _) = self.values.get_mut(key)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, *key);
        Some(v.clone())
    }

    /// Keeps `value` (replacing what `key` had), then drops the least recently used
    /// values until the weight fits the budget.
    pub(crate) fn insert(&mut self, key: K, value: V, weight: u64) {
        self.remove(&key);
        self.tick += 1;
        self.values.insert(key, (value, self.tick, weight));
        self.order.insert(self.tick, key);
        self.weight += weight;
        self.shrink();
    }

    pub(crate) fn remove(&mut self, key: &K) {
        if let Some((_, used, w)) = self.values.remove(key) {
            self.order.remove(&used);
            self.weight -= w;
        }
    }

    pub(crate) fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
        self.shrink();
    }

    fn shrink(&mut self) {
        while self.weight > self.budget && self.values.len() > 1 {
            let Some((_, key)) = self.order.pop_first() else {
                return;
            };
            if let Some((_, _, w)) = self.values.remove(&key) {
                self.weight -= w;
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_the_least_recently_used_past_the_budget() {
        let mut c: Lru<u32, &str> = Lru::new(3);
        c.insert(1, "a", 1);
        c.insert(2, "b", 1);
        c.insert(3, "c", 1);
        assert_eq!(c.get(&1), Some("a"));
        c.insert(4, "d", 1);
        assert_eq!(c.get(&2), None, "2 was the least recently used");
        assert_eq!((c.len(), c.weight()), (3, 3));
        // Order of use: 3, 1, 4; a value of weight 2 pushes out 3 and 1.
        c.insert(5, "e", 2);
        assert_eq!(c.get(&3), None);
        assert_eq!(c.get(&1), None);
        assert_eq!(c.get(&4), Some("d"));
        assert_eq!(c.get(&5), Some("e"));
        assert_eq!((c.len(), c.weight()), (2, 3));
        // One value over the whole budget stays, alone.
        c.insert(6, "f", 10);
        assert_eq!((c.len(), c.weight()), (1, 10));
        c.set_budget(0);
        assert_eq!(c.get(&6), Some("f"));
        c.insert(6, "g", 1);
        assert_eq!((c.len(), c.weight()), (1, 1));
    }
}

/// What one vault holds in memory now, by part (see [`crate::Vault::memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// The readers' caches and what they may hold.
    pub caches: CacheStats,
    pub limits: CacheLimits,
    /// The open interval's present map (extents and crcs) and record index: they grow
    /// with the interval's records until it is sealed.
    pub present_map_bytes: u64,
    pub record_index_bytes: u64,
    /// The open segment's append buffer.
    pub append_buffer_bytes: u64,
}
