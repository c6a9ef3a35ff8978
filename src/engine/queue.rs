//! The queue of admitted jobs and batch formation.
//!
//! Rules, in order of importance:
//! * **Bounded**: admission is counted in rows against `max_queued_rows`.
//! * **Fair**: each batch is seeded by the job at the front of a rotation, then every queued job
//!   contributes one row per round, so a 1-row job never waits behind all of a 5000-row job.
//! * **Little padding**: each job keeps its rows sorted by length and offers the row nearest
//!   the seed's length; a row joins only if the batch's longest row stays within
//!   [`similar_lengths`] of its shortest, and `rows x padded length` within `max_batch_tokens`.
//! * **No waiting to fill**: a batch is formed from whatever is queued when a worker is free,
//!   so a lone request runs at once and batches grow by themselves under load.
//! * **Two kinds of work, one budget**: gradient jobs (embeddings in, input gradients out) are
//!   admitted against the same row budget and dropped on the same deadlines; a gradient batch
//!   holds rows of one job (under the same row and token caps), rotating between gradient jobs,
//!   and workers alternate between the two kinds when both are waiting ([`Queue::next_work`]).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::job::{JobState, Liveness};
use super::worker::Work;
use super::EngineError;
use crate::model::gradients::{GradientRow, OutputKind, RowGradient};
use crate::model::Row;

/// Extra tokens of padding always tolerated: for short rows padding costs little, and forcing
/// exact lengths would split small batches for nothing.
const PADDING_SLACK_TOKENS: usize = 8;

