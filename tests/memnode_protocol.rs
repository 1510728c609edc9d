#![allow(clippy::cast_possible_truncation, reason = "test data generators truncate on purpose")]
//! A live `memnode` process against hostile and careless clients: random, truncated, oversized
//! and malformed frames, wrong versions and tokens, other clients' regions. The server must answer
//! each with an error (or close the connection) and keep serving everyone else.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use ebb::Memnode;
use ebb_memnode::proto::{self, ErrorCode, Header, Op, PageDesc, HEADER_LEN, PAGE_SIZE};
use ebb_memnode::{TcpConfig, TcpTransport, Transport, TransportError};
use zerocopy::IntoBytes;

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn token_file() -> tempfile_path::TempPath {
    tempfile_path::write("alice alice-secret\nbob bob-secret\n")
}

/// A tiny self-cleaning temp file (no extra crate needed for one file).
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    pub fn write(text: &str) -> TempPath {
        let path = std::env::temp_dir().join(format!("ebb-tokens-{}-{}", std::process::id(), text.len()));
        std::fs::write(&path, text).unwrap();
        TempPath(path)
    }
}

fn frame(op: u16, tag: u64, region: u64, arg: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Header::new(op, tag, region, arg, payload.len()).as_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Reads one reply; returns (op, arg).
fn reply(s: &mut TcpStream) -> Option<(u16, u32, Vec<u8>)> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).ok()?;
    let h = Header::decode(&head).expect("the server sends well-formed headers");
    let mut payload = vec![0u8; h.payload_len()];
    s.read_exact(&mut payload).ok()?;
    Some((h.op.get(), h.arg.get(), payload))
}

fn greeted(addr: &str, token: &str) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(&frame(Op::Hello as u16, 1, 0, 0, &[])).unwrap();
    assert_eq!(reply(&mut s).unwrap().0, Op::Hello as u16 | proto::REPLY_BIT);
    s.write_all(&frame(Op::Auth as u16, 2, 0, 0, token.as_bytes())).unwrap();
    assert_eq!(reply(&mut s).unwrap().0, Op::Auth as u16 | proto::REPLY_BIT);
    s
}

/// Sends `bytes` on a fresh connection, closes our side, and reads until the server closes.
/// Whatever the server sent must decode as frames, and the last one must be an error reply.
fn garbage(addr: &str, bytes: &[u8]) {
    let mut s = connect(addr);
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let mut last = None;
    let mut rest = &answer[..];
    while rest.len() >= HEADER_LEN {
        let h = Header::decode(rest[..HEADER_LEN].try_into().unwrap()).expect("well-formed reply header");
        last = Some(h.op.get());
        rest = &rest[(HEADER_LEN + h.payload_len()).min(rest.len())..];
    }
    if let Some(op) = last {
        // A lone valid Hello is answered normally; anything else ends with an error.
        assert!(op == proto::OP_ERROR || op == Op::Hello as u16 | proto::REPLY_BIT, "unexpected last reply {op:#x}");
    }
}

