//! The control plane: what runs beside the shards and never on the packet
//! path. Reloads (SIGHUP or the admin API), the health probes, and the
//! admin HTTP API with the Prometheus metrics it serves.

pub mod admin;
pub mod metrics;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::balance::probe::{Event, ProbeConfig, ProbeResult, Prober, SendProbe};
use crate::balance::{Routing, State};
use crate::config;
use crate::shard::Handle;
use crate::sip::Transport;
use crate::tls::{TlsContext, TlsError, TlsFiles};

/// What the control thread(s) share: the shards' handle, the file to
/// reload, and the probes' last results.
pub struct Control {
    pub shards: Handle,
    config_path: Option<PathBuf>,
    /// One reload at a time (SIGHUP and the API may race).
    reloading: Mutex<()>,
    /// The last probe result of each backend, by URI, for the admin API.
    last_probe: Mutex<BTreeMap<String, ProbeResult>>,
    /// Backend state changes so far, by the state entered.
    transitions: [AtomicU64; 4],
    /// Probes that ended, by backend: [answered alive, answered with a
    /// code that fails, timed out].
    probes: Mutex<BTreeMap<String, [u64; 3]>>,
    /// The `[probes]` settings; a reload replaces them.
    probe_config: Mutex<ProbeConfig>,
    /// Admin API requests the admin ACL refused.
    admin_denied: AtomicU64,
    /// The certificate files, read again on SIGHUP, and whether a `tls:`
    /// listener needs them (a restart changes either).
    tls: Mutex<(TlsFiles, bool)>,
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug)]
pub enum ReloadError {
    /// Started without `--config`: there is no file to read again.
    NoFile,
    Read(String),
    /// Each problem with its line and a fix.
    Invalid(Vec<String>),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::NoFile => write!(f, "started without --config: nothing to reload"),
            ReloadError::Read(e) => write!(f, "cannot read the configuration: {e}"),
            ReloadError::Invalid(problems) => write!(f, "{}", problems.join("; ")),
        }
    }
}

impl Control {
    pub fn new(shards: Handle, config_path: Option<PathBuf>) -> Arc<Control> {
        Arc::new(Control {
            shards,
            config_path,
            reloading: Mutex::new(()),
            last_probe: Mutex::new(BTreeMap::new()),
            transitions: Default::default(),
            probes: Mutex::new(BTreeMap::new()),
            probe_config: Mutex::new(ProbeConfig::default()),
            admin_denied: AtomicU64::new(0),
            tls: Mutex::new((TlsFiles::default(), false)),
        })
    }

    /// The certificate files SIGHUP reads again, and whether a `tls:`
    /// listener serves them.
    pub fn set_tls_files(&self, files: TlsFiles, listens: bool) {
        if let Ok(mut tls) = self.tls.lock() {
            *tls = (files, listens);
        }
    }

    /// Reads the certificates and CAs again and hands them to the shards:
    /// new connections use them, established ones keep their sessions.
    /// `Ok(false)` when nothing uses TLS; on an error the running
    /// certificates stay.
    pub fn reload_tls(&self) -> Result<bool, TlsError> {
        let (files, listens) = match self.tls.lock() {
            Ok(tls) => tls.clone(),
            Err(_) => return Ok(false),
        };
        let routing = self.shards.routing();
        let backends = routing.sets().iter().any(|set| {
            set.members
                .iter()
                .any(|member| member.transport == Transport::Tls)
        });
        if !listens && !backends {
            return Ok(false);
        }
        let context = TlsContext::load(&files, listens)?;
        self.shards.set_tls(Arc::new(context));
        Ok(true)
    }

