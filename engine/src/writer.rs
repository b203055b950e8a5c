//! [`StreamWriter`]: borrowed writes on one TCP stream, copied into a staging chunk as they are
//! made — the engine's answer to a `BufWriter`.

use std::io;

use bytes::{Bytes, BytesMut};

use crate::core::Room;
use crate::{Engine, Error, FlushReport, SocketId};

/// Borrowed writes on one TCP stream ([`Engine::writer`]), copied into a staging chunk as they
/// are made, as a `BufWriter` copies them: no `Bytes` per message, and the socket lookup and
/// every queue-limit check happen once, when the writer is opened (and after each of its
/// flushes), not per write. Each write is still its own write: it ends sent or failed, counted
/// in the next [`FlushReport`], exactly as with [`Engine::send`]; queue limits count a write
/// from the moment it is accepted.
///
/// A full chunk (`EngineBuilder::coalesce_max_bytes`, 64 KiB by default) is handed to the
/// engine's queue at once; the last one when the writer is flushed, submitted or dropped — so,
/// as with a `BufWriter`, writes in a writer that is leaked (`mem::forget`) are lost (the
/// engine never saw them). Write latency is not sampled for these writes (flush latency is).
///
/// Use it for many small messages on one stream (a log shipper, a tunnel's control channel);
/// hand big buffers you already own to [`Engine::send`], which takes them without a copy.
///
/// `std::io::Write` is implemented: `write` takes the whole slice or nothing (a queue limit is
/// [`io::ErrorKind::WouldBlock`]), `flush` is the stream's flush barrier.
#[derive(Debug)]
pub struct StreamWriter<'a> {
    engine: &'a mut Engine,
    id: SocketId,
    /// What the queue limits allowed when the current chunk was started.
    room: Room,
    /// The writes not yet handed to the engine, and where each ends.
    chunk: BytesMut,
    ends: Vec<u32>,
    /// The chunk may grow to this length: its capacity, or less where a byte limit is nearer.
    fill_to: usize,
    /// The chunk may hold this many writes (the per-socket write limit).
    max_writes: usize,
    chunk_bytes: usize,
}

impl Engine {
    /// Opens `id` (a TCP stream) for borrowed writes: see [`StreamWriter`].
    ///
    /// # Errors
    /// [`Error::UnknownSocket`], [`Error::WrongSocketKind`] (not a stream), or the stream's
    /// fatal error if it is poisoned.
    pub fn writer(&mut self, id: SocketId) -> Result<StreamWriter<'_>, Error> {
        let room = self.core.open_stream(id)?;
        // A chunk holds at most `coalesce_max_bytes` ≤ u32::MAX bytes (`Config::clamped`), so
        // the u32 end offsets cannot saturate.
        let chunk_bytes = self.core.cfg.coalesce_max_bytes;
        let mut w = StreamWriter {
            engine: self,
            id,
            room,
            chunk: BytesMut::new(),
            ends: Vec::new(),
            fill_to: 0,
            max_writes: 0,
            chunk_bytes,
        };
        w.take_stage();
        Ok(w)
    }
}

