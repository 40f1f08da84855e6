//! The PROXY protocol v2 header (HAProxy `send-proxy-v2`), sans-IO: bytes in, the original client address
//! out. Only connections from configured trusted proxies are parsed (the caller decides); a header from
//! anyone else is never read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// Signature, version/command, family/protocol and the 16-bit length.
pub const FIXED_LEN: usize = 16;
/// Longest address block (with TLVs) accepted.
pub const MAX_PAYLOAD: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a proxy protocol v2 header")]
    NotProxy,
    #[error("unsupported proxy protocol version {0}")]
    Version(u8),
    #[error("unknown proxy protocol command {0}")]
    Command(u8),
    #[error("proxy protocol address block of {0} bytes is too long")]
    TooLong(usize),
    #[error("proxy protocol address block too short for its family")]
    Truncated,
}

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client; `None` for a LOCAL command (the proxy's own health check) or an address family
    /// other than TCP over IPv4/IPv6.
    pub source: Option<SocketAddr>,
    /// Bytes the header took (the stream continues after them).
    pub len: usize,
}

/// Whether `buf` (at least its first bytes) can be the start of a v2 header.
pub fn maybe_header(buf: &[u8]) -> bool {
    let n = buf.len().min(SIGNATURE.len());
    buf[..n] == SIGNATURE[..n]
}

/// Parse a header at the start of `buf`: `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    if !maybe_header(buf) {
        return Err(ProxyError::NotProxy);
    }
    if buf.len() < FIXED_LEN {
        return Ok(None);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0F);
    if version != 2 {
        return Err(ProxyError::Version(version));
    }
    if command > 1 {
        return Err(ProxyError::Command(command));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > MAX_PAYLOAD {
        return Err(ProxyError::TooLong(len));
    }
    let Some(payload) = buf.get(FIXED_LEN..FIXED_LEN + len) else {
        return Ok(None);
    };
    let total = FIXED_LEN + len;
    let source = match command {
        0 => None,
        1 => match buf[13] {
            // TCP over IPv4: source, destination, source port, destination port.
            0x11 => {
                let a = payload.get(..12).ok_or(ProxyError::Truncated)?;
                let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]])))
            }
            // TCP over IPv6.
            0x21 => {
                let a = payload.get(..36).ok_or(ProxyError::Truncated)?;
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[..16]);
                let ip = Ipv6Addr::from(octets);
                Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be_bytes([a[32], a[33]])))
            }
            _ => None,
        },
        _ => return Err(ProxyError::Command(command)),
    };
    Ok(Some(ProxyHeader { source, len: total }))
}

/// A v2 PROXY header for `source` → `destination` (tests and tools).
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_ipv4_and_ipv6_byte_by_byte() {
        let dst: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        for src in ["10.1.2.3:40000", "[2001:db8::7]:5"] {
            let src: SocketAddr = src.parse().unwrap();
            let mut bytes = encode(src, dst);
            bytes.extend_from_slice(b"\x16\x03\x01"); // The TLS ClientHello that follows.
            let header_len = bytes.len() - 3;
            for n in 0..header_len {
                assert_eq!(parse(&bytes[..n]), Ok(None), "{n} bytes are not enough");
            }
            assert_eq!(
                parse(&bytes),
                Ok(Some(ProxyHeader {
                    source: Some(src),
                    len: header_len
                }))
            );
        }
    }

    #[test]
    fn local_unknown_family_and_tlvs() {
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Ok(Some(ProxyHeader { source: None, len: 16 })));
        let mut with_tlv = encode("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
        with_tlv[15] += 4;
        with_tlv.extend_from_slice(&[0x04, 0, 1, 0xAA]);
        assert_eq!(parse(&with_tlv).unwrap().unwrap().len, with_tlv.len());
        let mut unix = SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 0]);
        assert_eq!(parse(&unix).unwrap().unwrap().source, None);
    }

    #[test]
    fn lies_are_refused() {
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"PROXY TCP4 "), Err(ProxyError::NotProxy), "v1 is not accepted");
        let mut v1 = SIGNATURE.to_vec();
        v1.extend_from_slice(&[0x11, 0x11, 0, 12]);
        assert_eq!(parse(&v1), Err(ProxyError::Version(1)));
        let mut cmd = SIGNATURE.to_vec();
        cmd.extend_from_slice(&[0x2F, 0x11, 0, 12]);
        assert_eq!(parse(&cmd), Err(ProxyError::Command(15)));
        let mut long = SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert_eq!(parse(&long), Err(ProxyError::TooLong(65535)));
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(parse(&short), Err(ProxyError::Truncated));
        assert!(maybe_header(&SIGNATURE[..5]) && !maybe_header(b"\x0D\x0A\x00"));
    }
}
