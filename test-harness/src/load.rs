//! A bounded HTTP/1.1 load generator for tests and benchmarks, so that neither needs wrk, hey or oha.
//!
//! [`run`] is closed-loop: `concurrency` tasks, each on one keep-alive connection, send the next request as soon
//! as the previous answer is read, until `total` requests are taken or the deadline passes. That measures
//! throughput at saturation. It returns a [`Report`] with status counts, transport errors and the latency
//! distribution. (Paced load, for latency below saturation, is the benchmark's: `bench/src/paced.rs`.)

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::pki::Error;

/// Stands in for "no deadline" when the plan's is too large to add to a clock reading (about 30 years, as tokio
/// itself uses).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// What to send.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The `Host` header of every request.
    pub host: String,
    /// How many requests to send in all.
    pub total: usize,
    /// How many connections (and requests in flight) at most; at least 1.
    pub concurrency: usize,
    /// The path (origin form, with any query) of the n-th request, n in `0..total`; e.g. unique per request so
    /// that each one can be found in a log.
    pub path: fn(usize) -> String,
    /// Hard stop for the whole run: no request starts after it, and requests still in flight are cut off (and
    /// counted as errors).
    pub deadline: Duration,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Requests sent (or attempted): every one either got a status or counts as an error.
    pub sent: usize,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, usize>,
    /// Requests without a complete response: connect, send or read failures (including an invalid path) and
    /// requests cut off by the deadline.
    pub errors: usize,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
    /// Latency of every request with a complete response (whatever its status), sorted ascending.
    latencies: Vec<Duration>,
}

impl Report {
    /// The number of 2xx responses.
    pub fn ok(&self) -> usize {
        self.statuses.range(200..300).map(|(_, count)| count).sum()
    }

    /// The number of complete responses, whatever their status.
    pub fn responses(&self) -> usize {
        self.statuses.values().sum()
    }

    /// The `p`-th percentile latency, `p` in 0..=100 (so `percentile(99.0)` is p99; values outside are
    /// clamped): the smallest latency that at least `p`% of the responses did not exceed. `percentile(0.0)` is
    /// the fastest response, `percentile(100.0)` the slowest. Zero when there were no responses.
    pub fn percentile(&self, p: f64) -> Duration {
        let rank = (p.clamp(0.0, 100.0) / 100.0 * self.latencies.len() as f64).ceil() as usize;
        // Rank 0 (p = 0, or NaN) means the first entry.
        self.latencies.get(rank.saturating_sub(1)).copied().unwrap_or_default()
    }

    /// Complete responses per second of [`Report::elapsed`].
    pub fn throughput(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.responses() as f64 / seconds
        } else {
            0.0
        }
    }

    /// Every response's latency, sorted ascending.
    pub fn latencies(&self) -> &[Duration] {
        &self.latencies
    }

    fn absorb(&mut self, other: Report) {
        self.sent += other.sent;
        self.errors += other.errors;
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.latencies.extend(other.latencies);
    }
}

/// One line for benchmark output, e.g.
/// `10000 sent: 10000 2xx, 0 other, 0 errors in 1.02s; 9804 req/s; p50 0.8ms p90 1.4ms p99 2.9ms max 7.1ms`.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |latency: Duration| latency.as_secs_f64() * 1000.0;
        write!(
            f,
            "{} sent: {} 2xx, {} other, {} errors in {:.2}s; {:.0} req/s; p50 {:.1}ms p90 {:.1}ms p99 {:.1}ms max {:.1}ms",
            self.sent,
            self.ok(),
            self.responses() - self.ok(),
            self.errors,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            ms(self.percentile(50.0)),
            ms(self.percentile(90.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(100.0)),
        )
    }
}

/// Closed loop: `plan.concurrency` requests in flight until `plan.total` are done or the deadline passes.
///
/// Latency runs from sending the request to having read the whole response body; connecting is not included.
/// Blocks the calling thread; from async code, call it via `spawn_blocking` (it refuses to run on a runtime
/// thread, where it could not start its own runtime).
pub fn run(target: SocketAddr, plan: &Plan) -> Result<Report, Error> {
    if plan.concurrency == 0 {
        return Err("load plan: concurrency must be at least 1".into());
    }
    let host = HeaderValue::from_str(&plan.host).map_err(|err| format!("load plan: host {:?}: {err}", plan.host))?;
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err("load::run blocks and starts its own runtime; call it outside async code (spawn_blocking)".into());
    }
    // More tasks than requests would only open idle connections.
    let tasks = plan.concurrency.min(plan.total);
    let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get).min(tasks).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;

    runtime.block_on(async {
        let start = Instant::now();
        let deadline = start + plan.deadline.min(FAR_FUTURE);
        let job =
            Arc::new(Job { target, host, path: plan.path, total: plan.total, next: AtomicUsize::new(0), deadline });
        let mut workers = JoinSet::new();
        for _ in 0..tasks {
            workers.spawn(worker(Arc::clone(&job)));
        }
        let mut report = Report::default();
        while let Some(tally) = workers.join_next().await {
            report.absorb(tally.map_err(|err| format!("load worker failed: {err}"))?);
        }
        report.elapsed = start.elapsed();
        report.latencies.sort_unstable();
        Ok(report)
    })
}

