//! The device's rollout logic as a sans-IO state machine: events in, [`Action`]s out.
//!
//! [`Machine`] reads no clock and touches no file or socket. Every input that depends on
//! time takes `now_ms`, milliseconds of a monotonic clock the caller owns; everything
//! that must happen in the world (request a chunk, write it, install, confirm, roll
//! back, report, persist) comes back as an [`Action`] for the executor
//! ([`Updater`](super::Updater)) to carry out, in order.
//!
//! Its durable part is [`State`]: the executor writes it after every
//! [`Action::Persist`], and [`Machine::restore`] continues from it after a restart
//! (resuming a download from the chunks found good on disk, continuing a soak, keeping
//! the report counter).

use perch_runtime::bundle::VerifyingKey;
use perch_runtime::histogram::Histogram;
use perch_runtime::rollout::{self, DeviceState, DeviceStatus, Phase, RolloutDocument};
use perch_runtime::slo::Slo;
use serde::{Deserialize, Serialize};

use super::freshness::Freshness;
use super::refusal::{Claimed, Refusals};
use super::soak::{Soak, Verdict};

/// The persisted state's format version.
pub const STATE_FORMAT: u32 = 1;

/// The longest wait before asking again for a chunk whose copies failed their hash.
pub const MAX_CHUNK_RETRY_MS: u64 = 60_000;

/// The chunk a download waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Awaiting {
    /// Its index.
    index: u32,
    /// When it was first requested.
    since_ms: u64,
    /// When to request it again if no good copy came.
    next_request_ms: u64,
    /// Copies that failed their hash check.
    bad: u32,
}

/// How the machine behaves; not persisted (it comes from the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// This device's id: cohort bucketing and reports use it.
    pub device: String,
    /// The device group; documents for another group are refused.
    pub group: String,
    /// How long a requested chunk may take before it is requested again, ms.
    pub chunk_timeout_ms: u64,
    /// How long the download may wait for a good copy of the chunk it needs, ms; past
    /// it the rollout fails. Copies that fail their hash check (forged by anyone who can
    /// publish on the chunk topic, or damaged) are dropped and the chunk requested
    /// again with backoff, but they never fail the rollout by themselves.
    pub stall_timeout_ms: u64,
    /// Starts on probation above which the agent is crash-looping and rolls back.
    pub max_probation_boots: u32,
    /// The model of the repository this machine updates (`None`: the primary);
    /// documents for another model are refused.
    pub model: Option<String>,
}

/// What the machine keeps across restarts (written by the executor as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// [`STATE_FORMAT`].
    pub format: u32,
    /// The highest document revision acted on; lower ones are replays.
    pub highest_revision: u64,
    /// The verified document of the current rollout.
    pub document: Option<RolloutDocument>,
    /// Where the device stands in it (`None`: nothing reported yet).
    pub state: Option<DeviceState>,
    /// Chunks `0..have` are on disk and good.
    pub have: u32,
    /// Reports sent for the current rollout.
    pub update: u32,
    /// The reason of the last failure or roll-back.
    pub reason: Option<String>,
    /// The model serving now, `name version`, as reports state it.
    pub serving: String,
    /// The model that served before the current rollout's activation.
    pub previous_serving: String,
    /// The activated bundle's limits while on probation.
    pub slo: Slo,
    /// Probation time counted so far, ms (survives restarts; time while the agent was
    /// down does not count).
    pub soaked_ms: u64,
    /// The probation's traffic: judged requests and the window not yet full.
    #[serde(default)]
    pub soak: Soak,
}

impl Default for State {
    fn default() -> State {
        State {
            format: STATE_FORMAT,
            highest_revision: 0,
            document: None,
            state: None,
            have: 0,
            update: 0,
            reason: None,
            serving: String::new(),
            previous_serving: String::new(),
            slo: Slo::default(),
            soaked_ms: 0,
            soak: Soak::default(),
        }
    }
}

/// What the executor must do, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open (or resume) the partial download of the current document's bundle, then
    /// call [`Machine::on_resumed`] with the number of good chunks found.
    PrepareDownload,
    /// Publish a [`rollout::ChunkRequest`] for chunk `index` of the current rollout.
    RequestChunk {
        /// The chunk.
        index: u32,
    },
    /// Append chunk `index` (already checked against its signed hash) to the download.
    WriteChunk {
        /// The chunk.
        index: u32,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// Verify, stage, load, self-test, warm up and activate the downloaded bundle, then
    /// call [`Machine::on_installed`].
    Install,
    /// End the probation of the active slot.
    Confirm,
    /// Return to the previous model.
    RollBack {
        /// Why, for the log.
        reason: String,
    },
    /// Delete the partial download.
    DiscardDownload,
    /// Send this report (QoS 1, spooled).
    Report(DeviceStatus),
    /// Write [`Machine::state`] durably.
    Persist,
    /// An input was refused; nothing changed. For the log.
    Refused {
        /// Why.
        reason: String,
    },
}

/// The rollout state machine (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Machine {
    config: MachineConfig,
    trusted: Vec<VerifyingKey>,
    state: State,
    /// The chunk awaited (not persisted: a restart asks again).
    awaiting: Option<Awaiting>,
    /// When probation time was last counted (not persisted: monotonic clocks restart).
    soak_mark_ms: Option<u64>,
    /// The last progress decile reported.
    reported_decile: Option<u8>,
    /// Refused documents reported under the rollout id they name.
    refusals: Refusals,
    /// Whether the current document was renewed in time (not persisted: a restart
    /// starts a new period).
    freshness: Freshness,
}

impl Machine {
    /// A machine with no rollout history, checking documents against `trusted`.
    pub fn new(config: MachineConfig, trusted: Vec<VerifyingKey>) -> Machine {
        Machine::restore(config, trusted, State::default())
    }

    /// A machine continuing from a persisted `state`. A download in progress continues
    /// once the executor answers the [`Action::PrepareDownload`] of
    /// [`Machine::resume`]; a soak continues from the probation time already counted.
    pub fn restore(config: MachineConfig, trusted: Vec<VerifyingKey>, state: State) -> Machine {
        Machine {
            config,
            trusted,
            state,
            awaiting: None,
            soak_mark_ms: None,
            reported_decile: None,
            refusals: Refusals::default(),
            freshness: Freshness::default(),
        }
    }

    /// The durable state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Records the model serving now (`name version`), as reports should state it.
    pub fn set_serving(&mut self, serving: &str) {
        serving.clone_into(&mut self.state.serving);
    }

    /// After a restart: what to do to continue. A download in progress (or one that was
    /// complete and being verified) is prepared again; anything else needs nothing.
    pub fn resume(&mut self) -> Vec<Action> {
        match self.state.state {
            Some(DeviceState::Downloading | DeviceState::Verifying) => {
                vec![Action::PrepareDownload]
            }
            _ => Vec::new(),
        }
    }

