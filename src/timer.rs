//! The timer wheel: every deadline of the process (header and body timeouts,
//! keep-alive idle, later webhook retries and attempt timeouts) lives here.
//! It works in millisecond ticks handed to it and never reads a clock.
//!
//! Layout (after tokio's `runtime/time/wheel`): `LEVELS` levels of 64 slots;
//! a slot of level `L` spans `64^L` ms, so level `L` covers `64^(L+1)` ms and
//! six levels cover 2^36 ms (about 795 days). An entry sits in the level of
//! the highest 6-bit group in which its deadline differs from the wheel's
//! time, so all lower-level slots come due before any higher-level one. When a
//! higher-level slot comes due its entries cascade into lower levels; level 0
//! slots hold exact deadlines. Deadlines beyond the top level wrap around it
//! and simply cascade again one rotation later.
//!
//! Entries live in a slab (`Vec` plus free list) and each slot is a doubly
//! linked list threaded through slab indices, so insert and cancel are O(1)
//! and no pointer is ever held across calls.

/// Bits of a tick consumed by one level.
const LEVEL_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << LEVEL_BITS;
/// Levels in the wheel; six cover 2^36 ms, far beyond any timeout we set.
const LEVELS: usize = 6;
/// Ticks covered by the whole wheel; deadlines further out wrap the top level.
const WHEEL_SPAN: u64 = 1 << (LEVEL_BITS as usize * LEVELS);
/// Sentinel for "no entry" in the intrusive lists and the free list.
const NIL: u32 = u32::MAX;
/// List id of the entries whose deadline had passed when inserted.
const LIST_EXPIRED: u16 = (LEVELS * SLOTS) as u16;
/// List id of entries that are free or being fired (in no list).
const LIST_NONE: u16 = u16::MAX;

/// Handle to a scheduled timer; stale after the timer fired or was cancelled
/// (a generation counter makes a stale key's cancel a no-op, never a wrong cancel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    // u64 so a slab slot cannot be reused often enough to wrap back onto a
    // key someone still holds.
    generation: u64,
}

/// One slab cell: a pending timer (`value` is `Some`) or a free cell.
struct Entry<T> {
    generation: u64,
    value: Option<T>,
    deadline_ms: u64,
    /// Insertion sequence number: breaks ties between equal deadlines.
    seq: u64,
    prev: u32,
    /// Next entry in the slot list, or next free cell when free.
    next: u32,
    /// Which list holds the entry: `level * SLOTS + slot`, `LIST_EXPIRED`, or
    /// `LIST_NONE`.
    list: u16,
}

/// Hierarchical timing wheel (levels of 64 slots with an occupancy bitfield,
/// tick = 1 ms), entries in a slab with intrusive doubly linked slot lists so
/// insert and cancel are O(1).
pub struct TimerWheel<T> {
    /// The wheel's current time; only `poll` moves it, never backwards.
    now_ms: u64,
    entries: Vec<Entry<T>>,
    free_head: u32,
    len: usize,
    next_seq: u64,
    /// List heads: `LEVELS * SLOTS` slot lists, then the expired list.
    heads: Vec<u32>,
    /// Bit `s` of `occupied[l]` is set iff slot `s` of level `l` is non-empty.
    occupied: [u64; LEVELS],
    /// Reused by `poll` to collect a batch of due entries before sorting them:
    /// (deadline, seq, index).
    due: Vec<(u64, u64, u32)>,
}

/// A slot that `poll` must process, and when.
struct Expiration {
    level: usize,
    slot: usize,
    deadline_ms: u64,
}

impl<T> TimerWheel<T> {
    /// A wheel whose current time is `now_ms`.
    pub fn new(now_ms: u64) -> TimerWheel<T> {
        TimerWheel {
            now_ms,
            entries: Vec::new(),
            free_head: NIL,
            len: 0,
            next_seq: 0,
            heads: vec![NIL; LEVELS * SLOTS + 1],
            occupied: [0; LEVELS],
            due: Vec::new(),
        }
    }

