//! The per-worker queue behind the HTTP collector sink, free of host calls so it is tested natively.
//!
//! Events wait in a bounded queue; a batch leaves when it is full (events or bytes) or the flush interval has
//! passed; one batch is in flight at a time (order kept, no stampede on a struggling collector); a failed batch
//! goes back to the front and the next attempt waits an exponential backoff. When the bound is hit, the oldest
//! events are dropped and counted: memory stays bounded whatever the collector does.

use std::collections::VecDeque;

/// Sizes and times, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub flush_interval_ms: u64,
    pub queue_max_events: usize,
}

/// First retry delay; doubles per consecutive failure up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: u64 = 100;
const MAX_BACKOFF_MS: u64 = 10_000;

#[derive(Debug)]
pub struct Shipper {
    limits: Limits,
    queue: VecDeque<String>,
    queued_bytes: usize,
    in_flight: Option<(u32, Vec<String>)>,
    last_flush_ms: u64,
    retry_at_ms: u64,
    failures: u32,
}

impl Shipper {
    pub fn new(limits: Limits, now_ms: u64) -> Shipper {
        Shipper {
            limits,
            queue: VecDeque::new(),
            queued_bytes: 0,
            in_flight: None,
            last_flush_ms: now_ms,
            retry_at_ms: 0,
            failures: 0,
        }
    }

    /// Queues one event (a JSON line); returns how many of the oldest events were dropped to stay in bounds.
    pub fn push(&mut self, event: String) -> usize {
        self.queued_bytes += event.len() + 1;
        self.queue.push_back(event);
        self.trim()
    }

    /// Events waiting (not counting a batch in flight).
    pub fn depth(&self) -> usize {
        self.queue.len()
    }

    /// The next batch to send as NDJSON, if one is due: nothing in flight, not backing off, and full or old enough.
    pub fn next_batch(&mut self, now_ms: u64) -> Option<String> {
        if self.in_flight.is_some() || self.queue.is_empty() || now_ms < self.retry_at_ms {
            return None;
        }
        let full = self.queue.len() >= self.limits.batch_max_events || self.queued_bytes >= self.limits.batch_max_bytes;
        let due = now_ms.saturating_sub(self.last_flush_ms) >= self.limits.flush_interval_ms;
        if !full && !due {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(event) = self.queue.front() {
            let size = event.len() + 1;
            if !batch.is_empty()
                && (batch.len() >= self.limits.batch_max_events || bytes + size > self.limits.batch_max_bytes)
            {
                break;
            }
            bytes += size;
            self.queued_bytes -= size;
            batch.extend(self.queue.pop_front());
        }
        let body = batch.join("\n") + "\n";
        self.in_flight = Some((0, batch));
        self.last_flush_ms = now_ms;
        Some(body)
    }

    /// The host accepted the batch just taken with `next_batch` under `token`.
    pub fn dispatched(&mut self, token: u32) {
        if let Some((slot, _)) = self.in_flight.as_mut() {
            *slot = token;
        }
    }

    /// The batch could not even be dispatched: back to the queue, retry after backoff. Returns events dropped.
    pub fn dispatch_failed(&mut self, now_ms: u64) -> usize {
        let token = self.in_flight.as_ref().map_or(0, |(token, _)| *token);
        self.completed(token, false, now_ms).1
    }

    /// A response (or timeout) for `token`. Returns (events delivered, events dropped).
    pub fn completed(&mut self, token: u32, ok: bool, now_ms: u64) -> (usize, usize) {
        let Some((_, batch)) = self.in_flight.take_if(|(t, _)| *t == token) else { return (0, 0) };
        if ok {
            self.failures = 0;
            self.retry_at_ms = 0;
            return (batch.len(), 0);
        }
        self.failures = self.failures.saturating_add(1);
        let backoff = FIRST_BACKOFF_MS.saturating_mul(1 << self.failures.min(16).saturating_sub(1)).min(MAX_BACKOFF_MS);
        self.retry_at_ms = now_ms.saturating_add(backoff);
        for event in batch.into_iter().rev() {
            self.queued_bytes += event.len() + 1;
            self.queue.push_front(event);
        }
        (0, self.trim())
    }

    /// Whether a batch is awaiting its response.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    fn trim(&mut self) -> usize {
        let mut dropped = 0;
        while self.queue.len() > self.limits.queue_max_events {
            if let Some(oldest) = self.queue.pop_front() {
                self.queued_bytes -= oldest.len() + 1;
                dropped += 1;
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits =
        Limits { batch_max_events: 3, batch_max_bytes: 1000, flush_interval_ms: 1000, queue_max_events: 5 };

    fn events(shipper: &mut Shipper, range: std::ops::Range<usize>) -> usize {
        range.map(|i| shipper.push(format!("{{\"n\":{i}}}"))).sum()
    }

    #[test]
    fn flushes_when_full_or_due() {
        let mut s = Shipper::new(LIMITS, 0);
        events(&mut s, 0..2);
        assert_eq!(s.next_batch(10), None, "neither full nor due");
        assert_eq!(s.next_batch(1000).as_deref(), Some("{\"n\":0}\n{\"n\":1}\n"), "due");
        s.dispatched(7);
        events(&mut s, 2..6);
        assert_eq!(s.next_batch(1001), None, "one batch in flight at a time");
        assert_eq!(s.completed(7, true, 1002), (2, 0));
        assert_eq!(s.next_batch(1003).as_deref(), Some("{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n"), "full: at most 3");
    }

    #[test]
    fn failures_requeue_in_order_back_off_and_stay_bounded() {
        let mut s = Shipper::new(LIMITS, 0);
        events(&mut s, 0..3);
        let first = s.next_batch(0).unwrap();
        s.dispatched(1);
        assert_eq!(events(&mut s, 3..5), 0);
        assert_eq!(s.completed(1, false, 100), (0, 0), "3 back + 2 queued = 5: within the bound");
        assert_eq!(s.next_batch(150), None, "backing off");
        assert_eq!(s.next_batch(200).unwrap(), first, "the same events, in order");
        s.dispatched(2);
        assert_eq!(events(&mut s, 5..8), 0);
        assert_eq!(s.completed(2, false, 300), (0, 3), "over the bound: the oldest go");
        assert_eq!(s.depth(), 5);
        assert_eq!(s.next_batch(399), None, "second failure: 200 ms backoff");
        assert_eq!(s.next_batch(500).as_deref(), Some("{\"n\":3}\n{\"n\":4}\n{\"n\":5}\n"));
        assert_eq!(s.completed(99, true, 501), (0, 0), "an unknown token changes nothing");
        assert!(s.busy());
    }

    #[test]
    fn the_bound_holds_while_the_collector_is_away() {
        let mut s = Shipper::new(LIMITS, 0);
        assert_eq!(events(&mut s, 0..100), 95);
        assert_eq!(s.depth(), 5);
        let byte_limited = Limits { batch_max_bytes: 20, ..LIMITS };
        let mut s = Shipper::new(byte_limited, 0);
        events(&mut s, 0..3);
        assert_eq!(s.next_batch(0).as_deref(), Some("{\"n\":0}\n{\"n\":1}\n"), "bytes bound the batch too");
    }
}
