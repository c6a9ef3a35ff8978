//! The batching engine against the toy classifier: batching never changes answers, concurrent
//! jobs share batches, small jobs are not starved, duplicates and cached rows skip the model,
//! and overload, deadlines, cancellation and model panics are contained.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glassbox::engine::{Engine, EngineConfig, EngineError, JobOptions, RowCounts, RowProgress};
use glassbox::model::toy::{ToyClassifier, ToyOutput};
use glassbox::model::{Classifier, Row};
use support::{wait_until, TestModel};

fn toy() -> ToyClassifier {
    let weights: HashMap<u32, Vec<f32>> = (1..=60)
        .map(|id| {
            (
                id,
                vec![
                    id as f32 * 0.01,
                    -(id as f32) * 0.02,
                    ((id % 7) as f32) * 0.1,
                ],
            )
        })
        .collect();
    let labels = vec!["negative".into(), "neutral".into(), "positive".into()];
    ToyClassifier::new(labels, weights, vec![0.1, 0.0, -0.1], ToyOutput::Softmax)
}

fn config() -> EngineConfig {
    EngineConfig {
        workers: 1,
        max_batch_tokens: 4096,
        max_batch_rows: 64,
        max_queued_rows: 1000,
        cache_rows: 0,
    }
}

/// Row `[101, content..., 102]` like a tokenized text.
fn row(content: &[u32]) -> Row {
    let mut ids = vec![101];
    ids.extend_from_slice(content);
    ids.push(102);
    Row::new(ids)
}

/// Deterministic rows of lengths 3 to 40 with varied tokens.
fn varied_rows(count: usize) -> Vec<Row> {
    (0..count)
        .map(|i| {
            let len = 1 + (i * 7) % 38;
            row(&(0..len)
                .map(|j| ((i * 13 + j * 5) % 60) as u32 + 1)
                .collect::<Vec<_>>())
        })
        .collect()
}

const POISON: u32 = 666;

fn test_model(gate_open: bool, per_batch_delay: Duration) -> Arc<TestModel> {
    TestModel::new(toy(), gate_open, per_batch_delay, POISON)
}

/// Starts an engine whose model is blocked at the gate by one single-row job already taken.
async fn engine_with_busy_worker(
    config: EngineConfig,
) -> (Engine, Arc<TestModel>, tokio::task::JoinHandle<()>) {
    let model = test_model(false, Duration::ZERO);
    let engine = Engine::start(model.clone(), config);
    let blocker = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .evaluate(vec![row(&[1])], JobOptions::default())
                .await
                .expect("blocking job succeeds");
        })
    };
    let watched = model.clone();
    wait_until("the first batch is at the gate", || watched.started() == 1).await;
    (engine, model, blocker)
}

#[tokio::test]
async fn a_batch_gives_each_row_what_it_gets_alone() {
    let rows = varied_rows(100);
    let model = test_model(true, Duration::ZERO);
    let engine = Engine::start(
        model.clone(),
        EngineConfig {
            max_batch_rows: 16,
            ..config()
        },
    );
    let together = engine
        .evaluate(rows.clone(), JobOptions::default())
        .await
        .unwrap();
    assert!(model.toy.batches_seen() < 100, "rows were batched");
    assert_eq!(together.outputs.len(), rows.len());
    for (row, output) in rows.iter().zip(&together.outputs) {
        let alone = model
            .toy
            .forward(std::slice::from_ref(row))
            .unwrap()
            .remove(0);
        assert_eq!(output, &alone, "row {:?}", row.ids);
    }
}

