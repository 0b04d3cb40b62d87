//! Byte streams through std::io: `io::copy` in and out, `BufRead` lines, interleaved echo,
//! and a server that goes away mid-stream.

use std::io::{self, BufRead, Read, Write};
use std::time::Duration;

use subring_shm::stream::{ByteService, Stream, StreamHandler, STREAM_PROTOCOL};
use subring_shm::{ClientOptions, NotifyMode, Server, ServerConfig};

/// Keeps everything until the client finishes, then sends it all back.
#[derive(Default)]
struct Keep(Vec<u8>);
impl ByteService for Keep {
    fn data(&mut self, input: &[u8], _out: &mut Vec<u8>) {
        self.0.extend_from_slice(input);
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.0);
    }
}

/// Answers every byte at once, upper-cased.
struct Upper;
impl ByteService for Upper {
    fn data(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.extend(input.iter().map(u8::to_ascii_uppercase));
    }
}

fn connect<B: ByteService + Send + 'static>(
    service: impl Fn() -> B + Send + 'static,
    mode: NotifyMode,
) -> (Stream, impl Drop) {
    let (server_end, client_end) = subring_shm::socket_pair().unwrap();
    let mut server = Server::new(ServerConfig::new(STREAM_PROTOCOL), move |_| {
        StreamHandler::new(service())
    })
    .unwrap();
    server.add_connection(server_end).unwrap();
    let thread = server.spawn().unwrap();
    let options = ClientOptions::new(STREAM_PROTOCOL)
        .mode(mode)
        .buffers(4096, 16);
    let mut stream = Stream::from_socket(client_end, &options).unwrap();
    stream.set_timeout(Some(Duration::from_secs(20)));
    (stream, thread)
}

fn data(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn io_copy_in_and_back_out() {
    for mode in [NotifyMode::Adaptive, NotifyMode::EventFd] {
        let input = data(3 << 20);
        let (mut stream, _server) = connect(Keep::default, mode);
        let copied = io::copy(&mut &input[..], &mut stream).unwrap();
        assert_eq!(copied, input.len() as u64);
        stream.finish().unwrap();
        let mut output = Vec::new();
        io::copy(&mut stream, &mut output).unwrap();
        assert!(output == input, "{mode}: bytes differ after the round trip");
        // End of stream stays end of stream.
        assert_eq!(stream.read(&mut [0u8; 16]).unwrap(), 0);
        assert!(stream.write(b"late").is_err(), "write after finish");
    }
}

#[test]
fn buf_read_lines_interleaved_with_writes() {
    let (mut stream, _server) = connect(|| Upper, NotifyMode::EventFd);
    for i in 0..500 {
        writeln!(stream, "line {i} of the stream").unwrap();
        stream.flush().unwrap();
        let mut line = String::new();
        stream.read_line(&mut line).unwrap();
        assert_eq!(line, format!("LINE {i} OF THE STREAM\n"));
    }
    stream.finish().unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn fill_buf_hands_out_a_private_copy_never_the_shared_buffer() {
    let (mut stream, _server) = connect(|| Upper, NotifyMode::Adaptive);
    let chunk = data(10_000);
    let mut seen = Vec::new();
    stream.write_all(&chunk).unwrap();
    stream.flush().unwrap();
    let region = stream.client().region().clone();
    let (start, end) = (
        region.as_ptr() as usize,
        region.as_ptr() as usize + region.len(),
    );
    while seen.len() < chunk.len() {
        let buf = stream.fill_buf().unwrap();
        assert!(!buf.is_empty());
        assert!(buf.len() <= 4096, "one shared buffer at a time");
        let at = buf.as_ptr() as usize;
        // A slice into the region would be a reference to bytes the server can write at any
        // moment (undefined behaviour if it does): what `fill_buf` returns is the stream's own.
        assert!(
            at + buf.len() <= start || at >= end,
            "fill_buf handed out a slice of shared memory"
        );
        seen.extend_from_slice(buf);
        let n = buf.len();
        stream.consume(n);
    }
    let want: Vec<u8> = chunk.iter().map(u8::to_ascii_uppercase).collect();
    assert!(seen == want);
}

#[test]
fn server_gone_mid_stream_is_an_error_not_a_hang() {
    let (mut stream, server) = connect(Keep::default, NotifyMode::EventFd);
    stream.write_all(&data(100_000)).unwrap();
    stream.flush().unwrap();
    drop(server); // stops the server: it says goodbye and closes its side
    let mut out = Vec::new();
    let err = stream.read_to_end(&mut out).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
}

/// A submission ring smaller than the receives the stream keeps lent: a write waits for room
/// (the server taking requests), never for a completion, and receives never take the slot a
/// write needs. (Before, `flush` pushed receives into a full ring and waited for an answer the
/// server had no reason to send: it timed out with an honest server.)
#[test]
fn a_small_ring_full_of_receives_does_not_hold_a_write() {
    for mode in [NotifyMode::Adaptive, NotifyMode::EventFd] {
        let (stream, _server) =
            upper_with(ClientOptions::new(STREAM_PROTOCOL).mode(mode).capacity(4));
        let mut lines = io::BufReader::new(stream);
        for round in 0..20 {
            let line = format!("line {round}\n");
            lines.get_mut().write_all(line.as_bytes()).unwrap();
            lines
                .get_mut()
                .flush()
                .unwrap_or_else(|e| panic!("{mode}: flush: {e}"));
            let mut back = String::new();
            lines.read_line(&mut back).unwrap();
            assert_eq!(back, line.to_uppercase(), "{mode}");
        }
    }
}

/// The smallest ring (2 entries): a stream that finished writing still reads to the end.
/// Receives keep the ring's last slot free for a write only until the end of the writes is
/// sent; after it, they take it. (The first version kept it free for good: while the server had
/// not yet taken the end of the writes from the other slot, nothing could be lent, and the
/// read failed with `OutOfMemory`. This test does not catch that reliably: a polling server
/// usually takes the end first.)
#[test]
fn the_smallest_ring_reads_to_the_end_after_finish() {
    let (stream, _server) = upper_with(ClientOptions::new(STREAM_PROTOCOL).capacity(2));
    let mut lines = io::BufReader::new(stream);
    lines.get_mut().write_all(b"first\n").unwrap();
    lines.get_mut().flush().unwrap();
    let mut back = String::new();
    lines.read_line(&mut back).unwrap();
    assert_eq!(back, "FIRST\n");
    lines.get_mut().write_all(b"last\n").unwrap();
    lines.get_mut().finish().unwrap();
    let mut rest = String::new();
    lines.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "LAST\n");
}

/// A stream to an upper-casing server with `options` (16 buffers of 4 KiB), waits bounded at
/// 2 s.
fn upper_with(options: ClientOptions) -> (Stream, impl Drop) {
    let (server_end, client_end) = subring_shm::socket_pair().unwrap();
    let mut server = Server::new(ServerConfig::new(STREAM_PROTOCOL), move |_| {
        StreamHandler::new(Upper)
    })
    .unwrap();
    server.add_connection(server_end).unwrap();
    let server = server.spawn().unwrap();
    let mut stream = Stream::from_socket(client_end, &options.buffers(4096, 16)).unwrap();
    stream.set_timeout(Some(Duration::from_secs(2)));
    (stream, server)
}
