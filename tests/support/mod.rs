//! Test doubles shared by the engine and HTTP tests: the toy model behind a gate, optionally
//! slowed down, panicking on a chosen token.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod additive;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use glassbox::model::toy::ToyClassifier;
use glassbox::model::{Classifier, ModelError, ModelInfo, Row, RowOutput};

/// Holds every forward pass until opened: lets a test queue work behind a busy model thread
/// deterministically, without sleeping and hoping.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    pub fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
    /// Later forward passes wait again (one already past the gate runs on).
    pub fn close(&self) {
        *self.open.lock().unwrap() = false;
    }
}

pub struct TestModel {
    pub toy: ToyClassifier,
    pub gate: Gate,
    per_batch_delay: Duration,
    /// A batch holding this token id panics, like a model bug triggered by one input.
    poison: u32,
    /// Forward passes that have started (including ones waiting at the gate).
    started: AtomicUsize,
}

impl TestModel {
    pub fn new(
        toy: ToyClassifier,
        gate_open: bool,
        per_batch_delay: Duration,
        poison: u32,
    ) -> Arc<Self> {
        let gate = Gate::default();
        if gate_open {
            gate.open();
        }
        Arc::new(Self {
            toy,
            gate,
            per_batch_delay,
            poison,
            started: AtomicUsize::new(0),
        })
    }

    pub fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

impl Classifier for TestModel {
    fn info(&self) -> &ModelInfo {
        self.toy.info()
    }
    fn forward(&self, rows: &[Row]) -> Result<Vec<RowOutput>, ModelError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.gate.wait();
        std::thread::sleep(self.per_batch_delay);
        if rows.iter().any(|r| r.ids.contains(&self.poison)) {
            panic!("poison token in batch");
        }
        self.toy.forward(rows)
    }
}

/// Polls `condition` until true; fails the test after five seconds.
pub async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < give_up, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
