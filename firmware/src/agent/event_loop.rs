//! The agent's event loop: one task owns the [`Agent`] and reacts to the network, the
//! updater's effects and the report timer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use perch_mqtt::NetEvent;
use perch_runtime::error::Chain;
use perch_runtime::histogram::Histogram;
use perch_runtime::slo::{Slo, Window};
use perch_runtime::wire::{self, Health, MetricsReport, ModelId, ModelState};
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::{mpsc, watch, Semaphore};

use super::commands::Commands;
use super::ota_link::{IntervalCounts, ModelEffect, OtaLink};
use super::sequence::SeqState;
use crate::config::ModelConfig;
use crate::device::DeviceId;
use crate::load::Loaded;
use crate::mqtt::{self, Outbox, Topics, TwinContext};
use crate::ota::Effect;
use crate::repository::Repository;
use crate::service::{InferenceService, Interval};

/// Inference requests queued or running at once; more are answered "busy" at once.
const MAX_QUEUED_REQUESTS: usize = 64;
/// Repository commands queued or running at once; more are answered "busy" at once.
const MAX_QUEUED_COMMANDS: usize = 8;
/// How long a clean shutdown waits for the broker to take the goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The agent's running state, owned by its one task.
pub(super) struct Agent {
    pub(super) device: DeviceId,
    pub(super) topics: Topics,
    pub(super) service: InferenceService,
    /// Every model served, the primary first.
    pub(super) models: Repository,
    /// Repository commands over MQTT.
    pub(super) commands: Arc<Commands>,
    /// Repository commands queued or running.
    pub(super) commands_queued: Arc<AtomicUsize>,
    pub(super) client: AsyncClient,
    /// The connection's inbound guard (oversize messages dropped); keeps its relay up.
    pub(super) guard: perch_mqtt::Guard,
    pub(super) outbox: Outbox,
    pub(super) seq: SeqState,
    pub(super) started: Instant,
    pub(super) slo: Slo,
    /// The latest health message.
    pub(super) health: Health,
    pub(super) boot_failure: Option<String>,
    /// Why over-the-air updates are off although configured (damaged update state).
    pub(super) ota_off: Option<String>,
    pub(super) http_addr: Option<SocketAddr>,
    pub(super) connected: bool,
    pub(super) ever_connected: bool,
    pub(super) disconnected_at: Option<Instant>,
    /// Inference requests queued or running.
    pub(super) queued: Arc<AtomicUsize>,
    /// One per inference allowed to run at once.
    pub(super) permits: Arc<Semaphore>,
    pub(super) broker_name: String,
    /// Over-the-air updates, when on: the primary model's updater first, then one per
    /// model of the repository.
    pub(super) ota: Vec<OtaLink>,
    /// Where the updaters' effects (and models loaded for them) come back.
    pub(super) effects_tx: mpsc::UnboundedSender<ModelEffect>,
    /// The configured model, served again after a roll-back with no previous slot.
    pub(super) model_config: ModelConfig,
    /// The same for each `[[models]]` entry, by name.
    pub(super) configured: HashMap<String, ModelConfig>,
    /// SLOs of the configuration, which win over a bundle's.
    pub(super) slo_override: Slo,
}

