//! The per-worker queue behind the collector sink, free of host calls so it is tested natively.
//!
//! Events wait in a bounded queue, each already encoded as a record; a batch leaves when it is full (records or
//! bytes) or the flush interval has passed; one batch is in flight at a time (order kept, no stampede on a
//! struggling collector). What happens to a batch follows the OTLP/HTTP specification's delivery rules
//! ([`Delivery::of`]): a 2xx delivers it (records the collector reports as rejected in a partial success are counted
//! as dropped); 429, 502, 503, 504, a timeout or a reset put it back at the front, to be retried after an exponential
//! backoff or the `Retry-After` the collector asked for; any other answer refuses it for good, so it is dropped and
//! counted and never blocks the queue behind it. When the bound is hit the oldest records are dropped and counted:
//! memory stays bounded whatever the collector does. Delivery is at least once: a batch whose answer is lost is
//! sent again; collectors deduplicate by the record's `log.record.uid` (the event id).

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
/// The longest `Retry-After` honoured: a collector cannot park the sink for longer (the queue bound keeps memory
/// in check meanwhile).
pub const MAX_RETRY_AFTER_MS: u64 = 300_000;

/// What became of a batch, from the collector's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// 2xx; `rejected` of its records were refused (an OTLP partial success).
    Delivered { rejected: u64 },
    /// Worth sending again: after `after_ms` if the collector said when.
    Retry { after_ms: Option<u64> },
    /// Refused for good (any other status): dropped.
    Refused,
}

impl Delivery {
    /// Classifies an answer: `status` is `None` when there was none (a timeout, a reset, no route); `retry_after`
    /// is the header as sent (delta-seconds or an HTTP-date, read against `now_ms`); `rejected` what a 2xx body
    /// reported as rejected.
    pub fn of(status: Option<u16>, retry_after: Option<&str>, rejected: u64, now_ms: u64) -> Delivery {
        match status {
            Some(200..=299) => Delivery::Delivered { rejected },
            None | Some(429 | 502 | 503 | 504) => {
                Delivery::Retry { after_ms: retry_after.and_then(|value| retry_after_ms(value, now_ms)) }
            }
            Some(_) => Delivery::Refused,
        }
    }
}

/// `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date, as milliseconds from `now_ms`, at most
/// [`MAX_RETRY_AFTER_MS`]; `None` when it is neither.
pub fn retry_after_ms(value: &str, now_ms: u64) -> Option<u64> {
    let value = value.trim();
    let ms = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().map_or(u64::MAX, |seconds| seconds.saturating_mul(1000))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
        u64::try_from(at_ms).unwrap_or(u64::MAX).saturating_sub(now_ms)
    };
    Some(ms.min(MAX_RETRY_AFTER_MS))
}

/// What a completed batch changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completed {
    pub delivered: usize,
    /// Records lost: refused by the collector, or pushed out of the queue by the retried batch.
    pub dropped: usize,
    /// The whole batch was refused for good.
    pub refused: bool,
    /// It will be sent again.
    pub retried: bool,
}

#[derive(Debug)]
pub struct Shipper {
    limits: Limits,
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    in_flight: Option<(u32, Vec<Vec<u8>>)>,
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

    /// Queues one record; returns how many of the oldest were dropped to stay in bounds.
    pub fn push(&mut self, record: Vec<u8>) -> usize {
        self.queued_bytes += record.len();
        self.queue.push_back(record);
        self.trim()
    }

    /// Records waiting (not counting a batch in flight).
    pub fn depth(&self) -> usize {
        self.queue.len()
    }

    /// The records of the next batch, if one is due (nothing in flight, not backing off, and full or old enough);
    /// they stay in flight until [`Shipper::completed`].
    pub fn next_batch(&mut self, now_ms: u64) -> Option<&[Vec<u8>]> {
        if self.in_flight.is_some() || self.queue.is_empty() || now_ms < self.retry_at_ms {
            return None;
        }
        let full = self.queue.len() >= self.limits.batch_max_events || self.queued_bytes >= self.limits.batch_max_bytes;
        let due = now_ms.saturating_sub(self.last_flush_ms) >= self.limits.flush_interval_ms;
        if !full && !due {
            return None;
        }
        let mut batch = Vec::with_capacity(self.limits.batch_max_events.min(self.queue.len()));
        let mut bytes = 0;
        while let Some(record) = self.queue.front() {
            let size = record.len();
            if !batch.is_empty()
                && (batch.len() >= self.limits.batch_max_events || bytes + size > self.limits.batch_max_bytes)
            {
                break;
            }
            bytes += size;
            self.queued_bytes -= size;
            batch.extend(self.queue.pop_front());
        }
        self.last_flush_ms = now_ms;
        Some(&self.in_flight.insert((0, batch)).1)
    }

