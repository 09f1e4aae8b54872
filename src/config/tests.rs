use std::net::SocketAddr;

use super::*;
use crate::balance;
use crate::guard::{self, FloodConfig};

/// The addresses of the default set's members: what `[backends]` (or the
/// `--backend`s) lists.
fn default_backends(config: &AppConfig) -> Vec<SocketAddr> {
    let routing = &config.shard.routing;
    let set = routing.set(routing.default_set());
    set.members.iter().map(|m| m.address).collect()
}

const EXAMPLE: &str = include_str!("../../examples/sipshard.toml");

#[test]
fn the_shipped_example_is_valid() {
    let config = parse(EXAMPLE).unwrap();
    assert_eq!(config.shard.listen, "127.0.0.1:5060".parse().unwrap());
    assert_eq!(default_backends(&config).len(), 2);
    assert_eq!(config.shard.shards, 2);
    assert!(config.shard.guard.flood.enabled, "turned on as an example");
    assert_eq!(
        config.shard.guard.flood,
        FloodConfig {
            enabled: true,
            ..FloodConfig::default()
        },
        "with the default thresholds"
    );
    assert!(config.admin.acl.permits("::1".parse().unwrap()));
    assert!(!config.admin.acl.permits("192.0.2.1".parse().unwrap()));
    assert!(config.shard.guard.sip.is_empty());
}

#[test]
fn every_problem_has_its_line_and_a_fix() {
    let text = "listen = \"0.0.0.0:5060\"\nshards = 0\n[backends]\nalgorithm = \"random\"\nmembers = [\"sip:pbx.example.com\", \"sip:10.0.0.1:5080\"]\n";
    let problems = parse(text).unwrap_err();
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![1, 2, 4, 5], "{problems:#?}");
    assert!(problems.iter().all(|p| !p.fix.is_empty()));
    assert!(problems[3].to_string().contains("not an IP address"));
}

#[test]
fn the_admin_address_is_checked_with_its_line() {
    let backends = "[backends]\nmembers = [\"sip:10.0.0.1\"]\n";
    let config = parse(&format!(
        "listen = \"127.0.0.1:5060\"\nadmin = \"127.0.0.1:9090\"\n{backends}"
    ))
    .unwrap();
    assert_eq!(
        config.admin.address,
        Some("127.0.0.1:9090".parse().unwrap())
    );
    let config = parse(&format!("listen = \"127.0.0.1:5060\"\n{backends}")).unwrap();
    assert_eq!(config.admin.address, None, "off unless asked for");
    let problems = parse(&format!(
        "listen = \"127.0.0.1:5060\"\nadmin = \"localhost\"\n{backends}"
    ))
    .unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].line, 2);
    assert!(problems[0].what.contains("admin"), "{problems:?}");
}

#[test]
fn the_handoff_queue_has_a_byte_bound_that_fits_a_datagram() {
    let backends = "[backends]\nmembers = [\"sip:10.0.0.1\"]\n";
    let listen = "listen = \"127.0.0.1:5060\"\n";
    let config = parse(&format!("{listen}{backends}")).unwrap();
    assert_eq!(
        config.shard.handoff_queue_bytes,
        shard::HANDOFF_QUEUE_BYTES_DEFAULT
    );
    let config = parse(&format!("{listen}handoff_queue_bytes = 65536\n{backends}")).unwrap();
    assert_eq!(config.shard.handoff_queue_bytes, 65536);
    let problems = parse(&format!("{listen}handoff_queue_bytes = 65535\n{backends}")).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].line, 2);
    assert!(problems[0].fix.contains("64 KiB"), "{problems:?}");
}

