//! The destination sets and the rules that pick one: an immutable snapshot
//! built from the configuration, shared by every shard as `Arc<Routing>`
//! and replaced whole on reload.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::health::MemberHealth;
use super::select::member_seed;
use super::Algorithm;
use crate::sip::lex::is_token_str;
use crate::sip::{Peer, Transport};

/// Members per set: a transaction marks the members it has tried in a
/// `u64`, one bit each.
pub const MEMBERS_MAX: usize = 64;
/// A member's weight is at most this. Finer ratios mean nothing for call
/// loads, and the bound keeps weighted round robin's sums small.
pub const WEIGHT_MAX: u32 = 10_000;
/// Sets and rules per configuration; rules are tried in order on every
/// initial request, so their count is the cost of a miss.
pub const SETS_MAX: usize = 1024;
pub const RULES_MAX: usize = 1024;

/// A set's place in its [`Routing`]; valid only with the snapshot that
/// gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SetId(u16);

impl SetId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A named pool of backends and how to spread requests over it.
#[derive(Clone, Debug)]
pub struct DestinationSet {
    pub name: Box<str>,
    pub algorithm: Algorithm,
    pub members: Box<[Member]>,
    /// Bit `i`: member `i` has a weight above 0.
    pub(super) positive_weights: u64,
    /// Every member with a weight above 0 has the same one, so the hash
    /// algorithms may skip weighting.
    pub(super) weights_equal: bool,
}

/// One backend in a set.
#[derive(Clone, Debug)]
pub struct Member {
    /// As configured; with the set it names the member across reloads.
    pub uri: Box<str>,
    pub address: SocketAddr,
    /// From the URI: `transport=tcp|tls`, or `sips:` (TLS); else UDP.
    pub transport: Transport,
    /// A UDP member written without `transport=` also takes TCP (RFC 3261
    /// §18: every element implements both): requests too large for a
    /// datagram go to it over TCP (§18.1.1).
    pub also_tcp: bool,
    /// Share of new calls; 0 takes none.
    pub weight: u32,
    /// Lower is preferred (the `priority` algorithm).
    pub priority: u32,
    /// Free attributes from the configuration, for the operator's use.
    pub attrs: BTreeMap<String, String>,
    /// Shared with every member of every set that has the same URI, and
    /// carried over by reload (see [`Routing::build`]).
    pub health: Arc<MemberHealth>,
    /// Where this member ranks a hash key; from its URI, so neither
    /// reordering nor removing other members moves its keys.
    pub(super) seed: u64,
}

impl Member {
    /// Whether the member may take this request now.
    pub fn eligible(&self, new_dialog: bool) -> bool {
        self.health.state().takes(new_dialog) && (self.weight > 0 || !new_dialog)
    }

    /// Where a request to this member goes.
    pub fn peer(&self) -> Peer {
        Peer::new(self.transport, self.address)
    }
}

/// One routing rule: every condition given must hold; a list condition
/// holds when any of its entries does.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Methods are case-sensitive (RFC 3261 §7.1), so compared exactly.
    methods: Option<Box<[Box<[u8]>]>>,
    /// Request-URI user starts with it (case-sensitive, as users are).
    user_prefix: Option<Box<[u8]>>,
    /// Request-URI host, lowercased at build.
    domain: Option<Box<[u8]>>,
    source: Option<Box<[Cidr]>>,
    set: SetId,
}

impl Rule {
    pub fn set(&self) -> SetId {
        self.set
    }

    fn matches(
        &self,
        method: &[u8],
        ruri_user: Option<&[u8]>,
        ruri_host: &[u8],
        source: IpAddr,
    ) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| **m == *method))
            && self
                .user_prefix
                .as_ref()
                .is_none_or(|prefix| ruri_user.is_some_and(|user| user.starts_with(prefix)))
            && self
                .domain
                .as_ref()
                .is_none_or(|domain| ruri_host.eq_ignore_ascii_case(domain))
            && self
                .source
                .as_ref()
                .is_none_or(|source_cidrs| source_cidrs.iter().any(|c| c.contains(source)))
    }
}

/// The routing snapshot: sets, rules in order, the default set. A clone
/// is a shard's private copy (same generation, same shared health): its
/// reference count then lives in the shard's own cache, not bounced
/// between cores by every transaction that holds it.
#[derive(Clone, Debug)]
pub struct Routing {
    sets: Box<[DestinationSet]>,
    rules: Box<[Rule]>,
    default_set: SetId,
    /// Every backend's health by URI: for probes and the admin API, and
    /// for the next reload to carry over.
    backends: BTreeMap<Box<str>, Arc<MemberHealth>>,
    /// Unique per build, so a shard's selector sees a new snapshot.
    pub(super) generation: u64,
}

