//! An httpbin-like upstream that tests route traffic to through Envoy.
//!
//! It answers every request with a JSON description of what it received (see [`Echo`]), so a test can check
//! what the proxy actually forwarded, and keeps a log of those descriptions for requests whose response the
//! test never sees (e.g. the ones a filter is expected to have blocked).
//!
//! Every listener speaks plain HTTP and TLS, told apart by the connection's first byte (a TLS connection opens with
//! a handshake record, 0x16), each HTTP/1.1 and HTTP/2 (prior knowledge in plain text, ALPN or prior knowledge over
//! TLS). Over TLS it presents, for whatever SNI the client sends, a certificate issued on the fly by the test CA, so
//! one `Echo` can stand in for any number of external hosts.
//!
//! Two shapes:
//! - [`Echo::start`]: two listeners on 127.0.0.1, ephemeral ports, one meant for plain HTTP and one for TLS (the
//!   benchmark's fixed clusters, unit tests);
//! - [`Echo::start_hosts`]: the upstream hosts of a lab that routes by DNS. Each host is a loopback address of a
//!   block 127.X.Y.0/24 that this `Echo` claimed for itself, serving every port of [`UPSTREAM_PORTS`] (80 and 443
//!   at least, so that a name resolved to it answers on the ports a URL implies). Names resolve to hosts, several
//!   names may share one, and each request's record says which host and port it reached (`upstream`).
//!
//! Claiming a block: the first host (127.X.Y.1) binds every port of [`UPSTREAM_PORTS`]; if any of them is taken
//! (another lab of this or another test process holds the block, or something else listens there) the next block
//! is tried, from a random start. Binding is the lock, so parallel tests and concurrent test binaries never share a
//! host. Ports below 1024 need root (CI runs as root) or `net.ipv4.ip_unprivileged_port_start`.

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, LOCATION};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::pki::{Error, TestPki};

/// Header on every response, naming the listener that answered (`http` or `https`).
pub const SERVER_HEADER: &str = "x-echo-server";

/// Header explaining a 400 the echo server produced itself (bad `/status/N`, `/delay/N`, ... argument).
pub const ERROR_HEADER: &str = "x-echo-error";

/// Request header asking the echo to close the connection after its response (`Connection: close`; HTTP/1.1): the
/// proxy in front then needs a new upstream connection for its next request, to wherever the name resolves by then
/// (a pooled connection stays with the address it was opened to).
pub const CLOSE_HEADER: &str = "x-echo-close";

/// Upper bound for `/delay/N`, so a typo in a test cannot stall the suite.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// The ports every upstream host of [`Echo::start_hosts`] serves: the default ports of `http` and `https` (a URL
/// without a port, CONNECT to :443, TLS passthrough), and every explicit port the integration tests' URLs name
/// (`httpbin.org:8080`, `:8081`, `:8443`). A port missing here is a refused connection (503) at the gateway.
pub const UPSTREAM_PORTS: [u16; 5] = [80, 443, 8080, 8081, 8443];

/// The loopback blocks 127.X.Y.0/24 upstream hosts come from: X from 16 up, so that no host is 127.0.0.1,
/// systemd-resolved's 127.0.0.53, Debian's 127.0.1.1 or Docker's 127.0.0.11, nor near them.
const BLOCK_SECOND_OCTETS: std::ops::RangeInclusive<u8> = 16..=254;

/// How many blocks [`Echo::start_hosts`] tries before it gives up.
const BLOCK_TRIES: u32 = 256;

/// The first byte of a TLS connection: a handshake record (RFC 8446 §5.1).
const TLS_HANDSHAKE: u8 = 0x16;

