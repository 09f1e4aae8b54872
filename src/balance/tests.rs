//! Rules, reloads and every algorithm, through the public API.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn address(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn uri(port: u16) -> String {
    format!("sip:127.0.0.1:{port}")
}

/// A member on port 5080 + `index` with a weight and a priority.
fn member(index: u16, weight: u32, priority: u32) -> MemberSpec {
    let port = 5080 + index;
    MemberSpec {
        weight,
        priority,
        ..MemberSpec::new(uri(port), address(port))
    }
}

fn one_set(algorithm: Algorithm, members: Vec<MemberSpec>) -> RoutingSpec {
    RoutingSpec {
        sets: vec![SetSpec {
            name: "default".into(),
            algorithm,
            members,
        }],
        rules: Vec::new(),
        default_set: "default".into(),
    }
}

/// One set of members with these weights, priority 0.
fn weighted(algorithm: Algorithm, weights: &[u32]) -> Routing {
    let members = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| member(i as u16, w, 0))
        .collect();
    Routing::build(&one_set(algorithm, members), None).unwrap()
}

fn keys(call_id: &[u8]) -> Keys<'_> {
    Keys {
        call_id,
        from_user: None,
        ruri_user: None,
    }
}

/// `count` new-dialog picks with distinct Call-IDs.
fn picks(routing: &Routing, count: usize) -> Vec<usize> {
    let mut selector = Selector::new();
    (0..count)
        .map(|n| {
            let call_id = format!("call-{n}@host");
            match selector.select(
                routing,
                routing.default_set(),
                &keys(call_id.as_bytes()),
                0,
                true,
            ) {
                Selection::Member(index) => index,
                other => panic!("pick {n}: {other:?}"),
            }
        })
        .collect()
}

fn shares(picks: &[usize], members: usize) -> Vec<usize> {
    let mut counts = vec![0; members];
    for &index in picks {
        counts[index] += 1;
    }
    counts
}

fn set_state(routing: &Routing, index: usize, state: State) {
    routing.set(routing.default_set()).members[index]
        .health
        .set_state(state);
}

// ---- rules ----

fn ruled() -> Routing {
    let set = |name: &str, port: u16| SetSpec {
        name: name.into(),
        algorithm: Algorithm::RoundRobin,
        members: vec![member(port, 1, 0)],
    };
    let spec = RoutingSpec {
        sets: vec![
            set("default", 0),
            set("registrar", 1),
            set("uk", 2),
            set("example", 3),
            set("internal", 4),
        ],
        rules: vec![
            RuleSpec {
                methods: Some(vec!["REGISTER".into()]),
                set: "registrar".into(),
                ..RuleSpec::default()
            },
            RuleSpec {
                user_prefix: Some("+44".into()),
                set: "uk".into(),
                ..RuleSpec::default()
            },
            RuleSpec {
                methods: Some(vec!["INVITE".into(), "MESSAGE".into()]),
                domain: Some("Example.COM".into()),
                set: "example".into(),
                ..RuleSpec::default()
            },
            RuleSpec {
                source: Some(vec![
                    "10.0.0.0/8".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ]),
                set: "internal".into(),
                ..RuleSpec::default()
            },
        ],
        default_set: "default".into(),
    };
    Routing::build(&spec, None).unwrap()
}

#[test]
fn the_first_matching_rule_wins_else_the_default_set() {
    let routing = ruled();
    let outside: IpAddr = "192.0.2.1".parse().unwrap();
    let name = |id: SetId| &*routing.set(id).name;
    let pick = |method: &[u8], user: Option<&[u8]>, host: &[u8], source: &str| {
        name(routing.pick_set(method, user, host, source.parse().unwrap()))
    };
    assert_eq!(
        name(routing.pick_set(b"REGISTER", Some(b"+4420"), b"example.com", outside)),
        "registrar"
    );
    assert_eq!(
        pick(b"INVITE", Some(b"+4420"), b"example.com", "10.1.1.1"),
        "uk"
    );
    assert_eq!(
        pick(b"INVITE", Some(b"+3320"), b"EXAMPLE.com", "10.1.1.1"),
        "example"
    );
    assert_eq!(
        pick(b"MESSAGE", None, b"example.COM", "192.0.2.1"),
        "example"
    );
    assert_eq!(
        pick(b"OPTIONS", None, b"example.com", "10.1.1.1"),
        "internal"
    );
    assert_eq!(
        pick(b"OPTIONS", None, b"example.com", "::ffff:10.1.1.1"),
        "internal"
    );
    assert_eq!(
        pick(b"OPTIONS", None, b"example.com", "2001:db8:1::5"),
        "internal"
    );
    // Misses: methods are case-sensitive, the prefix needs a user, the
    // domain is the whole host, the source is outside both networks.
    assert_eq!(
        pick(b"register", Some(b"44"), b"example.com.uk", "11.0.0.1"),
        "default"
    );
    assert_eq!(
        pick(b"INVITE", None, b"sub.example.com", "2001:db9::1"),
        "default"
    );
}

