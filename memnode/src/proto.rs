//! The memnode wire protocol: the single source of truth for both ends (server and `tcp` client).
//!
//! Every message is one frame: a fixed 32-byte little-endian [`Header`] followed by `len` payload bytes.
//! Requests carry a client-chosen `tag` that the reply echoes, so a client may pipeline many requests on
//! one connection; the server answers them in order.
//!
//! ```text
//!  0       4       6       8               16              24      28      32
//!  +-------+-------+-------+---------------+---------------+-------+-------+
//!  | magic |version|  op   |      tag      |    region     |  arg  |  len  |  then `len` payload bytes
//!  +-------+-------+-------+---------------+---------------+-------+-------+
//! ```
//!
//! A connection starts with `Hello` (version check), then `Auth` (token), optionally `Session`
//! (which lease the connection's regions belong to); only then are region operations accepted.
//! Regions belong to an identity's session, which lives while its client renews it (any request
//! does, and `Renew`); a session not renewed for its lease ends, and after a grace period its regions
//! are freed (see `docs/memnode-protocol.md`). Page data travels as a table of [`PageDesc`] (page index + CRC-32 of the
//! page's bytes) followed by the pages themselves, so a receiver verifies every page before using it.
//! The protocol is described for humans in `docs/memnode-protocol.md`.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of one page on the wire and in the store.
pub const PAGE_SIZE: usize = 4096;
/// `PAGE_SIZE` as a `u64`, for offsets.
pub const PAGE_SIZE_U64: u64 = 4096;
/// First four bytes of every frame: "EBB1" read as a little-endian integer.
pub const MAGIC: u32 = u32::from_le_bytes(*b"EBB1");
/// Protocol version spoken by this build. A peer with another version is refused at `Hello`.
pub const VERSION: u16 = 2;
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 32;
/// Most pages one `Read` or `Write` frame may carry (1 MiB of page data). Larger batches are split
/// into several pipelined frames by the client.
pub const MAX_PAGES_PER_FRAME: usize = 256;
/// Longest token accepted by `Auth`.
pub const MAX_TOKEN_LEN: usize = 256;
/// Longest session name accepted by `Session`.
pub const MAX_SESSION_NAME: usize = 64;
/// Largest payload any frame may carry; a header announcing more is a protocol error and closes the
/// connection before anything is read.
pub const MAX_PAYLOAD: usize = MAX_PAGES_PER_FRAME * (PAGE_SIZE + size_of::<PageDesc>());
/// Bit set in `op` of a successful reply.
pub const REPLY_BIT: u16 = 0x8000;
/// `op` of an error reply; `arg` holds an [`ErrorCode`], the payload a UTF-8 message.
pub const OP_ERROR: u16 = 0xFFFF;

/// The fixed frame header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Header {
    pub magic: U32,
    pub version: U16,
    pub op: U16,
    pub tag: U64,
    pub region: U64,
    pub arg: U32,
    pub len: U32,
}
const _: () = assert!(size_of::<Header>() == HEADER_LEN);

/// One entry of a page table in a `Read` reply or a `Write` request.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct PageDesc {
    /// Page index inside the region.
    pub page: U64,
    /// CRC-32 (IEEE, as computed by `crc32fast`) of the page's 4096 bytes.
    pub crc: U32,
    pub reserved: U32,
}
const _: () = assert!(size_of::<PageDesc>() == 16);

/// Statistics of a memnode, the payload of a `Stats` reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct StatsReply {
    pub capacity: U64,
    pub allocated: U64,
    pub regions: U64,
    pub pages_read: U64,
    pub pages_written: U64,
    pub connections: U64,
}
const _: () = assert!(size_of::<StatsReply>() == 48);

/// The fixed part of a `Session` request; the session name's bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SessionRequest {
    /// The client instance's random nonce: who holds the session.
    pub nonce: U64,
    /// [`SESSION_CLAIM`], [`SESSION_FREE_LEFTOVERS`].
    pub flags: U32,
    pub name_len: U32,
}
const _: () = assert!(size_of::<SessionRequest>() == 16);

/// Take the session for this nonce (a client's first connection). Refused while another nonce
/// holds it and renews it; a lapsed holder's session is taken over. Without this flag the
/// connection only attaches to a session its nonce already holds.
pub const SESSION_CLAIM: u32 = 1;
/// With [`SESSION_CLAIM`]: free the regions a previous holder left in the session (a restarted
/// client that cannot use them). Without it they are kept for the new holder (reclaimed).
pub const SESSION_FREE_LEFTOVERS: u32 = 2;

