//! An epoll-sleeping server's futex doorbells: for clients that take no eventfd doorbell (they
//! do not trust the server with one: [`ClientOptions::untrusted_server`]), the server waits on
//! their wake words with io_uring's `FUTEX_WAIT` ([`FutexWaits`](crate::futex_waits)), the
//! ring's descriptor in its epoll set, so that a client's futex wake makes the ring readable
//! and ends the server's `epoll_wait`. Each client has at most two waits (its submission
//! ring's word, and its completion ring's producer word for room), armed before a sleep and
//! cancelled when it goes; this file names them.
//!
//! [`ClientOptions::untrusted_server`]: crate::ClientOptions::untrusted_server

/// Which of a client's words a wait is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Word {
    /// The submission ring's wake word: the client's doorbell for requests.
    Requests = 0,
    /// The completion ring's producer word: the client's reaping, while its ring is full.
    Room = 1,
}

/// The key of the wait on `client`'s `which` word.
pub(crate) fn key(client: u64, which: Word) -> u64 {
    client << 1 | which as u64
}

/// The keys of all of `client`'s waits.
pub(crate) fn keys(client: u64) -> [u64; 2] {
    [key(client, Word::Requests), key(client, Word::Room)]
}

/// Waits a server with room for `max_clients` clients may have armed at once.
pub(crate) fn max_waits(max_clients: u32) -> u32 {
    max_clients.saturating_mul(2)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// A client of `server` with `options`, connected over a socket pair while the server
    /// turns.
    fn connect<V: crate::Service<u64, u64>>(
        server: &mut crate::Server<u64, u64, V>,
        options: &crate::ClientOptions,
    ) -> crate::Client<u64, u64> {
        let (server_end, client_end) = crate::socket_pair().unwrap();
        server.add_connection(server_end).unwrap();
        let options = options.clone();
        let t = std::thread::spawn(move || crate::Client::from_socket(client_end, &options));
        let start = Instant::now();
        while !t.is_finished() {
            assert!(start.elapsed() < Duration::from_secs(5), "connect hangs");
            server.run_for(Duration::from_millis(1)).unwrap();
        }
        t.join().unwrap().unwrap()
    }

    /// Turns `server` until it has `clients` clients (bounded).
    fn turn_until_clients<V: crate::Service<u64, u64>>(
        server: &mut crate::Server<u64, u64, V>,
        clients: u64,
    ) {
        let start = Instant::now();
        while server.stats().clients != clients {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{:?}",
                server.stats()
            );
            server.run_for(Duration::from_millis(1)).unwrap();
        }
    }

    /// A server that answers each request with the request plus one, or `None` (the test
    /// skips) where the kernel has no io_uring futex waits.
    fn adding_server(
    ) -> Option<crate::Server<u64, u64, impl crate::Service<u64, u64, Client: Send> + Send>> {
        match crate::futex_waits::FutexWaits::new(1) {
            Ok(_) => {}
            Err(e) if crate::futex_waits::tests::missing(&e) => {
                eprintln!("skipped: no io_uring futex waits here: {e}");
                return None;
            }
            Err(e) => panic!("io_uring: {e}"),
        }
        let config = crate::ServerConfig::new("kick/1");
        Some(crate::Server::from_fn(config, |ctx, x: u64| ctx.complete(x + 1)).unwrap())
    }

    /// The ring (and its descriptor) is there from the first client with a futex doorbell to
    /// the last, and not for other clients.
    #[test]
    fn the_ring_lives_from_the_first_futex_doorbell_client_to_the_last() {
        use crate::{ClientOptions, NotifyMode};
        let Some(mut server) = adding_server() else {
            return;
        };
        let trusting = ClientOptions::new("kick/1").mode(NotifyMode::Futex);
        let untrusting = trusting.clone().untrusted_server();
        let plain = connect(&mut server, &trusting);
        assert!(server.kick_waits.is_none());
        let a = connect(&mut server, &untrusting);
        let b = connect(&mut server, &untrusting);
        assert!(server.kick_waits.is_some());
        assert_eq!(server.futex_doorbells, 2);
        drop(a);
        turn_until_clients(&mut server, 2);
        assert!(server.kick_waits.is_some(), "gone with a client left");
        drop(b);
        turn_until_clients(&mut server, 1);
        assert!(server.kick_waits.is_none(), "kept with no client left");
        drop(plain);
        turn_until_clients(&mut server, 0);
    }

    /// A sleep whose futex waits cannot be armed (their submit fails) is cut to a millisecond,
    /// so the server looks at its clients again soon rather than sleeping with no wait on the
    /// word an untrusting client rings: that client's request is still answered.
    #[test]
    fn a_sleep_whose_waits_cannot_be_armed_looks_again_within_a_millisecond() {
        use crate::queue::{Completer, Submitter};
        use crate::{ClientOptions, NotifyMode};
        let Some(mut server) = adding_server() else {
            return;
        };
        let options = ClientOptions::new("kick/1")
            .mode(NotifyMode::Futex)
            .untrusted_server();
        let mut client = connect(&mut server, &options);
        // No wait left armed from the turns so far (it would take the doorbell), and every
        // submit of the waits' ring fails from here on.
        let waits = server.kick_waits.as_mut().expect("the waits' ring");
        waits.cancel(&super::keys(client.id())).unwrap();
        let start = Instant::now();
        while waits.pending() > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "a wait stays armed"
            );
            std::thread::sleep(Duration::from_millis(1));
            waits.reap().unwrap();
        }
        waits.fail_submits = u32::MAX;
        let serving = std::thread::spawn(move || {
            server.run_for(Duration::from_secs(3)).unwrap();
            server
        });
        // The server is asleep by now (in epoll, its waits not armed).
        std::thread::sleep(Duration::from_millis(50));
        client.push(41).unwrap();
        client.submit().unwrap();
        let asked = Instant::now();
        client.wait(Some(Duration::from_secs(2))).unwrap();
        let mut answers = Vec::new();
        client.reap_into(&mut answers, 1).unwrap();
        assert_eq!(answers, [42]);
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "answered after {:?}: the sleep was not cut short",
            asked.elapsed()
        );
        let server = serving.join().unwrap();
        // Cut short, the server slept every millisecond or so of its run (uncut, a sleep
        // would have lasted to the run's end): this also holds if the request came before the
        // server first slept, when the answer alone proves nothing.
        assert!(
            server.stats().sleeps > 100,
            "{} sleeps in 3 s: the sleeps were not cut short",
            server.stats().sleeps
        );
    }
}