#[test]
fn ten_thousand_hostile_frames_then_normal_service() {
    let tokens = token_file();
    let mut memnode = Memnode::start(&["--capacity", "64M", "--token-file", tokens.0.to_str().unwrap()]).unwrap();
    let addr = memnode.addr.clone();
    let alice = TcpTransport::connect(&addr, TcpConfig { token: "alice-secret".into(), ..Default::default() }).unwrap();
    let region = alice.alloc(16 * 4096).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sent = 0;

    // Part 1: garbage on fresh connections (random bytes, bad magic, oversized, truncated, unknown
    // ops, wrong versions, requests before Hello/Auth).
    while sent < 4000 {
        let kind = rng.below(7);
        let bytes = match kind {
            0 => {
                let n = 1 + rng.below(200) as usize;
                rng.bytes(n)
            }
            1 => {
                let mut f = frame(Op::Read as u16, 1, 1, 4, &[0u8; 32]);
                f[0] ^= 0xff; // bad magic
                f
            }
            2 => {
                let mut f = Header::new(Op::Write as u16, 1, 1, 1, 0).as_bytes().to_vec();
                f[28..32].copy_from_slice(&u32::MAX.to_le_bytes()); // oversized
                f
            }
            3 => {
                let f = frame(Op::Write as u16, 1, 1, 1, &vec![7u8; 16 + PAGE_SIZE]);
                let cut = 1 + rng.below(f.len() as u64 - 1) as usize;
                f[..cut].to_vec() // truncated
            }
            4 => frame(0x4242, 1, 0, 0, &[]), // unknown op
            5 => {
                let mut f = frame(Op::Hello as u16, 1, 0, 0, &[]);
                f[4..6].copy_from_slice(&99u16.to_le_bytes()); // unknown version
                f
            }
            _ => frame(Op::Read as u16, 1, region.0, 1, &0u64.to_le_bytes()), // before Hello
        };
        garbage(&addr, &bytes);
        sent += 1;
    }

    // Part 2: well-formed but refused requests, pipelined on authenticated connections; each must
    // get the right error code and leave the connection usable.
    let mut bob = greeted(&addr, "bob-secret");
    // Another connection of alice's identity, in its default session: it has its own region.
    let mut eve = greeted(&addr, "alice-secret");
    eve.write_all(&frame(Op::Alloc as u16, 3, 0, 0, &(16u64 * 4096).to_le_bytes())).unwrap();
    let eve_region = {
        let mut head = [0u8; HEADER_LEN];
        eve.read_exact(&mut head).unwrap();
        Header::decode(&head).unwrap().region.get()
    };
    // alice's transport holds its region in its own session: eve, the same tenant in another
    // session, cannot reach it either.
    eve.write_all(&frame(Op::Read as u16, 4, region.0, 1, &0u64.to_le_bytes())).unwrap();
    assert_eq!(reply(&mut eve).map(|r| ErrorCode::from_u32(r.1)), Some(Some(ErrorCode::NoSuchRegion)));
    let mut tag = 10;
    while sent < 10_000 {
        tag += 1;
        let (conn, f, want) = match rng.below(5) {
            // Another client's region.
            0 => (&mut bob, frame(Op::Read as u16, tag, region.0, 1, &0u64.to_le_bytes()), ErrorCode::NoSuchRegion),
            // Out of range page of our own region.
            1 => (&mut eve, frame(Op::Read as u16, tag, eve_region, 1, &(16 + rng.below(1000)).to_le_bytes()), ErrorCode::OutOfRange),
            // A page whose checksum does not match.
            2 => {
                let mut payload = PageDesc { page: 0.into(), crc: 1.into(), reserved: 0.into() }.as_bytes().to_vec();
                payload.extend(rng.bytes(PAGE_SIZE));
                (&mut eve, frame(Op::Write as u16, tag, eve_region, 1, &payload), ErrorCode::BadChecksum)
            }
            // Beyond capacity.
            3 => (&mut bob, frame(Op::Alloc as u16, tag, 0, 0, &(1u64 << 40).to_le_bytes()), ErrorCode::OutOfCapacity),
            // Regions that never existed.
            _ => (&mut bob, frame(Op::Free as u16, tag, 1_000_000 + rng.below(1000), 0, &[]), ErrorCode::NoSuchRegion),
        };
        conn.write_all(&f).unwrap();
        let (op, arg, _) = reply(conn).expect("the server answers a refused request");
        assert_eq!(op, proto::OP_ERROR);
        assert_eq!(ErrorCode::from_u32(arg), Some(want));
        sent += 1;
    }
    assert_eq!(sent, 10_000);
    assert!(memnode.process().try_wait().unwrap().is_none(), "memnode died");

    // Normal service continues, and the rejected checksum writes changed nothing.
    let data: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i * 13 % 256) as u8).collect();
    eve.write_all(&frame(Op::Read as u16, 5, eve_region, 1, &0u64.to_le_bytes())).unwrap();
    let (op, _, payload) = reply(&mut eve).unwrap();
    assert_eq!(op, Op::Read as u16 | proto::REPLY_BIT);
    assert!(payload[16..].iter().all(|&b| b == 0), "a refused write reached the store");
    let mut out = vec![0xffu8; PAGE_SIZE];
    alice.write_pages(region, &[3, 4], &data).unwrap();
    let mut back = vec![0u8; 2 * PAGE_SIZE];
    alice.read_pages(region, &[3, 4], &mut back).unwrap();
    assert_eq!(back, data);

    // Tokens and ownership through the normal client.
    let bob_t = TcpTransport::connect(&addr, TcpConfig { token: "bob-secret".into(), ..Default::default() }).unwrap();
    let err = bob_t.read_pages(region, &[3], &mut out).unwrap_err();
    assert!(matches!(err, TransportError::Refused { code: Some(ErrorCode::NoSuchRegion), .. }), "{err}");
    let err = TcpTransport::connect(&addr, TcpConfig { token: "mallory".into(), ..Default::default() }).unwrap_err();
    assert!(matches!(err, TransportError::Refused { code: Some(ErrorCode::BadToken), .. }), "{err}");
    alice.free(region).unwrap();
    let err = alice.read_pages(region, &[3], &mut out).unwrap_err();
    assert!(matches!(err, TransportError::Refused { code: Some(ErrorCode::NoSuchRegion), .. }), "stale id: {err}");
    memnode.kill();
}

