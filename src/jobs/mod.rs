//! Asynchronous jobs: long explanations run in the background, watched through their state and
//! progress, cancelled on request, their results kept for a while.
//!
//! This module is the bookkeeping only, free of HTTP: the [`JobStore`] admits jobs under its
//! caps, finds them by id or idempotency key and forgets finished ones after their time to
//! live; a [`Job`] moves through its states and publishes every change on a watch channel, so
//! any number of watchers (server-sent events) follow it. What a job runs and how its result
//! is made is the api layer's business (`api::jobs`): it hands back an [`Outcome`], the status
//! and JSON body the synchronous route would have answered.
//!
//! Everything lives in memory: jobs survive the client going away, not a restart.
//!
//! ```text
//! queued --start--> running --finish--> done | failed
//!    \                 \
//!     +----cancel-------+-----> cancelled
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Semaphore};
use tokio::task::AbortHandle;
use utoipa::ToSchema;

use crate::config::JobsConfig;
use crate::engine::RowProgress;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Admitted, waiting for a free run slot (`jobs.max_running_jobs`).
    Queued,
    Running,
    /// Finished with a result (the synchronous route's 200 body).
    Done,
    /// Finished with an error (the synchronous route's error body).
    Failed,
    /// Cancelled by `DELETE /jobs/{id}` before it finished; its queued rows were dropped.
    Cancelled,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

/// How a job ended: the HTTP status its synchronous route would have answered, and that
/// answer's JSON body, byte for byte.
#[derive(Debug)]
pub struct Outcome {
    pub status: u16,
    pub body: Box<RawValue>,
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A job's state, with its outcome once finished.
#[derive(Clone, Debug)]
pub struct Status {
    pub state: JobState,
    pub outcome: Option<Arc<Outcome>>,
    /// When it finished (its time to live counts from here).
    pub finished: Option<Instant>,
}

/// One job: its identity, its published state, its progress and the handle to stop it.
#[derive(Debug)]
pub struct Job {
    /// Unguessable (a random UUID): knowing the id is what gives access to the result.
    pub id: String,
    pub method: String,
    pub created: Instant,
    /// Rows submitted and done by the job's engine work.
    pub progress: Arc<RowProgress>,
    status: watch::Sender<Status>,
    task: Mutex<Option<AbortHandle>>,
    /// The scoped idempotency key this job was created with, and its request's fingerprint.
    key: Option<(String, [u8; 32])>,
}

impl Job {
    fn new(method: &str, key: Option<(String, [u8; 32])>) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            method: method.to_string(),
            created: Instant::now(),
            progress: Arc::new(RowProgress::default()),
            status: watch::Sender::new(Status {
                state: JobState::Queued,
                outcome: None,
                finished: None,
            }),
            task: Mutex::new(None),
            key,
        }
    }

    /// A job that no store holds: a synchronous request streamed as server-sent events runs
    /// as one, so that it reports the same way.
    pub fn unstored(method: &str) -> Arc<Job> {
        Arc::new(Job::new(method, None))
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn state(&self) -> JobState {
        self.status.borrow().state
    }

    /// A receiver that wakes on every change of state.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Hands the job the task that runs it, so that cancelling can stop it. A job cancelled
    /// before its task was attached stops it at once.
    pub fn attach(&self, task: AbortHandle) {
        if self.state().is_finished() {
            task.abort();
        } else {
            *lock(&self.task) = Some(task);
        }
    }

    /// `queued -> running`; false when the job is no longer queued (cancelled meanwhile).
    pub fn start(&self) -> bool {
        self.status.send_if_modified(|status| {
            if status.state == JobState::Queued {
                status.state = JobState::Running;
                true
            } else {
                false
            }
        })
    }

    /// `running -> done | failed`, by the outcome's status; ignored (false) unless running: a
    /// cancelled job stays cancelled.
    pub fn finish(&self, outcome: Outcome) -> bool {
        let finished = self.status.send_if_modified(|status| {
            if status.state != JobState::Running {
                return false;
            }
            status.state = if outcome.is_success() {
                JobState::Done
            } else {
                JobState::Failed
            };
            status.outcome = Some(Arc::new(outcome));
            status.finished = Some(Instant::now());
            true
        });
        if finished {
            lock(&self.task).take();
        }
        finished
    }

    /// `queued | running -> cancelled`, stopping the task: its pending model work is dropped
    /// with it. False when the job had already finished.
    pub fn cancel(&self) -> bool {
        let cancelled = self.status.send_if_modified(|status| {
            if status.state.is_finished() {
                return false;
            }
            status.state = JobState::Cancelled;
            status.finished = Some(Instant::now());
            true
        });
        if cancelled {
            if let Some(task) = lock(&self.task).take() {
                task.abort();
            }
        }
        cancelled
    }

    /// When this job's stored result expires (finished jobs only).
    pub fn expires_at(&self, ttl: Duration) -> Option<Instant> {
        self.status.borrow().finished.map(|f| f + ttl)
    }
}

