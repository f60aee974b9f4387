//! Host glue shared by the egress filters. Every proxy-wasm host call goes through `hostcalls` (which return
//! `Result`), never the SDK's trait helpers (which unwrap): a panic kills the VM and every later request on that
//! worker fails until reload. Values from clients are read as bytes, because the SDK's `get_map_value` unwraps
//! UTF-8 and a client-sent Latin-1 byte would be enough to kill the VM.
//!
//! What a request costs: a host call that returns a value re-enters the VM (Envoy asks the module to allocate the
//! copy), which in V8 costs about as much as the filter's own work; one that finds nothing, sets or counts does
//! not. So the hot paths read a whole header map once instead of header by header, try the cheap absent case
//! first, publish one filter-state record per filter, and read the caller's identity only when a rule needs it.

use egress_core::state::{self, IdentityRecord, ToJson};
use egress_core::workload::Peer;
use egress_core::{Caller, SpiffeId};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType, MetricType, Status};
use std::rc::Rc;

/// Reply header carrying the machine reason of a local 4xx/5xx, for every filter of the suite.
pub const REASON_HEADER: &str = "x-egress-denied-reason";

pub fn log(level: LogLevel, message: &str) {
    // Nothing sensible to do if logging itself fails.
    let _ = hostcalls::log(level, message);
}

/// The plugin configuration (Istio `pluginConfig`) as bytes; an error when there is none.
pub fn plugin_config() -> Result<Vec<u8>, String> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .map_err(|s| format!("cannot read plugin configuration: {s:?}"))?
        .ok_or_else(|| "no plugin configuration".to_string())
}

/// Bytes asked of the host per read of the plugin configuration.
const CONFIG_CHUNK: usize = 64 * 1024;

/// The plugin configuration read from the host a chunk at a time, for a filter that parses while reading: a large
/// configuration (a policy of 100,000 rules is 7 MB of JSON) then never sits whole in the VM's linear memory, which
/// only grows.
#[derive(Debug)]
pub struct PluginConfigReader {
    /// `on_configure`'s `plugin_configuration_size`: reads never go past it.
    size: usize,
    /// Where the next chunk starts.
    offset: usize,
    chunk: Vec<u8>,
    /// How much of `chunk` was read.
    used: usize,
}

impl PluginConfigReader {
    /// A reader of the `size` bytes of plugin configuration (`RootContext::on_configure`'s argument); an error when
    /// there is none.
    pub fn new(size: usize) -> Result<PluginConfigReader, String> {
        if size == 0 {
            return Err("no plugin configuration".to_string());
        }
        Ok(PluginConfigReader { size, offset: 0, chunk: Vec::new(), used: 0 })
    }
}

impl std::io::BufRead for PluginConfigReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.used == self.chunk.len() && self.offset < self.size {
            // Free the last chunk before the host allocates the next.
            self.chunk = Vec::new();
            self.used = 0;
            let want = CONFIG_CHUNK.min(self.size - self.offset);
            self.chunk = hostcalls::get_buffer(BufferType::PluginConfiguration, self.offset, want)
                .map_err(|s| std::io::Error::other(format!("cannot read plugin configuration: {s:?}")))?
                .unwrap_or_default();
            if self.chunk.is_empty() {
                let why = format!("plugin configuration ended at byte {} of {}", self.offset, self.size);
                return Err(std::io::Error::other(why));
            }
            self.offset += self.chunk.len();
        }
        Ok(self.chunk.get(self.used..).unwrap_or_default())
    }

    fn consume(&mut self, amount: usize) {
        self.used = self.chunk.len().min(self.used + amount);
    }
}

impl std::io::Read for PluginConfigReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::BufRead;
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        if let (Some(to), Some(from)) = (buf.get_mut(..n), available.get(..n)) {
            to.copy_from_slice(from);
        }
        self.consume(n);
        Ok(n)
    }
}

thread_local! {
    /// The configuration this VM built last, by a fingerprint of its plugin configuration: plugins of one module share
    /// a VM (an Istio gateway runs the allow-list's HTTP and TLS plugins in one), and when their configurations are
    /// the same bytes they share what was built from them instead of each holding a copy.
    static BUILT: std::cell::RefCell<Option<(ConfigFingerprint, std::rc::Weak<dyn std::any::Any>)>> =
        const { std::cell::RefCell::new(None) };
}

/// The length and 64-bit SipHash of a plugin configuration. Two configurations with the same fingerprint are taken
/// to be the same: an accident has a 2^-64 chance, and whoever could craft a collision writes this VM's plugin
/// configurations, so could set any configuration directly. (SHA-256 would cost the module 10 KB.)
type ConfigFingerprint = (usize, u64);

