//! Running a server on its own thread, and stopping it.

use std::sync::Arc;

use bytemuck::Pod;
use nix::sys::eventfd::EventFd;

use super::{os, Server, Service};
use crate::Error;

/// Stops a running server from any thread.
#[derive(Debug, Clone)]
pub struct Stopper(pub(crate) Arc<EventFd>);

impl Stopper {
    /// Asks the server to stop: it finishes its turn, says goodbye to its clients and returns.
    pub fn stop(&self) -> Result<(), Error> {
        self.0.write(1).map_err(os("write to the stop eventfd"))?;
        Ok(())
    }
}

type ServerJoin<S, C, V> = std::thread::JoinHandle<Result<Server<S, C, V>, Error>>;

/// A server running on its own thread ([`Server::spawn`]).
#[derive(Debug)]
pub struct ServerThread<S: Pod, C: Pod, V: Service<S, C>> {
    pub(crate) stopper: Stopper,
    pub(crate) thread: Option<ServerJoin<S, C, V>>,
}

impl<S: Pod, C: Pod, V: Service<S, C>> ServerThread<S, C, V> {
    /// Something that stops the server.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Stops the server and waits for its thread; returns the server (for its stats).
    pub fn stop(mut self) -> Result<Server<S, C, V>, Error> {
        self.stopper.stop()?;
        self.join()
    }

    fn join(&mut self) -> Result<Server<S, C, V>, Error> {
        let thread = self.thread.take().expect("joined once");
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<S: Pod, C: Pod, V: Service<S, C>> Drop for ServerThread<S, C, V> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stopper.stop();
            let _ = thread.join();
        }
    }
}
