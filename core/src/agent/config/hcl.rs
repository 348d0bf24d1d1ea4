//! The evaluator: turns `hcl-edit`'s syntax tree into an [`AgentConfig`], naming the line of
//! each offending item.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use hcl_edit::Span;
use hcl_edit::expr::{Expression, FuncCall, ObjectKey};
use hcl_edit::structure::{Attribute, Block, Body, Structure};
use hcl_edit::template::{Element, Template};
use serde_json::Value;

use super::nesting::{MAX_NESTING, too_deep};
use super::suggest::suggest;
use super::{AgentConfig, DistributionConfig, JsonMap, ModelConfig, ProviderConfig};
use crate::error::{Error, Result};
use crate::queue::{
    LaneHandlerConfig, RetryPolicy, RetryStrategy, SessionLane, SessionQueueConfig, TaskHandlerMode,
};

/// What the environment holds for a variable name.
pub(super) enum EnvValue {
    Set(String),
    Unset,
    NotUnicode,
}

/// Looks a variable up in the process environment.
pub(super) fn process_env(name: &str) -> EnvValue {
    match std::env::var(name) {
        Ok(value) => EnvValue::Set(value),
        Err(std::env::VarError::NotPresent) => EnvValue::Unset,
        Err(std::env::VarError::NotUnicode(_)) => EnvValue::NotUnicode,
    }
}

