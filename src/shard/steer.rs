//! In-kernel steering: an eBPF `SK_REUSEPORT` program that gives each
//! datagram to the listen socket of the shard that owns its Call-ID, so
//! that one caller's datagrams (one 4-tuple, which the kernel would give to
//! one socket) reach their owners without a handoff and its second
//! wake-up.
//!
//! The program finds the Call-ID header (`Call-ID` in any case, or `i`) in
//! the first `SCAN_BYTES` of the datagram, hashes its value with the same
//! FNV-1a as [`crate::sip::lex::fnv1a`], and selects socket `hash % shards`
//! from a `REUSEPORT_SOCKARRAY` map. It is only an optimisation: when it
//! finds nothing (or the kernel refuses it) the kernel picks by 4-tuple
//! and the shard hands the datagram over as before; ownership is always
//! decided in user space.
//!
//! It also sheds in the kernel. While a shard is overloaded and its proxy
//! core would drop new INVITEs and REGISTERs anyway (past its budget of
//! 503s), the shard gives the program a share of them to drop
//! ([`ShedMap::set`]): the program draws a random number per datagram of
//! that shard and, for a new INVITE or REGISTER (no tag in To), selects a
//! *sink* socket that takes nothing (a socket filter drops every datagram)
//! instead of the shard's. Such a datagram costs the shard nothing, so the
//! receive buffer stays free for what admitted calls send: an ACK or BYE
//! lost to a full buffer is what fails a call that was let in. The sink
//! exists because a program that returns `SK_DROP` makes UDP answer with
//! ICMP port unreachable, which a caller would read as a dead gateway.
//! Anything the program cannot read whole (no To line in the first
//! `SCAN_BYTES`, a To line over `TO_LINE_BYTES`, a To value folded onto
//! a continuation line) goes to the shard, which decides.
//!
//! The program is assembled here by hand (no BPF toolchain is needed to
//! build sipshard) and loaded with the `bpf` system call; this file holds
//! those calls' `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// How far into a datagram the program looks for the Call-ID line.
const SCAN_BYTES: i32 = 1536;
/// The longest Call-ID value it hashes; longer ones fall back.
const CALL_ID_BYTES: i32 = 256;
/// The longest To value it looks for a tag in; longer ones go to the shard.
const TO_LINE_BYTES: i32 = 512;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
/// Where the payload starts: a UDP program's `data` is the UDP header.
const UDP_HEADER: i32 = 8;
/// `struct sk_reuseport_md`'s `hash`: the kernel's 4-tuple hash.
const CTX_HASH: i16 = 32;
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_GET_PRANDOM_U32: i32 = 7;
const HELPER_SK_SELECT_REUSEPORT: i32 = 82;
const SK_PASS: i32 = 1;

/// The steering program and its socket map, attached to a group.
pub(crate) struct Steering {
    _map: OwnedFd,
    _scratch: OwnedFd,
    _program: OwnedFd,
    shed: Option<Arc<ShedMap>>,
}

/// Per shard, the share of new INVITEs and REGISTERs the program sends to
/// the sink, and how many it has sent. Entry `i` holds shard `i`'s
/// threshold (a datagram is shed when a random `u32` falls under it);
/// entry `shards + i` its count, which the program adds to atomically.
pub(crate) struct ShedMap {
    map: OwnedFd,
    shards: u32,
}

impl ShedMap {
    /// Sheds `share` (0.0 to 1.0) of shard `shard`'s new INVITEs and
    /// REGISTERs in the kernel from now on.
    pub(crate) fn set(&self, shard: u32, share: f64) -> io::Result<()> {
        let threshold = (share.clamp(0.0, 1.0) * f64::from(u32::MAX)) as u64;
        update_map(self.map.as_raw_fd(), shard, threshold)
    }

    /// How many of shard `shard`'s datagrams the program has shed so far.
    pub(crate) fn shed(&self, shard: u32) -> io::Result<u64> {
        lookup_u64(self.map.as_raw_fd(), self.shards + shard)
    }
}

impl Steering {
    /// The shed controls, when the program was built with a sink.
    pub(crate) fn shed_map(&self) -> Option<Arc<ShedMap>> {
        self.shed.clone()
    }
}

