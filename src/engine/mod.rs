//! The engine: one model, many requests.
//!
//! Every request becomes a *job* of rows. [`Engine::evaluate`] deduplicates the job's rows,
//! answers what it can from the row cache, admits the rest into a bounded queue and waits;
//! model threads (`worker.rs`) form batches from all queued jobs (`queue.rs`) and hand each
//! job its outputs. Dropping the `evaluate` future (client gone) or passing its deadline
//! removes the job's queued rows, which are then never run.
//!
//! Gradient jobs ([`Engine::gradients`]: embeddings in, input gradients out) take the same
//! path: admitted against the same row budget, run by the same model threads (which alternate
//! between forward and gradient batches), cancelled the same way. They are neither
//! deduplicated nor cached (their rows are embeddings, rarely repeated).
//!
//! Nothing here knows about HTTP: errors are [`EngineError`], mapped to statuses by the api.

mod cache;
mod job;
mod queue;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::model::gradients::{GradientModel, GradientRow, OutputKind, RowGradient};
use crate::model::{Classifier, ModelError, ModelInfo, Row, RowOutput};
use crate::telemetry::metric;
use cache::RowCache;
use job::{Completed, JobState};
use queue::{BatchLimits, Queue};

/// How the engine batches and bounds work (the `[engine]` section of the configuration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Model threads. On CPU one thread using all cores for each matrix product (intra-op
    /// parallelism) beats several threads fighting over the cores; raise it for accelerators
    /// or when intra-op threads are limited.
    pub workers: usize,
    /// Upper bound on `rows x padded length` of one batch: bounds the memory and latency of a
    /// forward pass. Must be at least the longest input, so that any single row fits.
    pub max_batch_tokens: usize,
    /// Upper bound on rows per batch, whatever their length.
    pub max_batch_rows: usize,
    /// Rows admitted but not yet run, over all requests. Beyond it requests get 503 with
    /// `Retry-After` instead of queueing forever; a single request larger than this is refused.
    pub max_queued_rows: usize,
    /// Outputs of recent rows kept in memory to skip repeated work across requests (0: off).
    pub cache_rows: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            max_batch_tokens: 8192,
            max_batch_rows: 64,
            max_queued_rows: 50_000,
            cache_rows: 10_000,
        }
    }
}

/// Per-job options.
#[derive(Clone, Debug, Default)]
pub struct JobOptions {
    /// After it the job fails with [`EngineError::Timeout`] and its queued rows are dropped.
    pub deadline: Option<Instant>,
    /// Evaluate every row even if cached (warm-up must really run the model).
    pub bypass_cache: bool,
    /// Where the job reports its rows: submitted when admitted, done as batches (or the cache)
    /// answer them. One report may count the rows of many jobs (every job of one request).
    pub progress: Option<Arc<RowProgress>>,
}

/// Rows submitted and rows done, summed over the jobs that report to it: the progress of a
/// long request, readable (and awaitable) while its jobs run.
#[derive(Debug)]
pub struct RowProgress {
    counts: tokio::sync::watch::Sender<RowCounts>,
}

/// A snapshot of a [`RowProgress`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RowCounts {
    /// Distinct rows answered so far (by a batch or by the row cache).
    pub rows_done: u64,
    /// Distinct rows submitted so far; grows when a method submits more work.
    pub rows_total: u64,
}

impl Default for RowProgress {
    fn default() -> Self {
        Self {
            counts: tokio::sync::watch::Sender::new(RowCounts::default()),
        }
    }
}

impl RowProgress {
    pub fn submitted(&self, rows: usize) {
        if rows > 0 {
            self.counts.send_modify(|c| c.rows_total += rows as u64);
        }
    }

    pub fn completed(&self, rows: usize) {
        if rows > 0 {
            self.counts.send_modify(|c| c.rows_done += rows as u64);
        }
    }