/// What every worker task shares.
struct Job {
    target: SocketAddr,
    host: HeaderValue,
    path: fn(usize) -> String,
    total: usize,
    /// The number of the next request to take; values from `total` on mean "all taken".
    next: AtomicUsize,
    deadline: Instant,
}

type Connection = SendRequest<Empty<Bytes>>;

/// Takes request numbers until all are taken or the deadline passes; the returned report has no `elapsed` and
/// unsorted latencies.
async fn worker(job: Arc<Job>) -> Report {
    let mut tally = Report::default();
    let mut connection = None;
    while Instant::now() < job.deadline {
        let n = job.next.fetch_add(1, Ordering::Relaxed);
        if n >= job.total {
            break;
        }
        tally.sent += 1;
        match tokio::time::timeout_at(job.deadline, exchange(&mut connection, &job, n)).await {
            Ok(Ok((status, sent_at))) => {
                *tally.statuses.entry(status).or_default() += 1;
                tally.latencies.push(sent_at.elapsed());
            }
            Ok(Err(_)) | Err(_) => {
                tally.errors += 1;
                // The connection may be mid-response or broken; a fresh one is the only safe continuation.
                connection = None;
            }
        }
    }
    tally
}

/// Sends request `n` and reads the whole response; returns its status and when it was sent.
async fn exchange(connection: &mut Option<Connection>, job: &Job, n: usize) -> Result<(u16, Instant), Error> {
    let mut request = Request::get((job.path)(n)).header(HOST, job.host.clone()).body(Empty::new())?;
    let mut retried = false;
    loop {
        let sender = ready_connection(connection, job.target).await?;
        let sent_at = Instant::now();
        match sender.try_send_request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                drain(response.into_body()).await?;
                return Ok((status, sent_at));
            }
            Err(mut err) => {
                *connection = None;
                // hyper hands the request back only if none of it was written, typically because the server
                // closed the idle connection just then. Resending that one cannot duplicate anything; once.
                match err.take_message() {
                    Some(unsent) if !retried => {
                        request = unsent;
                        retried = true;
                    }
                    _ => return Err(err.into_error().into()),
                }
            }
        }
    }
}

/// The open connection if it can take a request, else a new one.
async fn ready_connection(connection: &mut Option<Connection>, target: SocketAddr) -> Result<&mut Connection, Error> {
    let mut reusable = connection.take();
    if let Some(sender) = &mut reusable {
        // Fails once the server has closed the connection (e.g. after `Connection: close`).
        if sender.ready().await.is_err() {
            reusable = None;
        }
    }
    let sender = match reusable {
        Some(sender) => sender,
        None => connect(target).await?,
    };
    Ok(connection.insert(sender))
}

async fn connect(target: SocketAddr) -> Result<Connection, Error> {
    let stream = TcpStream::connect(target).await?;
    // Requests are single small writes; Nagle's algorithm would only add latency to them.
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    // Runs the connection until the server closes it or `sender` is dropped; its errors surface as request errors.
    tokio::spawn(connection);
    Ok(sender)
}

