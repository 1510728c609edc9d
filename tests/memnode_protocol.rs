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
    let mut eve = greeted(&addr, "alice-secret");
    let mut tag = 10;
    while sent < 10_000 {
        tag += 1;
        let (conn, f, want) = match rng.below(5) {
            // Another client's region.
            0 => (&mut bob, frame(Op::Read as u16, tag, region.0, 1, &0u64.to_le_bytes()), ErrorCode::NoSuchRegion),
            // Out of range page of our own region.
            1 => (&mut eve, frame(Op::Read as u16, tag, region.0, 1, &(16 + rng.below(1000)).to_le_bytes()), ErrorCode::OutOfRange),
            // A page whose checksum does not match.
            2 => {
                let mut payload = PageDesc { page: 0.into(), crc: 1.into(), reserved: 0.into() }.as_bytes().to_vec();
                payload.extend(rng.bytes(PAGE_SIZE));
                (&mut eve, frame(Op::Write as u16, tag, region.0, 1, &payload), ErrorCode::BadChecksum)
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
    assert!(memnode.child.try_wait().unwrap().is_none(), "memnode died");

    // Normal service continues, and the rejected checksum write changed nothing.
    let data: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i * 13 % 256) as u8).collect();
    let mut out = vec![0xffu8; PAGE_SIZE];
    alice.read_pages(region, &[0], &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 0), "a refused write reached the store");
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