    pub fn counts(&self) -> RowCounts {
        *self.counts.borrow()
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<RowCounts> {
        self.counts.subscribe()
    }
}

/// What a job cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobStats {
    /// Rows after removing duplicates within the job.
    pub distinct_rows: usize,
    /// Distinct rows answered by the row cache.
    pub cache_hits: usize,
    /// Real (unpadded) tokens of the rows the model ran.
    pub tokens_evaluated: usize,
    /// Time not spent in the model: admission, waiting for a worker, other jobs' batches.
    pub queue_ms: f64,
    /// Wall time of the batches that held this job's rows.
    pub inference_ms: f64,
}

impl JobStats {
    /// Rows the model actually ran for this job.
    pub fn model_evaluations(&self) -> usize {
        self.distinct_rows - self.cache_hits
    }
}

/// One output per input row, in input order.
#[derive(Clone, Debug)]
pub struct JobResult {
    pub outputs: Vec<RowOutput>,
    pub stats: JobStats,
}

/// One output and input gradient per gradient row, in input order.
#[derive(Clone, Debug)]
pub struct GradientResult {
    pub outputs: Vec<RowGradient>,
    /// `distinct_rows` counts every row (no deduplication), `cache_hits` is 0.
    pub stats: JobStats,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error(
        "the request needs {rows} model evaluations, more than the whole queue holds ({max_queued_rows} rows, \
         engine.max_queued_rows); ask for fewer samples or texts"
    )]
    JobTooLarge { rows: usize, max_queued_rows: usize },
    #[error("the model queue is full; retry in {} s", retry_after.as_secs())]
    Overloaded { retry_after: Duration },
    #[error("the request ran past its deadline")]
    Timeout,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the service is shutting down")]
    ShuttingDown,
}

/// Totals since start, for tests and `/info`-style reporting (metrics carry the same numbers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub batches: u64,
    pub rows_evaluated: u64,
    pub cache_hits: u64,
    /// Queued rows that were never run: their job was cancelled, timed out or failed.
    pub dropped_rows: u64,
    pub queued_rows: usize,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    rows_evaluated: AtomicU64,
    cache_hits: AtomicU64,
    dropped_rows: AtomicU64,
}

/// State shared by the handles and the model threads.
struct Shared {
    config: EngineConfig,
    classifier: Arc<dyn Classifier>,
    /// Present when the model can give input gradients.
    gradient_model: Option<Arc<dyn GradientModel>>,
    queue: Mutex<Queue>,
    /// Signalled when work is queued or the engine shuts down.
    work_ready: Condvar,
    cache: RowCache,
    counters: Counters,
    warmed: AtomicBool,
    live_workers: AtomicUsize,
    next_job_id: AtomicU64,
}

impl Shared {
    /// State for `config.workers` model threads (at least one), counted live from the start.
    fn new(
        classifier: Arc<dyn Classifier>,
        gradient_model: Option<Arc<dyn GradientModel>>,
        config: EngineConfig,
    ) -> Self {
        Shared {
            cache: RowCache::new(config.cache_rows),
            live_workers: AtomicUsize::new(config.workers.max(1)),
            config,
            classifier,
            gradient_model,
            queue: Mutex::new(Queue::default()),
            work_ready: Condvar::new(),
            counters: Counters::default(),
            warmed: AtomicBool::new(false),
            next_job_id: AtomicU64::new(1),
        }
    }

    fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_tokens: self.config.max_batch_tokens,
            max_rows: self.config.max_batch_rows,
        }
    }

    fn count_dropped(&self, rows: usize) {
        if rows > 0 {
            self.counters
                .dropped_rows
                .fetch_add(rows as u64, Ordering::Relaxed);
            counter!(metric::DROPPED_ROWS).increment(rows as u64);
        }
    }

    fn shut_down(&self) {
        lock(&self.queue).shut_down();
        self.work_ready.notify_all();
    }
}

