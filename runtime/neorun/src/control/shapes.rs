//! The request shapes of the control plane, read field by field from the
//! JSON boto3 sends: every field is either understood, accepted as
//! meaningless on one machine (reported back as ignored), or refused with
//! its full path (`ProductionVariants[1].InitialVariantWeight: …`), so a
//! typo never passes silently.
//!
//! (Over 600 lines: one reader per request shape — model, endpoint
//! configuration with its variants, capture, serverless and asynchronous
//! settings — and their unit tests, which check each refusal's message.
//! They share `Fields` and the error helpers; one file keeps the field
//! paths consistent.)

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::AwsError;

/// A field reader over one JSON object, at a path.
pub struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
    seen: Vec<&'a str>,
    ignored: Vec<String>,
}

impl<'a> Fields<'a> {
    pub fn new(path: &str, v: &'a Value) -> Result<Fields<'a>, AwsError> {
        let map = v.as_object().ok_or_else(|| invalid(path, "expected a JSON object"))?;
        Ok(Fields { path: path.to_string(), map, seen: Vec::new(), ignored: Vec::new() })
    }

    fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&mut self, key: &'a str) -> Option<&'a Value> {
        self.seen.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn str(&mut self, key: &'a str) -> Result<Option<&'a str>, AwsError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(&self.at(key), "expected a string")),
        }
    }

    pub fn req_str(&mut self, key: &'a str) -> Result<&'a str, AwsError> {
        self.str(key)?.ok_or_else(|| missing(&self.at(key)))
    }

    pub fn name(&mut self, key: &'a str) -> Result<&'a str, AwsError> {
        let v = self.req_str(key)?;
        check_name(&self.at(key), v)?;
        Ok(v)
    }

    pub fn f64(&mut self, key: &'a str) -> Result<Option<f64>, AwsError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| invalid(&self.at(key), "expected a number")),
            Some(_) => Err(invalid(&self.at(key), "expected a number")),
        }
    }

    pub fn int(&mut self, key: &'a str) -> Result<Option<i64>, AwsError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| invalid(&self.at(key), "expected an integer")),
            Some(_) => Err(invalid(&self.at(key), "expected an integer")),
        }
    }