impl StreamWriter<'_> {
    /// Queues a copy of `data` as one write and returns at once.
    ///
    /// # Errors
    /// Nothing is queued: [`Error::Backpressure`] at a queue limit (flush, then write again),
    /// [`Error::BufferTooLarge`], or the stream's fatal error.
    #[inline(always)]
    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        // One test per write: the chunk has room for it under its capacity and every byte
        // limit, and for one more write under the write limit.
        let end = self.chunk.len() + data.len();
        if (end > self.fill_to) | (self.ends.len() >= self.max_writes) {
            return self.write_slow(data);
        }
        self.chunk.extend_from_slice(data);
        // `fill_to` ≤ `coalesce_max_bytes` ≤ u32::MAX (`Config::clamped`).
        #[allow(clippy::cast_possible_truncation)]
        self.ends.push(end as u32);
        Ok(())
    }

    /// The flush barrier on this stream ([`Engine::flush`]): every earlier write is terminal.
    ///
    /// # Errors
    /// As [`Engine::flush`].
    pub fn flush(&mut self) -> Result<FlushReport, Error> {
        self.give_back();
        let r = self.engine.flush(self.id);
        self.reopen();
        r
    }

    /// Hands every write made so far to the kernel without waiting ([`Engine::submit`]).
    ///
    /// # Errors
    /// As [`Engine::submit`].
    pub fn submit(&mut self) -> Result<(), Error> {
        self.give_back();
        let r = self.engine.submit();
        self.reopen();
        r
    }

    /// The stream this writer queues on.
    pub fn id(&self) -> SocketId {
        self.id
    }

    /// Takes the stream's staging memory to fill, and a spare end-offset vector; writes that
    /// fit it (and the room) take the one-test path from the first.
    fn take_stage(&mut self) {
        (self.chunk, self.ends) = self.engine.core.take_stage(self.id.index);
        self.fill_to = self.chunk.capacity().min(self.room.bytes);
        self.max_writes = self.room.writes;
    }

    /// Gives the staging memory back to the stream with the writes it holds (the writes are
    /// the engine's from here on), staged where they lie as `send` stages small writes: no
    /// chunk is frozen, and a flush that finds them alone sends them from there.
    fn give_back(&mut self) {
        let stage = std::mem::take(&mut self.chunk);
        let ends = std::mem::take(&mut self.ends);
        self.engine.core.restage(self.id.index, stage, ends);
        self.fill_to = 0;
        self.max_writes = 0;
    }

    /// Hands the chunk to the engine's queue, frozen (the writes are the engine's from here
    /// on); the writer fills the rest of its memory.
    fn hand_off(&mut self) {
        if self.ends.is_empty() {
            return;
        }
        self.room.bytes -= self.chunk.len();
        self.room.writes -= self.ends.len();
        let data = self.chunk.split().freeze();
        let ends = std::mem::take(&mut self.ends);
        self.ends = self.engine.core.push_chunk(self.id.index, data, ends);
        self.fill_to = 0;
        self.max_writes = 0;
    }

    /// The rare path of [`StreamWriter::write`]: the chunk is full (a new one), the write is
    /// bigger than a chunk (a buffer of its own), or a queue limit refuses it.
    #[cold]
    #[inline(never)]
    fn write_slow(&mut self, data: &[u8]) -> Result<(), Error> {
        self.hand_off();
        let len = data.len();
        if (len > self.room.bytes) | (self.room.writes == 0) {
            return Err(self.refused(len));
        }
        if len > self.chunk_bytes {
            self.room.bytes -= len;
            self.room.writes -= 1;
            // One write of its own (no end offsets: the writer's emptied vector goes along and a
            // spare comes back, instead of a spare being taken and dropped).
            let ends = std::mem::take(&mut self.ends);
            self.ends =
                self.engine
                    .core
                    .push_chunk(self.id.index, Bytes::copy_from_slice(data), ends);
            return Ok(());
        }
        if self.chunk.capacity() < len {
            self.chunk = BytesMut::with_capacity(self.chunk_bytes);
        }
        self.fill_to = self.chunk.capacity().min(self.room.bytes);
        self.max_writes = self.room.writes;
        self.chunk.extend_from_slice(data);
        // `len` ≤ `fill_to` ≤ `coalesce_max_bytes` ≤ u32::MAX (`Config::clamped`).
        #[allow(clippy::cast_possible_truncation)]
        self.ends.push(len as u32);
        Ok(())
    }

    /// Why there is no room for `len` more bytes (the chunk handed over first, so the
    /// engine's counts are complete).
    #[cold]
    #[inline(never)]
    fn refused(&mut self, len: usize) -> Error {
        self.hand_off();
        self.engine.core.refuse_copy(self.id, len)
    }

    /// After a flush or submit: completions may have freed room, or poisoned the stream (then
    /// no room: the next write reports the error); the staging memory is taken again.
    fn reopen(&mut self) {
        self.room = self.engine.core.open_stream(self.id).unwrap_or_default();
        self.take_stage();
    }
}

impl Drop for StreamWriter<'_> {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl io::Write for StreamWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        StreamWriter::write(self, buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Ok(StreamWriter::write(self, buf)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        StreamWriter::flush(self)?;
        Ok(())
    }
}
