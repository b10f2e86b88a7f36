//! The link under stress, with real sockets: an oversize retained message (through a
//! real mosquitto), a broker that drops every client right after CONNACK (a reconnect
//! storm), a link that goes silent (half-open), and a TLS handshake that never
//! completes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use perch_mqtt::{pump, Backoff, ClientOptions, Endpoint, NetEvent, TlsFiles};
use perch_testkit::Mosquitto;
use rumqttc::QoS;
use tokio::sync::mpsc;

/// Events of a client until `until` says stop or `limit` passes.
async fn collect(
    rx: &mut mpsc::Receiver<NetEvent>,
    limit: Duration,
    mut until: impl FnMut(&NetEvent) -> bool,
) -> Vec<(Duration, NetEvent)> {
    let started = Instant::now();
    let mut seen = Vec::new();
    while let Some(left) = limit.checked_sub(started.elapsed()) {
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(event)) => {
                let stop = until(&event);
                seen.push((started.elapsed(), event));
                if stop {
                    break;
                }
            }
            _ => break,
        }
    }
    seen
}

fn connections(events: &[(Duration, NetEvent)]) -> usize {
    events
        .iter()
        .filter(|(_, e)| *e == NetEvent::Connected)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_retained_message_is_dropped_and_counted_without_losing_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start(
        "an_oversize_retained_message_is_dropped_and_counted_without_losing_the_connection",
        dir.path(),
    ) else {
        return;
    };
    let endpoint = Endpoint::plain("127.0.0.1", broker.port());

    // Someone publishes a 256 KiB retained message where devices with a 64 KiB limit
    // listen, and a small one after it.
    let mut publisher = ClientOptions::new("publisher", endpoint.clone());
    publisher.max_outgoing_packet = 1 << 20;
    let (client, eventloop) = publisher.connect().unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(pump(eventloop, Backoff::new(ms(50), ms(500)), tx));
    collect(&mut rx, secs(10), |e| *e == NetEvent::Connected).await;
    client
        .publish(
            "perch/fleet/g/rollout",
            QoS::AtLeastOnce,
            true,
            vec![7u8; 256 << 10],
        )
        .await
        .unwrap();
    client
        .publish(
            "perch/fleet/g/small",
            QoS::AtLeastOnce,
            true,
            b"hello".to_vec(),
        )
        .await
        .unwrap();
    collect(&mut rx, secs(10), |e| matches!(e, NetEvent::PubAck(_))).await;
    collect(&mut rx, secs(10), |e| matches!(e, NetEvent::PubAck(_))).await;

    let mut options = ClientOptions::new("device", endpoint.clone());
    options.max_incoming_packet = 64 << 10;
    let runtime = tokio::runtime::Handle::current();
    let (device, eventloop, guard) = options.connect_guarded(&runtime).unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(pump(eventloop, Backoff::new(ms(20), ms(200)), tx));
    let subscribe = device.clone();
    let events = collect(&mut rx, secs(3), move |e| {
        if *e == NetEvent::Connected {
            let _ = subscribe.try_subscribe("perch/fleet/g/#", QoS::AtLeastOnce);
        }
        false
    })
    .await;
    assert_eq!(connections(&events), 1, "one connection, kept: {events:?}");
    let got: Vec<&str> = events
        .iter()
        .filter_map(|(_, e)| match e {
            NetEvent::Message(p) => Some(p.topic.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(got, ["perch/fleet/g/small"]);
    assert_eq!(guard.dropped(), 1);
    let dropped = guard.last_dropped().unwrap();
    assert_eq!(dropped.topic, "perch/fleet/g/rollout");
    assert!(dropped.bytes > 256 << 10, "{dropped:?}");

    // Without the guard, the same subscription ends the connection at each attempt.
    let (plain, eventloop) = options.connect().unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(pump(eventloop, Backoff::new(ms(20), ms(200)), tx));
    let events = collect(&mut rx, secs(3), move |e| {
        if *e == NetEvent::Connected {
            let _ = plain.try_subscribe("perch/fleet/g/#", QoS::AtLeastOnce);
        }
        false
    })
    .await;
    assert!(
        connections(&events) >= 3,
        "rumqttc alone drops the connection on the oversize message: {events:?}"
    );
    drop(guard);
}

/// A broker on 127.0.0.1 that answers every CONNECT with a CONNACK and then closes the
/// connection at once; counts connections.
fn dropping_broker() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 256];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(&[0x20, 2, 0, 0]);
            let _ = stream.flush();
            std::thread::sleep(ms(5));
        }
    });
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_drops_every_client_after_connack_is_not_hammered() {
    let (port, accepted) = dropping_broker();
    let options = ClientOptions::new("storm", Endpoint::plain("127.0.0.1", port));
    let (_client, eventloop) = options.connect().unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    // Windows of 50 ms doubling to 2 s: a reset at each CONNACK would reconnect every
    // ~35 ms (60+ times in 3 s); growing windows allow fewer than 10.
    tokio::spawn(pump(eventloop, Backoff::new(ms(50), secs(2)), tx));
    collect(&mut rx, secs(3), |_| false).await;
    let n = accepted.load(Ordering::SeqCst);
    assert!((2..=12).contains(&n), "{n} connections in 3 s");
}