/// Loads the program for `sockets` (shard `i`'s listen socket at index
/// `i`, all bound in one `SO_REUSEPORT` group) and attaches it. With
/// `sink` (a socket of the same group that drops what it gets), the
/// program can also shed new requests into it (see the module's text).
pub(crate) fn attach(sockets: &[RawFd], sink: Option<RawFd>) -> io::Result<Steering> {
    let shards = u32::try_from(sockets.len()).map_err(io::Error::other)?;
    let map = create_map(
        BPF_MAP_TYPE_REUSEPORT_SOCKARRAY,
        8,
        shards + u32::from(sink.is_some()),
    )?;
    for (index, &fd) in sockets.iter().chain(sink.iter()).enumerate() {
        update_map(map.as_raw_fd(), index as u32, fd as u64)?;
    }
    let scratch = create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 1)?;
    let shed = match sink {
        Some(_) => Some(Arc::new(ShedMap {
            map: create_map(BPF_MAP_TYPE_ARRAY, 8, 2 * shards)?,
            shards,
        })),
        None => None,
    };
    let program = load(&program(
        map.as_raw_fd(),
        scratch.as_raw_fd(),
        shed.as_ref().map(|s| s.map.as_raw_fd()),
        shards,
    ))?;
    let fd = program.as_raw_fd();
    // SAFETY: passes a pointer to a live c_int and its size.
    let result = unsafe {
        libc::setsockopt(
            sockets[0],
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_EBPF,
            (&fd as *const RawFd).cast(),
            std::mem::size_of::<RawFd>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Steering {
        _map: map,
        _scratch: scratch,
        _program: program,
        shed,
    })
}

fn bpf(command: libc::c_long, attr: &mut [u8; 128]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-filled bpf_attr of 128 bytes (more than any
    // command here reads) whose pointers point at memory alive for the call.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), 128usize) };
    match result {
        r if r < 0 => Err(io::Error::last_os_error()),
        r => Ok(r),
    }
}

fn put_u32(attr: &mut [u8; 128], at: usize, value: u32) {
    attr[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; 128], at: usize, value: u64) {
    attr[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A map with u32 keys: the socket array (u64 socket descriptors) or the
/// one-slot scratch (see [`program`]).
fn create_map(kind: u32, value_size: u32, entries: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, kind);
    put_u32(&mut attr, 4, 4);
    put_u32(&mut attr, 8, value_size);
    put_u32(&mut attr, 12, entries);
    owned(bpf(BPF_MAP_CREATE, &mut attr)?)
}

/// Writes a u64 value (a socket descriptor, a threshold) at `index`.
fn update_map(map: RawFd, index: u32, value: u64) -> io::Result<()> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, map as u32);
    put_u64(&mut attr, 8, &index as *const u32 as u64);
    put_u64(&mut attr, 16, &value as *const u64 as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Reads the u64 value at `index` of an array map.
fn lookup_u64(map: RawFd, index: u32) -> io::Result<u64> {
    let mut value = 0u64;
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, map as u32);
    put_u64(&mut attr, 8, &index as *const u32 as u64);
    put_u64(&mut attr, 16, &mut value as *mut u64 as u64);
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(value)
}

/// Loads the program; on failure, loads it again with the verifier's log
/// (a log that overflows its buffer would itself fail the load) and
/// returns the log's end with the error.
fn load(program: &[Insn]) -> io::Result<OwnedFd> {
    let license = b"Apache-2.0\0";
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, BPF_PROG_TYPE_SK_REUSEPORT);
        put_u32(&mut attr, 4, program.len() as u32);
        put_u64(&mut attr, 8, program.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        if let Some(log) = log {
            put_u32(&mut attr, 24, 1);
            put_u32(&mut attr, 28, log.len() as u32);
            put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
        }
        attr[48..56].copy_from_slice(b"sipshard");
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    match attempt(None) {
        Ok(fd) => owned(fd),
        Err(error) => {
            let mut log = vec![0u8; 1 << 22];
            let _ = attempt(Some(&mut log));
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let tail = String::from_utf8_lossy(&log[end.saturating_sub(600)..end]).into_owned();
            Err(io::Error::new(
                error.kind(),
                format!("{error}; verifier: {tail}"),
            ))
        }
    }
}

/// One eBPF instruction, as the kernel reads it.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

// Instruction classes, operations and sizes (linux/bpf.h).
const ST: u8 = 0x02;
const LDX: u8 = 0x01;
const STX: u8 = 0x03;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const MEM: u8 = 0x60;
const ATOMIC: u8 = 0xc0;
const K: u8 = 0x00;
const X: u8 = 0x08;
const B: u8 = 0x10;
const W: u8 = 0x00;
const DW: u8 = 0x18;
const ADD: u8 = 0x00;
const MUL: u8 = 0x20;
const OR: u8 = 0x40;
const MOD: u8 = 0x90;
const XOR: u8 = 0xa0;
const MOV: u8 = 0xb0;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JGE: u8 = 0x30;
const JNE: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;

/// A small assembler: instructions, with jumps to labels patched at the end.
struct Asm {
    code: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, usize)>,
}

