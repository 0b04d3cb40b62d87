//! The storage pairing: the shm [`Client`] of the block protocol talking to the block service
//! ([`subring::blk`]) served on a thread of this process, its kernel reads landing in the
//! client's buffers.
//!
//! Odd tokens are 4 KiB reads of a file of known bytes into one of the client's buffers (the
//! service defers them and answers when the kernel completes them, so they complete in any
//! order); even tokens ask for the device's size (answered at once). The server thread runs in
//! short `run_for` slices and can be told to pause, which is how a completion is held back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use subring::blk::{self, BlkCompletion, BlkConfig, BlkOp, BlkRequest, BlkService};
use subring::interrupt::NotifyMode;
use subring::shm::{Client, ClientInfo, ClientOptions, Completions, Ctx, Server, Service};
use subring::sync::{AtomicU64, Ordering::SeqCst};

use crate::Transport;

const SLICE: Duration = Duration::from_millis(2);
const BLOCK: u32 = 4096;
/// Blocks in the device file.
const BLOCKS: u64 = 256;

enum Cmd {
    Pause { until: Instant, parked: Sender<()> },
}

/// The block service, counting the requests it is given as it is given them.
struct Counting {
    inner: BlkService,
    served: Arc<AtomicU64>,
}

impl Service<BlkRequest, BlkCompletion> for Counting {
    type Client = u64;

    fn connect(&mut self, client: &ClientInfo) -> u64 {
        self.inner.connect(client)
    }

    fn request(&mut self, client: &mut u64, ctx: &mut Ctx<'_, BlkCompletion>, req: BlkRequest) {
        self.served.fetch_add(1, SeqCst);
        self.inner.request(client, ctx, req)
    }

    fn poll(&mut self, done: &mut Completions<'_, BlkCompletion>) -> u32 {
        self.inner.poll(done)
    }

    fn before_sleep(&mut self) -> bool {
        self.inner.before_sleep()
    }

    fn disconnect(&mut self, client: u64, info: &ClientInfo) {
        self.inner.disconnect(client, info)
    }
}

type BlkServer = Server<BlkRequest, BlkCompletion, Counting>;

#[derive(Debug, Default)]
struct Published {
    welcomed: AtomicU64,
    released: AtomicU64,
    evicted: AtomicU64,
    clients: AtomicU64,
    registered: AtomicU64,
}

fn serve(mut server: BlkServer, cmds: Receiver<Cmd>, p: Arc<Published>) -> Result<(), String> {
    loop {
        match cmds.try_recv() {
            Ok(Cmd::Pause { until, parked }) => {
                let _ = parked.send(());
                let left = until.saturating_duration_since(Instant::now());
                std::thread::sleep(left.min(Duration::from_secs(10)));
            }
            Err(TryRecvError::Empty) => {
                server
                    .run_for(SLICE)
                    .map_err(|e| format!("server failed: {e}"))?;
            }
            Err(TryRecvError::Disconnected) => return Ok(()),
        }
        let s = server.stats();
        let blk = &server.service().inner;
        p.welcomed.store(s.welcomed, SeqCst);
        p.released.store(s.released, SeqCst);
        p.evicted.store(s.evicted, SeqCst);
        p.registered.store(blk.registered_regions() as u64, SeqCst);
        p.clients.store(s.clients + blk.clients() as u64, SeqCst);
    }
}

/// The byte at `offset` of the device file.
fn byte_at(offset: u64) -> u8 {
    (offset.wrapping_mul(31) >> 3) as u8 ^ (offset >> 12) as u8
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Info,
    Read {
        offset: u64,
        handle: subring::data::BufHandle,
    },
}

/// The server thread, the device file and what each token in flight was.
#[derive(Debug)]
pub struct Blk {
    cmds: Option<Sender<Cmd>>,
    server: Option<JoinHandle<Result<(), String>>>,
    published: Arc<Published>,
    served: Arc<AtomicU64>,
    expect: HashMap<u64, Kind>,
    device: PathBuf,
}