/// What [`JobStore::admit`] did.
pub enum Admission {
    /// A new job, queued: the caller must start its task.
    Created(Arc<Job>),
    /// The job created earlier with the same idempotency key and the same request.
    Existing(Arc<Job>),
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AdmitError {
    #[error("{reason}; retry after {} s", retry_after.as_secs())]
    Full {
        reason: String,
        retry_after: Duration,
    },
    #[error(
        "this Idempotency-Key was used for a different request (method or body); use a new key \
         for a new job"
    )]
    KeyReused,
}

/// The caps and times of the store (from the `[jobs]` configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobLimits {
    pub max_live_jobs: usize,
    pub max_running_jobs: usize,
    pub max_stored_results: usize,
    pub result_ttl: Duration,
    pub timeout: Duration,
}

impl From<&JobsConfig> for JobLimits {
    fn from(config: &JobsConfig) -> Self {
        Self {
            max_live_jobs: config.max_live_jobs,
            max_running_jobs: config.max_running_jobs,
            max_stored_results: config.max_stored_results,
            result_ttl: Duration::from_secs(config.result_ttl_s),
            timeout: Duration::from_millis(config.timeout_ms),
        }
    }
}

#[derive(Default)]
struct Jobs {
    by_id: HashMap<String, Arc<Job>>,
    /// Scoped idempotency key -> job id; an entry lives exactly as long as its job.
    by_key: HashMap<String, String>,
}

impl Jobs {
    fn remove(&mut self, id: &str) -> Option<Arc<Job>> {
        let job = self.by_id.remove(id)?;
        if let Some((key, _)) = &job.key {
            self.by_key.remove(key);
        }
        Some(job)
    }

    /// Forgets finished jobs whose time to live has passed at `now`.
    fn sweep(&mut self, ttl: Duration, now: Instant) -> usize {
        let expired: Vec<String> = self
            .by_id
            .values()
            .filter(|job| job.expires_at(ttl).is_some_and(|at| at <= now))
            .map(|job| job.id.clone())
            .collect();
        for id in &expired {
            self.remove(id);
        }
        expired.len()
    }
}

struct Shared {
    limits: JobLimits,
    jobs: Mutex<Jobs>,
    /// One permit per running job.
    run_slots: Arc<Semaphore>,
}

/// The jobs of this process, bounded: a cheap-to-clone handle.
#[derive(Clone)]
pub struct JobStore {
    shared: Arc<Shared>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Identifies a request for idempotency: the method and the request's canonical JSON (object
/// keys sorted), hashed so the store keeps no copy of the submitted text.
pub fn fingerprint(method: &str, request: &serde_json::Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update([0]);
    hasher.update(request.to_string().as_bytes());
    hasher.finalize().into()
}

impl JobStore {
    pub fn new(limits: JobLimits) -> Self {
        Self {
            shared: Arc::new(Shared {
                run_slots: Arc::new(Semaphore::new(limits.max_running_jobs)),
                limits,
                jobs: Mutex::new(Jobs::default()),
            }),
        }
    }

    pub fn limits(&self) -> &JobLimits {
        &self.shared.limits
    }

    /// The run slots: a job holds one permit while it runs.
    pub fn run_slots(&self) -> Arc<Semaphore> {
        self.shared.run_slots.clone()
    }

