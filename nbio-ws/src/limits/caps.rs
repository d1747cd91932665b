//! Connection caps (global and per client address) and the pending
//! handshake refusal.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

/// Why a connection was refused by the caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CapExceeded {
    Global,
    PerIp,
}

/// Global and per-address connection counts.
#[derive(Debug, Default)]
pub(crate) struct Caps {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
}

/// A reserved connection slot, released when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    caps: Arc<Caps>,
    ip: Option<IpAddr>,
}

impl Caps {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Self {
        Caps {
            max_total,
            max_per_ip,
            ..Caps::default()
        }
    }

    /// Reserves a slot for a client at `ip`.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, CapExceeded> {
        let n = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max_total > 0 && n > self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(CapExceeded::Global);
        }
        let mut slot = ConnectionSlot {
            caps: Arc::clone(self),
            ip: None,
        };
        if self.max_per_ip > 0 {
            let key = ip_key(ip);
            let mut count = self.per_ip.entry(key).or_insert(0);
            if *count >= self.max_per_ip {
                // (`count` is at least 1 here, so no empty entry is left;
                // dropping `slot` releases the global count.)
                return Err(CapExceeded::PerIp);
            }
            *count += 1;
            slot.ip = Some(key);
        }
        Ok(slot)
    }

    /// Connections counted now.
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Addresses with at least one counted connection.
    pub(crate) fn tracked_ips(&self) -> usize {
        self.per_ip.len()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.caps.per_ip.entry(ip) {
                *e.get_mut() = e.get().saturating_sub(1);
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        self.caps.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The key an address is counted under: IPv4 as is (IPv4-mapped IPv6
/// included), IPv6 by its `/64`.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

// ---------------------------------------------------------------------------
// Pending handshakes

/// The response written to a TCP connection refused because too many
/// handshakes are in progress.
pub(crate) const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\nretry-after: 1\r\nconnection: close\r\n\
content-length: 32\r\n\r\ntoo many handshakes in progress\n";

/// Writes [`BUSY_RESPONSE`] and closes, within a second.
pub(crate) async fn refuse_busy<S: tokio::io::AsyncWrite + Unpin>(mut stream: S) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(BUSY_RESPONSE).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_response_length_is_right() {
        let text = std::str::from_utf8(BUSY_RESPONSE).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body.len(), 32);
    }

    #[test]
    fn caps_count_and_free_per_address() {
        let caps = Arc::new(Caps::new(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = caps.acquire(a).unwrap();
        let s2 = caps.acquire(a).unwrap();
        assert_eq!(caps.acquire(a).unwrap_err(), CapExceeded::PerIp);
        let s3 = caps.acquire(b).unwrap();
        assert_eq!(caps.acquire(b).unwrap_err(), CapExceeded::Global);
        assert_eq!(caps.total(), 3);
        drop((s1, s2, s3));
        assert_eq!(caps.total(), 0);
        assert_eq!(caps.tracked_ips(), 0);
        // IPv6 addresses of one /64 share a count.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let _x = caps.acquire(v6a).unwrap();
        let _y = caps.acquire(v6b).unwrap();
        assert_eq!(caps.acquire(v6a).unwrap_err(), CapExceeded::PerIp);
        assert_eq!(caps.tracked_ips(), 1);
    }
}
