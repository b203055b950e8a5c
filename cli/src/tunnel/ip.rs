//! Is a datagram an IP packet the TUN device may take? Only the version nibble and the length
//! field are checked (RFC 791 / RFC 8200 headers): enough to keep garbage and truncated datagrams
//! out of the kernel's stack, cheap enough for every packet.

/// Why a datagram is not written to the TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// The version nibble is neither 4 nor 6 (or the datagram is empty).
    NotIp,
    /// Shorter than the fixed header, or the header's length field disagrees with the datagram.
    BadLength,
}

/// IPv4 minimum header (IHL = 5).
const V4_HEADER_BYTES: usize = 20;
/// IPv6 fixed header.
const V6_HEADER_BYTES: usize = 40;

/// `Ok(())` when `p` is one whole IPv4 or IPv6 packet: version 4 with IHL ≥ 5 and a total length
/// equal to `p.len()`, or version 6 with 40 + payload length equal to `p.len()`.
///
/// # Errors
/// [`Bad`] says which check failed.
pub fn check(p: &[u8]) -> Result<(), Bad> {
    let Some(&first) = p.first() else {
        return Err(Bad::NotIp);
    };
    match first >> 4 {
        4 => {
            if p.len() < V4_HEADER_BYTES {
                return Err(Bad::BadLength);
            }
            let ihl_bytes = usize::from(first & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            if ihl_bytes < V4_HEADER_BYTES || total != p.len() || ihl_bytes > total {
                return Err(Bad::BadLength);
            }
            Ok(())
        }
        6 => {
            if p.len() < V6_HEADER_BYTES {
                return Err(Bad::BadLength);
            }
            let payload = usize::from(u16::from_be_bytes([p[4], p[5]]));
            if V6_HEADER_BYTES + payload != p.len() {
                return Err(Bad::BadLength);
            }
            Ok(())
        }
        _ => Err(Bad::NotIp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(len: u16) -> Vec<u8> {
        let mut p = vec![0u8; usize::from(len)];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p
    }

    fn v6(payload: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40 + usize::from(payload)];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&payload.to_be_bytes());
        p
    }

    #[test]
    fn whole_packets_pass() {
        assert_eq!(check(&v4(20)), Ok(()));
        assert_eq!(check(&v4(1420)), Ok(()));
        assert_eq!(check(&v6(0)), Ok(()));
        assert_eq!(check(&v6(1380)), Ok(()));
    }

    #[test]
    fn garbage_and_bad_lengths_fail() {
        assert_eq!(check(&[]), Err(Bad::NotIp));
        assert_eq!(check(b"\x01hello, tunnel"), Err(Bad::NotIp));
        // "h" is 0x68: version 6, and far too short for it.
        assert_eq!(check(b"hello, tunnel"), Err(Bad::BadLength));
        assert_eq!(check(&[0u8; 100]), Err(Bad::NotIp));
        assert_eq!(check(&[0x45; 10]), Err(Bad::BadLength));
        let mut short = v4(100);
        short.truncate(60);
        assert_eq!(check(&short), Err(Bad::BadLength));
        let mut long = v4(100);
        long.push(0);
        assert_eq!(check(&long), Err(Bad::BadLength));
        let mut ihl = v4(40);
        ihl[0] = 0x44;
        assert_eq!(check(&ihl), Err(Bad::BadLength));
        let mut six = v6(10);
        six.pop();
        assert_eq!(check(&six), Err(Bad::BadLength));
        assert_eq!(check(&[0x60; 39]), Err(Bad::BadLength));
    }
}
