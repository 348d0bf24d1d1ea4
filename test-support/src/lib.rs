//! Test helpers: a NATS server per test run (or the one in `A3S_TEST_NATS_URL`), a three-node
//! JetStream cluster ([`NatsCluster`]), unique subject prefixes, free ports, [`model_server`], a
//! scripted OpenAI / Anthropic model server, and [`netns`], worker hosts with their own addresses
//! in network namespaces.
#![allow(clippy::missing_panics_doc)]

pub mod model_server;
pub mod netns;
// The CLI's Prometheus text parser, the workspace's only one: compiled here from its file so
// the tests read scrapes as `a3s-code stats` does, without test-support depending on the CLI
// (a binary) or the CLI on test-support.
#[path = "../../cli/src/stats/prometheus_text.rs"]
mod prometheus_text;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The JetStream settings of every test server (see [`NatsServer`]): a storage limit far above
/// what tests use, so the `max_bytes` reservations of many test prefixes fit.
pub const TEST_JETSTREAM_CONFIG: &str =
    "jetstream {\n  max_file_store: 1TB\n  max_memory_store: 1GB\n}\n";

/// A `nats-server -js` on a free loopback port with its own store, killed on drop.
///
/// The binary is `$NATS_SERVER_BIN`, else `nats-server` on the `PATH` (or `/usr/sbin`).
pub struct NatsServer {
    process: ServerProcess,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port.
    pub fn start() -> Self {
        Self::start_inner(None, Ipv4Addr::LOCALHOST.into())
    }

    /// Starts a server with a configuration file's content (auth, TLS, ...). `listen`, the
    /// `jetstream` block and the store directory are added; the content must not set them.
    pub fn start_with_config(config: &str) -> Self {
        Self::start_inner(Some(config.to_owned()), Ipv4Addr::LOCALHOST.into())
    }

    /// Like [`start_with_config`](Self::start_with_config), listening on `host` instead of
    /// 127.0.0.1 (a [`netns::Lan`]'s gateway, so that workers in namespaces reach it).
    pub fn start_on(host: IpAddr, config: &str) -> Self {
        Self::start_inner(Some(config.to_owned()), host)
    }

    fn start_inner(config: Option<String>, host: IpAddr) -> Self {
        let store = tempfile::tempdir().expect("temp dir");
        let mut process = ServerProcess::new(
            store.path(),
            host,
            free_port(),
            config.as_deref().unwrap_or_default(),
        );
        process.spawn();
        Self { process, store }
    }

    /// `nats://<host>:<port>` (127.0.0.1 unless started with [`start_on`](Self::start_on)).
    pub fn url(&self) -> String {
        self.process.url()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// Kills the server (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port with the same store (file storage survives).
    pub fn restart(&mut self) {
        self.process.kill();
        self.process.spawn();
    }

    /// Where the server keeps its files.
    pub fn store(&self) -> &Path {
        self.store.path()
    }
}

/// A JetStream cluster of three `nats-server` processes on loopback, each with its own client
/// port, cluster (route) port, monitoring port, store and `server_name` (`n0`, `n1`, `n2`). All
/// are killed on drop.
///
/// [`start`](Self::start) returns once JetStream has a meta leader, so streams can be created
/// (with up to 3 replicas) at once.
///
/// ```no_run
/// let mut cluster = test_support::NatsCluster::start();
/// let url = cluster.url(); // all three, comma-separated
/// // ... create a stream `A3S_TASKS_default` with 3 replicas ...
/// if let Some(i) = cluster.stream_leader("A3S_TASKS_default") {
///     cluster.kill(i);
///     cluster.restart(i);
/// }
/// ```
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    _dir: tempfile::TempDir,
}

struct ClusterNode {
    process: ServerProcess,
    monitor_port: u16,
}

/// The `cluster { name }` of test clusters.
const CLUSTER_NAME: &str = "a3s-test";

/// How long a cluster may take to elect a JetStream meta leader.
const META_LEADER_TIMEOUT: Duration = Duration::from_secs(30);

