//! Non-INVITE transactions (RFC 3261 §17.1.2 and §17.2.2), driven by injected time.
//! Retransmissions (Timer E) happen on unreliable transports only; Timer F ends a
//! client transaction that got no final response, Timers K and J absorb
//! retransmissions after completion.

use std::time::{Duration, Instant};

use super::message::SipMessage;

/// RFC 3261 timer base values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// Timer F and Timer J: 64·T1 (32 s by default).
    pub fn timeout(&self) -> Duration {
        self.t1 * 64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

/// What a transaction asks of its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxAction {
    /// Send these bytes: the request, the first time or again on Timer E.
    Transmit(Vec<u8>),
    /// No final response before Timer F: the TU treats it as a 408 (§8.1.3.1).
    Timeout,
}

/// A client non-INVITE transaction.
#[derive(Clone, Debug)]
pub struct ClientTransaction {
    /// The request as written once: Timer E resends these bytes.
    request: Vec<u8>,
    reliable: bool,
    timers: Timers,
    pub state: State,
    /// Next retransmission and its interval (unreliable transports).
    timer_e: Option<(Instant, Duration)>,
    timer_f: Option<Instant>,
    timer_k: Option<Instant>,
}

impl ClientTransaction {
    /// Starts the transaction; the first action sends the request.
    pub fn start(
        request: &SipMessage,
        reliable: bool,
        timers: Timers,
        now: Instant,
    ) -> (Self, Vec<TxAction>) {
        let tx = Self::begin(request.to_bytes(), reliable, timers, now);
        let first = tx.request.clone();
        (tx, vec![TxAction::Transmit(first)])
    }

    /// As [`ClientTransaction::start`] for a request already written, leaving the
    /// first send of [`ClientTransaction::request`]'s bytes to the caller.
    pub fn begin(request: Vec<u8>, reliable: bool, timers: Timers, now: Instant) -> Self {
        ClientTransaction {
            timer_e: (!reliable).then_some((now + timers.t1, timers.t1)),
            timer_f: Some(now + timers.timeout()),
            timer_k: None,
            request,
            reliable,
            timers,
            state: State::Trying,
        }
    }

