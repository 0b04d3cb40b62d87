//! Network namespaces and veth pairs for tests and examples, built with iproute2 (`ip`) and
//! removed on drop. Shared by `tests/tcp_echo.rs`, `transports/xdp/tests/veth.rs` and
//! `examples/xdp_forward` (each includes this file with `#[path]`).
//!
//! Where they cannot be built (not root, no `ip`), [`Topology::create_or_skip`] says so and the
//! caller skips, unless `SUBRING_REQUIRE_NETNS` is set (`.ci/run` sets it as root with
//! iproute2): then it panics, so that a test that should run cannot pass by skipping.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `ip` with `args`; what went wrong, if anything.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// An interface in a namespace.
#[derive(Clone, Debug)]
pub struct End {
    /// The namespace's name.
    pub ns: String,
    /// The interface's name.
    pub ifname: String,
}

impl End {
    /// Moves the calling thread into the namespace; the interface's index there.
    pub fn enter(&self) -> Result<u32, String> {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.ns))
            .map_err(|e| format!("namespace {}: {e}", self.ns))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns {}: {e}", self.ns))?;
        nix::net::if_::if_nametoindex(self.ifname.as_str())
            .map_err(|e| format!("interface {}: {e}", self.ifname))
    }

    /// The index of the interface, from a thread already in its namespace.
    pub fn index(&self) -> Result<u32, String> {
        nix::net::if_::if_nametoindex(self.ifname.as_str())
            .map_err(|e| format!("interface {}: {e}", self.ifname))
    }

    /// Sets the link up or down.
    pub fn set_link(&self, up: bool) -> Result<(), String> {
        ip(&[
            "-n",
            &self.ns,
            "link",
            "set",
            &self.ifname,
            if up { "up" } else { "down" },
        ])
    }

    /// Sets the interface's MAC address (`02:00:00:00:00:01`, say).
    pub fn set_mac(&self, mac: &str) -> Result<(), String> {
        ip(&[
            "-n",
            &self.ns,
            "link",
            "set",
            "dev",
            &self.ifname,
            "address",
            mac,
        ])
    }

    /// Adds a permanent neighbour entry (no ARP for `addr`).
    pub fn add_neigh(&self, addr: &str, mac: &str) -> Result<(), String> {
        ip(&[
            "-n",
            &self.ns,
            "neigh",
            "add",
            addr,
            "lladdr",
            mac,
            "dev",
            &self.ifname,
            "nud",
            "permanent",
        ])
    }

    /// Adds an address (`10.0.0.1/24`, say).
    pub fn add_addr(&self, cidr: &str) -> Result<(), String> {
        ip(&["-n", &self.ns, "addr", "add", cidr, "dev", &self.ifname])
    }
}

/// Namespaces named `{prefix}{pid}_{n}{suffix}` and veth pairs between them, their links up;
/// all removed on drop (deleting a namespace deletes its end of each pair, and so the pair).
#[derive(Debug)]
pub struct Topology {
    base: String,
    namespaces: Vec<String>,
}

impl Topology {
    /// Namespaces with the `suffixes` given, and a veth pair for each `(ns, if, ns, if)`
    /// (namespace and interface suffixes), every link up (loopback too).
    #[allow(clippy::disallowed_types)] // a counter of this process's, no peer shares it
    pub fn create(
        prefix: &str,
        suffixes: &[&str],
        pairs: &[(&str, &str, &str, &str)],
    ) -> Result<Self, String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Interface names have 15 bytes: prefix (3) + pid (up to 7) + '_' + counter + suffix.
        let base = format!(
            "{prefix}{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut t = Topology {
            base,
            namespaces: Vec::new(),
        };
        for s in suffixes {
            let name = format!("{}{s}", t.base);
            ip(&["netns", "add", &name])?;
            t.namespaces.push(name);
            ip(&[
                "-n",
                t.namespaces.last().expect("pushed"),
                "link",
                "set",
                "lo",
                "up",
            ])?;
        }
        for (na, ia, nb, ib) in pairs {
            let (a, b) = (t.end(na, ia), t.end(nb, ib));
            ip(&[
                "link", "add", &a.ifname, "netns", &a.ns, "type", "veth", "peer", "name",
                &b.ifname, "netns", &b.ns,
            ])?;
            a.set_link(true)?;
            b.set_link(true)?;
        }
        Ok(t)
    }

    /// [`Topology::create`], or `None` after saying why the caller skips; a panic instead
    /// where `SUBRING_REQUIRE_NETNS` is set.
    pub fn create_or_skip(
        prefix: &str,
        suffixes: &[&str],
        pairs: &[(&str, &str, &str, &str)],
    ) -> Option<Self> {
        match Self::create(prefix, suffixes, pairs) {
            Ok(t) => Some(t),
            Err(why) if required() => {
                panic!("SUBRING_REQUIRE_NETNS is set, but the namespaces failed: {why}")
            }
            Err(why) => {
                eprintln!("skipped: cannot create network namespaces and veth pairs ({why})");
                None
            }
        }
    }

    /// The interface with suffix `ifs` in the namespace with suffix `ns`.
    pub fn end(&self, ns: &str, ifs: &str) -> End {
        debug_assert!(
            self.base.len() + ifs.len() <= 15,
            "interface names have 15 bytes"
        );
        End {
            ns: format!("{}{ns}", self.base),
            ifname: format!("{}{ifs}", self.base),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Whether the environment asks that namespace tests run rather than skip.
pub fn required() -> bool {
    std::env::var_os("SUBRING_REQUIRE_NETNS").is_some()
}

/// Binds packet socket `fd` to interface `ifindex`, for frames of `ethertype` (host order).
pub fn bind_packet_socket(fd: &OwnedFd, ifindex: u32, ethertype: u16) -> Result<(), String> {
    // SAFETY: all zeroes is a valid `sockaddr_ll`.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = ethertype.to_be();
    sa.sll_ifindex = ifindex as i32;
    // SAFETY: `sa` is a valid `sockaddr_ll` of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(format!(
            "bind packet socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A raw packet socket for frames of `ethertype` on interface `ifindex` (of the calling
/// thread's namespace), with a receive buffer large enough for bursts (16 MiB where allowed).
pub fn packet_socket(ifindex: u32, ethertype: u16) -> Result<OwnedFd, String> {
    // SAFETY: plain socket(2); checked and owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ethertype.to_be()),
        )
    };
    if raw < 0 {
        return Err(format!(
            "packet socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    bind_packet_socket(&fd, ifindex, ethertype)?;
    let bytes: libc::c_int = 16 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: `bytes` is a valid `c_int` of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if rc == 0 {
            break;
        }
    }
    Ok(fd)
}

/// Sends one frame on a bound packet socket.
pub fn send_raw(fd: &OwnedFd, bytes: &[u8]) -> Result<(), String> {
    // SAFETY: `bytes` is valid for reads of its length.
    let n = unsafe { libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(format!("send: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Receives one frame within `timeout`, if one comes.
pub fn recv_raw(fd: &OwnedFd, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        // SAFETY: `buf` is writable for its length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            return Some(buf[..n as usize].to_vec());
        }
    }
    None
}
