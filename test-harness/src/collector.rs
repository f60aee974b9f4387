//! A loopback HTTP collector for audit events, standing in for the log pipeline (an OpenTelemetry Collector,
//! Fluent Bit, Vector, an HTTP log gateway) that the audit filter ships its batches to.
//!
//! Tests point Envoy's audit cluster at [`Collector::addr`], read back what arrived with [`Collector::events`] (or
//! [`Collector::records`] for every OTLP detail), and make the pipeline misbehave with [`Collector::set_mode`] to
//! check that the filter degrades as designed (drops or retries batches, never stalls the proxied requests).
//!
//! One listener on 127.0.0.1 speaking HTTP/1.1 and h2c (prior knowledge). Every POST, whatever its path, is a batch,
//! read by its `content-type` (after undoing `content-encoding: gzip`):
//!
//! - `application/x-protobuf`: an OTLP/HTTP logs export, a binary `ExportLogsServiceRequest`;
//! - `application/json`: the same in OTLP's JSON encoding (lowerCamelCase keys, 64-bit integers as decimal strings
//!   or numbers, enums as integers only, `traceId`/`spanId` in hex; unknown keys ignored, as the OTLP
//!   specification requires of receivers);
//! - anything else, or none: NDJSON, each non-blank line one event.
//!
//! Each LogRecord, or each line, is one event. An OTLP request that cannot be decoded gets a 400 with the reason
//! (also printed to stderr) and keeps nothing. A successful OTLP request is answered with an
//! `ExportLogsServiceResponse` in the request's encoding. Other methods get a 405 and are not counted.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prost::Message as _;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;

use crate::pki::Error;
pub use egress_core::audit::Encoding;

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
    /// Answer every POST with this status and keep nothing: an overloaded or misconfigured pipeline (400: a
    /// rejected request). A status hyper cannot send as a final answer (below 200 or above 999) becomes 500.
    Failing(u16),
    /// Accept the batch (its events are visible at once), then wait this long before answering 200: a pipeline
    /// that commits but answers late, so a sender that times out and retries produces duplicates.
    Slow(Duration),
    /// Not listening at all: new connections are refused and open ones are closed, as when the pipeline is down.
    Down,
    /// Answer every POST with this status and a `Retry-After` header holding this value (delay-seconds or an
    /// HTTP-date, RFC 9110 §10.2.3), keeping nothing: a throttling pipeline (OTLP/HTTP uses 429 or 503). The status
    /// is treated as in [`Mode::Failing`]; a value that is not a valid header value is left out.
    RetryAfter(u16, &'static str),
    /// Keep every record (visible at once) but answer 200 with `partialSuccess.rejectedLogRecords` set to this
    /// number and an `errorMessage`, in the request's encoding (JSON for NDJSON requests, which have no answer
    /// format): an OTLP receiver that dropped part of the export, which the sender must not retry.
    PartialSuccess(u64),
    /// Answer every POST 200 at once (with an empty `ExportLogsServiceResponse` when the request is OTLP) without
    /// decoding or even buffering the body; only [`Collector::requests`] and [`Collector::bytes`] count. For
    /// benchmarks, where the collector shares a core with the load generator and must cost next to nothing. Unlike
    /// the other modes it is applied when the request head arrives.
    Discard,
}

/// How a batch was encoded, from the media type of its `content-type` (parameters ignored): what the audit stage
/// writes ([`Encoding::content_type`]), NDJSON for anything else or nothing.
pub fn encoding_of(headers: &HeaderMap) -> Encoding {
    let content_type = headers.get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    [Encoding::Protobuf, Encoding::Json]
        .into_iter()
        .find(|encoding| media_type.eq_ignore_ascii_case(encoding.content_type()))
        .unwrap_or(Encoding::Ndjson)
}

/// One received event with everything its batch said about it. For NDJSON only `body`, `body_text` and `encoding`
/// carry anything; the other fields hold their defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The event: a string body (OTLP) or the line (NDJSON) parsed as JSON, or kept as a JSON string when it is not
    /// JSON; any other OTLP body mapped as the attributes are.
    pub body: Value,
    /// The body exactly as sent when it was a string (OTLP `stringValue`, or the NDJSON line); `None` for any other
    /// kind of body, so a test can tell a string holding JSON from a structured body.
    pub body_text: Option<String>,
    pub time_unix_nano: u64,
    pub observed_time_unix_nano: u64,
    /// `SeverityNumber` (0 unspecified, 9 INFO, 13 WARN, …).
    pub severity_number: i32,
    pub severity_text: String,
    /// Lowercase hex; empty when absent.
    pub trace_id: String,
    /// Lowercase hex; empty when absent.
    pub span_id: String,
    /// The record's attributes, each `AnyValue` as JSON: strings, booleans, integers and doubles as themselves,
    /// arrays as arrays, key-value lists as objects, bytes as base64 strings, an empty value (or a non-finite
    /// double) as `null`.
    pub attributes: BTreeMap<String, Value>,
    /// The attributes of the record's resource, mapped as `attributes`.
    pub resource: BTreeMap<String, Value>,
    /// The name of the record's `InstrumentationScope`.
    pub scope_name: String,
    pub scope_version: String,
    pub encoding: Encoding,
}

impl Record {
    /// A record of an event that came without OTLP framing.
    fn ndjson(line: &str) -> Record {
        Record {
            body: json_or_string(line),
            body_text: Some(line.to_owned()),
            time_unix_nano: 0,
            observed_time_unix_nano: 0,
            severity_number: 0,
            severity_text: String::new(),
            trace_id: String::new(),
            span_id: String::new(),
            attributes: BTreeMap::new(),
            resource: BTreeMap::new(),
            scope_name: String::new(),
            scope_version: String::new(),
            encoding: Encoding::Ndjson,
        }
    }
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
    records: Vec<Record>,
    /// Accepted POSTs.
    batches: usize,
    /// All POSTs, refused ones included.
    requests: usize,
    /// Body bytes of all POSTs, as they came over the wire (before gzip decoding).
    bytes: u64,
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

