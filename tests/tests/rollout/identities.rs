//! The broker identities of `deploy/mosquitto/` (per-client certificates, the common
//! name as user name, `perch.acl`) on a real mosquitto: a device cannot report or
//! request chunks as another device, nor publish a command or a rollout document; its
//! own reports and the operator's documents arrive.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use perch_mqtt::topics::{self, DeviceTopic};
use perch_mqtt::{ClientOptions, Endpoint, TlsFiles};
use perch_runtime::rollout::{DeviceStatus, FORMAT};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rumqttc::{Client, ConnectionError, Event, Packet, Publish, QoS};

use super::*;

/// A CA, mosquitto's certificate for 127.0.0.1, and a client certificate named after
/// each of `clients` (`{name}.pem`, `{name}.key`), all in `dir`.
fn certificates(dir: &Path, clients: &[&str]) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "perch test fleet CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let issue = |name: &str, file: &str, sans: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    };
    issue("127.0.0.1", "server", vec!["127.0.0.1".to_string()]);
    for name in clients {
        issue(name, name, Vec::new());
    }
}

/// mosquitto running `deploy/mosquitto/perch.conf` and `perch.acl` as shipped, with
/// their `/etc/mosquitto/perch/` files in `dir` and the listener on a reserved port of
/// 127.0.0.1; `None` when mosquitto is not installed.
fn deployed_mosquitto(test: &str, dir: &Path) -> Option<Mosquitto> {
    let deploy = perch_testkit::workspace_root().join("deploy/mosquitto");
    std::fs::copy(deploy.join("perch.acl"), dir.join("perch.acl")).unwrap();
    let shipped = std::fs::read_to_string(deploy.join("perch.conf")).unwrap();
    assert!(shipped.contains("\nlistener 8883\n"), "{shipped}");
    let port = Port::reserve();
    let config = shipped
        .replace(
            "\nlistener 8883\n",
            &format!("\nlistener {} 127.0.0.1\n", port.get()),
        )
        .replace("/etc/mosquitto/perch/", &format!("{}/", dir.display()));
    Mosquitto::start_with(test, dir, vec![port], &config, "SKIPPED")
}

/// An MQTT client authenticated by the certificate `name` made by [`certificates`],
/// through perch-mqtt's options (as perchd and `perch rollout` connect), with every
/// incoming packet on a channel.
struct Peer {
    client: Client,
    incoming: Receiver<Packet>,
}

impl Peer {
    fn connect(dir: &Path, port: u16, name: &str) -> Peer {
        let endpoint = Endpoint {
            tls: Some(TlsFiles {
                ca: dir.join("ca.pem"),
                client: Some((
                    dir.join(format!("{name}.pem")),
                    dir.join(format!("{name}.key")),
                )),
            }),
            ..Endpoint::plain("127.0.0.1", port)
        };
        // A client id of its own per connection: a second peer of the same name does
        // not take the first one's session over.
        static CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let options = ClientOptions::new(format!("test-{name}-{n}"), endpoint)
            .mqtt_options()
            .unwrap();
        let (client, mut connection) = Client::new(options, 16);
        let (tx, incoming) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(packet).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(ConnectionError::RequestsDone) => return,
                    // Retried by the next iteration; the waits below are bounded.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        let peer = Peer { client, incoming };
        peer.wait(&format!("{name} to connect"), |p| {
            matches!(p, Packet::ConnAck(_))
        });
        peer
    }

    /// The first incoming packet matching `wanted` (earlier ones are dropped); panics
    /// after [`PATIENCE`].
    fn wait(&self, what: &str, wanted: impl Fn(&Packet) -> bool) -> Packet {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.incoming.recv_timeout(left) {
                Ok(packet) if wanted(&packet) => return packet,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("timed out waiting for {what}"),
                Err(RecvTimeoutError::Disconnected) => panic!("connection gone waiting for {what}"),
            }
        }
    }

    /// The next PUBLISH received.
    fn next_publish(&self, what: &str) -> Publish {
        match self.wait(what, |p| matches!(p, Packet::Publish(_))) {
            Packet::Publish(publish) => publish,
            _ => unreachable!(),
        }
    }

    fn subscribe(&self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        self.wait(&format!("the subscription to {filter}"), |p| {
            matches!(p, Packet::SubAck(_))
        });
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK: the broker has handled
    /// the message (delivered or dropped it) when this returns.
    fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .unwrap();
        self.wait(&format!("the PUBACK of {topic}"), |p| {
            matches!(p, Packet::PubAck(_))
        });
    }
}