    pub fn bool(&mut self, key: &'a str) -> Result<Option<bool>, AwsError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(invalid(&self.at(key), "expected true or false")),
        }
    }

    pub fn obj(&mut self, key: &'a str) -> Result<Option<Fields<'a>>, AwsError> {
        let at = self.at(key);
        self.get(key).map(|v| Fields::new(&at, v)).transpose()
    }

    /// A list of objects, each read at `KEY[i]`.
    pub fn list(&mut self, key: &'a str) -> Result<Option<Vec<Fields<'a>>>, AwsError> {
        let at = self.at(key);
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| Fields::new(&format!("{at}[{i}]"), v))
                .collect::<Result<_, _>>()
                .map(Some),
            Some(_) => Err(invalid(&at, "expected a list")),
        }
    }

    pub fn str_list(&mut self, key: &'a str) -> Result<Option<Vec<String>>, AwsError> {
        let at = self.at(key);
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_string).ok_or_else(|| invalid(&format!("{at}[{i}]"), "expected a string"))
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(_) => Err(invalid(&at, "expected a list of strings")),
        }
    }

    /// Fields that mean nothing on one machine: accepted, reported back.
    pub fn ignore(&mut self, keys: &[&'a str]) {
        for k in keys {
            if self.get(k).is_some() {
                self.ignored.push(self.at(k));
            }
        }
    }

    /// Fields that mean something neorun does not do: refused, with why.
    pub fn refuse(&mut self, keys: &[(&'a str, &str)]) -> Result<(), AwsError> {
        for (k, why) in keys {
            if self.get(k).is_some() {
                return Err(invalid(&self.at(k), why));
            }
        }
        Ok(())
    }

    /// Fails on any field not read; adds the ignored ones to `ignored`.
    pub fn finish(self, ignored: &mut Vec<String>) -> Result<(), AwsError> {
        if let Some(k) = self.map.keys().find(|k| !self.seen.contains(&k.as_str())) {
            let mut known: Vec<&str> = self.seen.clone();
            known.sort_unstable();
            known.dedup();
            return Err(invalid(&self.at(k), &format!("unknown field (known here: {})", known.join(", "))));
        }
        ignored.extend(self.ignored);
        Ok(())
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

pub fn invalid(path: &str, why: &str) -> AwsError {
    AwsError::validation(format!("{path}: {why}"))
}

fn missing(path: &str) -> AwsError {
    AwsError::validation(format!("{path}: required field is missing"))
}

/// SageMaker's names: 1 to 63 letters, digits and hyphens, starting and
/// ending with a letter or digit.
pub fn check_name(path: &str, v: &str) -> Result<(), AwsError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(path, &format!("{v:?} is not a valid name (1-63 letters, digits and hyphens, starting and ending with a letter or digit)")))
    }
}

/// `CreateModel`, read.
#[derive(Clone, Debug)]
pub struct ModelDef {
    pub name: String,
    /// `PrimaryContainer.ModelDataUrl` as given.
    pub url: String,
    /// The bundle file (for an `oci://` URL: empty until pulled); for a
    /// multi-model container, the directory of bundles.
    pub bundle: PathBuf,
    /// `Mode: MultiModel`: requests name their bundle (`TargetModel`).
    pub multi_model: bool,
}

impl ModelDef {
    pub fn is_oci(&self) -> bool {
        self.url.starts_with("oci://")
    }
}

/// A bundle reference: a path or `file://` URL. Other schemes are refused
/// with what to do instead.
pub fn bundle_path(path: &str, url: &str) -> Result<PathBuf, AwsError> {
    if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(invalid(path, "a file:// URL must be absolute (file:///dir/model.neo)"));
        }
        return Ok(PathBuf::from(rest));
    }
    if url.starts_with("oci://") {
        // pulled by the control plane (`ControlPlane::pull`)
        return Ok(PathBuf::new());
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(invalid(
            path,
            &format!(
                "{scheme}:// is not a bundle location neorun reads; give a path or a file:// URL to a .neo bundle"
            ),
        ));
    }
    if url.is_empty() {
        return Err(invalid(path, "empty"));
    }
    Ok(PathBuf::from(url))
}

const IGNORED_MODEL: &[&str] =
    &["ExecutionRoleArn", "Tags", "VpcConfig", "EnableNetworkIsolation", "InferenceExecutionConfig"];
const IGNORED_CONTAINER: &[&str] =
    &["Image", "ImageConfig", "Environment", "ContainerHostname", "InferenceSpecificationName"];

pub fn create_model(v: &Value, ignored: &mut Vec<String>) -> Result<ModelDef, AwsError> {
    let mut f = Fields::new("", v)?;
    let name = f.name("ModelName")?.to_string();
    let primary = f.obj("PrimaryContainer")?;
    let containers = f.list("Containers")?;
    f.ignore(IGNORED_MODEL);
    let container = match (primary, containers) {
        (Some(c), None) => c,
        (None, Some(mut cs)) if cs.len() == 1 => cs.remove(0),
        (None, Some(cs)) => {
            return Err(invalid(
                "Containers",
                &format!(
                    "{} containers: neorun runs one bundle per model (inference pipelines are not supported)",
                    cs.len()
                ),
            ))
        }
        (Some(_), Some(_)) => return Err(invalid("Containers", "give PrimaryContainer or Containers, not both")),
        (None, None) => {
            return Err(invalid("PrimaryContainer", "required field is missing (its ModelDataUrl names the bundle)"))
        }
    };
    let url_path = format!("{}.ModelDataUrl", container.path());
    let mut c = container;
    let url = c.req_str("ModelDataUrl")?.to_string();
    let multi_model = match c.str("Mode")? {
        None | Some("SingleModel") => false,
        Some("MultiModel") => true,
        Some(m) => {
            return Err(invalid(&format!("{}.Mode", c.path()), &format!("{m:?}: use SingleModel or MultiModel")))
        }
    };
    c.ignore(IGNORED_CONTAINER);
    c.ignore(&["MultiModelConfig"]);
    c.refuse(&[
        ("ModelDataSource", "not supported: give the bundle in ModelDataUrl"),
        ("AdditionalModelDataSources", "not supported: one bundle per model"),
        ("ModelPackageName", "model packages are not supported: give the bundle in ModelDataUrl"),
    ])?;
    c.finish(ignored)?;
    f.finish(ignored)?;
    if multi_model {
        let dir = crate::lazy::model_dir(&url).ok_or_else(|| {
            invalid(
                &url_path,
                "a multi-model ModelDataUrl is a local directory of bundles (requests name one in TargetModel)",
            )
        })?;
        return Ok(ModelDef { name, url, bundle: dir, multi_model });
    }
    let bundle = bundle_path(&url_path, &url)?;
    Ok(ModelDef { name, url, bundle, multi_model })
}

