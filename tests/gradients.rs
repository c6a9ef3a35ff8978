//! Gradient attributions: input gradients against finite differences (f64, tiny BERT),
//! integrated-gradients completeness and Captum parity on the default model, known answers on
//! a linear model, and gradient jobs through the engine.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use glassbox::engine::{Engine, EngineConfig, EngineError, JobOptions};
use glassbox::explain::gradients::{
    token_attributions, DirectGradients, GradientEvaluator, GradientMethod, GradientParams,
    Quadrature,
};
use glassbox::model::config::ZeroShotConfig;
use glassbox::model::gradients::{
    input_gradients, GradientModel, GradientRow, LinearGradientModel, OutputKind,
};
use glassbox::model::loader::{load_model, LoadOptions, Precision};
use glassbox::model::toy::{ToyClassifier, ToyOutput};
use glassbox::model::{LoadedModel, Row};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: &str, options: LoadOptions) -> LoadedModel {
    let dir = root().join(path);
    load_model(dir.to_str().unwrap(), &ZeroShotConfig::default(), &options)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn minilm() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load("models/all-MiniLM-L6-v2", LoadOptions::default()))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// d F / d embeddings in f64 on the tiny BERT equals central finite differences to a relative
/// error below 1e-4, for the probability and the logit, in a padded batch of two rows.
#[test]
fn tiny_input_gradients_match_central_finite_differences_in_f64() {
    let m = load(
        "tests/fixtures/tiny/tiny-bert-cls",
        LoadOptions {
            dtype: DType::F64,
            ..Default::default()
        },
    );
    let ec = &m.encoder_classifier;
    let texts = ["The food was cold.", "Great acting, terrible plot!"];
    let rows: Vec<Row> = texts
        .iter()
        .map(|t| Row::new(m.encoder.encode(t, false).unwrap().ids))
        .collect();
    let batch = ec.batch(&rows).unwrap();
    let emb = ec.encoder().word_embeddings(&batch.ids).unwrap();
    assert_eq!(emb.dtype(), DType::F64);
    let (b, l, h) = emb.dims3().unwrap();
    let targets = [2usize, 0];
    let base: Vec<f64> = emb.flatten_all().unwrap().to_vec1().unwrap();

    for output in [OutputKind::Probability, OutputKind::Logit] {
        let (_, grad) = input_gradients(ec, &batch, &emb, &targets, output).unwrap();
        let grad: Vec<f64> = grad.flatten_all().unwrap().to_vec1().unwrap();
        let norm: f64 = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
        assert!(norm > 1e-6, "{output:?}: gradient is zero");

        // Every embedding value of a few real tokens of each row (special ones included).
        let eps = 1e-5;
        let mut got = Vec::new();
        let mut want = Vec::new();
        for row in 0..b {
            let len = batch.lengths[row];
            for tok in [0, 1, len / 2, len - 1] {
                for d in 0..h {
                    let at = (row * l + tok) * h + d;
                    let f = |delta: f64| {
                        let mut e = base.clone();
                        e[at] += delta;
                        let e = Tensor::from_vec(e, (b, l, h), ec.encoder().device()).unwrap();
                        let (out, _) = input_gradients(ec, &batch, &e, &targets, output).unwrap();
                        out.to_vec1::<f64>().unwrap()[row]
                    };
                    want.push((f(eps) - f(-eps)) / (2.0 * eps));
                    got.push(grad[at]);
                }
            }
        }
        let err: f64 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        let scale: f64 = want.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(scale > 1e-6, "{output:?}: finite differences are all zero");
        let rel = err / scale;
        println!("{output:?}: relative L2 error vs finite differences {rel:.2e}");
        assert!(rel < 1e-4, "{output:?}: relative error {rel:e}");
        // Padded positions of the shorter row get no gradient.
        let short = (0..b).min_by_key(|&r| batch.lengths[r]).unwrap();
        if batch.lengths[short] < l {
            let pad_at = (short * l + l - 1) * h;
            let pad: f64 = grad[pad_at..pad_at + h].iter().map(|g| g.abs()).sum();
            assert!(pad < 1e-12, "padding received gradient {pad}");
        }
    }
}