/// The reply to `Session`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SessionReply {
    /// A session not renewed for this long ends.
    pub lease_ms: U32,
    /// An ended session's regions are freed this long after it ended.
    pub grace_ms: U32,
    /// The memnode closes a connection idle for this long.
    pub idle_timeout_ms: U32,
    pub reserved: U32,
    /// Regions (and their stored bytes) a previous holder left: freed, or kept, as asked.
    pub leftover_regions: U64,
    pub leftover_bytes: U64,
}
const _: () = assert!(size_of::<SessionReply>() == 32);

/// One session in a `Usage` reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct UsageEntry {
    /// Bytes the session's regions store (what capacity and quotas count).
    pub stored: U64,
    /// Bytes its regions declare.
    pub declared: U64,
    pub regions: U64,
    /// Milliseconds since the session was last renewed.
    pub renewed_ms_ago: U64,
    /// The identity's quota in bytes.
    pub quota: U64,
    /// [`USAGE_LIVE`], [`USAGE_GRACE`].
    pub state: U32,
    pub connections: U32,
    /// "IDENTITY[, session NAME]", UTF-8, NUL-padded (cut at 96 bytes).
    pub name: [u8; 96],
}
const _: () = assert!(size_of::<UsageEntry>() == 144);

/// The session is renewed within its lease.
pub const USAGE_LIVE: u32 = 0;
/// The session's lease lapsed: its regions are freed when the grace period ends.
pub const USAGE_GRACE: u32 = 1;

/// Request operations. A reply has the same value with [`REPLY_BIT`] set, or is [`OP_ERROR`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// Version check; must be the first frame. Empty payload.
    Hello = 1,
    /// Payload: the token. Must follow `Hello`; everything below requires it.
    Auth = 2,
    /// Payload: `u64` size in bytes (a multiple of the page size). Reply: `region` = new id.
    Alloc = 3,
    /// `region`: the region to release. Empty payload.
    Free = 4,
    /// Empty payload. Reply payload: [`StatsReply`].
    Stats = 5,
    /// `region`, `arg` = page count, payload = `arg` × `u64` page index.
    /// Reply: `arg` = count, payload = `arg` × [`PageDesc`] then `arg` × page bytes.
    Read = 6,
    /// `region`, `arg` = page count, payload = `arg` × [`PageDesc`] then `arg` × page bytes.
    Write = 7,
    /// `region`, payload: `u64` new size in bytes. Growing keeps contents; shrinking drops the tail.
    Resize = 8,
    /// Payload: the client's [`QpInfo`]. The memnode creates a queue pair for this connection (in
    /// the client identity's protection domain), connects it, and replies with its own
    /// [`QpInfo`]. The queue pair lives as long as this TCP connection. Refused with `BadRequest`
    /// by a memnode started without `--rdma-device`.
    RdmaConnect = 9,
    /// `region`. Empty payload. Reply payload: [`RegionKey`], the address and remote key of the
    /// region's memory, registered in the identity's protection domain (valid until the region is
    /// freed or resized).
    RdmaRegion = 10,
    /// Payload: [`SessionRequest`] then the session name (≤ [`MAX_SESSION_NAME`] bytes). Binds this
    /// connection to that session of its identity; regions it allocates belong to it. Reply
    /// payload: [`SessionReply`]. Without it a connection uses the identity's default session.
    Session = 11,
    /// Empty payload: renews the connection's session (clients send it while idle).
    Renew = 12,
    /// Empty payload: ends the connection's session now, freeing its regions.
    EndSession = 13,
    /// Empty payload. Reply payload: [`UsageEntry`] × N — the asking identity's sessions, or every
    /// identity's for an operator token.
    Usage = 14,
    /// `region`, `arg` = 1 for a writable ticket, 0 for read-only. Empty payload. Reply payload:
    /// the 16-byte ticket another client presents to `Attach`. Owner only.
    Grant = 15,
    /// `region`, payload: a 16-byte ticket. From now on this connection's session may read the
    /// region (and write and grow it, for a writable ticket) by its id. Reply `arg` = 1 if
    /// writable. A wrong or revoked ticket is answered `NoSuchRegion`.
    Attach = 16,
    /// `region`, payload: a 16-byte ticket the owner granted; withdraws it and every attachment
    /// made with it. Owner only.
    Revoke = 17,
}

/// One end of an RDMA reliable connection, exchanged over the TCP control plane.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct QpInfo {
    /// Queue pair number.
    pub qpn: U32,
    /// First packet sequence number.
    pub psn: U32,
    /// Port LID (InfiniBand; 0 on RoCE).
    pub lid: U16,
    /// Path MTU code (`ibv_mtu`: 1 = 256 … 5 = 4096) of the port; both ends use the smaller.
    pub mtu: U16,
    /// GID (RoCE: the address the peer routes to).
    pub gid: [u8; 16],
    pub reserved: U32,
}
const _: () = assert!(size_of::<QpInfo>() == 32);

