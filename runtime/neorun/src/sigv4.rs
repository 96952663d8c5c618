//! AWS Signature Version 4, verified: what botocore (boto3, the AWS CLI)
//! and every AWS SDK put on each request, checked against the access keys
//! neorun was given (`--access-keys`, an AWS shared-credentials file).
//!
//! The server recomputes the signature from the request exactly as the
//! client computed it — canonical request (method, the path URI-encoded once
//! more as AWS does for every service but S3, the query pairs sorted, the
//! signed headers with trimmed values, the body's SHA-256), string to sign,
//! the key derived from the secret, date, region and service — and compares
//! in constant time (`Mac::verify_slice`). The date must be within a skew
//! window of this machine's clock, so a captured request cannot be replayed
//! later. Presigned URLs (the signature in the query) are not accepted.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail};
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The scope's services clients sign for: `sagemaker` (the `sagemaker` and
/// `sagemaker-runtime` clients both sign as it) and `monitoring`
/// (CloudWatch's alarm API).
pub const SERVICES: [&str; 2] = ["sagemaker", "monitoring"];

/// How far a request's `X-Amz-Date` may be from this machine's clock (AWS
/// allows 15 minutes; this is stricter).
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// Access key id → secret.
#[derive(Clone, Default)]
pub struct AccessKeys {
    keys: HashMap<String, String>,
}

impl std::fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the secrets
        f.debug_struct("AccessKeys").field("ids", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

impl AccessKeys {
    /// Reads an AWS shared-credentials file: `[profile]` sections with
    /// `aws_access_key_id` and `aws_secret_access_key`; every profile's key
    /// is trusted.
    pub fn from_file(path: &Path) -> anyhow::Result<AccessKeys> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        AccessKeys::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<AccessKeys> {
        let mut keys = HashMap::new();
        let mut section: Option<(String, Option<String>, Option<String>)> = None;
        let mut finish = |s: Option<(String, Option<String>, Option<String>)>| -> anyhow::Result<()> {
            match s {
                Some((_, Some(id), Some(secret))) => {
                    keys.insert(id, secret);
                    Ok(())
                }
                Some((name, None, _)) => bail!("profile [{name}] has no aws_access_key_id"),
                Some((name, _, None)) => bail!("profile [{name}] has no aws_secret_access_key"),
                None => Ok(()),
            }
        };
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                finish(section.take())?;
                section = Some((name.trim().to_string(), None, None));
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                bail!("line {}: expected `key = value` or `[profile]`", n + 1);
            };
            let Some(s) = section.as_mut() else {
                bail!("line {}: `{}` comes before any [profile] section", n + 1, k.trim());
            };
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => s.1 = Some(v),
                "aws_secret_access_key" => s.2 = Some(v),
                _ => {} // region, output, session settings: not ours
            }
        }
        finish(section.take())?;
        if keys.is_empty() {
            bail!(
                "no access keys in it (expected [profile] sections with aws_access_key_id and aws_secret_access_key)"
            );
        }
        if let Some(id) = keys.iter().find(|(_, s)| s.is_empty()).map(|(id, _)| id.clone()) {
            bail!("the secret of access key {id} is empty");
        }
        Ok(AccessKeys { keys })
    }
}

/// Why a request's signature was refused, as AWS names it.
#[derive(Debug, PartialEq, Eq)]
pub enum SigError {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not a whole SigV4 one.
    Incomplete(String),
    /// A key id neorun was not given.
    UnknownKey(String),
    /// The signature does not match.
    Mismatch,
    /// The date is outside the skew window.
    Expired(String),
}

impl SigError {
    /// The error code botocore raises as `ClientError`.
    pub fn code(&self) -> &'static str {
        match self {
            SigError::Missing => "MissingAuthenticationTokenException",
            SigError::Incomplete(_) => "IncompleteSignatureException",
            SigError::UnknownKey(_) => "UnrecognizedClientException",
            SigError::Mismatch | SigError::Expired(_) => "InvalidSignatureException",
        }
    }

    pub fn message(&self) -> String {
        match self {
            SigError::Missing => "Missing Authentication Token: sign the request with SigV4 (an AWS SDK does), or send Authorization: Bearer TOKEN".into(),
            SigError::Incomplete(why) => format!("Authorization header is not a complete SigV4 signature: {why}"),
            SigError::UnknownKey(id) => format!("The security token included in the request is invalid: access key {id} is not one this server was given (--access-keys)"),
            SigError::Mismatch => "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.".into(),
            SigError::Expired(why) => format!("Signature expired: {why}"),
        }
    }
}

