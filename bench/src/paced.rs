//! Open-loop, paced HTTP/1.1 load for loopback targets, from std alone.
//!
//! Request `i` is due at `start + i / rate`, whatever became of the requests before it, and its latency runs from that
//! due time to the end of its response: a send held up by a slow answer shows in the latency instead of quietly
//! thinning the load (no coordinated omission). Requests are spread evenly, so at a rate well under the target's
//! capacity each one meets an idle target and its latency is the target's own cost, not a queue behind a burst
//! (`h2load --rps` sends each connection's requests back to back, so p50 there is about the baseline plus a few
//! times a filter's cost).
//!
//! Threads: one sender, which waits for each due time (sleeps until [`SPIN_MARGIN`] before it, then spins: a
//! sleep alone wakes tens of microseconds late) and writes the request on an idle keep-alive connection; one
//! reader per connection, blocked on its socket, which parses the responses and timestamps their ends. A connection
//! carries one request at a time (no pipelining); all are opened and used once before the clock starts. When none is
//! idle at a due time the sender waits for the first to free up; that wait counts as send lag and, as the latency
//! runs from the due time, as latency too.
//!
//! The send lag is the generator's own error, reported so a run can be judged: on a 2-core VM, about 1 % of the
//! sleeps wake hundreds of microseconds late, which shows as `send_lag_p99` and in the latency tail. Keep the
//! sender off the target's core ([`Plan::core`], with the target pinned by `crate::cpu::pin`).
//!
//! [`run`] sends one request over and over, each to be answered 2xx; [`run_mix`] cycles through a mix of requests
//! (the soak's traffic), each with the status it must get.

use egress_harness::pki::Error;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What to send, how fast and for how long.
#[derive(Clone, Debug)]
pub struct Plan {
    /// A plain-HTTP listener, e.g. Envoy's on loopback.
    pub target: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// The request target, e.g. `/status/200`.
    pub path: String,
    /// Requests per second, spread evenly.
    pub rate: f64,
    /// How long to send: `round(rate × duration)` requests in all.
    pub duration: Duration,
    /// Keep-alive connections, all opened before the clock starts. At least 1; a few (4) absorb the odd slow
    /// answer without making the next due request wait.
    pub connections: usize,
    /// A CPU core for the sender thread alone (`taskset -cp` on its thread id, as it starts); the readers and the
    /// calling thread keep their affinity. Keep it off the target's core.
    pub core: Option<usize>,
}

/// One request of a mix ([`run_mix`]) and the answer it must get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The `Host` header.
    pub host: String,
    /// The request target, e.g. `/status/200`.
    pub path: String,
    /// More header lines, as `(name, value)`.
    pub headers: Vec<(String, String)>,
    /// The status the answer must have; `None` for any 2xx.
    pub status: Option<u16>,
}