/// The running upstream. Dropping it (or calling [`Echo::shutdown`]) stops both listeners, aborts open
/// connections and joins the background thread.
///
/// For every request the response body (and the [`Echo::requests`] log entry) is a JSON object:
///
/// ```json
/// {"method": "GET", "path": "/headers", "query": "a=1" | null, "host": "api.example.com" | null,
///  "headers": [["user-agent", "x"], ...], "body": "...", "trailers": [["name", "value"], ...] (only when sent),
///  "protocol": "HTTP/1.1" | "HTTP/2",
///  "tls": null | {"sni": "api.example.com" | null}, "server": "http" | "https", "upstream": "127.16.4.2:80"}
/// ```
///
/// `upstream` is the address and port the connection arrived at: which upstream host got the request.
///
/// `host` is the request's authority (HTTP/2 `:authority`, or an HTTP/1 absolute-form target) if any, else
/// the `Host` header. `headers` come as hyper's header map yields them: names lowercase, duplicates kept, in
/// order of each name's first appearance (repeats of one name are grouped together). HTTP/2 pseudo-headers
/// are not in the list.
///
/// Special paths, with that same body unless noted:
/// - `/status/N`: status N, for 100..=599 (400 otherwise); no body for 204 and 304. hyper cannot send a 1xx
///   as the final status: HTTP/1.1 clients get a 500 (a bare 101 for 101), HTTP/2 ones a stream reset.
/// - `/delay/N`: answers after min(N, 10) seconds.
/// - `/redirect-to?url=U&status_code=C`: status C (3xx, default 302) with `Location: U`; under any path that
///   begins `/redirect-to` too.
/// - `/redirect/N`: 302 to `/redirect/{N-1}` for N >= 1; `/redirect/0` is a plain 200.
/// - `/absolute-redirect/N`: the same with absolute `http://<host>/absolute-redirect/{N-1}` Locations.
/// - `/loop`: 302 to `http://<host>/loop`, forever.
///
/// With the request header [`CLOSE_HEADER`], the connection closes after the response.
pub struct Echo {
    http_addr: SocketAddr,
    https_addr: SocketAddr,
    /// The claimed loopback block and its hosts so far ([`Echo::start_hosts`]); `None` for [`Echo::start`].
    block: Option<Block>,
    /// Spawns the accept loops of hosts added later on the server thread's runtime.
    runtime: tokio::runtime::Handle,
    acceptor: TlsAcceptor,
    log: RequestLog,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Echo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Echo")
            .field("http_addr", &self.http_addr)
            .field("https_addr", &self.https_addr)
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

type RequestLog = Arc<Mutex<Vec<Value>>>;

/// A loopback block 127.X.Y.0/24 held by one `Echo`: its first host binds [`UPSTREAM_PORTS`] for as long as the
/// `Echo` runs.
#[derive(Debug)]
struct Block {
    /// 127, X, Y.
    prefix: [u8; 3],
    /// The hosts bound so far, in order (127.X.Y.1 first).
    hosts: Mutex<Vec<IpAddr>>,
}

impl Echo {
    /// Two listeners on 127.0.0.1 (ephemeral ports), [`Echo::http_addr`] and [`Echo::https_addr`], served on a
    /// background thread.
    pub fn start(pki: &TestPki) -> Result<Echo, Error> {
        let listeners =
            vec![bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?, bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?];
        Echo::serve(pki, listeners, None)
    }

    /// `hosts` (at least one) upstream hosts on a loopback block of its own, each on every port of
    /// [`UPSTREAM_PORTS`] (see the module docs); [`Echo::http_addr`] and [`Echo::https_addr`] are the first host's
    /// ports 80 and 443.
    pub fn start_hosts(pki: &TestPki, hosts: usize) -> Result<Echo, Error> {
        let (prefix, mut listeners) = claim_block()?;
        let [a, b, c] = prefix;
        let mut addresses = vec![IpAddr::from([a, b, c, 1])];
        while addresses.len() < hosts {
            let (address, bound) = bind_next_host(prefix, &addresses)?;
            addresses.push(address);
            listeners.extend(bound);
        }
        let block = Block { prefix, hosts: Mutex::new(addresses) };
        Echo::serve(pki, listeners, Some(block))
    }

    /// Serves `listeners` (bound, non-blocking) on a new background thread.
    fn serve(pki: &TestPki, listeners: Vec<std::net::TcpListener>, block: Option<Block>) -> Result<Echo, Error> {
        let mut tls_config = pki.any_sni_server_config()?;
        tls_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls_config));
        let (Some(first), Some(second)) = (listeners.first(), listeners.get(1)) else {
            return Err("an echo needs two listeners at least".into());
        };
        let (http_addr, https_addr) = match &block {
            Some(_) => (first.local_addr()?, SocketAddr::new(first.local_addr()?.ip(), 443)),
            None => (first.local_addr()?, second.local_addr()?),
        };

