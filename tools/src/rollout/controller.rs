//! The rollout controller: a pure state machine over [`RolloutState`].

use std::collections::BTreeMap;

use perch_runtime::bundle::rfc3339;
use perch_runtime::canary;
use perch_runtime::rollout::{DeviceState, DeviceStatus, Phase, RolloutDocument, FORMAT};
use perch_runtime::wire::MetricsReport;
use serde::{Deserialize, Serialize};

use super::cohort::{compact, sparse, Cohort, MetricSample};
use super::plan::{trim_float, Metric, Plan, PlanError, Unexercised};

/// The version of the state file's layout.
pub const STATE_FORMAT: u32 = 1;
/// Metric reports kept per device and window; beyond it the two oldest reports of the
/// same model are merged into one (sums and merged histograms), so the window's
/// aggregates stay exact while the state file stays small.
pub const MAX_SAMPLES_PER_DEVICE: usize = 32;
/// Sequence numbers of metrics reports remembered per device, to drop duplicates.
pub const RECENT_SEQS: usize = 256;
/// Decisions kept in the log; older ones are dropped first.
const MAX_LOG: usize = 1_000;

/// The time of an input: the controller's clock and the wall clock.
///
/// `ms` drives soak windows. It must never go back; the operator keeps it running across
/// restarts (the state's `clock_ms` plus the time since the restart), so time while no
/// controller ran does not count as soak. `unix_ms` (milliseconds since the Unix epoch)
/// only feeds document revisions and timestamps and may jump either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Controller time, milliseconds, monotonic.
    pub ms: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

impl Clock {
    /// A clock reading.
    pub fn new(ms: u64, unix_ms: u64) -> Clock {
        Clock { ms, unix_ms }
    }
}

/// What the caller must do after an input.
// A document is ~230 bytes and effects are few and short-lived: boxing it would only
// add an allocation per publication.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Sign this document and publish it, retained, at QoS 1 on the group's document
    /// topic.
    PublishDocument(RolloutDocument),
    /// Tell the operator (a decision or an ignored command).
    Log(String),
}

/// A command an operator sends to a running controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Move to the next stage now, without waiting for the soak or the gates.
    Promote,
    /// Stop promoting (devices that have not started downloading wait).
    Pause,
    /// Continue a paused rollout.
    Resume,
    /// End the rollout; every device returns to its previous model.
    Abort,
}

impl Command {
    /// The command as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Promote => "promote",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
        }
    }
}

/// What the controller knows of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceView {
    /// The device's bucket for this rollout (computed here, not taken from reports).
    pub bucket: u16,
    /// The newest state report.
    pub status: Option<DeviceStatus>,
    /// Metrics reports received in the current stage's window.
    pub samples: Vec<MetricSample>,
    /// Sequence numbers of the device's latest metrics reports (at most
    /// [`RECENT_SEQS`]): a report delivered again (QoS 1) or replayed by someone who can
    /// publish on the device's topic counts once.
    #[serde(default)]
    pub recent_seqs: Vec<u32>,
    /// Whether the device reported serving the bundle (active, unexercised, confirmed)
    /// in this rollout: without a fleet list, only such a device can roll it back.
    #[serde(default)]
    pub activated: bool,
}

/// One entry of the decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Controller time.
    pub at_ms: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The phase after the decision.
    pub phase: Phase,
    /// The stage index after the decision.
    pub stage: usize,
    /// What was decided and why.
    pub message: String,
}

/// Everything a controller needs to continue after a restart; saved as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutState {
    /// [`STATE_FORMAT`].
    pub format: u32,
    /// The plan.
    pub plan: Plan,
    /// The phase.
    pub phase: Phase,
    /// The index of the current stage in `plan.stages`.
    pub stage: usize,
    /// Controller time the current stage started.
    pub stage_started_ms: u64,
    /// The latest controller time seen.
    pub clock_ms: u64,
    /// The revision of the latest document.
    pub revision: u64,
    /// Wall-clock time of the latest document, milliseconds since the Unix epoch.
    pub issued_unix_ms: u64,
    /// Why the rollout was aborted or paused.
    pub reason: Option<String>,
    /// Devices that reported on this rollout, by id.
    pub devices: BTreeMap<String, DeviceView>,
    /// What the controller decided, oldest first.
    pub log: Vec<Decision>,
    /// The last reason a soaked stage was not promoted (logged once per change).
    pub waiting: Option<String>,
    /// Reports ignored, by why (duplicate metrics, unknown devices, ...).
    #[serde(default)]
    pub ignored: BTreeMap<String, u64>,
    /// Controller time the latest document was published, to renew it in time.
    #[serde(default)]
    pub published_ms: u64,
}

