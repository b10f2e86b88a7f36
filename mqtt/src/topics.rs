//! Every MQTT topic of Perch, in one place. `docs/protocol.md` specifies their payloads.
//!
//! | topic | from → to | QoS | retained |
//! |---|---|---|---|
//! | `perch/{device}/infer/req`, `…/infer/req/bin` | client → device | 0–1 | no |
//! | `perch/{device}/infer/res`, `…/infer/res/bin` | device → client | 0 | no |
//! | `perch/{device}/metrics` | device → operator, observers | 1 (spooled) | no |
//! | `perch/{device}/metrics/json` | device → people | 0 | no |
//! | `perch/{device}/health`, `…/health/json` | device → anyone | 0 | yes |
//! | `perch/{device}/status` | device (and its last will) → anyone | 1 | yes |
//! | `perch/{device}/sensor/anomaly` | device → anyone | 0 | no |
//! | `perch/{device}/rollout` | device → operator | 1 (spooled) | no |
//! | `perch/{device}/ota/req` | device → operator | 0 | no |
//! | `perch/{device}/ota/chunk` | operator → device | 0 | no |
//! | `perch/{device}/repository/req` | operator → device (signed) | 1 | no |
//! | `perch/{device}/repository/res` | device → operator | 0 | no |
//! | `perch/fleet/{group}/rollout` | operator → group | 1 | yes |
//! | `perch/fleet/{group}/rollout/command` | `perch rollout` commands → operator | 1 | no |
//! | `perch/fleet/{group}/model/{model}/rollout` | operator → group (one model) | 1 | yes |
//! | `perch/fleet/{group}/model/{model}/rollout/command` | commands → its operator | 1 | no |
//!
//! Device ids and groups are one topic level: letters, digits, `.`, `_` and `-`
//! (checked where they are configured). The fleet topics live under `perch/fleet/`,
//! which is therefore not a device id.
//!
//! ```
//! use perch_mqtt::topics::{self, DeviceTopic, DeviceTopics};
//!
//! let pi = DeviceTopics::new("pi-1");
//! assert_eq!(pi.metrics, "perch/pi-1/metrics");
//! assert_eq!(topics::device_of(&pi.metrics, DeviceTopic::Metrics), Some("pi-1"));
//! assert_eq!(DeviceTopic::Metrics.filter(), "perch/+/metrics");
//! ```

/// The first level of every topic.
pub const ROOT: &str = "perch";

/// A topic every device has, for matching and subscribing across devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeviceTopic {
    /// `infer/req`: JSON inference requests.
    InferRequest,
    /// `infer/res`: replies to JSON requests.
    InferReply,
    /// `infer/req/bin`: postcard inference requests.
    InferRequestBinary,
    /// `infer/res/bin`: replies to postcard requests.
    InferReplyBinary,
    /// `metrics`: postcard metrics reports.
    Metrics,
    /// `metrics/json`: the JSON twin of each interval.
    MetricsJson,
    /// `health`: postcard health.
    Health,
    /// `health/json`: its JSON twin.
    HealthJson,
    /// `status`: online/offline.
    Status,
    /// `sensor/anomaly`: the sensor's verdicts.
    SensorAnomaly,
    /// `rollout`: rollout state changes.
    Rollout,
    /// `ota/req`: bundle chunk requests.
    ChunkRequest,
    /// `ota/chunk`: bundle chunks.
    Chunk,
    /// `repository/req`: signed load and unload commands, and index requests.
    RepositoryRequest,
    /// `repository/res`: their replies.
    RepositoryReply,
}

impl DeviceTopic {
    /// What follows `perch/{device}/`.
    pub fn suffix(self) -> &'static str {
        match self {
            DeviceTopic::InferRequest => "infer/req",
            DeviceTopic::InferReply => "infer/res",
            DeviceTopic::InferRequestBinary => "infer/req/bin",
            DeviceTopic::InferReplyBinary => "infer/res/bin",
            DeviceTopic::Metrics => "metrics",
            DeviceTopic::MetricsJson => "metrics/json",
            DeviceTopic::Health => "health",
            DeviceTopic::HealthJson => "health/json",
            DeviceTopic::Status => "status",
            DeviceTopic::SensorAnomaly => "sensor/anomaly",
            DeviceTopic::Rollout => "rollout",
            DeviceTopic::ChunkRequest => "ota/req",
            DeviceTopic::Chunk => "ota/chunk",
            DeviceTopic::RepositoryRequest => "repository/req",
            DeviceTopic::RepositoryReply => "repository/res",
        }
    }

    /// The topic of `device`.
    pub fn of(self, device: &str) -> String {
        format!("{ROOT}/{device}/{}", self.suffix())
    }

    /// The filter matching this topic of every device (`perch/+/metrics`).
    pub fn filter(self) -> String {
        self.of("+")
    }
}

/// The device id of a topic of `kind` (`perch/{device}/metrics` → `device`); `None`
/// for any other topic, or a device level that is empty or spans levels.
pub fn device_of(topic: &str, kind: DeviceTopic) -> Option<&str> {
    let device = topic
        .strip_prefix(ROOT)?
        .strip_prefix('/')?
        .strip_suffix(kind.suffix())?
        .strip_suffix('/')?;
    (!device.is_empty() && !device.contains('/')).then_some(device)
}