    /// The host accepted the batch just taken with `next_batch` under `token`.
    pub fn dispatched(&mut self, token: u32) {
        if let Some((slot, _)) = self.in_flight.as_mut() {
            *slot = token;
        }
    }

    /// The batch could not even be dispatched: back to the queue, retried after backoff.
    pub fn dispatch_failed(&mut self, now_ms: u64) -> Completed {
        let token = self.in_flight.as_ref().map_or(0, |(token, _)| *token);
        self.completed(token, Delivery::Retry { after_ms: None }, now_ms)
    }

    /// The collector's answer (or its absence) for `token`; an unknown token changes nothing.
    pub fn completed(&mut self, token: u32, delivery: Delivery, now_ms: u64) -> Completed {
        let Some((_, batch)) = self.in_flight.take_if(|(t, _)| *t == token) else { return Completed::default() };
        match delivery {
            Delivery::Delivered { rejected } => {
                self.failures = 0;
                self.retry_at_ms = 0;
                let dropped = usize::try_from(rejected).unwrap_or(usize::MAX).min(batch.len());
                Completed { delivered: batch.len() - dropped, dropped, ..Completed::default() }
            }
            Delivery::Refused => {
                // The collector will never take these: keep going with what follows, without delay.
                Completed { dropped: batch.len(), refused: true, ..Completed::default() }
            }
            Delivery::Retry { after_ms } => {
                self.failures = self.failures.saturating_add(1);
                let backoff =
                    FIRST_BACKOFF_MS.saturating_mul(1 << self.failures.min(16).saturating_sub(1)).min(MAX_BACKOFF_MS);
                self.retry_at_ms = now_ms.saturating_add(after_ms.unwrap_or(backoff));
                for record in batch.into_iter().rev() {
                    self.queued_bytes += record.len();
                    self.queue.push_front(record);
                }
                Completed { dropped: self.trim(), retried: true, ..Completed::default() }
            }
        }
    }

