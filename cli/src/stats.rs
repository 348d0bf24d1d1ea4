//! `a3s-code stats`: a live view of a session's lanes and workers, from their `/metrics`
//! endpoints (`--metrics URL`, repeatable) and/or from the broker (`--nats URL --session-id ID`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::observe::{BrokerInspector, BrokerSessionStats};
use a3s_code_core::queue::SessionLane;
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

#[derive(clap::Args)]
pub(crate) struct StatsArgs {
    /// A `/metrics` URL to scrape: a session's (`SessionOptions::with_metrics_addr`, `a3s-code
    /// demo --metrics-addr`) or a worker's (`a3s-code worker --metrics-addr`). Repeatable.
    #[arg(long = "metrics", value_name = "URL")]
    metrics: Vec<String>,
    /// Read the session's hand-off queue from NATS JetStream (needs --session-id).
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// The session to show from NATS.
    #[arg(long, env = "SESSION_ID")]
    session_id: Option<String>,
    /// The session's tenant (sessions that name none belong to `default`).
    #[arg(long, env = "A3S_TENANT", default_value = a3s_code_core::broker::wire::DEFAULT_TENANT)]
    tenant: String,
    /// Subject and stream prefix (must match the session's).
    #[arg(long, env = "A3S_NATS_PREFIX", default_value = "a3s")]
    prefix: String,
    /// Token authentication.
    #[arg(long, env = "A3S_NATS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    auth: crate::nats_args::NatsAuthArgs,
    /// Refresh period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Print JSON (one object per refresh, one per line) instead of the terminal view.
    #[arg(long)]
    json: bool,
    /// Print one view (after two samples, for the rates) and exit.
    #[arg(long)]
    once: bool,
}

impl StatsArgs {
    fn nats_config(&self, url: &str) -> anyhow::Result<NatsConfig> {
        let cfg = NatsConfig::new(url)
            .with_prefix(&self.prefix)
            .with_name("a3s-code stats");
        self.auth.apply(cfg, self.token.as_deref())
    }
}

// ----- the view ------------------------------------------------------------------------------

/// Everything the view shows at one refresh.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct View {
    /// Sessions seen on the scraped endpoints.
    pub(crate) sessions: Vec<SessionView>,
    /// Workers seen on the scraped endpoints.
    pub(crate) workers: Vec<WorkerView>,
    /// The session as the broker sees it (`--nats`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) broker: Option<BrokerView>,
    /// Sources that could not be read this time.
    pub(crate) errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SessionView {
    pub(crate) session_id: String,
    pub(crate) open: bool,
    pub(crate) broker_ready: Option<bool>,
    pub(crate) dead_letters: u64,
    pub(crate) lanes: Vec<LaneView>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct LaneView {
    pub(crate) lane: String,
    pub(crate) mode: String,
    pub(crate) pending: u64,
    pub(crate) oldest_pending_s: f64,
    pub(crate) in_flight: u64,
    pub(crate) capacity: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) timed_out: u64,
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) redelivered: u64,
    /// Tasks ended per second since the previous refresh.
    pub(crate) rate_per_s: Option<f64>,
    pub(crate) p50_s: Option<f64>,
    pub(crate) p99_s: Option<f64>,
}