/// The rollout controller. See the [module docs](super).
#[derive(Debug, Clone, PartialEq)]
pub struct Controller {
    state: RolloutState,
}

impl Controller {
    /// Starts a rollout at its first stage: the returned effects publish the first
    /// document.
    ///
    /// # Errors
    ///
    /// The plan breaks a rule ([`Plan::validate`]).
    pub fn start(plan: Plan, now: Clock) -> Result<(Controller, Vec<Effect>), PlanError> {
        Controller::start_after(plan, now, 0)
    }

    /// As [`Controller::start`], for a group whose previous rollout's documents went up
    /// to `previous_revision`: the new rollout's revisions are above it whatever the
    /// wall clock says, so devices that acted on the old rollout do not take the new
    /// one's documents for replays when the operator's clock is behind the old one's.
    ///
    /// # Errors
    ///
    /// The plan breaks a rule ([`Plan::validate`]).
    pub fn start_after(
        plan: Plan,
        now: Clock,
        previous_revision: u64,
    ) -> Result<(Controller, Vec<Effect>), PlanError> {
        plan.validate()?;
        let mut controller = Controller {
            state: RolloutState {
                format: STATE_FORMAT,
                plan,
                phase: Phase::Running,
                stage: 0,
                stage_started_ms: now.ms,
                clock_ms: now.ms,
                revision: previous_revision,
                issued_unix_ms: now.unix_ms,
                reason: None,
                devices: BTreeMap::new(),
                log: Vec::new(),
                waiting: None,
                ignored: BTreeMap::new(),
                published_ms: now.ms,
            },
        };
        let p = &controller.state.plan;
        let message = format!(
            "started rollout {} of {} {} (sequence {}) to group {}: stage 1/{} at {}",
            p.rollout_id,
            p.bundle.name,
            p.bundle.version,
            p.bundle.sequence,
            p.group,
            p.stages.len(),
            percent(p.stages[0]),
        );
        let effects = controller.publish(message, now);
        Ok((controller, effects))
    }

    /// Continues from a saved state.
    ///
    /// # Errors
    ///
    /// The state has another layout version or its plan breaks a rule.
    pub fn from_state(state: RolloutState) -> Result<Controller, PlanError> {
        if state.format != STATE_FORMAT {
            return Err(PlanError(format!(
                "rollout state format {} (this perch reads format {STATE_FORMAT})",
                state.format
            )));
        }
        state.plan.validate()?;
        if state.stage >= state.plan.stages.len() {
            return Err(PlanError(format!(
                "rollout state names stage {} of {}",
                state.stage + 1,
                state.plan.stages.len()
            )));
        }
        Ok(Controller { state })
    }

    /// The state, to save or inspect.
    pub fn state(&self) -> &RolloutState {
        &self.state
    }

    /// The state, consumed.
    pub fn into_state(self) -> RolloutState {
        self.state
    }

    /// Whether the rollout is over (completed or aborted).
    pub fn is_finished(&self) -> bool {
        matches!(self.state.phase, Phase::Completed | Phase::Aborted)
    }

    /// Whether the rollout is finished and every device that reported has settled in
    /// a final state for it: confirmed (completed rollouts only), rolled back, failed
    /// or outside the cohort (the
    /// operator process waits for this, bounded, before it exits, so `status` shows
    /// where every device ended up).
    pub fn is_settled(&self) -> bool {
        let aborted = self.state.phase == Phase::Aborted;
        self.is_finished()
            && self.state.devices.values().all(|view| {
                view.status
                    .as_ref()
                    .is_none_or(|status| match status.state {
                        DeviceState::RolledBack
                        | DeviceState::Failed
                        | DeviceState::NotInCohort => true,
                        // After an abort, a device that confirmed still has to roll back.
                        DeviceState::Confirmed => !aborted,
                        _ => false,
                    })
            })
    }

