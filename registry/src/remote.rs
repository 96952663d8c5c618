//! Remote registries through `oci-client`: plain HTTP only for loopback hosts
//! or hosts named with `--insecure-registry`; credentials from
//! `NEOC_REGISTRY_USER`/`NEOC_REGISTRY_PASSWORD` or the Docker config file,
//! never printed. No request is retried: a registry that is down gives one
//! clear error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use super::{Access, BlobSink, Descriptor, DOCKER_LIST, DOCKER_MANIFEST, MAX_MANIFEST, OCI_INDEX, OCI_MANIFEST};

pub struct Remote {
    host: String,
    repo: String,
    client: oci_client::Client,
    auth: RegistryAuth,
    /// Where the credentials came from (for messages; never the secret).
    auth_from: Option<String>,
    /// A Docker credential helper configured for this host, which neoc does not run.
    helper: Option<String>,
    rt: tokio::runtime::Runtime,
}

pub fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map(|(n, p)| if p.parse::<u16>().is_ok() { n } else { host }).unwrap_or(host);
    matches!(name, "localhost" | "127.0.0.1" | "[::1]" | "::1") || name.starts_with("127.")
}

impl Remote {
    pub fn new(host: &str, repo: &str, access: &Access) -> Result<Remote> {
        let plain = is_loopback(host) || access.insecure.iter().any(|h| h == host);
        let config = ClientConfig {
            protocol: if plain { ClientProtocol::Http } else { ClientProtocol::Https },
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("neoc/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let (auth, auth_from, helper) = credentials(host)?;
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the I/O runtime")?;
        let client = oci_client::Client::new(config);
        rt.block_on(client.store_auth_if_needed(host, &auth));
        Ok(Remote { host: host.into(), repo: repo.into(), client, auth, auth_from, helper, rt })
    }

    fn oref(&self, selector: &str) -> oci_client::Reference {
        if selector.starts_with("sha256:") {
            oci_client::Reference::with_digest(self.host.clone(), self.repo.clone(), selector.into())
        } else {
            oci_client::Reference::with_tag(self.host.clone(), self.repo.clone(), selector.into())
        }
    }

    fn tagless(&self) -> oci_client::Reference {
        self.oref("latest")
    }

    pub fn manifest(&self, r: &super::Reference) -> Result<(String, Vec<u8>)> {
        let sel = r.selector();
        let accepted = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
        let (bytes, _) = self
            .rt
            .block_on(self.client.pull_manifest_raw(&self.oref(&sel), &self.auth, &accepted))
            .map_err(|e| self.explain(e, &format!("fetching {r}"), Some(&sel)))?;
        if bytes.len() as u64 > MAX_MANIFEST {
            bail!("the manifest of {r} is implausibly large ({} bytes)", bytes.len());
        }
        let media = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(String::from))
            .unwrap_or_else(|| OCI_MANIFEST.into());
        Ok((media, bytes.to_vec()))
    }

    /// Downloads a blob, resuming an interrupted download of the same blob.
    pub fn fetch_blob(&self, d: &Descriptor, dest: &Path) -> Result<()> {
        let what = format!("blob {} of oci://{}/{}", d.digest, self.host, self.repo);
        let (mut sink, have) = BlobSink::create(d, dest, true)?;
        let oref = self.tagless();
        let digest: &str = &d.digest;
        let stream = if have > 0 {
            eprintln!("resuming {} at byte {have} of {}", d.digest, d.size);
            match self.rt.block_on(self.client.pull_blob_stream_partial(&oref, digest, have, None)) {
                Ok(BlobResponse::Partial(s)) => s,
                Ok(BlobResponse::Full(s)) => {
                    // the registry ignored the range: start again
                    sink.abandon();
                    sink = BlobSink::create(d, dest, false)?.0;
                    s
                }
                Err(e) => return Err(self.explain(e, &what, None)),
            }
        } else {
            self.rt.block_on(self.client.pull_blob_stream(&oref, digest)).map_err(|e| self.explain(e, &what, None))?
        };
        let mut stream = stream.stream;
        let res: Result<()> = self.rt.block_on(async {
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => sink.write(&bytes)?,
                    // all bytes arrived: what is wrong is the content, which finish() names
                    Err(_) if sink_full(&sink) => break,
                    Err(e) => {
                        bail!("{what}: the download was interrupted ({e})\nhint: run the command again; it resumes where this one stopped")
                    }
                }
            }
            Ok(())
        });
        res?;
        sink.finish().with_context(|| what.clone())
    }

    pub fn push_blob_file(&self, path: &Path, d: &Descriptor) -> Result<()> {
        let oref = self.tagless();
        let what = format!("pushing {} to oci://{}/{}", path.display(), self.host, self.repo);
        if self.rt.block_on(self.client.blob_exists(&oref, &d.digest)).map_err(|e| self.explain(e, &what, None))? {
            return Ok(());
        }
        let file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
        let stream = futures_util::stream::unfold(file, |mut f| async move {
            let mut buf = vec![0u8; 1 << 20];
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(OciDistributionError::IoError(e)), f)),
            }
        });
        self.rt
            .block_on(self.client.push_blob_stream(&oref, stream, &d.digest, Some(d.size)))
            .map_err(|e| self.explain(e, &what, None))?;
        Ok(())
    }

    pub fn push_blob_bytes(&self, bytes: &[u8], d: &Descriptor) -> Result<()> {
        let oref = self.tagless();
        let what = format!("pushing blob {} to oci://{}/{}", d.digest, self.host, self.repo);
        if self.rt.block_on(self.client.blob_exists(&oref, &d.digest)).map_err(|e| self.explain(e, &what, None))? {
            return Ok(());
        }
        self.rt
            .block_on(self.client.push_blob(&oref, bytes.to_vec(), &d.digest))
            .map_err(|e| self.explain(e, &what, None))?;
        Ok(())
    }

    pub fn push_manifest(&self, tag: Option<&str>, d: &Descriptor, bytes: &[u8]) -> Result<()> {
        let sel = tag.unwrap_or(&d.digest);
        let what = format!("pushing the manifest to oci://{}/{}:{sel}", self.host, self.repo);
        let ct = http::HeaderValue::from_str(&d.media_type).context("media type")?;
        self.rt
            .block_on(self.client.push_manifest_raw(&self.oref(sel), bytes.to_vec(), ct))
            .map_err(|e| self.explain(e, &what, None))?;
        Ok(())
    }

    pub fn tags(&self) -> Result<Vec<String>> {
        let what = format!("listing the tags of oci://{}/{}", self.host, self.repo);
        let r = self
            .rt
            .block_on(self.client.list_tags(&self.tagless(), &self.auth, None, None))
            .map_err(|e| self.explain(e, &what, None))?;
        Ok(r.tags)
    }

    fn auth_error(&self, what: &str) -> anyhow::Error {
        let how = format!(
            "set NEOC_REGISTRY_USER and NEOC_REGISTRY_PASSWORD, or log in with `docker login {}` (neoc reads $DOCKER_CONFIG/config.json or ~/.docker/config.json)",
            self.host
        );
        match (&self.auth_from, &self.helper) {
            (Some(from), _) => anyhow::anyhow!(
                "{what}: the registry {} refused the credentials from {from}\nhint: check the user name and password; {how}",
                self.host
            ),
            (None, Some(helper)) => anyhow::anyhow!(
                "{what}: the registry {} requires authentication; the Docker config names the credential helper `{helper}` for it, which neoc does not run\nhint: {how}",
                self.host
            ),
            (None, None) => anyhow::anyhow!(
                "{what}: the registry {} requires authentication and no credentials were given\nhint: {how}",
                self.host
            ),
        }
    }

    /// Turns a client error into one that names the problem and the fix.
    fn explain(&self, e: OciDistributionError, what: &str, selector: Option<&str>) -> anyhow::Error {
        let not_found = |this: &str| -> anyhow::Error {
            // name what does exist, when the registry says
            let known = match self.rt.block_on(self.client.list_tags(&self.tagless(), &self.auth, None, None)) {
                Ok(t) if !t.tags.is_empty() => {
                    format!("\nhint: tags of oci://{}/{}: {}", self.host, self.repo, t.tags.join(", "))
                }
                Ok(_) => String::new(),
                Err(_) => format!("\nhint: the repository {} may not exist on {}", self.repo, self.host),
            };
            anyhow::anyhow!("{what}: {this} not found{known}")
        };
        let sel = selector.map(|s| format!("`{s}`")).unwrap_or_else(|| "it was".into());
        match e {
            OciDistributionError::RequestError(re) => {
                let cause = root_cause(&re);
                if re.is_connect() || re.is_timeout() {
                    let https = if !is_loopback(&self.host) && cause.to_lowercase().contains("ssl") {
                        format!("\nhint: if {} serves plain HTTP, pass --insecure-registry {}", self.host, self.host)
                    } else {
                        String::new()
                    };
                    anyhow::anyhow!(
                        "{what}: cannot reach the registry {}: {cause}\nhint: is it running and listening there? (neoc does not retry){https}",
                        self.host
                    )
                } else if re.status().is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) {
                    self.auth_error(what)
                } else if re.status().is_some_and(|s| s.as_u16() == 404) {
                    not_found(&sel)
                } else {
                    anyhow::anyhow!("{what}: {cause}")
                }
            }
            OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
                self.auth_error(what)
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                    self.auth_error(what)
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::NameUnknown)) {
                    anyhow::anyhow!("{what}: the repository `{}` does not exist on {}", self.repo, self.host)
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NotFound)) {
                    not_found(&sel)
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::BlobUnknown)) {
                    anyhow::anyhow!("{what}: the registry does not have the blob")
                } else {
                    anyhow::anyhow!("{what}: the registry answered: {envelope}")
                }
            }
            OciDistributionError::ServerError { code: 401 | 403, .. } => self.auth_error(what),
            OciDistributionError::ServerError { code: 404, .. }
            | OciDistributionError::ImageManifestNotFoundError(_) => not_found(&sel),
            OciDistributionError::ServerError { code, message, .. } => {
                anyhow::anyhow!("{what}: the registry answered HTTP {code}: {}", message.trim())
            }
            other => anyhow::anyhow!("{what}: {other}"),
        }
    }
}

