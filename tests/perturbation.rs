//! Occlusion, counterfactuals and Kernel SHAP against known answers.
//!
//! * The linear toy classifier with `ToyOutput::Identity` is additive in its tokens: occlusion
//!   deltas and Shapley values equal each word's coefficient times its occurrences, exactly,
//!   whether SHAP enumerates or samples (an exactly linear value function is fitted without
//!   residual by any full-rank design).
//! * Exact SHAP on a real model (the tiny BERT fixture and the default model) equals the
//!   brute-force Shapley formula computed here from every coalition's value.
//! * Sampled SHAP on ~14 features is compared with the exact values; its error shrinks as
//!   `max_evals` grows.
//! * The flip search finds the deciding word, the two needed words and no third, and says so
//!   when its cap is too small.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use glassbox::explain::counterfactual::{
    explain_counterfactual, plain_encoder, ByteSpan, CounterfactualKind, CounterfactualParams,
    FlipResult, FlipSearchParams, FlipStrategy, Substitution,
};
use glassbox::explain::features::{FeatureKind, FeatureSet, Removal};
use glassbox::explain::occlusion::{explain_occlusion, OcclusionMode, OcclusionParams};
use glassbox::explain::perturbation::PerturbError;
use glassbox::explain::shap::{explain_shap, ShapExplanation, ShapParams};
use glassbox::explain::{DirectEvaluator, Evaluator};
use glassbox::model::config::ZeroShotConfig;
use glassbox::model::loader::{load_model, LoadOptions};
use glassbox::model::toy::{ToyClassifier, ToyOutput};
use glassbox::model::{Classifier, LoadedModel, TextEncoder};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bert() -> &'static TextEncoder {
    static ENC: OnceLock<TextEncoder> = OnceLock::new();
    ENC.get_or_init(|| {
        TextEncoder::from_file(
            &root().join("tests/fixtures/tiny/tiny-bert-cls/tokenizer.json"),
            512,
        )
        .unwrap()
    })
}

fn tiny() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        let dir = root().join("tests/fixtures/tiny/tiny-bert-cls");
        load_model(
            dir.to_str().unwrap(),
            &ZeroShotConfig::default(),
            &LoadOptions::default(),
        )
        .expect("tiny fixture loads")
    })
}

fn minilm() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        let dir = root().join("models/all-MiniLM-L6-v2");
        load_model(
            dir.to_str().unwrap(),
            &ZeroShotConfig::default(),
            &LoadOptions::default(),
        )
        .expect("default model (run `make model`)")
    })
}

/// The id of a word the BERT vocabulary holds as one token.
fn id(word: &str) -> u32 {
    let e = bert().encode(word, false).unwrap();
    assert_eq!(e.len(), 3, "{word} is one token: {:?}", e.tokens);
    e.ids[1]
}

/// Identity-output toy: label 0 is `bias + sum coef(word)` (additive), label 1 is `-2 *`
/// that.
fn additive(coefs: &[(&str, f32)], bias: f32) -> Arc<ToyClassifier> {
    let weights = coefs
        .iter()
        .map(|&(w, c)| (id(w), vec![c, -2.0 * c]))
        .collect();
    Arc::new(ToyClassifier::new(
        vec!["a".into(), "b".into()],
        weights,
        vec![bias, -2.0 * bias],
        ToyOutput::Identity,
    ))
}

/// Softmax toy over `[negative, positive]` logits: a real (non-additive) classifier.
fn softmax_toy(logits: &[(&str, [f32; 2])], bias: [f32; 2]) -> Arc<ToyClassifier> {
    let weights: HashMap<u32, Vec<f32>> =
        logits.iter().map(|&(w, l)| (id(w), l.to_vec())).collect();
    Arc::new(ToyClassifier::new(
        vec!["negative".into(), "positive".into()],
        weights,
        bias.to_vec(),
        ToyOutput::Softmax,
    ))
}

fn words(set: &FeatureSet) -> Vec<&str> {
    set.features().iter().map(|f| f.text.as_str()).collect()
}

#[track_caller]
fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} (|diff| {} > {tol})",
        (got - want).abs()
    );
}

// ---------------------------------------------------------------------------------------------
// Occlusion.
// ---------------------------------------------------------------------------------------------

const COEFS: [(&str, f32); 8] = [
    ("good", 0.8),
    ("movie", 0.1),
    ("had", -0.05),
    ("a", 0.0),
    ("bad", -0.6),
    ("plot", 0.3),
    ("and", 0.02),
    ("cast", 0.25),
];

fn coef(word: &str) -> f64 {
    COEFS
        .iter()
        .find(|(w, _)| *w == word)
        .map_or(0.0, |&(_, c)| c as f64)
}