/// [`AgentConfig::parse`] with an injectable environment (tests cannot set variables safely).
pub(super) fn parse_with_env(
    src: &str,
    path: &Path,
    env: &dyn Fn(&str) -> EnvValue,
) -> Result<AgentConfig> {
    // A byte-order mark is on line 1 and holds no newline, so stripping it keeps line numbers.
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    if let Some(line) = too_deep(src) {
        return Err(Error::ConfigFile {
            path: path.to_path_buf(),
            line: Some(line),
            reason: format!(
                "brackets nested more than {MAX_NESTING} levels deep (unclosed `[`, `(` or `{{`?)"
            ),
        });
    }
    // hcl-edit guards its recursion and is not known to panic; should it ever, the input is
    // reported as unparsable instead of unwinding into the caller.
    let body = match std::panic::catch_unwind(|| hcl_edit::parser::parse_body(src)) {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            let loc = e.location();
            return Err(Error::ConfigFile {
                path: path.to_path_buf(),
                line: Some(loc.line()),
                reason: format!("syntax error at column {}: {}", loc.column(), e.message()),
            });
        }
        Err(_) => {
            return Err(Error::ConfigFile {
                path: path.to_path_buf(),
                line: None,
                reason: "the HCL parser failed on this input".to_owned(),
            });
        }
    };
    let parser = Parser {
        path,
        line_starts: line_starts(src),
        env,
    };
    parser.config(&body)
}
/// Byte offsets at which each line starts.
fn line_starts(src: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(src.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// Keys accepted in `queue { }`: the queue config's own field list, described once in the core.
pub(super) const QUEUE_KEYS: &[&str] = SessionQueueConfig::FIELDS;
pub(super) const LANE_KEYS: [&str; 2] = ["mode", "timeout_ms"];
const RETRY_KEYS: [&str; 4] = [
    "strategy",
    "max_retries",
    "initial_delay_ms",
    "max_delay_ms",
];

/// A `<lane> { }` block of `queue.lane_handlers`, before `default_timeout_ms` is known.
struct LaneEntry {
    lane: SessionLane,
    mode: TaskHandlerMode,
    timeout_ms: Option<u64>,
    line: Option<usize>,
    timeout_line: Option<usize>,
}

/// Where each value set in `queue { }` came from, keyed like `validate()` names fields
/// (`query_max_concurrency`, `retry_policy.max_delay_ms`, `lane_handlers.query.timeout_ms`).
type FieldLines = Vec<(String, Option<usize>)>;

struct Parser<'a> {
    path: &'a Path,
    line_starts: Vec<usize>,
    env: &'a dyn Fn(&str) -> EnvValue,
}

impl Parser<'_> {
    // --- positions and errors -----------------------------------------------------------------

    /// The 1-based line of a span's start.
    fn line(&self, span: Option<Range<usize>>) -> Option<usize> {
        let start = span?.start;
        Some(self.line_starts.partition_point(|&s| s <= start))
    }

    fn attr_line(&self, attr: &Attribute) -> Option<usize> {
        self.line(attr.span())
            .or_else(|| self.line(attr.key.span()))
            .or_else(|| self.line(attr.value.span()))
    }

    fn value_line(&self, attr: &Attribute) -> Option<usize> {
        self.line(attr.value.span())
            .or_else(|| self.attr_line(attr))
    }

    fn block_line(&self, block: &Block) -> Option<usize> {
        self.line(block.span())
            .or_else(|| self.line(block.ident.span()))
    }

    fn err(&self, line: Option<usize>, reason: impl Into<String>) -> Error {
        Error::ConfigFile {
            path: self.path.to_path_buf(),
            line,
            reason: reason.into(),
        }
    }

    fn unknown_key(
        &self,
        line: Option<usize>,
        key: &str,
        section: &str,
        expected: &[&str],
    ) -> Error {
        let hint = match suggest(key, expected) {
            Some(s) => format!("did you mean {s:?}?"),
            None => format!("expected one of: {}", expected.join(", ")),
        };
        self.err(
            line,
            format!("unknown key {:?} in {section} ({hint})", short(key)),
        )
    }

    fn no_labels(&self, block: &Block, section: &str) -> Result<()> {
        match block.labels.first() {
            None => Ok(()),
            Some(label) => Err(self.err(
                self.line(label.span()).or_else(|| self.block_line(block)),
                format!(
                    "the {section} block takes no labels (found {:?})",
                    short(label.as_str())
                ),
            )),
        }
    }

    fn once(
        &self,
        seen: &mut HashMap<&'static str, Option<usize>>,
        key: &'static str,
        block: &Block,
    ) -> Result<()> {
        let line = self.block_line(block);
        if let Some(first) = seen.insert(key, line) {
            return Err(self.err(line, format!("{key} is given twice{}", first_on(first))));
        }
        Ok(())
    }

    fn not_a_block(&self, attr: &Attribute, section: &str) -> Error {
        self.err(
            self.attr_line(attr),
            format!(
                "{section} is a block: write {} {{ ... }}",
                attr.key.as_str()
            ),
        )
    }

    fn not_an_attribute(&self, block: &Block, section: &str) -> Error {
        self.err(
            self.block_line(block),
            format!(
                "{section} is an attribute: write {} = ...",
                block.ident.as_str()
            ),
        )
    }

    // --- values -------------------------------------------------------------------------------

    /// Evaluates an expression to JSON. `at` is the line used when the expression has no span.
    fn eval(&self, expr: &Expression, at: Option<usize>) -> Result<Value> {
        let line = self.line(expr.span()).or(at);
        Ok(match expr {
            Expression::Null(_) => Value::Null,
            Expression::Bool(b) => Value::Bool(*b.value()),
            Expression::Number(n) => {
                let n = n.value();
                if let Some(u) = n.as_u64() {
                    Value::from(u)
                } else if let Some(i) = n.as_i64() {
                    Value::from(i)
                } else {
                    n.as_f64()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                        .ok_or_else(|| self.err(line, "number out of range"))?
                }
            }
            Expression::String(s) => Value::String(s.value().clone()),
            Expression::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.eval(item, line))
                    .collect::<Result<_>>()?,
            ),
            Expression::Object(object) => {
                let mut map = JsonMap::new();
                for (key, value) in object.iter() {
                    let key_line = self.line(key.span()).or(line);
                    let key = match key {
                        ObjectKey::Ident(ident) => ident.as_str().to_owned(),
                        ObjectKey::Expression(expr) => match self.eval(expr, key_line)? {
                            Value::String(s) => s,
                            other => {
                                return Err(self.err(
                                    key_line,
                                    format!(
                                        "object keys must be strings, found {}",
                                        describe(&other)
                                    ),
                                ));
                            }
                        },
                    };
                    if map.contains_key(&key) {
                        return Err(
                            self.err(key_line, format!("duplicate object key {:?}", short(&key)))
                        );
                    }
                    let value = self.eval(value.expr(), key_line)?;
                    map.insert(key, value);
                }
                Value::Object(map)
            }
            Expression::StringTemplate(template) => {
                Value::String(self.literal_template(template, line)?)
            }
            Expression::HeredocTemplate(heredoc) => {
                Value::String(self.literal_template(&heredoc.template, line)?)
            }
            Expression::Parenthesis(inner) => self.eval(inner.inner(), line)?,
            Expression::FuncCall(call) => self.call(call, line)?,
            Expression::Variable(name) => {
                return Err(self.err(
                    line,
                    format!(
                        "unknown name {}: strings must be quoted ({:?})",
                        short(name.as_str()),
                        short(name.as_str())
                    ),
                ));
            }
            _ => {
                return Err(self.err(
                    line,
                    "unsupported expression: values are literals, lists, objects or env(\"NAME\")",
                ));
            }
        })
    }

    /// A template made of literal text only.
    fn literal_template(&self, template: &Template, at: Option<usize>) -> Result<String> {
        let mut out = String::new();
        for element in template.iter() {
            match element {
                Element::Literal(text) => out.push_str(text.value()),
                Element::Interpolation(_) => {
                    return Err(self.err(
                        self.line(element.span()).or(at),
                        "string interpolation (${...}) is not supported; use env(\"NAME\") as the whole value",
                    ));
                }
                Element::Directive(_) => {
                    return Err(self.err(
                        self.line(element.span()).or(at),
                        "template directives (%{...}) are not supported",
                    ));
                }
            }
        }
        Ok(out)
    }

    /// `env("NAME")`, the only function.
    fn call(&self, call: &FuncCall, line: Option<usize>) -> Result<Value> {
        let name = call.name.name.as_str();
        if call.name.is_namespaced() || name != "env" {
            let full: Vec<&str> = call
                .name
                .namespace
                .iter()
                .map(|ns| ns.as_str())
                .chain(std::iter::once(name))
                .collect();
            return Err(self.err(
                line,
                format!(
                    "unknown function {}() (the only function is env(\"NAME\"))",
                    short(&full.join("::"))
                ),
            ));
        }
        let var = match (
            call.args.len(),
            call.args.get(0).and_then(Expression::as_str),
        ) {
            (1, Some(var)) if !call.args.expand_final() => var,
            _ => {
                return Err(self.err(
                    line,
                    "env() takes one argument: the variable name, as a quoted string",
                ));
            }
        };
        if var.is_empty() || var.contains(['=', '\0']) {
            return Err(self.err(
                line,
                format!("invalid environment variable name {:?}", short(var)),
            ));
        }
        match (self.env)(var) {
            EnvValue::Set(value) => Ok(Value::String(value)),
            EnvValue::Unset => Ok(Value::Null),
            EnvValue::NotUnicode => Err(self.err(
                line,
                format!("environment variable {} is not valid UTF-8", short(var)),
            )),
        }
    }

    // --- typed fields -------------------------------------------------------------------------

    fn opt_string(&self, attr: &Attribute, field: &str) -> Result<Option<String>> {
        match self.eval(&attr.value, self.attr_line(attr))? {
            Value::String(s) => Ok(Some(s)),
            Value::Null => Ok(None),
            other => Err(self.err(
                self.value_line(attr),
                format!("{field} must be a string, found {}", describe(&other)),
            )),
        }
    }

    fn required_string(&self, attr: &Attribute, field: &str) -> Result<String> {
        match self.opt_string(attr, field)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(self.err(self.value_line(attr), format!("{field} must not be empty"))),
            None => Err(self.err(
                self.value_line(attr),
                format!(
                    "{field} must be a string, found null (is its environment variable unset?)"
                ),
            )),
        }
    }

    fn boolean(&self, attr: &Attribute, field: &str) -> Result<bool> {
        match self.eval(&attr.value, self.attr_line(attr))? {
            Value::Bool(b) => Ok(b),
            other => Err(self.err(
                self.value_line(attr),
                format!("{field} must be true or false, found {}", describe(&other)),
            )),
        }
    }

    /// A non-negative integer that fits `T`; `null` gives `None`.
    fn opt_int<T: TryFrom<u64>>(&self, attr: &Attribute, field: &str) -> Result<Option<T>> {
        let value = self.eval(&attr.value, self.attr_line(attr))?;
        let line = self.value_line(attr);
        let n = match value {
            Value::Null => return Ok(None),
            Value::Number(n) => n,
            other => {
                return Err(self.err(
                    line,
                    format!(
                        "{field} must be a non-negative integer, found {}",
                        describe(&other)
                    ),
                ));
            }
        };
        match n.as_u64() {
            Some(u) => T::try_from(u)
                .map(Some)
                .map_err(|_| self.err(line, format!("{field} is too large: {u}"))),
            None if n.is_f64() => {
                Err(self.err(line, format!("{field} must be an integer, found {n}")))
            }
            None => Err(self.err(line, format!("{field} must not be negative, found {n}"))),
        }
    }

    fn int<T: TryFrom<u64>>(&self, attr: &Attribute, field: &str) -> Result<T> {
        self.opt_int(attr, field)?.ok_or_else(|| {
            self.err(
                self.value_line(attr),
                format!("{field} must be a non-negative integer, found null"),
            )
        })
    }

    // --- structure ----------------------------------------------------------------------------

    fn config(&self, body: &Body) -> Result<AgentConfig> {
        let mut cfg = AgentConfig::default();
        let mut extra = Extra::default();
        let mut seen = HashMap::new();
        let mut provider_lines: HashMap<String, Option<usize>> = HashMap::new();
        for structure in body.iter() {
            match structure {
                Structure::Attribute(attr) => match attr.key.as_str() {
                    "default_model" => {
                        cfg.default_model = self.opt_string(attr, "default_model")?
                    }
                    "max_tool_rounds" => {
                        cfg.max_tool_rounds = self.opt_int(attr, "max_tool_rounds")?
                    }
                    key @ ("providers" | "queue" | "distribution") => {
                        return Err(self.not_a_block(attr, key));
                    }
                    _ => extra.attribute(self, attr)?,
                },
                Structure::Block(block) => match block.ident.as_str() {
                    "providers" => {
                        let (provider, name_line) = self.provider(block)?;
                        if let Some(first) = provider_lines.insert(provider.name.clone(), name_line)
                        {
                            return Err(self.err(
                                name_line,
                                format!(
                                    "provider {:?} is defined twice{}",
                                    short(&provider.name),
                                    first_on(first)
                                ),
                            ));
                        }
                        cfg.providers.push(provider);
                    }
                    "queue" => {
                        self.once(&mut seen, "queue", block)?;
                        cfg.queue = self.queue(block)?;
                    }
                    "distribution" => {
                        self.once(&mut seen, "distribution", block)?;
                        cfg.distribution = self.distribution(block)?;
                    }
                    key @ ("default_model" | "max_tool_rounds") => {
                        return Err(self.not_an_attribute(block, key));
                    }
                    _ => extra.block(self, block)?,
                },
            }
        }
        cfg.extra = extra.map;
        Ok(cfg)
    }

    /// A `providers { }` block and the line of its `name`.
    fn provider(&self, block: &Block) -> Result<(ProviderConfig, Option<usize>)> {
        self.no_labels(block, "providers")?;
        let mut provider = ProviderConfig::default();
        let mut name = None;
        let mut extra = Extra::default();
        let mut model_lines: HashMap<String, Option<usize>> = HashMap::new();
        for structure in block.body.iter() {
            match structure {
                Structure::Attribute(attr) => match attr.key.as_str() {
                    "name" => {
                        name = Some((
                            self.required_string(attr, "providers.name")?,
                            self.value_line(attr),
                        ))
                    }
                    "api_key" => provider.api_key = self.opt_string(attr, "providers.api_key")?,
                    "base_url" => {
                        provider.base_url = self.opt_string(attr, "providers.base_url")?;
                        if let Some(url) = &provider.base_url {
                            check_http_url(url).map_err(|e| {
                                self.err(self.value_line(attr), format!("providers.base_url: {e}"))
                            })?;
                        }
                    }
                    "models" => return Err(self.not_a_block(attr, "providers.models")),
                    _ => extra.attribute(self, attr)?,
                },
                Structure::Block(inner) => match inner.ident.as_str() {
                    "models" => {
                        let (model, id_line) = self.model(inner)?;
                        if let Some(first) = model_lines.insert(model.id.clone(), id_line) {
                            return Err(self.err(
                                id_line,
                                format!(
                                    "model {:?} is defined twice in this provider{}",
                                    short(&model.id),
                                    first_on(first)
                                ),
                            ));
                        }
                        provider.models.push(model);
                    }
                    key @ ("name" | "api_key" | "base_url") => {
                        return Err(self.not_an_attribute(inner, &format!("providers.{key}")));
                    }
                    _ => extra.block(self, inner)?,
                },
            }
        }
        let Some((name, name_line)) = name else {
            return Err(self.err(
                self.block_line(block),
                "providers block without name = \"...\"",
            ));
        };
        provider.name = name;
        provider.extra = extra.map;
        Ok((provider, name_line))
    }

    /// A `models { }` block and the line of its `id`.
    fn model(&self, block: &Block) -> Result<(ModelConfig, Option<usize>)> {
        self.no_labels(block, "providers.models")?;
        let mut model = ModelConfig::default();
        let mut id = None;
        let mut extra = Extra::default();
        for structure in block.body.iter() {
            match structure {
                Structure::Attribute(attr) => match attr.key.as_str() {
                    "id" => {
                        id = Some((
                            self.required_string(attr, "providers.models.id")?,
                            self.value_line(attr),
                        ))
                    }
                    "name" => model.name = self.opt_string(attr, "providers.models.name")?,
                    _ => extra.attribute(self, attr)?,
                },
                Structure::Block(inner) => match inner.ident.as_str() {
                    key @ ("id" | "name") => {
                        return Err(
                            self.not_an_attribute(inner, &format!("providers.models.{key}"))
                        );
                    }
                    _ => extra.block(self, inner)?,
                },
            }
        }
        let Some((id, id_line)) = id else {
            return Err(self.err(self.block_line(block), "models block without id = \"...\""));
        };
        model.id = id;
        model.extra = extra.map;
        Ok((model, id_line))
    }

    fn distribution(&self, block: &Block) -> Result<DistributionConfig> {
        self.no_labels(block, "distribution")?;
        let mut dist = DistributionConfig::default();
        let mut extra = Extra::default();
        for structure in block.body.iter() {
            match structure {
                Structure::Attribute(attr) => match attr.key.as_str() {
                    "nats_url" => {
                        dist.nats_url = self.opt_string(attr, "distribution.nats_url")?;
                        if let Some(urls) = &dist.nats_url {
                            crate::broker::check_server_urls(urls).map_err(|e| {
                                self.err(
                                    self.value_line(attr),
                                    format!("distribution.nats_url: {e}"),
                                )
                            })?;
                        }
                    }
                    "subject_prefix" => {
                        dist.subject_prefix =
                            self.opt_string(attr, "distribution.subject_prefix")?
                    }
                    "credentials_file" => {
                        dist.credentials_file =
                            self.opt_string(attr, "distribution.credentials_file")?;
                    }
                    "replicas" => {
                        dist.replicas = self.opt_int(attr, "distribution.replicas")?;
                        if let Some(n) = dist.replicas.filter(|n| !(1..=5).contains(n)) {
                            return Err(self.err(
                                self.value_line(attr),
                                format!("distribution.replicas must be 1 to 5, found {n}"),
                            ));
                        }
                    }
                    "tenant" => {
                        dist.tenant = self.opt_string(attr, "distribution.tenant")?;
                        if let Some(t) = &dist.tenant
                            && !crate::broker::wire::is_tenant(t)
                        {
                            return Err(self.err(
                                self.value_line(attr),
                                format!(
                                    "distribution.tenant must be 1 to 64 letters, digits, '-' or \
                                     '_', not starting with '_', found {t:?}"
                                ),
                            ));
                        }
                    }
                    "tenant_weight" => {
                        let line = self.value_line(attr);
                        dist.tenant_weight = match self.eval(&attr.value, self.attr_line(attr))? {
                            Value::Null => None,
                            Value::Number(n) => match n.as_f64() {
                                Some(w) if w.is_finite() && w > 0.0 => Some(w),
                                _ => {
                                    return Err(self.err(
                                        line,
                                        format!(
                                            "distribution.tenant_weight must be > 0, found {n}"
                                        ),
                                    ));
                                }
                            },
                            other => {
                                return Err(self.err(
                                    line,
                                    format!(
                                        "distribution.tenant_weight must be a number, found {}",
                                        describe(&other)
                                    ),
                                ));
                            }
                        };
                    }
                    "tenant_max_in_flight" => {
                        dist.tenant_max_in_flight =
                            self.opt_int(attr, "distribution.tenant_max_in_flight")?;
                        if dist.tenant_max_in_flight == Some(0) {
                            return Err(self.err(
                                self.value_line(attr),
                                "distribution.tenant_max_in_flight must be at least 1",
                            ));
                        }
                    }
                    _ => extra.attribute(self, attr)?,
                },
                Structure::Block(inner) => match inner.ident.as_str() {
                    key @ ("nats_url"
                    | "subject_prefix"
                    | "credentials_file"
                    | "replicas"
                    | "tenant"
                    | "tenant_weight"
                    | "tenant_max_in_flight") => {
                        return Err(self.not_an_attribute(inner, &format!("distribution.{key}")));
                    }
                    _ => extra.block(self, inner)?,
                },
            }
        }
        dist.extra = extra.map;
        Ok(dist)
    }

    fn queue(&self, block: &Block) -> Result<SessionQueueConfig> {
        self.no_labels(block, "queue")?;
        let mut q = SessionQueueConfig::default();
        let mut lines = FieldLines::new();
        let mut lanes = Vec::new();
        let mut seen = HashMap::new();
        for structure in block.body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let key = attr.key.as_str();
                    let field = format!("queue.{key}");
                    let field = field.as_str();
                    match key {
                        "control_max_concurrency" => {
                            q.control_max_concurrency = self.int(attr, field)?
                        }
                        "query_max_concurrency" => {
                            q.query_max_concurrency = self.int(attr, field)?
                        }
                        "execute_max_concurrency" => {
                            q.execute_max_concurrency = self.int(attr, field)?
                        }
                        "generate_max_concurrency" => {
                            q.generate_max_concurrency = self.int(attr, field)?
                        }
                        "max_pending" => q.max_pending = self.int(attr, field)?,
                        "enable_metrics" => q.enable_metrics = self.boolean(attr, field)?,
                        "enable_dlq" => q.enable_dlq = self.boolean(attr, field)?,
                        "dlq_max_size" => q.dlq_max_size = self.int(attr, field)?,
                        "enable_alerts" => q.enable_alerts = self.boolean(attr, field)?,
                        "queue_depth_alert_threshold" => {
                            q.queue_depth_alert_threshold = self.int(attr, field)?
                        }
                        "latency_alert_threshold_ms" => {
                            q.latency_alert_threshold_ms = self.int(attr, field)?
                        }
                        "default_timeout_ms" => q.default_timeout_ms = self.int(attr, field)?,
                        "finished_history" => q.finished_history = self.int(attr, field)?,
                        "lane_handlers" | "retry_policy" => {
                            return Err(self.not_a_block(attr, field));
                        }
                        _ => {
                            return Err(self.unknown_key(
                                self.attr_line(attr),
                                key,
                                "queue",
                                QUEUE_KEYS,
                            ));
                        }
                    }
                    lines.push((key.to_owned(), self.value_line(attr)));
                }
                Structure::Block(inner) => match inner.ident.as_str() {
                    "lane_handlers" => {
                        self.once(&mut seen, "lane_handlers", inner)?;
                        self.lane_handlers(inner, &mut lanes)?;
                    }
                    "retry_policy" => {
                        self.once(&mut seen, "retry_policy", inner)?;
                        self.retry_policy(inner, &mut q.retry_policy, &mut lines)?;
                    }
                    key if QUEUE_KEYS.contains(&key) => {
                        return Err(self.not_an_attribute(inner, &format!("queue.{key}")));
                    }
                    key => {
                        return Err(self.unknown_key(
                            self.block_line(inner),
                            key,
                            "queue",
                            QUEUE_KEYS,
                        ));
                    }
                },
            }
        }
        // Lanes without their own timeout_ms take default_timeout_ms, wherever it is written.
        for entry in lanes {
            let timeout_ms = entry.timeout_ms.unwrap_or(q.default_timeout_ms);
            q.lane_handlers.insert(
                entry.lane,
                LaneHandlerConfig {
                    mode: entry.mode,
                    timeout_ms,
                },
            );
            let line = if entry.timeout_ms.is_some() {
                entry.timeout_line
            } else {
                entry.line
            };
            lines.push((format!("lane_handlers.{}.timeout_ms", entry.lane), line));
        }
        if let Err(e) = q.validate() {
            let reason = match e {
                Error::InvalidConfig { reason } => reason,
                other => other.to_string(),
            };
            // validate() names the field first; point at the line that set it, else at the block.
            let line = lines
                .iter()
                .filter(|(field, _)| {
                    reason
                        .strip_prefix(field.as_str())
                        .is_some_and(|rest| rest.starts_with(' '))
                })
                .max_by_key(|(field, _)| field.len())
                .and_then(|(_, line)| *line)
                .or_else(|| self.block_line(block));
            return Err(self.err(line, format!("queue.{reason}")));
        }
        Ok(q)
    }

    fn lane_handlers(&self, block: &Block, lanes: &mut Vec<LaneEntry>) -> Result<()> {
        self.no_labels(block, "queue.lane_handlers")?;
        for structure in block.body.iter() {
            let (name, line) = match structure {
                Structure::Attribute(attr) => (attr.key.as_str(), self.attr_line(attr)),
                Structure::Block(inner) => (inner.ident.as_str(), self.block_line(inner)),
            };
            let Ok(lane) = name.parse::<SessionLane>() else {
                return Err(self.err(
                    line,
                    format!(
                        "unknown lane {:?} in queue.lane_handlers (expected control, query, execute or generate)",
                        short(name)
                    ),
                ));
            };
            let Structure::Block(inner) = structure else {
                return Err(self.err(
                    line,
                    format!(
                        "queue.lane_handlers.{lane} is a block: write {name} {{ mode = \"...\", timeout_ms = ... }}"
                    ),
                ));
            };
            let section = format!("queue.lane_handlers.{lane}");
            self.no_labels(inner, &section)?;
            if let Some(first) = lanes.iter().find(|e| e.lane == lane) {
                return Err(self.err(
                    line,
                    format!("{section} is given twice{}", first_on(first.line)),
                ));
            }
            let mut entry = LaneEntry {
                lane,
                mode: TaskHandlerMode::default(),
                timeout_ms: None,
                line,
                timeout_line: None,
            };
            for item in inner.body.iter() {
                let attr = match item {
                    Structure::Attribute(attr) => attr,
                    Structure::Block(b) => {
                        return Err(self.unknown_key(
                            self.block_line(b),
                            b.ident.as_str(),
                            &section,
                            &LANE_KEYS,
                        ));
                    }
                };
                let key = attr.key.as_str();
                let field = format!("{section}.{key}");
                match key {
                    "mode" => {
                        let mode = self.required_string(attr, &field)?;
                        entry.mode = mode.parse().map_err(|_| {
                            self.err(
                                self.value_line(attr),
                                format!(
                                    "unknown handler mode {:?} in {field} (expected internal, external or hybrid)",
                                    short(&mode)
                                ),
                            )
                        })?;
                    }
                    "timeout_ms" => {
                        entry.timeout_ms = Some(self.int(attr, &field)?);
                        entry.timeout_line = self.value_line(attr);
                    }
                    _ => {
                        return Err(self.unknown_key(
                            self.attr_line(attr),
                            key,
                            &section,
                            &LANE_KEYS,
                        ));
                    }
                }
            }
            lanes.push(entry);
        }
        Ok(())
    }

    fn retry_policy(
        &self,
        block: &Block,
        policy: &mut RetryPolicy,
        lines: &mut FieldLines,
    ) -> Result<()> {
        const SECTION: &str = "queue.retry_policy";
        self.no_labels(block, SECTION)?;
        for item in block.body.iter() {
            let attr = match item {
                Structure::Attribute(attr) => attr,
                Structure::Block(b) => {
                    return Err(self.unknown_key(
                        self.block_line(b),
                        b.ident.as_str(),
                        SECTION,
                        &RETRY_KEYS,
                    ));
                }
            };
            let key = attr.key.as_str();
            let field = format!("{SECTION}.{key}");
            match key {
                "strategy" => {
                    let strategy = self.required_string(attr, &field)?;
                    policy.strategy = strategy.parse::<RetryStrategy>().map_err(|_| {
                        self.err(
                            self.value_line(attr),
                            format!(
                                "unknown retry strategy {:?} in {field} (expected none, fixed or exponential)",
                                short(&strategy)
                            ),
                        )
                    })?;
                }
                "max_retries" => policy.max_retries = self.int(attr, &field)?,
                "initial_delay_ms" => policy.initial_delay_ms = self.int(attr, &field)?,
                "max_delay_ms" => policy.max_delay_ms = self.int(attr, &field)?,
                _ => return Err(self.unknown_key(self.attr_line(attr), key, SECTION, &RETRY_KEYS)),
            }
            lines.push((format!("retry_policy.{key}"), self.value_line(attr)));
        }
        Ok(())
    }
}

