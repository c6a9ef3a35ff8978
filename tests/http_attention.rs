//! `POST /explain/attention` and `POST /explain/heads` end to end, with real checkpoints: the
//! default model (`models/all-MiniLM-L6-v2`, `make model`) against the Python golden
//! attentions, and the tiny fixtures against their head-mask reference; the invariants of
//! METHODS.md (rows sum to 1 at token and word granularity, rollout rows sum to 1 and equal
//! the product of the layers, masking a head changes nothing below it, a sweep equals its
//! single masks) and every documented 422.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use glassbox::api::{app, AppState};
use glassbox::config::Config;
use glassbox::model::config::ZeroShotConfig;
use glassbox::model::loader::{load_model, LoadOptions};
use glassbox::model::LoadedModel;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn load(folder: &Path) -> LoadedModel {
    load_model(
        folder.to_str().unwrap(),
        &ZeroShotConfig::default(),
        &LoadOptions::default(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run `make model` for the default model)",
            folder.display()
        )
    })
}

fn minilm() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load(&root().join("models/all-MiniLM-L6-v2")))
}

fn tiny(name: &str) -> LoadedModel {
    load(&root().join("tests/fixtures/tiny").join(name))
}

/// A warmed-up app over a loaded model.
async fn start(model: &LoadedModel, config: Config) -> (Router, AppState) {
    config.validate().expect("test configuration is valid");
    let state = AppState::new(config, model.classifier.clone(), model.encoder.clone())
        .expect("state builds");
    state.warm_up().await.expect("warm-up succeeds");
    (app(state.clone()), state)
}

async fn post(router: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).expect("a JSON body"))
}

async fn ok(router: &Router, path: &str, body: Value) -> Value {
    let (status, response) = post(router, path, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body} -> {response}");
    response
}

/// Asserts a 422 `validation_error` naming `field`; returns the message.
async fn unprocessable(router: &Router, path: &str, body: Value, field: &str) -> String {
    let (status, response) = post(router, path, body.clone()).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{body} -> {response}"
    );
    assert_eq!(response["error"]["code"], "validation_error", "{response}");
    assert_eq!(
        response["error"]["details"]["field"], field,
        "{body} -> {response}"
    );
    response["error"]["message"].as_str().unwrap().to_string()
}

fn floats(v: &Value) -> Vec<f32> {
    fn walk(v: &Value, out: &mut Vec<f32>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Number(n) => out.push(n.as_f64().unwrap() as f32),
            Value::Object(o) if o.contains_key("values") => walk(&o["values"], out),
            _ => panic!("unexpected {v}"),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

fn matrix(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(floats).collect()
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (i, d) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(
        d <= tol,
        "{what}: max |diff| {d} at {i} (got {}, want {}) over tolerance {tol}",
        got[i],
        want[i]
    );
}

#[track_caller]
fn assert_rows_sum_to_one(what: &str, m: &[Vec<f32>], tol: f32) {
    for (i, row) in m.iter().enumerate() {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() <= tol, "{what}: row {i} sums to {sum}");
    }
}

/// The `(layer, head)` matrices of an `aggregation = "none"` response, by position.
/// One `(layer, head)` and its attention matrix.
type HeadMatrix = ((usize, usize), Vec<Vec<f32>>);

fn by_layer_head(response: &Value) -> Vec<HeadMatrix> {
    response["matrices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let l = m["layer"].as_u64().unwrap() as usize;
            let h = m["head"].as_u64().unwrap() as usize;
            ((l, h), matrix(&m["values"]))
        })
        .collect()
}

fn matmul(a: &[Vec<f32>], b: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let n = a.len();
    let mut c = vec![vec![0f32; n]; n];
    for i in 0..n {
        for k in 0..n {
            for j in 0..n {
                c[i][j] += a[i][k] * b[k][j];
            }
        }
    }
    c
}

const TEXT: &str = "Unbelievably, the acting was wonderful; the plot wasn't.";