    /// Every event of every accepted batch so far, in arrival order: the [`Record::body`] of each record. A body
    /// or line that is not JSON is kept as a JSON string holding it, so a test can see what was malformed.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.shared.received).records.iter().map(|record| record.body.clone()).collect()
    }

    /// Every record of every accepted batch so far, in arrival order, with all its OTLP detail.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.shared.received).records.clone()
    }

    /// The number of accepted POSTs (batches). [`Mode::Discard`] counts none.
    pub fn batches(&self) -> usize {
        lock(&self.shared.received).batches
    }

    /// The number of POSTs received, refused ones ([`Mode::Failing`]) included.
    pub fn requests(&self) -> usize {
        lock(&self.shared.received).requests
    }

    /// The body bytes of every POST received, as sent (compressed ones compressed), refused ones included.
    pub fn bytes(&self) -> u64 {
        lock(&self.shared.received).bytes
    }

    /// Switches how the collector behaves. Returns once the switch has taken effect: after `set_mode(Down)`
    /// connections are refused, after switching back from `Down` the listener is bound again on the same port.
    ///
    /// If the port cannot be bound again (something else took it), the failure is printed to stderr and the
    /// collector stays unreachable; the next switch out of `Down` tries again.
    pub fn set_mode(&self, mode: Mode) {
        // Handlers read the mode per request, so the other modes need nothing more. A request that arrives on an
        // open connection between this and the listener closing gets the `Down` treatment (see `handle`).
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
        self.wait_for_records(count, timeout).into_iter().map(|record| record.body).collect()
    }

    /// [`Collector::wait_for_events`], returning the records.
    pub fn wait_for_records(&self, count: usize, timeout: Duration) -> Vec<Record> {
        // `None` (a timeout too large to add) means no time limit.
        let give_up = Instant::now().checked_add(timeout);
        loop {
            if lock(&self.shared.received).records.len() >= count
                || give_up.is_some_and(|give_up| Instant::now() >= give_up)
            {
                return self.records();
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

async fn handle(request: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::POST {
        return Ok(answer(StatusCode::METHOD_NOT_ALLOWED));
    }
    lock(&shared.received).requests += 1;
    let encoding = encoding_of(request.headers());
    if *lock(&shared.mode) == Mode::Discard {
        // Counted frame by frame and dropped: no buffer, no copy, no parsing.
        let (bytes, complete) = drain(request.into_body()).await;
        lock(&shared.received).bytes += bytes;
        return Ok(if complete { success(encoding, None) } else { answer(StatusCode::BAD_REQUEST) });
    }
    let (head, body) = request.into_parts();
    // The whole body is read whatever the mode, so that the connection stays usable for the next batch.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        // The sender broke the request off; the connection is likely gone, but answer in case it is not.
        Err(_) => return Ok(answer(StatusCode::BAD_REQUEST)),
    };
    lock(&shared.received).bytes += body.len() as u64;
    // Decided once the request is complete, the moment a real pipeline would decide.
    let mode = *lock(&shared.mode);
    match mode {
        Mode::Up | Mode::Slow(_) | Mode::PartialSuccess(_) => {
            let records = match decode(&head.headers, encoding, &body) {
                Ok(records) => records,
                Err(problem) => {
                    eprintln!("egress-harness collector: refused a {encoding:?} batch (400): {problem}");
                    return Ok(text(StatusCode::BAD_REQUEST, problem));
                }
            };
            keep(&shared, records);
            if let Mode::Slow(delay) = mode {
                tokio::time::sleep(delay).await;
            }
            let rejected = if let Mode::PartialSuccess(rejected) = mode { Some(rejected) } else { None };
            Ok(success(encoding, rejected))
        }
        Mode::Failing(status) => Ok(answer(final_status(status))),
        Mode::RetryAfter(status, retry_after) => {
            let mut response = answer(final_status(status));
            if let Ok(value) = HeaderValue::from_str(retry_after) {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            Ok(response)
        }
        // Switched to while this body was arriving: answered as `Discard` answers, nothing kept.
        Mode::Discard => Ok(success(encoding, None)),
        Mode::Down => {
            // Only between `set_mode(Down)` and the listener closing: refuse, and ask HTTP/1.1 senders to drop
            // the connection (hyper leaves the header out on HTTP/2, where it is not allowed).
            let mut response = answer(StatusCode::SERVICE_UNAVAILABLE);
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            Ok(response)
        }
    }
}

/// Reads `body` to its end, keeping nothing: the number of data bytes, and whether the body was complete.
async fn drain(mut body: Incoming) -> (u64, bool) {
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => bytes += frame.data_ref().map_or(0, |data| data.len() as u64),
            Err(_) => return (bytes, false),
        }
    }
    (bytes, true)
}

/// A status hyper can send as a final answer: `status`, or 500 when it cannot.
fn final_status(status: u16) -> StatusCode {
    StatusCode::from_u16(status).ok().filter(|s| !s.is_informational()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Records an accepted batch.
fn keep(shared: &Shared, records: Vec<Record>) {
    let mut received = lock(&shared.received);
    received.records.extend(records);
    received.batches += 1;
}

/// The records of a batch, or why it cannot be read.
fn decode(headers: &HeaderMap, encoding: Encoding, body: &[u8]) -> Result<Vec<Record>, String> {
    let coding = headers.get(CONTENT_ENCODING).map(|value| value.to_str().unwrap_or_default().trim());
    let decoded;
    let body = match coding {
        None | Some("") => body,
        Some(coding) if coding.eq_ignore_ascii_case("identity") => body,
        Some(coding) if coding.eq_ignore_ascii_case("gzip") => {
            let mut out = Vec::with_capacity(body.len().saturating_mul(4));
            MultiGzDecoder::new(body).read_to_end(&mut out).map_err(|e| format!("content-encoding gzip: {e}"))?;
            decoded = out;
            &decoded
        }
        Some(coding) => return Err(format!("unsupported content-encoding {coding:?} (gzip or none)")),
    };
    match encoding {
        Encoding::Protobuf => protobuf_records(body),
        Encoding::Json => json_records(body),
        Encoding::Ndjson => {
            let text = String::from_utf8_lossy(body);
            Ok(text.lines().filter(|line| !line.trim().is_empty()).map(Record::ndjson).collect())
        }
    }
}

/// A 2xx answer to an accepted batch: for OTLP an `ExportLogsServiceResponse` in the request's encoding, with
/// `partialSuccess` when `rejected` is given; for NDJSON an empty body, or the JSON form for a partial success.
fn success(encoding: Encoding, rejected: Option<u64>) -> Response<Full<Bytes>> {
    let partial_success = rejected.map(|rejected| proto::ExportLogsPartialSuccess {
        rejected_log_records: i64::try_from(rejected).unwrap_or(i64::MAX),
        error_message: format!("egress-harness collector: {rejected} log records rejected (Mode::PartialSuccess)"),
    });
    let (encoding, body) = match (encoding, partial_success) {
        (Encoding::Ndjson, None) => return answer(StatusCode::OK),
        (Encoding::Protobuf, partial_success) => {
            (encoding, Bytes::from(proto::ExportLogsServiceResponse { partial_success }.encode_to_vec()))
        }
        (_, None) => (Encoding::Json, Bytes::from_static(b"{}")),
        // The proto3 JSON mapping writes int64 as a decimal string.
        (_, Some(partial)) => {
            let body = json!({"partialSuccess": {
                "rejectedLogRecords": partial.rejected_log_records.to_string(),
                "errorMessage": partial.error_message,
            }});
            (Encoding::Json, Bytes::from(body.to_string()))
        }
    };
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(encoding.content_type()));
    response
}

/// An answer with no body.
fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = status;
    response
}

fn text(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// `text` parsed as JSON, or kept as a JSON string when it is not JSON.
fn json_or_string(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn double(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

/// The OTLP/HTTP logs messages the collector reads and answers with, derived with prost by hand. Field numbers and
/// types are those of opentelemetry-proto (github.com/open-telemetry/opentelemetry-proto, v1.x):
/// `opentelemetry/proto/collector/logs/v1/logs_service.proto`, `opentelemetry/proto/logs/v1/logs.proto`,
/// `opentelemetry/proto/common/v1/common.proto` and `opentelemetry/proto/resource/v1/resource.proto`. Fields nothing
/// here reads are left out (`schema_url`, `dropped_attributes_count`, `flags`, `entity_refs`, the profiles-only
/// `*_strindex`); the decoder skips them as it skips any unknown field. Public so that tests can build requests.
pub mod proto {
    /// `ExportLogsServiceRequest` (logs_service.proto).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_logs: Vec<ResourceLogs>,
    }

    /// `ExportLogsServiceResponse` (logs_service.proto).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsServiceResponse {
        #[prost(message, optional, tag = "1")]
        pub partial_success: Option<ExportLogsPartialSuccess>,
    }

    /// `ExportLogsPartialSuccess` (logs_service.proto).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsPartialSuccess {
        #[prost(int64, tag = "1")]
        pub rejected_log_records: i64,
        #[prost(string, tag = "2")]
        pub error_message: String,
    }

    /// `ResourceLogs` (logs.proto).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceLogs {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_logs: Vec<ScopeLogs>,
    }

    /// `Resource` (resource.proto).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    /// `ScopeLogs` (logs.proto).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeLogs {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub log_records: Vec<LogRecord>,
    }

    /// `InstrumentationScope` (common.proto).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(message, repeated, tag = "3")]
        pub attributes: Vec<KeyValue>,
    }

    /// `LogRecord` (logs.proto). `severity_number` is the `SeverityNumber` enum, an int32 on the wire.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LogRecord {
        #[prost(fixed64, tag = "1")]
        pub time_unix_nano: u64,
        #[prost(int32, tag = "2")]
        pub severity_number: i32,
        #[prost(string, tag = "3")]
        pub severity_text: String,
        #[prost(message, optional, tag = "5")]
        pub body: Option<AnyValue>,
        #[prost(message, repeated, tag = "6")]
        pub attributes: Vec<KeyValue>,
        #[prost(bytes = "vec", tag = "9")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "10")]
        pub span_id: Vec<u8>,
        #[prost(fixed64, tag = "11")]
        pub observed_time_unix_nano: u64,
    }

    /// `KeyValue` (common.proto).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    impl KeyValue {
        pub fn new(key: &str, value: any_value::Value) -> KeyValue {
            KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }) }
        }
    }

    /// `AnyValue` (common.proto).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4, 5, 6, 7")]
        pub value: Option<any_value::Value>,
    }

    pub mod any_value {
        /// The `value` oneof of `AnyValue` (common.proto).
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            StringValue(String),
            #[prost(bool, tag = "2")]
            BoolValue(bool),
            #[prost(int64, tag = "3")]
            IntValue(i64),
            #[prost(double, tag = "4")]
            DoubleValue(f64),
            #[prost(message, tag = "5")]
            ArrayValue(super::ArrayValue),
            #[prost(message, tag = "6")]
            KvlistValue(super::KeyValueList),
            #[prost(bytes = "vec", tag = "7")]
            BytesValue(Vec<u8>),
        }
    }

    /// `ArrayValue` (common.proto).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ArrayValue {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<AnyValue>,
    }

    /// `KeyValueList` (common.proto).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValueList {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<KeyValue>,
    }
}

