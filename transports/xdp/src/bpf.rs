//! The redirect program, without a compiler: an `XSKMAP` and six BPF instructions that send
//! each frame to the socket registered for its receive queue (and let it pass to the stack if
//! there is none), loaded with `bpf(2)` and attached to the interface with a BPF link, which
//! detaches it when dropped. No clang, libbpf or libxdp, at build time or at run time.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::XdpError;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const XDP_PASS: i32 = 2;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Where the program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`): fast, and needed for zero-copy sockets.
    Driver,
    /// Generic XDP, on the kernel's socket buffers (`XDP_FLAGS_SKB_MODE`): works on any
    /// interface, copy mode only.
    #[default]
    Generic,
}

/// One BPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The program: `return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);`.
fn program(map_fd: i32) -> [Insn; 6] {
    [
        // r2 = *(u32 *)(r1 + offsetof(struct xdp_md, rx_queue_index))
        insn(0x61, 2, 1, 16, 0),
        // r1 = the map (a 64-bit immediate in two instructions, the map's fd as its low half)
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        // r3 = XDP_PASS: what a queue with no socket does
        insn(0xb7, 3, 0, 0, XDP_PASS),
        // call bpf_redirect_map
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        // return r0
        insn(0x95, 0, 0, 0, 0),
    ]
}

/// `bpf(cmd, attr)`: a new descriptor, or the kernel's error naming `what`.
fn bpf_fd<T>(cmd: libc::c_long, attr: &T, what: &'static str) -> Result<OwnedFd, XdpError> {
    let rc = bpf(cmd, attr);
    if rc < 0 {
        return Err(XdpError::Os {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the kernel returned a new descriptor, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> libc::c_long {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`, its unused fields
    // zero, valid for reads (and writes, which these commands do not do) of its size.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *const T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    }
}

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

fn name16(s: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    for (d, b) in n.iter_mut().zip(s.bytes().take(15)) {
        *d = b;
    }
    n
}

/// The redirect program attached to one interface, with its `XSKMAP`: sockets registered for a
/// queue get that queue's frames. Dropping it detaches the program.
#[derive(Debug)]
pub struct XdpProgram {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
    ifindex: u32,
    queues: u32,
    mode: AttachMode,
}

impl XdpProgram {
    /// Builds the program and attaches it to interface `ifindex` (queues `0..queues`).
    /// Fails with the kernel's error if another XDP program is attached there, or the driver
    /// has no native XDP ([`AttachMode::Driver`]), or this process lacks `CAP_BPF` and
    /// `CAP_NET_ADMIN`.
    pub fn attach(ifindex: u32, queues: u32, mode: AttachMode) -> Result<Self, XdpError> {
        if queues == 0 {
            return Err(XdpError::Config(
                "an XSKMAP needs at least one queue".into(),
            ));
        }
        let map = bpf_fd(
            BPF_MAP_CREATE,
            &MapCreate {
                map_type: BPF_MAP_TYPE_XSKMAP,
                key_size: 4,
                value_size: 4,
                max_entries: queues,
                map_name: name16("subring_xsks"),
                ..MapCreate::default()
            },
            "bpf(BPF_MAP_CREATE) of an XSKMAP",
        )?;
        let insns = program(map.as_raw_fd());
        let license = CString::new("GPL").expect("no NUL");
        let mut log = vec![0u8; 4096];
        let load = ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name: name16("subring_redir"),
            expected_attach_type: BPF_XDP,
            ..ProgLoad::default()
        };
        let prog = bpf_fd(
            BPF_PROG_LOAD,
            &load,
            "bpf(BPF_PROG_LOAD) of the redirect program",
        )
        .map_err(|e| match e {
            XdpError::Os { what, source } => {
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                XdpError::Verifier {
                    what,
                    source,
                    log: String::from_utf8_lossy(&log[..end]).into_owned(),
                }
            }
            e => e,
        })?;
        let link = bpf_fd(
            BPF_LINK_CREATE,
            &LinkCreate {
                prog_fd: prog.as_raw_fd() as u32,
                target_ifindex: ifindex,
                attach_type: BPF_XDP,
                flags: match mode {
                    AttachMode::Driver => XDP_FLAGS_DRV_MODE,
                    AttachMode::Generic => XDP_FLAGS_SKB_MODE,
                },
            },
            "bpf(BPF_LINK_CREATE) attaching XDP to the interface",
        )?;
        Ok(XdpProgram {
            map,
            _prog: prog,
            _link: link,
            ifindex,
            queues,
            mode,
        })
    }

    /// Sends queue `queue`'s frames to `socket` (bound to this interface and queue).
    pub fn register(&self, queue: u32, socket: BorrowedFd<'_>) -> Result<(), XdpError> {
        if queue >= self.queues {
            return Err(XdpError::Config(format!(
                "queue {queue} is past the program's {} queues",
                self.queues
            )));
        }
        let key = queue;
        let value = socket.as_raw_fd() as u32;
        let rc = bpf(
            BPF_MAP_UPDATE_ELEM,
            &MapElem {
                map_fd: self.map.as_raw_fd() as u32,
                key: (&key as *const u32) as u64,
                value: (&value as *const u32) as u64,
                ..MapElem::default()
            },
        );
        if rc < 0 {
            return Err(XdpError::Os {
                what: "bpf(BPF_MAP_UPDATE_ELEM) registering the socket",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Stops sending queue `queue`'s frames to a socket (they pass to the network stack).
    pub fn unregister(&self, queue: u32) -> Result<(), XdpError> {
        let key = queue;
        let rc = bpf(
            BPF_MAP_DELETE_ELEM,
            &MapElem {
                map_fd: self.map.as_raw_fd() as u32,
                key: (&key as *const u32) as u64,
                ..MapElem::default()
            },
        );
        if rc < 0 {
            return Err(XdpError::Os {
                what: "bpf(BPF_MAP_DELETE_ELEM)",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The interface it is attached to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Where it runs.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The `XSKMAP`'s descriptor.
    pub fn map_fd(&self) -> BorrowedFd<'_> {
        self.map.as_fd()
    }
}
