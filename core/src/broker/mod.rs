//! Brokers: how External tasks reach workers on other machines.
//!
//! In process (the default) a session keeps its claimable tasks itself: workers call
//! `pending_external_tasks()` / `claim_external_tasks()` on the session. With
//! [`SessionOptions::with_nats`](crate::SessionOptions::with_nats) an External lane instead
//! publishes each task to NATS JetStream once it holds a lane slot, and remote workers
//! ([`WorkerClient`](crate::worker::WorkerClient), `a3s-code worker`, or any client following
//! `docs/protocol.md`) pull it from there. Scheduling stays in the session either way.

pub mod permissions;
pub mod wire;

#[cfg(feature = "nats")]
pub(crate) mod nats;

#[cfg(feature = "nats")]
pub use nats::config::{NatsAuth, NatsConfig, NatsOptions, NatsTls};

#[cfg(feature = "nats")]
pub(crate) use crate::queue::dispatch::{Dispatcher, Ended};

/// Checks a NATS server list: one address or several separated by commas, each
/// `nats://host[:port]`, `tls://`, `ws://`, `wss://`, or a bare `host[:port]` (taken as
/// `nats://`), with optional `user:password@`.
///
/// # Errors
///
/// Why the list is not usable, naming the first bad entry.
///
/// # Examples
///
/// ```
/// use a3s_code_core::broker::check_server_urls;
/// assert!(check_server_urls("nats://a:4222, tls://b:4443,c:4222,wss://d/nats").is_ok());
/// assert!(check_server_urls("not a url").is_err());
/// assert!(check_server_urls("http://a:4222").is_err());
/// assert!(check_server_urls(" , ").is_err());
/// ```
pub fn check_server_urls(urls: &str) -> std::result::Result<(), String> {
    let mut any = false;
    for entry in urls.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        any = true;
        let bad = |why: &str| {
            format!(
                "{entry:?} is not a NATS server address ({why}; expected nats://host:port, \
                 tls://, ws://, wss:// or host:port, several separated by commas)"
            )
        };
        let spelled = if entry.contains("://") {
            entry.to_owned()
        } else {
            format!("nats://{entry}")
        };
        let parsed = url::Url::parse(&spelled).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "nats" | "tls" | "ws" | "wss") {
            return Err(bad(&format!("unknown scheme {:?}", parsed.scheme())));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
    }
    if any {
        Ok(())
    } else {
        Err("no server address given".to_owned())
    }
}

/// Which tenant a session belongs to, and the tenant's share of a shared worker fleet.
///
/// Sessions that name no tenant belong to [`wire::DEFAULT_TENANT`]. When the fleet is
/// saturated, pool workers share their slots between tenants by `weight`, then evenly between a
/// tenant's sessions (first come, first served, each session bounded by its own lane
/// concurrency); lane priority holds inside each session. `max_in_flight` caps the tenant's
/// tasks running at once in each lane, across all its sessions and workers (the broker enforces
/// it). Sessions of one tenant may declare different values: the latest declaration wins and a
/// warning is logged.
///
/// # Examples
///
/// ```
/// use a3s_code_core::broker::Tenant;
/// let t = Tenant::new("acme", 3.0).unwrap().with_max_in_flight(100).unwrap();
/// assert_eq!(t.name(), "acme");
/// assert!(Tenant::new("a.b", 1.0).is_err());
/// assert!(Tenant::new("acme", 0.0).is_err());
/// assert!(Tenant::new("acme", f64::NAN).is_err());
/// assert!(Tenant::new("acme", 1.0).unwrap().with_max_in_flight(0).is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    name: String,
    weight: f64,
    max_in_flight: Option<usize>,
}

impl Default for Tenant {
    fn default() -> Self {
        Self {
            name: wire::DEFAULT_TENANT.to_owned(),
            weight: 1.0,
            max_in_flight: None,
        }
    }
}

impl Tenant {
    /// A tenant named `name` (1 to 64 letters, digits, `-` or `_`, not starting with `_`) with
    /// `weight` (finite, > 0; the default tenant has 1).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a bad name or weight.
    pub fn new(name: impl Into<String>, weight: f64) -> crate::Result<Self> {
        let name = name.into();
        if !wire::is_tenant(&name) {
            return Err(crate::Error::invalid_config(format!(
                "tenant {name:?} must be 1 to 64 letters, digits, '-' or '_', not starting with '_'"
            )));
        }
        if !weight.is_finite() || weight <= 0.0 {
            return Err(crate::Error::invalid_config(format!(
                "tenant weight must be a finite number > 0, not {weight}"
            )));
        }
        Ok(Self {
            name,
            weight,
            max_in_flight: None,
        })
    }

    /// A tenant from separate optional settings (agent.hcl's `distribution` block, the bindings'
    /// `tenant`, `tenant_weight`, `tenant_max_in_flight`): `None` when none is given; a weight or
    /// cap without a name applies to the default tenant; the weight defaults to 1.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new) and [`with_max_in_flight`](Self::with_max_in_flight).
    ///
    /// # Examples
    ///
    /// ```
    /// use a3s_code_core::broker::Tenant;
    /// assert!(Tenant::from_parts(None, None, None).unwrap().is_none());
    /// let t = Tenant::from_parts(None, Some(2.0), None).unwrap().unwrap();
    /// assert_eq!((t.name(), t.weight()), ("default", 2.0));
    /// ```
    pub fn from_parts(
        name: Option<String>,
        weight: Option<f64>,
        max_in_flight: Option<usize>,
    ) -> crate::Result<Option<Self>> {
        if name.is_none() && weight.is_none() && max_in_flight.is_none() {
            return Ok(None);
        }
        let name = name.unwrap_or_else(|| wire::DEFAULT_TENANT.to_owned());
        let mut t = Self::new(name, weight.unwrap_or(1.0))?;
        if let Some(n) = max_in_flight {
            t = t.with_max_in_flight(n)?;
        }
        Ok(Some(t))
    }

    /// Caps the tenant's tasks in flight in each lane (at least 1).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for 0.
    pub fn with_max_in_flight(mut self, n: usize) -> crate::Result<Self> {
        if n == 0 {
            return Err(crate::Error::invalid_config(
                "tenant max_in_flight must be at least 1",
            ));
        }
        self.max_in_flight = Some(n);
        Ok(self)
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The weight.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// The cap of tasks in flight per lane, if any.
    pub fn max_in_flight(&self) -> Option<usize> {
        self.max_in_flight
    }
}
