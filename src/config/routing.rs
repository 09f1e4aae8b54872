//! `[backends]`, `[[sets]]`, `[[routes]]` and `default_set`: checked field
//! by field here and as a whole by [`Routing::build`], whose errors get the
//! line of the part of the file they name.

use std::net::SocketAddr;
use std::ops::Range;

use toml::Spanned;

use super::schema::{Backends, File, RouteFile, SetFile};
use super::{backend_peer, Problems};
use crate::balance::{
    self, Cidr, MemberSpec, Routing, RoutingError, RoutingSpec, RuleSpec, SetSpec,
};
use crate::sip::Peer;

/// Where each part of the routing spec was written, to give a
/// [`RoutingError`] its line.
#[derive(Default)]
struct Places {
    sets: Vec<SetPlaces>,
    rules: Vec<RulePlaces>,
    default_set: Range<usize>,
}

#[derive(Default)]
struct SetPlaces {
    /// The `[backends]` table, whose form differs from `[[sets]]`.
    from_backends: bool,
    name: Range<usize>,
    members: Range<usize>,
    uris: Vec<Range<usize>>,
    weights: Vec<Range<usize>>,
}

#[derive(Default)]
struct RulePlaces {
    set: Range<usize>,
    methods: Range<usize>,
    user_prefix: Range<usize>,
    domain: Range<usize>,
    source: Range<usize>,
}

/// `[backends]`, `[[sets]]`, `[[routes]]` and `default_set`, checked field
/// by field here and as a whole by [`Routing::build`].
pub(super) fn routing(
    file: &File,
    previous: Option<&Routing>,
    problems: &mut Problems,
) -> Option<Routing> {
    let mut spec = RoutingSpec::default();
    let mut places = Places::default();
    if let Some(backends) = &file.backends {
        let (set, set_places) = backends_set(backends, problems);
        spec.sets.push(set);
        places.sets.push(set_places);
    }
    for set in &file.sets {
        let (set, set_places) = set_spec(set, problems);
        spec.sets.push(set);
        places.sets.push(set_places);
    }
    for route in &file.routes {
        let (rule, rule_places) = rule_spec(route, problems);
        spec.rules.push(rule);
        places.rules.push(rule_places);
    }
    spec.default_set = file
        .default_set
        .as_ref()
        .map_or("default".to_string(), |d| d.get_ref().clone());
    places.default_set = file.default_set.as_ref().map_or(0..0, |d| d.span());
    match Routing::build(&spec, previous) {
        Ok(routing) => Some(routing),
        Err(errors) => {
            for error in errors {
                routing_problem(&error, &places, problems);
            }
            None
        }
    }
}

fn routing_problem(error: &RoutingError, places: &Places, problems: &mut Problems) {
    let set = |i: usize| places.sets.get(i);
    let rule = |i: usize, field: fn(&RulePlaces) -> &Range<usize>| {
        places.rules.get(i).map_or(0..0, |r| field(r).clone())
    };
    let span = match *error {
        RoutingError::NoSets
        | RoutingError::TooManySets { .. }
        | RoutingError::TooManyRules { .. } => 0..0,
        RoutingError::DuplicateSet { set: i, .. } => set(i).map_or(0..0, |s| s.name.clone()),
        RoutingError::EmptySet { set: i, .. } => match set(i) {
            Some(s) if s.from_backends => {
                return problems.add(
                    0..0,
                    "backends.members is empty".to_string(),
                    "list at least one backend, e.g. members = [\"sip:127.0.0.1:5080\"]",
                )
            }
            s => s.map_or(0..0, |s| s.members.clone()),
        },
        RoutingError::TooManyMembers { set: i, .. } => set(i).map_or(0..0, |s| s.members.clone()),
        RoutingError::DuplicateMember { set: i, member, .. } => set(i)
            .and_then(|s| s.uris.get(member).cloned())
            .unwrap_or(0..0),
        RoutingError::WeightOutOfRange { set: i, member, .. } => set(i)
            .and_then(|s| s.weights.get(member).cloned())
            .unwrap_or(0..0),
        RoutingError::UnknownSet { rule: i, .. } => rule(i, |r| &r.set),
        RoutingError::UnknownDefaultSet { .. } => places.default_set.clone(),
        RoutingError::EmptyMethods { rule: i } | RoutingError::BadMethod { rule: i, .. } => {
            rule(i, |r| &r.methods)
        }
        RoutingError::EmptyUserPrefix { rule: i } => rule(i, |r| &r.user_prefix),
        RoutingError::EmptyDomain { rule: i } => rule(i, |r| &r.domain),
        RoutingError::EmptySource { rule: i } => rule(i, |r| &r.source),
    };
    problems.add(span, error.to_string(), &error.fix());
}

