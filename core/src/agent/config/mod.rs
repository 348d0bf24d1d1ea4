//! `agent.hcl`: the agent's configuration file.
//!
//! The file is HCL. Top-level items the crate knows are `default_model`, `max_tool_rounds`, the
//! repeatable `providers { }` block (with repeatable `models { }` blocks inside), `queue { }` and
//! `distribution { }`. Anything else is kept, as JSON, in [`AgentConfig::extra`] so a file written
//! for a newer version still loads.
//!
//! Values are literals, lists, objects or `env("NAME")`, which is replaced by the variable's value
//! when the file is parsed (or by nothing when the variable is unset).
//!
//! Parsing goes through `hcl-edit`, whose syntax tree keeps the byte span of every attribute,
//! block and expression; that is how errors name the line of the offending item.

//!
//! One file per job: [`hcl`] evaluates the syntax tree into these types, [`nesting`] refuses
//! pathologically nested input before the HCL parser sees it, [`redact`] keeps secrets out of
//! `Debug` output, and [`suggest`] finds the "did you mean" key for an unknown one.

mod hcl;
mod nesting;
mod redact;
mod suggest;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::queue::SessionQueueConfig;

/// JSON object used for the `extra` maps.
type JsonMap = Map<String, Value>;

/// The contents of an `agent.hcl` file.
///
/// ```hcl
/// default_model = "openai/gpt-4o"
///
/// providers {
///   name    = "openai"
///   api_key = env("OPENAI_API_KEY")
///   models {
///     id = "gpt-4o"
///   }
/// }
///
/// queue {
///   query_max_concurrency = 20
///   lane_handlers {
///     query { mode = "external" }
///   }
/// }
/// ```
///
/// `Debug` output never shows `api_key` values, URL credentials, or `extra` entries whose key
/// looks like a secret (`*_key`, `*token`, `*secret`, `*password`, `authorization`, ...).
///
/// # Examples
///
/// ```
/// use a3s_code_core::agent::AgentConfig;
///
/// let cfg = AgentConfig::parse(
///     r#"
/// default_model = "openai/gpt-4o"
/// providers {
///   name = "openai"
///   models {
///     id = "gpt-4o"
///   }
/// }
/// queue {
///   query_max_concurrency = 20
/// }
/// "#,
///     "agent.hcl",
/// )?;
/// assert_eq!(cfg.default_model.as_deref(), Some("openai/gpt-4o"));
/// assert_eq!(cfg.provider("openai").unwrap().models[0].id, "gpt-4o");
/// assert_eq!(cfg.queue.query_max_concurrency, 20);
/// assert_eq!(cfg.queue.control_max_concurrency, 2); // the default
/// # Ok::<(), a3s_code_core::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct AgentConfig {
    /// The model used when a session names none, as `"provider/model"`.
    pub default_model: Option<String>,
    /// The `providers { }` blocks, in file order.
    pub providers: Vec<ProviderConfig>,
    /// [`SessionQueueConfig::default`] overlaid with the `queue { }` block; already validated.
    pub queue: SessionQueueConfig,
    /// Upper bound of model/tool round trips per request.
    pub max_tool_rounds: Option<u32>,
    /// The `distribution { }` block (message broker settings).
    pub distribution: DistributionConfig,
    /// The file the configuration was read from ([`AgentConfig::from_file`] only).
    pub source: Option<PathBuf>,
    /// Top-level attributes and blocks this version does not know, as JSON.
    ///
    /// An attribute keeps its value; a block becomes an object of its body (labels become nested
    /// keys: `mcp "fs" { x = 1 }` is `{"fs": {"x": 1}}`); a block name used more than once holds
    /// an array of those objects. `env("NAME")` is evaluated (`null` when unset).
    pub extra: JsonMap,
}

