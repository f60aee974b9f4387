//! The Wasm plugins' configurations delivered as istiod delivers them: by ECDS (extension config discovery), each
//! plugin's filter in the listeners a reference to a resource that arrives, and changes, on its own.
//!
//! istiod renders every WasmPlugin as a filter with `config_discovery` (HTTP filters in the connection manager,
//! network filters in the listener's chain), the resource named `<namespace>.<name>`, accepting the Wasm filter's
//! type and the RBAC filter's (what Istio's agent substitutes when it cannot fetch the module), from ADS, with
//! `initial_fetch_timeout: 0s`. Here the config source is Envoy's filesystem subscription instead of ADS: one file
//! per resource, holding a `DiscoveryResponse` with one `TypedExtensionConfig`, in a directory of its own that
//! Envoy watches (`path_config_source` with `watched_directory`). What Envoy does with what arrives — validate,
//! build the filter (loading the module, running `on_configure`), apply or reject — is the same code for both
//! subscriptions; only the transport differs.
//!
//! A push ([`Ecds::push`]) is an atomic rename of a complete file into the resource's directory: Envoy reacts to the
//! rename (inotify `IN_MOVED_TO`) and never reads a half-written file. One directory per resource, because a rename
//! into a watched directory makes Envoy re-read every resource watched there.
//!
//! Outcomes are read from the resource's ECDS stats (`extension_config_discovery.<http_filter|network_filter>.
//! <resource>.*`): the subscription's `update_success` / `update_rejected` / `update_failure` (the file was read and
//! handed over / refused), then `config_fail` (refused: the previous configuration keeps serving) or, without it,
//! `config_reload` (the new configuration reached every worker). Envoy counts `config_reload` for a refused
//! configuration too, so `config_fail` decides.
//!
//! With [`Delivery::Ecds`]'s `lds`, the listeners themselves come from a watched file too (LDS, as istiod sends
//! them), so that a test can change a listener while a plugin's configuration is what it is
//! ([`Ecds::push_listeners`]): a new or changed listener builds its filters from each resource's last
//! configuration, which is how a refused policy blocks listener changes.

// Envoy's ECDS and Wasm behaviour this relies on, as read in its sources (`source/common/filter/
// config_discovery_impl.cc`, `source/extensions/config_subscription/filesystem/`, `source/extensions/common/wasm/`)
// and observed by `tests/pushes.rs` on 1.36.2 and 1.40.0:
// - a refused resource is counted (`update_rejected`, `config_fail`) and logged ("Filesystem config update
//   rejected: Unable to create Wasm plugin <name>", after the plugin's own log of why), and the filter keeps its
//   previous configuration;
// - Envoy remembers the refused configuration as the last one it was handed: pushing it again is skipped as
//   unchanged and counted as a successful update only;
// - a first configuration that is refused still ends the listeners' wait (`initial_fetch_timeout: 0s` or not):
//   they serve, with no configuration for the filter;
// - the refused configuration is also what `/config_dump?resource=ecds_filters` shows, and what a listener added
//   or changed afterwards is built with (`FilterConfigProviderManagerImplBase::applyLastOrDefaultConfig`): the
//   listener is refused.

use crate::bootstrap::{wasm_filter, Gateway, Routing};
use crate::envoy::Envoy;
use crate::istio::DeployedPlugin;
use crate::pki::Error;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use std::{fs, thread};

/// The type of every ECDS resource.
pub const TYPED_EXTENSION_CONFIG_TYPE: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// The filter types an HTTP plugin's resource may have, as istiod lists them (`type_urls`).
pub const HTTP_TYPES: [&str; 2] = [
    "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
];
/// The filter types a network plugin's resource may have.
pub const NETWORK_TYPES: [&str; 2] = [
    "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
];

