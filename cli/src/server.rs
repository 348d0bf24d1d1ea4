//! A nats-server of our own, for the benchmarks and the conformance kit.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// A `nats-server -js` on a free local port (with its monitoring port) and a temporary store,
/// stopped when dropped. Its JetStream storage limit is generous: each tenant's streams reserve
/// their `max_bytes`, and a bench or a conformance run creates many.
pub(crate) struct NatsServer {
    child: Child,
    url: String,
    monitor: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one and waits (up to 4 s) until it accepts connections.
    pub(crate) fn start() -> anyhow::Result<Self> {
        let (port, monitor) = (free_port()?, free_port()?);
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("server.conf");
        std::fs::write(
            &conf,
            "jetstream {\n  max_file_store: 1TB\n  max_memory_store: 1GB\n}\n",
        )?;
        let child = Command::new(bin()?)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string(), "-js", "-sd"])
            .arg(dir.path().join("js"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            monitor,
            _dir: dir,
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The HTTP monitoring port (`/varz`).
    pub(crate) fn monitor(&self) -> u16 {
        self.monitor
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The nats-server to start: `$NATS_SERVER_BIN`, else `nats-server` on the `PATH` (or in
/// `/usr/sbin`).
pub(crate) fn bin() -> anyhow::Result<String> {
    std::env::var("NATS_SERVER_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .into_iter()
        .chain(["nats-server".to_owned(), "/usr/sbin/nats-server".to_owned()])
        .find(|b| Command::new(b).arg("--version").output().is_ok())
        .context("nats-server not found (set NATS_SERVER_BIN)")
}
