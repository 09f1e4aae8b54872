//! Allow and deny lists of networks: the SIP side and the admin API each
//! have one [`Acl`]. Deny wins; an empty allow list allows every address.
//!
//! The networks are [`Cidr`]s (the routing rules' parser, so that the two
//! read a network the same way), kept as (network, mask) integers per
//! family: a check is a short loop of AND-and-compare, no branch on the
//! prefix length.

use std::net::IpAddr;

use crate::balance::Cidr;

/// Networks one list may hold. A check walks its lists, so their length
/// is what a datagram pays; a thousand networks is a few hundred
/// nanoseconds, and longer lists belong in a firewall.
pub const NETWORKS_MAX: usize = 1024;

/// Why an [`Acl`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AclError {
    /// A list holds more than [`NETWORKS_MAX`] networks.
    TooManyNetworks { count: usize },
}

impl std::fmt::Display for AclError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AclError::TooManyNetworks { count } => {
                write!(f, "{count} networks (at most {NETWORKS_MAX})")
            }
        }
    }
}

/// One family's networks as (network bits, mask) pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Networks {
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

impl Networks {
    fn new(cidrs: &[Cidr]) -> Result<Networks, AclError> {
        if cidrs.len() > NETWORKS_MAX {
            return Err(AclError::TooManyNetworks { count: cidrs.len() });
        }
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for cidr in cidrs {
            // `checked_shl` is `None` for a shift of the full width: a /0.
            match cidr.network() {
                IpAddr::V4(network) => {
                    let host_bits = 32 - u32::from(cidr.prefix_len());
                    let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
                    v4.push((u32::from(network) & mask, mask));
                }
                IpAddr::V6(network) => {
                    let host_bits = 128 - u32::from(cidr.prefix_len());
                    let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
                    v6.push((u128::from(network) & mask, mask));
                }
            }
        }
        Ok(Networks {
            v4: v4.into(),
            v6: v6.into(),
        })
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` (canonical: an IPv4-mapped IPv6 address as IPv4) is in
    /// one of the networks. A network only holds addresses of its family.
    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => {
                let ip = u32::from(ip);
                self.v4.iter().any(|&(network, mask)| ip & mask == network)
            }
            IpAddr::V6(ip) => {
                let ip = u128::from(ip);
                self.v6.iter().any(|&(network, mask)| ip & mask == network)
            }
        }
    }
}

/// An allow list and a deny list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    allow: Networks,
    deny: Networks,
}

impl Acl {
    /// An ACL from its two lists; each holds at most [`NETWORKS_MAX`].
    pub fn new(allow: &[Cidr], deny: &[Cidr]) -> Result<Acl, AclError> {
        Ok(Acl {
            allow: Networks::new(allow)?,
            deny: Networks::new(deny)?,
        })
    }

    /// No network in either list: every address is permitted, and the
    /// shards skip the check altogether.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `ip` may come in: in no deny network, and in an allow
    /// network unless the allow list is empty. An IPv4-mapped IPv6 address
    /// (a dual-stack socket's view of an IPv4 peer) is judged as IPv4.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(texts: &[&str]) -> Vec<Cidr> {
        texts
            .iter()
            .map(|t| t.parse().expect("a network"))
            .collect()
    }

    fn acl(allow: &[&str], deny: &[&str]) -> Acl {
        Acl::new(&cidrs(allow), &cidrs(deny)).expect("a short list")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn an_empty_acl_permits_everything() {
        let open = Acl::default();
        assert!(open.is_empty());
        assert!(open.permits(ip("203.0.113.9")));
        assert!(open.permits(ip("2001:db8::1")));
        assert!(!acl(&[], &["10.0.0.0/8"]).is_empty());
    }

    #[test]
    fn deny_wins_over_allow() {
        let acl = acl(&["10.0.0.0/8"], &["10.1.2.3/32"]);
        assert!(acl.permits(ip("10.1.2.4")));
        assert!(
            !acl.permits(ip("10.1.2.3")),
            "denied inside an allowed network"
        );
        assert!(!acl.permits(ip("11.0.0.1")), "outside the allow list");
        let deny_only = super::tests::acl(&[], &["192.0.2.0/24"]);
        assert!(deny_only.permits(ip("198.51.100.1")), "no allow list: all");
        assert!(!deny_only.permits(ip("192.0.2.200")));
    }

    #[test]
    fn prefix_edges_v4() {
        let all = acl(&["0.0.0.0/0"], &[]);
        assert!(all.permits(ip("0.0.0.0")));
        assert!(all.permits(ip("255.255.255.255")));
        assert!(!all.permits(ip("2001:db8::1")), "an IPv4 /0 is not IPv6");
        let one = acl(&["192.0.2.7/32"], &[]);
        assert!(one.permits(ip("192.0.2.7")));
        assert!(!one.permits(ip("192.0.2.6")));
        assert!(!one.permits(ip("192.0.2.8")));
        let bare = acl(&["192.0.2.7"], &[]);
        assert_eq!(bare, one, "a bare address is its /32");
        let odd = acl(&["198.51.100.128/25"], &[]);
        assert!(odd.permits(ip("198.51.100.128")));
        assert!(odd.permits(ip("198.51.100.255")));
        assert!(!odd.permits(ip("198.51.100.127")));
        let top_bit = acl(&["128.0.0.0/1"], &[]);
        assert!(top_bit.permits(ip("200.1.1.1")));
        assert!(!top_bit.permits(ip("127.255.255.255")));
    }

    #[test]
    fn prefix_edges_v6() {
        let all = acl(&["::/0"], &[]);
        assert!(all.permits(ip("2001:db8::1")));
        assert!(all.permits(ip("::1")));
        assert!(!all.permits(ip("10.0.0.1")), "an IPv6 /0 is not IPv4");
        let one = acl(&["2001:db8::5/128"], &[]);
        assert!(one.permits(ip("2001:db8::5")));
        assert!(!one.permits(ip("2001:db8::4")));
        assert!(!one.permits(ip("2001:db8::6")));
        let net = acl(&["2001:db8:aa00::/40"], &["2001:db8:aaff::/48"]);
        assert!(net.permits(ip("2001:db8:aa12:3456::1")));
        assert!(!net.permits(ip("2001:db8:ab00::1")));
        assert!(
            !net.permits(ip("2001:db8:aaff:1::1")),
            "the deny /48 inside"
        );
        let top_bit = acl(&["8000::/1"], &[]);
        assert!(top_bit.permits(ip("ffff::1")));
        assert!(!top_bit.permits(ip("7fff::1")));
    }

    #[test]
    fn an_ipv4_mapped_source_is_judged_as_ipv4() {
        let acl = acl(&["10.0.0.0/8"], &["10.9.9.9/32"]);
        assert!(acl.permits(ip("::ffff:10.1.1.1")));
        assert!(!acl.permits(ip("::ffff:10.9.9.9")));
        assert!(!acl.permits(ip("::ffff:11.1.1.1")));
    }

    #[test]
    fn lists_are_bounded() {
        let many: Vec<Cidr> = (0..=NETWORKS_MAX)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap())
            .collect();
        assert_eq!(
            Acl::new(&many, &[]),
            Err(AclError::TooManyNetworks {
                count: NETWORKS_MAX + 1
            })
        );
        assert!(Acl::new(&many[..NETWORKS_MAX], &[]).is_ok());
    }
}
