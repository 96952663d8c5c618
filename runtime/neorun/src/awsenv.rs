//! The AWS environment as the AWS CLI reads it, for the services neorun
//! calls itself (S3 for object locations, SNS for notifications): the
//! environment variables first, then the shared credentials and config
//! files of the active profile.

use std::collections::BTreeMap;

use crate::sigv4::Credentials;

/// A non-empty environment variable.
pub fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Settings from the AWS shared files for the active profile
/// (`AWS_PROFILE`, else `default`): the credentials file, then the config
/// file (`[profile NAME]`), the first found winning.
pub fn shared_files() -> BTreeMap<String, String> {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let home = std::env::var("HOME").unwrap_or_default();
    let creds = std::env::var("AWS_SHARED_CREDENTIALS_FILE").unwrap_or_else(|_| format!("{home}/.aws/credentials"));
    let config = std::env::var("AWS_CONFIG_FILE").unwrap_or_else(|_| format!("{home}/.aws/config"));
    let mut out = BTreeMap::new();
    let config_section = if profile == "default" { "default".to_string() } else { format!("profile {profile}") };
    for (file, section) in [(creds, profile.clone()), (config, config_section)] {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let mut inside = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                inside = name.trim() == section;
                continue;
            }
            if !inside {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                out.entry(k.trim().to_ascii_lowercase()).or_insert_with(|| v.trim().to_string());
            }
        }
    }
    out
}

/// A service's endpoint when it is not AWS's own: `AWS_ENDPOINT_URL_<SERVICE>`
/// (e.g. `AWS_ENDPOINT_URL_SNS`), then `AWS_ENDPOINT_URL`, then the
/// profile's `endpoint_url`.
pub fn endpoint(service: &str, files: &BTreeMap<String, String>) -> Option<String> {
    env(&format!("AWS_ENDPOINT_URL_{service}"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| files.get("endpoint_url").cloned())
}

/// `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`, else us-east-1.
pub fn region(files: &BTreeMap<String, String>) -> String {
    env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| files.get("region").cloned())
        .unwrap_or_else(|| "us-east-1".into())
}

/// Static credentials: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
/// `AWS_SESSION_TOKEN`, else the profile's. (Instance roles and SSO are
/// not read here.)
pub fn credentials(files: &BTreeMap<String, String>) -> Option<Credentials> {
    if let (Some(key_id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Some(Credentials { key_id, secret, token: env("AWS_SESSION_TOKEN") });
    }
    Some(Credentials {
        key_id: files.get("aws_access_key_id")?.clone(),
        secret: files.get("aws_secret_access_key")?.clone(),
        token: files.get("aws_session_token").cloned(),
    })
}