    /// Whether a batch is awaiting its answer.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    fn trim(&mut self) -> usize {
        let mut dropped = 0;
        while self.queue.len() > self.limits.queue_max_events {
            if let Some(oldest) = self.queue.pop_front() {
                self.queued_bytes -= oldest.len();
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

    fn records(shipper: &mut Shipper, range: std::ops::Range<usize>) -> usize {
        range.map(|i| shipper.push(format!("r{i}").into_bytes())).sum()
    }

    fn batch(shipper: &mut Shipper, now_ms: u64) -> Option<Vec<String>> {
        let batch = shipper.next_batch(now_ms)?;
        Some(batch.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect())
    }

    const RETRY: Delivery = Delivery::Retry { after_ms: None };
    const OK: Delivery = Delivery::Delivered { rejected: 0 };

    #[test]
    fn flushes_when_full_or_due() {
        let mut s = Shipper::new(LIMITS, 0);
        records(&mut s, 0..2);
        assert_eq!(batch(&mut s, 10), None, "neither full nor due");
        assert_eq!(batch(&mut s, 1000).unwrap(), ["r0", "r1"], "due");
        s.dispatched(7);
        records(&mut s, 2..6);
        assert_eq!(batch(&mut s, 1001), None, "one batch in flight at a time");
        assert_eq!(s.completed(7, OK, 1002), Completed { delivered: 2, ..Completed::default() });
        assert_eq!(batch(&mut s, 1003).unwrap(), ["r2", "r3", "r4"], "full: at most 3");
    }

    #[test]
    fn retried_batches_requeue_in_order_back_off_and_stay_bounded() {
        let mut s = Shipper::new(LIMITS, 0);
        records(&mut s, 0..3);
        let first = batch(&mut s, 0).unwrap();
        s.dispatched(1);
        assert_eq!(records(&mut s, 3..5), 0);
        assert_eq!(s.completed(1, RETRY, 100).dropped, 0, "3 back + 2 queued = 5: within the bound");
        assert_eq!(batch(&mut s, 150), None, "backing off");
        assert_eq!(batch(&mut s, 200).unwrap(), first, "the same records, in order");
        s.dispatched(2);
        assert_eq!(records(&mut s, 5..8), 0);
        assert_eq!(s.completed(2, RETRY, 300).dropped, 3, "over the bound: the oldest go");
        assert_eq!(s.depth(), 5);
        assert_eq!(batch(&mut s, 399), None, "second failure: 200 ms backoff");
        assert_eq!(batch(&mut s, 500).unwrap(), ["r3", "r4", "r5"]);
        assert_eq!(s.completed(99, OK, 501), Completed::default(), "an unknown token changes nothing");
        assert!(s.busy());
    }

    #[test]
    fn a_refused_batch_is_dropped_and_never_blocks_the_queue() {
        let mut s = Shipper::new(LIMITS, 0);
        records(&mut s, 0..5);
        batch(&mut s, 0).unwrap();
        s.dispatched(1);
        let refused = s.completed(1, Delivery::of(Some(400), None, 0, 0), 10);
        assert_eq!(refused, Completed { dropped: 3, refused: true, ..Completed::default() });
        assert_eq!(batch(&mut s, 1010).unwrap(), ["r3", "r4"], "the next batch leaves without a backoff");
    }

    #[test]
    fn a_partial_success_counts_the_rejected_records() {
        let mut s = Shipper::new(LIMITS, 0);
        records(&mut s, 0..3);
        batch(&mut s, 0).unwrap();
        s.dispatched(1);
        let delivery = Delivery::of(Some(200), None, 2, 0);
        assert_eq!(s.completed(1, delivery, 1), Completed { delivered: 1, dropped: 2, ..Completed::default() });
        records(&mut s, 3..6);
        batch(&mut s, 1).unwrap();
        s.dispatched(2);
        let more_than_sent = Delivery::of(Some(200), None, 99, 0);
        assert_eq!(s.completed(2, more_than_sent, 2).dropped, 3, "never more than the batch");
    }

    #[test]
    fn retry_after_is_honoured_in_both_forms_and_bounded() {
        let mut s = Shipper::new(LIMITS, 0);
        records(&mut s, 0..3);
        batch(&mut s, 0).unwrap();
        s.dispatched(1);
        assert!(s.completed(1, Delivery::of(Some(429), Some("2"), 0, 0), 1000).retried);
        assert_eq!(batch(&mut s, 2999), None, "asked to wait 2 s");
        assert!(batch(&mut s, 3000).is_some());
        // Sun, 06 Nov 1994 08:49:37 GMT = 784111777 s.
        let now = 784_111_777_000 - 1500;
        assert_eq!(retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(1500));
        assert_eq!(retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", now + 10_000), Some(0), "in the past");
        assert_eq!(retry_after_ms("999999999999999999999", 0), Some(MAX_RETRY_AFTER_MS));
        for bad in ["", "soon", "-1", "1.5", "Sun, 06 Nov 1994"] {
            assert_eq!(retry_after_ms(bad, 0), None, "{bad:?}");
        }
    }

    #[test]
    fn only_what_the_otlp_specification_calls_retryable_is_retried() {
        for status in [None, Some(429), Some(502), Some(503), Some(504)] {
            assert_eq!(Delivery::of(status, None, 0, 0), RETRY, "{status:?}");
        }
        for status in [400, 401, 403, 404, 405, 413, 415, 500, 501, 505, 302, 100] {
            assert_eq!(Delivery::of(Some(status), Some("1"), 0, 0), Delivery::Refused, "{status}");
        }
        for status in [200, 202, 204] {
            assert_eq!(Delivery::of(Some(status), None, 0, 0), OK);
        }
    }

    #[test]
    fn the_bound_holds_while_the_collector_is_away() {
        let mut s = Shipper::new(LIMITS, 0);
        assert_eq!(records(&mut s, 0..100), 95);
        assert_eq!(s.depth(), 5);
        let byte_limited = Limits { batch_max_bytes: 4, ..LIMITS };
        let mut s = Shipper::new(byte_limited, 0);
        records(&mut s, 0..3);
        assert_eq!(batch(&mut s, 0).unwrap(), ["r0", "r1"], "bytes bound the batch too");
    }
}