#[test]
fn syntax_and_unknown_keys_are_reported_with_their_line() {
    let problems = parse(
        "listen = \"127.0.0.1:5060\"\nshardz = 2\n[backends]\nmembers = [\"sip:10.0.0.1\"]\n",
    )
    .unwrap_err();
    assert_eq!(problems[0].line, 2, "{problems:?}");
    assert!(problems[0].what.contains("shardz"), "{problems:?}");
    let problems = parse("listen = \n").unwrap_err();
    assert_eq!(problems[0].line, 1);
}

#[test]
fn transaction_values_are_checked_with_their_line() {
    let config = parse(EXAMPLE).unwrap();
    assert_eq!(
        config.shard.txn,
        TxnConfig::default(),
        "the example spells out the defaults"
    );
    let text = "listen = \"127.0.0.1:5060\"\n[transactions]\nt1_ms = 0\nfailover_codes = [200]\ntry_ms = 700\n[backends]\nmembers = [\"sip:127.0.0.1:5080\"]\n";
    let problems = parse(text).unwrap_err();
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![3, 4], "{problems:#?}");
    let good = text.replace("t1_ms = 0\nfailover_codes = [200]\n", "");
    assert_eq!(parse(&good).unwrap().shard.txn.timers.try_ms, 700);
}

#[test]
fn overload_values_are_checked_with_their_line() {
    let config = parse(EXAMPLE).unwrap();
    assert_eq!(config.shard.overload, OverloadConfig::default());
    let text = "listen = \"127.0.0.1:5060\"\n[overload]\nqueue_high_pct = 20\nqueue_low_pct = 30\nshed_in_kernel = false\n[backends]\nmembers = [\"sip:127.0.0.1:5080\"]\n";
    let problems = parse(text).unwrap_err();
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![4], "{problems:#?}");
    let good = parse(&text.replace("queue_low_pct = 30", "queue_low_pct = 10")).unwrap();
    assert!(!good.shard.overload.shed_in_kernel);
    assert_eq!(good.shard.overload.queue_high, 0.2);
}

#[test]
fn the_example_routes_register_to_its_own_set() {
    let config = parse_with_routing(EXAMPLE, None).unwrap();
    let routing = &config.shard.routing;
    assert_eq!(routing.sets().len(), 2);
    let source = "192.0.2.1".parse().unwrap();
    let register =
        routing.set(routing.pick_set(b"REGISTER", Some(b"alice"), b"example.com", source));
    assert_eq!(&*register.name, "registrar");
    assert_eq!(register.algorithm, balance::Algorithm::RuriUserHash);
    assert_eq!(
        register.members[1].attrs.get("zone").map(String::as_str),
        Some("b")
    );
    let invite = routing.set(routing.pick_set(b"INVITE", Some(b"alice"), b"example.com", source));
    assert_eq!(&*invite.name, "default");
    let addresses: Vec<SocketAddr> = invite.members.iter().map(|m| m.address).collect();
    assert_eq!(
        addresses,
        default_backends(&config),
        "[backends] is the set \"default\""
    );
}

#[test]
fn set_and_route_problems_have_their_line_and_a_fix() {
    let text = r#"listen = "127.0.0.1:5060"
default_set = "main"
[[sets]]
name = "a"
algorithm = "fastest"
members = [
  { uri = "sip:10.0.0.1:5060", weight = 20000 },
  { uri = "sip:10.0.0.1:5060" },
  { uri = "sip:pbx.example.com" },
]
[[sets]]
name = "a"
members = []
[[routes]]
methods = ["INVITE"]
source = ["10.0.0.1/8", "2001:db8::/32"]
set = "b"
[[routes]]
domain = ""
set = "a"
"#;
    let problems = parse(text).unwrap_err();
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    // Field by field first, then the sets and routes as a whole.
    assert_eq!(lines, [5, 9, 16, 7, 8, 12, 13, 17, 19, 2], "{problems:#?}");
    assert!(problems.iter().all(|p| !p.fix.is_empty()));
    assert!(problems[0].fix.contains("least-calls"), "{}", problems[0]);
    assert!(problems[2].what.contains("10.0.0.0/8"), "{}", problems[2]);
    assert!(
        problems[3].what.contains("weight = 20000"),
        "{}",
        problems[3]
    );
    assert!(problems[7].what.contains("set \"b\""), "{}", problems[7]);
}

