//! The client's real address behind trusted reverse proxies.
//!
//! Only a request whose TCP peer is a configured trusted proxy has its client address taken
//! from a forwarding header, and only from the one header the operator named: a proxy that
//! appends `X-Forwarded-For` passes a client's own `Forwarded` header through untouched, so
//! reading whichever header is present would let the client choose its address. The client is
//! the rightmost hop that is not a trusted proxy (hops to its left were written by the client).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Which header the trusted proxies set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIpHeader {
    #[default]
    XForwardedFor,
    Forwarded,
    XRealIp,
}

impl FromStr for ClientIpHeader {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            "x-real-ip" => Ok(Self::XRealIp),
            _ => Err(format!(
                "{s:?} is not one of x-forwarded-for, forwarded, x-real-ip"
            )),
        }
    }
}

impl ClientIpHeader {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
            Self::XRealIp => "x-real-ip",
        }
    }
}

/// The trusted proxies (addresses or CIDR networks) and the header they set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    pub nets: Vec<IpNet>,
    pub header: ClientIpHeader,
}

/// Parses one trusted proxy: an address (`10.0.0.5`, `::1`) or a network (`10.0.0.0/8`).
pub fn parse_proxy(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))
}

/// One hop as a header writes it: an address, optionally with a port, IPv6 optionally in
/// brackets, possibly quoted (`Forwarded`). `None` for `unknown`, obfuscated names, garbage.
fn parse_hop(raw: &str) -> Option<IpAddr> {
    let s = raw.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    // `[v6]` without a port.
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|v6| v6.parse().ok())
}

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The hops the configured header lists, leftmost first (`None` for one unreadable).
    fn hops(&self, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
        let mut values = headers
            .get_all(self.header.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok());
        match self.header {
            ClientIpHeader::XForwardedFor => {
                values.flat_map(|v| v.split(',')).map(parse_hop).collect()
            }
            ClientIpHeader::Forwarded => values
                .flat_map(|v| v.split(','))
                .map(|element| {
                    element
                        .split(';')
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                        .and_then(|(_, v)| parse_hop(v))
                })
                .collect(),
            // One address; several headers mean the client added its own: take the last.
            ClientIpHeader::XRealIp => values.next_back().map(parse_hop).into_iter().collect(),
        }
    }

    /// The client's address: the peer's unless the peer is trusted, else the rightmost hop of
    /// the configured header that is not a trusted proxy (the leftmost if all are). An
    /// unreadable hop ends the walk at the last address read.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.nets.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in self.hops(headers).into_iter().rev() {
            let Some(ip) = hop else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn proxies(nets: &[&str], header: ClientIpHeader) -> TrustedProxies {
        TrustedProxies {
            nets: nets.iter().map(|n| parse_proxy(n).unwrap()).collect(),
            header,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_judged_by_its_own_address() {
        let p = proxies(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "1.2.3.4")]);
        assert_eq!(p.client_address(ip("192.0.2.9"), &h), ip("192.0.2.9"));
        // No proxies configured: headers are never read.
        let none = TrustedProxies::default();
        assert_eq!(none.client_address(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let p = proxies(&["10.0.0.0/8", "127.0.0.1"], ClientIpHeader::XForwardedFor);
        // The client forged "6.6.6.6"; nginx appended the real address, then an inner proxy.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.7"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        assert_eq!(p.client_address(ip("127.0.0.1"), &h), ip("203.0.113.7"));
        // Every hop trusted: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.2.2.2, 10.1.1.1")]);
        assert_eq!(p.client_address(ip("127.0.0.1"), &h), ip("10.2.2.2"));
        // Garbage right of the client stops the walk at the last good hop.
        let h = headers(&[("x-forwarded-for", "203.0.113.7, nonsense")]);
        assert_eq!(p.client_address(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        // No header: the proxy itself.
        assert_eq!(
            p.client_address(ip("10.9.9.9"), &HeaderMap::new()),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn only_the_configured_header_counts() {
        let p = proxies(&["127.0.0.1"], ClientIpHeader::XForwardedFor);
        let h = headers(&[("forwarded", "for=6.6.6.6"), ("x-real-ip", "6.6.6.7")]);
        assert_eq!(p.client_address(ip("127.0.0.1"), &h), ip("127.0.0.1"));

        let p = proxies(&["127.0.0.1"], ClientIpHeader::Forwarded);
        let h = headers(&[(
            "forwarded",
            "for=6.6.6.6;proto=https, For=\"[2001:db8::1]:4711\";by=127.0.0.1",
        )]);
        assert_eq!(p.client_address(ip("127.0.0.1"), &h), ip("2001:db8::1"));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(p.client_address(ip("127.0.0.1"), &h), ip("127.0.0.1"));

        let p = proxies(&["::1"], ClientIpHeader::XRealIp);
        let h = headers(&[("x-real-ip", "198.51.100.2:5555")]);
        assert_eq!(p.client_address(ip("::1"), &h), ip("198.51.100.2"));
        // A peer given as IPv4-mapped IPv6 matches an IPv4 proxy entry.
        let p = proxies(&["127.0.0.1"], ClientIpHeader::XRealIp);
        assert_eq!(
            p.client_address(ip("::ffff:127.0.0.1"), &h),
            ip("198.51.100.2")
        );
    }

    #[test]
    fn proxies_parse_as_addresses_or_networks() {
        assert!(parse_proxy("10.0.0.0/8").is_ok());
        assert!(parse_proxy(" ::1 ").is_ok());
        assert!(parse_proxy("10.0.0.0/33").is_err());
        assert!(
            parse_proxy("proxy.local")
                .unwrap_err()
                .contains("not an IP")
        );
        assert!("X-Real-IP".parse::<ClientIpHeader>().is_ok());
        assert!("via".parse::<ClientIpHeader>().is_err());
    }
}
