//! Small blocking clients for tests: a hand-rolled HTTP/1.1 client (so tests can send exactly the bytes they
//! want, malformed ones included), CONNECT tunnels, TLS over rustls, and one HTTP/2 (h2c) GET.
//!
//! Every socket gets a [`TIMEOUT`] on connect, read and write, so a proxy that hangs fails the test instead
//! of stalling the suite.

use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme, StreamOwned};
use serde_json::Value;

use crate::pki::{self, Error};

/// Connect, read and write timeout of every client here.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP response. Header names are kept as received (HTTP/2 ones are lowercase).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    ///
    /// # Panics
    /// If the body is not JSON. This is a test helper: the panic message shows the status and body, which is
    /// what a failing test wants to print anyway.
    #[expect(clippy::panic, reason = "test-only convenience; a panic is how a test fails")]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!("response body is not JSON ({err}); status {}, body: {}", self.status, self.body_str())
        })
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn body_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// Sends `request_bytes` verbatim on a new connection and reads one HTTP/1.1 response.
///
/// The body is delimited by `Transfer-Encoding: chunked`, `Content-Length` or the end of the connection; a
/// request starting with `HEAD ` gets a body-less response. Interim 1xx responses (100 Continue, 103 Early
/// Hints) are skipped; 101 is returned as is.
///
/// If the server closes the connection without answering, the error is of kind
/// [`io::ErrorKind::UnexpectedEof`] (orderly close) or [`io::ErrorKind::ConnectionReset`] (reset).
pub fn raw_http1(addr: SocketAddr, request_bytes: &[u8]) -> io::Result<Response> {
    exchange(&mut connect(addr)?, request_bytes)
}

/// Like [`raw_http1`], over a stream that is already connected (e.g. a CONNECT tunnel).
pub fn exchange(stream: &mut TcpStream, request_bytes: &[u8]) -> io::Result<Response> {
    // A server may answer and close before reading a whole (say, oversized or malformed) request, making
    // the write fail. Whatever it sent back, or the way it closed, is what the test asserts on, so the write
    // error is dropped and the read decides the outcome.
    let _ = stream.write_all(request_bytes);
    read_response(&mut BufReader::new(&*stream), is_head(request_bytes))
}

/// `GET path` with the given `Host` header; see [`request`].
pub fn get(addr: SocketAddr, host_header: &str, path: &str) -> io::Result<Response> {
    request(addr, "GET", host_header, path, &[], &[])
}

/// A well-formed HTTP/1.1 request on a new connection: `Host: host_header`, then `extra_headers`, then
/// `Content-Length` (when there is a body or the method is POST/PUT/PATCH, unless `extra_headers` already
/// frame the body), then `Connection: close`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    host_header: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    raw_http1(addr, &build_request(method, host_header, path, extra_headers, body))
}

/// HTTP/2 with prior knowledge (cleartext h2c): `GET path` with `:authority` set to `authority`.
pub fn h2_get(addr: SocketAddr, authority: &str, path: &str) -> Result<Response, Error> {
    h2_request(addr, &H2Request { method: "GET", authority, path, ..H2Request::default() })
}

/// One HTTP/2 request (h2c, prior knowledge), with the headers, body and trailers a test chooses.
#[derive(Clone, Copy, Debug, Default)]
pub struct H2Request<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    /// Sent after the body, in a HEADERS frame of their own.
    pub trailers: &'a [(&'a str, &'a str)],
}

/// Sends `request` on a new h2c connection and reads the whole response.
pub fn h2_request(addr: SocketAddr, request: &H2Request<'_>) -> Result<Response, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async { tokio::time::timeout(TIMEOUT, h2_request_async(addr, request)).await? })
}

async fn h2_request_async(addr: SocketAddr, request: &H2Request<'_>) -> Result<Response, Error> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    // The connection task ends by itself once `sender` is dropped, or with the runtime.
    tokio::spawn(connection);
    let mut trailers = hyper::HeaderMap::new();
    for (name, value) in request.trailers {
        trailers.append(hyper::header::HeaderName::from_bytes(name.as_bytes())?, value.parse()?);
    }
    let body = Frames {
        data: (!request.body.is_empty()).then(|| Bytes::copy_from_slice(request.body)),
        trailers: (!trailers.is_empty()).then_some(trailers),
    };
    // hyper derives `:scheme` and `:authority` from the absolute URI.
    let mut builder =
        hyper::Request::builder().method(request.method).uri(format!("http://{}{}", request.authority, request.path));
    for (name, value) in request.headers {
        builder = builder.header(*name, *value);
    }
    let (parts, body) = sender.send_request(builder.body(body)?).await?.into_parts();
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect(),
        body: body.collect().await?.to_bytes().to_vec(),
    })
}