impl Request {
    /// The request on the wire: HTTP/1.1, keep-alive.
    fn bytes(&self) -> Vec<u8> {
        let mut head = format!("GET {} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n", self.path, self.host);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

/// The outcome of a paced run; every request got the answer it must get (2xx for [`run`]).
#[derive(Clone, Copy, Debug)]
pub struct Paced {
    /// Requests sent, and answered.
    pub sent: usize,
    /// Requests per second achieved: `sent` over the time from the start to the last send plus one interval (the
    /// plan's rate exactly if every send left on time).
    pub rate: f64,
    /// Latency (end of the response − due time), nearest-rank percentiles.
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    /// How late the sends left (send time − due time): the generator's own precision, or the wait for a free
    /// connection.
    pub send_lag_p50: Duration,
    pub send_lag_p99: Duration,
    /// Share (0 to 1) of the sends more than [`LATE`] after their due time.
    pub late_share: f64,
}

/// The sender sleeps until this long before a due time and spins for the rest.
pub const SPIN_MARGIN: Duration = Duration::from_micros(100);
/// A send later than this after its due time is late (counted in [`Paced::late_share`]).
pub const LATE: Duration = Duration::from_micros(20);
/// Longest wait for a connection or for a response before the run fails: a target that stops answering must not
/// hang the benchmark.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a sender waiting for a free connection checks whether a reader has failed.
const ABORT_POLL: Duration = Duration::from_millis(10);
/// The clock starts this long after the sender is ready, so request 0 is not late by construction.
const LEAD: Duration = Duration::from_millis(1);
/// Longest status line, header or chunk-size line accepted (the answers are small).
const MAX_LINE: u64 = 64 * 1024;

/// Sends `plan` and waits for every answer. Fails if a connection cannot be opened, a response is not 2xx (the
/// error names the status), a response is malformed or closes its connection, or the target stalls for
/// [`STALL_TIMEOUT`].
pub fn run(plan: &Plan) -> Result<Paced, Error> {
    let only = Request { host: plan.host.clone(), path: plan.path.clone(), headers: Vec::new(), status: None };
    run_mix(plan, std::slice::from_ref(&only))
}

/// [`run`], sending `mix` instead of `plan.host` and `plan.path`: timed request `i` is `mix[i % mix.len()]`, and
/// connection `k` is opened with `mix[k % mix.len()]` (so a caller can count what the target saw of each kind:
/// `plan.connections` untimed requests besides [`Paced::sent`]). Each answer must have its request's status.
pub fn run_mix(plan: &Plan, mix: &[Request]) -> Result<Paced, Error> {
    if !(plan.rate.is_finite() && plan.rate > 0.0) || plan.connections == 0 || mix.is_empty() {
        return Err(format!("paced load needs a positive rate, connections and requests: {plan:?}").into());
    }
    let total = (plan.rate * plan.duration.as_secs_f64()).round() as usize;
    if total == 0 {
        return Err(format!("{} req/s for {:?} is no request at all", plan.rate, plan.duration).into());
    }
    let mix: Arc<[Request]> = mix.into();
    let requests: Vec<Vec<u8>> = mix.iter().map(Request::bytes).collect();

    // Every connection opened and used once before the clock starts: neither the handshake nor whatever the target
    // does on a connection's first request (Envoy: set up its codec) is charged to a timed request.
    let mut writers = Vec::with_capacity(plan.connections);
    let mut readers = Vec::with_capacity(plan.connections);
    for k in 0..plan.connections {
        let (mut writer, mut reader) = connect(plan.target)?;
        let kind = k % mix.len();
        let (request, expected) = requests.get(kind).zip(mix.get(kind)).ok_or("no such request")?;
        writer.write_all(request).map_err(|e| format!("cannot send to {}: {e}", plan.target))?;
        read_response(&mut reader)?.require(expected, plan.target)?;
        writers.push(writer);
        readers.push(reader);
    }

    // Idle connections, by index: the readers return theirs once a response is complete.
    let (idle_sender, idle) = mpsc::channel::<usize>();
    let flags = Arc::new(Flags::default());
    let mut due_receivers = Vec::with_capacity(plan.connections);
    let mut due_times = Vec::with_capacity(plan.connections);
    for index in 0..plan.connections {
        let (due_sender, due_receiver) = mpsc::channel::<Due>();
        due_times.push(due_sender);
        due_receivers.push(due_receiver);
        idle_sender.send(index).map_err(|_| "the idle-connection queue closed early")?;
    }
    // Built before the readers start: however this function leaves from here on, dropping it releases them.
    let pacer = Pacer {
        writers,
        due_times,
        idle,
        flags: Arc::clone(&flags),
        requests,
        rate: plan.rate,
        total,
        connections: plan.connections,
        core: plan.core,
    };
    let mut reader_threads: Vec<JoinHandle<Result<Vec<Duration>, Error>>> = Vec::with_capacity(plan.connections);
    for (index, (reader, due_times)) in readers.into_iter().zip(due_receivers).enumerate() {
        let (idle_sender, flags, plan, mix) = (idle_sender.clone(), Arc::clone(&flags), plan.clone(), Arc::clone(&mix));
        let spawned = thread::Builder::new().name(format!("paced-reader-{index}")).spawn(move || {
            let outcome = read_responses(reader, index, &due_times, &idle_sender, &flags, (&plan, &mix));
            if outcome.is_err() {
                flags.aborted.store(true, Ordering::SeqCst);
            }
            outcome
        });
        match spawned {
            Ok(handle) => reader_threads.push(handle),
            Err(e) => {
                drop(pacer);
                let _ = join_all(reader_threads);
                return Err(format!("cannot start a reader thread: {e}").into());
            }
        }
    }
    drop(idle_sender);

    let sent = thread::Builder::new()
        .name("paced-sender".into())
        .spawn(move || pacer.send_all())
        .map_err(|e| format!("cannot start the sender thread: {e}"));
    // The sender is done (or never started) and has shut the connections down: the readers stop.
    let sent = sent.and_then(|handle| handle.join().map_err(|_| "the sender thread panicked".to_string()));
    let latencies = join_all(reader_threads);
    // A reader's error (a wrong status) explains a sender's "aborted", so it comes first.
    let latencies = latencies?;
    let log = sent??;
    summarize(plan, log, latencies)
}

/// What the threads of a run tell each other.
#[derive(Default)]
struct Flags {
    /// Set by a failing reader, so the sender stops instead of waiting on a connection that will never free up.
    aborted: AtomicBool,
    /// Set by the sender just before it shuts the connections down: the readers take the end of the connection as
    /// the end of the run, not as the target's failure.
    finishing: AtomicBool,
}

/// Joins the readers; the first error if any failed, else every latency.
fn join_all(readers: Vec<JoinHandle<Result<Vec<Duration>, Error>>>) -> Result<Vec<Duration>, Error> {
    let mut all = Vec::new();
    let mut first_error = None;
    for reader in readers {
        match reader.join().map_err(|_| Error::from("a reader thread panicked")).and_then(|outcome| outcome) {
            Ok(latencies) => all.extend(latencies),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(all), Err)
}

fn connect(target: SocketAddr) -> Result<(TcpStream, BufReader<TcpStream>), Error> {
    let stream =
        TcpStream::connect_timeout(&target, STALL_TIMEOUT).map_err(|e| format!("cannot connect to {target}: {e}"))?;
    // A request is one small write: Nagle would hold it back waiting for an ACK.
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STALL_TIMEOUT))?;
    stream.set_write_timeout(Some(STALL_TIMEOUT))?;
    let reader = BufReader::new(stream.try_clone()?);
    Ok((stream, reader))
}

/// A request on its way: when it was due, and which request of the mix it is.
type Due = (Instant, usize);

/// The sender thread's state: the write halves of the connections and, per connection, the queue of due times (and
/// kinds) its reader measures from. Dropping it shuts the connections down, which ends the readers.
struct Pacer {
    writers: Vec<TcpStream>,
    due_times: Vec<Sender<Due>>,
    idle: Receiver<usize>,
    flags: Arc<Flags>,
    /// The mix, on the wire: request `i` is `requests[i % requests.len()]`.
    requests: Vec<Vec<u8>>,
    rate: f64,
    total: usize,
    connections: usize,
    core: Option<usize>,
}

/// What the sender did: when the clock started, when the last request left, how late each one left.
struct SendLog {
    start: Instant,
    last_send: Instant,
    lags: Vec<Duration>,
}

impl Pacer {
    /// Sends the schedule, then waits until every connection is idle again (every response read).
    fn send_all(mut self) -> Result<SendLog, Error> {
        if let Some(core) = self.core {
            crate::cpu::pin_current_thread(core)?;
        }
        let mut lags = Vec::with_capacity(self.total);
        let start = Instant::now() + LEAD;
        let mut last_send = start;
        for i in 0..self.total {
            let due = start + Duration::from_secs_f64(i as f64 / self.rate);
            wait_until(due);
            if self.flags.aborted.load(Ordering::Relaxed) {
                return Err("aborted: a reader failed".into());
            }
            let connection = match self.idle.try_recv() {
                Ok(connection) => connection,
                Err(TryRecvError::Empty) => self.wait_for_idle()?,
                Err(TryRecvError::Disconnected) => return Err("every reader has stopped".into()),
            };
            // Queued before the write, so the reader finds the due time when the response arrives. The reader is
            // blocked on its socket, not on this queue: queueing wakes no thread, it costs the schedule nothing.
            let kind = i % self.requests.len();
            self.due_times
                .get(connection)
                .and_then(|due_times| due_times.send((due, kind)).ok())
                .ok_or_else(|| format!("connection {connection}'s reader has stopped"))?;
            let writer = self.writers.get_mut(connection).ok_or("no such connection")?;
            let request = self.requests.get(kind).ok_or("no such request")?;
            last_send = Instant::now();
            writer.write_all(request).map_err(|e| format!("cannot send request {i}: {e}"))?;
            lags.push(last_send.saturating_duration_since(due));
        }
        // The sender holds no connection between sends, so all of them come back once every answer is in.
        for _ in 0..self.connections {
            self.wait_for_idle()?;
        }
        Ok(SendLog { start, last_send, lags })
    }