/// A production or shadow variant.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantDef {
    pub name: String,
    pub model_name: String,
    pub weight: f64,
    /// `ServerlessConfig`.
    pub serverless: Option<ServerlessDef>,
}

/// `ServerlessConfig`, read.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerlessDef {
    pub memory_mb: u64,
    pub max_concurrency: usize,
    /// `ProvisionedConcurrency` > 0: kept loaded, never idled out.
    pub provisioned: bool,
}

fn serverless(mut f: Fields<'_>) -> Result<ServerlessDef, AwsError> {
    let at = f.path().to_string();
    let memory = f.int("MemorySizeInMB")?.ok_or_else(|| missing(&format!("{at}.MemorySizeInMB")))?;
    if !(1024..=6144).contains(&memory) || memory % 1024 != 0 {
        return Err(invalid(&format!("{at}.MemorySizeInMB"), "give 1024, 2048, 3072, 4096, 5120 or 6144"));
    }
    let max = f.int("MaxConcurrency")?.ok_or_else(|| missing(&format!("{at}.MaxConcurrency")))?;
    if !(1..=200).contains(&max) {
        return Err(invalid(&format!("{at}.MaxConcurrency"), "give 1 to 200"));
    }
    let provisioned = f.int("ProvisionedConcurrency")?.unwrap_or(0);
    if provisioned < 0 || provisioned > max {
        return Err(invalid(&format!("{at}.ProvisionedConcurrency"), "give 1 to MaxConcurrency"));
    }
    f.finish(&mut Vec::new())?;
    Ok(ServerlessDef { memory_mb: memory as u64, max_concurrency: max as usize, provisioned: provisioned > 0 })
}

/// `DataCaptureConfig`, read.
#[derive(Clone, Debug, PartialEq)]
pub struct CaptureDef {
    pub enabled: bool,
    pub sampling_percentage: u32,
    pub destination: String,
    pub dir: PathBuf,
    pub input: bool,
    pub output: bool,
    pub csv_types: Vec<String>,
    pub json_types: Vec<String>,
}

/// `CreateEndpointConfig`, read.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigDef {
    pub name: String,
    pub variants: Vec<VariantDef>,
    pub shadows: Vec<VariantDef>,
    pub capture: Option<CaptureDef>,
    /// `AsyncInferenceConfig`: the endpoint takes asynchronous invocations.
    pub async_config: Option<AsyncDef>,
}

/// `AsyncInferenceConfig`, read.
#[derive(Clone, Debug, PartialEq)]
pub struct AsyncDef {
    /// `OutputConfig.S3OutputPath`: `s3://` or an absolute local path.
    pub output: String,
    /// `OutputConfig.S3FailurePath` (default: the output path).
    pub failure: String,
    /// `ClientConfig.MaxConcurrentInvocationsPerInstance` (default: the CPUs).
    pub max_concurrency: usize,
    /// `OutputConfig.NotificationConfig`.
    pub notify: super::async_inference::NotifyConfig,
}

