//! [`TagTable`]: a map keyed by `(channel, tag)`, fast for the tags this end
//! allocates on channel 0 (consecutive numbers), correct for any key.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use super::proto::FxHasher;

/// How many consecutive channel-0 tags the ring spans at most. A request
/// pending while more than this many later ones were sent moves to the
/// overflow map, so the ring never holds more than this many slots.
/// 65536, the default `max_pending`: a window of pushes that full stays in
/// the ring (4096 sent W6's pushes to the hash map, a third more
/// instructions per push); at worst 65536 × a small value, about what
/// that many entries would take in the map.
const RING_SPAN: u64 = 65536;

/// The most empty slots an insert adds before its tag: tags further past
/// the ring's end go to the map. This end's own tags come one after another
/// (no gap), and so do a well-behaved peer's; without the bound a peer
/// sending tags `b`, `b + 65535`, … made each insert fill, and each remove
/// skip, 65,535 empty slots: 12 bytes of input for ~100 µs of CPU.
const MAX_GAP: u64 = 1024;

/// Channel-0 tags from here up stay in the map, so that `base` and
/// `base + ring.len()` never pass `u64::MAX` (a peer's tag `u64::MAX`,
/// then `0`, must not read as consecutive).
const RING_TAGS_BELOW: u64 = u64::MAX - RING_SPAN - MAX_GAP;

/// A map from `(channel, tag)` to `V`.
///
/// Channel-0 tags at or after the oldest entry live in a ring indexed by
/// `tag - base`: no hashing on the hot path. Other keys, and tags that
/// fall outside the ring's window (too old, too far ahead of it, or near
/// `u64::MAX`), live in a hash map. A peer choosing its tags cannot make
/// an operation cost more than [`MAX_GAP`] steps.
#[derive(Debug)]
pub struct TagTable<V> {
    base: u64,
    ring: VecDeque<Option<V>>,
    in_ring: usize,
    other: HashMap<(u64, u64), V, BuildHasherDefault<FxHasher>>,
}

impl<V> Default for TagTable<V> {
    fn default() -> Self {
        TagTable {
            base: 0,
            ring: VecDeque::new(),
            in_ring: 0,
            other: HashMap::default(),
        }
    }
}

