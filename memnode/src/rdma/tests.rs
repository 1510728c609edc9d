//! The rdma transport against an in-process memnode server with an RDMA device. The tests that
//! need a device are ignored on machines without one; `scripts/softroce.sh` runs them
//! (`--include-ignored`) inside a qemu guest with a soft-RoCE device.

use std::net::TcpListener;
use std::sync::Arc;

use super::*;
use crate::client::{TcpConfig, Transport, TransportError};
use crate::proto::{ErrorCode, PAGE_SIZE};
use crate::server::{Server, ServerConfig, ServerHandle, Tokens};
use crate::store::Store;

/// The device under test: `EBB_RDMA_DEVICE`, or the first one.
fn device() -> String {
    std::env::var("EBB_RDMA_DEVICE").ok().or_else(|| device_names().into_iter().next()).expect("an RDMA device")
}

fn server(rdma: bool, tokens: Option<Tokens>) -> ServerHandle {
    server_with_fabric(rdma, tokens).0
}

fn server_with_fabric(rdma: bool, tokens: Option<Tokens>) -> (ServerHandle, Option<Arc<Fabric>>) {
    server_configured(rdma, ServerConfig { tokens, ..Default::default() })
}

fn server_configured(rdma: bool, config: ServerConfig) -> (ServerHandle, Option<Arc<Fabric>>) {
    let fabric = rdma.then(|| Arc::new(Fabric::open(&device()).expect("open the RDMA device")));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let handle = Server::new(Arc::new(Store::new(256 << 20)), ServerConfig { rdma: fabric.clone(), ..config }).spawn(listener).unwrap();
    (handle, fabric)
}

fn connect(s: &ServerHandle, token: Option<&str>) -> RdmaTransport {
    let mut config = TcpConfig { rdma_device: Some(device()), ..Default::default() };
    if let Some(t) = token {
        config.token = t.into();
    }
    RdmaTransport::connect(&s.local_addr().to_string(), config).expect("rdma connect")
}

#[allow(clippy::cast_possible_truncation, reason = "a byte pattern")]
fn pattern(pages: usize, seed: u8) -> Vec<u8> {
    (0..pages * PAGE_SIZE).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i / PAGE_SIZE) as u8).collect()
}

#[test]
fn a_missing_device_is_named_with_the_available_ones() {
    let config = TcpConfig { rdma_device: Some("nosuch0".into()), ..Default::default() };
    let err = RdmaTransport::connect("127.0.0.1:9", config).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TransportError::Rdma { source: RdmaError::NoDevice { .. }, .. }), "{msg}");
    assert!(msg.contains("no RDMA device named nosuch0: this machine has "), "{msg}");
    assert!(msg.contains("tcp://"), "{msg}");
    let available = device_names();
    if available.is_empty() {
        assert!(msg.contains("has none"), "{msg}");
    } else {
        assert!(available.iter().all(|d| msg.contains(d.as_str())), "{msg}");
    }
}

#[test]
#[ignore = "needs an RDMA device: scripts/softroce.sh runs it in a soft-RoCE guest"]
fn pages_round_trip_by_one_sided_reads_and_writes() {
    let s = server(true, None);
    let t = connect(&s, Some("roundtrip-secret"));
    assert_eq!(t.kind(), "rdma");
    let region = t.alloc(4096 * PAGE_SIZE as u64).unwrap();
    // Runs longer than a work request, scattered pages, and more requests than the window.
    let pages: Vec<u64> = (0..300).chain((1000..3000).step_by(3)).chain([4095, 3500, 4000]).collect();
    let data = pattern(pages.len(), 7);
    t.write_pages(region, &pages, &data).unwrap();
    let mut out = vec![0u8; data.len()];
    t.read_pages(region, &pages, &mut out).unwrap();
    assert!(out == data, "pages read back by RDMA differ from those written");
    // Streaming delivers every page exactly once, in runs.
    let mut seen = vec![0u32; pages.len()];
    let mut out2 = vec![0u8; data.len()];
    t.read_pages_streaming(region, &pages, &mut out2, &mut |range, bytes| {
        assert_eq!(bytes.len(), range.len() * PAGE_SIZE);
        for i in range {
            seen[i] += 1;
        }
    })
    .unwrap();
    assert!(seen.iter().all(|&n| n == 1) && out2 == data);
    // The TCP path of the same session sees what RDMA wrote: one store behind both.
    let mut via_tcp = vec![0u8; data.len()];
    t.control().read_pages(region, &pages, &mut via_tcp).unwrap();
    assert!(via_tcp == data, "the TCP path reads other bytes than RDMA wrote");
    // Out of range is refused before anything is posted.
    let err = t.read_pages(region, &[4096], &mut [0u8; PAGE_SIZE]).unwrap_err();
    assert!(matches!(err, TransportError::Refused { code: Some(ErrorCode::OutOfRange), .. }), "{err}");
    // Resizing re-registers: contents stay, the new tail reads as zeros.
    t.resize(region, 8192 * PAGE_SIZE as u64).unwrap();
    t.read_pages(region, &pages, &mut out).unwrap();
    assert!(out == data, "contents changed across a resize");
    let mut tail = vec![1u8; PAGE_SIZE];
    t.read_pages(region, &[8000], &mut tail).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
    t.free(region).unwrap();
    assert!(t.stats().unwrap().regions.get() == 0);
}