/// `NotificationConfig`: where completions and failures are announced.
/// A topic is an SNS topic ARN, or (neorun's extension) an `http://` or
/// `https://` URL that is sent the same message as a webhook.
#[cfg(feature = "s3")]
fn notification_config(mut n: Fields<'_>) -> Result<super::async_inference::NotifyConfig, AwsError> {
    let at = n.path().to_string();
    let mut topic = |key: &'static str| -> Result<Option<String>, AwsError> {
        match n.str(key)? {
            None | Some("") => Ok(None),
            Some(t) => super::notify::Target::parse(t)
                .map(|_| Some(t.to_string()))
                .map_err(|why| invalid(&format!("{at}.{key}"), &why)),
        }
    };
    let success = topic("SuccessTopic")?;
    let error = topic("ErrorTopic")?;
    let mut cfg = super::async_inference::NotifyConfig { success, error, ..Default::default() };
    for v in n.str_list("IncludeInferenceResponseIn")?.unwrap_or_default() {
        match v.as_str() {
            "SUCCESS_NOTIFICATION_TOPIC" => cfg.include_in_success = true,
            "ERROR_NOTIFICATION_TOPIC" => cfg.include_in_error = true,
            other => {
                return Err(invalid(
                    &format!("{at}.IncludeInferenceResponseIn"),
                    &format!("{other:?}: use SUCCESS_NOTIFICATION_TOPIC or ERROR_NOTIFICATION_TOPIC"),
                ))
            }
        }
    }
    n.finish(&mut Vec::new())?;
    let sns = [&cfg.success, &cfg.error].into_iter().flatten().any(|t| t.starts_with("arn:"));
    if sns && crate::awsenv::credentials(&crate::awsenv::shared_files()).is_none() {
        return Err(invalid(
            &at,
            "an SNS topic needs AWS credentials to publish with, and this server has none: start neorun serve with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials",
        ));
    }
    Ok(cfg)
}

fn async_config(mut f: Fields<'_>) -> Result<AsyncDef, AwsError> {
    let mut max_concurrency = crate::cpus::allowed().map(|c| c.len()).unwrap_or(1).max(1);
    if let Some(mut c) = f.obj("ClientConfig")? {
        if let Some(n) = c.int("MaxConcurrentInvocationsPerInstance")? {
            if !(1..=1000).contains(&n) {
                return Err(invalid(&format!("{}.MaxConcurrentInvocationsPerInstance", c.path()), "give 1 to 1000"));
            }
            max_concurrency = n as usize;
        }
        c.finish(&mut Vec::new())?;
    }
    let mut o = f.obj("OutputConfig")?.ok_or_else(|| missing("AsyncInferenceConfig.OutputConfig"))?;
    let output = o.req_str("S3OutputPath")?.to_string();
    let failure = o.str("S3FailurePath")?.map(String::from).unwrap_or_else(|| output.clone());
    o.ignore(&["KmsKeyId"]);
    #[cfg(feature = "s3")]
    let notify = o.obj("NotificationConfig")?.map(notification_config).transpose()?.unwrap_or_default();
    #[cfg(not(feature = "s3"))]
    let notify = {
        o.refuse(&[(
            "NotificationConfig",
            "this neorun was built without the s3 feature, which carries the client notifications are sent with: poll the output and failure locations",
        )])?;
        super::async_inference::NotifyConfig::default()
    };
    let at = o.path().to_string();
    o.finish(&mut Vec::new())?;
    f.finish(&mut Vec::new())?;
    for (key, loc) in [("S3OutputPath", &output), ("S3FailurePath", &failure)] {
        if !(loc.starts_with("s3://") || loc.starts_with("file:///") || loc.starts_with('/')) {
            return Err(invalid(
                &format!("{at}.{key}"),
                &format!("{loc:?}: give s3://BUCKET/PREFIX, or an absolute local path (file:///dir)"),
            ));
        }
    }
    Ok(AsyncDef { output, failure, max_concurrency, notify })
}

impl ConfigDef {
    pub fn production_weight(&self) -> f64 {
        self.variants.iter().map(|v| v.weight).sum()
    }
}

