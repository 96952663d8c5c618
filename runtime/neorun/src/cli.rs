//! The command line, as clap types: what each flag is called and says in
//! `--help`. Turning flags into validated settings is `settings.rs`'s job.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::exit::EXIT_HELP;

#[derive(Parser)]
#[command(name = "neorun", version, about = "Verify and run neoc bundles", after_help = EXIT_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// How bundles are opened: who is trusted, which fallbacks are allowed,
/// whose kernels run.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Public key (minisign .pub) trusted to sign bundles; repeatable
    #[arg(long = "trusted-key", value_name = "PUB", env = "NEORUN_TRUSTED_KEY")]
    pub trusted_keys: Vec<PathBuf>,
    /// Run bundles that carry no signature (signed ones are still checked)
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Run an accelerator bundle (CUDA, Neuron) on the CPU, with the CPU model it carries, when this neorun cannot drive the accelerator
    #[arg(long)]
    pub cpu_fallback: bool,
    /// Run an OpenVINO or onnxruntime bundle with the tract model it carries when that engine cannot be loaded here (missing or too old)
    #[arg(long)]
    pub engine_fallback: bool,
    /// Whose kernels run tract models: `own` (neorun's convolution, matrix-product, pooling and LRN kernels where they apply) or `tract` (tract's everywhere, to compare or to rule ours out)
    #[arg(long, env = "NEORUN_KERNELS", default_value = "own", value_name = "own|tract")]
    pub kernels: String,
}

#[derive(Subcommand)]
pub enum Command {
    /// Answer one request: read it from a file or stdin, print the result on stdout
    Predict(PredictArgs),
    /// Serve bundles and endpoints over HTTP: SageMaker's inference contract and control plane, and the Open Inference Protocol v2
    Serve(Box<ServeArgs>),
    /// A container's entry point: `serve` serves every bundle the platform put in the model directory, on 0.0.0.0:8080 (SageMaker's bring-your-own-container contract; KServe's ServingRuntime)
    Container(ContainerArgs),
    /// Batch transform with SageMaker's semantics: every object (file) under --input, one output line per record, in input order
    Batch(BatchArgs),
    /// Measure in-process latency and throughput on the bundle's test vectors
    Bench(BenchArgs),
    /// Verify a bundle, load it and run its test vectors (the device health check)
    Check(CheckArgs),
    /// Drive a running server's endpoints without AWS tools: update (guarded), roll back, describe, wait
    Endpoint(EndpointArgs),
    /// Read the control plane's journal: from a running server, or straight from a state directory (or a model store)
    Journal(JournalArgs),
    /// Install a bundle (a file or oci://REF) into the device's model store: verified and self-tested before anything in the store changes
    Install(InstallArgs),
    /// The model store: each model's active, previous and trial versions, its state and last event
    Status(StatusArgs),
    /// Roll a model back: drop its trial (pending or baking), or, with none, make the previous version active again
    Rollback(StoreModelArgs),
    /// Commit a model's trial: activate it at once when no server serves the store; with one, wait for its bake to commit or roll back
    Commit(CommitArgs),
    /// Remove the slots no pointer names (keeps active, previous and any trial) and leftovers of interrupted installs
    Gc(StoreArgs),
}

/// Which model store.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// The model store
    #[arg(long, env = "NEORUN_STORE", default_value = crate::modelstore::DEFAULT_STORE, value_name = "DIR")]
    pub store: PathBuf,
    /// Wait this long for another change to the store to end before giving up (seconds)
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    pub lock_wait: f64,
}

#[derive(clap::Args)]
pub struct InstallArgs {
    /// A bundle file, or oci://REGISTRY/REPO:TAG (pulled with digest checks; resumed if interrupted)
    pub bundle: String,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Install a version that is not newer than the active one (journaled)
    #[arg(long)]
    pub allow_downgrade: bool,
    /// With a server serving the store: wait until the new version commits (exit 0) or is rolled back (exit 1)
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// One JSON document (for fleet agents: Greengrass, cron, scripts)
    #[arg(long, conflicts_with = "inventory")]
    pub json: bool,
    /// `key=value` lines, as a Mender inventory script prints them (neorun_MODEL_active=VERSION, _previous, _state, _last_event)
    #[arg(long)]
    pub inventory: bool,
}

