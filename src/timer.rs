//! The timer wheel: every deadline of the process (header and body timeouts,
//! keep-alive idle, later webhook retries and attempt timeouts) lives here.
//! It works in millisecond ticks handed to it and never reads a clock.

/// Handle to a scheduled timer; stale after the timer fired or was cancelled
/// (a generation counter makes a stale key's cancel a no-op, never a wrong cancel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    // IMPLEMENT: slab index + generation.
}

/// Hierarchical timing wheel (levels of 64 slots with an occupancy bitfield,
/// tick = 1 ms), entries in a slab with intrusive doubly linked slot lists so
/// insert and cancel are O(1).
pub struct TimerWheel<T> {
    // IMPLEMENT
    _marker: std::marker::PhantomData<T>,
}

impl<T> TimerWheel<T> {
    /// A wheel whose current time is `now_ms`.
    pub fn new(now_ms: u64) -> TimerWheel<T> {
        todo!()
    }

    /// Schedules `value` to fire at `deadline_ms`. A deadline at or before the
    /// wheel's current time fires at the next `poll`.
    pub fn insert(&mut self, deadline_ms: u64, value: T) -> TimerKey {
        todo!()
    }

    /// Removes a pending timer and returns its value; `None` when the key is
    /// stale (already fired or cancelled).
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        todo!()
    }

    /// Advances the wheel to `now_ms` and appends every value whose deadline
    /// is <= `now_ms` to `fired`, earliest deadline first (ties in insertion
    /// order). `now_ms` earlier than the wheel's time is treated as no advance.
    pub fn poll(&mut self, now_ms: u64, fired: &mut Vec<T>) {
        todo!()
    }

    /// The earliest time at which `poll` may have something to do: never later
    /// than the earliest pending deadline (it may be earlier when a higher level
    /// must cascade). `None` when the wheel is empty.
    pub fn next_deadline(&self) -> Option<u64> {
        todo!()
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        todo!()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