    /// The current document (to publish again, e.g. after a reconnection).
    pub fn document(&self) -> RolloutDocument {
        let s = &self.state;
        RolloutDocument {
            format: FORMAT,
            group: s.plan.group.clone(),
            rollout_id: s.plan.rollout_id.clone(),
            revision: s.revision,
            issued: rfc3339(s.issued_unix_ms / 1000),
            phase: s.phase,
            percent_bp: s.plan.stages[s.stage],
            soak_s: s.plan.device_soak_s,
            soak_min_requests: s.plan.device_soak_requests,
            fresh_s: s.plan.fresh_s,
            expires_unix_s: if matches!(s.phase, Phase::Running | Phase::Paused)
                && s.plan.fresh_s > 0
            {
                (s.issued_unix_ms / 1000).saturating_add(s.plan.fresh_s)
            } else {
                0
            },
            model: s.plan.model.clone(),
            bundle: s.plan.bundle.clone(),
        }
    }

    /// Whether `device` is in the current stage's cohort.
    pub fn in_cohort(&self, device: &str) -> bool {
        let s = &self.state;
        canary::bucket(device.as_bytes(), s.plan.rollout_id.as_bytes()) < s.plan.stages[s.stage]
    }

    /// Records a device's state report. Reports for another rollout, from an id that
    /// cannot be a device, or not newer (by `update`) than the one kept are dropped.
    /// Dropped and counted in [`RolloutState::ignored`], as made up by someone who can
    /// publish on the device's topic: a report from an id missing from the plan's fleet
    /// list; a state only cohort members reach (downloading to rolled back) from a
    /// device outside the cohort; without a fleet list, a `rolled_back` from a device
    /// never seen serving the bundle. Returns whether the report was kept.
    pub fn on_status(&mut self, status: DeviceStatus, now: Clock) -> bool {
        self.advance(now);
        let plan = &self.state.plan;
        if status.rollout_id != plan.rollout_id
            || perch_runtime::rollout::check_id("device", &status.device).is_err()
        {
            return false;
        }
        if plan
            .fleet
            .as_ref()
            .is_some_and(|fleet| !fleet.contains(&status.device))
        {
            self.ignore("report from a device not in the fleet list");
            return false;
        }
        let bucket = canary::bucket(status.device.as_bytes(), plan.rollout_id.as_bytes());
        let cohort_state = matches!(
            status.state,
            DeviceState::Downloading
                | DeviceState::Verifying
                | DeviceState::Active
                | DeviceState::Unexercised
                | DeviceState::Confirmed
                | DeviceState::RolledBack
        );
        if cohort_state && bucket >= plan.stages[self.state.stage] {
            self.ignore("cohort state from a device outside the cohort");
            return false;
        }
        let trust_any = plan.fleet.is_some();
        let known = self.state.devices.get(&status.device);
        if known
            .and_then(|v| v.status.as_ref())
            .is_some_and(|old| old.update >= status.update)
        {
            return false;
        }
        let activated = known.is_some_and(|v| v.activated)
            || matches!(
                status.state,
                DeviceState::Active | DeviceState::Unexercised | DeviceState::Confirmed
            );
        if status.state == DeviceState::RolledBack && !activated && !trust_any {
            self.ignore("rolled_back from a device never seen serving the bundle");
            return false;
        }
        let view = self
            .state
            .devices
            .entry(status.device.clone())
            .or_insert_with(|| DeviceView {
                bucket,
                status: None,
                samples: Vec::new(),
                recent_seqs: Vec::new(),
                activated: false,
            });
        view.activated = activated;
        view.status = Some(status);
        true
    }