/// The gradient path is per call: the service's f32 model (fused kernels for forward rows)
/// gives the same gradient as the f64 model, and its forward outputs are unchanged.
#[test]
fn f32_service_model_gives_gradients_per_call() {
    let f32m = load("tests/fixtures/tiny/tiny-bert-cls", LoadOptions::default());
    let f64m = load(
        "tests/fixtures/tiny/tiny-bert-cls",
        LoadOptions {
            dtype: DType::F64,
            ..Default::default()
        },
    );
    assert!(!f32m.encoder_classifier.encoder().differentiable());
    let ids = f32m
        .encoder
        .encode("The food was cold.", false)
        .unwrap()
        .ids;
    let rows = |m: &LoadedModel| {
        let model: &dyn GradientModel = m.encoder_classifier.as_ref();
        let row = GradientRow {
            ids: ids.clone(),
            type_ids: vec![0; ids.len()],
            embeddings: model.word_embeddings(&ids).unwrap(),
            target: 1,
        };
        model
            .gradients(&[row], OutputKind::Probability)
            .unwrap()
            .remove(0)
    };
    let a = rows(&f32m);
    let b = rows(&f64m);
    assert!((a.output - b.output).abs() < 1e-5);
    let err: f32 = a
        .gradient
        .iter()
        .zip(&b.gradient)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let scale: f32 = b.gradient.iter().map(|x| x.abs()).fold(0.0, f32::max);
    assert!(err < 1e-3 * scale, "f32 vs f64 gradient: {err} of {scale}");
    let fwd = f32m
        .classifier
        .forward(&[Row::new(ids.clone())])
        .unwrap()
        .remove(0);
    assert!((fwd.probabilities[1] as f64 - a.output).abs() < 1e-5);
}

/// The hand-written gradient path (rows packed without padding, backward for the input only)
/// equals candle's autograd on a padded batch, for every architecture, both outputs and rows
/// of different lengths and token types, at f32.
#[test]
fn taped_gradients_equal_autograd_for_every_architecture() {
    let texts = [
        "The food was cold.",
        "Great acting, terrible plot, and a soundtrack nobody will remember!",
        "Fine.",
    ];
    for path in [
        "tests/fixtures/tiny/tiny-bert-cls",
        "tests/fixtures/tiny/tiny-distilbert-cls",
        "tests/fixtures/tiny/tiny-roberta-cls",
        "models/all-MiniLM-L6-v2",
    ] {
        let m = load(path, LoadOptions::default());
        let ec = &m.encoder_classifier;
        let model: &dyn GradientModel = ec.as_ref();
        let labels = model.num_labels();
        let rows: Vec<GradientRow> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let ids = m.encoder.encode(t, false).unwrap().ids;
                let n = ids.len();
                // Token types 0 then 1 on the second row (BERT has two types).
                let type_ids = (0..n)
                    .map(|j| u32::from(i == 1 && j >= n / 2 && path.contains("bert-cls")))
                    .collect();
                // Off the ids' own embeddings, as integrated gradients' path points are.
                let embeddings = model
                    .word_embeddings(&ids)
                    .unwrap()
                    .iter()
                    .map(|v| v * 0.7)
                    .collect();
                GradientRow {
                    ids,
                    type_ids,
                    embeddings,
                    target: i % labels,
                }
            })
            .collect();
        for output in [OutputKind::Probability, OutputKind::Logit] {
            let taped = ec.taped_gradients(&rows, output).unwrap();
            let reference = ec.autograd_gradients(&rows, output).unwrap();
            for (i, (a, b)) in taped.iter().zip(&reference).enumerate() {
                assert!(
                    (a.output - b.output).abs() < 1e-5 * (1.0 + b.output.abs()),
                    "{path} {output:?} row {i}: output {} vs {}",
                    a.output,
                    b.output
                );
                assert_eq!(a.gradient.len(), b.gradient.len());
                let scale = b.gradient.iter().map(|x| x.abs()).fold(0f32, f32::max);
                let err = a
                    .gradient
                    .iter()
                    .zip(&b.gradient)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(scale > 0.0, "{path} row {i}: zero gradient");
                assert!(
                    err <= 1e-4 * scale,
                    "{path} {output:?} row {i}: taped vs autograd {err} of {scale}"
                );
            }
        }
    }
}

