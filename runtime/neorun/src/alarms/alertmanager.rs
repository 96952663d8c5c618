//! Prometheus Alertmanager's webhook payload (`version: "4"`): each alert
//! names a neorun alarm by its `neorun_alarm` label, else its `alertname`.
//! A firing alert puts the alarm in ALARM; when every alert that fired for
//! it is resolved, it returns to OK.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
pub struct Payload {
    pub version: String,
    #[serde(default)]
    pub receiver: String,
    pub alerts: Vec<Alert>,
}

#[derive(Deserialize)]
pub struct Alert {
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, rename = "startsAt")]
    pub starts_at: String,
    #[serde(default)]
    pub fingerprint: String,
}

/// One alert, as it applies to an alarm.
#[derive(Debug, PartialEq)]
pub struct Signal {
    pub alarm: String,
    pub firing: bool,
    /// Tells apart alerts of one rule with different labels.
    pub fingerprint: String,
    pub reason: String,
}

pub fn parse(body: &[u8]) -> Result<Vec<Signal>, String> {
    let p: Payload =
        serde_json::from_slice(body).map_err(|e| format!("not an Alertmanager webhook payload (version 4): {e}"))?;
    if p.version != "4" {
        return Err(format!("webhook payload version {:?}: neorun reads version \"4\"", p.version));
    }
    let mut out = Vec::new();
    for (i, a) in p.alerts.iter().enumerate() {
        let name = a
            .labels
            .get("neorun_alarm")
            .or_else(|| a.labels.get("alertname"))
            .ok_or_else(|| format!("alerts[{i}]: no alertname (or neorun_alarm) label to name the alarm"))?;
        let firing = match a.status.as_str() {
            "firing" => true,
            "resolved" => false,
            s => return Err(format!("alerts[{i}].status {s:?}: expected firing or resolved")),
        };
        let fingerprint = if a.fingerprint.is_empty() {
            a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
        } else {
            a.fingerprint.clone()
        };
        let summary = a.annotations.get("summary").or_else(|| a.annotations.get("description"));
        let reason = format!(
            "Alertmanager (receiver {:?}): alert {} {}{}{}",
            p.receiver,
            a.labels.get("alertname").map_or("?", String::as_str),
            if firing { "firing since " } else { "resolved" },
            if firing { a.starts_at.as_str() } else { "" },
            summary.map(|s| format!(": {s}")).unwrap_or_default(),
        );
        out.push(Signal { alarm: name.clone(), firing, fingerprint, reason });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_read_and_bad_ones_named() {
        let body = br#"{"version":"4","receiver":"neorun","status":"firing","groupKey":"{}","alerts":[
            {"status":"firing","labels":{"alertname":"GreenErrors","severity":"page"},"annotations":{"summary":"5xx up"},
             "startsAt":"2026-12-02T10:00:00Z","fingerprint":"abc"},
            {"status":"resolved","labels":{"alertname":"X","neorun_alarm":"latency"},"annotations":{}}]}"#;
        let s = parse(body).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].alarm.as_str(), s[0].firing, s[0].fingerprint.as_str()), ("GreenErrors", true, "abc"));
        assert!(s[0].reason.contains("5xx up"), "{}", s[0].reason);
        assert_eq!((s[1].alarm.as_str(), s[1].firing), ("latency", false));
        assert!(parse(b"{}").unwrap_err().contains("version 4"));
        assert!(parse(br#"{"version":"3","alerts":[]}"#).unwrap_err().contains("\"3\""));
        let e = parse(br#"{"version":"4","alerts":[{"status":"firing","labels":{}}]}"#).unwrap_err();
        assert!(e.contains("alerts[0]"), "{e}");
        let e = parse(br#"{"version":"4","alerts":[{"status":"pending","labels":{"alertname":"a"}}]}"#).unwrap_err();
        assert!(e.contains("pending"), "{e}");
    }
}
