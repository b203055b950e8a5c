//! Batch planning: pure functions that decide how queued buffers are grouped into kernel operations.
//!
//! They make no system calls and hold no state, so unit tests and fuzz targets call them directly.

/// `IOV_MAX` / `UIO_MAXIOV` on Linux: the most iovecs one `sendmsg` accepts (include/uapi/linux/uio.h).
pub const IOV_MAX: usize = 1024;

/// `UDP_MAX_SEGMENTS` as of Linux 4.18 (include/linux/udp.h, raised to 128 only in 6.x): we keep 64 so
/// groups are valid on every kernel that has UDP GSO.
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Largest UDP payload over IPv4: 65535 − 20 (IPv4 header) − 8 (UDP header).
pub const UDP_MAX_PAYLOAD: usize = 65_507;

/// `MAX_RW_COUNT` (include/linux/fs.h: `INT_MAX & PAGE_MASK`): the kernel silently truncates larger
/// requests, so one op never asks for more.
pub const MAX_RW_COUNT: usize = (i32::MAX as usize) & !4095;

/// How one stream op is cut from a queue: how many entries it covers and how many bytes it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCut {
    /// Queue entries the op covers (the last one may be covered only partly, see `bytes`).
    pub entries: usize,
    /// Bytes the op asks the kernel to send.
    pub bytes: usize,
}

/// Cuts the next stream op from the remaining lengths of the queued entries, in order (the first
/// already reduced by the bytes a short send took).
///
/// At most `max_iovecs` entries and `max_bytes` bytes (the last entry is truncated to fit; an entry
/// larger than `max_bytes` is sent in several ops). Returns `None` when `lens` is empty.
pub fn cut_stream(
    lens: impl IntoIterator<Item = usize>,
    max_iovecs: usize,
    max_bytes: usize,
) -> Option<StreamCut> {
    let max_iovecs = max_iovecs.clamp(1, IOV_MAX);
    let max_bytes = max_bytes.clamp(1, MAX_RW_COUNT);
    let mut cut = StreamCut {
        entries: 0,
        bytes: 0,
    };
    for len in lens.into_iter().take(max_iovecs) {
        if cut.bytes == max_bytes {
            break;
        }
        cut.entries += 1;
        cut.bytes += len.min(max_bytes - cut.bytes);
    }
    (cut.entries > 0).then_some(cut)
}

/// How one datagram op is cut: `count` datagrams; `segment_size` is `Some` only for a GSO send of
/// at least two segments.
#[cfg(any(test, fuzzing, feature = "sim"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DgramCut {
    /// Datagrams in the op.
    pub count: usize,
    /// The `UDP_SEGMENT` value for a GSO group; `None` for a single datagram.
    pub segment_size: Option<u16>,
    /// Payload bytes in the op.
    pub bytes: usize,
}

/// Whether a datagram of `len` bytes may start a GSO group (a group of one is sent without the
/// cmsg): not empty, within `max_bytes` (≤ [`UDP_MAX_PAYLOAD`]), and groups allowed at all.
pub fn gso_can_lead(len: usize, max_segments: usize, max_bytes: usize) -> bool {
    len > 0
        && len <= max_bytes.min(UDP_MAX_PAYLOAD)
        && max_segments.min(GSO_MAX_SEGMENTS) >= 2
        && u16::try_from(len).is_ok()
}

/// Whether a datagram may join a GSO group, and whether the group is then complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// It joins; more may follow.
    Yes,
    /// It joins as the last segment (shorter than the others, or the group is full).
    Last,
    /// It does not fit: it starts another send.
    No,
}

/// The GSO shape rules (FAILURES.md item 15) for adding a datagram of `len` bytes to a group of
/// `count` segments of `seg` bytes (the last may be shorter), `bytes` in all: every segment has
/// the first one's size except the last, which may be shorter; at most `max_segments` segments
/// (≤ [`GSO_MAX_SEGMENTS`]) and `max_bytes` payload bytes (≤ [`UDP_MAX_PAYLOAD`]); no empty
/// segment.
pub fn gso_join(
    seg: usize,
    count: usize,
    bytes: usize,
    len: usize,
    max_segments: usize,
    max_bytes: usize,
) -> Join {
    let max_segments = max_segments.min(GSO_MAX_SEGMENTS);
    let max_bytes = max_bytes.min(UDP_MAX_PAYLOAD);
    if count >= max_segments || len == 0 || len > seg || bytes + len > max_bytes {
        Join::No
    } else if len < seg || count + 1 == max_segments {
        Join::Last
    } else {
        Join::Yes
    }
}

