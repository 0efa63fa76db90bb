//! The replication endpoints' UDP sockets: quinn's tokio runtime with every socket's
//! segmentation offload (GSO) batch capped so that it fits one send.
//!
//! quinn puts up to 10 datagrams of the path MTU into one GSO send, and Linux refuses a
//! send of more than 64 KiB. With datagrams larger than 6.5 KB (MTU discovery on a
//! loopback or jumbo-frame path) every full batch failed, the failures looked like a
//! black hole, and quinn fell back to 1200-byte datagrams. Capping the batch at
//! `64 KiB / max_udp_payload` datagrams keeps every send within the limit, so large
//! datagrams can be used where the path carries them. (Socket buffers stay the kernel's:
//! 4 MiB ones made raw quinn faster but replication slower, bench/RESULTS.md.)

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};

/// The most bytes one send may carry, GSO batch included (Linux: 64 KiB of UDP payload).
pub const MAX_SEND_BYTES: usize = 65_507;

/// quinn's tokio runtime, wrapping every socket in [`Capped`].
#[derive(Debug)]
pub struct CappedRuntime {
    /// The largest datagram the endpoint may send (its MTU discovery upper bound).
    pub max_udp_payload: u16,
}

impl Runtime for CappedRuntime {
    fn new_timer(&self, t: std::time::Instant) -> Pin<Box<dyn AsyncTimer>> {
        TokioRuntime.new_timer(t)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        TokioRuntime.spawn(future);
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let inner = TokioRuntime.wrap_udp_socket(sock)?;
        Ok(Arc::new(Capped {
            inner,
            cap: gso_cap(self.max_udp_payload),
        }))
    }

    fn now(&self) -> std::time::Instant {
        TokioRuntime.now()
    }
}

/// A socket whose GSO batches hold at most `cap` datagrams.
pub struct Capped {
    inner: Arc<dyn AsyncUdpSocket>,
    cap: usize,
}

impl fmt::Debug for Capped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capped")
            .field("inner", &self.inner)
            .field("cap", &self.cap)
            .finish()
    }
}

impl AsyncUdpSocket for Capped {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.cap)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// The largest datagram on a loopback path: a jumbo frame (9000 bytes less IPv6 and UDP
/// headers). Measured on loopback against 1452, 8192, 16384, 32768 and 65000: the
/// steadiest and, with 16384, the fastest (bench/RESULTS.md); larger datagrams leave
/// fewer per GSO send and gained nothing more.
pub const LOOPBACK_MAX_UDP_PAYLOAD: u16 = 8952;

/// The largest datagram where nothing is known of the path: quinn's default, which fits
/// IPv6 over a 1500-byte Ethernet MTU.
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 1452;

/// The smallest a QUIC path must carry (RFC 9000, section 14).
pub const MIN_UDP_PAYLOAD: u16 = 1200;

/// The largest UDP payload of an IPv4 datagram.
pub const MAX_UDP_PAYLOAD: u16 = 65_507;

/// The largest datagram to send towards `peer` when it was not configured: a loopback
/// path carries [`LOOPBACK_MAX_UDP_PAYLOAD`], anything else [`DEFAULT_MAX_UDP_PAYLOAD`]
/// (set `max_udp_payload` on a jumbo-frame network). MTU discovery finds what the path
/// carries up to this bound; it never sends larger data packets than a probe proved.
pub fn auto_max_udp_payload(peer: std::net::IpAddr) -> u16 {
    if peer.is_loopback() {
        LOOPBACK_MAX_UDP_PAYLOAD
    } else {
        DEFAULT_MAX_UDP_PAYLOAD
    }
}

/// The bound an endpoint uses: `configured`, checked, else the one for a path to or from
/// `path` ([`auto_max_udp_payload`]).
///
/// # Errors
/// A configured bound outside the range, as [`check_max_udp_payload`].
pub fn resolve(configured: Option<u16>, path: std::net::IpAddr) -> Result<u16, String> {
    configured.map_or(Ok(auto_max_udp_payload(path)), check_max_udp_payload)
}

/// Checks a configured `max_udp_payload`.
///
/// # Errors
/// Outside [`MIN_UDP_PAYLOAD`]`..=`[`MAX_UDP_PAYLOAD`], with the range named.
pub fn check_max_udp_payload(v: u16) -> Result<u16, String> {
    if (MIN_UDP_PAYLOAD..=MAX_UDP_PAYLOAD).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "max_udp_payload {v} is outside {MIN_UDP_PAYLOAD} ..= {MAX_UDP_PAYLOAD}"
        ))
    }
}

/// The runtime of an endpoint whose datagrams are at most `max_udp_payload` bytes: what
/// the leader and the follower use, and what any other quinn endpoint sending such
/// datagrams should use with [`tls::endpoint_config_for`](crate::tls::endpoint_config_for)
/// and [`tls::transport_config_for`](crate::tls::transport_config_for).
///
/// ```
/// use walship_transport::{tls, udp};
/// let payload = udp::auto_max_udp_payload("127.0.0.1".parse()?);
/// assert_eq!(payload, udp::LOOPBACK_MAX_UDP_PAYLOAD);
/// let rt = tokio::runtime::Runtime::new()?;
/// let _in_runtime = rt.enter();
/// let endpoint = quinn::Endpoint::new(
///     tls::endpoint_config_for(payload),
///     None,
///     std::net::UdpSocket::bind("127.0.0.1:0")?,
///     udp::runtime(payload),
/// )?;
/// assert!(endpoint.local_addr()?.ip().is_loopback());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn runtime(max_udp_payload: u16) -> Arc<dyn Runtime> {
    Arc::new(CappedRuntime { max_udp_payload })
}

/// How many datagrams of `max_udp_payload` bytes one send may carry.
pub fn gso_cap(max_udp_payload: u16) -> usize {
    (MAX_SEND_BYTES / usize::from(max_udp_payload.max(MIN_UDP_PAYLOAD))).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gso_send_never_exceeds_what_linux_takes() {
        for p in [MIN_UDP_PAYLOAD, 1452, 8952, 16384, 32768, MAX_UDP_PAYLOAD] {
            let n = gso_cap(p);
            assert!(n >= 1 && n * usize::from(p) <= MAX_SEND_BYTES, "{p}: {n}");
            // And no fewer than fit.
            assert!((n + 1) * usize::from(p) > MAX_SEND_BYTES, "{p}: {n}");
        }
        assert_eq!(gso_cap(1452), 45, "quinn's own cap of 10 then rules");
        assert_eq!(gso_cap(8952), 7);
    }

    #[test]
    fn loopback_paths_get_jumbo_datagrams_and_others_the_default() {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        assert_eq!(auto_max_udp_payload(IpAddr::V4(Ipv4Addr::LOCALHOST)), 8952);
        assert_eq!(auto_max_udp_payload(IpAddr::V6(Ipv6Addr::LOCALHOST)), 8952);
        assert_eq!(auto_max_udp_payload("10.1.2.3".parse().unwrap()), 1452);
        assert_eq!(
            auto_max_udp_payload(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            1452
        );
        assert!(check_max_udp_payload(1199).is_err());
        assert!(check_max_udp_payload(65_508).is_err());
        assert_eq!(check_max_udp_payload(8952), Ok(8952));
    }
}
