//! Resolver configuration: /etc/resolv.conf (nameservers, search list,
//! ndots, timeout, attempts) and /etc/hosts, parsed with the limits glibc
//! applies. Text in, values out.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use super::wire::encode_name;
use super::{NAMESERVERS_MAX, SEARCH_DOMAINS_MAX};

/// Defaults from resolv.conf(5).
const NDOTS_DEFAULT: u8 = 1;
const TIMEOUT_MS_DEFAULT: u64 = 5_000;
const ATTEMPTS_DEFAULT: u8 = 2;
/// glibc's RES_MAXNDOTS, RES_MAXRETRANS (seconds) and RES_MAXRETRY.
pub(super) const NDOTS_MAX: u8 = 15;
const TIMEOUT_SECS_MAX: u64 = 30;
pub(super) const ATTEMPTS_MAX: u8 = 5;

/// Names kept from /etc/hosts (ad-blocking hosts files run to 100k+ lines).
const HOSTS_NAMES_MAX: usize = 200_000;
/// Addresses kept per name from /etc/hosts.
const HOSTS_ADDRESSES_PER_NAME_MAX: usize = 16;

/// The parsed content of /etc/resolv.conf that a stub resolver uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverConfig {
    pub nameservers: Vec<SocketAddr>,
    /// Search domains, lowercase, without trailing dot.
    pub search: Vec<String>,
    pub ndots: u8,
    /// Wait for one server before trying the next.
    pub timeout_ms: u64,
    /// Rounds through the whole nameserver list.
    pub attempts: u8,
}

impl Default for ResolverConfig {
    fn default() -> ResolverConfig {
        ResolverConfig {
            nameservers: vec![default_nameserver()],
            search: Vec::new(),
            ndots: NDOTS_DEFAULT,
            timeout_ms: TIMEOUT_MS_DEFAULT,
            attempts: ATTEMPTS_DEFAULT,
        }
    }
}

/// resolv.conf(5): "If no nameserver entries are present, the default is to use the name
/// server on the local machine."
pub(super) fn default_nameserver() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53)
}