/// Whether rows of lengths `shortest..=longest` may share a batch: nobody is padded to more than
/// about twice its length.
pub(crate) fn similar_lengths(shortest: usize, longest: usize) -> bool {
    longest <= 2 * shortest + PADDING_SLACK_TOKENS
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchLimits {
    pub max_tokens: usize,
    pub max_rows: usize,
}

/// Rows to run together, grouped by the job they belong to.
pub(crate) struct Batch {
    pub rows: Vec<Row>,
    pub parts: Vec<BatchPart>,
}

/// One job's share of a batch: `rows[range]`, with the job's distinct-row slot of each.
pub(crate) struct BatchPart {
    pub job: Arc<JobState>,
    pub slots: Vec<usize>,
    pub range: Range<usize>,
}

impl Batch {
    /// Length every row is padded to.
    pub fn padded_len(&self) -> usize {
        self.rows.iter().map(Row::len).max().unwrap_or(0)
    }
    pub fn padded_tokens(&self) -> usize {
        self.rows.len() * self.padded_len()
    }
}

/// Gradient rows of one job to run together.
pub(crate) struct GradientBatch {
    pub job: Arc<JobState<RowGradient>>,
    pub output: OutputKind,
    /// The job's slot of each row.
    pub slots: Vec<usize>,
    pub rows: Vec<GradientRow>,
}

impl GradientBatch {
    pub fn padded_tokens(&self) -> usize {
        self.rows.len() * self.rows.iter().map(GradientRow::len).max().unwrap_or(0)
    }
}

/// A queued gradient job: its remaining rows, run in order.
struct QueuedGradients {
    job: Arc<JobState<RowGradient>>,
    output: OutputKind,
    rows: VecDeque<(usize, GradientRow)>,
}

/// Key of a queued row: `(length, slot)`, so a job's rows iterate shortest first.
type RowKey = (usize, usize);

struct QueuedJob {
    job: Arc<JobState>,
    rows: BTreeMap<RowKey, Row>,
}

impl QueuedJob {
    /// The key of the row whose length is nearest to `target`.
    fn nearest(&self, target: usize) -> Option<RowKey> {
        let above = self.rows.range((target, 0)..).next().map(|(k, _)| *k);
        let below = self.rows.range(..(target, 0)).next_back().map(|(k, _)| *k);
        match (above, below) {
            (Some(a), Some(b)) => Some(if a.0 - target <= target - b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Default)]
pub(crate) struct Queue {
    /// Rotation order: the front job seeds the next batch.
    jobs: VecDeque<QueuedJob>,
    /// Gradient jobs, in rotation order.
    gradient_jobs: VecDeque<QueuedGradients>,
    /// Whether a gradient batch goes next when both kinds wait (they alternate).
    gradient_turn: bool,
    queued_rows: usize,
    shutting_down: bool,
    /// Moving average of model throughput, for the `Retry-After` estimate.
    rows_per_second: f64,
}

impl Queue {
    pub fn queued_rows(&self) -> usize {
        self.queued_rows
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Refuses new jobs from now on; queued ones still run.
    pub fn shut_down(&mut self) {
        self.shutting_down = true;
    }

    /// Queues a job's rows (`(slot, row)` pairs), or says why not.
    pub fn admit(
        &mut self,
        job: Arc<JobState>,
        rows: Vec<(usize, Row)>,
        max_queued_rows: usize,
    ) -> Result<(), EngineError> {
        if self.shutting_down {
            return Err(EngineError::ShuttingDown);
        }
        if self.queued_rows + rows.len() > max_queued_rows {
            return Err(EngineError::Overloaded {
                retry_after: self.retry_after(),
            });
        }
        self.queued_rows += rows.len();
        let rows = rows
            .into_iter()
            .map(|(slot, row)| ((row.len(), slot), row))
            .collect();
        self.jobs.push_back(QueuedJob { job, rows });
        Ok(())
    }

    /// Queues a gradient job's rows (`(slot, row)` pairs) against the same row budget.
    pub fn admit_gradients(
        &mut self,
        job: Arc<JobState<RowGradient>>,
        output: OutputKind,
        rows: Vec<(usize, GradientRow)>,
        max_queued_rows: usize,
    ) -> Result<(), EngineError> {
        if self.shutting_down {
            return Err(EngineError::ShuttingDown);
        }
        if self.queued_rows + rows.len() > max_queued_rows {
            return Err(EngineError::Overloaded {
                retry_after: self.retry_after(),
            });
        }
        self.queued_rows += rows.len();
        self.gradient_jobs.push_back(QueuedGradients {
            job,
            output,
            rows: rows.into(),
        });
        Ok(())
    }

    /// The next thing for a worker to do: a forward batch or a gradient batch, alternating
    /// when both kinds are queued; `None` when nothing is.
    pub fn next_work(&mut self, limits: BatchLimits) -> Option<Work> {
        let gradients_waiting = !self.gradient_jobs.is_empty();
        if gradients_waiting && (self.gradient_turn || self.jobs.is_empty()) {
            self.gradient_turn = false;
            return self.next_gradient_batch(limits).map(Work::Gradient);
        }
        self.gradient_turn = gradients_waiting;
        self.next_batch(limits).map(Work::Forward)
    }

    /// Rows of the gradient job at the front of the rotation, as many as the caps allow (at
    /// least one); the job then goes to the back.
    pub fn next_gradient_batch(&mut self, limits: BatchLimits) -> Option<GradientBatch> {
        let mut queued = self.gradient_jobs.pop_front()?;
        let mut slots = Vec::new();
        let mut rows: Vec<GradientRow> = Vec::new();
        let mut longest = 0;
        while let Some((_, next)) = queued.rows.front() {
            let new_longest = longest.max(next.len());
            let fits =
                rows.len() < limits.max_rows && (rows.len() + 1) * new_longest <= limits.max_tokens;
            if !rows.is_empty() && !fits {
                break;
            }
            let (slot, row) = queued.rows.pop_front().expect("front was just read");
            slots.push(slot);
            rows.push(row);
            longest = new_longest;
        }
        self.queued_rows -= rows.len();
        let batch = GradientBatch {
            job: queued.job.clone(),
            output: queued.output,
            slots,
            rows,
        };
        if !queued.rows.is_empty() {
            self.gradient_jobs.push_back(queued);
        }
        Some(batch)
    }

    /// Removes a job's queued rows; returns how many were dropped.
    pub fn remove(&mut self, job_id: u64) -> usize {
        self.remove_where(|job| job.id() == job_id)
    }

    /// Removes jobs past their deadline or without a caller; returns the rows dropped.
    ///
    /// An expired job is answered with [`EngineError::Timeout`] as it goes: its caller's own
    /// timer may not have fired yet (timers have millisecond resolution and the caller's task
    /// may wait for a runtime thread), and without an answer the caller would only find its
    /// channel closed, which reads as a bug rather than a timeout.
    pub fn remove_dead(&mut self, now: Instant) -> usize {
        self.remove_where(|job| {
            if job.is_expired(now) {
                job.fail(EngineError::Timeout);
                true
            } else {
                job.is_abandoned()
            }
        })
    }

    fn remove_where(&mut self, dead: impl Fn(&dyn Liveness) -> bool) -> usize {
        let mut dropped = 0;
        self.jobs.retain(|queued| {
            let keep = !dead(queued.job.as_ref());
            if !keep {
                dropped += queued.rows.len();
            }
            keep
        });
        self.gradient_jobs.retain(|queued| {
            let keep = !dead(queued.job.as_ref());
            if !keep {
                dropped += queued.rows.len();
            }
            keep
        });
        self.queued_rows -= dropped;
        dropped
    }

    /// Forms the next batch from what is queued (see the module docs), or `None` when empty.
    pub fn next_batch(&mut self, limits: BatchLimits) -> Option<Batch> {
        let seed_job = self.jobs.front_mut()?;
        let seed_key = *seed_job
            .rows
            .keys()
            .next()
            .expect("queued jobs are never empty");
        let seed_row = seed_job.rows.remove(&seed_key).expect("key was just read");
        let target = seed_row.len();
        let (mut shortest, mut longest, mut count) = (target, target, 1);

        let mut picked: Vec<Vec<(usize, Row)>> = vec![Vec::new(); self.jobs.len()];
        picked[0].push((seed_key.1, seed_row));
        // A job whose nearest row did not fit will not fit later in this batch either.
        let mut open = vec![true; self.jobs.len()];
        let mut added_in_round = true;
        while added_in_round && count < limits.max_rows {
            added_in_round = false;
            for (index, queued) in self.jobs.iter_mut().enumerate() {
                if count == limits.max_rows {
                    break;
                }
                if !open[index] {
                    continue;
                }
                let Some(key) = queued.nearest(target) else {
                    open[index] = false;
                    continue;
                };
                let (new_shortest, new_longest) = (shortest.min(key.0), longest.max(key.0));
                let fits = similar_lengths(new_shortest, new_longest)
                    && (count + 1) * new_longest <= limits.max_tokens;
                if !fits {
                    open[index] = false;
                    continue;
                }
                let row = queued.rows.remove(&key).expect("key was just found");
                picked[index].push((key.1, row));
                (shortest, longest, count) = (new_shortest, new_longest, count + 1);
                added_in_round = true;
            }
        }

        self.queued_rows -= count;
        let batch = self.assemble(picked, count);
        // The seed goes to the back of the rotation; jobs with nothing left leave the queue.
        if let Some(seed) = self.jobs.pop_front() {
            self.jobs.push_back(seed);
        }
        self.jobs.retain(|queued| !queued.rows.is_empty());
        Some(batch)
    }

    /// Lays the picked rows out job by job, so each job's share is one contiguous range.
    fn assemble(&self, picked: Vec<Vec<(usize, Row)>>, count: usize) -> Batch {
        let mut rows = Vec::with_capacity(count);
        let mut parts = Vec::new();
        for (queued, job_rows) in self.jobs.iter().zip(picked) {
            if job_rows.is_empty() {
                continue;
            }
            let start = rows.len();
            let mut slots = Vec::with_capacity(job_rows.len());
            for (slot, row) in job_rows {
                slots.push(slot);
                rows.push(row);
            }
            parts.push(BatchPart {
                job: queued.job.clone(),
                slots,
                range: start..rows.len(),
            });
        }
        Batch { rows, parts }
    }

    /// Feeds the throughput estimate with one finished batch.
    pub fn record_throughput(&mut self, rows: usize, elapsed: Duration) {
        let rate = rows as f64 / elapsed.as_secs_f64().max(1e-6);
        self.rows_per_second = if self.rows_per_second == 0.0 {
            rate
        } else {
            0.8 * self.rows_per_second + 0.2 * rate
        };
    }

    /// How long until the current queue has likely drained: what an overloaded client is told
    /// to wait. At least a second (HTTP's `Retry-After` counts whole seconds), at most a minute.
    pub fn retry_after(&self) -> Duration {
        if self.rows_per_second <= 0.0 {
            return Duration::from_secs(1);
        }
        let seconds = (self.queued_rows as f64 / self.rows_per_second).ceil();
        Duration::from_secs(seconds.clamp(1.0, 60.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::super::job::Completed;
    use super::*;
    use tokio::sync::oneshot;

    /// The receiver is returned so the job has a caller and does not look abandoned.
    type Receiver = oneshot::Receiver<Result<Completed, EngineError>>;

    fn job(id: u64, lengths: &[usize]) -> (Arc<JobState>, Vec<(usize, Row)>, Receiver) {
        let (reply, receiver) = oneshot::channel();
        let state = Arc::new(JobState::new(id, None, vec![None; lengths.len()], reply));
        let rows = lengths
            .iter()
            .enumerate()
            .map(|(slot, &n)| (slot, Row::new(vec![7; n])))
            .collect();
        (state, rows, receiver)
    }

    const WIDE: BatchLimits = BatchLimits {
        max_tokens: 10_000,
        max_rows: 64,
    };

    #[test]
    fn a_small_job_joins_the_first_batch_after_a_huge_one() {
        let mut queue = Queue::default();
        let (big, big_rows, _a) = job(1, &[10; 1000]);
        let (small, small_rows, _b) = job(2, &[10]);
        queue.admit(big, big_rows, 5000).unwrap();
        queue.admit(small, small_rows, 5000).unwrap();
        let batch = queue
            .next_batch(BatchLimits {
                max_tokens: 10_000,
                max_rows: 4,
            })
            .unwrap();
        let ids: Vec<u64> = batch.parts.iter().map(|p| p.job.id).collect();
        assert_eq!(
            ids,
            [1, 2],
            "the small job rides along in the very first batch"
        );
        assert_eq!(batch.rows.len(), 4);
        assert_eq!(queue.queued_rows(), 997);
    }

    #[test]
    fn token_budget_counts_padding_and_lengths_are_grouped() {
        let mut queue = Queue::default();
        let (a, rows, _a) = job(1, &[5, 6, 50, 52, 7, 51]);
        queue.admit(a, rows, 100).unwrap();
        let first = queue.next_batch(WIDE).unwrap();
        let mut lens: Vec<usize> = first.rows.iter().map(Row::len).collect();
        lens.sort();
        assert_eq!(lens, [5, 6, 7], "long rows wait for a batch of their own");
        let second = queue
            .next_batch(BatchLimits {
                max_tokens: 104,
                max_rows: 64,
            })
            .unwrap();
        assert_eq!(
            second.padded_tokens(),
            102,
            "two rows padded to 51 fit in 104 tokens, three do not"
        );
        assert_eq!(queue.queued_rows(), 1);
    }

    #[test]
    fn admission_is_bounded_and_removal_frees_rows() {
        let mut queue = Queue::default();
        let (a, rows, _a) = job(1, &[3; 8]);
        queue.admit(a, rows, 10).unwrap();
        let (b, rows, _b) = job(2, &[3; 3]);
        assert!(matches!(
            queue.admit(b, rows, 10),
            Err(EngineError::Overloaded { .. })
        ));
        assert_eq!(queue.remove(1), 8);
        assert_eq!(queue.queued_rows(), 0);
        assert!(queue.next_batch(WIDE).is_none());
    }

    #[test]
    fn an_over_budget_row_still_runs_alone() {
        let mut queue = Queue::default();
        let (a, rows, _a) = job(1, &[300, 300]);
        queue.admit(a, rows, 10).unwrap();
        let batch = queue
            .next_batch(BatchLimits {
                max_tokens: 256,
                max_rows: 8,
            })
            .unwrap();
        assert_eq!(batch.rows.len(), 1);
    }
}
