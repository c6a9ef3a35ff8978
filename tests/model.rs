//! The model core against the Python reference values (tests/fixtures, copied from the
//! shared golden set) and the default model folder fetched by `make model`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Tensor, Var};
use glassbox::model::bert::ForwardOptions;
use glassbox::model::config::ZeroShotConfig;
use glassbox::model::heads::{batch_tensors, mean_pool_normalised};
use glassbox::model::loader::{load_model, LoadError, LoadOptions, Precision};
use glassbox::model::{HeadMask, LoadedModel, Row};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
fn fixture(p: &str) -> PathBuf {
    root().join("tests/fixtures").join(p)
}
fn read_json(p: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
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
fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
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

fn load_tiny(name: &str, differentiable: bool) -> LoadedModel {
    let dir = fixture(&format!("tiny/{name}"));
    load_model(
        dir.to_str().unwrap(),
        &ZeroShotConfig::default(),
        &LoadOptions {
            differentiable,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Last hidden state and attentions of one row, straight from the encoder.
fn encode_row(
    m: &LoadedModel,
    row: &Row,
    head_mask: Option<&[Vec<f32>]>,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let ec = &m.encoder_classifier;
    let cfg = &ec.encoder().config;
    let mut b = batch_tensors(
        std::slice::from_ref(row),
        cfg.num_layers,
        cfg.num_heads,
        0,
        ec.encoder().device(),
    )
    .unwrap();
    if let Some(hm) = head_mask {
        let flat: Vec<f32> = hm.iter().flatten().copied().collect();
        b.head_mask = Some(
            Tensor::from_vec(
                flat,
                (1, cfg.num_layers, cfg.num_heads),
                ec.encoder().device(),
            )
            .unwrap(),
        );
    }
    let out = ec
        .encoder()
        .forward(
            &b.input(),
            ForwardOptions {
                attentions: true,
                ..Default::default()
            },
        )
        .unwrap();
    let h = out
        .last_hidden_state
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let a = out
        .attentions
        .unwrap()
        .iter()
        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    (h, a)
}

fn check_tiny(name: &str) {
    let m = load_tiny(name, false);
    let r = read_json(&fixture(&format!("tiny/{name}/reference.json")));
    let labels: Vec<String> = (0..3)
        .map(|i| r["labels"][i.to_string()].as_str().unwrap().to_string())
        .collect();
    assert_eq!(m.info().labels, labels);
    assert_eq!(m.info().head, "classifier");
    let mut rows = Vec::new();
    for case in r["cases"].as_array().unwrap() {
        let enc = m
            .encoder
            .encode(case["text"].as_str().unwrap(), false)
            .unwrap();
        assert_eq!(enc.ids, ids(&case["input_ids"]), "{name}: token ids");
        let tokens: Vec<&str> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(enc.tokens, tokens, "{name}: tokens");
        let row = Row::new(enc.ids.clone());
        let out = m
            .classifier
            .forward(std::slice::from_ref(&row))
            .unwrap()
            .remove(0);
        assert_close(
            &format!("{name} logits"),
            &out.logits,
            &floats(&case["logits"]),
            1e-4,
        );
        assert_close(
            &format!("{name} probabilities"),
            &out.probabilities,
            &floats(&case["probabilities"]),
            1e-4,
        );
        let (h, a) = encode_row(&m, &row, None);
        assert_close(
            &format!("{name} last_hidden_state"),
            &h,
            &floats(&case["last_hidden_state"]),
            1e-4,
        );
        for (l, want) in case["attentions"].as_array().unwrap().iter().enumerate() {
            assert_close(
                &format!("{name} attentions layer {l}"),
                &a[l],
                &floats(want),
                1e-4,
            );
        }
        rows.push(row);
    }
    // Head mask: 1 keeps a head, 0 switches it off.
    let hm = &r["head_mask_case"];
    let mask: Vec<Vec<f32>> = hm["head_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    let mut pairs = Vec::new();
    for (l, layer) in mask.iter().enumerate() {
        for (h, keep) in layer.iter().enumerate() {
            if *keep == 0.0 {
                pairs.push((l, h));
            }
        }
    }
    let enc = m
        .encoder
        .encode(hm["text"].as_str().unwrap(), false)
        .unwrap();
    let mut row = Row::new(enc.ids);
    row.head_mask = HeadMask::new(pairs);
    row.attentions = true;
    let out = m
        .classifier
        .forward(std::slice::from_ref(&row))
        .unwrap()
        .remove(0);
    assert_close(
        &format!("{name} head-mask logits"),
        &out.logits,
        &floats(&hm["logits"]),
        1e-4,
    );
    let att = out.attentions.unwrap();
    assert_close(
        &format!("{name} head-mask layer 0"),
        &att.layers[0],
        &floats(&hm["attentions_layer0"]),
        1e-4,
    );
    let (_, a) = encode_row(&m, &Row::new(row.ids.clone()), Some(&mask));
    assert_close(
        &format!("{name} head-mask layer 0 (encoder)"),
        &a[0],
        &floats(&hm["attentions_layer0"]),
        1e-4,
    );

    // The four cases in one padded batch, next to the reference's batched logits.
    let batched = m.classifier.forward(&rows).unwrap();
    let want = r["batched_logits"].as_array().unwrap();
    for (i, o) in batched.iter().enumerate() {
        assert_close(
            &format!("{name} batched logits {i}"),
            &o.logits,
            &floats(&want[i]),
            1e-4,
        );
    }
}

#[test]
fn tiny_bert_matches_reference() {
    check_tiny("tiny-bert-cls");
}

#[test]
fn tiny_distilbert_matches_reference() {
    check_tiny("tiny-distilbert-cls");
}

#[test]
fn tiny_roberta_matches_reference() {
    check_tiny("tiny-roberta-cls");
}

#[test]
fn minilm_matches_golden_sentences() {
    check_minilm_golden(minilm());
}

/// Loads the default model at a matrix-product precision (`None` when the CPU has no AMX,
/// where `high` and `medium` would run as `highest`).
fn minilm_at(precision: Precision) -> Option<LoadedModel> {
    let dir = root().join("models/all-MiniLM-L6-v2");
    let m = load_model(
        dir.to_str().unwrap(),
        &ZeroShotConfig::default(),
        &LoadOptions {
            precision,
            ..Default::default()
        },
    )
    .expect("default model");
    if m.precision != precision {
        eprintln!(
            "skipped: this CPU has no AMX bf16, so matmul_precision {} runs as {}",
            precision.name(),
            m.precision.name()
        );
        return None;
    }
    Some(m)
}

/// `high`, the service's default precision, keeps the default model within the same 1e-4 of
/// the reference as f32 products.
#[test]
fn minilm_at_high_precision_matches_golden_sentences() {
    if let Some(m) = minilm_at(Precision::High) {
        check_minilm_golden(&m);
    }
}

fn check_minilm_golden(m: &LoadedModel) {
    assert_eq!(m.info().architecture, "bert");
    assert_eq!(m.info().head, "zero-shot:sentiment");
    assert_eq!(m.info().labels, ["negative", "positive"]);
    assert_eq!(
        m.info().sha256,
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    );
    for i in 0..6 {
        let s = read_json(&fixture(&format!("minilm/sentence_{i}.json")));
        let enc = m
            .encoder
            .encode(s["text"].as_str().unwrap(), false)
            .unwrap();
        assert_eq!(enc.ids, ids(&s["input_ids"]), "sentence {i}: ids");
        let mut row = Row::new(enc.ids.clone());
        row.attentions = true;
        let out = m
            .classifier
            .forward(std::slice::from_ref(&row))
            .unwrap()
            .remove(0);
        assert_close(
            &format!("sentence {i} probabilities"),
            &out.probabilities,
            &floats(&s["probabilities"]),
            1e-4,
        );
        assert_close(
            &format!("sentence {i} logits"),
            &out.logits,
            &floats(&s["logits"]),
            2e-3,
        );
        let att = out.attentions.unwrap();
        for layer in ["0", "5"] {
            let l: usize = layer.parse().unwrap();
            assert_close(
                &format!("sentence {i} attentions layer {l}"),
                &att.layers[l],
                &floats(&s["attentions"][layer]),
                1e-4,
            );
        }
        let (h, _) = encode_row(m, &Row::new(enc.ids), None);
        assert_close(
            &format!("sentence {i} last_hidden_state"),
            &h,
            &floats(&s["last_hidden_state"]),
            1e-4,
        );
    }
}

#[test]
fn minilm_zero_shot_prototypes_match_reference() {
    let m = minilm();
    let meta = read_json(&fixture("minilm/meta.json"));
    let protos = &meta["classifier"]["prototypes"];
    let glassbox::model::heads::Head::ZeroShot {
        prototypes,
        temperature,
    } = m.encoder_classifier.head()
    else {
        panic!("default model must use the zero-shot head")
    };
    assert!((temperature - 0.02).abs() < 1e-9);
    let got = prototypes.to_vec2::<f32>().unwrap();
    for (k, label) in ["negative", "positive"].iter().enumerate() {
        let want = floats(protos.get(*label).unwrap_or_else(|| &protos[k]));
        assert_close(&format!("prototype {label}"), &got[k], &want, 1e-5);
    }
}

#[test]
fn padded_batch_equals_single_rows() {
    let m = minilm();
    let texts = [
        "The movie was great.",
        "A much longer sentence, with commas, clauses and a few rare words like antidisestablishmentarianism.",
        "Bad.",
        "Not bad at all, actually quite good!",
    ];
    let rows: Vec<Row> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut r = Row::new(m.encoder.encode(t, false).unwrap().ids);
            r.attentions = true;
            if i == 2 {
                r.head_mask = HeadMask::new(vec![(0, 1), (3, 7)]);
            }
            r
        })
        .collect();
    let batched = m.classifier.forward(&rows).unwrap();
    for (r, b) in rows.iter().zip(&batched) {
        let single = m
            .classifier
            .forward(std::slice::from_ref(r))
            .unwrap()
            .remove(0);
        assert_close(
            "batched probabilities",
            &b.probabilities,
            &single.probabilities,
            1e-5,
        );
        assert_close("batched logits", &b.logits, &single.logits, 1e-4);
        let (a, s) = (
            b.attentions.as_ref().unwrap(),
            single.attentions.as_ref().unwrap(),
        );
        assert_eq!(a.len, r.len());
        for l in 0..a.layers.len() {
            assert_close("batched attentions", &a.layers[l], &s.layers[l], 1e-5);
        }
    }
}

#[test]
fn attention_rows_sum_to_one_and_masked_heads_are_zero() {
    let m = minilm();
    let mut row = Row::new(
        m.encoder
            .encode("Attention rows must sum to one.", false)
            .unwrap()
            .ids,
    );
    row.attentions = true;
    row.head_mask = HeadMask::new(vec![(2, 3)]);
    let out = m
        .classifier
        .forward(std::slice::from_ref(&row))
        .unwrap()
        .remove(0);
    let a = out.attentions.unwrap();
    for l in 0..6 {
        for h in 0..12 {
            for i in 0..a.len {
                let s: f32 = (0..a.len).map(|j| a.get(l, h, i, j)).sum();
                let want = if (l, h) == (2, 3) { 0.0 } else { 1.0 };
                assert!(
                    (s - want).abs() < 1e-5,
                    "layer {l} head {h} row {i} sums to {s}"
                );
            }
        }
    }
}

#[test]
fn rows_that_do_not_ask_get_no_attentions() {
    let m = minilm();
    let a = Row::new(m.encoder.encode("one", false).unwrap().ids);
    let mut b = a.clone();
    b.attentions = true;
    let out = m.classifier.forward(&[a, b]).unwrap();
    assert!(out[0].attentions.is_none());
    assert!(out[1].attentions.is_some());
}

/// The 80 labelled sentences as rows of `m`'s tokenizer, and whether each is positive.
fn sentiment_eval(m: &LoadedModel) -> (Vec<Row>, Vec<bool>) {
    let data = std::fs::read_to_string(fixture("sentiment_eval.jsonl")).unwrap();
    data.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let text = v["text"].as_str().unwrap();
            let label = v["label"].as_str().unwrap();
            assert!(label == "positive" || label == "negative", "label {label}");
            (
                Row::new(m.encoder.encode(text, false).unwrap().ids),
                label == "positive",
            )
        })
        .unzip()
}

#[test]
fn default_model_reaches_reference_accuracy() {
    let m = minilm();
    let (rows, gold) = sentiment_eval(m);
    let mut correct = 0;
    for (chunk, g) in rows.chunks(16).zip(gold.chunks(16)) {
        for (o, positive) in m.classifier.forward(chunk).unwrap().iter().zip(g) {
            correct += usize::from((o.probabilities[1] > o.probabilities[0]) == *positive);
        }
    }
    assert_eq!(rows.len(), 80);
    assert_eq!(correct, 71, "reference accuracy is 71/80");
}

#[test]
fn differentiable_variant_gives_input_gradients_and_same_outputs() {
    let fast = load_tiny("tiny-bert-cls", false);
    let slow = load_tiny("tiny-bert-cls", true);
    let row = Row::new(
        slow.encoder
            .encode("The food was cold.", false)
            .unwrap()
            .ids,
    );
    let a = fast
        .classifier
        .forward(std::slice::from_ref(&row))
        .unwrap()
        .remove(0);
    let b = slow
        .classifier
        .forward(std::slice::from_ref(&row))
        .unwrap()
        .remove(0);
    assert_close(
        "fused vs differentiable",
        &a.probabilities,
        &b.probabilities,
        1e-5,
    );

    let ec = &slow.encoder_classifier;
    let batch = ec.batch(std::slice::from_ref(&row)).unwrap();
    let emb = Var::from_tensor(&ec.encoder().word_embeddings(&batch.ids).unwrap()).unwrap();
    let logits = ec.logits(&batch, Some(emb.as_tensor())).unwrap();
    let p = ec.probabilities(&logits).unwrap();
    let target = p.narrow(1, 2, 1).unwrap().sum_all().unwrap();
    let grads = target.backward().unwrap();
    let g = grads
        .get(emb.as_tensor())
        .expect("the input embeddings must receive a gradient");
    let norm = g
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(norm > 0.0, "gradient is all zero");

    // The fused variant cuts the graph: no gradient reaches the input.
    let ec = &fast.encoder_classifier;
    let emb = Var::from_tensor(&ec.encoder().word_embeddings(&batch.ids).unwrap()).unwrap();
    let logits = ec.logits(&batch, Some(emb.as_tensor())).unwrap();
    let grads = logits.sum_all().unwrap().backward().unwrap();
    assert!(
        grads.get(emb.as_tensor()).is_none(),
        "fused kernels unexpectedly carried a gradient"
    );
}

#[test]
fn mean_pooling_ignores_padding() {
    let m = minilm();
    let ec = &m.encoder_classifier;
    let short = Row::new(m.encoder.encode("short", false).unwrap().ids);
    let long = Row::new(
        m.encoder
            .encode("a much longer text that forces padding", false)
            .unwrap()
            .ids,
    );
    let b = ec.batch(&[short.clone(), long]).unwrap();
    let out = ec
        .encoder()
        .forward(&b.input(), ForwardOptions::default())
        .unwrap();
    let e = mean_pool_normalised(&out.last_hidden_state, &b.mask)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let b1 = ec.batch(&[short]).unwrap();
    let out1 = ec
        .encoder()
        .forward(&b1.input(), ForwardOptions::default())
        .unwrap();
    let e1 = mean_pool_normalised(&out1.last_hidden_state, &b1.mask).unwrap();
    assert_close(
        "pooled",
        &e.get(0).unwrap().to_vec1::<f32>().unwrap(),
        &e1.get(0).unwrap().to_vec1::<f32>().unwrap(),
        1e-5,
    );
}

/// Perturbed rows repeat most tokens at the same positions; the first layer's projection then
/// runs once per distinct (id, position, type), and the outputs are the same bits as when it
/// runs for every token, on the f32 path and on AMX tiles (`high`) where the CPU has them.
#[test]
fn repeated_tokens_share_the_first_projection_exactly() {
    let high = minilm_at(Precision::High);
    let models: Vec<&LoadedModel> = std::iter::once(minilm()).chain(high.as_ref()).collect();
    for m in models {
        let ec = &m.encoder_classifier;
        let ids = m
            .encoder
            .encode(
                "the food was cold and the service painfully slow tonight",
                false,
            )
            .unwrap()
            .ids;
        // The original and masked copies ([MASK] = 103), as Kernel SHAP sends them.
        let rows: Vec<Row> = (0..24)
            .map(|k| {
                let mut r = ids.clone();
                for (i, id) in r.iter_mut().enumerate().skip(1).take(ids.len() - 2) {
                    if (i * 7 + k * 3) % 5 < k % 4 {
                        *id = 103;
                    }
                }
                Row::new(r)
            })
            .collect();
        let b = ec.batch(&rows).unwrap();
        let run = |keep_duplicates| {
            ec.encoder()
                .forward(
                    &b.input(),
                    ForwardOptions {
                        keep_duplicates,
                        ..Default::default()
                    },
                )
                .unwrap()
                .last_hidden_state
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (shared, every) = (run(false), run(true));
        assert_eq!(shared.len(), every.len());
        let differ = shared.iter().zip(&every).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ,
            0,
            "{differ} values differ at {}",
            m.precision.name()
        );
    }
}

#[test]
fn truncation_is_an_error_unless_asked() {
    let m = minilm();
    let long = "word ".repeat(600);
    let err = m.encoder.encode(&long, false).unwrap_err().to_string();
    assert!(err.contains("512") && err.contains("truncate"), "{err}");
    let enc = m.encoder.encode(&long, true).unwrap();
    assert_eq!(enc.len(), 512);
    assert!(enc.truncated);
    assert_eq!(enc.ids[0], 101);
    assert_eq!(*enc.ids.last().unwrap(), 102);
    // The tokenizer.json of the default model pads to 128; we switched that off.
    assert_eq!(m.encoder.encode("hi", false).unwrap().len(), 3);
}

// ---- load errors: each names the file and the problem ----

fn copy_tiny(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixture(&format!("tiny/{name}/{f}")), dir.path().join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match load_model(
        dir.to_str().unwrap(),
        &ZeroShotConfig::default(),
        &LoadOptions::default(),
    ) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_files_are_named() {
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        let dir = copy_tiny("tiny-bert-cls");
        std::fs::remove_file(dir.path().join(f)).unwrap();
        let e = load_err(dir.path());
        assert!(e.contains(f) && e.contains("missing"), "{e}");
    }
    let e = load_err(Path::new("/nonexistent/model-folder"));
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn unsupported_model_type_is_named() {
    let dir = copy_tiny("tiny-bert-cls");
    let p = dir.path().join("config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"model_type\": \"bert\"", "\"model_type\": \"gpt2\"");
    std::fs::write(&p, text).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("config.json") && e.contains("gpt2") && e.contains("not supported"),
        "{e}"
    );
}

#[test]
fn mismatched_weights_are_named() {
    let dir = copy_tiny("tiny-bert-cls");
    let p = dir.path().join("config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"hidden_size\": 32", "\"hidden_size\": 64");
    std::fs::write(&p, text).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("do not match"),
        "{e}"
    );

    let dir = copy_tiny("tiny-bert-cls");
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("model.safetensors"), "{e}");

    let dir = copy_tiny("tiny-bert-cls");
    std::fs::write(dir.path().join("config.json"), b"{ not json").unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json") && e.contains("JSON"), "{e}");
}

