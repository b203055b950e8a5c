//! `--offload`: the TUN device with `IFF_VNET_HDR` and `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 |
//! TUN_F_TSO6)`, as wireguard-go does (tun/offload_linux.go). The kernel then hands out TCP
//! super-packets of up to 64 KiB behind a `virtio_net_hdr`, one `read` instead of one per
//! segment, and leaves checksums to us (`VIRTIO_NET_HDR_F_NEEDS_CSUM`). Here they are cut back
//! into MTU-sized IP packets with complete checksums, so the peer (volley or not) receives plain
//! IP packets. On the way in, runs of consecutive segments of one TCP flow from the peer are
//! coalesced into one super-packet per write (`GSO_TCPV4/6` header, as Linux's GRO would build
//! it; each segment's checksum verified first); anything else is written alone behind an
//! all-zero header (no GSO, checksums verified by the kernel).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use bytes::{BufMut, Bytes, BytesMut};

/// `sizeof(struct virtio_net_hdr)` (linux/virtio_net.h): what TUN prepends with `IFF_VNET_HDR`
/// (the default `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

/// linux/virtio_net.h
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// linux/if_tun.h: `TUNSETOFFLOAD` flags.
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

/// Turns on checksum and TCP segmentation offload on a device opened with `IFF_VNET_HDR`.
///
/// # Errors
/// The ioctl's error.
pub fn enable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of flags), no memory.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A parsed `virtio_net_hdr` (little-endian fields, as TUN uses on little-endian hosts and with
/// `TUNSETVNETLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetHdr {
    flags: u8,
    gso_type: u8,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
}

impl VnetHdr {
    /// The header at the front of `b`.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let h = b.get(..VNET_HDR_LEN)?;
        let le = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        Some(VnetHdr {
            flags: h[0],
            gso_type: h[1],
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }
}

/// Why a packet from the device could not be turned into IP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitError {
    /// A GSO type we did not ask for, or headers that do not add up.
    Malformed,
    /// A segment (or an unsegmented packet) larger than the MTU.
    Oversize,
}

/// The Internet checksum's running sum (RFC 1071) over `b`, added to `sum`; big-endian 16-bit
/// words, a trailing odd byte padded with zero.
fn sum_bytes(mut sum: u64, b: &[u8]) -> u64 {
    let mut words = b.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        sum += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a running sum to 16 bits.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    u16::try_from(sum).unwrap_or(0xffff)
}

