//! `s3://` locations (`jobs::objects::Place::S3`) through `object_store`'s
//! S3 client: the AWS environment and shared files read as the AWS CLI
//! reads them, listing by SageMaker's `S3Prefix` rule, streaming reads, and
//! multipart uploads that exist only once completed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, RetryConfig};
use tokio::runtime::Handle;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::objects::{store_hint, Object};
use crate::awsenv;

/// A bucket and a key prefix on the configured store.
pub struct S3Place {
    store: Arc<AmazonS3>,
    bucket: String,
    /// The key prefix as written (no leading `/`).
    prefix: String,
    rt: Handle,
}

/// How long one request is retried (connection refused, 5xx, timeouts)
/// before the job fails: `NEORUN_S3_RETRY_SECONDS`, 20 by default.
fn retry() -> RetryConfig {
    let secs = std::env::var("NEORUN_S3_RETRY_SECONDS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(20);
    RetryConfig {
        max_retries: if secs == 0 { 0 } else { 10 },
        retry_timeout: Duration::from_secs(secs),
        ..Default::default()
    }
}

impl S3Place {
    pub fn new(rest: &str, rt: Handle) -> Result<S3Place, String> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("s3://{rest}: no bucket; write s3://BUCKET/PREFIX"));
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry());
        let files = awsenv::shared_files();
        let env = awsenv::env;
        let endpoint = awsenv::endpoint("S3", &files);
        if let Some(e) = &endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        if env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).is_none() {
            b = b.with_region(files.get("region").cloned().unwrap_or_else(|| "us-east-1".into()));
        }
        if env("AWS_ACCESS_KEY_ID").is_none() {
            for (k, key) in [
                ("aws_access_key_id", AmazonS3ConfigKey::AccessKeyId),
                ("aws_secret_access_key", AmazonS3ConfigKey::SecretAccessKey),
                ("aws_session_token", AmazonS3ConfigKey::Token),
            ] {
                if let Some(v) = files.get(k) {
                    b = b.with_config(key, v);
                }
            }
        }
        let store = b.build().map_err(|e| format!("s3://{rest}: {e}"))?;
        Ok(S3Place { store: Arc::new(store), bucket: bucket.to_string(), prefix: prefix.to_string(), rt })
    }

    /// `s3://BUCKET/PREFIX` joined with `rel` (a directory prefix:
    /// outputs go under `PREFIX/`).
    pub fn uri(&self, rel: &str) -> String {
        if rel.is_empty() {
            format!("s3://{}/{}", self.bucket, self.prefix)
        } else {
            format!("s3://{}/{}", self.bucket, self.key(rel))
        }
    }

    pub fn uri_of_key(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn key(&self, rel: &str) -> String {
        let p = self.prefix.trim_end_matches('/');
        if p.is_empty() {
            rel.to_string()
        } else {
            format!("{p}/{rel}")
        }
    }

    fn error(&self, what: &str, e: object_store::Error) -> String {
        let text = e.to_string();
        format!("{what}: {text}{}", store_hint(&text))
    }

    fn list(&self, dir: &str) -> Result<Vec<object_store::ObjectMeta>, String> {
        let prefix = (!dir.is_empty()).then(|| Key::from(dir));
        self.rt.block_on(async {
            self.store
                .list(prefix.as_ref())
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| self.error(&format!("listing s3://{}/{dir}", self.bucket), e))
        })
    }

    pub fn list_inputs(&self) -> Result<Vec<Object>, String> {
        // SageMaker's S3Prefix: every key that starts with the prefix
        let dir = match self.prefix.rfind('/') {
            Some(i) => &self.prefix[..i],
            None => "",
        };
        let base = if dir.is_empty() { 0 } else { dir.len() + 1 };
        let mut out: Vec<Object> = self
            .list(dir)?
            .into_iter()
            .filter(|m| m.location.as_ref().starts_with(self.prefix.as_str()))
            .filter(|m| !m.location.as_ref().ends_with('/'))
            .map(|m| {
                let key = m.location.to_string();
                Object {
                    rel: key[base.min(key.len())..].to_string(),
                    version: m.e_tag.clone().unwrap_or_else(|| m.last_modified.to_rfc3339()),
                    size: m.size,
                    key,
                }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub fn existing(&self) -> Result<BTreeMap<String, u64>, String> {
        let dir = self.prefix.trim_end_matches('/');
        let base = if dir.is_empty() { 0 } else { dir.len() + 1 };
        Ok(self
            .list(dir)?
            .into_iter()
            .map(|m| (m.location.as_ref()[base.min(m.location.as_ref().len())..].to_string(), m.size))
            .collect())
    }

    pub fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, String> {
        let k = Key::from(key);
        let got = self
            .rt
            .block_on(self.store.get(&k))
            .map_err(|e| self.error(&format!("reading s3://{}/{key}", self.bucket), e))?;
        let stream = got.into_stream().map(|r| r.map_err(std::io::Error::other));
        Ok(Box::new(SyncIoBridge::new_with_handle(StreamReader::new(stream), self.rt.clone())))
    }

    pub fn get(&self, rel: &str) -> Result<Option<Vec<u8>>, String> {
        let k = Key::from(self.key(rel));
        self.rt.block_on(async {
            match self.store.get(&k).await {
                Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
            .map_err(|e| self.error(&format!("reading {}", self.uri(rel)), e))
        })
    }

    pub fn size(&self, rel: &str) -> Result<Option<u64>, String> {
        let k = Key::from(self.key(rel));
        match self.rt.block_on(self.store.head(&k)) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(&format!("reading {}", self.uri(rel)), e)),
        }
    }

    pub fn remove(&self, rel: &str) -> Result<(), String> {
        let k = Key::from(self.key(rel));
        match self.rt.block_on(self.store.delete(&k)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(&format!("removing {}", self.uri(rel)), e)),
        }
    }

    pub fn create(&self, rel: &str) -> Upload {
        let store: Arc<dyn ObjectStore> = self.store.clone();
        // parts of 8 MiB, two in flight: at most ~24 MiB per output
        let w = object_store::buffered::BufWriter::with_capacity(store, Key::from(self.key(rel)), 8 << 20)
            .with_max_concurrency(2);
        Upload { w: SyncIoBridge::new_with_handle(w, self.rt.clone()), uri: self.uri(rel), rt: self.rt.clone() }
    }

    pub fn contains(&self, other: &S3Place) -> bool {
        let dir = match self.prefix.rfind('/') {
            Some(i) => &self.prefix[..=i],
            None => "",
        };
        self.bucket == other.bucket && other.key("").starts_with(dir)
    }
}

/// A streaming upload: a single PUT when under one part, else a
/// multipart upload completed by `commit`.
pub struct Upload {
    w: SyncIoBridge<object_store::buffered::BufWriter>,
    uri: String,
    rt: Handle,
}

impl Write for Upload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        // a flush would end a part early; parts are sent as they fill
        Ok(())
    }
}

impl Upload {
    pub fn commit(mut self) -> Result<(), String> {
        match self.w.shutdown() {
            Ok(()) => Ok(()),
            Err(e) => {
                let uri = self.uri.clone();
                self.abort();
                Err(format!("writing {uri}: {e}"))
            }
        }
    }

    pub fn abort(self) {
        let mut w = self.w.into_inner();
        let _ = self.rt.block_on(w.abort());
    }
}