fn sink_full(s: &BlobSink) -> bool {
    s.complete()
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// (auth, where it came from, a credential helper configured for the host)
fn credentials(host: &str) -> Result<(RegistryAuth, Option<String>, Option<String>)> {
    let user = std::env::var("NEOC_REGISTRY_USER").ok().filter(|s| !s.is_empty());
    let pass = std::env::var("NEOC_REGISTRY_PASSWORD").ok();
    match (user, pass) {
        (Some(u), Some(p)) => {
            return Ok((RegistryAuth::Basic(u.clone(), p), Some(format!("NEOC_REGISTRY_USER ({u})")), None))
        }
        (Some(_), None) => bail!("NEOC_REGISTRY_USER is set but NEOC_REGISTRY_PASSWORD is not; set both, or neither"),
        (None, Some(p)) if !p.is_empty() => {
            bail!("NEOC_REGISTRY_PASSWORD is set but NEOC_REGISTRY_USER is not; set both, or neither")
        }
        _ => {}
    }
    let Some(path) = docker_config_path() else { return Ok((RegistryAuth::Anonymous, None, None)) };
    let Ok(text) = std::fs::read(&path) else { return Ok((RegistryAuth::Anonymous, None, None)) };
    let v: serde_json::Value = serde_json::from_slice(&text).with_context(|| {
        format!("{} is not valid JSON (it holds registry credentials for docker and neoc)", path.display())
    })?;
    let entry =
        ["", "http://", "https://"].iter().find_map(|p| v.get("auths").and_then(|a| a.get(format!("{p}{host}"))));
    if let Some(e) = entry {
        let from = format!("{} (auths.{host})", path.display());
        if let Some(a) = e.get("auth").and_then(|a| a.as_str()).filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .with_context(|| format!("{from}: `auth` is not base64 of USER:PASSWORD"))?;
            let (u, p) =
                raw.split_once(':').with_context(|| format!("{from}: `auth` is not base64 of USER:PASSWORD"))?;
            return Ok((RegistryAuth::Basic(u.into(), p.into()), Some(format!("{from}, user {u}")), None));
        }
        if let (Some(u), Some(p)) =
            (e.get("username").and_then(|x| x.as_str()), e.get("password").and_then(|x| x.as_str()))
        {
            return Ok((RegistryAuth::Basic(u.into(), p.into()), Some(format!("{from}, user {u}")), None));
        }
    }
    let helper = v
        .get("credHelpers")
        .and_then(|h| h.get(host))
        .or_else(|| v.get("credsStore"))
        .and_then(|h| h.as_str())
        .map(|h| format!("docker-credential-{h}"));
    Ok((RegistryAuth::Anonymous, None, helper))
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1:5000", "localhost", "localhost:80", "[::1]:5000", "127.1.2.3"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["registry.example.com", "10.0.0.1:5000", "localhost.example.com"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