/// A `rolled_back` report of rollout `r-1` claiming to come from `device`.
fn rolled_back(device: &str) -> Vec<u8> {
    DeviceStatus {
        format: FORMAT,
        device: device.into(),
        rollout_id: "r-1".into(),
        revision: 1,
        version: "1.1.0".into(),
        sequence: 2,
        bucket: 0,
        state: DeviceState::RolledBack,
        progress_pct: None,
        reason: Some("slo breach".into()),
        serving: "digits 1.0.0".into(),
        model: None,
        update: 1,
        frozen: false,
    }
    .to_json()
}

/// Issue 15: anyone who could publish on the broker could report as any device. Here
/// a device's report and chunk request under another id and its command to the
/// operator are dropped by the broker.
#[test]
fn a_device_certificate_cannot_report_under_another_device_id_and_its_own_reports_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d, &["dev-a", "dev-b", "perch-operator"]);
    let test =
        "a_device_certificate_cannot_report_under_another_device_id_and_its_own_reports_arrive";
    let Some(broker) = deployed_mosquitto(test, d) else {
        return;
    };
    let port = broker.port();
    // The operator may read everything under perch/.
    let operator = Peer::connect(d, port, "perch-operator");
    operator.subscribe("perch/#");
    let a = Peer::connect(d, port, "dev-a");
    // dev-a reports dev-b rolled back, asks for a chunk as dev-b and sends the
    // operator a command, then reports its own state. mosquitto handles a client's
    // publishes in order and forwards them in order: the first message the operator
    // hears is the first the ACL let through.
    a.publish(
        &DeviceTopic::Rollout.of("dev-b"),
        false,
        rolled_back("dev-b"),
    );
    a.publish(
        &DeviceTopic::ChunkRequest.of("dev-b"),
        false,
        br#"{"rollout_id":"r-1","index":0}"#.to_vec(),
    );
    a.publish(
        &topics::rollout_command("kitchen"),
        false,
        br#"{"command":"abort"}"#.to_vec(),
    );
    a.publish(
        &DeviceTopic::Rollout.of("dev-a"),
        false,
        rolled_back("dev-a"),
    );
    let first = operator.next_publish("dev-a's own report");
    assert_eq!(first.topic, DeviceTopic::Rollout.of("dev-a"));
    let report = DeviceStatus::from_json(&first.payload).unwrap();
    assert_eq!(report.device, "dev-a");
    // dev-b's own certificate does reach the operator under dev-b.
    let b = Peer::connect(d, port, "dev-b");
    b.publish(
        &DeviceTopic::Rollout.of("dev-b"),
        false,
        rolled_back("dev-b"),
    );
    let second = operator.next_publish("dev-b's own report");
    assert_eq!(second.topic, DeviceTopic::Rollout.of("dev-b"));
}

/// Issue 15: the operator's identity alone publishes rollout documents.
#[test]
fn a_device_certificate_cannot_publish_a_rollout_document_and_the_operators_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d, &["dev-a", "dev-b", "perch-operator"]);
    let test = "a_device_certificate_cannot_publish_a_rollout_document_and_the_operators_arrives";
    let Some(broker) = deployed_mosquitto(test, d) else {
        return;
    };
    let port = broker.port();
    let document = topics::rollout_document("kitchen");
    let b = Peer::connect(d, port, "dev-b");
    b.subscribe(&document);
    let a = Peer::connect(d, port, "dev-a");
    a.publish(&document, true, b"forged by dev-a".to_vec());
    let operator = Peer::connect(d, port, "perch-operator");
    operator.publish(&document, true, b"from the operator".to_vec());
    let first = b.next_publish("the operator's document");
    assert_eq!(&first.payload[..], b"from the operator");
    // Nothing of dev-a's was retained either: a device joining now gets the operator's.
    let late = Peer::connect(d, port, "dev-a");
    late.subscribe(&document);
    let retained = late.next_publish("the retained document");
    assert_eq!(&retained.payload[..], b"from the operator");
}