/// What a routing snapshot is built from (the configuration, checked
/// field by field by `config`).
#[derive(Clone, Debug, Default)]
pub struct RoutingSpec {
    pub sets: Vec<SetSpec>,
    pub rules: Vec<RuleSpec>,
    pub default_set: String,
}

#[derive(Clone, Debug)]
pub struct SetSpec {
    pub name: String,
    pub algorithm: Algorithm,
    pub members: Vec<MemberSpec>,
}

#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub uri: String,
    pub address: SocketAddr,
    pub transport: Transport,
    /// See [`Member::also_tcp`].
    pub also_tcp: bool,
    pub weight: u32,
    pub priority: u32,
    pub attrs: BTreeMap<String, String>,
}

impl RoutingSpec {
    /// One set, "default", of `backends` at weight 1 and no rules: the
    /// pool the command line's `--backend`s describe.
    pub fn one_set<P: Into<Peer> + Copy>(algorithm: Algorithm, backends: &[P]) -> Self {
        RoutingSpec {
            sets: vec![SetSpec {
                name: "default".to_string(),
                algorithm,
                members: backends.iter().map(|&p| MemberSpec::of(p.into())).collect(),
            }],
            rules: Vec::new(),
            default_set: "default".to_string(),
        }
    }
}

impl MemberSpec {
    /// A member with the defaults: weight 1, priority 0, no attributes.
    pub fn new(uri: impl Into<String>, address: SocketAddr) -> Self {
        MemberSpec {
            uri: uri.into(),
            address,
            transport: Transport::Udp,
            also_tcp: true,
            weight: 1,
            priority: 0,
            attrs: BTreeMap::new(),
        }
    }

    /// A member with the defaults, its URI written from `peer`.
    pub fn of(peer: Peer) -> Self {
        let uri = match peer.transport {
            Transport::Udp => format!("sip:{}", peer.addr),
            t => format!("sip:{};transport={t}", peer.addr),
        };
        MemberSpec {
            transport: peer.transport,
            ..MemberSpec::new(uri, peer.addr)
        }
    }
}

/// A rule as configured; `None` is "any".
#[derive(Clone, Debug, Default)]
pub struct RuleSpec {
    pub methods: Option<Vec<String>>,
    pub user_prefix: Option<String>,
    pub domain: Option<String>,
    pub source: Option<Vec<Cidr>>,
    pub set: String,
}

/// Why a [`RoutingSpec`] cannot be built. Indices are positions in the
/// spec, so the caller can point at the line that holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoutingError {
    NoSets,
    TooManySets {
        count: usize,
    },
    TooManyRules {
        count: usize,
    },
    DuplicateSet {
        set: usize,
        name: String,
    },
    EmptySet {
        set: usize,
        name: String,
    },
    TooManyMembers {
        set: usize,
        name: String,
        count: usize,
    },
    DuplicateMember {
        set: usize,
        member: usize,
        uri: String,
    },
    WeightOutOfRange {
        set: usize,
        member: usize,
        weight: u32,
    },
    UnknownSet {
        rule: usize,
        name: String,
    },
    UnknownDefaultSet {
        name: String,
    },
    EmptyMethods {
        rule: usize,
    },
    BadMethod {
        rule: usize,
        method: String,
    },
    EmptyUserPrefix {
        rule: usize,
    },
    EmptyDomain {
        rule: usize,
    },
    EmptySource {
        rule: usize,
    },
}

impl RoutingError {
    /// What to write instead.
    pub fn fix(&self) -> String {
        match self {
            RoutingError::NoSets => "add a [backends] table or a [[sets]] table".to_string(),
            RoutingError::TooManySets { .. } => format!("use at most {SETS_MAX} sets"),
            RoutingError::TooManyRules { .. } => format!("use at most {RULES_MAX} routes"),
            RoutingError::DuplicateSet { .. } => {
                "give each set its own name ([backends] is the set \"default\")".to_string()
            }
            RoutingError::EmptySet { .. } => {
                "list at least one member, e.g. members = [{ uri = \"sip:127.0.0.1:5080\" }]"
                    .to_string()
            }
            RoutingError::TooManyMembers { .. } => format!(
                "split it into sets of at most {MEMBERS_MAX} members (a transaction marks the members it tried in 64 bits)"
            ),
            RoutingError::DuplicateMember { .. } => {
                "list each URI once; give it a larger weight instead".to_string()
            }
            RoutingError::WeightOutOfRange { .. } => {
                format!("use 0..={WEIGHT_MAX} (0 takes no new calls; default 1)")
            }
            RoutingError::UnknownSet { .. } => "name a set defined in [[sets]]".to_string(),
            RoutingError::UnknownDefaultSet { .. } => {
                "set default_set to a set defined in [[sets]], or add [backends]".to_string()
            }
            RoutingError::EmptyMethods { .. }
            | RoutingError::EmptySource { .. }
            | RoutingError::EmptyUserPrefix { .. }
            | RoutingError::EmptyDomain { .. } => {
                "an empty condition matches nothing or everything: leave the key out to match any request".to_string()
            }
            RoutingError::BadMethod { .. } => {
                "write the method as it appears on the wire, e.g. \"INVITE\" or \"REGISTER\"".to_string()
            }
        }
    }
}