        // A current-thread runtime is plenty for test traffic and keeps each `Echo` down to one thread.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let log = RequestLog::default();
        let handle = runtime.handle().clone();
        for listener in listeners {
            spawn_accept_loop(&handle, listener, &acceptor, &log)?;
        }
        let (shutdown, shutdown_requested) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(format!("echo-{http_addr}")).spawn(move || {
            // The accept loops run while this does; dropping the runtime then drops every task and socket.
            let _ = runtime.block_on(shutdown_requested);
        })?;

        Ok(Echo {
            http_addr,
            https_addr,
            block,
            runtime: handle,
            acceptor,
            log,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// One more upstream host in this `Echo`'s block (the next free address), serving [`UPSTREAM_PORTS`] from now on.
    /// Only for an `Echo` of [`Echo::start_hosts`].
    pub fn add_host(&self) -> Result<IpAddr, Error> {
        let block = self.block.as_ref().ok_or("this echo has no loopback block: start it with Echo::start_hosts")?;
        let mut hosts = block.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let (address, listeners) = bind_next_host(block.prefix, &hosts)?;
        for listener in listeners {
            spawn_accept_loop(&self.runtime, listener, &self.acceptor, &self.log)?;
        }
        hosts.push(address);
        Ok(address)
    }

    /// The loopback block 127.X.Y.0/24 this `Echo` claimed ([`Echo::start_hosts`]): every host it has or will add.
    pub fn block(&self) -> Option<egress_core::cidr::Cidr> {
        let [a, b, c] = self.block.as_ref()?.prefix;
        Some(egress_core::cidr::Cidr::from_parts(IpAddr::from([a, b, c, 0]), 24))
    }

    /// The address of the block kept for the gateway (127.X.Y.254): no upstream host takes it and no other lab
    /// holds the block, so the gateway can listen on a production port there (TLS passthrough on 443), as a real
    /// egress gateway's Service does. `None` for [`Echo::start`].
    pub fn gateway_address(&self) -> Option<IpAddr> {
        let [a, b, c] = self.block.as_ref()?.prefix;
        Some(IpAddr::from([a, b, c, GATEWAY_HOST]))
    }

    /// The upstream hosts ([`Echo::start_hosts`], [`Echo::add_host`]), in order; empty for [`Echo::start`].
    pub fn hosts(&self) -> Vec<IpAddr> {
        self.block
            .as_ref()
            .map(|block| block.hosts.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default()
    }

    /// The plain-text listener (HTTP/1.1 and h2c; TLS too): a host's port 80 with [`Echo::start_hosts`].
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The TLS listener (HTTP/1.1 and h2 via ALPN; plain text too): a host's port 443 with [`Echo::start_hosts`].
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// Every request received so far, on any listener, in arrival order (the response bodies' JSON).
    pub fn requests(&self) -> Vec<Value> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The requests that reached upstream host `host` (any port), in arrival order.
    pub fn requests_to(&self, host: IpAddr) -> Vec<Value> {
        let reached = |record: &Value| {
            record["upstream"].as_str().and_then(|upstream| upstream.parse::<SocketAddr>().ok()).map(|a| a.ip())
                == Some(host)
        };
        self.requests().into_iter().filter(reached).collect()
    }

    /// Stops the servers and joins the background thread (what dropping does; this just reads better).
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // Fails only if the server thread is already gone, which is what we want anyway.
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread has already been printed; re-raising it inside drop would abort.
            let _ = thread.join();
        }
    }
}

/// A non-blocking listener on `address`.
fn bind(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Listeners on every port of [`UPSTREAM_PORTS`] of `host`, or the port that could not be bound and why (the
/// ports bound until then are released).
fn bind_host(host: IpAddr) -> Result<Vec<std::net::TcpListener>, (u16, io::Error)> {
    UPSTREAM_PORTS.iter().map(|&port| bind(SocketAddr::new(host, port)).map_err(|error| (port, error))).collect()
}

/// A port binding error, explained when it is about privileges.
fn bind_error(host: IpAddr, port: u16, error: &io::Error) -> Error {
    let hint = if error.kind() == io::ErrorKind::PermissionDenied {
        format!(
            ": the lab's upstream hosts serve ports {UPSTREAM_PORTS:?}; those below 1024 need root, CAP_NET_BIND_SERVICE \
             or `sysctl net.ipv4.ip_unprivileged_port_start=80`"
        )
    } else {
        String::new()
    };
    format!("binding upstream host {host}:{port}: {error}{hint}").into()
}

/// A loopback block 127.X.Y.0/24 no one else holds, and the listeners of its first host, which hold it: the blocks
/// are tried from a random start (so that concurrent labs rarely race for one), a block whose first host cannot
/// bind a port because it is in use being someone else's.
fn claim_block() -> Result<([u8; 3], Vec<std::net::TcpListener>), Error> {
    static CLAIMS: AtomicU32 = AtomicU32::new(0);
    let (low, high) = (u32::from(*BLOCK_SECOND_OCTETS.start()), u32::from(*BLOCK_SECOND_OCTETS.end()));
    let blocks = (high - low + 1) * 256;
    // RandomState is randomly keyed per process: a random start without a dependency.
    let seed = RandomState::new().hash_one((std::process::id(), CLAIMS.fetch_add(1, Ordering::Relaxed)));
    let start = u32::try_from(seed % u64::from(blocks)).unwrap_or(0);
    for n in 0..BLOCK_TRIES {
        let index = (start + n) % blocks;
        let (Ok(x), Ok(y)) = (u8::try_from(low + index / 256), u8::try_from(index % 256)) else { continue };
        let first = IpAddr::from([127, x, y, 1]);
        match bind_host(first) {
            Ok(listeners) => return Ok(([127, x, y], listeners)),
            Err((_, error)) if error.kind() == io::ErrorKind::AddrInUse => continue,
            Err((port, error)) => return Err(bind_error(first, port, &error)),
        }
    }
    Err(format!(
        "no free loopback block for upstream hosts after {BLOCK_TRIES} tries: is something listening on 0.0.0.0 \
         on one of the ports {UPSTREAM_PORTS:?}?"
    )
    .into())
}

/// The next address of block `prefix` after `hosts` whose ports are all free, and its listeners.
/// The last byte of the block's address kept for the gateway's own listeners ([`Echo::gateway_address`]); upstream
/// hosts take the ones below.
const GATEWAY_HOST: u8 = 254;

fn bind_next_host(prefix: [u8; 3], hosts: &[IpAddr]) -> Result<(IpAddr, Vec<std::net::TcpListener>), Error> {
    let last = hosts.iter().filter_map(|host| match host {
        IpAddr::V4(v4) => Some(v4.octets()[3]),
        IpAddr::V6(_) => None,
    });
    let [a, b, c] = prefix;
    for d in last.max().unwrap_or(0).saturating_add(1)..GATEWAY_HOST {
        let host = IpAddr::from([a, b, c, d]);
        match bind_host(host) {
            Ok(listeners) => return Ok((host, listeners)),
            // Something outside the harness took it: skip it.
            Err((_, error)) if error.kind() == io::ErrorKind::AddrInUse => continue,
            Err((port, error)) => return Err(bind_error(host, port, &error)),
        }
    }
    Err(format!("the upstream block {a}.{b}.{c}.0/24 is full").into())
}

/// Serves `listener` on `runtime` from now on.
fn spawn_accept_loop(
    runtime: &tokio::runtime::Handle,
    listener: std::net::TcpListener,
    acceptor: &TlsAcceptor,
    log: &RequestLog,
) -> io::Result<()> {
    let listener = {
        let _in_runtime = runtime.enter();
        TcpListener::from_std(listener)?
    };
    runtime.spawn(accept_loop(listener, acceptor.clone(), Arc::clone(log)));
    Ok(())
}

/// What the listener knows about a connection, shared by all requests on it.
struct ConnInfo {
    server: &'static str,
    /// `None` for plain text; `Some(sni)` over TLS, where the SNI itself is optional.
    tls: Option<Option<String>>,
    /// The local address the connection arrived at.
    upstream: SocketAddr,
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, log: RequestLog) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Typically EMFILE under a load test; back off instead of spinning, and keep serving.
                eprintln!("egress-harness echo: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(serve_socket(stream, acceptor.clone(), Arc::clone(&log)));
    }
}

/// Serves one connection as TLS or plain text, by its first byte.
async fn serve_socket(stream: TcpStream, acceptor: TlsAcceptor, log: RequestLog) {
    let Ok(upstream) = stream.local_addr() else { return };
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first == [TLS_HANDSHAKE] => serve_tls_connection(acceptor, stream, upstream, log).await,
        Ok(1) => serve_connection(stream, ConnInfo { server: "http", tls: None, upstream }, log).await,
        // Closed before its first byte, or broken.
        _ => {}
    }
}

async fn serve_tls_connection(acceptor: TlsAcceptor, stream: TcpStream, upstream: SocketAddr, log: RequestLog) {
    // A failed handshake is the client's business: several tests provoke one on purpose.
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let sni = tls.get_ref().1.server_name().map(str::to_owned);
    serve_connection(tls, ConnInfo { server: "https", tls: Some(sni), upstream }, log).await;
}

async fn serve_connection<S>(stream: S, conn: ConnInfo, log: RequestLog)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let service = service_fn(move |request| handle(request, Arc::clone(&conn), Arc::clone(&log)));
    // Errors here are clients hanging up or speaking garbage, both expected in proxy tests.
    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
}

