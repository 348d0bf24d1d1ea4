//! Test helpers: a NATS server per test run (or the one in `A3S_TEST_NATS_URL`), unique subject
//! prefixes, free ports, [`model_server`], a scripted OpenAI / Anthropic model server, and
//! [`netns`], worker hosts with their own addresses in network namespaces.
#![allow(clippy::missing_panics_doc)]

pub mod model_server;
pub mod netns;

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
    child: Option<Child>,
    host: IpAddr,
    port: u16,
    store: tempfile::TempDir,
    config: Option<PathBuf>,
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
        // Streams reserve their `max_bytes` against the server's storage limit (75% of the free
        // disk by default): a generous limit lets many test prefixes share one server.
        let config = format!("{}\n{TEST_JETSTREAM_CONFIG}", config.unwrap_or_default());
        let path = store.path().join("server.conf");
        std::fs::write(&path, config).expect("write config");
        let mut server = Self {
            child: None,
            host,
            port: free_port(),
            store,
            config: Some(path),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let bin = nats_server_bin();
        let mut cmd = Command::new(&bin);
        cmd.args([
            "-a",
            &self.host.to_string(),
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(self.store.path().join("js"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(conf) = &self.config {
            cmd.arg("-c").arg(conf);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}); install the nats-server package",
                bin.display()
            )
        });
        self.child = Some(child);
        wait_for_port(self.host, self.port, Duration::from_secs(10));
    }

    /// `nats://<host>:<port>` (127.0.0.1 unless started with [`start_on`](Self::start_on)).
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store (file storage survives).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Where the server keeps its files.
    pub fn store(&self) -> &Path {
        self.store.path()
    }
}

impl Drop for NatsServer {
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
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
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
pub fn metric(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let all = labels
            .iter()
            .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        (n == name && all).then(|| value.parse().ok()).flatten()
    })
}
