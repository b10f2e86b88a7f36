//! The inbound guard: a relay between rumqttc and the broker that drops oversize
//! PUBLISH packets instead of letting them end the connection.
//!
//! rumqttc reads a whole packet before it looks at it and treats one above its limit as
//! a fatal protocol error: it drops the connection. A broker re-sends a retained
//! message on every subscription, so one retained message above a device's limit
//! (published by mistake, or by anyone who can publish there) would disconnect every
//! device of a group at each reconnection, for as long as it stays retained.
//!
//! [`ClientOptions::connect_guarded`](crate::ClientOptions::connect_guarded) puts this
//! relay in between: rumqttc connects to a Unix socket in a private folder (mode 0700)
//! and the relay connects to the broker (TCP, or TLS with the same files), then copies
//! bytes both ways, framing the MQTT packets as they pass. A PUBLISH from the broker
//! whose packet is larger than the limit is read past in small pieces (never held in
//! memory), counted ([`Guard`]), and, at QoS 1 or 2, acknowledged to the broker by the
//! relay itself (PUBACK, or PUBREC and then PUBCOMP for the broker's PUBREL), so the
//! broker does not redeliver it. Everything else passes unchanged, in order. Keep-alive
//! pings pass through too, so rumqttc still notices a dead link.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

/// MQTT packet types the relay looks at (the high nibble of the first byte).
const PUBLISH: u8 = 3;
const PUBREL: u8 = 6;

/// The most of an oversize PUBLISH's topic kept for the record.
const MAX_TOPIC_KEPT: usize = 256;

/// An oversize message the guard dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Its topic (cut at 256 bytes, lossy UTF-8).
    pub topic: String,
    /// Its packet's size in bytes.
    pub bytes: usize,
}

#[derive(Debug, Default)]
struct Stats {
    dropped: AtomicU64,
    last: Mutex<Option<Dropped>>,
}

/// The relay's counters, and its lifetime: the relay stops (and removes its socket)
/// when the last clone of its `Guard` is dropped, so keep one as long as the client
/// is used.
#[derive(Debug, Clone)]
pub struct Guard {
    limit: usize,
    stats: Arc<Stats>,
    _alive: Arc<watch::Sender<()>>,
}