/// Collects the unknown items of a body as JSON.
#[derive(Default)]
struct Extra {
    map: JsonMap,
    seen: HashMap<String, Seen>,
}

/// What an `extra` name was first used for.
struct Seen {
    is_block: bool,
    /// How many blocks have this name (1 for an attribute).
    count: usize,
    first_line: Option<usize>,
}

impl Extra {
    fn attribute(&mut self, parser: &Parser<'_>, attr: &Attribute) -> Result<()> {
        let name = attr.key.as_str();
        let line = parser.attr_line(attr);
        if let Some(seen) = self.seen.get(name) {
            return Err(parser.err(
                line,
                format!(
                    "{:?} is defined twice{}",
                    short(name),
                    first_on(seen.first_line)
                ),
            ));
        }
        let value = parser.eval(&attr.value, line)?;
        self.seen.insert(
            name.to_owned(),
            Seen {
                is_block: false,
                count: 1,
                first_line: line,
            },
        );
        self.map.insert(name.to_owned(), value);
        Ok(())
    }

    /// A block becomes an object of its body, nested under its labels; repeated names become an
    /// array.
    fn block(&mut self, parser: &Parser<'_>, block: &Block) -> Result<()> {
        let name = block.ident.as_str();
        let line = parser.block_line(block);
        let mut value = Value::Object(Self::body(parser, &block.body)?);
        for label in block.labels.iter().rev() {
            value = Value::Object(JsonMap::from_iter([(label.as_str().to_owned(), value)]));
        }
        match self.seen.get_mut(name) {
            None => {
                self.seen.insert(
                    name.to_owned(),
                    Seen {
                        is_block: true,
                        count: 1,
                        first_line: line,
                    },
                );
                self.map.insert(name.to_owned(), value);
            }
            Some(seen) if !seen.is_block => {
                return Err(parser.err(
                    line,
                    format!(
                        "{:?} is used as a block here and as an attribute{}",
                        short(name),
                        first_on(seen.first_line)
                    ),
                ));
            }
            Some(seen) => {
                seen.count += 1;
                let slot = self.map.entry(name.to_owned()).or_insert(Value::Null);
                if seen.count == 2 {
                    *slot = Value::Array(vec![slot.take()]);
                }
                if let Value::Array(items) = slot {
                    items.push(value);
                }
            }
        }
        Ok(())
    }