#[derive(Serialize)]
struct TlsInfo<'a> {
    sni: Option<&'a str>,
}

/// The JSON description of a request; field order is the order in the response body.
#[derive(Serialize)]
struct EchoRecord<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    host: Option<String>,
    headers: Vec<(&'a str, String)>,
    body: String,
    /// Request trailers (HTTP/2, chunked HTTP/1.1), when there were any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    trailers: Vec<(String, String)>,
    protocol: &'static str,
    tls: Option<TlsInfo<'a>>,
    server: &'static str,
    upstream: String,
}

/// What a request asks the echo server to do, decided from its path and query alone.
#[derive(Debug, PartialEq)]
enum Action {
    Echo,
    Status(StatusCode),
    Delay(Duration),
    Redirect { status: StatusCode, location: HeaderValue },
    BadRequest(&'static str),
}

fn route(path: &str, query: Option<&str>, host: Option<&str>) -> Action {
    if let Some(code) = path.strip_prefix("/status/") {
        return match code.parse::<u16>().ok().filter(|c| (100..=599).contains(c)).map(StatusCode::from_u16) {
            Some(Ok(status)) => Action::Status(status),
            _ => Action::BadRequest("status must be an integer in 100..=599"),
        };
    }
    if let Some(seconds) = path.strip_prefix("/delay/") {
        return match seconds.parse::<u64>() {
            Ok(seconds) => Action::Delay(Duration::from_secs(seconds).min(MAX_DELAY)),
            Err(_) => Action::BadRequest("delay must be a non-negative integer number of seconds"),
        };
    }
    // Under any path that begins so, for redirects answering a path a gateway may pass on un-normalised.
    if path.starts_with("/redirect-to") {
        return redirect_to(query.unwrap_or(""));
    }
    let host = host.unwrap_or("localhost");
    if let Some(hops) = path.strip_prefix("/absolute-redirect/") {
        return match hops.parse::<u32>() {
            Ok(0) => Action::Echo,
            Ok(hops) => redirect(StatusCode::FOUND, &format!("http://{host}/absolute-redirect/{}", hops - 1)),
            Err(_) => Action::BadRequest("redirect count must be a non-negative integer"),
        };
    }
    if path == "/loop" {
        return redirect(StatusCode::FOUND, &format!("http://{host}/loop"));
    }
    if let Some(hops) = path.strip_prefix("/redirect/") {
        return match hops.parse::<u32>() {
            Ok(0) => Action::Echo,
            Ok(hops) => redirect(StatusCode::FOUND, &format!("/redirect/{}", hops - 1)),
            Err(_) => Action::BadRequest("redirect count must be a non-negative integer"),
        };
    }
    Action::Echo
}

fn redirect_to(query: &str) -> Action {
    let mut url = None;
    let mut status = StatusCode::FOUND;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "url" => url = Some(value),
            "status_code" => {
                match value.parse::<u16>().ok().filter(|c| (300..=399).contains(c)).map(StatusCode::from_u16) {
                    Some(Ok(code)) => status = code,
                    _ => return Action::BadRequest("status_code must be an integer in 300..=399"),
                }
            }
            _ => {}
        }
    }
    match url {
        Some(url) => redirect(status, &url),
        None => Action::BadRequest("missing url parameter"),
    }
}