/// A request body of one data frame and a trailers frame, of no announced length: hyper sends no
/// `content-length`, so a proxy can pass the trailers on to an HTTP/1.1 upstream (chunked).
struct Frames {
    data: Option<Bytes>,
    trailers: Option<hyper::HeaderMap>,
}

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(data) => Some(hyper::body::Frame::data(data)),
            None => self.trailers.take().map(hyper::body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// Sends `CONNECT target HTTP/1.1` (`target` is `host:port`) and reads the reply head.
///
/// On a 2xx the returned response has an empty body and the stream is returned positioned right after the
/// head, ready for the tunnelled bytes. Otherwise the response carries the error body, if any, and no stream.
pub fn connect_tunnel(addr: SocketAddr, target: &str) -> io::Result<(Response, Option<TcpStream>)> {
    let mut stream = connect(addr)?;
    stream.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())?;
    // A one-byte buffer never reads past the end of the head, so nothing that belongs to the tunnel is lost
    // in a buffer we then drop. The head is small; the extra syscalls do not matter.
    let (status, headers) = read_final_head(&mut BufReader::with_capacity(1, &stream))?;
    if (200..300).contains(&status) {
        return Ok((Response { status, headers, body: Vec::new() }, Some(stream)));
    }
    let body = read_body(&mut BufReader::new(&stream), &headers)?;
    Ok((Response { status, headers, body }, None))
}

/// Opens a TLS connection to `addr` and sends `GET path` with `Host: host_header`; see [`tls_get_over`].
pub fn tls_get(
    addr: SocketAddr,
    sni: Option<&str>,
    ca_pem: &str,
    host_header: &str,
    path: &str,
) -> Result<Response, Error> {
    tls_get_over(connect(addr)?, sni, ca_pem, host_header, path)
}

/// Like [`tls_get`] but over an already connected stream, e.g. one returned by [`connect_tunnel`].
///
/// The server certificate must chain to `ca_pem`. With `sni` it must also be valid for that name; with no
/// SNI (none is sent) the name is not checked, as there is nothing to check it against.
pub fn tls_get_over(
    stream: TcpStream,
    sni: Option<&str>,
    ca_pem: &str,
    host_header: &str,
    path: &str,
) -> Result<Response, Error> {
    let roots = pki::root_store(ca_pem)?;
    let builder = ClientConfig::builder_with_provider(pki::provider()).with_safe_default_protocol_versions()?;
    let (mut config, server_name) = match sni {
        Some(name) => {
            (builder.with_root_certificates(roots).with_no_client_auth(), ServerName::try_from(name.to_owned())?)
        }
        None => {
            let verifier = CaOnlyVerifier {
                roots: Arc::new(roots),
                algorithms: pki::provider().signature_verification_algorithms,
            };
            let mut config =
                builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth();
            config.enable_sni = false;
            // rustls wants a name even when it sends none; `.invalid` can never be a real host (RFC 6761).
            (config, ServerName::try_from("no-sni.invalid")?)
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tls_exchange(stream, Arc::new(config), server_name, &build_request("GET", host_header, path, &[], &[]))
}

/// The general form behind [`tls_get_over`]: handshake with `config` (e.g. [`pki::TestPki::client_config`]
/// with a client certificate, for mTLS), send `request_bytes`, read one HTTP/1.1 response.
pub fn tls_exchange(
    stream: TcpStream,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    request_bytes: &[u8],
) -> Result<Response, Error> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut tls = StreamOwned::new(ClientConnection::new(config, server_name)?, stream);
    // The first write drives the handshake; its failures come back as io::Errors wrapping rustls's.
    tls.write_all(request_bytes)?;
    tls.flush()?;
    Ok(read_response(&mut BufReader::new(tls), is_head(request_bytes))?)
}

/// Verifies that the server certificate chains to the trusted CA, and nothing about its names: used when no
/// SNI is sent, so that a test can still tell "the right CA" from "any certificate".
#[derive(Debug)]
struct CaOnlyVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for CaOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&cert, &self.roots, intermediates, now, self.algorithms.all)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A well-formed HTTP/1.1 request with `Connection: close` (and `Content-Length` when needed).
pub fn build_request(
    method: &str,
    host_header: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host_header}\r\n");
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let framed_by_caller = extra_headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding"));
    // RFC 9110 §8.6: a user agent should send Content-Length for POST/PUT-like methods even with no body.
    if !framed_by_caller && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn is_head(request_bytes: &[u8]) -> bool {
    request_bytes.starts_with(b"HEAD ")
}

fn read_response(reader: &mut impl BufRead, head_request: bool) -> io::Result<Response> {
    let (status, headers) = read_final_head(reader)?;
    // RFC 9112 §6.3: responses to HEAD, and 1xx/204/304 responses, never have a body.
    let body = if head_request || status < 200 || status == 204 || status == 304 {
        Vec::new()
    } else {
        read_body(reader, &headers)?
    };
    Ok(Response { status, headers, body })
}

type Head = (u16, Vec<(String, String)>);

/// Reads response heads until one that is not an interim 1xx (101 Switching Protocols counts as final).
fn read_final_head(reader: &mut impl BufRead) -> io::Result<Head> {
    loop {
        let head = read_head(reader)?;
        if !(100..200).contains(&head.0) || head.0 == 101 {
            return Ok(head);
        }
    }
}