#[tokio::test]
async fn concurrent_jobs_share_batches() {
    let (engine, model, blocker) = engine_with_busy_worker(config()).await;
    let jobs: Vec<_> = (0..10u32)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .evaluate(vec![row(&[i + 1, i + 2])], JobOptions::default())
                    .await
            })
        })
        .collect();
    wait_until("all ten jobs are queued", || {
        engine.counters().queued_rows == 10
    })
    .await;
    model.gate.open();
    for (i, job) in jobs.into_iter().enumerate() {
        let result = job.await.unwrap().unwrap();
        let i = i as u32;
        assert_eq!(
            result.outputs,
            model.toy.forward(&[row(&[i + 1, i + 2])]).unwrap()
        );
    }
    blocker.await.unwrap();
    assert_eq!(
        engine.counters().batches,
        2,
        "the blocking job, then all ten jobs in one batch"
    );
}

#[tokio::test]
async fn a_small_job_does_not_wait_for_a_huge_one() {
    let model = test_model(false, Duration::from_millis(2));
    let engine = Engine::start(
        model.clone(),
        EngineConfig {
            max_batch_rows: 4,
            ..config()
        },
    );
    let huge: Vec<Row> = (0..400)
        .map(|i| row(&[(i % 60) as u32 + 1, (i / 60) as u32 + 1]))
        .collect();
    let big = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine.evaluate(huge, JobOptions::default()).await.unwrap();
            Instant::now()
        })
    };
    let watched = model.clone();
    wait_until("the huge job's first batch is at the gate", || {
        watched.started() == 1
    })
    .await;
    let small = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .evaluate(vec![row(&[5, 6])], JobOptions::default())
                .await
                .unwrap();
            Instant::now()
        })
    };
    wait_until("the small job is queued", || {
        engine.counters().queued_rows == 397
    })
    .await;
    model.gate.open();
    let (small_done, big_done) = (small.await.unwrap(), big.await.unwrap());
    assert!(
        small_done < big_done,
        "the 1-row job finished before the 400-row job queued ahead of it"
    );
}

#[tokio::test]
async fn identical_rows_in_a_job_run_once() {
    let model = test_model(true, Duration::ZERO);
    let engine = Engine::start(model.clone(), config());
    let (a, b, c) = (row(&[1, 2]), row(&[3]), row(&[4, 5, 6]));
    let rows = vec![
        a.clone(),
        b.clone(),
        a.clone(),
        c.clone(),
        b.clone(),
        a.clone(),
    ];
    let result = engine
        .evaluate(rows.clone(), JobOptions::default())
        .await
        .unwrap();
    assert_eq!(model.toy.rows_seen(), 3);
    assert_eq!(result.stats.distinct_rows, 3);
    assert_eq!(result.stats.model_evaluations(), 3);
    assert_eq!(result.stats.tokens_evaluated, a.len() + b.len() + c.len());
    for (row, output) in rows.iter().zip(&result.outputs) {
        assert_eq!(
            output,
            &model.toy.forward(std::slice::from_ref(row)).unwrap()[0]
        );
    }
}

#[tokio::test]
async fn the_row_cache_skips_repeated_rows_across_jobs() {
    let model = test_model(true, Duration::ZERO);
    let engine = Engine::start(
        model.clone(),
        EngineConfig {
            cache_rows: 100,
            ..config()
        },
    );
    let (a, b, c) = (row(&[1, 2]), row(&[3]), row(&[4, 5, 6]));
    let first = engine
        .evaluate(vec![a.clone(), b.clone()], JobOptions::default())
        .await
        .unwrap();
    assert_eq!(first.stats.cache_hits, 0);
    let second = engine
        .evaluate(vec![a.clone(), c.clone()], JobOptions::default())
        .await
        .unwrap();
    assert_eq!(second.stats.cache_hits, 1);
    assert_eq!(second.stats.model_evaluations(), 1);
    assert_eq!(
        second.outputs[0], first.outputs[0],
        "a cached output equals the computed one"
    );
    assert_eq!(model.toy.rows_seen(), 3, "a ran once");
    let all_cached = engine
        .evaluate(vec![c, a], JobOptions::default())
        .await
        .unwrap();
    assert_eq!(all_cached.stats.cache_hits, 2);
    assert_eq!(
        model.toy.rows_seen(),
        3,
        "a fully cached job never reaches the model"
    );
    assert_eq!(engine.counters().cache_hits, 3);
}