#[derive(clap::Args)]
pub struct StoreModelArgs {
    /// The model (may be left out when the store holds one)
    pub model: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only undo this version: drop it if it is the trial, make the previous version active if it is the active one, else do nothing (what an update module's rollback wants)
    #[arg(long, value_name = "VERSION")]
    pub from: Option<String>,
}

#[derive(clap::Args)]
pub struct CommitArgs {
    /// The model (may be left out when the store holds one)
    pub model: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Give up waiting for a bake after this many seconds
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

/// Where the server is and how to authenticate to it.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// The server's address
    #[arg(long, env = "NEORUN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The server's --auth-token (sent as a bearer token)
    #[arg(long, env = "NEORUN_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
}

#[derive(clap::Args)]
pub struct EndpointArgs {
    #[command(subcommand)]
    pub command: EndpointCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Subcommand)]
pub enum EndpointCommand {
    /// UpdateEndpoint: move NAME to CONFIG, guarded by a DeploymentConfig (blue/green, canary or linear) when one is given
    Update {
        name: String,
        /// The endpoint configuration to move to
        #[arg(long)]
        config: String,
        /// A DeploymentConfig: JSON text, or @FILE
        #[arg(long)]
        deployment_config: Option<String>,
        /// Keep the serving variants' weights and data capture (RetainAllVariantProperties)
        #[arg(long)]
        retain_all_variant_properties: bool,
        /// Reuse the endpoint's last DeploymentConfig (RetainDeploymentConfig)
        #[arg(long)]
        retain_deployment_config: bool,
        /// Wait until the update ends, printing each change of state; exit 1 if it was rolled back or failed
        #[arg(long)]
        wait: bool,
    },
    /// Stop a guarded update and move all traffic back to the serving (blue) configuration at once
    Rollback { name: String },
    /// DescribeEndpoint
    Describe { name: String },
    /// DescribeInferenceExperiment, with the side-by-side metrics (which boto3 drops: they are neorun's own field)
    Experiment { name: String },
    /// Wait until NAME is InService (exit 1 if it ends Failed or carries a FailureReason)
    Wait {
        name: String,
        /// Give up after this many seconds
        #[arg(long, default_value = "3600")]
        timeout: u64,
    },
}

#[derive(clap::Args)]
pub struct JournalArgs {
    /// Only entries about this endpoint, model, configuration or alarm
    #[arg(long)]
    pub name: Option<String>,
    /// Only this operation or event (UpdateEndpoint, DeploymentStep, DeploymentRolledBack, AlarmStateChange, …)
    #[arg(long)]
    pub op: Option<String>,
    /// Only entries at or after this time (ISO 8601, UTC, as the entries carry it)
    #[arg(long)]
    pub since: Option<String>,
    /// Read this state directory's journal instead of asking a server (a model store's directory works too)
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args)]
pub struct PredictArgs {
    pub bundle: PathBuf,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Request body; `-` for stdin
    #[arg(long, short, default_value = "-")]
    pub input: String,
    /// Request format: csv, json, text/csv, application/json (default: from the file name or content)
    #[arg(long)]
    pub content_type: Option<String>,
    /// Response format: json or csv
    #[arg(long, default_value = "json")]
    pub accept: String,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    pub bundle: PathBuf,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(clap::Args)]
