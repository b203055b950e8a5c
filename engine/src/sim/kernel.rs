//! A simulated kernel as a [`Driver`]: the engine's real orchestration and core run over it.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use crate::core::{Core, Event, Planned, Token};
use crate::error::Error;
use crate::sys::{Driver, Tally, Wait};

/// The simulated kernel (a stub to be fleshed out).
#[derive(Debug)]
pub struct SimKernel {
    now_ns: u64,
    fd: OwnedFd,
    tally: Tally,
}

impl SimKernel {
    /// A kernel at time 1 ns.
    ///
    /// # Panics
    /// If `/dev/null` cannot be opened (the placeholder descriptor).
    pub fn new() -> SimKernel {
        SimKernel {
            now_ns: 1,
            fd: std::fs::File::open("/dev/null").expect("/dev/null").into(),
            tally: Tally::default(),
        }
    }
}

impl Default for SimKernel {
    fn default() -> Self {
        SimKernel::new()
    }
}

impl Driver for SimKernel {
    fn register(&mut self, _sock: u32, _fd: RawFd, _stream: bool) -> Result<(), Error> {
        Ok(())
    }
    fn deregister(&mut self, _sock: u32, _fd: RawFd) {}
    fn completes_inline(&self) -> bool {
        true
    }
    fn issue(&mut self, _p: &Core, ops: &[Planned], out: &mut Vec<Event>) -> Result<(), Error> {
        for p in ops {
            let bytes = match p.shape {
                crate::core::OpShape::Stream { bytes, .. }
                | crate::core::OpShape::Dgram { bytes, .. } => bytes,
            };
            out.push(Event::Done {
                token: p.token,
                res: i32::try_from(bytes).unwrap_or(i32::MAX),
            });
        }
        Ok(())
    }
    fn enter(&mut self, _wait: Wait, _out: &mut Vec<Event>) -> Result<(), Error> {
        Ok(())
    }
    fn watch_writable(&mut self, sock: u32, _fd: RawFd, out: &mut Vec<Event>) -> Result<(), Error> {
        out.push(Event::Writable { sock });
        Ok(())
    }
    fn cancel(&mut self, _tokens: &[Token], _out: &mut Vec<Event>) -> Result<(), Error> {
        Ok(())
    }
    fn read_errqueue(&mut self, _fd: RawFd, _max: usize, _out: &mut Vec<(Option<SocketAddr>, i32)>) {}
    fn shutdown_write(&mut self, _fd: RawFd) -> Result<(), Error> {
        Ok(())
    }
    fn leak(&mut self) {}
    fn now_ns(&self) -> u64 {
        self.now_ns
    }
    fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