#[tokio::test]
async fn a_zero_sized_cache_is_off() {
    let model = test_model(true, Duration::ZERO);
    let engine = Engine::start(model.clone(), config());
    for _ in 0..2 {
        let result = engine
            .evaluate(vec![row(&[1, 2])], JobOptions::default())
            .await
            .unwrap();
        assert_eq!(result.stats.cache_hits, 0);
    }
    assert_eq!(model.toy.rows_seen(), 2);
}

#[tokio::test]
async fn admission_is_bounded_in_rows() {
    let (engine, model, blocker) = engine_with_busy_worker(EngineConfig {
        max_queued_rows: 10,
        ..config()
    })
    .await;
    let too_large = engine
        .evaluate(varied_rows(11), JobOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        too_large,
        EngineError::JobTooLarge {
            rows: 11,
            max_queued_rows: 10
        }
    );
    assert!(too_large.to_string().contains("engine.max_queued_rows"));

    let queued = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.evaluate(varied_rows(8), JobOptions::default()).await })
    };
    wait_until("eight rows are queued", || {
        engine.counters().queued_rows == 8
    })
    .await;
    match engine.evaluate(varied_rows(5), JobOptions::default()).await {
        Err(EngineError::Overloaded { retry_after }) => {
            assert!(retry_after >= Duration::from_secs(1))
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
    let fits = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .evaluate(vec![row(&[9]), row(&[10])], JobOptions::default())
                .await
        })
    };
    wait_until("the two-row job is admitted", || {
        engine.counters().queued_rows == 10
    })
    .await;
    model.gate.open();
    assert_eq!(queued.await.unwrap().unwrap().outputs.len(), 8);
    assert_eq!(fits.await.unwrap().unwrap().outputs.len(), 2);
    blocker.await.unwrap();
}

#[tokio::test]
async fn a_passed_deadline_times_out_and_drops_the_queued_rows() {
    let (engine, model, blocker) = engine_with_busy_worker(config()).await;
    let deadline = Some(Instant::now() + Duration::from_millis(50));
    let rows: Vec<Row> = (0..5).map(|i| row(&[i + 20])).collect();
    let result = engine
        .evaluate(
            rows,
            JobOptions {
                deadline,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(result.unwrap_err(), EngineError::Timeout);
    assert_eq!(engine.counters().dropped_rows, 5);
    assert_eq!(engine.counters().queued_rows, 0);
    model.gate.open();
    blocker.await.unwrap();
    assert_eq!(
        model.toy.rows_seen(),
        1,
        "only the blocking job's row ever ran"
    );

    let already_late = Some(Instant::now() - Duration::from_millis(1));
    let late = engine
        .evaluate(
            vec![row(&[1])],
            JobOptions {
                deadline: already_late,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(late.unwrap_err(), EngineError::Timeout);
}

/// The worker may drop an expired job before the caller's own timer fires (the timer has
/// millisecond resolution and its task may not be polled at once). The caller must still see
/// `Timeout`, not a closed channel. Made deterministic by blocking the (current-thread) runtime
/// past the deadline, so the worker always wins the race; then the caller's future finds both
/// its answer channel and its timer ready, and reads the channel first.
#[tokio::test]
async fn a_job_the_worker_expires_before_the_callers_timer_fires_is_a_timeout() {
    for attempt in 0..5 {
        let (engine, model, blocker) = engine_with_busy_worker(config()).await;
        let deadline = Instant::now() + Duration::from_millis(20);
        let late = {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .evaluate(
                        vec![row(&[2, 3])],
                        JobOptions {
                            deadline: Some(deadline),
                            ..Default::default()
                        },
                    )
                    .await
            })
        };
        wait_until("the late job is queued", || {
            engine.counters().queued_rows == 1
        })
        .await;
        // Block the runtime (no timer can fire) until the worker has expired the job.
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        model.gate.open();
        let give_up = Instant::now() + Duration::from_secs(5);
        while engine.counters().dropped_rows < 1 {
            assert!(Instant::now() < give_up, "the worker never expired the job");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            late.await.unwrap().unwrap_err(),
            EngineError::Timeout,
            "attempt {attempt}: a job expired by the worker is a timeout"
        );
        blocker.await.unwrap();
        assert_eq!(model.toy.rows_seen(), 1, "the expired row never ran");
    }
}

#[tokio::test]
async fn a_dropped_caller_frees_its_rows() {
    let (engine, model, blocker) = engine_with_busy_worker(config()).await;
    let abandoned = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.evaluate(varied_rows(7), JobOptions::default()).await })
    };
    wait_until("seven rows are queued", || {
        engine.counters().queued_rows == 7
    })
    .await;
    abandoned.abort();
    wait_until("the rows are dropped", || {
        engine.counters().dropped_rows == 7
    })
    .await;
    model.gate.open();
    blocker.await.unwrap();
    engine
        .evaluate(vec![row(&[3])], JobOptions::default())
        .await
        .unwrap();
    assert_eq!(model.toy.rows_seen(), 2, "the abandoned rows never ran");
}

