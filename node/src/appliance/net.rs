//! The appliance's network: the card, its address (static or DHCP), the
//! default route, `/etc/resolv.conf` and `/etc/hosts`.
//!
//! Links, addresses and routes go through rtnetlink (as the cni crate's
//! routes do); the DHCP messages are dhcproto's, sent on a UDP socket bound
//! to the card (`SO_BINDTODEVICE`), with the broadcast flag so the server
//! answers to the broadcast address while the card has no address yet
//! (RFC 2131 4.1). The lease is not renewed: a lease shorter than the
//! machine's uptime needs a static address (the README says so).

use super::config::Addressing;
use anyhow::{bail, Context};
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use futures::TryStreamExt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

/// What the network ended up as.
#[derive(Debug, Clone)]
pub struct NetState {
    /// The card.
    pub interface: String,
    /// Its MAC address (`aa:bb:...`).
    pub mac: String,
    /// Its address and prefix.
    pub address: IpAddr,
    /// The prefix length.
    pub prefix: u8,
    /// The default gateway.
    pub gateway: Option<IpAddr>,
    /// Name servers.
    pub dns: Vec<IpAddr>,
    /// "dhcp" or "static".
    pub how: &'static str,
}

/// The first Ethernet card (sorted by name) with a carrier, waiting up to
/// `wait` for one to appear and get a link; `want` names one instead.
pub fn pick_interface(sys: &Path, want: Option<&str>, wait: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + wait;
    loop {
        let mut cards: Vec<String> = std::fs::read_dir(sys.join("class/net"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        cards.sort();
        let read = |card: &str, f: &str| {
            std::fs::read_to_string(sys.join("class/net").join(card).join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        if let Some(want) = want {
            if cards.iter().any(|c| c == want) {
                return Ok(want.to_string());
            }
        } else {
            // Type 1 is Ethernet; a card without a device is virtual.
            let ethernet: Vec<&String> = cards
                .iter()
                .filter(|c| {
                    read(c, "type") == "1" && sys.join("class/net").join(c).join("device").exists()
                })
                .collect();
            // Bring them up so carrier is known.
            for c in &ethernet {
                let _ = set_up_blocking(c);
            }
            if let Some(c) = ethernet.iter().find(|c| read(c, "carrier") == "1") {
                return Ok((*c).clone());
            }
            if Instant::now() >= deadline {
                if let Some(c) = ethernet.first() {
                    return Ok((*c).clone());
                }
            }
        }
        if Instant::now() >= deadline {
            match want {
                Some(w) => bail!(
                    "network.interface {w:?} does not exist (cards: {})",
                    cards.join(", ")
                ),
                None => bail!(
                    "no Ethernet card found (interfaces: {}); the image may lack its driver",
                    cards.join(", ")
                ),
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn set_up_blocking(card: &str) -> anyhow::Result<()> {
    with_netlink(async |handle| set_up(&handle, card).await.map(|_| ()))
}

/// Runs `f` with an rtnetlink handle on a runtime of its own (PID 1 has
/// no runtime; these calls are few and short).
fn with_netlink<T>(
    f: impl AsyncFnOnce(rtnetlink::Handle) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        f(handle).await
    })
}

/// Brings link `name` up; its index.
async fn set_up(handle: &rtnetlink::Handle, name: &str) -> anyhow::Result<u32> {
    let index = link_index(handle, name).await?;
    handle
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .with_context(|| format!("bringing up {name}"))?;
    Ok(index)
}

async fn link_index(handle: &rtnetlink::Handle, name: &str) -> anyhow::Result<u32> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await? {
        Some(l) => Ok(l.header.index),
        None => bail!("no interface {name}"),
    }
}

/// Brings up loopback and `card`, gives it its address (static, or from
/// DHCP within `dhcp_wait`), the default route and the name servers.
pub fn configure(
    sys: &Path,
    card: &str,
    addressing: &Addressing,
    extra_dns: &[IpAddr],
    dhcp_wait: Duration,
) -> anyhow::Result<NetState> {
    let mac = std::fs::read_to_string(sys.join("class/net").join(card).join("address"))
        .map(|s| s.trim().to_string())
        .with_context(|| format!("reading {card}'s MAC address"))?;
    with_netlink(async |handle| {
        set_up(&handle, "lo").await?;
        let index = set_up(&handle, card).await?;
        let (address, prefix, gateway, mut dns, how) = match addressing {
            Addressing::Static {
                address,
                prefix,
                gateway,
            } => (*address, *prefix, *gateway, Vec::new(), "static"),
            Addressing::Dhcp => {
                let card = card.to_string();
                let mac = mac.clone();
                let lease =
                    tokio::task::spawn_blocking(move || dhcp(&card, &mac, dhcp_wait)).await??;
                (
                    IpAddr::V4(lease.address),
                    lease.prefix,
                    lease.router.map(IpAddr::V4),
                    lease.dns.into_iter().map(IpAddr::V4).collect(),
                    "dhcp",
                )
            }
        };
        match handle.address().add(index, address, prefix).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => {}
            Err(e) => {
                return Err(e).with_context(|| format!("adding {address}/{prefix} to {card}"))
            }
        }
        if let Some(IpAddr::V4(gw)) = gateway {
            let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build();
            match handle.route().add(route).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("adding the default route via {gw}"))
                }
            }
        }
        for d in extra_dns {
            if !dns.contains(d) {
                dns.push(*d);
            }
        }
        Ok(NetState {
            interface: card.to_string(),
            mac,
            address,
            prefix,
            gateway,
            dns,
            how,
        })
    })
}

/// Writes `/etc/resolv.conf` and `/etc/hosts` under `etc`.
pub fn write_resolver(etc: &Path, state: &NetState, hostname: &str) -> std::io::Result<()> {
    let mut resolv = String::new();
    for d in &state.dns {
        resolv.push_str(&format!("nameserver {d}\n"));
    }
    if state.dns.is_empty() {
        // The kubelet and CoreDNS need the file; with no server, names
        // outside the cluster do not resolve.
        resolv.push_str("# no name server: none was configured or offered\n");
    }
    std::fs::write(etc.join("resolv.conf"), resolv)?;
    std::fs::write(
        etc.join("hosts"),
        format!(
            "127.0.0.1 localhost\n::1 localhost\n{} {hostname}\n",
            state.address
        ),
    )
}

/// A DHCP lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address.
    pub address: Ipv4Addr,
    /// Its prefix length (from the subnet mask; 24 when none is given).
    pub prefix: u8,
    /// The router.
    pub router: Option<Ipv4Addr>,
    /// Name servers.
    pub dns: Vec<Ipv4Addr>,
    /// The server that gave it.
    pub server: Ipv4Addr,
}

