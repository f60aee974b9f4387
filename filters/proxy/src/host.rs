//! The host seam: the few proxy-wasm host calls the stages make, behind a trait, so that a stage's glue runs
//! against Envoy ([`WasmHost`]) or against a recording fake in unit tests ([`crate::fake::FakeHost`]), where its host
//! calls per request can be counted. Stages take `&dyn Host`: one copy of their code in each module.
//!
//! What a call costs in Envoy: one that returns a value re-enters the VM (Envoy asks the module to allocate the
//! copy), ≈ 1.5 µs for a header map or value, ≈ 2.5 µs for a property (Envoy evaluates it through CEL); one that finds
//! nothing, sets, removes or counts costs a fraction of that. So stages read a header map once, probe what is
//! usually absent first, and read properties only when the policy needs them.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MapType, MetricType, Status};
use std::time::{Duration, SystemTime};

/// A header map as the host hands it over: names lowercase, values as bytes (a client-sent Latin-1 byte must not
/// reach a UTF-8 conversion that panics).
pub type HeaderMap = Vec<(String, Vec<u8>)>;

/// The host calls of the suite's stages.
pub trait Host {
    /// Every entry of a header map, in order.
    fn map(&self, map: MapType) -> Result<HeaderMap, Status>;
    /// The first value of one header (Envoy's maps are case-insensitive).
    fn map_value(&self, map: MapType, name: &str) -> Result<Option<Vec<u8>>, Status>;
    /// Replaces every value of a header with one.
    fn set_map_value(&self, map: MapType, name: &str, value: &str) -> Result<(), Status>;
    /// Removes every value of a header.
    fn remove_map_value(&self, map: MapType, name: &str) -> Result<(), Status>;
    /// An attribute (`["connection", "mtls"]`) or a filter-state value; `None` when absent.
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Status>;
    /// Publishes a filter-state value (Envoy stores it under `wasm.<name>`).
    fn set_property(&self, name: &str, value: &[u8]) -> Result<(), Status>;
    /// A local reply; the request goes no further.
    fn send_reply(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), Status>;
    /// Resets the HTTP stream (when even a reply is impossible).
    fn reset_stream(&self) -> Result<(), Status>;
    /// Closes the downstream connection of a network filter.
    fn close_downstream(&self) -> Result<(), Status>;
    /// The metric called `name`, defined on first use: the same id every time (metrics live as long as the VM, so
    /// a reconfiguration reuses them).
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status>;
    fn increment_metric(&self, metric: u32, by: i64) -> Result<(), Status>;
    fn record_metric(&self, metric: u32, value: u64) -> Result<(), Status>;
    /// Logs; failing to log changes nothing.
    fn log(&self, level: LogLevel, message: &str);
    fn now(&self) -> Result<SystemTime, Status>;
    /// Fills `into` with random bytes (WASI `random_get` in Envoy).
    fn random(&self, into: &mut [u8]) -> Result<(), String>;
    /// Prepares a batch of attributes to read together (from a root context, at configuration time).
    fn prepare_attributes(&self, paths: &[&[&str]]) -> Result<Attributes, Status>;
    /// The values of a prepared batch, in order, each as text (integers in decimal); `None` for an absent one.
    fn read_attributes(&self, batch: &Attributes) -> Result<Vec<Option<String>>, Status>;
    /// An HTTP call to `cluster` from a root context; the token names its response.
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, Status>;
    /// The body of the HTTP call response being handled (from its callback), at most `max` bytes.
    fn http_call_response_body(&self, max: usize) -> Result<Option<Vec<u8>>, Status>;
}

/// A batch of attributes read with one host call ([`Host::read_attributes`]): in Envoy, one CEL expression
/// (`expr_create` once, `expr_evaluate` per stream) that joins them all, which costs about half of reading each as a
/// property (one VM crossing and one evaluation context for all of them; measured: 8 attributes, 44k instructions
/// against 92k).
#[derive(Clone, Debug)]
pub struct Attributes {
    /// The expression's token (Envoy), or 0.
    pub token: u32,
    pub paths: Vec<Vec<String>>,
}