impl LaneView {
    fn ended(&self) -> u64 {
        self.completed + self.failed + self.timed_out
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct WorkerView {
    pub(crate) worker: String,
    pub(crate) connected: bool,
    pub(crate) busy: u64,
    pub(crate) slots: u64,
    pub(crate) claimed: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) rejected: u64,
    pub(crate) heartbeat_age_s: Option<f64>,
    /// Tasks reported per second since the previous refresh.
    pub(crate) rate_per_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct BrokerView {
    #[serde(flatten)]
    pub(crate) stats: BrokerSessionStats,
    /// Deliveries per second per lane since the previous refresh.
    pub(crate) delivered_per_s: BTreeMap<SessionLane, f64>,
}

// ----- Prometheus text -------------------------------------------------------------------------

// The parser is in its own file because `test-support` compiles the same file (its `metric()`
// helper), so the stats view and the tests read scrapes one way.
mod prometheus_text;

pub(crate) use prometheus_text::{Sample, parse_prometheus};

/// Builds the sessions and workers of `samples` (from any number of endpoints).
pub(crate) fn view_from_samples(samples: &[Sample]) -> View {
    let mut sessions: BTreeMap<String, SessionView> = BTreeMap::new();
    let mut lanes: BTreeMap<(String, SessionLane), LaneView> = BTreeMap::new();
    let mut workers: BTreeMap<String, WorkerView> = BTreeMap::new();
    let label = |s: &Sample, k: &str| s.labels.get(k).cloned().unwrap_or_default();
    for s in samples {
        let v = s.value;
        if let Some(session) = s.labels.get("session") {
            let sv = sessions
                .entry(session.clone())
                .or_insert_with(|| SessionView {
                    session_id: session.clone(),
                    ..Default::default()
                });
            match s.name.as_str() {
                "a3s_session_open" => sv.open = v > 0.0,
                "a3s_session_broker_ready" => sv.broker_ready = Some(v > 0.0),
                "a3s_dead_letter_tasks" => sv.dead_letters = v as u64,
                _ => {}
            }
            let Some(lane) = s
                .labels
                .get("lane")
                .and_then(|l| l.parse::<SessionLane>().ok())
            else {
                continue;
            };
            let lv = lanes
                .entry((session.clone(), lane))
                .or_insert_with(|| LaneView {
                    lane: lane.to_string(),
                    ..Default::default()
                });
            match s.name.as_str() {
                "a3s_lane_info" => lv.mode = label(s, "mode"),
                "a3s_lane_pending_tasks" => lv.pending = v as u64,
                "a3s_lane_oldest_pending_age_seconds" => lv.oldest_pending_s = v,
                "a3s_lane_in_flight_tasks" => lv.in_flight = v as u64,
                "a3s_lane_capacity_tasks" => lv.capacity = v as u64,
                "a3s_tasks_completed_total" => lv.completed = v as u64,
                "a3s_tasks_failed_total" => lv.failed = v as u64,
                "a3s_tasks_timed_out_total" => lv.timed_out = v as u64,
                "a3s_tasks_retried_total" => lv.retried = v as u64,
                "a3s_tasks_dead_lettered_total" => lv.dead_lettered = v as u64,
                "a3s_tasks_redelivered_total" => lv.redelivered = v as u64,
                "a3s_task_latency_quantile_seconds" if v > 0.0 => {
                    match label(s, "quantile").as_str() {
                        "0.5" => lv.p50_s = Some(v),
                        "0.99" => lv.p99_s = Some(v),
                        _ => {}
                    }
                }
                _ => {}
            }
        } else if let Some(worker) = s.labels.get("worker") {
            let wv = workers.entry(worker.clone()).or_insert_with(|| WorkerView {
                worker: worker.clone(),
                ..Default::default()
            });
            let n = v as u64;
            match s.name.as_str() {
                "a3s_worker_connected" => wv.connected = v > 0.0,
                "a3s_worker_busy_slots" => wv.busy = n,
                "a3s_worker_slots" => wv.slots = n,
                "a3s_worker_heartbeat_age_seconds" => wv.heartbeat_age_s = Some(v),
                // Per-lane counters: summed over lanes.
                "a3s_worker_tasks_claimed_total" => wv.claimed += n,
                "a3s_worker_tasks_succeeded_total" => wv.succeeded += n,
                "a3s_worker_tasks_failed_total" => wv.failed += n,
                "a3s_worker_results_rejected_total" => wv.rejected += n,
                _ => {}
            }
        }
    }
    for ((session, _), lane) in lanes {
        if let Some(sv) = sessions.get_mut(&session) {
            sv.lanes.push(lane);
        }
    }
    View {
        sessions: sessions.into_values().collect(),
        workers: workers.into_values().collect(),
        broker: None,
        errors: Vec::new(),
    }
}

/// Fills the rates of `view` from the previous refresh, `elapsed` ago.
pub(crate) fn fill_rates(view: &mut View, previous: &View, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return;
    }
    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
    for s in &mut view.sessions {
        let Some(p) = previous
            .sessions
            .iter()
            .find(|p| p.session_id == s.session_id)
        else {
            continue;
        };
        for l in &mut s.lanes {
            if let Some(pl) = p.lanes.iter().find(|pl| pl.lane == l.lane) {
                l.rate_per_s = Some(rate(l.ended(), pl.ended()));
            }
        }
    }
    for w in &mut view.workers {
        if let Some(p) = previous.workers.iter().find(|p| p.worker == w.worker) {
            w.rate_per_s = Some(rate(w.succeeded + w.failed, p.succeeded + p.failed));
        }
    }
    if let (Some(b), Some(p)) = (&mut view.broker, &previous.broker) {
        for (lane, l) in &b.stats.per_lane {
            if let Some(pl) = p.stats.per_lane.get(lane) {
                b.delivered_per_s
                    .insert(*lane, rate(l.delivered_count, pl.delivered_count));
            }
        }
    }
}

// ----- rendering -------------------------------------------------------------------------------

fn dur(secs: Option<f64>) -> String {
    match secs {
        None => "-".to_owned(),
        Some(s) if s <= 0.0 => "0s".to_owned(),
        Some(s) if s < 0.001 => format!("{:.0}µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) if s < 120.0 => format!("{s:.1}s"),
        Some(s) => format!("{:.0}m", s / 60.0),
    }
}

fn per_s(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn short(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// The terminal view of `view` (what the live display redraws).
pub(crate) fn render(view: &View) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for s in &view.sessions {
        let broker = match s.broker_ready {
            None => String::new(),
            Some(r) => format!(", broker {}", if r { "ready" } else { "NOT ready" }),
        };
        let _ = writeln!(
            out,
            "session {}  ({}{broker}, {} dead letters)",
            s.session_id,
            if s.open { "open" } else { "closed" },
            s.dead_letters
        );
        let _ = writeln!(
            out,
            "  {:<9}{:<9}{:>8}{:>8}{:>11}{:>9}{:>10}{:>8}{:>9}{:>8}{:>9}{:>9}",
            "lane",
            "mode",
            "backlog",
            "oldest",
            "in-flight",
            "done/s",
            "completed",
            "failed",
            "timeout",
            "retried",
            "p50",
            "p99"
        );
        for l in &s.lanes {
            let _ = writeln!(
                out,
                "  {:<9}{:<9}{:>8}{:>8}{:>11}{:>9}{:>10}{:>8}{:>9}{:>8}{:>9}{:>9}",
                l.lane,
                l.mode,
                l.pending,
                dur(Some(l.oldest_pending_s)),
                format!("{}/{}", l.in_flight, l.capacity),
                per_s(l.rate_per_s),
                l.completed,
                l.failed,
                l.timed_out,
                l.retried,
                dur(l.p50_s),
                dur(l.p99_s),
            );
        }
        out.push('\n');
    }
    if !view.workers.is_empty() {
        let _ = writeln!(
            out,
            "workers\n  {:<16}{:>6}{:>8}{:>9}{:>11}{:>8}{:>10}{:>9}{:>11}",
            "worker",
            "conn",
            "busy",
            "claimed",
            "succeeded",
            "failed",
            "rejected",
            "done/s",
            "heartbeat"
        );
        for w in &view.workers {
            let _ = writeln!(
                out,
                "  {:<16}{:>6}{:>8}{:>9}{:>11}{:>8}{:>10}{:>9}{:>11}",
                short(&w.worker),
                yes(w.connected),
                format!("{}/{}", w.busy, w.slots),
                w.claimed,
                w.succeeded,
                w.failed,
                w.rejected,
                per_s(w.rate_per_s),
                dur(w.heartbeat_age_s),
            );
        }
        out.push('\n');
    }
    if let Some(b) = &view.broker {
        let s = &b.stats;
        let _ = writeln!(
            out,
            "broker (NATS JetStream), session {}{}\n  {:<9}{:>9}{:>12}{:>13}{:>8}{:>13}",
            s.session_id,
            if s.found {
                format!(
                    ": {} results to apply, {} dead letters",
                    s.results_pending_count, s.dead_letter_count
                )
            } else {
                ": no consumers (session closed or unknown)".to_owned()
            },
            "lane",
            "stored",
            "on workers",
            "redelivered",
            "pulls",
            "delivered/s"
        );
        for (lane, l) in &s.per_lane {
            let _ = writeln!(
                out,
                "  {:<9}{:>9}{:>12}{:>13}{:>8}{:>13}",
                lane.as_str(),
                l.pending_count,
                l.ack_pending_count,
                l.redelivered_count,
                l.waiting_pull_count,
                per_s(b.delivered_per_s.get(lane).copied()),
            );
        }
        out.push('\n');
    }
    if view.sessions.is_empty() && view.workers.is_empty() && view.broker.is_none() {
        out.push_str("nothing to show yet\n");
    }
    for e in &view.errors {
        let _ = writeln!(out, "! {e}");
    }
    out
}

// ----- sources -------------------------------------------------------------------------------

struct Sources {
    http: Option<reqwest::Client>,
    urls: Vec<String>,
    broker: Option<(BrokerInspector, String, String)>,
}

impl Sources {
    async fn sample(&self) -> View {
        let mut samples = Vec::new();
        let mut errors = Vec::new();
        if let Some(http) = &self.http {
            for url in &self.urls {
                match scrape(http, url).await {
                    Ok(text) => samples.extend(parse_prometheus(&text)),
                    Err(e) => errors.push(format!("{url}: {e:#}")),
                }
            }
        }
        let mut view = view_from_samples(&samples);
        if let Some((inspector, tenant, session_id)) = &self.broker {
            match inspector.session(tenant, session_id).await {
                Ok(stats) => {
                    view.broker = Some(BrokerView {
                        stats,
                        delivered_per_s: BTreeMap::new(),
                    })
                }
                Err(e) => errors.push(format!("NATS: {e}")),
            }
        }
        view.errors = errors;
        view
    }
}

async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let response = http.get(url).send().await?;
    let status = response.status();
    if !status.is_success() {
        bail!("HTTP {status}");
    }
    Ok(response.text().await?)
}

fn metrics_url(url: &str) -> String {
    let url = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    // A bare host:port means its /metrics.
    match url.split_once("://") {
        Some((_, rest)) if !rest.contains('/') => format!("{url}/metrics"),
        _ => url,
    }
}

pub(crate) fn http_client() -> anyhow::Result<reqwest::Client> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?)
}