#[tokio::test]
async fn occlusion_deltas_equal_the_coefficients() {
    let text = "the good movie had a bad plot and a good cast";
    let model = additive(&COEFS, 0.4);
    let encoding = bert().encode(text, false).unwrap();
    let params = OcclusionParams::default();
    let features = params.feature_set(text, &encoding);
    let evaluator = DirectEvaluator::new(model.clone());
    let out = explain_occlusion(&features, bert(), false, &params, 100, &[0, 1], &evaluator)
        .await
        .unwrap();
    assert_eq!(out.params.mode, OcclusionMode::LeaveOneOut);
    assert_eq!(out.occlusions.len(), features.len());
    assert_eq!(out.distinct_rows, features.len() + 1);
    assert_eq!(evaluator.usage().model_evaluations, out.distinct_rows);
    for (i, o) in out.occlusions.iter().enumerate() {
        let f = &features.features()[i];
        let want = coef(&f.text) * f.spans.len() as f64;
        close(&f.text, o.outcome.deltas[0], want, 1e-5);
        close(&f.text, o.outcome.deltas[1], -2.0 * want, 1e-5);
        assert_eq!(o.features, vec![i]);
        assert_eq!(o.removed, f.text);
        // The edited text is the original without every occurrence of the word.
        let edited = o.outcome.text.as_deref().unwrap();
        assert!(!edited.split(' ').any(|w| w == f.text), "{edited}");
    }
    // "good" appears twice: removing it removes both.
    let good = words(&features).iter().position(|&w| w == "good").unwrap();
    close("good", out.occlusions[good].outcome.deltas[0], 1.6, 1e-5);
    assert_eq!(
        out.occlusions[good].outcome.text.as_deref(),
        Some("the  movie had a bad plot and a  cast")
    );

    // Windows of two occurrences, stride 1: the delta is the sum over the window.
    let params = OcclusionParams {
        window: Some(2),
        ..Default::default()
    };
    let positional = params.feature_set(text, &encoding);
    assert_eq!(positional.len(), 11);
    let out = explain_occlusion(
        &positional,
        bert(),
        false,
        &params,
        100,
        &[0],
        &DirectEvaluator::new(model.clone()),
    )
    .await
    .unwrap();
    assert_eq!(out.params.mode, OcclusionMode::Windows);
    assert!(!out.params.bow);
    assert_eq!(out.occlusions.len(), 10);
    let all: Vec<&str> = text.split(' ').collect();
    for (k, o) in out.occlusions.iter().enumerate() {
        assert_eq!(o.features, vec![k, k + 1]);
        assert_eq!(o.removed, format!("{} {}", all[k], all[k + 1]));
        close(
            &o.removed,
            o.outcome.deltas[0],
            coef(all[k]) + coef(all[k + 1]),
            1e-5,
        );
    }
    // Stride 3, window 2: 0-1, 3-4, 6-7, 9-10.
    let params = OcclusionParams {
        window: Some(2),
        stride: Some(3),
        ..Default::default()
    };
    let out = explain_occlusion(
        &positional,
        bert(),
        false,
        &params,
        100,
        &[0],
        &DirectEvaluator::new(model),
    )
    .await
    .unwrap();
    let starts: Vec<usize> = out.occlusions.iter().map(|o| o.features[0]).collect();
    assert_eq!(starts, vec![0, 3, 6, 9]);
}

