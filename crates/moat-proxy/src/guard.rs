//! The destination guard: which resolved addresses the proxy refuses to dial.
//!
//! Loopback, link-local (cloud metadata), private, shared (CGNAT), unique-local, multicast,
//! unspecified and the host's own addresses are refused unless a resolve override or an explicit
//! allowance names them. The check runs after resolution, at connect time, so DNS rebinding
//! cannot slip an internal address past it.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// An address range in CIDR notation, such as `10.1.0.0/16` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

/// Why an address range could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an ip address or range; write `10.0.0.5`, `10.0.0.0/8` or `fd00::/8`")]
pub struct IpRangeError {
    /// The text given.
    pub input: String,
}

impl IpRange {
    /// A range covering exactly one address.
    pub fn single(addr: IpAddr) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Self {
            network: addr,
            prefix,
        }
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, canonical(addr)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                prefix_eq(&net.octets(), &a.octets(), self.prefix.min(32))
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                prefix_eq(&net.octets(), &a.octets(), self.prefix.min(128))
            }
            _ => false,
        }
    }
}

impl FromStr for IpRange {
    type Err = IpRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IpRangeError {
            input: s.to_owned(),
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| err())?)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err());
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The set of addresses the proxy refuses, minus explicit allowances.
#[derive(Debug, Clone, Default)]
pub(crate) struct Guard {
    own: HashSet<IpAddr>,
    allowed: Vec<IpRange>,
}

impl Guard {
    pub(crate) fn new(own: impl IntoIterator<Item = IpAddr>, allowed: Vec<IpRange>) -> Self {
        Self {
            own: own.into_iter().map(canonical).collect(),
            allowed,
        }
    }

    /// Whether the proxy may dial `addr`.
    pub(crate) fn permits(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        if self.allowed.iter().any(|r| r.contains(addr)) {
            return true;
        }
        !is_internal(addr) && !self.own.contains(&addr)
    }
}

/// Whether an address is internal to the host or its networks.
pub(crate) fn is_internal(addr: IpAddr) -> bool {
    match canonical(addr) {
        IpAddr::V4(a) => is_internal_v4(a),
        IpAddr::V6(a) => is_internal_v6(a),
    }
}

fn is_internal_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, ..] = a.octets();
    a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_multicast()
        || o0 == 0
        // Shared address space (RFC 6598), used by carrier NAT and some clouds.
        || (o0 == 100 && (o1 & 0xc0) == 64)
        // IETF protocol assignments (RFC 6890), including some metadata services.
        || (o0 == 192 && o1 == 0 && a.octets()[2] == 0)
        // Reserved (240/4).
        || o0 >= 240
}

fn is_internal_v6(a: Ipv6Addr) -> bool {
    let seg0 = a.segments()[0];
    a.is_loopback()
        || a.is_unspecified()
        || a.is_multicast()
        // Unique local fc00::/7.
        || (seg0 & 0xfe00) == 0xfc00
        // Link-local fe80::/10 and deprecated site-local fec0::/10.
        || (seg0 & 0xffc0) == 0xfe80
        || (seg0 & 0xffc0) == 0xfec0
        // NAT64 well-known prefix 64:ff9b::/96 embedding an internal IPv4 address.
        || (a.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && {
            let o = a.octets();
            is_internal_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
        })
}

/// IPv4-mapped IPv6 addresses are treated as the IPv4 address they carry.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a.get(..full) != b.get(..full) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(full), b.get(full)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn refuses_internal_ranges() {
        let g = Guard::default();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "224.0.0.1",
        ] {
            assert!(!g.permits(ip(bad)), "{bad} must be refused");
        }
        for good in ["1.1.1.1", "140.82.112.6", "2606:4700::1111", "172.32.0.1"] {
            assert!(g.permits(ip(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn own_addresses_and_allowances() {
        let g = Guard::new(
            [ip("203.0.113.7")],
            vec!["10.9.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"))],
        );
        assert!(!g.permits(ip("203.0.113.7")));
        assert!(g.permits(ip("10.9.200.1")));
        assert!(!g.permits(ip("10.10.0.1")));
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("nope".parse::<IpRange>().is_err());
        assert!(IpRange::single(ip("::1")).contains(ip("::1")));
    }
}