/// The file in each resource's directory that Envoy reads.
const RESOURCE_FILE: &str = "resource.json";
/// The type of every LDS resource.
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// The directory, under an [`Ecds`] root, of the listeners' file (a name no plugin has: plugins are
/// `<namespace>.<name>`).
const LDS_DIRECTORY: &str = "lds";

/// How long a push may take to be read and applied: building a filter loads the module (cached after the first)
/// and runs `on_configure` once on a throwaway VM and once per worker, for a 100k-rule policy a second or two on a
/// loaded machine.
const PUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// How the Wasm plugins' configurations reach a lab's gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Delivery {
    /// In the listeners, with the filters (the harness's default).
    #[default]
    Inline,
    /// By ECDS, from watched files ([`Ecds`]). The first push of each plugin carries the configuration the lab's
    /// options give it, except for the root ids listed in `first`, whose first push carries the configuration given
    /// there (a cold start with a configuration Envoy refuses). With `lds`, the listeners are not in the bootstrap
    /// but delivered by LDS from a watched file too, and may be changed ([`Ecds::push_listeners`]).
    Ecds { first: Vec<(String, String)>, lds: bool },
}

/// What Envoy did with a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted and in use on every worker (`config_reload`; for listeners, the update accepted and warmed).
    Applied,
    /// Refused (`config_fail`; for listeners, `update_rejected`): the configuration in use before stays in use.
    Rejected,
}

/// What `/config_dump?resource=ecds_filters` shows for a resource: the configuration Envoy was last handed, which
/// is not necessarily the one that serves (a refused one shows too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dumped {
    /// The `version_info` of the last push Envoy processed for it, refused or not (one skipped as unchanged does not
    /// count); the harness numbers its pushes 1, 2, … ([`Ecds::version`]).
    pub version: String,
    /// Its Wasm plugin configuration (`pluginConfig`); `None` for a resource that is not a Wasm filter (RBAC).
    pub plugin_config: Option<String>,
}

/// A resource's ECDS counters, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// The file was read and its resource handed over (`update_success`).
    pub accepted: u64,
    /// The file was read, or could not be, and its resource refused (`update_rejected` + `update_failure`).
    pub refused: u64,
    /// An update finished (`config_reload`): a configuration reached every worker, or Envoy released what it had
    /// set up for one it then refused.
    pub reloaded: u64,
    /// A configuration was refused (`config_fail`).
    pub failed: u64,
}

/// The ECDS resources of one gateway: a directory per plugin under one root.
#[derive(Debug)]
pub struct Ecds {
    root: PathBuf,
    plugins: Vec<DeployedPlugin>,
    version: AtomicU64,
    /// Whether the listeners are delivered by LDS, from `<root>/lds`.
    lds: bool,
}

impl Ecds {
    /// The resources of every plugin of `gateway`, under `root` (created), each with its first push written: the
    /// plugin's configuration, or the one `first` gives for its root id. With `lds`, [`Ecds::render`] delivers the
    /// listeners by LDS.
    pub fn create(root: &Path, gateway: &Gateway, first: &[(String, String)], lds: bool) -> Result<Ecds, Error> {
        fs::create_dir_all(root)?;
        let plugins: Vec<DeployedPlugin> = gateway.http_plugins.iter().chain(&gateway.tls_plugins).cloned().collect();
        let ecds = Ecds { root: root.to_path_buf(), plugins, version: AtomicU64::new(0), lds };
        for (root_id, _) in first {
            ecds.plugin(root_id)?;
        }
        for plugin in &ecds.plugins {
            fs::create_dir_all(ecds.directory(plugin))?;
            let config = first.iter().find(|(root_id, _)| *root_id == plugin.root_id).map(|(_, config)| config);
            let config = config.unwrap_or(&plugin.config);
            ecds.write(plugin, wasm_typed_config(plugin, config))?;
        }
        Ok(ecds)
    }

