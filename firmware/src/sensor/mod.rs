//! The accelerometer input: vibration from an ADXL345 turned into windows for the
//! served anomaly-detection model (R3), with each window's verdict published over MQTT.
//!
//! ```text
//! ADXL345 ──I2C──▶ Adxl345 driver ──▶ SampleRing ──▶ log spectrogram ──▶ Detector ──▶ JSON
//! (real: /dev/i2c-N;   probe, rate,    |a| in g,      5 × 128 bins,      standardize,    perch/{device}/
//!  or simulated)       FIFO, burst)    heapless       microfft           R3, threshold   sensor/anomaly
//! ```
//!
//! - [`adxl345`]: the driver on the embedded-hal 1.0 `I2c` trait;
//! - [`sim`]: a register-level ADXL345 simulation behind the same trait, with a
//!   synthetic machine vibration that can turn anomalous;
//! - [`features`]: the ring buffer (no allocation while sampling) and the features: the
//!   vibration magnitude `|a|` (gravity included, removed per frame) of 768 samples,
//!   cut into 5 overlapping frames of 256, each a 128-bin log-magnitude spectrum,
//!   standardized per bin with statistics of the first windows: R3's `[1, 640]` input;
//! - [`detector`]: reconstruction error (mean squared difference between the features
//!   and R3's output) against a threshold of mean + k·std over the next windows;
//! - [`start`]: the agent's sensor thread.
//!
//! **The model.** The sensor feeds the model the agent serves, through its
//! [`InferenceService`], so its inferences are counted and timed in the agent's metrics
//! like any request. That model must take one FP32 input of 640 values (`[1,640]`, or a
//! symbolic batch): R3, `models/anomaly-ae/model.onnx`, or a trained replacement of the
//! same shape. The agent refuses to start otherwise.
//!
//! **How detection works, honestly.** The bundled R3 is *untrained*: seeded random
//! weights, its batch-norm statistics calibrated on N(0, 1) inputs. It has learned
//! nothing about any machine and does not reconstruct its input: measured on the
//! simulated signal, the features `x` and the output `y` are uncorrelated
//! (mean(x·y) ≈ 0), so a window's error is about mean(x²) + mean(y²). Standardized with
//! the statistics of normal windows, a normal window has mean(x²) ≈ 1, while the
//! model's output energy mean(y²) varies from 0.9 to 5.8 from window to window through
//! its random weights: normal errors are ≈ 3.3 ± 0.7 with a tail to ≈ 8.7, and that
//! skew is why the default threshold is mean + 6 σ of the calibration errors. A window
//! whose spectrum changed has large standardized values in the bins that changed;
//! mean(x²) grows with them and the error rises above the threshold (≥ 13 for the
//! simulated bearing fault). In effect the detector measures the distance from the
//! normal spectrum, blurred by the model. A change that is small in standardized units
//! goes unnoticed, and one that moves the features toward the model's output can even
//! lower the error: a first, milder simulated fault (a weak 160 Hz tone and 1.5× the
//! noise) did exactly that. A model trained on the machine's normal vibration (same
//! features, same `[1,640]` input) reconstructs normal windows and not changed ones,
//! which separates them far better; nothing else here changes.
//!
//! **The message**, on `perch/{device}/sensor/anomaly`, QoS 0, not retained, one per
//! window from the calibration phase on:
//!
//! ```json
//! {"device":"pi-kitchen","timestamp_ms":1764150000000,"window":42,"phase":"detecting",
//!  "error":3.17,"threshold":7.32,"anomaly":false,"anomalies":0,"dropped_samples":0,
//!  "fifo_full":0}
//! ```
//!
//! `anomalies` counts the windows flagged since the start, `dropped_samples` the samples
//! the ring buffer dropped, `fifo_full` the reads that found the device's 32-sample FIFO
//! full (the agent fell behind: samples may have been lost).

