//! Rings the kernel holds to a locked-memory limit (created by a thread without `CAP_IPC_LOCK`,
//! with `RLIMIT_MEMLOCK` low): the block service does not ask again at every request for a
//! registration the kernel refused, and a refused registration leaves the kernel transport's
//! table as it was. Alone in their binary, because the limit is the process's.

// The tests' own bookkeeping (a lock, a stop flag) is not a protocol under test: std types.
#![allow(clippy::disallowed_types)]

mod common;

use common::*;
use subring_blk::{BlkResultError, Status};

/// `CAP_IPC_LOCK`'s bit.
const CAP_IPC_LOCK: u32 = 14;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Takes `CAP_IPC_LOCK` out of this thread's effective set (capabilities are per thread: the
/// test's other threads, and threads started before, keep theirs).
fn drop_ipc_lock() {
    let mut header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: the header and two data structs are what capget(2) fills for version 3.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(r, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_IPC_LOCK);
    // SAFETY: as above; capset(2) reads them.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
}

/// Sets the soft `RLIMIT_MEMLOCK`; returns the one before.
fn set_memlock(soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut old) };
    assert_eq!(r, 0);
    let new = libc::rlimit {
        rlim_cur: soft.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &new) }, 0);
    old
}

/// The kernel refuses to pin a client's pool (its window is 5 MiB, the limit 1 MiB): the read
/// is refused with `NoMemory`, and so are the next five, without the service asking the
/// kernel again (each attempt pins and unpins the whole window before the kernel refuses it).
/// A client whose memory was never registered leaves nothing registered.
#[test]
fn a_refused_registration_is_not_asked_for_at_every_request() {
    let _serial = serial();
    let dir = TempDir::new("memlock", false);
    let old = set_memlock(1 << 20);
    // The ring is created on this thread (the server thread only turns it): without the
    // capability, the kernel accounts its registrations against the limit.
    drop_ipc_lock();
    let (server, mut client) = local(&dir, |_| {});
    for tag in 0..6 {
        let buf = client.alloc().unwrap();
        client.read(tag, 0, buf, 4096).unwrap();
        client.submit().unwrap();
        let d = client.next(Some(LIMIT)).unwrap();
        assert_eq!(
            d.result,
            Err(BlkResultError::Refused(Status::NoMemory)),
            "read {tag}"
        );
    }
    drop(client);
    let stopped = server.stop().unwrap();
    // SAFETY: setrlimit reads one rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &old) }, 0);
    let stats = stopped.service().stats();
    assert_eq!(stats.registrations_refused, 1, "{stats:?}");
    assert_eq!(stats.regions_registered, 0);
    assert_eq!(stopped.service().registered_bytes(), 0);
}

/// A registration the kernel refuses leaves the regions registered before usable, with the
/// table registered whole (as on a kernel without sparse tables, before 5.19) and with a
/// sparse one. Registered whole, the table is dropped and registered again with the new
/// region; when that fails, the old table is put back (it used to stay empty, every fixed
/// operation on the regions before then failing with `EFAULT`).
#[test]
fn a_refused_registration_leaves_the_table_as_it_was() {
    use std::sync::Arc;
    use subring_planes::queue::{Completer, Submitter};
    use subring_shm::{BufHandle, Region, RegionOptions};
    use subring_uring::{FixedBuf, Op, RegisterError, Submission, Target, Uring};
    let _serial = serial();
    let dir = TempDir::new("memlock-table", false);
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 239) as u8).collect();
    let path = dir.0.join("data");
    std::fs::write(&path, &data).unwrap();
    let file = Target::fd(Arc::new(std::fs::File::open(&path).unwrap()));
    let old = set_memlock(1 << 20);
    drop_ipc_lock();
    for sparse in [false, true] {
        let mut ring = Uring::builder().sparse_buffers(sparse).build().unwrap();
        let a = Arc::new(Region::memfd("a", 64 << 10, RegionOptions::new().id(1)).unwrap());
        let b = Arc::new(Region::memfd("b", 4 << 20, RegionOptions::new().id(2)).unwrap());
        let ka = ring.register_region(a.clone()).unwrap();
        let refused = ring.register_region(b);
        assert!(
            matches!(refused, Err(RegisterError::Os { .. })),
            "sparse {sparse}: {refused:?}"
        );
        let at = BufHandle {
            offset: 8192,
            len: 4096,
            region: 1,
        };
        let op = Op::ReadFixed {
            fd: file.clone(),
            buf: FixedBuf::In(ka, at),
            offset: 0,
        };
        ring.push(Submission::new(1, op))
            .map_err(|r| r.error)
            .unwrap();
        ring.submit().unwrap();
        let mut done = Vec::new();
        while done.is_empty() {
            ring.wait(Some(LIMIT)).unwrap();
            ring.reap_into(&mut done, 1).unwrap();
        }
        assert_eq!(
            done[0].result.as_ref().ok(),
            Some(&4096),
            "sparse {sparse}: {:?}",
            done[0].result
        );
        let mut seen = vec![0u8; 4096];
        a.read_into(at, &mut seen).unwrap();
        assert_eq!(seen, data, "sparse {sparse}");
    }
    // SAFETY: setrlimit reads one rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &old) }, 0);
}