/// An operator's view of a memnode: every session's (name, state, regions, stored bytes).
fn sessions(addr: &str, operator_token: &str) -> Vec<(String, u32, u64, u64)> {
    let t = TcpTransport::connect(addr, TcpConfig { token: operator_token.into(), ..Default::default() }).unwrap();
    t.usage()
        .unwrap()
        .into_iter()
        .map(|e| {
            let end = e.name.iter().position(|&b| b == 0).unwrap_or(e.name.len());
            (String::from_utf8_lossy(&e.name[..end]).into_owned(), e.state.get(), e.regions.get(), e.stored.get())
        })
        .filter(|(name, _, regions, _)| *regions > 0 || !name.contains("anon-"))
        .collect()
}

/// Opens a session with raw frames on one connection (what a client that then crashes did).
fn raw_session(s: &mut TcpStream, name: &str, nonce: u64) -> proto::SessionReply {
    let req = proto::SessionRequest { nonce: nonce.into(), flags: proto::SESSION_CLAIM.into(), name_len: (name.len() as u32).into() };
    let mut payload = req.as_bytes().to_vec();
    payload.extend_from_slice(name.as_bytes());
    s.write_all(&frame(Op::Session as u16, 9, 0, 0, &payload)).unwrap();
    let (op, _, payload) = reply(s).unwrap();
    assert_eq!(op, Op::Session as u16 | proto::REPLY_BIT, "{}", String::from_utf8_lossy(&payload));
    zerocopy::FromBytes::read_from_bytes(&payload[..]).unwrap()
}

fn raw_alloc_and_write(s: &mut TcpStream, pages: u64) -> u64 {
    s.write_all(&frame(Op::Alloc as u16, 20, 0, 0, &(pages * 4096).to_le_bytes())).unwrap();
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).unwrap();
    let region = Header::decode(&head).unwrap().region.get();
    for p in 0..pages {
        let page = vec![(p as u8) | 1; PAGE_SIZE];
        let mut payload = PageDesc { page: p.into(), crc: proto::page_crc(&page).into(), reserved: 0.into() }.as_bytes().to_vec();
        payload.extend_from_slice(&page);
        s.write_all(&frame(Op::Write as u16, 21 + p, region, 1, &payload)).unwrap();
        assert_eq!(reply(s).unwrap().0, Op::Write as u16 | proto::REPLY_BIT);
    }
    region
}