impl Asm {
    fn new() -> Asm {
        Asm {
            code: Vec::new(),
            labels: Vec::new(),
            fixups: Vec::new(),
        }
    }

    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn here(&mut self, label: usize) {
        self.labels[label] = Some(self.code.len());
    }

    fn emit(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.code.push(Insn {
            code,
            regs: (src << 4) | dst,
            off,
            imm,
        });
    }

    fn alu_k(&mut self, op: u8, dst: u8, imm: i32) {
        self.emit(ALU64 | op | K, dst, 0, 0, imm);
    }

    fn alu_x(&mut self, op: u8, dst: u8, src: u8) {
        self.emit(ALU64 | op | X, dst, src, 0, 0);
    }

    fn load(&mut self, size: u8, dst: u8, src: u8, off: i16) {
        self.emit(LDX | size | MEM, dst, src, off, 0);
    }

    fn jump_k(&mut self, op: u8, dst: u8, imm: i32, to: usize) {
        self.fixups.push((self.code.len(), to));
        self.emit(JMP | op | K, dst, 0, 0, imm);
    }

    fn jump_x(&mut self, op: u8, dst: u8, src: u8, to: usize) {
        self.fixups.push((self.code.len(), to));
        self.emit(JMP | op | X, dst, src, 0, 0);
    }

    fn goto(&mut self, to: usize) {
        self.jump_k(JA, 0, 0, to);
    }

    /// `dst = imm` for a 64-bit constant (two instruction slots); with
    /// `map`, `imm` is a map descriptor the kernel turns into the map.
    fn load_imm64(&mut self, dst: u8, imm: u64, map: bool) {
        let src = if map { 1 } else { 0 };
        self.emit(0x18, dst, src, 0, imm as u32 as i32);
        self.emit(0, 0, 0, 0, (imm >> 32) as u32 as i32);
    }

    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels[label].expect("every jump target is placed");
            self.code[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.code
    }
}

/// Loads the byte at `data + r9` into r4, leaving its address in r2, or
/// goes to `fail` when `r9` reaches `limit` or fewer than `window` bytes
/// are left before `data_end` (r7 = data, r8 = data_end; r3 is scratch).
/// A window above 1 lets the caller read `r2 + 1 .. r2 + window` too.
fn load_byte_at_index(asm: &mut Asm, limit: i32, window: i32, fail: usize) {
    asm.jump_k(JGE, 9, limit, fail);
    asm.alu_x(MOV, 2, 7);
    asm.alu_x(ADD, 2, 9);
    asm.alu_x(MOV, 3, 2);
    asm.alu_k(ADD, 3, window);
    asm.jump_x(JGT, 3, 8, fail);
    asm.load(B, 4, 2, 0);
}

/// The steering program for `shards` sockets in map `map` (and, with
/// `shed`, the sink at index `shards`: see [`shed_new_requests`]).
///
/// The verifier walks every path through the loops with the index as a
/// known constant, so a search loop followed by a hashing loop would cost
/// it (bytes searched × bytes hashed) steps and exceed its limit. Once the
/// Call-ID name is found, the index goes through a one-slot per-CPU map
/// (`scratch`): read back, it is a bounded unknown to the verifier, and
/// every match position shares one walk of the rest.
///
/// Its steps, in the order they are laid out: find the Call-ID name,
/// launder the index, skip to the value, hash it; else take the 4-tuple
/// hash; then (with `shed`) maybe pick the sink; select the socket.
fn program(map: RawFd, scratch: RawFd, shed: Option<RawFd>, shards: u32) -> Vec<Insn> {
    let mut a = Asm::new();
    let pass = a.label();
    let owner = a.label();
    let select = a.label();
    let hash = a.label();

    // r6 = ctx, r7 = data, r8 = data_end, r9 = index into the datagram.
    a.alu_x(MOV, 6, 1);
    a.load(DW, 7, 6, 0);
    a.load(DW, 8, 6, 8);
    a.alu_k(MOV, 9, 0);

    find_call_id_name(&mut a, pass);
    // Launder the index through the scratch map (see above). From here r7
    // points after the name and r9 counts from 0 again, so the loops
    // below end by a counter the verifier knows.
    launder_index(&mut a, scratch, pass);
    skip_to_call_id_value(&mut a, pass, hash);
    a.here(hash);
    hash_call_id(&mut a, shards, pass, owner);

    // No Call-ID to steer by: the kernel's 4-tuple hash picks, as it would
    // by itself, but among the shards only, never the sink.
    a.here(pass);
    a.load(W, 0, 6, CTX_HASH);
    a.alu_k(MOD, 0, shards as i32);

    // The owner's index in r0, kept on the stack as the map key.
    a.here(owner);
    a.emit(STX | W | MEM, 10, 0, -4, 0);
    if let Some(shed) = shed {
        shed_new_requests(&mut a, shed, scratch, shards, select);
    }
    a.here(select);
    select_socket(&mut a, map);
    a.finish()
}