/// The parts of a request the signature covers.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// The fields of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
struct Authorization<'a> {
    key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: Vec<u8>,
}

fn parse_authorization(v: &str) -> Result<Authorization<'_>, SigError> {
    let bad = |why: &str| SigError::Incomplete(why.to_string());
    let rest = v.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| bad("the algorithm must be AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((k, val)) = part.trim().split_once('=') else { continue };
        match k {
            "Credential" => credential = Some(val),
            "SignedHeaders" => signed = Some(val),
            "Signature" => signature = Some(val),
            _ => {}
        }
    }
    let credential = credential.ok_or_else(|| bad("no Credential="))?;
    let signed = signed.ok_or_else(|| bad("no SignedHeaders="))?;
    let signature = signature.ok_or_else(|| bad("no Signature="))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, terminator] = scope[..] else {
        return Err(bad("Credential must be KEY/yyyymmdd/region/service/aws4_request"));
    };
    if terminator != "aws4_request" {
        return Err(bad("Credential must end in /aws4_request"));
    }
    let signature = hex::decode(signature).map_err(|_| bad("Signature is not hex"))?;
    if signature.len() != 32 {
        return Err(bad("Signature must be 64 hex digits"));
    }
    let signed_headers: Vec<&str> = signed.split(';').collect();
    for required in ["host", "x-amz-date"] {
        if !signed_headers.contains(&required) {
            return Err(SigError::Incomplete(format!("SignedHeaders must include {required}")));
        }
    }
    Ok(Authorization { key_id, date, region, service, signed_headers, signature })
}

/// RFC 3986 encoding as SigV4 wants it: everything but the unreserved
/// characters, and `/` too unless `keep_slash`.
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn canonical_request(r: &Request<'_>, signed: &[&str]) -> Result<String, SigError> {
    let path = if r.path.is_empty() { "/" } else { r.path };
    let mut pairs: Vec<(&str, &str)> = r
        .query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort_unstable();
    let query = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut headers = String::new();
    for name in signed {
        let values: Vec<String> = r
            .headers
            .get_all(*name)
            .iter()
            .map(|v| {
                let v = String::from_utf8_lossy(v.as_bytes());
                v.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(SigError::Incomplete(format!("signed header {name} is not in the request")));
        }
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let payload = hex::encode(Sha256::digest(r.body));
    Ok(format!("{}\n{}\n{query}\n{headers}\n{}\n{payload}", r.method, uri_encode(path, true), signed.join(";")))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// `YYYYMMDDTHHMMSSZ` → time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ").ok()?;
    let secs = t.and_utc().timestamp();
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Verifies `r`'s signature; returns the access key id that signed it.
pub fn verify(keys: &AccessKeys, r: &Request<'_>, now: SystemTime) -> Result<String, SigError> {
    let auth = r.headers.get("authorization").ok_or(SigError::Missing)?;
    let auth = auth.to_str().map_err(|_| SigError::Incomplete("the Authorization header is not ASCII".into()))?;
    let a = parse_authorization(auth)?;
    let amz_date = r
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| SigError::Incomplete("no X-Amz-Date header".into()))?;
    let when = parse_amz_date(amz_date)
        .ok_or_else(|| SigError::Incomplete(format!("X-Amz-Date {amz_date:?} is not yyyymmddThhmmssZ")))?;
    if !amz_date.starts_with(a.date) || a.date.len() != 8 {
        return Err(SigError::Incomplete(format!("the Credential's date {} is not X-Amz-Date's ({amz_date})", a.date)));
    }
    let skew = now.duration_since(when).or_else(|e| Ok::<_, ()>(e.duration())).unwrap_or_default();
    if skew > MAX_SKEW {
        let stamp = |t: SystemTime| chrono::DateTime::<chrono::Utc>::from(t).format("%Y%m%dT%H%M%SZ").to_string();
        return Err(SigError::Expired(format!(
            "{amz_date} is more than {} minutes from this server's time {} (check the client's clock)",
            MAX_SKEW.as_secs() / 60,
            stamp(now)
        )));
    }
    if !SERVICES.contains(&a.service) {
        return Err(SigError::Incomplete(format!(
            "the Credential's service is {}, not {}",
            a.service,
            SERVICES.join(" or ")
        )));
    }
    let secret = keys.keys.get(a.key_id).ok_or_else(|| SigError::UnknownKey(a.key_id.to_string()))?;
    let creq = canonical_request(r, &a.signed_headers)?;
    let mac = signer(secret, amz_date, a.region, a.service, &creq);
    // constant time
    mac.verify_slice(&a.signature).map_err(|_| SigError::Mismatch)?;
    Ok(a.key_id.to_string())
}

/// The HMAC over the string to sign, keyed by the key derived from the
/// secret, the date, the region and the service; its output is the
/// signature.
fn signer(secret: &str, amz_date: &str, region: &str, service: &str, creq: &str) -> HmacSha256 {
    let date = &amz_date[..8.min(amz_date.len())];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(creq.as_bytes())));
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    let mut mac = HmacSha256::new_from_slice(&k).expect("HMAC takes any key length");
    mac.update(to_sign.as_bytes());
    mac
}