    /// Records a device's metrics report. Only devices that reported a state for this
    /// rollout belong to the group; reports of other devices are dropped, and so is a
    /// report whose sequence number the device already sent (counted in
    /// [`RolloutState::ignored`]). Returns whether the report was kept.
    pub fn on_metrics(&mut self, device: &str, report: &MetricsReport, now: Clock) -> bool {
        self.advance(now);
        let started = self.state.stage_started_ms;
        let Some(view) = self.state.devices.get_mut(device) else {
            return false;
        };
        if view.recent_seqs.contains(&report.seq) {
            self.ignore("duplicate metrics report");
            return false;
        }
        if view.recent_seqs.len() >= RECENT_SEQS {
            view.recent_seqs.remove(0);
        }
        view.recent_seqs.push(report.seq);
        let latency = sparse(&report.latency);
        view.samples.retain(|s| s.received_ms >= started);
        view.samples.push(MetricSample {
            received_ms: now.ms,
            model: report.model.name.to_string(),
            version: report.model.version.to_string(),
            ok: report.ok,
            errors: report.errors,
            interval_ms: report.interval_ms,
            latency,
        });
        if view.samples.len() > MAX_SAMPLES_PER_DEVICE {
            compact(&mut view.samples);
        }
        true
    }

    /// Judges the rollout at `now`: aborts on a rolled-back device or a breached gate,
    /// promotes a stage that soaked with every gate met by enough canary devices.
    pub fn tick(&mut self, now: Clock) -> Vec<Effect> {
        self.advance(now);
        if self.is_finished() {
            return Vec::new();
        }
        let mut effects = self.renew(now);
        effects.extend(self.judge(now));
        effects
    }

    /// Publishes a new revision of a running or paused rollout's document once a
    /// quarter of its `fresh_s` passed since the last one, so devices keep hearing a
    /// fresh document; not logged as a decision.
    fn renew(&mut self, now: Clock) -> Vec<Effect> {
        let s = &mut self.state;
        let period_ms = s.plan.fresh_s.saturating_mul(1000) / 4;
        if period_ms == 0 || now.ms.saturating_sub(s.published_ms) < period_ms {
            return Vec::new();
        }
        s.revision = (s.revision + 1).max(now.unix_ms);
        s.issued_unix_ms = now.unix_ms;
        s.published_ms = now.ms;
        vec![Effect::PublishDocument(self.document())]
    }

    /// Aborts on a rolled-back device or a breached gate, promotes a soaked stage.
    fn judge(&mut self, now: Clock) -> Vec<Effect> {
        if let Some((device, status)) = self
            .state
            .devices
            .iter()
            .filter_map(|(d, v)| v.status.as_ref().map(|s| (d, s)))
            .find(|(_, s)| s.state == DeviceState::RolledBack)
        {
            let reason = format!(
                "device {device} rolled back: {}",
                status.reason.as_deref().unwrap_or("no reason given")
            );
            return self.finish(Phase::Aborted, reason, now);
        }
        let soaked = now.ms.saturating_sub(self.state.stage_started_ms) >= self.state.plan.soak_ms;
        let canary = self.canary();
        let f = &canary.figures;
        let enough_devices = f.devices >= self.state.plan.min_devices.max(1);
        let enough_requests = f.requests >= self.state.plan.min_requests;
        let mut unmeasured = None;
        let mut breach = None;
        for gate in &self.state.plan.gates {
            let judged = match gate.metric {
                Metric::Throughput => soaked && enough_devices,
                _ => enough_requests,
            };
            match gate.measure(f, &canary.histogram) {
                Some(value) if judged && !gate.holds(value) => {
                    breach = Some(format!(
                        "gate {gate} breached: canary {} {} against limit {} ({} devices, {} requests)",
                        gate.metric_name(),
                        gate.format_value(value),
                        gate.format_value(gate.limit),
                        f.devices,
                        f.requests
                    ));
                    break;
                }
                None if unmeasured.is_none() => unmeasured = Some(gate.metric_name()),
                _ => {}
            }
        }
        if let Some(reason) = breach {
            return self.finish(Phase::Aborted, reason, now);
        }
        if !soaked || self.state.phase != Phase::Running {
            return Vec::new();
        }
        let unexercised = self.unexercised();
        let waiting = if !enough_devices {
            Some(format!(
                "waiting: {} of {} canary devices reported the new version",
                f.devices,
                self.state.plan.min_devices.max(1)
            ))
        } else if !enough_requests && !self.state.plan.gates.is_empty() {
            // Without the count, which changes every report: logged once, not per tick.
            Some(format!(
                "waiting: the canary served fewer than the {} requests needed to judge the \
                 gates",
                self.state.plan.min_requests
            ))
        } else if unexercised > 0 && self.state.plan.unexercised == Unexercised::Wait {
            Some(format!(
                "waiting: {unexercised} canary devices report unexercised (their soak saw \
                 too few requests to judge the bundle); promote by hand, or start with \
                 --unexercised accept"
            ))
        } else {
            unmeasured.map(|m| format!("waiting: no requests to measure {m} on"))
        };
        if let Some(message) = waiting {
            if self.state.waiting.as_ref() != Some(&message) {
                self.state.waiting = Some(message.clone());
                self.log(message.clone(), now);
                return vec![Effect::Log(message)];
            }
            return Vec::new();
        }
        let evidence = self.evidence(&canary);
        self.advance_stage(format!("gates met over the soak: {evidence}"), now)
    }