    /// The first connection to be idle, unless a reader fails or the target stalls.
    fn wait_for_idle(&self) -> Result<usize, Error> {
        let deadline = Instant::now() + STALL_TIMEOUT;
        loop {
            if self.flags.aborted.load(Ordering::Relaxed) {
                return Err("aborted: a reader failed".into());
            }
            match self.idle.recv_timeout(ABORT_POLL) {
                Ok(connection) => return Ok(connection),
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("no connection freed up in {STALL_TIMEOUT:?}: the target stalls").into())
                }
                Err(RecvTimeoutError::Disconnected) => return Err("every reader has stopped".into()),
            }
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.flags.finishing.store(true, Ordering::SeqCst);
        for writer in &self.writers {
            // Wakes the reader blocked on this socket with the connection's end. Fails only if it is closed already.
            let _ = writer.shutdown(Shutdown::Both);
        }
    }
}

/// Returns at `due` or just after: sleeps until [`SPIN_MARGIN`] before, then spins on the clock.
fn wait_until(due: Instant) {
    if let Some(ahead) = due.checked_duration_since(Instant::now()) {
        if ahead > SPIN_MARGIN {
            thread::sleep(ahead - SPIN_MARGIN);
        }
    }
    while Instant::now() < due {
        std::hint::spin_loop();
    }
}