/// Every topic of one device, spelled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTopics {
    /// Inference requests in JSON (Open Inference Protocol v2 body with `"id"`).
    pub infer_req: String,
    /// Replies to JSON requests.
    pub infer_res: String,
    /// Inference requests in postcard.
    pub infer_req_bin: String,
    /// Replies to postcard requests.
    pub infer_res_bin: String,
    /// Postcard metrics reports, QoS 1, spooled while the broker is unreachable.
    pub metrics: String,
    /// The JSON twin of each interval's report.
    pub metrics_json: String,
    /// Postcard health, retained.
    pub health: String,
    /// JSON twin of the health, retained.
    pub health_json: String,
    /// Online/offline status, retained; the last will.
    pub status: String,
    /// The sensor's verdicts on each vibration window.
    pub sensor_anomaly: String,
    /// Rollout state changes (JSON), QoS 1, spooled like the metrics reports.
    pub rollout: String,
    /// Bundle chunk requests the device sends to the operator.
    pub ota_req: String,
    /// Bundle chunks the operator sends the device.
    pub ota_chunk: String,
    /// Repository commands (load, unload, index) to the device.
    pub repository_req: String,
    /// Replies to repository commands.
    pub repository_res: String,
}

impl DeviceTopics {
    /// The topics of `device`, all under `perch/{device}/`.
    pub fn new(device: &str) -> DeviceTopics {
        let of = |kind: DeviceTopic| kind.of(device);
        DeviceTopics {
            infer_req: of(DeviceTopic::InferRequest),
            infer_res: of(DeviceTopic::InferReply),
            infer_req_bin: of(DeviceTopic::InferRequestBinary),
            infer_res_bin: of(DeviceTopic::InferReplyBinary),
            metrics: of(DeviceTopic::Metrics),
            metrics_json: of(DeviceTopic::MetricsJson),
            health: of(DeviceTopic::Health),
            health_json: of(DeviceTopic::HealthJson),
            status: of(DeviceTopic::Status),
            sensor_anomaly: of(DeviceTopic::SensorAnomaly),
            rollout: of(DeviceTopic::Rollout),
            ota_req: of(DeviceTopic::ChunkRequest),
            ota_chunk: of(DeviceTopic::Chunk),
            repository_req: of(DeviceTopic::RepositoryRequest),
            repository_res: of(DeviceTopic::RepositoryReply),
        }
    }
}

/// The rollout document of `group`: `perch/fleet/{group}/rollout` (signed, retained).
pub fn rollout_document(group: &str) -> String {
    format!("{ROOT}/fleet/{group}/rollout")
}

/// The commands to the operator running `group`'s rollout:
/// `perch/fleet/{group}/rollout/command`.
pub fn rollout_command(group: &str) -> String {
    format!("{ROOT}/fleet/{group}/rollout/command")
}

/// The rollout document of one model of `group`'s devices: the primary model's
/// ([`rollout_document`]) for `None`, `perch/fleet/{group}/model/{model}/rollout` for a
/// named one, so rollouts of different models of a group run side by side, each with
/// its own retained document.
pub fn rollout_document_of(group: &str, model: Option<&str>) -> String {
    match model {
        None => rollout_document(group),
        Some(model) => format!("{ROOT}/fleet/{group}/model/{model}/rollout"),
    }
}

/// The commands to the operator of one model's rollout ([`rollout_document_of`]'s
/// topic followed by `/command`).
pub fn rollout_command_of(group: &str, model: Option<&str>) -> String {
    format!("{}/command", rollout_document_of(group, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_spelled_as_the_protocol_says() {
        let t = DeviceTopics::new("gw");
        let all = [
            &t.infer_req,
            &t.infer_res,
            &t.infer_req_bin,
            &t.infer_res_bin,
            &t.metrics,
            &t.metrics_json,
            &t.health,
            &t.health_json,
            &t.status,
            &t.sensor_anomaly,
            &t.rollout,
            &t.ota_req,
            &t.ota_chunk,
            &t.repository_req,
            &t.repository_res,
        ];
        assert_eq!(
            all,
            [
                "perch/gw/infer/req",
                "perch/gw/infer/res",
                "perch/gw/infer/req/bin",
                "perch/gw/infer/res/bin",
                "perch/gw/metrics",
                "perch/gw/metrics/json",
                "perch/gw/health",
                "perch/gw/health/json",
                "perch/gw/status",
                "perch/gw/sensor/anomaly",
                "perch/gw/rollout",
                "perch/gw/ota/req",
                "perch/gw/ota/chunk",
                "perch/gw/repository/req",
                "perch/gw/repository/res",
            ]
        );
        assert_eq!(
            rollout_document_of("kitchen", None),
            "perch/fleet/kitchen/rollout"
        );
        assert_eq!(
            rollout_document_of("kitchen", Some("iris")),
            "perch/fleet/kitchen/model/iris/rollout"
        );
        assert_eq!(
            rollout_command_of("kitchen", Some("iris")),
            "perch/fleet/kitchen/model/iris/rollout/command"
        );
        assert_eq!(
            rollout_command_of("kitchen", None),
            rollout_command("kitchen")
        );
        assert_eq!(rollout_document("kitchen"), "perch/fleet/kitchen/rollout");
        assert_eq!(
            rollout_command("kitchen"),
            "perch/fleet/kitchen/rollout/command"
        );
    }

    #[test]
    fn device_topics_yield_the_device_id_only_for_one_level() {
        assert_eq!(
            device_of("perch/pi-1/ota/req", DeviceTopic::ChunkRequest),
            Some("pi-1")
        );
        assert_eq!(
            device_of("perch/pi-1/metrics", DeviceTopic::Metrics),
            Some("pi-1")
        );
        assert_eq!(
            device_of("perch/pi-1/metrics/json", DeviceTopic::Metrics),
            None
        );
        assert_eq!(device_of("perch/a/b/rollout", DeviceTopic::Rollout), None);
        assert_eq!(device_of("perch//rollout", DeviceTopic::Rollout), None);
        assert_eq!(device_of("perchx/a/rollout", DeviceTopic::Rollout), None);
    }
}