    /// The body of an unknown block, with the same rules.
    fn body(parser: &Parser<'_>, body: &Body) -> Result<JsonMap> {
        let mut extra = Extra::default();
        for structure in body.iter() {
            match structure {
                Structure::Attribute(attr) => extra.attribute(parser, attr)?,
                Structure::Block(block) => extra.block(parser, block)?,
            }
        }
        Ok(extra.map)
    }
}

/// `" (first on line N)"`, or nothing when the line is unknown.
fn first_on(line: Option<usize>) -> String {
    line.map(|l| format!(" (first on line {l})"))
        .unwrap_or_default()
}

/// A user-written name or value, cut to a length fit for an error message.
fn short(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        s.chars().take(MAX).chain(std::iter::once('…')).collect()
    }
}

/// How a value is named in a type error. Strings are not quoted back: they may hold secrets.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// Checks a model provider's `base_url`: an absolute `http://` or `https://` URL.
///
/// # Errors
///
/// Why it is not usable.
fn check_http_url(url: &str) -> std::result::Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_env(name: &str) -> EnvValue {
        match name {
            "SET_KEY" => EnvValue::Set("sk-from-env".to_owned()),
            "BAD_UTF8" => EnvValue::NotUnicode,
            _ => EnvValue::Unset,
        }
    }

    fn parse(src: &str) -> Result<AgentConfig> {
        parse_with_env(src, Path::new("agent.hcl"), &fake_env)
    }

    /// The line and reason of a `ConfigFile` error.
    fn fail(src: &str) -> (Option<usize>, String) {
        match parse(src) {
            Err(Error::ConfigFile { path, line, reason }) => {
                assert_eq!(path, Path::new("agent.hcl"));
                (line, reason)
            }
            other => panic!("expected a ConfigFile error, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_fails(src: &str, line: usize, needle: &str) {
        let (l, reason) = fail(src);
        assert_eq!(l, Some(line), "line of {reason:?}");
        assert!(
            reason.contains(needle),
            "{reason:?} should contain {needle:?}"
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.queue, SessionQueueConfig::default());
        assert!(cfg.providers.is_empty() && cfg.extra.is_empty() && cfg.source.is_none());
        assert_eq!(parse("# only a comment\n\n").unwrap().default_model, None);
    }

    #[test]
    fn env_is_evaluated_or_none() {
        let cfg = parse(
            r#"
providers {
  name     = "a"
  api_key  = env("SET_KEY")
  base_url = env("UNSET")
  headers  = { x = env("UNSET"), y = env("SET_KEY") }
}
"#,
        )
        .unwrap();
        let p = cfg.provider("a").unwrap();
        assert_eq!(p.api_key.as_deref(), Some("sk-from-env"));
        assert_eq!(p.base_url, None);
        assert_eq!(
            p.extra["headers"],
            serde_json::json!({"x": null, "y": "sk-from-env"})
        );
        assert_fails("x = env(\"BAD_UTF8\")\n", 1, "not valid UTF-8");
        assert_fails("x = env(\"A=B\")\n", 1, "invalid environment variable name");
        assert_fails("x = env()\n", 1, "env() takes one argument");
        assert_fails("x = env(\"A\", \"B\")\n", 1, "env() takes one argument");
        assert_fails("x = env(NAME)\n", 1, "env() takes one argument");
    }

    #[test]
    fn only_env_is_a_function() {
        assert_fails("\n\nx = file(\"k\")\n", 3, "unknown function file()");
        assert_fails(
            "providers {\n  name = \"a\"\n  api_key = upper(\"k\")\n}\n",
            3,
            "unknown function upper()",
        );
        assert_fails(
            "x = [1,\n  provider::p::env(\"A\")]\n",
            2,
            "unknown function provider::p::env()",
        );
    }

    #[test]
    fn non_literal_expressions_are_rejected() {
        assert_fails("x = 1 + 2\n", 1, "unsupported expression");
        assert_fails("x = \"a-${env(\"SET_KEY\")}\"\n", 1, "string interpolation");
        assert_fails(
            "queue {\n  enable_dlq = yes\n}\n",
            2,
            "strings must be quoted",
        );
        assert_eq!(
            parse("x = \"plain\"\ny = (2)\nz = <<EOT\nhi\nEOT\n")
                .unwrap()
                .extra["z"],
            "hi\n"
        );
    }

    #[test]
    fn numbers_keep_their_kind_in_extra() {
        let cfg = parse("a = -3\nb = 1.5\nc = 18446744073709551615\nd = null\ne = true\n").unwrap();
        assert_eq!(
            Value::Object(cfg.extra),
            serde_json::json!({"a": -3, "b": 1.5, "c": u64::MAX, "d": null, "e": true})
        );
    }

    #[test]
    fn extra_blocks_nest_labels_and_repeat_as_arrays() {
        let cfg = parse(
            r#"
mcp "fs" "local" {
  command = "fs-server"
}
hook { on = "start" }
hook { on = "stop" }
hook { on = "exit" }
"#,
        )
        .unwrap();
        assert_eq!(
            cfg.extra["mcp"],
            serde_json::json!({"fs": {"local": {"command": "fs-server"}}})
        );
        assert_eq!(
            cfg.extra["hook"],
            serde_json::json!([{"on": "start"}, {"on": "stop"}, {"on": "exit"}])
        );
        assert_fails(
            "x = 1\nx { }\n",
            2,
            "as a block here and as an attribute (first on line 1)",
        );
        assert_fails("x {\n}\nx = 1\n", 3, "defined twice (first on line 1)");
    }

    #[test]
    fn known_items_of_the_wrong_kind() {
        assert_fails("queue = {}\n", 1, "queue is a block");
        assert_fails("default_model {\n}\n", 1, "default_model is an attribute");
        assert_fails(
            "providers {\n  name = \"a\"\n  models = []\n}\n",
            3,
            "providers.models is a block",
        );
        assert_fails(
            "queue {\n  retry_policy = {}\n}\n",
            2,
            "queue.retry_policy is a block",
        );
        assert_fails(
            "queue {\n  max_pending { }\n}\n",
            2,
            "queue.max_pending is an attribute",
        );
        assert_fails(
            "queue {\n  lane_handlers {\n    query = {}\n  }\n}\n",
            3,
            "queue.lane_handlers.query is a block",
        );
    }

    #[test]
    fn singletons_and_names_are_unique() {
        assert_fails(
            "queue {\n}\nqueue {\n}\n",
            3,
            "queue is given twice (first on line 1)",
        );
        assert_fails("distribution {\n}\n\ndistribution {\n}\n", 4, "given twice");
        assert_fails(
            "providers {\n  name = \"a\"\n}\nproviders {\n  name = \"a\"\n}\n",
            5,
            "provider \"a\" is defined twice (first on line 2)",
        );
        assert_fails(
            "providers {\n  name = \"a\"\n  models { id = \"m\" }\n  models { id = \"m\" }\n}\n",
            4,
            "model \"m\" is defined twice",
        );
        assert_fails(
            "queue {\n  lane_handlers {\n    query { mode = \"external\" }\n    QUERY { mode = \"hybrid\" }\n  }\n}\n",
            4,
            "queue.lane_handlers.query is given twice (first on line 3)",
        );
    }

    #[test]
    fn providers_and_models_need_names() {
        assert_fails("\nproviders {\n  api_key = \"k\"\n}\n", 2, "without name");
        assert_fails(
            "providers {\n  name = \"\"\n}\n",
            2,
            "providers.name must not be empty",
        );
        assert_fails(
            "providers {\n  name = env(\"UNSET\")\n}\n",
            2,
            "providers.name must be a string, found null",
        );
        assert_fails(
            "providers {\n  name = 3\n}\n",
            2,
            "providers.name must be a string, found 3",
        );
        assert_fails(
            "providers {\n  name = \"a\"\n  models {\n    name = \"x\"\n  }\n}\n",
            3,
            "without id",
        );
        assert_fails(
            "providers \"openai\" {\n  name = \"a\"\n}\n",
            1,
            "takes no labels",
        );
    }

    #[test]
    fn lane_timeout_defaults_to_default_timeout_in_any_order() {
        for src in [
            "queue {\n  default_timeout_ms = 5000\n  lane_handlers {\n    query { mode = \"external\" }\n  }\n}\n",
            "queue {\n  lane_handlers {\n    query { mode = \"external\" }\n  }\n  default_timeout_ms = 5000\n}\n",
        ] {
            let q = parse(src).unwrap().queue;
            assert_eq!(
                q.lane_handler(SessionLane::Query),
                LaneHandlerConfig {
                    mode: TaskHandlerMode::External,
                    timeout_ms: 5000
                }
            );
            assert_eq!(q.lane_handlers.len(), 1);
        }
        let q = parse(
            "queue {\n  lane_handlers {\n    execute {\n      timeout_ms = 7\n    }\n  }\n}\n",
        )
        .unwrap()
        .queue;
        assert_eq!(
            q.lane_handler(SessionLane::Execute),
            LaneHandlerConfig {
                mode: TaskHandlerMode::Internal,
                timeout_ms: 7
            }
        );
    }

    #[test]
    fn queue_type_errors_name_the_field_and_line() {
        assert_fails(
            "queue {\n  max_pending = \"10\"\n}\n",
            2,
            "queue.max_pending must be a non-negative integer, found a string",
        );
        assert_fails(
            "queue {\n  max_pending = -1\n}\n",
            2,
            "queue.max_pending must not be negative, found -1",
        );
        assert_fails(
            "queue {\n  max_pending = 1.5\n}\n",
            2,
            "queue.max_pending must be an integer, found 1.5",
        );
        assert_fails("queue {\n  max_pending = null\n}\n", 2, "found null");
        assert_fails(
            "queue {\n  enable_dlq = \"true\"\n}\n",
            2,
            "queue.enable_dlq must be true or false, found a string",
        );
        assert_fails(
            "queue {\n  retry_policy {\n    max_retries = 4294967296\n  }\n}\n",
            3,
            "queue.retry_policy.max_retries is too large: 4294967296",
        );
        assert_fails(
            "max_tool_rounds = 4294967296\n",
            1,
            "max_tool_rounds is too large",
        );
        assert_fails(
            "queue {\n  lane_handlers {\n    query { mode = 1 }\n  }\n}\n",
            3,
            "mode must be a string",
        );
    }

    #[test]
    fn validation_errors_point_at_the_value() {
        assert_fails(
            "queue {\n  enable_dlq = true\n  dlq_max_size = 0\n}\n",
            3,
            "queue.dlq_max_size must be greater than 0",
        );
        assert_fails(
            "queue {\n  lane_handlers {\n    generate {\n      mode = \"external\"\n      timeout_ms = 0\n    }\n  }\n}\n",
            5,
            "queue.lane_handlers.generate.timeout_ms must be greater than 0",
        );
        assert_fails(
            "queue {\n  retry_policy {\n    strategy = \"fixed\"\n    max_delay_ms = 0\n  }\n}\n",
            4,
            "queue.retry_policy.max_delay_ms must be greater than 0",
        );
        // The first line of the value counts, also for a value split over lines.
        assert_fails(
            "queue {\n  default_timeout_ms = (\n    0\n  )\n}\n",
            2,
            "queue.default_timeout_ms must be greater than 0",
        );
    }

    #[test]
    fn unknown_keys_suggest_the_closest() {
        let (line, reason) =
            fail("queue {\n  enable_metrics = true\n  query_max_concurency = 3\n}\n");
        assert_eq!(line, Some(3));
        assert_eq!(
            reason,
            "unknown key \"query_max_concurency\" in queue (did you mean \"query_max_concurrency\"?)"
        );
        let (_, reason) = fail("queue {\n  colour = 3\n}\n");
        assert!(
            reason.starts_with(
                "unknown key \"colour\" in queue (expected one of: control_max_concurrency, "
            ),
            "{reason}"
        );
        assert_fails(
            "queue {\n  retry_policy {\n    stratgy = \"fixed\"\n  }\n}\n",
            3,
            "did you mean \"strategy\"?",
        );
        assert_fails(
            "queue {\n  lane_handlers {\n    query {\n      mod = \"external\"\n    }\n  }\n}\n",
            4,
            "did you mean \"mode\"?",
        );
        assert_fails(
            "queue {\n  metrics {\n  }\n}\n",
            2,
            "unknown key \"metrics\" in queue",
        );
        // One-line blocks carry spans too.
        assert_fails(
            "queue {\n  lane_handlers {\n\n    query { mod = \"external\" }\n  }\n}\n",
            4,
            "did you mean \"mode\"?",
        );
        assert_fails(
            "queue {\n  lane_handlers {\n    query { mode = \"x\" }\n  }\n}\n",
            3,
            "unknown handler mode \"x\"",
        );
    }

    #[test]
    fn syntax_errors_carry_the_parser_line() {
        assert_fails("a = 1\nb = \n", 2, "syntax error");
        assert_fails("a = 1\na = 2\n", 2, "redefined attribute");
        // An unclosed block is reported on the last line, where the parser gave up.
        assert_fails("queue {\n  x = 1\n", 2, "expected `}`");
    }

    #[test]
    fn byte_order_mark_and_crlf_are_accepted() {
        let cfg = parse("\u{feff}default_model = \"a/b\"\r\nqueue {\r\n  max_pending = 5\r\n}\r\n")
            .unwrap();
        assert_eq!(cfg.default_model.as_deref(), Some("a/b"));
        assert_eq!(cfg.queue.max_pending, 5);
        assert_fails(
            "\u{feff}a = 1\r\nqueue {\r\n  max_pending = 0\r\n}\r\n",
            3,
            "max_pending",
        );
    }

    #[test]
    fn never_panics_on_damaged_input() {
        let sample = r#"default_model = "openai/gpt-4o"
providers {
  name    = "openai"
  api_key = env("SET_KEY")
  models {
    id   = "gpt-4o"
    tags = ["a", { b = <<EOT
x
EOT
    }]
  }
}
queue {
  query_max_concurrency = 20
  lane_handlers {
    query { mode = "external" }
  }
  retry_policy {
    strategy = "exponential"
  }
}
"#;
        parse(sample).unwrap();
        for (i, _) in sample.char_indices() {
            let _ = parse(&sample[..i]);
            let _ = parse(&sample[i..]);
            let mut damaged = sample.to_owned();
            damaged.remove(i);
            let _ = parse(&damaged);
            for junk in ["{", "}", "\"", "=", "\n", "-", "é", "${", "0"] {
                let mut damaged = sample.to_owned();
                damaged.insert_str(i, junk);
                let _ = parse(&damaged);
            }
        }
        let _ = parse(&"[".repeat(10_000));
        let _ = parse(&format!(
            "x = {}1{}\n",
            "[".repeat(5_000),
            "]".repeat(5_000)
        ));
        let _ = parse(&"a {\n".repeat(5_000));
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        // Found by fuzz/agent_hcl: each unclosed `a[` doubled hcl-edit's time (here: hours).
        let slow = format!("o = {}# c\n", "a[b%c%".repeat(40));
        assert_fails(&slow, 1, "nested more than 16 levels");
        assert_fails(&format!("x = 1\ny = {}\n", "[\n".repeat(17)), 18, "nested");
        assert_fails(&format!("x = \"${{{}}}\"\n", "(".repeat(16)), 1, "nested");
        // Up to the limit is fine.
        let ok = format!("x = {}1{}\n", "[".repeat(16), "]".repeat(16));
        assert_eq!(parse(&ok).unwrap().extra["x"].to_string().len(), 33);
        // Brackets in strings do not count (more in `nesting`'s tests).
        let b = "[({".repeat(20);
        assert_eq!(parse(&format!("a = \"{b}\"\n")).unwrap().extra["a"], b);
    }
}