/// The records of a binary `ExportLogsServiceRequest`.
fn protobuf_records(body: &[u8]) -> Result<Vec<Record>, String> {
    use proto::any_value::Value as Any;
    let request = proto::ExportLogsServiceRequest::decode(body)
        .map_err(|e| format!("not a protobuf ExportLogsServiceRequest: {e}"))?;
    let mut records = Vec::new();
    for resource_logs in request.resource_logs {
        let resource = proto_attributes(resource_logs.resource.map(|resource| resource.attributes).unwrap_or_default());
        for scope_logs in resource_logs.scope_logs {
            let scope = scope_logs.scope.unwrap_or_default();
            for log in scope_logs.log_records {
                let (body, body_text) = match log.body.and_then(|body| body.value) {
                    Some(Any::StringValue(text)) => (json_or_string(&text), Some(text)),
                    other => (proto_value(other), None),
                };
                records.push(Record {
                    body,
                    body_text,
                    time_unix_nano: log.time_unix_nano,
                    observed_time_unix_nano: log.observed_time_unix_nano,
                    severity_number: log.severity_number,
                    severity_text: log.severity_text,
                    trace_id: hex(&log.trace_id),
                    span_id: hex(&log.span_id),
                    attributes: proto_attributes(log.attributes),
                    resource: resource.clone(),
                    scope_name: scope.name.clone(),
                    scope_version: scope.version.clone(),
                    encoding: Encoding::Protobuf,
                });
            }
        }
    }
    Ok(records)
}

