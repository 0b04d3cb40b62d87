//! The kernel pairing: [`Uring`] with nops, reads and writes of a file in a temporary
//! directory, and timers (for held-back completions).
//!
//! The file holds a fixed pattern; a read of a chunk must return the pattern's bytes, and a
//! write rewrites a chunk with the same bytes (so reads and writes in flight together agree,
//! whatever order the kernel runs them in), and hands its buffer back.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use subring::data::{BufferPool, Region, RegionOptions};
use subring::queue::{Completer, QueueError, Submitter};
use subring::sync::{AtomicU64, Ordering::Relaxed};
use subring::uring::{Completion, FixedBuf, Op, Output, Submission, Target, Uring, WaitMode};

use crate::Transport;

const FILE_LEN: u64 = 64 << 10;
const CHUNK: u64 = 64;

fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(131) ^ (i >> 8)) as u8
}

fn pattern(offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len).map(pattern_byte).collect()
}

fn offset_of(token: u64) -> u64 {
    (token * CHUNK) % FILE_LEN
}

/// A directory under the system temp dir, unique to this process and call.
fn temp_dir(what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "subring-conformance-{}-{what}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nop,
    Read,
    Write,
    Timer,
}

/// The data file and what each token in flight was.
#[derive(Debug)]
pub struct Kernel {
    dir: PathBuf,
    path: PathBuf,
    file: Arc<File>,
    expect: HashMap<u64, Kind>,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Kernel {
    fn fd(&self) -> Target {
        Target::fd(&self.file)
    }

    fn expect(&mut self, token: u64, kind: Kind) {
        let old = self.expect.insert(token, kind);
        assert!(old.is_none(), "token {token} requested twice");
    }
}

fn buf_of(output: &Output) -> Result<&[u8], String> {
    match output {
        Output::Buf(b) => Ok(b),
        other => Err(format!("expected a buffer back, got {other:?}")),
    }
}

impl Transport for Kernel {
    type Q = Uring;
    type Mode = WaitMode;
    /// The kernel may complete a stream out of order (reads and writes go to io-wq workers or
    /// poll): only "every token exactly once" is promised.
    const IN_ORDER: bool = false;

    fn modes() -> Vec<WaitMode> {
        vec![WaitMode::Poll, WaitMode::Enter, WaitMode::EventFd]
    }

    fn default_mode() -> WaitMode {
        WaitMode::Enter
    }

    fn open(mode: WaitMode, capacity: u32) -> (Self, Uring) {
        let dir = temp_dir("uring");
        let path = dir.join("data");
        std::fs::write(&path, pattern(0, FILE_LEN))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let fixture = Kernel {
            dir,
            path,
            file: Arc::new(file),
            expect: HashMap::new(),
        };
        let ring = Uring::builder()
            .entries(capacity)
            .wait_mode(mode)
            .build()
            .unwrap_or_else(|e| panic!("io_uring with {capacity} entries in {mode:?}: {e}"));
        (fixture, ring)
    }

    /// Tokens cycle through nop, read and write of the token's chunk.
    fn request(&mut self, _q: &mut Uring, token: u64) -> Submission {
        let offset = offset_of(token);
        let (kind, op) = match token % 3 {
            0 => (Kind::Nop, Op::Nop),
            1 => (
                Kind::Read,
                Op::Read {
                    fd: self.fd(),
                    buf: vec![0; CHUNK as usize],
                    offset,
                },
            ),
            _ => (
                Kind::Write,
                Op::Write {
                    fd: self.fd(),
                    buf: pattern(offset, CHUNK),
                    offset,
                },
            ),
        };
        self.expect(token, kind);
        Submission::new(token, op)
    }

    /// A timer: the kernel completes it after `delay`.
    fn delayed(&mut self, _q: &mut Uring, token: u64, delay: Duration) -> Submission {
        self.expect(token, Kind::Timer);
        Submission::new(
            token,
            Op::Timeout {
                after: delay,
                count: 0,
            },
        )
    }