/// One `providers { }` block: a model vendor or an OpenAI-compatible endpoint.
///
/// `Debug` output shows whether `api_key` is set, never its value.
#[derive(Clone, Default)]
pub struct ProviderConfig {
    /// The provider's name, the part before `/` in a model reference (`"openai"`).
    pub name: String,
    /// The API key; `None` when absent or when its `env("NAME")` variable is unset.
    pub api_key: Option<String>,
    /// The endpoint, when not the vendor's default.
    pub base_url: Option<String>,
    /// The `models { }` blocks, in file order.
    pub models: Vec<ModelConfig>,
    /// Attributes and blocks of the provider this version does not know, as JSON
    /// (same rules as [`AgentConfig::extra`]).
    pub extra: JsonMap,
}

/// One `models { }` block inside a provider.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelConfig {
    /// The model id sent to the provider (`"gpt-4o"`).
    pub id: String,
    /// A display name.
    pub name: Option<String>,
    /// Attributes and blocks of the model this version does not know, as JSON
    /// (same rules as [`AgentConfig::extra`]).
    pub extra: JsonMap,
}

/// The `distribution { }` block: where external tasks are published.
///
/// `Debug` output hides credentials embedded in `nats_url` (`nats://user:pass@host`).
#[derive(Clone, Default, PartialEq)]
pub struct DistributionConfig {
    /// The NATS server URL(s), comma-separated (`"nats://127.0.0.1:4222"`).
    pub nats_url: Option<String>,
    /// Prefix of the subjects tasks are published on.
    pub subject_prefix: Option<String>,
    /// A NATS `.creds` file.
    pub credentials_file: Option<String>,
    /// Copies JetStream keeps of each stream the session creates (`NatsConfig::replicas`, 1 to
    /// 5; 3 on a three-server cluster).
    pub replicas: Option<usize>,
    /// The tenant of this agent's sessions (`SessionOptions::with_tenant` overrides it).
    pub tenant: Option<String>,
    /// The tenant's weight (default 1).
    pub tenant_weight: Option<f64>,
    /// The tenant's cap of tasks in flight per lane.
    pub tenant_max_in_flight: Option<usize>,
    /// Attributes and blocks of the block this version does not know, as JSON
    /// (same rules as [`AgentConfig::extra`]).
    pub extra: JsonMap,
}

impl DistributionConfig {
    /// The tenant these settings name (the default tenant with weight 1 when none).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a bad name, weight or cap (the
    /// loader already refuses them with their line).
    pub fn tenant(&self) -> crate::Result<crate::broker::Tenant> {
        Ok(crate::broker::Tenant::from_parts(
            self.tenant.clone(),
            self.tenant_weight,
            self.tenant_max_in_flight,
        )?
        .unwrap_or_default())
    }
}

#[cfg(feature = "nats")]
impl DistributionConfig {
    /// The block's NATS settings as [`NatsOptions`](crate::broker::NatsOptions), the core's one
    /// home for turning NATS settings into a [`NatsConfig`](crate::broker::NatsConfig);
    /// `None` without a `nats_url`. The `agent.hcl` keys map as `nats_url` to `url`,
    /// `subject_prefix` to `prefix`, and `credentials_file` and `replicas` to themselves.
    ///
    /// # Examples
    ///
    /// ```
    /// use a3s_code_core::agent::AgentConfig;
    /// let cfg = AgentConfig::parse(
    ///     "distribution {\n  nats_url = \"nats://a:1\"\n  replicas = 3\n}\n",
    ///     "agent.hcl",
    /// )?;
    /// let nats = cfg.distribution.nats_options().unwrap().into_config()?;
    /// assert_eq!(nats.replicas, 3);
    /// assert!(AgentConfig::default().distribution.nats_options().is_none());
    /// # Ok::<(), a3s_code_core::Error>(())
    /// ```
    pub fn nats_options(&self) -> Option<crate::broker::NatsOptions> {
        Some(crate::broker::NatsOptions {
            url: self.nats_url.clone()?,
            prefix: self.subject_prefix.clone(),
            credentials_file: self.credentials_file.clone().map(PathBuf::from),
            replicas: self.replicas,
            ..Default::default()
        })
    }
}