#[test]
#[ignore = "needs an RDMA device: scripts/softroce.sh runs it in a soft-RoCE guest"]
fn a_ticket_holder_reaches_the_owners_region_and_the_owner_rekeys_after_it_grew() {
    let tokens = Tokens::from_pairs([("alice", "a-secret"), ("bob", "b-secret")]);
    let s = server(true, Some(tokens));
    let (alice, bob) = (connect(&s, Some("a-secret")), connect(&s, Some("b-secret")));
    let region = alice.alloc(64 * PAGE_SIZE as u64).unwrap();
    let pages: Vec<u64> = (0..64).collect();
    let data = pattern(64, 3);
    alice.write_pages(region, &pages, &data).unwrap();
    let ticket = alice.grant(region, true).unwrap();
    let mut out = vec![0u8; data.len()];
    assert!(bob.read_pages(region, &pages, &mut out).is_err(), "not before attaching");
    assert!(bob.attach(region, &ticket).unwrap());
    bob.read_pages(region, &pages, &mut out).unwrap();
    assert!(out == data, "the holder reads the owner's pages");
    // The holder writes and grows it (over the control connection: no key of its own).
    bob.write_pages(region, &[5], &pattern(1, 9)).unwrap();
    bob.resize(region, 128 * PAGE_SIZE as u64).unwrap();
    bob.write_pages(region, &[100], &pattern(1, 11)).unwrap();
    // The owner renews its registration and reads both by RDMA.
    alice.resize(region, 128 * PAGE_SIZE as u64).unwrap();
    let mut page = vec![0u8; PAGE_SIZE];
    alice.read_pages(region, &[5], &mut page).unwrap();
    assert!(page == pattern(1, 9));
    alice.read_pages(region, &[100], &mut page).unwrap();
    assert!(page == pattern(1, 11));
    alice.revoke(region, &ticket).unwrap();
    assert!(bob.read_pages(region, &[5], &mut page).is_err(), "revoked");
    alice.free(region).unwrap();
}

#[test]
#[ignore = "needs an RDMA device: scripts/softroce.sh runs it in a soft-RoCE guest"]
fn guessed_and_stale_keys_cannot_reach_other_regions() {
    let tokens = Tokens::from_pairs([("alice", "a-secret"), ("bob", "b-secret")]);
    let s = server(true, Some(tokens));
    let alice = connect(&s, Some("a-secret"));
    let region = alice.alloc(64 * PAGE_SIZE as u64).unwrap();
    let secret = pattern(1, 42);
    alice.write_pages(region, &[0], &secret).unwrap();
    let key = alice.region_key(region).unwrap();
    assert_eq!(alice.read_raw(key.addr.get(), key.rkey.get(), PAGE_SIZE).unwrap(), secret, "the owner reads its page");

    // Bob asks the memnode for Alice's region: refused as if it did not exist.
    let bob = connect(&s, Some("b-secret"));
    let err = bob.region_key(region).unwrap_err();
    assert!(matches!(err, TransportError::Refused { code: Some(ErrorCode::NoSuchRegion), .. }), "{err}");
    // Bob knows (or guesses) Alice's address and key: his queue pair is in another protection
    // domain, so the READ fails at the memnode's device.
    let err = bob.read_raw(key.addr.get(), key.rkey.get(), PAGE_SIZE).unwrap_err();
    assert!(matches!(err, TransportError::Rdma { source: RdmaError::Completion { .. }, .. }), "guessed key: {err}");

    // A stale key: Alice frees the region and allocates another; the old key fails even for her.
    alice.free(region).unwrap();
    let again = alice.alloc(64 * PAGE_SIZE as u64).unwrap();
    alice.write_pages(again, &[0], &pattern(1, 1)).unwrap();
    let new_key = alice.region_key(again).unwrap();
    let err = alice.read_raw(key.addr.get(), key.rkey.get(), PAGE_SIZE).unwrap_err();
    assert!(matches!(err, TransportError::Rdma { source: RdmaError::Completion { .. }, .. }), "stale key: {err}");
    // That READ broke only its own lane (queue pair), which is rebuilt before it is used again:
    // every lane serves correct pages afterwards.
    for _ in 0..4 {
        let mut out = vec![0u8; PAGE_SIZE];
        alice.read_pages(again, &[0], &mut out).unwrap();
        assert_eq!(out, pattern(1, 1));
    }
    assert!(new_key.rkey.get() != key.rkey.get() || new_key.addr.get() != key.addr.get());
}

