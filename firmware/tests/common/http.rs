//! The agent's HTTP server in-process on 127.0.0.1:0, as the HTTP tests and the HTTP
//! bench start it.
//!
//! A module of its own, without the rest of `common`, so that `benches/http.rs` can
//! include it too (`#[path]`).
#![allow(dead_code)]

use std::time::Duration;

use perch_firmware::experiment::Experiments;
use perch_firmware::http::{serve_experiments, HttpLimits};
use perch_firmware::repository::Repository;
use perch_firmware::service::InferenceService;

/// A server running on its own tokio runtime until dropped, and a client for it.
///
/// Each test binary adds the requests it makes in an `impl` block of its own.
pub struct HttpServer {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// A client that hands error statuses back as answers, with a 60 s timeout.
    pub agent: ureq::Agent,
    /// The service it serves (the primary model's, when it serves a repository).
    pub service: InferenceService,
    /// Every model it serves.
    pub repository: Repository,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    runtime: tokio::runtime::Runtime,
}

impl HttpServer {
    /// Serves `service` with `limits` on a runtime of two worker threads.
    pub fn serve(service: InferenceService, limits: HttpLimits) -> HttpServer {
        HttpServer::serve_on(2, service, limits)
    }

    /// [`HttpServer::serve`] on a runtime of `worker_threads` threads.
    pub fn serve_on(
        worker_threads: usize,
        service: InferenceService,
        limits: HttpLimits,
    ) -> HttpServer {
        HttpServer::serve_models(worker_threads, Repository::from(service), limits)
    }

    /// Serves every model of `models` on a runtime of `worker_threads` threads.
    pub fn serve_models(
        worker_threads: usize,
        models: Repository,
        limits: HttpLimits,
    ) -> HttpServer {
        HttpServer::serve_experiments(worker_threads, models, Experiments::default(), limits)
    }

    /// Serves every model of `models` and `experiments` over them on a runtime of
    /// `worker_threads` threads.
    pub fn serve_experiments(
        worker_threads: usize,
        models: Repository,
        experiments: Experiments,
        limits: HttpLimits,
    ) -> HttpServer {
        let (service, repository) = (models.primary(), models.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(serve_experiments(
            listener,
            models,
            experiments,
            limits,
            async move {
                let _ = stopped.await;
            },
        ));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        HttpServer {
            base,
            agent,
            service,
            repository,
            stop: Some(stop),
            task: Some(task),
            runtime,
        }
    }

    /// GETs `path`: the status and the body as text.
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    /// The value of one sample line of `/metrics` (which must answer 200).
    pub fn metric(&self, sample: &str) -> f64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
            .parse()
            .unwrap()
    }

    /// Stops the server, lets the requests in flight finish, and returns what
    /// `serve_experiments` returned.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().unwrap();
        self.runtime.block_on(task).unwrap()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