fn mac_bytes(mac: &str) -> anyhow::Result<Vec<u8>> {
    mac.split(':')
        .map(|h| u8::from_str_radix(h, 16).with_context(|| format!("MAC address {mac:?}")))
        .collect()
}

/// A DHCPDISCOVER or DHCPREQUEST from `chaddr` with transaction `xid`.
pub fn request_message(chaddr: &[u8], xid: u32, offer: Option<(Ipv4Addr, Ipv4Addr)>) -> Vec<u8> {
    let mut msg = v4::Message::default();
    msg.set_flags(v4::Flags::default().set_broadcast())
        .set_chaddr(chaddr)
        .set_xid(xid);
    let opts = msg.opts_mut();
    match offer {
        None => {
            opts.insert(DhcpOption::MessageType(MessageType::Discover));
        }
        Some((address, server)) => {
            opts.insert(DhcpOption::MessageType(MessageType::Request));
            opts.insert(DhcpOption::RequestedIpAddress(address));
            opts.insert(DhcpOption::ServerIdentifier(server));
        }
    }
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
    ]));
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf))
        .expect("a DHCP message of fixed options encodes");
    buf
}

/// The lease in a DHCPOFFER or DHCPACK for `xid`, and its type; `None`
/// for anything else (another client's reply, a NAK is an error).
pub fn parse_reply(buf: &[u8], xid: u32) -> anyhow::Result<Option<(MessageType, Lease)>> {
    let Ok(msg) = v4::Message::decode(&mut Decoder::new(buf)) else {
        return Ok(None);
    };
    if msg.xid() != xid {
        return Ok(None);
    }
    let Some(kind) = msg.opts().msg_type() else {
        return Ok(None);
    };
    if kind == MessageType::Nak {
        bail!("the DHCP server refused the address it offered (DHCPNAK)");
    }
    let prefix = match msg.opts().get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => u32::from(*m).count_ones() as u8,
        _ => 24,
    };
    let router = match msg.opts().get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match msg.opts().get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let server = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => Ipv4Addr::UNSPECIFIED,
    };
    Ok(Some((
        kind,
        Lease {
            address: msg.yiaddr(),
            prefix,
            router,
            dns,
            server,
        },
    )))
}