#[test]
fn a_set_holds_at_most_64_members() {
    let members: Vec<String> = (0..65)
        .map(|i| format!("  {{ uri = \"sip:10.0.0.1:{}\" }},\n", 5000 + i))
        .collect();
    let text = format!(
        "listen = \"127.0.0.1:5060\"\n[[sets]]\nname = \"default\"\nmembers = [\n{}]\n",
        members.concat()
    );
    let problems = parse(&text).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].line, 4);
    assert!(problems[0].what.contains("65 members"), "{}", problems[0]);
    let fits = text.replace("  { uri = \"sip:10.0.0.1:5064\" },\n", "");
    assert_eq!(default_backends(&parse(&fits).unwrap()).len(), 64);
}

#[test]
fn sets_without_backends_and_the_default_set() {
    let text = "listen = \"127.0.0.1:5060\"\ndefault_set = \"pbx\"\n[[sets]]\nname = \"pbx\"\nalgorithm = \"call-id-hash\"\nmembers = [{ uri = \"sip:10.0.0.1\" }, { uri = \"sip:10.0.0.2\", weight = 0 }]\n";
    let config = parse(text).unwrap();
    assert_eq!(default_backends(&config).len(), 2);
    let routing = &config.shard.routing;
    assert_eq!(
        routing.set(routing.default_set()).algorithm,
        balance::Algorithm::CallIdHash
    );
    let problems = parse("listen = \"127.0.0.1:5060\"\n").unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].line, 0);
    assert!(problems[0].fix.contains("[[sets]]"), "{}", problems[0]);
    // [backends] is the set "default": a second one is a duplicate.
    let twice = "listen = \"127.0.0.1:5060\"\n[backends]\nmembers = [\"sip:10.0.0.1\"]\n[[sets]]\nname = \"default\"\nmembers = [{ uri = \"sip:10.0.0.2\" }]\n";
    let problems = parse(twice).unwrap_err();
    assert_eq!(
        problems.iter().map(|p| p.line).collect::<Vec<_>>(),
        [5],
        "{problems:#?}"
    );
    assert!(problems[0].fix.contains("[backends]"), "{}", problems[0]);
    let empty = "listen = \"127.0.0.1:5060\"\n[backends]\nmembers = []\n";
    let problems = parse(empty).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].what, "backends.members is empty");
}

#[test]
fn a_reload_keeps_the_state_of_the_backends_it_keeps() {
    let running = parse_with_routing(EXAMPLE, None).unwrap().shard.routing;
    let kept = running.backend("sip:127.0.0.1:5081").unwrap();
    kept.set_state(balance::State::Draining);
    let edited = EXAMPLE.replace(
        "members = [\"sip:127.0.0.1:5080\", \"sip:127.0.0.1:5081\"]",
        "members = [\"sip:127.0.0.1:5081\"]",
    );
    assert_ne!(edited, EXAMPLE);
    let reloaded = parse_with_routing(&edited, Some(&*running))
        .unwrap()
        .shard
        .routing;
    let default = reloaded.set(reloaded.default_set());
    assert_eq!(default.members.len(), 1);
    assert_eq!(default.members[0].health.state(), balance::State::Draining);
}

