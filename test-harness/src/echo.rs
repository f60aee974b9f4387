//! An httpbin-like upstream that tests route traffic to through Envoy.
//!
//! It answers every request with a JSON description of what it received (see [`Echo`]), so a test can check
//! what the proxy actually forwarded, and keeps a log of those descriptions for requests whose response the
//! test never sees (e.g. the ones a filter is expected to have blocked).
//!
//! Two listeners on 127.0.0.1, each speaking HTTP/1.1 and HTTP/2 (prior knowledge on the plain one, ALPN or
//! prior knowledge on the TLS one). The TLS listener presents, for whatever SNI the client sends, a
//! certificate issued on the fly by the test CA, so one `Echo` can stand in for any number of external hosts.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, LOCATION};
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

/// Upper bound for `/delay/N`, so a typo in a test cannot stall the suite.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// The running upstream. Dropping it (or calling [`Echo::shutdown`]) stops both listeners, aborts open
/// connections and joins the background thread.
///
/// For every request the response body (and the [`Echo::requests`] log entry) is a JSON object:
///
/// ```json
/// {"method": "GET", "path": "/headers", "query": "a=1" | null, "host": "api.example.com" | null,
///  "headers": [["user-agent", "x"], ...], "body": "...", "trailers": [["name", "value"], ...] (only when sent),
///  "protocol": "HTTP/1.1" | "HTTP/2",
///  "tls": null | {"sni": "api.example.com" | null}, "server": "http" | "https"}
/// ```
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
/// - `/redirect-to?url=U&status_code=C`: status C (3xx, default 302) with `Location: U`.
/// - `/redirect/N`: 302 to `/redirect/{N-1}` for N >= 1; `/redirect/0` is a plain 200.
/// - `/absolute-redirect/N`: the same with absolute `http://<host>/absolute-redirect/{N-1}` Locations.
/// - `/loop`: 302 to `http://<host>/loop`, forever.
#[derive(Debug)]
pub struct Echo {
    http_addr: SocketAddr,
    https_addr: SocketAddr,
    log: RequestLog,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

type RequestLog = Arc<Mutex<Vec<Value>>>;

impl Echo {
    /// Binds both listeners on 127.0.0.1 (ephemeral ports) and starts serving on a background thread.
    pub fn start(pki: &TestPki) -> Result<Echo, Error> {
        let mut tls_config = pki.any_sni_server_config()?;
        tls_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls_config));

        // A current-thread runtime is plenty for test traffic and keeps each `Echo` down to one thread.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // Bind before spawning so that bind errors and the addresses are known when `start` returns.
        let (http, https) = {
            let _in_runtime = runtime.enter();
            (bind_loopback()?, bind_loopback()?)
        };
        let http_addr = http.local_addr()?;
        let https_addr = https.local_addr()?;

        let log = RequestLog::default();
        let (shutdown, shutdown_requested) = oneshot::channel();
        let server_log = Arc::clone(&log);
        let thread = std::thread::Builder::new().name(format!("echo-{}", http_addr.port())).spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = accept_loop(http, None, Arc::clone(&server_log)) => {}
                    () = accept_loop(https, Some(acceptor), server_log) => {}
                    _ = shutdown_requested => {}
                }
            });
            // Dropping the runtime here drops every connection task, closing their sockets.
        })?;

        Ok(Echo { http_addr, https_addr, log, shutdown: Some(shutdown), thread: Some(thread) })
    }

    /// Address of the plain-text listener (HTTP/1.1 and h2c).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Address of the TLS listener (HTTP/1.1 and h2 via ALPN).
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// Every request received so far, on either listener, in arrival order (the response bodies' JSON).
    pub fn requests(&self) -> Vec<Value> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).clone()
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

fn bind_loopback() -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// What the listener knows about a connection, shared by all requests on it.
struct ConnInfo {
    server: &'static str,
    /// `None` on the plain listener; `Some(sni)` on the TLS one, where the SNI itself is optional.
    tls: Option<Option<String>>,
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, log: RequestLog) {
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
        let log = Arc::clone(&log);
        match &tls {
            None => {
                let conn = ConnInfo { server: "http", tls: None };
                tokio::spawn(serve_connection(stream, conn, log));
            }
            Some(acceptor) => {
                tokio::spawn(serve_tls_connection(acceptor.clone(), stream, log));
            }
        }
    }
}

async fn serve_tls_connection(acceptor: TlsAcceptor, stream: TcpStream, log: RequestLog) {
    // A failed handshake is the client's business: several tests provoke one on purpose.
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let sni = tls.get_ref().1.server_name().map(str::to_owned);
    serve_connection(tls, ConnInfo { server: "https", tls: Some(sni) }, log).await;
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
    if path == "/redirect-to" {
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
    Ok(respond(&conn, status, extra_header, json_body))
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