/// Where a region's memory is for one-sided RDMA.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct RegionKey {
    pub addr: U64,
    pub len: U64,
    pub rkey: U32,
    pub reserved: U32,
}
const _: () = assert!(size_of::<RegionKey>() == 24);

impl Op {
    pub fn from_u16(v: u16) -> Option<Op> {
        Some(match v {
            1 => Op::Hello,
            2 => Op::Auth,
            3 => Op::Alloc,
            4 => Op::Free,
            5 => Op::Stats,
            6 => Op::Read,
            7 => Op::Write,
            8 => Op::Resize,
            9 => Op::RdmaConnect,
            10 => Op::RdmaRegion,
            11 => Op::Session,
            12 => Op::Renew,
            13 => Op::EndSession,
            14 => Op::Usage,
            15 => Op::Grant,
            16 => Op::Attach,
            17 => Op::Revoke,
            _ => return None,
        })
    }
}

/// Why a request failed; carried in `arg` of an error reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// The frame could not be decoded; the server closes the connection after replying.
    BadFrame = 1,
    /// The peer speaks another protocol version; the connection is closed.
    UnsupportedVersion = 2,
    /// A region operation before a successful `Hello` + `Auth`.
    NotAuthenticated = 3,
    /// The token is not in the memnode's token file.
    BadToken = 4,
    /// The region does not exist or belongs to another client (deliberately indistinguishable).
    NoSuchRegion = 5,
    /// The memnode has no room for the pages (nothing is said about other identities' usage).
    OutOfCapacity = 6,
    /// A page index or size outside the region, or a size that is not page-aligned.
    OutOfRange = 7,
    /// A page in a `Write` whose checksum does not match its bytes; nothing of the frame was stored.
    BadChecksum = 8,
    /// A request that is well-formed but not allowed in this state (e.g. a second `Hello`).
    BadRequest = 9,
    /// Storing the pages would exceed the identity's quota.
    QuotaExceeded = 10,
    /// The session is held by another live client, or this connection's nonce no longer holds it.
    SessionRefused = 11,
}

impl ErrorCode {
    pub fn from_u32(v: u32) -> Option<ErrorCode> {
        Some(match v {
            1 => ErrorCode::BadFrame,
            2 => ErrorCode::UnsupportedVersion,
            3 => ErrorCode::NotAuthenticated,
            4 => ErrorCode::BadToken,
            5 => ErrorCode::NoSuchRegion,
            6 => ErrorCode::OutOfCapacity,
            7 => ErrorCode::OutOfRange,
            8 => ErrorCode::BadChecksum,
            9 => ErrorCode::BadRequest,
            10 => ErrorCode::QuotaExceeded,
            11 => ErrorCode::SessionRefused,
            _ => return None,
        })
    }
}

/// A header that cannot be accepted. Each of these closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("Frame starts with {found:#010x}, not the memnode magic {MAGIC:#010x}: is this a memnode?")]
    BadMagic { found: u32 },
    #[error("Frame announces a {len}-byte payload, more than the {MAX_PAYLOAD}-byte limit")]
    Oversized { len: u32 },
    #[error("Frame has unknown op {op:#06x}")]
    UnknownOp { op: u16 },
    #[error("Payload of {len} bytes does not fit op {op:?} with arg {arg}")]
    BadPayload { op: Op, arg: u32, len: usize },
}

impl Header {
    /// A header for `op` with every other field given.
    pub fn new(op: u16, tag: u64, region: u64, arg: u32, len: usize) -> Header {
        Header {
            magic: MAGIC.into(),
            version: VERSION.into(),
            op: op.into(),
            tag: tag.into(),
            region: region.into(),
            arg: arg.into(),
            len: u32::try_from(len).unwrap_or(u32::MAX).into(),
        }
    }

    /// Decodes and checks the fixed header. It checks what can be checked without the payload:
    /// magic and payload bound. The version is checked by the server at `Hello`, so that an old
    /// client gets a readable error rather than a closed socket.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        // The header type accepts any bit pattern, so this cannot fail for a 32-byte array.
        let header = Header::read_from_bytes(bytes).map_err(|_| FrameError::Oversized { len: 0 })?;
        if header.magic.get() != MAGIC {
            return Err(FrameError::BadMagic { found: header.magic.get() });
        }
        if header.len.get() as usize > MAX_PAYLOAD {
            return Err(FrameError::Oversized { len: header.len.get() });
        }
        Ok(header)
    }

    /// The payload length as a `usize`.
    pub fn payload_len(&self) -> usize {
        self.len.get() as usize
    }
}

