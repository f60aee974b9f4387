//! Stages and the module that runs them. A stage (identity, allow-list, redirects, audit) is a library over the
//! [`Host`] seam; a module is a list of stages behind one pair of root ids. The suite runs every configured stage in
//! one filter and one context per request, so each VM crossing serves them all and facts are read once; a separate
//! filter is the same runner with one stage.
//!
//! Failure semantics are per stage: a host call that fails in an enforcing stage ends the request (500, or a reset
//! once the headers have gone) or closes the connection; in an observing stage (audit) it is logged and the request
//! goes on.

use crate::config;
use crate::host::{Host, WasmHost};
use crate::request::{Connection, Request};
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};
use std::rc::Rc;
use std::time::Duration;

/// What a stage lets happen next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// The stage answered (a local reply, a closed connection): no later stage runs and nothing goes upstream.
    Stop,
}

/// A stage of the HTTP filter chain. Every hook has a default that does nothing; a module exports only the callbacks
/// its stages implement (each stage crate lists them in `CALLBACKS`).
pub trait HttpStage {
    fn name(&self) -> &'static str;

    /// An enforcing stage (the default) fails closed; an observing one only logs its failures.
    fn fails_closed(&self) -> bool {
        true
    }

    fn on_request_headers(&self, _host: &dyn Host, _request: &mut Request) -> Result<Step, Status> {
        Ok(Step::Continue)
    }

    fn on_request_trailers(&self, _host: &dyn Host, _request: &mut Request) -> Result<Step, Status> {
        Ok(Step::Continue)
    }

    fn on_response_headers(&self, _host: &dyn Host, _request: &mut Request) -> Result<Step, Status> {
        Ok(Step::Continue)
    }

    fn on_log(&self, _host: &dyn Host, _request: &mut Request) -> Result<(), Status> {
        Ok(())
    }
}

/// A stage of a TLS-passthrough listener's network filter chain.
pub trait TlsStage {
    fn name(&self) -> &'static str;

    fn fails_closed(&self) -> bool {
        true
    }

    fn on_new_connection(&self, _host: &dyn Host, _connection: &mut Connection) -> Result<Step, Status> {
        Ok(Step::Continue)
    }

    fn on_log(&self, _host: &dyn Host, _connection: &mut Connection) -> Result<(), Status> {
        Ok(())
    }
}

/// Work of a worker's root context, which outlives every request: timers and HTTP calls (the audit shipper).
pub trait RootStage {
    /// How often `on_tick` should run; `None`: never.
    fn tick_period(&self) -> Option<Duration>;
    fn on_tick(&self, host: &dyn Host);
    fn on_http_call_response(&self, host: &dyn Host, token: u32, body_size: usize);
}

/// The stages of one configured plugin, in chain order.
#[derive(Default)]
pub struct Pipeline {
    pub http: Vec<Rc<dyn HttpStage>>,
    pub tls: Vec<Rc<dyn TlsStage>>,
    pub root: Vec<Rc<dyn RootStage>>,
    /// Streams need their start time (one clock read each): a stage reports durations.
    pub timed: bool,
    /// What was configured, for the log line `on_configure` writes.
    pub description: String,
}

impl Pipeline {
    /// An empty pipeline; add stages with [`Pipeline::http`], [`Pipeline::tls`], [`Pipeline::root`].
    pub fn new(description: String) -> Pipeline {
        Pipeline { description, ..Pipeline::default() }
    }

    pub fn http(mut self, stage: Rc<dyn HttpStage>) -> Pipeline {
        self.http.push(stage);
        self
    }

    pub fn tls(mut self, stage: Rc<dyn TlsStage>) -> Pipeline {
        self.tls.push(stage);
        self
    }

    pub fn root(mut self, stage: Rc<dyn RootStage>) -> Pipeline {
        self.root.push(stage);
        self
    }

    /// Streams get their start time (for durations).
    pub fn timed(mut self) -> Pipeline {
        self.timed = true;
        self
    }
}

/// Which traffic a plugin of the module handles, chosen by its root id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Http,
    Tls,
}

/// What a module's `build` gets: the host, the plugin's root id and layer, and the size of its configuration (read it
/// with [`config::PluginConfigReader`], [`config::shared_config`] or [`config::plugin_config`]).
pub struct Setup<'a> {
    pub host: &'a dyn Host,
    pub root_id: &'a str,
    pub layer: Layer,
    pub config_size: usize,
}

