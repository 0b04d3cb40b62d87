//! The example's network: three namespaces and two veth pairs, built with iproute2 and removed
//! on drop; and the two ends' traffic, sent and checked with packet sockets.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// The EtherType of the example's frames (IEEE local experimental).
const ETHERTYPE: u16 = 0x88b5;

/// An interface in a namespace.
#[derive(Clone, Debug)]
pub struct End {
    ns: String,
    ifname: String,
}

impl End {
    /// Moves the calling thread into the namespace; the interface's index there.
    pub fn enter(&self) -> Result<u32, String> {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.ns))
            .map_err(|e| e.to_string())?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        nix::net::if_::if_nametoindex(self.ifname.as_str()).map_err(|e| e.to_string())
    }
}

/// The forwarder's namespace and its two interfaces.
#[derive(Clone, Debug)]
pub struct Forwarder {
    left: End,
    right: End,
}

impl Forwarder {
    /// Moves the calling thread into the forwarder's namespace: (left, right) interface indices.
    pub fn enter(&self) -> (u32, u32) {
        let l = self.left.enter().expect("the forwarder's namespace");
        let r = nix::net::if_::if_nametoindex(self.right.ifname.as_str()).expect("r1");
        (l, r)
    }
}

/// `[L] l0 = l1 [F] r1 = r0 [R]`.
#[derive(Debug)]
pub struct Topology {
    names: [String; 3],
    base: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
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

impl Topology {
    /// Builds it (names carry this process's id).
    pub fn create() -> Result<Self, String> {
        let base = format!("sxf{}", std::process::id());
        let t = Topology {
            names: [format!("{base}L"), format!("{base}F"), format!("{base}R")],
            base: base.clone(),
        };
        let [l, f, r] = &t.names;
        let i = |s: &str| format!("{base}{s}");
        for n in &t.names {
            ip(&["netns", "add", n])?;
        }
        ip(&[
            "link",
            "add",
            &i("l0"),
            "netns",
            l,
            "type",
            "veth",
            "peer",
            "name",
            &i("l1"),
            "netns",
            f,
        ])?;
        ip(&[
            "link",
            "add",
            &i("r0"),
            "netns",
            r,
            "type",
            "veth",
            "peer",
            "name",
            &i("r1"),
            "netns",
            f,
        ])?;
        for (ns, dev) in [(l, "l0"), (f, "l1"), (f, "r1"), (r, "r0")] {
            ip(&["-n", ns, "link", "set", &i(dev), "up"])?;
        }
        Ok(t)
    }

    fn end(&self, ns: usize, dev: &str) -> End {
        End {
            ns: self.names[ns].clone(),
            ifname: format!("{}{dev}", self.base),
        }
    }

    /// The left end (`l0` in L).
    pub fn left(&self) -> End {
        self.end(0, "l0")
    }

    /// The right end (`r0` in R).
    pub fn right(&self) -> End {
        self.end(2, "r0")
    }

    /// The forwarder (`l1` and `r1` in F).
    pub fn forwarder(&self) -> Forwarder {
        Forwarder {
            left: self.end(1, "l1"),
            right: self.end(1, "r1"),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Frame `i` from side `side` (0: left, 1: right): broadcast, the EtherType, the side, a pattern.
pub fn frame(side: usize, i: usize) -> Vec<u8> {
    let len = 60 + (i * 37) % 1400;
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, side as u8, 1]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.push(side as u8);
    f.extend((15..len).map(|k| (k * 13 + i * 7 + side * 101) as u8));
    f
}

fn packet_socket(ifindex: u32) -> Result<OwnedFd, String> {
    // SAFETY: plain socket(2); checked and owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETHERTYPE.to_be()),
        )
    };
    if raw < 0 {
        return Err(format!(
            "packet socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a new descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all zeroes is a valid `sockaddr_ll`.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = ETHERTYPE.to_be();
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
    // Room for every frame the other side sends while this one is still sending its own
    // (the default buffer holds about a hundred of them; the rest would be dropped).
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

/// One end: sends `frames` frames to the other side and checks every byte of the `frames` it
/// receives from there, in order, within 20 s. `ready` lines both ends up before sending.
pub fn exchange(me: &End, side: usize, frames: usize, ready: Arc<Barrier>) -> Result<(), String> {
    let fd = packet_socket(me.enter()?)?;
    ready.wait();
    for i in 0..frames {
        let f = frame(side, i);
        // SAFETY: `f` is valid for reads of its length; the socket is bound.
        let n = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        if n != f.len() as isize {
            return Err(format!("send: {}", std::io::Error::last_os_error()));
        }
        if i % 32 == 31 {
            // Let the forwarder keep up: a burst larger than the rings would be dropped.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 4096];
    let mut next = 0;
    while next < frames {
        if Instant::now() > deadline {
            return Err(format!(
                "side {side}: {next} of {frames} frames arrived within 20 s"
            ));
        }
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
        if n <= 0 || buf.get(14) != Some(&((1 - side) as u8)) {
            continue; // nothing yet, or our own frame seen going out
        }
        let want = frame(1 - side, next);
        if buf[..n as usize] != want[..] {
            return Err(format!(
                "side {side}: frame {next} from the other side differs"
            ));
        }
        next += 1;
    }
    Ok(())
}