    fn check(&mut self, _q: &mut Uring, c: Completion) -> Result<u64, String> {
        let token = c.token;
        let kind = self
            .expect
            .remove(&token)
            .ok_or_else(|| format!("completion for token {token}, which was never requested"))?;
        let result = c
            .result
            .as_ref()
            .map_err(|e| format!("token {token} ({kind:?}) failed: {e}"))?;
        let offset = offset_of(token);
        match kind {
            Kind::Nop | Kind::Timer => {
                if *result != 0 || !matches!(c.output, Output::None) {
                    return Err(format!(
                        "token {token} ({kind:?}): {result}, {:?}",
                        c.output
                    ));
                }
            }
            Kind::Read | Kind::Write => {
                if u64::from(*result) != CHUNK {
                    return Err(format!("token {token} ({kind:?}) moved {result} bytes"));
                }
                let got = buf_of(&c.output)?;
                if got != pattern(offset, CHUNK) {
                    return Err(format!(
                        "token {token} ({kind:?}) at offset {offset}: wrong bytes {got:?}"
                    ));
                }
            }
        }
        Ok(token)
    }

    /// Without SQPOLL the kernel consumes every entry at submit, and completions beyond the
    /// completion queue wait in its overflow list: a submitting side never meets `Full`.
    fn outstanding_limit(_capacity: usize) -> Option<usize> {
        None
    }

    /// Without SQPOLL every non-empty submit is an `io_uring_enter`.
    fn doorbell_always_skipped(_mode: WaitMode) -> bool {
        false
    }

    fn waiter_sleeps(mode: WaitMode) -> bool {
        mode != WaitMode::Poll
    }

    /// The kernel does not say.
    fn served(&self) -> Option<u64> {
        None
    }

    /// The ring's drop (bounded by the suite) cancelled or waited out what was in flight; the
    /// writes that ran left the file as it was.
    fn finish(&mut self, _limit: Duration) -> Result<(), String> {
        let now = std::fs::read(&self.path).map_err(|e| e.to_string())?;
        if now != pattern(0, FILE_LEN) {
            return Err("the data file changed".into());
        }
        Ok(())
    }
}

/// Transport-specific: dropping the ring with operations that would never complete on their
/// own (a read of a pipe nobody writes, into a registered pool buffer; a one-minute timer)
/// returns promptly, and the pool buffer and the registered region come back (neither leaked
/// nor freed under the kernel).
#[test]
fn drop_cancels_operations_that_never_complete_and_returns_their_buffers() {
    let region = Arc::new(
        Region::memfd("conformance-fixed", 1 << 16, RegionOptions::new().id(9))
            .expect("memfd region"),
    );
    let pool = BufferPool::new(region.clone(), 0, 4096, 4).expect("pool");
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let mut ring = Uring::builder().entries(8).build().expect("io_uring");
    ring.register_region(region.clone())
        .expect("register region");
    let buf = pool.alloc().expect("a pool buffer");
    let subs = [
        Submission::new(
            1,
            Op::ReadFixed {
                fd: Target::fd(rx.as_fd().try_clone_to_owned().unwrap()),
                buf: FixedBuf::Buf(buf),
                offset: u64::MAX,
            },
        ),
        Submission::new(
            2,
            Op::Read {
                fd: Target::fd(rx.as_fd().try_clone_to_owned().unwrap()),
                buf: vec![0; 4096],
                offset: u64::MAX,
            },
        ),
        Submission::new(
            3,
            Op::Timeout {
                after: Duration::from_secs(60),
                count: 0,
            },
        ),
    ];
    for s in subs {
        ring.push(s).map_err(|r| r.error).expect("push");
    }
    assert_eq!(ring.submit().unwrap(), 3);
    // They really are pending.
    assert!(matches!(
        ring.wait(Some(Duration::from_millis(50))),
        Err(QueueError::Timeout(_))
    ));
    assert_eq!(ring.in_flight(), 3);
    assert_eq!(pool.free_count(), 3, "one buffer is lent to the kernel");
    let refs_while_registered = Arc::strong_count(&region);

    let took = crate::drop_within(ring, crate::PROMPT, "drop with reads and a timer pending");
    assert!(took < crate::PROMPT, "drop took {took:?}");
    assert_eq!(
        pool.free_count(),
        4,
        "the pool buffer of the cancelled fixed read came back to the pool"
    );
    assert_eq!(
        Arc::strong_count(&region),
        refs_while_registered - 1,
        "the ring let go of the registered region"
    );
    drop(tx);
}
