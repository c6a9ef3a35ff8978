//! Loading a model folder (or a hub id) into a ready classifier plus its tokenizer.
//!
//! A folder holds `config.json`, `tokenizer.json` and `model.safetensors`, as Hugging Face
//! writes them. Every failure names the file and the problem: a missing file, an unsupported
//! `model_type`, weights whose names or shapes do not match the config.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::amx::Planes;
use super::bert::Encoder;
use super::config::{Architecture, EncoderConfig, ZeroShotConfig};
use super::heads::{EncoderClassifier, Head};
use super::{Classifier, ModelInfo, ProblemType, TextEncoder};

/// The files a model folder must have.
pub const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// A loaded model: the classifier the engine runs and the tokenizer the API uses.
#[derive(Clone)]
pub struct LoadedModel {
    pub classifier: Arc<dyn Classifier>,
    /// The same classifier with its concrete type, for what the trait does not cover
    /// (embeddings in, gradients out).
    pub encoder_classifier: Arc<EncoderClassifier>,
    pub encoder: TextEncoder,
    /// Where the files were read from.
    pub folder: PathBuf,
    /// The matrix-product precision in force: the one asked for, or `highest` where the CPU
    /// has no AMX (or the model is differentiable).
    pub precision: Precision,
}

impl LoadedModel {
    pub fn info(&self) -> &ModelInfo {
        self.classifier.info()
    }
}

/// Options that change how the weights are used.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Use the differentiable (unfused) LayerNorm and softmax everywhere. Not needed for
    /// gradients: a call asks for the differentiable path with `ForwardOptions::differentiable`.
    pub differentiable: bool,
    /// The dtype of the weights and activations: f32 (the default, what the fused kernels
    /// take) or f64 (tests against finite differences; implies `differentiable`).
    pub dtype: DType,
    /// How the dense layers multiply; `highest` (f32) unless asked. The gradient path uses
    /// `high`'s products under `high`, f32 products otherwise (never plain bf16).
    pub precision: Precision,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            differentiable: false,
            dtype: DType::F32,
            precision: Precision::Highest,
        }
    }
}

