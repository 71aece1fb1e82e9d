//! Open-loop pacing: message k of a sender is due at start + k/rate, whatever the
//! gateway does, so a slow gateway sees the offered rate and not a politer one.

use std::time::{Duration, Instant};

pub struct Pacer {
    start: Instant,
    /// Seconds between messages; 0 for as fast as possible.
    interval: f64,
    sent: u64,
    /// At most this many messages (`u64::MAX` when the run is timed).
    count: u64,
    end: Instant,
}

impl Pacer {
    pub fn new(start: Instant, rate: f64, count: u64, duration: Duration) -> Pacer {
        Pacer {
            start,
            interval: if rate > 0.0 { 1.0 / rate } else { 0.0 },
            sent: 0,
            count,
            end: start + duration,
        }
    }

    pub fn next_at(&self) -> Option<Instant> {
        if self.sent >= self.count {
            return None;
        }
        let at = self.start + Duration::from_secs_f64(self.interval * self.sent as f64);
        (at < self.end).then_some(at)
    }

    /// Whether the next message is due now; counts it if so.
    pub fn due(&mut self, now: Instant) -> bool {
        match self.next_at() {
            Some(at) if at <= now && now < self.end => {
                self.sent += 1;
                true
            }
            _ => false,
        }
    }

    pub fn finished(&self) -> bool {
        self.next_at().is_none() || Instant::now() >= self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_bounds_the_messages() {
        let t = Instant::now();
        let mut p = Pacer::new(t, 0.0, 3, Duration::from_secs(60));
        let n = (0..10).filter(|_| p.due(t)).count();
        assert_eq!(n, 3);
        assert!(p.finished());
    }

    #[test]
    fn a_rate_spaces_them() {
        let t = Instant::now();
        let mut p = Pacer::new(t, 10.0, u64::MAX, Duration::from_secs(60));
        assert!(p.due(t));
        assert!(!p.due(t), "the second is due 100 ms later");
        assert!(p.due(t + Duration::from_millis(100)));
    }
}