impl Guard {
    /// The largest packet passed on to the client, bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many oversize PUBLISH packets were dropped since the client started.
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    /// The latest one dropped.
    pub fn last_dropped(&self) -> Option<Dropped> {
        self.stats
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Where the relay connects, and how.
#[derive(Clone)]
pub(crate) struct Upstream {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub(crate) connect_timeout: Duration,
}

/// A relay listening on a Unix socket in a private folder.
pub(crate) struct Relay {
    /// The socket rumqttc connects to.
    pub(crate) socket: PathBuf,
    pub(crate) guard: Guard,
}

/// Binds the relay's socket and spawns its accept loop on `runtime`.
pub(crate) fn start(
    runtime: &tokio::runtime::Handle,
    upstream: Upstream,
    limit: usize,
) -> io::Result<Relay> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "perch-mqtt-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let socket = dir.join("broker");
    let listener = std::os::unix::net::UnixListener::bind(&socket)?;
    listener.set_nonblocking(true)?;
    let (alive, mut stopped) = watch::channel(());
    let stats = Arc::new(Stats::default());
    let guard = Guard {
        limit,
        stats: stats.clone(),
        _alive: Arc::new(alive),
    };
    runtime.spawn(async move {
        let listener = match UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                log::error!("MQTT relay: {e}");
                remove(&dir);
                return;
            }
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((client, _)) => {
                        let (upstream, stats) = (upstream.clone(), stats.clone());
                        tokio::spawn(async move {
                            if let Err(e) = session(client, &upstream, limit, &stats).await {
                                log::debug!("MQTT relay session ended: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        log::warn!("MQTT relay: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stopped.changed() => break,
            }
        }
        remove(&dir);
    });
    Ok(Relay { socket, guard })
}

fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// The most a client may send before the broker connection is up, bytes: rumqttc sends
/// its CONNECT and waits for the CONNACK, so this is one CONNECT with room to spare.
const MAX_EARLY_BYTES: usize = 64 * 1024;

/// One connection: connects upstream, then relays until either side closes.
///
/// A client that gives up while the broker connection is being set up (rumqttc's
/// connection timeout) is not connected for: nothing it sent reaches the broker. Its
/// CONNECT, delivered late, would otherwise open a second session under the client's
/// id after the client has moved on to a newer connection, and a broker ends (or, in
/// rumqttd's case, stops serving) the older session of a client id that connects again:
/// the client's live connection.
async fn session(
    mut client: UnixStream,
    upstream: &Upstream,
    limit: usize,
    stats: &Stats,
) -> io::Result<()> {
    let addr = (upstream.host.as_str(), upstream.port);
    let mut early = Vec::new();
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok::<_, io::Error>(tcp)
    };
    let connect = tokio::time::timeout(upstream.connect_timeout, connect);
    let Some(tcp) = while_client_waits(&mut client, &mut early, connect).await? else {
        return Ok(());
    };
    let tcp =
        tcp.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting to the broker"))??;
    match &upstream.tls {
        None => {
            if client_gone(&client, &mut early)? {
                return Ok(());
            }
            relay(client, tcp, early, limit, stats).await
        }
        Some((connector, name)) => {
            let handshake = tokio::time::timeout(
                upstream.connect_timeout,
                connector.connect(name.clone(), tcp),
            );
            let Some(tls) = while_client_waits(&mut client, &mut early, handshake).await? else {
                return Ok(());
            };
            let tls =
                tls.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake"))??;
            if client_gone(&client, &mut early)? {
                return Ok(());
            }
            relay(client, tls, early, limit, stats).await
        }
    }
}

/// Runs `setup` (a step of connecting to the broker) while reading what the client
/// sends meanwhile into `early`; `None` when the client closed first.
async fn while_client_waits<T>(
    client: &mut UnixStream,
    early: &mut Vec<u8>,
    setup: impl std::future::Future<Output = T>,
) -> io::Result<Option<T>> {
    tokio::pin!(setup);
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            done = &mut setup => return Ok(Some(done)),
            read = client.read(&mut buf) => match read? {
                0 => {
                    log::debug!("MQTT relay: the client left before the broker answered");
                    return Ok(None);
                }
                n => keep_early(early, &buf[..n])?,
            },
        }
    }
}

