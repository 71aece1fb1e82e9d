//! Deadlines by key, earliest first, removed lazily: an entry whose owner moved on
//! stays on the heap and is recognised (skipped, or rescheduled) by its owner when
//! it comes up, so neither the next deadline nor the timeouts walk every
//! connection, transaction or dialog.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

pub(crate) struct Deadlines<K: Ord>(BinaryHeap<Reverse<(Instant, K)>>);

impl<K: Ord> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines(BinaryHeap::new())
    }
}

impl<K: Ord> Deadlines<K> {
    pub(crate) fn push(&mut self, at: Instant, key: K) {
        self.0.push(Reverse((at, key)));
    }

    /// Pushes `at` only when it is earlier than the owner's entry already on the
    /// heap (`scheduled`, kept by the owner): a deadline that moves later keeps the
    /// earlier entry, which the owner reschedules when it comes up, so a busy
    /// owner adds no entries.
    pub(crate) fn schedule(&mut self, scheduled: &mut Option<Instant>, at: Instant, key: K) {
        if scheduled.is_none_or(|s| at < s) {
            *scheduled = Some(at);
            self.push(at, key);
        }
    }

    /// The earliest entry's time: never later than any owner's real deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        if self.next()? > now {
            return None;
        }
        self.0.pop().map(|Reverse(entry)| entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_entries_come_earliest_first_and_later_deadlines_add_none() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut d = Deadlines::default();
        let mut scheduled = None;
        d.schedule(&mut scheduled, s(10), "a");
        d.schedule(&mut scheduled, s(20), "a");
        assert_eq!(d.0.len(), 1, "a later deadline keeps the earlier entry");
        d.schedule(&mut scheduled, s(5), "a");
        d.push(s(7), "b");
        assert_eq!(d.next(), Some(s(5)));
        assert_eq!(d.pop_due(s(4)), None);
        assert_eq!(d.pop_due(s(8)), Some((s(5), "a")));
        assert_eq!(d.pop_due(s(8)), Some((s(7), "b")));
        assert_eq!(d.pop_due(s(8)), None);
        assert_eq!(d.next(), Some(s(10)));
    }
}