#[test]
fn acl_and_flood_are_read_with_their_defaults() {
    let base = "listen = \"127.0.0.1:5060\"\n[backends]\nmembers = [\"sip:10.0.0.1\"]\n";
    let config = parse(base).unwrap();
    assert_eq!(config.shard.guard, GuardConfig::default());
    assert_eq!(config.admin.acl, Acl::default());
    assert!(
        !config.shard.guard.sip_active(),
        "nothing to check unless asked"
    );
    let text = format!(
        "{base}[acl]\nsip_allow = [\"10.0.0.0/8\", \"2001:db8::/32\"]\nsip_deny = [\"10.1.2.3/32\"]\n\
         admin_allow = [\"127.0.0.1\"]\n[flood]\nenabled = true\nrequests_per_second = 50\n\
         burst = 100\nban_s = 2\nsources_max = 1024\n"
    );
    let config = parse(&text).unwrap();
    let guard = &config.shard.guard;
    assert!(guard.sip.permits("10.9.9.9".parse().unwrap()));
    assert!(!guard.sip.permits("10.1.2.3".parse().unwrap()));
    assert!(guard.sip.permits("2001:db8::7".parse().unwrap()));
    assert!(!guard.sip.permits("192.0.2.1".parse().unwrap()));
    assert!(config.admin.acl.permits("127.0.0.1".parse().unwrap()));
    assert!(!config.admin.acl.permits("127.0.0.2".parse().unwrap()));
    assert_eq!(
        guard.flood,
        FloodConfig {
            enabled: true,
            requests_per_second: 50,
            burst: 100,
            ban_s: 2,
            sources_max: 1024,
        }
    );
}

#[test]
fn acl_and_flood_problems_have_their_line_and_a_fix() {
    let text = "listen = \"127.0.0.1:5060\"\n[backends]\nmembers = [\"sip:10.0.0.1\"]\n\
                [acl]\nsip_allow = [\"10.0.0.0/8\",\n  \"10.0.0.1/8\"]\nadmin_deny = [\"localhost\"]\n\
                [flood]\nban_s = 0\nrequests_per_second = 0\nsources_max = 4\n";
    let problems = parse(text).unwrap_err();
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [6, 7, 10, 9, 11], "{problems:#?}");
    assert!(problems.iter().all(|p| !p.fix.is_empty()));
    assert!(
        problems[0].what.contains("acl.sip_allow \"10.0.0.1/8\"")
            && problems[0].what.contains("10.0.0.0/8"),
        "{}",
        problems[0]
    );
    assert!(
        problems[1].what.contains("acl.admin_deny"),
        "{}",
        problems[1]
    );
    assert!(
        problems[3].what.contains("flood.ban_s = 0"),
        "{}",
        problems[3]
    );
    assert!(problems[3].fix.contains("1..=86400"), "{}", problems[3]);
    let too_many: Vec<String> = (0..=guard::NETWORKS_MAX)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    let text = format!(
        "listen = \"127.0.0.1:5060\"\n[backends]\nmembers = [\"sip:10.0.0.1\"]\n[acl]\nsip_deny = [{}]\n",
        too_many.join(", ")
    );
    let problems = parse(&text).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].line, 5);
    assert!(
        problems[0].what.contains("1025 networks"),
        "{}",
        problems[0]
    );
}

#[test]
fn backend_forms() {
    let udp = |a: &str| Ok(Peer::udp(a.parse().unwrap()));
    let on = |t, a: &str| Ok(Peer::new(t, a.parse().unwrap()));
    assert_eq!(backend_peer("sip:10.0.0.1"), udp("10.0.0.1:5060"));
    assert_eq!(
        backend_peer("sip:[2001:db8::1]:5070"),
        udp("[2001:db8::1]:5070")
    );
    assert_eq!(backend_peer("10.0.0.2:5080"), udp("10.0.0.2:5080"));
    assert_eq!(
        backend_peer("sip:10.0.0.1:5070;transport=TCP"),
        on(Transport::Tcp, "10.0.0.1:5070")
    );
    assert_eq!(
        backend_peer("sip:10.0.0.1;transport=tls"),
        on(Transport::Tls, "10.0.0.1:5060")
    );
    assert_eq!(
        backend_peer("sips:10.0.0.1"),
        on(Transport::Tls, "10.0.0.1:5061")
    );
    assert!(backend_peer("sips:10.0.0.1;transport=tcp")
        .unwrap_err()
        .contains("sips needs TLS"));
    assert!(backend_peer("sip:10.0.0.1;transport=sctp")
        .unwrap_err()
        .contains("transport=sctp"));
    assert!(backend_peer("sip:pbx.example.com").is_err());
}