fn proto_attributes(attributes: Vec<proto::KeyValue>) -> BTreeMap<String, Value> {
    attributes.into_iter().map(|kv| (kv.key, proto_value(kv.value.and_then(|value| value.value)))).collect()
}

/// An `AnyValue` as JSON (see [`Record::attributes`]).
fn proto_value(value: Option<proto::any_value::Value>) -> Value {
    use proto::any_value::Value as Any;
    match value {
        None => Value::Null,
        Some(Any::StringValue(text)) => Value::String(text),
        Some(Any::BoolValue(flag)) => Value::Bool(flag),
        Some(Any::IntValue(number)) => Value::from(number),
        Some(Any::DoubleValue(number)) => double(number),
        Some(Any::ArrayValue(array)) => {
            Value::Array(array.values.into_iter().map(|item| proto_value(item.value)).collect())
        }
        Some(Any::KvlistValue(list)) => Value::Object(proto_attributes(list.values).into_iter().collect()),
        Some(Any::BytesValue(bytes)) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

/// The records of an `ExportLogsServiceRequest` in OTLP/JSON. Errors name the offending field's path.
fn json_records(body: &[u8]) -> Result<Vec<Record>, String> {
    let request: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let request = object(&request, "the request")?;
    let mut records = Vec::new();
    for (r, resource_logs) in array(request, "resourceLogs", "")?.iter().enumerate() {
        let path = format!("resourceLogs[{r}]");
        let resource_logs = object(resource_logs, &path)?;
        let resource = match field(resource_logs, "resource") {
            Some(resource) => {
                let path = format!("{path}.resource");
                json_attributes(object(resource, &path)?, &path)?
            }
            None => BTreeMap::new(),
        };
        for (s, scope_logs) in array(resource_logs, "scopeLogs", &path)?.iter().enumerate() {
            let path = format!("{path}.scopeLogs[{s}]");
            let scope_logs = object(scope_logs, &path)?;
            let (scope_name, scope_version) = match field(scope_logs, "scope") {
                Some(scope) => {
                    let path = format!("{path}.scope");
                    let scope = object(scope, &path)?;
                    (string(scope, "name", &path)?, string(scope, "version", &path)?)
                }
                None => (String::new(), String::new()),
            };
            for (l, log) in array(scope_logs, "logRecords", &path)?.iter().enumerate() {
                let path = format!("{path}.logRecords[{l}]");
                let log = object(log, &path)?;
                let (body, body_text) = match field(log, "body") {
                    Some(body) => {
                        let path = format!("{path}.body");
                        let body = object(body, &path)?;
                        match field(body, "stringValue") {
                            Some(_) => {
                                let text = string(body, "stringValue", &path)?;
                                (json_or_string(&text), Some(text))
                            }
                            None => (any_value(body, &path)?, None),
                        }
                    }
                    None => (Value::Null, None),
                };
                records.push(Record {
                    body,
                    body_text,
                    time_unix_nano: uint64(log, "timeUnixNano", &path)?,
                    observed_time_unix_nano: uint64(log, "observedTimeUnixNano", &path)?,
                    severity_number: enumeration(log, "severityNumber", &path)?,
                    severity_text: string(log, "severityText", &path)?,
                    trace_id: hex_id(log, "traceId", 16, &path)?,
                    span_id: hex_id(log, "spanId", 8, &path)?,
                    attributes: json_attributes(log, &path)?,
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    encoding: Encoding::Json,
                });
            }
        }
    }
    Ok(records)
}

type Object = serde_json::Map<String, Value>;

/// Field `name` of `object`; absent and `null` both mean the field's default (proto3 JSON mapping).
fn field<'a>(object: &'a Object, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|value| !value.is_null())
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Object, String> {
    value.as_object().ok_or_else(|| format!("{path}: expected an object, got {value}"))
}

fn array<'a>(object: &'a Object, name: &str, path: &str) -> Result<&'a [Value], String> {
    match field(object, name) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(format!("{path}.{name}: expected an array, got {other}")),
    }
}