/// How inference multiplies f32 matrices in the dense layers (`model.matmul_precision`),
/// with the meaning of PyTorch's `torch.set_float32_matmul_precision`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 products (AVX-512 gemm): within 1e-4 of the reference on every checkpoint.
    #[default]
    Highest,
    /// Each f32 value as the sum of two bf16 values, three bf16 products accumulated in f32
    /// on Intel AMX tiles (relative error about 1e-6 per product; within 1e-4 of the
    /// reference on MiniLM). Falls back to `highest` without AMX.
    High,
    /// Inputs and weights rounded to bf16, one product, f32 accumulation on AMX tiles
    /// (probabilities move by up to ~0.015). Falls back to `highest` without AMX.
    Medium,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Highest => "highest",
            Precision::High => "high",
            Precision::Medium => "medium",
        }
    }

    /// The AMX form of this precision; `None` for f32 gemm.
    pub fn planes(self) -> Option<Planes> {
        match self {
            Precision::Highest => None,
            Precision::High => Some(Planes::Two),
            Precision::Medium => Some(Planes::One),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model folder {0} does not exist (run `make model` for the default model, or pass a folder or hub id)")]
    NotFound(PathBuf),
    #[error("{file} is missing from the model folder {folder}")]
    MissingFile { folder: PathBuf, file: &'static str },
    #[error("{file}: {problem}")]
    BadFile { file: PathBuf, problem: String },
    #[error("could not fetch {id} from the Hugging Face hub: {problem}")]
    Hub { id: String, problem: String },
    #[error("zero-shot head: {0}")]
    ZeroShot(String),
}

/// Loads a local Hugging Face folder, or a hub id (`owner/name`) through `hf-hub`.
pub fn load_model(
    source: &str,
    zero_shot: &ZeroShotConfig,
    options: &LoadOptions,
) -> Result<LoadedModel, LoadError> {
    let path = Path::new(source);
    let folder = if path.is_dir() {
        path.to_path_buf()
    } else if looks_like_hub_id(source) {
        fetch_from_hub(source)?
    } else {
        return Err(LoadError::NotFound(path.to_path_buf()));
    };
    load_folder(&folder, source, zero_shot, options)
}

/// A hub id is `name` or `owner/name` made of ASCII word characters, dots and dashes, and is
/// not an existing path.
fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    !s.starts_with('.')
        && (1..=2).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        && parts.len() == 2
}

/// Downloads the three files of a hub model into the hub cache (the `HF_HOME` convention).
fn fetch_from_hub(id: &str) -> Result<PathBuf, LoadError> {
    let hub_err = |problem: String| LoadError::Hub {
        id: id.to_string(),
        problem,
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| hub_err(e.to_string()))?;
    let repo = api.model(id.to_string());
    let mut folder = None;
    for file in REQUIRED_FILES {
        let p = repo.get(file).map_err(|e| {
            hub_err(format!(
                "{file}: {e} (is the hub reachable? set HF_HUB_OFFLINE or use a local folder)"
            ))
        })?;
        folder = p.parent().map(Path::to_path_buf);
    }
    folder.ok_or_else(|| hub_err("no files".into()))
}

fn bad(file: &Path, problem: impl Into<String>) -> LoadError {
    LoadError::BadFile {
        file: file.to_path_buf(),
        problem: problem.into(),
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Loads a folder that holds the three files.
pub fn load_folder(
    folder: &Path,
    id: &str,
    zero_shot: &ZeroShotConfig,
    options: &LoadOptions,
) -> Result<LoadedModel, LoadError> {
    for file in REQUIRED_FILES {
        if !folder.join(file).is_file() {
            return Err(LoadError::MissingFile {
                folder: folder.to_path_buf(),
                file,
            });
        }
    }
    let config_path = folder.join("config.json");
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| bad(&config_path, e.to_string()))?;
    let cfg = EncoderConfig::from_json(&text).map_err(|e| bad(&config_path, e))?;

    let weights_path = folder.join("model.safetensors");
    let device = Device::Cpu;
    // SAFETY: the file is memory-mapped read-only; the service never writes model files, and
    // candle copies what it keeps into its own buffers at load.
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&[&weights_path], options.dtype, &device) }
            .map_err(|e| bad(&weights_path, format!("cannot read safetensors: {e}")))?;
    let prefix = encoder_prefix(&vb, cfg.architecture);
    let root = if prefix.is_empty() {
        vb.clone()
    } else {
        vb.pp(prefix)
    };
    // The fused kernels are f32-only: any other dtype takes the composite path everywhere.
    let differentiable = options.differentiable || options.dtype != DType::F32;
    let mut encoder = Encoder::load(root, &cfg, differentiable).map_err(|e| {
        bad(
            &weights_path,
            format!(
                "weights do not match config.json ({} architecture): {e}",
                cfg.architecture.name()
            ),
        )
    })?;
    // The dense layers on AMX tiles when asked for and possible; `highest` otherwise.
    let precision = match options.precision.planes() {
        Some(planes) if !differentiable => {
            let switched = encoder.use_amx(planes).map_err(|e| {
                bad(
                    &weights_path,
                    format!("cannot pack the weights for AMX: {e}"),
                )
            })?;
            if switched {
                options.precision
            } else {
                tracing::warn!(
                    asked = options.precision.name(),
                    "this CPU has no AMX bf16: matrix products run in f32 (matmul_precision highest)"
                );
                Precision::Highest
            }
        }
        _ => Precision::Highest,
    };

    let tokenizer_path = folder.join("tokenizer.json");
    let max_len = cfg.max_len();
    let text_encoder =
        TextEncoder::from_file(&tokenizer_path, max_len).map_err(|e| bad(&tokenizer_path, e))?;
    let pad_id = text_encoder.pad_id();

    let (head, labels, head_name, problem_type) = match &cfg.classifier_labels {
        Some(labels) => {
            let head = Head::load_classifier(&vb, &cfg, labels.len()).map_err(|e| {
                bad(
                    &weights_path,
                    format!("classification head does not match config.json: {e}"),
                )
            })?;
            (
                head,
                labels.clone(),
                "classifier".to_string(),
                cfg.problem_type,
            )
        }
        None => {
            zero_shot.validate().map_err(LoadError::ZeroShot)?;
            let encode = |p: &str| {
                text_encoder
                    .encode(p, true)
                    .map(|e| e.ids)
                    .map_err(|e| format!("prompt \"{p}\": {e}"))
            };
            let head = EncoderClassifier::zero_shot_head(&encoder, zero_shot, encode, pad_id)
                .map_err(LoadError::ZeroShot)?;
            let labels = zero_shot.labels.iter().map(|l| l.name.clone()).collect();
            (
                head,
                labels,
                format!("zero-shot:{}", zero_shot.name),
                ProblemType::SingleLabel,
            )
        }
    };
    let sha256 = sha256_file(&weights_path).map_err(|e| bad(&weights_path, e.to_string()))?;
    let display_id = folder
        .file_name()
        .filter(|_| Path::new(id).is_dir())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| id.to_string());
    let info = ModelInfo {
        id: display_id,
        architecture: cfg.architecture.name().to_string(),
        sha256,
        head: head_name,
        labels,
        problem_type,
        num_layers: cfg.num_layers,
        num_heads: cfg.num_heads,
        hidden_size: cfg.hidden_size,
        max_len,
    };
    let classifier = Arc::new(EncoderClassifier::new(encoder, head, info, pad_id));
    Ok(LoadedModel {
        classifier: classifier.clone(),
        encoder_classifier: classifier,
        encoder: text_encoder,
        folder: folder.to_path_buf(),
        precision,
    })
}

/// Checkpoints store the encoder under `bert.`/`distilbert.`/`roberta.` when they carry a
/// head, and at the root when they are a bare encoder (sentence-transformers' MiniLM).
fn encoder_prefix(vb: &VarBuilder, arch: Architecture) -> &'static str {
    let candidates: &[&str] = match arch {
        Architecture::Bert => &["bert", ""],
        Architecture::DistilBert => &["distilbert", ""],
        Architecture::Roberta => &["roberta", ""],
    };
    candidates
        .iter()
        .copied()
        .find(|p| {
            let name = if p.is_empty() {
                "embeddings.word_embeddings.weight".to_string()
            } else {
                format!("{p}.embeddings.word_embeddings.weight")
            };
            vb.contains_tensor(&name)
        })
        .unwrap_or("")
}