/// Checks that a request's payload has the exact shape its op requires, returning the op.
pub fn check_request(header: &Header) -> Result<Op, FrameError> {
    let op = Op::from_u16(header.op.get()).ok_or(FrameError::UnknownOp { op: header.op.get() })?;
    let len = header.payload_len();
    let arg = header.arg.get();
    let count = arg as usize;
    let ok = match op {
        Op::Hello | Op::Free | Op::Stats | Op::RdmaRegion | Op::Renew | Op::EndSession | Op::Usage => len == 0,
        Op::Grant => len == 0 && arg <= 1,
        Op::Attach | Op::Revoke => len == size_of::<crate::store::Ticket>(),
        // The name length inside the payload is checked by `session_request`.
        Op::Session => (size_of::<SessionRequest>()..=size_of::<SessionRequest>() + MAX_SESSION_NAME).contains(&len),
        Op::RdmaConnect => len == size_of::<QpInfo>(),
        Op::Auth => len <= MAX_TOKEN_LEN,
        Op::Alloc | Op::Resize => len == 8,
        Op::Read => count <= MAX_PAGES_PER_FRAME && len == count * 8,
        Op::Write => count <= MAX_PAGES_PER_FRAME && len == count * (size_of::<PageDesc>() + PAGE_SIZE),
    };
    if ok { Ok(op) } else { Err(FrameError::BadPayload { op, arg, len }) }
}

/// Splits a `Session` payload into its request and name; None when they disagree.
pub fn session_request(payload: &[u8]) -> Option<(SessionRequest, &[u8])> {
    let (head, name) = payload.split_at_checked(size_of::<SessionRequest>())?;
    let req = SessionRequest::read_from_bytes(head).ok()?;
    (req.name_len.get() as usize == name.len() && name.len() <= MAX_SESSION_NAME).then_some((req, name))
}

/// The checksum carried with every page.
pub fn page_crc(page: &[u8]) -> u32 {
    crc32fast::hash(page)
}

/// Reads a little-endian `u64` payload (sizes).
pub fn decode_u64(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Splits a page-data payload into its descriptor table and page bytes.
pub fn split_pages(payload: &[u8], count: usize) -> Option<(&[PageDesc], &[u8])> {
    let table = count.checked_mul(size_of::<PageDesc>())?;
    let (descs, data) = payload.split_at_checked(table)?;
    let descs = <[PageDesc]>::ref_from_bytes(descs).ok()?;
    if data.len() != count.checked_mul(PAGE_SIZE)? {
        return None;
    }
    Some((descs, data))
}

/// Reads a `u64` page-index list (payload of a `Read` request).
pub fn page_list(payload: &[u8]) -> Option<&[U64]> {
    <[U64]>::ref_from_bytes(payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_roundtrip() {
        let h = Header::new(Op::Read as u16, 7, 9, 3, 24);
        let bytes: [u8; HEADER_LEN] = h.as_bytes().try_into().unwrap();
        assert_eq!(Header::decode(&bytes).unwrap(), h);
        assert_eq!(&bytes[..4], b"EBB1");
        assert_eq!(check_request(&h).unwrap(), Op::Read);
    }

    #[test]
    fn shapes_are_checked() {
        let too_many = Header::new(Op::Read as u16, 0, 0, 257, 257 * 8);
        assert!(matches!(check_request(&too_many), Err(FrameError::BadPayload { .. })));
        let short_write = Header::new(Op::Write as u16, 0, 0, 1, 16 + 100);
        assert!(check_request(&short_write).is_err());
        let unknown = Header::new(99, 0, 0, 0, 0);
        assert_eq!(check_request(&unknown), Err(FrameError::UnknownOp { op: 99 }));
        let mut bytes: [u8; HEADER_LEN] = Header::new(1, 0, 0, 0, 0).as_bytes().try_into().unwrap();
        bytes[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Header::decode(&bytes), Err(FrameError::Oversized { len: u32::MAX }));
    }

    #[test]
    fn page_split() {
        let mut payload = vec![0u8; 2 * (16 + PAGE_SIZE)];
        payload[0] = 5;
        let (descs, data) = split_pages(&payload, 2).unwrap();
        assert_eq!(descs[0].page.get(), 5);
        assert_eq!(data.len(), 2 * PAGE_SIZE);
        assert!(split_pages(&payload[1..], 2).is_none());
    }

    proptest! {
        // Decoding arbitrary bytes never panics, and whatever decodes re-encodes to the same bytes.
        #[test]
        fn decode_arbitrary_headers(bytes in proptest::array::uniform32(any::<u8>())) {
            if let Ok(h) = Header::decode(&bytes) {
                prop_assert_eq!(h.as_bytes(), &bytes[..]);
                prop_assert!(h.payload_len() <= MAX_PAYLOAD);
                let _ = check_request(&h);
            }
        }

        // Arbitrary payloads never panic the payload parsers.
        #[test]
        fn parse_arbitrary_payloads(payload in proptest::collection::vec(any::<u8>(), 0..9000), count in 0usize..4) {
            let _ = split_pages(&payload, count);
            let _ = page_list(&payload);
            let _ = decode_u64(&payload);
        }
    }
}