#[test]
fn a_file_and_the_command_line_start_from_one_default() {
    let defaults = AppConfig::default();
    let text = "listen = \"127.0.0.1:5060\"\n[backends]\nmembers = [\"sip:127.0.0.1:5080\", \"sip:127.0.0.1:5081\"]\n";
    let config = parse(text).unwrap();
    let (file, cli) = (&config.shard, &defaults.shard);
    assert_eq!(file.listen, cli.listen);
    assert_eq!(default_backends(&config), default_backends(&defaults));
    let algorithm = |c: &AppConfig| c.shard.routing.set(c.shard.routing.default_set()).algorithm;
    assert_eq!(algorithm(&config), algorithm(&defaults));
    assert_eq!(algorithm(&defaults), balance::Algorithm::RoundRobin);
    assert_eq!(
        (file.shards, &file.cpus, &file.limits, &file.txn),
        (cli.shards, &cli.cpus, &cli.limits, &cli.txn)
    );
    assert_eq!(
        (file.handoff_queue_len, file.handoff_queue_bytes, file.io),
        (cli.handoff_queue_len, cli.handoff_queue_bytes, cli.io)
    );
    assert_eq!(
        (
            file.socket_receive_buffer_bytes,
            file.socket_send_buffer_bytes
        ),
        (
            cli.socket_receive_buffer_bytes,
            cli.socket_send_buffer_bytes
        )
    );
    assert_eq!(
        (file.shard_port_base, file.steering),
        (cli.shard_port_base, cli.steering)
    );
    assert_eq!((&file.overload, &file.guard), (&cli.overload, &cli.guard));
    assert_eq!(
        (&config.probes, &config.admin),
        (&defaults.probes, &defaults.admin)
    );
}

#[test]
fn the_command_line_routes_to_its_backends_with_its_algorithm() {
    let backend = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut config = AppConfig::default();
    config
        .route_to(None, Some(balance::Algorithm::CallIdHash))
        .unwrap();
    assert_eq!(default_backends(&config), [backend(5080), backend(5081)]);
    config
        .route_to(Some(vec![backend(6000).into()]), None)
        .unwrap();
    assert_eq!(default_backends(&config), [backend(6000)]);
    let routing = &config.shard.routing;
    assert_eq!(
        routing.set(routing.default_set()).algorithm,
        balance::Algorithm::CallIdHash,
        "the algorithm stays when only the backends change"
    );
    assert!(config.route_to(Some(Vec::new()), None).is_err());
}

#[test]
fn listeners_by_transport() {
    let udp: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let tcp: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let tls: SocketAddr = "127.0.0.1:5061".parse().unwrap();
    let of = |udp, tcp, tls| {
        Ok(Listeners {
            udp,
            tcp,
            tls,
            ws: None,
            wss: None,
        })
    };
    assert_eq!(listeners(&["127.0.0.1:5060"]), of(udp, None, None));
    assert_eq!(
        listeners(&["tcp:127.0.0.1:5070", "udp:127.0.0.1:5060"]),
        of(udp, Some(tcp), None)
    );
    assert_eq!(
        listeners(&["127.0.0.1:5060", "tls:127.0.0.1:5061"]),
        of(udp, None, Some(tls))
    );
    // UDP is always served: on the first listener's address without one.
    assert_eq!(listeners(&["tcp:127.0.0.1:5070"]), of(tcp, Some(tcp), None));
    let refused = |list: &[&str]| listeners(list).unwrap_err().what;
    assert!(refused(&["tcp:0.0.0.0:5060"]).contains("wildcard"));
    assert!(refused(&["127.0.0.1:5060", "tls:[::1]:5061"]).contains("two address families"));
    assert!(refused(&["tcp:127.0.0.1:1", "tcp:127.0.0.1:2"]).contains("a second tcp listener"));
    assert!(refused(&["sctp:127.0.0.1:1"]).contains("not udp, tcp, tls, ws or wss"));
    assert!(refused(&["127.0.0.1:5060", "tcp:[::1]:5060"]).contains("two address families"));
}