/// A module: its name (logs, the memory gauge), its root ids, and how it builds its stages.
pub struct Module {
    pub name: &'static str,
    pub http_root_id: Option<&'static str>,
    pub tls_root_id: Option<&'static str>,
    pub build: fn(&Setup<'_>) -> Result<Pipeline, String>,
}

impl Module {
    /// The root context of this module, for `proxy_wasm::set_root_context`.
    pub fn root(&'static self) -> Box<dyn RootContext> {
        Box::new(PipelineRoot { module: self, pipeline: None, kind: None })
    }

    fn layer(&self, root_id: &str) -> Result<Layer, String> {
        match (self.http_root_id, self.tls_root_id) {
            (Some(http), _) if http == root_id => Ok(Layer::Http),
            (_, Some(tls)) if tls == root_id => Ok(Layer::Tls),
            (http, tls) => {
                let known: Vec<String> = http.iter().chain(tls.iter()).map(|id| format!("`{id}`")).collect();
                Err(format!("root id {root_id:?}: use {}", known.join(" or ")))
            }
        }
    }
}

struct PipelineRoot {
    module: &'static Module,
    pipeline: Option<Rc<Pipeline>>,
    kind: Option<ContextType>,
}

impl PipelineRoot {
    fn now_ms(&self) -> Option<u64> {
        let timed = self.pipeline.as_ref().is_some_and(|p| p.timed);
        timed.then(|| crate::unix_ms(&WasmHost).ok()).flatten()
    }
}

impl Context for PipelineRoot {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        for stage in self.pipeline.iter().flat_map(|p| p.root.iter()) {
            stage.on_http_call_response(&WasmHost, token_id, body_size);
        }
    }
}

impl RootContext for PipelineRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let host = WasmHost;
        let name = self.module.name;
        let built = (|| {
            let root_id = config::root_id()?;
            let layer = self.module.layer(&root_id)?;
            let setup = Setup { host: &host, root_id: &root_id, layer, config_size: plugin_configuration_size };
            let pipeline = (self.module.build)(&setup)?;
            Ok::<_, String>((root_id, layer, pipeline))
        })();
        let (root_id, layer, pipeline) = match built {
            Ok(built) => built,
            Err(why) => {
                host.log(LogLevel::Error, &format!("{name}: refusing configuration: {why}"));
                return false;
            }
        };
        let tick = pipeline.root.iter().filter_map(|stage| stage.tick_period()).min();
        if let Some(period) = tick {
            if proxy_wasm::hostcalls::set_tick_period(period).is_err() {
                host.log(LogLevel::Error, &format!("{name}: refusing configuration: cannot start the timer"));
                return false;
            }
        }
        host.log(LogLevel::Info, &format!("{name}: configured {root_id}; {}", pipeline.description));
        self.kind = Some(match layer {
            Layer::Http => ContextType::HttpContext,
            Layer::Tls => ContextType::StreamContext,
        });
        self.pipeline = Some(Rc::new(pipeline));
        config::record_vm_memory(name);
        true
    }

    fn on_tick(&mut self) {
        for stage in self.pipeline.iter().flat_map(|p| p.root.iter()) {
            stage.on_tick(&WasmHost);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        self.kind
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let request = Request::new(self.now_ms());
        Some(Box::new(PipelineHttp { module: self.module.name, pipeline: self.pipeline.clone(), request }))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        let connection = Connection::new(self.now_ms());
        Some(Box::new(PipelineTls { module: self.module.name, pipeline: self.pipeline.clone(), connection }))
    }
}

/// Runs `hook` for each HTTP stage in order until one stops; a failure ends the request if the stage fails closed
/// (with `fail`), else is logged.
pub fn run_http(
    host: &dyn Host,
    module: &str,
    stages: &[Rc<dyn HttpStage>],
    request: &mut Request,
    hook: impl Fn(&dyn HttpStage, &dyn Host, &mut Request) -> Result<Step, Status>,
    fail: impl Fn(&dyn Host, &str),
) -> Step {
    for stage in stages {
        match hook(stage.as_ref(), host, request) {
            Ok(Step::Continue) => {}
            Ok(Step::Stop) => return Step::Stop,
            Err(status) if stage.fails_closed() => {
                fail(host, &format!("{module}: {}: host call failed: {status:?}", stage.name()));
                return Step::Stop;
            }
            Err(status) => {
                host.log(LogLevel::Warn, &format!("{module}: {}: host call failed: {status:?}", stage.name()))
            }
        }
    }
    Step::Continue
}

