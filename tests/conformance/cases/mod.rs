//! The suite's scenarios, each generic over a [`Transport`](super::Transport).

mod order;
mod shutdown;
mod space;
mod waits;

pub(crate) use order::{back_pressure, batch_submit_and_reap, ordering, push_slice_partial};
pub(crate) use shutdown::clean_shutdown;
pub(crate) use space::wait_space;
pub(crate) use waits::{timeouts, wake_ups};