#[tokio::test]
async fn minilm_attentions_match_the_python_golden_layers_through_the_route() {
    let (router, _) = start(minilm(), Config::default()).await;
    for i in 0..6 {
        let golden = read_json(&root().join(format!("tests/fixtures/minilm/sentence_{i}.json")));
        let response = ok(
            &router,
            "/explain/attention",
            json!({"text": golden["text"], "layers": [0, 5], "aggregation": "none", "precision": 8}),
        )
        .await;
        let tokens: Vec<&str> = response["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["text"].as_str().unwrap())
            .collect();
        let want_tokens: Vec<&str> = golden["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(tokens, want_tokens, "sentence {i}");
        let len = tokens.len();
        assert_eq!(response["axis"].as_array().unwrap().len(), len);
        let matrices = by_layer_head(&response);
        assert_eq!(matrices.len(), 24, "two layers of twelve heads");
        for (k, layer) in ["0", "5"].iter().enumerate() {
            let mut got = Vec::with_capacity(12 * len * len);
            for h in 0..12 {
                let ((l, head), m) = &matrices[k * 12 + h];
                assert_eq!((*l, *head), (layer.parse().unwrap(), h));
                assert_rows_sum_to_one(&format!("sentence {i} layer {l} head {h}"), m, 1e-4);
                got.extend(m.iter().flatten());
            }
            assert_close(
                &format!("sentence {i} layer {layer}"),
                &got,
                &floats(&golden["attentions"][*layer]),
                1e-4,
            );
        }
        assert_eq!(response["values"], 24 * len * len);
        assert_eq!(response["params"]["precision"], 8);
    }
}

#[tokio::test]
async fn the_tiny_checkpoints_head_mask_case_matches_its_reference_through_heads_mask() {
    for name in ["tiny-bert-cls", "tiny-distilbert-cls", "tiny-roberta-cls"] {
        let model = tiny(name);
        let (router, _) = start(&model, Config::default()).await;
        let reference =
            read_json(&root().join(format!("tests/fixtures/tiny/{name}/reference.json")));
        let case = &reference["head_mask_case"];
        let mut pairs = Vec::new();
        for (l, layer) in case["head_mask"].as_array().unwrap().iter().enumerate() {
            for (h, keep) in layer.as_array().unwrap().iter().enumerate() {
                if keep.as_f64().unwrap() == 0.0 {
                    pairs.push(json!([l, h]));
                }
            }
        }
        assert!(!pairs.is_empty());
        let response = ok(
            &router,
            "/explain/heads",
            json!({"text": case["text"], "mask": pairs}),
        )
        .await;
        assert_eq!(response["kind"], "mask");
        let masked = &response["masked"][0];
        assert_eq!(masked["heads"], Value::Array(pairs.clone()));
        let labels = &model.info().labels;
        let logits: Vec<f32> = labels
            .iter()
            .map(|l| masked["logits"][l].as_f64().unwrap() as f32)
            .collect();
        let want = floats(&case["logits"]);
        assert_close(&format!("{name} masked logits"), &logits, &want, 1e-4);
        let probabilities: Vec<f32> = labels
            .iter()
            .map(|l| masked["probabilities"][l].as_f64().unwrap() as f32)
            .collect();
        assert_close(
            &format!("{name} masked probabilities"),
            &probabilities,
            &glassbox::model::toy::softmax(&want),
            1e-4,
        );
        // The unmasked output is the model's prediction, and the drop is their difference.
        let target = response["targets"][0].as_u64().unwrap() as usize;
        let original = response["original"]["probabilities"][&labels[target]]
            .as_f64()
            .unwrap() as f32;
        assert_eq!(
            response["prediction"]["probabilities"][&labels[target]]
                .as_f64()
                .unwrap() as f32,
            original
        );
        let drop = response["importance"][0]["drops"][0].as_f64().unwrap() as f32;
        assert!((drop - (original - probabilities[target])).abs() < 1e-6);
    }
}

#[tokio::test]
async fn every_returned_row_sums_to_one_at_token_and_word_granularity() {
    let model = tiny("tiny-bert-cls");
    let (router, _) = start(&model, Config::default()).await;
    let tokens = ok(
        &router,
        "/explain/attention",
        json!({"text": TEXT, "aggregation": "none", "precision": 8}),
    )
    .await;
    let words = ok(
        &router,
        "/explain/attention",
        json!({"text": TEXT, "aggregation": "none", "precision": 8, "granularity": "words"}),
    )
    .await;
    let axis = words["axis"].as_array().unwrap();
    // The word axis partitions the tokens, keeps [CLS]/[SEP] and punctuation apart and merges
    // the pieces of a word.
    let groups: Vec<Vec<usize>> = axis
        .iter()
        .map(|e| {
            e["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as usize)
                .collect()
        })
        .collect();
    let n_tokens = tokens["tokens"].as_array().unwrap().len();
    assert_eq!(
        groups.iter().flatten().copied().collect::<Vec<_>>(),
        (0..n_tokens).collect::<Vec<_>>()
    );
    assert!(groups.len() < n_tokens, "some word has several pieces");
    assert_eq!(axis[0]["text"], "[CLS]");
    assert_eq!(axis[0]["special"], true);
    assert_eq!(axis[axis.len() - 1]["text"], "[SEP]");
    let unbelievably = axis.iter().find(|e| e["text"] == "Unbelievably").unwrap();
    assert!(unbelievably["tokens"].as_array().unwrap().len() > 1);
    assert_eq!(unbelievably["word"], true);
    assert_eq!(
        (unbelievably["start"].as_u64(), unbelievably["end"].as_u64()),
        (Some(0), Some(12))
    );
    assert!(axis.iter().any(|e| e["text"] == "," && e["word"] == false));

    // Each word matrix is its token matrix merged: columns summed, rows averaged.
    let token_matrices = by_layer_head(&tokens);
    let word_matrices = by_layer_head(&words);
    assert_eq!(token_matrices.len(), 2 * 4);
    for ((key, t), (word_key, w)) in token_matrices.iter().zip(&word_matrices) {
        assert_eq!(key, word_key);
        assert_rows_sum_to_one(&format!("tokens {key:?}"), t, 1e-5);
        assert_rows_sum_to_one(&format!("words {key:?}"), w, 1e-5);
        for (a, ga) in groups.iter().enumerate() {
            for (b, gb) in groups.iter().enumerate() {
                let want: f32 = ga
                    .iter()
                    .map(|&i| gb.iter().map(|&j| t[i][j]).sum::<f32>())
                    .sum::<f32>()
                    / ga.len() as f32;
                assert!((w[a][b] - want).abs() < 1e-5, "{key:?} word ({a}, {b})");
            }
        }
    }

    // Mean over heads: rows sum to 1 and equal the mean of the `none` matrices; max is the
    // element-wise maximum (not renormalised, so its rows sum to 1 or more).
    for granularity in ["tokens", "words"] {
        let none = if granularity == "tokens" {
            &tokens
        } else {
            &words
        };
        let heads = by_layer_head(none);
        for aggregation in ["mean", "max"] {
            let response = ok(
                &router,
                "/explain/attention",
                json!({"text": TEXT, "aggregation": aggregation, "granularity": granularity,
                       "precision": 8, "heads": [0, 2, 3]}),
            )
            .await;
            let matrices = response["matrices"].as_array().unwrap();
            assert_eq!(matrices.len(), 2);
            for m in matrices {
                assert!(m.get("head").is_none());
                let l = m["layer"].as_u64().unwrap() as usize;
                let got = matrix(&m["values"]);
                let selected: Vec<&Vec<Vec<f32>>> = heads
                    .iter()
                    .filter(|((hl, h), _)| *hl == l && [0, 2, 3].contains(h))
                    .map(|(_, m)| m)
                    .collect();
                for (i, row) in got.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        let values = selected.iter().map(|m| m[i][j]);
                        let want = if aggregation == "mean" {
                            values.sum::<f32>() / 3.0
                        } else if granularity == "tokens" {
                            values.fold(0.0, f32::max)
                        } else {
                            continue; // a word's max is over merged heads, checked below
                        };
                        assert!(
                            (v - want).abs() < 1e-5,
                            "{aggregation} {granularity} ({i}, {j})"
                        );
                    }
                }
                if aggregation == "mean" {
                    assert_rows_sum_to_one(&format!("{granularity} mean layer {l}"), &got, 1e-5);
                } else {
                    for row in &got {
                        assert!(row.iter().sum::<f32>() >= 1.0 - 1e-5);
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn rollout_rows_sum_to_one_and_equal_the_product_of_the_layers() {
    // MiniLM (zero-shot: mean-pooled) and a classifier checkpoint (reads [CLS]).
    let tiny_bert = tiny("tiny-bert-cls");
    for (model, pooling) in [(minilm(), "mean"), (&tiny_bert, "cls")] {
        let (router, _) = start(model, Config::default()).await;
        let info = model.info();
        for granularity in ["tokens", "words"] {
            let none = ok(
                &router,
                "/explain/attention",
                json!({"text": TEXT, "aggregation": "none", "precision": 8, "granularity": "tokens"}),
            )
            .await;
            let response = ok(
                &router,
                "/explain/attention",
                json!({"text": TEXT, "aggregation": "rollout", "precision": 8,
                       "granularity": granularity}),
            )
            .await;
            assert!(response["matrices"].as_array().unwrap().is_empty());
            let rollout = &response["rollout"];
            assert_eq!(rollout["pooling"], pooling);
            let r = matrix(&rollout["values"]);
            let pooled = floats(&rollout["pooled"]);
            assert_rows_sum_to_one(&format!("{} rollout {granularity}", info.id), &r, 1e-4);
            assert!((pooled.iter().sum::<f32>() - 1.0).abs() < 1e-4);
            let n = r.len();
            assert_eq!(response["values"], n * n + n);

            // Recompute from the per-head matrices: A_l = 0.5 mean_h + 0.5 I, rows
            // renormalised, R = A_L ... A_1.
            let heads = by_layer_head(&none);
            let len = heads[0].1.len();
            let mut product: Option<Vec<Vec<f32>>> = None;
            for l in 0..info.num_layers {
                let mut a = vec![vec![0f32; len]; len];
                for ((hl, _), m) in heads.iter().filter(|((hl, _), _)| *hl == l) {
                    assert_eq!(*hl, l);
                    for i in 0..len {
                        for j in 0..len {
                            a[i][j] += 0.5 * m[i][j] / info.num_heads as f32;
                        }
                    }
                }
                for (i, row) in a.iter_mut().enumerate() {
                    row[i] += 0.5;
                    let s: f32 = row.iter().sum();
                    row.iter_mut().for_each(|v| *v /= s);
                }
                product = Some(match product {
                    None => a,
                    Some(p) => matmul(&a, &p),
                });
            }
            let want = product.unwrap();
            let want_pooled: Vec<f32> = if pooling == "cls" {
                want[0].clone()
            } else {
                (0..len)
                    .map(|j| want.iter().map(|row| row[j]).sum::<f32>() / len as f32)
                    .collect()
            };
            if granularity == "tokens" {
                for (i, row) in r.iter().enumerate() {
                    assert_close(&format!("{} rollout row {i}", info.id), row, &want[i], 1e-4);
                }
                assert_close("pooled", &pooled, &want_pooled, 1e-4);
            } else {
                // Pooled at words: the token pooled row summed over each word's pieces.
                let groups = response["axis"].as_array().unwrap().iter().map(|e| {
                    e["tokens"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| want_pooled[t.as_u64().unwrap() as usize])
                        .sum::<f32>()
                });
                assert_close("pooled words", &pooled, &groups.collect::<Vec<_>>(), 1e-4);
            }
        }
    }
}

#[tokio::test]
async fn masking_a_head_changes_nothing_below_it_and_zeroes_that_head() {
    let (router, _) = start(minilm(), Config::default()).await;
    let request =
        |mask: Value| json!({"text": TEXT, "aggregation": "none", "precision": 8, "mask": mask});
    let plain = by_layer_head(&ok(&router, "/explain/attention", request(json!([]))).await);
    let response = ok(&router, "/explain/attention", request(json!([[2, 5]]))).await;
    assert_eq!(response["params"]["mask"], json!([[2, 5]]));
    let masked = by_layer_head(&response);
    // The prediction stays the unmasked model's.
    let again = ok(&router, "/explain/attention", json!({"text": TEXT})).await;
    assert_eq!(response["prediction"], again["prediction"]);
    for ((key, a), (_, b)) in plain.iter().zip(&masked) {
        let (l, h) = *key;
        let diff = a
            .iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        if (l, h) == (2, 5) {
            assert!(
                b.iter().flatten().all(|&v| v == 0.0),
                "the masked head is all zero"
            );
        } else if l <= 2 {
            assert!(diff < 1e-6, "layer {l} head {h} changed by {diff}");
        } else {
            assert!(
                diff > 1e-4,
                "layer {l} head {h} should see the masked head ({diff})"
            );
        }
    }
    // Masking no head changes nothing.
    let none = by_layer_head(
        &ok(
            &router,
            "/explain/attention",
            json!({"text": TEXT, "aggregation": "none", "precision": 8}),
        )
        .await,
    );
    assert_eq!(none, plain);
}

#[tokio::test]
async fn a_heads_sweep_equals_each_mask_alone_and_runs_as_one_batch() {
    let model = tiny("tiny-bert-cls");
    let (router, state) = start(&model, Config::default()).await;
    let info = model.info();
    let before = state.engine.counters().batches;
    let sweep = ok(
        &router,
        "/explain/heads",
        json!({"text": TEXT, "sweep": "heads", "top_labels": 2}),
    )
    .await;
    // The original (one batch) and the eight masked rows together (one more).
    assert_eq!(
        state.engine.counters().batches - before,
        2,
        "masked rows share one batch"
    );
    assert_eq!(sweep["kind"], "heads");
    let masked = sweep["masked"].as_array().unwrap();
    assert_eq!(masked.len(), info.num_layers * info.num_heads);
    for target in sweep["importance"].as_array().unwrap() {
        let grid = target["grid"].as_array().unwrap();
        assert_eq!(grid.len(), info.num_layers);
        let drops = floats(&target["drops"]);
        assert_eq!(floats(&target["grid"]), drops);
        assert!(drops.iter().any(|d| d.abs() > 1e-6), "some head matters");
    }
    for l in 0..info.num_layers {
        for h in 0..info.num_heads {
            let single = ok(
                &router,
                "/explain/heads",
                json!({"text": TEXT, "mask": [[l, h]], "top_labels": 2}),
            )
            .await;
            let k = l * info.num_heads + h;
            assert_eq!(masked[k]["heads"], json!([[l, h]]));
            for label in &info.labels {
                let a = masked[k]["probabilities"][label].as_f64().unwrap();
                let b = single["masked"][0]["probabilities"][label]
                    .as_f64()
                    .unwrap();
                assert!(
                    (a - b).abs() < 1e-5,
                    "({l}, {h}) {label}: sweep {a} vs alone {b}"
                );
            }
            for t in 0..2 {
                let a = sweep["importance"][t]["grid"][l][h].as_f64().unwrap();
                let b = single["importance"][t]["drops"][0].as_f64().unwrap();
                assert!((a - b).abs() < 1e-5);
            }
        }
    }

    // The layers sweep: one row per layer with all its heads masked, as that mask alone.
    let layers = ok(
        &router,
        "/explain/heads",
        json!({"text": TEXT, "sweep": "layers"}),
    )
    .await;
    assert_eq!(layers["masked"].as_array().unwrap().len(), info.num_layers);
    assert!(layers["importance"][0].get("grid").is_none());
    for l in 0..info.num_layers {
        let pairs: Vec<Value> = (0..info.num_heads).map(|h| json!([l, h])).collect();
        assert_eq!(layers["masked"][l]["heads"], Value::Array(pairs.clone()));
        let single = ok(
            &router,
            "/explain/heads",
            json!({"text": TEXT, "mask": pairs}),
        )
        .await;
        let a = layers["importance"][0]["drops"][l].as_f64().unwrap();
        let b = single["importance"][0]["drops"][0].as_f64().unwrap();
        assert!((a - b).abs() < 1e-5);
    }

    // Masking no head changes nothing.
    let none = ok(&router, "/explain/heads", json!({"text": TEXT, "mask": []})).await;
    assert_eq!(
        none["masked"][0]["probabilities"],
        none["original"]["probabilities"]
    );
    assert_eq!(none["importance"][0]["drops"], json!([0.0]));
    assert_eq!(none["masked"][0]["flipped"], false);
}

#[tokio::test]
async fn the_attention_cap_is_a_422_before_any_model_work() {
    let model = tiny("tiny-bert-cls");
    let text = "the acting was wonderful and the plot was thin, but unbelievably the music stayed";
    let n = model.encoder.encode(text, false).unwrap().len();
    // Room for one layer's mean matrix, not for two.
    let cap = n * n * 3 / 2;
    let mut config = Config::default();
    config.limits.max_attention_values = cap;
    let (router, state) = start(&model, config).await;
    let rows = state.engine.counters().rows_evaluated;
    let message = unprocessable(
        &router,
        "/explain/attention",
        json!({"text": text, "aggregation": "none"}),
        "aggregation",
    )
    .await;
    let all = (2 * 4 * n * n).to_string();
    for hint in [
        all.as_str(),
        &cap.to_string(),
        "max_attention_values",
        "layers",
        "heads",
        "\"mean\"",
        "words",
    ] {
        assert!(message.contains(hint), "{hint} in {message}");
    }
    let message = unprocessable(
        &router,
        "/explain/attention",
        json!({"text": text}),
        "layers",
    )
    .await;
    assert!(
        message.contains("layers") && message.contains("words"),
        "{message}"
    );
    assert_eq!(
        state.engine.counters().rows_evaluated,
        rows,
        "no model work"
    );
    // Narrowed as the messages say, it fits.
    let response = ok(
        &router,
        "/explain/attention",
        json!({"text": text, "layers": [1]}),
    )
    .await;
    assert_eq!(response["values"], n * n);
    let response = ok(
        &router,
        "/explain/attention",
        json!({"text": text, "aggregation": "none", "layers": [0], "heads": [1]}),
    )
    .await;
    assert_eq!(response["values"], n * n);
    assert!(state.engine.counters().rows_evaluated > rows);
}

#[tokio::test]
async fn the_default_request_fits_the_default_cap_for_512_tokens() {
    let (router, state) = start(minilm(), Config::default()).await;
    let text = "good ".repeat(510);
    let response = ok(&router, "/explain/attention", json!({"text": text})).await;
    assert_eq!(response["prediction"]["tokens"], 512);
    assert_eq!(response["values"], 6 * 512 * 512);
    assert!(state.limits.max_attention_values >= 6 * 512 * 512);
    let matrices = response["matrices"].as_array().unwrap();
    assert_eq!(matrices.len(), 6);
    assert_rows_sum_to_one(
        "512 tokens, layer 5",
        &matrix(&matrices[5]["values"]),
        512.0 * 5e-5,
    );
    // Every head of every layer does not fit, and the message says how to narrow it.
    let message = unprocessable(
        &router,
        "/explain/attention",
        json!({"text": text, "aggregation": "none"}),
        "aggregation",
    )
    .await;
    assert!(message.contains("18874368"), "{message}");
}

#[tokio::test]
async fn bad_indices_names_and_combinations_are_documented_422s() {
    let model = tiny("tiny-bert-cls");
    let (router, _) = start(&model, Config::default()).await;
    let attention = [
        (json!({"layers": [2]}), "layers"),
        (json!({"layers": [-1]}), "layers"),
        (json!({"layers": []}), "layers"),
        (json!({"heads": [4]}), "heads"),
        (json!({"aggregation": "median"}), "aggregation"),
        (json!({"granularity": "chars"}), "granularity"),
        (json!({"precision": 12}), "precision"),
        (json!({"aggregation": "rollout", "layers": [0]}), "layers"),
        (json!({"mask": [[0, 4]]}), "mask"),
        (json!({"target": "happy"}), "target"),
        (json!({"text": ""}), "text"),
    ];
    for (mut body, field) in attention {
        if body.get("text").is_none() {
            body["text"] = json!(TEXT);
        }
        unprocessable(&router, "/explain/attention", body, field).await;
    }
    let heads = [
        (json!({}), "mask"),
        (json!({"mask": [[0, 0]], "sweep": "heads"}), "sweep"),
        (json!({"sweep": "neurons"}), "sweep"),
        (json!({"mask": [[2, 0]]}), "mask"),
        (json!({"mask": [[0, 9]]}), "mask"),
        (json!({"mask": [[-1, 0]]}), "mask"),
        (json!({"mask": [], "target": 7}), "target"),
    ];
    for (mut body, field) in heads {
        body["text"] = json!(TEXT);
        let message = unprocessable(&router, "/explain/heads", body, field).await;
        assert!(!message.is_empty());
    }
    // Wrong shapes and unknown fields are 400 invalid_json.
    for (path, body) in [
        ("/explain/attention", json!({"text": TEXT, "layers": "all"})),
        ("/explain/attention", json!({"text": TEXT, "layer": [0]})),
        ("/explain/heads", json!({"text": TEXT, "mask": [[0, 1, 2]]})),
        ("/explain/heads", json!({"text": TEXT, "sweeps": "heads"})),
    ] {
        let (status, response) = post(&router, path, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {response}");
        assert_eq!(response["error"]["code"], "invalid_json");
    }
}

#[tokio::test]
async fn responses_label_the_axes_with_offsets() {
    let model = tiny("tiny-bert-cls");
    let (router, _) = start(&model, Config::default()).await;
    let text = "Caf\u{e9} \u{1F600} good";
    let response = ok(
        &router,
        "/explain/attention",
        json!({"text": text, "granularity": "words", "layers": [0]}),
    )
    .await;
    for key in [
        "model",
        "prediction",
        "targets",
        "tokens",
        "usage",
        "axis",
        "matrices",
        "params",
    ] {
        assert!(response.get(key).is_some(), "{key} in {response}");
    }
    assert_eq!(
        response["usage"]["model_evaluations"], 1,
        "one row: attentions and prediction"
    );
    let axis = response["axis"].as_array().unwrap();
    let good = axis.iter().find(|e| e["text"] == "good").unwrap();
    // "Café 😀 good": é is 2 bytes, 😀 4 bytes / 2 UTF-16 units.
    assert_eq!(
        (good["start"].as_u64(), good["end"].as_u64()),
        (Some(11), Some(15))
    );
    assert_eq!(
        (good["utf16_start"].as_u64(), good["utf16_end"].as_u64()),
        (Some(8), Some(12))
    );
    assert_eq!(response["params"]["granularity"], "words");
    assert_eq!(response["params"]["aggregation"], "mean");
    assert_eq!(response["params"]["layers"], json!([0]));
    assert_eq!(response["params"]["heads"], json!([0, 1, 2, 3]));
    // Default precision: four decimals.
    for v in floats(&response["matrices"][0]["values"]) {
        assert!(
            ((v as f64) * 1e4 - ((v as f64) * 1e4).round()).abs() < 1e-3,
            "{v}"
        );
    }
}
