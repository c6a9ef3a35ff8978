//! The additive toy classifier over the tiny model's real BERT tokenizer, with known answers:
//! every "probability" is a sum of per-word coefficients, so occlusion deltas, SHAP values and
//! ERASER scores are exact. Shared by the HTTP tests of the perturbation routes and of compare.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use glassbox::config::Config;
use glassbox::model::toy::{ToyClassifier, ToyOutput};
use glassbox::model::TextEncoder;

/// The tiny checkpoint's tokenizer (real BERT uncased vocabulary), loaded once.
pub fn encoder() -> TextEncoder {
    static ENC: OnceLock<TextEncoder> = OnceLock::new();
    ENC.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny/tiny-bert-cls/tokenizer.json");
        TextEncoder::from_file(&path, 128).expect("the tiny tokenizer loads")
    })
    .clone()
}

/// The id of a word that is one token.
pub fn id(word: &str) -> u32 {
    let e = encoder().encode(word, false).unwrap();
    assert_eq!(e.len(), 3, "{word} is one token");
    e.ids[1]
}

/// Word coefficients of label 0 (`negative`); label 1 (`positive`) weighs the opposite.
pub const COEFS: [(&str, f32); 5] = [
    ("plot", 0.1),
    ("thin", 0.5),
    ("acting", -0.05),
    ("wonderful", -0.9),
    ("dull", 1.2),
];
pub const TEXT: &str = "The plot was thin but the acting was wonderful";

/// A word's coefficient for label 0 (0 for words without one).
pub fn coef(word: &str) -> f64 {
    COEFS
        .iter()
        .find(|(w, _)| *w == word)
        .map_or(0.0, |&(_, c)| c as f64)
}

/// Identity output: every "probability" is additive in the words, so the answers are exact.
pub fn additive() -> ToyClassifier {
    let weights: HashMap<u32, Vec<f32>> =
        COEFS.iter().map(|&(w, c)| (id(w), vec![c, -c])).collect();
    ToyClassifier::new(
        vec!["negative".into(), "positive".into()],
        weights,
        vec![0.0, 0.3],
        ToyOutput::Identity,
    )
}

/// Row cache off (every explanation pays for its rows), 32-token inputs, up to 5000 samples.
pub fn config() -> Config {
    let mut config = Config::default();
    config.engine.cache_rows = 0;
    config.limits.max_input_tokens = 32;
    config.limits.max_num_samples = 5000;
    config
}