/// The IPv4 header checksum over `h` (its checksum field zeroed first).
fn ipv4_header_checksum(h: &mut [u8]) {
    h[10] = 0;
    h[11] = 0;
    let c = !fold(sum_bytes(0, h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The TCP checksum of `seg` (TCP header and payload, checksum field zeroed first) with the
/// pseudo-header of `ip` (the packet's IP header: v4 or v6 addresses).
fn tcp_checksum(ip: &[u8], v6: bool, seg: &mut [u8]) {
    seg[16] = 0;
    seg[17] = 0;
    let mut sum = if v6 {
        sum_bytes(0, &ip[8..40])
    } else {
        sum_bytes(0, &ip[12..20])
    };
    sum += 6; // protocol TCP
    sum += seg.len() as u64;
    sum = sum_bytes(sum, seg);
    let c = !fold(sum);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
}

/// Completes a `NEEDS_CSUM` checksum in place: the field at `start + offset` holds the
/// pseudo-header sum; the checksum covers everything from `start`.
fn complete_checksum(p: &mut [u8], start: usize, offset: usize) -> Result<(), SplitError> {
    let at = start + offset;
    if at + 2 > p.len() {
        return Err(SplitError::Malformed);
    }
    let c = !fold(sum_bytes(0, &p[start..]));
    // RFC 768: a computed UDP checksum of 0 is sent as all ones (harmless for TCP, where 0 and
    // 0xffff are equivalent).
    let c = if c == 0 { 0xffff } else { c };
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Turns one read from the device (`raw`: virtio header, then the packet) into MTU-sized IP
/// packets with complete checksums, each written into `out` and handed to `emit` as `Bytes`.
/// Returns how many packets it made.
///
/// # Errors
/// [`SplitError`]: nothing was emitted.
pub fn split(
    raw: &mut [u8],
    mtu: usize,
    out: &mut BytesMut,
    mut emit: impl FnMut(Bytes),
) -> Result<usize, SplitError> {
    let hdr = VnetHdr::parse(raw).ok_or(SplitError::Malformed)?;
    let pkt = &mut raw[VNET_HDR_LEN..];
    let gso = hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN;
    if gso == VIRTIO_NET_HDR_GSO_NONE {
        if pkt.len() > mtu {
            return Err(SplitError::Oversize);
        }
        if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            complete_checksum(
                pkt,
                usize::from(hdr.csum_start),
                usize::from(hdr.csum_offset),
            )?;
        }
        out.reserve(pkt.len());
        out.put_slice(pkt);
        emit(out.split().freeze());
        return Ok(1);
    }
    let v6 = match gso {
        VIRTIO_NET_HDR_GSO_TCPV4 => false,
        VIRTIO_NET_HDR_GSO_TCPV6 => true,
        _ => return Err(SplitError::Malformed),
    };
    // The TCP header starts where the checksum does; its own length says where data starts
    // (the header's hdr_len is only a hint, as wireguard-go notes).
    let tcp = usize::from(hdr.csum_start);
    let ip_ok = match (v6, pkt.first()) {
        (false, Some(b)) => b >> 4 == 4 && tcp >= 20,
        (true, Some(b)) => b >> 4 == 6 && tcp >= 40,
        _ => false,
    };
    if !ip_ok || pkt.len() < tcp + 20 {
        return Err(SplitError::Malformed);
    }
    let tcp_len = usize::from(pkt[tcp + 12] >> 4) * 4;
    let headers = tcp + tcp_len;
    let gso_size = usize::from(hdr.gso_size);
    if tcp_len < 20 || pkt.len() < headers || gso_size == 0 {
        return Err(SplitError::Malformed);
    }
    if headers + gso_size > mtu {
        return Err(SplitError::Oversize);
    }
    let payload = pkt.len() - headers;
    let segments = payload.div_ceil(gso_size).max(1);
    let seq = u32::from_be_bytes([pkt[tcp + 4], pkt[tcp + 5], pkt[tcp + 6], pkt[tcp + 7]]);
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let flags = pkt[tcp + 13];
    out.reserve(payload + segments * headers);
    for i in 0..segments {
        let from = headers + i * gso_size;
        let to = (from + gso_size).min(pkt.len());
        let start = out.len();
        out.put_slice(&pkt[..headers]);
        out.put_slice(&pkt[from..to]);
        let seg = &mut out[start..];
        let total = seg.len();
        let last = i + 1 == segments;
        if v6 {
            let plen = u16::try_from(total - 40).map_err(|_| SplitError::Malformed)?;
            seg[4..6].copy_from_slice(&plen.to_be_bytes());
        } else {
            let tlen = u16::try_from(total).map_err(|_| SplitError::Malformed)?;
            seg[2..4].copy_from_slice(&tlen.to_be_bytes());
            // One IP ID per segment, as the kernel's own TSO does.
            let sid = id.wrapping_add(u16::try_from(i).unwrap_or(u16::MAX));
            seg[4..6].copy_from_slice(&sid.to_be_bytes());
            ipv4_header_checksum(&mut seg[..tcp]);
        }
        let off = u32::try_from(i * gso_size).map_err(|_| SplitError::Malformed)?;
        seg[tcp + 4..tcp + 8].copy_from_slice(&seq.wrapping_add(off).to_be_bytes());
        let mut f = flags;
        if !last {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        seg[tcp + 13] = f;
        let (ip, rest) = seg.split_at_mut(tcp);
        tcp_checksum(ip, v6, rest);
        emit(out.split().freeze());
    }
    Ok(segments)
}

/// What coalescing needs to know about one TCP segment from the peer.
#[derive(Debug, Clone, Copy)]
struct Seg {
    v6: bool,
    /// IP header bytes (the TCP header starts here).
    ip_len: usize,
    /// IP + TCP header bytes (the payload starts here).
    headers: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

/// `p` as a segment that may join a coalesced run: IPv4 without options or fragmentation, or
/// IPv6 with TCP as the next header; flags ACK (and PSH) only; a payload; a correct checksum
/// (checked here because the coalesced packet is handed to the kernel as checksummed).
fn tcp_seg(p: &[u8]) -> Option<Seg> {
    let (v6, ip_len) = match p.first()? >> 4 {
        4 if p[0] == 0x45 && p.len() >= 40 && p[9] == 6 => {
            // MF clear and fragment offset zero.
            if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
                return None;
            }
            (false, 20)
        }
        6 if p.len() >= 60 && p[6] == 6 => (true, 40),
        _ => return None,
    };
    let tcp_len = usize::from(p[ip_len + 12] >> 4) * 4;
    let headers = ip_len + tcp_len;
    if tcp_len < 20 || p.len() <= headers {
        return None;
    }
    let flags = p[ip_len + 13];
    if flags & TCP_ACK == 0 || flags & !(TCP_ACK | TCP_PSH) != 0 {
        return None;
    }
    let mut sum = if v6 {
        sum_bytes(0, &p[8..40])
    } else {
        sum_bytes(0, &p[12..20])
    };
    sum += 6 + (p.len() - ip_len) as u64;
    if fold(sum_bytes(sum, &p[ip_len..])) != 0xffff {
        return None;
    }
    let t = ip_len;
    Some(Seg {
        v6,
        ip_len,
        headers,
        payload: p.len() - headers,
        seq: u32::from_be_bytes([p[t + 4], p[t + 5], p[t + 6], p[t + 7]]),
        flags,
    })
}

/// Whether `b` belongs to the same flow and header state as `a` (what Linux's own GRO
/// compares): addresses, ports, ACK number, window, TCP options, and TOS/TTL/DF or the IPv6
/// traffic class, flow label and hop limit.
fn same_flow(a: &[u8], sa: &Seg, b: &[u8], sb: &Seg) -> bool {
    if sa.v6 != sb.v6 || sa.headers != sb.headers {
        return false;
    }
    let ip_same = if sa.v6 {
        a[..4] == b[..4] && a[7] == b[7] && a[8..40] == b[8..40]
    } else {
        a[1] == b[1] && a[8] == b[8] && (a[6] & 0x40) == (b[6] & 0x40) && a[12..20] == b[12..20]
    };
    let t = sa.ip_len;
    ip_same
        && a[t..t + 4] == b[t..t + 4]
        && a[t + 8..t + 12] == b[t + 8..t + 12]
        && a[t + 14..t + 16] == b[t + 14..t + 16]
        && a[t + 20..sa.headers] == b[t + 20..sb.headers]
}

/// Segments per coalesced packet at most (the kernel's `MAX_SKB_FRAGS`-era GSO limit).
const GRO_MAX_SEGMENTS: usize = 64;

/// How many packets from `pkts[start]` on can be written as one TCP super-packet: consecutive
/// segments of one flow, in sequence, all of the first one's size but the last (which may be
/// shorter or carry PSH), within 64 KiB. 1 when `pkts[start]` cannot start a run.
pub fn gro_run(pkts: &[&[u8]], start: usize) -> usize {
    let Some(first) = tcp_seg(pkts[start]) else {
        return 1;
    };
    if first.flags & TCP_PSH != 0 {
        return 1;
    }
    let mut total = pkts[start].len() - first.ip_len;
    let mut next_seq = first
        .seq
        .wrapping_add(u32::try_from(first.payload).unwrap_or(0));
    let mut n = 1;
    for p in &pkts[start + 1..] {
        let Some(s) = tcp_seg(p) else { break };
        if !same_flow(pkts[start], &first, p, &s)
            || s.seq != next_seq
            || s.payload > first.payload
            || total + s.payload > usize::from(u16::MAX) - first.ip_len
            || n == GRO_MAX_SEGMENTS
        {
            break;
        }
        n += 1;
        total += s.payload;
        next_seq = next_seq.wrapping_add(u32::try_from(s.payload).unwrap_or(0));
        if s.payload < first.payload || s.flags & TCP_PSH != 0 {
            break;
        }
    }
    n
}

/// Builds in `buf` the write for a run that [`gro_run`] found (at least two segments): a virtio
/// header (`GSO_TCPV4`/`TCPV6`, segment size, `NEEDS_CSUM` at the TCP checksum) and one packet
/// with the first segment's headers and every payload, as the kernel's GRO would make it.
pub fn gro_build(run: &[&[u8]], buf: &mut Vec<u8>) {
    let first = run[0];
    let Some(s) = tcp_seg(first) else {
        return;
    };
    buf.clear();
    buf.extend_from_slice(&[0; VNET_HDR_LEN]);
    buf.extend_from_slice(&first[..s.headers]);
    for p in run {
        buf.extend_from_slice(&p[s.headers..]);
    }
    let last_flags = run[run.len() - 1][s.ip_len + 13];
    let (hdr, pkt) = buf.split_at_mut(VNET_HDR_LEN);
    let total = pkt.len();
    if s.v6 {
        let plen = u16::try_from(total - 40).unwrap_or(u16::MAX);
        pkt[4..6].copy_from_slice(&plen.to_be_bytes());
    } else {
        let tlen = u16::try_from(total).unwrap_or(u16::MAX);
        pkt[2..4].copy_from_slice(&tlen.to_be_bytes());
        ipv4_header_checksum(&mut pkt[..20]);
    }
    let t = s.ip_len;
    pkt[t + 13] = s.flags | (last_flags & TCP_PSH);
    // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the rest is the kernel's (and the
    // segments' own checksums were verified in `tcp_seg`).
    let mut sum = if s.v6 {
        sum_bytes(0, &pkt[8..40])
    } else {
        sum_bytes(0, &pkt[12..20])
    };
    sum += 6 + (total - t) as u64;
    pkt[t + 16..t + 18].copy_from_slice(&fold(sum).to_be_bytes());
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    hdr[1] = if s.v6 {
        VIRTIO_NET_HDR_GSO_TCPV6
    } else {
        VIRTIO_NET_HDR_GSO_TCPV4
    };
    let le = |v: usize| u16::try_from(v).unwrap_or(u16::MAX).to_le_bytes();
    hdr[2..4].copy_from_slice(&le(s.headers));
    hdr[4..6].copy_from_slice(&le(s.payload));
    hdr[6..8].copy_from_slice(&le(t));
    hdr[8..10].copy_from_slice(&le(16));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/TCP packet with `payload` bytes, checksums complete.
    fn tcp4(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&5000u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p.extend_from_slice(payload);
        ipv4_header_checksum(&mut p[..20]);
        let (ip, seg) = p.split_at_mut(20);
        tcp_checksum(ip, false, seg);
        p
    }

    fn verify(p: &[u8]) {
        assert_eq!(fold(sum_bytes(0, &p[..20])), 0xffff, "IPv4 header checksum");
        let mut sum = sum_bytes(0, &p[12..20]) + 6 + (p.len() - 20) as u64;
        sum = sum_bytes(sum, &p[20..]);
        assert_eq!(fold(sum), 0xffff, "TCP checksum");
    }

    fn vnet(gso_type: u8, gso_size: u16, flags: u8) -> Vec<u8> {
        let mut h = vec![0u8; VNET_HDR_LEN];
        h[0] = flags;
        h[1] = gso_type;
        h[2..4].copy_from_slice(&40u16.to_le_bytes());
        h[4..6].copy_from_slice(&gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&20u16.to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
        h
    }

    #[test]
    fn splits_a_tso_packet_into_the_segments_the_wire_would_carry() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        let big = tcp4(1000, TCP_PSH | TCP_FIN | 0x10, &payload);
        let mut raw = vnet(VIRTIO_NET_HDR_GSO_TCPV4, 1380, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        raw.extend_from_slice(&big);
        let mut out = BytesMut::new();
        let mut segs = Vec::new();
        let n = split(&mut raw, 1420, &mut out, |b| segs.push(b)).unwrap();
        assert_eq!(n, 3);
        let expected = [
            tcp4(1000, 0x10, &payload[..1380]),
            tcp4(2380, 0x10, &payload[1380..2760]),
            tcp4(3760, TCP_PSH | TCP_FIN | 0x10, &payload[2760..]),
        ];
        for (i, (got, want)) in segs.iter().zip(&expected).enumerate() {
            verify(got);
            // The same bytes as one packet built by hand, but for the IP ID (one per segment)
            // and so the header checksum.
            assert_eq!(&got[20..], &want[20..], "segment {i}");
            assert_eq!(
                u16::from_be_bytes([got[4], got[5]]),
                0x1234 + u16::try_from(i).unwrap()
            );
            assert_eq!(&got[2..4], &want[2..4]);
        }
    }

    #[test]
    fn coalesces_the_segments_back_into_the_super_packet() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 13 % 251) as u8).collect();
        let big = tcp4(5000, TCP_PSH | TCP_ACK, &payload);
        let mut raw = vnet(VIRTIO_NET_HDR_GSO_TCPV4, 1380, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        raw.extend_from_slice(&big);
        let mut out = BytesMut::new();
        let mut segs = Vec::new();
        split(&mut raw, 1420, &mut out, |b| segs.push(b)).unwrap();
        // Another flow's segment after them ends the run.
        let other = tcp4(1, TCP_ACK, &[1; 100]);
        let mut other_flow = other.clone();
        other_flow[22..24].copy_from_slice(&81u16.to_be_bytes());
        let (ip, seg) = other_flow.split_at_mut(20);
        tcp_checksum(ip, false, seg);
        let mut pkts: Vec<&[u8]> = segs.iter().map(|b| &b[..]).collect();
        pkts.push(&other_flow);
        assert_eq!(gro_run(&pkts, 0), 3);
        assert_eq!(gro_run(&pkts, 3), 1);
        let mut buf = Vec::new();
        gro_build(&pkts[..3], &mut buf);
        let hdr = VnetHdr::parse(&buf).unwrap();
        assert_eq!(hdr.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(
            (hdr.gso_size, hdr.csum_start, hdr.csum_offset),
            (1380, 20, 16)
        );
        let pkt = &buf[VNET_HDR_LEN..];
        // The original packet, but for the IP ID and the checksums.
        assert_eq!(pkt.len(), big.len());
        assert_eq!(&pkt[..4], &big[..4]);
        assert_eq!(&pkt[20..36], &big[20..36]);
        assert_eq!(&pkt[40..], &big[40..]);
        assert_eq!(fold(sum_bytes(0, &pkt[..20])), 0xffff);
        // A corrupted segment is not coalesced (the kernel gets it alone and drops it).
        let mut bad = segs[1].to_vec();
        bad[100] ^= 1;
        let pkts: Vec<&[u8]> = vec![&segs[0], &bad, &segs[2]];
        assert_eq!(gro_run(&pkts, 0), 1);
        assert_eq!(gro_run(&pkts, 1), 1);
        // A gap in the sequence ends the run.
        let pkts: Vec<&[u8]> = vec![&segs[0], &segs[2]];
        assert_eq!(gro_run(&pkts, 0), 1);
    }

    #[test]
    fn completes_a_partial_checksum() {
        let want = tcp4(7, 0x18, b"hello");
        let mut p = want.clone();
        // What the kernel hands out with NEEDS_CSUM: the pseudo-header sum, not complemented.
        let pseudo = sum_bytes(0, &p[12..20]) + 6 + (p.len() - 20) as u64;
        p[36..38].copy_from_slice(&fold(pseudo).to_be_bytes());
        let mut raw = vnet(VIRTIO_NET_HDR_GSO_NONE, 0, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        raw.extend_from_slice(&p);
        let mut out = BytesMut::new();
        let mut segs = Vec::new();
        assert_eq!(split(&mut raw, 1420, &mut out, |b| segs.push(b)), Ok(1));
        assert_eq!(&segs[0][..], &want[..]);
    }

    #[test]
    fn refuses_what_it_cannot_split() {
        let mut out = BytesMut::new();
        let mut raw = vnet(3, 1000, 0); // UFO: never asked for
        raw.extend_from_slice(&tcp4(1, 0, &[0; 2000]));
        assert_eq!(
            split(&mut raw, 1420, &mut out, |_| panic!("emitted")),
            Err(SplitError::Malformed)
        );
        let mut raw = vnet(VIRTIO_NET_HDR_GSO_NONE, 0, 0);
        raw.extend_from_slice(&tcp4(1, 0, &[0; 1500]));
        assert_eq!(
            split(&mut raw, 1420, &mut out, |_| panic!("emitted")),
            Err(SplitError::Oversize)
        );
        let mut raw = vnet(VIRTIO_NET_HDR_GSO_TCPV4, 1400, 0);
        raw.extend_from_slice(&tcp4(1, 0, &[0; 3000]));
        assert_eq!(
            split(&mut raw, 1420, &mut out, |_| panic!("emitted")),
            Err(SplitError::Oversize)
        );
    }
}