#[test]
fn a_crashed_clients_regions_are_freed_after_lease_and_grace() {
    let tokens = tempfile_path::write("alice alice-secret\nops ops-secret operator\n");
    let memnode = Memnode::start(&["--token-file", tokens.0.to_str().unwrap(), "--lease", "300ms", "--grace", "700ms"]).unwrap();
    let mut s = greeted(&memnode.addr, "alice-secret");
    let reply = raw_session(&mut s, "crashy", 42);
    assert_eq!((reply.lease_ms.get(), reply.grace_ms.get()), (300, 700));
    raw_alloc_and_write(&mut s, 4);
    let crashy = "tenant alice, session crashy";
    assert_eq!(sessions(&memnode.addr, "ops-secret"), vec![(crashy.to_string(), proto::USAGE_LIVE, 1, 4 * 4096)]);
    // The client dies: no EndSession, no more renewals. First the lease lapses (grace), then the
    // regions go.
    drop(s);
    assert!(
        ebb::wait_until(Duration::from_secs(5), || sessions(&memnode.addr, "ops-secret").first().is_some_and(|e| e.1 == proto::USAGE_GRACE)),
        "{:?}",
        sessions(&memnode.addr, "ops-secret")
    );
    assert!(ebb::wait_until(Duration::from_secs(5), || sessions(&memnode.addr, "ops-secret").is_empty()), "{:?}", sessions(&memnode.addr, "ops-secret"));
    // The operator CLI prints the same view.
    let out = std::process::Command::new(ebb::binary("memnode"))
        .args(["stats", "--memnode", &memnode.addr, "--token", "ops-secret"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("IDENTITY / SESSION"));
}

#[test]
fn a_restarted_client_frees_what_its_previous_run_left_and_a_live_one_keeps_its_session() {
    let memnode = Memnode::start(&["--lease", "400ms", "--grace", "60s"]).unwrap();
    let config = |claim_wait: u64| TcpConfig {
        token: "stable-token".into(),
        session: Some("runtime-7".into()),
        claim_wait: Duration::from_millis(claim_wait),
        ..Default::default()
    };
    // A previous run that crashed with 3 regions (raw: it never ends its session).
    let mut old = greeted(&memnode.addr, "stable-token");
    raw_session(&mut old, "runtime-7", 1);
    for _ in 0..3 {
        raw_alloc_and_write(&mut old, 2);
    }
    // While it still renews, a second client may not take the session.
    let err = TcpTransport::connect(&memnode.addr, config(100)).unwrap_err();
    assert!(matches!(err, TransportError::BadSession(_)), "{err}");
    assert!(err.to_string().contains("held by another client"), "{err}");
    drop(old);
    // Restarted: it waits for the old lease to lapse, claims the session and frees the leftovers
    // at once, long before the 60 s grace period.
    let t = TcpTransport::connect(&memnode.addr, config(5000)).unwrap();
    assert_eq!(t.leftovers(), (3, 6 * 4096));
    assert_eq!(t.stats().unwrap().regions.get(), 0);
    assert_eq!(t.stats().unwrap().allocated.get(), 0);
    // Its heartbeat keeps the session live across many leases while it idles.
    let region = t.alloc(4096).unwrap();
    t.write_pages(region, &[0], &[9u8; PAGE_SIZE]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut out = vec![0u8; PAGE_SIZE];
    t.read_pages(region, &[0], &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 9));
    let err = TcpTransport::connect(&memnode.addr, config(100)).unwrap_err();
    assert!(err.to_string().contains("held by another client"), "{err}");
    // A clean end frees everything at once.
    drop(t);
    let fresh = TcpTransport::connect(&memnode.addr, config(100)).unwrap();
    assert_eq!(fresh.leftovers(), (0, 0));
}

#[test]
fn quotas_count_stored_pages_and_stats_tell_only_ones_own() {
    let tokens = tempfile_path::write("alice alice-secret quota=64K\nbob bob-secret\nops ops-secret operator\n");
    let memnode = Memnode::start(&["--token-file", tokens.0.to_str().unwrap(), "--capacity", "1M"]).unwrap();
    let t = |token: &str| TcpTransport::connect(&memnode.addr, TcpConfig { token: token.into(), ..Default::default() }).unwrap();
    let (alice, bob, ops) = (t("alice-secret"), t("bob-secret"), t("ops-secret"));
    // Declaring is not storing: five regions the size of the whole memnode each.
    let regions: Vec<_> = (0..5).map(|_| alice.alloc(1 << 20).unwrap()).collect();
    let page = vec![1u8; PAGE_SIZE];
    for p in 0..16 {
        alice.write_pages(regions[(p % 5) as usize], &[p], &page).unwrap();
    }
    let err = alice.write_pages(regions[0], &[100], &page).unwrap_err();
    assert!(matches!(err, TransportError::Refused { code: Some(ErrorCode::QuotaExceeded), .. }), "{err}");
    // Rewriting a stored page costs nothing.
    alice.write_pages(regions[0], &[0], &page).unwrap();
    // Bob is unaffected by alice's quota, and sees only his own usage.
    let b = bob.alloc(64 * 4096).unwrap();
    bob.write_pages(b, &(0..64).collect::<Vec<_>>(), &vec![2u8; 64 * PAGE_SIZE]).unwrap();
    let s = bob.stats().unwrap();
    assert_eq!((s.allocated.get(), s.regions.get(), s.capacity.get()), (64 * 4096, 1, 1 << 20));
    let s = alice.stats().unwrap();
    assert_eq!((s.allocated.get(), s.regions.get(), s.capacity.get()), (16 * 4096, 5, 64 << 10));
    let s = ops.stats().unwrap();
    assert_eq!((s.allocated.get(), s.regions.get()), (80 * 4096, 6), "the operator sees everything");
    // Capacity errors do not tell bob about alice's pages: 64 + 190 pages are within bob's quota
    // (the capacity), but not within what is left of the capacity.
    let big = bob.alloc(1 << 20).unwrap();
    let err = bob.write_pages(big, &(0..190).collect::<Vec<_>>(), &vec![3u8; 190 * PAGE_SIZE]).unwrap_err();
    assert!(matches!(err, TransportError::Refused { code: Some(ErrorCode::OutOfCapacity), .. }), "{err}");
    assert!(!err.to_string().contains(&(16 * 4096).to_string()), "{err}");
    assert_eq!(bob.usage().unwrap().len(), 1, "bob's usage lists bob's sessions only");
}

#[test]
fn token_bytes_are_exact_identities() {
    let memnode = Memnode::start(&[]).unwrap();
    // \xff and \xfe are one string under a lossy UTF-8 decoding; they must be two identities.
    let raw = |token: &[u8]| {
        let mut s = connect(&memnode.addr);
        s.write_all(&frame(Op::Hello as u16, 1, 0, 0, &[])).unwrap();
        reply(&mut s).unwrap();
        s.write_all(&frame(Op::Auth as u16, 2, 0, 0, token)).unwrap();
        assert_eq!(reply(&mut s).unwrap().0, Op::Auth as u16 | proto::REPLY_BIT);
        s
    };
    let mut a = raw(b"\xff");
    let mut b = raw(b"\xfe");
    let region = raw_alloc_and_write(&mut a, 1);
    for (tag, op, payload) in [(50, Op::Read, 0u64.to_le_bytes().to_vec()), (51, Op::Free, vec![])] {
        let arg = if op == Op::Read { 1 } else { 0 };
        b.write_all(&frame(op as u16, tag, region, arg, &payload)).unwrap();
        let (rop, code, _) = reply(&mut b).unwrap();
        assert_eq!((rop, ErrorCode::from_u32(code)), (proto::OP_ERROR, Some(ErrorCode::NoSuchRegion)), "{op:?}");
    }
    a.write_all(&frame(Op::Read as u16, 52, region, 1, &0u64.to_le_bytes())).unwrap();
    assert_eq!(reply(&mut a).unwrap().0, Op::Read as u16 | proto::REPLY_BIT);
}

/// Threads of a process, from /proc.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap()
}

