//! A recording [`Host`] for unit tests of the stages' glue: it serves the header maps and properties a test sets up,
//! keeps what the stages write (headers, filter state, replies, metrics, logs), and records every call in order, so a
//! test can say exactly which host calls a request costs. Native only in practice: nothing in a module uses it.

use crate::host::{Attributes, HeaderMap, Host};
use proxy_wasm::types::{LogLevel, MapType, MetricType, Status};
use std::cell::RefCell;
use std::time::{Duration, SystemTime};

/// The fake host. Set it up with the builder methods, run a stage, then read what happened.
#[derive(Debug, Default)]
pub struct FakeHost {
    state: RefCell<State>,
}

/// Headers as sent: name, value.
pub type Pairs = Vec<(String, String)>;

/// Everything the fake holds; public for tests that need to look at or change one part directly.
#[derive(Debug, Default)]
pub struct State {
    pub request_headers: HeaderMap,
    pub request_trailers: HeaderMap,
    pub response_headers: HeaderMap,
    pub http_call_response_headers: HeaderMap,
    pub http_call_response_body: Option<Vec<u8>>,
    /// Readable attributes and filter state, by path; `set_property` writes here too (under `[name]`), as Envoy lets
    /// a module read back what it published.
    pub properties: Vec<(Vec<String>, Vec<u8>)>,
    /// Every `set_property`, in order.
    pub published: Vec<(String, Vec<u8>)>,
    /// The local reply, if one was sent: status, headers, body.
    pub reply: Option<(u16, Pairs, Vec<u8>)>,
    pub reset: bool,
    pub closed: bool,
    /// Metric names by id (id = index).
    pub metric_names: Vec<String>,
    pub metric_values: Vec<i64>,
    pub logs: Vec<(LogLevel, String)>,
    pub now: Option<SystemTime>,
    /// Each HTTP call dispatched: cluster, headers, body.
    pub dispatched: Vec<(String, Pairs, Vec<u8>)>,
    /// Every host call, in order, as `name(argument)`.
    pub calls: Vec<String>,
    /// Calls whose name starts with this fail with [`Status::InternalFailure`].
    pub failing: Option<String>,
}

fn map_name(map: MapType) -> &'static str {
    match map {
        MapType::HttpRequestHeaders => "request_headers",
        MapType::HttpRequestTrailers => "request_trailers",
        MapType::HttpResponseHeaders => "response_headers",
        MapType::HttpResponseTrailers => "response_trailers",
        MapType::HttpCallResponseHeaders => "http_call_response_headers",
        _ => "other_map",
    }
}