/// One connection's reader: waits on the socket for a response, takes the due time the sender queued before the
/// request, checks the answer against the request's, records the latency and hands the connection back. Returns when
/// the sender shuts the connection down.
fn read_responses(
    mut reader: BufReader<TcpStream>,
    connection: usize,
    due_times: &Receiver<Due>,
    idle: &Sender<usize>,
    flags: &Flags,
    (plan, mix): (&Plan, &[Request]),
) -> Result<Vec<Duration>, Error> {
    let mut latencies = Vec::new();
    loop {
        let answer_started = match reader.fill_buf() {
            Ok(bytes) => !bytes.is_empty(),
            // Idle longer than the read timeout: fine, unless a request is waiting (the due time is queued first).
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if let Ok((due, _)) = due_times.try_recv() {
                    return Err(format!("no answer {:?} after a request was due", due.elapsed()).into());
                }
                continue;
            }
            Err(e) => return Err(format!("reading from {}: {e}", plan.target).into()),
        };
        if !answer_started {
            // The sender's shutdown ends the run (a request still waiting then is the sender's failure to report);
            // at any other time the target closed the connection.
            if flags.finishing.load(Ordering::SeqCst) {
                return Ok(latencies);
            }
            return Err(format!("{} closed a keep-alive connection", plan.target).into());
        }
        let (due, kind) = due_times.try_recv().map_err(|_| format!("{} answered a request never sent", plan.target))?;
        let response = read_response(&mut reader)?;
        let done = Instant::now();
        response.require(mix.get(kind).ok_or("no such request")?, plan.target)?;
        latencies.push(done.saturating_duration_since(due));
        // Fails only once the sender has finished: nothing left to send on it.
        let _ = idle.send(connection);
    }
}

