//! A loopback HTTP collector for audit events, standing in for the log pipeline (Fluent Bit, Vector, an HTTP
//! log gateway) that the audit filter ships NDJSON batches to.
//!
//! Tests point Envoy's audit cluster at [`Collector::addr`], read back what arrived with [`Collector::events`],
//! and make the pipeline misbehave with [`Collector::set_mode`] to check that the filter degrades as designed
//! (drops or retries batches, never stalls the proxied requests).
//!
//! One listener on 127.0.0.1 speaking HTTP/1.1 and h2c (prior knowledge). Every POST, whatever its path, is a
//! batch: its body is split into lines, and each non-blank line is one event. Other methods get a 405 and are
//! not counted.

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;

use crate::pki::Error;

/// How long a rebind after [`Mode::Down`] keeps retrying before giving up. With `SO_REUSEADDR` the first attempt
/// normally succeeds; retries only cover a port that something else briefly holds.
const REBIND_PATIENCE: Duration = Duration::from_secs(2);
const REBIND_RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// How long [`Collector::set_mode`] waits for the server thread to open or close the listener; more than
/// [`REBIND_PATIENCE`], so a failed rebind is reported as such rather than as a timeout.
const MODE_SWITCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`Collector::wait_for_events`] looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How the collector treats what it receives; see [`Collector::set_mode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Accept every batch and answer 200 at once.
    #[default]
    Up,
    /// Answer every POST with this status and keep nothing: an overloaded or misconfigured pipeline. A status
    /// hyper cannot send as a final answer (below 200 or above 999) becomes 500.
    Failing(u16),
    /// Accept the batch (its events are visible at once), then wait this long before answering 200: a pipeline
    /// that commits but answers late, so a sender that times out and retries produces duplicates.
    Slow(Duration),
    /// Not listening at all: new connections are refused and open ones are closed, as when the pipeline is down.
    Down,
}

/// The running collector. Dropping it stops the listener, closes open connections and joins the background
/// thread.
#[derive(Debug)]
pub struct Collector {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Asks the server thread to open or close the listener; dropping it stops the server.
    control: Option<UnboundedSender<Listen>>,
    thread: Option<JoinHandle<()>>,
}

/// State shared between the [`Collector`] handle and the request handlers.
#[derive(Debug, Default)]
struct Shared {
    mode: Mutex<Mode>,
    received: Mutex<Received>,
}

#[derive(Debug, Default)]
struct Received {
    events: Vec<Value>,
    /// Accepted POSTs.
    batches: usize,
    /// All POSTs, refused ones included.
    requests: usize,
}

/// A request to the server thread to have the listener open (`on`) or closed; `done` carries the outcome back.
struct Listen {
    on: bool,
    done: mpsc::SyncSender<Result<(), String>>,
}

impl Collector {
    /// Binds 127.0.0.1 on an ephemeral port and starts serving on a background thread, in [`Mode::Up`].
    pub fn start() -> Result<Collector, Error> {
        // A current-thread runtime is plenty for audit batches and keeps each `Collector` down to one thread.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // Bind before spawning so that bind errors and the address are known when `start` returns.
        let listener = {
            let _in_runtime = runtime.enter();
            listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?
        };
        let addr = listener.local_addr()?;

        let shared = Arc::new(Shared::default());
        let (control, commands) = unbounded_channel();
        let server_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name(format!("collector-{}", addr.port())).spawn(move || {
            runtime.block_on(supervise(listener, addr, server_shared, commands));
            // Dropping the runtime here drops every connection task, closing their sockets.
        })?;

        Ok(Collector { addr, shared, control: Some(control), thread: Some(thread) })
    }

    /// The listening address. It stays the same across [`Mode::Down`] and back, since Envoy's cluster points
    /// at it.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every event of every accepted batch so far, in arrival order. A line that is not JSON is kept as a JSON
    /// string holding the line, so a test can see what was malformed.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.shared.received).events.clone()
    }

    /// The number of accepted POSTs (batches).
    pub fn batches(&self) -> usize {
        lock(&self.shared.received).batches
    }

    /// The number of POSTs received, refused ones ([`Mode::Failing`]) included.
    pub fn requests(&self) -> usize {
        lock(&self.shared.received).requests
    }

    /// Switches how the collector behaves. Returns once the switch has taken effect: after `set_mode(Down)`
    /// connections are refused, after switching back from `Down` the listener is bound again on the same port.
    ///
    /// If the port cannot be bound again (something else took it), the failure is printed to stderr and the
    /// collector stays unreachable; the next switch out of `Down` tries again.
    pub fn set_mode(&self, mode: Mode) {
        // Handlers read the mode per request, so `Up`/`Failing`/`Slow` need nothing more. A request that arrives
        // on an open connection between this and the listener closing gets the `Down` treatment (see `handle`).
        *lock(&self.shared.mode) = mode;
        let Some(control) = &self.control else {
            return;
        };
        let (done, outcome) = mpsc::sync_channel(1);
        if control.send(Listen { on: mode != Mode::Down, done }).is_err() {
            eprintln!("egress-harness collector {}: server thread is gone; cannot switch to {mode:?}", self.addr);
            return;
        }
        // A std channel rather than a tokio one: `set_mode` may be called from inside some other runtime, where
        // tokio's blocking receive would panic.
        match outcome.recv_timeout(MODE_SWITCH_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(message)) => eprintln!("egress-harness collector {}: {message}", self.addr),
            Err(_) => eprintln!("egress-harness collector {}: switching to {mode:?} did not finish in time", self.addr),
        }
    }

    /// Polls until at least `count` events have arrived or `timeout` has passed, then returns the events (so
    /// fewer than `count` means the timeout struck).
    pub fn wait_for_events(&self, count: usize, timeout: Duration) -> Vec<Value> {
        // `None` (a timeout too large to add) means no time limit.
        let give_up = Instant::now().checked_add(timeout);
        loop {
            let events = self.events();
            if events.len() >= count || give_up.is_some_and(|give_up| Instant::now() >= give_up) {
                return events;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Stops the server and joins the background thread (what dropping does; this just reads better).
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        // Closing the control channel is the server's signal to stop.
        drop(self.control.take());
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread has already been printed; re-raising it inside drop would abort.
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A listening socket on `addr`; must be called inside a runtime.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Connections the collector closed itself linger in TIME_WAIT on its port; without this, listening on that
    // port again after `Mode::Down` would fail with EADDRINUSE for a minute.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections while the listener is open and applies `Listen` commands; returns when the
/// [`Collector`] is dropped.
async fn supervise(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut commands: UnboundedReceiver<Listen>,
) {
    let mut listener = Some(listener);
    // Connection tasks live in a set so that `Down` can close them all at once.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = accept(listener.as_ref()) => match accepted {
                Ok(stream) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(err) => {
                    // Typically EMFILE under load; back off instead of spinning, and keep serving.
                    eprintln!("egress-harness collector {addr}: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reaps finished connection tasks so the set does not keep one entry per connection ever accepted.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            command = commands.recv() => {
                let Some(Listen { on, done }) = command else {
                    return;
                };
                let outcome = match (on, listener.is_some()) {
                    (true, false) => rebind(addr).await.map(|rebound| listener = Some(rebound)),
                    (false, true) => {
                        // Dropping the listener makes the kernel refuse new connections (and reset those still in
                        // the accept backlog); aborting the tasks closes the accepted ones.
                        listener = None;
                        connections.shutdown().await;
                        Ok(())
                    }
                    _ => Ok(()),
                };
                // The caller may have timed out and left; nothing to do about it here.
                let _ = done.send(outcome);
            }
        }
    }
}

/// The next connection, or never while the listener is closed.
async fn accept(listener: Option<&TcpListener>) -> io::Result<TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _peer)| stream),
        None => std::future::pending().await,
    }
}

async fn rebind(addr: SocketAddr) -> Result<TcpListener, String> {
    let give_up = Instant::now() + REBIND_PATIENCE;
    loop {
        match listen(addr) {
            Ok(listener) => return Ok(listener),
            Err(_) if Instant::now() < give_up => tokio::time::sleep(REBIND_RETRY_INTERVAL).await,
            Err(err) => return Err(format!("cannot listen on {addr} again: {err}")),
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let service = service_fn(move |request| handle(request, Arc::clone(&shared)));
    // Errors here are clients hanging up or speaking garbage; nothing a test would want to see.
    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
}

async fn handle(request: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Empty<Bytes>>, Infallible> {
    if request.method() != Method::POST {
        return Ok(status_only(StatusCode::METHOD_NOT_ALLOWED));
    }
    lock(&shared.received).requests += 1;
    // The whole body is read whatever the mode, so that the connection stays usable for the next batch.
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        // The sender broke the request off; the connection is likely gone, but answer in case it is not.
        Err(_) => return Ok(status_only(StatusCode::BAD_REQUEST)),
    };
    // Decided once the request is complete, the moment a real pipeline would decide.
    let mode = *lock(&shared.mode);
    match mode {
        Mode::Up => {
            keep(&shared, &body);
            Ok(status_only(StatusCode::OK))
        }
        Mode::Slow(delay) => {
            keep(&shared, &body);
            tokio::time::sleep(delay).await;
            Ok(status_only(StatusCode::OK))
        }
        Mode::Failing(status) => {
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(|s| !s.is_informational())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Ok(status_only(status))
        }
        Mode::Down => {
            // Only between `set_mode(Down)` and the listener closing: refuse, and ask HTTP/1.1 senders to drop
            // the connection (hyper leaves the header out on HTTP/2, where it is not allowed).
            let mut response = status_only(StatusCode::SERVICE_UNAVAILABLE);
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            Ok(response)
        }
    }
}

/// Records an accepted batch: one event per non-blank line.
fn keep(shared: &Shared, body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    let events = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| Value::String(line.to_owned())));
    let mut received = lock(&shared.received);
    received.events.extend(events);
    received.batches += 1;
}

fn status_only(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client;
    use serde_json::json;
    use std::io::{Read, Write};

    fn post(collector: &Collector, body: &str) -> client::Response {
        let headers = [("content-type", "application/x-ndjson")];
        client::request(collector.addr(), "POST", "collector", "/v1/audit", &headers, body.as_bytes()).unwrap()
    }

    #[test]
    fn keeps_every_ndjson_line_of_a_batch() {
        let collector = Collector::start().unwrap();
        let response = post(&collector, "{\"n\":1}\n{\"n\":2,\"host\":\"api.example.com\"}\n");
        assert_eq!(response.status, 200);
        assert!(response.body.is_empty());
        let events = collector.wait_for_events(2, Duration::from_secs(5));
        assert_eq!(events, vec![json!({"n": 1}), json!({"n": 2, "host": "api.example.com"})]);
        assert_eq!(collector.batches(), 1);
        assert_eq!(collector.requests(), 1);
    }

    #[test]
    fn keeps_lines_that_are_not_json_as_strings_and_skips_blank_ones() {
        let collector = Collector::start().unwrap();
        assert_eq!(post(&collector, "{\"n\":1}\r\n\r\nnot json\n").status, 200);
        assert_eq!(collector.events(), vec![json!({"n": 1}), json!("not json")]);
    }

    #[test]
    fn other_methods_are_refused_and_not_counted() {
        let collector = Collector::start().unwrap();
        assert_eq!(client::get(collector.addr(), "collector", "/").unwrap().status, 405);
        assert_eq!(collector.requests(), 0);
    }

    #[test]
    fn accepts_h2c_batches() {
        let collector = Collector::start().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = runtime.block_on(async {
            let stream = TcpStream::connect(collector.addr()).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
            tokio::spawn(connection);
            let body = http_body_util::Full::new(Bytes::from_static(b"{\"n\":1}\n"));
            let request = Request::post(format!("http://{}/", collector.addr())).body(body).unwrap();
            sender.send_request(request).await.unwrap().status()
        });
        assert_eq!(status, StatusCode::OK);
        assert_eq!(collector.events(), vec![json!({"n": 1})]);
    }

    #[test]
    fn failing_answers_the_status_and_keeps_nothing() {
        let collector = Collector::start().unwrap();
        collector.set_mode(Mode::Failing(503));
        assert_eq!(post(&collector, "{\"n\":1}\n").status, 503);
        assert!(collector.events().is_empty());
        assert_eq!(collector.batches(), 0);
        assert_eq!(collector.requests(), 1);

        collector.set_mode(Mode::Up);
        assert_eq!(post(&collector, "{\"n\":2}\n").status, 200);
        assert_eq!(collector.events(), vec![json!({"n": 2})]);
        assert_eq!((collector.batches(), collector.requests()), (1, 2));
    }

    #[test]
    fn failing_with_an_impossible_status_answers_500() {
        let collector = Collector::start().unwrap();
        collector.set_mode(Mode::Failing(101));
        assert_eq!(post(&collector, "{}\n").status, 500);
    }

    #[test]
    fn down_refuses_and_closes_connections_and_up_listens_again_on_the_same_port() {
        let collector = Collector::start().unwrap();
        let addr = collector.addr();

        // A keep-alive connection with one answered batch, so the server has a connection to close.
        let mut open = std::net::TcpStream::connect(addr).unwrap();
        let keep_alive = b"POST / HTTP/1.1\r\nHost: collector\r\nContent-Length: 8\r\n\r\n{\"n\":1}\n";
        assert_eq!(client::exchange(&mut open, keep_alive).unwrap().status, 200);

        collector.set_mode(Mode::Down);
        let refused = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused, "{refused}");
        open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match open.read(&mut [0; 1]) {
            Ok(0) => {}
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("open connection should have been closed, got {other:?}"),
        }
        // Writing into the closed connection fails sooner or later; either way nothing more is kept.
        let _ = open.write_all(keep_alive);

        collector.set_mode(Mode::Up);
        assert_eq!(collector.addr(), addr);
        assert_eq!(post(&collector, "{\"n\":2}\n").status, 200);
        assert_eq!(collector.events(), vec![json!({"n": 1}), json!({"n": 2})]);
        assert_eq!(collector.batches(), 2);

        // And once more, now that the port has connections in TIME_WAIT from both rounds.
        collector.set_mode(Mode::Down);
        assert!(std::net::TcpStream::connect(addr).is_err());
        collector.set_mode(Mode::Up);
        assert_eq!(post(&collector, "{\"n\":3}\n").status, 200);
    }

    #[test]
    fn slow_keeps_the_batch_at_once_and_answers_late() {
        let collector = Collector::start().unwrap();
        let delay = Duration::from_millis(500);
        collector.set_mode(Mode::Slow(delay));
        let addr = collector.addr();
        let started = Instant::now();
        let sender = std::thread::spawn(move || {
            client::request(addr, "POST", "collector", "/", &[], b"{\"n\":1}\n").unwrap().status
        });
        // Visible before the answer: the pipeline has committed the batch.
        assert_eq!(collector.wait_for_events(1, Duration::from_secs(5)), vec![json!({"n": 1})]);
        assert!(!sender.is_finished(), "answered before the delay");
        assert_eq!(sender.join().unwrap(), 200);
        assert!(started.elapsed() >= delay, "answered after {:?}", started.elapsed());
        assert_eq!(collector.batches(), 1);
    }

    #[test]
    fn wait_for_events_gives_up_after_the_timeout() {
        let collector = Collector::start().unwrap();
        let started = Instant::now();
        assert!(collector.wait_for_events(1, Duration::from_millis(100)).is_empty());
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