#[tokio::test]
async fn a_panicking_batch_fails_only_the_job_that_caused_it() {
    let (engine, model, blocker) = engine_with_busy_worker(config()).await;
    let submit = |rows: Vec<Row>| {
        let engine = engine.clone();
        tokio::spawn(async move { engine.evaluate(rows, JobOptions::default()).await })
    };
    let good = submit(vec![row(&[1, 2]), row(&[3, 4])]);
    let poisoned = submit(vec![row(&[5, POISON])]);
    wait_until("both jobs are queued", || {
        engine.counters().queued_rows == 3
    })
    .await;
    model.gate.open();
    blocker.await.unwrap();
    let good = good
        .await
        .unwrap()
        .expect("the neighbour of a poisoned row still gets its answer");
    assert_eq!(
        good.outputs,
        model.toy.forward(&[row(&[1, 2]), row(&[3, 4])]).unwrap()
    );
    match poisoned.await.unwrap() {
        Err(EngineError::Internal(message)) => assert!(message.contains("panicked"), "{message}"),
        other => panic!("expected Internal, got {other:?}"),
    }
    let later = engine
        .evaluate(vec![row(&[7])], JobOptions::default())
        .await;
    assert!(later.is_ok(), "the engine keeps serving after a panic");
    engine.warm_up(vec![row(&[1])]).await.unwrap();
    assert!(engine.is_ready(), "the model thread survived");
}

#[tokio::test]
async fn ready_only_after_warm_up_and_not_after_shutdown() {
    let model = test_model(true, Duration::ZERO);
    let engine = Engine::start(model.clone(), config());
    assert!(!engine.is_ready());
    engine.warm_up(vec![row(&[1, 2])]).await.unwrap();
    assert!(engine.is_ready());
    assert_eq!(model.toy.rows_seen(), 1, "warm-up really runs the model");
    engine.shutdown();
    assert!(!engine.is_ready());
    let refused = engine
        .evaluate(vec![row(&[1, 3])], JobOptions::default())
        .await;
    assert_eq!(refused.unwrap_err(), EngineError::ShuttingDown);
}

#[tokio::test]
async fn an_empty_job_needs_no_model() {
    let model = test_model(true, Duration::ZERO);
    let engine = Engine::start(model.clone(), config());
    let result = engine
        .evaluate(Vec::new(), JobOptions::default())
        .await
        .unwrap();
    assert!(result.outputs.is_empty());
    assert_eq!(model.toy.batches_seen(), 0);
}