/// Credentials neorun signs its own requests with (SNS notifications).
#[derive(Clone)]
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
    /// `AWS_SESSION_TOKEN`: sent as `X-Amz-Security-Token` and signed.
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the secret
        f.debug_struct("Credentials").field("key_id", &self.key_id).finish()
    }
}

/// Signs a request neorun sends, as an AWS SDK would: adds `x-amz-date`
/// (from `now`), `x-amz-security-token` when there is one, and
/// `authorization` to `headers`, which must already hold `host` and every
/// other header to be signed (all of them are).
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
pub fn sign(
    creds: &Credentials,
    (region, service): (&str, &str),
    method: &str,
    path: &str,
    headers: &mut HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> anyhow::Result<()> {
    use axum::http::HeaderValue;
    let amz_date = chrono::DateTime::<chrono::Utc>::from(now).format("%Y%m%dT%H%M%SZ").to_string();
    headers.insert("x-amz-date", HeaderValue::from_str(&amz_date)?);
    if let Some(t) = &creds.token {
        headers.insert("x-amz-security-token", HeaderValue::from_str(t)?);
    }
    let mut names: Vec<String> = headers.keys().map(|k| k.as_str().to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    let signed: Vec<&str> = names.iter().map(String::as_str).collect();
    let r = Request { method, path, query: None, headers, body };
    let creq = canonical_request(&r, &signed).map_err(|e| anyhow!(e.message()))?;
    let sig = hex::encode(signer(&creds.secret, &amz_date, region, service, &creq).finalize().into_bytes());
    let v = format!(
        "AWS4-HMAC-SHA256 Credential={}/{}/{region}/{service}/aws4_request, SignedHeaders={}, Signature={sig}",
        creds.key_id,
        &amz_date[..8],
        signed.join(";")
    );
    headers.insert("authorization", HeaderValue::from_str(&v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn keys() -> AccessKeys {
        AccessKeys::parse(&format!("[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = {SECRET}\n"))
            .unwrap()
    }

    /// Signs like a client would, with this module's own canonical request
    /// (the real clients are in the end-to-end tests: boto3 and the AWS CLI).
    fn sign(h: &mut HeaderMap, body: &[u8], date: &str, secret: &str) {
        let r = Request { method: "POST", path: "/", query: None, headers: h, body };
        let signed = ["host", "x-amz-date", "x-amz-target"];
        let creq = canonical_request(&r, &signed).unwrap();
        let scope = format!("{}/us-east-1/sagemaker/aws4_request", &date[..8]);
        let to_sign = format!("AWS4-HMAC-SHA256\n{date}\n{scope}\n{}", hex::encode(Sha256::digest(creq.as_bytes())));
        let mut k = hmac(format!("AWS4{secret}").as_bytes(), &date.as_bytes()[..8]);
        for part in ["us-east-1", "sagemaker", "aws4_request"] {
            k = hmac(&k, part.as_bytes());
        }
        let sig = hex::encode(hmac(&k, to_sign.as_bytes()));
        let v = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{scope}, SignedHeaders={}, Signature={sig}",
            signed.join(";")
        );
        h.insert("authorization", HeaderValue::from_str(&v).unwrap());
    }

    fn headers(date: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        h.insert("x-amz-date", HeaderValue::from_str(date).unwrap());
        h.insert("x-amz-target", HeaderValue::from_static("SageMaker.ListEndpoints"));
        h
    }

    fn at(date: &str) -> SystemTime {
        parse_amz_date(date).unwrap()
    }

    #[test]
    fn the_signature_botocore_computes_for_the_same_request() {
        // GET / on example.amazon.com, service "service", 2015-08-30T12:36:00Z,
        // AWS's example key; the expected value is what botocore 1.43.11's
        // `SigV4Auth.signature` gives for this request (an independent
        // implementation: its canonical request is byte-for-byte this one)
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.amazon.com"));
        h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        let r = Request { method: "GET", path: "/", query: None, headers: &h, body: b"" };
        let creq = canonical_request(&r, &["host", "x-amz-date"]).unwrap();
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{}",
            hex::encode(Sha256::digest(creq.as_bytes()))
        );
        let mut k = hmac(format!("AWS4{SECRET}").as_bytes(), b"20150830");
        for part in ["us-east-1", "service", "aws4_request"] {
            k = hmac(&k, part.as_bytes());
        }
        assert_eq!(
            hex::encode(hmac(&k, to_sign.as_bytes())),
            "7ab4567ae243ee168f6bf18206b2b40b61ce08277323168138fa113ed23c538e"
        );
    }

    #[test]
    fn signing_gives_aws_published_example_signature() {
        // AWS's SigV4 walkthrough: IAM ListUsers (GET, query string, a
        // content-type header), 2015-08-30T12:36:00Z, us-east-1; its
        // published signature is 5d672d79…f2b5d7
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("iam.amazonaws.com"));
        h.insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"));
        h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        let r = Request {
            method: "GET",
            path: "/",
            query: Some("Action=ListUsers&Version=2010-05-08"),
            headers: &h,
            body: b"",
        };
        let creq = canonical_request(&r, &["content-type", "host", "x-amz-date"]).unwrap();
        let sig = hex::encode(signer(SECRET, "20150830T123600Z", "us-east-1", "iam", &creq).finalize().into_bytes());
        assert_eq!(sig, "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7");
    }

    #[test]
    fn what_sign_signs_verify_accepts_and_a_token_is_covered() {
        let now = at("20261202T010203Z");
        let creds = Credentials { key_id: "AKIDEXAMPLE".into(), secret: SECRET.into(), token: Some("tok/en+1".into()) };
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:4566"));
        h.insert("x-amz-target", HeaderValue::from_static("SageMaker.ListEndpoints"));
        let body = b"Action=Publish&Message=%7B%7D";
        super::sign(&creds, ("eu-west-1", "sagemaker"), "POST", "/", &mut h, body, now).unwrap();
        let auth = h["authorization"].to_str().unwrap().to_string();
        assert!(
            auth.contains("Credential=AKIDEXAMPLE/20261202/eu-west-1/sagemaker/aws4_request")
                && auth.contains("SignedHeaders=host;x-amz-date;x-amz-security-token;x-amz-target"),
            "{auth}"
        );
        assert_eq!(h["x-amz-security-token"], "tok/en+1");
        let r = Request { method: "POST", path: "/", query: None, headers: &h, body };
        assert_eq!(verify(&keys(), &r, now).unwrap(), "AKIDEXAMPLE");
        // the token is signed: another token fails
        let mut other = h.clone();
        other.insert("x-amz-security-token", HeaderValue::from_static("stolen"));
        let r = Request { method: "POST", path: "/", query: None, headers: &other, body };
        assert_eq!(verify(&keys(), &r, now), Err(SigError::Mismatch));
    }

    #[test]
    fn a_signed_request_passes_and_every_alteration_fails() {
        let date = "20261202T010203Z";
        let body = br#"{"MaxResults":10}"#;
        let mut h = headers(date);
        sign(&mut h, body, date, SECRET);
        let req = |h: &HeaderMap, body: &'static [u8]| {
            verify(&keys(), &Request { method: "POST", path: "/", query: None, headers: h, body }, at(date))
        };
        let body: &'static [u8] = br#"{"MaxResults":10}"#;
        assert_eq!(req(&h, body).unwrap(), "AKIDEXAMPLE");
        // another body, another target, another secret
        assert_eq!(req(&h, br#"{"MaxResults":11}"#), Err(SigError::Mismatch));
        let mut other = h.clone();
        other.insert("x-amz-target", HeaderValue::from_static("SageMaker.DeleteEndpoint"));
        assert_eq!(req(&other, body), Err(SigError::Mismatch));
        let mut wrong = headers(date);
        sign(&mut wrong, body, date, "not-the-secret");
        assert_eq!(req(&wrong, body), Err(SigError::Mismatch));
        // no header at all; a key nobody gave
        assert_eq!(req(&headers(date), body), Err(SigError::Missing));
        let unknown = AccessKeys::parse("[p]\naws_access_key_id = OTHER\naws_secret_access_key = x\n").unwrap();
        let r = Request { method: "POST", path: "/", query: None, headers: &h, body };
        assert!(matches!(verify(&unknown, &r, at(date)), Err(SigError::UnknownKey(id)) if id == "AKIDEXAMPLE"));
    }

    #[test]
    fn dates_outside_the_window_are_refused() {
        let date = "20261202T010203Z";
        let mut h = headers(date);
        sign(&mut h, b"{}", date, SECRET);
        let r = Request { method: "POST", path: "/", query: None, headers: &h, body: b"{}" };
        for later in [MAX_SKEW + Duration::from_secs(1), Duration::from_secs(86_400)] {
            let e = verify(&keys(), &r, at(date) + later).unwrap_err();
            assert!(matches!(e, SigError::Expired(_)), "{e:?}");
            assert_eq!(e.code(), "InvalidSignatureException");
            // and a date in the future
            assert!(matches!(verify(&keys(), &r, at(date) - later), Err(SigError::Expired(_))));
        }
        assert!(verify(&keys(), &r, at(date) + MAX_SKEW - Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn malformed_authorization_headers_say_what_is_missing() {
        let date = "20261202T010203Z";
        let zeros = format!(
            "AWS4-HMAC-SHA256 Credential=A/20261202/r/sagemaker/aws4_request, SignedHeaders=host, Signature={}",
            "0".repeat(64)
        );
        for (value, says) in [
            ("Bearer abc", "AWS4-HMAC-SHA256"),
            ("AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, Signature=00", "Credential"),
            (zeros.as_str(), "x-amz-date"),
            ("AWS4-HMAC-SHA256 Credential=A/20261202/r/sagemaker, SignedHeaders=host;x-amz-date, Signature=00", "KEY/yyyymmdd"),
            ("AWS4-HMAC-SHA256 Credential=A/20261202/r/sagemaker/aws4_request, SignedHeaders=host;x-amz-date, Signature=zz", "hex"),
        ]
        .map(|(v, s)| (v.to_string(), s))
        {
            let mut h = headers(date);
            h.insert("authorization", HeaderValue::from_str(&value).unwrap());
            let r = Request { method: "POST", path: "/", query: None, headers: &h, body: b"" };
            let e = verify(&keys(), &r, at(date)).unwrap_err();
            assert_eq!(e.code(), "IncompleteSignatureException", "{value}");
            assert!(e.message().contains(says), "{value}: {}", e.message());
        }
    }

    #[test]
    fn credentials_files_are_read_like_the_aws_cli_reads_them() {
        let k = AccessKeys::parse("# keys\n[default]\naws_access_key_id=A\naws_secret_access_key = s1\nregion = us-east-1\n\n[ci]\naws_access_key_id = B\naws_secret_access_key = s2\n").unwrap();
        assert_eq!(k.keys.len(), 2);
        assert!(format!("{k:?}").contains('A') && !format!("{k:?}").contains("s1"));
        for (text, says) in [
            ("", "no access keys"),
            ("aws_access_key_id = A", "before any [profile]"),
            ("[p]\naws_access_key_id = A\n", "no aws_secret_access_key"),
            ("[p]\naws_secret_access_key = s\n", "no aws_access_key_id"),
            ("[p]\nnonsense\n", "key = value"),
        ] {
            let e = AccessKeys::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
