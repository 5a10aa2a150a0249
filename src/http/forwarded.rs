//! Who the client is behind a reverse proxy. `X-Forwarded-For` is believed
//! only as far as it was written by proxies we trust: anyone can send the
//! header, so an untrusted peer's claim about its own address is ignored.

use std::fmt;
use std::net::IpAddr;

/// An address range such as `10.0.0.0/8` or `fd00::/8`; a bare address is a
/// range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    address: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    pub fn parse(text: &str) -> Result<IpNetwork, String> {
        let (address_text, prefix_text) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address_text
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => bits,
            // Plain decimal only: `+8` or `08` are typos, not prefixes.
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(length) if length <= bits && length.to_string() == prefix => length,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {bits}")),
            },
        };
        let network = IpNetwork { address, prefix };
        if network.masked(address) != address {
            return Err(format!(
                "{text:?} has bits set after the prefix (did you mean {}?)",
                IpNetwork {
                    address: network.masked(address),
                    prefix
                }
            ));
        }
        Ok(network)
    }

    pub fn contains(&self, candidate: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let candidate = match candidate {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(candidate),
            v4 => v4,
        };
        candidate.is_ipv4() == self.address.is_ipv4() && self.masked(candidate) == self.address
    }

    fn masked(&self, address: IpAddr) -> IpAddr {
        match address {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy, in
/// which case `X-Forwarded-For` (all its header lines, in order) is walked
/// from the right, past every trusted hop, to the first address no trusted
/// proxy vouches for. An unparsable entry stops the walk at the last
/// address known good.
pub fn client_address(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNetwork]) -> IpAddr {
    let is_trusted = |address: IpAddr| trusted.iter().any(|network| network.contains(address));
    let mut client = peer;
    let hops = forwarded_for.iter().rev().flat_map(|line| line.rsplit(','));
    for hop in hops {
        if !is_trusted(client) {
            break;
        }
        match parse_hop(hop.trim()) {
            Some(address) => client = address,
            None => break,
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`1.2.3.4:5678`, `[::1]:80`) as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(address) = hop.parse() {
        return Some(address);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (address, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    address.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn networks(list: &[&str]) -> Vec<IpNetwork> {
        list.iter().map(|text| IpNetwork::parse(text).unwrap()).collect()
    }

    #[test]
    fn networks_parse_and_match() {
        let net = IpNetwork::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.1.2.3")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(
            net.contains(ip("::ffff:10.9.9.9")),
            "IPv4-mapped peers match IPv4 ranges"
        );
        let single = IpNetwork::parse("192.168.1.5").unwrap();
        assert!(single.contains(ip("192.168.1.5")));
        assert!(!single.contains(ip("192.168.1.6")));
        let v6 = IpNetwork::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(IpNetwork::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert_eq!(IpNetwork::parse("::1").unwrap().to_string(), "::1/128");
    }

    #[test]
    fn bad_networks_are_explained() {
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/08",
            "x/8",
        ] {
            assert!(IpNetwork::parse(bad).is_err(), "{bad:?}");
        }
        let error = IpNetwork::parse("10.1.0.0/8").unwrap_err();
        assert!(error.contains("10.0.0.0/8"), "{error}");
    }

    #[test]
    fn untrusted_peers_are_believed_over_the_header() {
        let trusted = networks(&["10.0.0.1"]);
        assert_eq!(
            client_address(ip("203.0.113.9"), &["1.2.3.4"], &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(client_address(ip("203.0.113.9"), &[], &[]), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_proxies_are_walked_from_the_right() {
        let trusted = networks(&["10.0.0.0/8"]);
        // The client forged the left entry; the proxy appended the real peer.
        let chain = ["6.6.6.6, 198.51.100.7"];
        assert_eq!(
            client_address(ip("10.0.0.1"), &chain, &trusted),
            ip("198.51.100.7")
        );
        // Two trusted hops, then the client.
        let chain = ["198.51.100.7, 10.2.2.2"];
        assert_eq!(
            client_address(ip("10.0.0.1"), &chain, &trusted),
            ip("198.51.100.7")
        );
        // Several header lines count as one list, in order.
        let lines = ["198.51.100.7", "10.2.2.2"];
        assert_eq!(
            client_address(ip("10.0.0.1"), &lines, &trusted),
            ip("198.51.100.7")
        );
        // Only trusted hops: the leftmost one is the best we know.
        assert_eq!(
            client_address(ip("10.0.0.1"), &["10.3.3.3"], &trusted),
            ip("10.3.3.3")
        );
        // A trusted peer without the header is the client itself.
        assert_eq!(client_address(ip("10.0.0.1"), &[], &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn junk_stops_the_walk() {
        let trusted = networks(&["10.0.0.0/8"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &["198.51.100.7, garbage"], &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &["198.51.100.7:4711"], &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &["[2001:db8::1]:443"], &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(client_address(ip("10.0.0.1"), &[""], &trusted), ip("10.0.0.1"));
    }
}
