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

/// The body of one model thread: runs until the engine shuts down and the queue is empty.
pub(crate) fn run(shared: Arc<Shared>) {
    let live = LiveWorker(shared);
    let shared = &live.0;
    while let Some(work) = next_work(shared) {
        match work {
            Work::Forward(batch) => run_forward(shared, batch),
            Work::Gradient(batch) => run_gradient(shared, batch),
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

fn run_forward(shared: &Shared, batch: Batch) {
    let started = Instant::now();
    let result = forward_guarded(shared, &batch.rows);
    let elapsed = started.elapsed();
    shared.counters.batches.fetch_add(1, Ordering::Relaxed);
    shared
        .counters
        .rows_evaluated
        .fetch_add(batch.rows.len() as u64, Ordering::Relaxed);
    counter!(metric::BATCHES).increment(1);
    histogram!(metric::BATCH_ROWS).record(batch.rows.len() as f64);
    histogram!(metric::BATCH_TOKENS).record(batch.padded_tokens() as f64);
    histogram!(metric::INFERENCE_SECONDS).record(elapsed.as_secs_f64());
    lock(&shared.queue).record_throughput(batch.rows.len(), elapsed);

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
    shared.counters.batches.fetch_add(1, Ordering::Relaxed);
    shared
        .counters
        .rows_evaluated
        .fetch_add(batch.rows.len() as u64, Ordering::Relaxed);
    counter!(metric::BATCHES).increment(1);
    histogram!(metric::BATCH_ROWS).record(batch.rows.len() as f64);
    histogram!(metric::BATCH_TOKENS).record(batch.padded_tokens() as f64);
    histogram!(metric::INFERENCE_SECONDS).record(elapsed.as_secs_f64());
    lock(&shared.queue).record_throughput(batch.rows.len(), elapsed);
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
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            Err(format!("model panicked: {what}"))
        }
    }
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