    /// A rollout document arrived (retained on the group's topic) at `now_ms`.
    ///
    /// Refused, changing nothing: a payload that does not verify against the trusted
    /// keys, a document for another group, and a revision lower than the highest acted
    /// on (a replay; reported with the reason under the current rollout when it is the
    /// current rollout's, as `failed` under its own rollout id otherwise). The same revision
    /// again (a retained re-delivery) is a no-op and renews nothing; a higher one renews
    /// the document's freshness and thaws a frozen device ([`Freshness`]).
    pub fn on_document(&mut self, payload: &[u8], now_ms: u64) -> Vec<Action> {
        let doc = match RolloutDocument::verify(payload, &self.trusted) {
            Ok(doc) => doc,
            Err(e) => return self.refuse_unverified(payload, e.to_string()),
        };
        if doc.group != self.config.group {
            return vec![Action::Refused {
                reason: format!(
                    "the rollout document is for group {}, this device is in group {}",
                    doc.group, self.config.group
                ),
            }];
        }
        if doc.model != self.config.model {
            let name = |m: &Option<String>| m.clone().unwrap_or_else(|| "primary".into());
            return vec![Action::Refused {
                reason: format!(
                    "the rollout document updates the {} model, this rollout is the {} \
                     model's",
                    name(&doc.model),
                    name(&self.config.model)
                ),
            }];
        }
        if doc.revision < self.state.highest_revision {
            let reason = format!(
                "replayed rollout document (revision {}, already acted on {})",
                doc.revision, self.state.highest_revision
            );
            let current = self.state.document.as_ref().map(|d| &d.rollout_id);
            if current != Some(&doc.rollout_id) {
                // Another rollout's (an operator whose clock is behind the previous
                // rollout's revisions, or an old one replayed): reported under its id.
                return self.refuse(payload, Some(Claimed::of(&doc)), reason);
            }
            let mut actions = vec![Action::Refused {
                reason: reason.clone(),
            }];
            if let Some(state) = self.state.state {
                self.state.update = self.state.update.saturating_add(1);
                actions.push(Action::Report(self.status(state, Some(reason))));
                actions.push(Action::Persist);
            }
            return actions;
        }
        if doc.revision == self.state.highest_revision {
            return Vec::new();
        }
        self.state.highest_revision = doc.revision;
        // Past its wall-clock expiry, a new revision renews nothing (see on_tick).
        let expired = self.freshness.is_expired(now_ms, |s| doc.expired_at(s));
        let thawed = !expired && self.freshness.renew(now_ms);
        if let Some(awaiting) = self.awaiting.as_mut().filter(|_| thawed) {
            // The freeze stopped the requests and the stall clock: start both over.
            awaiting.since_ms = now_ms;
            awaiting.next_request_ms = now_ms;
        }
        let mut actions = Vec::new();
        let same_rollout = self
            .state
            .document
            .as_ref()
            .is_some_and(|d| d.rollout_id == doc.rollout_id && d.bundle == doc.bundle);
        if !same_rollout {
            match self.state.state {
                Some(DeviceState::Downloading | DeviceState::Verifying) => {
                    actions.push(Action::DiscardDownload);
                }
                // Superseded while on probation: the operator moved on from it.
                Some(DeviceState::Active | DeviceState::Unexercised) => {
                    actions.push(Action::Confirm);
                }
                _ => {}
            }
            self.state.update = self.refusals.update_floor();
            self.state.have = 0;
            self.state.reason = None;
            self.state.state = None;
            self.state.soaked_ms = 0;
            self.state.soak = Soak::default();
            self.awaiting = None;
            self.reported_decile = None;
        }
        let in_cohort = doc.in_cohort(&self.config.device);
        let phase = doc.phase;
        self.state.document = Some(doc);
        let current = self.state.state;
        match (phase, current) {
            (
                Phase::Aborted,
                Some(DeviceState::Active | DeviceState::Unexercised | DeviceState::Confirmed),
            ) => {
                let reason = "the operator aborted the rollout".to_string();
                self.roll_back(reason, &mut actions);
            }
            (
                Phase::Aborted,
                Some(DeviceState::Pending | DeviceState::Downloading | DeviceState::Verifying),
            ) => {
                actions.push(Action::DiscardDownload);
                self.awaiting = None;
                self.transition(
                    DeviceState::Failed,
                    Some("the operator aborted the rollout before it was installed".into()),
                    &mut actions,
                );
            }
            (Phase::Aborted, _) => actions.push(Action::Persist),
            (_, None | Some(DeviceState::Pending)) if !in_cohort => {
                self.transition(DeviceState::NotInCohort, None, &mut actions);
            }
            (_, Some(DeviceState::NotInCohort)) if !in_cohort => actions.push(Action::Persist),
            (Phase::Paused, None | Some(DeviceState::NotInCohort)) => {
                self.transition(DeviceState::Pending, None, &mut actions);
            }
            (
                Phase::Running | Phase::Completed,
                None | Some(DeviceState::NotInCohort | DeviceState::Pending),
            ) => {
                self.transition(DeviceState::Downloading, None, &mut actions);
                actions.push(Action::PrepareDownload);
            }
            (Phase::Completed, Some(DeviceState::Active | DeviceState::Unexercised)) => {
                actions.push(Action::Confirm);
                self.transition(DeviceState::Confirmed, None, &mut actions);
            }
            _ => actions.push(Action::Persist),
        }
        if thawed && !actions.iter().any(|a| matches!(a, Action::Report(_))) {
            if let Some(state) = self.state.state {
                // Tell the operator the freeze is over.
                self.state.update = self.state.update.saturating_add(1);
                actions.push(Action::Report(
                    self.status(state, self.state.reason.clone()),
                ));
                actions.push(Action::Persist);
            }
        }
        actions.extend(self.check_expiry(now_ms).unwrap_or_default());
        actions
    }

    /// The device's clock is synchronized (NTP, say) and reads `unix_ms` at `now_ms`:
    /// from now on documents past their `expires_unix_s` freeze the device as stale
    /// ones do ([`Freshness`]).
    pub fn on_wall_clock(&mut self, unix_ms: u64, now_ms: u64) -> Vec<Action> {
        self.freshness.set_wall_clock(unix_ms, now_ms);
        self.check_expiry(now_ms).unwrap_or_default()
    }

    /// The executor found chunks `0..have` good on disk (after [`Action::PrepareDownload`]).
    /// Requests the next chunk, or installs when all are there.
    pub fn on_resumed(&mut self, have: u32, now_ms: u64) -> Vec<Action> {
        let Some(count) = self.state.document.as_ref().map(|d| d.bundle.chunk_count()) else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        match self.state.state {
            Some(DeviceState::Downloading) => {
                self.state.have = have.min(count);
                self.next_chunk(now_ms, &mut actions);
            }
            Some(DeviceState::Verifying) if have >= count => {
                self.state.have = count;
                actions.push(Action::Install);
            }
            Some(DeviceState::Verifying) => {
                // The download is not complete after all: fetch the rest.
                self.state.have = have;
                self.transition(DeviceState::Downloading, None, &mut actions);
                self.next_chunk(now_ms, &mut actions);
            }
            _ => {}
        }
        actions
    }

    /// A chunk frame arrived. Frames of other rollouts, other indexes than the one
    /// awaited, or while not downloading are ignored. A chunk failing its signed hash is
    /// dropped and requested again after a backoff (the timeout, doubling per bad copy,
    /// at most [`MAX_CHUNK_RETRY_MS`]); the rollout fails only when no good copy came
    /// within [`MachineConfig::stall_timeout_ms`] ([`Machine::on_tick`]).
    pub fn on_chunk(&mut self, frame: &[u8], now_ms: u64) -> Vec<Action> {
        let Ok(chunk) = rollout::decode_chunk(frame) else {
            return vec![Action::Refused {
                reason: "a malformed chunk frame was dropped".into(),
            }];
        };
        let Some(doc) = self.state.document.as_ref() else {
            return Vec::new();
        };
        if chunk.rollout_id != doc.rollout_id
            || self.state.state != Some(DeviceState::Downloading)
            || chunk.index != self.state.have
            || self.freshness.is_frozen()
        {
            return Vec::new();
        }
        let mut actions = Vec::new();
        if !doc.bundle.chunk_matches(chunk.index, chunk.data) {
            if let Some(awaiting) = &mut self.awaiting {
                awaiting.bad = awaiting.bad.saturating_add(1);
                // Ask again, later each time: copies that keep failing their hash come
                // from someone who can publish on the chunk topic, not from bad luck.
                let shift = awaiting.bad.min(16);
                let delay = self
                    .config
                    .chunk_timeout_ms
                    .saturating_mul(1 << shift)
                    .min(MAX_CHUNK_RETRY_MS.max(self.config.chunk_timeout_ms));
                awaiting.next_request_ms = now_ms.saturating_add(delay);
                actions.push(Action::Refused {
                    reason: format!(
                        "chunk {} failed its hash check ({} bad copies); requesting it \
                         again in {} ms",
                        chunk.index, awaiting.bad, delay
                    ),
                });
            }
            return actions;
        }
        let count = doc.bundle.chunk_count();
        actions.push(Action::WriteChunk {
            index: chunk.index,
            data: chunk.data.to_vec(),
        });
        self.state.have = chunk.index + 1;
        self.next_chunk(now_ms, &mut actions);
        if self.state.state == Some(DeviceState::Downloading) {
            let decile = self.progress_pct(count) / 10;
            if self.reported_decile.is_none_or(|d| decile > d) {
                self.reported_decile = Some(decile);
                self.state.update = self.state.update.saturating_add(1);
                let status = self.status(DeviceState::Downloading, None);
                actions.push(Action::Report(status));
                actions.push(Action::Persist);
            }
        }
        actions
    }