impl NatsCluster {
    /// Starts three nodes and waits until JetStream has a meta leader.
    pub fn start() -> Self {
        const NODES: usize = 3;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ports = std::collections::BTreeSet::new();
        while ports.len() < NODES * 3 {
            ports.insert(free_port());
        }
        let ports: Vec<u16> = ports.into_iter().collect();
        let (client, rest) = ports.split_at(NODES);
        let (route, monitor) = rest.split_at(NODES);
        let routes = route
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let nodes = (0..NODES)
            .map(|i| {
                let store = dir.path().join(format!("n{i}"));
                std::fs::create_dir_all(&store).expect("node dir");
                let config = format!(
                    "server_name: n{i}\nhttp: \"127.0.0.1:{}\"\ncluster {{\n  name: {CLUSTER_NAME}\n  \
                     listen: \"127.0.0.1:{}\"\n  routes: [{routes}]\n}}\n",
                    monitor[i], route[i]
                );
                ClusterNode {
                    process: ServerProcess::new(&store, Ipv4Addr::LOCALHOST.into(), client[i], &config),
                    monitor_port: monitor[i],
                }
            })
            .collect();
        let mut cluster = Self { nodes, _dir: dir };
        for node in &mut cluster.nodes {
            node.process.spawn();
        }
        cluster.wait_for_meta_leader();
        cluster
    }