/// Finds a line start ("\n") followed by "call-id" or "i" (any case) and
/// leaves r9 one past the name; goes to `pass` when none is in the first
/// `SCAN_BYTES`.
fn find_call_id_name(a: &mut Asm, pass: usize) {
    let scan = a.label();
    let line = a.label();
    let compact = a.label();
    let name_end = a.label();
    // The window covers "\ncall-id" and the byte after it.
    a.here(scan);
    load_byte_at_index(a, SCAN_BYTES, 9, pass);
    a.alu_k(ADD, 9, 1);
    // The loop goes on by the fall-through: the verifier keeps one
    // pending branch per byte (the line start), under its limit of 8,192.
    a.jump_k(JEQ, 4, i32::from(b'\n'), line);
    a.goto(scan);
    a.here(line);
    a.load(B, 4, 2, 1);
    a.alu_k(OR, 4, 0x20);
    a.jump_k(JEQ, 4, i32::from(b'i'), compact);
    a.jump_k(JNE, 4, i32::from(b'c'), scan);
    for (at, letter) in [
        (2, b'a'),
        (3, b'l'),
        (4, b'l'),
        (5, b'-'),
        (6, b'i'),
        (7, b'd'),
    ] {
        a.load(B, 4, 2, at);
        a.alu_k(OR, 4, 0x20);
        a.jump_k(JNE, 4, i32::from(letter), scan);
    }
    // r9 is one past the "\n": the name ends 7 bytes on ("call-id").
    a.alu_k(ADD, 9, 7);
    a.goto(name_end);
    a.here(compact);
    a.alu_k(ADD, 9, 1);
    a.here(name_end);
}

/// After the name (r7, r9 = 0): optional blanks and the colon, then the
/// blanks before the value; goes to `hash` at the value's first byte, or
/// to `pass` when what follows is another header.
fn skip_to_call_id_value(a: &mut Asm, pass: usize, hash: usize) {
    let colon = a.label();
    let value = a.label();
    let blank = a.label();
    // Then optional blanks and the colon; anything else is another header.
    a.here(colon);
    load_byte_at_index(a, 16, 1, pass);
    a.alu_k(ADD, 9, 1);
    a.jump_k(JEQ, 4, i32::from(b':'), value);
    a.jump_k(JEQ, 4, i32::from(b' '), colon);
    a.jump_k(JEQ, 4, i32::from(b'\t'), colon);
    // Another header whose name starts like ours ("Call-Info", "i2"): the
    // search is over; the shard hands the datagram on if need be.
    a.goto(pass);

    // Skip the blanks before the value.
    a.here(value);
    load_byte_at_index(a, 32, 1, pass);
    a.jump_k(JEQ, 4, i32::from(b' '), blank);
    a.jump_k(JEQ, 4, i32::from(b'\t'), blank);
    a.goto(hash);
    a.here(blank);
    a.alu_k(ADD, 9, 1);
    a.goto(value);
}