/// `[backends]`: the set "default", round robin or Call-ID hash as before.
fn backends_set(backends: &Backends, problems: &mut Problems) -> (SetSpec, SetPlaces) {
    let algorithm = match backends.algorithm.get_ref().as_str() {
        "round-robin" => balance::Algorithm::RoundRobin,
        "call-id-hash" => balance::Algorithm::CallIdHash,
        other => {
            problems.add(
                backends.algorithm.span(),
                format!("algorithm = {other:?} is not known"),
                "use \"round-robin\" or \"call-id-hash\" (or a [[sets]] table for the others)",
            );
            balance::Algorithm::RoundRobin
        }
    };
    let mut places = SetPlaces {
        from_backends: true,
        ..SetPlaces::default()
    };
    let members = backends
        .members
        .iter()
        .map(|uri| {
            places.uris.push(uri.span());
            places.weights.push(uri.span());
            member_spec(uri, problems)
        })
        .collect();
    let set = SetSpec {
        name: "default".to_string(),
        algorithm,
        members,
    };
    (set, places)
}

/// A member at its URI's address and transport, with the defaults; a
/// placeholder after reporting a URI that is not `sip:IP:PORT`, so the
/// rest of the set is still checked.
fn member_spec(uri: &Spanned<String>, problems: &mut Problems) -> MemberSpec {
    let peer = backend_peer(uri.get_ref()).unwrap_or_else(|why| {
        problems.add(
            uri.span(),
            format!("backend {:?}: {why}", uri.get_ref()),
            "write it as \"sip:10.0.0.1:5060\" (or with ;transport=tcp or tls)",
        );
        Peer::udp(SocketAddr::from(([0, 0, 0, 0], 0)))
    });
    MemberSpec {
        transport: peer.transport,
        also_tcp: !super::names_udp(uri.get_ref()),
        ..MemberSpec::new(uri.get_ref().clone(), peer.addr)
    }
}

fn set_spec(set: &SetFile, problems: &mut Problems) -> (SetSpec, SetPlaces) {
    let algorithm = match &set.algorithm {
        None => balance::Algorithm::RoundRobin,
        Some(name) => balance::Algorithm::from_name(name.get_ref()).unwrap_or_else(|| {
            problems.add(
                name.span(),
                format!("algorithm = {:?} is not known", name.get_ref()),
                &format!("use one of {}", balance::Algorithm::NAMES.join(", ")),
            );
            balance::Algorithm::RoundRobin
        }),
    };
    let mut places = SetPlaces {
        from_backends: false,
        name: set.name.span(),
        members: set.members.span(),
        ..SetPlaces::default()
    };
    let members = set
        .members
        .get_ref()
        .iter()
        .map(|member| {
            places.uris.push(member.uri.span());
            places.weights.push(
                member
                    .weight
                    .as_ref()
                    .map_or(member.uri.span(), |w| w.span()),
            );
            MemberSpec {
                weight: member.weight.as_ref().map_or(1, |w| *w.get_ref()),
                priority: member.priority.unwrap_or(0),
                attrs: member.attrs.clone(),
                ..member_spec(&member.uri, problems)
            }
        })
        .collect();
    let set = SetSpec {
        name: set.name.get_ref().clone(),
        algorithm,
        members,
    };
    (set, places)
}

fn rule_spec(route: &RouteFile, problems: &mut Problems) -> (RuleSpec, RulePlaces) {
    let span = |field: Option<Range<usize>>| field.unwrap_or(route.set.span());
    let places = RulePlaces {
        set: route.set.span(),
        methods: span(route.methods.as_ref().map(|m| m.span())),
        user_prefix: span(route.user_prefix.as_ref().map(|p| p.span())),
        domain: span(route.domain.as_ref().map(|d| d.span())),
        source: span(route.source.as_ref().map(|s| s.span())),
    };
    let source = route.source.as_ref().map(|list| {
        let parsed = networks(list, "source", problems);
        (parsed, list.get_ref().len())
    });
    let rule = RuleSpec {
        methods: route.methods.as_ref().map(|m| m.get_ref().clone()),
        user_prefix: route.user_prefix.as_ref().map(|p| p.get_ref().clone()),
        domain: route.domain.as_ref().map(|d| d.get_ref().clone()),
        // A list whose every entry was bad is reported already, not again
        // as an empty one.
        source: source.and_then(|(parsed, written)| {
            (parsed.len() == written || !parsed.is_empty()).then_some(parsed)
        }),
        set: route.set.get_ref().clone(),
    };
    (rule, places)
}

/// A list of networks; each one that does not parse is a problem on its
/// own line (`key` names the list) and is left out.
pub(super) fn networks(
    list: &Spanned<Vec<Spanned<String>>>,
    key: &str,
    problems: &mut Problems,
) -> Vec<Cidr> {
    list.get_ref()
        .iter()
        .filter_map(|network| match network.get_ref().parse::<Cidr>() {
            Ok(cidr) => Some(cidr),
            Err(why) => {
                problems.add(
                    network.span(),
                    format!("{key} {:?}: {why}", network.get_ref()),
                    "write a network as \"10.0.0.0/8\" or \"2001:db8::/32\", or one address",
                );
                None
            }
        })
        .collect()
}