/// The head of a complete response (its body read and dropped).
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    /// The target announced it closes the connection after this response.
    closes: bool,
}

impl Response {
    /// The answer `request` must get (its status, or any 2xx), on a connection that stays open.
    fn require(&self, request: &Request, target: SocketAddr) -> Result<(), Error> {
        let (expected, wanted) = match request.status {
            Some(status) => (self.status == status, status.to_string()),
            None => ((200..300).contains(&self.status), "2xx".to_string()),
        };
        if !expected {
            return Err(
                format!("GET {} with Host {} got {}, not {wanted}", request.path, request.host, self.status).into()
            );
        }
        if self.closes {
            return Err(
                format!("{target} closes its connections (Connection: close): paced load needs keep-alive").into()
            );
        }
        Ok(())
    }
}

/// Reads one HTTP/1.1 response to a GET: skips interim (1xx) ones, reads the body by Content-Length or chunked
/// encoding. A body delimited by the connection's end is refused: the connection could not carry another request.
fn read_response(reader: &mut impl BufRead) -> Result<Response, Error> {
    loop {
        let status_line = read_line(reader)?;
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("not an HTTP/1 status line: {status_line:?}"))?;
        let mut content_length = None;
        let mut chunked = false;
        let mut closes = status_line.starts_with("HTTP/1.0");
        loop {
            let line = read_line(reader)?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(format!("malformed header line {line:?}").into());
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    content_length = Some(value.parse::<u64>().map_err(|_| format!("bad Content-Length {value:?}"))?);
                }
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" => {
                    let value = value.to_ascii_lowercase();
                    closes = value.contains("close") || (closes && !value.contains("keep-alive"));
                }
                _ => {}
            }
        }
        if (100..200).contains(&status) {
            continue;
        }
        if status == 204 || status == 304 {
            // No body by definition.
        } else if chunked {
            read_chunked_body(reader)?;
        } else if let Some(length) = content_length {
            skip(reader, length)?;
        } else {
            return Err(format!("a {status} response without Content-Length or chunked encoding").into());
        }
        return Ok(Response { status, closes });
    }
}

fn read_chunked_body(reader: &mut impl BufRead) -> Result<(), Error> {
    loop {
        let line = read_line(reader)?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader)?.is_empty() {}
            return Ok(());
        }
        skip(reader, size)?;
        if !read_line(reader)?.is_empty() {
            return Err("a chunk longer than its size".into());
        }
    }
}