/// The CEL expression reading `paths` as text, one per line (`'\n'` appears in no attribute the suite reads);
/// an absent attribute is an empty line.
pub fn attributes_expression(paths: &[&[&str]]) -> String {
    let each: Vec<String> = paths
        .iter()
        .map(|path| {
            let name = path.join(".");
            format!("(has({name}) ? string({name}) : '')")
        })
        .collect();
    each.join(" + '\\n' + ")
}

/// The host is Envoy: every call goes through `proxy_wasm::hostcalls` (which returns `Result`), never the SDK's
/// trait helpers (which unwrap: a panic kills the VM and every later request on that worker fails until reload).
#[derive(Clone, Copy, Debug, Default)]
pub struct WasmHost;

impl Host for WasmHost {
    fn map(&self, map: MapType) -> Result<HeaderMap, Status> {
        hostcalls::get_map_bytes(map)
    }

    fn map_value(&self, map: MapType, name: &str) -> Result<Option<Vec<u8>>, Status> {
        hostcalls::get_map_value_bytes(map, name)
    }

    fn set_map_value(&self, map: MapType, name: &str, value: &str) -> Result<(), Status> {
        hostcalls::set_map_value(map, name, Some(value))
    }

    fn remove_map_value(&self, map: MapType, name: &str) -> Result<(), Status> {
        hostcalls::remove_map_value(map, name)
    }

    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
        hostcalls::get_property(path.to_vec())
    }

    fn set_property(&self, name: &str, value: &[u8]) -> Result<(), Status> {
        hostcalls::set_property(vec![name], Some(value))
    }

    fn send_reply(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), Status> {
        hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body))
    }

    fn reset_stream(&self) -> Result<(), Status> {
        hostcalls::reset_http_request()
    }

    fn close_downstream(&self) -> Result<(), Status> {
        hostcalls::close_downstream()
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        // Envoy hands out a new id for every definition: remember them (one VM is one thread).
        thread_local! {
            static DEFINED: std::cell::RefCell<Vec<(String, u32)>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        if let Some(id) = DEFINED.with(|d| d.borrow().iter().find(|(n, _)| n == name).map(|(_, id)| *id)) {
            return Ok(id);
        }
        let id = hostcalls::define_metric(kind, name)?;
        DEFINED.with(|d| d.borrow_mut().push((name.to_string(), id)));
        Ok(id)
    }

    fn increment_metric(&self, metric: u32, by: i64) -> Result<(), Status> {
        hostcalls::increment_metric(metric, by)
    }

    fn record_metric(&self, metric: u32, value: u64) -> Result<(), Status> {
        hostcalls::record_metric(metric, value)
    }

    fn log(&self, level: LogLevel, message: &str) {
        let _ = hostcalls::log(level, message);
    }

    fn now(&self) -> Result<SystemTime, Status> {
        hostcalls::get_current_time()
    }

    fn random(&self, into: &mut [u8]) -> Result<(), String> {
        getrandom::fill(into).map_err(|e| e.to_string())
    }

    fn prepare_attributes(&self, paths: &[&[&str]]) -> Result<Attributes, Status> {
        let expression = attributes_expression(paths);
        let token = hostcalls::call_foreign_function("expr_create", Some(expression.as_bytes()))?
            .and_then(|bytes| <[u8; 4]>::try_from(bytes.as_slice()).ok())
            .map(u32::from_le_bytes)
            .ok_or(Status::InternalFailure)?;
        let paths = paths.iter().map(|path| path.iter().map(|p| p.to_string()).collect()).collect();
        Ok(Attributes { token, paths })
    }

    fn read_attributes(&self, batch: &Attributes) -> Result<Vec<Option<String>>, Status> {
        let value = hostcalls::call_foreign_function("expr_evaluate", Some(&batch.token.to_le_bytes()))?;
        let text = String::from_utf8_lossy(&value.unwrap_or_default()).into_owned();
        let values: Vec<Option<String>> =
            text.split('\n').map(|v| Some(v.to_string()).filter(|v| !v.is_empty())).collect();
        if values.len() != batch.paths.len() {
            return Err(Status::SerializationFailure);
        }
        Ok(values)
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, Status> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), Some(body), Vec::new(), timeout)
    }

    fn http_call_response_body(&self, max: usize) -> Result<Option<Vec<u8>>, Status> {
        hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpCallResponseBody, 0, max)
    }
}
