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
#[cfg(any(test, fuzzing, feature = "sim"))]
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

/// Limits for [`cut_stream_staged`].
#[derive(Debug, Clone, Copy)]
pub struct StageLimits {
    /// iovecs per op (clamped to `1..=IOV_MAX`).
    pub max_iovecs: usize,
    /// Bytes per op (clamped to `1..=MAX_RW_COUNT`).
    pub max_bytes: usize,
    /// Entries whose (remaining) length is at most this are copied into the staging run; 0: none.
    pub stage_below: usize,
    /// Most bytes staged per op.
    pub stage_max: usize,
}

/// One entry of a staged stream cut: queue index, bytes taken, and whether they are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagedItem {
    /// Index in the queue (0 is the front).
    pub idx: usize,
    /// Bytes of it the op carries.
    pub len: usize,
    /// Copied into the staging run (consecutive staged items share one iovec).
    pub staged: bool,
}

/// Like [`cut_stream`], but small entries are copied into a contiguous staging run, so that a
/// run of consecutive small entries costs one iovec: the op may then cover more than `max_iovecs`
/// entries while its iovec count stays within the limit. `emit` receives one item per entry
/// covered, in order, as it is decided.
pub fn cut_stream_staged(
    lens: impl IntoIterator<Item = usize>,
    limits: &StageLimits,
    mut emit: impl FnMut(StagedItem),
) -> Option<StreamCut> {
    let max_iovecs = limits.max_iovecs.clamp(1, IOV_MAX);
    let max_bytes = limits.max_bytes.clamp(1, MAX_RW_COUNT);
    let (mut bytes, mut iovecs, mut staged_bytes, mut entries) = (0usize, 0usize, 0usize, 0usize);
    let mut prev_staged = false;
    for (idx, len) in lens.into_iter().enumerate() {
        if bytes == max_bytes {
            break;
        }
        let take = len.min(max_bytes - bytes);
        let staged = take <= limits.stage_below && staged_bytes + take <= limits.stage_max;
        let new_iovec = !(staged && prev_staged);
        if new_iovec && iovecs == max_iovecs {
            break;
        }
        iovecs += usize::from(new_iovec);
        if staged {
            staged_bytes += take;
        }
        prev_staged = staged;
        bytes += take;
        entries += 1;
        emit(StagedItem {
            idx,
            len: take,
            staged,
        });
    }
    (entries > 0).then_some(StreamCut { entries, bytes })
}

/// How one datagram op is cut: `count` datagrams; `segment_size` is `Some` only for a GSO send of
/// at least two segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DgramCut {
    /// Datagrams in the op.
    pub count: usize,
    /// The `UDP_SEGMENT` value for a GSO group; `None` for a single datagram.
    pub segment_size: Option<u16>,
    /// Payload bytes in the op.
    pub bytes: usize,
}

/// Groups consecutive datagrams for one send. `lens` yields the lengths of the datagrams that are
/// *eligible* to join the first one (queued, same destination, not marked solo), in order, starting
/// with the first datagram itself; the caller stops the iterator at the first ineligible one.
///
/// Rules (FAILURES.md item 15): every segment has the first one's size except the last, which may be
/// shorter; at most `max_segments` segments and `max_bytes` payload bytes; no GSO for a single
/// datagram or for zero-length datagrams. With `gso == false` every op is one datagram.
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
    let max_segments = max_segments.min(GSO_MAX_SEGMENTS);
    let max_bytes = max_bytes.min(UDP_MAX_PAYLOAD);
    if !gso || first == 0 || first > max_bytes || max_segments < 2 {
        return Some(single);
    }
    let Ok(seg) = u16::try_from(first) else {
        return Some(single);
    };
    let mut cut = DgramCut {
        count: 1,
        segment_size: Some(seg),
        bytes: first,
    };
    for len in it {
        if cut.count == max_segments || len == 0 || len > first || cut.bytes + len > max_bytes {
            break;
        }
        cut.count += 1;
        cut.bytes += len;
        if len < first {
            break;
        }
    }
    Some(if cut.count >= 2 { cut } else { single })
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
    fn staged_cut_groups_small_entries_into_runs() {
        let limits = StageLimits {
            max_iovecs: 3,
            max_bytes: 1 << 20,
            stage_below: 100,
            stage_max: 1000,
        };
        let mut items = Vec::new();
        // [10 20] [500] [30 40] | 50 would open a 4th iovec.
        let cut =
            cut_stream_staged([10, 20, 500, 30, 40, 600, 50], &limits, |i| items.push(i)).unwrap();
        assert_eq!(
            cut,
            StreamCut {
                entries: 5,
                bytes: 600
            }
        );
        let staged: Vec<bool> = items.iter().map(|i| i.staged).collect();
        assert_eq!(staged, [true, true, false, true, true]);
        // The staging budget ends a run: the third small entry is sent as its own iovec.
        let limits = StageLimits {
            max_iovecs: 8,
            max_bytes: 1 << 20,
            stage_below: 100,
            stage_max: 150,
        };
        items.clear();
        let cut = cut_stream_staged([60, 60, 60, 60], &limits, |i| items.push(i)).unwrap();
        assert_eq!(cut.entries, 4);
        assert_eq!(items.iter().filter(|i| i.staged).count(), 2);
        // Staging off: the same cut as `cut_stream`.
        let off = StageLimits {
            stage_below: 0,
            stage_max: 0,
            ..limits
        };
        let lens = [5, 6, 7, 8, 9, 10, 11, 12, 13];
        assert_eq!(
            cut_stream_staged(lens, &off, |_| {}),
            cut_stream(lens, 8, 1 << 20)
        );
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