/// Whether the client has closed its end, reading without waiting (anything it sent
/// goes to `early`): checked once the broker connection is up, just before the first
/// bytes go to the broker.
fn client_gone(client: &UnixStream, early: &mut Vec<u8>) -> io::Result<bool> {
    let mut buf = [0u8; 1024];
    loop {
        match client.try_read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => keep_early(early, &buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

fn keep_early(early: &mut Vec<u8>, bytes: &[u8]) -> io::Result<()> {
    if early.len() + bytes.len() > MAX_EARLY_BYTES {
        return Err(malformed("more than a CONNECT before the broker answered"));
    }
    early.extend_from_slice(bytes);
    Ok(())
}

async fn relay<B: AsyncRead + AsyncWrite + Unpin>(
    client: UnixStream,
    broker: B,
    early: Vec<u8>,
    limit: usize,
    stats: &Stats,
) -> io::Result<()> {
    let (client_read, client_write) = client.into_split();
    let (broker_read, broker_write) = tokio::io::split(broker);
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let down = downstream(broker_read, client_write, limit, stats, acks_tx);
    let up = upstream(early.as_slice().chain(client_read), broker_write, acks_rx);
    // Whichever direction ends first ends the session; dropping the other closes it.
    tokio::select! {
        r = down => r,
        r = up => r,
    }
}

/// Where a byte stream stands in MQTT's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Reading the fixed header: the first byte once seen, and the remaining length so
    /// far (value, bytes of it read).
    Header {
        first: Option<u8>,
        len: usize,
        len_bytes: u32,
    },
    /// Inside a packet's body, this many bytes to go.
    Body { left: usize },
}

impl Frame {
    const START: Frame = Frame::Header {
        first: None,
        len: 0,
        len_bytes: 0,
    };

    /// Feeds one header byte; `Ok(Some((first, remaining)))` once the fixed header is
    /// complete.
    fn header_byte(&mut self, b: u8) -> io::Result<Option<(u8, usize)>> {
        let Frame::Header {
            first,
            len,
            len_bytes,
        } = self
        else {
            return Ok(None);
        };
        let Some(kind) = *first else {
            *first = Some(b);
            return Ok(None);
        };
        if *len_bytes == 4 {
            return Err(malformed("remaining length longer than 4 bytes"));
        }
        *len |= usize::from(b & 0x7f) << (7 * *len_bytes);
        *len_bytes += 1;
        if b & 0x80 != 0 {
            return Ok(None);
        }
        Ok(Some((kind, *len)))
    }

    /// Follows the packets in `bytes`, passed on whole, to know where the next one
    /// starts.
    fn pass(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut at = 0;
        while at < bytes.len() {
            match *self {
                Frame::Header { .. } => {
                    at += 1;
                    if let Some((_, remaining)) = self.header_byte(bytes[at - 1])? {
                        *self = if remaining == 0 {
                            Frame::START
                        } else {
                            Frame::Body { left: remaining }
                        };
                    }
                }
                Frame::Body { left } => {
                    let take = left.min(bytes.len() - at);
                    at += take;
                    *self = if left == take {
                        Frame::START
                    } else {
                        Frame::Body { left: left - take }
                    };
                }
            }
        }
        Ok(())
    }
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("MQTT framing: {what}"))
}

/// Broker → client: passes packets on, drops oversize PUBLISH packets (answering
/// their QoS through `acks`) and the PUBREL of those dropped at QoS 2.
async fn downstream<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut broker: R,
    mut client: W,
    limit: usize,
    stats: &Stats,
    acks: mpsc::UnboundedSender<Vec<u8>>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut frame = Frame::START;
    // The fixed header of the packet being read, passed on once its fate is known.
    let mut header = Vec::with_capacity(5);
    // An oversize PUBLISH being skipped: its first byte, size, and the start of its
    // variable header (topic length, topic, packet id), kept up to what is needed.
    let mut skipping: Option<(u8, usize, Vec<u8>)> = None;
    // A PUBREL being held until its packet id is known (it may be for a dropped one).
    let mut pubrel: Option<Vec<u8>> = None;
    let mut swallowed: HashSet<u16> = HashSet::new();
    loop {
        let n = broker.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut out = Vec::with_capacity(n);
        let mut i = 0;
        while i < n {
            match frame {
                Frame::Header { .. } => {
                    let b = buf[i];
                    i += 1;
                    header.push(b);
                    let Some((first, remaining)) = frame.header_byte(b)? else {
                        continue;
                    };
                    let size = header.len() + remaining;
                    let kind = first >> 4;
                    frame = Frame::Body { left: remaining };
                    if kind == PUBLISH && size > limit {
                        skipping = Some((first, size, Vec::new()));
                    } else if kind == PUBREL && remaining == 2 {
                        pubrel = Some(std::mem::take(&mut header));
                    } else {
                        out.extend_from_slice(&header);
                    }
                    header.clear();
                    if remaining == 0 {
                        frame = Frame::START;
                    }
                }
                Frame::Body { left } => {
                    let take = left.min(n - i);
                    let chunk = &buf[i..i + take];
                    i += take;
                    let left = left - take;
                    if let Some((_, _, head)) = &mut skipping {
                        let want = (2 + MAX_TOPIC_KEPT + 2).saturating_sub(head.len());
                        head.extend_from_slice(&chunk[..chunk.len().min(want)]);
                    } else if let Some(held) = &mut pubrel {
                        held.extend_from_slice(chunk);
                    } else {
                        out.extend_from_slice(chunk);
                    }
                    frame = if left == 0 {
                        Frame::START
                    } else {
                        Frame::Body { left }
                    };
                    if left > 0 {
                        continue;
                    }
                    if let Some((first, size, head)) = skipping.take() {
                        let ack = drop_publish(first, (size, limit), &head, stats, &mut swallowed);
                        if let Some(ack) = ack {
                            let _ = acks.send(ack);
                        }
                    }
                    if let Some(held) = pubrel.take() {
                        // The packet id is the body, the last two bytes (the length
                        // may have been sent in more bytes than needed).
                        let [hi, lo] = [held[held.len() - 2], held[held.len() - 1]];
                        let id = u16::from_be_bytes([hi, lo]);
                        if swallowed.remove(&id) {
                            // PUBCOMP for a message the client never saw.
                            let _ = acks.send(vec![0x70, 2, hi, lo]);
                        } else {
                            out.extend_from_slice(&held);
                        }
                    }
                }
            }
        }
        if !out.is_empty() {
            client.write_all(&out).await?;
            client.flush().await?;
        }
    }
}