    /// Schedules `value` to fire at `deadline_ms`. A deadline at or before the
    /// wheel's current time fires at the next `poll`.
    pub fn insert(&mut self, deadline_ms: u64, value: T) -> TimerKey {
        let seq = self.next_seq;
        self.next_seq += 1;
        let index = if self.free_head != NIL {
            let index = self.free_head;
            let entry = &mut self.entries[index as usize];
            self.free_head = entry.next;
            entry.value = Some(value);
            entry.deadline_ms = deadline_ms;
            entry.seq = seq;
            index
        } else {
            // NIL is reserved as the list terminator; four billion live timers
            // would be a leak, not a load.
            let index = u32::try_from(self.entries.len())
                .ok()
                .filter(|&i| i != NIL)
                .expect("timer slab exhausted");
            self.entries.push(Entry {
                generation: 0,
                value: Some(value),
                deadline_ms,
                seq,
                prev: NIL,
                next: NIL,
                list: LIST_NONE,
            });
            index
        };
        self.len += 1;
        self.place(index);
        TimerKey {
            index,
            generation: self.entries[index as usize].generation,
        }
    }

    /// Removes a pending timer and returns its value; `None` when the key is
    /// stale (already fired or cancelled).
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let entry = self.entries.get(key.index as usize)?;
        if entry.generation != key.generation || entry.value.is_none() {
            return None;
        }
        self.unlink(key.index);
        Some(self.release(key.index))
    }

    /// Advances the wheel to `now_ms` and appends every value whose deadline
    /// is <= `now_ms` to `fired`, earliest deadline first (ties in insertion
    /// order). `now_ms` earlier than the wheel's time is treated as no advance.
    pub fn poll(&mut self, now_ms: u64, fired: &mut Vec<T>) {
        let now_ms = now_ms.max(self.now_ms);
        let mut due = std::mem::take(&mut self.due);
        debug_assert!(due.is_empty());

        // Deadlines that had already passed when inserted.
        let mut index = std::mem::replace(&mut self.heads[LIST_EXPIRED as usize], NIL);
        while index != NIL {
            let entry = &mut self.entries[index as usize];
            let next = entry.next;
            entry.list = LIST_NONE;
            due.push((entry.deadline_ms, entry.seq, index));
            index = next;
        }

        // Each step jumps straight to the next occupied slot (found through the
        // bitfields), so a jump of hours costs one step per occupied slot on
        // the way, not one per millisecond.
        while let Some(expiration) = self.next_expiration() {
            if expiration.deadline_ms > now_ms {
                break;
            }
            self.now_ms = expiration.deadline_ms;
            self.process_slot(&expiration, &mut due);
        }
        self.now_ms = now_ms;
        // After a poll nothing may be due at or before `now_ms`; a violation
        // would make the reactor spin on a deadline that never fires.
        debug_assert!(self.next_expiration().is_none_or(|e| e.deadline_ms > now_ms));

        // Slots are processed in time order, but the expired list carries
        // older deadlines than any slot, slot lists are newest-first, and an
        // entry due at a cascading slot's start ties with level-0 entries of
        // that tick; so order the batch explicitly. (deadline, seq) is unique.
        due.sort_unstable_by_key(|&(deadline_ms, seq, _)| (deadline_ms, seq));
        fired.reserve(due.len());
        for &(_, _, index) in &due {
            fired.push(self.release(index));
        }
        due.clear();
        self.due = due;
    }

    /// The earliest time at which `poll` may have something to do: never later
    /// than the earliest pending deadline (it may be earlier when a higher level
    /// must cascade). `None` when the wheel is empty.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.heads[LIST_EXPIRED as usize] != NIL {
            return Some(self.now_ms);
        }
        self.next_expiration().map(|e| e.deadline_ms)
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The wheel's current time: the latest `now_ms` given to `poll` (or to
    /// `new`). `next_deadline` is never earlier than this.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The deadline of a pending timer; `None` when the key is stale.
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        let entry = self.entries.get(key.index as usize)?;
        if entry.generation != key.generation || entry.value.is_none() {
            return None;
        }
        Some(entry.deadline_ms)
    }

    /// The first slot due, over all levels. Every entry of level `L` comes due
    /// before any slot of level `L + 1` (they share the wheel time's bits above
    /// level `L`), so the lowest occupied level holds the answer.
    fn next_expiration(&self) -> Option<Expiration> {
        (0..LEVELS).find_map(|level| self.level_expiration(level))
    }

    fn level_expiration(&self, level: usize) -> Option<Expiration> {
        let occupied = self.occupied[level];
        if occupied == 0 {
            return None;
        }
        let shift = LEVEL_BITS * level as u32;
        let slot_span = 1u64 << shift;
        let level_span = slot_span << LEVEL_BITS;
        let now_slot = ((self.now_ms >> shift) as usize) & (SLOTS - 1);
        // Rotating puts the slot after the current one at bit 0 and the
        // current one at bit 63: the first set bit is the next slot due. The
        // current slot's start has passed, so it comes last: on the top level
        // it can hold deadlines a whole rotation ahead, and searching from it
        // first would hide a slot due sooner (the randomized test caught that).
        let first = now_slot + 1;
        let slot = (occupied.rotate_right(first as u32).trailing_zeros() as usize + first) & (SLOTS - 1);
        let level_start = self.now_ms & !(level_span - 1);
        let mut deadline_ms = level_start + slot as u64 * slot_span;
        if deadline_ms <= self.now_ms {
            // Only the top level can hold a slot "behind" the wheel's time:
            // deadlines beyond the wheel's span wrap around it and come due
            // on its next rotation.
            debug_assert_eq!(level, LEVELS - 1);
            deadline_ms = deadline_ms.saturating_add(level_span);
        }
        Some(Expiration {
            level,
            slot,
            deadline_ms,
        })
    }

    /// Empties a due slot: entries whose deadline has come go to `due`, the
    /// rest cascade to a lower level relative to the (already advanced) wheel
    /// time. The slot is detached first so a wrapped top-level entry that
    /// lands in the same slot again is not revisited in this pass.
    fn process_slot(&mut self, expiration: &Expiration, due: &mut Vec<(u64, u64, u32)>) {
        let list = expiration.level * SLOTS + expiration.slot;
        let mut index = std::mem::replace(&mut self.heads[list], NIL);
        self.occupied[expiration.level] &= !(1u64 << expiration.slot);
        while index != NIL {
            let entry = &mut self.entries[index as usize];
            let next = entry.next;
            if entry.deadline_ms <= self.now_ms {
                entry.list = LIST_NONE;
                due.push((entry.deadline_ms, entry.seq, index));
            } else {
                self.link(index);
            }
            index = next;
        }
    }

    /// Puts a freshly inserted entry in the list its deadline calls for.
    fn place(&mut self, index: u32) {
        if self.entries[index as usize].deadline_ms <= self.now_ms {
            self.push_front(LIST_EXPIRED, index);
        } else {
            self.link(index);
        }
    }

    /// Links an entry whose deadline is after the wheel's time into its slot.
    fn link(&mut self, index: u32) {
        let deadline_ms = self.entries[index as usize].deadline_ms;
        debug_assert!(deadline_ms > self.now_ms);
        let level = level_for(self.now_ms, deadline_ms);
        let slot = ((deadline_ms >> (LEVEL_BITS * level as u32)) as usize) & (SLOTS - 1);
        self.occupied[level] |= 1u64 << slot;
        self.push_front((level * SLOTS + slot) as u16, index);
    }

    fn push_front(&mut self, list: u16, index: u32) {
        let head = self.heads[list as usize];
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        let entry = &mut self.entries[index as usize];
        entry.prev = NIL;
        entry.next = head;
        entry.list = list;
        self.heads[list as usize] = index;
    }

    /// Removes an entry from whatever list holds it, clearing the slot's
    /// occupancy bit when the slot empties.
    fn unlink(&mut self, index: u32) {
        let entry = &mut self.entries[index as usize];
        let (prev, next, list) = (entry.prev, entry.next, entry.list);
        entry.prev = NIL;
        entry.next = NIL;
        entry.list = LIST_NONE;
        debug_assert_ne!(list, LIST_NONE);
        if prev == NIL {
            self.heads[list as usize] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if next == NIL && prev == NIL && list != LIST_EXPIRED {
            let (level, slot) = (list as usize / SLOTS, list as usize % SLOTS);
            self.occupied[level] &= !(1u64 << slot);
        }
    }

    /// Frees an unlinked entry's cell, invalidating its key, and returns the value.
    fn release(&mut self, index: u32) -> T {
        let entry = &mut self.entries[index as usize];
        let value = entry.value.take().expect("released a free timer entry");
        entry.generation += 1;
        entry.prev = NIL;
        entry.next = self.free_head;
        entry.list = LIST_NONE;
        self.free_head = index;
        self.len -= 1;
        value
    }
}

