//! Secret redaction, for `Debug` output only: API keys, URL credentials, and `extra` entries
//! whose key looks like a secret.

use std::fmt;

use serde_json::Value;

use super::{AgentConfig, DistributionConfig, JsonMap, ProviderConfig};

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("default_model", &self.default_model)
            .field("providers", &self.providers)
            .field("queue", &self.queue)
            .field("max_tool_rounds", &self.max_tool_rounds)
            .field("distribution", &self.distribution)
            .field("source", &self.source)
            .field("extra", &redact_map(&self.extra))
            .finish()
    }
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("api_key", &self.api_key.as_ref().map(|_| Redacted))
            .field("base_url", &self.base_url.as_deref().map(redact_url))
            .field("models", &self.models)
            .field("extra", &redact_map(&self.extra))
            .finish()
    }
}

impl fmt::Debug for DistributionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributionConfig")
            .field("nats_url", &self.nats_url.as_deref().map(redact_url))
            .field("subject_prefix", &self.subject_prefix)
            .field("credentials_file", &self.credentials_file)
            .field("replicas", &self.replicas)
            .field("tenant", &self.tenant)
            .field("tenant_weight", &self.tenant_weight)
            .field("tenant_max_in_flight", &self.tenant_max_in_flight)
            .field("extra", &redact_map(&self.extra))
            .finish()
    }
}

const REDACTED: &str = "<redacted>";

/// Prints as `<redacted>`.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Whether an `extra` key probably holds a secret.
fn is_secret_key(key: &str) -> bool {
    const SEGMENTS: [&str; 10] = [
        "key",
        "apikey",
        "secret",
        "token",
        "password",
        "passwd",
        "credential",
        "credentials",
        "auth",
        "authorization",
    ];
    const SUFFIXES: [&str; 4] = ["apikey", "token", "secret", "password"];
    let key = key.to_ascii_lowercase();
    key.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|seg| SEGMENTS.contains(&seg))
        || SUFFIXES.iter().any(|s| key.ends_with(s))
}

/// A copy of `map` with the values of secret-looking keys replaced, at any depth.
fn redact_map(map: &JsonMap) -> JsonMap {
    map.iter()
        .map(|(k, v)| {
            let v = if is_secret_key(k) && !v.is_null() {
                Value::String(REDACTED.to_owned())
            } else {
                redact_value(v)
            };
            (k.clone(), v)
        })
        .collect()
}

fn redact_value(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(redact_map(map)),
        Value::Array(items) => Value::Array(items.iter().map(redact_value).collect()),
        other => other.clone(),
    }
}

/// Hides the user-info part (`user:pass@`, `token@`) of each comma-separated URL.
fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let authority_start = url.find("://").map_or(0, |i| i + 3);
            let rest = url.get(authority_start..).unwrap_or_default();
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest
                .get(..authority_end)
                .and_then(|authority| authority.rfind('@'))
            {
                Some(at) => {
                    format!(
                        "{}{REDACTED}{}",
                        url.get(..authority_start).unwrap_or_default(),
                        rest.get(at..).unwrap_or_default()
                    )
                }
                None => url.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let cfg = AgentConfig::parse(
            r#"
providers {
  name     = "a"
  api_key  = "sk-very-secret"
  base_url = "https://user:pw-secret@example.com/v1"
  headers  = { Authorization = "Bearer tok-secret", max_tokens = 10 }
}
distribution {
  nats_url = "nats://alice:nats-secret@127.0.0.1:4222,nats://tok-secret@10.0.0.2:4222"
}
github_token = "ghp-secret"
"#,
            "agent.hcl",
        )
        .unwrap();
        let debug = format!("{cfg:?} {:#?}", cfg.providers[0]);
        for secret in [
            "sk-very-secret",
            "pw-secret",
            "tok-secret",
            "nats-secret",
            "ghp-secret",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
        }
        assert!(debug.contains("api_key: Some(<redacted>)"), "{debug}");
        assert!(
            debug.contains("nats://<redacted>@127.0.0.1:4222,nats://<redacted>@10.0.0.2:4222"),
            "{debug}"
        );
        assert!(
            debug.contains("max_tokens"),
            "non-secret keys stay visible: {debug}"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("http://h/p@x"), "http://h/p@x");
    }
}
