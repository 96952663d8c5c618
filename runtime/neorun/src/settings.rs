//! Settings: flags and environment (clap reads both) resolved and checked
//! here, once, into the values the commands use. Nothing below this layer
//! reads the environment or a flag.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use neoc_bundle::sign::TrustedKey;
use neoc_runtime::{Kernels, OpenOptions};

use crate::capture::CaptureSettings;
use crate::cli::{LoadArgs, ServeArgs};
use crate::exit::Failure;
use crate::sigv4::AccessKeys;

/// How to open bundles, from the shared loading flags; `threads` is the
/// command's own.
pub fn open_options(load: &LoadArgs, threads: Option<usize>) -> Result<OpenOptions, Failure> {
    let kernels = match load.kernels.as_str() {
        "own" => Kernels::Own,
        "tract" => Kernels::Tract,
        other => return Err(Failure::Other(anyhow!("--kernels (or NEORUN_KERNELS) {other:?}: use `own` or `tract`"))),
    };
    let mut trusted_keys = Vec::new();
    for p in &load.trusted_keys {
        // a key that cannot be read is the set-up's fault, not the bundle's (exit 1, not 3)
        trusted_keys.push(TrustedKey::from_file(p).map_err(|e| Failure::Other(anyhow!("--trusted-key: {e}")))?);
    }
    if trusted_keys.is_empty() && !load.allow_unsigned {
        return Err(Failure::Other(anyhow!(
            "no trusted key given\nhint: pass --trusted-key KEY.pub (the signer's public key), or --allow-unsigned for unsigned bundles"
        )));
    }
    Ok(OpenOptions {
        trusted_keys,
        allow_unsigned: load.allow_unsigned,
        allow_cpu_fallback: load.cpu_fallback,
        allow_engine_fallback: load.engine_fallback,
        kernels,
        threads: threads.map(|t| t.max(1)),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `neorun serve`, resolved.
pub struct Serve {
    pub bundles: Vec<PathBuf>,
    pub open: OpenOptions,
    pub host: String,
    pub port: u16,
    /// The single model's name, instead of its manifest's.
    pub name: Option<String>,
    /// Inferences at once; `None`: the first bundle's device default.
    pub threads: Option<usize>,
    pub max_queue: usize,
    pub max_body: usize,
    pub timeout: Duration,
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub auth_token: Option<String>,
    pub max_batch: usize,
    pub max_queue_delay: Duration,
    pub variant: String,
    pub log_format: LogFormat,
    pub state_dir: Option<PathBuf>,
    pub async_input_dir: Option<PathBuf>,
    pub serverless_idle: Duration,
    pub multi_model_bytes: u64,
    pub endpoints: Vec<PathBuf>,
    pub alarms: Vec<PathBuf>,
    pub access_keys: Option<AccessKeys>,
    pub sign_data_plane: bool,
    pub region: String,
    pub shadow_threads: usize,
    /// CPUs kept for shadows, and the ones left for live traffic (both
    /// empty without `--shadow-cpus`).
    pub shadow_cpus: Vec<usize>,
    pub live_cpus: Vec<usize>,
    pub capture: CaptureSettings,
    /// `--store`: the model store served, and how its installs are activated.
    pub store: Option<crate::modelstore::serve::StoreSettings>,
}

impl Serve {
    pub fn resolve(a: ServeArgs) -> Result<Serve, Failure> {
        let log_format = match a.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(anyhow!("--log-format {other:?}: use text or json").into()),
        };
        if a.name.is_some() && a.bundles.len() > 1 {
            return Err(
                anyhow!("--name names a single model; with several bundles each is named by its manifest").into()
            );
        }
        for (flag, v) in [("--timeout", a.timeout), ("--header-timeout", a.header_timeout)] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return Err(anyhow!("{flag} {v}: give seconds above 0 and at most a day (86400)").into());
            }
        }
        if a.max_connections == 0 {
            return Err(anyhow!("--max-connections 0: at least one connection must be allowed").into());
        }
        let auth_token = match (a.auth_token, &a.auth_token_file) {
            (Some(t), _) => Some(t),
            (None, Some(p)) => {
                Some(std::fs::read_to_string(p).map_err(|e| anyhow!("{}: {e}", p.display()))?.trim().to_string())
            }
            _ => None,
        };
        if auth_token.as_deref() == Some("") {
            return Err(anyhow!("the auth token is empty").into());
        }
        let threads = a.threads.map(|t| t.max(1));
        let access_keys = a
            .access_keys
            .as_deref()
            .map(AccessKeys::from_file)
            .transpose()
            .map_err(|e| anyhow!("--access-keys {e:#}"))?;
        if !(a.capture_disk_high_water > 0.0 && a.capture_disk_high_water <= 100.0) {
            return Err(anyhow!(
                "--capture-disk-high-water {}: give a percentage above 0 and at most 100",
                a.capture_disk_high_water
            )
            .into());
        }
        if a.capture_rotate_seconds == 0 || a.capture_max_file_bytes == 0 {
            return Err(anyhow!("--capture-rotate-seconds and --capture-max-file-bytes must be above 0").into());
        }
        if !a.region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') || a.region.is_empty() {
            return Err(anyhow!("--region {:?}: lowercase letters, digits and hyphens (us-east-1)", a.region).into());
        }
        if a.name.is_some() && a.bundles.is_empty() {
            return Err(anyhow!(
                "--name names a bundle given on the command line; endpoints name their models in their configuration"
            )
            .into());
        }
        let (shadow_cpus, live_cpus) = match &a.shadow_cpus {
            None => (Vec::new(), Vec::new()),
            Some(list) => {
                let shadow = crate::cpus::parse_list(list).map_err(|e| anyhow!("--shadow-cpus {e}"))?;
                let allowed =
                    crate::cpus::allowed().map_err(|e| anyhow!("--shadow-cpus: reading this process's CPUs: {e}"))?;
                if let Some(c) = shadow.iter().find(|c| !allowed.contains(c)) {
                    return Err(anyhow!(
                        "--shadow-cpus: CPU {c} is not one this process may use (it may use {allowed:?})"
                    )
                    .into());
                }
                let live: Vec<usize> = allowed.into_iter().filter(|c| !shadow.contains(c)).collect();
                if live.is_empty() {
                    return Err(anyhow!("--shadow-cpus {list}: that leaves no CPU for live traffic").into());
                }
                (shadow, live)
            }
        };
        let capture = CaptureSettings {
            max_pending_bytes: a.capture_max_pending_bytes,
            rotate_after: Duration::from_secs(a.capture_rotate_seconds),
            max_file_bytes: a.capture_max_file_bytes,
            disk_high_water: a.capture_disk_high_water / 100.0,
            ..CaptureSettings::default()
        };
        let store = match &a.store {
            None => None,
            Some(dir) => {
                let activation = match &a.activation {
                    None => crate::modelstore::serve::default_activation(),
                    Some(text) => json_or_file("--activation", text)?,
                };
                if !(a.bake_max_error_rate >= 0.0 && a.bake_max_error_rate < 1.0) {
                    return Err(anyhow!(
                        "--bake-max-error-rate {}: give a share from 0 to below 1 (0.01 = 1%)",
                        a.bake_max_error_rate
                    )
                    .into());
                }
                if !(a.bake_max_p99_ms.is_finite() && a.bake_max_p99_ms > 0.0) {
                    return Err(anyhow!("--bake-max-p99-ms {}: give milliseconds above 0", a.bake_max_p99_ms).into());
                }
                Some(crate::modelstore::serve::StoreSettings {
                    dir: dir.clone(),
                    activation,
                    max_error_rate: a.bake_max_error_rate,
                    max_p99_ms: a.bake_max_p99_ms,
                })
            }
        };
        Ok(Serve {
            store,
            state_dir: a.state_dir,
            async_input_dir: a.async_input_dir,
            serverless_idle: Duration::from_secs(a.serverless_idle_seconds.max(1)),
            multi_model_bytes: if a.multi_model_memory_mb.is_finite() && a.multi_model_memory_mb > 0.0 {
                (a.multi_model_memory_mb * (1u64 << 20) as f64) as u64
            } else {
                return Err(anyhow!(
                    "--multi-model-memory-mb {}: give a number of MB above 0",
                    a.multi_model_memory_mb
                )
                .into());
            },
            endpoints: a.endpoints,
            alarms: a.alarms,
            access_keys,
            sign_data_plane: a.sign_data_plane,
            region: a.region,
            shadow_threads: a.shadow_threads.max(1),
            shadow_cpus,
            live_cpus,
            capture,
            open: open_options(&a.load, threads)?,
            bundles: a.bundles,
            host: a.host,
            port: a.port,
            name: a.name,
            threads,
            max_queue: a.max_queue,
            max_body: a.max_body,
            timeout: Duration::from_secs_f64(a.timeout),
            header_timeout: Duration::from_secs_f64(a.header_timeout),
            max_connections: a.max_connections,
            auth_token,
            max_batch: a.max_batch.max(1),
            max_queue_delay: Duration::from_micros(a.max_queue_delay),
            variant: a.variant,
            log_format,
        })
    }
}

/// A flag's JSON: the text itself, or `@FILE`'s contents.
pub fn json_or_file(flag: &str, text: &str) -> anyhow::Result<serde_json::Value> {
    let (body, from) = match text.strip_prefix('@') {
        Some(path) => (std::fs::read_to_string(path).map_err(|e| anyhow!("{flag} {text}: {e}"))?, path.to_string()),
        None => (text.to_string(), "the flag's text".to_string()),
    };
    serde_json::from_str(&body).map_err(|e| anyhow!("{flag}: {from} is not valid JSON: {e}"))
}

/// Installs the stderr log subscriber (`RUST_LOG` filters it; info by default).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match format {
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init(),
        LogFormat::Text => {
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal();
            tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(filter).with_writer(std::io::stderr).init()
        }
    }
}
