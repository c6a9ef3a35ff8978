//! ERASER faithfulness: known answers on the additive toy classifier, and LIME against a
//! random attribution on the default model.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use glassbox::explain::faithfulness::{bin_sizes, faithfulness, Faithfulness};
use glassbox::explain::features::{FeatureSet, Removal};
use glassbox::explain::lime::{explain_lime, LimeParams, NumFeatures, NumSamples};
use glassbox::explain::DirectEvaluator;
use glassbox::model::config::ZeroShotConfig;
use glassbox::model::loader::{load_model, LoadOptions};
use glassbox::model::toy::{ToyClassifier, ToyOutput};
use glassbox::model::TextEncoder;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

fn id(word: &str) -> u32 {
    let e = bert().encode(word, false).unwrap();
    assert_eq!(e.len(), 3, "{word} is one token");
    e.ids[1]
}

const WORDS: [(&str, f32); 10] = [
    ("good", 0.9),
    ("bad", -0.7),
    ("movie", 0.05),
    ("great", 1.3),
    ("plot", 0.0),
    ("boring", -1.1),
    ("fun", 0.6),
    ("acting", 0.2),
    ("dull", -0.4),
    ("superb", 0.75),
];

async fn scores_of(
    features: &FeatureSet,
    attributions: &[(usize, Vec<f64>)],
    classifier: Arc<ToyClassifier>,
    removal: Removal,
) -> Vec<Faithfulness> {
    let perturber = features.perturber(bert(), removal, false).unwrap();
    faithfulness(&perturber, attributions, &DirectEvaluator::new(classifier))
        .await
        .unwrap()
}

/// On an additive model (label 0's "probability" is `bias + sum of the words' coefficients`),
/// comprehensiveness(k) is the sum of the removed words' coefficients, so ranking by the true
/// coefficients gives the largest comprehensiveness and the smallest sufficiency of any
/// ranking, in every bin, and the exact values are known.
#[tokio::test]
async fn true_coefficients_maximise_comprehensiveness_on_an_additive_model() {
    let weights = WORDS.iter().map(|&(w, c)| (id(w), vec![c, 0.0])).collect();
    let toy = Arc::new(ToyClassifier::new(
        vec!["a".into(), "b".into()],
        weights,
        vec![0.3, 0.0],
        ToyOutput::Identity,
    ));
    let text = WORDS.map(|(w, _)| w).join(" ") + ".";
    let encoding = bert().encode(&text, false).unwrap();
    let features = FeatureSet::words(&text, &encoding, true);
    assert_eq!(features.len(), WORDS.len());
    let truth: Vec<f64> = WORDS.iter().map(|&(_, c)| c as f64).collect();

    for removal in [Removal::Remove, Removal::UnkToken] {
        let best = &scores_of(&features, &[(0, truth.clone())], toy.clone(), removal).await[0];
        let mut sorted = truth.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let total: f64 = truth.iter().sum();
        for (bin, &k) in best.bins.iter().zip(&bin_sizes(10)) {
            let top: f64 = sorted[..k].iter().sum();
            assert_eq!(bin.features, k);
            assert!((bin.comprehensiveness - top).abs() < 1e-5, "{bin:?}");
            assert!((bin.sufficiency - (total - top)).abs() < 1e-5, "{bin:?}");
        }
        let aopc: f64 = best.bins.iter().map(|b| b.comprehensiveness).sum::<f64>() / 6.0;
        assert!((best.aopc_comprehensiveness - aopc).abs() < 1e-12);

        // Any other ranking does no better, bin by bin.
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let others: Vec<(usize, Vec<f64>)> = (0..50)
            .map(|_| (0, (0..10).map(|_| rng.random::<f64>()).collect()))
            .collect();
        for other in scores_of(&features, &others, toy.clone(), removal).await {
            for (b, o) in best.bins.iter().zip(&other.bins) {
                assert!(o.comprehensiveness <= b.comprehensiveness + 1e-6);
                assert!(o.sufficiency >= b.sufficiency - 1e-6);
            }
            assert!(other.aopc_comprehensiveness <= best.aopc_comprehensiveness + 1e-6);
        }
        // The reversed ranking is the worst.
        let reversed: Vec<f64> = truth.iter().map(|v| -v).collect();
        let worst = &scores_of(&features, &[(0, reversed)], toy.clone(), removal).await[0];
        assert!(worst.aopc_comprehensiveness < 0.0);
    }
}

/// LIME's weights are a more faithful ranking than random scores on the default model:
/// averaged over the 80 sentences of `sentiment_eval.jsonl`, LIME's AOPC comprehensiveness is
/// higher (fixed seeds; 50 LIME samples per sentence to keep the test short).
#[tokio::test]
async fn lime_beats_a_random_attribution_on_the_default_model() {
    let dir = root().join("models/all-MiniLM-L6-v2");
    let model = load_model(
        dir.to_str().unwrap(),
        &ZeroShotConfig::default(),
        &LoadOptions::default(),
    )
    .expect("default model (run `make model`)");
    let data = std::fs::read_to_string(root().join("tests/fixtures/sentiment_eval.jsonl")).unwrap();
    let texts: Vec<String> = data
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(texts.len(), 80);
    let evaluator = DirectEvaluator::new(model.classifier.clone());
    let params = LimeParams {
        num_samples: NumSamples::Fixed(50),
        num_features: NumFeatures::All,
        seed: Some(0),
        ..Default::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (mut lime_sum, mut random_sum) = (0.0, 0.0);
    for text in &texts {
        let encoding = model.encoder.encode(text, false).unwrap();
        let features = params.feature_set(text, &encoding);
        let original = model
            .classifier
            .forward(&[glassbox::model::Row::new(encoding.ids.clone())])
            .unwrap();
        let p = &original[0].probabilities;
        let target = if p[0] >= p[1] { 0 } else { 1 };
        let lime = explain_lime(
            &features,
            &model.encoder,
            false,
            &params,
            1000,
            &[target],
            &evaluator,
        )
        .await
        .unwrap();
        let mut lime_scores = vec![0.0; features.len()];
        for w in &lime.labels[0].weights {
            lime_scores[w.feature] = w.weight;
        }
        let mut random_scores: Vec<f64> = (0..features.len()).map(|i| i as f64).collect();
        random_scores.shuffle(&mut rng);
        let perturber = features
            .perturber(&model.encoder, Removal::Remove, false)
            .unwrap();
        let out = faithfulness(
            &perturber,
            &[(target, lime_scores), (target, random_scores)],
            &evaluator,
        )
        .await
        .unwrap();
        lime_sum += out[0].aopc_comprehensiveness;
        random_sum += out[1].aopc_comprehensiveness;
    }
    let n = texts.len() as f64;
    println!(
        "mean AOPC comprehensiveness: LIME {:.4}, random {:.4}",
        lime_sum / n,
        random_sum / n
    );
    assert!(lime_sum > random_sum);
}
