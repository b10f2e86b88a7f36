//! Latency of one inference of the R2 keyword spotter (kws-dscnn), from the engine alone
//! to a full MQTT request/reply round trip on loopback, as p50/p90/p99.
//!
//! ```sh
//! cargo bench -p perch-firmware --bench mqtt            # release profile (LTO)
//! cargo bench -p perch-firmware --bench mqtt -- 5000    # samples per stage and round
//! ```
//!
//! The agent runs in this process ([`agent::run`]) with its embedded broker; when
//! `mosquitto` is installed, a second agent runs against a mosquitto started here. A
//! client publishes a request (QoS 0) and waits for its reply, one at a time:
//!
//! - **engine**: `Session::run` on the golden input, outputs dropped;
//! - **MQTT JSON** / **MQTT postcard**, embedded broker: client → broker → agent
//!   (decode, infer, encode) → broker → client;
//! - **MQTT JSON, mosquitto**: the same through mosquitto.
//!
//! Stages rotate through rounds so a noisy neighbour hits them alike.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use perch_firmware::agent;
use perch_firmware::config::{Broker, BrokerConfig, Config};
use perch_firmware::service::{binary, InferRequest, RequestTensor, TensorValues};
use perch_runtime::engine::TensorData;
use perch_testkit::{Mosquitto, Port};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// A client that sends a request and blocks until the reply on `reply_topic` arrives.
struct Rpc {
    client: Client,
    replies: mpsc::Receiver<Vec<u8>>,
}

impl Rpc {
    fn connect(port: u16, reply_topics: &[String]) -> Rpc {
        let mut options = MqttOptions::new(format!("bench-{port}"), "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = Client::new(options, 16);
        let mut network = connection.eventloop.network_options();
        network.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(network);
        let (tx, replies) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let subscriber = client.clone();
        let topics = reply_topics.to_vec();
        std::thread::spawn(move || loop {
            match connection.recv() {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    for t in &topics {
                        subscriber.subscribe(t.as_str(), QoS::AtMostOnce).unwrap();
                    }
                }
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    if tx.send(p.payload.to_vec()).is_err() {
                        return;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => return,
            }
        });
        for _ in reply_topics {
            ready.recv_timeout(Duration::from_secs(30)).unwrap();
        }
        Rpc { client, replies }
    }

    fn call(&self, topic: &str, request: &[u8]) -> Vec<u8> {
        self.client
            .publish(topic, QoS::AtMostOnce, false, request)
            .unwrap();
        self.replies.recv_timeout(Duration::from_secs(30)).unwrap()
    }
}

/// Starts an agent for `device` inside `runtime`; returns the sender that stops it.
fn start_agent(
    runtime: &tokio::runtime::Runtime,
    device: &str,
    broker: Broker,
    spool: &Path,
) -> tokio::sync::oneshot::Sender<()> {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/kws-dscnn");
    let mut config = Config::new(device.parse().unwrap(), models.join("model.onnx"));
    config.broker = broker;
    config.http_listen = None;
    config.report_interval = Duration::from_secs(1);
    config.spool.dir = spool.join(device);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(async move {
        agent::run(config, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    stop
}

fn main() {
    let samples = common::samples();
    let (model, golden) = common::kws();
    let inputs = golden.input_refs().unwrap();
    let TensorData::F32(mfcc) = golden.inputs[0].input().unwrap().data else {
        panic!("the golden input is not f32")
    };
    let json = serde_json::to_vec(&serde_json::json!({
        "id": "bench",
        "inputs": [{"name": "mfcc", "shape": [1, 1, 49, 10], "datatype": "FP32", "data": mfcc}]
    }))
    .unwrap();
    let postcard = binary::encode_request(&InferRequest {
        id: Some("bench".into()),
        inputs: vec![RequestTensor {
            name: "mfcc".into(),
            shape: golden.inputs[0].shape().to_vec(),
            data: TensorValues::F32(mfcc.to_vec()),
        }],
    });

    let spool = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let reserved = Port::reserve();
    let embedded_port = reserved.get();
    let stop_embedded = start_agent(
        &runtime,
        "bench-embedded",
        Broker::Embedded {
            port: embedded_port,
        },
        spool.path(),
    );
    // The agent is up once its broker accepts connections and it answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", embedded_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the embedded broker did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let embedded = Rpc::connect(
        embedded_port,
        &[
            "perch/bench-embedded/infer/res".into(),
            "perch/bench-embedded/infer/res/bin".into(),
        ],
    );

    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start("the mosquitto stage", broker_dir.path());
    let mosquitto_port = broker.as_ref().map_or(0, Mosquitto::port);
    let external = broker.as_ref().map(|_| {
        let stop = start_agent(
            &runtime,
            "bench-mosquitto",
            Broker::External(BrokerConfig::plain("127.0.0.1", mosquitto_port)),
            spool.path(),
        );
        let rpc = Rpc::connect(mosquitto_port, &["perch/bench-mosquitto/infer/res".into()]);
        (stop, rpc)
    });

    // Wait until each agent has subscribed: the first call may be lost before that.
    let wait_answering = |rpc: &Rpc, topic: &str, body: &[u8]| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            rpc.client
                .publish(topic, QoS::AtMostOnce, false, body)
                .unwrap();
            if rpc.replies.recv_timeout(Duration::from_millis(200)).is_ok() {
                while rpc.replies.recv_timeout(Duration::from_millis(50)).is_ok() {}
                return;
            }
            assert!(Instant::now() < deadline, "the agent does not answer");
        }
    };
    wait_answering(&embedded, "perch/bench-embedded/infer/req", &json);
    if let Some((_, rpc)) = &external {
        wait_answering(rpc, "perch/bench-mosquitto/infer/req", &json);
    }

    let mut session = model.session().unwrap();
    let mut stages: Vec<common::Stage<'_>> = vec![
        (
            "engine: Session::run",
            Box::new(|| drop(session.run(&inputs).unwrap())),
            vec![],
        ),
        (
            "MQTT JSON, embedded broker, loopback",
            Box::new(|| drop(embedded.call("perch/bench-embedded/infer/req", &json))),
            vec![],
        ),
        (
            "MQTT postcard, embedded broker, loopback",
            Box::new(|| drop(embedded.call("perch/bench-embedded/infer/req/bin", &postcard))),
            vec![],
        ),
    ];
    if let Some((_, rpc)) = &external {
        stages.push((
            "MQTT JSON, mosquitto, loopback",
            Box::new(|| drop(rpc.call("perch/bench-mosquitto/infer/req", &json))),
            vec![],
        ));
    }
    common::measure(&mut stages, samples);
    common::report(&mut stages, samples);
    if broker.is_none() {
        println!("\n(mosquitto is not installed: its stage was skipped)");
    }
    drop(stages);
    let _ = stop_embedded.send(());
    if let Some((stop, _)) = external {
        let _ = stop.send(());
    }
    runtime.shutdown_timeout(Duration::from_secs(3));
    if let Some(broker) = &mut broker {
        broker.stop();
    }
}