const IGNORED_VARIANT: &[&str] = &[
    "InitialInstanceCount",
    "InstanceType",
    "AcceleratorType",
    "InstancePools",
    "VariantInstanceProvisionTimeoutInSeconds",
    "CoreDumpConfig",
    "VolumeSizeInGB",
    "ModelDataDownloadTimeoutInSeconds",
    "ContainerStartupHealthCheckTimeoutInSeconds",
    "EnableSSMAccess",
    "ManagedInstanceScaling",
    "RoutingConfig",
    "InferenceAmiVersion",
    "CapacityReservationConfig",
];

fn variant(mut f: Fields<'_>, ignored: &mut Vec<String>) -> Result<VariantDef, AwsError> {
    let name = f.name("VariantName")?.to_string();
    let model_name = f.name("ModelName")?.to_string();
    let weight = f.f64("InitialVariantWeight")?.unwrap_or(1.0);
    if !(weight.is_finite() && weight >= 0.0) {
        return Err(invalid(&format!("{}.InitialVariantWeight", f.path()), "must be a number of 0 or more"));
    }
    let serverless = f.obj("ServerlessConfig")?.map(serverless).transpose()?;
    f.ignore(IGNORED_VARIANT);
    f.finish(ignored)?;
    Ok(VariantDef { name, model_name, weight, serverless })
}

fn capture(mut f: Fields<'_>, ignored: &mut Vec<String>) -> Result<CaptureDef, AwsError> {
    let at = f.path().to_string();
    let enabled = f.bool("EnableCapture")?.unwrap_or(true);
    let pct = f.int("InitialSamplingPercentage")?.ok_or_else(|| missing(&format!("{at}.InitialSamplingPercentage")))?;
    if !(0..=100).contains(&pct) {
        return Err(invalid(
            &format!("{at}.InitialSamplingPercentage"),
            &format!("{pct} is not a percentage from 0 to 100"),
        ));
    }
    let destination = f.req_str("DestinationS3Uri")?.to_string();
    let dir = match destination.strip_prefix("file://") {
        Some(rest) if rest.starts_with('/') => PathBuf::from(rest),
        Some(_) => return Err(invalid(&format!("{at}.DestinationS3Uri"), "a file:// URL must be absolute (file:///var/capture)")),
        None if destination.contains("://") => {
            return Err(invalid(
                &format!("{at}.DestinationS3Uri"),
                "neorun writes capture to a local directory: give a path or a file:// URL (copy it to S3 with `aws s3 sync` if you need it there)",
            ))
        }
        None if destination.is_empty() => return Err(invalid(&format!("{at}.DestinationS3Uri"), "empty")),
        None => PathBuf::from(&destination),
    };
    let options = f.list("CaptureOptions")?.ok_or_else(|| missing(&format!("{at}.CaptureOptions")))?;
    if options.is_empty() {
        return Err(invalid(&format!("{at}.CaptureOptions"), "list at least one of Input, Output"));
    }
    let (mut input, mut output) = (false, false);
    for mut o in options {
        let p = format!("{}.CaptureMode", o.path());
        match o.req_str("CaptureMode")? {
            "Input" => input = true,
            "Output" => output = true,
            "InputAndOutput" => (input, output) = (true, true),
            other => return Err(invalid(&p, &format!("{other:?}: use Input, Output or InputAndOutput"))),
        }
        o.finish(ignored)?;
    }
    let (mut csv_types, mut json_types) = (Vec::new(), Vec::new());
    if let Some(mut h) = f.obj("CaptureContentTypeHeader")? {
        csv_types = h.str_list("CsvContentTypes")?.unwrap_or_default();
        json_types = h.str_list("JsonContentTypes")?.unwrap_or_default();
        h.finish(ignored)?;
    }
    f.ignore(&["KmsKeyId"]);
    f.finish(ignored)?;
    Ok(CaptureDef { enabled, sampling_percentage: pct as u32, destination, dir, input, output, csv_types, json_types })
}

const IGNORED_CONFIG: &[&str] =
    &["Tags", "KmsKeyId", "ExecutionRoleArn", "VpcConfig", "EnableNetworkIsolation", "MetricsConfig"];