    /// The client URLs of all nodes, `nats://127.0.0.1:<port>` each.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.process.url()).collect()
    }

    /// The client URLs of all nodes, comma-separated (what `NatsConfig::new` and
    /// `a3s-code worker --nats` take).
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// The `server_name` of node `i` (`n<i>`), as JetStream reports leaders.
    pub fn server_name(&self, i: usize) -> String {
        format!("n{i}")
    }

    /// Whether node `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].process.child.is_some()
    }

    /// Kills node `i` (SIGKILL), keeping its store.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].process.kill();
    }

    /// Starts node `i` again on the same ports with the same store, and waits until it knows
    /// the JetStream meta leader and is current with it (`/healthz?js-server-only=true`). Its
    /// streams and consumers catch up from their leaders afterwards (the full `/healthz` of
    /// nats-server 2.9 may call an idle consumer's follower "not current" for a long time).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].process.kill();
        self.nodes[i].process.spawn();
        self.wait_for_meta_leader();
        let start = Instant::now();
        loop {
            let health =
                http_get_blocking(self.nodes[i].monitor_port, "/healthz?js-server-only=true");
            if matches!(&health, Ok((200, _))) {
                break;
            }
            assert!(
                start.elapsed() < META_LEADER_TIMEOUT,
                "node n{i} was not healthy within {META_LEADER_TIMEOUT:?} of its restart: \
                 {health:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node that leads stream `stream` (its Raft group), as the running nodes see it;
    /// `None` while it has no leader (an election) or does not exist. Blocks for a few local
    /// HTTP requests to the monitoring endpoints.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        self.leader(stream, None)
    }

    /// The node that leads consumer `consumer` of `stream` (consumers have Raft groups of their
    /// own, placed independently of their stream's), as [`stream_leader`](Self::stream_leader).
    pub fn consumer_leader(&self, stream: &str, consumer: &str) -> Option<usize> {
        self.leader(stream, Some(consumer))
    }

    fn leader(&self, stream: &str, consumer: Option<&str>) -> Option<usize> {
        let path = "/jsz?accounts=true&streams=true&consumers=true";
        let leader = self.running().find_map(|n| {
            let jsz = n.monitor(path)?;
            let stream = jsz["account_details"]
                .as_array()?
                .iter()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|s| s["name"] == stream)?;
            let detail = match consumer {
                None => stream,
                Some(name) => stream["consumer_detail"]
                    .as_array()?
                    .iter()
                    .find(|c| c["name"] == name)?,
            };
            let leader = detail["cluster"]["leader"].as_str()?;
            (!leader.is_empty()).then(|| leader.to_owned())
        })?;
        (0..self.nodes.len()).find(|&i| self.server_name(i) == leader)
    }

    /// The streams whose name contains `name_part`, and their consumers, that have no leader
    /// every running node agrees on and that is itself running (`stream` or `stream/consumer`):
    /// while one is listed, no client can use it, whatever it does.
    pub fn leaderless(&self, name_part: &str) -> Vec<String> {
        let path = "/jsz?accounts=true&streams=true&consumers=true";
        // group -> the leader each running node names ("" for none)
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in self.running() {
            let Some(jsz) = n.monitor(path) else { continue };
            let streams = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten());
            for st in streams {
                let name = st["name"].as_str().unwrap_or_default();
                if !name.contains(name_part) {
                    continue;
                }
                let leader = |v: &serde_json::Value| {
                    v["cluster"]["leader"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                };
                seen.entry(name.to_owned()).or_default().push(leader(st));
                for c in st["consumer_detail"].as_array().into_iter().flatten() {
                    let group = format!("{name}/{}", c["name"].as_str().unwrap_or_default());
                    seen.entry(group).or_default().push(leader(c));
                }
            }
        }
        let running: Vec<String> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].process.child.is_some())
            .map(|i| self.server_name(i))
            .collect();
        seen.into_iter()
            .filter(|(_, leaders)| {
                let first = &leaders[0];
                !(running.contains(first) && leaders.iter().all(|l| l == first))
            })
            .map(|(group, _)| group)
            .collect()
    }

    /// What each running node says of `stream`'s consumers, one line per node and consumer
    /// (leader, pending, waiting for an ack, open pull requests, redelivered): for the message
    /// of a test that saw work stall.
    pub fn consumers_report(&self, stream: &str) -> String {
        let path = "/jsz?accounts=true&streams=true&consumers=true";
        let mut lines = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.process.child.is_none() {
                lines.push(format!("n{i}: down"));
                continue;
            }
            let Some(jsz) = n.monitor(path) else {
                lines.push(format!("n{i}: no answer"));
                continue;
            };
            let meta = jsz["meta_cluster"]["leader"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            let consumers: Vec<serde_json::Value> = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .filter(|s| s["name"] == stream)
                .flat_map(|s| s["consumer_detail"].as_array().cloned().unwrap_or_default())
                .collect();
            if consumers.is_empty() {
                lines.push(format!(
                    "n{i} (meta leader {meta}): no consumers of {stream}"
                ));
            }
            for c in consumers {
                lines.push(format!(
                    "n{i} (meta leader {meta}): {} leader={} pending={} ack_pending={} \
                     waiting={} redelivered={}",
                    c["name"].as_str().unwrap_or("?"),
                    c["cluster"]["leader"].as_str().unwrap_or("none"),
                    c["num_pending"],
                    c["num_ack_pending"],
                    c["num_waiting"],
                    c["num_redelivered"],
                ));
            }
        }
        lines.join("\n")
    }

    /// The node that is the JetStream meta leader, as the running nodes see it.
    pub fn meta_leader(&self) -> Option<usize> {
        let leader = self.running().find_map(ClusterNode::meta_leader)?;
        (0..self.nodes.len()).find(|&i| self.server_name(i) == leader)
    }

    fn running(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.iter().filter(|n| n.process.child.is_some())
    }

    /// Waits until every running node names the same meta leader.
    fn wait_for_meta_leader(&self) {
        let start = Instant::now();
        loop {
            let leaders: Vec<Option<String>> =
                self.running().map(ClusterNode::meta_leader).collect();
            if leaders.iter().all(Option::is_some) && leaders.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(
                start.elapsed() < META_LEADER_TIMEOUT,
                "the NATS cluster elected no JetStream meta leader within {META_LEADER_TIMEOUT:?} \
                 ({leaders:?})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl ClusterNode {
    /// The JSON of a monitoring endpoint (`/jsz...`), or `None` if the node does not answer.
    fn monitor(&self, path: &str) -> Option<serde_json::Value> {
        let (status, body) = http_get_blocking(self.monitor_port, path).ok()?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// The `server_name` of the JetStream meta leader, as this node sees it.
    fn meta_leader(&self) -> Option<String> {
        let jsz = self.monitor("/jsz")?;
        let leader = jsz["meta_cluster"]["leader"].as_str()?;
        (!leader.is_empty()).then(|| leader.to_owned())
    }
}

/// One `nats-server` process: `-js` on a loopback port, its store under a directory and a
/// configuration file there (the caller's content plus [`TEST_JETSTREAM_CONFIG`]). Killed on
/// drop; [`spawn`](Self::spawn) starts it again with the same port and store.
struct ServerProcess {
    child: Option<Child>,
    host: IpAddr,
    port: u16,
    dir: PathBuf,
    config: PathBuf,
}

impl ServerProcess {
    fn new(dir: &Path, host: IpAddr, port: u16, config: &str) -> Self {
        // Streams reserve their `max_bytes` against the server's storage limit (75% of the free
        // disk by default): a generous limit lets many test prefixes share one server.
        let config = format!("{config}\n{TEST_JETSTREAM_CONFIG}");
        let path = dir.join("server.conf");
        std::fs::write(&path, config).expect("write config");
        Self {
            child: None,
            host,
            port,
            dir: dir.to_path_buf(),
            config: path,
        }
    }

    fn spawn(&mut self) {
        let bin = nats_server_bin();
        let child = Command::new(&bin)
            .args([
                "-a",
                &self.host.to_string(),
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.join("js"))
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); install the nats-server package",
                    bin.display()
                )
            });
        self.child = Some(child);
        wait_for_port(self.host, self.port, Duration::from_secs(10));
    }

    fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The NATS server for this test: `A3S_TEST_NATS_URL` when set (the guard is then `None`),
/// else a fresh one that lives as long as the returned guard.
pub fn nats() -> (String, Option<NatsServer>) {
    match std::env::var("A3S_TEST_NATS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = NatsServer::start();
            (server.url(), Some(server))
        }
    }
}