    /// Admits a new job for `method` with `request`, or finds the one created earlier with the
    /// same `key` (already scoped to the caller). The same key with another method or request
    /// is refused; so is a new job over `max_live_jobs` or `max_stored_results`.
    pub fn admit(
        &self,
        method: &str,
        request: &serde_json::Value,
        key: Option<String>,
    ) -> Result<Admission, AdmitError> {
        let limits = &self.shared.limits;
        let now = Instant::now();
        let mut jobs = lock(&self.shared.jobs);
        jobs.sweep(limits.result_ttl, now);
        let key = key.map(|key| (key, fingerprint(method, request)));
        if let Some((key, print)) = &key {
            if let Some(job) = jobs.by_key.get(key).and_then(|id| jobs.by_id.get(id)) {
                return match &job.key {
                    Some((_, existing)) if existing == print => {
                        Ok(Admission::Existing(job.clone()))
                    }
                    _ => Err(AdmitError::KeyReused),
                };
            }
        }
        let live = jobs
            .by_id
            .values()
            .filter(|job| !job.state().is_finished())
            .count();
        if live >= limits.max_live_jobs {
            return Err(AdmitError::Full {
                reason: format!(
                    "{live} jobs are queued or running, the limit (jobs.max_live_jobs)"
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        if jobs.by_id.len() >= limits.max_stored_results {
            // The first stored result to expire frees a place.
            let next_expiry = jobs
                .by_id
                .values()
                .filter_map(|job| job.expires_at(limits.result_ttl))
                .min()
                .map_or(Duration::from_secs(1), |at| {
                    at.saturating_duration_since(now)
                });
            return Err(AdmitError::Full {
                reason: format!(
                    "{} jobs are stored, the limit (jobs.max_stored_results); finished ones are \
                     kept for {} s (jobs.result_ttl_s) or until deleted",
                    jobs.by_id.len(),
                    limits.result_ttl.as_secs()
                ),
                retry_after: Duration::from_secs(next_expiry.as_secs_f64().ceil() as u64)
                    .max(Duration::from_secs(1)),
            });
        }
        let job = Arc::new(Job::new(method, key));
        if let Some((key, _)) = &job.key {
            jobs.by_key.insert(key.clone(), job.id.clone());
        }
        jobs.by_id.insert(job.id.clone(), job.clone());
        Ok(Admission::Created(job))
    }

    /// The job with this id, unless it never existed, expired or was deleted.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let mut jobs = lock(&self.shared.jobs);
        jobs.sweep(self.shared.limits.result_ttl, Instant::now());
        jobs.by_id.get(id).cloned()
    }

    /// Forgets a job (and its idempotency key) now.
    pub fn remove(&self, id: &str) -> Option<Arc<Job>> {
        lock(&self.shared.jobs).remove(id)
    }

    /// Forgets finished jobs whose time to live has passed at `now`; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        lock(&self.shared.jobs).sweep(self.shared.limits.result_ttl, now)
    }

    /// Jobs queued or running, and jobs stored (live or finished).
    pub fn counts(&self) -> (usize, usize) {
        let jobs = lock(&self.shared.jobs);
        let live = jobs
            .by_id
            .values()
            .filter(|job| !job.state().is_finished())
            .count();
        (live, jobs.by_id.len())
    }

    /// Sweeps expired results in the background (when called inside a tokio runtime), so a
    /// quiet server forgets them on time too; the task ends with the store.
    pub fn start_sweeper(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store: Weak<Shared> = Arc::downgrade(&self.shared);
        let period = (self.shared.limits.result_ttl / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(30));
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                ticks.tick().await;
                let Some(shared) = store.upgrade() else {
                    return;
                };
                let swept = lock(&shared.jobs).sweep(shared.limits.result_ttl, Instant::now());
                if swept > 0 {
                    tracing::debug!(swept, "expired job results forgotten");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> JobLimits {
        JobLimits {
            max_live_jobs: 2,
            max_running_jobs: 1,
            max_stored_results: 3,
            result_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(60),
        }
    }

    fn outcome(status: u16, body: &str) -> Outcome {
        Outcome {
            status,
            body: RawValue::from_string(body.to_string()).unwrap(),
        }
    }

    fn created(admission: Result<Admission, AdmitError>) -> Arc<Job> {
        match admission {
            Ok(Admission::Created(job)) => job,
            Ok(Admission::Existing(job)) => panic!("expected a new job, got {}", job.id),
            Err(e) => panic!("expected a new job, got {e}"),
        }
    }

    #[test]
    fn states_move_only_forward() {
        let job = Job::unstored("lime");
        assert_eq!(job.state(), JobState::Queued);
        job.finish(outcome(200, "{}"));
        assert_eq!(job.state(), JobState::Queued, "a queued job cannot finish");
        assert!(job.start());
        assert!(!job.start(), "only once");
        assert_eq!(job.state(), JobState::Running);
        job.finish(outcome(200, r#"{"a": 1}"#));
        assert_eq!(job.state(), JobState::Done);
        assert!(!job.cancel(), "a finished job is not cancelled");
        assert_eq!(job.state(), JobState::Done);
        assert_eq!(job.status().outcome.unwrap().body.get(), r#"{"a": 1}"#);

        let failed = Job::unstored("lime");
        failed.start();
        failed.finish(outcome(422, r#"{"error": {}}"#));
        assert_eq!(failed.state(), JobState::Failed);

        let queued = Job::unstored("lime");
        assert!(queued.cancel());
        assert_eq!(queued.state(), JobState::Cancelled);
        assert!(!queued.start(), "a cancelled job never starts");
        let running = Job::unstored("lime");
        running.start();
        assert!(running.cancel());
        running.finish(outcome(200, "{}"));
        assert_eq!(
            running.state(),
            JobState::Cancelled,
            "a late result is ignored"
        );
        assert!(running.status().outcome.is_none());
    }

    #[tokio::test]
    async fn cancelling_aborts_the_task_even_when_attached_late() {
        let job = Job::unstored("lime");
        let task = tokio::spawn(std::future::pending::<()>());
        job.attach(task.abort_handle());
        job.cancel();
        assert!(task.await.unwrap_err().is_cancelled());

        let early = Job::unstored("lime");
        early.cancel();
        let task = tokio::spawn(std::future::pending::<()>());
        early.attach(task.abort_handle());
        assert!(task.await.unwrap_err().is_cancelled());
    }

    #[test]
    fn caps_on_live_and_stored_jobs() {
        let store = JobStore::new(limits());
        let request = json!({"text": "x"});
        let a = created(store.admit("lime", &request, None));
        let b = created(store.admit("lime", &request, None));
        match store.admit("lime", &request, None) {
            Err(AdmitError::Full { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_secs(1))
            }
            _ => panic!("two live jobs is the cap"),
        }
        a.start();
        a.finish(outcome(200, "{}"));
        b.cancel();
        let _c = created(store.admit("lime", &request, None));
        assert_eq!(store.counts(), (1, 3));
        match store.admit("lime", &request, None) {
            Err(AdmitError::Full { retry_after, .. }) => {
                assert!(retry_after >= Duration::from_secs(59), "{retry_after:?}");
                assert!(retry_after <= Duration::from_secs(60), "{retry_after:?}");
            }
            _ => panic!("three stored jobs is the cap"),
        }
        store.remove(&a.id);
        assert_eq!(store.counts(), (1, 2));
        let _d = created(store.admit("lime", &request, None));
    }

    #[test]
    fn finished_jobs_expire_with_their_keys() {
        let store = JobStore::new(limits());
        let request = json!({"text": "x"});
        let job = created(store.admit("lime", &request, Some("k".into())));
        let live = created(store.admit("shap", &request, None));
        job.start();
        job.finish(outcome(200, "{}"));
        let finished = job.status().finished.unwrap();
        let ttl = store.limits().result_ttl;
        assert_eq!(store.sweep(finished + ttl - Duration::from_millis(1)), 0);
        assert!(store.get(&job.id).is_some());
        assert_eq!(
            store.sweep(finished + ttl + Duration::from_secs(3600)),
            1,
            "only the finished job expires"
        );
        assert!(store.get(&job.id).is_none());
        assert!(store.get(&live.id).is_some(), "live jobs never expire");
        let again = created(store.admit("lime", &request, Some("k".into())));
        assert_ne!(again.id, job.id, "the key went with its job");
    }

    #[test]
    fn idempotency_keys_return_the_same_job_or_refuse_another_body() {
        let store = JobStore::new(limits());
        let request = json!({"text": "x", "seed": 1});
        let job = created(store.admit("lime", &request, Some("k".into())));
        let reordered: serde_json::Value =
            serde_json::from_str(r#"{"seed": 1, "text": "x"}"#).unwrap();
        match store.admit("lime", &reordered, Some("k".into())) {
            Ok(Admission::Existing(same)) => assert_eq!(same.id, job.id),
            _ => panic!("the same key and body give the same job"),
        }
        assert_eq!(store.counts(), (1, 1));
        assert_eq!(
            store
                .admit("lime", &json!({"text": "y", "seed": 1}), Some("k".into()))
                .err(),
            Some(AdmitError::KeyReused)
        );
        assert_eq!(
            store.admit("shap", &request, Some("k".into())).err(),
            Some(AdmitError::KeyReused)
        );
        let other = created(store.admit("lime", &request, Some("k2".into())));
        assert_ne!(other.id, job.id);
    }
}