/// One line without its CRLF (or LF); the connection's end before one is an error.
pub(crate) fn read_line(reader: &mut impl BufRead) -> Result<String, Error> {
    let mut line = Vec::new();
    reader.take(MAX_LINE).read_until(b'\n', &mut line).map_err(|e| format!("reading a response: {e}"))?;
    if line.last() != Some(&b'\n') {
        return Err(if line.is_empty() {
            "the target closed the connection before answering".to_string()
        } else {
            format!("a response line cut short or too long: {:?}", String::from_utf8_lossy(&line))
        }
        .into());
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn skip(reader: &mut impl BufRead, length: u64) -> Result<(), Error> {
    let skipped = std::io::copy(&mut reader.take(length), &mut std::io::sink())
        .map_err(|e| format!("reading a response body: {e}"))?;
    if skipped != length {
        return Err(format!("a response body cut short: {skipped} of {length} bytes").into());
    }
    Ok(())
}

fn summarize(plan: &Plan, log: SendLog, mut latencies: Vec<Duration>) -> Result<Paced, Error> {
    let SendLog { start, last_send, mut lags } = log;
    if latencies.len() != lags.len() {
        return Err(format!("{} requests sent, {} answered", lags.len(), latencies.len()).into());
    }
    latencies.sort_unstable();
    lags.sort_unstable();
    let late = lags.iter().filter(|&&lag| lag > LATE).count();
    let sent = lags.len();
    let span = last_send.saturating_duration_since(start).as_secs_f64() + 1.0 / plan.rate;
    Ok(Paced {
        sent,
        rate: sent as f64 / span,
        p50: nearest_rank(&latencies, 500),
        p99: nearest_rank(&latencies, 990),
        p999: nearest_rank(&latencies, 999),
        send_lag_p50: nearest_rank(&lags, 500),
        send_lag_p99: nearest_rank(&lags, 990),
        late_share: late as f64 / sent.max(1) as f64,
    })
}

/// The nearest-rank percentile (in per mille) of an ascending list; zero for an empty one.
fn nearest_rank(sorted: &[Duration], per_mille: usize) -> Duration {
    let rank = (sorted.len() * per_mille).div_ceil(1000).saturating_sub(1);
    sorted.get(rank).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::net::TcpListener;
    use std::sync::atomic::AtomicUsize;

    /// A keep-alive HTTP/1.1 server on loopback, a thread per connection, answering every request with a small
    /// body: 200 for the first `successes`, 503 after. Its threads outlive the test (the process ends them).
    fn serve(successes: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let answered = Arc::clone(&answered);
                thread::spawn(move || {
                    stream.set_nodelay(true).unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    // One request per loop: its head, up to the empty line.
                    while let Ok(line) = read_line(&mut reader) {
                        if !line.is_empty() {
                            continue;
                        }
                        let status =
                            if answered.fetch_add(1, Ordering::SeqCst) < successes { "200 OK" } else { "503 No" };
                        let response = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
                        if writer.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    fn plan(target: SocketAddr, rate: f64, duration: Duration) -> Plan {
        Plan {
            target,
            host: "eu.httpbin.org".into(),
            path: "/status/200".into(),
            rate,
            duration,
            connections: 4,
            core: None,
        }
    }

    #[test]
    fn paces_the_planned_number_of_requests_at_the_planned_rate() {
        let plan = plan(serve(usize::MAX), 2_000.0, Duration::from_secs(1));
        let paced = run(&plan).unwrap();
        eprintln!("{paced:?}");
        assert!(paced.sent.abs_diff(2_000) <= 1, "{paced:?}");
        assert!((paced.rate - 2_000.0).abs() < 100.0, "{paced:?}");
        assert!(paced.p50 > Duration::ZERO, "{paced:?}");
        assert!(paced.p50 <= paced.p99 && paced.p99 <= paced.p999, "{paced:?}");
        assert!(paced.send_lag_p50 <= paced.send_lag_p99, "{paced:?}");
        assert!((0.0..=1.0).contains(&paced.late_share), "{paced:?}");
    }

    #[test]
    fn the_sender_can_be_pinned_and_reads_real_echo_answers() {
        let pki = egress_harness::pki::TestPki::new().unwrap();
        let echo = egress_harness::echo::Echo::start(&pki).unwrap();
        // The first core this process may use (a container may not allow core 0).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let allowed = status.lines().find_map(|line| line.strip_prefix("Cpus_allowed_list:")).unwrap().trim();
        let core = allowed.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
        let plan = Plan { core: Some(core), ..plan(echo.http_addr(), 1_000.0, Duration::from_millis(300)) };
        let paced = run(&plan).unwrap();
        assert!(paced.sent.abs_diff(300) <= 1, "{paced:?}");
        assert!(paced.p50 > Duration::ZERO && paced.p50 <= paced.p999, "{paced:?}");
        // The echo server logged every request, warm-up included, with the Host header sent.
        let requests = echo.requests();
        assert_eq!(requests.len(), paced.sent + plan.connections);
        assert!(requests.iter().all(|r| r["host"] == "eu.httpbin.org" && r["path"] == "/status/200"));
    }

    #[test]
    fn a_mix_cycles_through_its_requests_and_checks_each_answer() {
        let pki = egress_harness::pki::TestPki::new().unwrap();
        let echo = egress_harness::echo::Echo::start(&pki).unwrap();
        let request = |path: &str, headers: Vec<(String, String)>, status| Request {
            host: "eu.httpbin.org".into(),
            path: path.into(),
            headers,
            status,
        };
        let mix = [
            request("/status/200", Vec::new(), None),
            request("/status/404", vec![("x-mix".into(), "b".into())], Some(404)),
        ];
        let plan = Plan { connections: 3, ..plan(echo.http_addr(), 1_000.0, Duration::from_millis(300)) };
        let paced = run_mix(&plan, &mix).unwrap();
        assert_eq!(paced.sent, 300, "{paced:?}");
        // Timed request i is mix[i % 2]; connection k opened with mix[k % 2]: 150 + 2 and 150 + 1.
        let requests = echo.requests();
        let to = |path: &str| requests.iter().filter(|r| r["path"] == path).collect::<Vec<_>>();
        assert_eq!((to("/status/200").len(), to("/status/404").len()), (152, 151));
        assert!(to("/status/404").iter().all(|r| r["headers"].to_string().contains(r#"["x-mix","b"]"#)));
        // An answer other than the one its request must get stops the run, naming both.
        let wrong = [request("/status/200", Vec::new(), None), request("/status/404", Vec::new(), Some(403))];
        let error = run_mix(&plan, &wrong).unwrap_err().to_string();
        assert!(error.contains("got 404, not 403"), "{error}");
    }

    #[test]
    fn a_non_2xx_answer_fails_the_run_naming_the_status() {
        // The warm-up (4) and a few timed requests succeed; the run must stop at the first 503, not time it.
        let started = Instant::now();
        let error = run(&plan(serve(10), 1_000.0, Duration::from_secs(1))).unwrap_err().to_string();
        assert!(error.contains("503"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        // Refused from the first answer on too (the warm-up).
        let error = run(&plan(serve(0), 1_000.0, Duration::from_secs(1))).unwrap_err().to_string();
        assert!(error.contains("503"), "{error}");
    }

    #[test]
    fn parses_length_delimited_chunked_and_interim_responses() {
        let text = "HTTP/1.1 100 Continue\r\n\r\n\
                    HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n\
                    HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n\
                    HTTP/1.0 201 Created\r\ncontent-length: 4\r\nconnection: keep-alive\r\n\r\nbody\
                    HTTP/1.1 200 OK\r\n\r\n";
        let mut reader = Cursor::new(text.as_bytes());
        assert_eq!(read_response(&mut reader).unwrap(), Response { status: 200, closes: false });
        assert_eq!(read_response(&mut reader).unwrap(), Response { status: 204, closes: true });
        assert_eq!(read_response(&mut reader).unwrap(), Response { status: 201, closes: false });
        // No length: the body would run to the connection's end.
        assert!(read_response(&mut reader).is_err());
        // The connection's end before a response.
        assert!(read_response(&mut Cursor::new(&b""[..])).is_err());
        assert!(read_response(&mut Cursor::new(&b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"[..])).is_err());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<Duration> = (1..=1_000).map(Duration::from_micros).collect();
        assert_eq!(nearest_rank(&sorted, 500), Duration::from_micros(500));
        assert_eq!(nearest_rank(&sorted, 999), Duration::from_micros(999));
        assert_eq!(nearest_rank(&sorted[..1], 990), Duration::from_micros(1));
        assert_eq!(nearest_rank(&[], 500), Duration::ZERO);
    }
}