pub(crate) async fn run(args: StatsArgs) -> anyhow::Result<()> {
    if args.metrics.is_empty() && args.nats.is_none() {
        bail!(
            "nothing to watch: pass --metrics URL (repeatable) and/or --nats URL --session-id ID"
        );
    }
    let broker = match &args.nats {
        Some(url) => {
            let Some(session_id) = args.session_id.clone() else {
                bail!("--nats needs --session-id");
            };
            let inspector = BrokerInspector::connect(args.nats_config(url)?)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            Some((inspector, args.tenant.clone(), session_id))
        }
        None => None,
    };
    let sources = Sources {
        http: if args.metrics.is_empty() {
            None
        } else {
            Some(http_client()?)
        },
        urls: args.metrics.iter().map(|u| metrics_url(u)).collect(),
        broker,
    };
    let interval = Duration::from_millis(args.interval_ms.max(50));
    let live = !args.json && !args.once;
    let bar = live.then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        bar.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
        bar
    });
    let mut previous: Option<(View, Instant)> = None;
    loop {
        let taken = Instant::now();
        let mut view = sources.sample().await;
        if let Some((p, at)) = &previous {
            fill_rates(&mut view, p, taken.duration_since(*at));
        }
        let show = !args.once || previous.is_some();
        if show {
            if args.json {
                println!("{}", serde_json::to_string(&view)?);
            } else if let Some(bar) = &bar {
                let header = format!(
                    "a3s-code stats  every {:.1}s  (ctrl-c to quit)\n\n",
                    interval.as_secs_f64()
                );
                bar.set_message(format!("{header}{}", render(&view)));
            } else {
                print!("{}", render(&view));
            }
            if args.once {
                return Ok(());
            }
        }
        previous = Some((view, taken));
        tokio::select! {
            _ = tokio::time::sleep_until((taken + interval).into()) => {}
            _ = tokio::signal::ctrl_c() => {
                if let Some(bar) = &bar { bar.abandon(); }
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP a3s_session_open 1 while the session is open.
# TYPE a3s_session_open gauge
a3s_session_open{session="s1"} 1
a3s_lane_info{session="s1",lane="query",mode="external"} 1
a3s_lane_info{session="s1",lane="execute",mode="internal"} 1
a3s_lane_pending_tasks{session="s1",lane="query"} 120
a3s_lane_pending_tasks{session="s1",lane="execute"} 0
a3s_lane_oldest_pending_age_seconds{session="s1",lane="query"} 1.25
a3s_lane_in_flight_tasks{session="s1",lane="query"} 32
a3s_lane_capacity_tasks{session="s1",lane="query"} 32
a3s_lane_capacity_tasks{session="s1",lane="execute"} 2
a3s_tasks_completed_total{session="s1",lane="query"} 5000
a3s_tasks_failed_total{session="s1",lane="query"} 2
a3s_tasks_timed_out_total{session="s1",lane="query"} 1
a3s_tasks_retried_total{session="s1",lane="query"} 3
a3s_task_latency_quantile_seconds{session="s1",lane="query",quantile="0.5"} 0.0021
a3s_task_latency_quantile_seconds{session="s1",lane="query",quantile="0.99"} 0.014
a3s_task_latency_seconds_bucket{session="s1",lane="query",le="+Inf"} 5002
a3s_dead_letter_tasks{session="s1"} 3
a3s_worker_connected{worker="worker-ab12cd34ef56"} 1
a3s_worker_busy_slots{worker="worker-ab12cd34ef56"} 3
a3s_worker_slots{worker="worker-ab12cd34ef56"} 8
a3s_worker_heartbeat_age_seconds{worker="worker-ab12cd34ef56"} 0.4
a3s_worker_tasks_claimed_total{worker="worker-ab12cd34ef56",lane="query"} 100
a3s_worker_tasks_succeeded_total{worker="worker-ab12cd34ef56",lane="query"} 90
a3s_worker_tasks_succeeded_total{worker="worker-ab12cd34ef56",lane="execute"} 8
a3s_worker_tasks_failed_total{worker="worker-ab12cd34ef56",lane="query"} 2
"#;

    #[test]
    fn the_view_renders() {
        let before = view_from_samples(&parse_prometheus(
            &SCRAPE
                .replace("} 5000", "} 4000")
                .replace("lane=\"execute\"} 8", "lane=\"execute\"} 0"),
        ));
        let mut view = view_from_samples(&parse_prometheus(SCRAPE));
        fill_rates(&mut view, &before, Duration::from_secs(2));
        let mut broker = BrokerSessionStats {
            session_id: "s1".into(),
            found: true,
            results_pending_count: 4,
            dead_letter_count: 3,
            ..Default::default()
        };
        for lane in SessionLane::ALL {
            broker.per_lane.insert(lane, Default::default());
        }
        let q = broker.per_lane.get_mut(&SessionLane::Query).unwrap();
        (q.pending_count, q.ack_pending_count, q.redelivered_count) = (7, 32, 1);
        (q.waiting_pull_count, q.delivered_count) = (2, 5040);
        view.broker = Some(BrokerView {
            stats: broker,
            delivered_per_s: [(SessionLane::Query, 480.0)].into(),
        });
        view.errors
            .push("http://127.0.0.1:9/metrics: connection refused".into());
        let expected = "\
session s1  (open, 3 dead letters)
  lane     mode      backlog  oldest  in-flight   done/s completed  failed  timeout retried      p50      p99
  query    external      120    1.2s      32/32    500.0      5000       2        1       3    2.1ms   14.0ms
  execute  internal        0      0s        0/2      0.0         0       0        0       0        -        -

workers
  worker            conn    busy  claimed  succeeded  failed  rejected   done/s  heartbeat
  worker-ab12c       yes     3/8      100         98       2         0      4.0    400.0ms

broker (NATS JetStream), session s1: 4 results to apply, 3 dead letters
  lane        stored  on workers  redelivered   pulls  delivered/s
  control          0           0            0       0            -
  query            7          32            1       2        480.0
  execute          0           0            0       0            -
  generate         0           0            0       0            -

! http://127.0.0.1:9/metrics: connection refused
";
        let got = render(&view);
        assert_eq!(got, expected, "\n{got}");
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["sessions"][0]["lanes"][0]["rate_per_s"], 500.0);
        assert_eq!(json["broker"]["per_lane"]["query"]["ack_pending_count"], 32);
    }

    #[test]
    fn bare_addresses_mean_their_metrics() {
        assert_eq!(
            metrics_url("127.0.0.1:9464"),
            "http://127.0.0.1:9464/metrics"
        );
        assert_eq!(metrics_url("http://h:1"), "http://h:1/metrics");
        assert_eq!(metrics_url("http://h:1/x"), "http://h:1/x");
    }
}