fn read_head(reader: &mut impl BufRead) -> io::Result<Head> {
    let status_line = read_line(reader)?.ok_or_else(|| {
        io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response was received")
    })?;
    let status = parse_status_line(&status_line)
        .ok_or_else(|| invalid_data(format!("malformed status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a response head"))?;
        if line.is_empty() {
            return Ok((status, headers));
        }
        let (name, value) =
            line.split_once(':').ok_or_else(|| invalid_data(format!("malformed header line {line:?}")))?;
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
}

/// `HTTP/1.x NNN reason` -> NNN.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

fn read_body(reader: &mut impl BufRead, headers: &[(String, String)]) -> io::Result<Vec<u8>> {
    let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    // RFC 9112 §6.3: Transfer-Encoding wins over Content-Length, and is chunked if chunked is the last coding.
    if let Some(codings) = header("transfer-encoding") {
        if codings.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked")) {
            return read_chunked(reader);
        }
    } else if let Some(length) = header("content-length") {
        let length: usize = length.parse().map_err(|_| invalid_data(format!("bad Content-Length {length:?}")))?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    reader.read_to_end(&mut body)?;
    Ok(body)
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(reader)?.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        // Chunk extensions (`;name=value`) carry nothing a test needs.
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_hex, 16).map_err(|_| invalid_data(format!("bad chunk size {size_line:?}")))?;
        if size == 0 {
            break;
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        if read_line(reader)?.as_deref() != Some("") {
            return Err(invalid_data("chunk not followed by CRLF".to_owned()));
        }
    }
    // Trailer fields, up to the empty line; dropped as nothing here needs them.
    while read_line(reader)?.is_some_and(|line| !line.is_empty()) {}
    Ok(body)
}

/// One line without its line ending (CRLF, or a bare LF from a sloppy server); `None` at end of stream.
fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-line"));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::thread;

    /// A one-shot server: reads one request head, writes `reply` verbatim, then closes. Reading the request
    /// first matters: closing with unread input makes the kernel send a reset instead of a clean close.
    fn serve_once(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            while read_line(&mut reader).unwrap().is_some_and(|line| !line.is_empty()) {}
            stream.write_all(reply).unwrap();
        });
        addr
    }

    #[test]
    fn raw_http1_decodes_chunked_bodies_with_extensions_and_trailers() {
        let addr = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n\
              5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\n",
        );
        let response = raw_http1(addr, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("x-a"), Some("1"));
        assert_eq!(response.body_str(), "hello, world");
    }

    #[test]
    fn raw_http1_uses_content_length_and_skips_interim_responses() {
        let addr =
            serve_once(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabcTRAILING");
        let response = raw_http1(addr, b"POST / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!((response.status, response.body_str()), (201, "abc".into()));
    }

    #[test]
    fn raw_http1_reads_to_eof_without_framing_and_not_at_all_for_head() {
        let addr = serve_once(b"HTTP/1.0 200 OK\r\n\r\nuntil the end");
        assert_eq!(raw_http1(addr, b"GET / HTTP/1.0\r\n\r\n").unwrap().body_str(), "until the end");

        let addr = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
        assert!(raw_http1(addr, b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap().body.is_empty());
    }

    #[test]
    fn raw_http1_reports_a_silent_close_as_unexpected_eof() {
        let addr = serve_once(b"");
        let err = raw_http1(addr, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn request_frames_the_body_and_closes() {
        let bytes = build_request("PUT", "h:1", "/p", &[("X-Y", "z")], b"");
        assert_eq!(bytes, b"PUT /p HTTP/1.1\r\nHost: h:1\r\nX-Y: z\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let chunked = build_request("POST", "h", "/", &[("Transfer-Encoding", "chunked")], b"0\r\n\r\n");
        assert!(!String::from_utf8_lossy(&chunked).contains("Content-Length"));
    }

    #[test]
    fn connect_tunnel_hands_back_the_stream_right_after_the_head() {
        let addr = serve_once(b"HTTP/1.1 200 Connection established\r\n\r\ntunnelled bytes");
        let (head, stream) = connect_tunnel(addr, "example.com:443").unwrap();
        assert_eq!((head.status, head.body.len()), (200, 0));
        let mut tunnelled = String::new();
        stream.unwrap().read_to_string(&mut tunnelled).unwrap();
        assert_eq!(tunnelled, "tunnelled bytes");

        let addr = serve_once(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied");
        let (head, stream) = connect_tunnel(addr, "example.com:443").unwrap();
        assert_eq!((head.status, head.body_str(), stream.is_none()), (403, "denied".into(), true));
    }

    #[test]
    fn tls_get_over_runs_on_the_callers_stream() {
        use crate::echo::Echo;
        use crate::pki::TestPki;

        let pki = TestPki::new().unwrap();
        let echo = Echo::start(&pki).unwrap();
        // Stand-in for a proxy's CONNECT: a plain TCP stream to the echo's TLS port.
        let stream = TcpStream::connect(echo.https_addr()).unwrap();
        let response = tls_get_over(stream, Some("tunnelled.example"), pki.ca_pem(), "tunnelled.example", "/").unwrap();
        assert_eq!(response.json()["tls"]["sni"], "tunnelled.example");
    }
}
