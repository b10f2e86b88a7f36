//! A compromised publisher ([`Rogue`]): tampered chunks, a truncated bundle and a
//! replayed rollout document.

use super::*;

/// A publisher holding the fleet's trusted key that does not play by the operator's
/// rules: it publishes the documents it signs (retained, QoS 1) and answers chunk
/// requests from `bundle`, passing each copy it sends through `tamper` first.
struct Rogue {
    client: Client,
    stop: Arc<AtomicBool>,
    /// Copies of each chunk index sent so far.
    served: Arc<Mutex<BTreeMap<u32, u32>>>,
    thread: Option<JoinHandle<()>>,
}

/// Changes chunk `index`'s bytes, the `copy`-th time (from 1) it is sent.
type Tamper = fn(index: u32, copy: u32, data: &mut Vec<u8>);

impl Rogue {
    fn start(fleet: &Fleet, bundle: Vec<u8>, chunk_size: u32, tamper: Tamper) -> Rogue {
        let (host, port) = fleet.broker();
        let mut options = MqttOptions::new("rogue-publisher", host, port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = Client::new(options, 1024);
        // Small requests answered by small replies: without TCP_NODELAY each round trip
        // may wait for a delayed ACK.
        let mut network = connection.eventloop.network_options();
        network.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(network);
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(BTreeMap::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let thread = {
            let (client, stop, served, subscribed) = (
                client.clone(),
                stop.clone(),
                served.clone(),
                subscribed.clone(),
            );
            std::thread::spawn(move || {
                let requests = DeviceTopic::ChunkRequest.filter();
                for event in connection.iter() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let packet = match event {
                        Ok(Event::Incoming(packet)) => packet,
                        Ok(Event::Outgoing(_)) => continue,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    };
                    match packet {
                        Packet::ConnAck(_) => {
                            client
                                .try_subscribe(requests.as_str(), QoS::AtMostOnce)
                                .unwrap();
                        }
                        Packet::SubAck(_) => subscribed.store(true, Ordering::Relaxed),
                        Packet::Publish(publish) => {
                            let Some(device) = publish
                                .topic
                                .strip_prefix("perch/")
                                .and_then(|t| t.strip_suffix("/ota/req"))
                            else {
                                continue;
                            };
                            let request: ChunkRequest =
                                serde_json::from_slice(&publish.payload).unwrap();
                            let start = request.index as usize * chunk_size as usize;
                            let end = (start + chunk_size as usize).min(bundle.len());
                            if start >= end {
                                continue;
                            }
                            let copy = {
                                let mut served = served.lock().unwrap();
                                let copy = served.entry(request.index).or_insert(0);
                                *copy += 1;
                                *copy
                            };
                            let mut data = bundle[start..end].to_vec();
                            tamper(request.index, copy, &mut data);
                            let frame = encode_chunk(&request.rollout_id, request.index, &data);
                            client
                                .try_publish(
                                    DeviceTopic::Chunk.of(device),
                                    QoS::AtMostOnce,
                                    false,
                                    frame,
                                )
                                .unwrap();
                        }
                        _ => {}
                    }
                }
            })
        };
        let deadline = Instant::now() + PATIENCE;
        while !subscribed.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "the rogue could not subscribe");
            std::thread::sleep(Duration::from_millis(10));
        }
        Rogue {
            client,
            stop,
            served,
            thread: Some(thread),
        }
    }

    /// Publishes a signed document on `group`'s topic, retained, as the operator does.
    fn publish(&self, group: &str, signed: Vec<u8>) {
        self.client
            .try_publish(
                topics::rollout_document(group),
                QoS::AtLeastOnce,
                true,
                signed,
            )
            .unwrap();
    }

    /// Copies of each chunk sent so far.
    fn served(&self) -> BTreeMap<u32, u32> {
        self.served.lock().unwrap().clone()
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A document for the fleet's group putting every device in the cohort of
/// `rollout_id`, with a one-second device soak.
fn document(
    fleet: &Fleet,
    rollout_id: &str,
    revision: u64,
    phase: Phase,
    bundle: BundleRef,
) -> RolloutDocument {
    RolloutDocument {
        format: FORMAT,
        group: fleet.config().group.clone(),
        rollout_id: rollout_id.to_string(),
        revision,
        issued: "2026-11-26T12:00:00Z".into(),
        phase,
        percent_bp: canary::BUCKETS,
        soak_s: 1,
        soak_min_requests: 5,
        fresh_s: 0,
        expires_unix_s: 0,
        model: None,
        bundle,
    }
}

/// The chunk the tampered-chunk tests damage.
const DAMAGED: u32 = 3;

#[test]
fn a_chunk_that_never_arrives_intact_fails_the_rollout_past_the_stall_timeout_and_the_old_model_serves(
) {
    let dir = tempfile::tempdir().unwrap();
    let (fixture, fleet) = small_fleet(dir.path(), 2, 0);
    let ids = fleet.device_ids();
    let (_, bytes) = digits_bundle(dir.path(), "2.0.0", 2, &fixture.key.signing);
    let described = BundleRef::describe("digits", "2.0.0", 2, &bytes, MIN_CHUNK_SIZE);
    assert!(described.chunk_count() > DAMAGED + 1);
    // Every copy of chunk 3 it sends has one byte flipped.
    let rogue = Rogue::start(&fleet, bytes, MIN_CHUNK_SIZE, |index, _, data| {
        if index == DAMAGED {
            data[100] ^= 0x5a;
        }
    });
    let rollout_id = "tampered-chunk";
    let doc = document(&fleet, rollout_id, 1_000, Phase::Running, described);
    rogue.publish(&fleet.config().group, doc.sign(&fixture.key.signing));

    let started = Instant::now();
    let reports = wait_failed(
        &fleet,
        &ids,
        rollout_id,
        &format!("no good copy of chunk {DAMAGED} arrived within 4 s"),
    );
    assert!(
        started.elapsed() >= STALL,
        "failed before the stall timeout"
    );
    for report in &reports {
        let reason = report.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("copies failed their hash check"),
            "{reason}"
        );
    }
    let served = rogue.served();
    // Each device dropped the damaged copies and asked again, ever later; the chunks
    // after it were never asked for.
    assert!(served[&DAMAGED] >= 2 * ids.len() as u32, "{served:?}");
    assert!(!served.contains_key(&(DAMAGED + 1)), "{served:?}");
    assert!(!fleet.devices()[0].ota_dir.join("download.part").exists());
    assert_old_model_still_serves(&fleet, &ids);
}