/// Groups consecutive datagrams for one send. `lens` yields the lengths of the datagrams that are
/// *eligible* to join the first one (queued, same destination, not marked solo), in order, starting
/// with the first datagram itself; the caller stops the iterator at the first ineligible one.
///
/// Rules: [`gso_join`]; no GSO for a single datagram or for zero-length datagrams. With
/// `gso == false` every op is one datagram. (The engine groups by destination across a whole
/// pass with the same rules; this is the rule set on one run, which the fuzz targets check.)
#[cfg(any(test, fuzzing, feature = "sim"))]
pub fn cut_dgram(
    lens: impl IntoIterator<Item = usize>,
    gso: bool,
    max_segments: usize,
    max_bytes: usize,
) -> Option<DgramCut> {
    let mut it = lens.into_iter();
    let first = it.next()?;
    let single = DgramCut {
        count: 1,
        segment_size: None,
        bytes: first,
    };
    if !gso || !gso_can_lead(first, max_segments, max_bytes) {
        return Some(single);
    }
    let mut cut = single;
    for len in it {
        match gso_join(first, cut.count, cut.bytes, len, max_segments, max_bytes) {
            Join::No => break,
            j => {
                cut.count += 1;
                cut.bytes += len;
                if j == Join::Last {
                    break;
                }
            }
        }
    }
    if cut.count < 2 {
        return Some(single);
    }
    cut.segment_size = u16::try_from(first).ok();
    Some(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_cut_respects_iov_max_and_bytes() {
        assert_eq!(cut_stream([], 1024, 1 << 20), None);
        let c = cut_stream(std::iter::repeat_n(64, 3000), 1024, 1 << 20).unwrap();
        assert_eq!(
            c,
            StreamCut {
                entries: 1024,
                bytes: 1024 * 64
            }
        );
        let c = cut_stream([100, 100, 100], 1024, 250).unwrap();
        assert_eq!(
            c,
            StreamCut {
                entries: 3,
                bytes: 250
            }
        );
        let c = cut_stream([1000, 5], 1024, 250).unwrap();
        assert_eq!(
            c,
            StreamCut {
                entries: 1,
                bytes: 250
            }
        );
        let c = cut_stream([0, 0, 7], 2, 250).unwrap();
        assert_eq!(
            c,
            StreamCut {
                entries: 2,
                bytes: 0
            }
        );
        // a caller asking for more than IOV_MAX is clamped
        let c = cut_stream(std::iter::repeat_n(1, 5000), 99_999, 1 << 20).unwrap();
        assert_eq!(c.entries, IOV_MAX);
    }

    #[test]
    fn gso_boundaries() {
        // single datagram: never GSO
        assert_eq!(
            cut_dgram([1200], true, 64, UDP_MAX_PAYLOAD)
                .unwrap()
                .segment_size,
            None
        );
        // equal sizes group, last shorter ends the group
        let c = cut_dgram([1200, 1200, 1000, 1200], true, 64, UDP_MAX_PAYLOAD).unwrap();
        assert_eq!((c.count, c.segment_size, c.bytes), (3, Some(1200), 3400));
        // a larger one after the first cannot join
        let c = cut_dgram([100, 200], true, 64, UDP_MAX_PAYLOAD).unwrap();
        assert_eq!((c.count, c.segment_size), (1, None));
        // 64 segments max
        let c = cut_dgram(std::iter::repeat_n(10, 65), true, 64, UDP_MAX_PAYLOAD).unwrap();
        assert_eq!(c.count, 64);
        // byte cap: 1200 * 54 = 64800 <= 65507 < 1200 * 55
        let c = cut_dgram(std::iter::repeat_n(1200, 64), true, 64, UDP_MAX_PAYLOAD).unwrap();
        assert_eq!(c.count, 54);
        // GSO off
        let c = cut_dgram([10, 10, 10], false, 64, UDP_MAX_PAYLOAD).unwrap();
        assert_eq!(c.count, 1);
        // zero-length and oversize datagrams go alone
        assert_eq!(
            cut_dgram([0, 0], true, 64, UDP_MAX_PAYLOAD).unwrap().count,
            1
        );
        assert_eq!(
            cut_dgram([70_000, 70_000], true, 64, UDP_MAX_PAYLOAD)
                .unwrap()
                .count,
            1
        );
        // 1-byte segments
        let c = cut_dgram(std::iter::repeat_n(1, 100), true, 64, UDP_MAX_PAYLOAD).unwrap();
        assert_eq!((c.count, c.segment_size), (64, Some(1)));
    }
}
