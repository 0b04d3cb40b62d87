//! The kernel transport under tokio: reads awaited in a runtime, a dropped wait that loses
//! nothing, and the mode it needs.
#![cfg(feature = "tokio")]

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use subring_uring::tokio::{AsyncUring, NotAwaitable};
use subring_uring::{Op, Output, Submission, Target, Uring, WaitMode};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn async_ring() -> AsyncUring {
    AsyncUring::new(
        Uring::builder()
            .wait_mode(WaitMode::EventFd)
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// 256 reads of a file, 8 in flight, each checked, awaited in a tokio runtime.
#[test]
fn reads_awaited_in_a_runtime() {
    let path = std::env::temp_dir().join(format!("subring-uring-tokio-{}", std::process::id()));
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let file = Arc::new(std::fs::File::open(&path).unwrap());
    runtime().block_on(async {
        let mut ring = async_ring();
        let read = |i: u64| {
            Submission::new(
                i,
                Op::Read {
                    fd: Target::fd(&file),
                    buf: vec![0; 256],
                    offset: (i * 256) % (64 * 1024),
                },
            )
        };
        let (mut sent, mut done) = (0u64, 0u64);
        while done < 256 {
            while sent < 256 && sent - done < 8 {
                ring.push(read(sent)).unwrap();
                sent += 1;
            }
            let c = ring.next().await.unwrap();
            assert_eq!(c.result.unwrap(), 256);
            let Output::Buf(buf) = c.output else {
                panic!("a read returns its buffer")
            };
            let at = ((c.token * 256) % (64 * 1024)) as usize;
            assert_eq!(buf, data[at..at + 256]);
            done += 1;
        }
        assert_eq!(ring.ring().in_flight(), 0);
    });
    let _ = std::fs::remove_file(&path);
}

/// A wait dropped while a read is in the kernel loses nothing: the read's completion, with its
/// buffer, comes to the next wait.
#[test]
fn a_dropped_wait_loses_nothing() {
    runtime().block_on(async {
        let mut ring = async_ring();
        let (rx, tx): (OwnedFd, OwnedFd) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        for round in 0..50u8 {
            ring.push(Submission::new(
                u64::from(round),
                Op::Read {
                    fd: Target::fd(rx.try_clone().unwrap()),
                    buf: vec![0; 8],
                    offset: u64::MAX,
                },
            ))
            .unwrap();
            let waited = tokio::time::timeout(Duration::from_micros(300), ring.ready()).await;
            assert!(waited.is_err(), "round {round}: the pipe was empty");
            nix::unistd::write(&tx, &[round]).unwrap();
            let c = ring.next().await.unwrap();
            assert_eq!((c.token, c.result.unwrap()), (u64::from(round), 1));
            match c.output {
                Output::Buf(b) => assert_eq!(b, [round]),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ring.ring().in_flight(), 0);
    });
}

#[test]
fn only_an_eventfd_ring_can_be_awaited() {
    let _runtime = runtime().enter();
    let err = AsyncUring::new(Uring::builder().build().unwrap()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<NotAwaitable>());
    assert_eq!(
        inner,
        Some(&NotAwaitable {
            given: WaitMode::Enter
        }),
        "{err}"
    );
}
