//! Deadlines by key, earliest first, removed lazily: an entry whose owner moved on
//! stays on the heap and is recognised (skipped, or rescheduled) by its owner when
//! it comes up, so neither the next deadline nor the timeouts walk every
//! connection, transaction or dialog.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

/// How many runs are kept: one per fixed delay the owners use, and a few spare.
const RUNS: usize = 8;

/// Most deadlines are a fixed delay after the time they are set (Timers F, J and K,
/// an idle bound), so each delay's entries come in order. Such entries go to the
/// end of a run, a queue that stays sorted: pushing and taking cost no heap
/// traversal and touch memory in order, however many transactions are waiting.
/// What fits no run goes to the heap. Entries come out in `(time, key)` order
/// whichever holds them.
pub(crate) struct Deadlines<K: Ord> {
    runs: Vec<VecDeque<(Instant, K)>>,
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines {
            runs: Vec::new(),
            heap: BinaryHeap::new(),
        }
    }
}

/// Where the earliest entry is.
#[derive(Clone, Copy)]
enum Earliest {
    Run(usize),
    Heap,
}

impl<K: Ord> Deadlines<K> {
    pub(crate) fn push(&mut self, at: Instant, key: K) {
        let entry = (at, key);
        // The run whose last entry is the latest not after this one keeps the
        // others free for entries that come earlier.
        let mut fit: Option<usize> = None;
        let mut empty: Option<usize> = None;
        for (i, run) in self.runs.iter().enumerate() {
            match run.back() {
                None => empty = empty.or(Some(i)),
                Some(last) if *last <= entry => {
                    let better = fit
                        .and_then(|j| self.runs.get(j))
                        .and_then(VecDeque::back)
                        .is_none_or(|best| best < last);
                    if better {
                        fit = Some(i);
                    }
                }
                Some(_) => {}
            }
        }
        let run = match fit.or(empty) {
            Some(i) => self.runs.get_mut(i),
            None if self.runs.len() < RUNS => {
                self.runs.push(VecDeque::new());
                self.runs.last_mut()
            }
            None => None,
        };
        match run {
            Some(run) => run.push_back(entry),
            None => self.heap.push(Reverse(entry)),
        }
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

    fn earliest(&self) -> Option<(Earliest, &(Instant, K))> {
        let mut best = self.heap.peek().map(|Reverse(e)| (Earliest::Heap, e));
        for (i, run) in self.runs.iter().enumerate() {
            if let Some(first) = run.front() {
                if best.is_none_or(|(_, b)| first < b) {
                    best = Some((Earliest::Run(i), first));
                }
            }
        }
        best
    }

    /// The earliest entry's time: never later than any owner's real deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.earliest().map(|(_, (t, _))| *t)
    }

    /// Takes the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        let (from, (at, _)) = self.earliest()?;
        if *at > now {
            return None;
        }
        match from {
            Earliest::Heap => self.heap.pop().map(|Reverse(e)| e),
            Earliest::Run(i) => self.runs.get_mut(i).and_then(VecDeque::pop_front),
        }
    }

    /// How many entries are held, due or not.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len() + self.runs.iter().map(VecDeque::len).sum::<usize>()
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
        assert_eq!(d.len(), 1, "a later deadline keeps the earlier entry");
        d.schedule(&mut scheduled, s(5), "a");
        d.push(s(7), "b");
        assert_eq!(d.next(), Some(s(5)));
        assert_eq!(d.pop_due(s(4)), None);
        assert_eq!(d.pop_due(s(8)), Some((s(5), "a")));
        assert_eq!(d.pop_due(s(8)), Some((s(7), "b")));
        assert_eq!(d.pop_due(s(8)), None);
        assert_eq!(d.next(), Some(s(10)));
    }

    #[test]
    fn entries_come_out_as_a_heap_would_give_them() {
        // Fixed delays, a few odd ones (more than there are runs), equal times
        // under different keys, pops in between: the order is the heap's.
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        let mut reference = BinaryHeap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut now = 0u64;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 == 0 {
                now += x % 7;
                let at = t0 + Duration::from_millis(now);
                loop {
                    let got = d.pop_due(at);
                    let want = match reference.peek() {
                        Some(Reverse((t, _))) if *t <= at => reference.pop().map(|Reverse(e)| e),
                        _ => None,
                    };
                    assert_eq!(got, want, "step {step}");
                    if got.is_none() {
                        break;
                    }
                }
                assert_eq!(d.next(), reference.peek().map(|Reverse((t, _))| *t));
            } else {
                let delays = [500, 5000, 32_000, 64_000, 90_000];
                let delay = match delays.get((x % 8) as usize) {
                    Some(fixed) => *fixed,
                    None => x % 40_000,
                };
                let at = t0 + Duration::from_millis(now + delay);
                let key = x % 5;
                d.push(at, key);
                reference.push(Reverse((at, key)));
            }
        }
        assert_eq!(d.len(), reference.len());
    }
}