impl Agent {
    /// Serves until `stop` says so, then shuts down (see [`Agent::shutdown`]).
    pub(super) async fn run(
        mut self,
        mut net: mpsc::Receiver<NetEvent>,
        mut effects: mpsc::UnboundedReceiver<ModelEffect>,
        mut stop: watch::Receiver<bool>,
        report_interval: Duration,
        poller: tokio::task::JoinHandle<()>,
    ) {
        let mut ticker = tokio::time::interval(report_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        let _ = self.service.take_interval(); // warm-up and start-up are not traffic
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                event = net.recv() => match event {
                    Some(event) => self.on_net(event),
                    None => {
                        log::error!("the MQTT connection task ended; stopping");
                        break;
                    }
                },
                Some(effect) = effects.recv() => self.on_effect(effect),
                _ = ticker.tick() => self.report(),
            }
        }
        self.shutdown(net, poller).await;
    }

    fn on_net(&mut self, event: NetEvent) {
        match event {
            NetEvent::Connected => {
                self.connected = true;
                match self.disconnected_at.take() {
                    Some(at) if self.ever_connected => log::info!(
                        "reconnected to the MQTT broker {} after {:.1} s; {} reports to deliver",
                        self.broker_name,
                        at.elapsed().as_secs_f64(),
                        self.outbox.pending()
                    ),
                    _ => log::info!("connected to the MQTT broker {}", self.broker_name),
                }
                self.ever_connected = true;
                self.outbox.on_connected();
                // Requests and rollout documents at QoS 1; bundle chunks at QoS 0 (as
                // the operator sends them: a lost chunk is asked for again).
                let requests = [
                    &self.topics.infer_req,
                    &self.topics.infer_req_bin,
                    &self.topics.repository_req,
                ]
                .into_iter()
                .map(|t| (t.as_str(), QoS::AtLeastOnce));
                let mut ota: Vec<_> = self.ota.iter().flat_map(OtaLink::subscriptions).collect();
                ota.sort_unstable_by(|a, b| a.0.cmp(b.0));
                ota.dedup_by(|a, b| a.0 == b.0); // every model's chunks on one topic
                for (topic, qos) in requests.chain(ota) {
                    if let Err(e) = self.client.try_subscribe(topic, qos) {
                        log::error!("cannot subscribe to {topic}: {e}");
                    }
                }
                let status = mqtt::online_status(&self.device, &self.health, self.http_addr);
                self.publish(&self.topics.status, true, status);
                self.publish_health();
                self.pump();
            }
            NetEvent::Disconnected(reason) => {
                if self.connected {
                    log::warn!(
                        "lost the MQTT broker {}: {reason}; reports go to the spool until it is back",
                        self.broker_name
                    );
                    self.disconnected_at = Some(Instant::now());
                } else if !self.ever_connected && self.disconnected_at.is_none() {
                    log::warn!(
                        "cannot reach the MQTT broker {}: {reason}; retrying with backoff",
                        self.broker_name
                    );
                    self.disconnected_at = Some(Instant::now());
                } else {
                    log::debug!(
                        "MQTT broker {} still unreachable: {reason}",
                        self.broker_name
                    );
                }
                self.connected = false;
                if let Err(e) = self.outbox.on_disconnected() {
                    log::error!("cannot spool reports: {e}");
                }
            }
            NetEvent::Message(publish) => {
                let mut updates = self
                    .ota
                    .iter()
                    .filter(|o| o.wants(&publish.topic))
                    .peekable();
                if updates.peek().is_some() {
                    updates.for_each(|o| o.deliver(&publish));
                } else if publish.topic == self.topics.repository_req {
                    self.on_command(publish);
                } else {
                    self.on_request(publish);
                }
            }
            NetEvent::Sent(pkid) => self.outbox.on_sent(pkid),
            NetEvent::Subscribed => {}
            NetEvent::PubAck(pkid) => {
                match self.outbox.on_puback(pkid) {
                    Ok(true) => self.pump(),
                    Ok(false) => {}
                    Err(e) => log::error!("cannot remove a delivered report from the spool: {e}"),
                }
                self.count_report_queue();
            }
        }
    }

    /// Answers an inference request on a blocking thread; the reply is published by
    /// the task that ran it.
    fn on_request(&mut self, publish: Publish) {
        let Some((codec, reply_topic)) = self.topics.route(&publish.topic) else {
            return;
        };
        let reply_topic = reply_topic.to_string();
        let queued = self.queued.fetch_add(1, Ordering::Relaxed);
        if queued >= MAX_QUEUED_REQUESTS {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.service.count_error();
            let reply = mqtt::busy_reply(codec, &publish.payload, queued);
            self.publish(&reply_topic, false, reply);
            return;
        }
        let (service, client, queued, permits) = (
            self.service.clone(),
            self.client.clone(),
            self.queued.clone(),
            self.permits.clone(),
        );
        tokio::spawn(async move {
            // Given back when the answer comes, or at the deadline.
            let permit = permits.acquire_owned().await;
            let reply = mqtt::answer(&service, codec, publish.payload).await;
            drop(permit);
            let payload = reply.payload;
            if let Err(e) = client
                .publish(reply_topic, QoS::AtMostOnce, false, payload)
                .await
            {
                log::warn!("cannot publish an inference reply: {e}");
            }
            queued.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Answers a repository command on a blocking thread (a load blocks); the reply is
    /// published by the thread that ran it.
    fn on_command(&mut self, publish: Publish) {
        let queued = self.commands_queued.fetch_add(1, Ordering::Relaxed);
        if queued >= MAX_QUEUED_COMMANDS {
            self.commands_queued.fetch_sub(1, Ordering::Relaxed);
            let id = perch_runtime::repository_command::Request::id_of(&publish.payload);
            let reply = serde_json::json!({
                "id": id,
                "status": 503,
                "error": format!("the device is busy: {queued} repository commands are waiting; retry later"),
            });
            self.publish(
                &self.topics.repository_res,
                false,
                reply.to_string().into_bytes(),
            );
            return;
        }
        let (commands, models, client, queued) = (
            self.commands.clone(),
            self.models.clone(),
            self.client.clone(),
            self.commands_queued.clone(),
        );
        let topic = self.topics.repository_res.clone();
        tokio::task::spawn_blocking(move || {
            let reply = commands.answer(&models, &publish.payload);
            if let Err(e) = client.try_publish(topic, QoS::AtMostOnce, false, reply.payload) {
                log::warn!("cannot publish a repository reply: {e}");
            }
            queued.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Carries out what an updater asks.
    fn on_effect(&mut self, ModelEffect { model, effect }: ModelEffect) {
        if let Some(name) = model {
            return self.on_model_effect(name, effect);
        }
        match effect {
            Effect::Publish { topic, payload } => self.publish(&topic, false, payload),
            Effect::Report { payload, .. } => {
                if let Err(e) = self.outbox.push(payload) {
                    log::error!("a rollout report is lost: cannot spool it: {e}");
                }
                self.pump();
            }
            Effect::Serve(loaded) => self.serve(*loaded),
            Effect::ServeConfigured => {
                let (config, tx) = (self.model_config.clone(), self.effects_tx.clone());
                tokio::task::spawn_blocking(move || {
                    match crate::load::load(&config) {
                    Ok(loaded) => {
                        let effect = Effect::Serve(Box::new(loaded));
                        let _ = tx.send(ModelEffect { model: None, effect });
                    }
                    Err(e) => log::error!(
                        "cannot load the configured model again: {}; the current model keeps serving",
                        Chain(&e)
                    ),
                }
                });
            }
            Effect::Log { level, message } => log::log!(level, "{message}"),
        }
    }

    /// Carries out what the updater of the repository's model `name` asks: reports and
    /// chunk requests as the primary's; a new version (or the previous one, or the
    /// configured file after a roll-back) goes into the repository.
    fn on_model_effect(&mut self, name: String, effect: Effect) {
        let Some(configured) = self.configured.get(&name).cloned() else {
            return;
        };
        match effect {
            Effect::Serve(loaded) => {
                let config = if loaded.path == configured.path {
                    configured
                } else {
                    super::models::slot_config(&configured, loaded.path.clone())
                };
                let (id, source) = (loaded.id.clone(), loaded.source.clone());
                match self.models.update(&name, *loaded, config) {
                    Ok(true) => log::info!("model {name}: now serving {id} from {source}"),
                    Ok(false) => log::info!(
                        "model {name} is not loaded: its next load loads {id} from {source}"
                    ),
                    Err(e) => log::error!("model {name}: {e}"),
                }
            }
            Effect::ServeConfigured => {
                let tx = self.effects_tx.clone();
                tokio::task::spawn_blocking(move || match crate::load::load(&configured) {
                    Ok(loaded) => {
                        let effect = Effect::Serve(Box::new(loaded));
                        let _ = tx.send(ModelEffect {
                            model: Some(name),
                            effect,
                        });
                    }
                    Err(e) => log::error!(
                        "model {name}: cannot load its configured file again: {}; the \
                         current version keeps serving",
                        Chain(&e)
                    ),
                });
            }
            other => self.on_effect(ModelEffect {
                model: None,
                effect: other,
            }),
        }
    }

    /// Serves `loaded` from now on. The interval so far is reported first, under the
    /// model that served it; requests in flight finish on the old model.
    fn serve(&mut self, loaded: Loaded) {
        self.report();
        let ready = loaded.boot.ready();
        let old = self
            .service
            .replace(loaded.model, loaded.id.clone(), loaded.features);
        self.service.set_ready(ready);
        self.slo = self.slo_override.or(&loaded.slo);
        self.boot_failure = loaded.boot.failure.clone();
        self.health.model = Some(loaded.id.clone());
        self.health.state = if ready {
            ModelState::Ready
        } else {
            ModelState::SelfTestFailed
        };
        log::info!(
            "now serving {} from {} (was {})",
            loaded.id,
            loaded.source,
            old.id()
        );
        if self.connected {
            let status = mqtt::online_status(&self.device, &self.health, self.http_addr);
            self.publish(&self.topics.status, true, status);
            self.publish_health();
        }
    }

    /// Shows the outbox's backlog and dropped reports on `/metrics`.
    fn count_report_queue(&self) {
        let backlog = u64::try_from(self.outbox.pending()).unwrap_or(u64::MAX);
        self.service
            .set_report_queue(backlog, self.outbox.dropped());
    }

    /// Closes the interval: its reports go to the outbox, its JSON twin and the health
    /// message out at once when connected.
    fn report(&mut self) {
        let interval = self.service.take_interval();
        let uptime_s = u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX);
        let reports = self.queue_reports(self.service.model_id(), &interval, uptime_s);
        // The other models of the repository: one report each (their own model id),
        // for the operator of their rollouts and for their soaks.
        let others: Vec<(ModelId, Interval)> = self
            .models
            .loaded()
            .iter()
            .skip(1)
            .map(|s| (s.model_id(), s.take_interval()))
            .collect();
        for (id, other) in &others {
            self.queue_reports(id.clone(), other, uptime_s);
        }
        self.count_report_queue();
        for ota in &self.ota {
            let of = match &ota.model {
                None => Some(&interval),
                Some(name) => others
                    .iter()
                    .find(|(id, _)| id.name.as_str() == name)
                    .map(|(_, i)| i),
            };
            // A model not loaded served nothing: its soak's time still passes.
            ota.interval(of.map_or_else(IntervalCounts::default, |i| IntervalCounts {
                ok: i.ok,
                errors: i.errors,
                latency: i.latency.clone(),
            }));
        }
        let violations = self.slo_violations(&interval.latency, interval.ok, interval.errors);
        self.health.uptime_s = uptime_s;
        self.health.rss_kib = crate::process::rss_kib().unwrap_or(0);
        self.health.state = if !self.service.ready() {
            ModelState::SelfTestFailed
        } else if violations.is_empty() {
            ModelState::Ready
        } else {
            ModelState::Degraded
        };
        self.health.last_error = violations
            .first()
            .or(self.boot_failure.as_ref())
            .or(self.ota_off.as_ref())
            .map(|e| wire::truncated(e));
        if self.connected {
            let seqs: Vec<u32> = reports.iter().map(|r| r.seq).collect();
            let twin = mqtt::metrics_twin(
                &reports[0],
                &seqs,
                &interval.latency,
                &TwinContext {
                    device: &self.device,
                    health: &self.health,
                    backlog: self.outbox.pending().saturating_sub(reports.len()),
                    dropped: self.outbox.dropped(),
                    incoming_dropped: mqtt::IncomingDropped {
                        oversize: self.guard.dropped(),
                        ota_chunks: self.ota.iter().map(OtaLink::dropped).sum(),
                    },
                    violations: &violations,
                    ota_off: self.ota_off.as_deref(),
                    models: &others
                        .iter()
                        .map(|(id, i)| mqtt::ModelFigures {
                            id,
                            ok: i.ok,
                            errors: i.errors,
                            latency: &i.latency,
                        })
                        .collect::<Vec<_>>(),
                },
            );
            self.publish(&self.topics.metrics_json, false, twin);
            self.publish_health();
        }
        self.pump();
    }

    /// Queues the reports of `interval` of model `id` (more than one when its histogram
    /// is too busy for one), numbered in sequence.
    fn queue_reports(
        &mut self,
        id: ModelId,
        interval: &Interval,
        uptime_s: u32,
    ) -> Vec<MetricsReport> {
        let interval_ms = u32::try_from(interval.elapsed.as_millis()).unwrap_or(u32::MAX);
        let mut pending = interval.latency.clone();
        let mut reports = Vec::new();
        loop {
            let first = reports.is_empty();
            let report = MetricsReport {
                format: wire::FORMAT_VERSION,
                seq: self.seq.next(),
                uptime_s,
                interval_ms: if first { interval_ms } else { 0 },
                model: id.clone(),
                ok: if first { saturate(interval.ok) } else { 0 },
                errors: if first { saturate(interval.errors) } else { 0 },
                latency: pending.take_report_chunk(),
            };
            reports.push(report);
            if pending.is_empty() {
                break;
            }
        }
        for report in &reports {
            let mut buf = [0u8; MetricsReport::MAX_ENCODED_LEN];
            match report.encode(&mut buf) {
                Ok(bytes) => {
                    if let Err(e) = self.outbox.push(bytes.to_vec()) {
                        log::error!("report {} lost: cannot spool it: {e}", report.seq);
                    }
                }
                Err(e) => log::error!("report {} lost: cannot encode it: {e}", report.seq),
            }
        }
        reports
    }

    /// The SLOs in force that the interval missed, as sentences.
    fn slo_violations(&self, latency: &Histogram, ok: u64, errors: u64) -> Vec<String> {
        let window = Window {
            p99_ms: latency.quantile(0.99).map(|d| d.as_secs_f64() * 1e3),
            ok,
            errors,
            throughput: None,
        };
        self.slo
            .violations(&window)
            .map(|v| v.to_string())
            .collect()
    }

    fn publish_health(&self) {
        let mut buf = [0u8; Health::MAX_ENCODED_LEN];
        match self.health.encode(&mut buf) {
            Ok(bytes) => self.publish(&self.topics.health, true, bytes.to_vec()),
            Err(e) => log::error!("cannot encode the health message: {e}"),
        }
        self.publish(
            &self.topics.health_json,
            true,
            mqtt::health_twin(&self.device, &self.health),
        );
    }

    /// Publishes at QoS 0 if the client's queue has room (only reports use QoS 1, see
    /// [`Outbox`]).
    fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) {
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtMostOnce, retain, payload)
        {
            log::debug!("dropped a message to {topic}: {e}");
        }
    }

    /// Publishes the next report if one is waiting and none is in flight.
    fn pump(&mut self) {
        match self.outbox.next_publish() {
            Ok(Some(report)) => {
                let topic = self.topics.record_topic(&report).to_string();
                if let Err(e) = self
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, false, report)
                {
                    log::debug!("report publish deferred: {e}");
                    self.outbox.publish_failed();
                }
            }
            Ok(None) => {}
            Err(e) => log::error!("cannot read the report spool: {e}"),
        }
    }

    async fn shutdown(
        mut self,
        mut net: mpsc::Receiver<NetEvent>,
        poller: tokio::task::JoinHandle<()>,
    ) {
        log::info!("shutting down");
        self.report();
        if let Err(e) = self.outbox.flush() {
            log::error!("cannot spool the last reports: {e}");
        }
        if let Err(e) = self.seq.save() {
            log::warn!("cannot save the report sequence number: {e}");
        }
        if self.outbox.pending() > 0 {
            log::info!(
                "{} reports wait in the spool for the next start",
                self.outbox.pending()
            );
        }
        if self.connected {
            self.publish(
                &self.topics.status,
                true,
                mqtt::offline_status(&self.device),
            );
        }
        if !self.connected {
            poller.abort();
            return;
        }
        let _ = self.client.try_disconnect();
        let drain = async { while net.recv().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            poller.abort();
        }
    }
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