impl fmt::Display for RoutingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoutingError::NoSets => write!(f, "no destination set is configured"),
            RoutingError::TooManySets { count } => write!(f, "{count} sets are too many"),
            RoutingError::TooManyRules { count } => write!(f, "{count} routes are too many"),
            RoutingError::DuplicateSet { name, .. } => write!(f, "set {name:?} is defined twice"),
            RoutingError::EmptySet { name, .. } => write!(f, "set {name:?} has no members"),
            RoutingError::TooManyMembers { name, count, .. } => {
                write!(
                    f,
                    "set {name:?} has {count} members, more than {MEMBERS_MAX}"
                )
            }
            RoutingError::DuplicateMember { uri, .. } => {
                write!(f, "member {uri:?} is listed twice in its set")
            }
            RoutingError::WeightOutOfRange { weight, .. } => {
                write!(f, "weight = {weight} is out of range")
            }
            RoutingError::UnknownSet { name, .. } => {
                write!(f, "the route names set {name:?}, which is not defined")
            }
            RoutingError::UnknownDefaultSet { name } => {
                write!(f, "default_set = {name:?} is not a defined set")
            }
            RoutingError::EmptyMethods { .. } => write!(f, "methods = [] matches no request"),
            RoutingError::BadMethod { method, .. } => {
                write!(f, "method {method:?} is not a SIP token")
            }
            RoutingError::EmptyUserPrefix { .. } => {
                write!(f, "user_prefix = \"\" matches every request")
            }
            RoutingError::EmptyDomain { .. } => write!(f, "domain = \"\" matches no request"),
            RoutingError::EmptySource { .. } => write!(f, "source = [] matches no request"),
        }
    }
}

static GENERATIONS: AtomicU64 = AtomicU64::new(1);

impl Routing {
    /// Checks and builds a snapshot. A backend (URI) that `previous` also
    /// has keeps its health: state, active dialogs and latency carry over,
    /// so a reload neither revives a down backend nor forgets the calls
    /// on it nor ends a drain. Health is keyed by URI alone, so a backend
    /// in two sets is one backend: probed once, drained once, its calls
    /// counted together.
    pub fn build(
        spec: &RoutingSpec,
        previous: Option<&Routing>,
    ) -> Result<Routing, Vec<RoutingError>> {
        let mut errors = spec.count_errors();
        let mut backends: BTreeMap<Box<str>, Arc<MemberHealth>> = BTreeMap::new();
        let mut sets = Vec::with_capacity(spec.sets.len());
        for (set_index, set) in spec.sets.iter().enumerate() {
            if spec.sets[..set_index].iter().any(|s| s.name == set.name) {
                errors.push(RoutingError::DuplicateSet {
                    set: set_index,
                    name: set.name.clone(),
                });
            }
            sets.push(build_set(
                set_index,
                set,
                previous,
                &mut backends,
                &mut errors,
            ));
        }
        let rules = build_rules(spec, &mut errors);
        let default_set = spec.set_id(&spec.default_set);
        if default_set.is_none() && !spec.sets.is_empty() {
            errors.push(RoutingError::UnknownDefaultSet {
                name: spec.default_set.clone(),
            });
        }
        match default_set {
            Some(default_set) if errors.is_empty() => Ok(Routing {
                sets: sets.into(),
                rules: rules.into(),
                default_set,
                backends,
                generation: GENERATIONS.fetch_add(1, Relaxed),
            }),
            _ => Err(errors),
        }
    }