pub mod adxl345;
mod config;
pub mod detector;
pub mod features;
pub mod sim;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use embedded_hal::i2c::I2c;
use perch_mqtt::topics::DeviceTopic;
use perch_runtime::engine::{DType, Dim, Metadata};
use rumqttc::{AsyncClient, QoS};
use serde_json::json;

use crate::device::DeviceId;
use crate::service::{InferRequest, InferenceService, RequestTensor, TensorValues};
use adxl345::{Adxl345, FIFO_DEPTH};
pub use config::{SensorConfig, SensorSource};
use detector::{DetectError, Detector, DetectorConfig, Phase, Verdict};
use features::{SampleRing, FEATURES, RING_CAPACITY, WINDOW_SAMPLES};

/// The topic of the sensor's verdicts for `device`.
pub fn topic(device: &DeviceId) -> String {
    DeviceTopic::SensorAnomaly.of(device.as_str())
}

/// Why the sensor could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SensorError {
    /// The served model does not take R3's input.
    #[error(
        "the sensor feeds the served model, which takes {inputs}; serve a model with one \
         FP32 input of shape [1,640], such as models/anomaly-ae/model.onnx"
    )]
    Model {
        /// The model's inputs, as text.
        inputs: String,
    },
    /// The I2C bus could not be opened.
    #[error("cannot open the I2C bus {}: {reason}", bus.display())]
    Open {
        /// The bus device.
        bus: PathBuf,
        /// Why.
        reason: String,
    },
    /// The device did not answer as an ADXL345, or could not be configured.
    #[error("sensor: {0}")]
    Device(String),
    /// A real sensor is configured but this build cannot read one.
    #[error(
        "sensor.source = \"i2c\" needs perchd built with the linux-sensor feature \
         (cargo build -p perch-firmware --features linux-sensor)"
    )]
    NotBuilt,
    /// The sensor thread could not be started.
    #[error("cannot start the sensor thread: {0}")]
    Thread(std::io::Error),
}