fn redirect(status: StatusCode, location: &str) -> Action {
    match HeaderValue::from_str(location) {
        Ok(location) => Action::Redirect { status, location },
        Err(_) => Action::BadRequest("redirect target is not a valid header value"),
    }
}

async fn handle(
    request: Request<Incoming>,
    conn: Arc<ConnInfo>,
    log: RequestLog,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let (body, trailers) = match body.collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().map(|map| {
                map.iter().map(|(name, value)| (name.as_str().to_owned(), lossy(value.as_bytes()))).collect()
            });
            (collected.to_bytes(), trailers.unwrap_or_default())
        }
        // The client broke the request off; the connection is likely gone, but answer in case it is not.
        Err(_) => {
            let reason = HeaderValue::from_static("request body could not be read");
            let error = (HeaderName::from_static(ERROR_HEADER), reason);
            return Ok(respond(&conn, StatusCode::BAD_REQUEST, Some(error), Vec::new()));
        }
    };

    let record = EchoRecord {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        host: parts
            .uri
            .authority()
            .map(|authority| authority.as_str().to_owned())
            .or_else(|| parts.headers.get(HOST).map(|host| lossy(host.as_bytes()))),
        headers: parts.headers.iter().map(|(name, value)| (name.as_str(), lossy(value.as_bytes()))).collect(),
        body: lossy(&body),
        trailers,
        protocol: protocol_name(parts.version),
        tls: conn.tls.as_ref().map(|sni| TlsInfo { sni: sni.as_deref() }),
        server: conn.server,
        upstream: conn.upstream.to_string(),
    };
    // Serializing cannot fail: the record holds only strings, integers and string-keyed objects.
    let json_body = serde_json::to_vec(&record).unwrap_or_default();
    log.lock().unwrap_or_else(PoisonError::into_inner).push(serde_json::to_value(&record).unwrap_or_default());

    let (status, extra_header) = match route(parts.uri.path(), parts.uri.query(), record.host.as_deref()) {
        Action::Echo => (StatusCode::OK, None),
        Action::Status(status) => (status, None),
        Action::Delay(delay) => {
            tokio::time::sleep(delay).await;
            (StatusCode::OK, None)
        }
        Action::Redirect { status, location } => (status, Some((LOCATION, location))),
        Action::BadRequest(reason) => {
            let error = (HeaderName::from_static(ERROR_HEADER), HeaderValue::from_static(reason));
            (StatusCode::BAD_REQUEST, Some(error))
        }
    };
    let mut response = respond(&conn, status, extra_header, json_body);
    if parts.headers.contains_key(CLOSE_HEADER) {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

/// A response with `status`, the `x-echo-server` header, `extra_header` if any, and `json_body` unless the
/// status forbids a body (an empty `json_body` means no body at all).
fn respond(
    conn: &ConnInfo,
    status: StatusCode,
    extra_header: Option<(HeaderName, HeaderValue)>,
    json_body: Vec<u8>,
) -> Response<Full<Bytes>> {
    // 1xx, 204 and 304 responses cannot carry a body (RFC 9110 §15).
    let body_allowed =
        !(status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED);
    let json_body = if body_allowed { json_body } else { Vec::new() };

    let has_body = !json_body.is_empty();
    let mut response = Response::new(Full::new(Bytes::from(json_body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(SERVER_HEADER, HeaderValue::from_static(conn.server));
    if has_body {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some((name, value)) = extra_header {
        headers.insert(name, value);
    }
    response
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client;
    use serde_json::json;

    fn start() -> (TestPki, Echo) {
        let pki = TestPki::new().unwrap();
        let echo = Echo::start(&pki).unwrap();
        (pki, echo)
    }

    #[test]
    fn echoes_an_http1_request_and_logs_it() {
        let (_pki, echo) = start();
        let response = client::request(
            echo.http_addr(),
            "POST",
            "api.example.com",
            "/headers?a=1&b",
            &[("X-Trace", "one"), ("x-trace", "two")],
            b"hello",
        )
        .unwrap();

        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.header("X-Echo-Server"), Some("http"));
        let body = response.json();
        assert_eq!(
            body,
            json!({
                "method": "POST",
                "path": "/headers",
                "query": "a=1&b",
                "host": "api.example.com",
                "headers": [
                    ["host", "api.example.com"],
                    ["x-trace", "one"],
                    ["x-trace", "two"],
                    ["content-length", "5"],
                    ["connection", "close"],
                ],
                "body": "hello",
                "protocol": "HTTP/1.1",
                "tls": null,
                "server": "http",
                "upstream": echo.http_addr().to_string(),
            })
        );
        assert_eq!(echo.requests(), vec![body]);
    }

    #[test]
    fn echoes_h2c_with_the_authority_as_host() {
        let (_pki, echo) = start();
        let response = client::h2_get(echo.http_addr(), "api.example.com:8080", "/headers").unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("x-echo-server"), Some("http"));
        let body = response.json();
        assert_eq!(body["protocol"], "HTTP/2");
        assert_eq!(body["host"], "api.example.com:8080");
        assert_eq!(body["path"], "/headers");
        assert_eq!(body["query"], Value::Null);
        assert_eq!(echo.requests(), vec![body]);
    }

    #[test]
    fn https_presents_a_ca_signed_cert_for_any_sni() {
        let (pki, echo) = start();
        for sni in ["api.example.com", "other.example.org"] {
            let response = client::tls_get(echo.https_addr(), Some(sni), pki.ca_pem(), sni, "/headers").unwrap();
            assert_eq!(response.header("x-echo-server"), Some("https"));
            let body = response.json();
            assert_eq!(body["tls"], json!({ "sni": sni }));
            assert_eq!(body["server"], "https");
            assert_eq!(body["host"], sni);
        }

        let no_sni = client::tls_get(echo.https_addr(), None, pki.ca_pem(), "bare", "/").unwrap();
        assert_eq!(no_sni.json()["tls"], json!({ "sni": null }));

        let stranger = TestPki::new().unwrap();
        let untrusted = client::tls_get(echo.https_addr(), Some("api.example.com"), stranger.ca_pem(), "x", "/");
        assert!(untrusted.is_err());
        // Without SNI the name goes unchecked, but the chain still must lead to the given CA.
        let untrusted_no_sni = client::tls_get(echo.https_addr(), None, stranger.ca_pem(), "x", "/");
        assert!(untrusted_no_sni.is_err());
        assert_eq!(echo.requests().len(), 3, "the untrusted handshakes must not reach HTTP");
    }

    #[test]
    fn https_negotiates_h2_by_alpn() {
        let (pki, echo) = start();
        let mut config = pki.client_config(None).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let body = runtime.block_on(async {
            let tcp = TcpStream::connect(echo.https_addr()).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("h2.example").unwrap();
            let tls = connector.connect(name, tcp).await.unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
            tokio::spawn(connection);
            let request = Request::get("https://h2.example/headers").body(http_body_util::Empty::<Bytes>::new());
            let response = sender.send_request(request.unwrap()).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        });
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["protocol"], "HTTP/2");
        assert_eq!(body["host"], "h2.example");
        assert_eq!(body["tls"], json!({ "sni": "h2.example" }));
    }

    #[test]
    fn status_paths_set_the_status() {
        let (_pki, echo) = start();
        let teapot = client::get(echo.http_addr(), "h", "/status/418").unwrap();
        assert_eq!(teapot.status, 418);
        assert_eq!(teapot.json()["path"], "/status/418");

        let no_content = client::get(echo.http_addr(), "h", "/status/204").unwrap();
        assert_eq!((no_content.status, no_content.body.len()), (204, 0));

        let out_of_range = client::get(echo.http_addr(), "h", "/status/600").unwrap();
        assert_eq!(out_of_range.status, 400);
        assert!(out_of_range.header(ERROR_HEADER).is_some());
    }

    #[test]
    fn redirect_to_sends_the_decoded_url() {
        let (_pki, echo) = start();
        let url = "/redirect-to?url=https%3A%2F%2Fexample.com%2Fa%3Fb%3Dc&status_code=307";
        let response = client::get(echo.http_addr(), "h", url).unwrap();
        assert_eq!(response.status, 307);
        assert_eq!(response.header("location"), Some("https://example.com/a?b=c"));
        assert_eq!(response.json()["path"], "/redirect-to");

        let default_status = client::get(echo.http_addr(), "h", "/redirect-to?url=/x").unwrap();
        assert_eq!((default_status.status, default_status.header("location")), (302, Some("/x")));

        for bad in ["/redirect-to?url=/x&status_code=200", "/redirect-to", "/redirect-to?url=%0Aevil"] {
            assert_eq!(client::get(echo.http_addr(), "h", bad).unwrap().status, 400, "{bad}");
        }
    }

    #[test]
    fn redirect_n_counts_down_to_a_plain_echo() {
        let (_pki, echo) = start();
        let hop = client::get(echo.http_addr(), "h", "/redirect/2").unwrap();
        assert_eq!((hop.status, hop.header("location")), (302, Some("/redirect/1")));
        assert_eq!(client::get(echo.http_addr(), "h", "/redirect/0").unwrap().status, 200);
    }

    #[test]
    fn delay_is_capped_and_validated() {
        assert_eq!(route("/delay/3", None, None), Action::Delay(Duration::from_secs(3)));
        assert_eq!(route("/delay/3600", None, None), Action::Delay(MAX_DELAY));
        assert!(matches!(route("/delay/-1", None, None), Action::BadRequest(_)));

        let (_pki, echo) = start();
        assert_eq!(client::get(echo.http_addr(), "h", "/delay/0").unwrap().status, 200);
    }

    #[test]
    fn every_listener_tells_tls_from_plain_text_by_the_first_byte() {
        let (pki, echo) = start();
        let plain = client::get(echo.https_addr(), "plain.example", "/").unwrap();
        assert_eq!((plain.json()["server"].as_str(), plain.json()["tls"].is_null()), (Some("http"), true));
        let tls = client::tls_get(echo.http_addr(), Some("tls.example"), pki.ca_pem(), "tls.example", "/").unwrap();
        assert_eq!(
            (tls.json()["server"].as_str(), tls.json()["tls"]["sni"].as_str()),
            (Some("https"), Some("tls.example"))
        );
        assert_eq!(tls.json()["upstream"], echo.http_addr().to_string());
    }

    #[test]
    fn hosts_serve_every_upstream_port_on_a_block_of_their_own() {
        let pki = TestPki::new().unwrap();
        let echo = Echo::start_hosts(&pki, 2).unwrap();
        let other = Echo::start_hosts(&pki, 1).unwrap();
        let hosts = echo.hosts();
        let IpAddr::V4(first) = hosts[0] else { panic!("{hosts:?}") };
        assert_eq!((first.octets()[0], first.octets()[3]), (127, 1));
        assert_eq!(hosts[1], IpAddr::from([127, first.octets()[1], first.octets()[2], 2]));
        assert_ne!(other.hosts()[0], hosts[0], "each echo has its own block");
        assert_eq!(
            (echo.http_addr(), echo.https_addr()),
            (SocketAddr::new(hosts[0], 80), SocketAddr::new(hosts[0], 443))
        );

        let added = echo.add_host().unwrap();
        assert_eq!(added, IpAddr::from([127, first.octets()[1], first.octets()[2], 3]));
        for (host, port) in [(hosts[0], 8080), (hosts[1], 80), (added, 8443)] {
            let response = client::get(SocketAddr::new(host, port), "a.example", "/").unwrap();
            assert_eq!(response.json()["upstream"], SocketAddr::new(host, port).to_string());
        }
        let tls = client::tls_get(SocketAddr::new(hosts[1], 443), Some("b.example"), pki.ca_pem(), "b.example", "/");
        assert_eq!(tls.unwrap().json()["tls"]["sni"], "b.example");
        assert_eq!(echo.requests().len(), 4);
        let to_second: Vec<Value> = echo.requests_to(hosts[1]);
        assert_eq!(to_second.len(), 2);
        assert!(other.requests().is_empty() && Echo::start(&pki).unwrap().add_host().is_err());
    }

    #[test]
    fn the_close_header_closes_the_connection_after_the_response() {
        let (_pki, echo) = start();
        let request = b"GET / HTTP/1.1\r\nHost: h\r\nx-echo-close: 1\r\n\r\n";
        let response = client::raw_http1(echo.http_addr(), request).unwrap();
        assert_eq!((response.status, response.header("connection")), (200, Some("close")));
        let kept = client::raw_http1(echo.http_addr(), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!((kept.status, kept.header("connection")), (200, None), "kept alive otherwise");
    }

    #[test]
    fn dropping_stops_the_listeners() {
        let (_pki, echo) = start();
        let (http, https) = (echo.http_addr(), echo.https_addr());
        echo.shutdown();
        for addr in [http, https] {
            let err = std::net::TcpStream::connect(addr).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        }
    }
}
