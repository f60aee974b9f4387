//! What the stages of one stream know and have decided. In the suite every stage shares one [`Request`] (or
//! [`Connection`]), so a fact is read from Envoy once and handed from stage to stage in memory; in a separate filter the
//! same getters fall back to what the filter before it published to filter state.

use crate::host::{HeaderMap, Host};
use egress_core::identity::Peer;
use egress_core::state::{self, DecisionRecord, IdentityRecord};
use egress_core::{Caller, RequestLine, SpiffeId};
use proxy_wasm::types::{MapType, Status};

/// The request's pseudo-headers as read from the host (absent ones empty), kept for the stream's stages; they see
/// them as [`RequestLine`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PseudoHeaders {
    authority: String,
    scheme: String,
    method: String,
    /// Absent for CONNECT.
    path: Option<String>,
}

impl PseudoHeaders {
    fn of(headers: &[(String, Vec<u8>)]) -> PseudoHeaders {
        let mut line = PseudoHeaders::default();
        for (name, value) in headers {
            let slot = match name.as_str() {
                ":authority" => &mut line.authority,
                ":scheme" => &mut line.scheme,
                ":method" => &mut line.method,
                ":path" => line.path.get_or_insert_with(String::new),
                _ => continue,
            };
            *slot = String::from_utf8_lossy(value).into_owned();
        }
        line
    }

    fn line(&self) -> RequestLine<'_> {
        RequestLine {
            scheme: &self.scheme,
            authority: &self.authority,
            method: &self.method,
            path: self.path.as_deref(),
        }
    }
}

/// One HTTP stream, as its stages see it. The fields are disjoint so a stage can hold the request line while it
/// reads the caller.
#[derive(Debug, Default)]
pub struct Request {
    pub facts: RequestFacts,
    /// The caller as the identity stage established it in this pass; `None` until then.
    pub caller: Option<Option<SpiffeId>>,
    /// What the identity stage published, once it ran here.
    pub identity: Option<IdentityRecord<String>>,
    /// The request's decision, once a stage here made one.
    pub decision: Option<DecisionRecord<String>>,
    /// Whether this request has a redirect chain in filter state, once the redirects stage knows (`Some(false)`:
    /// none, so nobody need read it).
    pub redirected: Option<bool>,
    /// When the stream began (Unix ms), when a stage needs durations.
    pub started_ms: Option<u64>,
    /// This filter answered the request itself: the response is its own reply, which no response stage vets.
    pub replied: bool,
    /// The response's `:status`, once a stage read it (0: none or unreadable); read it with `response_status`.
    pub status: Option<u16>,
    /// The range Envoy refused the resolved address in (`egress_core::resolved`), once the allow-list saw it.
    pub refused_address: Option<String>,
}

impl Request {
    pub fn new(started_ms: Option<u64>) -> Request {
        Request { started_ms, ..Request::default() }
    }

    /// The response's status, read from the host on first use (0 when absent or not a number).
    pub fn response_status(&mut self, host: &dyn Host) -> Result<u16, Status> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = host.map_value(MapType::HttpResponseHeaders, ":status")?;
        let status = status.and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok()).unwrap_or(0);
        Ok(*self.status.insert(status))
    }

    /// Runs `judge` with the caller: the one the identity stage established in this pass, else [`with_caller`].
    pub fn with_caller<T>(
        caller: &Option<Option<SpiffeId>>,
        host: &dyn Host,
        judge: impl FnOnce(Caller<'_>) -> T,
    ) -> Result<T, Status> {
        match caller {
            Some(known) => Ok(judge(Caller::Known(known.as_ref()))),
            None => with_caller(host, judge),
        }
    }
}

/// The request headers, read from the host once and kept in step with what the stages change.
#[derive(Debug, Default)]
pub struct RequestFacts {
    headers: Option<HeaderMap>,
    line: PseudoHeaders,
}

impl RequestFacts {
    /// Every request header (pseudo-headers included), read from the host on first use.
    pub fn headers(&mut self, host: &dyn Host) -> Result<&HeaderMap, Status> {
        if self.headers.is_none() {
            let headers = host.map(MapType::HttpRequestHeaders)?;
            self.line = PseudoHeaders::of(&headers);
            self.headers = Some(headers);
        }
        Ok(self.headers.get_or_insert_with(Vec::new))
    }