/// Checks that `metadata` describes a model the sensor can feed: one FP32 input of 640
/// values, `[1,640]` or with a symbolic batch.
///
/// # Errors
///
/// [`SensorError::Model`] naming the model's inputs.
pub fn check_model(metadata: &Metadata) -> Result<(), SensorError> {
    let fits = match &metadata.inputs[..] {
        [input] => {
            input.dtype == DType::F32
                && matches!(
                    &input.shape[..],
                    [Dim::Fixed(1) | Dim::Symbolic(_), Dim::Fixed(FEATURES)]
                )
        }
        _ => false,
    };
    if fits {
        return Ok(());
    }
    let inputs = metadata
        .inputs
        .iter()
        .map(|i| {
            let dtype = crate::service::oip::datatype_name(i.dtype);
            format!("{:?} {dtype} {}", i.name, i.shape_string())
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(SensorError::Model { inputs })
}

/// What [`Pipeline::process`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Fewer than a window's samples wait.
    Waiting,
    /// A window went into the detector's learning phase.
    Learned,
    /// A window was judged.
    Judged(Verdict),
}

/// Samples in, verdicts out: the ring buffer, the features and the detector, in fixed
/// buffers (about 20 KB) allocated once.
#[derive(Debug)]
pub struct Pipeline {
    ring: SampleRing<RING_CAPACITY>,
    window: [f32; WINDOW_SAMPLES],
    spectrogram: [f32; FEATURES],
    detector: Detector,
}

impl Pipeline {
    /// An empty pipeline whose detector calibrates as `config` says.
    pub fn new(config: DetectorConfig) -> Pipeline {
        Pipeline {
            ring: SampleRing::new(),
            window: [0.0; WINDOW_SAMPLES],
            spectrogram: [0.0; FEATURES],
            detector: Detector::new(config),
        }
    }

    /// Adds one sample (its vibration magnitude); never allocates. A full ring drops
    /// its oldest sample.
    pub fn push(&mut self, sample: adxl345::Sample) {
        self.ring.push(sample.magnitude_g());
    }

    /// Forgets the samples waiting (after a gap: a window must be continuous).
    pub fn discard_samples(&mut self) {
        self.ring.clear();
    }

    /// Takes the next window if one is complete, computes its features and hands it to
    /// the detector, which runs `model` on it past its learning phase.
    ///
    /// # Errors
    ///
    /// The model failed on the window (the window is lost, the pipeline goes on).
    pub fn process<E, O: AsRef<[f32]>>(
        &mut self,
        model: impl FnOnce(&[f32; FEATURES]) -> Result<O, E>,
    ) -> Result<Step, DetectError<E>> {
        if !self.ring.take_into(&mut self.window) {
            return Ok(Step::Waiting);
        }
        features::log_spectrogram(&self.window, &mut self.spectrogram);
        Ok(match self.detector.observe(&self.spectrogram, model)? {
            Some(verdict) => Step::Judged(verdict),
            None => Step::Learned,
        })
    }

    /// The detector.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// Samples dropped because the ring was full.
    pub fn dropped_samples(&self) -> u64 {
        self.ring.dropped()
    }
}

/// The JSON message of a verdict (see the [module docs](self)); `fifo_full` counts the
/// reads that found the device's FIFO full (samples may have been lost).
pub fn message(
    device: &DeviceId,
    timestamp_ms: u64,
    verdict: &Verdict,
    pipeline: &Pipeline,
    fifo_full: u64,
) -> Vec<u8> {
    json!({
        "device": device.as_str(),
        "timestamp_ms": timestamp_ms,
        "window": verdict.window,
        "phase": verdict.phase.as_str(),
        "error": verdict.error,
        "threshold": verdict.threshold,
        "anomaly": verdict.anomaly,
        "anomalies": pipeline.detector().anomalies(),
        "dropped_samples": pipeline.dropped_samples(),
        "fifo_full": fifo_full,
    })
    .to_string()
    .into_bytes()
}

/// A running sensor thread; stops when dropped or [`stop`](Self::stop)ped.
#[derive(Debug)]
pub struct SensorHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SensorHandle {
    /// Asks the thread to stop and waits for it (at most one poll interval).
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the sensor thread panicked");
            }
        }
    }
}