fn ig_golden() -> Value {
    let p = root().join("tests/fixtures/minilm/ig.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    let err: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt();
    err / want.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// Integrated gradients on the default model for the sentences of the Captum golden file.
fn ig_minilm(text: &str, target: usize, quadrature: Quadrature) -> (Vec<f64>, f64, f64, f64) {
    ig_on(minilm(), text, target, quadrature)
}

/// Integrated gradients of one text on a given load of the default model.
fn ig_on(
    m: &LoadedModel,
    text: &str,
    target: usize,
    quadrature: Quadrature,
) -> (Vec<f64>, f64, f64, f64) {
    let encoding = m.encoder.encode(text, false).unwrap();
    let gradients = DirectGradients::new(m.encoder_classifier.clone());
    let params = GradientParams {
        method: GradientMethod::IntegratedGradients,
        output: OutputKind::Probability,
        steps: 50,
        quadrature,
    };
    let row = Row::new(encoding.ids.clone());
    let out = block_on(token_attributions(
        &gradients,
        &row,
        &encoding.special,
        m.encoder.pad_id(),
        &[target],
        params,
    ))
    .unwrap()
    .remove(0);
    let ig = out.ig.unwrap();
    (out.scores, out.output, ig.baseline_output, ig.delta)
}

/// Completeness with Gauss-Legendre at 50 steps: |delta| < 1e-3 |F(x) - F(x')|; parity with
/// Captum's LayerIntegratedGradients per token within 5% relative L2 error.
#[test]
fn ig_gauss_legendre_completeness_and_captum_parity_on_minilm() {
    let golden = ig_golden();
    for s in golden["sentences"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        let target = s["target"].as_u64().unwrap() as usize;
        let ids: Vec<u32> = s["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(minilm().encoder.encode(text, false).unwrap().ids, ids);
        let (scores, f_x, f_base, delta) = ig_minilm(text, target, Quadrature::GaussLegendre);
        let change = f_x - f_base;
        println!(
            "{text}: F(x) {f_x:.6} F(x') {f_base:.6} delta {delta:.3e} ({:.2e} of the change)",
            (delta / change).abs()
        );
        assert!((f_x - s["f_input"].as_f64().unwrap()).abs() < 1e-4);
        assert!((f_base - s["f_baseline"].as_f64().unwrap()).abs() < 1e-4);
        assert!(
            delta.abs() < 1e-3 * change.abs(),
            "completeness: |delta| {delta:e} vs change {change}"
        );
        let want = floats(&s["gausslegendre"]["attributions"]);
        let rel = rel_l2(&scores, &want);
        println!("  per-token relative L2 error vs Captum (Gauss-Legendre): {rel:.2e}");
        assert!(rel < 1e-3, "Captum parity: relative L2 error {rel}");
    }
}

/// With `matmul_precision = "high"` (the service default) the gradient path's dense layers
/// run on AMX tiles, forward and backward: the same completeness and Captum parity hold.
#[test]
fn ig_at_high_precision_keeps_completeness_and_captum_parity() {
    let high = load(
        "models/all-MiniLM-L6-v2",
        LoadOptions {
            precision: Precision::High,
            ..LoadOptions::default()
        },
    );
    if high.precision != Precision::High {
        eprintln!("skipped: this CPU has no AMX bf16, so high runs as highest");
        return;
    }
    let golden = ig_golden();
    for s in golden["sentences"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        let target = s["target"].as_u64().unwrap() as usize;
        let (scores, f_x, f_base, delta) = ig_on(&high, text, target, Quadrature::GaussLegendre);
        let (exact, ..) = ig_minilm(text, target, Quadrature::GaussLegendre);
        let change = f_x - f_base;
        let rel = rel_l2(&scores, &floats(&s["gausslegendre"]["attributions"]));
        let against_f32 = rel_l2(&scores, &exact);
        println!(
            "{text}: delta {:.2e} of the change; relative L2 vs Captum {rel:.2e}, vs f32 \
             products {against_f32:.2e}",
            (delta / change).abs()
        );
        assert!((f_x - s["f_input"].as_f64().unwrap()).abs() < 1e-4);
        assert!((f_base - s["f_baseline"].as_f64().unwrap()).abs() < 1e-4);
        assert!(
            delta.abs() < 1e-3 * change.abs(),
            "completeness: {delta:e} vs {change}"
        );
        assert!(rel < 1e-3, "Captum parity: relative L2 error {rel}");
        assert!(
            against_f32 > 0.0,
            "high changed nothing: is it on the gradient path?"
        );
    }
}

/// Trapezoid: ours is the rule (weights sum to 1), Captum's `riemann_trapezoid` scales every
/// weight by (n-1)/n, so its attributions are 49/50 of ours at 50 steps (the definitional
/// difference, documented in `explain::gradients`). Gauss-Legendre's residual is smaller.
#[test]
fn ig_trapezoid_equals_captum_up_to_its_weight_scale() {
    let golden = ig_golden();
    let s = &golden["sentences"][0];
    let text = s["text"].as_str().unwrap();
    let target = s["target"].as_u64().unwrap() as usize;
    let (scores, f_x, f_base, delta) = ig_minilm(text, target, Quadrature::Trapezoid);
    let want: Vec<f64> = floats(&s["riemann_trapezoid"]["attributions"])
        .iter()
        .map(|v| v * 50.0 / 49.0)
        .collect();
    let rel = rel_l2(&scores, &want);
    println!(
        "trapezoid: delta {delta:.3e} ({:.2e} of the change); vs Captum x 50/49: {rel:.2e}",
        (delta / (f_x - f_base)).abs()
    );
    assert!(rel < 1e-3, "relative L2 error {rel}");
    let (_, _, _, gl_delta) = ig_minilm(text, target, Quadrature::GaussLegendre);
    assert!(gl_delta.abs() < delta.abs());
}

fn linear(softmax: bool) -> Arc<LinearGradientModel> {
    Arc::new(LinearGradientModel {
        weights: vec![vec![0.5, -1.0, 0.25, 2.0], vec![-0.3, 0.7, 1.5, -0.2]],
        bias: vec![0.1, -0.2],
        softmax,
    })
}

fn attributions(
    model: Arc<LinearGradientModel>,
    method: GradientMethod,
    output: OutputKind,
    quadrature: Quadrature,
    steps: usize,
) -> glassbox::explain::gradients::TokenAttribution {
    let row = Row::new(vec![101, 7, 8, 9, 102]);
    let special = [true, false, false, false, true];
    block_on(token_attributions(
        &DirectGradients::new(model),
        &row,
        &special,
        0,
        &[1],
        GradientParams {
            method,
            output,
            steps,
            quadrature,
        },
    ))
    .unwrap()
    .remove(0)
}

/// Closed forms on the linear model: saliency = |W_j| for every token, grad x input =
/// x_t . W_j, IG of the logit = (x_t - x'_t) . W_j exactly (zero on special tokens) with
/// delta = 0 for either quadrature, and IG of the softmax probability complete to 1e-6.
#[test]
fn gradient_methods_match_closed_forms_on_a_linear_model() {
    let model = linear(true);
    let w = &model.weights[1];
    let dot = |x: &[f32]| {
        x.iter()
            .zip(w)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum::<f64>()
    };
    let norm = w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let ids = [101u32, 7, 8, 9, 102];

    let s = attributions(
        model.clone(),
        GradientMethod::Saliency,
        OutputKind::Logit,
        Quadrature::GaussLegendre,
        50,
    );
    for v in &s.scores {
        assert!((v - norm).abs() < 1e-5);
    }
    let g = attributions(
        model.clone(),
        GradientMethod::GradXInput,
        OutputKind::Logit,
        Quadrature::GaussLegendre,
        50,
    );
    for (t, v) in g.scores.iter().enumerate() {
        assert!((v - dot(&model.embedding(ids[t]))).abs() < 1e-5);
    }
    let pad = model.embedding(0);
    for quadrature in [Quadrature::GaussLegendre, Quadrature::Trapezoid] {
        for steps in [2, 7, 50] {
            let ig = attributions(
                model.clone(),
                GradientMethod::IntegratedGradients,
                OutputKind::Logit,
                quadrature,
                steps,
            );
            for (t, v) in ig.scores.iter().enumerate() {
                let want = if t == 0 || t == 4 {
                    0.0
                } else {
                    let x = model.embedding(ids[t]);
                    let diff: Vec<f32> = x.iter().zip(&pad).map(|(a, b)| a - b).collect();
                    dot(&diff)
                };
                assert!((v - want).abs() < 1e-5, "{quadrature:?} {steps}: token {t}");
            }
            assert!(ig.ig.as_ref().unwrap().delta.abs() < 1e-5);
        }
    }
    let ig = attributions(
        model.clone(),
        GradientMethod::IntegratedGradients,
        OutputKind::Probability,
        Quadrature::GaussLegendre,
        50,
    );
    let summary = ig.ig.unwrap();
    assert!(
        summary.delta.abs() < 1e-6 * (ig.output - summary.baseline_output).abs().max(1e-3),
        "{summary:?}"
    );
}

fn toy_classifier() -> Arc<ToyClassifier> {
    Arc::new(ToyClassifier::new(
        vec!["a".into(), "b".into()],
        Default::default(),
        vec![0.0, 0.0],
        ToyOutput::Softmax,
    ))
}

struct EngineGradients(Engine);

impl GradientEvaluator for EngineGradients {
    type Error = EngineError;
    fn word_embeddings(&self, ids: &[u32]) -> Result<Vec<f32>, EngineError> {
        self.0.word_embeddings(ids)
    }
    async fn gradients(
        &self,
        rows: Vec<GradientRow>,
        output: OutputKind,
    ) -> Result<Vec<glassbox::model::gradients::RowGradient>, EngineError> {
        Ok(self
            .0
            .gradients(rows, output, JobOptions::default())
            .await?
            .outputs)
    }
}

/// Gradient jobs run on the engine's model threads in batches under the row caps, give the
/// same answers as running directly, and obey admission and deadlines.
#[tokio::test]
async fn gradient_jobs_run_through_the_engine() {
    let model = linear(true);
    let config = EngineConfig {
        max_batch_rows: 8,
        max_queued_rows: 200,
        ..EngineConfig::default()
    };
    let engine = Engine::start_with_gradients(toy_classifier(), Some(model.clone()), config);
    assert!(engine.supports_gradients());
    let row = Row::new(vec![101, 7, 8, 9, 102]);
    let special = [true, false, false, false, true];
    let params = GradientParams::default();
    let via_engine = token_attributions(
        &EngineGradients(engine.clone()),
        &row,
        &special,
        0,
        &[0, 1],
        params,
    )
    .await
    .unwrap();
    let direct = token_attributions(
        &DirectGradients::new(model.clone()),
        &row,
        &special,
        0,
        &[0, 1],
        params,
    )
    .await
    .unwrap();
    assert_eq!(via_engine, direct);
    // 2 targets x 52 rows in batches of at most 8 rows.
    let counters = engine.counters();
    assert_eq!(counters.rows_evaluated, 104);
    assert_eq!(counters.batches, 13);

    // Forward jobs still run alongside.
    let out = engine
        .evaluate(vec![Row::new(vec![1, 2])], JobOptions::default())
        .await
        .unwrap();
    assert_eq!(out.outputs.len(), 1);

    let rows = |n: usize| {
        (0..n)
            .map(|_| GradientRow {
                ids: vec![1, 2],
                type_ids: vec![0, 0],
                embeddings: vec![0.0; 8],
                target: 0,
            })
            .collect::<Vec<_>>()
    };
    assert!(matches!(
        engine
            .gradients(rows(201), OutputKind::Logit, JobOptions::default())
            .await,
        Err(EngineError::JobTooLarge { .. })
    ));
    let past = JobOptions {
        deadline: Some(Instant::now() - Duration::from_millis(1)),
        ..JobOptions::default()
    };
    assert!(matches!(
        engine.gradients(rows(3), OutputKind::Logit, past).await,
        Err(EngineError::Timeout)
    ));
    let stats = engine
        .gradients(rows(3), OutputKind::Logit, JobOptions::default())
        .await
        .unwrap()
        .stats;
    assert_eq!((stats.distinct_rows, stats.tokens_evaluated), (3, 6));

    let plain = Engine::start(toy_classifier(), EngineConfig::default());
    assert!(!plain.supports_gradients());
    assert!(plain
        .gradients(rows(1), OutputKind::Logit, JobOptions::default())
        .await
        .is_err());
}

/// Rows the embedding tables cannot serve (a token type the model does not have) are an
/// error from the hand-written path, not a panic.
#[test]
fn taped_gradients_refuse_unknown_token_types() {
    let m = load("tests/fixtures/tiny/tiny-bert-cls", LoadOptions::default());
    let ec = &m.encoder_classifier;
    let model: &dyn GradientModel = ec.as_ref();
    let ids = m.encoder.encode("The food was cold.", false).unwrap().ids;
    let row = GradientRow {
        type_ids: vec![7; ids.len()],
        embeddings: model.word_embeddings(&ids).unwrap(),
        ids,
        target: 0,
    };
    assert!(ec.taped_gradients(&[row], OutputKind::Logit).is_err());
}
