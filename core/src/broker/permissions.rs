//! The NATS permissions each role needs, generated so operators never write them by hand
//! (`a3s-code auth permissions`). `docs/protocol.md` §8 explains each one.
//!
//! - `worker` with a tenant reaches only that tenant's tasks (its stream, consumers and
//!   acknowledgements), publishes only that tenant's results, output and presence, reads and
//!   writes only that tenant's objects, and receives replies only on its own inbox prefix.
//! - `worker` without a tenant is the shared fleet: every tenant's tasks and objects, but no
//!   results, no task publishing, no stream management.
//! - `session`: what a process hosting sessions needs (a trusted service credential).
//! - `viewer` reads sessions' lanes, tasks and dead letters through the admin API (its view
//!   subjects); `admin` is a viewer that may also act (its admin subjects: cancel, pause,
//!   resume, retry / delete / purge dead letters); `monitor` reads presence, announcements and
//!   stream figures only (autoscaling signals). Confined to a tenant, each sees only that
//!   tenant's sessions and workers, and cannot read the shared dead-letter stream (whose
//!   subjects it could not be limited to its own).

use std::fmt::Write as _;

use super::wire::{FLEET, Names, is_tenant};
use crate::error::{Error, Result};

/// The first token of workers' inbox prefixes (`_INBOX_W.<tenant>`).
pub const WORKER_INBOXES: &str = "_INBOX_W";

/// Who a credential is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A worker: of one tenant, or of every tenant (the shared fleet).
    Worker,
    /// A process hosting sessions.
    Session,
    /// Reads sessions' lanes, tasks and dead letters; takes no actions.
    Viewer,
    /// A viewer that may also act (cancel, pause, resume, dead-letter actions).
    Admin,
    /// Reads presence and stream figures only (autoscaling signals).
    Monitor,
}

impl std::str::FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "worker" => Role::Worker,
            "session" => Role::Session,
            "viewer" => Role::Viewer,
            "admin" => Role::Admin,
            "monitor" => Role::Monitor,
            _ => {
                return Err(Error::invalid_config(format!(
                    "unknown role {s:?} (expected worker, session, viewer, admin or monitor)"
                )));
            }
        })
    }
}

/// A credential's permissions, in nats-server terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to.
    pub publish_allow: Vec<String>,
    /// Subjects it may not publish to, even where `publish_allow` would let it.
    pub publish_deny: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe_allow: Vec<String>,
    /// The inbox prefix its clients must use (`NatsConfig::with_inbox_prefix`,
    /// `--inbox-prefix`, `A3S_NATS_INBOX_PREFIX`).
    pub inbox_prefix: String,
}