#[test]
fn unreachable_hub_gives_a_clear_error() {
    // This machine cannot reach the hub; point the endpoint at a closed local port so the
    // test is quick and deterministic everywhere.
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    std::env::set_var("HF_HOME", cache.path());
    let e = match load_model(
        "glassbox-test/does-not-exist",
        &ZeroShotConfig::default(),
        &LoadOptions::default(),
    ) {
        Ok(_) => panic!("hub load must fail offline"),
        Err(e) => e,
    };
    assert!(matches!(e, LoadError::Hub { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("glassbox-test/does-not-exist") && msg.contains("hub"),
        "{msg}"
    );
}

#[test]
fn invalid_zero_shot_config_is_rejected() {
    let dir = root().join("models/all-MiniLM-L6-v2");
    let zs = ZeroShotConfig {
        temperature: 0.0,
        ..ZeroShotConfig::default()
    };
    let e = match load_model(dir.to_str().unwrap(), &zs, &LoadOptions::default()) {
        Ok(_) => panic!("temperature 0 must be rejected"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("temperature"), "{e}");
}

/// `high` and `medium` on the default model: what they cost in accuracy against f32 products
/// on the 80 labelled sentences (printed, and bounded here), and that differentiable forwards
/// that track nothing stay on f32 products.
#[test]
fn reduced_matmul_precisions_stay_close_to_f32_on_the_default_model() {
    let exact = minilm();
    let (rows, gold) = sentiment_eval(exact);
    // (precision, bound on |p difference|, fewest labels kept, accuracy within)
    for (precision, max_bound, min_agree, accuracy_slack) in [
        (Precision::High, 1e-4, 80, 0),
        (Precision::Medium, 0.05, 77, 2),
    ] {
        let Some(fast) = minilm_at(precision) else {
            return;
        };
        let (mut correct, mut agree, mut max_diff, mut sum_diff) = (0, 0, 0f32, 0f32);
        for (chunk, g) in rows.chunks(16).zip(gold.chunks(16)) {
            let want = exact.classifier.forward(chunk).unwrap();
            let got = fast.classifier.forward(chunk).unwrap();
            for ((e, f), positive) in want.iter().zip(&got).zip(g) {
                let d = (e.probabilities[1] - f.probabilities[1]).abs();
                max_diff = max_diff.max(d);
                sum_diff += d;
                let (pe, pf) = (
                    e.probabilities[1] > e.probabilities[0],
                    f.probabilities[1] > f.probabilities[0],
                );
                agree += usize::from(pe == pf);
                correct += usize::from(pf == *positive);
            }
        }
        let name = precision.name();
        eprintln!(
            "matmul_precision {name} vs highest on sentiment_eval: accuracy {correct}/80 \
             (highest: 71/80), same label on {agree}/80, |p(positive) difference| max \
             {max_diff:.2e}, mean {:.2e}",
            sum_diff / 80.0
        );
        assert!(max_diff > 0.0, "{name} changed nothing: is it switched on?");
        assert!(
            max_diff < max_bound,
            "{name} moved a probability by {max_diff}"
        );
        assert!(agree >= min_agree, "{name} changed {} labels", 80 - agree);
        assert!(
            correct.abs_diff(71) <= accuracy_slack,
            "{name} accuracy {correct}/80"
        );

        // A differentiable forward that tracks nothing uses f32 products, exactly as highest.
        let hidden = |m: &LoadedModel| {
            let ec = &m.encoder_classifier;
            let cfg = &ec.encoder().config;
            let b = batch_tensors(
                &rows[..2],
                cfg.num_layers,
                cfg.num_heads,
                0,
                ec.encoder().device(),
            )
            .unwrap();
            let options = ForwardOptions {
                differentiable: true,
                ..Default::default()
            };
            let out = ec.encoder().forward(&b.input(), options).unwrap();
            out.last_hidden_state
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(hidden(exact), hidden(&fast), "{name}: differentiable path");
    }
}
