//! Small socket helpers shared by the server and the `tcp` client.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Busy-polls `stream` for up to `spin` until it has bytes to read (or EOF). Returns early with
/// `true` as soon as it does; `false` means the caller should fall back to a blocking read.
///
/// Blocking on a loopback socket costs a cross-CPU wake-up (tens of µs on these VMs, see
/// shared/notes/kernel.md), far more than the transfer itself; a short spin avoids it when a reply
/// is on its way. With `spin` zero this is a no-op.
pub fn spin_until_readable(stream: &TcpStream, spin: Duration) -> bool {
    if spin.is_zero() {
        return false;
    }
    let start = Instant::now();
    let fd = stream.as_raw_fd();
    let mut byte = 0u8;
    loop {
        // SAFETY: `fd` is a live socket borrowed from `stream` for this call, and `byte` is a
        // valid one-byte buffer; MSG_PEEK leaves the data in the socket.
        let n = unsafe { libc::recv(fd, (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n >= 0 {
            return true;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock && err.kind() != io::ErrorKind::Interrupted {
            return true; // Let the real read report it.
        }
        if start.elapsed() >= spin {
            return false;
        }
        std::hint::spin_loop();
    }
}