impl AgentConfig {
    /// Reads and parses an `agent.hcl` file, and records its path in [`AgentConfig::source`].
    ///
    /// Safe to call concurrently; it only reads the file and the process environment.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigFile`] when the file cannot be read (`line` is `None`) or when
    /// [`AgentConfig::parse`] rejects it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use a3s_code_core::agent::AgentConfig;
    /// let cfg = AgentConfig::from_file("agent.hcl")?;
    /// println!("{} provider(s)", cfg.providers.len());
    /// # Ok::<(), a3s_code_core::Error>(())
    /// ```
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let src = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
            path: path.to_path_buf(),
            line: None,
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        let mut cfg = Self::parse(&src, path)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses the text of an `agent.hcl` file. `path` only names the file in errors;
    /// [`AgentConfig::source`] stays `None`.
    ///
    /// `env("NAME")` is evaluated now, from the process environment. Never panics, whatever the
    /// input. Safe to call concurrently.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigFile`], with the 1-based line of the offending item, for:
    /// - HCL syntax errors (including an attribute set twice in one body);
    /// - brackets (`(`, `[`, `{`, `${`) nested more than 16 levels deep, refused before parsing
    ///   (the HCL parser can take exponential time on such input when it is malformed);
    /// - a function other than `env("NAME")`, string interpolation, or any other expression
    ///   that is not a literal, list or object;
    /// - a value of the wrong type (a string where a number is expected, a negative number or a
    ///   float for an integer field, ...) in a field this crate knows;
    /// - a provider or model without `name` / `id`, or a name or id used twice;
    /// - inside `queue { }`: an unknown key, lane, handler mode or retry strategy, or a value that
    ///   fails [`SessionQueueConfig::validate`] (such as a zero concurrency);
    /// - `queue`, `distribution`, `lane_handlers` or `retry_policy` given twice, or a known
    ///   block written as an attribute (or the other way round).
    ///
    /// # Examples
    ///
    /// ```
    /// use a3s_code_core::agent::AgentConfig;
    ///
    /// let err = AgentConfig::parse("queue {\n  query_max_concurrency = 0\n}\n", "agent.hcl").unwrap_err();
    /// assert_eq!(err.code(), "ConfigFile");
    /// assert_eq!(err.to_string(), "agent.hcl:2: queue.query_max_concurrency must be greater than 0");
    /// ```
    pub fn parse(src: &str, path: impl AsRef<Path>) -> Result<Self> {
        hcl::parse_with_env(src, path.as_ref(), &hcl::process_env)
    }

    /// The first provider called `name`.
    ///
    /// # Examples
    ///
    /// ```
    /// use a3s_code_core::agent::AgentConfig;
    /// let cfg = AgentConfig::parse("providers {\n  name = \"anthropic\"\n}\n", "agent.hcl")?;
    /// assert!(cfg.provider("anthropic").is_some());
    /// assert!(cfg.provider("openai").is_none());
    /// # Ok::<(), a3s_code_core::Error>(())
    /// ```
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }
}

#[cfg(all(test, feature = "nats"))]
mod tests {
    use super::*;
    use crate::broker::NatsConfig;

    /// `nats_options()` gives the config the session has always built from the block by hand.
    #[test]
    fn distribution_nats_options_match_the_hand_built_config() {
        let cfg = AgentConfig::parse(
            "distribution {\n  nats_url = \"nats://a:1, nats://b:2\"\n  subject_prefix = \"p\"\n  \
             credentials_file = \"/x.creds\"\n  replicas = 3\n}\n",
            "agent.hcl",
        )
        .unwrap();
        let by_hand = NatsConfig::new("nats://a:1, nats://b:2")
            .with_prefix("p")
            .with_credentials_file("/x.creds")
            .with_replicas(3);
        let options = cfg.distribution.nats_options().unwrap();
        assert_eq!(options.into_config().unwrap(), by_hand);
        let bare = AgentConfig::parse("distribution {\n  nats_url = \"nats://a:1\"\n}\n", "p")
            .unwrap()
            .distribution
            .nats_options()
            .unwrap();
        assert_eq!(bare.into_config().unwrap(), NatsConfig::new("nats://a:1"));
    }
}