/// Records a dropped PUBLISH and returns the acknowledgement the broker expects.
fn drop_publish(
    first: u8,
    (size, limit): (usize, usize),
    head: &[u8],
    stats: &Stats,
    swallowed: &mut HashSet<u16>,
) -> Option<Vec<u8>> {
    let qos = (first >> 1) & 0b11;
    let topic_len = head
        .get(..2)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let topic_end = 2 + topic_len;
    let kept = head.get(2..topic_end.min(head.len())).unwrap_or_default();
    let topic = String::from_utf8_lossy(&kept[..kept.len().min(MAX_TOPIC_KEPT)]).into_owned();
    log::warn!(
        "dropped a {size}-byte message on {topic:?}: over the {limit}-byte limit of this client"
    );
    stats.dropped.fetch_add(1, Ordering::Relaxed);
    *stats.last.lock().unwrap_or_else(PoisonError::into_inner) =
        Some(Dropped { topic, bytes: size });
    if qos == 0 || topic_len > MAX_TOPIC_KEPT {
        // A topic too long to keep also hides the packet id; MQTT topics of Perch are
        // far shorter, and QoS 0 needs no answer.
        return None;
    }
    let id = head.get(topic_end..topic_end + 2)?;
    match qos {
        1 => Some(vec![0x40, 2, id[0], id[1]]),
        _ => {
            swallowed.insert(u16::from_be_bytes([id[0], id[1]]));
            Some(vec![0x50, 2, id[0], id[1]])
        }
    }
}