impl Drop for SensorHandle {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Starts the sensor: checks that the served model fits, opens the source (the
/// simulated ADXL345, or the I2C bus), probes and configures the device, then samples on
/// a thread of its own, running each window through `service` and publishing each
/// verdict on [`topic`] through `client` (QoS 0; dropped when the client's queue is
/// full). Blocks while probing: call it from a blocking context.
///
/// # Errors
///
/// The model does not fit, the bus cannot be opened, the device does not answer as an
/// ADXL345, or a real sensor is configured in a build without `linux-sensor`.
pub fn start(
    config: &SensorConfig,
    device: &DeviceId,
    service: InferenceService,
    client: AsyncClient,
) -> Result<SensorHandle, SensorError> {
    check_model(service.served().metadata())?;
    let sink = Sink {
        topic: topic(device),
        device: device.clone(),
        service,
        client,
    };
    match &config.source {
        SensorSource::Simulated {
            seed,
            anomaly_after,
        } => {
            let from = anomaly_after
                .map(|d| sim::SimulatedAdxl345::anomaly_index(d.as_secs_f64(), config.rate.hz()));
            let bus = sim::SimulatedAdxl345::new(config.address, *seed, from, sim::Clock::RealTime);
            log::info!(
                "sensor: simulated ADXL345 at {} Hz{}",
                config.rate.hz(),
                anomaly_after.map_or(String::new(), |d| format!(", bearing fault after {d:?}"))
            );
            spawn(bus, config, sink)
        }
        #[cfg(feature = "linux-sensor")]
        SensorSource::I2c { bus } => {
            let i2c = linux_embedded_hal::I2cdev::new(bus).map_err(|e| SensorError::Open {
                bus: bus.clone(),
                reason: e.to_string(),
            })?;
            log::info!(
                "sensor: ADXL345 on {} at {:#04x}, {} Hz, ±{} g",
                bus.display(),
                config.address,
                config.rate.hz(),
                config.range.g()
            );
            spawn(i2c, config, sink)
        }
        #[cfg(not(feature = "linux-sensor"))]
        SensorSource::I2c { .. } => Err(SensorError::NotBuilt),
    }
}

/// Where verdicts go.
struct Sink {
    topic: String,
    device: DeviceId,
    service: InferenceService,
    client: AsyncClient,
}

fn spawn<I>(bus: I, config: &SensorConfig, sink: Sink) -> Result<SensorHandle, SensorError>
where
    I: I2c + Send + 'static,
{
    let device_err = |e: adxl345::Error<I::Error>| SensorError::Device(e.to_string());
    let mut adxl = Adxl345::probe(bus, config.address).map_err(device_err)?;
    adxl.configure(config.rate, config.range)
        .map_err(device_err)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let rate_hz = config.rate.hz();
    let detector = config.detector;
    let thread = std::thread::Builder::new()
        .name("perch-sensor".into())
        .spawn(move || sample_loop(adxl, rate_hz, detector, &sink, &stopped))
        .map_err(SensorError::Thread)?;
    Ok(SensorHandle {
        stop,
        thread: Some(thread),
    })
}

/// Reads the FIFO, feeds the pipeline and publishes verdicts until `stop`. Sleeps the
/// time of a quarter FIFO (8 samples: 2.5 ms at 3200 Hz, 10 ms at 800 Hz) between reads
/// that find it less than full; a failing bus is retried every second, discarding the
/// partial window.
fn sample_loop<I: I2c>(
    mut adxl: Adxl345<I>,
    rate_hz: u32,
    detector: DetectorConfig,
    sink: &Sink,
    stop: &AtomicBool,
) {
    let poll = Duration::from_secs_f64((FIFO_DEPTH / 4) as f64 / f64::from(rate_hz))
        .max(Duration::from_millis(1));
    let mut pipeline = Pipeline::new(detector);
    let mut request = window_request();
    let mut failing = false;
    let mut was_anomalous = false;
    let mut last_phase = Phase::Learning;
    let mut model_failing = false;
    // The FIFO filled while the thread started: not a loss within any window.
    let mut fifo_full = 0u64;
    let mut first_read = true;
    while !stop.load(Ordering::Relaxed) {
        let read = adxl.fifo_len().and_then(|n| {
            for _ in 0..n {
                pipeline.push(adxl.read_sample()?);
            }
            Ok(n)
        });
        let waiting = match read {
            Ok(n) => {
                if failing {
                    log::info!("sensor: the ADXL345 answers again");
                    failing = false;
                }
                n
            }
            Err(e) => {
                if !failing {
                    log::error!("sensor: {e}; retrying every second");
                    failing = true;
                }
                pipeline.discard_samples();
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        loop {
            let step = pipeline.process(|features| infer(&sink.service, &mut request, features));
            match step {
                Ok(Step::Waiting) => break,
                Ok(Step::Learned) => {}
                Ok(Step::Judged(verdict)) => {
                    model_failing = false;
                    if verdict.phase != last_phase {
                        match verdict.phase {
                            Phase::Calibrating => log::info!(
                                "sensor: feature statistics learned; calibrating the threshold"
                            ),
                            _ => log::info!(
                                "sensor: threshold {:.3}; detecting",
                                verdict.threshold.unwrap_or(f32::NAN)
                            ),
                        }
                        last_phase = verdict.phase;
                    }
                    if verdict.anomaly != was_anomalous {
                        if verdict.anomaly {
                            log::warn!(
                                "sensor: ANOMALY from window {} (error {:.3} over threshold {:.3})",
                                verdict.window,
                                verdict.error,
                                verdict.threshold.unwrap_or(f32::NAN)
                            );
                        } else {
                            log::info!("sensor: normal again from window {}", verdict.window);
                        }
                        was_anomalous = verdict.anomaly;
                    }
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    let payload = message(&sink.device, now, &verdict, &pipeline, fifo_full);
                    if let Err(e) = sink.client.try_publish(
                        sink.topic.as_str(),
                        QoS::AtMostOnce,
                        false,
                        payload,
                    ) {
                        log::debug!("dropped a sensor verdict: {e}");
                    }
                }
                Err(e) if !model_failing => {
                    log::warn!("sensor: {e} (logged once until a window succeeds)");
                    model_failing = true;
                }
                Err(e) => log::debug!("sensor: {e}"),
            }
        }
        if waiting < FIFO_DEPTH {
            std::thread::sleep(poll);
        } else if !first_read {
            fifo_full += 1;
        }
        first_read = false;
    }
}

/// Runs one window through the served model, reusing the request's buffers.
fn infer(
    service: &InferenceService,
    request: &mut InferRequest,
    features: &[f32; FEATURES],
) -> Result<Vec<f32>, crate::service::ServiceError> {
    if let TensorValues::F32(data) = &mut request.inputs[0].data {
        data.copy_from_slice(features);
    }
    let response = service.infer(request)?;
    match response.outputs.into_iter().next().map(|t| t.data) {
        Some(TensorValues::F32(values)) => Ok(values),
        _ => Err(crate::service::ServiceError::BadRequest(
            "the model's first output is not FP32".into(),
        )),
    }
}

/// The model request each window's features are written into: one FP32 `[1, FEATURES]`
/// input, allocated once and reused.
fn window_request() -> InferRequest {
    InferRequest {
        id: None,
        inputs: vec![RequestTensor {
            name: String::new(),
            shape: vec![1, FEATURES],
            data: TensorValues::F32(vec![0.0; FEATURES]),
        }],
    }
}

#[cfg(all(test, feature = "onnx"))]
mod tests {
    use std::path::Path;

    use perch_runtime::engine::{LoadOptions, Model};
    use perch_runtime::wire::{ModelId, Version};

    use super::*;
    use crate::service::ServiceLimits;
    use adxl345::{Range, Rate, ADDRESS_ALT_LOW};
    use sim::{Clock, SimulatedAdxl345};

    fn serve(model: &str) -> InferenceService {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(model);
        let model = Model::load(path, &LoadOptions::new()).unwrap();
        let id = ModelId::new("m", Version::new(0, 0, 0)).unwrap();
        InferenceService::new(model, id, ServiceLimits::default())
    }

    #[test]
    fn the_sensor_accepts_r3_and_refuses_a_model_of_another_shape_naming_its_input() {
        check_model(serve("anomaly-ae/model.onnx").served().metadata()).unwrap();
        let err = check_model(serve("kws-dscnn/model.onnx").served().metadata()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"mfcc\" FP32 [1,1,49,10]"), "{text}");
        assert!(text.contains("[1,640]"), "{text}");
    }

    const NORMAL_WINDOWS: u64 = 200;
    const ANOMALOUS_WINDOWS: u64 = 20;

    /// Every verdict of a simulated run through R3 served as the agent serves it: the
    /// signal turns anomalous after the calibration windows and `NORMAL_WINDOWS` more.
    fn run_through_r3(seed: u64, config: DetectorConfig) -> Vec<Verdict> {
        let service = serve("anomaly-ae/model.onnx");
        let calibration = 2 * u64::from(config.calibration_windows);
        let switch = (calibration + NORMAL_WINDOWS) * WINDOW_SAMPLES as u64;
        let sim = SimulatedAdxl345::new(ADDRESS_ALT_LOW, seed, Some(switch), Clock::Free);
        let mut adxl = Adxl345::probe(sim, ADDRESS_ALT_LOW).unwrap();
        adxl.configure(Rate::Hz800, Range::G2).unwrap();
        let mut pipeline = Pipeline::new(config);
        let mut request = window_request();
        let mut verdicts = Vec::new();
        while pipeline.detector().windows() < calibration + NORMAL_WINDOWS + ANOMALOUS_WINDOWS {
            for _ in 0..adxl.fifo_len().unwrap() {
                pipeline.push(adxl.read_sample().unwrap());
            }
            loop {
                match pipeline
                    .process(|f| infer(&service, &mut request, f))
                    .unwrap()
                {
                    Step::Waiting => break,
                    Step::Learned => {}
                    Step::Judged(v) => verdicts.push(v),
                }
            }
        }
        assert_eq!(pipeline.dropped_samples(), 0);
        assert_eq!(
            service.totals().ok,
            verdicts.len() as u64,
            "every judged window is one inference in the service's metrics"
        );
        verdicts
    }

    #[test]
    fn through_r3_normal_vibration_is_rarely_flagged_and_a_bearing_fault_is_detected_at_once() {
        let config = DetectorConfig::default();
        let calibration = 2 * u64::from(config.calibration_windows);
        let (mut false_positives, mut missed) = (0, 0);
        for seed in 1..=10 {
            let verdicts = run_through_r3(seed, config);
            let judged = |range: std::ops::Range<u64>| {
                verdicts
                    .iter()
                    .filter(move |v| range.contains(&v.window))
                    .collect::<Vec<_>>()
            };
            let calibrating = judged(u64::from(config.calibration_windows)..calibration);
            assert_eq!(calibrating.len(), 32);
            assert!(calibrating
                .iter()
                .all(|v| v.phase == Phase::Calibrating && !v.anomaly && v.threshold.is_none()));
            let normal = judged(calibration..calibration + NORMAL_WINDOWS);
            let anomalous = judged(calibration + NORMAL_WINDOWS..u64::MAX);
            assert_eq!((normal.len(), anomalous.len()), (200, 20));
            let flagged = normal.iter().filter(|v| v.anomaly).count();
            let detected = anomalous.iter().filter(|v| v.anomaly).count();
            assert!(flagged <= 4, "seed {seed}: {flagged}/200 false positives");
            assert!(
                anomalous[0].anomaly,
                "seed {seed}: the first faulty window is not flagged: {:?}",
                anomalous[0]
            );
            false_positives += flagged;
            missed += 20 - detected;
        }
        // 2000 normal windows: at most 0.5 % flagged; 200 faulty ones: at most 1 % missed.
        assert!(
            false_positives <= 10,
            "{false_positives}/2000 false positives"
        );
        assert!(missed <= 2, "{missed}/200 faulty windows missed");
    }

    #[test]
    fn a_verdict_message_carries_the_window_error_threshold_and_counts() {
        let pipeline = Pipeline::new(DetectorConfig::default());
        let verdict = Verdict {
            window: 42,
            phase: Phase::Detecting,
            error: 1.5,
            threshold: Some(1.25),
            anomaly: true,
        };
        let device: DeviceId = "gw-1".parse().unwrap();
        let message: serde_json::Value =
            serde_json::from_slice(&message(&device, 1_700_000_000_000, &verdict, &pipeline, 3))
                .unwrap();
        assert_eq!(
            message,
            json!({"device": "gw-1", "timestamp_ms": 1_700_000_000_000u64, "window": 42,
                   "phase": "detecting", "error": 1.5, "threshold": 1.25, "anomaly": true,
                   "anomalies": 0, "dropped_samples": 0, "fifo_full": 3})
        );
        assert_eq!(topic(&device), "perch/gw-1/sensor/anomaly");
    }
}