#[test]
fn a_chunk_damaged_only_in_its_first_copy_is_requested_again_and_the_rollout_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (fixture, fleet) = small_fleet(dir.path(), 2, 0);
    let ids = fleet.device_ids();
    let (_, bytes) = digits_bundle(dir.path(), "2.0.0", 2, &fixture.key.signing);
    let described = BundleRef::describe("digits", "2.0.0", 2, &bytes, MIN_CHUNK_SIZE);
    let chunks = described.chunk_count();
    // The first copy of every chunk is damaged; the copies after it are genuine.
    let rogue = Rogue::start(&fleet, bytes, MIN_CHUNK_SIZE, |_, copy, data| {
        if copy == 1 {
            data[0] ^= 0xff;
        }
    });
    let rollout_id = "first-copy-damaged";
    let doc = document(&fleet, rollout_id, 1_000, Phase::Running, described);
    rogue.publish(&fleet.config().group, doc.sign(&fixture.key.signing));

    fleet
        .wait_until(
            "every device to confirm digits 2.0.0 and report it in its metrics",
            PATIENCE,
            |view| {
                ids.iter().all(|id| {
                    view.device(id).is_some_and(|d| {
                        d.version.as_deref() == Some("2.0.0")
                            && d.state() == Some(DeviceState::Confirmed)
                    })
                })
            },
        )
        .unwrap();
    let served = rogue.served();
    assert_eq!(served.len(), chunks as usize, "{served:?}");
    assert!(
        served.values().all(|&n| n >= 2),
        "every chunk twice: {served:?}"
    );
    for id in &ids {
        let states = states_of(&fleet, id, rollout_id);
        assert!(!states.contains(&DeviceState::Failed), "{id}: {states:?}");
        let traffic = fleet.traffic().counts(id);
        assert_eq!((traffic.errors, traffic.wrong), (0, 0), "{id}: {traffic:?}");
    }
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
}