    /// The set for an initial request: the first rule that matches, else
    /// the default set. Allocates nothing; `source` may be an IPv4-mapped
    /// IPv6 address.
    pub fn pick_set(
        &self,
        method: &[u8],
        ruri_user: Option<&[u8]>,
        ruri_host: &[u8],
        source: IpAddr,
    ) -> SetId {
        let source = source.to_canonical();
        self.rules
            .iter()
            .find(|rule| rule.matches(method, ruri_user, ruri_host, source))
            .map_or(self.default_set, |rule| rule.set)
    }

    pub fn set(&self, id: SetId) -> &DestinationSet {
        &self.sets[id.index()]
    }

    pub fn sets(&self) -> &[DestinationSet] {
        &self.sets
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_set(&self) -> SetId {
        self.default_set
    }

    /// A set by name (control plane: the admin API, logs).
    pub fn set_id(&self, name: &str) -> Option<SetId> {
        self.sets
            .iter()
            .position(|s| &*s.name == name)
            .and_then(|i| u16::try_from(i).ok())
            .map(SetId)
    }

    /// A backend's health by URI (probes, the admin API).
    pub fn backend(&self, uri: &str) -> Option<&Arc<MemberHealth>> {
        self.backends.get(uri)
    }

    /// Every backend once, by URI.
    pub fn backends(&self) -> impl Iterator<Item = (&str, &Arc<MemberHealth>)> {
        self.backends.iter().map(|(uri, health)| (&**uri, health))
    }
}

impl RoutingSpec {
    /// Too few or too many sets, too many rules.
    fn count_errors(&self) -> Vec<RoutingError> {
        let mut errors = Vec::new();
        if self.sets.is_empty() {
            errors.push(RoutingError::NoSets);
        }
        if self.sets.len() > SETS_MAX {
            errors.push(RoutingError::TooManySets {
                count: self.sets.len(),
            });
        }
        if self.rules.len() > RULES_MAX {
            errors.push(RoutingError::TooManyRules {
                count: self.rules.len(),
            });
        }
        errors
    }