fn pairs(headers: &[(&str, &str)]) -> HeaderMap {
    headers.iter().map(|(name, value)| (name.to_ascii_lowercase(), value.as_bytes().to_vec())).collect()
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    /// The request's headers (pseudo-headers included), names lowercased as Envoy hands them over.
    pub fn with_request(self, headers: &[(&str, &str)]) -> FakeHost {
        self.state.borrow_mut().request_headers = pairs(headers);
        self
    }

    pub fn with_request_trailers(self, trailers: &[(&str, &str)]) -> FakeHost {
        self.state.borrow_mut().request_trailers = pairs(trailers);
        self
    }

    pub fn with_response(self, headers: &[(&str, &str)]) -> FakeHost {
        self.state.borrow_mut().response_headers = pairs(headers);
        self
    }

    /// Replaces the request's headers (a next request on the same host: a followed redirect's hop).
    pub fn set_request(&self, headers: &[(&str, &str)]) {
        self.state.borrow_mut().request_headers = pairs(headers);
    }

    /// Replaces the response's headers.
    pub fn set_response(&self, headers: &[(&str, &str)]) {
        self.state.borrow_mut().response_headers = pairs(headers);
    }

    pub fn with_property(self, path: &[&str], value: &[u8]) -> FakeHost {
        self.set(path, value);
        self
    }

    /// Makes every call whose recorded name starts with `call` fail.
    pub fn failing(self, call: &str) -> FakeHost {
        self.state.borrow_mut().failing = Some(call.to_string());
        self
    }

    /// Sets a readable property (or replaces it).
    pub fn set(&self, path: &[&str], value: &[u8]) {
        let path: Vec<String> = path.iter().map(|p| p.to_string()).collect();
        let mut state = self.state.borrow_mut();
        state.properties.retain(|(p, _)| *p != path);
        state.properties.push((path, value.to_vec()));
    }

    /// Direct access, for what the builders do not cover.
    pub fn state(&self) -> std::cell::RefMut<'_, State> {
        self.state.borrow_mut()
    }

    /// The calls recorded so far.
    pub fn calls(&self) -> Vec<String> {
        self.state.borrow().calls.clone()
    }

    /// Forgets the calls recorded so far (e.g. after the configuration, to count one request's).
    pub fn clear_calls(&self) {
        self.state.borrow_mut().calls.clear();
    }

    /// The reply sent, if any: status, the `x-egress-denied-reason` header, body.
    pub fn reply(&self) -> Option<(u16, Option<String>, String)> {
        let state = self.state.borrow();
        let (status, headers, body) = state.reply.as_ref()?;
        let reason = headers.iter().find(|(n, _)| n == crate::REASON_HEADER).map(|(_, v)| v.clone());
        Some((*status, reason, String::from_utf8_lossy(body).into_owned()))
    }

    /// Every value of a request header now (after the stages' changes).
    pub fn request_header(&self, name: &str) -> Vec<String> {
        let state = self.state.borrow();
        let values = state.request_headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        values.map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect()
    }

    pub fn request_trailer_names(&self) -> Vec<String> {
        self.state.borrow().request_trailers.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn response_header(&self, name: &str) -> Option<String> {
        let state = self.state.borrow();
        let value = state.response_headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
        value.map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The last value published under `name`.
    pub fn published(&self, name: &str) -> Option<String> {
        let state = self.state.borrow();
        let value = state.published.iter().rev().find(|(n, _)| n == name);
        value.map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// A metric's value by name (counters add up; gauges hold the last value).
    pub fn metric(&self, name: &str) -> Option<i64> {
        let state = self.state.borrow();
        let id = state.metric_names.iter().position(|n| n == name)?;
        state.metric_values.get(id).copied()
    }

    pub fn logs(&self) -> Vec<String> {
        self.state.borrow().logs.iter().map(|(_, message)| message.clone()).collect()
    }

    /// Records a call, failing it when the test asked for that.
    fn call(&self, name: &str, argument: &str) -> Result<(), Status> {
        let call = format!("{name}({argument})");
        let mut state = self.state.borrow_mut();
        let fails = state.failing.as_deref().is_some_and(|failing| call.starts_with(failing));
        state.calls.push(call);
        if fails {
            return Err(Status::InternalFailure);
        }
        Ok(())
    }

    fn map_of(state: &mut State, map: MapType) -> Option<&mut HeaderMap> {
        match map {
            MapType::HttpRequestHeaders => Some(&mut state.request_headers),
            MapType::HttpRequestTrailers => Some(&mut state.request_trailers),
            MapType::HttpResponseHeaders => Some(&mut state.response_headers),
            MapType::HttpCallResponseHeaders => Some(&mut state.http_call_response_headers),
            _ => None,
        }
    }
}

impl Host for FakeHost {
    fn map(&self, map: MapType) -> Result<HeaderMap, Status> {
        self.call("map", map_name(map))?;
        let mut state = self.state.borrow_mut();
        Ok(FakeHost::map_of(&mut state, map).map(|m| m.clone()).unwrap_or_default())
    }

    fn map_value(&self, map: MapType, name: &str) -> Result<Option<Vec<u8>>, Status> {
        self.call("map_value", &format!("{}:{name}", map_name(map)))?;
        let mut state = self.state.borrow_mut();
        let found = FakeHost::map_of(&mut state, map)
            .and_then(|m| m.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()));
        Ok(found)
    }

    fn set_map_value(&self, map: MapType, name: &str, value: &str) -> Result<(), Status> {
        self.call("set_map_value", &format!("{}:{name}", map_name(map)))?;
        let mut state = self.state.borrow_mut();
        if let Some(m) = FakeHost::map_of(&mut state, map) {
            m.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            m.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        }
        Ok(())
    }

    fn remove_map_value(&self, map: MapType, name: &str) -> Result<(), Status> {
        self.call("remove_map_value", &format!("{}:{name}", map_name(map)))?;
        let mut state = self.state.borrow_mut();
        if let Some(m) = FakeHost::map_of(&mut state, map) {
            m.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        }
        Ok(())
    }

    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
        self.call("property", &path.join("."))?;
        let state = self.state.borrow();
        let found = state.properties.iter().find(|(p, _)| p.iter().map(String::as_str).eq(path.iter().copied()));
        Ok(found.map(|(_, v)| v.clone()))
    }

    fn set_property(&self, name: &str, value: &[u8]) -> Result<(), Status> {
        self.call("set_property", name)?;
        self.state.borrow_mut().published.push((name.to_string(), value.to_vec()));
        self.set(&[name], value);
        Ok(())
    }

    fn send_reply(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), Status> {
        self.call("send_reply", &status.to_string())?;
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.state.borrow_mut().reply = Some((status, headers, body.to_vec()));
        Ok(())
    }

    fn reset_stream(&self) -> Result<(), Status> {
        self.call("reset_stream", "")?;
        self.state.borrow_mut().reset = true;
        Ok(())
    }

    fn close_downstream(&self) -> Result<(), Status> {
        self.call("close_downstream", "")?;
        self.state.borrow_mut().closed = true;
        Ok(())
    }

    fn define_metric(&self, _kind: MetricType, name: &str) -> Result<u32, Status> {
        self.call("define_metric", name)?;
        let mut state = self.state.borrow_mut();
        if let Some(id) = state.metric_names.iter().position(|n| n == name) {
            return u32::try_from(id).map_err(|_| Status::InternalFailure);
        }
        state.metric_names.push(name.to_string());
        state.metric_values.push(0);
        u32::try_from(state.metric_names.len() - 1).map_err(|_| Status::InternalFailure)
    }

    fn increment_metric(&self, metric: u32, by: i64) -> Result<(), Status> {
        let name = self.state.borrow().metric_names.get(metric as usize).cloned().unwrap_or_default();
        self.call("increment_metric", &name)?;
        if let Some(value) = self.state.borrow_mut().metric_values.get_mut(metric as usize) {
            *value += by;
        }
        Ok(())
    }

    fn record_metric(&self, metric: u32, value: u64) -> Result<(), Status> {
        let name = self.state.borrow().metric_names.get(metric as usize).cloned().unwrap_or_default();
        self.call("record_metric", &name)?;
        if let Some(slot) = self.state.borrow_mut().metric_values.get_mut(metric as usize) {
            *slot = i64::try_from(value).unwrap_or(i64::MAX);
        }
        Ok(())
    }

    fn log(&self, level: LogLevel, message: &str) {
        let _ = self.call("log", "");
        self.state.borrow_mut().logs.push((level, message.to_string()));
    }

    fn now(&self) -> Result<SystemTime, Status> {
        self.call("now", "")?;
        Ok(self.state.borrow().now.unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_261_742)))
    }

    fn random(&self, into: &mut [u8]) -> Result<(), String> {
        self.call("random", "").map_err(|s| format!("{s:?}"))?;
        into.fill(0x5a);
        Ok(())
    }

    /// The fake needs no expression: a batch reads the fake's properties, as text.
    fn prepare_attributes(&self, paths: &[&[&str]]) -> Result<Attributes, Status> {
        self.call("prepare_attributes", &paths.len().to_string())?;
        Ok(Attributes { token: 0, paths: paths.iter().map(|p| p.iter().map(|s| s.to_string()).collect()).collect() })
    }

    fn read_attributes(&self, batch: &Attributes) -> Result<Vec<Option<String>>, Status> {
        self.call("read_attributes", &batch.paths.len().to_string())?;
        let state = self.state.borrow();
        let values = batch.paths.iter().map(|path| {
            let found = state.properties.iter().find(|(p, _)| p == path);
            found.map(|(_, v)| String::from_utf8_lossy(v).into_owned()).filter(|v| !v.is_empty())
        });
        Ok(values.collect())
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        _timeout: Duration,
    ) -> Result<u32, Status> {
        self.call("dispatch_http_call", cluster)?;
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let mut state = self.state.borrow_mut();
        state.dispatched.push((cluster.to_string(), headers, body.to_vec()));
        u32::try_from(state.dispatched.len()).map_err(|_| Status::InternalFailure)
    }

    fn http_call_response_body(&self, max: usize) -> Result<Option<Vec<u8>>, Status> {
        self.call("http_call_response_body", &max.to_string())?;
        Ok(self.state.borrow().http_call_response_body.as_ref().map(|body| body[..max.min(body.len())].to_vec()))
    }
}