impl<V> TagTable<V> {
    /// The number of entries.
    pub fn len(&self) -> usize {
        self.in_ring + self.other.len()
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn ring_index(&self, (channel, tag): (u64, u64)) -> Option<usize> {
        if channel == 0 && tag >= self.base && tag - self.base < self.ring.len() as u64 {
            Some((tag - self.base) as usize)
        } else {
            None
        }
    }

    /// Inserts `value` under `key`, replacing (and returning) any old value.
    // always: #[inline] left it a call from start_request
    #[inline(always)]
    pub fn insert(&mut self, key: (u64, u64), value: V) -> Option<V> {
        let (channel, tag) = key;
        // the hot path: the next consecutive tag appended, or the only one
        // (one request at a time empties the table between requests)
        if channel == 0 && self.other.is_empty() && tag < RING_TAGS_BELOW {
            if self.ring.is_empty() {
                self.base = tag;
            } else if tag.wrapping_sub(self.base) != self.ring.len() as u64
                || self.ring.len() as u64 >= RING_SPAN
            {
                return self.insert_slow(key, value);
            }
            self.ring.push_back(Some(value));
            self.in_ring += 1;
            return None;
        }
        self.insert_slow(key, value)
    }

    fn insert_slow(&mut self, key: (u64, u64), value: V) -> Option<V> {
        let (channel, tag) = key;
        if channel == 0 && tag < RING_TAGS_BELOW {
            if self.ring.is_empty() {
                self.base = tag;
            }
            if tag >= self.base && tag - self.base <= self.ring.len() as u64 + MAX_GAP {
                // keep the window at most RING_SPAN wide: old entries move out
                while tag - self.base >= RING_SPAN {
                    match self.ring.pop_front() {
                        Some(front) => {
                            if let Some(v) = front {
                                self.in_ring -= 1;
                                self.other.insert((0, self.base), v);
                            }
                            self.base += 1;
                        }
                        None => self.base = tag,
                    }
                }
                let idx = (tag - self.base) as usize;
                if idx >= self.ring.len() {
                    self.ring.resize_with(idx + 1, || None);
                }
                let old = self.ring[idx].replace(value);
                if old.is_none() {
                    self.in_ring += 1;
                }
                if old.is_none() && !self.other.is_empty() {
                    return self.other.remove(&key);
                }
                return old;
            }
        }
        self.other.insert(key, value)
    }

    /// True if `key` has an entry.
    #[inline]
    pub fn contains(&self, key: (u64, u64)) -> bool {
        if self.is_empty() {
            return false; // the hot path: no entry at all
        }
        match self.ring_index(key) {
            Some(i) if self.ring[i].is_some() => true,
            _ => !self.other.is_empty() && self.other.contains_key(&key),
        }
    }

    /// The value under `key`.
    pub fn get_mut(&mut self, key: (u64, u64)) -> Option<&mut V> {
        match self.ring_index(key) {
            Some(i) => match self.ring[i].as_mut() {
                Some(v) => Some(v),
                None => self.other.get_mut(&key),
            },
            None => self.other.get_mut(&key),
        }
    }

    /// Removes and returns the value under `key`.
    // always: #[inline] left it a call from take_waiter
    #[inline(always)]
    pub fn remove(&mut self, key: (u64, u64)) -> Option<V> {
        if let Some(i) = self.ring_index(key) {
            let v = if i == 0 {
                // the hot path: the oldest entry
                self.base += 1;
                self.ring.pop_front().flatten()
            } else {
                self.ring[i].take()
            };
            if let Some(v) = v {
                self.in_ring -= 1;
                // drop empty slots at the front
                while matches!(self.ring.front(), Some(None)) {
                    self.ring.pop_front();
                    self.base += 1;
                }
                return Some(v);
            }
        }
        if self.other.is_empty() {
            return None;
        }
        self.other.remove(&key)
    }

    /// Removes every entry that `keep` refuses.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        for slot in self.ring.iter_mut() {
            if slot.as_ref().is_some_and(|v| !keep(v)) {
                *slot = None;
                self.in_ring -= 1;
            }
        }
        while matches!(self.ring.front(), Some(None)) {
            self.ring.pop_front();
            self.base += 1;
        }
        self.other.retain(|_, v| keep(v));
    }

    /// Removes and returns every entry.
    pub fn drain(&mut self) -> Vec<((u64, u64), V)> {
        let base = self.base;
        let mut out: Vec<_> = self
            .ring
            .drain(..)
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| ((0, base + i as u64), v)))
            .collect();
        out.extend(self.other.drain());
        self.in_ring = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random operations against a HashMap model.
    #[test]
    fn behaves_like_a_hash_map() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20 {
            let mut t = TagTable::default();
            let mut m: HashMap<(u64, u64), u64> = HashMap::new();
            let mut next_tag = 2u64;
            let mut live: Vec<(u64, u64)> = Vec::new();
            for step in 0..20_000u64 {
                match rnd() % 10 {
                    0..=3 => {
                        // a new request: mostly channel 0, consecutive tags,
                        // sometimes a big jump past the ring span
                        let key = if rnd() % 20 == 0 {
                            (rnd() % 3, rnd() % 100)
                        } else {
                            next_tag += if rnd() % 50 == 0 {
                                RING_SPAN + rnd() % 10
                            } else {
                                1
                            };
                            (0, next_tag)
                        };
                        assert_eq!(
                            t.insert(key, step),
                            m.insert(key, step),
                            "round {round} step {step}"
                        );
                        live.push(key);
                    }
                    4..=7 if !live.is_empty() => {
                        // complete one, usually an early one (a few stay long)
                        let i = if round % 2 == 0 {
                            (rnd() % live.len().min(8) as u64) as usize
                        } else {
                            (rnd() % live.len() as u64) as usize
                        };
                        let key = live.swap_remove(i);
                        assert_eq!(t.remove(key), m.remove(&key), "round {round} step {step}");
                    }
                    8 => {
                        let key = (0, next_tag.saturating_sub(rnd() % 10));
                        assert_eq!(t.get_mut(key).copied(), m.get(&key).copied());
                        let key = (rnd() % 2, rnd() % 100);
                        assert_eq!(t.remove(key), m.remove(&key));
                    }
                    _ => {
                        let cut = rnd() % 1000;
                        t.retain(|v| v % 1000 != cut);
                        m.retain(|_, v| *v % 1000 != cut);
                    }
                }
                assert_eq!(t.len(), m.len(), "round {round} step {step}");
                assert!(t.ring.len() as u64 <= RING_SPAN);
            }
            let mut all = t.drain();
            all.sort();
            let mut want: Vec<_> = m.into_iter().collect();
            want.sort();
            assert_eq!(all, want);
            assert!(t.is_empty());
        }
    }

    #[test]
    fn tags_at_the_top_of_the_range_are_not_taken_for_consecutive_ones() {
        // u64::MAX then 0 wrapped into the ring as "MAX + 1": 0 was then
        // not found (a duplicate admitted) and removing MAX overflowed
        let mut t = TagTable::default();
        assert_eq!(t.insert((0, u64::MAX), 1), None);
        assert_eq!(t.insert((0, 0), 2), None);
        assert!(t.contains((0, 0)) && t.contains((0, u64::MAX)));
        assert_eq!(t.insert((0, 0), 3), Some(2), "a duplicate is seen");
        assert_eq!(t.remove((0, u64::MAX)), Some(1));
        assert_eq!(t.remove((0, 0)), Some(3));
        assert!(t.is_empty());
        for tag in [u64::MAX - 1, u64::MAX, RING_TAGS_BELOW, RING_TAGS_BELOW - 1] {
            assert_eq!(t.insert((0, tag), tag), None);
        }
        for tag in [u64::MAX, RING_TAGS_BELOW - 1, u64::MAX - 1, RING_TAGS_BELOW] {
            assert_eq!(t.remove((0, tag)), Some(tag));
        }
        assert!(t.is_empty());
    }

    #[test]
    fn tags_far_apart_cost_no_empty_slots() {
        // a peer's tags b, b + 65535, b + 65535 again (a duplicate), over
        // and over: the far one goes to the map, the ring stays short
        let mut t = TagTable::default();
        for round in 0..1000u64 {
            let b = round * 3;
            assert_eq!(t.insert((0, b), 0), None);
            assert_eq!(t.insert((0, b + 65535), 1), None);
            assert_eq!(t.insert((0, b + 65535), 2), Some(1));
            assert!(t.ring.len() as u64 <= 1 + MAX_GAP, "round {round}");
            assert_eq!(t.remove((0, b)), Some(0));
            assert_eq!(t.remove((0, b + 65535)), Some(2));
            assert!(t.is_empty());
        }
        // a gap up to MAX_GAP stays in the ring
        assert_eq!(t.insert((0, 10), 0), None);
        assert_eq!(t.insert((0, 11 + MAX_GAP), 1), None);
        assert_eq!(t.ring.len() as u64, 2 + MAX_GAP);
        assert!(t.other.is_empty());
    }
}