fn string(object: &Object, name: &str, path: &str) -> Result<String, String> {
    match field(object, name) {
        None => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(format!("{path}.{name}: expected a string, got {other}")),
    }
}

/// A 64-bit unsigned field (`fixed64`): a decimal string or a number.
fn uint64(object: &Object, name: &str, path: &str) -> Result<u64, String> {
    let Some(value) = field(object, name) else {
        return Ok(0);
    };
    let parsed = match value {
        Value::String(text) => text.parse().ok(),
        number => number.as_u64(),
    };
    parsed.ok_or_else(|| format!("{path}.{name}: expected an unsigned 64-bit integer, got {value}"))
}

/// A 64-bit signed value (`int64`): a decimal string or a number.
fn int64(value: &Value, path: &str) -> Result<i64, String> {
    let parsed = match value {
        Value::String(text) => text.parse().ok(),
        number => number.as_i64(),
    };
    parsed.ok_or_else(|| format!("{path}: expected a 64-bit integer, got {value}"))
}

/// An enum field: OTLP/JSON allows only the integer, never the name.
fn enumeration(object: &Object, name: &str, path: &str) -> Result<i32, String> {
    match field(object, name) {
        None => Ok(0),
        Some(value) => value
            .as_i64()
            .and_then(|number| i32::try_from(number).ok())
            .ok_or_else(|| format!("{path}.{name}: expected an integer (OTLP/JSON forbids enum names), got {value}")),
    }
}

/// `traceId`/`spanId`: `bytes` long in case-insensitive hex (OTLP/JSON, not the base64 of the protobuf mapping),
/// or empty.
fn hex_id(object: &Object, name: &str, bytes: usize, path: &str) -> Result<String, String> {
    let id = string(object, name, path)?;
    let valid = id.is_empty() || (id.len() == 2 * bytes && id.bytes().all(|byte| byte.is_ascii_hexdigit()));
    if valid {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(format!("{path}.{name}: expected {bytes} bytes in hex, got {id:?}"))
    }
}

/// The `attributes` (a list of `KeyValue`) of `object`.
fn json_attributes(object: &Object, path: &str) -> Result<BTreeMap<String, Value>, String> {
    key_values(array(object, "attributes", path)?, &format!("{path}.attributes"))
}

fn key_values(items: &[Value], path: &str) -> Result<BTreeMap<String, Value>, String> {
    let mut map = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let item = object(item, &path)?;
        let key = string(item, "key", &path)?;
        let value = match field(item, "value") {
            Some(value) => any_value(object(value, &format!("{path}.value"))?, &format!("{path}.value"))?,
            None => Value::Null,
        };
        map.insert(key, value);
    }
    Ok(map)
}

