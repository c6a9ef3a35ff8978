//! One job's shared state: the rows' outputs as they arrive from batches, and the channel back
//! to the waiting caller. Shared between the caller (through the queue) and the workers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{lock, EngineError, RowProgress};
use crate::model::RowOutput;

/// What a finished job hands back to `Engine::evaluate` (or `Engine::gradients`, with
/// `T = RowGradient`): one output per distinct row.
pub(crate) struct Completed<T = RowOutput> {
    pub outputs: Vec<T>,
    /// Wall time of the batches that held this job's rows, summed.
    pub inference: Duration,
    pub tokens_evaluated: usize,
}

pub(crate) type Reply<T = RowOutput> = oneshot::Sender<Result<Completed<T>, EngineError>>;

/// One job, whatever its kind: forward rows (`T = RowOutput`) or gradient rows
/// (`T = RowGradient`).
pub(crate) struct JobState<T = RowOutput> {
    pub id: u64,
    pub deadline: Option<Instant>,
    progress: Mutex<Progress<T>>,
    /// The caller's progress report, told of each row as it arrives.
    report: Option<Arc<RowProgress>>,
}

/// What the queue and the workers need of any job to drop or fail it.
pub(crate) trait Liveness {
    fn id(&self) -> u64;
    fn is_expired(&self, now: Instant) -> bool;
    fn is_abandoned(&self) -> bool;
    /// Answers the caller with `error`, if nobody answered it yet.
    fn fail(&self, error: EngineError);
}

impl<T: Clone> Liveness for JobState<T> {
    fn id(&self) -> u64 {
        self.id
    }
    fn is_expired(&self, now: Instant) -> bool {
        JobState::is_expired(self, now)
    }
    fn is_abandoned(&self) -> bool {
        JobState::is_abandoned(self)
    }
    fn fail(&self, error: EngineError) {
        JobState::fail(self, error)
    }
}

struct Progress<T> {
    /// Per distinct row; cache hits are filled in before the job is queued.
    outputs: Vec<Option<T>>,
    missing: usize,
    inference: Duration,
    tokens_evaluated: usize,
    /// Taken when the job completes or fails, so it is answered exactly once.
    reply: Option<Reply<T>>,
}

impl<T: Clone> JobState<T> {
    pub fn new(
        id: u64,
        deadline: Option<Instant>,
        outputs: Vec<Option<T>>,
        reply: Reply<T>,
    ) -> Self {
        let missing = outputs.iter().filter(|o| o.is_none()).count();
        let progress = Progress {
            outputs,
            missing,
            inference: Duration::ZERO,
            tokens_evaluated: 0,
            reply: Some(reply),
        };
        Self {
            id,
            deadline,
            progress: Mutex::new(progress),
            report: None,
        }
    }

    /// Reports every row this job completes to `report`.
    pub fn with_report(mut self, report: Option<Arc<RowProgress>>) -> Self {
        self.report = report;
        self
    }

    /// True when nobody waits for this job any more (answered, or the caller went away), so its
    /// remaining rows are wasted work.
    pub fn is_abandoned(&self) -> bool {
        lock(&self.progress)
            .reply
            .as_ref()
            .is_none_or(|reply| reply.is_closed())
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| deadline <= now)
    }

    /// Records the outputs of this job's rows from one batch that took `elapsed`, each as
    /// `(slot, tokens of its row, output)`; answers the caller when the last row arrives.
    pub fn deliver<'a>(
        &self,
        results: impl Iterator<Item = (usize, usize, &'a T)>,
        elapsed: Duration,
    ) where
        T: 'a,
    {
        let mut progress = lock(&self.progress);
        if progress.reply.is_none() {
            return;
        }
        progress.inference += elapsed;
        let mut arrived = 0;
        for (slot, tokens, output) in results {
            if progress.outputs[slot].is_none() {
                progress.outputs[slot] = Some(output.clone());
                progress.missing -= 1;
                progress.tokens_evaluated += tokens;
                arrived += 1;
            }
        }
        if let Some(report) = &self.report {
            report.completed(arrived);
        }
        if progress.missing == 0 {
            let completed = Completed {
                outputs: progress
                    .outputs
                    .drain(..)
                    .map(|o| o.expect("every slot is filled"))
                    .collect(),
                inference: progress.inference,
                tokens_evaluated: progress.tokens_evaluated,
            };
            if let Some(reply) = progress.reply.take() {
                // The caller may have gone away meanwhile; then nobody needs the answer.
                let _ = reply.send(Ok(completed));
            }
        }
    }

    /// Answers the caller with an error (first answer wins).
    pub fn fail(&self, error: EngineError) {
        if let Some(reply) = lock(&self.progress).reply.take() {
            let _ = reply.send(Err(error));
        }
    }
}
