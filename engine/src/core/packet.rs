//! The packet policy: a packet descriptor (TUN/TAP, a packet-mode pipe) takes one packet per
//! `write(2)`, so every queued buffer is its own op — never merged, never split — and several
//! may be in flight at once. The queue is the datagram queue with GSO off (`Queue::Packet`);
//! what each result means is decided here:
//!
//! - all of it written: the packet is sent;
//! - part of it (a short write): the packet fails alone with [`Status::ShortWrite`]; the rest
//!   is never written after it (that would be a second, malformed packet);
//! - `EAGAIN`/`EINTR`: the packet goes again (after EAGAIN, once the descriptor is writable);
//! - the device is gone ([`Status::is_fd_gone`]: `EBADFD`, `EBADF`, `ENODEV`, `ENXIO`): the
//!   packet fails and the descriptor is poisoned, as a stream is by a fatal error: queued
//!   packets fail with the same error, later sends are refused with it;
//! - any other errno (`EIO` while a TUN interface is down, `EINVAL` for a malformed packet,
//!   `EMSGSIZE`, `ENOBUFS`, …): the packet fails alone; the descriptor stays usable.
//!
//! [`Status::ShortWrite`]: crate::Status::ShortWrite

use super::class::is_retry;
use super::dgram::State;
use super::{Clock, Core, Queue};
use crate::error::{Error, Status};

impl Core {
    /// Applies a packet op's result; returns true when the descriptor must wait for
    /// writability.
    pub(super) fn complete_packet(
        &mut self,
        idx: u32,
        group: u32,
        bytes: usize,
        res: i32,
        clock: &mut Clock<'_>,
    ) -> bool {
        let id = self.id_of(idx);
        let s = self.socks[idx as usize]
            .sock
            .as_mut()
            .expect("complete on a live socket");
        let Queue::Packet(q) = &mut s.queue else {
            return false;
        };
        let seqs = q.take_group(group);
        let mut done = std::mem::take(&mut self.scratch);
        let mut again = false;
        let mut fatal = None;
        let failed = match usize::try_from(res) {
            Ok(n) if n == bytes => {
                let total = q.mark(&seqs, State::Sent, &mut done);
                self.ended_ok(idx, (1, total), bytes, &done, clock);
                None
            }
            Ok(n) if n < bytes => {
                self.stats.short_sends += 1;
                Some(Error::short_write(id))
            }
            // More than it was given: a broken kernel report; the packet's fate is unknown.
            Ok(_) => Some(Error::socket(libc::EIO, id, None)),
            Err(_) => {
                // `wrapping_neg`: a corrupt `i32::MIN` result must not panic (it maps to
                // `Other`).
                let errno = res.wrapping_neg();
                if is_retry(errno) {
                    q.requeue(&seqs, false);
                    self.stats.retries += 1;
                    again = errno == libc::EAGAIN;
                    None
                } else {
                    if Status::is_fd_gone(errno) {
                        fatal = Some(errno);
                    }
                    Some(Error::socket(errno, id, None))
                }
            }
        };
        done.clear();
        if let Some(Queue::Packet(q)) = self.socks[idx as usize].sock.as_mut().map(|s| &mut s.queue)
        {
            if failed.is_some() {
                q.mark(&seqs, State::Failed, &mut done);
            }
            q.pop_terminal();
            q.recycle(seqs);
        }
        if let Some(err) = &failed {
            let now_ns = clock.get();
            for &(len, t) in &done {
                self.ended_failed(idx, len, t, now_ns, err);
            }
        }
        done.clear();
        self.scratch = done;
        if let Some(errno) = fatal {
            self.poison(idx, errno, clock.get());
        }
        again
    }
}