/// FNV-1a over the value up to the line end, then over a 0 byte, as
/// `fnv1a(&[call_id])` does; goes to `owner` with `hash % shards` in r0,
/// or to `pass` for an empty or overlong value. r0 = hash, r5 = prime,
/// r1 = length.
fn hash_call_id(a: &mut Asm, shards: u32, pass: usize, owner: usize) {
    let next = a.label();
    let hashed = a.label();
    a.load_imm64(0, 0xcbf2_9ce4_8422_2325, false);
    a.load_imm64(5, 0x0100_0000_01b3, false);
    a.alu_k(MOV, 1, 0);
    a.here(next);
    a.jump_k(JGE, 1, CALL_ID_BYTES, pass);
    load_byte_at_index(a, 32 + CALL_ID_BYTES, 1, pass);
    a.jump_k(JEQ, 4, i32::from(b'\r'), hashed);
    a.jump_k(JEQ, 4, i32::from(b'\n'), hashed);
    a.alu_x(XOR, 0, 4);
    a.alu_x(MUL, 0, 5);
    a.alu_k(ADD, 9, 1);
    a.alu_k(ADD, 1, 1);
    a.goto(next);

    a.here(hashed);
    a.jump_k(JEQ, 1, 0, pass);
    a.alu_x(MUL, 0, 5);
    a.alu_k(MOD, 0, shards as i32);
    a.goto(owner);
}

/// bpf_sk_select_reuseport(ctx, map, &key, 0) with the key at r10 - 4,
/// and the end: `SK_PASS`.
fn select_socket(a: &mut Asm, map: RawFd) {
    a.alu_x(MOV, 1, 6);
    a.load_imm64(2, map as u64, true);
    a.alu_x(MOV, 3, 10);
    a.alu_k(ADD, 3, -4);
    a.alu_k(MOV, 4, 0);
    a.emit(JMP | CALL, 0, 0, 0, HELPER_SK_SELECT_REUSEPORT);
    a.alu_k(MOV, 0, SK_PASS);
    a.emit(JMP | EXIT, 0, 0, 0, 0);
}

/// r0 = a pointer to the value of `map` at the u32 key stored at
/// `r10 + key`, or goes to `missing` when there is none.
fn lookup(a: &mut Asm, map: RawFd, key: i16, missing: usize) {
    a.load_imm64(1, map as u64, true);
    a.alu_x(MOV, 2, 10);
    a.alu_k(ADD, 2, i32::from(key));
    a.emit(JMP | CALL, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM);
    a.jump_k(JEQ, 0, 0, missing);
}

/// Moves r7 (a position in the datagram) on by r9 and sets r9 to 0,
/// after passing r9 through the one-slot `scratch` map: read back, it is
/// a bounded unknown to the verifier, so the code after is walked once
/// for every position r9 might have held (see [`program`]). Goes to
/// `fail` if the map is missing or r9 is past `SCAN_BYTES + 8`.
fn launder_index(a: &mut Asm, scratch: RawFd, fail: usize) {
    a.emit(ST | W | MEM, 10, 0, -8, 0); // *(u32 *)(r10 - 8) = 0: the key
    lookup(a, scratch, -8, fail);
    a.emit(STX | W | MEM, 0, 9, 0, 0);
    a.load(W, 9, 0, 0);
    a.jump_k(JGT, 9, SCAN_BYTES + 8, fail);
    a.alu_x(ADD, 7, 9);
    a.alu_k(MOV, 9, 0);
}

/// Goes to `fail` unless the datagram (r7 = data) holds `bytes` at
/// `offset`; the caller has checked that they are inside it.
fn expect_bytes(a: &mut Asm, offset: i16, bytes: &[u8], fail: usize) {
    for (i, &byte) in bytes.iter().enumerate() {
        a.load(B, 4, 7, offset + i as i16);
        a.jump_k(JNE, 4, i32::from(byte), fail);
    }
}

/// Goes on when r4, the byte after a header name, ends it (the colon, or
/// a blank before it); jumps to `otherwise` when it does not.
fn name_ends_or(a: &mut Asm, otherwise: usize) {
    let ends = a.label();
    for blank in [b':', b' ', b'\t'] {
        a.jump_k(JEQ, 4, i32::from(blank), ends);
    }
    a.goto(otherwise);
    a.here(ends);
}

/// With the owner's index at r10 - 4: while the owner's threshold in
/// `shed` is above a random `u32`, a new INVITE or REGISTER (its To line
/// has no `;tag`) has the key changed to the sink's index (`shards`) and
/// is counted. Everything else, and whatever cannot be read whole (a To
/// value folded onto a continuation line among it), falls through to
/// `select` with the owner's key.
fn shed_new_requests(a: &mut Asm, shed: RawFd, scratch: RawFd, shards: u32, select: usize) {
    draw_against_threshold(a, shed, select);
    invite_or_register(a, select);
    find_to_name(a, select);
    // Launder the index through the scratch map, as for the Call-ID, so
    // that the tag search below is walked once, not once per position.
    launder_index(a, scratch, select);
    to_without_tag(a, select);
    // A new request to shed.
    count_and_sink(a, shed, shards);
}