    /// Reads the configuration file again and hands its routing (sets,
    /// members, rules) to the shards and its `[probes]` to the prober;
    /// backends it keeps keep their state. An invalid file changes
    /// nothing. Other settings (listen address, shards, timers, limits,
    /// the admin address) take a restart.
    pub fn reload(&self) -> Result<usize, ReloadError> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        let text = std::fs::read_to_string(path).map_err(|e| ReloadError::Read(e.to_string()))?;
        let current = self.shards.routing();
        let settings = config::parse_with_routing(&text, Some(&current)).map_err(|problems| {
            ReloadError::Invalid(problems.iter().map(|p| p.to_string()).collect())
        })?;
        let backends = settings.shard.routing.backends().count();
        self.shards.set_routing(settings.shard.routing);
        if let Ok(mut probes) = self.probe_config.lock() {
            *probes = settings.probes;
        }
        Ok(backends)
    }

    /// Counts a backend's change of state (probes or admin).
    pub fn transition(&self, to: State) {
        self.transitions[to as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an admin API request refused by the admin ACL.
    pub fn admin_denied(&self) {
        self.admin_denied.fetch_add(1, Ordering::Relaxed);
    }

    pub fn admin_denied_count(&self) -> u64 {
        self.admin_denied.load(Ordering::Relaxed)
    }

    pub fn transitions(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.transitions[i].load(Ordering::Relaxed))
    }

    /// Probe outcomes so far, by backend: [alive, failed answer, timeout].
    pub fn probe_counts(&self) -> BTreeMap<String, [u64; 3]> {
        self.probes.lock().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn last_probe(&self, uri: &str) -> Option<ProbeResult> {
        self.last_probe.lock().ok()?.get(uri).copied()
    }

    /// Starts the probe thread: OPTIONS from a socket of its own on
    /// `local_ip` to every backend of the current routing, while `[probes]`
    /// is enabled (both re-read after each reload).
    pub fn start_probes(
        self: &Arc<Control>,
        config: ProbeConfig,
        local_ip: std::net::IpAddr,
    ) -> std::io::Result<()> {
        if let Ok(mut current) = self.probe_config.lock() {
            *current = config;
        }
        let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0))?;
        let control = self.clone();
        std::thread::Builder::new()
            .name("probes".to_string())
            .spawn(move || control.run_probes(socket))?;
        Ok(())
    }

    fn run_probes(&self, socket: UdpSocket) {
        let Ok(local) = socket.local_addr() else {
            return;
        };
        let epoch = Instant::now();
        let now = || epoch.elapsed().as_millis() as u64;
        let tag = u64::from(std::process::id()) << 32 | u64::from(local.port());
        let mut routing: Option<Arc<Routing>> = None;
        let mut config = ProbeConfig::default();
        let mut targets: Vec<(String, SocketAddr)> = Vec::new();
        let mut prober = Prober::new(config.clone(), local, &[], now(), tag);
        let mut events = Vec::new();
        let mut buffer = vec![0u8; 65_536];
        loop {
            let current = self.shards.routing();
            let settings = match self.probe_config.lock() {
                Ok(settings) => settings.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            if !settings.enabled {
                routing = None;
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
            if settings != config || !routing.as_ref().is_some_and(|r| Arc::ptr_eq(r, &current)) {
                config = settings;
                targets = backends_of(&current);
                let addresses: Vec<SocketAddr> = targets.iter().map(|(_, a)| *a).collect();
                prober = Prober::new(config.clone(), local, &addresses, now(), tag);
                routing = Some(current.clone());
            }
            // The admin API may have set a state: the probes go on from it.
            for (i, (uri, _)) in targets.iter().enumerate() {
                if let Some(health) = current.backend(uri) {
                    if prober.state(i) != Some(health.state()) {
                        prober.set_state(i, health.state());
                    }
                }
            }
            prober.on_time(now(), &mut Udp(&socket), &mut events);
            let wait = prober
                .next_deadline()
                .map_or(250, |d| d.saturating_sub(now()).clamp(1, 250));
            let _ = socket.set_read_timeout(Some(Duration::from_millis(wait)));
            if let Ok((len, _)) = socket.recv_from(&mut buffer) {
                prober.on_datagram(now(), &buffer[..len], &mut events);
            }
            for event in events.drain(..) {
                self.apply(&current, &targets, event);
            }
            if let Ok(mut last) = self.last_probe.lock() {
                for (i, (uri, _)) in targets.iter().enumerate() {
                    if let Some(result) = prober.last_result(i) {
                        last.insert(uri.clone(), result);
                    }
                }
            }
        }
    }

    fn apply(&self, routing: &Routing, targets: &[(String, SocketAddr)], event: Event) {
        let (Event::Transition { member, .. }
        | Event::RoundTrip { member, .. }
        | Event::Probed { member, .. }) = event;
        let Some((uri, _)) = targets.get(member) else {
            return;
        };
        let Some(health) = routing.backend(uri) else {
            return;
        };
        match event {
            Event::Transition { from, to, .. } => {
                // A state the admin set since this probe left stays.
                if health.state() == from {
                    health.set_state(to);
                    self.transition(to);
                    tracing::warn!(backend = %uri, from = ?from, to = ?to, "backend state changed by probes");
                }
            }
            Event::RoundTrip { rtt_us, .. } => health.observe(rtt_us),
            Event::Probed { result, alive, .. } => {
                let slot = match (result, alive) {
                    (ProbeResult::Answered(_), true) => 0,
                    (ProbeResult::Answered(_), false) => 1,
                    (ProbeResult::TimedOut, _) => 2,
                };
                if let Ok(mut probes) = self.probes.lock() {
                    probes.entry(uri.clone()).or_default()[slot] += 1;
                }
            }
        }
    }
}

/// Every backend of a routing once: its URI and address.
fn backends_of(routing: &Routing) -> Vec<(String, SocketAddr)> {
    let mut seen = BTreeMap::new();
    for set in routing.sets() {
        for member in set.members.iter() {
            seen.entry(member.uri.to_string()).or_insert(member.address);
        }
    }
    seen.into_iter().collect()
}

struct Udp<'a>(&'a UdpSocket);

impl SendProbe for Udp<'_> {
    fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
        if let Err(error) = self.0.send_to(datagram, to) {
            tracing::debug!(%to, %error, "probe not sent");
        }
    }
}

/// States the admin API may set, by their names in its JSON.
pub fn state_named(name: &str) -> Option<State> {
    match name {
        "up" => Some(State::Up),
        "down" => Some(State::Down),
        "draining" => Some(State::Draining),
        _ => None,
    }
}

pub fn state_name(state: State) -> &'static str {
    match state {
        State::Up => "up",
        State::Probing => "probing",
        State::Down => "down",
        State::Draining => "draining",
    }
}
