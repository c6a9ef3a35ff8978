//! The model threads: dedicated OS threads that take batches from the queue and run them.
//!
//! The model never runs on the async runtime: a forward pass holds a core for milliseconds to
//! seconds and would stall every connection sharing that runtime thread. An idle worker sleeps
//! on a condition variable (no polling); a new job wakes one.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};

use super::job::Liveness;
use super::queue::{Batch, BatchPart, GradientBatch};
use super::{lock, EngineError, Shared};
use crate::model::gradients::RowGradient;
use crate::model::{Row, RowOutput};
use crate::telemetry::metric;

/// What a worker can be asked to do, taken from the one queue: forward passes over rows of
/// any jobs, or input gradients for rows of one gradient job (embeddings in, gradients out).
pub(crate) enum Work {
    Forward(Batch),
    Gradient(GradientBatch),
}

/// Decrements the live-worker count however the thread ends, so readiness reflects reality.
struct LiveWorker(Arc<Shared>);

impl Drop for LiveWorker {
    fn drop(&mut self) {
        self.0.live_workers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Work {
    /// The jobs with rows in this work, to fail if running it goes wrong.
    fn jobs(&self) -> Vec<Arc<dyn Liveness + Send + Sync>> {
        match self {
            Work::Forward(batch) => batch
                .parts
                .iter()
                .map(|part| part.job.clone() as Arc<dyn Liveness + Send + Sync>)
                .collect(),
            Work::Gradient(batch) => vec![batch.job.clone()],
        }
    }
}

/// The body of one model thread: runs until the engine shuts down and the queue is empty.
///
/// Panics inside the model are caught around the model call ([`guarded`]) and fail only the
/// jobs of that batch. A panic anywhere else in the worker (a bug in batching or delivery)
/// fails the jobs of the work in hand ([`run_isolated`]); one outside any work (taking the
/// next batch) restarts the loop. Either way the thread lives on, so a bug hit by one request
/// cannot leave the service without a model thread.
pub(crate) fn run(shared: Arc<Shared>) {
    let live = LiveWorker(shared);
    let shared = &live.0;
    loop {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            while let Some(work) = next_work(shared) {
                run_isolated(shared, work, run_work);
            }
        }));
        match outcome {
            Ok(()) => return,
            Err(payload) => {
                counter!(metric::WORKER_RESTARTS).increment(1);
                tracing::error!(
                    error = %panic_message(payload.as_ref()),
                    "model thread panicked between batches; restarting its loop"
                );
            }
        }
    }
}

fn run_work(shared: &Shared, work: Work) {
    match work {
        Work::Forward(batch) => run_forward(shared, batch),
        Work::Gradient(batch) => run_gradient(shared, batch),
    }
}

/// Runs one piece of work with `runner`; if it panics, every job with rows in that work is
/// answered with an internal error and its queued rows are dropped (its other rows could
/// never complete it), and the thread carries on.
fn run_isolated(shared: &Shared, work: Work, runner: impl FnOnce(&Shared, Work)) {
    let jobs = work.jobs();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| runner(shared, work)));
    if let Err(payload) = outcome {
        let message = format!("model thread panicked: {}", panic_message(payload.as_ref()));
        counter!(metric::FAILED_BATCHES).increment(1);
        tracing::error!(jobs = jobs.len(), error = %message, "work failed outside the model");
        for job in jobs {
            job.fail(EngineError::Internal(message.clone()));
            let dropped = lock(&shared.queue).remove(job.id());
            shared.count_dropped(dropped);
        }
    }
}