#[test]
fn a_truncated_bundle_described_honestly_is_downloaded_then_refused_at_install() {
    let dir = tempfile::tempdir().unwrap();
    let (fixture, fleet) = small_fleet(dir.path(), 2, 0);
    let ids = fleet.device_ids();
    let (_, mut bytes) = digits_bundle(dir.path(), "2.0.0", 2, &fixture.key.signing);
    // A publisher that lost the end of the file, then hashed what it had.
    bytes.truncate(bytes.len() - 1500);
    let described = BundleRef::describe("digits", "2.0.0", 2, &bytes, MIN_CHUNK_SIZE);
    let rogue = Rogue::start(&fleet, bytes, MIN_CHUNK_SIZE, |_, _, _| {});
    let rollout_id = "truncated-bundle";
    let doc = document(&fleet, rollout_id, 1_000, Phase::Running, described);
    rogue.publish(&fleet.config().group, doc.sign(&fixture.key.signing));

    fleet
        .wait_until(
            "every device to refuse the truncated bundle",
            PATIENCE,
            |view| {
                ids.iter().all(|id| {
                    view.device(id)
                        .and_then(|d| d.rollout.as_ref())
                        .is_some_and(|s| {
                            s.rollout_id == rollout_id && s.state == DeviceState::Failed
                        })
                })
            },
        )
        .unwrap();
    for id in &ids {
        let report = rollout_of(&fleet, id).unwrap();
        let reason = report.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("the bundle is invalid") && reason.contains("truncated"),
            "{id}: {reason}"
        );
        let states = states_of(&fleet, id, rollout_id);
        assert!(states.contains(&DeviceState::Verifying), "{id}: {states:?}");
    }
    assert_old_model_still_serves(&fleet, &ids);
}

#[test]
fn a_replayed_older_rollout_document_is_refused_reported_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (fixture, fleet) = small_fleet(dir.path(), 2, 0);
    let ids = fleet.device_ids();
    let group = fleet.config().group.clone();
    let (_, bytes) = digits_bundle(dir.path(), "2.0.0", 2, &fixture.key.signing);
    let described = BundleRef::describe("digits", "2.0.0", 2, &bytes, MIN_CHUNK_SIZE);
    let rogue = Rogue::start(&fleet, bytes, MIN_CHUNK_SIZE, |_, _, _| {});
    let rollout_id = "replayed-document";
    let key = &fixture.key.signing;
    // Three genuine revisions: an abort order, then the rollout runs, then completes.
    let aborted = document(&fleet, rollout_id, 1_000, Phase::Aborted, described.clone()).sign(key);
    let running = document(&fleet, rollout_id, 2_000, Phase::Running, described.clone());
    let completed = document(&fleet, rollout_id, 3_000, Phase::Completed, described);
    // One publisher, one topic, QoS 1: the devices get them in this order.
    rogue.publish(&group, aborted.clone());
    rogue.publish(&group, running.sign(key));
    fleet
        .wait_until("every device to activate 2.0.0", PATIENCE, |view| {
            ids.iter().all(|id| {
                view.device(id).is_some_and(|d| {
                    d.version.as_deref() == Some("2.0.0")
                        && matches!(
                            d.state(),
                            Some(DeviceState::Active | DeviceState::Confirmed)
                        )
                })
            })
        })
        .unwrap();
    rogue.publish(&group, completed.sign(key));
    fleet
        .wait_until("every device to confirm 2.0.0", PATIENCE, |view| {
            ids.iter().all(|id| {
                view.device(id)
                    .is_some_and(|d| d.state() == Some(DeviceState::Confirmed))
            })
        })
        .unwrap();

    // Someone replays the abort order: were it obeyed, every device would roll back.
    rogue.publish(&group, aborted);
    let needle = "replayed rollout document (revision 1000, already acted on 3000)";
    fleet
        .wait_until(
            "every device to re-report with the replay's reason",
            PATIENCE,
            |view| {
                ids.iter().all(|id| {
                    view.device(id)
                        .and_then(|d| d.rollout.as_ref())
                        .is_some_and(|s| s.reason.as_deref() == Some(needle))
                })
            },
        )
        .unwrap();
    for id in &ids {
        let report = rollout_of(&fleet, id).unwrap();
        assert_eq!(
            report.state,
            DeviceState::Confirmed,
            "{id}: nothing changed"
        );
        assert_eq!(report.revision, 3_000, "{id}");
        assert_eq!(report.serving, "digits 2.0.0", "{id}");
    }
    // And it goes on serving the new model.
    let reports: BTreeMap<String, u64> = ids
        .iter()
        .map(|id| (id.clone(), fleet.observer().device(id).unwrap().reports))
        .collect();
    fleet
        .wait_until(
            "three more metrics reports from every device",
            PATIENCE,
            |view| {
                ids.iter().all(|id| {
                    view.device(id)
                        .is_some_and(|d| d.reports >= reports[id] + 3)
                })
            },
        )
        .unwrap();
    for id in &ids {
        let view = fleet.observer().device(id).unwrap();
        assert_eq!(view.version.as_deref(), Some("2.0.0"), "{id}");
        assert!(
            !states_of(&fleet, id, rollout_id).contains(&DeviceState::RolledBack),
            "{id}"
        );
        let traffic = fleet.traffic().counts(id);
        assert_eq!((traffic.errors, traffic.wrong), (0, 0), "{id}: {traffic:?}");
    }
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
}