    /// Time passed: a running or paused rollout's document not renewed within its
    /// `fresh_s`, or past its expiry by the device's synchronized clock, freezes the
    /// device's part in it, reported once ([`Freshness`]); a
    /// chunk whose reply did not come within the timeout (or the backoff after a bad
    /// copy) is requested again; a download that got no good copy of the chunk it needs
    /// for [`MachineConfig::stall_timeout_ms`] fails. Frozen, nothing is requested and
    /// the stall clock stops.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Action> {
        let stale = self.check_freshness(now_ms);
        if let Some(actions) = stale.or_else(|| self.check_expiry(now_ms)) {
            return actions;
        }
        if self.freshness.is_frozen() {
            return Vec::new();
        }
        let Some(awaiting) = &mut self.awaiting else {
            return Vec::new();
        };
        if self.state.state != Some(DeviceState::Downloading) {
            return Vec::new();
        }
        if now_ms.saturating_sub(awaiting.since_ms) >= self.config.stall_timeout_ms {
            let reason = format!(
                "no good copy of chunk {} arrived within {} s ({} copies failed their hash \
                 check)",
                awaiting.index,
                self.config.stall_timeout_ms / 1000,
                awaiting.bad
            );
            self.awaiting = None;
            let mut actions = vec![Action::DiscardDownload];
            self.transition(DeviceState::Failed, Some(reason), &mut actions);
            return actions;
        }
        if now_ms >= awaiting.next_request_ms {
            awaiting.next_request_ms = now_ms.saturating_add(self.config.chunk_timeout_ms);
            return vec![Action::RequestChunk {
                index: awaiting.index,
            }];
        }
        Vec::new()
    }

    /// The executor finished [`Action::Install`]: `Ok` with the activated bundle's SLO
    /// limits (the bundle serves, on probation), or `Err` with the reason it was refused
    /// (the old model still serves).
    pub fn on_installed(&mut self, result: Result<Slo, String>, now_ms: u64) -> Vec<Action> {
        if self.state.state != Some(DeviceState::Verifying) {
            return Vec::new();
        }
        let mut actions = Vec::new();
        match result {
            Ok(slo) => {
                self.state.slo = slo;
                self.state.soaked_ms = 0;
                self.state.soak = Soak::default();
                self.soak_mark_ms = Some(now_ms);
                self.state.previous_serving = std::mem::take(&mut self.state.serving);
                if let Some(doc) = &self.state.document {
                    self.state.serving = format!("{} {}", doc.bundle.name, doc.bundle.version);
                }
                self.transition(DeviceState::Active, None, &mut actions);
            }
            Err(reason) => self.transition(DeviceState::Failed, Some(reason), &mut actions),
        }
        // After the new state is persisted: a restart in between finds the bundle again.
        actions.push(Action::DiscardDownload);
        actions
    }

    /// The executor found, at start-up, that the device no longer serves the bundle it
    /// activated (a roll-back was carried out but not recorded before a restart): the
    /// rollout is rolled back with `reason`, without another [`Action::RollBack`].
    pub fn on_reverted(&mut self, reason: String) -> Vec<Action> {
        let mut actions = Vec::new();
        if matches!(
            self.state.state,
            Some(DeviceState::Active | DeviceState::Unexercised | DeviceState::Confirmed)
        ) {
            self.state.serving = std::mem::take(&mut self.state.previous_serving);
            self.transition(DeviceState::RolledBack, Some(reason), &mut actions);
        }
        actions
    }

    /// The executor could not carry out a download step (a write failed): the rollout
    /// fails with `reason`.
    pub fn on_failed(&mut self, reason: String) -> Vec<Action> {
        match self.state.state {
            Some(DeviceState::Downloading | DeviceState::Verifying) => {
                self.awaiting = None;
                let mut actions = vec![Action::DiscardDownload];
                self.transition(DeviceState::Failed, Some(reason), &mut actions);
                actions
            }
            _ => Vec::new(),
        }
    }

    /// A metrics report interval ended: `ok` and `errors` requests and the latency
    /// histogram of the successful ones. While on probation, intervals are pooled into
    /// windows of at least the document's `soak_min_requests` ([`Soak`]); a full window
    /// that breaks the bundle's SLO rolls back, naming the metric and the limit. Once
    /// the document's soak time is over, the bundle is confirmed if the soak judged
    /// that many requests, and otherwise reported `unexercised` (once) and kept on
    /// probation until it has.
    pub fn on_interval(
        &mut self,
        ok: u64,
        errors: u64,
        latency: &Histogram,
        now_ms: u64,
    ) -> Vec<Action> {
        let on_probation = matches!(
            self.state.state,
            Some(DeviceState::Active | DeviceState::Unexercised)
        );
        let Some(doc) = self.state.document.as_ref().filter(|_| on_probation) else {
            return Vec::new();
        };
        if let Some(mark) = self.soak_mark_ms {
            self.state.soaked_ms = self
                .state
                .soaked_ms
                .saturating_add(now_ms.saturating_sub(mark));
        }
        self.soak_mark_ms = Some(now_ms);
        let soaked = self.state.soaked_ms >= doc.soak_s.saturating_mul(1000);
        let (min_requests, soak_s) = (doc.soak_min_requests, doc.soak_s);
        let slo = self.state.slo;
        let mut actions = Vec::new();
        match self
            .state
            .soak
            .add(ok, errors, latency, &slo, min_requests, soaked)
        {
            Verdict::Breach(violation) => {
                self.roll_back(format!("{violation} during soak"), &mut actions);
            }
            // Frozen, the operator may have aborted: confirm nothing on old orders.
            Verdict::Confirm if self.freshness.is_frozen() => actions.push(Action::Persist),
            Verdict::Confirm => {
                actions.push(Action::Confirm);
                self.transition(DeviceState::Confirmed, None, &mut actions);
            }
            Verdict::Unexercised { judged, pending }
                if self.state.state == Some(DeviceState::Active) =>
            {
                let reason = format!(
                    "the {soak_s} s soak served {} requests, fewer than the {min_requests} \
                     needed to judge the bundle; it stays on probation until it has",
                    judged.saturating_add(pending)
                );
                self.transition(DeviceState::Unexercised, Some(reason), &mut actions);
            }
            Verdict::Soaking | Verdict::Unexercised { .. } => actions.push(Action::Persist),
        }
        actions
    }

    /// The agent started; `boots_on_probation` is the slots' count of starts since the
    /// activation on probation. More than [`MachineConfig::max_probation_boots`] is a
    /// crash loop: roll back.
    pub fn on_boot(&mut self, boots_on_probation: u32) -> Vec<Action> {
        self.soak_mark_ms = None;
        let mut actions = Vec::new();
        if matches!(
            self.state.state,
            Some(DeviceState::Active | DeviceState::Unexercised)
        ) && boots_on_probation > self.config.max_probation_boots
        {
            let reason = format!("crash loop: {boots_on_probation} starts since activation");
            self.roll_back(reason, &mut actions);
        }
        actions
    }

    /// Freezes the device when its document just went stale: `Some` with the report.
    fn check_freshness(&mut self, now_ms: u64) -> Option<Vec<Action>> {
        let doc = self.state.document.as_ref()?;
        let live = matches!(doc.phase, Phase::Running | Phase::Paused);
        let age_ms = self.freshness.check(doc.fresh_s, live, now_ms)?;
        let reason = format!(
            "no fresh rollout document for {} s (it must be renewed within {} s): frozen, \
             nothing is downloaded or confirmed until one comes",
            age_ms / 1000,
            doc.fresh_s
        );
        let state = self.state.state?;
        Some(self.frozen(state, reason))
    }

    /// Freezes the device when its document expired by the synchronized wall clock:
    /// `Some` with the report.
    fn check_expiry(&mut self, now_ms: u64) -> Option<Vec<Action>> {
        let doc = self.state.document.as_ref()?;
        let state = self.state.state?;
        if self.freshness.is_frozen() || !self.freshness.is_expired(now_ms, |s| doc.expired_at(s)) {
            return None;
        }
        let reason = format!(
            "the rollout document expired at {} (Unix seconds; this device's synchronized \
             clock reads {}): frozen, nothing is downloaded or confirmed until a fresh one \
             comes",
            doc.expires_unix_s,
            self.freshness.unix_s(now_ms).unwrap_or_default()
        );
        self.freshness.freeze();
        Some(self.frozen(state, reason))
    }

    /// What freezing says: the refusal, a report of `state` with the reason under a new
    /// update number, and the state persisted.
    fn frozen(&mut self, state: DeviceState, reason: String) -> Vec<Action> {
        self.state.update = self.state.update.saturating_add(1);
        vec![
            Action::Refused {
                reason: reason.clone(),
            },
            Action::Report(self.status(state, Some(reason))),
            Action::Persist,
        ]
    }

    fn roll_back(&mut self, reason: String, actions: &mut Vec<Action>) {
        actions.push(Action::RollBack {
            reason: reason.clone(),
        });
        self.state.serving = std::mem::take(&mut self.state.previous_serving);
        self.transition(DeviceState::RolledBack, Some(reason), actions);
    }

    /// Requests the next chunk, or moves to verifying when all are there.
    fn next_chunk(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let count = self
            .state
            .document
            .as_ref()
            .map_or(0, |d| d.bundle.chunk_count());
        if self.state.have >= count {
            self.awaiting = None;
            self.transition(DeviceState::Verifying, None, actions);
            actions.push(Action::Install);
        } else {
            let index = self.state.have;
            self.awaiting = Some(Awaiting {
                index,
                since_ms: now_ms,
                next_request_ms: now_ms.saturating_add(self.config.chunk_timeout_ms),
                bad: 0,
            });
            actions.push(Action::RequestChunk { index });
        }
    }

    fn progress_pct(&self, count: u32) -> u8 {
        let pct = u64::from(self.state.have) * 100 / u64::from(count.max(1));
        u8::try_from(pct.min(100)).unwrap_or(100)
    }

    /// Enters `state`: reports it and persists.
    fn transition(
        &mut self,
        state: DeviceState,
        reason: Option<String>,
        actions: &mut Vec<Action>,
    ) {
        self.state.state = Some(state);
        self.state.reason.clone_from(&reason);
        self.state.update = self.state.update.saturating_add(1);
        if state == DeviceState::Downloading {
            let count = self
                .state
                .document
                .as_ref()
                .map_or(1, |d| d.bundle.chunk_count());
            self.reported_decile = Some(self.progress_pct(count) / 10);
        }
        actions.push(Action::Report(self.status(state, reason)));
        actions.push(Action::Persist);
    }

    /// Refuses a document that does not verify. Nothing in it is acted on, but when it
    /// names a rollout (e.g. an operator signing with a key the devices do not trust),
    /// the refusal is reported as `failed` for that rollout id ([`Refusals`]).
    fn refuse_unverified(&mut self, payload: &[u8], reason: String) -> Vec<Action> {
        let claimed = Claimed::unverified(payload);
        self.refuse(payload, claimed, reason)
    }

    /// Refuses `payload`, reporting it under `claimed`'s rollout id once per distinct
    /// document.
    fn refuse(&mut self, payload: &[u8], claimed: Option<Claimed>, reason: String) -> Vec<Action> {
        let mut actions = vec![Action::Refused {
            reason: reason.clone(),
        }];
        if let Some(claimed) = claimed.filter(|_| self.refusals.is_new(payload)) {
            let mut report =
                self.refusals
                    .report(&self.config.device, &self.state.serving, claimed, reason);
            report.model.clone_from(&self.config.model);
            actions.push(Action::Report(report));
        }
        actions
    }

    fn status(&self, state: DeviceState, reason: Option<String>) -> DeviceStatus {
        let doc = self.state.document.as_ref();
        let count = doc.map_or(1, |d| d.bundle.chunk_count());
        DeviceStatus {
            format: rollout::FORMAT,
            device: self.config.device.clone(),
            rollout_id: doc.map(|d| d.rollout_id.clone()).unwrap_or_default(),
            revision: self.state.highest_revision,
            version: doc.map(|d| d.bundle.version.clone()).unwrap_or_default(),
            sequence: doc.map_or(0, |d| d.bundle.sequence),
            bucket: doc.map_or(0, |d| d.bucket(&self.config.device)),
            state,
            progress_pct: (state == DeviceState::Downloading).then(|| self.progress_pct(count)),
            reason,
            serving: self.state.serving.clone(),
            model: self.config.model.clone(),
            update: self.state.update,
            frozen: self.freshness.is_frozen(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use perch_runtime::bundle::SigningKey;
    use perch_runtime::rollout::{encode_chunk, BundleRef, MIN_CHUNK_SIZE};

    const TIMEOUT_MS: u64 = 2_000;
    const STALL_MS: u64 = 600_000;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    /// Ten chunks and a short last one.
    fn bundle_bytes() -> Vec<u8> {
        (0..10_500u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn document(revision: u64, phase: Phase, percent_bp: u16) -> RolloutDocument {
        RolloutDocument {
            format: rollout::FORMAT,
            group: "kitchen".into(),
            rollout_id: "kws-1.3.0-a".into(),
            revision,
            issued: "2026-11-26T12:00:00Z".into(),
            phase,
            percent_bp,
            soak_s: 60,
            soak_min_requests: 100,
            fresh_s: 0,
            expires_unix_s: 0,
            model: None,
            bundle: BundleRef::describe("kws", "1.3.0", 7, &bundle_bytes(), MIN_CHUNK_SIZE),
        }
    }

    /// A device in (or out of) the cohort of `doc`.
    fn device(doc: &RolloutDocument, inside: bool) -> String {
        (0..1000)
            .map(|i| format!("dev-{i}"))
            .find(|d| doc.in_cohort(d) == inside)
            .unwrap()
    }

    fn machine(device: &str) -> Machine {
        let config = MachineConfig {
            device: device.into(),
            group: "kitchen".into(),
            chunk_timeout_ms: TIMEOUT_MS,
            stall_timeout_ms: STALL_MS,
            max_probation_boots: 3,
            model: None,
        };
        let mut machine = Machine::new(config, vec![key().verifying_key()]);
        machine.set_serving("kws 1.2.0");
        machine
    }

    fn chunk(doc: &RolloutDocument, index: u32) -> Vec<u8> {
        let bytes = bundle_bytes();
        let range = doc.bundle.chunk_range(index).unwrap();
        encode_chunk(
            &doc.rollout_id,
            index,
            &bytes[range.start as usize..range.end as usize],
        )
    }

    fn reports(actions: &[Action]) -> Vec<&DeviceStatus> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Report(status) => Some(status),
                _ => None,
            })
            .collect()
    }

    fn requests(actions: &[Action]) -> Vec<u32> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::RequestChunk { index } => Some(*index),
                _ => None,
            })
            .collect()
    }

    /// `n` requests of `ms` milliseconds each.
    fn latencies(n: u64, ms: f64) -> Histogram {
        let mut h = Histogram::new();
        for _ in 0..n {
            h.record(std::time::Duration::from_secs_f64(ms / 1e3));
        }
        h
    }

    fn slo() -> Slo {
        Slo {
            p99_ms: Some(25.0),
            max_error_rate: Some(0.01),
            ..Slo::default()
        }
    }

    /// Starts the rollout on an in-cohort device and feeds every chunk; returns all
    /// actions. The last one is `Install`.
    fn download(machine: &mut Machine, doc: &RolloutDocument) -> Vec<Action> {
        let mut all = machine.on_document(&doc.sign(&key()), 0);
        assert!(all.contains(&Action::PrepareDownload), "{all:?}");
        all.extend(machine.on_resumed(0, 0));
        for index in 0..doc.bundle.chunk_count() {
            all.extend(machine.on_chunk(&chunk(doc, index), u64::from(index) * 10));
        }
        all
    }

    /// A device that downloaded, installed and activated the bundle at `now_ms` 1000.
    fn active(doc: &RolloutDocument) -> Machine {
        let mut machine = machine(&device(doc, true));
        download(&mut machine, doc);
        let actions = machine.on_installed(Ok(slo()), 1_000);
        assert_eq!(
            machine.state().state,
            Some(DeviceState::Active),
            "{actions:?}"
        );
        machine
    }

    #[test]
    fn a_device_outside_the_cohort_reports_not_in_cohort_and_requests_nothing() {
        let doc = document(10, Phase::Running, 1_000);
        let mut machine = machine(&device(&doc, false));
        let actions = machine.on_document(&doc.sign(&key()), 0);
        let sent = reports(&actions);
        assert_eq!(sent.len(), 1, "{actions:?}");
        assert_eq!(sent[0].state, DeviceState::NotInCohort);
        assert_eq!(sent[0].serving, "kws 1.2.0");
        assert_eq!(sent[0].bucket, doc.bucket(&sent[0].device));
        assert!(!actions.contains(&Action::PrepareDownload));
        assert!(requests(&actions).is_empty());

        // Raising the share until the device is in starts its download.
        let mut wider = document(11, Phase::Running, 10_000);
        wider.revision = 11;
        let actions = machine.on_document(&wider.sign(&key()), 0);
        assert!(actions.contains(&Action::PrepareDownload), "{actions:?}");
        assert_eq!(reports(&actions)[0].state, DeviceState::Downloading);
    }

    #[test]
    fn a_full_download_installs_and_a_soak_without_breach_confirms() {
        let doc = document(10, Phase::Running, 5_000);
        let mut machine = machine(&device(&doc, true));
        let actions = download(&mut machine, &doc);
        let count = doc.bundle.chunk_count();
        let writes: Vec<u32> = actions
            .iter()
            .filter_map(|a| match a {
                Action::WriteChunk { index, .. } => Some(*index),
                _ => None,
            })
            .collect();
        assert_eq!(writes, (0..count).collect::<Vec<_>>());
        assert_eq!(requests(&actions), (0..count).collect::<Vec<_>>());
        assert_eq!(actions.last(), Some(&Action::Install));
        assert_eq!(actions.iter().filter(|a| **a == Action::Install).count(), 1);

        // Reports: downloading at most every 10 %, then verifying, counters rising.
        let sent = reports(&actions);
        let progress: Vec<u8> = sent.iter().filter_map(|r| r.progress_pct).collect();
        assert!(progress.len() <= 11, "{progress:?}");
        assert!(
            progress.windows(2).all(|w| w[1] / 10 > w[0] / 10),
            "{progress:?}"
        );
        assert_eq!(sent.last().unwrap().state, DeviceState::Verifying);
        let updates: Vec<u32> = sent.iter().map(|r| r.update).collect();
        assert_eq!(updates, (1..=sent.len() as u32).collect::<Vec<_>>());

        let actions = machine.on_installed(Ok(slo()), 1_000);
        let active = reports(&actions);
        assert_eq!(active[0].state, DeviceState::Active);
        assert_eq!(active[0].serving, "kws 1.3.0");
        assert!(actions.contains(&Action::DiscardDownload));

        // 59 s into a 60 s soak: nothing yet; past it: confirm.
        let actions = machine.on_interval(100, 0, &latencies(100, 5.0), 60_000);
        assert!(!actions.contains(&Action::Confirm), "{actions:?}");
        let actions = machine.on_interval(100, 0, &latencies(100, 5.0), 61_000);
        assert_eq!(actions[0], Action::Confirm);
        assert_eq!(reports(&actions)[0].state, DeviceState::Confirmed);
        assert_eq!(machine.state().state, Some(DeviceState::Confirmed));
    }

    #[test]
    fn a_p99_breach_during_soak_rolls_back_naming_the_metric_and_the_limit() {
        let doc = document(10, Phase::Running, 5_000);
        let mut machine = active(&doc);
        assert!(machine
            .on_interval(100, 0, &latencies(100, 24.0), 11_000)
            .iter()
            .all(|a| !matches!(a, Action::RollBack { .. })));
        let actions = machine.on_interval(100, 0, &latencies(100, 31.5), 21_000);
        let Action::RollBack { reason } = &actions[0] else {
            panic!("{actions:?}");
        };
        assert!(
            reason.contains("p99") && reason.contains("28.18") && reason.contains("25 ms"),
            "{reason}"
        );
        let report = reports(&actions)[0];
        assert_eq!(report.state, DeviceState::RolledBack);
        assert_eq!(report.reason.as_deref(), Some(reason.as_str()));
        assert_eq!(report.serving, "kws 1.2.0");
        // Once rolled back, later intervals do nothing.
        assert!(machine
            .on_interval(100, 0, &latencies(100, 99.0), 90_000)
            .is_empty());
    }

    #[test]
    fn one_slow_request_in_a_quiet_interval_does_not_roll_back() {
        let doc = document(10, Phase::Running, 5_000);
        let mut machine = active(&doc);
        let actions = machine.on_interval(1, 0, &latencies(1, 500.0), 11_000);
        assert_eq!(actions, [Action::Persist]);
        assert_eq!(machine.state().state, Some(DeviceState::Active));
        // The slow request is pooled with the next ones and judged with them: a p99
        // over 200 requests, 199 of them fast.
        let actions = machine.on_interval(199, 0, &latencies(199, 5.0), 21_000);
        assert_eq!(actions, [Action::Persist]);
        assert_eq!(machine.state().soak.judged, 200);
    }

    #[test]
    fn a_soak_without_traffic_reports_unexercised_and_confirms_only_once_it_had_some() {
        let doc = document(10, Phase::Running, 5_000);
        let mut machine = active(&doc);
        let quiet = Histogram::new();
        let actions = machine.on_interval(0, 0, &quiet, 61_000);
        assert!(!actions.contains(&Action::Confirm), "{actions:?}");
        let report = reports(&actions)[0];
        assert_eq!(report.state, DeviceState::Unexercised);
        let reason = report.reason.as_deref().unwrap();
        assert!(
            reason.contains("0 requests") && reason.contains("100"),
            "{reason}"
        );
        // Reported once; later quiet intervals only persist.
        assert_eq!(
            machine.on_interval(3, 0, &latencies(3, 5.0), 71_000),
            [Action::Persist]
        );
        // Traffic at last: judged, confirmed.
        let actions = machine.on_interval(97, 0, &latencies(97, 5.0), 81_000);
        assert_eq!(actions[0], Action::Confirm);
        assert_eq!(machine.state().state, Some(DeviceState::Confirmed));
    }

    #[test]
    fn an_unexercised_bundle_is_still_on_probation_for_an_abort_a_completion_and_a_breach() {
        let doc = document(10, Phase::Running, 10_000);
        let unexercised = || {
            let mut machine = active(&doc);
            machine.on_interval(0, 0, &Histogram::new(), 61_000);
            assert_eq!(machine.state().state, Some(DeviceState::Unexercised));
            machine
        };
        let mut aborted = unexercised();
        let actions = aborted.on_document(&document(11, Phase::Aborted, 10_000).sign(&key()), 0);
        assert!(
            matches!(&actions[0], Action::RollBack { .. }),
            "{actions:?}"
        );
        let mut completed = unexercised();
        let actions =
            completed.on_document(&document(11, Phase::Completed, 10_000).sign(&key()), 0);
        assert_eq!(actions[0], Action::Confirm);
        let mut breached = unexercised();
        let actions = breached.on_interval(100, 0, &latencies(100, 90.0), 71_000);
        assert!(
            matches!(&actions[0], Action::RollBack { .. }),
            "{actions:?}"
        );
        let mut looping = unexercised();
        assert!(matches!(&looping.on_boot(4)[0], Action::RollBack { .. }));
    }

    #[test]
    fn a_state_written_before_soak_windows_existed_reads_as_an_empty_soak() {
        let mut json = serde_json::to_value(State::default()).unwrap();
        json.as_object_mut().unwrap().remove("soak");
        let state: State = serde_json::from_value(json).unwrap();
        assert_eq!(state.soak, Soak::default());
    }

    #[test]
    fn an_error_rate_breach_during_soak_rolls_back() {
        let doc = document(10, Phase::Running, 5_000);
        let mut machine = active(&doc);
        let actions = machine.on_interval(95, 5, &latencies(95, 3.0), 11_000);
        let Action::RollBack { reason } = &actions[0] else {
            panic!("{actions:?}");
        };
        assert!(
            reason.contains("error rate 5.00 %") && reason.contains("1.00 %"),
            "{reason}"
        );
        assert_eq!(machine.state().state, Some(DeviceState::RolledBack));
    }

    #[test]
    fn a_crash_loop_after_activation_rolls_back() {
        let doc = document(10, Phase::Running, 5_000);
        let mut machine = active(&doc);
        assert!(machine.on_boot(3).is_empty());
        let actions = machine.on_boot(4);
        assert_eq!(
            actions[0],
            Action::RollBack {
                reason: "crash loop: 4 starts since activation".into()
            }
        );
        assert_eq!(reports(&actions)[0].state, DeviceState::RolledBack);
    }

    /// Issue 15: five forged chunks used to fail a rollout for good. Now forged copies
    /// are dropped and the chunk asked for again, ever later, and the genuine one gets
    /// through however many forgeries came before it.
    #[test]
    fn forged_chunks_are_dropped_and_requested_again_with_backoff_without_failing_the_rollout() {
        let doc = document(10, Phase::Running, 5_000);
        let mut machine = machine(&device(&doc, true));
        machine.on_document(&doc.sign(&key()), 0);
        machine.on_resumed(0, 0);
        let mut forged = chunk(&doc, 0);
        *forged.last_mut().unwrap() ^= 0xff;
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..10 {
            let actions = machine.on_chunk(&forged, now);
            assert!(
                requests(&actions).is_empty(),
                "no request at once: {actions:?}"
            );
            assert!(reports(&actions).is_empty(), "{actions:?}");
            // The next request comes after a backoff that doubles up to the cap.
            let mut waited = 0;
            while requests(&machine.on_tick(now + waited)).is_empty() {
                waited += 100;
            }
            delays.push(waited);
            now += waited;
        }
        assert_eq!(delays[..5], [4_000, 8_000, 16_000, 32_000, 60_000]);
        assert!(delays[5..].iter().all(|&d| d == MAX_CHUNK_RETRY_MS));
        assert_eq!(machine.state().state, Some(DeviceState::Downloading));
        // Ten forgeries and six minutes later, the genuine chunk is written.
        let actions = machine.on_chunk(&chunk(&doc, 0), now);
        assert!(
            matches!(actions[0], Action::WriteChunk { index: 0, .. }),
            "{actions:?}"
        );
    }

    #[test]
    fn a_download_without_a_good_copy_of_its_chunk_fails_past_the_stall_timeout() {
        let doc = document(10, Phase::Running, 5_000);
        let mut machine = machine(&device(&doc, true));
        machine.on_document(&doc.sign(&key()), 0);
        machine.on_resumed(0, 0);
        machine.on_chunk(&chunk(&doc, 0), 10);
        let mut forged = chunk(&doc, 1);
        *forged.last_mut().unwrap() ^= 0xff;
        for at in [20, 30, 40] {
            machine.on_chunk(&forged, at);
        }
        assert!(reports(&machine.on_tick(10 + STALL_MS - 1)).is_empty());
        let actions = machine.on_tick(10 + STALL_MS);
        assert!(actions.contains(&Action::DiscardDownload));
        let report = reports(&actions)[0];
        assert_eq!(report.state, DeviceState::Failed);
        assert_eq!(
            report.reason.as_deref(),
            Some("no good copy of chunk 1 arrived within 600 s (3 copies failed their hash check)")
        );
        assert!(machine.on_tick(10 + 2 * STALL_MS).is_empty());
    }

    #[test]
    fn a_replayed_document_is_refused_and_a_retained_redelivery_is_a_no_op() {
        let doc = document(20, Phase::Running, 5_000);
        let mut machine = machine(&device(&doc, true));
        let signed = doc.sign(&key());
        machine.on_document(&signed, 0);
        let before = machine.state().clone();
        assert!(machine.on_document(&signed, 0).is_empty());
        assert_eq!(machine.state(), &before);

        let mut old = document(19, Phase::Aborted, 5_000);
        old.revision = 19;
        let actions = machine.on_document(&old.sign(&key()), 0);
        let reason = "replayed rollout document (revision 19, already acted on 20)";
        assert_eq!(
            actions[0],
            Action::Refused {
                reason: reason.into()
            }
        );
        let report = reports(&actions)[0];
        assert_eq!(
            report.state,
            DeviceState::Downloading,
            "the state is unchanged"
        );
        assert_eq!(report.reason.as_deref(), Some(reason));
        assert_eq!(machine.state().highest_revision, 20);
        assert_eq!(machine.state().document, before.document);
    }

    /// Issue 15: a new rollout signed by an operator whose clock is behind the previous
    /// rollout's revisions was refused as a replay and reported under the previous
    /// rollout's id, where its operator never looked.
    #[test]
    fn a_replayed_document_of_another_rollout_is_reported_failed_under_its_own_rollout_id() {
        let doc = document(20, Phase::Running, 5_000);
        let mut machine = machine(&device(&doc, true));
        machine.on_document(&doc.sign(&key()), 0);
        let before = machine.state().clone();

        let mut behind = document(19, Phase::Running, 10_000);
        behind.rollout_id = "kws-1.4.0-b".into();
        behind.bundle = BundleRef::describe("kws", "1.4.0", 8, &bundle_bytes(), MIN_CHUNK_SIZE);
        let signed = behind.sign(&key());
        let actions = machine.on_document(&signed, 0);
        let reason = "replayed rollout document (revision 19, already acted on 20)";
        assert_eq!(
            actions[0],
            Action::Refused {
                reason: reason.into()
            }
        );
        let sent = reports(&actions);
        assert_eq!(sent.len(), 1, "{actions:?}");
        assert_eq!(sent[0].rollout_id, "kws-1.4.0-b");
        assert_eq!(sent[0].state, DeviceState::Failed);
        assert_eq!(sent[0].reason.as_deref(), Some(reason));
        assert_eq!(
            (sent[0].revision, sent[0].version.as_str(), sent[0].sequence),
            (19, "1.4.0", 8)
        );
        assert_eq!(sent[0].bucket, behind.bucket(&sent[0].device));
        let refusal_update = sent[0].update;
        assert_eq!(machine.state(), &before, "the current rollout is untouched");
        // Delivered again (retained, on reconnection): logged, not reported again.
        assert!(reports(&machine.on_document(&signed, 0)).is_empty());

        // Re-signed above the previous rollout's revision, it is taken, and its first
        // report is newer than the refusal its operator already holds.
        behind.revision = 21;
        let actions = machine.on_document(&behind.sign(&key()), 0);
        let first = reports(&actions)[0];
        assert_eq!(first.rollout_id, "kws-1.4.0-b");
        assert_eq!(first.state, DeviceState::Downloading);
        assert!(first.update > refusal_update, "{first:?}");
    }

    #[test]
    fn a_document_signed_by_an_untrusted_key_is_refused() {
        let doc = document(10, Phase::Running, 10_000);
        let mut machine = machine(&device(&doc, true));
        let forged = doc.sign(&SigningKey::from_bytes(&[2; 32]));
        let actions = machine.on_document(&forged, 0);
        assert_eq!(actions.len(), 2);
        let Action::Refused { reason } = &actions[0] else {
            panic!("{actions:?}");
        };
        assert!(reason.contains("not a trusted key"), "{reason}");
        // Reported once for the rollout it names, so its publisher learns why.
        let report = &reports(&actions)[0];
        assert_eq!(report.state, DeviceState::Failed);
        assert_eq!(report.rollout_id, doc.rollout_id);
        assert_eq!(report.reason.as_deref(), Some(reason.as_str()));
        assert_eq!(
            machine.on_document(&forged, 0).len(),
            1,
            "a re-delivery only logs"
        );
        assert_eq!(
            machine.on_document(b"junk", 0).len(),
            1,
            "nothing to report on"
        );
        assert_eq!(
            machine.state(),
            &State {
                serving: "kws 1.2.0".into(),
                ..State::default()
            }
        );
    }

    #[test]
    fn a_paused_rollout_keeps_waiting_devices_pending_and_lets_downloads_continue() {
        let paused = document(10, Phase::Paused, 10_000);
        let mut waiting = machine("dev-a");
        let actions = waiting.on_document(&paused.sign(&key()), 0);
        assert_eq!(reports(&actions)[0].state, DeviceState::Pending);
        assert!(!actions.contains(&Action::PrepareDownload));

        let running = document(9, Phase::Running, 10_000);
        let mut busy = machine("dev-a");
        busy.on_document(&running.sign(&key()), 0);
        busy.on_resumed(0, 0);
        busy.on_chunk(&chunk(&running, 0), 5);
        let actions = busy.on_document(&paused.sign(&key()), 0);
        assert!(reports(&actions).is_empty(), "{actions:?}");
        assert_eq!(busy.state().state, Some(DeviceState::Downloading));
        let actions = busy.on_chunk(&chunk(&running, 1), 10);
        assert_eq!(requests(&actions), [2]);

        // Resuming the rollout starts the waiting device.
        let actions = waiting.on_document(&document(11, Phase::Running, 10_000).sign(&key()), 0);
        assert!(actions.contains(&Action::PrepareDownload));
    }

    #[test]
    fn an_aborted_rollout_rolls_back_an_active_device_and_stops_a_download() {
        let doc = document(10, Phase::Running, 10_000);
        let aborted = document(11, Phase::Aborted, 10_000).sign(&key());
        let mut running = active(&doc);
        let actions = running.on_document(&aborted, 0);
        assert!(matches!(&actions[0], Action::RollBack { reason } if reason.contains("aborted")));
        assert_eq!(reports(&actions)[0].state, DeviceState::RolledBack);

        let mut fetching = machine("dev-b");
        fetching.on_document(&doc.sign(&key()), 0);
        fetching.on_resumed(0, 0);
        let actions = fetching.on_document(&aborted, 0);
        assert_eq!(actions[0], Action::DiscardDownload);
        assert_eq!(reports(&actions)[0].state, DeviceState::Failed);
        assert!(fetching.on_chunk(&chunk(&doc, 0), 10).is_empty());
        assert!(fetching.on_tick(60_000).is_empty());
    }

    #[test]
    fn a_download_without_a_fresh_document_freezes_reports_it_and_resumes_on_a_fresh_one() {
        let mut doc = document(10, Phase::Running, 10_000);
        doc.fresh_s = 60;
        let mut machine = machine("dev-f");
        machine.on_document(&doc.sign(&key()), 1_000);
        machine.on_resumed(0, 1_000);
        machine.on_chunk(&chunk(&doc, 0), 2_000);
        assert_eq!(requests(&machine.on_tick(30_000)), [1]);
        // The operator's next revision never comes (a broker withholding it, say); the
        // retained copy of the old one, delivered again, renews nothing.
        assert!(machine.on_document(&doc.sign(&key()), 40_000).is_empty());
        let actions = machine.on_tick(61_001);
        let report = reports(&actions)[0];
        assert_eq!(report.state, DeviceState::Downloading);
        assert!(report.frozen);
        assert!(
            report
                .reason
                .as_deref()
                .unwrap()
                .contains("no fresh rollout document"),
            "{report:?}"
        );
        // Frozen: no request, no write, no stall failure, however long.
        assert!(machine.on_tick(70_000).is_empty());
        assert!(machine.on_chunk(&chunk(&doc, 1), 71_000).is_empty());
        assert!(machine.on_tick(STALL_MS * 3).is_empty());
        assert_eq!(machine.state().state, Some(DeviceState::Downloading));
        // A fresh revision thaws it: reported, and the chunk is asked for again.
        doc.revision = 11;
        let actions = machine.on_document(&doc.sign(&key()), STALL_MS * 3 + 1);
        let report = reports(&actions)[0];
        assert!(!report.frozen, "{report:?}");
        assert_eq!(requests(&machine.on_tick(STALL_MS * 3 + 2)), [1]);
        let actions = machine.on_chunk(&chunk(&doc, 1), STALL_MS * 3 + 3);
        assert_eq!(requests(&actions), [2]);
    }

    /// Issue 15: documents never expired by the wall clock, so a broker could hand a
    /// restarted device (whose monotonic period starts over) an old running document
    /// as if it were new.
    #[test]
    fn a_document_past_its_expiry_by_a_synchronized_clock_freezes_even_after_a_restart() {
        const T0: u64 = 1_790_000_000;
        let mut doc = document(10, Phase::Running, 10_000);
        doc.fresh_s = 600;
        doc.expires_unix_s = T0 + 600;
        let mut machine = machine("dev-w");
        machine.on_document(&doc.sign(&key()), 0);
        machine.on_resumed(0, 0);
        assert!(machine.on_wall_clock(T0 * 1000, 0).is_empty());
        assert!(reports(&machine.on_tick(599_000)).is_empty());

        // The agent restarts 10 minutes later: the monotonic period starts over, so
        // without a synchronized clock nothing freezes yet.
        let state = machine.state().clone();
        let restored = || {
            let config = machine.config.clone();
            Machine::restore(config, vec![key().verifying_key()], state.clone())
        };
        let mut unsynchronized = restored();
        assert!(reports(&unsynchronized.on_tick(1_000)).is_empty());
        // With one, the document is past its expiry: frozen at once, and said so.
        let mut machine = restored();
        assert_eq!(machine.resume(), [Action::PrepareDownload]);
        machine.on_resumed(0, 0);
        let actions = machine.on_wall_clock((T0 + 700) * 1000, 0);
        let report = reports(&actions)[0];
        assert!(report.frozen, "{report:?}");
        assert_eq!(report.state, DeviceState::Downloading);
        let reason = report.reason.as_deref().unwrap();
        assert!(reason.contains("expired at 1790000600"), "{reason}");
        assert!(reason.contains("reads 1790000700"), "{reason}");
        assert!(
            machine.on_tick(1_000).is_empty(),
            "said once, nothing requested"
        );
        assert!(machine.on_chunk(&chunk(&doc, 0), 2_000).is_empty());

        // A higher revision that expired too (withheld, delivered late) thaws nothing.
        doc.revision = 11;
        doc.expires_unix_s = T0 + 650;
        let actions = machine.on_document(&doc.sign(&key()), 3_000);
        assert!(reports(&actions).is_empty(), "{actions:?}");
        assert!(machine.on_tick(4_000).is_empty());
        // A fresh one does: reported, and the chunk is asked for again.
        doc.revision = 12;
        doc.expires_unix_s = T0 + 1_300;
        let actions = machine.on_document(&doc.sign(&key()), 5_000);
        assert!(!reports(&actions)[0].frozen, "{actions:?}");
        assert_eq!(requests(&machine.on_tick(5_000)), [0]);
        // The wall clock, carried forward by the monotonic one, expires it in turn.
        let actions = machine.on_tick(600_000);
        let report = reports(&actions)[0];
        assert!(report.frozen, "{actions:?}");
        assert!(report.reason.as_deref().unwrap().contains("expired"));
    }

    #[test]
    fn a_frozen_device_on_probation_confirms_nothing_but_still_rolls_back() {
        let mut doc = document(10, Phase::Running, 10_000);
        doc.fresh_s = 30;
        let quiet = Histogram::new();
        let frozen = || {
            let mut machine = active(&doc);
            machine.on_tick(1_000);
            assert!(reports(&machine.on_tick(32_000))[0].frozen);
            machine
        };
        let mut machine = frozen();
        let actions = machine.on_interval(100, 0, &latencies(100, 5.0), 70_000);
        assert!(!actions.contains(&Action::Confirm), "{actions:?}");
        assert_eq!(machine.state().state, Some(DeviceState::Active));
        let mut machine = frozen();
        let actions = machine.on_interval(100, 0, &latencies(100, 90.0), 70_000);
        assert!(
            matches!(&actions[0], Action::RollBack { .. }),
            "{actions:?}"
        );
        // Finished rollouts never go stale.
        let mut completed = document(11, Phase::Completed, 10_000);
        completed.fresh_s = 30;
        let mut machine = active(&doc);
        machine.on_document(&completed.sign(&key()), 2_000);
        assert!(machine.on_tick(10_000_000).is_empty());
        assert!(machine.on_interval(0, 0, &quiet, 10_000_001).is_empty());
    }

    #[test]
    fn a_lost_chunk_is_requested_again_after_the_timeout() {
        let doc = document(10, Phase::Running, 10_000);
        let mut machine = machine("dev-c");
        machine.on_document(&doc.sign(&key()), 0);
        assert_eq!(requests(&machine.on_resumed(0, 1_000)), [0]);
        assert!(machine.on_tick(1_000 + TIMEOUT_MS - 1).is_empty());
        assert_eq!(
            machine.on_tick(1_000 + TIMEOUT_MS),
            [Action::RequestChunk { index: 0 }]
        );
        assert!(
            machine.on_tick(1_000 + TIMEOUT_MS + 1).is_empty(),
            "the timer restarted"
        );
        machine.on_chunk(&chunk(&doc, 0), 4_000);
        assert_eq!(
            machine.on_tick(4_000 + TIMEOUT_MS),
            [Action::RequestChunk { index: 1 }]
        );
    }

    #[test]
    fn the_state_survives_a_restart_mid_download_and_continues_from_the_next_chunk() {
        let doc = document(10, Phase::Running, 10_000);
        let mut machine = machine("dev-d");
        machine.on_document(&doc.sign(&key()), 0);
        machine.on_resumed(0, 0);
        let mut updates = 0;
        for index in 0..4 {
            for action in machine.on_chunk(&chunk(&doc, index), 10) {
                if let Action::Report(status) = action {
                    updates = status.update;
                }
            }
        }
        let json = serde_json::to_vec(machine.state()).unwrap();
        let state: State = serde_json::from_slice(&json).unwrap();
        assert_eq!(&state, machine.state());

        let mut restarted =
            Machine::restore(machine.config.clone(), machine.trusted.clone(), state);
        assert_eq!(restarted.resume(), [Action::PrepareDownload]);
        // The retained document comes again: nothing to do.
        assert!(restarted.on_document(&doc.sign(&key()), 0).is_empty());
        assert_eq!(requests(&restarted.on_resumed(4, 0)), [4]);
        let actions = restarted.on_chunk(&chunk(&doc, 4), 10);
        assert!(matches!(actions[0], Action::WriteChunk { index: 4, .. }));
        let next = reports(&actions);
        assert!(next.iter().all(|r| r.update > updates), "{next:?}");
    }

    #[test]
    fn a_new_rollout_replaces_an_unfinished_download_of_an_older_one() {
        let doc = document(10, Phase::Running, 10_000);
        let mut machine = machine("dev-e");
        machine.on_document(&doc.sign(&key()), 0);
        machine.on_resumed(0, 0);
        machine.on_chunk(&chunk(&doc, 0), 10);
        let mut next = document(11, Phase::Running, 10_000);
        next.rollout_id = "kws-1.4.0-a".into();
        next.bundle = BundleRef::describe("kws", "1.4.0", 8, &[9u8; 3000], MIN_CHUNK_SIZE);
        let actions = machine.on_document(&next.sign(&key()), 0);
        assert_eq!(actions[0], Action::DiscardDownload);
        let report = reports(&actions)[0];
        assert_eq!(
            (report.rollout_id.as_str(), report.update),
            ("kws-1.4.0-a", 1)
        );
        assert!(actions.contains(&Action::PrepareDownload));
        assert_eq!(requests(&machine.on_resumed(0, 20)), [0]);
        // Chunks of the old rollout are ignored.
        assert!(machine.on_chunk(&chunk(&doc, 1), 30).is_empty());
    }

    #[test]
    fn a_machine_of_one_model_takes_only_that_models_documents_and_reports_under_its_name() {
        let primary_doc = document(1, Phase::Running, 10_000);
        let mut model_doc = document(2, Phase::Running, 10_000);
        model_doc.model = Some("kws".into());
        let inside = device(&primary_doc, true);

        // The primary model's machine refuses the model's document, and the reverse:
        // a document signed for one cannot be replayed on the other's topic.
        let mut primary = machine(&inside);
        let actions = primary.on_document(&model_doc.sign(&key()), 0);
        assert!(
            matches!(&actions[..], [Action::Refused { reason }]
                if reason.contains("updates the kws model, this rollout is the primary model's")),
            "{actions:?}"
        );
        assert_eq!(
            primary.state(),
            &State {
                serving: "kws 1.2.0".into(),
                ..State::default()
            }
        );

        let mut config = primary.config.clone();
        config.model = Some("kws".into());
        let mut of_model = Machine::new(config, vec![key().verifying_key()]);
        let actions = of_model.on_document(&primary_doc.sign(&key()), 0);
        assert!(
            matches!(&actions[..], [Action::Refused { reason }]
                if reason.contains("updates the primary model, this rollout is the kws model's")),
            "{actions:?}"
        );
        let mut all = download(&mut of_model, &model_doc);
        all.extend(of_model.on_installed(Ok(slo()), 1_000));
        let states: Vec<_> = reports(&all)
            .iter()
            .map(|r| (r.state, r.model.clone()))
            .collect();
        assert_eq!(
            states.last(),
            Some(&(DeviceState::Active, Some("kws".into())))
        );
        assert!(
            states.iter().all(|(_, m)| m.as_deref() == Some("kws")),
            "{states:?}"
        );
    }

    #[test]
    fn a_document_for_another_group_is_refused() {
        let mut doc = document(10, Phase::Running, 10_000);
        doc.group = "garage".into();
        let mut machine = machine("dev-f");
        let actions = machine.on_document(&doc.sign(&key()), 0);
        assert_eq!(
            actions,
            [Action::Refused {
                reason: "the rollout document is for group garage, this device is in group kitchen"
                    .into()
            }]
        );
        assert_eq!(machine.state().highest_revision, 0);
    }

    #[test]
    fn a_completed_rollout_confirms_an_active_device_without_waiting_for_the_soak() {
        let doc = document(10, Phase::Running, 5_000);
        let mut machine = active(&doc);
        let actions = machine.on_document(&document(11, Phase::Completed, 10_000).sign(&key()), 0);
        assert_eq!(actions[0], Action::Confirm);
        assert_eq!(reports(&actions)[0].state, DeviceState::Confirmed);
    }
}