/// Blocks until there is work; `None` once shutting down with nothing left.
fn next_work(shared: &Shared) -> Option<Work> {
    let mut queue = lock(&shared.queue);
    loop {
        let dropped = queue.remove_dead(Instant::now());
        shared.count_dropped(dropped);
        if let Some(work) = queue.next_work(shared.batch_limits()) {
            gauge!(metric::QUEUE_ROWS).set(queue.queued_rows() as f64);
            return Some(work);
        }
        gauge!(metric::QUEUE_ROWS).set(0.0);
        if queue.is_shutting_down() {
            return None;
        }
        queue = shared
            .work_ready
            .wait(queue)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
}

/// Counts one model batch (forward or gradient) in the counters, the metrics and the queue's
/// throughput estimate.
fn record_batch(shared: &Shared, rows: usize, padded_tokens: usize, elapsed: Duration) {
    shared.counters.batches.fetch_add(1, Ordering::Relaxed);
    shared
        .counters
        .rows_evaluated
        .fetch_add(rows as u64, Ordering::Relaxed);
    counter!(metric::BATCHES).increment(1);
    histogram!(metric::BATCH_ROWS).record(rows as f64);
    histogram!(metric::BATCH_TOKENS).record(padded_tokens as f64);
    histogram!(metric::INFERENCE_SECONDS).record(elapsed.as_secs_f64());
    lock(&shared.queue).record_throughput(rows, elapsed);
}

fn run_forward(shared: &Shared, batch: Batch) {
    let started = Instant::now();
    let result = forward_guarded(shared, &batch.rows);
    let elapsed = started.elapsed();
    record_batch(shared, batch.rows.len(), batch.padded_tokens(), elapsed);

    match result {
        Ok(outputs) => {
            shared.cache.insert_many(batch.rows.iter().zip(&outputs));
            for part in &batch.parts {
                deliver(part, &batch.rows, &outputs, elapsed);
            }
        }
        Err(message) if batch.parts.len() == 1 => fail(shared, &batch.parts[0], message),
        Err(message) => {
            // Several jobs shared the failed batch: rerun each job's share alone, so one bad
            // request cannot fail its neighbours.
            tracing::warn!(jobs = batch.parts.len(), error = %message, "batch failed; isolating its jobs");
            for part in &batch.parts {
                let rows = &batch.rows[part.range.clone()];
                let started = Instant::now();
                match forward_guarded(shared, rows) {
                    Ok(outputs) => {
                        shared.cache.insert_many(rows.iter().zip(&outputs));
                        let whole = 0..rows.len();
                        let part = BatchPart {
                            job: part.job.clone(),
                            slots: part.slots.clone(),
                            range: whole,
                        };
                        deliver(&part, rows, &outputs, elapsed + started.elapsed());
                    }
                    Err(message) => fail(shared, part, message),
                }
            }
        }
    }
}

/// Runs one gradient batch (rows of one job) and hands the job its share.
fn run_gradient(shared: &Shared, batch: GradientBatch) {
    let started = Instant::now();
    let result = match &shared.gradient_model {
        Some(model) => guarded(batch.rows.len(), || {
            model.gradients(&batch.rows, batch.output)
        }),
        None => Err("this engine has no gradient model".into()),
    };
    let elapsed = started.elapsed();
    record_batch(shared, batch.rows.len(), batch.padded_tokens(), elapsed);
    match result {
        Ok(outputs) => {
            let results: Vec<(usize, usize, &RowGradient)> = batch
                .slots
                .iter()
                .zip(&batch.rows)
                .zip(&outputs)
                .map(|((&slot, row), out)| (slot, row.len(), out))
                .collect();
            batch.job.deliver(results.into_iter(), elapsed);
        }
        Err(message) => {
            counter!(metric::FAILED_BATCHES).increment(1);
            tracing::error!(job = batch.job.id, rows = batch.rows.len(), error = %message, "gradient batch failed");
            batch.job.fail(EngineError::Internal(message));
            let dropped = lock(&shared.queue).remove(batch.job.id);
            shared.count_dropped(dropped);
        }
    }
}

/// Runs the classifier, turning errors, wrong output counts and panics into a message.
fn forward_guarded(shared: &Shared, rows: &[Row]) -> Result<Vec<RowOutput>, String> {
    guarded(rows.len(), || shared.classifier.forward(rows))
}

/// Runs a model call for `rows` rows, turning errors, wrong output counts and panics into a
/// message.
fn guarded<T, E: std::fmt::Display>(
    rows: usize,
    call: impl FnOnce() -> Result<Vec<T>, E>,
) -> Result<Vec<T>, String> {
    let outcome = panic::catch_unwind(AssertUnwindSafe(call));
    match outcome {
        Ok(Ok(outputs)) if outputs.len() == rows => Ok(outputs),
        Ok(Ok(outputs)) => Err(format!(
            "model returned {} outputs for {rows} rows",
            outputs.len(),
        )),
        Ok(Err(error)) => Err(error.to_string()),
        Err(payload) => Err(format!(
            "model panicked: {}",
            panic_message(payload.as_ref())
        )),
    }
}

/// The message of a panic, when it has one.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}

fn deliver(part: &BatchPart, rows: &[Row], outputs: &[RowOutput], elapsed: Duration) {
    let results = part
        .range
        .clone()
        .zip(&part.slots)
        .map(|(i, &slot)| (slot, rows[i].len(), &outputs[i]));
    part.job.deliver(results, elapsed);
}

/// Fails a job and drops its rows still queued: nobody will read their results.
fn fail(shared: &Shared, part: &BatchPart, message: String) {
    counter!(metric::FAILED_BATCHES).increment(1);
    tracing::error!(job = part.job.id, rows = part.slots.len(), error = %message, "model batch failed");
    part.job.fail(EngineError::Internal(message));
    let dropped = lock(&shared.queue).remove(part.job.id);
    shared.count_dropped(dropped);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokio::sync::oneshot;

    use super::*;
    use crate::engine::job::{Completed, JobState};
    use crate::engine::EngineConfig;
    use crate::model::toy::{ToyClassifier, ToyOutput};

    type Answer = oneshot::Receiver<Result<Completed, EngineError>>;

    fn shared() -> Shared {
        let toy = ToyClassifier::new(
            vec!["no".into(), "yes".into()],
            HashMap::from([(1, vec![0.0, 1.0])]),
            vec![0.0, 0.0],
            ToyOutput::Softmax,
        );
        let config = EngineConfig {
            max_batch_rows: 3,
            cache_rows: 0,
            ..EngineConfig::default()
        };
        Shared::new(Arc::new(toy), None, config)
    }

    /// Queues a job of `rows` one-token rows; returns the channel its answer arrives on.
    fn queue_job(shared: &Shared, id: u64, rows: usize) -> Answer {
        let (reply, answer) = oneshot::channel();
        let job = Arc::new(JobState::new(id, None, vec![None; rows], reply));
        let rows = (0..rows).map(|slot| (slot, Row::new(vec![1]))).collect();
        lock(&shared.queue).admit(job, rows, 100).unwrap();
        answer
    }

    fn take_work(shared: &Shared) -> Work {
        lock(&shared.queue)
            .next_work(shared.batch_limits())
            .expect("work is queued")
    }

    #[test]
    fn a_panic_outside_the_model_fails_only_the_jobs_in_hand_and_the_thread_carries_on() {
        let shared = shared();
        let mut big = queue_job(&shared, 1, 3);
        let mut small = queue_job(&shared, 2, 1);
        // Three rows per batch: two of the big job and the small one; one big row stays queued.
        let work = take_work(&shared);
        let mut waiting = queue_job(&shared, 3, 1);
        run_isolated(&shared, work, |_, _| panic!("a bug in delivery"));

        for answer in [&mut big, &mut small] {
            match answer.try_recv() {
                Ok(Err(EngineError::Internal(message))) => {
                    assert!(message.contains("a bug in delivery"), "{message}")
                }
                _ => panic!("a job of the panicking work is failed with an internal error"),
            }
        }
        assert!(
            waiting.try_recv().is_err(),
            "a job not in the work is not answered"
        );
        assert_eq!(
            lock(&shared.queue).queued_rows(),
            1,
            "the failed job's other rows are dropped, the waiting job's stay"
        );
        assert_eq!(shared.counters.dropped_rows.load(Ordering::Relaxed), 1);

        // The same thread goes on to run the next work normally.
        let work = take_work(&shared);
        run_isolated(&shared, work, run_work);
        let outputs = waiting
            .try_recv()
            .expect("answered")
            .expect("the next job succeeds")
            .outputs;
        assert_eq!(outputs.len(), 1);
    }
}