/// The level for `deadline_ms` given the wheel's time: the highest 6-bit group
/// in which they differ. Forcing the low group on makes deadlines in the
/// current 64 ms block level 0; clamping makes anything beyond the wheel's
/// span the top level (where it wraps).
fn level_for(now_ms: u64, deadline_ms: u64) -> usize {
    let differing = ((now_ms ^ deadline_ms) | (SLOTS as u64 - 1)).min(WHEEL_SPAN - 1);
    let significant_bit = 63 - differing.leading_zeros() as usize;
    significant_bit / LEVEL_BITS as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Rng;
    use std::collections::BTreeMap;

    fn poll_all<T>(wheel: &mut TimerWheel<T>, now_ms: u64) -> Vec<T> {
        let mut fired = Vec::new();
        wheel.poll(now_ms, &mut fired);
        fired
    }

    /// Occupancy bits agree with the lists, and every list entry points back
    /// at the list holding it.
    fn check_invariants<T>(wheel: &TimerWheel<T>) {
        let mut count = 0;
        for (list, &head) in wheel.heads.iter().enumerate() {
            if list < LEVELS * SLOTS {
                let (level, slot) = (list / SLOTS, list % SLOTS);
                let bit = wheel.occupied[level] & (1 << slot) != 0;
                assert_eq!(bit, head != NIL, "level {level} slot {slot}");
            }
            let mut prev = NIL;
            let mut index = head;
            while index != NIL {
                let entry = &wheel.entries[index as usize];
                assert_eq!(entry.list as usize, list);
                assert_eq!(entry.prev, prev);
                assert!(entry.value.is_some());
                if list < LEVELS * SLOTS {
                    // The slot comes due after the wheel's time and no later
                    // than the entry's deadline: nothing is skipped or early.
                    assert!(entry.deadline_ms > wheel.now_ms);
                    let due = slot_due(wheel, list);
                    assert!(due > wheel.now_ms && due <= entry.deadline_ms);
                }
                count += 1;
                prev = index;
                index = entry.next;
            }
        }
        assert_eq!(count, wheel.len());
    }

    /// When slot `list` comes due next, computed independently of
    /// `level_expiration`'s bit tricks.
    fn slot_due<T>(wheel: &TimerWheel<T>, list: usize) -> u64 {
        let (level, slot) = (list / SLOTS, (list % SLOTS) as u64);
        let shift = LEVEL_BITS * level as u32;
        let level_span = 1u64 << (shift + LEVEL_BITS);
        let due = (wheel.now_ms & !(level_span - 1)) + (slot << shift);
        if due > wheel.now_ms {
            due
        } else {
            assert_eq!(level, LEVELS - 1, "only the top level wraps");
            due + level_span
        }
    }

    #[test]
    fn level_for_boundaries() {
        assert_eq!(level_for(0, 1), 0);
        assert_eq!(level_for(0, 63), 0);
        assert_eq!(level_for(0, 64), 1);
        assert_eq!(level_for(0, 4095), 1);
        assert_eq!(level_for(0, 4096), 2);
        assert_eq!(level_for(0, WHEEL_SPAN - 1), LEVELS - 1);
        assert_eq!(level_for(0, WHEEL_SPAN), LEVELS - 1);
        assert_eq!(level_for(0, u64::MAX), LEVELS - 1);
        // Crossing a 64 ms block boundary needs level 1 even one tick ahead.
        assert_eq!(level_for(63, 64), 1);
        assert_eq!(level_for(64, 127), 0);
    }

    #[test]
    fn fires_in_deadline_order_with_ties_in_insertion_order() {
        let mut wheel = TimerWheel::new(0);
        wheel.insert(30, "c");
        wheel.insert(10, "a1");
        wheel.insert(5000, "e");
        wheel.insert(10, "a2");
        wheel.insert(20, "b");
        wheel.insert(10, "a3");
        wheel.insert(100, "d");
        assert_eq!(wheel.len(), 7);
        assert_eq!(poll_all(&mut wheel, 9), Vec::<&str>::new());
        assert_eq!(poll_all(&mut wheel, 10), ["a1", "a2", "a3"]);
        assert_eq!(poll_all(&mut wheel, 10_000), ["b", "c", "d", "e"]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn ties_across_levels_keep_insertion_order() {
        // The same deadline reached through different levels (inserted at
        // different wheel times) still fires in insertion order.
        let mut wheel = TimerWheel::new(0);
        wheel.insert(5000, 0);
        assert!(poll_all(&mut wheel, 4990).is_empty());
        wheel.insert(5000, 1);
        wheel.insert(4000, 2); // in the past: expired list
        wheel.insert(4990, 3); // exactly now: expired list
        assert_eq!(poll_all(&mut wheel, 6000), [2, 3, 0, 1]);
    }

    #[test]
    fn cancel_removes_and_returns_value() {
        let mut wheel = TimerWheel::new(0);
        let a = wheel.insert(10, 'a');
        let b = wheel.insert(10, 'b');
        let c = wheel.insert(10, 'c');
        assert_eq!(wheel.deadline(b), Some(10));
        assert_eq!(wheel.cancel(b), Some('b'));
        assert_eq!(wheel.deadline(b), None);
        assert_eq!(wheel.len(), 2);
        check_invariants(&wheel);
        assert_eq!(wheel.cancel(a), Some('a'));
        assert_eq!(wheel.cancel(c), Some('c'));
        check_invariants(&wheel);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
        assert!(poll_all(&mut wheel, 100).is_empty());
    }

    #[test]
    fn stale_keys_are_harmless() {
        let mut wheel = TimerWheel::new(0);
        let fired_key = wheel.insert(5, 1);
        assert_eq!(poll_all(&mut wheel, 5), [1]);
        // The freed cell is reused; the old key must not reach the new timer.
        let reused = wheel.insert(50, 2);
        assert_eq!(reused.index, fired_key.index);
        assert_eq!(wheel.cancel(fired_key), None);
        assert_eq!(wheel.len(), 1);

        assert_eq!(wheel.cancel(reused), Some(2));
        assert_eq!(wheel.cancel(reused), None);
        let again = wheel.insert(60, 3);
        assert_eq!(wheel.cancel(reused), None);
        assert_eq!(wheel.cancel(fired_key), None);
        assert_eq!(poll_all(&mut wheel, 60), [3]);
        assert_eq!(wheel.cancel(again), None);

        // A key from another wheel pointing past the slab is just stale.
        let mut other = TimerWheel::new(0);
        for i in 0..10 {
            other.insert(1, i);
        }
        let far = other.insert(1, 10);
        assert_eq!(wheel.cancel(far), None);
    }

    #[test]
    fn past_deadlines_fire_at_next_poll() {
        let mut wheel = TimerWheel::new(1000);
        wheel.insert(1000, "now");
        wheel.insert(3, "past");
        wheel.insert(1001, "future");
        assert_eq!(wheel.next_deadline(), Some(1000));
        // Even a poll that does not advance fires them, oldest deadline first.
        assert_eq!(poll_all(&mut wheel, 1000), ["past", "now"]);
        assert_eq!(wheel.next_deadline(), Some(1001));
        // Polling "backwards" is no advance.
        assert!(poll_all(&mut wheel, 10).is_empty());
        assert_eq!(wheel.now_ms(), 1000);
        let key = wheel.insert(0, "cancelled");
        assert_eq!(wheel.cancel(key), Some("cancelled"));
        assert_eq!(wheel.next_deadline(), Some(1001));
        assert_eq!(poll_all(&mut wheel, 1001), ["future"]);
    }

    #[test]
    fn cascades_through_every_level() {
        let mut wheel = TimerWheel::new(0);
        // One deadline per level, each just past a level boundary.
        let deadlines: Vec<u64> = (0..LEVELS as u32)
            .map(|level| (1u64 << (LEVEL_BITS * level)) * 3 + 7)
            .collect();
        for &d in deadlines.iter().rev() {
            wheel.insert(d, d);
        }
        check_invariants(&wheel);
        for &d in &deadlines {
            // Step up to the deadline via every cascade point; nothing fires
            // early and the timer fires exactly at its deadline.
            while let Some(next) = wheel.next_deadline() {
                if next >= d {
                    break;
                }
                assert!(poll_all(&mut wheel, next).is_empty(), "early at {next}");
                check_invariants(&wheel);
            }
            assert!(poll_all(&mut wheel, d - 1).is_empty());
            assert_eq!(wheel.next_deadline(), Some(d));
            assert_eq!(poll_all(&mut wheel, d), [d]);
            check_invariants(&wheel);
        }
        assert!(wheel.is_empty());
    }

    #[test]
    fn big_jump_fires_everything_in_order() {
        let mut wheel = TimerWheel::new(0);
        let hour = 3_600_000u64;
        let mut expected = Vec::new();
        for i in 0..2000u64 {
            // Spread over ~10 hours, inserted out of order.
            let d = (i * 7919) % (10 * hour);
            wheel.insert(d, (d, i));
            expected.push((d, i));
        }
        expected.retain(|&(d, _)| d <= 5 * hour);
        expected.sort();
        let fired = poll_all(&mut wheel, 5 * hour);
        assert_eq!(fired, expected);
        check_invariants(&wheel);
        assert_eq!(wheel.len(), 2000 - expected.len());
        let rest = poll_all(&mut wheel, 10 * hour);
        assert_eq!(rest.len(), 2000 - expected.len());
        assert!(rest.windows(2).all(|w| w[0] <= w[1]));
        assert!(wheel.is_empty());
    }

    #[test]
    fn big_jump_over_an_empty_wheel_is_cheap() {
        // A year in one poll, then per-hour polls: each is a handful of
        // bitfield lookups, which the test's runtime would expose otherwise.
        let mut wheel = TimerWheel::new(0);
        wheel.insert(365 * 86_400_000, ());
        for hour in 0..24 * 365 {
            assert!(poll_all(&mut wheel, hour * 3_600_000).is_empty());
        }
        assert_eq!(poll_all(&mut wheel, 365 * 86_400_000).len(), 1);
        assert!(poll_all(&mut wheel, u64::MAX / 2).is_empty());
    }

    #[test]
    fn deadlines_beyond_the_wheel_span_wrap_and_still_fire_on_time() {
        let mut wheel = TimerWheel::new(0);
        let far = WHEEL_SPAN * 3 + 12_345;
        wheel.insert(far, "far");
        wheel.insert(WHEEL_SPAN, "edge");
        wheel.insert(u64::MAX, "never");
        let mut polls = 0;
        let mut fired = Vec::new();
        // Following next_deadline reaches each timer in a bounded number of
        // steps and never fires one early.
        while let Some(next) = wheel.next_deadline() {
            if next > far {
                break;
            }
            assert!(next >= wheel.now_ms());
            let before = fired.len();
            wheel.poll(next, &mut fired);
            if fired.len() > before {
                assert_eq!(next, if fired.len() == 1 { WHEEL_SPAN } else { far });
            }
            polls += 1;
            assert!(polls < 1000);
            check_invariants(&wheel);
        }
        assert_eq!(fired, ["edge", "far"]);
        assert_eq!(wheel.len(), 1);
        assert!(wheel.next_deadline().unwrap() > far);
    }

    #[test]
    fn top_level_slot_behind_the_wheel_does_not_hide_a_sooner_slot() {
        // The wheel sits in top-level slot 46. A deadline one full rotation
        // ahead lands in that same slot; a sooner one in slot 50. The search
        // must not stop at slot 46 (due a rotation later) and skip slot 50.
        let top_slot_span = 1u64 << (LEVEL_BITS as usize * (LEVELS - 1));
        let start = 46 * top_slot_span + 5;
        let mut wheel = TimerWheel::new(start);
        wheel.insert(start + WHEEL_SPAN, "far");
        let soon = 50 * top_slot_span + 7;
        wheel.insert(soon, "soon");
        check_invariants(&wheel);
        assert_eq!(wheel.next_deadline(), Some(50 * top_slot_span));
        assert_eq!(poll_all(&mut wheel, soon), ["soon"]);
        assert!(poll_all(&mut wheel, start + WHEEL_SPAN - 1).is_empty());
        assert_eq!(poll_all(&mut wheel, start + WHEEL_SPAN), ["far"]);
    }

    #[test]
    fn starts_at_an_arbitrary_time() {
        let start = 1_768_473_000_123;
        let mut wheel = TimerWheel::new(start);
        wheel.insert(start + 1, 1);
        wheel.insert(start + 30_000, 2);
        assert_eq!(wheel.next_deadline(), Some(start + 1));
        assert_eq!(poll_all(&mut wheel, start + 1), [1]);
        assert!(wheel.next_deadline().unwrap() <= start + 30_000);
        assert_eq!(poll_all(&mut wheel, start + 30_000), [2]);
    }

    /// A random offset whose magnitude spans every level of the wheel.
    fn random_delta(rng: &mut Rng) -> u64 {
        match rng.below(8) {
            0 => 0,
            1 => rng.below(64),
            2 => rng.below(4096),
            3 => rng.below(1 << 18),
            4 => rng.below(1 << 24),
            5 => rng.below(1 << 30),
            6 => rng.below(WHEEL_SPAN * 2),
            _ => rng.below(200),
        }
    }

    fn run_against_model(seed: u64, ops: usize) {
        let mut rng = Rng(seed);
        let start = rng.below(1 << 40);
        let mut wheel = TimerWheel::new(start);
        let mut now = start;
        // seq -> (deadline, key); values are their seq, so fired order is checkable.
        let mut model: BTreeMap<u64, (u64, TimerKey)> = BTreeMap::new();
        let mut stale: Vec<TimerKey> = Vec::new();
        let mut seq = 0u64;
        let mut fired = Vec::new();

        for op in 0..ops {
            match rng.below(10) {
                0..=3 => {
                    let deadline = match rng.below(10) {
                        0 => now.saturating_sub(rng.below(1000)),
                        _ => now + random_delta(&mut rng),
                    };
                    let key = wheel.insert(deadline, seq);
                    model.insert(seq, (deadline, key));
                    seq += 1;
                }
                4 | 5 => {
                    if !model.is_empty() && rng.below(4) != 0 {
                        let nth = rng.below(model.len() as u64) as usize;
                        let (&s, &(_, key)) = model.iter().nth(nth).unwrap();
                        model.remove(&s);
                        assert_eq!(wheel.cancel(key), Some(s), "seed {seed} op {op}");
                        stale.push(key);
                    } else if !stale.is_empty() {
                        let key = stale[rng.below(stale.len() as u64) as usize];
                        assert_eq!(wheel.cancel(key), None, "seed {seed} op {op}");
                    }
                }
                _ => {
                    let target = match rng.below(4) {
                        // Sometimes jump straight to the reported deadline,
                        // the way the reactor does.
                        0 => wheel.next_deadline().unwrap_or(now),
                        1 => now.saturating_sub(rng.below(10)),
                        _ => now + random_delta(&mut rng),
                    };
                    fired.clear();
                    wheel.poll(target, &mut fired);
                    now = now.max(target);
                    let mut expected: Vec<(u64, u64)> = model
                        .iter()
                        .filter(|&(_, &(d, _))| d <= now)
                        .map(|(&s, &(d, _))| (d, s))
                        .collect();
                    expected.sort();
                    for &(_, s) in &expected {
                        let (_, key) = model.remove(&s).unwrap();
                        stale.push(key);
                    }
                    let expected: Vec<u64> = expected.into_iter().map(|(_, s)| s).collect();
                    assert_eq!(fired, expected, "seed {seed} op {op} now {now}");
                }
            }
            assert_eq!(wheel.len(), model.len(), "seed {seed} op {op}");
            assert_eq!(wheel.now_ms(), now);
            let earliest = model.values().map(|&(d, _)| d).min();
            match (wheel.next_deadline(), earliest) {
                (None, None) => {}
                (Some(next), Some(earliest)) => {
                    assert!(next >= now, "seed {seed} op {op}: {next} < now {now}");
                    assert!(
                        next <= earliest.max(now),
                        "seed {seed} op {op}: next {next} > earliest {earliest}"
                    );
                }
                (next, earliest) => panic!("seed {seed} op {op}: {next:?} vs {earliest:?}"),
            }
            if op % 16 == 0 {
                check_invariants(&wheel);
            }
            if stale.len() > 256 {
                stale.drain(..128);
            }
        }
        check_invariants(&wheel);
        // Drain: following next_deadline must fire everything, in order.
        let mut steps = 0;
        while let Some(next) = wheel.next_deadline() {
            assert!(next >= wheel.now_ms());
            fired.clear();
            wheel.poll(next, &mut fired);
            let mut expected: Vec<(u64, u64)> = model
                .iter()
                .filter(|&(_, &(d, _))| d <= next)
                .map(|(&s, &(d, _))| (d, s))
                .collect();
            expected.sort();
            for (_, s) in &expected {
                model.remove(s);
            }
            let expected: Vec<u64> = expected.into_iter().map(|(_, s)| s).collect();
            assert_eq!(fired, expected, "seed {seed} drain at {next}");
            steps += 1;
            assert!(steps < 100_000, "seed {seed}: drain does not converge");
        }
        assert!(model.is_empty());
    }

    #[test]
    fn randomized_against_btreemap_model() {
        for seed in 1..=40u64 {
            run_against_model(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 5000);
        }
    }
}