#[test]
#[ignore = "needs an RDMA device: scripts/softroce.sh runs it in a soft-RoCE guest"]
fn failed_completions_break_a_lane_that_is_rebuilt() {
    let s = server(true, None);
    let t = connect(&s, None);
    let region = t.alloc(64 * PAGE_SIZE as u64).unwrap();
    let data = pattern(64, 3);
    t.write_pages(region, &(0..64).collect::<Vec<_>>(), &data).unwrap();
    for round in 0..6u64 {
        // A bad key fails at the device: the lane's queue pair enters the error state.
        let key = t.region_key(region).unwrap();
        assert!(t.read_raw(key.addr.get(), key.rkey.get() ^ 0x5a5a, PAGE_SIZE).is_err(), "a bad key must fail");
        let mut out = vec![0u8; 64 * PAGE_SIZE];
        t.read_pages(region, &(0..64).collect::<Vec<_>>(), &mut out).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(out == data, "round {round}: a rebuilt lane read other bytes");
    }
}

#[test]
#[ignore = "needs an RDMA device: scripts/softroce.sh runs it in a soft-RoCE guest"]
fn queue_pairs_outlive_the_idle_timeout_of_their_silent_connections() {
    // A lane's connection carries nothing after RdmaConnect (its traffic is on the queue pair):
    // the memnode closing it as idle destroyed the queue pair under a client that was using it.
    let idle = std::time::Duration::from_secs(1);
    let (s, _) = server_configured(true, ServerConfig { idle_timeout: idle, ..Default::default() });
    let t = connect(&s, None);
    let region = t.alloc(32 * PAGE_SIZE as u64).unwrap();
    let data = pattern(32, 9);
    t.write_pages(region, &(0..32).collect::<Vec<_>>(), &data).unwrap();
    for round in 0..2 {
        std::thread::sleep(idle * 3);
        let mut out = vec![0u8; 32 * PAGE_SIZE];
        t.read_pages(region, &(0..32).collect::<Vec<_>>(), &mut out).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(out == data, "round {round}: other bytes came back");
    }
}

#[test]
#[ignore = "needs an RDMA device: scripts/softroce.sh runs it in a soft-RoCE guest"]
fn protection_domains_go_with_their_identity() {
    let (s, fabric) = server_with_fabric(true, None);
    let fabric = fabric.unwrap();
    let t = connect(&s, Some("pd-secret"));
    let region = t.alloc(16 * PAGE_SIZE as u64).unwrap();
    t.write_pages(region, &[0], &pattern(1, 5)).unwrap();
    assert_eq!(fabric.domains(), 1);
    // The client goes (its session ends, its connections close): nothing of its identity is left.
    drop(t);
    assert!(crate::test_support::wait_until(std::time::Duration::from_secs(5), || fabric.domains() == 0), "{} domains left", fabric.domains());
}

#[test]
#[ignore = "needs an RDMA device: scripts/softroce.sh runs it in a soft-RoCE guest"]
fn a_memnode_without_a_device_refuses_rdma_clearly() {
    let s = server(false, None);
    let err = RdmaTransport::connect(&s.local_addr().to_string(), TcpConfig { rdma_device: Some(device()), ..Default::default() })
        .unwrap_err();
    assert!(matches!(err, TransportError::Refused { code: Some(ErrorCode::BadRequest), .. }), "{err}");
    assert!(err.to_string().contains("--rdma-device"), "{err}");
}

#[test]
#[ignore = "needs an RDMA device: scripts/softroce.sh runs it in a soft-RoCE guest"]
fn a_second_queue_pair_on_one_connection_is_refused() {
    use zerocopy::IntoBytes;
    let s = server(true, None);
    let control = crate::client::TcpTransport::connect(&s.local_addr().to_string(), TcpConfig::default()).unwrap();
    let mut conn = control.open_conn().unwrap();
    let ctx = verbs::Context::open(Some(&device())).unwrap();
    let pd = verbs::Pd::new(&ctx).unwrap();
    let (qp1, qp2) = (Qp::new(&pd).unwrap(), Qp::new(&pd).unwrap());
    control.request(Some(&mut conn), "rdma connect", crate::proto::Op::RdmaConnect, 0, qp1.info().as_bytes(), None).unwrap();
    let err = control.request(Some(&mut conn), "rdma connect", crate::proto::Op::RdmaConnect, 0, qp2.info().as_bytes(), None).unwrap_err();
    assert!(matches!(err, TransportError::Refused { code: Some(ErrorCode::BadRequest), .. }), "{err}");
    assert!(err.to_string().contains("already has a queue pair"), "{err}");
}