/// Client → broker: passes bytes on, and writes the relay's own acknowledgements
/// between packets.
async fn upstream<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut client: R,
    mut broker: W,
    mut acks: mpsc::UnboundedReceiver<Vec<u8>>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut frame = Frame::START;
    let mut waiting: Vec<Vec<u8>> = Vec::new();
    loop {
        let at_boundary = frame == Frame::START;
        if at_boundary && !waiting.is_empty() {
            for ack in waiting.drain(..) {
                broker.write_all(&ack).await?;
            }
            broker.flush().await?;
        }
        tokio::select! {
            read = client.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                frame.pass(&buf[..n])?;
                broker.write_all(&buf[..n]).await?;
                broker.flush().await?;
            }
            Some(ack) = acks.recv() => waiting.push(ack),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, qos: u8, id: u16, payload_len: usize) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&id.to_be_bytes());
        }
        body.extend(std::iter::repeat_n(0xab, payload_len));
        let mut packet = vec![0x30 | (qos << 1)];
        let mut len = body.len();
        loop {
            let mut b = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                b |= 0x80;
            }
            packet.push(b);
            if len == 0 {
                break;
            }
        }
        packet.extend_from_slice(&body);
        packet
    }

    /// Runs `downstream` over `input` delivered in pieces of `piece` bytes.
    async fn filter(input: &[u8], piece: usize, limit: usize) -> (Vec<u8>, Vec<Vec<u8>>, Stats) {
        let (mut feed, broker) = tokio::io::duplex(1 << 20);
        let (client, mut seen) = tokio::io::duplex(1 << 20);
        let stats = Stats::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            for chunk in input.chunks(piece.max(1)) {
                feed.write_all(chunk).await.unwrap();
            }
        });
        downstream(broker, client, limit, &stats, tx).await.unwrap();
        writer.await.unwrap();
        let mut out = Vec::new();
        seen.read_to_end(&mut out).await.unwrap();
        let mut acks = Vec::new();
        while let Ok(a) = rx.try_recv() {
            acks.push(a);
        }
        (out, acks, stats)
    }

    #[tokio::test]
    async fn oversize_publishes_are_dropped_and_acknowledged_and_the_rest_pass_in_order() {
        let small = publish("perch/d/infer/req", 1, 7, 100);
        let big = publish("perch/fleet/g/rollout", 1, 8, 5_000);
        let big0 = publish("perch/fleet/g/rollout", 0, 0, 300_000);
        let ping = vec![0xd0, 0];
        let stream = [small.clone(), big, ping.clone(), big0, small.clone()].concat();
        for piece in [1, 3, 7, 1000, 1 << 20] {
            let (out, acks, stats) = filter(&stream, piece, 1024).await;
            assert_eq!(
                out,
                [small.clone(), ping.clone(), small.clone()].concat(),
                "{piece}"
            );
            assert_eq!(acks, [vec![0x40, 2, 0, 8]], "{piece}");
            assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
            let last = stats.last.lock().unwrap().clone().unwrap();
            assert_eq!(last.topic, "perch/fleet/g/rollout");
            assert!(last.bytes > 300_000);
        }
    }

    /// A CONNECT: protocol name "MQTT", level 4, clean session, keep-alive 30 s, client
    /// id "d".
    const CONNECT: [u8; 15] = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 1, b'd',
    ];

    /// A broker's listener on 127.0.0.1, a relay to it, and a client connected to the
    /// relay.
    async fn relay_to_a_listening_broker() -> (tokio::net::TcpListener, Relay, UnixStream) {
        let broker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream {
            host: "127.0.0.1".into(),
            port: broker.local_addr().unwrap().port(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
        };
        let relay = start(&tokio::runtime::Handle::current(), upstream, 1 << 20).unwrap();
        let client = UnixStream::connect(&relay.socket).await.unwrap();
        (broker, relay, client)
    }

    /// Regression (issue 15, flaky fleet rollouts): rumqttc gave up on a connection
    /// (its connection timeout) while the relay was still connecting to the broker; the
    /// relay then delivered the abandoned CONNECT, which took the client id over from
    /// the device's next, live connection, and the broker stopped serving that one.
    #[tokio::test]
    async fn a_client_that_left_before_the_broker_connection_was_up_never_reaches_the_broker() {
        let (broker, relay, mut client) = relay_to_a_listening_broker().await;
        // A CONNECT, then the client is gone before the relay got to it.
        client.write_all(&CONNECT).await.unwrap();
        drop(client);
        match tokio::time::timeout(Duration::from_millis(500), broker.accept()).await {
            // Never connected: fine.
            Err(_) => {}
            Ok(accepted) => {
                let (mut stream, _) = accepted.unwrap();
                let mut seen = Vec::new();
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut seen))
                    .await
                    .expect("the relay closes the connection")
                    .unwrap();
                assert!(
                    seen.is_empty(),
                    "the broker got {seen:?} from a client that had left"
                );
            }
        }
        drop(relay);
    }

    #[tokio::test]
    async fn a_live_clients_connect_waits_for_the_broker_connection_and_passes_first() {
        let (broker, relay, mut client) = relay_to_a_listening_broker().await;
        client.write_all(&CONNECT).await.unwrap();
        let (mut stream, _) = broker.accept().await.unwrap();
        let mut seen = vec![0u8; CONNECT.len()];
        stream.read_exact(&mut seen).await.unwrap();
        assert_eq!(seen, CONNECT);
        // And the broker's answer comes back.
        stream.write_all(&[0x20, 2, 0, 0]).await.unwrap();
        let mut connack = [0u8; 4];
        client.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0]);
        drop(relay);
    }

    #[tokio::test]
    async fn a_dropped_qos2_publish_is_received_and_completed_by_the_relay() {
        let big = publish("t", 2, 0x0102, 4_000);
        let pubrel_dropped = vec![0x62, 2, 1, 2];
        let pubrel_other = vec![0x62, 2, 0, 9];
        let stream = [big, pubrel_dropped, pubrel_other.clone()].concat();
        let (out, acks, _) = filter(&stream, 5, 1024).await;
        assert_eq!(
            out, pubrel_other,
            "the client never sees the dropped message's PUBREL"
        );
        assert_eq!(acks, [vec![0x50, 2, 1, 2], vec![0x70, 2, 1, 2]]);
    }

    #[tokio::test]
    async fn a_packet_exactly_at_the_limit_passes() {
        let p = publish("t", 0, 0, 10);
        let (out, _, stats) = filter(&p, 2, p.len()).await;
        assert_eq!(out, p);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        let (out, _, _) = filter(&p, 2, p.len() - 1).await;
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn acknowledgements_go_upstream_only_between_client_packets() {
        let (client_end, relay_in) = tokio::io::duplex(1 << 16);
        let (relay_out, mut broker_end) = tokio::io::duplex(1 << 16);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(upstream(relay_in, relay_out, rx));
        let mut client_end = client_end;
        let packet = publish("a/b", 1, 3, 50);
        // Half a packet, then an acknowledgement to inject, then the rest.
        client_end.write_all(&packet[..20]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(vec![0x40, 2, 0, 1]).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client_end.write_all(&packet[20..]).await.unwrap();
        client_end.write_all(&[0xc0, 0]).await.unwrap();
        drop(client_end);
        task.await.unwrap().unwrap();
        let mut seen = Vec::new();
        broker_end.read_to_end(&mut seen).await.unwrap();
        let ack_at = seen.windows(4).position(|w| w == [0x40, 2, 0, 1]).unwrap();
        // After the whole PUBLISH: before the PINGREQ, or after it when both came in
        // one read.
        assert!(
            [packet.len(), packet.len() + 2].contains(&ack_at),
            "the PUBACK lands between packets, not at byte {ack_at}"
        );
        assert_eq!(seen.len(), packet.len() + 4 + 2);
    }

    /// Issue 15 (fuzzing): whatever a broker sends, the relay passes it on, drops it
    /// or ends the session with an error; it never panics.
    #[test]
    fn random_broker_streams_never_panic_the_relay() {
        use proptest::prelude::*;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        proptest!(ProptestConfig::with_cases(256), |(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            piece in 1usize..64,
            limit in 2usize..512,
        )| {
            runtime.block_on(async {
                let (mut feed, broker) = tokio::io::duplex(1 << 16);
                let (client, mut seen) = tokio::io::duplex(1 << 16);
                let stats = Stats::default();
                let (tx, _rx) = mpsc::unbounded_channel();
                let writer = async move {
                    for chunk in bytes.chunks(piece) {
                        // The relay may end the session on malformed framing.
                        if feed.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                };
                let reader = async move {
                    let mut out = Vec::new();
                    let _ = seen.read_to_end(&mut out).await;
                };
                let relay = async move {
                    let _ = downstream(broker, client, limit, &stats, tx).await;
                };
                tokio::join!(writer, reader, relay);
            });
        });
    }

    #[test]
    fn a_remaining_length_over_four_bytes_is_malformed() {
        let mut frame = Frame::START;
        frame.header_byte(0x30).unwrap();
        for _ in 0..4 {
            assert_eq!(frame.header_byte(0xff).unwrap(), None);
        }
        assert!(frame.header_byte(0x01).is_err());
    }
}