#[tokio::test]
async fn batches_respect_the_row_and_token_caps() {
    let model = test_model(true, Duration::ZERO);
    let engine = Engine::start(
        model.clone(),
        EngineConfig {
            max_batch_rows: 8,
            max_batch_tokens: 64,
            ..config()
        },
    );
    // 40 distinct rows of 10 tokens: at most 6 per batch by tokens (6 x 10 <= 64).
    let rows: Vec<Row> = (0..40u32)
        .map(|i| row(&[i % 60 + 1, i / 60 + 1, 1, 2, 3, 4, 5, 6]))
        .collect();
    engine.evaluate(rows, JobOptions::default()).await.unwrap();
    assert_eq!(model.toy.batches_seen(), 7, "ceil(40 / 6) batches");
}

#[tokio::test]
async fn the_tiny_bert_gives_each_text_the_same_answer_in_a_padded_batch() {
    use glassbox::model::config::ZeroShotConfig;
    use glassbox::model::load_model;
    use glassbox::model::loader::LoadOptions;

    let folder = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny/tiny-bert-cls"
    );
    let loaded = load_model(folder, &ZeroShotConfig::default(), &LoadOptions::default()).unwrap();
    let texts = [
        "Short.",
        "A somewhat longer sentence about a film that was not bad at all.",
        "The plot was thin but the acting was wonderful, and the music stayed with me for days.",
        "Terrible.",
        "An average movie with some good moments and some dull ones in between them.",
    ];
    let rows: Vec<Row> = texts
        .iter()
        .map(|text| {
            let encoding = loaded.encoder.encode(text, false).unwrap();
            Row {
                type_ids: encoding.type_ids,
                ..Row::new(encoding.ids)
            }
        })
        .collect();
    let engine = Engine::start(loaded.classifier.clone(), config());
    let together = engine
        .evaluate(rows.clone(), JobOptions::default())
        .await
        .unwrap();
    // Two batches: the two one-word texts, and the three long ones padded to the longest.
    assert_eq!(
        engine.counters().batches,
        2,
        "texts of similar length share a batch"
    );
    for (row, batched) in rows.iter().zip(&together.outputs) {
        let alone = loaded
            .classifier
            .forward(std::slice::from_ref(row))
            .unwrap()
            .remove(0);
        for (a, b) in alone.logits.iter().zip(&batched.logits) {
            assert!((a - b).abs() < 1e-5, "logit {a} alone vs {b} in a batch");
        }
    }
}

fn distinct(rows: &[Row]) -> u64 {
    rows.iter().collect::<std::collections::HashSet<_>>().len() as u64
}

#[tokio::test]
async fn progress_counts_distinct_rows_as_batches_and_the_cache_answer_them() {
    let (engine, model, blocker) = engine_with_busy_worker(EngineConfig {
        max_batch_rows: 4,
        cache_rows: 100,
        ..config()
    })
    .await;
    let progress = Arc::new(RowProgress::default());
    let options = JobOptions {
        progress: Some(progress.clone()),
        ..JobOptions::default()
    };
    let mut rows = varied_rows(10);
    rows.push(rows[0].clone());
    let first = distinct(&rows);
    let job = {
        let (engine, options) = (engine.clone(), options.clone());
        tokio::spawn(async move { engine.evaluate(rows, options).await })
    };
    let watched = progress.clone();
    wait_until("the rows are submitted", || {
        watched.counts().rows_total == first
    })
    .await;
    assert_eq!(
        progress.counts().rows_done,
        0,
        "nothing ran: the model is held"
    );
    model.gate.open();
    job.await.unwrap().unwrap();
    blocker.await.unwrap();
    assert_eq!(
        progress.counts(),
        RowCounts {
            rows_done: first,
            rows_total: first
        },
        "a duplicate row counts once"
    );

    // A second job reporting to the same progress: cached rows are done at once.
    let more = varied_rows(14);
    engine.evaluate(more.clone(), options).await.unwrap();
    let total = first + distinct(&more);
    assert_eq!(
        progress.counts(),
        RowCounts {
            rows_done: total,
            rows_total: total
        }
    );
    assert!(engine.counters().cache_hits >= first);
}