impl Blk {
    fn stop(&mut self) -> Result<(), String> {
        self.cmds = None;
        let Some(handle) = self.server.take() else {
            return Ok(());
        };
        let start = Instant::now();
        while !handle.is_finished() {
            if start.elapsed() > Duration::from_secs(15) {
                return Err("the server thread did not stop".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        handle
            .join()
            .map_err(|_| "the server thread panicked".to_string())?
    }

    fn expect(&mut self, token: u64, kind: Kind) {
        let old = self.expect.insert(token, kind);
        assert!(old.is_none(), "token {token} requested twice");
    }
}

impl Drop for Blk {
    fn drop(&mut self) {
        let stopped = self.stop();
        let _ = std::fs::remove_file(&self.device);
        if !std::thread::panicking() {
            stopped.expect("the server thread ends cleanly");
        }
    }
}

static DEVICES: AtomicU64 = AtomicU64::new(0);

impl Transport for Blk {
    type Q = Client<BlkRequest, BlkCompletion>;
    type Mode = NotifyMode;
    /// Reads complete when the kernel completes them.
    const IN_ORDER: bool = false;

    fn modes() -> Vec<NotifyMode> {
        NotifyMode::ALL.to_vec()
    }

    fn default_mode() -> NotifyMode {
        NotifyMode::EventFd
    }

    fn open(mode: NotifyMode, capacity: u32) -> (Self, Self::Q) {
        let device = std::env::temp_dir().join(format!(
            "subring-conformance-blk-{}-{}",
            std::process::id(),
            DEVICES.fetch_add(1, SeqCst)
        ));
        let bytes: Vec<u8> = (0..BLOCKS * u64::from(BLOCK)).map(byte_at).collect();
        std::fs::write(&device, bytes).expect("write the device file");
        let (server_end, client_end) = subring::shm::socket_pair().expect("socket pair");
        let mut config = blk::server_config();
        // Deferred reads are bounded like the ring, so a backed-up client meets `Full` soon.
        // As many as the ring holds: the answers still owed after a reap can fill the
        // completion ring again before the server takes a request, and `wait_space` then
        // ends with `Full` (reap first); the `wait_space` case covers it.
        config.max_deferred = capacity;
        let inner = BlkService::open(BlkConfig::new(&device)).expect("block service");
        let fd = inner.completion_fd().try_clone_to_owned().expect("dup");
        let served = Arc::new(AtomicU64::new(0));
        let counting = Counting {
            inner,
            served: served.clone(),
        };
        let mut server = Server::with_service(config, counting).expect("block server");
        server.watch(&fd).expect("watch the ring");
        server.add_connection(server_end).expect("add connection");
        let (tx, rx) = mpsc::channel();
        let published = Arc::new(Published::default());
        let for_thread = published.clone();
        let thread = std::thread::Builder::new()
            .name("conformance-blk-server".into())
            .spawn(move || serve(server, rx, for_thread))
            .expect("spawn the server thread");
        let fixture = Blk {
            cmds: Some(tx),
            server: Some(thread),
            published,
            served,
            expect: HashMap::new(),
            device,
        };
        let options = ClientOptions::new(blk::BLK_PROTOCOL)
            .mode(mode)
            .capacity(capacity)
            .buffers(BLOCK, 4 * capacity);
        let client = Client::from_socket(client_end, &options)
            .unwrap_or_else(|e| panic!("block client in {mode}: {e}"));
        (fixture, client)
    }

    fn request(&mut self, q: &mut Self::Q, token: u64) -> BlkRequest {
        if token % 2 == 0 {
            self.expect(token, Kind::Info);
            return BlkRequest {
                tag: token,
                op: BlkOp::Info as u32,
                ..BlkRequest::default()
            };
        }
        let mut buf = q
            .alloc()
            .unwrap_or_else(|| panic!("token {token}: the client's buffer pool is exhausted"));
        buf.set_len(BLOCK as usize);
        let offset = (token % BLOCKS) * u64::from(BLOCK);
        let handle = buf.lend();
        self.expect(token, Kind::Read { offset, handle });
        BlkRequest {
            tag: token,
            offset,
            buf: handle,
            len: BLOCK,
            op: BlkOp::Read as u32,
        }
    }

    fn delayed(&mut self, _q: &mut Self::Q, token: u64, delay: Duration) -> BlkRequest {
        let (parked_tx, parked) = mpsc::channel();
        self.cmds
            .as_ref()
            .expect("server running")
            .send(Cmd::Pause {
                until: Instant::now() + delay,
                parked: parked_tx,
            })
            .expect("the server thread takes commands");
        parked
            .recv_timeout(Duration::from_secs(10))
            .expect("the server thread parks");
        self.expect(token, Kind::Info);
        BlkRequest {
            tag: token,
            op: BlkOp::Info as u32,
            ..BlkRequest::default()
        }
    }

    fn check(&mut self, q: &mut Self::Q, c: BlkCompletion) -> Result<u64, String> {
        let token = c.tag;
        let kind = self
            .expect
            .remove(&token)
            .ok_or_else(|| format!("completion for tag {token}, which was never requested"))?;
        if c.status != 0 {
            return Err(format!("tag {token} ({kind:?}): status {}", c.status));
        }
        match kind {
            Kind::Info => {
                if c.value != BLOCKS * u64::from(BLOCK) {
                    return Err(format!("tag {token}: device size {}", c.value));
                }
            }
            Kind::Read { offset, handle } => {
                let buf = q
                    .reclaim(handle)
                    .map_err(|e| format!("tag {token}: our buffer did not come back: {e}"))?;
                if c.value != u64::from(BLOCK) {
                    return Err(format!("tag {token}: read {} bytes", c.value));
                }
                let buf = buf.to_vec();
                if let Some(i) =
                    (0..BLOCK as usize).find(|i| buf[*i] != byte_at(offset + *i as u64))
                {
                    return Err(format!(
                        "tag {token}: byte {i} of the block at {offset} is {:#x}, the file has \
                         {:#x}",
                        buf[i],
                        byte_at(offset + i as u64)
                    ));
                }
            }
        }
        Ok(token)
    }

    /// The server takes a client's requests while its completion ring has room and it has
    /// fewer than `max_deferred` (= capacity here) reads in the service.
    fn outstanding_limit(capacity: usize) -> Option<usize> {
        Some(3 * capacity)
    }

    fn doorbell_always_skipped(mode: NotifyMode) -> bool {
        mode == NotifyMode::Spin
    }

    fn waiter_sleeps(mode: NotifyMode) -> bool {
        mode != NotifyMode::Spin
    }

    fn served(&self) -> Option<u64> {
        Some(self.served.load(SeqCst))
    }

    /// The server sees the client leave, and the service retires it: its memory leaves the
    /// ring once its reads have completed.
    fn finish(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let p = &self.published;
        while p.clients.load(SeqCst) != 0
            || p.released.load(SeqCst) == 0
            || p.registered.load(SeqCst) != 0
        {
            if start.elapsed() > limit {
                return Err(format!(
                    "{} clients and {} registered regions {limit:?} after the client's drop",
                    p.clients.load(SeqCst),
                    p.registered.load(SeqCst)
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let welcomed = p.welcomed.load(SeqCst);
        let (released, evicted) = (p.released.load(SeqCst), p.evicted.load(SeqCst));
        if welcomed != 1 || released != 1 || evicted != 0 {
            return Err(format!(
                "the connection ended with welcomed {welcomed}, released {released}, \
                 evicted {evicted} (expected 1, 1, 0)"
            ));
        }
        self.stop()
    }
}