fn fingerprint(size: usize) -> Result<ConfigFingerprint, String> {
    use std::hash::Hasher;
    use std::io::BufRead;
    let mut hasher = std::hash::DefaultHasher::new();
    let mut reader = PluginConfigReader::new(size)?;
    loop {
        let chunk = reader.fill_buf().map_err(|e| e.to_string())?;
        if chunk.is_empty() {
            return Ok((size, hasher.finish()));
        }
        hasher.write(chunk);
        let n = chunk.len();
        reader.consume(n);
    }
}

/// Builds a configuration from the `size` bytes of plugin configuration, read in chunks, unless another plugin of
/// this VM built one from the same bytes and still holds it: then that one is shared. `build` must depend on the
/// bytes only.
pub fn shared_config<C: 'static>(
    size: usize,
    build: impl FnOnce(&mut PluginConfigReader) -> Result<C, String>,
) -> Result<Rc<C>, String> {
    let fingerprint = fingerprint(size)?;
    let built = BUILT.with(|b| {
        b.borrow()
            .as_ref()
            .filter(|(built_from, _)| *built_from == fingerprint)
            .and_then(|(_, config)| config.upgrade()?.downcast::<C>().ok())
    });
    if let Some(config) = built {
        return Ok(config);
    }
    let config = Rc::new(build(&mut PluginConfigReader::new(size)?)?);
    let weak: std::rc::Weak<C> = Rc::downgrade(&config);
    let weak: std::rc::Weak<dyn std::any::Any> = weak;
    BUILT.with(|b| *b.borrow_mut() = Some((fingerprint, weak)));
    Ok(config)
}

/// The plugin's root id (Istio `pluginName`).
pub fn root_id() -> Result<String, String> {
    property_string(&["plugin_root_id"])
        .map_err(|s| format!("cannot read root id: {s:?}"))
        .map(Option::unwrap_or_default)
}