#[test]
fn idle_and_slow_sockets_cannot_lock_clients_out() {
    let mut memnode = Memnode::start(&["--max-connections", "64", "--handshake-timeout", "500ms", "--idle-timeout", "1s"]).unwrap();
    let pid = memnode.process().id();
    let base = threads(pid);
    // 300 sockets that never say a word: the limit holds before any thread is spawned for them.
    let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(&memnode.addr).unwrap()).collect();
    assert!(ebb::wait_until(Duration::from_secs(2), || threads(pid) <= base + 64 + 2), "{} threads", threads(pid));
    assert!(threads(pid) <= base + 66, "{} threads for 300 idle sockets", threads(pid));
    // A slow client trickling a header byte by byte is cut at the handshake deadline too.
    let mut slow = connect(&memnode.addr);
    let hello = frame(Op::Hello as u16, 1, 0, 0, &[]);
    let trickle = std::thread::spawn(move || {
        for b in hello {
            if slow.write_all(&[b]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut buf = [0u8; 64];
        matches!(slow.read(&mut buf), Ok(0) | Err(_))
    });
    // Within the deadline (plus the time the accept queue needs), every idle socket is closed by
    // the memnode: a read sees the end of the stream.
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {} // the over-the-limit error frame
            }
        }
    }
    assert!(trickle.join().unwrap(), "the trickling client was not cut off");
    // Now a real client gets in and is served; idling past the idle timeout does not hurt it
    // (it does not reuse a connection the memnode may be closing).
    let t = TcpTransport::connect(&memnode.addr, TcpConfig::default()).unwrap();
    let region = t.alloc(4096).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    t.write_pages(region, &[0], &[5u8; PAGE_SIZE]).unwrap();
    // An authenticated raw connection that goes quiet is closed after the idle timeout.
    let mut quiet = greeted(&memnode.addr, "quiet");
    quiet.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(quiet.read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn debug_output_never_shows_a_token() {
    let memnode = Memnode::start(&[]).unwrap();
    let config = TcpConfig { token: "sekret-token-123".into(), ..Default::default() };
    let shown = format!("{config:?}");
    let t = TcpTransport::connect(&memnode.addr, config).unwrap();
    let shown = format!("{shown} {t:?}");
    let tokens = ebb_memnode::tokens::Tokens::from_pairs([("alice", "sekret-token-123")]);
    let shown = format!("{shown} {tokens:?} {:?}", ebb_memnode::Identity::Secret(b"sekret-token-123".to_vec()));
    assert!(!shown.contains("sekret"), "{shown}");
}