pub struct BatchArgs {
    pub bundle: PathBuf,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Input: a file, a directory whose every file (recursively) is an object to transform, or s3://BUCKET/PREFIX (every object whose key starts with PREFIX)
    #[arg(long, short)]
    pub input: String,
    /// Output: a directory or s3://BUCKET/PREFIX; `<object>.out` for each input object, written whole or not at all
    #[arg(long, short)]
    pub output: String,
    /// ContentType of the input: text/csv, application/jsonlines; with --split-type none also application/json, application/x-npy (default: from the file names, else CSV)
    #[arg(long)]
    pub content_type: Option<String>,
    /// CompressionType: none, or gzip (every input object is gzip)
    #[arg(long, value_enum, ignore_case = true, default_value = "none")]
    pub compression_type: Compression,
    /// SplitType: line (each line a record), or none (each object one request)
    #[arg(long, value_enum, ignore_case = true, default_value = "line")]
    pub split_type: SplitType,
    /// BatchStrategy: multi-record (as many records per run as MaxPayloadInMB and --max-records allow) or single-record
    #[arg(long, value_enum, ignore_case = true, default_value = "multi-record")]
    pub batch_strategy: BatchStrategy,
    /// MaxPayloadInMB: the largest run (and record) in MB, at most 100; 0: no limit
    #[arg(long, default_value_t = 6)]
    pub max_payload_in_mb: usize,
    /// MaxConcurrentTransforms: model runs at once (default: the CPUs this process may use)
    #[arg(long)]
    pub max_concurrent_transforms: Option<usize>,
    /// Accept: the output format, text/csv, application/jsonlines or application/json (default: the input's)
    #[arg(long)]
    pub accept: Option<String>,
    /// AssembleWith: line (each record's answer on its own line) or none (answers as the model's encoder writes them)
    #[arg(long, value_enum, ignore_case = true, default_value = "line")]
    pub assemble_with: AssembleWith,
    /// DataProcessing InputFilter: a JSONPath selecting what the model gets, e.g. '$[1:]' (drop an ID column), '$.features'
    #[arg(long)]
    pub input_filter: Option<String>,
    /// DataProcessing JoinSource: none, or input (each output line is the input record with its answer)
    #[arg(long, value_enum, ignore_case = true, default_value = "none")]
    pub join_source: JoinSource,
    /// DataProcessing OutputFilter: a JSONPath selecting what is written, e.g. '$[0,-1]' (the ID and the last answer column)
    #[arg(long)]
    pub output_filter: Option<String>,
    /// Report records the model cannot take in `<object>.out.errors.jsonl` and write an empty line for each, instead of failing the job
    #[arg(long)]
    pub skip_malformed: bool,
    /// Records per model run, at most
    #[arg(long, default_value_t = 1024)]
    pub max_records: usize,
    /// Inference threads per run
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// No progress bar
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitType {
    Line,
    None,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchStrategy {
    #[value(alias = "multirecord")]
    MultiRecord,
    #[value(alias = "singlerecord")]
    SingleRecord,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssembleWith {
    Line,
    None,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinSource {
    None,
    Input,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    pub bundle: PathBuf,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Inference threads
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Rows per run (models with a symbolic batch axis; test rows are repeated to fill it)
    #[arg(long)]
    pub batch: Option<usize>,
    /// Timed runs
    #[arg(long, default_value_t = 200)]
    pub iterations: usize,
    /// Untimed runs first
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Print one JSON document
    #[arg(long)]
    pub json: bool,
    /// Try thread counts 1..=CPUs and batches 1, 8, 64, 256 (symbolic-batch models), and recommend the best for latency and for throughput
    #[arg(long)]
    pub sweep: bool,
    /// Time every operator of a tract model over the timed runs and print the slowest, with tract's description of each (kernel, shapes) and the time per operator type
    #[arg(long, conflicts_with = "sweep")]
    pub profile: bool,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Bundles to serve; each is named by its manifest (the first answers /invocations). Optional with --state-dir, --endpoint or --store
    #[arg(required_unless_present_any = ["state_dir", "endpoints", "store"])]
    pub bundles: Vec<PathBuf>,
    /// Serve the model store's active versions (each model is an endpoint of its name, and answers /invocations and /v2/models/NAME too); new installs are activated as guarded updates and committed only after a bake without alarms
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// The DeploymentConfig of store activations: JSON text or @FILE (default: 10% canary for 30 s, then all for 30 s); its AutoRollbackConfiguration alarms join the store's own
    #[arg(long, value_name = "JSON|@FILE", requires = "store")]
    pub activation: Option<String>,
    /// Store activations: the new version's share of 5xx answers per second that fails its bake
    #[arg(long, default_value_t = 0.01, requires = "store")]
    pub bake_max_error_rate: f64,
    /// Store activations: the new version's p99 model latency (ms, over 2-second periods) that fails its bake
    #[arg(long, default_value_t = 1000.0, requires = "store")]
    pub bake_max_p99_ms: f64,
    /// Keep the control plane's models, endpoint configurations and endpoints here (created if missing); they come back after a restart
    #[arg(long, env = "NEORUN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Asynchronous invocations may read their input (X-Amzn-SageMaker-InputLocation) from local files under this directory (s3:// inputs need no flag)
    #[arg(long, value_name = "DIR", requires = "state_dir")]
    pub async_input_dir: Option<PathBuf>,
    /// Serverless variants (ServerlessConfig) unload their model after this many seconds without a request, unless ProvisionedConcurrency is set
    #[arg(long, default_value_t = 300, value_name = "S")]
    pub serverless_idle_seconds: u64,
    /// Multi-model variants (Mode MultiModel) keep the most recently used bundles loaded within this much memory (a bundle counts its file size)
    #[arg(long, default_value_t = 2048.0, value_name = "MB")]
    pub multi_model_memory_mb: f64,
    /// Declare an endpoint: a CreateEndpointConfig JSON body plus `Models` (CreateModel bodies) and optionally `EndpointName`; repeatable; SIGHUP re-reads them
    #[arg(long = "endpoint", value_name = "FILE")]
    pub endpoints: Vec<PathBuf>,
    /// Alarms for guarded rollouts: a JSON list of CloudWatch PutMetricAlarm bodies (`"External": true` for one Alertmanager drives); applied at start
    #[arg(long = "alarms", value_name = "FILE")]
    pub alarms: Vec<PathBuf>,
    /// AWS shared-credentials file whose access keys may sign requests (SigV4); the control plane (POST /, the SageMaker API) needs these or --auth-token
    #[arg(long, env = "NEORUN_ACCESS_KEYS", value_name = "FILE")]
    pub access_keys: Option<PathBuf>,
    /// Require a SigV4 signature (or the bearer token) on inference requests too
    #[arg(long, requires = "access_keys")]
    pub sign_data_plane: bool,
    /// Region named in the ARNs the control plane returns
    #[arg(long, default_value = "local")]
    pub region: String,
    /// Threads for shadow variants (SCHED_IDLE: live traffic always preempts them; a copy that finds them all busy is shed). Keep it below the number of CPUs: a spare thread on every CPU measurably raised the caller's p99
    #[arg(long, default_value_t = 1)]
    pub shadow_threads: usize,
    /// Keep these CPUs (3, or 2-3) for shadow variants: the spare threads run only there and live traffic never does — the one-machine form of SageMaker's separate shadow instances (live traffic gets the other CPUs)
    #[arg(long, value_name = "CPUS")]
    pub shadow_cpus: Option<String>,
    /// Data capture: bytes of records waiting to be written, at most; beyond, records are dropped and counted
    #[arg(long, default_value_t = 64 << 20)]
    pub capture_max_pending_bytes: usize,
    /// Data capture: start a new file after this many seconds
    #[arg(long, default_value_t = 300)]
    pub capture_rotate_seconds: u64,
    /// Data capture: start a new file at this size, in bytes
    #[arg(long, default_value_t = 64 << 20)]
    pub capture_max_file_bytes: u64,
    /// Data capture pauses while the destination's disk is fuller than this percentage (resumes by itself)
    #[arg(long, default_value_t = 90.0)]
    pub capture_disk_high_water: f64,
    #[command(flatten)]
    pub load: LoadArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port; 0 picks a free one (printed on stdout)
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Name of the (single) model, instead of the manifest's
    #[arg(long)]
    pub name: Option<String>,
    /// Inferences running at once (default: the first bundle's device default, at most this host's CPUs)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Requests allowed to wait for an inference slot; beyond, 503 with Retry-After
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Largest request body, in bytes
    #[arg(long, default_value_t = 6 * 1024 * 1024)]
    pub max_body: usize,
    /// Request timeout, in seconds (fractions allowed: 0.5)
    #[arg(long, default_value = "60")]
    pub timeout: f64,
    /// How long a connection may take to send a request's headers, and stay idle between requests, in seconds; then it is closed
    #[arg(long, default_value = "30")]
    pub header_timeout: f64,
    /// Connections open at once; beyond, new ones are closed at once (keep it under the process's file-descriptor limit)
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// Require `Authorization: Bearer TOKEN` on every route but health checks
    #[arg(long, env = "NEORUN_AUTH_TOKEN", conflicts_with = "auth_token_file")]
    pub auth_token: Option<String>,
    /// Read the bearer token from a file
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    /// Dynamic batching: merge concurrent requests into runs of at most this many rows (1 = off)
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Dynamic batching: how long a request may wait for others to join its batch, in µs
    #[arg(long, default_value_t = 0)]
    pub max_queue_delay: u64,
    /// Production variant name (X-Amzn-Invoked-Production-Variant)
    #[arg(long, default_value = "AllTraffic")]
    pub variant: String,
    /// Log format on stderr: text or json
    #[arg(long, default_value = "text")]
    pub log_format: String,
}

#[derive(clap::Args)]
pub struct ContainerArgs {
    /// What the platform asks for: `serve` (SageMaker starts an inference image as `docker run IMAGE serve`)
    pub action: String,
    /// Where the platform put the model: SageMaker extracts model.tar.gz to /opt/ml/model, KServe's storage initializer writes /mnt/models
    #[arg(long, env = "NEORUN_MODEL_DIR", default_value = "/opt/ml/model", value_name = "DIR")]
    pub model_dir: PathBuf,
    /// Port (SageMaker sets SAGEMAKER_BIND_TO_PORT where it is not 8080)
    #[arg(long, env = "SAGEMAKER_BIND_TO_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on
    #[arg(long, env = "NEORUN_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// The key bundles must be signed with when NEORUN_TRUSTED_KEY names none (an image built by contrib/container/build.sh carries it here)
    #[arg(long, default_value = "/etc/neorun/trusted.pub", value_name = "PUB")]
    pub image_key: PathBuf,
    #[command(flatten)]
    pub load: LoadArgs,
    /// More `neorun serve` flags, after `--` (e.g. -- --threads 2)
    #[arg(last = true, value_name = "SERVE FLAGS")]
    pub serve: Vec<String>,
}