/// A string property. Invalid UTF-8 becomes U+FFFD, which no host name or SPIFFE ID accepts: it fails closed.
pub fn property_string(path: &[&str]) -> Result<Option<String>, Status> {
    let value = hostcalls::get_property(path.to_vec())?;
    Ok(value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

fn property_bool(path: &[&str]) -> Result<bool, Status> {
    Ok(hostcalls::get_property(path.to_vec())?.is_some_and(|bytes| bytes.first().is_some_and(|&b| b != 0)))
}

/// An integer property (Envoy encodes them as 8 little-endian bytes).
pub fn property_u64(path: &[&str]) -> Result<Option<u64>, Status> {
    let value = hostcalls::get_property(path.to_vec())?;
    Ok(value.and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok()).map(u64::from_le_bytes))
}

/// The request's pseudo-headers (Envoy has already mapped HTTP/1 `Host` and absolute-form targets to
/// `:authority`), read with one host call. Absent ones are empty.
#[derive(Clone, Debug, Default)]
pub struct RequestLine {
    pub authority: String,
    pub scheme: String,
    pub method: String,
    /// Absent for CONNECT.
    pub path: Option<String>,
}

impl RequestLine {
    pub fn read() -> Result<RequestLine, Status> {
        Ok(RequestLine::of(&request_headers()?))
    }

    /// The request line of a header map already read.
    pub fn of(headers: &[(String, Vec<u8>)]) -> RequestLine {
        let mut line = RequestLine::default();
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

    /// A CONNECT request: a tunnel whose bytes the gateway does not read.
    pub fn is_tunnel(&self) -> bool {
        self.method == "CONNECT"
    }
}

/// Every request header, pseudo-headers included, names lowercase, values as bytes: one host call.
pub fn request_headers() -> Result<Vec<(String, Vec<u8>)>, Status> {
    hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
}

/// Removes every header of `map` whose name `strip` selects, from the names `headers` (a read of that map) holds,
/// each name once; returns how many names were removed.
pub fn remove_headers_where(
    map: MapType,
    headers: &[(String, Vec<u8>)],
    strip: impl Fn(&str) -> bool,
) -> Result<usize, Status> {
    let mut removed: Vec<&str> = Vec::new();
    for (name, _) in headers {
        if strip(name) && !removed.contains(&name.as_str()) {
            hostcalls::remove_map_value(map, name)?;
            removed.push(name);
        }
    }
    Ok(removed.len())
}

/// A response header (first value), as lossy UTF-8.
pub fn response_header(name: &str) -> Result<Option<String>, Status> {
    let value = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)?;
    Ok(value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// Every value of a response header, in order (Envoy keeps repeated headers as separate entries).
pub fn response_header_values(name: &str) -> Result<Vec<String>, Status> {
    let headers = hostcalls::get_map_bytes(MapType::HttpResponseHeaders)?;
    Ok(headers
        .into_iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| String::from_utf8_lossy(&value).into_owned())
        .collect())
}

/// Removes every copy of a request header (Envoy's header map is case-insensitive).
pub fn remove_request_header(name: &str) -> Result<(), Status> {
    hostcalls::remove_map_value(MapType::HttpRequestHeaders, name)
}

/// Replaces every copy of a request header with one value.
pub fn set_request_header(name: &str, value: &str) -> Result<(), Status> {
    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
}

/// The client certificate Envoy verified, as far as Envoy shows it to Wasm. From Envoy 1.38 on,
/// `connection.peer_certificate` holds the whole leaf certificate, so every URI SAN is read from it; before, only the
/// first URI SAN is shown (`connection.uri_san_peer_certificate`, with `connection.mtls`). Each property is absent on
/// a connection without a client certificate, which costs no VM re-entry.
pub fn verified_peer() -> Result<Peer, Status> {
    // Present only when the peer presented a certificate, which is what `connection.mtls` says.
    if let Some(pem) = property_string(&["connection", "peer_certificate"])? {
        return Ok(match egress_core::certificate::uri_sans_of_url_encoded_pem(&pem) {
            Ok(uris) => Peer::Certificate(uris),
            Err(_) => Peer::Unreadable,
        });
    }
    let Some(uri_san) = property_string(&["connection", "uri_san_peer_certificate"])? else { return Ok(Peer::None) };
    let verified = property_bool(&["connection", "mtls"])? && !uri_san.is_empty();
    Ok(if verified { Peer::FirstUriSan(uri_san) } else { Peer::None })
}

/// Publishes a value to filter state (Envoy stores it under `wasm.<key>`).
pub fn publish(key: &str, value: &str) -> Result<(), Status> {
    hostcalls::set_property(vec![key], Some(value.as_bytes()))
}

/// Publishes a record (JSON) to filter state.
pub fn publish_record(key: &str, record: &impl ToJson) -> Result<(), Status> {
    publish(key, &record.to_json())
}

/// A local JSON reply carrying `reason` in [`REASON_HEADER`]; the request goes no further. If even the reply
/// fails, the stream is reset: never forwarded.
pub fn reply(status: u16, reason: &str, body: &str) -> Action {
    reply_with(status, reason, body, &[])
}

/// [`reply`] with extra headers (e.g. a `location`).
pub fn reply_with(status: u16, reason: &str, body: &str, extra: &[(&str, &str)]) -> Action {
    let mut headers = vec![("content-type", "application/json"), (REASON_HEADER, reason)];
    headers.extend_from_slice(extra);
    if hostcalls::send_http_response(u32::from(status), headers, Some(body.as_bytes())).is_err() {
        let _ = hostcalls::reset_http_request();
    }
    Action::Pause
}

/// The reply when a filter itself cannot work (a host call failed): 500, logged, never forwarded.
pub fn reply_internal_error(filter: &str, why: &str) -> Action {
    log(LogLevel::Error, &format!("{filter}: {why}"));
    reply(500, "internal_error", r#"{"error":"egress_filter_error","reason":"internal_error"}"#)
}

/// Closes a network connection the filter cannot judge or has refused, logging why; data stops here.
pub fn close_connection(filter: &str, why: &str) -> Action {
    log(LogLevel::Error, &format!("{filter}: {why}"));
    let _ = hostcalls::close_downstream();
    Action::Pause
}

/// A counter metric. Failing to count never changes a decision.
#[derive(Clone, Copy, Debug)]
pub struct Counter(u32);

impl Counter {
    pub fn define(name: &str) -> Result<Counter, String> {
        hostcalls::define_metric(MetricType::Counter, name).map(Counter).map_err(|s| format!("metric {name}: {s:?}"))
    }

    pub fn increment(self) {
        self.add(1);
    }

    /// Adds `count` in one host call.
    pub fn add(self, count: usize) {
        if count > 0 {
            let _ = hostcalls::increment_metric(self.0, i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

/// Seconds since the Unix epoch, from the host clock.
pub fn unix_now() -> Result<u64, Status> {
    let now = hostcalls::get_current_time()?;
    Ok(now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

/// The caller's SPIFFE identity: as the identity filter established it when that filter runs first (it may have
/// taken it from a trusted hop), else from the TLS peer certificate Envoy verified. A certificate that does not name
/// exactly one valid Istio SPIFFE ID is no identity, so identity-scoped rules never match it.
fn caller_identity() -> Result<Option<SpiffeId>, Status> {
    if let Some(published) = property_string(&[state::IDENTITY])? {
        let record: Option<IdentityRecord<String>> = state::parse(Some(&published));
        return Ok(record.and_then(|r| r.id).and_then(|id| SpiffeId::parse(&id).ok()));
    }
    Ok(verified_peer()?.identity().ok().flatten())
}

/// Runs `judge` with the caller as a lookup (`egress_core::Caller::Lookup`): [`caller_identity`] is read only if a
/// rule needs it. A failed host call is an error, never an anonymous caller.
pub fn with_caller<T>(judge: impl FnOnce(Caller<'_>) -> T) -> Result<T, Status> {
    let failure = std::cell::Cell::new(None);
    let lookup = || {
        caller_identity().unwrap_or_else(|status| {
            failure.set(Some(status));
            None
        })
    };
    let judged = judge(Caller::Lookup(&lookup));
    failure.get().map_or(Ok(judged), Err)
}

/// Replaces every copy of a response header with one value.
pub fn set_response_header(name: &str, value: &str) -> Result<(), Status> {
    hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value))
}

/// Declares a filter-state property that lives as long as the downstream request, so it survives Envoy's internal
/// redirects (undeclared properties live as long as one filter chain pass). Envoy's `declare_property` foreign
/// function takes a protobuf `DeclarePropertyArguments {name = 1, type = 3 (0: bytes), span = 5 (1: request)}`.
/// Only effective from a root context (`on_configure`).
pub fn declare_request_property(name: &str) -> Result<(), String> {
    let len = u8::try_from(name.len()).map_err(|_| format!("property name {name} is too long"))?;
    let mut arguments = vec![0x0a, len];
    arguments.extend_from_slice(name.as_bytes());
    arguments.extend_from_slice(&[0x18, 0x00, 0x28, 0x01]);
    hostcalls::call_foreign_function("declare_property", Some(&arguments))
        .map(|_| ())
        .map_err(|s| format!("declare_property {name}: {s:?}"))
}

/// Sets the gauge `<filter>_vm_memory_bytes` to the VM's linear memory, which holds everything the filter keeps
/// (the compiled configuration above all): the per-worker memory cost of a configuration, readable in Envoy's stats.
/// Linear memory only grows, so the gauge is the VM's high-water mark.
fn record_vm_memory(filter: &str) {
    #[cfg(target_arch = "wasm32")]
    let bytes = core::arch::wasm32::memory_size::<0>() * 65536;
    #[cfg(not(target_arch = "wasm32"))]
    let bytes = 0;
    let name = format!("{}_vm_memory_bytes", filter.replace('-', "_"));
    if let Ok(gauge) = hostcalls::define_metric(MetricType::Gauge, &name) {
        let _ = hostcalls::record_metric(gauge, u64::try_from(bytes).unwrap_or(u64::MAX));
    }
}

/// `on_configure` of every filter: build the configuration from the plugin configuration, keep the counters defined
/// the first time (metrics are per VM, a reconfiguration must not redefine them), log what was loaded, and refuse
/// (`false`, so Envoy refuses the listener) with the reason when anything fails.
pub fn configure<C, M: Copy>(
    filter: &str,
    slot: &mut Option<(Rc<C>, M)>,
    build: impl FnOnce(&[u8]) -> Result<C, String>,
    define_metrics: impl FnOnce() -> Result<M, String>,
    describe: impl FnOnce(&C) -> String,
) -> bool {
    configure_with(filter, slot, || build(&plugin_config()?).map(Rc::new), define_metrics, describe)
}

/// [`configure`] for a filter that reads its plugin configuration itself (e.g. with [`shared_config`]).
pub fn configure_with<C, M: Copy>(
    filter: &str,
    slot: &mut Option<(Rc<C>, M)>,
    build: impl FnOnce() -> Result<Rc<C>, String>,
    define_metrics: impl FnOnce() -> Result<M, String>,
    describe: impl FnOnce(&C) -> String,
) -> bool {
    let configured = (|| {
        let config = build()?;
        let metrics = match slot {
            Some((_, metrics)) => *metrics,
            None => define_metrics()?,
        };
        Ok::<_, String>((config, metrics))
    })();
    match configured {
        Ok((config, metrics)) => {
            log(LogLevel::Info, &format!("{filter}: configured; {}", describe(&config)));
            *slot = Some((config, metrics));
            record_vm_memory(filter);
            true
        }
        Err(message) => {
            log(LogLevel::Error, &format!("{filter}: refusing configuration: {message}"));
            false
        }
    }
}
