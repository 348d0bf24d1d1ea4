//! Worker hosts with their own addresses, for partition tests: network namespaces on a private
//! LAN whose cables can be pulled and plugged back.
//!
//! A [`Lan`] is a bridge in the root namespace holding the first address of a `10.x.y.0/24`
//! picked at random among those this machine does not use (so concurrent runs do not clash); its
//! [`gateway`](Lan::gateway) is where a test's nats-server listens. A [`Host`] is a network
//! namespace whose `eth0` (one end of a veth pair, the other end plugged into the bridge) has the
//! next address. Traffic stays between these namespaces and the root namespace; names carry a
//! random tag. Everything is deleted on drop, also when a test panics.
//!
//! Needs root (`CAP_NET_ADMIN`) and iproute2's `ip`: [`Lan::create`] reports when namespaces
//! cannot be created, so that tests can skip.
//!
//! ```no_run
//! use test_support::netns::Lan;
//! let lan = match Lan::create() {
//!     Ok(lan) => lan,
//!     Err(why) => return eprintln!("skipped: {why}"),
//! };
//! let host = lan.host("w1");
//! let mut cmd = host.command("sh");
//! cmd.args(["-c", "ip -br addr"]);
//! host.link_down(); // the cable is pulled
//! host.link_up();
//! ```

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

/// A bridge in the root namespace with a private `/24`; [`Host`]s plug into it. Deleted on drop.
pub struct Lan {
    ip: PathBuf,
    tag: String,
    bridge: String,
    net: [u8; 3],
    next: AtomicU8,
}

/// One subnet chosen at a time within this process (other processes pick at random).
static PICKING: Mutex<()> = Mutex::new(());

impl Lan {
    /// Creates the bridge and its subnet.
    ///
    /// # Errors
    ///
    /// Why network namespaces cannot be created here (no `ip`, not root, `ip netns add`
    /// refused): the caller should skip. Any later failure panics.
    pub fn create() -> Result<Self, String> {
        let ip = ip_bin().ok_or("iproute2's `ip` was not found")?;
        let tag = random_tag();
        // Can we create namespaces at all?
        let probe = format!("{tag}-probe");
        run(&ip, ["netns", "add", &probe])
            .map_err(|e| format!("cannot create a network namespace (root needed): {e}"))?;
        let _ = run(&ip, ["netns", "del", &probe]);

        let _one_at_a_time = PICKING.lock().unwrap_or_else(|e| e.into_inner());
        let in_use = |prefix: &str| {
            let addrs = output(&ip, ["-4", "-o", "addr", "show"]);
            let routes = output(&ip, ["-4", "route", "show", "table", "all"]);
            addrs.contains(prefix) || routes.contains(prefix)
        };
        let mut seed = random_u64();
        let net = loop {
            let (x, y) = (16 + (seed % 239) as u8, (seed >> 8) as u8);
            seed = seed.rotate_left(17).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            if !in_use(&format!("10.{x}.{y}.")) {
                break [10, x, y];
            }
        };
        let bridge = format!("{tag}br");
        run(&ip, ["link", "add", &bridge, "type", "bridge"])
            .unwrap_or_else(|e| panic!("creating bridge {bridge}: {e}"));
        let lan = Self {
            ip,
            tag,
            bridge,
            net,
            next: AtomicU8::new(2),
        };
        let gateway = format!("{}/24", lan.gateway());
        lan.ip(["addr", "add", &gateway, "dev", &lan.bridge]);
        lan.ip(["link", "set", &lan.bridge, "up"]);
        Ok(lan)
    }

    /// The root namespace's address on this LAN (`10.x.y.1`): listen here.
    pub fn gateway(&self) -> IpAddr {
        let [a, b, c] = self.net;
        Ipv4Addr::new(a, b, c, 1).into()
    }

    /// A new host (network namespace) on this LAN with the next free address, its link up.
    /// `label` names it (`<tag>-<label>`); it must be unique on this LAN.
    pub fn host(&self, label: &str) -> Host {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        assert!((2..255).contains(&n), "a LAN holds at most 253 hosts");
        let [a, b, c] = self.net;
        let host = Host {
            ip: self.ip.clone(),
            ns: format!("{}-{label}", self.tag),
            cable: format!("{}v{n}", self.tag),
            addr: Ipv4Addr::new(a, b, c, n),
        };
        let peer = format!("{}p{n}", self.tag);
        self.ip(["netns", "add", &host.ns]);
        self.ip([
            "link",
            "add",
            &host.cable,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &host.ns,
        ]);
        self.ip(["link", "set", &host.cable, "master", &self.bridge, "up"]);
        let addr = format!("{}/24", host.addr);
        host.ip_in(["link", "set", &peer, "name", "eth0"]);
        host.ip_in(["addr", "add", &addr, "dev", "eth0"]);
        host.ip_in(["link", "set", "eth0", "up"]);
        host.ip_in(["link", "set", "lo", "up"]);
        host
    }

    fn ip<const N: usize>(&self, args: [&str; N]) {
        run(&self.ip, args).unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = run(&self.ip, ["link", "del", &self.bridge]);
    }
}

/// A network namespace on a [`Lan`], with its own address. Its processes are killed and the
/// namespace deleted on drop.
pub struct Host {
    ip: PathBuf,
    ns: String,
    /// The veth end on the bridge (root namespace): pulling it cuts the host off.
    cable: String,
    addr: Ipv4Addr,
}

impl Host {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.ns
    }

    /// Its address on the LAN.
    pub fn addr(&self) -> IpAddr {
        self.addr.into()
    }

    /// Pulls the cable: the bridge's end of the host's veth goes down, so every packet to or
    /// from the host is lost (the host sees no error, as with a dead switch port).
    pub fn link_down(&self) {
        run(&self.ip, ["link", "set", &self.cable, "down"])
            .unwrap_or_else(|e| panic!("cutting {}: {e}", self.ns));
    }

    /// Plugs the cable back.
    pub fn link_up(&self) {
        run(&self.ip, ["link", "set", &self.cable, "up"])
            .unwrap_or_else(|e| panic!("restoring {}: {e}", self.ns));
    }

    /// A command that runs `program` inside the namespace (`ip netns exec <name> program`; the
    /// child's pid is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    fn ip_in<const N: usize>(&self, args: [&str; N]) {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend(args);
        run(&self.ip, &all).unwrap_or_else(|e| panic!("ip {}: {e}", all.join(" ")));
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Whatever still runs inside (a worker a panicking test left behind) goes first.
        for pid in output(&self.ip, ["netns", "pids", &self.ns]).split_whitespace() {
            let _ = Command::new("kill")
                .args(["-9", pid])
                .stderr(Stdio::null())
                .status();
        }
        let _ = run(&self.ip, ["link", "del", &self.cable]);
        let _ = run(&self.ip, ["netns", "del", &self.ns]);
    }
}

fn ip_bin() -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join("ip"))
        .find(|p| p.is_file())
}

/// Runs `ip args`; the error is its stderr.
fn run<I, S>(ip: &Path, args: I) -> Result<(), String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(ip)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The stdout of `ip args` (empty on failure).
fn output<const N: usize>(ip: &Path, args: [&str; N]) -> String {
    Command::new(ip)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// `a3s` and 5 hex digits: short enough for interface names (`<tag>br`, `<tag>v254`).
fn random_tag() -> String {
    format!("a3s{:05x}", random_u64() & 0xf_ffff)
}