    /// The request line, read with the headers on first use.
    pub fn line(&mut self, host: &dyn Host) -> Result<RequestLine<'_>, Status> {
        self.headers(host)?;
        Ok(self.line.line())
    }

    /// The first value of a header, as lossy UTF-8.
    pub fn header(&mut self, host: &dyn Host, name: &str) -> Result<Option<String>, Status> {
        let headers = self.headers(host)?;
        let value = headers.iter().find(|(key, _)| key == name);
        Ok(value.map(|(_, value)| String::from_utf8_lossy(value).into_owned()))
    }

    /// Removes every header `strip` selects (each name once, however many values it has); returns how many names.
    pub fn remove_headers_where(&mut self, host: &dyn Host, strip: impl Fn(&str) -> bool) -> Result<usize, Status> {
        let headers = self.headers(host)?;
        let mut names: Vec<String> = headers.iter().filter(|(name, _)| strip(name)).map(|(n, _)| n.clone()).collect();
        names.sort();
        names.dedup();
        for name in &names {
            host.remove_map_value(MapType::HttpRequestHeaders, name)?;
        }
        if let Some(headers) = &mut self.headers {
            headers.retain(|(name, _)| !names.contains(name));
        }
        Ok(names.len())
    }

    /// Sets a header to one value.
    pub fn set_header(&mut self, host: &dyn Host, name: &str, value: &str) -> Result<(), Status> {
        host.set_map_value(MapType::HttpRequestHeaders, name, value)?;
        if let Some(headers) = &mut self.headers {
            headers.retain(|(key, _)| key != name);
            headers.push((name.to_string(), value.as_bytes().to_vec()));
        }
        Ok(())
    }
}

/// One TLS-passthrough connection, as its stages see it.
#[derive(Debug, Default)]
pub struct Connection {
    pub decision: Option<DecisionRecord<String>>,
    pub started_ms: Option<u64>,
}

impl Connection {
    pub fn new(started_ms: Option<u64>) -> Connection {
        Connection { started_ms, ..Connection::default() }
    }
}

/// Runs `judge` with the caller as a lookup ([`Caller::Lookup`]), read only if a rule needs it: what the identity
/// filter published, else the peer certificate. A failed host call is an error, never an anonymous caller.
pub fn with_caller<T>(host: &dyn Host, judge: impl FnOnce(Caller<'_>) -> T) -> Result<T, Status> {
    let failure = std::cell::Cell::new(None);
    let lookup = || {
        caller_identity(host).unwrap_or_else(|status| {
            failure.set(Some(status));
            None
        })
    };
    let judged = judge(Caller::Lookup(&lookup));
    failure.get().map_or(Ok(judged), Err)
}

/// The caller's SPIFFE identity: as the identity filter published it when that filter ran before (it may have taken
/// it from a trusted hop), else from the TLS peer certificate Envoy verified. A certificate that does not name exactly
/// one valid Istio SPIFFE ID is no identity, so identity-scoped rules never match it.
fn caller_identity(host: &dyn Host) -> Result<Option<SpiffeId>, Status> {
    if let Some(published) = crate::property_string(host, &[state::IDENTITY])? {
        let record: Option<IdentityRecord<String>> = state::parse(Some(&published));
        return Ok(record.and_then(|r| r.id).and_then(|id| SpiffeId::parse(&id).ok()));
    }
    Ok(verified_peer(host)?.identity().ok().flatten())
}

/// The client certificate Envoy verified, as far as Envoy shows it to Wasm. From Envoy 1.38 on,
/// `connection.peer_certificate` holds the whole leaf certificate, so every URI SAN is read from it; before, only the
/// first URI SAN is shown (`connection.uri_san_peer_certificate`, with `connection.mtls`). Each property is absent on
/// a connection without a client certificate, which costs no VM re-entry.
pub fn verified_peer(host: &dyn Host) -> Result<Peer, Status> {
    // Present only when the peer presented a certificate, which is what `connection.mtls` says.
    if let Some(pem) = crate::property_string(host, &["connection", "peer_certificate"])? {
        return Ok(match egress_core::certificate::uri_sans_of_url_encoded_pem(&pem) {
            Ok(uris) => Peer::Certificate(uris),
            Err(_) => Peer::Unreadable,
        });
    }
    let Some(uri_san) = crate::property_string(host, &["connection", "uri_san_peer_certificate"])? else {
        return Ok(Peer::None);
    };
    let mtls = host.property(&["connection", "mtls"])?.is_some_and(|bytes| bytes.first().is_some_and(|&b| b != 0));
    Ok(if mtls && !uri_san.is_empty() { Peer::FirstUriSan(uri_san) } else { Peer::None })
}