/// Reads a `CreateEndpointConfig` body. `extra` names fields the caller
/// reads itself (a declared endpoint file's `Models`, `EndpointName`).
pub fn create_endpoint_config(v: &Value, extra: &[&str], ignored: &mut Vec<String>) -> Result<ConfigDef, AwsError> {
    let mut f = Fields::new("", v)?;
    for k in extra {
        f.seen.push(k);
    }
    let name = f.name("EndpointConfigName")?.to_string();
    let variants = f.list("ProductionVariants")?.ok_or_else(|| missing("ProductionVariants"))?;
    if variants.is_empty() || variants.len() > 10 {
        return Err(invalid("ProductionVariants", "give 1 to 10 variants"));
    }
    let variants = variants.into_iter().map(|v| variant(v, ignored)).collect::<Result<Vec<_>, _>>()?;
    let shadows = match f.list("ShadowProductionVariants")? {
        Some(s) if s.len() > 10 => return Err(invalid("ShadowProductionVariants", "give at most 10 variants")),
        Some(s) => s.into_iter().map(|v| variant(v, ignored)).collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let capture = f.obj("DataCaptureConfig")?.map(|c| capture(c, ignored)).transpose()?;
    let async_config = f.obj("AsyncInferenceConfig")?.map(async_config).transpose()?;
    f.ignore(IGNORED_CONFIG);
    f.refuse(&[("ExplainerConfig", "SageMaker Clarify explainers are not supported")])?;
    f.finish(ignored)?;
    let config = ConfigDef { name, variants, shadows, capture, async_config };
    check_config(&config)?;
    Ok(config)
}

/// What a configuration must satisfy as a whole.
pub fn check_config(c: &ConfigDef) -> Result<(), AwsError> {
    let mut names: Vec<&str> = Vec::new();
    for (list, v) in c
        .variants
        .iter()
        .map(|v| ("ProductionVariants", v))
        .chain(c.shadows.iter().map(|v| ("ShadowProductionVariants", v)))
    {
        if names.iter().any(|n| n.eq_ignore_ascii_case(&v.name)) {
            return Err(invalid(
                list,
                &format!(
                    "variant name {:?} is used twice (names must be unique in a configuration, ignoring case)",
                    v.name
                ),
            ));
        }
        names.push(&v.name);
    }
    let total = c.production_weight();
    if total <= 0.0 {
        return Err(invalid(
            "ProductionVariants",
            "the InitialVariantWeight values sum to zero: no variant would get traffic",
        ));
    }
    for (i, s) in c.shadows.iter().enumerate() {
        let pct = 100.0 * s.weight / total;
        if pct > 100.0 + 1e-9 {
            return Err(invalid(
                &format!("ShadowProductionVariants[{i}].InitialVariantWeight"),
                &format!("{} samples {pct:.1}% of the traffic (its weight over the production variants' {total}); a shadow sees at most 100%", s.weight),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(v: Value) -> Result<ConfigDef, String> {
        let mut ignored = Vec::new();
        create_endpoint_config(&v, &[], &mut ignored).map_err(|e| e.message)
    }

    fn base() -> Value {
        json!({
            "EndpointConfigName": "c",
            "ProductionVariants": [
                {"VariantName": "A", "ModelName": "m1", "InitialVariantWeight": 3, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1},
                {"VariantName": "B", "ModelName": "m2", "InitialVariantWeight": 1}
            ],
            "DataCaptureConfig": {"InitialSamplingPercentage": 100, "DestinationS3Uri": "file:///tmp/x", "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]}
        })
    }

    #[test]
    fn a_full_config_is_read_with_meaningless_fields_reported() {
        let mut ignored = Vec::new();
        let c = create_endpoint_config(&base(), &[], &mut ignored).unwrap();
        assert_eq!(
            c.variants[0],
            VariantDef { name: "A".into(), model_name: "m1".into(), weight: 3.0, serverless: None }
        );
        assert_eq!(ignored, vec!["ProductionVariants[0].InitialInstanceCount", "ProductionVariants[0].InstanceType"]);
        let cap = c.capture.unwrap();
        assert!(cap.enabled && cap.input && cap.output && cap.dir == std::path::Path::new("/tmp/x"));
    }

    #[test]
    fn each_bad_config_names_its_field() {
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|v| v["ProductionVariants"][1]["Wieght"] = json!(1)),
                "ProductionVariants[1].Wieght: unknown field",
            ),
            (Box::new(|v| v["Bogus"] = json!(1)), "Bogus: unknown field"),
            (
                Box::new(|v| {
                    v["ProductionVariants"][0]["InitialVariantWeight"] = json!(0);
                    v["ProductionVariants"][1]["InitialVariantWeight"] = json!(0);
                }),
                "sum to zero",
            ),
            (Box::new(|v| v["ProductionVariants"][1]["VariantName"] = json!("a")), "used twice"),
            (
                Box::new(|v| v["ProductionVariants"][1]["InitialVariantWeight"] = json!(-1)),
                "ProductionVariants[1].InitialVariantWeight",
            ),
            (Box::new(|v| v["ProductionVariants"][1]["InitialVariantWeight"] = json!("1")), "expected a number"),
            (
                Box::new(|v| {
                    v["ShadowProductionVariants"] =
                        json!([{"VariantName": "S", "ModelName": "m3", "InitialVariantWeight": 5}])
                }),
                "ShadowProductionVariants[0].InitialVariantWeight: 5 samples 125.0%",
            ),
            (
                Box::new(|v| v["DataCaptureConfig"]["InitialSamplingPercentage"] = json!(101)),
                "DataCaptureConfig.InitialSamplingPercentage",
            ),
            (
                Box::new(|v| v["DataCaptureConfig"]["DestinationS3Uri"] = json!("s3://bucket/x")),
                "DataCaptureConfig.DestinationS3Uri: neorun writes capture to a local directory",
            ),
            (
                Box::new(|v| v["DataCaptureConfig"]["CaptureOptions"][0]["CaptureMode"] = json!("Both")),
                "CaptureOptions[0].CaptureMode",
            ),
            (Box::new(|v| v["ProductionVariants"][0]["VariantName"] = json!("bad name")), "not a valid name"),
            (Box::new(|v| v["AsyncInferenceConfig"] = json!({})), "AsyncInferenceConfig.OutputConfig"),
            (
                Box::new(|v| v["AsyncInferenceConfig"] = json!({"OutputConfig": {"S3OutputPath": "out/"}})),
                "absolute local path",
            ),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("ProductionVariants");
                }),
                "ProductionVariants: required",
            ),
        ];
        for (change, says) in cases {
            let mut v = base();
            change(&mut v);
            let e = config(v).unwrap_err();
            assert!(e.contains(says), "{e:?} should say {says:?}");
        }
    }

    #[test]
    fn models_name_a_local_bundle() {
        let mut ig = Vec::new();
        let m = create_model(&json!({"ModelName": "m", "PrimaryContainer": {"ModelDataUrl": "file:///b/m.neo", "Image": "x"}, "ExecutionRoleArn": "arn"}), &mut ig).unwrap();
        assert_eq!(m.bundle, std::path::Path::new("/b/m.neo"));
        assert_eq!(ig, vec!["PrimaryContainer.Image", "ExecutionRoleArn"]);
        for (v, says) in [
            (json!({"ModelName": "m"}), "PrimaryContainer: required"),
            (
                json!({"ModelName": "m", "PrimaryContainer": {"ModelDataUrl": "s3://b/m.tar.gz"}}),
                "PrimaryContainer.ModelDataUrl: s3://",
            ),
            (
                json!({"ModelName": "m", "PrimaryContainer": {"ModelDataUrl": "m.neo", "Mode": "MultiModel"}}),
                "local directory of bundles",
            ),
            (json!({"ModelName": "-m", "PrimaryContainer": {"ModelDataUrl": "m.neo"}}), "ModelName"),
        ] {
            let e = create_model(&v, &mut ig).unwrap_err().message;
            assert!(e.contains(says), "{e}");
        }
    }
}
