//! Build provenance: an in-toto Statement (v1) with a SLSA provenance v1
//! predicate, in a DSSE envelope signed with the bundle's Ed25519 (minisign)
//! key. The subject is the bundle file's sha256; the resolved dependencies
//! are the model and the compiler; the external parameters are the target
//! and the options. Nothing in it depends on the clock or the machine beyond
//! `created` (from `SOURCE_DATE_EPOCH`), so it is as reproducible as the
//! bundle.

use anyhow::{bail, Context, Result};
use base64::Engine;
use neoc_bundle::manifest::Manifest;
use neoc_bundle::sign::{SigningKey, TrustedKey};
use serde_json::{json, Value};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub const BUILD_TYPE: &str = "https://github.com/neoc-dev/neoc/compile/v1";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// DSSE's pre-authentication encoding, the bytes that are signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    v.extend_from_slice(payload);
    v
}

/// The statement for one bundle.
pub fn statement(bundle_name: &str, bundle_digest: &str, m: &Manifest, options: Value) -> Value {
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    json!({
        "_type": STATEMENT_TYPE,
        "subject": [{ "name": bundle_name, "digest": { "sha256": hex(bundle_digest) } }],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "model": m.model.source,
                    "target": m.target.name,
                    "options": options,
                },
                "internalParameters": {
                    "engine": { "name": m.engine.name, "version": m.engine.version },
                    "verification": { "status": m.verification.status, "host": m.verification.host, "max_abs_error": m.verification.max_abs_error },
                },
                "resolvedDependencies": [
                    {
                        "uri": m.model.source,
                        "name": format!("model {}:{} ({})", m.model.name, m.model.version, m.model.framework),
                        "digest": { "sha256": hex(&m.model.source_digest) },
                    },
                    {
                        "uri": format!("pkg:cargo/neoc-compiler@{}", m.compiler.version),
                        "name": "neoc",
                    },
                ],
            },
            "runDetails": {
                "builder": {
                    "id": format!("https://github.com/neoc-dev/neoc/neoc@{}", m.compiler.version),
                    "version": { "neoc": m.compiler.version, "tract": m.engine.version },
                },
                "metadata": { "invocationId": format!("{}:{}@{}", m.model.name, m.model.version, m.target.name), "finishedOn": rfc3339(m.created) },
            },
        },
    })
}

/// Signs a statement; returns the envelope as one line of JSON plus a newline
/// (the `.intoto.jsonl` convention).
pub fn envelope(statement: &Value, key: &SigningKey) -> Vec<u8> {
    let payload = serde_json::to_vec(statement).expect("statement serializes");
    let sig = key.sign_raw(&pae(PAYLOAD_TYPE, &payload));
    let env = json!({
        "payloadType": PAYLOAD_TYPE,
        "payload": b64().encode(&payload),
        "signatures": [{ "keyid": key.key_id(), "sig": b64().encode(sig) }],
    });
    let mut out = serde_json::to_vec(&env).expect("envelope serializes");
    out.push(b'\n');
    out
}

/// Checks an envelope's signature against `key` and that its subject is
/// `bundle_digest`; returns the statement.
pub fn verify(envelope: &[u8], key: &TrustedKey, bundle_digest: &str) -> Result<Value> {
    let env: Value = serde_json::from_slice(envelope).context("provenance: not a DSSE envelope (invalid JSON)")?;
    let ptype = env["payloadType"].as_str().context("provenance: envelope has no payloadType")?;
    if ptype != PAYLOAD_TYPE {
        bail!("provenance: payloadType is {ptype}, expected {PAYLOAD_TYPE}");
    }
    let payload = b64()
        .decode(env["payload"].as_str().context("provenance: envelope has no payload")?)
        .context("provenance: payload is not base64")?;
    let sigs = env["signatures"].as_array().context("provenance: envelope has no signatures")?;
    let msg = pae(ptype, &payload);
    let ok = sigs
        .iter()
        .any(|s| s["sig"].as_str().and_then(|x| b64().decode(x).ok()).is_some_and(|sig| key.verify_raw(&msg, &sig)));
    if !ok {
        bail!("provenance: no signature in the envelope verifies with key {}", key.key_id());
    }
    let st: Value = serde_json::from_slice(&payload).context("provenance: payload is not JSON")?;
    if st["_type"] != STATEMENT_TYPE || st["predicateType"] != PREDICATE_TYPE {
        bail!("provenance: not an in-toto v1 statement with a SLSA v1 predicate");
    }
    let want = bundle_digest.trim_start_matches("sha256:");
    let subjects = st["subject"].as_array().cloned().unwrap_or_default();
    if !subjects.iter().any(|s| s["digest"]["sha256"] == want) {
        bail!("provenance: its subject is not this bundle (sha256 {want})");
    }
    Ok(st)
}

/// Seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let s = secs % 86400;
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s % 3600 / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(315532800), "1980-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // DSSE protocol.md: PAE("http://example.com/HelloWorld", "hello world")
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }
}
