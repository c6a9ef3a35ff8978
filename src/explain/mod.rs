//! The explanation layer: what a feature is, how it is removed, and the methods built on that.
//! Nothing here knows about HTTP; models are reached through `crate::model`.

pub mod features;
pub mod word_chars;
