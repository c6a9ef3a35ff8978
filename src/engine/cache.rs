//! The row cache: outputs of recently evaluated rows, so repeated work across requests (the
//! same text predicted twice, LIME's all-words row in every request) skips the model.
//!
//! Keyed by the whole [`Row`] (ids, token types, head mask, attention flag); one engine serves
//! one model, so the model is implied. Rows that ask for attentions are never cached: their
//! output holds `layers x heads x len x len` floats, megabytes each, and would crowd out
//! thousands of small outputs.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use super::lock;
use crate::model::{Row, RowOutput};

pub(crate) struct RowCache {
    /// `None` when the cache is switched off (`cache_rows = 0`).
    entries: Option<Mutex<LruCache<Row, RowOutput>>>,
}

impl RowCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: NonZeroUsize::new(capacity).map(|cap| Mutex::new(LruCache::new(cap))),
        }
    }

    /// Whether `row`'s output may be stored at all.
    fn cacheable(row: &Row) -> bool {
        !row.attentions
    }

    /// Looks every row up under one lock; `None` where the row is not cached.
    pub(crate) fn get_many(&self, rows: &[Row]) -> Vec<Option<RowOutput>> {
        let Some(entries) = &self.entries else {
            return vec![None; rows.len()];
        };
        let mut entries = lock(entries);
        rows.iter()
            .map(|row| {
                if Self::cacheable(row) {
                    entries.get(row).cloned()
                } else {
                    None
                }
            })
            .collect()
    }

    /// Stores the outputs of a finished batch.
    pub(crate) fn insert_many<'a>(&self, results: impl Iterator<Item = (&'a Row, &'a RowOutput)>) {
        let Some(entries) = &self.entries else {
            return;
        };
        let mut entries = lock(entries);
        for (row, output) in results.filter(|(row, _)| Self::cacheable(row)) {
            entries.put(row.clone(), output.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(p: f32) -> RowOutput {
        RowOutput {
            logits: vec![p],
            probabilities: vec![p],
            attentions: None,
        }
    }

    #[test]
    fn evicts_least_recently_used_and_skips_attention_rows() {
        let cache = RowCache::new(2);
        let (a, b, c) = (Row::new(vec![1]), Row::new(vec![2]), Row::new(vec![3]));
        let mut with_attentions = Row::new(vec![4]);
        with_attentions.attentions = true;
        cache.insert_many([(&a, &output(1.0)), (&b, &output(2.0))].into_iter());
        assert!(
            cache.get_many(std::slice::from_ref(&a))[0].is_some(),
            "a is now most recent"
        );
        cache.insert_many([(&c, &output(3.0)), (&with_attentions, &output(4.0))].into_iter());
        let found = cache.get_many(&[a, b, c, with_attentions]);
        let hits: Vec<bool> = found.iter().map(Option::is_some).collect();
        assert_eq!(hits, [true, false, true, false]);
    }

    #[test]
    fn zero_capacity_means_off() {
        let cache = RowCache::new(0);
        let a = Row::new(vec![1]);
        cache.insert_many([(&a, &output(1.0))].into_iter());
        assert!(cache.get_many(&[a])[0].is_none());
    }
}