    /// The request's bytes (empty once a final response has come).
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// A response for this transaction: whether it goes on to the transaction
    /// user (a retransmitted final response is absorbed).
    pub fn on_response(&mut self, response: &SipMessage, now: Instant) -> bool {
        let Some(code) = response.status() else {
            return false;
        };
        match self.state {
            State::Trying | State::Proceeding if code < 200 => {
                self.state = State::Proceeding;
                true
            }
            State::Trying | State::Proceeding => {
                self.state = State::Completed;
                self.timer_e = None;
                self.timer_f = None;
                // Nothing is retransmitted any more: Timer K keeps the
                // transaction only to absorb copies of the response.
                self.request = Vec::new();
                if self.reliable {
                    self.state = State::Terminated;
                } else {
                    self.timer_k = Some(now + self.timers.t4);
                }
                true
            }
            // Retransmitted final responses are absorbed.
            State::Completed | State::Terminated => false,
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        [self.timer_e.map(|(t, _)| t), self.timer_f, self.timer_k]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn on_timeout(&mut self, now: Instant) -> Vec<TxAction> {
        let mut actions = Vec::new();
        if self.timer_f.is_some_and(|f| f <= now) {
            self.timer_f = None;
            self.timer_e = None;
            self.state = State::Terminated;
            actions.push(TxAction::Timeout);
            return actions;
        }
        if self.timer_k.is_some_and(|k| k <= now) {
            self.timer_k = None;
            self.state = State::Terminated;
            return actions;
        }
        if let Some((at, interval)) = self.timer_e {
            if at <= now {
                // §17.1.2.2: doubling up to T2 while Trying, T2 once Proceeding.
                let next = match self.state {
                    State::Trying => (interval * 2).min(self.timers.t2),
                    _ => self.timers.t2,
                };
                self.timer_e = Some((now + next, next));
                actions.push(TxAction::Transmit(self.request.clone()));
            }
        }
        actions
    }
}

/// A server non-INVITE transaction.
#[derive(Clone, Debug)]
pub struct ServerTransaction {
    reliable: bool,
    timers: Timers,
    pub state: State,
    /// The last response as sent: retransmissions of the request get these bytes
    /// again, and a transaction kept for Timer J holds one buffer, not a message.
    last_response: Option<Vec<u8>>,
    timer_j: Option<Instant>,
}

impl ServerTransaction {
    pub fn new(reliable: bool, timers: Timers) -> Self {
        ServerTransaction {
            reliable,
            timers,
            state: State::Trying,
            last_response: None,
            timer_j: None,
        }
    }

    /// The request arrived again: the last response's bytes to send, if any.
    pub fn on_retransmission(&self) -> Option<Vec<u8>> {
        match (&self.state, &self.last_response) {
            (State::Proceeding | State::Completed, Some(r)) => Some(r.clone()),
            _ => None,
        }
    }

    /// The TU answers: the response's bytes to send, unless the transaction
    /// takes no more responses.
    pub fn respond(&mut self, response: &SipMessage, now: Instant) -> Option<Vec<u8>> {
        let code = response.status()?;
        self.respond_bytes(code, response.to_bytes(), now)
    }

    /// As [`ServerTransaction::respond`], for a response `code` already written.
    pub fn respond_bytes(&mut self, code: u16, bytes: Vec<u8>, now: Instant) -> Option<Vec<u8>> {
        if matches!(self.state, State::Completed | State::Terminated) {
            // §17.2.2: a final response has been sent; later ones are discarded.
            return None;
        }
        self.last_response = Some(bytes.clone());
        if code < 200 {
            self.state = State::Proceeding;
        } else if self.reliable {
            self.state = State::Terminated;
        } else {
            self.state = State::Completed;
            self.timer_j = Some(now + self.timers.timeout());
        }
        Some(bytes)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.timer_j
    }

    pub fn on_timeout(&mut self, now: Instant) {
        if self.timer_j.is_some_and(|j| j <= now) {
            self.timer_j = None;
            self.state = State::Terminated;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> SipMessage {
        SipMessage::request("MESSAGE", "sip:bob@b.example")
            .with("Via", "SIP/2.0/UDP gw.example;branch=z9hG4bK1")
            .with("From", "<sip:a@a.example>;tag=1")
            .with("To", "<sip:bob@b.example>")
            .with("Call-ID", "c1")
            .with("CSeq", "1 MESSAGE")
    }

    /// Drives a client transaction to its end with no response; returns the send
    /// times (seconds from start, in milliseconds) and when it timed out.
    fn silent_run(reliable: bool) -> (Vec<u128>, Option<u128>) {
        let t0 = Instant::now();
        let (mut tx, first) = ClientTransaction::start(&req(), reliable, Timers::default(), t0);
        assert_eq!(first.len(), 1);
        let mut sends = vec![0];
        let mut timeout = None;
        while let Some(at) = tx.next_deadline() {
            for a in tx.on_timeout(at) {
                match a {
                    TxAction::Transmit(_) => sends.push(at.duration_since(t0).as_millis()),
                    TxAction::Timeout => timeout = Some(at.duration_since(t0).as_millis()),
                }
            }
        }
        assert_eq!(tx.state, State::Terminated);
        (sends, timeout)
    }

    #[test]
    fn udp_retransmits_on_timer_e_until_timer_f() {
        let (sends, timeout) = silent_run(false);
        assert_eq!(
            sends,
            [0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(timeout, Some(32000));
    }

    #[test]
    fn tcp_never_retransmits() {
        assert_eq!(silent_run(true), (vec![0], Some(32000)));
    }

    #[test]
    fn provisional_then_final_then_timer_k() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientTransaction::start(&req(), false, Timers::default(), t0);
        let trying = req().reply(100, "Trying", None);
        assert!(tx.on_response(&trying, t0));
        assert_eq!(tx.state, State::Proceeding);
        // In Proceeding, Timer E fires every T2.
        let e = tx.next_deadline().expect("timer E");
        assert_eq!(e.duration_since(t0), Duration::from_millis(500));
        tx.on_timeout(e);
        assert_eq!(
            tx.next_deadline().map(|d| d.duration_since(t0)),
            Some(Duration::from_millis(4500))
        );
        let ok = req().reply(200, "OK", Some("t"));
        assert!(tx.on_response(&ok, t0));
        assert_eq!(tx.state, State::Completed);
        assert!(
            !tx.on_response(&ok, t0),
            "retransmitted finals are absorbed"
        );
        assert_eq!(
            tx.next_deadline().map(|d| d.duration_since(t0)),
            Some(Duration::from_secs(5))
        );
        tx.on_timeout(t0 + Duration::from_secs(5));
        assert_eq!(tx.state, State::Terminated);
    }

    #[test]
    fn server_answers_retransmissions_and_waits_timer_j() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(false, Timers::default());
        assert_eq!(tx.on_retransmission(), None);
        let ok = req().reply(200, "OK", Some("t"));
        assert_eq!(tx.respond(&ok, t0), Some(ok.to_bytes()));
        assert_eq!(tx.on_retransmission(), Some(ok.to_bytes()));
        assert_eq!(tx.respond(&req().reply(500, "Late", None), t0), None);
        assert_eq!(tx.on_retransmission(), Some(ok.to_bytes()));
        assert_eq!(
            tx.next_deadline().map(|d| d.duration_since(t0)),
            Some(Duration::from_secs(32))
        );
        tx.on_timeout(t0 + Duration::from_secs(32));
        assert_eq!(tx.state, State::Terminated);
        let mut reliable = ServerTransaction::new(true, Timers::default());
        reliable.respond(&ok, t0);
        assert_eq!(reliable.state, State::Terminated);
        assert_eq!(reliable.next_deadline(), None);
    }
}
