//! The per-inference deadline: requests and the watchdog's probe run on tokio's blocking
//! pool and are answered within [`ServiceLimits::deadline`]; a run past it counts as hung
//! until it returns (tract cannot be interrupted, so its thread is left to it).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use perch_runtime::engine::{DType, EngineError, Input};

#[cfg(doc)]
use super::ServiceLimits;
use super::{checkin, checkout, Codec, InferenceService, ServiceError, TensorValues};

impl InferenceService {
    /// Inferences that ran past their deadline and have not returned: while there is
    /// one, the model is hung, and the agent stops telling systemd's watchdog it is
    /// alive.
    pub fn hung(&self) -> usize {
        self.inner.hung.load(Ordering::Relaxed)
    }

    /// Decodes, runs and encodes `body` on tokio's blocking pool, answering within
    /// [`ServiceLimits::deadline`]: a run still going then is answered
    /// [`ServiceError::DeadlineExceeded`] and counts as hung ([`hung`](Self::hung))
    /// until it returns (tract cannot be interrupted; the thread is left to it).
    /// Counts the request exactly once, like [`answer`](Self::answer).
    pub async fn answer_within(
        &self,
        body: impl AsRef<[u8]> + Send + 'static,
        codec: Codec,
        max_reply: usize,
    ) -> Result<Vec<u8>, ServiceError> {
        let started = Instant::now();
        let result = match self
            .within(move |service| service.decode_run_encode(body.as_ref(), codec, max_reply))
            .await
        {
            Ok(result) => result,
            Err(missed) => Err(self.missed(missed)),
        };
        self.count(&result, started.elapsed());
        result.map(|(bytes, took)| {
            if let Some(took) = took {
                self.record(took);
            }
            bytes
        })
    }

    /// Whether inference works, for the systemd watchdog: no inference is hung, and a
    /// probe (zeros of the model's input shapes, symbolic dimensions 1; neither counted
    /// nor recorded) returns within the deadline. A model that failed its self-test is
    /// served as not ready and is not probed.
    ///
    /// # Errors
    ///
    /// Why inference does not work, one line.
    pub async fn probe(&self) -> Result<(), String> {
        let hung = self.hung();
        if hung > 0 {
            return Err(format!(
                "{hung} inference(s) ran past the deadline of {} ms and have not returned",
                self.inner.limits.deadline.as_millis()
            ));
        }
        if !self.ready() {
            return Ok(());
        }
        match self.within(|service| service.probe_run()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(Missed::Task(e)) => Err(format!("the probe inference failed: {e}")),
            Err(Missed::Deadline) => Err(format!(
                "the probe inference did not return within {} ms",
                self.inner.limits.deadline.as_millis()
            )),
        }
    }

    /// One run on zeros; an engine that returns, even with an error about the values,
    /// works.
    fn probe_run(&self) -> Result<(), String> {
        let served = self.served();
        let inputs: Vec<(Vec<usize>, DType)> = served
            .metadata()
            .inputs
            .iter()
            .map(|info| {
                let shape = info
                    .shape
                    .iter()
                    .map(|d| match d {
                        perch_runtime::engine::Dim::Fixed(n) => *n,
                        _ => 1,
                    })
                    .collect();
                (shape, info.dtype)
            })
            .collect();
        let elements = inputs.iter().fold(0usize, |acc, (shape, _)| {
            acc.saturating_add(shape.iter().fold(1usize, |a, n| a.saturating_mul(*n)))
        });
        if elements > self.inner.limits.max_batch_elements {
            return Ok(());
        }
        let buffers: Vec<(Vec<usize>, TensorValues)> = inputs
            .into_iter()
            .map(|(shape, dtype)| {
                let n = shape.iter().product();
                let data = match dtype {
                    DType::I64 => TensorValues::I64(vec![0; n]),
                    DType::I32 => TensorValues::I32(vec![0; n]),
                    DType::U8 => TensorValues::U8(vec![0; n]),
                    DType::I8 => TensorValues::I8(vec![0; n]),
                    _ => TensorValues::F32(vec![0.0; n]),
                };
                (shape, data)
            })
            .collect();
        let refs: Vec<Input<'_>> = buffers
            .iter()
            .map(|(shape, data)| Input {
                shape,
                data: data.as_data(),
            })
            .collect();
        let mut session = checkout(&served).map_err(|e| e.to_string())?;
        let outcome = session.run(&refs);
        checkin(&served, session);
        match outcome {
            Err(EngineError::Run { reason }) => Err(reason),
            _ => Ok(()),
        }
    }

    /// Runs `work` on the blocking pool and waits for it up to the deadline;
    /// [`Missed::Deadline`] when it did not return in time, the run then counting as
    /// hung until it does.
    async fn within<T: Send + 'static>(
        &self,
        work: impl FnOnce(&InferenceService) -> T + Send + 'static,
    ) -> Result<T, Missed> {
        const RUNNING: u8 = 0;
        const DONE: u8 = 1;
        const OVERDUE: u8 = 2;
        let fate = Arc::new(AtomicU8::new(RUNNING));
        let (service, task_fate) = (self.clone(), fate.clone());
        let task = tokio::task::spawn_blocking(move || {
            let result = work(&service);
            let late = task_fate
                .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
                .is_err();
            if late {
                service.inner.hung.fetch_sub(1, Ordering::Relaxed);
                log::warn!("an inference that ran past its deadline returned after all");
            }
            result
        });
        let deadline = self.inner.limits.deadline;
        tokio::pin!(task);
        let joined = match tokio::time::timeout(deadline, &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                let overdue = fate
                    .compare_exchange(RUNNING, OVERDUE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if overdue {
                    self.inner.hung.fetch_add(1, Ordering::Relaxed);
                    log::error!(
                        "an inference ran past its deadline of {} ms: the model is hung",
                        deadline.as_millis()
                    );
                    return Err(Missed::Deadline);
                }
                // It returned just as the deadline passed.
                task.await
            }
        };
        // A join error: the blocking pool shuts down, or `work` panicked outside the
        // engine (whose own panics are contained).
        joined.map_err(|e| Missed::Task(format!("the inference task failed: {e}")))
    }

    /// The error a request gets when its work missed the deadline or its task failed.
    fn missed(&self, missed: Missed) -> ServiceError {
        match missed {
            Missed::Deadline => ServiceError::DeadlineExceeded {
                limit: self.inner.limits.deadline,
            },
            Missed::Task(reason) => ServiceError::Engine(EngineError::Run { reason }),
        }
    }

    /// Runs a whole request handler that counts its own request (the OIP v2 JSON and
    /// KServe V1 front ends) on the blocking pool within [`ServiceLimits::deadline`], as
    /// [`answer_within`](Self::answer_within) does; a request that misses the deadline,
    /// or whose task fails, is counted here and answered by `refused`.
    pub async fn reply_within<R: Send + 'static>(
        &self,
        handler: impl FnOnce(&InferenceService) -> R + Send + 'static,
        refused: impl FnOnce(ServiceError) -> R,
    ) -> R {
        let started = Instant::now();
        match self.within(handler).await {
            Ok(reply) => reply,
            Err(missed) => {
                self.count_failed(started.elapsed());
                refused(self.missed(missed))
            }
        }
    }
}

/// Why [`InferenceService::within`] has no result.
enum Missed {
    /// The work did not return within the deadline.
    Deadline,
    /// The task failed, with why.
    Task(String),
}