    /// The bootstrap of `gateway` with `routing`, each Wasm filter a reference to its resource here. With LDS, the
    /// listeners move from the bootstrap to their file (written here, as their first push) and the bootstrap
    /// subscribes to it, as istiod's bootstrap subscribes to LDS over ADS.
    pub fn render(&self, gateway: &Gateway, routing: &Routing) -> Result<Value, Error> {
        let mut bootstrap = gateway.render_with_wasm(routing, &|plugin| self.filter(plugin));
        if !self.lds {
            return Ok(bootstrap);
        }
        let listeners = bootstrap["static_resources"]
            .as_object_mut()
            .and_then(|resources| resources.remove("listeners"))
            .ok_or("a bootstrap without listeners")?;
        let listeners = listeners.as_array().ok_or("a bootstrap whose listeners are not a list")?;
        fs::create_dir_all(self.lds_directory())?;
        self.write_listeners(listeners)?;
        bootstrap["dynamic_resources"] = json!({
            "lds_config": {
                "path_config_source": {
                    "path": self.lds_directory().join(RESOURCE_FILE),
                    "watched_directory": {"path": self.lds_directory()},
                },
                "resource_api_version": "V3",
            },
        });
        Ok(bootstrap)
    }

    /// The listeners as last pushed by LDS (each with its `@type`), to change and push again.
    pub fn listeners(&self) -> Result<Vec<Value>, Error> {
        if !self.lds {
            return Err("the listeners of this gateway are not delivered by LDS".into());
        }
        let response: Value = serde_json::from_str(&fs::read_to_string(self.lds_directory().join(RESOURCE_FILE))?)?;
        Ok(response["resources"].as_array().cloned().unwrap_or_default())
    }