impl Permissions {
    /// The permissions of `role` under `prefix`; `tenant` confines a worker (and a viewer,
    /// admin or monitor) to one tenant.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a bad prefix or tenant, or a tenant for the session role.
    ///
    /// # Examples
    ///
    /// ```
    /// use a3s_code_core::broker::permissions::{Permissions, Role};
    /// let p = Permissions::for_role(Role::Worker, "a3s", Some("acme")).unwrap();
    /// assert!(p.publish_allow.contains(&"a3s.result.acme.>".to_owned()));
    /// assert_eq!(p.inbox_prefix, "_INBOX_W.acme");
    /// assert!(p.to_nats_config("worker-acme", "secret").contains("_INBOX_W.acme.>"));
    /// ```
    pub fn for_role(role: Role, prefix: &str, tenant: Option<&str>) -> Result<Self> {
        let n = Names::new(prefix)?;
        if let Some(t) = tenant
            && !is_tenant(t)
        {
            return Err(Error::invalid_config(format!(
                "tenant {t:?} is not a valid name"
            )));
        }
        let p = n.prefix().to_owned();
        let t = tenant.unwrap_or("*");
        let mut out = Permissions::default();
        match role {
            Role::Worker => {
                // Its own token under `_INBOX_W`, so sessions can answer every worker (attach
                // replies) while no worker can read another tenant's replies.
                out.inbox_prefix = format!("{WORKER_INBOXES}.{}", tenant.unwrap_or(FLEET));
                let tasks: Vec<String> = match tenant {
                    Some(t) => vec![n.tasks_stream(t)],
                    // Stream names are single tokens: a fleet worker may pull any stream's
                    // consumers except the results' and dead letters' (denied below).
                    None => vec!["*".to_owned()],
                };
                for stream in &tasks {
                    out.publish_allow.extend([
                        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
                        format!("$JS.API.CONSUMER.INFO.{stream}.*"),
                        format!("$JS.API.STREAM.INFO.{stream}"),
                        format!("$JS.ACK.{stream}.>"),
                    ]);
                }
                let buckets: Vec<String> = match tenant {
                    Some(t) => vec![n.objects_bucket(t)],
                    None => vec!["*".to_owned()],
                };
                for b in &buckets {
                    let obj = if b == "*" {
                        "*".to_owned()
                    } else {
                        format!("OBJ_{b}")
                    };
                    out.publish_allow.extend([
                        format!("$JS.API.STREAM.INFO.{obj}"),
                        format!("$JS.API.STREAM.MSG.GET.{obj}"),
                        format!("$JS.API.DIRECT.GET.{obj}.>"),
                        format!("$JS.API.CONSUMER.CREATE.{obj}"),
                        format!("$JS.API.CONSUMER.CREATE.{obj}.>"),
                        format!("$JS.API.CONSUMER.DELETE.{obj}.*"),
                        format!("$JS.FC.{obj}.>"),
                        format!("$O.{b}.>"),
                    ]);
                }
                out.publish_allow.extend([
                    format!("{p}.result.{t}.>"),
                    format!("{p}.output.{t}.>"),
                    format!("{p}.taken.{t}.>"),
                    format!("{p}.presence.{}.*", tenant.unwrap_or(FLEET)),
                    format!("{p}.attach.{}.*", tenant.unwrap_or("*")),
                ]);
                if tenant.is_none() {
                    out.publish_allow.push(format!("{p}.attach.*"));
                    out.publish_allow.push(format!("{p}.presence.*.*"));
                    let results = n.results_stream();
                    let dlq = n.dlq_stream();
                    out.publish_deny.extend([
                        format!("$JS.API.CONSUMER.MSG.NEXT.{results}.*"),
                        format!("$JS.API.CONSUMER.MSG.NEXT.{dlq}.*"),
                        format!("$JS.API.CONSUMER.CREATE.{results}"),
                        format!("$JS.API.CONSUMER.CREATE.{results}.>"),
                        format!("$JS.API.CONSUMER.CREATE.{dlq}"),
                        format!("$JS.API.CONSUMER.CREATE.{dlq}.>"),
                        format!("$JS.API.DIRECT.GET.{results}.>"),
                        format!("$JS.API.STREAM.MSG.GET.{results}"),
                    ]);
                }
                out.subscribe_allow.extend([
                    format!("{}.>", out.inbox_prefix),
                    format!("{p}.ready.{t}"),
                    format!("{p}.cancel.{t}"),
                ]);
            }
            Role::Session => {
                if tenant.is_some() {
                    return Err(Error::invalid_config(
                        "a session credential is not confined to a tenant (a process may host \
                         several); give the tenant to SessionOptions::with_tenant",
                    ));
                }
                out.inbox_prefix = "_INBOX".to_owned();
                out.publish_allow.extend([
                    "$JS.API.>".to_owned(),
                    "$JS.ACK.>".to_owned(),
                    "$JS.FC.>".to_owned(),
                    // Object subjects start with the bucket's name, one token: `*` cannot
                    // narrow it to this prefix's buckets.
                    "$O.>".to_owned(),
                    format!("{p}.task.>"),
                    format!("{p}.dlq.>"),
                    format!("{p}.ready.>"),
                    format!("{p}.cancel.>"),
                    format!("{p}.event.>"),
                    format!("{p}.announce.>"),
                    "_INBOX.>".to_owned(),
                    format!("{WORKER_INBOXES}.>"),
                    // Answers to viewers, admins and monitors (the admin API).
                    "_INBOX_viewer.>".to_owned(),
                    "_INBOX_admin.>".to_owned(),
                    "_INBOX_monitor.>".to_owned(),
                ]);
                out.subscribe_allow.extend([
                    "_INBOX.>".to_owned(),
                    format!("{p}.output.>"),
                    format!("{p}.attach.>"),
                    format!("{p}.presence.>"),
                    format!("{p}.taken.>"),
                    format!("{p}.view.>"),
                    format!("{p}.admin.>"),
                    format!("{p}.hello.>"),
                ]);
            }
            Role::Viewer | Role::Admin | Role::Monitor => {
                // Its own token under `_INBOX_<role>`, as for workers: no credential reads
                // another tenant's answers.
                let role_name = match role {
                    Role::Monitor => "monitor",
                    Role::Admin => "admin",
                    _ => "viewer",
                };
                out.inbox_prefix = format!("_INBOX_{role_name}.{}", tenant.unwrap_or(FLEET));
                let tasks = tenant.map_or_else(|| "*".to_owned(), |t| n.tasks_stream(t));
                out.publish_allow.extend([
                    "$JS.API.INFO".to_owned(),
                    format!("$JS.API.STREAM.INFO.{tasks}"),
                    format!("$JS.API.CONSUMER.INFO.{tasks}.*"),
                    format!("$JS.API.CONSUMER.LIST.{tasks}"),
                    format!("$JS.API.CONSUMER.NAMES.{tasks}"),
                    // Roll calls: `hello.<tenant>`, or any (`hello._` for every tenant).
                    format!("{p}.hello.{t}"),
                ]);
                if role != Role::Monitor {
                    out.publish_allow.push(format!("{p}.view.{t}.*"));
                    if tenant.is_none() {
                        // Dead letters of sessions that are gone. The stream is shared and a
                        // read names its subject in the request body, so only a credential of
                        // every tenant may read it.
                        let dlq = n.dlq_stream();
                        out.publish_allow.extend([
                            format!("$JS.API.STREAM.INFO.{dlq}"),
                            format!("$JS.API.STREAM.MSG.GET.{dlq}"),
                        ]);
                    }
                    if role == Role::Admin {
                        out.publish_allow.push(format!("{p}.admin.{t}.*"));
                    }
                }
                out.subscribe_allow.extend([
                    format!("{}.>", out.inbox_prefix),
                    format!("{p}.presence.{t}.*"),
                    format!("{p}.announce.{t}.*"),
                ]);
            }
        }
        Ok(out)
    }