#[test]
fn a_file_lists_its_listeners_and_tcp_backends_need_one() {
    let text = "listen = [\"127.0.0.1:5060\", \"tcp:127.0.0.1:5060\"]\n[streams]\nidle_timeout_s = 60\n[backends]\nmembers = [\"sip:127.0.0.1:5080;transport=tcp\"]\n";
    let config = parse(text).unwrap();
    assert_eq!(
        config.shard.tcp_listen,
        Some("127.0.0.1:5060".parse().unwrap())
    );
    assert_eq!(
        config.shard.streams.idle_timeout,
        std::time::Duration::from_secs(60)
    );
    let member = &config.shard.routing.sets()[0].members[0];
    assert_eq!(member.transport, Transport::Tcp);
    let udp_only = text.replace(", \"tcp:127.0.0.1:5060\"", "");
    let problems = parse(&udp_only).unwrap_err();
    assert!(
        problems[0].what.contains("nothing listens on TCP"),
        "{}",
        problems[0]
    );
    assert_eq!(problems[0].line, 1);
    let v6 = text.replace("sip:127.0.0.1:5080", "sip:[::1]:5080");
    assert!(parse(&v6).unwrap_err()[0].what.contains("family"));
    let tls = text.replace("transport=tcp", "transport=tls");
    assert!(parse(&tls).unwrap_err()[0]
        .what
        .contains("nothing listens on TLS"));
    let bad = text.replace("idle_timeout_s = 60", "idle_timeout_s = 0");
    assert!(parse(&bad).unwrap_err()[0]
        .what
        .contains("streams.idle_timeout_s"));
}

#[test]
fn a_tls_listener_needs_a_certificate_and_its_key() {
    let pki = crate::tls::test_pki::Pki::make("config-tls");
    let base = "listen = [\"127.0.0.1:5060\", \"tls:127.0.0.1:5061\"]\n[backends]\nmembers = [\"sips:127.0.0.1:5081\"]\n";
    let problems = parse(base).unwrap_err();
    assert!(
        problems[0].what.contains("needs a certificate"),
        "{}",
        problems[0]
    );
    assert!(problems[0].fix.contains("--tls-cert"), "{}", problems[0]);
    let with = |key: &std::path::Path| {
        format!(
            "{base}[tls]\ncert = {:?}\nkey = {:?}\nbackend_ca = {:?}\n",
            pki.cert, key, pki.ca
        )
    };
    let config = parse(&with(&pki.key)).unwrap();
    assert_eq!(
        config.shard.tls_listen,
        Some("127.0.0.1:5061".parse().unwrap())
    );
    let context = config.shard.tls.expect("TLS built");
    assert!(context.server.is_some());
    assert_eq!(
        config.shard.routing.sets()[0].members[0].transport,
        Transport::Tls
    );
    let problems = parse(&with(&pki.other_key)).unwrap_err();
    assert!(problems[0].what.starts_with("tls: "), "{}", problems[0]);
    assert!(
        problems[0].fix.contains("key of the chain"),
        "{}",
        problems[0]
    );
    // No tls: listener and no TLS backend: nothing is read.
    let plain = "listen = \"127.0.0.1:5060\"\n[tls]\ncert = \"/nonexistent\"\n[backends]\nmembers = [\"sip:127.0.0.1:5081\"]\n";
    assert!(parse(plain).unwrap().shard.tls.is_none());
}