/// Runs DHCP (discover, offer, request, ack) on `card`, resending every 2
/// seconds, for at most `wait`.
fn dhcp(card: &str, mac: &str, wait: Duration) -> anyhow::Result<Lease> {
    use std::os::fd::AsFd;
    let chaddr = mac_bytes(mac)?;
    let sock = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)))
        .context("binding UDP port 68 for DHCP")?;
    sock.set_broadcast(true)?;
    nix::sys::socket::setsockopt(
        &sock.as_fd(),
        nix::sys::socket::sockopt::BindToDevice,
        &std::ffi::OsString::from(card),
    )
    .with_context(|| format!("binding the DHCP socket to {card}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let server = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
    // Not from getrandom(2): at boot it blocks until the kernel's random
    // pool is ready, which on a machine without a hardware RNG can take
    // minutes. A transaction id needs only to differ between clients.
    let xid = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(mac.as_bytes());
        h.update(now.as_nanos().to_le_bytes());
        let d = h.finalize();
        u32::from_le_bytes([d[0], d[1], d[2], d[3]])
    };
    let deadline = Instant::now() + wait;
    let mut offer: Option<Lease> = None;
    let mut buf = [0u8; 1500];
    let mut last_sent = Instant::now() - Duration::from_secs(10);
    while Instant::now() < deadline {
        if last_sent.elapsed() >= Duration::from_secs(2) {
            let msg = request_message(&chaddr, xid, offer.as_ref().map(|o| (o.address, o.server)));
            sock.send_to(&msg, server)
                .context("sending a DHCP message")?;
            last_sent = Instant::now();
        }
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("receiving DHCP"),
        };
        match parse_reply(&buf[..n], xid)? {
            Some((MessageType::Offer, lease)) if offer.is_none() => {
                offer = Some(lease);
                last_sent = Instant::now() - Duration::from_secs(10); // request now
            }
            Some((MessageType::Ack, lease)) if offer.is_some() => return Ok(lease),
            _ => {}
        }
    }
    bail!(
        "no DHCP {} on {card} within {}s: is the card cabled to a network with a DHCP server? (or set network.address for a static one)",
        if offer.is_some() { "acknowledgement" } else { "offer" },
        wait.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discover_and_its_offer_round_trip_through_the_wire_format() {
        let mac = mac_bytes("52:54:00:12:34:56").unwrap();
        let wire = request_message(&mac, 7, None);
        let msg = v4::Message::decode(&mut Decoder::new(&wire)).unwrap();
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(&msg.chaddr()[..6], &mac[..]);
        assert!(msg.flags().broadcast());

        let mut offer = v4::Message::default();
        offer
            .set_opcode(v4::Opcode::BootReply)
            .set_xid(7)
            .set_yiaddr(Ipv4Addr::new(10, 0, 2, 15));
        offer
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        offer
            .opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        offer
            .opts_mut()
            .insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]));
        offer
            .opts_mut()
            .insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 0, 2, 3,
            )]));
        offer
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)));
        let mut buf = Vec::new();
        offer.encode(&mut Encoder::new(&mut buf)).unwrap();
        let (kind, lease) = parse_reply(&buf, 7).unwrap().unwrap();
        assert_eq!(kind, MessageType::Offer);
        assert_eq!(
            lease,
            Lease {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                router: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
                server: Ipv4Addr::new(10, 0, 2, 2),
            }
        );
        assert!(
            parse_reply(&buf, 8).unwrap().is_none(),
            "another client's reply"
        );
        let req = request_message(&mac, 7, Some((lease.address, lease.server)));
        let msg = v4::Message::decode(&mut Decoder::new(&req)).unwrap();
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Request));
    }
}