/// threshold = shed[key]; goes to `select` (nothing to shed) when it is
/// 0 or not above a random `u32`.
fn draw_against_threshold(a: &mut Asm, shed: RawFd, select: usize) {
    lookup(a, shed, -4, select);
    a.load(DW, 1, 0, 0);
    a.jump_k(JEQ, 1, 0, select);
    a.emit(STX | DW | MEM, 10, 1, -16, 0);
    a.emit(JMP | CALL, 0, 0, 0, HELPER_GET_PRANDOM_U32);
    a.load(DW, 1, 10, -16);
    a.jump_x(JGE, 0, 1, select);
}

/// "INVITE " or "REGISTER " first (methods are case-sensitive), after
/// the UDP header that `data` starts with; else goes to `select`. Loads
/// r7 = data and r8 = data_end again (the helper call took them).
fn invite_or_register(a: &mut Asm, select: usize) {
    let request = a.label();
    let register = a.label();
    a.load(DW, 7, 6, 0);
    a.load(DW, 8, 6, 8);
    a.alu_x(MOV, 2, 7);
    a.alu_k(ADD, 2, UDP_HEADER + 9);
    a.jump_x(JGT, 2, 8, select);
    expect_bytes(a, UDP_HEADER as i16, b"INVITE ", register);
    a.goto(request);
    a.here(register);
    expect_bytes(a, UDP_HEADER as i16, b"REGISTER ", select);
    a.here(request);
}

/// The To line: "\nto" or "\nt" (any case), then a blank or the colon;
/// leaves r9 past the name, or goes to `select` when there is none in
/// the first `SCAN_BYTES`.
fn find_to_name(a: &mut Asm, select: usize) {
    let to_scan = a.label();
    let to_line = a.label();
    let to_long = a.label();
    let to_name_end = a.label();
    a.alu_k(MOV, 9, 0);
    a.here(to_scan);
    load_byte_at_index(a, SCAN_BYTES, 4, select);
    a.alu_k(ADD, 9, 1);
    a.jump_k(JEQ, 4, i32::from(b'\n'), to_line);
    a.goto(to_scan);
    a.here(to_line);
    a.load(B, 4, 2, 1);
    a.alu_k(OR, 4, 0x20);
    a.jump_k(JNE, 4, i32::from(b't'), to_scan);
    a.load(B, 4, 2, 2);
    a.alu_x(MOV, 3, 4);
    a.alu_k(OR, 3, 0x20);
    a.jump_k(JEQ, 3, i32::from(b'o'), to_long);
    // "t" alone: r9 moves past it.
    name_ends_or(a, to_scan);
    a.alu_k(ADD, 9, 1);
    a.goto(to_name_end);
    a.here(to_long);
    a.load(B, 4, 2, 3);
    name_ends_or(a, to_scan);
    a.alu_k(ADD, 9, 2);
    a.here(to_name_end);
}

/// Goes on when the To value (r7, r9 = 0) ends its line without a tag
/// and no continuation line follows; else goes to `select`.
///
/// "tag" (any case) after a ";" before the line ends: a To tag, so a
/// request inside a dialog. A "tag" elsewhere after a ";" (a parameter
/// value) counts too: the shard then decides, which is the safe way to
/// be wrong. r5 = a ";" seen.
fn to_without_tag(a: &mut Asm, select: usize) {
    let tag_scan = a.label();
    let semicolon = a.label();
    let to_line_end = a.label();
    a.alu_k(MOV, 5, 0);
    a.here(tag_scan);
    load_byte_at_index(a, TO_LINE_BYTES, 3, select);
    a.alu_k(ADD, 9, 1);
    a.jump_k(JEQ, 4, i32::from(b'\n'), to_line_end);
    a.jump_k(JEQ, 4, i32::from(b';'), semicolon);
    a.jump_k(JEQ, 5, 0, tag_scan);
    a.alu_k(OR, 4, 0x20);
    a.jump_k(JNE, 4, i32::from(b't'), tag_scan);
    a.load(B, 4, 2, 1);
    a.alu_k(OR, 4, 0x20);
    a.jump_k(JNE, 4, i32::from(b'a'), tag_scan);
    a.load(B, 4, 2, 2);
    a.alu_k(OR, 4, 0x20);
    a.jump_k(JNE, 4, i32::from(b'g'), tag_scan);
    a.goto(select);
    a.here(semicolon);
    a.alu_k(MOV, 5, 1);
    a.goto(tag_scan);

    // The line ends without a tag. A blank next continues the value on a
    // folded line, where a tag may be: the shard reads it (the window of 3
    // made the byte after the "\n" readable).
    a.here(to_line_end);
    a.load(B, 4, 2, 1);
    a.jump_k(JEQ, 4, i32::from(b' '), select);
    a.jump_k(JEQ, 4, i32::from(b'\t'), select);
}