#[test]
fn networks_parse_strictly_and_match_their_family() {
    let cidr = |text: &str| text.parse::<Cidr>();
    let ip = |text: &str| text.parse::<IpAddr>().unwrap();
    assert!(cidr("10.0.0.0/8").unwrap().contains(ip("10.255.0.1")));
    assert!(!cidr("10.0.0.0/8").unwrap().contains(ip("11.0.0.1")));
    assert!(cidr("192.0.2.7").unwrap().contains(ip("192.0.2.7")));
    assert!(!cidr("192.0.2.7").unwrap().contains(ip("192.0.2.8")));
    assert!(cidr("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
    assert!(
        !cidr("0.0.0.0/0").unwrap().contains(ip("2001:db8::1")),
        "/0 is one family"
    );
    assert!(cidr("::/0").unwrap().contains(ip("2001:db8::1")));
    assert!(cidr("2001:db8::/127").unwrap().contains(ip("2001:db8::1")));
    assert_eq!(
        cidr("10.0.0.1/8"),
        Err(CidrError::HostBitsSet {
            network: "10.0.0.0/8".into()
        })
    );
    assert_eq!(
        cidr("10.0.0.0/33"),
        Err(CidrError::PrefixOutOfRange { max: 32 })
    );
    assert_eq!(
        cidr("10.0.0.0/+8"),
        Err(CidrError::PrefixOutOfRange { max: 32 })
    );
    assert_eq!(
        cidr("::/129"),
        Err(CidrError::PrefixOutOfRange { max: 128 })
    );
    assert_eq!(cidr("example.com/8"), Err(CidrError::NotAnAddress));
    assert_eq!(cidr("2001:db8::/32").unwrap().to_string(), "2001:db8::/32");
}

#[test]
fn a_bad_spec_reports_every_error_with_its_place() {
    let mut spec = one_set(
        Algorithm::RoundRobin,
        vec![member(0, 1, 0), member(0, WEIGHT_MAX + 1, 0)],
    );
    spec.sets.push(SetSpec {
        name: "default".into(),
        algorithm: Algorithm::Priority,
        members: Vec::new(),
    });
    spec.sets.push(SetSpec {
        name: "big".into(),
        algorithm: Algorithm::Priority,
        members: (0..65).map(|i| member(i, 1, 0)).collect(),
    });
    spec.rules = vec![
        RuleSpec {
            set: "nowhere".into(),
            ..RuleSpec::default()
        },
        RuleSpec {
            methods: Some(vec![]),
            user_prefix: Some(String::new()),
            set: "big".into(),
            ..RuleSpec::default()
        },
        RuleSpec {
            methods: Some(vec!["IN VITE".into()]),
            domain: Some(String::new()),
            source: Some(vec![]),
            set: "big".into(),
            ..RuleSpec::default()
        },
    ];
    let errors = Routing::build(&spec, None).unwrap_err();
    assert_eq!(
        errors,
        vec![
            RoutingError::DuplicateMember {
                set: 0,
                member: 1,
                uri: uri(5080)
            },
            RoutingError::WeightOutOfRange {
                set: 0,
                member: 1,
                weight: WEIGHT_MAX + 1
            },
            RoutingError::DuplicateSet {
                set: 1,
                name: "default".into()
            },
            RoutingError::EmptySet {
                set: 1,
                name: "default".into()
            },
            RoutingError::TooManyMembers {
                set: 2,
                name: "big".into(),
                count: 65
            },
            RoutingError::UnknownSet {
                rule: 0,
                name: "nowhere".into()
            },
            RoutingError::EmptyMethods { rule: 1 },
            RoutingError::EmptyUserPrefix { rule: 1 },
            RoutingError::BadMethod {
                rule: 2,
                method: "IN VITE".into()
            },
            RoutingError::EmptyDomain { rule: 2 },
            RoutingError::EmptySource { rule: 2 },
        ]
    );
    assert!(errors
        .iter()
        .all(|e| !e.fix().is_empty() && !e.to_string().is_empty()));
    let mut spec = one_set(Algorithm::RoundRobin, vec![member(0, 1, 0)]);
    spec.default_set = "main".into();
    assert_eq!(
        Routing::build(&spec, None).unwrap_err(),
        vec![RoutingError::UnknownDefaultSet {
            name: "main".into()
        }]
    );
    assert_eq!(
        Routing::build(&RoutingSpec::default(), None).unwrap_err(),
        vec![RoutingError::NoSets]
    );
}

#[test]
fn a_reload_keeps_each_backends_health_by_uri() {
    let first = weighted(Algorithm::RoundRobin, &[1, 1, 1]);
    set_state(&first, 1, State::Down);
    set_state(&first, 2, State::Draining);
    let dialog = first.set(first.default_set()).members[2]
        .health
        .dialog_started();
    first.backend(&uri(5082)).unwrap().observe(3_000);

    // Reordered, one member gone, one new, and 5082 also in a second set.
    let mut spec = one_set(
        Algorithm::LeastCalls,
        vec![member(3, 1, 0), member(2, 1, 0), member(1, 1, 0)],
    );
    spec.sets.push(SetSpec {
        name: "other".into(),
        algorithm: Algorithm::RoundRobin,
        members: vec![member(2, 5, 1)],
    });
    let second = Routing::build(&spec, Some(&first)).unwrap();
    let members = &second.set(second.default_set()).members;
    assert_eq!(
        members[0].health.state(),
        State::Up,
        "a new backend starts up"
    );
    assert_eq!(members[1].health.state(), State::Draining);
    assert_eq!(members[1].health.active_dialogs(), 1);
    assert_eq!(members[1].health.latency_ewma_us(), Some(3_000));
    assert_eq!(members[2].health.state(), State::Down);
    let other = &second.set(second.set_id("other").unwrap()).members[0];
    assert!(
        Arc::ptr_eq(&other.health, &members[1].health),
        "one backend, one health"
    );
    assert_eq!(second.backends().count(), 3);
    assert!(second.backend(&uri(5080)).is_none());
    // The dialog ends after the reload: the count the new snapshot sees drops.
    drop(dialog);
    assert_eq!(members[1].health.active_dialogs(), 0);
}

#[test]
fn a_selector_starts_over_on_a_new_snapshot() {
    let mut selector = Selector::new();
    let small = weighted(Algorithm::WeightedRoundRobin, &[1, 1]);
    let large = weighted(Algorithm::WeightedRoundRobin, &[1, 1, 1, 1]);
    let mut seen = 0u64;
    for routing in [&small, &large, &large, &large, &large] {
        match selector.select(routing, routing.default_set(), &keys(b"k"), 0, true) {
            Selection::Member(index) => seen |= 1 << index,
            other => panic!("{other:?}"),
        }
    }
    // The old snapshot's two weights would have been indexed out of bounds.
    assert_eq!(seen, 0b1111);
}

// ---- algorithms ----

#[test]
fn round_robin_takes_each_member_in_turn_and_skips_those_that_cannot_take_it() {
    let routing = weighted(Algorithm::RoundRobin, &[1, 1, 1]);
    assert_eq!(picks(&routing, 7), [0, 1, 2, 0, 1, 2, 0]);
    set_state(&routing, 1, State::Down);
    assert_eq!(picks(&routing, 4), [0, 2, 0, 2]);
}

#[test]
fn weighted_round_robin_is_exact_and_interleaved() {
    let routing = weighted(Algorithm::WeightedRoundRobin, &[3, 1]);
    let sequence = picks(&routing, 4000);
    assert_eq!(shares(&sequence, 2), [3000, 1000]);
    assert_eq!(sequence[..8], [0, 0, 1, 0, 0, 0, 1, 0]);
    // nginx's example: 5:1:1 spreads the light members out.
    let routing = weighted(Algorithm::WeightedRoundRobin, &[5, 1, 1]);
    assert_eq!(picks(&routing, 7), [0, 0, 1, 0, 2, 0, 0]);
    // Weight 0 takes no new calls.
    let routing = weighted(Algorithm::WeightedRoundRobin, &[2, 0, 1]);
    assert_eq!(shares(&picks(&routing, 300), 3), [200, 0, 100]);
}

#[test]
fn priority_uses_the_best_level_that_can_take_it_weighted_within() {
    let members = vec![
        member(0, 2, 10),
        member(1, 1, 10),
        member(2, 5, 20),
        member(3, 1, 30),
    ];
    let routing = Routing::build(&one_set(Algorithm::Priority, members), None).unwrap();
    assert_eq!(shares(&picks(&routing, 300), 4), [200, 100, 0, 0]);
    set_state(&routing, 0, State::Draining);
    assert_eq!(shares(&picks(&routing, 30), 4), [0, 30, 0, 0]);
    set_state(&routing, 1, State::Down);
    assert_eq!(shares(&picks(&routing, 30), 4), [0, 0, 30, 0]);
    // A failover inside the transaction walks down the levels.
    let mut selector = Selector::new();
    let set = routing.default_set();
    assert_eq!(
        selector.select(&routing, set, &keys(b"x"), 0b0100, true),
        Selection::Member(3)
    );
}

#[test]
fn least_calls_picks_the_fewest_dialogs_per_weight_ties_in_turn() {
    let routing = weighted(Algorithm::LeastCalls, &[1, 1, 1]);
    assert_eq!(picks(&routing, 4), [0, 1, 2, 0], "ties go round robin");
    let members = &routing.set(routing.default_set()).members;
    let _dialogs: Vec<ActiveDialog> = [0, 0, 2]
        .iter()
        .map(|&i: &usize| members[i].health.dialog_started())
        .collect();
    assert_eq!(picks(&routing, 3), [1, 1, 1]);
    let routing = weighted(Algorithm::LeastCalls, &[2, 1]);
    let members = &routing.set(routing.default_set()).members;
    let mut dialogs: Vec<ActiveDialog> = vec![
        members[0].health.dialog_started(),
        members[1].health.dialog_started(),
    ];
    // 1 call on weight 2 is lighter than 1 call on weight 1.
    assert_eq!(picks(&routing, 2), [0, 0]);
    dialogs.push(members[0].health.dialog_started());
    dialogs.push(members[0].health.dialog_started());
    // 3 on weight 2 is heavier than 1 on weight 1.
    assert_eq!(picks(&routing, 1), [1]);
}

#[test]
fn lowest_latency_measures_new_members_first_then_takes_the_fastest() {
    let routing = weighted(Algorithm::LowestLatency, &[1, 1, 1]);
    let health = |i: usize| &routing.set(routing.default_set()).members[i].health;
    health(0).observe(5_000);
    health(1).observe(2_000);
    assert_eq!(picks(&routing, 2), [2, 2], "the unmeasured member first");
    health(2).observe(9_000);
    assert_eq!(picks(&routing, 2), [1, 1]);
    // Member 1 slows down (2 ms, then two 20 ms trips: about 6.2 ms).
    health(1).observe(20_000);
    health(1).observe(20_000);
    assert_eq!(picks(&routing, 1), [0]);
}

#[test]
fn each_hash_takes_its_key_and_falls_back_to_the_call_id() {
    let by_call_id = weighted(Algorithm::CallIdHash, &[1, 1, 1, 1]);
    let by_from = weighted(Algorithm::FromUserHash, &[1, 1, 1, 1]);
    let by_ruri = weighted(Algorithm::RuriUserHash, &[1, 1, 1, 1]);
    let mut selector = Selector::new();
    let mut pick = |routing: &Routing, keys: Keys<'_>| {
        selector.select(routing, routing.default_set(), &keys, 0, true)
    };
    let mut from_members = 0u64;
    for n in 0..64 {
        let call_id = format!("c{n}");
        let call = Keys {
            call_id: call_id.as_bytes(),
            from_user: Some(b"alice"),
            ruri_user: Some(b"bob"),
        };
        let alice = pick(&by_from, call);
        assert_eq!(
            alice,
            pick(
                &by_ruri,
                Keys {
                    ruri_user: Some(b"alice"),
                    ..call
                }
            ),
            "same key, same member"
        );
        assert_eq!(
            pick(
                &by_from,
                Keys {
                    call_id: b"other",
                    ..call
                }
            ),
            alice
        );
        assert_eq!(
            pick(
                &by_from,
                Keys {
                    from_user: None,
                    ..call
                }
            ),
            pick(&by_call_id, call),
            "no From user: the Call-ID"
        );
        let from_user = format!("user{n}");
        if let Selection::Member(i) = pick(
            &by_from,
            Keys {
                from_user: Some(from_user.as_bytes()),
                ..call
            },
        ) {
            from_members |= 1 << i;
        }
    }
    assert_eq!(from_members, 0b1111, "different users spread");
}

#[test]
fn the_hash_spreads_keys_by_weight() {
    let routing = weighted(Algorithm::CallIdHash, &[1, 1, 1, 1]);
    for share in shares(&picks(&routing, 40_000), 4) {
        assert!((9_400..=10_600).contains(&share), "{share}");
    }
    let routing = weighted(Algorithm::CallIdHash, &[1, 3]);
    let heavy = shares(&picks(&routing, 40_000), 2)[1];
    assert!((29_400..=30_600).contains(&heavy), "{heavy}");
}

#[test]
fn the_same_call_id_goes_to_the_same_member_from_any_shard() {
    let routing = weighted(Algorithm::CallIdHash, &[1, 2, 3]);
    assert_eq!(picks(&routing, 100), picks(&routing, 100));
}

// ---- states, tries ----

#[test]
fn draining_and_probing_take_requests_inside_dialogs_only() {
    for state in [State::Draining, State::Probing] {
        let routing = weighted(Algorithm::CallIdHash, &[1, 1, 1]);
        let mut selector = Selector::new();
        let set = routing.default_set();
        let winners: Vec<Selection> = (0..200)
            .map(|n| selector.select(&routing, set, &keys(format!("k{n}").as_bytes()), 0, false))
            .collect();
        set_state(&routing, 0, state);
        let mut moved = 0;
        for (n, before) in winners.iter().enumerate() {
            let key = format!("k{n}");
            assert_eq!(
                selector.select(&routing, set, &keys(key.as_bytes()), 0, false),
                *before,
                "{state:?}"
            );
            let new_dialog = selector.select(&routing, set, &keys(key.as_bytes()), 0, true);
            assert_ne!(new_dialog, Selection::Member(0), "{state:?}");
            moved += usize::from(new_dialog != *before);
        }
        assert!(moved > 0, "member 0 won some keys");
    }
}

#[test]
fn a_set_that_cannot_take_a_new_dialog_is_all_down() {
    let routing = weighted(Algorithm::RoundRobin, &[1, 1]);
    let mut selector = Selector::new();
    let set = routing.default_set();
    set_state(&routing, 0, State::Down);
    set_state(&routing, 1, State::Draining);
    assert_eq!(
        selector.select(&routing, set, &keys(b"k"), 0, true),
        Selection::AllDown
    );
    assert_eq!(
        selector.select(&routing, set, &keys(b"k"), 0, false),
        Selection::Member(1)
    );
    set_state(&routing, 1, State::Down);
    assert_eq!(
        selector.select(&routing, set, &keys(b"k"), 0, false),
        Selection::AllDown
    );
    // Weight 0 everywhere: nothing new, but strays still land, one each in turn.
    let routing = weighted(Algorithm::WeightedRoundRobin, &[0, 0]);
    let set = routing.default_set();
    assert_eq!(
        selector.select(&routing, set, &keys(b"k"), 0, true),
        Selection::AllDown
    );
    assert_eq!(
        selector.select(&routing, set, &keys(b"k"), 0, false),
        Selection::Member(0)
    );
    assert_eq!(
        selector.select(&routing, set, &keys(b"k"), 0, false),
        Selection::Member(1)
    );
}

#[test]
fn a_transaction_tries_each_member_once_then_is_exhausted() {
    for algorithm in Algorithm::NAMES
        .iter()
        .filter_map(|n| Algorithm::from_name(n))
    {
        let routing = weighted(algorithm, &[1, 2, 3, 1]);
        set_state(&routing, 3, State::Down);
        let mut selector = Selector::new();
        let mut tried = 0u64;
        for _ in 0..3 {
            match selector.select(&routing, routing.default_set(), &keys(b"call"), tried, true) {
                Selection::Member(index) => {
                    assert_eq!(tried & 1 << index, 0, "{algorithm:?} picked {index} twice");
                    tried |= 1 << index;
                }
                other => panic!("{algorithm:?}: {other:?}"),
            }
        }
        assert_eq!(tried, 0b0111, "{algorithm:?}");
        assert_eq!(
            selector.select(&routing, routing.default_set(), &keys(b"call"), tried, true),
            Selection::Exhausted,
            "{algorithm:?}: eligible members exist, all tried"
        );
    }
}

#[test]
fn algorithm_names_round_trip() {
    for name in Algorithm::NAMES {
        assert_eq!(Algorithm::from_name(name).map(Algorithm::name), Some(name));
    }
    assert_eq!(Algorithm::from_name("random"), None);
}

// ---- rendezvous stability ----

/// The URI each key goes to, for keys 0..count.
fn winners(routing: &Routing, count: usize) -> Vec<Box<str>> {
    let set = routing.set(routing.default_set());
    picks(routing, count)
        .into_iter()
        .map(|i| set.members[i].uri.clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Downing one member moves only the keys it had; bringing it back
    /// moves them back. Removing it from the configuration, or reordering
    /// the rest, does the same.
    #[test]
    fn rendezvous_moves_only_the_share_of_the_member_that_leaves(
        weights in prop::collection::vec(1u32..=10, 2..=12),
        leaving in any::<prop::sample::Index>(),
        algorithm in prop::sample::select(vec![Algorithm::CallIdHash, Algorithm::FromUserHash, Algorithm::RuriUserHash]),
    ) {
        let leaving = leaving.index(weights.len());
        let members: Vec<MemberSpec> = weights.iter().enumerate().map(|(i, &w)| member(i as u16, w, 0)).collect();
        let routing = Routing::build(&one_set(algorithm, members.clone()), None).unwrap();
        let leaving_uri = routing.set(routing.default_set()).members[leaving].uri.clone();
        let before = winners(&routing, 300);

        set_state(&routing, leaving, State::Down);
        let down = winners(&routing, 300);
        for (b, d) in before.iter().zip(&down) {
            if *b == leaving_uri { prop_assert_ne!(d, &leaving_uri); } else { prop_assert_eq!(d, b); }
        }
        set_state(&routing, leaving, State::Up);
        prop_assert_eq!(&winners(&routing, 300), &before);

        let mut rest = members;
        rest.remove(leaving);
        rest.reverse();
        let removed = Routing::build(&one_set(algorithm, rest), None).unwrap();
        prop_assert_eq!(winners(&removed, 300), down);
    }
}

#[test]
fn a_failover_does_not_move_round_robins_turn() {
    let routing = weighted(Algorithm::RoundRobin, &[1, 1, 1]);
    let set = routing.default_set();
    let mut selector = Selector::new();
    let pick = |selector: &mut Selector, tried: u64| match selector.select(
        &routing,
        set,
        &keys(b"c"),
        tried,
        true,
    ) {
        Selection::Member(i) => i,
        other => panic!("{other:?}"),
    };
    assert_eq!(pick(&mut selector, 0), 0);
    // Member 0 fails: the failover takes the next one...
    assert_eq!(pick(&mut selector, 1 << 0), 1);
    assert_eq!(pick(&mut selector, 1 << 0 | 1 << 1), 2);
    // ...and new requests go on in turn from where they were.
    assert_eq!(pick(&mut selector, 0), 1);
    assert_eq!(pick(&mut selector, 0), 2);
    assert_eq!(pick(&mut selector, 0), 0);
}