/// Reads the body to the end without keeping it.
async fn drain(mut body: Incoming) -> Result<(), hyper::Error> {
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::Echo;
    use crate::pki::TestPki;
    use std::collections::BTreeSet;
    use std::io::{BufRead, BufReader, Write};

    fn plan(total: usize, concurrency: usize, path: fn(usize) -> String) -> Plan {
        Plan { host: "load.example.com".to_string(), total, concurrency, path, deadline: Duration::from_secs(30) }
    }

    fn every_fifth_fails(n: usize) -> String {
        if n.is_multiple_of(5) {
            "/status/503".to_string()
        } else {
            format!("/get/{n}")
        }
    }

    fn assert_percentiles_ordered(report: &Report) {
        let points = [0.0, 50.0, 90.0, 99.0, 100.0].map(|p| report.percentile(p));
        assert!(points.windows(2).all(|pair| pair[0] <= pair[1]), "{points:?}");
        assert!(points[4] > Duration::ZERO);
        assert_eq!(points[0], report.latencies()[0]);
        assert_eq!(Some(&points[4]), report.latencies().last());
    }

    #[test]
    fn run_sends_every_request_and_counts_statuses() {
        let pki = TestPki::new().unwrap();
        let echo = Echo::start(&pki).unwrap();
        let report = run(echo.http_addr(), &plan(200, 8, every_fifth_fails)).unwrap();

        assert_eq!(report.sent, 200);
        assert_eq!(report.errors, 0);
        assert_eq!(report.statuses, BTreeMap::from([(200, 160), (503, 40)]));
        assert_eq!(report.ok(), 160);
        assert_eq!(report.latencies().len(), 200);
        assert!(report.throughput() > 0.0);
        assert_percentiles_ordered(&report);

        let requests = echo.requests();
        let paths: BTreeSet<_> = requests.iter().map(|r| r["path"].as_str().unwrap().to_string()).collect();
        assert_eq!(requests.len(), 200);
        assert_eq!(paths.len(), 160 + 1, "each /get/N once, /status/503 forty times");
        assert!(requests.iter().all(|r| r["host"] == "load.example.com" && r["protocol"] == "HTTP/1.1"));
    }

    #[test]
    fn reconnects_when_the_server_closes_each_connection() {
        // Answers one request per connection, with `Connection: close`.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            }
        });
        let report = run(addr, &plan(20, 3, |n| format!("/{n}"))).unwrap();
        assert_eq!((report.sent, report.ok(), report.errors), (20, 20, 0), "{report}");
    }

    #[test]
    fn each_task_keeps_one_connection() {
        // A keep-alive server that counts the connections it accepts.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut stream = stream.unwrap();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => {
                                if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        let report = run(addr, &plan(60, 3, |n| format!("/{n}"))).unwrap();
        assert_eq!((report.sent, report.ok(), report.errors), (60, 60, 0), "{report}");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn the_deadline_cuts_off_requests_in_flight() {
        let pki = TestPki::new().unwrap();
        let echo = Echo::start(&pki).unwrap();
        let plan = Plan { deadline: Duration::from_millis(300), ..plan(10, 2, |_| "/delay/10".to_string()) };
        let report = run(echo.http_addr(), &plan).unwrap();

        // Each task sent one request and was still waiting for it at the deadline.
        assert_eq!((report.sent, report.errors, report.responses()), (2, 2, 0));
        assert!(report.elapsed < Duration::from_secs(5), "{report}");
        assert_eq!(report.percentile(50.0), Duration::ZERO);
    }

    #[test]
    fn refused_connections_are_errors() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        // The listener is closed again, so connecting is refused.
        let report = run(addr, &plan(10, 2, |n| format!("/{n}"))).unwrap();
        assert_eq!((report.sent, report.errors, report.responses()), (10, 10, 0));
    }

    #[test]
    fn rejects_unusable_plans() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        assert!(run(addr, &plan(10, 0, |n| format!("/{n}"))).is_err());
        assert!(run(addr, &Plan { host: "bad\nhost".to_string(), ..plan(10, 1, |n| format!("/{n}")) }).is_err());
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(runtime.block_on(async { run(addr, &plan(10, 1, |n| format!("/{n}"))) }).is_err());
    }

    #[test]
    fn an_empty_plan_sends_nothing() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let report = run(addr, &plan(0, 4, |n| format!("/{n}"))).unwrap();
        assert_eq!((report.sent, report.errors, report.responses()), (0, 0, 0));
        assert_eq!(report.throughput(), 0.0);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let report = Report {
            latencies: (1..=10).map(Duration::from_millis).collect(),
            elapsed: Duration::from_secs(2),
            statuses: BTreeMap::from([(200, 10)]),
            ..Report::default()
        };
        assert_eq!(report.percentile(0.0), Duration::from_millis(1));
        assert_eq!(report.percentile(50.0), Duration::from_millis(5));
        assert_eq!(report.percentile(90.0), Duration::from_millis(9));
        assert_eq!(report.percentile(91.0), Duration::from_millis(10));
        assert_eq!(report.percentile(250.0), Duration::from_millis(10));
        assert_eq!(report.throughput(), 5.0);
    }
}