fn action(step: Step) -> Action {
    match step {
        Step::Continue => Action::Continue,
        Step::Stop => Action::Pause,
    }
}

struct PipelineHttp {
    module: &'static str,
    pipeline: Option<Rc<Pipeline>>,
    request: Request,
}

impl PipelineHttp {
    fn run(
        &mut self,
        hook: impl Fn(&dyn HttpStage, &dyn Host, &mut Request) -> Result<Step, Status>,
        fail: impl Fn(&dyn Host, &str),
    ) -> Action {
        let Some(pipeline) = &self.pipeline else {
            fail(&WasmHost, &format!("{}: not configured", self.module));
            return Action::Pause;
        };
        action(run_http(&WasmHost, self.module, &pipeline.http, &mut self.request, hook, fail))
    }
}

impl Context for PipelineHttp {}

impl HttpContext for PipelineHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let action = self.run(|stage, host, request| stage.on_request_headers(host, request), reply_internal_error);
        // A stage that stops the request has answered it (a refusal, a redirect handed back, an internal error).
        self.request.replied = action == Action::Pause;
        action
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // The headers have gone upstream already: what cannot be vetted must not follow them.
        self.run(|stage, host, request| stage.on_request_trailers(host, request), reset)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The filter's own reply is not the upstream's answer: nothing in it is for the stages to vet (a redirect
        // handed back to the client would otherwise be vetted, and recorded, twice).
        if self.request.replied {
            return Action::Continue;
        }
        self.run(|stage, host, request| stage.on_response_headers(host, request), reply_internal_error)
    }

    fn on_log(&mut self) {
        let Some(pipeline) = &self.pipeline else { return };
        for stage in &pipeline.http {
            if let Err(status) = stage.on_log(&WasmHost, &mut self.request) {
                WasmHost
                    .log(LogLevel::Warn, &format!("{}: {}: host call failed: {status:?}", self.module, stage.name()));
            }
        }
    }
}

struct PipelineTls {
    module: &'static str,
    pipeline: Option<Rc<Pipeline>>,
    connection: Connection,
}

impl Context for PipelineTls {}

impl StreamContext for PipelineTls {
    fn on_new_connection(&mut self) -> Action {
        let Some(pipeline) = &self.pipeline else {
            close(&WasmHost, &format!("{}: not configured", self.module));
            return Action::Pause;
        };
        action(run_tls(&WasmHost, self.module, &pipeline.tls, &mut self.connection))
    }

    fn on_log(&mut self) {
        let Some(pipeline) = &self.pipeline else { return };
        for stage in &pipeline.tls {
            if let Err(status) = stage.on_log(&WasmHost, &mut self.connection) {
                WasmHost
                    .log(LogLevel::Warn, &format!("{}: {}: host call failed: {status:?}", self.module, stage.name()));
            }
        }
    }
}

/// Runs each TLS stage's `on_new_connection` in order until one stops; a failure closes the connection if the stage
/// fails closed, else is logged.
pub fn run_tls(host: &dyn Host, module: &str, stages: &[Rc<dyn TlsStage>], connection: &mut Connection) -> Step {
    for stage in stages {
        match stage.on_new_connection(host, connection) {
            Ok(Step::Continue) => {}
            Ok(Step::Stop) => return Step::Stop,
            Err(status) if stage.fails_closed() => {
                close(host, &format!("{module}: {}: host call failed: {status:?}", stage.name()));
                return Step::Stop;
            }
            Err(status) => {
                host.log(LogLevel::Warn, &format!("{module}: {}: host call failed: {status:?}", stage.name()))
            }
        }
    }
    Step::Continue
}

/// The reply when a stage itself cannot work (a host call failed): 500, logged, never forwarded.
pub fn reply_internal_error(host: &dyn Host, why: &str) {
    host.log(LogLevel::Error, why);
    crate::reply(host, 500, "internal_error", r#"{"error":"egress_filter_error","reason":"internal_error"}"#, &[]);
}

/// Resets the stream, logged: for what fails after the request headers have gone upstream.
fn reset(host: &dyn Host, why: &str) {
    host.log(LogLevel::Error, why);
    let _ = host.reset_stream();
}

/// Closes a connection that cannot be judged, logged: data stops here.
pub fn close(host: &dyn Host, why: &str) {
    host.log(LogLevel::Error, why);
    let _ = host.close_downstream();
}