#[tokio::test]
async fn occlusion_reports_flips_and_masks_tokens() {
    // One word decides: removing "terrible" flips negative to positive.
    let model = softmax_toy(
        &[("terrible", [2.0, 0.0]), ("movie", [0.0, 0.1])],
        [0.0, 0.5],
    );
    let text = "the movie was terrible";
    let encoding = bert().encode(text, false).unwrap();
    let params = OcclusionParams {
        mask: Removal::MaskToken,
        ..Default::default()
    };
    let features = params.feature_set(text, &encoding);
    let out = explain_occlusion(
        &features,
        bert(),
        false,
        &params,
        100,
        &[0],
        &DirectEvaluator::new(model),
    )
    .await
    .unwrap();
    assert_eq!(out.flips, 1);
    let flipped: Vec<&str> = out
        .occlusions
        .iter()
        .filter(|o| o.outcome.flipped)
        .map(|o| o.removed.as_str())
        .collect();
    assert_eq!(flipped, ["terrible"]);
    let t = out
        .occlusions
        .iter()
        .find(|o| o.removed == "terrible")
        .unwrap();
    assert_eq!(t.outcome.label, 1);
    assert!(t.outcome.deltas[0] > 0.3);
    // Masked tokens: no text to show.
    assert!(t.outcome.text.is_none());
    // A cap below the number of removals is a 422 on the text.
    let err = explain_occlusion(
        &features,
        bert(),
        false,
        &params,
        3,
        &[0],
        &DirectEvaluator::new(additive(&COEFS, 0.0)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, PerturbError::Invalid { ref field, .. } if field == "text"),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Kernel SHAP.
// ---------------------------------------------------------------------------------------------

async fn shap(
    classifier: Arc<dyn Classifier>,
    encoder: &TextEncoder,
    text: &str,
    params: &ShapParams,
    targets: &[usize],
) -> (ShapExplanation, FeatureSet) {
    let encoding = encoder.encode(text, false).unwrap();
    let features = params.feature_set(text, &encoding);
    let evaluator = DirectEvaluator::new(classifier);
    let out = explain_shap(
        &features, encoder, false, params, 20_000, targets, &evaluator,
    )
    .await
    .unwrap();
    assert_eq!(evaluator.usage().model_evaluations, out.distinct_rows);
    (out, features)
}

#[tokio::test]
async fn shap_of_an_additive_model_is_the_coefficients_exact_and_sampled() {
    let text = "the good movie had a bad plot and a good cast";
    let model = additive(&COEFS, 0.4);
    // 9 distinct words: 512 coalitions, exact at the default budget.
    let (out, features) = shap(model.clone(), bert(), text, &ShapParams::default(), &[0, 1]).await;
    assert!(out.exact);
    assert!(out.sampling.is_none());
    assert_eq!(features.len(), 9);
    assert_eq!(out.coalitions, 512);
    for (l, scale) in [(0, 1.0), (1, -2.0)] {
        let label = &out.labels[l];
        close("base_value", label.base_value, 0.4 * scale, 1e-6);
        assert!(label.additivity_residual < 1e-9);
        for v in &label.values {
            let f = &features.features()[v.feature];
            let want = scale * coef(&f.text) * f.spans.len() as f64;
            close(&f.text, v.value, want, 1e-5);
        }
    }

    // 14 distinct words, 300 coalitions: sampled, and still exact for an additive model.
    let coefs: Vec<(&str, f32)> = [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "red",
        "green", "blue", "black",
    ]
    .iter()
    .enumerate()
    .map(|(k, &w)| (w, 0.1 * k as f32 - 0.6))
    .collect();
    let model = additive(&coefs, -0.2);
    let text14 = coefs.iter().map(|c| c.0).collect::<Vec<_>>().join(" ");
    let params = ShapParams {
        max_evals: 300,
        seed: Some(5),
        ..Default::default()
    };
    let (out, features) = shap(model, bert(), &text14, &params, &[0]).await;
    assert!(!out.exact);
    let sampling = out.sampling.as_ref().unwrap();
    assert_eq!(sampling.enumerated_sizes, vec![1, 13]);
    assert!(out.coalitions <= 300);
    assert_eq!(features.len(), 14);
    for (v, &(w, c)) in out.labels[0].values.iter().zip(&coefs) {
        assert_eq!(v.text, w);
        close(w, v.value, c as f64, 1e-5);
    }
    assert!(out.labels[0].additivity_residual < 1e-9);
}

/// Brute-force Shapley values of label `j` from the value of every coalition, computed with
/// the model directly (not through the method's runner).
fn brute_force_shapley(
    classifier: &dyn Classifier,
    features: &FeatureSet,
    encoder: &TextEncoder,
    j: usize,
) -> Vec<f64> {
    let d = features.len();
    let perturber = features.perturber(encoder, Removal::Remove, false).unwrap();
    let masks: Vec<Vec<bool>> = (0..1usize << d)
        .map(|bits| (0..d).map(|k| bits & (1 << k) != 0).collect())
        .collect();
    let rows: Vec<_> = masks
        .iter()
        .map(|m| perturber.perturb(m).unwrap().row)
        .collect();
    let mut v = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(16) {
        v.extend(
            classifier
                .forward(chunk)
                .unwrap()
                .into_iter()
                .map(|o| o.probabilities[j] as f64),
        );
    }
    let fact = |n: usize| (1..=n).map(|k| k as f64).product::<f64>();
    (0..d)
        .map(|i| {
            (0..1usize << d)
                .filter(|bits| bits & (1 << i) == 0)
                .map(|bits| {
                    let s = (bits as u64).count_ones() as usize;
                    fact(s) * fact(d - s - 1) / fact(d) * (v[bits | (1 << i)] - v[bits])
                })
                .sum()
        })
        .collect()
}

#[tokio::test]
async fn exact_shap_equals_the_shapley_formula_on_real_models() {
    for (name, model, text) in [
        ("tiny", tiny(), "the waiter was rude but the food was great"),
        (
            "minilm",
            minilm(),
            "The soup was cold and the waiter was rude.",
        ),
    ] {
        let (out, features) = shap(
            model.classifier.clone(),
            &model.encoder,
            text,
            &ShapParams::default(),
            &[0, 1],
        )
        .await;
        assert!(out.exact, "{name}");
        assert!(features.len() >= 6, "{name}: {:?}", words(&features));
        for (l, label) in out.labels.iter().enumerate() {
            let want = brute_force_shapley(&*model.classifier, &features, &model.encoder, l);
            let got: Vec<f64> = label.values.iter().map(|v| v.value).collect();
            let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(scale > 1e-4, "{name}: the values are not all ~0 ({want:?})");
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                // f32 model outputs, batched differently here: 1e-6 of float noise at most.
                close(&format!("{name} label {l} feature {k}"), *g, *w, 1e-5);
            }
            assert!(
                label.additivity_residual < 1e-9,
                "{}",
                label.additivity_residual
            );
            close(
                "sum",
                label.base_value + got.iter().sum::<f64>(),
                label.probability,
                1e-9,
            );
        }
    }
}

/// 14 distinct words with assorted logits: a non-additive (softmax) toy.
fn fourteen() -> (Arc<ToyClassifier>, String) {
    let vocab = [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "red",
        "green", "blue", "black",
    ];
    let logits: Vec<(&str, [f32; 2])> = vocab
        .iter()
        .enumerate()
        .map(|(k, &w)| {
            let a = ((k * 7) % 5) as f32 * 0.4 - 0.8;
            let b = ((k * 3) % 4) as f32 * 0.3 - 0.45;
            (w, [a, b])
        })
        .collect();
    (softmax_toy(&logits, [0.2, -0.1]), vocab.join(" "))
}

/// Largest absolute difference between two value lists.
fn max_err(a: &ShapExplanation, b: &ShapExplanation) -> f64 {
    a.labels[0]
        .values
        .iter()
        .zip(&b.labels[0].values)
        .map(|(x, y)| (x.value - y.value).abs())
        .fold(0.0, f64::max)
}

#[tokio::test]
async fn sampled_shap_approaches_the_exact_values_on_14_features() {
    let (model, text) = fourteen();
    let exact_params = ShapParams {
        max_evals: 1 << 14,
        ..Default::default()
    };
    let (exact, features) = shap(model.clone(), bert(), &text, &exact_params, &[1]).await;
    assert_eq!(features.len(), 14);
    assert!(exact.exact);
    let scale = exact.labels[0]
        .values
        .iter()
        .fold(0.0f64, |m, v| m.max(v.value.abs()));
    let mut errors = Vec::new();
    for max_evals in [128, 512, 2048] {
        let mut total = 0.0;
        for seed in 0..4 {
            let params = ShapParams {
                max_evals,
                seed: Some(seed),
                ..Default::default()
            };
            let (out, _) = shap(model.clone(), bert(), &text, &params, &[1]).await;
            assert!(!out.exact);
            assert!(out.coalitions <= max_evals);
            assert!(out.labels[0].additivity_residual < 1e-9);
            total += max_err(&out, &exact);
        }
        errors.push(total / 4.0);
    }
    eprintln!("largest value {scale:.4}; mean max error at 128/512/2048: {errors:?}");
    // The error must shrink with the budget (about as 1/sqrt(samples): measured 0.020, 0.0074
    // and 0.0033 for a largest value of 0.25). At 2048 of 16384 coalitions (sizes 1, 2, 12 and
    // 13 enumerated, the rest sampled) the mean largest error is ~1.3% of the largest value;
    // 5% leaves room for other seeds and platforms. A biased sampler (the kernel counted twice)
    // is caught by the averaged test in `explain::shap`, which sees the bias without the noise.
    assert!(errors[0] > errors[1] && errors[1] > errors[2], "{errors:?}");
    assert!(errors[2] < 0.05 * scale, "{errors:?} vs {scale}");
}

#[tokio::test]
async fn sampled_shap_is_close_to_exact_on_the_default_model() {
    // 8 distinct words: 256 coalitions for the exact values, fast enough in a debug build
    // (14 words are the ignored test below).
    let text = "The soup was cold and the waiter was rude.";
    let m = minilm();
    let (exact, features) = shap(
        m.classifier.clone(),
        &m.encoder,
        text,
        &ShapParams::default(),
        &[0],
    )
    .await;
    assert_eq!(features.len(), 8, "{:?}", words(&features));
    assert!(exact.exact);
    let scale = exact.labels[0]
        .values
        .iter()
        .fold(0.0f64, |m, v| m.max(v.value.abs()));
    let mut errors = Vec::new();
    for max_evals in [40, 160] {
        let params = ShapParams {
            max_evals,
            seed: Some(1),
            ..Default::default()
        };
        let (out, _) = shap(m.classifier.clone(), &m.encoder, text, &params, &[0]).await;
        assert!(!out.exact);
        errors.push(max_err(&out, &exact));
    }
    eprintln!("largest value {scale:.4}; max error at 40/160: {errors:?}");
    // Measured over seeds 0-3 at 160 of 256 coalitions: 2.5-4% of the largest value (0.54).
    assert!(errors[1] < errors[0], "{errors:?}");
    assert!(errors[1] < 0.1 * scale, "{errors:?} vs {scale}");
}

#[tokio::test]
#[ignore = "slow: 16384 coalitions of the default model; run with make test-slow"]
async fn sampled_shap_on_14_words_of_the_default_model() {
    let text = "The plot was thin, the dialogue clumsy, yet every actor gave it real heart.";
    let m = minilm();
    let exact_params = ShapParams {
        max_evals: 1 << 14,
        ..Default::default()
    };
    let (exact, features) = shap(m.classifier.clone(), &m.encoder, text, &exact_params, &[1]).await;
    assert_eq!(features.len(), 14, "{:?}", words(&features));
    assert!(exact.exact);
    let scale = exact.labels[0]
        .values
        .iter()
        .fold(0.0f64, |m, v| m.max(v.value.abs()));
    let mut errors = Vec::new();
    for max_evals in [256, 1024, 4096] {
        let params = ShapParams {
            max_evals,
            seed: Some(0),
            ..Default::default()
        };
        let (out, _) = shap(m.classifier.clone(), &m.encoder, text, &params, &[1]).await;
        errors.push(max_err(&out, &exact));
    }
    eprintln!("largest value {scale:.4}; max error at 256/1024/4096: {errors:?}");
    // Measured with seed 0: 0.018, 0.015 and 0.0041 for a largest value of 0.43 (1% at 4096).
    assert!(errors[2] < errors[0], "{errors:?}");
    assert!(errors[2] < 0.05 * scale, "{errors:?} vs {scale}");
}

#[tokio::test]
async fn shap_is_reproducible_from_its_seed() {
    let (model, text) = fourteen();
    let run = |seed| {
        let model = model.clone();
        let text = text.clone();
        async move {
            let params = ShapParams {
                max_evals: 200,
                seed: Some(seed),
                ..Default::default()
            };
            shap(model, bert(), &text, &params, &[0]).await.0
        }
    };
    let a = run(3).await;
    let b = run(3).await;
    let c = run(4).await;
    assert_eq!(a, b);
    assert_eq!(a.params.seed, 3);
    assert_ne!(a.labels, c.labels);
    // Without a seed one is drawn and echoed; sending it back reproduces the values.
    let (drawn, _) = shap(
        model.clone(),
        bert(),
        &text,
        &ShapParams {
            max_evals: 200,
            ..Default::default()
        },
        &[0],
    )
    .await;
    let again = run(drawn.params.seed).await;
    assert_eq!(drawn.labels, again.labels);
    // The tiny real model too.
    let t = tiny();
    let params = ShapParams {
        max_evals: 100,
        seed: Some(11),
        ..Default::default()
    };
    let x = shap(t.classifier.clone(), &t.encoder, &text, &params, &[2])
        .await
        .0;
    let y = shap(t.classifier.clone(), &t.encoder, &text, &params, &[2])
        .await
        .0;
    assert_eq!(x, y);
}

#[tokio::test]
async fn shap_validates_its_budget_and_handles_one_feature() {
    let model = additive(&COEFS, 0.4);
    let text = "the good movie had a bad plot and a good cast";
    let encoding = bert().encode(text, false).unwrap();
    let features = ShapParams::default().feature_set(text, &encoding);
    let evaluator = DirectEvaluator::new(model.clone());
    for (max_evals, cap) in [(1, 20_000), (30_000, 20_000), (9, 20_000)] {
        let params = ShapParams {
            max_evals,
            ..Default::default()
        };
        let err = explain_shap(&features, bert(), false, &params, cap, &[0], &evaluator)
            .await
            .unwrap_err();
        assert!(
            matches!(err, PerturbError::Invalid { ref field, .. } if field == "max_evals"),
            "{max_evals}: {err:?}"
        );
    }
    assert_eq!(
        evaluator.usage().model_evaluations,
        0,
        "bad requests cost nothing"
    );
    // One feature: phi = f(x) - f(empty).
    let (out, _) = shap(model, bert(), "good!", &ShapParams::default(), &[0]).await;
    assert!(out.exact);
    close("good", out.labels[0].values[0].value, 0.8, 1e-6);
    assert_eq!(out.coalitions, 2);
}

// ---------------------------------------------------------------------------------------------
// Counterfactuals.
// ---------------------------------------------------------------------------------------------

async fn counterfactual(
    classifier: Arc<dyn Classifier>,
    text: &str,
    params: &CounterfactualParams,
) -> Result<
    (
        glassbox::explain::counterfactual::CounterfactualExplanation,
        FeatureSet,
    ),
    PerturbError,
> {
    let encoding = bert().encode(text, false).unwrap();
    let features = params.feature_set(text, &encoding);
    let evaluator = DirectEvaluator::new(classifier);
    let out = explain_counterfactual(
        &features,
        bert(),
        false,
        params,
        20_000,
        &[0],
        &evaluator,
        plain_encoder(bert(), false),
    )
    .await?;
    assert_eq!(evaluator.usage().model_evaluations, out.distinct_rows);
    Ok((out, features))
}

fn flip(params: FlipSearchParams) -> CounterfactualParams {
    CounterfactualParams {
        flip_search: Some(params),
        ..Default::default()
    }
}

fn found_words(r: &FlipResult) -> Vec<&str> {
    let mut w: Vec<&str> = r.words.iter().map(String::as_str).collect();
    w.sort_unstable();
    w
}

#[tokio::test]
async fn edits_and_substitutions_report_known_deltas() {
    let model = additive(&COEFS, 0.4);
    let text = "a good movie with a good cast";
    let sub = |feature, span, r: &[&str]| Substitution {
        feature,
        span,
        replacements: r.iter().map(|s| s.to_string()).collect(),
    };
    let params = CounterfactualParams {
        edits: vec!["a bad movie".into()],
        substitutions: vec![
            // "good" (feature 1) everywhere.
            sub(Some(1), None, &["bad", "plot"]),
            // "cast" by byte span 25..29.
            sub(None, Some(ByteSpan { start: 25, end: 29 }), &["movie"]),
        ],
        combinations: true,
        ..Default::default()
    };
    let (out, features) = counterfactual(model, text, &params).await.unwrap();
    assert_eq!(words(&features)[1], "good");
    let base = 0.4 + 2.0 * 0.8 + 0.1 + 0.25;
    let want = [
        // (kind, text, f_0)
        (CounterfactualKind::Edit, "a bad movie", 0.4 - 0.6 + 0.1),
        (
            CounterfactualKind::Substitution,
            "a bad movie with a bad cast",
            0.4 - 1.2 + 0.1 + 0.25,
        ),
        (
            CounterfactualKind::Substitution,
            "a plot movie with a plot cast",
            0.4 + 0.6 + 0.1 + 0.25,
        ),
        (
            CounterfactualKind::Substitution,
            "a good movie with a good movie",
            0.4 + 1.6 + 0.2,
        ),
        (
            CounterfactualKind::Combination,
            "a bad movie with a bad movie",
            0.4 - 1.2 + 0.2,
        ),
        (
            CounterfactualKind::Combination,
            "a plot movie with a plot movie",
            0.4 + 0.6 + 0.2,
        ),
    ];
    assert_eq!(out.counterfactuals.len(), want.len());
    for (c, (kind, t, f)) in out.counterfactuals.iter().zip(want) {
        assert_eq!(c.kind, kind);
        assert_eq!(c.outcome.text.as_deref(), Some(t));
        close(t, c.outcome.probabilities[0] as f64, f, 1e-5);
        close(t, c.outcome.deltas[0], base - f, 1e-5);
    }
    let combos = out.combinations.unwrap();
    assert_eq!(
        (combos.evaluated, combos.total, combos.truncated),
        (2, 2, false)
    );
    assert_eq!(out.counterfactuals[0].edit, Some(0));
    assert_eq!(out.counterfactuals[4].applied.len(), 2);
}

#[tokio::test]
async fn bad_substitutions_name_their_field() {
    let model = additive(&COEFS, 0.4);
    let text = "a good movie";
    let sub = |feature, span| CounterfactualParams {
        substitutions: vec![Substitution {
            feature,
            span,
            replacements: vec!["x".into()],
        }],
        ..Default::default()
    };
    let cases = [
        (sub(Some(3), None), "substitutions[0].feature"),
        (
            sub(None, Some(ByteSpan { start: 5, end: 40 })),
            "substitutions[0].span",
        ),
        (
            sub(None, Some(ByteSpan { start: 4, end: 2 })),
            "substitutions[0].span",
        ),
        (
            CounterfactualParams {
                edits: vec!["   ".into()],
                ..Default::default()
            },
            "edits[0]",
        ),
        (
            CounterfactualParams {
                flip_search: Some(FlipSearchParams {
                    attribution: Some(vec![1.0]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "flip_search.attribution",
        ),
    ];
    for (params, want) in cases {
        match counterfactual(model.clone(), text, &params).await {
            Err(PerturbError::Invalid { field, .. }) => assert_eq!(field, want),
            other => panic!("{want}: {other:?}"),
        }
    }
    // A span inside a multi-byte character, and overlapping substitutions when combined.
    let text = "a gööd movie";
    match counterfactual(
        model.clone(),
        text,
        &sub(None, Some(ByteSpan { start: 3, end: 4 })),
    )
    .await
    {
        Err(PerturbError::Invalid { field, message }) => {
            assert_eq!(field, "substitutions[0].span");
            assert!(message.contains("UTF-8 bytes"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let overlapping = CounterfactualParams {
        substitutions: vec![
            Substitution {
                feature: Some(1),
                span: None,
                replacements: vec!["x".into()],
            },
            Substitution {
                feature: None,
                span: Some(ByteSpan { start: 0, end: 3 }),
                replacements: vec!["y".into()],
            },
        ],
        combinations: true,
        ..Default::default()
    };
    match counterfactual(model, text, &overlapping).await {
        Err(PerturbError::Invalid { field, .. }) => assert_eq!(field, "substitutions[1]"),
        other => panic!("{other:?}"),
    }
}

/// negative/positive: "bad" and "awful" push to negative, and only both removed flip it.
fn two_needed() -> Arc<ToyClassifier> {
    softmax_toy(
        &[
            ("bad", [1.0, 0.0]),
            ("awful", [1.0, 0.0]),
            ("movie", [0.0, 0.1]),
            ("plot", [0.0, 0.2]),
        ],
        [0.0, 0.5],
    )
}
const TWO_NEEDED: &str = "bad movie with an awful plot";

#[tokio::test]
async fn flip_search_finds_the_one_deciding_word() {
    let model = softmax_toy(
        &[
            ("terrible", [2.0, 0.0]),
            ("movie", [0.0, 0.1]),
            ("was", [0.0, 0.05]),
        ],
        [0.0, 0.5],
    );
    for strategy in [
        FlipStrategy::Auto,
        FlipStrategy::Exact,
        FlipStrategy::Greedy,
    ] {
        let params = flip(FlipSearchParams {
            strategy,
            ..Default::default()
        });
        let (out, _) = counterfactual(model.clone(), "the movie was terrible", &params)
            .await
            .unwrap();
        let r = out.flip_search.unwrap();
        assert!(r.found && r.complete && r.minimal, "{r:?}");
        assert_eq!(found_words(&r), ["terrible"], "{strategy:?}");
        let result = r.result.unwrap();
        assert!(result.flipped);
        assert_eq!(result.label, 1);
        assert_eq!(result.text.as_deref(), Some("the movie was "));
        match strategy {
            FlipStrategy::Greedy => assert_eq!(r.order.as_deref(), Some("occlusion")),
            _ => {
                assert_eq!(r.strategy, FlipStrategy::Exact);
                assert_eq!(r.alternatives, Some(0));
                assert_eq!(r.searched_size, Some(1));
                assert_eq!(r.evaluations, 4, "only the sets of one word");
            }
        }
    }
}

#[tokio::test]
async fn flip_search_needs_both_words_and_no_third() {
    let model = two_needed();
    let (out, features) = counterfactual(
        model.clone(),
        TWO_NEEDED,
        &flip(FlipSearchParams::default()),
    )
    .await
    .unwrap();
    assert_eq!(features.len(), 6);
    let r = out.flip_search.unwrap();
    assert_eq!(r.strategy, FlipStrategy::Exact);
    assert!(r.found && r.complete);
    assert_eq!(found_words(&r), ["awful", "bad"]);
    assert_eq!(r.alternatives, Some(0));
    assert_eq!(r.searched_size, Some(2));
    // Sets of one and of two: 6 + 15.
    assert_eq!(r.evaluations, 21);
    assert_eq!(
        r.result.unwrap().text.as_deref(),
        Some(" movie with an  plot")
    );

    // Greedy by occlusion, and greedy from a misleading attribution (movie and plot first):
    // pruning returns them.
    let attribution = vec![0.1, 5.0, 0.0, 0.0, 0.2, 4.0];
    for given in [None, Some(attribution)] {
        let params = flip(FlipSearchParams {
            strategy: FlipStrategy::Greedy,
            attribution: given.clone(),
            ..Default::default()
        });
        let (out, features) = counterfactual(model.clone(), TWO_NEEDED, &params)
            .await
            .unwrap();
        let r = out.flip_search.unwrap();
        assert!(r.found && r.minimal, "{r:?}");
        assert_eq!(found_words(&r), ["awful", "bad"], "{given:?}");
        assert_eq!(
            r.order.as_deref(),
            Some(if given.is_some() {
                "attribution"
            } else {
                "occlusion"
            })
        );
        assert_minimal(&model, &features, &r.features).await;
    }
}

/// The set flips, and returning any one of its features loses the flip.
async fn assert_minimal(model: &Arc<ToyClassifier>, features: &FeatureSet, set: &[usize]) {
    let perturber = features.perturber(bert(), Removal::Remove, false).unwrap();
    let d = features.len();
    let label_without = |removed: &[usize]| {
        let keep: Vec<bool> = (0..d).map(|i| !removed.contains(&i)).collect();
        let row = perturber.perturb(&keep).unwrap().row;
        let p = model.forward(&[row]).unwrap().remove(0).probabilities;
        usize::from(p[1] > p[0])
    };
    let original = label_without(&[]);
    assert_ne!(label_without(set), original, "the set flips");
    for &f in set {
        let smaller: Vec<usize> = set.iter().copied().filter(|&x| x != f).collect();
        assert_eq!(
            label_without(&smaller),
            original,
            "returning {f} loses the flip"
        );
    }
}

#[tokio::test]
async fn greedy_on_many_words_still_flips_and_is_minimal() {
    // 16 words, more than the exact search takes: greedy by occlusion, then pruned.
    let vocab = [
        "bad", "awful", "movie", "plot", "one", "two", "three", "four", "five", "six", "seven",
        "eight", "nine", "ten", "red", "blue",
    ];
    let logits: Vec<(&str, [f32; 2])> = vocab
        .iter()
        .enumerate()
        .map(|(k, &w)| (w, [0.3 + 0.05 * (k % 3) as f32, 0.1 * (k % 4) as f32]))
        .collect();
    let model = softmax_toy(&logits, [0.0, 1.2]);
    let text = vocab.join(" ");
    let (out, features) = counterfactual(model.clone(), &text, &flip(FlipSearchParams::default()))
        .await
        .unwrap();
    assert_eq!(features.len(), 16);
    let r = out.flip_search.unwrap();
    assert_eq!(r.strategy, FlipStrategy::Greedy);
    assert!(r.found && r.minimal && r.complete, "{r:?}");
    assert!(r.result.as_ref().unwrap().flipped);
    assert!(r.evaluations <= 4096);
    assert_minimal(&model, &features, &r.features).await;
}

#[tokio::test]
async fn a_cap_too_small_says_so() {
    let model = two_needed();
    // Exact: the 6 single words fit in 10 evaluations, the 15 pairs do not.
    let params = flip(FlipSearchParams {
        strategy: FlipStrategy::Exact,
        max_evals: 10,
        ..Default::default()
    });
    let (out, _) = counterfactual(model.clone(), TWO_NEEDED, &params)
        .await
        .unwrap();
    let r = out.flip_search.unwrap();
    assert!(!r.found && !r.complete, "{r:?}");
    assert_eq!(r.searched_size, Some(1));
    assert!(r.features.is_empty() && r.result.is_none());
    assert!(r.message.contains("max_evals = 10"), "{}", r.message);
    assert_eq!(r.evaluations, 6);
    // Auto: 63 sets do not fit in 5, so greedy, whose occlusion order needs 6.
    let params = flip(FlipSearchParams {
        max_evals: 5,
        ..Default::default()
    });
    let (out, _) = counterfactual(model.clone(), TWO_NEEDED, &params)
        .await
        .unwrap();
    let r = out.flip_search.unwrap();
    assert_eq!(r.strategy, FlipStrategy::Greedy);
    assert!(!r.found && !r.complete, "{r:?}");
    assert!(r.evaluations <= 5);
    // Greedy with an attribution that puts the needed words last: the cap stops it.
    let params = flip(FlipSearchParams {
        strategy: FlipStrategy::Greedy,
        max_evals: 3,
        attribution: Some(vec![0.0, 3.0, 2.0, 1.0, -1.0, 2.5]),
    });
    let (out, _) = counterfactual(model.clone(), TWO_NEEDED, &params)
        .await
        .unwrap();
    let r = out.flip_search.unwrap();
    assert!(!r.found && !r.complete, "{r:?}");
    assert_eq!(r.evaluations, 3);
    // A label nothing can flip: the exact search is complete and says no set exists.
    let stubborn = softmax_toy(&[("bad", [1.0, 0.0])], [3.0, 0.0]);
    let (out, _) = counterfactual(stubborn, TWO_NEEDED, &flip(FlipSearchParams::default()))
        .await
        .unwrap();
    let r = out.flip_search.unwrap();
    assert!(!r.found && r.complete, "{r:?}");
    assert_eq!(r.searched_size, Some(6));
    assert_eq!(r.evaluations, 63);
}

#[tokio::test]
async fn token_features_and_mask_strategies_work_for_every_method() {
    let t = tiny();
    let text = "the waiter was rude";
    let encoding = t.encoder.encode(text, false).unwrap();
    let evaluator = DirectEvaluator::new(t.classifier.clone());
    let params = ShapParams {
        features: FeatureKind::Tokens,
        mask: Removal::UnkToken,
        ..Default::default()
    };
    let features = params.feature_set(text, &encoding);
    let out = explain_shap(
        &features,
        &t.encoder,
        false,
        &params,
        20_000,
        &[0],
        &evaluator,
    )
    .await
    .unwrap();
    assert_eq!(out.params.features, FeatureKind::Tokens);
    assert_eq!(out.labels[0].values.len(), encoding.len() - 2);
    let params = OcclusionParams {
        features: FeatureKind::Tokens,
        ..Default::default()
    };
    let features = params.feature_set(text, &encoding);
    let out = explain_occlusion(&features, &t.encoder, false, &params, 100, &[0], &evaluator)
        .await
        .unwrap();
    assert_eq!(out.occlusions.len(), encoding.len() - 2);
    assert!(out.occlusions.iter().all(|o| o.outcome.text.is_none()));
}