/// An `AnyValue` in OTLP/JSON, as JSON (see [`Record::attributes`]).
fn any_value(value: &Object, path: &str) -> Result<Value, String> {
    if let Some(text) = field(value, "stringValue") {
        return text.as_str().map(Value::from).ok_or_else(|| format!("{path}.stringValue: expected a string"));
    }
    if let Some(flag) = field(value, "boolValue") {
        return flag.as_bool().map(Value::Bool).ok_or_else(|| format!("{path}.boolValue: expected a boolean"));
    }
    if let Some(number) = field(value, "intValue") {
        return int64(number, &format!("{path}.intValue")).map(Value::from);
    }
    if let Some(number) = field(value, "doubleValue") {
        // The proto3 JSON mapping also allows strings, among them "NaN" and "Infinity" (which map to null).
        let parsed = match number {
            Value::String(text) => text.parse::<f64>().ok(),
            number => number.as_f64(),
        };
        return parsed.map(double).ok_or_else(|| format!("{path}.doubleValue: expected a number, got {number}"));
    }
    if let Some(array_value) = field(value, "arrayValue") {
        let path = format!("{path}.arrayValue");
        let items = array(object(array_value, &path)?, "values", &path)?;
        let mut values = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{path}.values[{i}]");
            values.push(any_value(object(item, &path)?, &path)?);
        }
        return Ok(Value::Array(values));
    }
    if let Some(list) = field(value, "kvlistValue") {
        let path = format!("{path}.kvlistValue");
        let items = array(object(list, &path)?, "values", &path)?;
        return Ok(Value::Object(key_values(items, &format!("{path}.values"))?.into_iter().collect()));
    }
    if let Some(bytes) = field(value, "bytesValue") {
        // Base64 in JSON, as the protobuf form is mapped; kept as sent.
        return bytes.as_str().map(Value::from).ok_or_else(|| format!("{path}.bytesValue: expected a base64 string"));
    }
    Ok(Value::Null)
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

    // OTLP/HTTP logs.

    use proto::any_value::Value as Any;
    use proto::{
        AnyValue, ArrayValue, ExportLogsServiceRequest, ExportLogsServiceResponse, InstrumentationScope, KeyValue,
        KeyValueList, LogRecord, Resource, ResourceLogs, ScopeLogs,
    };

    const ALLOWED_EVENT: &str = r#"{"id":"e1","destination":{"host":"api.example.com"},"decision":{"action":"allow"}}"#;
    const TRACE_ID: &str = "5B8EFFF798038103D269B633813FC60C";
    const SPAN_ID: &str = "EEE19B7EC3C1B174";

    fn post_with(collector: &Collector, headers: &[(&str, &str)], body: &[u8]) -> client::Response {
        client::request(collector.addr(), "POST", "collector", "/v1/logs", headers, body).unwrap()
    }

    fn post_protobuf(collector: &Collector, body: &[u8]) -> client::Response {
        post_with(collector, &[("content-type", "application/x-protobuf")], body)
    }

    fn post_json(collector: &Collector, body: &[u8]) -> client::Response {
        post_with(collector, &[("content-type", "application/json")], body)
    }

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    fn gzip(body: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(body).unwrap();
        encoder.finish().unwrap()
    }

    fn string(text: &str) -> Option<AnyValue> {
        Some(AnyValue { value: Some(Any::StringValue(text.into())) })
    }

    /// Two records under one resource and scope: an allowed request with every kind of attribute value, trace
    /// context and a JSON body; a refused one whose body is not JSON.
    fn sample_protobuf() -> Vec<u8> {
        let allowed = LogRecord {
            time_unix_nano: 1_700_000_000_123_456_789,
            observed_time_unix_nano: 1_700_000_000_223_456_789,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: string(ALLOWED_EVENT),
            attributes: vec![
                KeyValue::new("log.record.uid", Any::StringValue("e1".into())),
                KeyValue::new("http.response.status_code", Any::IntValue(200)),
                KeyValue::new("egress.tunnel", Any::BoolValue(false)),
                KeyValue::new("ratio", Any::DoubleValue(0.5)),
                KeyValue::new(
                    "hops",
                    Any::ArrayValue(ArrayValue {
                        values: vec![string("a").unwrap(), AnyValue { value: Some(Any::IntValue(-3)) }],
                    }),
                ),
                KeyValue::new(
                    "peer",
                    Any::KvlistValue(KeyValueList {
                        values: vec![KeyValue::new("ns", Any::StringValue("shop".into()))],
                    }),
                ),
                KeyValue::new("raw", Any::BytesValue(b"\x00\xffhi".to_vec())),
            ],
            trace_id: unhex(TRACE_ID),
            span_id: unhex(SPAN_ID),
        };
        let refused = LogRecord {
            time_unix_nano: 1_700_000_001_000_000_000,
            severity_number: 13,
            severity_text: "WARN".into(),
            body: string("not json"),
            attributes: vec![KeyValue::new("log.record.uid", Any::StringValue("e2".into()))],
            ..LogRecord::default()
        };
        let resource = Resource {
            attributes: vec![
                KeyValue::new("service.name", Any::StringValue("egress-gateway".into())),
                KeyValue::new("service.instance.id", Any::StringValue("gw-1".into())),
            ],
        };
        let scope = InstrumentationScope { name: "egress-audit".into(), version: "0.1.0".into(), attributes: vec![] };
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs { scope: Some(scope), log_records: vec![allowed, refused] }],
            }],
        }
        .encode_to_vec()
    }

    /// [`sample_protobuf`] in OTLP/JSON, 64-bit integers as strings (what the proto3 mapping writes) or as numbers
    /// (what it also reads); trace context in uppercase hex; keys the decoder must ignore.
    fn sample_json(int64_as_strings: bool) -> Vec<u8> {
        let int = |n: i64| if int64_as_strings { json!(n.to_string()) } else { json!(n) };
        let uint = |n: u64| if int64_as_strings { json!(n.to_string()) } else { json!(n) };
        let kv = |key: &str, value: Value| json!({"key": key, "value": value});
        json!({"resourceLogs": [{
            "resource": {"attributes": [
                kv("service.name", json!({"stringValue": "egress-gateway"})),
                kv("service.instance.id", json!({"stringValue": "gw-1"})),
            ], "droppedAttributesCount": 0},
            "scopeLogs": [{
                "scope": {"name": "egress-audit", "version": "0.1.0"},
                "logRecords": [
                    {
                        "timeUnixNano": uint(1_700_000_000_123_456_789),
                        "observedTimeUnixNano": uint(1_700_000_000_223_456_789),
                        "severityNumber": 9,
                        "severityText": "INFO",
                        "body": {"stringValue": ALLOWED_EVENT},
                        "attributes": [
                            kv("log.record.uid", json!({"stringValue": "e1"})),
                            kv("http.response.status_code", json!({"intValue": int(200)})),
                            kv("egress.tunnel", json!({"boolValue": false})),
                            kv("ratio", json!({"doubleValue": 0.5})),
                            kv("hops", json!({"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": int(-3)}]}})),
                            kv("peer", json!({"kvlistValue": {"values": [kv("ns", json!({"stringValue": "shop"}))]}})),
                            kv("raw", json!({"bytesValue": "AP9oaQ=="})),
                        ],
                        "traceId": TRACE_ID,
                        "spanId": SPAN_ID,
                        "flags": 1,
                        "someFutureField": {"nested": true},
                    },
                    {
                        "timeUnixNano": uint(1_700_000_001_000_000_000),
                        "severityNumber": 13,
                        "severityText": "WARN",
                        "body": {"stringValue": "not json"},
                        "attributes": [kv("log.record.uid", json!({"stringValue": "e2"}))],
                        "traceId": "",
                    },
                ],
            }],
        }]})
        .to_string()
        .into_bytes()
    }

    fn expected_records(encoding: Encoding) -> Vec<Record> {
        let resource: BTreeMap<String, Value> =
            [("service.name".into(), json!("egress-gateway")), ("service.instance.id".into(), json!("gw-1"))].into();
        let allowed = Record {
            body: serde_json::from_str(ALLOWED_EVENT).unwrap(),
            body_text: Some(ALLOWED_EVENT.into()),
            time_unix_nano: 1_700_000_000_123_456_789,
            observed_time_unix_nano: 1_700_000_000_223_456_789,
            severity_number: 9,
            severity_text: "INFO".into(),
            trace_id: TRACE_ID.to_ascii_lowercase(),
            span_id: SPAN_ID.to_ascii_lowercase(),
            attributes: [
                ("log.record.uid".into(), json!("e1")),
                ("http.response.status_code".into(), json!(200)),
                ("egress.tunnel".into(), json!(false)),
                ("ratio".into(), json!(0.5)),
                ("hops".into(), json!(["a", -3])),
                ("peer".into(), json!({"ns": "shop"})),
                ("raw".into(), json!("AP9oaQ==")),
            ]
            .into(),
            resource: resource.clone(),
            scope_name: "egress-audit".into(),
            scope_version: "0.1.0".into(),
            encoding,
        };
        let refused = Record {
            body: json!("not json"),
            body_text: Some("not json".into()),
            time_unix_nano: 1_700_000_001_000_000_000,
            observed_time_unix_nano: 0,
            severity_number: 13,
            severity_text: "WARN".into(),
            trace_id: String::new(),
            span_id: String::new(),
            attributes: [("log.record.uid".into(), json!("e2"))].into(),
            ..allowed.clone()
        };
        vec![allowed, refused]
    }

    #[test]
    fn protobuf_and_json_requests_decode_to_the_same_records() {
        let collector = Collector::start().unwrap();
        assert_eq!(post_protobuf(&collector, &sample_protobuf()).status, 200);
        assert_eq!(post_json(&collector, &sample_json(true)).status, 200);
        assert_eq!(post_json(&collector, &sample_json(false)).status, 200);

        let records = collector.records();
        let expected: Vec<Record> =
            [Encoding::Protobuf, Encoding::Json, Encoding::Json].into_iter().flat_map(expected_records).collect();
        assert_eq!(records, expected);
        assert_eq!(collector.events()[..2], [serde_json::from_str::<Value>(ALLOWED_EVENT).unwrap(), json!("not json")]);
        assert_eq!((collector.batches(), collector.requests()), (3, 3));
    }

    #[test]
    fn content_type_parameters_and_case_do_not_matter() {
        let collector = Collector::start().unwrap();
        let headers = [("Content-Type", "Application/JSON; charset=utf-8")];
        assert_eq!(post_with(&collector, &headers, &sample_json(true)).status, 200);
        assert_eq!(collector.records(), expected_records(Encoding::Json));
    }

    #[test]
    fn a_body_that_is_not_a_string_is_mapped_and_has_no_text() {
        let collector = Collector::start().unwrap();
        let body = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [
            {"body": {"kvlistValue": {"values": [{"key": "id", "value": {"stringValue": "e1"}}]}}}, {},
        ]}]}]});
        assert_eq!(post_json(&collector, body.to_string().as_bytes()).status, 200);
        let records = collector.records();
        assert_eq!((&records[0].body, &records[0].body_text), (&json!({"id": "e1"}), &None));
        assert_eq!((&records[1].body, records[1].time_unix_nano), (&Value::Null, 0));
    }

    #[test]
    fn gzip_bodies_are_decoded_in_every_encoding() {
        let collector = Collector::start().unwrap();
        let protobuf = gzip(&sample_protobuf());
        let gzipped = |content_type| [("content-type", content_type), ("content-encoding", "gzip")];
        assert_eq!(post_with(&collector, &gzipped("application/x-protobuf"), &protobuf).status, 200);
        assert_eq!(post_with(&collector, &gzipped("application/json"), &gzip(&sample_json(true))).status, 200);
        assert_eq!(post_with(&collector, &gzipped("application/x-ndjson"), &gzip(b"{\"n\":1}\n")).status, 200);

        let mut expected = expected_records(Encoding::Protobuf);
        expected.extend(expected_records(Encoding::Json));
        expected.push(Record::ndjson("{\"n\":1}"));
        assert_eq!(collector.records(), expected);
        assert_eq!(collector.events().last(), Some(&json!({"n": 1})));
        // Counted as sent, compressed.
        assert!(collector.bytes() >= protobuf.len() as u64);
    }

    #[test]
    fn ndjson_lines_are_records_too() {
        let collector = Collector::start().unwrap();
        assert_eq!(post(&collector, "{\"n\":1}\nnot json\n").status, 200);
        let records = collector.records();
        assert_eq!(records, vec![Record::ndjson("{\"n\":1}"), Record::ndjson("not json")]);
        assert_eq!((&records[0].body, records[0].encoding), (&json!({"n": 1}), Encoding::Ndjson));
        assert_eq!(records[1].body_text.as_deref(), Some("not json"));
    }

    #[test]
    fn otlp_success_is_an_empty_response_in_the_request_encoding() {
        let collector = Collector::start().unwrap();
        let protobuf = post_protobuf(&collector, &sample_protobuf());
        assert_eq!((protobuf.status, protobuf.header("content-type")), (200, Some("application/x-protobuf")));
        assert_eq!(ExportLogsServiceResponse::decode(protobuf.body.as_slice()).unwrap(), Default::default());
        assert!(protobuf.body.is_empty(), "an empty message encodes to nothing");

        let json = post_json(&collector, &sample_json(true));
        assert_eq!((json.status, json.header("content-type")), (200, Some("application/json")));
        assert_eq!(json.json(), json!({}));
    }

    #[test]
    fn undecodable_otlp_is_refused_with_400_and_nothing_is_kept() {
        let collector = Collector::start().unwrap();
        // Field 1 as a length-delimited value running past the end.
        let truncated = post_protobuf(&collector, b"\x0a\x05\x01");
        assert_eq!(truncated.status, 400);
        assert!(truncated.body_str().contains("ExportLogsServiceRequest"), "{}", truncated.body_str());

        let enum_name = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [
            {"severityNumber": "SEVERITY_NUMBER_INFO"}
        ]}]}]});
        let refused = post_json(&collector, enum_name.to_string().as_bytes());
        assert_eq!(refused.status, 400);
        let reason = refused.body_str();
        assert!(reason.contains("resourceLogs[0].scopeLogs[0].logRecords[0].severityNumber"), "{reason}");

        let bad_trace_id = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "not hex"}]}]}]});
        assert_eq!(post_json(&collector, bad_trace_id.to_string().as_bytes()).status, 400);
        assert_eq!(post_json(&collector, b"{\"resourceLogs\": {}}").status, 400);
        assert_eq!(post_json(&collector, b"not json").status, 400);
        let not_gzip = [("content-type", "application/json"), ("content-encoding", "gzip")];
        assert_eq!(post_with(&collector, &not_gzip, &sample_json(true)).status, 400);
        let brotli = [("content-type", "application/json"), ("content-encoding", "br")];
        assert_eq!(post_with(&collector, &brotli, &sample_json(true)).status, 400);

        assert!(collector.records().is_empty());
        assert_eq!((collector.batches(), collector.requests()), (0, 7));
    }

    #[test]
    fn snake_case_keys_are_unknown_fields_and_ignored() {
        // OTLP/JSON: "Original field names are not valid to use as keys", and unknown keys are skipped.
        let collector = Collector::start().unwrap();
        let body = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [
            {"time_unix_nano": "5", "body": {"string_value": "x"}, "severityNumber": 9}
        ]}]}]});
        assert_eq!(post_json(&collector, body.to_string().as_bytes()).status, 200);
        let record = &collector.records()[0];
        assert_eq!((record.time_unix_nano, &record.body, record.severity_number), (0, &Value::Null, 9));
    }

    #[test]
    fn retry_after_answers_the_status_with_the_header_and_keeps_nothing() {
        let collector = Collector::start().unwrap();
        collector.set_mode(Mode::RetryAfter(429, "3"));
        let throttled = post_protobuf(&collector, &sample_protobuf());
        assert_eq!((throttled.status, throttled.header("retry-after")), (429, Some("3")));
        assert!(throttled.body.is_empty());

        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        collector.set_mode(Mode::RetryAfter(503, date));
        let unavailable = post(&collector, "{\"n\":1}\n");
        assert_eq!((unavailable.status, unavailable.header("retry-after")), (503, Some(date)));

        collector.set_mode(Mode::RetryAfter(503, "bad\nvalue"));
        let without = post_json(&collector, &sample_json(true));
        assert_eq!((without.status, without.header("retry-after")), (503, None));

        assert!(collector.records().is_empty());
        assert_eq!((collector.batches(), collector.requests()), (0, 3));
        collector.set_mode(Mode::Up);
        assert_eq!(post_protobuf(&collector, &sample_protobuf()).status, 200);
        assert_eq!(collector.records(), expected_records(Encoding::Protobuf));
    }

    #[test]
    fn failing_with_400_refuses_otlp_too() {
        let collector = Collector::start().unwrap();
        collector.set_mode(Mode::Failing(400));
        let refused = post_protobuf(&collector, &sample_protobuf());
        assert_eq!((refused.status, refused.body.is_empty()), (400, true));
        assert!(collector.records().is_empty());
    }

    #[test]
    fn partial_success_keeps_everything_and_reports_the_rejected_count() {
        let collector = Collector::start().unwrap();
        collector.set_mode(Mode::PartialSuccess(1));

        let protobuf = post_protobuf(&collector, &sample_protobuf());
        assert_eq!((protobuf.status, protobuf.header("content-type")), (200, Some("application/x-protobuf")));
        let partial = ExportLogsServiceResponse::decode(protobuf.body.as_slice()).unwrap().partial_success.unwrap();
        assert_eq!(partial.rejected_log_records, 1);
        assert!(!partial.error_message.is_empty());

        let json = post_json(&collector, &sample_json(true));
        assert_eq!((json.status, json.header("content-type")), (200, Some("application/json")));
        let body = json.json();
        assert_eq!(body["partialSuccess"]["rejectedLogRecords"], json!("1"), "{body}");
        assert!(body["partialSuccess"]["errorMessage"].as_str().is_some_and(|m| !m.is_empty()), "{body}");

        let ndjson = post(&collector, "{\"n\":1}\n");
        assert_eq!((ndjson.status, ndjson.header("content-type")), (200, Some("application/json")));
        assert_eq!(ndjson.json()["partialSuccess"]["rejectedLogRecords"], json!("1"));

        assert_eq!(collector.records().len(), 5);
        assert_eq!(collector.batches(), 3);
    }

    #[test]
    fn discard_answers_at_once_without_decoding_and_counts_bytes() {
        let collector = Collector::start().unwrap();
        collector.set_mode(Mode::Discard);
        // None of these bodies would decode.
        let protobuf = post_protobuf(&collector, b"\xff\xff\xff");
        assert_eq!((protobuf.status, protobuf.header("content-type")), (200, Some("application/x-protobuf")));
        assert!(protobuf.body.is_empty());
        let json = post_with(&collector, &[("content-type", "application/json"), ("content-encoding", "gzip")], b"{");
        assert_eq!(
            (json.status, json.header("content-type"), json.body.as_slice()),
            (200, Some("application/json"), &b"{}"[..])
        );
        let ndjson = post(&collector, "not json\n");
        assert_eq!((ndjson.status, ndjson.body.is_empty()), (200, true));

        assert!(collector.events().is_empty());
        assert_eq!((collector.requests(), collector.batches(), collector.bytes()), (3, 0, 3 + 1 + 9));
    }
}