/// A TCP relay to `target` that can be frozen: once frozen it forwards nothing either
/// way but keeps both connections open, as a link whose far end vanished.
fn freezable_relay(target: u16) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let frozen = Arc::new(AtomicBool::new(false));
    let flag = frozen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let flag = flag.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if flag.load(Ordering::SeqCst) {
                            continue;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (port, frozen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_link_is_detected_within_one_and_a_half_keep_alives() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start(
        "a_half_open_link_is_detected_within_one_and_a_half_keep_alives",
        dir.path(),
    ) else {
        return;
    };
    let (port, frozen) = freezable_relay(broker.port());
    let mut options = ClientOptions::new("half-open", Endpoint::plain("127.0.0.1", port));
    options.keep_alive = secs(2);
    let (_client, eventloop) = options.connect().unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(pump(eventloop, Backoff::new(ms(50), ms(500)), tx));
    collect(&mut rx, secs(10), |e| *e == NetEvent::Connected).await;
    // Let a ping or two go through, then cut the link silently.
    tokio::time::sleep(ms(2_500)).await;
    frozen.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    let events = collect(&mut rx, secs(10), |e| {
        matches!(e, NetEvent::Disconnected(_))
    })
    .await;
    let noticed = cut.elapsed();
    let Some((_, NetEvent::Disconnected(why))) = events.last() else {
        panic!("the dead link was not noticed: {events:?}");
    };
    assert!(why.contains("nothing heard"), "{why}");
    // 1.5 × keep-alive after the last packet heard, which came before the cut.
    assert!(noticed <= ms(3_300), "noticed after {noticed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_stalls_is_given_up_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    // Accepts TCP connections and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let mut endpoint = Endpoint::plain("localhost", port);
    endpoint.tls = Some(TlsFiles {
        ca: ca_path,
        client: None,
    });
    for guarded in [false, true] {
        let before = accepted.load(Ordering::SeqCst);
        let mut options = ClientOptions::new("stalled", endpoint.clone());
        options.connect_timeout = secs(1);
        let runtime = tokio::runtime::Handle::current();
        let (_client, eventloop, guard) = if guarded {
            let (c, e, g) = options.connect_guarded(&runtime).unwrap();
            (c, e, Some(g))
        } else {
            let (c, e) = options.connect().unwrap();
            (c, e, None)
        };
        let (tx, mut rx) = mpsc::channel(64);
        let started = Instant::now();
        tokio::spawn(pump(eventloop, Backoff::new(ms(50), ms(100)), tx));
        let events = collect(&mut rx, secs(5), |e| matches!(e, NetEvent::Disconnected(_))).await;
        assert!(
            matches!(events.last(), Some((_, NetEvent::Disconnected(_)))),
            "guarded {guarded}: {events:?}"
        );
        assert!(
            started.elapsed() < ms(2_500),
            "guarded {guarded}: {:?}",
            started.elapsed()
        );
        // ... and it tries again.
        collect(&mut rx, secs(5), |e| matches!(e, NetEvent::Disconnected(_))).await;
        assert!(
            accepted.load(Ordering::SeqCst) >= before + 2,
            "guarded {guarded}"
        );
        drop(guard);
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