    /// Applies an operator command; `reason` defaults to "by hand". A command that does
    /// not apply in the current phase (pausing a paused rollout, anything after the
    /// end) changes nothing and only logs why.
    pub fn command(&mut self, command: Command, reason: Option<&str>, now: Clock) -> Vec<Effect> {
        match command {
            Command::Promote => self.promote(reason, now),
            Command::Pause => self.pause(reason, now),
            Command::Resume => self.resume(reason, now),
            Command::Abort => self.abort(reason, now),
        }
    }

    /// Moves to the next stage now (or completes from the last), skipping the soak and
    /// the gates; the phase (running or paused) stays.
    pub fn promote(&mut self, reason: Option<&str>, now: Clock) -> Vec<Effect> {
        self.advance(now);
        if self.is_finished() {
            return self.refuse(Command::Promote, now);
        }
        self.advance_stage(format!("promoted by hand: {}", by_hand(reason)), now)
    }

    /// Pauses a running rollout.
    pub fn pause(&mut self, reason: Option<&str>, now: Clock) -> Vec<Effect> {
        self.advance(now);
        if self.state.phase != Phase::Running {
            return self.refuse(Command::Pause, now);
        }
        self.state.phase = Phase::Paused;
        self.state.reason = Some(by_hand(reason));
        self.publish(format!("paused: {}", by_hand(reason)), now)
    }

    /// Resumes a paused rollout; the stage's soak window keeps its start.
    pub fn resume(&mut self, reason: Option<&str>, now: Clock) -> Vec<Effect> {
        self.advance(now);
        if self.state.phase != Phase::Paused {
            return self.refuse(Command::Resume, now);
        }
        self.state.phase = Phase::Running;
        self.state.reason = None;
        self.publish(format!("resumed: {}", by_hand(reason)), now)
    }

    /// Aborts a running or paused rollout: every device returns to its previous model.
    pub fn abort(&mut self, reason: Option<&str>, now: Clock) -> Vec<Effect> {
        self.advance(now);
        if self.is_finished() {
            return self.refuse(Command::Abort, now);
        }
        self.finish(
            Phase::Aborted,
            format!("aborted by hand: {}", by_hand(reason)),
            now,
        )
    }

    /// Canary devices whose latest report is `unexercised`.
    fn unexercised(&self) -> usize {
        let s = &self.state;
        let share = s.plan.stages[s.stage];
        s.devices
            .values()
            .filter(|v| v.bucket < share)
            .filter(|v| {
                v.status
                    .as_ref()
                    .is_some_and(|st| st.state == DeviceState::Unexercised)
            })
            .count()
    }

    /// The canary cohort: devices in the current stage's cohort that report serving the
    /// bundle (active, unexercised or confirmed), over their reports of the new version
    /// in the window. Metrics of the new version from a device that never said it
    /// activated it are not evidence.
    pub(super) fn canary(&self) -> Cohort {
        let s = &self.state;
        let share = s.plan.stages[s.stage];
        let serves_bundle = |v: &&DeviceView| {
            v.status.as_ref().is_some_and(|st| {
                st.version == s.plan.bundle.version
                    && matches!(
                        st.state,
                        DeviceState::Active | DeviceState::Unexercised | DeviceState::Confirmed
                    )
            })
        };
        let canary = s.devices.values().filter(|v| v.bucket < share);
        Cohort::of(canary.filter(serves_bundle).map(|v| {
            v.samples
                .iter()
                .filter(|x| x.received_ms >= s.stage_started_ms && self.is_new(x))
                .collect()
        }))
    }