/// shed[shards + key] += 1, then the key becomes the sink's (`shards`).
fn count_and_sink(a: &mut Asm, shed: RawFd, shards: u32) {
    let to_sink = a.label();
    a.load(W, 0, 10, -4);
    a.alu_k(ADD, 0, shards as i32);
    a.emit(STX | W | MEM, 10, 0, -8, 0);
    lookup(a, shed, -8, to_sink);
    a.alu_k(MOV, 1, 1);
    a.emit(STX | DW | ATOMIC, 0, 1, 0, 0);
    a.here(to_sink);
    a.alu_k(MOV, 0, shards as i32);
    a.emit(STX | W | MEM, 10, 0, -4, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::find_call_id;
    use crate::sip::lex::fnv1a;
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::SocketAddr;
    use std::time::Duration;

    /// Two sockets in one SO_REUSEPORT group with the program attached;
    /// datagrams from one client socket (one 4-tuple) must each reach the
    /// socket of `fnv1a(Call-ID) % 2`, in every header spelling.
    #[test]
    fn datagrams_reach_the_socket_of_their_call_id() {
        let sockets: Vec<Socket> = (0..2)
            .map(|_| {
                let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
                s.set_reuse_port(true).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                s
            })
            .collect();
        let first: SocketAddr = "127.0.0.1:0".parse().unwrap();
        sockets[0].bind(&first.into()).unwrap();
        let address = sockets[0].local_addr().unwrap().as_socket().unwrap();
        sockets[1].bind(&address.into()).unwrap();
        let fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
        let _steering = match attach(&fds, None) {
            Ok(steering) => steering,
            // A kernel or sandbox without eBPF: the gateway falls back to
            // handoffs, and there is nothing to test here.
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => return,
            Err(error) => panic!("{error}"),
        };
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut landed = [0; 2];
        for i in 0..64 {
            let name = ["Call-ID", "call-id", "i", "CALL-ID ", "i\t"][i % 5];
            let datagram = format!(
                "INVITE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{i}\r\n\
                 {name}: {i}-steer@example.com\r\nCSeq: 1 INVITE\r\n\r\n"
            );
            let id = find_call_id(datagram.as_bytes()).unwrap();
            let owner = (fnv1a(&[id]) % 2) as usize;
            client.send_to(datagram.as_bytes(), address).unwrap();
            let mut buf = [std::mem::MaybeUninit::new(0u8); 2048];
            let got = sockets[owner].recv(&mut buf);
            assert!(
                got.is_ok(),
                "datagram {i} ({name}) did not reach socket {owner}"
            );
            landed[owner] += 1;
        }
        assert!(landed[0] > 0 && landed[1] > 0, "{landed:?}");
    }

    /// A group of two shard sockets and a sink that refuses all: with a
    /// shard's share at 1.0, its new INVITEs and REGISTERs go to the sink
    /// (and are counted); requests with a To tag, other methods, and
    /// anything after the share is back at 0 reach the owner.
    #[test]
    fn new_requests_are_shed_into_the_sink() {
        let bind = |address: SocketAddr| {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            s.set_reuse_port(true).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            s.bind(&address.into()).unwrap();
            s
        };
        let first = bind("127.0.0.1:0".parse().unwrap());
        let address = first.local_addr().unwrap().as_socket().unwrap();
        let sockets = [first, bind(address)];
        let sink = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        sink.set_reuse_port(true).unwrap();
        crate::shard::sys::refuse_all_datagrams(sink.as_raw_fd()).unwrap();
        sink.bind(&address.into()).unwrap();
        let fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
        let steering = match attach(&fds, Some(sink.as_raw_fd())) {
            Ok(steering) => steering,
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => return,
            Err(error) => panic!("{error}"),
        };
        let shed = steering.shed_map().unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Where a datagram lands: Some(shard), or None (the sink).
        let send = |i: usize, start: &str, to: &str| {
            let datagram = format!(
                "{start} sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{i}\r\n\
                 From: <sip:a@example.com>;tag=1\r\n{to}\r\nCall-ID: {i}-shed@example.com\r\n\
                 CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            );
            let owner = (fnv1a(&[find_call_id(datagram.as_bytes()).unwrap()]) % 2) as usize;
            client.send_to(datagram.as_bytes(), address).unwrap();
            let mut buf = [std::mem::MaybeUninit::new(0u8); 2048];
            let landed = sockets.iter().position(|s| s.recv(&mut buf).is_ok());
            assert!(
                landed.is_none() || landed == Some(owner),
                "{i}: not its owner"
            );
            landed
        };
        for shard in 0..2 {
            shed.set(shard, 1.0).unwrap();
        }
        let shed_before: u64 = (0..2).map(|s| shed.shed(s).unwrap()).sum();
        assert_eq!(shed_before, 0);
        let new = [
            ("INVITE", "To: <sip:b@example.com>"),
            ("REGISTER", "To: <sip:b@example.com>"),
            (
                "INVITE",
                "t: \"x\" <sip:b@example.com;transport=udp>;foo=bar",
            ),
            ("INVITE", "TO : <sip:b@example.com>"),
        ];
        for (i, (start, to)) in new.iter().enumerate() {
            assert_eq!(send(i, start, to), None, "{start} {to}: not shed");
        }
        let in_dialog = [
            ("INVITE", "To: <sip:b@example.com>;tag=9"),
            ("INVITE", "t: <sip:b@example.com> ; TAG=9"),
            ("INVITE", "To: <sip:b@example.com>\r\n ;tag=9"),
            ("INVITE", "To: <sip:b@example.com>\r\n\t;tag=9"),
            ("BYE", "To: <sip:b@example.com>"),
            ("OPTIONS", "To: <sip:b@example.com>"),
            ("ACK", "To: <sip:b@example.com>"),
        ];
        for (i, (start, to)) in in_dialog.iter().enumerate() {
            assert!(send(100 + i, start, to).is_some(), "{start} {to}: shed");
        }
        let shed_after: u64 = (0..2).map(|s| shed.shed(s).unwrap()).sum();
        assert_eq!(shed_after, new.len() as u64);
        for shard in 0..2 {
            shed.set(shard, 0.0).unwrap();
        }
        for i in 0..8 {
            assert!(send(200 + i, "INVITE", "To: <sip:b@example.com>").is_some());
        }
        // A datagram without a Call-ID still reaches a shard, never the sink.
        for i in 0..8 {
            client
                .send_to(format!("garbage {i}\r\n\r\n").as_bytes(), address)
                .unwrap();
            let mut buf = [std::mem::MaybeUninit::new(0u8); 2048];
            assert!(sockets.iter().any(|s| s.recv(&mut buf).is_ok()), "{i}");
        }
    }

    /// The program's instructions, as the kernel reads them, hashed with
    /// FNV-1a: the hashes were taken of the listing before it was split
    /// into named parts, so the parts emit the same program, instruction
    /// for instruction.
    #[test]
    fn the_program_is_the_listing_it_was() {
        let fingerprint = |program: Vec<Insn>| {
            let bytes: Vec<u8> = program
                .iter()
                .flat_map(|i| {
                    let mut b = [0u8; 8];
                    b[0] = i.code;
                    b[1] = i.regs;
                    b[2..4].copy_from_slice(&i.off.to_le_bytes());
                    b[4..].copy_from_slice(&i.imm.to_le_bytes());
                    b
                })
                .collect();
            (program.len(), fnv1a(&[&bytes]))
        };
        let got = [
            fingerprint(program(3, 4, None, 2)),
            fingerprint(program(3, 4, Some(5), 2)),
            fingerprint(program(7, 8, Some(9), 5)),
        ];
        assert_eq!(
            got,
            [
                (111, 2_992_145_352_400_908_815),
                (242, 4_016_457_433_043_740_661),
                (242, 6_496_727_376_439_765_553),
            ]
        );
    }

    #[test]
    fn jumps_land_inside_the_program() {
        let program = program(3, 4, Some(5), 2);
        for (at, insn) in program.iter().enumerate() {
            if insn.code & 0x07 == JMP && insn.code != JMP | CALL && insn.code != JMP | EXIT {
                let target = at as i64 + 1 + i64::from(insn.off);
                assert!(
                    (0..program.len() as i64).contains(&target),
                    "{at}: {insn:?}"
                );
            }
        }
    }
}