/// A subject/stream prefix no other test run uses: `t<12 hex>`.
pub fn unique_prefix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()));
    h.write_u64(free_port().into());
    format!("t{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_for_port(host: IpAddr, port: u16, timeout: Duration) {
    let start = Instant::now();
    while TcpStream::connect((host, port)).is_err() {
        assert!(
            start.elapsed() < timeout,
            "nats-server did not listen on {host}:{port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The nats-server binary to run.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        return bin.into();
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/bin"])
    {
        let candidate = Path::new(dir).join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("nats-server")
}

/// Whether a nats-server binary can be found.
pub fn has_nats_server() -> bool {
    nats_server_bin().is_file()
}

/// `GET url` (plain `http://host:port/path`) with HTTP/1.1 and `Connection: close`: the status
/// code and the body. For scraping test endpoints (`/metrics`, `/healthz`) without a client
/// library.
///
/// # Panics
///
/// On a malformed URL, a connection or read error, or an unparsable response.
pub async fn http_get(url: &str) -> (u16, String) {
    try_http_get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// [`http_get`], with connection and read errors returned (for endpoints that may not be up
/// yet, or not reachable).
///
/// # Panics
///
/// On a malformed URL or an unparsable response.
pub async fn try_http_get(url: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw).ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

/// `GET http://127.0.0.1:<port><path>` without a runtime (monitoring endpoints): the status code
/// and the body.
fn http_get_blocking(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

/// A raw HTTP/1.1 response: the status code and the (de-chunked) body.
fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let raw = std::str::from_utf8(raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// The value of the sample `name{labels...}` in a Prometheus text scrape, where `labels` are
/// `key="value"` pairs that must all appear in the sample's label set. `None` when absent.
///
/// The scrape is read by the CLI's parser (`a3s-code stats`), compiled here from its file.
pub fn metric(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    prometheus_text::parse_prometheus(scrape)
        .into_iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
        .map(|s| s.value)
}