/// Parses resolv.conf(5) text the way glibc does where it matters: up to three
/// `nameserver` lines, `search`/`domain` (the last one wins), and `options ndots:N
/// timeout:N attempts:N` clamped to glibc's limits. Unknown lines are ignored.
pub fn parse_resolv_conf(text: &str) -> ResolverConfig {
    let mut config = ResolverConfig {
        nameservers: Vec::new(),
        ..ResolverConfig::default()
    };
    for line in text.lines() {
        // glibc treats `#` and `;` as starting a comment.
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(address) = words.next().and_then(parse_nameserver)
                    && config.nameservers.len() < NAMESERVERS_MAX
                {
                    config.nameservers.push(address);
                }
            }
            Some("domain") => {
                config.search = words.next().and_then(normalize_domain).into_iter().collect();
            }
            Some("search") => {
                config.search = words
                    .filter_map(normalize_domain)
                    .take(SEARCH_DOMAINS_MAX)
                    .collect();
            }
            Some("options") => {
                for option in words {
                    let Some((key, value)) = option.split_once(':') else {
                        continue;
                    };
                    let Ok(value) = value.parse::<u64>() else {
                        continue;
                    };
                    match key {
                        "ndots" => config.ndots = value.min(u64::from(NDOTS_MAX)) as u8,
                        // A zero timeout or attempt count would make the machine spin or
                        // never ask; glibc also refuses to go below one.
                        "timeout" => config.timeout_ms = value.clamp(1, TIMEOUT_SECS_MAX) * 1000,
                        "attempts" => config.attempts = value.clamp(1, u64::from(ATTEMPTS_MAX)) as u8,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if config.nameservers.is_empty() {
        config.nameservers.push(default_nameserver());
    }
    config
}

/// A nameserver address: IPv4, IPv6, or IPv6 with a numeric zone (`fe80::1%2`). Zones by
/// interface name would need `if_nametoindex`, which is I/O; such lines are skipped.
pub(super) fn parse_nameserver(word: &str) -> Option<SocketAddr> {
    if let Ok(ip) = word.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    let (address, zone) = word.split_once('%')?;
    let address = address.parse::<Ipv6Addr>().ok()?;
    let zone = zone.parse::<u32>().ok()?;
    Some(SocketAddr::V6(SocketAddrV6::new(address, 53, 0, zone)))
}

/// A search domain as we store it: lowercase, no trailing dot, valid for the wire. The
/// root (`.`) means "no domain" and is dropped.
pub(super) fn normalize_domain(word: &str) -> Option<String> {
    let domain = word.strip_suffix('.').unwrap_or(word).to_ascii_lowercase();
    encode_name(&domain).ok()?;
    Some(domain)
}

/// RFC 6761 section 6.3: `localhost` and names under it are the loopback addresses even when
/// /etc/hosts does not say so, and must not be sent to DNS servers.
pub(super) static LOOPBACK: [IpAddr; 2] = [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];

/// /etc/hosts: name -> addresses in file order.
#[derive(Clone, Debug, Default)]
pub struct Hosts {
    by_name: HashMap<String, Vec<IpAddr>>,
}

impl Hosts {
    /// Addresses for `name` (case-insensitive, one trailing dot ignored), with the RFC 6761
    /// loopback fallback for `localhost` and `*.localhost`.
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if let Some(addresses) = self.by_name.get(&name) {
            return Some(addresses.as_slice());
        }
        if name == "localhost" || name.ends_with(".localhost") {
            return Some(&LOOPBACK[..]);
        }
        None
    }

    /// Names read from the file (the loopback fallback is not counted).
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Parses hosts(5) text: `address name [aliases...]`, `#` comments. Lines with an
/// unparsable address are skipped, as are invalid names; names are lowercased.
pub fn parse_hosts(text: &str) -> Hosts {
    let mut by_name: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_ascii_whitespace();
        let Some(Ok(address)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in words {
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            if encode_name(&name).is_err() {
                continue;
            }
            if !by_name.contains_key(&name) && by_name.len() >= HOSTS_NAMES_MAX {
                continue;
            }
            let addresses = by_name.entry(name).or_default();
            if !addresses.contains(&address) && addresses.len() < HOSTS_ADDRESSES_PER_NAME_MAX {
                addresses.push(address);
            }
        }
    }
    Hosts { by_name }
}

#[cfg(test)]
mod tests {
    use super::super::testing::ip;
    use super::*;

    #[test]
    fn resolv_conf_parses_glibc_subset() {
        let config = parse_resolv_conf(
            "# comment\n\
             nameserver 10.0.0.1\n\
             nameserver 2001:db8::53 # trailing comment\n\
             nameserver fe80::1%2\n\
             nameserver 10.0.0.4\n\
             nameserver not-an-address\n\
             domain ignored.example\n\
             search Corp.Example. example.net .\n\
             options ndots:3 timeout:2 attempts:4 rotate\n",
        );
        assert_eq!(
            config.nameservers,
            vec![
                "10.0.0.1:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
            ]
        );
        assert_eq!(config.search, vec!["corp.example", "example.net"]);
        assert_eq!((config.ndots, config.timeout_ms, config.attempts), (3, 2000, 4));
    }

    #[test]
    fn resolv_conf_defaults_and_clamps() {
        let config = parse_resolv_conf("");
        assert_eq!(config, ResolverConfig::default());
        assert_eq!(config.nameservers, vec!["127.0.0.1:53".parse().unwrap()]);
        let config = parse_resolv_conf("options ndots:99 timeout:0 attempts:100\ndomain Example.COM\n");
        assert_eq!((config.ndots, config.timeout_ms, config.attempts), (15, 1000, 5));
        assert_eq!(config.search, vec!["example.com"]);
        let config = parse_resolv_conf("search a b c d e f g h\nnameserver fe80::1%eth0\n");
        assert_eq!(config.search.len(), SEARCH_DOMAINS_MAX);
        assert_eq!(config.nameservers, vec![default_nameserver()]);
    }

    #[test]
    fn hosts_parse_and_lookup() {
        let hosts = parse_hosts(
            "127.0.0.1 localhost\n\
             # 10.9.9.9 commented.example\n\
             192.0.2.10 Web.Example web # alias\n\
             2001:db8::10 web.example\n\
             192.0.2.10 web.example\n\
             bogus line.example\n\
             192.0.2.11 bad!name ok.example.\n",
        );
        assert_eq!(
            hosts.lookup("WEB.example."),
            Some(&[ip("192.0.2.10"), ip("2001:db8::10")][..])
        );
        assert_eq!(hosts.lookup("web"), Some(&[ip("192.0.2.10")][..]));
        assert_eq!(hosts.lookup("ok.example"), Some(&[ip("192.0.2.11")][..]));
        assert_eq!(hosts.lookup("commented.example"), None);
        assert_eq!(hosts.lookup("line.example"), None);
        // The file's own localhost entry wins over the RFC 6761 fallback.
        assert_eq!(hosts.lookup("localhost"), Some(&[ip("127.0.0.1")][..]));
        assert_eq!(hosts.len(), 4);
    }

    #[test]
    fn localhost_resolves_without_hosts_entry() {
        let hosts = parse_hosts("");
        assert!(hosts.is_empty());
        assert_eq!(hosts.lookup("localhost"), Some(&LOOPBACK[..]));
        assert_eq!(hosts.lookup("LocalHost."), Some(&LOOPBACK[..]));
        assert_eq!(hosts.lookup("api.localhost"), Some(&LOOPBACK[..]));
        assert_eq!(hosts.lookup("localhost.example"), None);
    }
}
