//! Block servers that break the protocol, faked with a shm server and a closure handler: the
//! client must turn what they answer into typed errors (no panic, no answer matched to the
//! wrong request, no table that grows without bound).

// The tests' own bookkeeping (a stop flag) is not a protocol under test: std types.
#![allow(clippy::disallowed_types)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use subring_blk::{
    server_config, BlkClient, BlkClientError, BlkCompletion, BlkOp, BlkOptions, BlkRequest,
    BlkResultError, MAX_IN_FLIGHT,
};
use subring_shm::queue::QueueError;
use subring_shm::{Ctx, Server};

/// A fake block server answering with `answer` (the info request that opens every connection
/// included), and a client connected to it.
fn fake<F>(answer: F) -> (impl Sized, BlkClient)
where
    F: FnMut(&mut Ctx<'_, BlkCompletion>, BlkRequest) + Send + Clone + 'static,
{
    let (server_end, client_end) = subring_shm::socket_pair().unwrap();
    let mut server =
        Server::<BlkRequest, BlkCompletion, _>::new(server_config(), move |_| answer.clone())
            .unwrap();
    server.add_connection(server_end).unwrap();
    let server = server.spawn().unwrap();
    let client = BlkClient::from_socket(client_end, &BlkOptions::new()).unwrap();
    (server, client)
}

/// The device size the fake servers report.
const SIZE: u64 = 1 << 20;

/// What an honest server answers to `req` (the info request, or a transfer of all it asked).
fn honest(req: &BlkRequest) -> BlkCompletion {
    let info = req.op == BlkOp::Info as u32;
    BlkCompletion {
        tag: req.tag,
        value: if info { SIZE } else { u64::from(req.len) },
        status: 0,
        flags: 0,
    }
}

/// A server that answers the opening info request twice: the second answer is refused as an
/// unknown tag, not matched to the request that took the info request's slot next (before,
/// the tag was the bare slot, reused at once: the read was "answered" with the device size
/// while its own answer was still to come).
#[test]
fn an_answer_repeated_is_an_unknown_tag_not_the_next_request() {
    let (server, mut client) = fake(|ctx, req| {
        ctx.complete(honest(&req));
        if req.op == BlkOp::Info as u32 {
            ctx.complete(honest(&req));
        }
    });
    let buf = client.alloc().unwrap();
    client.read(7, 0, buf, 4096).unwrap();
    client.submit().unwrap();
    match client.next(Some(LIMIT)) {
        Err(BlkClientError::UnknownTag(_)) => {}
        other => panic!("the repeated info answer gave {other:?}"),
    }
    let d = client.next(Some(LIMIT)).unwrap();
    assert_eq!((d.tag, d.result), (7, Ok(4096)));
    drop(client);
    drop(server);
}

/// A read answered with more bytes than it asked for, and a status of `i32::MIN` (whose
/// negation overflows): typed errors, no panic.
#[test]
fn impossible_answers_are_typed_errors() {
    let (server, mut client) = fake(|ctx, req| {
        let mut c = honest(&req);
        if req.op == BlkOp::Read as u32 {
            c.value += 1;
        }
        if req.op == BlkOp::Flush as u32 {
            c.status = i32::MIN;
        }
        ctx.complete(c)
    });
    let buf = client.alloc().unwrap();
    client.read(1, 0, buf, 4096).unwrap();
    client.flush(2).unwrap();
    client.submit().unwrap();
    let read = client.next(Some(LIMIT)).unwrap();
    assert_eq!(
        read.result,
        Err(BlkResultError::TooLong {
            value: 4097,
            len: 4096
        })
    );
    assert_eq!(read.buf.map(|b| b.len()), Some(0), "no bytes claimed");
    let flush = client.next(Some(LIMIT)).unwrap();
    assert_eq!(flush.result, Err(BlkResultError::Unknown(i32::MIN)));
    drop(client);
    drop(server);
}

/// A server that takes requests and never answers them (past the opening info request): the
/// client's table of requests in flight stops at `MAX_IN_FLIGHT` (a push is refused with
/// `Full` from then on) instead of growing for as long as the server takes requests.
#[test]
fn requests_in_flight_are_bounded() {
    let (server, mut client) = fake(|ctx, req| {
        if req.op == BlkOp::Info as u32 {
            ctx.complete(honest(&req));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.in_flight() < MAX_IN_FLIGHT {
        assert!(
            Instant::now() < deadline,
            "{} in flight",
            client.in_flight()
        );
        match client.flush(0) {
            Ok(()) => {}
            Err(r) if matches!(r.error, QueueError::Full) => {
                client.submit().unwrap();
                std::thread::yield_now();
            }
            Err(r) => panic!("{}", r.error),
        }
    }
    client.submit().unwrap();
    for _ in 0..100 {
        let r = client.flush(0).unwrap_err();
        assert!(matches!(r.error, QueueError::Full), "{}", r.error);
        assert_eq!(client.in_flight(), MAX_IN_FLIGHT);
    }
    drop(client);
    drop(server);
}
