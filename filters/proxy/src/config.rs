//! What a module does once per configuration, in its root context: read the plugin configuration (streamed, so a
//! large policy is never whole in the VM's memory), share what was built from it between the plugins of one VM,
//! declare request-long properties, and report the VM's memory.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MetricType};
use std::rc::Rc;

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
    let id = hostcalls::get_property(vec!["plugin_root_id"]).map_err(|s| format!("cannot read root id: {s:?}"))?;
    Ok(id.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default())
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
pub fn record_vm_memory(filter: &str) {
    #[cfg(target_arch = "wasm32")]
    let bytes = core::arch::wasm32::memory_size::<0>() * 65536;
    #[cfg(not(target_arch = "wasm32"))]
    let bytes = 0;
    let name = format!("{}_vm_memory_bytes", filter.replace('-', "_"));
    if let Ok(gauge) = hostcalls::define_metric(MetricType::Gauge, &name) {
        let _ = hostcalls::record_metric(gauge, u64::try_from(bytes).unwrap_or(u64::MAX));
    }
}