    /// The rest of the group: reports of any other model in the window.
    pub(super) fn rest(&self) -> Cohort {
        let s = &self.state;
        Cohort::of(s.devices.values().map(|v| {
            v.samples
                .iter()
                .filter(|x| x.received_ms >= s.stage_started_ms && !self.is_new(x))
                .collect()
        }))
    }

    /// Whether a report is of the rollout's bundle.
    pub(super) fn is_new(&self, sample: &MetricSample) -> bool {
        let b = &self.state.plan.bundle;
        sample.model == b.name && sample.version == b.version
    }

    fn evidence(&self, canary: &Cohort) -> String {
        let f = &canary.figures;
        let gates: Vec<String> = self
            .state
            .plan
            .gates
            .iter()
            .filter_map(|g| {
                g.measure(f, &canary.histogram)
                    .map(|v| format!("{} (measured {})", g, g.format_value(v)))
            })
            .collect();
        let gates = if gates.is_empty() {
            "no gates".to_string()
        } else {
            gates.join(", ")
        };
        format!("{gates} ({} devices, {} requests)", f.devices, f.requests)
    }

    fn advance(&mut self, now: Clock) {
        self.state.clock_ms = self.state.clock_ms.max(now.ms);
    }

    fn advance_stage(&mut self, why: String, now: Clock) -> Vec<Effect> {
        let s = &mut self.state;
        s.waiting = None;
        if s.stage + 1 >= s.plan.stages.len() {
            return self.finish(Phase::Completed, format!("completed: {why}"), now);
        }
        s.stage += 1;
        s.stage_started_ms = now.ms;
        let started = s.stage_started_ms;
        for view in s.devices.values_mut() {
            view.samples.retain(|x| x.received_ms >= started);
        }
        let message = format!(
            "stage {}/{} at {}: {why}",
            s.stage + 1,
            s.plan.stages.len(),
            percent(s.plan.stages[s.stage])
        );
        self.publish(message, now)
    }

    fn finish(&mut self, phase: Phase, reason: String, now: Clock) -> Vec<Effect> {
        self.state.phase = phase;
        if phase == Phase::Aborted {
            self.state.reason = Some(reason.clone());
        }
        self.publish(reason, now)
    }

    fn refuse(&mut self, command: Command, now: Clock) -> Vec<Effect> {
        let message = format!(
            "ignored {}: the rollout is {}",
            command.as_str(),
            self.state.phase
        );
        self.log(message.clone(), now);
        vec![Effect::Log(message)]
    }

    /// Bumps the revision, logs `message` and returns the document and the log line.
    fn publish(&mut self, message: String, now: Clock) -> Vec<Effect> {
        let s = &mut self.state;
        s.revision = (s.revision + 1).max(now.unix_ms);
        s.issued_unix_ms = now.unix_ms;
        s.published_ms = now.ms;
        self.log(message.clone(), now);
        vec![
            Effect::PublishDocument(self.document()),
            Effect::Log(message),
        ]
    }

    /// Counts a report ignored for `why`.
    fn ignore(&mut self, why: &str) {
        let count = self.state.ignored.entry(why.to_string()).or_default();
        *count = count.saturating_add(1);
    }

    fn log(&mut self, message: String, now: Clock) {
        let s = &mut self.state;
        if s.log.len() >= MAX_LOG {
            s.log.remove(0);
        }
        s.log.push(Decision {
            at_ms: now.ms,
            unix_ms: now.unix_ms,
            phase: s.phase,
            stage: s.stage,
            message,
        });
    }
}

fn by_hand(reason: Option<&str>) -> String {
    reason
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("by hand")
        .to_string()
}

/// A share in basis points as a percent (`1250` → `12.5 %`).
pub(super) fn percent(bp: u16) -> String {
    format!("{} %", trim_float(f64::from(bp) / 100.0))
}
