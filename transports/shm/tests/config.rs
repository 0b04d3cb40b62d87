//! Configuration values that cannot work, refused by name before anything runs.

mod support;

use std::time::Duration;

use subring_shm::echo::{self, EchoReq, EchoResp, ECHO_PROTOCOL};
use subring_shm::{Client, ConfigError, Error, NotifyMode, Server, ServerConfig};
use support::*;

/// Lengths of time a configuration cannot use are refused by name, before anything runs: a
/// handshake timeout of zero, or so long that its deadline cannot be represented (the server
/// thread panicked adding it to the clock at the first connection: "overflow when adding
/// duration to instant"), and a client's liveness interval of zero (a wait cut into slices of
/// it, when the hang-up watcher cannot start, never ended). `Server::run_for` takes any
/// limit: one past what a deadline holds is no limit.
#[test]
fn lengths_of_time_that_cannot_work_are_refused_by_name() {
    for bad in [
        Duration::ZERO,
        Duration::MAX,
        Duration::from_secs(2 * 24 * 60 * 60),
    ] {
        let mut config = ServerConfig::new(ECHO_PROTOCOL);
        config.handshake_timeout = bad;
        let err = Server::new(config, echo::handler_factory()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Config(ConfigError::Duration {
                    field: "handshake_timeout",
                    value,
                    ..
                }) if value == bad
            ),
            "{bad:?}: {err}"
        );
    }

    let (server, path) = echo_server("lengths_of_time");
    for bad in [Duration::ZERO, Duration::MAX] {
        let mut options = options(NotifyMode::Futex);
        options.liveness_interval = bad;
        let err = Client::<EchoReq, EchoResp>::connect(&path, &options).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Config(ConfigError::Duration {
                    field: "liveness_interval",
                    ..
                })
            ),
            "{bad:?}: {err}"
        );
    }
    // The server still serves a client whose options are right.
    let mut client = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
    echo_many(&mut client, 50, 4, 64);
    drop(client);
    drop(server);

    let mut server =
        Server::new(ServerConfig::new(ECHO_PROTOCOL), echo::handler_factory()).unwrap();
    server.stopper().stop().unwrap();
    let runner = std::thread::spawn(move || server.run_for(Duration::MAX).map(|_| ()));
    let start = std::time::Instant::now();
    while !runner.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "run_for(Duration::MAX) did not stop when asked"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    runner
        .join()
        .expect("run_for(Duration::MAX) panicked")
        .unwrap();
}