/// Locks a mutex, recovering it if a thread panicked while holding it: the engine's state stays
/// consistent under its locks (panics from the model are caught outside them).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The last handle to go shuts the model threads down (after they finish what is queued).
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.shut_down();
    }
}

/// A cheap-to-clone handle to the engine.
#[derive(Clone)]
pub struct Engine {
    handle: Arc<Handle>,
}

impl Engine {
    /// Starts the model threads. The engine is not [ready](Engine::is_ready) until
    /// [`warm_up`](Engine::warm_up) has run.
    pub fn start(classifier: Arc<dyn Classifier>, config: EngineConfig) -> Engine {
        Self::start_with_gradients(classifier, None, config)
    }

    /// Starts the model threads for a model that can also give input gradients (normally the
    /// same weights: [`crate::model::heads::EncoderClassifier`] implements both traits).
    pub fn start_with_gradients(
        classifier: Arc<dyn Classifier>,
        gradient_model: Option<Arc<dyn GradientModel>>,
        config: EngineConfig,
    ) -> Engine {
        let workers = config.workers.max(1);
        let shared = Arc::new(Shared::new(classifier, gradient_model, config));
        for index in 0..workers {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("glassbox-model-{index}"))
                .spawn(move || worker::run(shared))
                .expect("the OS refused to start a model thread");
        }
        Engine {
            handle: Arc::new(Handle { shared }),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    pub fn config(&self) -> &EngineConfig {
        &self.shared().config
    }

    pub fn model_info(&self) -> &ModelInfo {
        self.shared().classifier.info()
    }

    /// Evaluates `rows`; returns one output per row, in order. Cancel-safe: dropping the
    /// future drops the job's queued rows.
    pub async fn evaluate(
        &self,
        rows: Vec<Row>,
        options: JobOptions,
    ) -> Result<JobResult, EngineError> {
        let submitted = Instant::now();
        let shared = self.shared();
        let (distinct, slots) = deduplicate(rows);
        let max_queued_rows = shared.config.max_queued_rows;
        if distinct.len() > max_queued_rows {
            return Err(EngineError::JobTooLarge {
                rows: distinct.len(),
                max_queued_rows,
            });
        }
        if options
            .deadline
            .is_some_and(|deadline| deadline <= submitted)
        {
            return Err(EngineError::Timeout);
        }

        let cached = if options.bypass_cache {
            vec![None; distinct.len()]
        } else {
            shared.cache.get_many(&distinct)
        };
        let cache_hits = cached.iter().filter(|o| o.is_some()).count();
        if cache_hits > 0 {
            shared
                .counters
                .cache_hits
                .fetch_add(cache_hits as u64, Ordering::Relaxed);
            counter!(metric::CACHE_HITS).increment(cache_hits as u64);
        }
        let distinct_rows = distinct.len();
        if let Some(progress) = &options.progress {
            progress.submitted(distinct_rows);
            progress.completed(cache_hits);
        }
        let misses: Vec<(usize, Row)> = distinct
            .into_iter()
            .enumerate()
            .filter(|(slot, _)| cached[*slot].is_none())
            .collect();
        let completed = if misses.is_empty() {
            let outputs = cached.into_iter().flatten().collect();
            Completed {
                outputs,
                inference: Duration::ZERO,
                tokens_evaluated: 0,
            }
        } else {
            self.run_job(cached, misses, options.deadline, options.progress)
                .await?
        };

        let inference_ms = completed.inference.as_secs_f64() * 1e3;
        let total_ms = submitted.elapsed().as_secs_f64() * 1e3;
        let stats = JobStats {
            distinct_rows,
            cache_hits,
            tokens_evaluated: completed.tokens_evaluated,
            queue_ms: (total_ms - inference_ms).max(0.0),
            inference_ms,
        };
        histogram!(metric::QUEUE_SECONDS).record(stats.queue_ms / 1e3);
        let outputs = slots
            .iter()
            .map(|&slot| completed.outputs[slot].clone())
            .collect();
        Ok(JobResult { outputs, stats })
    }

    /// Queues the cache misses of a job and waits for the model threads to answer.
    async fn run_job(
        &self,
        cached: Vec<Option<RowOutput>>,
        misses: Vec<(usize, Row)>,
        deadline: Option<Instant>,
        progress: Option<Arc<RowProgress>>,
    ) -> Result<Completed, EngineError> {
        let shared = self.shared();
        let (reply, answer) = oneshot::channel();
        let id = shared.next_job_id.fetch_add(1, Ordering::Relaxed);
        let job = Arc::new(JobState::new(id, deadline, cached, reply).with_report(progress));
        {
            let mut queue = lock(&shared.queue);
            queue.admit(job, misses, shared.config.max_queued_rows)?;
            gauge!(metric::QUEUE_ROWS).set(queue.queued_rows() as f64);
        }
        shared.work_ready.notify_one();

        // From here on, leaving early (deadline, or this future dropped) removes the queued rows.
        let _cancel = CancelOnDrop {
            shared: shared.clone(),
            job_id: id,
        };
        wait_for_answer(answer, deadline).await
    }

    /// Whether [`Engine::gradients`] is available.
    pub fn supports_gradients(&self) -> bool {
        self.shared().gradient_model.is_some()
    }

    /// The gradient model's word embeddings of `ids` (`[len, hidden]` row-major). A table
    /// lookup, done on the caller's thread.
    pub fn word_embeddings(&self, ids: &[u32]) -> Result<Vec<f32>, EngineError> {
        let model = self.gradient_model()?;
        model
            .word_embeddings(ids)
            .map_err(|e: ModelError| EngineError::Internal(format!("word embeddings: {e}")))
    }

    /// Width of the word embeddings of the gradient model.
    pub fn hidden_size(&self) -> Result<usize, EngineError> {
        Ok(self.gradient_model()?.hidden_size())
    }

    fn gradient_model(&self) -> Result<&Arc<dyn GradientModel>, EngineError> {
        self.shared().gradient_model.as_ref().ok_or_else(|| {
            EngineError::Internal("this engine was started without a gradient model".into())
        })
    }

    /// Output and input gradient of each row, through the model threads: admitted against
    /// the row budget, batched under the same caps, dropped with the deadline or when this
    /// future is dropped.
    pub async fn gradients(
        &self,
        rows: Vec<GradientRow>,
        output: OutputKind,
        options: JobOptions,
    ) -> Result<GradientResult, EngineError> {
        let submitted = Instant::now();
        self.gradient_model()?;
        let shared = self.shared();
        let max_queued_rows = shared.config.max_queued_rows;
        if rows.len() > max_queued_rows {
            return Err(EngineError::JobTooLarge {
                rows: rows.len(),
                max_queued_rows,
            });
        }
        if options
            .deadline
            .is_some_and(|deadline| deadline <= submitted)
        {
            return Err(EngineError::Timeout);
        }
        let distinct_rows = rows.len();
        if let Some(progress) = &options.progress {
            progress.submitted(distinct_rows);
        }
        let completed = if rows.is_empty() {
            Completed {
                outputs: Vec::new(),
                inference: Duration::ZERO,
                tokens_evaluated: 0,
            }
        } else {
            let (reply, answer) = oneshot::channel();
            let id = shared.next_job_id.fetch_add(1, Ordering::Relaxed);
            let job = Arc::new(
                JobState::new(id, options.deadline, vec![None; rows.len()], reply)
                    .with_report(options.progress.clone()),
            );
            {
                let mut queue = lock(&shared.queue);
                queue.admit_gradients(
                    job,
                    output,
                    rows.into_iter().enumerate().collect(),
                    max_queued_rows,
                )?;
                gauge!(metric::QUEUE_ROWS).set(queue.queued_rows() as f64);
            }
            shared.work_ready.notify_one();
            let _cancel = CancelOnDrop {
                shared: shared.clone(),
                job_id: id,
            };
            wait_for_answer(answer, options.deadline).await?
        };
        let inference_ms = completed.inference.as_secs_f64() * 1e3;
        let total_ms = submitted.elapsed().as_secs_f64() * 1e3;
        let stats = JobStats {
            distinct_rows,
            cache_hits: 0,
            tokens_evaluated: completed.tokens_evaluated,
            queue_ms: (total_ms - inference_ms).max(0.0),
            inference_ms,
        };
        histogram!(metric::QUEUE_SECONDS).record(stats.queue_ms / 1e3);
        Ok(GradientResult {
            outputs: completed.outputs,
            stats,
        })
    }

    /// Runs `rows` through the model (no cache) and marks the engine ready: the first forward
    /// pass pays one-off costs (allocations, kernel selection) that no user request should.
    pub async fn warm_up(&self, rows: Vec<Row>) -> Result<Duration, EngineError> {
        let started = Instant::now();
        self.evaluate(
            rows,
            JobOptions {
                bypass_cache: true,
                ..JobOptions::default()
            },
        )
        .await?;
        self.shared().warmed.store(true, Ordering::SeqCst);
        Ok(started.elapsed())
    }

    /// Warmed up, at least one model thread alive, and not shutting down.
    pub fn is_ready(&self) -> bool {
        let shared = self.shared();
        shared.warmed.load(Ordering::SeqCst)
            && shared.live_workers.load(Ordering::SeqCst) > 0
            && !lock(&shared.queue).is_shutting_down()
    }

    /// Refuses new jobs; queued ones still run, then the model threads exit.
    pub fn shutdown(&self) {
        self.shared().shut_down();
    }

    pub fn counters(&self) -> EngineCounters {
        let shared = self.shared();
        let c = &shared.counters;
        EngineCounters {
            batches: c.batches.load(Ordering::Relaxed),
            rows_evaluated: c.rows_evaluated.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            dropped_rows: c.dropped_rows.load(Ordering::Relaxed),
            queued_rows: lock(&shared.queue).queued_rows(),
        }
    }
}

/// Waits for a job's answer until `deadline`.
///
/// A channel closed without an answer means the job was dropped unanswered: past the deadline
/// that is a timeout (whoever dropped it saw it expire first), before it a bug.
async fn wait_for_answer<T>(
    answer: oneshot::Receiver<Result<Completed<T>, EngineError>>,
    deadline: Option<Instant>,
) -> Result<Completed<T>, EngineError> {
    let received = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), answer)
            .await
            .map_err(|_| EngineError::Timeout)?,
        None => answer.await,
    };
    match received {
        Ok(answer) => answer,
        Err(_closed) if deadline.is_some_and(|deadline| deadline <= Instant::now()) => {
            Err(EngineError::Timeout)
        }
        Err(_closed) => Err(EngineError::Internal(
            "the model thread stopped without answering".into(),
        )),
    }
}

/// Removes a job's queued rows when its caller stops waiting; a no-op once the job is done.
struct CancelOnDrop {
    shared: Arc<Shared>,
    job_id: u64,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let dropped = lock(&self.shared.queue).remove(self.job_id);
        self.shared.count_dropped(dropped);
    }
}

/// Splits rows into distinct rows and, per input row, the index of its distinct row.
fn deduplicate(rows: Vec<Row>) -> (Vec<Row>, Vec<usize>) {
    let mut index: HashMap<Row, usize> = HashMap::with_capacity(rows.len());
    let mut slots = Vec::with_capacity(rows.len());
    for row in rows {
        let next = index.len();
        slots.push(*index.entry(row).or_insert(next));
    }
    let mut distinct: Vec<(usize, Row)> =
        index.into_iter().map(|(row, slot)| (slot, row)).collect();
    distinct.sort_unstable_by_key(|(slot, _)| *slot);
    (distinct.into_iter().map(|(_, row)| row).collect(), slots)
}
