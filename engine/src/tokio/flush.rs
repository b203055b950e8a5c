//! One flush of one sender handle: yield once so concurrent writes join the batch, submit
//! (the first flusher back in a round), then wait for the barrier.

use std::task::{ready, Context, Poll};

use super::driver::Sock;
use crate::Error;

/// The flush a sender handle has in progress, if any.
#[derive(Debug, Default)]
pub(crate) struct FlushState {
    state: Option<Flush>,
}

#[derive(Debug)]
struct Flush {
    /// Wait for every write up to this number.
    target: u64,
    /// The round this flush yielded in, until it comes back.
    round: Option<u64>,
}

impl FlushState {
    /// Ready when every write accepted on `sock` before the first call is terminal, or with
    /// the stream's error.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, sock: &Sock) -> Poll<Result<(), Error>> {
        let shared = &sock.shared;
        let flush = match &mut self.state {
            Some(f) => f,
            None => {
                if let Some(e) = &*sock.error.borrow() {
                    return Poll::Ready(Err(e.clone()));
                }
                if !sock.unflushed() {
                    return Poll::Ready(Ok(()));
                }
                // Yield once: the tasks that are ready now run before this one comes back,
                // and their writes join this submission.
                self.state = Some(Flush {
                    target: sock.accepted.get(),
                    round: Some(shared.round.get()),
                });
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        };
        if let Some(r) = flush.round.take() {
            // The first flusher back in a round submits for all of them.
            if shared.round.get() == r {
                shared.round.set(r.wrapping_add(1));
                if let Err(e) = shared.submit() {
                    self.state = None;
                    return Poll::Ready(Err(e));
                }
            }
        }
        let target = flush.target;
        let r = ready!(shared.poll_barrier(cx, sock, target));
        self.state = None;
        Poll::Ready(r)
    }
}