    /// The first set named `name`.
    fn set_id(&self, name: &str) -> Option<SetId> {
        self.sets
            .iter()
            .position(|s| s.name == name)
            .and_then(|i| u16::try_from(i).ok())
            .map(SetId)
    }
}

/// Every rule that checks out, each naming a set that exists.
fn build_rules(spec: &RoutingSpec, errors: &mut Vec<RoutingError>) -> Vec<Rule> {
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (rule_index, rule) in spec.rules.iter().enumerate() {
        let set = spec.set_id(&rule.set);
        if set.is_none() {
            errors.push(RoutingError::UnknownSet {
                rule: rule_index,
                name: rule.set.clone(),
            });
        }
        if let Some(rule) = build_rule(rule_index, rule, set.unwrap_or(SetId(0)), errors) {
            rules.push(rule);
        }
    }
    rules
}

fn build_set(
    set_index: usize,
    set: &SetSpec,
    previous: Option<&Routing>,
    backends: &mut BTreeMap<Box<str>, Arc<MemberHealth>>,
    errors: &mut Vec<RoutingError>,
) -> DestinationSet {
    if set.members.is_empty() {
        errors.push(RoutingError::EmptySet {
            set: set_index,
            name: set.name.clone(),
        });
    }
    if set.members.len() > MEMBERS_MAX {
        errors.push(RoutingError::TooManyMembers {
            set: set_index,
            name: set.name.clone(),
            count: set.members.len(),
        });
    }
    let members: Vec<Member> = (0..set.members.len())
        .map(|member_index| build_member(set_index, set, member_index, previous, backends, errors))
        .collect();
    let positive_weights = members
        .iter()
        .take(MEMBERS_MAX)
        .enumerate()
        .filter(|(_, m)| m.weight > 0)
        .fold(0u64, |mask, (i, _)| mask | 1 << i);
    let mut weights = members.iter().map(|m| m.weight).filter(|&w| w > 0);
    let first = weights.next();
    let weights_equal = weights.all(|w| Some(w) == first);
    DestinationSet {
        name: set.name.as_str().into(),
        algorithm: set.algorithm,
        members: members.into(),
        positive_weights,
        weights_equal,
    }
}

/// Member `member_index` of `set`, with the health `backends` holds for
/// its URI: shared with the same URI in another set, or carried over from
/// `previous`, or new.
fn build_member(
    set_index: usize,
    set: &SetSpec,
    member_index: usize,
    previous: Option<&Routing>,
    backends: &mut BTreeMap<Box<str>, Arc<MemberHealth>>,
    errors: &mut Vec<RoutingError>,
) -> Member {
    let member = &set.members[member_index];
    if set.members[..member_index]
        .iter()
        .any(|m| m.uri == member.uri)
    {
        errors.push(RoutingError::DuplicateMember {
            set: set_index,
            member: member_index,
            uri: member.uri.clone(),
        });
    }
    if member.weight > WEIGHT_MAX {
        errors.push(RoutingError::WeightOutOfRange {
            set: set_index,
            member: member_index,
            weight: member.weight,
        });
    }
    let health = backends
        .entry(member.uri.as_str().into())
        .or_insert_with(|| {
            previous
                .and_then(|p| p.backend(&member.uri))
                .map_or_else(|| Arc::new(MemberHealth::new()), Arc::clone)
        })
        .clone();
    Member {
        uri: member.uri.as_str().into(),
        address: member.address,
        transport: member.transport,
        also_tcp: member.also_tcp && member.transport == Transport::Udp,
        weight: member.weight,
        priority: member.priority,
        attrs: member.attrs.clone(),
        health,
        seed: member_seed(&member.uri),
    }
}

fn build_rule(
    rule_index: usize,
    rule: &RuleSpec,
    set: SetId,
    errors: &mut Vec<RoutingError>,
) -> Option<Rule> {
    let errors_before = errors.len();
    if let Some(methods) = &rule.methods {
        if methods.is_empty() {
            errors.push(RoutingError::EmptyMethods { rule: rule_index });
        }
        for method in methods {
            if !is_token_str(method.as_bytes()) {
                errors.push(RoutingError::BadMethod {
                    rule: rule_index,
                    method: method.clone(),
                });
            }
        }
    }
    if rule.user_prefix.as_deref() == Some("") {
        errors.push(RoutingError::EmptyUserPrefix { rule: rule_index });
    }
    if rule.domain.as_deref() == Some("") {
        errors.push(RoutingError::EmptyDomain { rule: rule_index });
    }
    if rule.source.as_ref().is_some_and(|s| s.is_empty()) {
        errors.push(RoutingError::EmptySource { rule: rule_index });
    }
    (errors.len() == errors_before).then(|| Rule {
        methods: rule
            .methods
            .as_ref()
            .map(|methods| methods.iter().map(|m| m.as_bytes().into()).collect()),
        user_prefix: rule.user_prefix.as_ref().map(|p| p.as_bytes().into()),
        domain: rule
            .domain
            .as_ref()
            .map(|d| d.to_ascii_lowercase().into_bytes().into()),
        source: rule.source.as_ref().map(|s| s.as_slice().into()),
        set,
    })
}

/// An IPv4 or IPv6 network, `10.0.0.0/8` or `2001:db8::/32`; a bare
/// address is the network of that one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

/// Why a network does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidrError {
    NotAnAddress,
    PrefixOutOfRange {
        max: u8,
    },
    /// Bits past the prefix are set, e.g. `10.0.0.1/8`: probably a typo
    /// for an address or a longer prefix, so it is refused, not masked.
    HostBitsSet {
        network: String,
    },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidrError::NotAnAddress => write!(f, "not an IP address or network"),
            CidrError::PrefixOutOfRange { max } => write!(f, "the prefix length is not 0..={max}"),
            CidrError::HostBitsSet { network } => {
                write!(f, "bits past the prefix are set (the network is {network})")
            }
        }
    }
}

impl Cidr {
    fn bits(ip: IpAddr) -> (u128, u8) {
        match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    }

    fn mask(prefix_len: u8, width: u8) -> u128 {
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        match u32::from(width - prefix_len) {
            128 => 0,
            host_bits => all & !((1u128 << host_bits) - 1),
        }
    }

    /// The network's first address (its host bits are zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// How many leading bits of an address the network fixes.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` (already canonical: IPv4-mapped IPv6 as IPv4) is in
    /// the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (network, width) = Cidr::bits(self.network);
        let (address, address_width) = Cidr::bits(ip);
        width == address_width && address & Cidr::mask(self.prefix_len, width) == network
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| CidrError::NotAnAddress)?;
        let (bits, width) = Cidr::bits(network);
        let prefix_len = match prefix {
            None => width,
            Some(p) => match p.parse::<u8>() {
                Ok(len) if len <= width && !p.starts_with('+') => len,
                _ => return Err(CidrError::PrefixOutOfRange { max: width }),
            },
        };
        let mask = Cidr::mask(prefix_len, width);
        if bits & !mask != 0 {
            let masked = match network {
                IpAddr::V4(_) => IpAddr::from(std::net::Ipv4Addr::from((bits & mask) as u32)),
                IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(bits & mask)),
            };
            return Err(CidrError::HostBitsSet {
                network: format!("{masked}/{prefix_len}"),
            });
        }
        Ok(Cidr {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}
