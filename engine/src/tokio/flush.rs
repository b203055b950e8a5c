//! One flush of one sender handle: yield once so concurrent writes join the batch, submit
//! (the first flusher back in a round), then wait for the barrier.

use std::rc::Rc;
use std::task::{ready, Context, Poll};

use super::driver::{Shared, Sock};
use crate::Error;

/// The flush a sender handle has in progress, if any. Every sender handle (clones included)
/// has one, and while it lives it counts in [`Shared::handles`].
pub(crate) struct FlushState {
    state: Option<Flush>,
    shared: Rc<Shared>,
}

impl std::fmt::Debug for FlushState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushState")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Drop for FlushState {
    fn drop(&mut self) {
        self.shared.handles.set(self.shared.handles.get() - 1);
    }
}

#[derive(Debug)]
enum Flush {
    /// Yielded in this round; when it comes back it hands the socket's writes over (unless
    /// another flusher already has) and submits if no flusher of the round has yet.
    Yielded { round: u64, target: u64 },
    /// Waits for every write up to this position.
    Waiting { target: u64 },
}

impl FlushState {
    /// The flush state of a new sender handle on `shared`'s engine.
    pub(crate) fn new(shared: &Rc<Shared>) -> FlushState {
        shared.handles.set(shared.handles.get() + 1);
        FlushState {
            state: None,
            shared: Rc::clone(shared),
        }
    }

    /// Ready when every write made on `sock` before the first call is terminal, or with
    /// the stream's error.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, sock: &Sock) -> Poll<Result<(), Error>> {
        let shared = &sock.shared;
        loop {
            match self.state {
                None => {
                    if let Some(e) = &*sock.error.borrow() {
                        return Poll::Ready(Err(e.clone()));
                    }
                    if !sock.unflushed() {
                        return Poll::Ready(Ok(()));
                    }
                    self.state = Some(Flush::Yielded {
                        round: shared.round.get(),
                        target: sock.written.get(),
                    });
                    // Yield once: the tasks that are ready now run before this one comes back,
                    // and their writes join this submission. With no other sender handle on
                    // the engine no other task can add to it: submit now (a yield would cost a
                    // turn of the runtime, an `epoll_wait` when the flush runs in `block_on`).
                    if shared.handles.get() > 1 {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Some(Flush::Yielded { round, target }) => {
                    if sock.handed.get() < target {
                        sock.seal_out();
                        if let Err(e) = ready!(shared.poll_drain(Some(cx), sock)) {
                            self.state = None;
                            return Poll::Ready(Err(e));
                        }
                    }
                    // The first flusher back in a round submits for all of them.
                    if shared.round.get() == round {
                        shared.round.set(round.wrapping_add(1));
                        if let Err(e) = shared.submit() {
                            self.state = None;
                            return Poll::Ready(Err(e));
                        }
                    }
                    self.state = Some(Flush::Waiting { target });
                }
                Some(Flush::Waiting { target }) => {
                    let r = ready!(shared.poll_barrier(cx, sock, target));
                    self.state = None;
                    return Poll::Ready(r);
                }
            }
        }
    }
}