    /// The `authorization { users = [...] }` block of a nats-server configuration: each user
    /// (name, password) with its permissions.
    ///
    /// ```
    /// use a3s_code_core::broker::permissions::{Permissions, Role};
    /// let worker = Permissions::for_role(Role::Worker, "a3s", Some("acme")).unwrap();
    /// let conf = Permissions::authorization(&[("w", "pw", &worker)]);
    /// assert!(conf.starts_with("authorization {") && conf.contains("a3s.result.acme.>"));
    /// ```
    pub fn authorization(users: &[(&str, &str, &Permissions)]) -> String {
        let entries: Vec<String> = users
            .iter()
            .map(|(user, password, perms)| perms.to_nats_config(user, password))
            .collect();
        format!(
            "authorization {{\n  users = [\n{}\n  ]\n}}\n",
            entries.join("\n")
        )
    }

    /// A `users` entry of a nats-server configuration with these permissions.
    pub fn to_nats_config(&self, user: &str, password: &str) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "{{ user: {user:?}, password: {password:?}, permissions: {{\n    publish: {{ allow: [{}]",
            list(&self.publish_allow)
        );
        if !self.publish_deny.is_empty() {
            let _ = write!(out, ", deny: [{}]", list(&self.publish_deny));
        }
        let _ = write!(
            out,
            " }}\n    subscribe: {{ allow: [{}] }}\n}} }}",
            list(&self.subscribe_allow)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_worker_is_confined_to_its_tenant() {
        let p = Permissions::for_role(Role::Worker, "a3s", Some("acme")).unwrap();
        let all = p.publish_allow.join(" ") + " " + &p.subscribe_allow.join(" ");
        assert!(!all.contains("_INBOX.>"), "no shared inboxes: {all}");
        assert!(!all.contains("other"));
        for s in &p.publish_allow {
            assert!(
                s.contains("acme") || s.starts_with("$JS.API.STREAM.INFO.") && s.contains("acme"),
                "{s} names the tenant"
            );
        }
        assert!(p.publish_deny.is_empty());
        assert!(Permissions::for_role(Role::Worker, "a3s", Some("_x")).is_err());
        assert!(Permissions::for_role(Role::Session, "a3s", Some("acme")).is_err());
    }

    #[test]
    fn the_fleet_may_not_read_results() {
        let p = Permissions::for_role(Role::Worker, "a3s", None).unwrap();
        assert!(p.publish_deny.iter().any(|s| s.contains("A3S_RESULTS")));
        assert!(!p.publish_allow.iter().any(|s| s.starts_with("a3s.task")));
        let conf = p.to_nats_config("fleet", "pw");
        assert!(conf.contains("deny"), "{conf}");
        assert!("nope".parse::<Role>().is_err());
    }
}