    /// Pushes `listeners` (every listener of the gateway: the file is the whole state, as an LDS response is) and
    /// waits for Envoy's verdict: the update refused (`listener_manager.lds.update_rejected`), or accepted and every
    /// changed listener warmed (`listener_manager.total_listeners_warming` back to 0). A push equal to the listeners
    /// in use changes nothing and is reported as applied.
    pub fn push_listeners(&self, envoy: &Envoy, listeners: &[Value]) -> Result<Outcome, Error> {
        let read = |stat: &str| envoy.stat(&format!("listener_manager.lds.{stat}")).unwrap_or(0);
        let verdict = || (read("update_success"), read("update_rejected").saturating_add(read("update_failure")));
        let (accepted, refused) = verdict();
        self.write_listeners(listeners)?;
        let deadline = Instant::now() + PUSH_TIMEOUT;
        loop {
            let (now_accepted, now_refused) = verdict();
            if now_refused > refused {
                return Ok(Outcome::Rejected);
            }
            if now_accepted > accepted && envoy.stat("listener_manager.total_listeners_warming").unwrap_or(0) == 0 {
                return Ok(Outcome::Applied);
            }
            if Instant::now() > deadline {
                return Err(format!("no verdict on a listener push in {PUSH_TIMEOUT:?}").into());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The filter standing for `plugin` in its listeners' chains, as istiod writes it: named after the resource,
    /// its configuration discovered. The HTTP and mTLS listeners refer to the same resource by the same config
    /// source: Envoy keeps one subscription for both, so one push reaches both.
    pub fn filter(&self, plugin: &DeployedPlugin) -> Value {
        let types: &[&str] = if plugin.network { &NETWORK_TYPES } else { &HTTP_TYPES };
        json!({
            "name": plugin.name,
            "config_discovery": {
                "config_source": {
                    "path_config_source": {
                        "path": self.directory(plugin).join(RESOURCE_FILE),
                        "watched_directory": {"path": self.directory(plugin)},
                    },
                    "resource_api_version": "V3",
                    // istiod's: wait for the first configuration however long it takes (a filter that may be
                    // critical for security must not start without one).
                    "initial_fetch_timeout": "0s",
                },
                "type_urls": types,
            },
        })
    }

    /// The plugin with `root_id`.
    pub fn plugin(&self, root_id: &str) -> Result<&DeployedPlugin, Error> {
        self.plugins
            .iter()
            .find(|plugin| plugin.root_id == root_id)
            .ok_or_else(|| format!("no plugin {root_id} is delivered by ECDS here").into())
    }

    /// The name of the ECDS stat `stat` of the resource of the plugin with `root_id` (`config_reload`,
    /// `config_fail`, `update_rejected`, …).
    pub fn stat_name(&self, root_id: &str, stat: &str) -> Result<String, Error> {
        let plugin = self.plugin(root_id)?;
        let kind = if plugin.network { "network_filter" } else { "http_filter" };
        Ok(format!("extension_config_discovery.{kind}.{}.{stat}", plugin.name))
    }

    /// The counters of the resource of the plugin with `root_id`, now (a counter Envoy has not created yet is 0).
    pub fn counters(&self, envoy: &Envoy, root_id: &str) -> Result<Counters, Error> {
        let read = |stat: &str| -> Result<u64, Error> { Ok(envoy.stat(&self.stat_name(root_id, stat)?).unwrap_or(0)) };
        Ok(Counters {
            accepted: read("update_success")?,
            refused: read("update_rejected")?.saturating_add(read("update_failure")?),
            reloaded: read("config_reload")?,
            failed: read("config_fail")?,
        })
    }

    /// Pushes `config` as the `pluginConfig` of the plugin with `root_id` (the rest of its Wasm configuration as
    /// deployed) and waits for Envoy's verdict.
    pub fn push(&self, envoy: &Envoy, root_id: &str, config: &str) -> Result<Outcome, Error> {
        let plugin = self.plugin(root_id)?;
        self.push_typed(envoy, root_id, wasm_typed_config(plugin, config))
    }

    /// Pushes `typed_config` (a Wasm filter's configuration, or an RBAC filter's as Istio's agent substitutes for a
    /// module it could not fetch) as the resource of the plugin with `root_id`, and waits for Envoy's verdict.
    ///
    /// A push must differ from the last configuration Envoy took up for this resource, applied or refused: Envoy
    /// skips a resource whose configuration hashes as the last one it was handed, and reports nothing but a
    /// successful update (see [`Ecds::post`]). That case ends in an error here, after a minute.
    pub fn push_typed(&self, envoy: &Envoy, root_id: &str, typed_config: Value) -> Result<Outcome, Error> {
        let before = self.counters(envoy, root_id)?;
        self.post(root_id, typed_config)?;
        // A refusal counts `config_fail` and, as Envoy releases what it had set up for the refused configuration,
        // `config_reload` too, in the same main-thread event: `config_fail` decides. A configuration that was
        // applied counts `config_reload` alone, once every worker has it.
        let after = self
            .await_counters(envoy, root_id, |now| now.failed > before.failed || now.reloaded > before.reloaded)
            .map_err(|e| format!("{e} (the same configuration as the last one Envoy was handed?)"))?;
        Ok(if after.failed > before.failed { Outcome::Rejected } else { Outcome::Applied })
    }

    /// Writes `typed_config` as the resource of the plugin with `root_id` and returns without waiting: for pushes
    /// whose effect is not one of [`Outcome`]'s, such as one Envoy skips because it is the configuration it was
    /// last handed (its `update_success` counts, nothing else does).
    pub fn post(&self, root_id: &str, typed_config: Value) -> Result<(), Error> {
        self.write(self.plugin(root_id)?, typed_config)
    }

    /// The version of the last push (of any resource, listeners included): pushes are numbered 1, 2, … in order.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// What Envoy's `/config_dump?resource=ecds_filters` shows for the resource of the plugin with `root_id`.
    pub fn dumped(&self, envoy: &Envoy, root_id: &str) -> Result<Dumped, Error> {
        let name = &self.plugin(root_id)?.name;
        let dump: Value = serde_json::from_str(&envoy.admin_get("/config_dump?resource=ecds_filters")?)?;
        let entry = dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|entry| entry["ecds_filter"]["name"] == name.as_str())
            .ok_or_else(|| format!("no ECDS resource {name} in Envoy's config dump"))?;
        let plugin_config = entry["ecds_filter"]["typed_config"]["config"]["configuration"]["value"].as_str();
        Ok(Dumped {
            version: entry["version_info"].as_str().unwrap_or_default().to_string(),
            plugin_config: plugin_config.map(str::to_string),
        })
    }

    /// Waits until the counters of the resource of the plugin with `root_id` satisfy `until`, and returns them.
    pub fn await_counters(
        &self,
        envoy: &Envoy,
        root_id: &str,
        until: impl Fn(&Counters) -> bool,
    ) -> Result<Counters, Error> {
        let deadline = Instant::now() + PUSH_TIMEOUT;
        loop {
            let now = self.counters(envoy, root_id)?;
            if until(&now) {
                return Ok(now);
            }
            if Instant::now() > deadline {
                let name = &self.plugin(root_id)?.name;
                return Err(format!("the ECDS counters of {name} stayed at {now:?} for {PUSH_TIMEOUT:?}").into());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes the resource file of `plugin` with `typed_config`.
    fn write(&self, plugin: &DeployedPlugin, typed_config: Value) -> Result<(), Error> {
        let resource = json!({
            "@type": TYPED_EXTENSION_CONFIG_TYPE,
            "name": plugin.name,
            "typed_config": typed_config,
        });
        self.write_response(&self.directory(plugin), vec![resource])
    }

    /// Writes the listeners' file with `listeners`, each given its `@type`.
    fn write_listeners(&self, listeners: &[Value]) -> Result<(), Error> {
        let mut resources = listeners.to_vec();
        for listener in &mut resources {
            listener["@type"] = Value::from(LISTENER_TYPE);
        }
        self.write_response(&self.lds_directory(), resources)
    }

    /// Writes a `DiscoveryResponse` of `resources` as the file Envoy watches in `directory`, by a rename of a
    /// complete file into it: Envoy sees the old file or the new one, never a part.
    fn write_response(&self, directory: &Path, resources: Vec<Value>) -> Result<(), Error> {
        let version = self.version.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let response = json!({"version_info": version.to_string(), "resources": resources});
        // Written outside the watched directory (a file appearing there is not a push), renamed into it.
        let name = directory.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        let staged = self.root.join(format!(".{name}.{version}.json"));
        fs::write(&staged, response.to_string())?;
        fs::rename(&staged, directory.join(RESOURCE_FILE))?;
        Ok(())
    }

    fn directory(&self, plugin: &DeployedPlugin) -> PathBuf {
        self.root.join(&plugin.name)
    }

    fn lds_directory(&self) -> PathBuf {
        self.root.join(LDS_DIRECTORY)
    }
}

/// The Wasm filter configuration of `plugin` with `config` as its plugin configuration: what istiod sends as the
/// resource.
pub fn wasm_typed_config(plugin: &DeployedPlugin, config: &str) -> Value {
    let mut typed_config = wasm_filter(plugin)["typed_config"].take();
    typed_config["config"]["configuration"]["value"] = Value::from(config);
    typed_config
}

/// The RBAC filter configuration Istio's agent pushes in place of a plugin whose module it cannot fetch
/// (`pkg/wasm/convert.go`): allow everything for FAIL_OPEN, deny everything for FAIL_CLOSE.
pub fn rbac_typed_config(network: bool, allow: bool) -> Value {
    let prefix = if allow { "wasm-default-allow" } else { "wasm-default-deny" };
    let mut rbac = if network {
        json!({"@type": NETWORK_TYPES[1], "stat_prefix": prefix})
    } else {
        json!({"@type": HTTP_TYPES[1], "rules_stat_prefix": prefix})
    };
    if !allow {
        // Rules without policies: nothing matches an ALLOW list, so everything is denied.
        rbac["rules"] = json!({});
    }
    rbac
}
