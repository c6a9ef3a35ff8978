//! Our own transformer encoder on candle: BERT (incl. MiniLM), DistilBERT and RoBERTa.
//!
//! candle-transformers' BERT drops the attention probabilities, cannot take a head mask or
//! input embeddings, and its fused LayerNorm/softmax cut gradients silently. This encoder
//! returns attentions on request, multiplies per-row head masks into the attention
//! probabilities (Hugging Face `head_mask` semantics), accepts word embeddings instead of ids
//! (for gradient methods), and has a differentiable variant chosen by a flag.
//!
//! Speed choices: the Q, K and V projections are fused into one matrix multiply, every weight
//! is stored pre-transposed and contiguous (`x @ W` with no strided reads), padded keys are
//! masked with a finite `-1e4` (huge negatives send some `exp` implementations down slow
//! paths), and attention probabilities are copied out of the tensor only when asked for.

use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::VarBuilder;

use std::sync::Arc;

use super::amx::{self, PackedBf16, Planes};
use super::config::{Architecture, EncoderConfig};
use super::kernels;

mod backward;
pub use backward::{PackedInput, Tape};

/// Additive bias for padded keys: finite, so `exp` stays on its fast path.
const MASK_BIAS: f64 = -1e4;

/// A dense layer with its weight stored as `[in, out]`, contiguous.
#[derive(Clone, Debug)]
pub struct Dense {
    weight_t: Tensor,
    bias: Tensor,
    /// The same weight packed for the AMX kernel ([`Encoder::use_amx`]).
    bf16: Option<Arc<PackedBf16>>,
    /// With `high`: the transposed weight packed too, for the hand-written gradient path's
    /// backward pass.
    bf16_t: Option<Arc<PackedBf16>>,
}

impl Dense {
    fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> candle_core::Result<Self> {
        let w = vb.get((out_dim, in_dim), "weight")?;
        let b = vb.get(out_dim, "bias")?;
        Ok(Self {
            weight_t: w.t()?.contiguous()?,
            bias: b,
            bf16: None,
            bf16_t: None,
        })
    }

    /// Stacks several layers that read the same input into one (fused QKV).
    fn concat(parts: &[Dense]) -> candle_core::Result<Self> {
        let ws: Vec<&Tensor> = parts.iter().map(|d| &d.weight_t).collect();
        let bs: Vec<&Tensor> = parts.iter().map(|d| &d.bias).collect();
        Ok(Self {
            weight_t: Tensor::cat(&ws, 1)?.contiguous()?,
            bias: Tensor::cat(&bs, 0)?,
            bf16: None,
            bf16_t: None,
        })
    }

    /// Packs the weight for the AMX kernel, which inference calls then use.
    fn pack_bf16(&mut self, planes: Planes) -> candle_core::Result<()> {
        let (k, m) = self.weight_t.dims2()?;
        let w = self.weight_t.flatten_all()?.to_vec1::<f32>()?;
        let b = self.bias.to_vec1::<f32>()?;
        self.bf16 = Some(Arc::new(PackedBf16::pack(&w, k, m, &b, planes)));
        if planes != Planes::One {
            // The gradient path keeps f32-like products: `high` only, never plain bf16.
            let wt = self
                .weight_t
                .t()?
                .contiguous()?
                .flatten_all()?
                .to_vec1::<f32>()?;
            self.bf16_t = Some(Arc::new(PackedBf16::pack(&wt, m, k, &vec![0.0; k], planes)));
        }
        Ok(())
    }

    /// [`Dense::forward`], through the AMX kernel when packed and `fast` (no gradients).
    fn forward_fast(&self, x: &Tensor, fast: bool) -> candle_core::Result<Tensor> {
        match &self.bf16 {
            Some(packed) if fast && x.dtype() == DType::F32 => amx::linear(x, packed, true),
            _ => self.forward(x),
        }
    }

    /// [`Dense::matmul`], through the AMX kernel when packed and `fast` (no gradients).
    fn matmul_fast(&self, x: &Tensor, fast: bool) -> candle_core::Result<Tensor> {
        match &self.bf16 {
            Some(packed) if fast && x.dtype() == DType::F32 => amx::linear(x, packed, false),
            _ => self.matmul(x),
        }
    }

    /// `x @ W + b` over the last dimension of a tensor of any rank.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.dtype() == DType::F32 && !self.weight_t.track_op() {
            if x.track_op() {
                // The autograd gradient path (the reference the hand-written one is tested
                // against): the same product in f32, and a backward pass for the input only.
                return kernels::linear_input_grad(x, &self.weight_t, &self.bias);
            }
            if x.is_contiguous() {
                // Inference: one gemm that accumulates into the broadcast bias (f32 only).
                return kernels::linear(x, &self.weight_t, &self.bias);
            }
        }
        self.matmul(x)?.broadcast_add(&self.bias)
    }

    /// `x @ W` without the bias (for kernels that fuse the bias with what follows).
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().expect("rank >= 1");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = if x.is_contiguous() {
            x.reshape((rows, k))?
        } else {
            x.contiguous()?.reshape((rows, k))?
        };
        let y = x2.matmul(&self.weight_t)?;
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = self.weight_t.dim(1)?;
        y.reshape(out_dims)
    }
}

/// LayerNorm weights.
#[derive(Clone, Debug)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    /// `[2, H]`: weight and bias stacked for the fused kernel.
    params: Tensor,
    eps: f64,
}

impl Norm {
    fn load(vb: &VarBuilder, size: usize, eps: f64) -> candle_core::Result<Self> {
        // Old checkpoints call the parameters gamma/beta.
        let weight = vb.get(size, "weight").or_else(|_| vb.get(size, "gamma"))?;
        let bias = vb.get(size, "bias").or_else(|_| vb.get(size, "beta"))?;
        let params = Tensor::stack(&[&weight, &bias], 0)?;
        Ok(Self {
            weight,
            bias,
            params,
            eps,
        })
    }

    /// `LayerNorm(x + residual)`.
    fn add_forward(
        &self,
        x: &Tensor,
        residual: &Tensor,
        differentiable: bool,
    ) -> candle_core::Result<Tensor> {
        if differentiable {
            self.forward(&(x + residual)?, true)
        } else {
            kernels::add_layer_norm_inplace(x, residual, &self.params, self.eps as f32)
        }
    }

    fn forward(&self, x: &Tensor, differentiable: bool) -> candle_core::Result<Tensor> {
        if differentiable && x.dtype() == DType::F32 {
            kernels::layer_norm_input_grad(x, &self.weight, &self.bias, self.eps as f32)
        } else if differentiable {
            candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps as f32)
        } else {
            candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    fn from_name(name: &str) -> Self {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            _ => Activation::GeluErf,
        }
    }
    fn forward(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            // The gradient path: one op with a closed-form derivative.
            Activation::GeluErf if x.dtype() == DType::F32 && x.track_op() => {
                kernels::gelu_erf_input_grad(x)
            }
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }
}

#[derive(Clone, Debug)]
struct Layer {
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    ffn_in: Dense,
    ffn_out: Dense,
    out_norm: Norm,
}

impl Layer {
    fn load(vb: &VarBuilder, cfg: &EncoderConfig) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let i = cfg.intermediate_size;
        let eps = cfg.layer_norm_eps;
        if cfg.architecture == Architecture::DistilBert {
            let a = vb.pp("attention");
            let q = Dense::load(&a.pp("q_lin"), h, h)?;
            let k = Dense::load(&a.pp("k_lin"), h, h)?;
            let v = Dense::load(&a.pp("v_lin"), h, h)?;
            Ok(Self {
                qkv: Dense::concat(&[q, k, v])?,
                attn_out: Dense::load(&a.pp("out_lin"), h, h)?,
                attn_norm: Norm::load(&vb.pp("sa_layer_norm"), h, eps)?,
                ffn_in: Dense::load(&vb.pp("ffn").pp("lin1"), h, i)?,
                ffn_out: Dense::load(&vb.pp("ffn").pp("lin2"), i, h)?,
                out_norm: Norm::load(&vb.pp("output_layer_norm"), h, eps)?,
            })
        } else {
            let s = vb.pp("attention").pp("self");
            let q = Dense::load(&s.pp("query"), h, h)?;
            let k = Dense::load(&s.pp("key"), h, h)?;
            let v = Dense::load(&s.pp("value"), h, h)?;
            let o = vb.pp("attention").pp("output");
            Ok(Self {
                qkv: Dense::concat(&[q, k, v])?,
                attn_out: Dense::load(&o.pp("dense"), h, h)?,
                attn_norm: Norm::load(&o.pp("LayerNorm"), h, eps)?,
                ffn_in: Dense::load(&vb.pp("intermediate").pp("dense"), h, i)?,
                ffn_out: Dense::load(&vb.pp("output").pp("dense"), i, h)?,
                out_norm: Norm::load(&vb.pp("output").pp("LayerNorm"), h, eps)?,
            })
        }
    }
}

/// What one forward pass should return besides the last hidden state.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions {
    /// Keep every layer's attention probabilities `[B, heads, L, L]`.
    pub attentions: bool,
    /// Use the differentiable compositions (LayerNorm, softmax) for this call even if the
    /// encoder was loaded without them, so one copy of the weights serves both paths.
    pub differentiable: bool,
    /// Run the first layer's projection for every token even where tokens repeat (same id,
    /// position and type, so the same embedding row and the same projection): the results
    /// are identical either way; tests and measurements use this to compare.
    pub keep_duplicates: bool,
}

/// The input of one forward pass: a right-padded batch.
pub struct EncoderInput<'a> {
    /// `[B, L]` u32 token ids; ignored when `embeddings` is given (except for positions).
    pub ids: &'a Tensor,
    /// `[B, L]` u32 token type ids.
    pub type_ids: &'a Tensor,
    /// `[B, L]` f32, 1 for real tokens and 0 for padding.
    pub mask: &'a Tensor,
    /// `[B, layers, heads]` f32, 1 keeps a head and 0 switches it off; `None`: all heads on.
    pub head_mask: Option<&'a Tensor>,
    /// `[B, L, hidden]` word embeddings used instead of looking `ids` up (gradient methods).
    pub embeddings: Option<&'a Tensor>,
}

/// The output of one forward pass.
pub struct EncoderOutput {
    /// `[B, L, hidden]`.
    pub last_hidden_state: Tensor,
    /// One `[B, heads, L, L]` tensor per layer when asked for.
    pub attentions: Option<Vec<Tensor>>,
}

/// The embeddings of a batch's distinct tokens (`[D, H]`) and, per token, its index among them.
type DistinctTokens = (Tensor, Vec<u32>);

/// The transformer encoder (embeddings + layers), without a head.
#[derive(Clone, Debug)]
pub struct Encoder {
    pub config: EncoderConfig,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Option<Tensor>,
    embed_norm: Norm,
    layers: Vec<Layer>,
    activation: Activation,
    /// Composite LayerNorm and softmax everywhere, so gradients flow to the input.
    differentiable: bool,
    device: Device,
}

impl Encoder {
    /// Loads the encoder from `vb`, which must point at the encoder's root (e.g. `bert.`).
    pub fn load(
        vb: VarBuilder,
        config: &EncoderConfig,
        differentiable: bool,
    ) -> candle_core::Result<Self> {
        let h = config.hidden_size;
        let emb = vb.pp("embeddings");
        let word_embeddings = emb.get((config.vocab_size, h), "word_embeddings.weight")?;
        let position_embeddings = emb.get(
            (config.max_position_embeddings, h),
            "position_embeddings.weight",
        )?;
        let token_type_embeddings = if config.type_vocab_size > 0 {
            Some(emb.get((config.type_vocab_size, h), "token_type_embeddings.weight")?)
        } else {
            None
        };
        let embed_norm = Norm::load(&emb.pp("LayerNorm"), h, config.layer_norm_eps)?;
        let layers_vb = if config.architecture == Architecture::DistilBert {
            vb.pp("transformer").pp("layer")
        } else {
            vb.pp("encoder").pp("layer")
        };
        let layers = (0..config.num_layers)
            .map(|i| Layer::load(&layers_vb.pp(i.to_string()), config))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embed_norm,
            layers,
            activation: Activation::from_name(&config.hidden_act),
            differentiable,
            device: vb.device().clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the dense layers of inference on AMX tiles as products of `planes` bf16 terms
    /// per f32 value (see [`Planes`]). The hand-written gradient path ([`Tape`]) uses them too
    /// with two or more planes, forward and input backward (`W^T` packed as well); plain bf16
    /// stays off the gradient path.
    /// Returns false, changing nothing, when the CPU has no AMX bf16 or the weights are not f32.
    pub fn use_amx(&mut self, planes: Planes) -> candle_core::Result<bool> {
        if !amx::available() || self.dtype() != DType::F32 {
            return Ok(false);
        }
        for layer in &mut self.layers {
            for dense in [
                &mut layer.qkv,
                &mut layer.attn_out,
                &mut layer.ffn_in,
                &mut layer.ffn_out,
            ] {
                dense.pack_bf16(planes)?;
            }
        }
        Ok(true)
    }

    pub fn differentiable(&self) -> bool {
        self.differentiable
    }

    /// The dtype the weights were loaded in (f32 unless a test asked for f64).
    pub fn dtype(&self) -> DType {
        self.word_embeddings.dtype()
    }

    /// The word-embedding lookup: `[B, L]` ids -> `[B, L, hidden]`.
    pub fn word_embeddings(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        self.word_embeddings
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, self.config.hidden_size))
    }

    /// Position ids per row: `0..L` for BERT/DistilBERT; for RoBERTa `pad + 1 + i` on real
    /// tokens and `pad` on padding (Hugging Face's `create_position_ids_from_input_ids` for a
    /// right-padded batch).
    fn position_ids(&self, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l) = mask.dims2()?;
        let ar = Tensor::arange(0u32, l as u32, &self.device)?;
        match self.config.architecture {
            Architecture::Roberta => {
                let pad = self.config.pad_token_id as f64;
                let cum = mask.cumsum(1)?; // 1..n on real tokens
                let pos = ((cum * mask)? + pad)?;
                pos.to_dtype(DType::U32)
            }
            _ => ar.unsqueeze(0)?.broadcast_as((b, l))?.contiguous(),
        }
    }

    /// The embeddings and their LayerNorm for inference (f32): one parallel pass over the
    /// tokens in place of three lookups, two additions and a LayerNorm, each a separate
    /// allocation and most of them single-threaded.
    ///
    /// Perturbed rows repeat most of their tokens at the same positions (a masked word leaves
    /// the others in place). Unless `keep_duplicates`, when at least a quarter of the tokens
    /// repeat an earlier (id, position, type), the embeddings are computed once per distinct
    /// token and also returned on their own with each token's index among them, so the first
    /// layer's projection (a row-wise product, the same value for the same row) runs once per
    /// distinct token too.
    fn embed_inference(
        &self,
        input: &EncoderInput,
        pos: &Tensor,
        keep_duplicates: bool,
    ) -> candle_core::Result<(Tensor, Option<DistinctTokens>)> {
        let (b, l) = input.mask.dims2()?;
        let h = self.config.hidden_size;
        let mut pos_ids = pos.flatten_all()?.to_vec1::<u32>()?;
        let mut type_ids = input.type_ids.flatten_all()?.to_vec1::<u32>()?;
        let mut ids = match input.embeddings {
            Some(_) => None,
            None => Some(input.ids.flatten_all()?.to_vec1::<u32>()?),
        };
        let mut distinct = None;
        if let (Some(all_ids), false) = (&ids, keep_duplicates) {
            let n = all_ids.len();
            let mut index = std::collections::HashMap::with_capacity(n);
            let mut first = Vec::new();
            let map: Vec<u32> = (0..n)
                .map(|t| {
                    let key = (all_ids[t], pos_ids[t], type_ids[t]);
                    *index.entry(key).or_insert_with(|| {
                        first.push(t);
                        (first.len() - 1) as u32
                    })
                })
                .collect();
            if first.len() * 4 <= n * 3 {
                ids = Some(first.iter().map(|&t| all_ids[t]).collect());
                pos_ids = first.iter().map(|&t| pos_ids[t]).collect();
                type_ids = first.iter().map(|&t| type_ids[t]).collect();
                distinct = Some(map);
            }
        }
        let given = match input.embeddings {
            Some(e) => Some(e.to_dtype(DType::F32)?.contiguous()?),
            None => None,
        };
        let words = given.as_ref().unwrap_or(&self.word_embeddings);
        let out = kernels::with_f32(words, "word embeddings", |words| {
            kernels::with_f32(
                &self.position_embeddings,
                "position embeddings",
                |positions| {
                    kernels::with_f32(&self.embed_norm.weight, "embedding LayerNorm", |gamma| {
                        kernels::with_f32(&self.embed_norm.bias, "embedding LayerNorm", |beta| {
                            let run = |token_types: Option<(&[f32], &[u32])>| {
                                kernels::embed_layer_norm(&kernels::EmbeddingInput {
                                    words,
                                    ids: ids.as_deref(),
                                    positions: (positions, &pos_ids),
                                    token_types,
                                    gamma,
                                    beta,
                                    eps: self.embed_norm.eps as f32,
                                })
                            };
                            match &self.token_type_embeddings {
                                Some(tt) => {
                                    kernels::with_f32(tt, "token type embeddings", |types| {
                                        run(Some((types, &type_ids[..])))
                                    })?
                                }
                                None => run(None),
                            }
                        })?
                    })?
                },
            )?
        })??;
        match distinct {
            Some(map) => {
                let x =
                    Tensor::from_vec(kernels::gather_rows(&out, h, &map), (b, l, h), &self.device)?;
                let rows = out.len() / h;
                Ok((
                    x,
                    Some((Tensor::from_vec(out, (rows, h), &self.device)?, map)),
                ))
            }
            None => Ok((Tensor::from_vec(out, (b, l, h), &self.device)?, None)),
        }
    }

    /// Runs the encoder on a padded batch.
    pub fn forward(
        &self,
        input: &EncoderInput,
        opts: ForwardOptions,
    ) -> candle_core::Result<EncoderOutput> {
        let (b, l) = input.mask.dims2()?;
        let h = self.config.hidden_size;
        let nh = self.config.num_heads;
        let hd = h / nh;

        let pos = self.position_ids(input.mask)?;
        let differentiable = self.differentiable || opts.differentiable;
        let (mut x, distinct) = if !differentiable && self.dtype() == DType::F32 {
            self.embed_inference(input, &pos, opts.keep_duplicates)?
        } else {
            let words = match input.embeddings {
                Some(e) => e.clone(),
                None => self.word_embeddings(input.ids)?,
            };
            let pos_emb = self
                .position_embeddings
                .index_select(&pos.flatten_all()?, 0)?
                .reshape((b, l, h))?;
            let mut x = (words + pos_emb)?;
            if let Some(tt) = &self.token_type_embeddings {
                let t = tt
                    .index_select(&input.type_ids.flatten_all()?, 0)?
                    .reshape((b, l, h))?;
                x = (x + t)?;
            }
            (self.embed_norm.forward(&x, differentiable)?, None)
        };

        // 0 on real keys, -1e4 on padding: [B, L].
        let key_bias =
            ((input.mask.ones_like()? - input.mask)? * MASK_BIAS)?.to_dtype(x.dtype())?;
        let key_bias4 = key_bias.reshape((b, 1, 1, l))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let fast = !differentiable;
        let mut attentions = opts.attentions.then(Vec::new);

        // Rows that want attentions (or the gradient path) take the composite route, which
        // materialises the probabilities; everything else takes the fused kernel.
        let fused = fast && attentions.is_none();
        let all_heads = Tensor::ones((b, nh), DType::F32, &self.device)?;

        for (li, layer) in self.layers.iter().enumerate() {
            let qkv = match (&distinct, li) {
                // The first projection once per distinct token, then copied to each token.
                (Some((rows, map)), 0) => {
                    let once = layer.qkv.forward_fast(rows, fast)?;
                    let width = once.dim(1)?;
                    let all = kernels::with_f32(&once, "first projection", |v| {
                        kernels::gather_rows(v, width, map)
                    })?;
                    Tensor::from_vec(all, (b, l, width), &self.device)?
                }
                _ => layer.qkv.forward_fast(&x, fast)?, // [B, L, 3H]
            };
            let ctx = if fused {
                let keep = match input.head_mask {
                    Some(hm) => hm.i((.., li, ..))?,
                    None => all_heads.clone(),
                };
                kernels::fused_attention(&qkv, &key_bias, &keep, nh, scale as f32)?
            } else {
                let qkv = qkv.reshape((b, l, 3, nh, hd))?.permute((2, 0, 3, 1, 4))?; // [3, B, nh, L, hd]
                let q = qkv.i(0)?.contiguous()?;
                let k = qkv.i(1)?.contiguous()?;
                let v = qkv.i(2)?.contiguous()?;
                let mut probs = if fast {
                    kernels::masked_softmax(&q.matmul(&k.t()?)?, &key_bias, scale as f32)?
                } else if q.dtype() == DType::F32 {
                    // The gradient path: scale, key bias and softmax in one differentiable op.
                    kernels::masked_softmax_input_grad(
                        &q.matmul(&k.t()?)?,
                        &key_bias,
                        scale as f32,
                    )?
                } else {
                    let scores = (q * scale)?.matmul(&k.t()?)?.broadcast_add(&key_bias4)?; // [B, nh, L, L]
                    candle_nn::ops::softmax(&scores, D::Minus1)?
                };
                if let Some(hm) = input.head_mask {
                    let m = hm
                        .i((.., li, ..))?
                        .reshape((b, nh, 1, 1))?
                        .to_dtype(probs.dtype())?;
                    probs = probs.broadcast_mul(&m)?;
                }
                let ctx = probs.matmul(&v)?; // [B, nh, L, hd]
                if let Some(a) = attentions.as_mut() {
                    a.push(probs);
                }
                ctx.transpose(1, 2)?.reshape((b, l, h))?
            };
            let attn = layer.attn_out.forward_fast(&ctx, fast)?;
            x = layer.attn_norm.add_forward(&attn, &x, differentiable)?;
            let out = match (self.activation, &layer.ffn_in.bf16, &layer.ffn_out.bf16) {
                // Both products on AMX tiles with the GELU in between fused.
                (Activation::GeluErf, Some(inner), Some(outer))
                    if fast && x.dtype() == DType::F32 =>
                {
                    amx::feed_forward_gelu(&x, inner, outer)?
                }
                (act, _, _) => {
                    let inter = match act {
                        Activation::GeluErf if fast => kernels::bias_gelu_inplace(
                            &layer.ffn_in.matmul_fast(&x, fast)?,
                            &layer.ffn_in.bias,
                        )?,
                        act => act.forward(&layer.ffn_in.forward_fast(&x, fast)?)?,
                    };
                    layer.ffn_out.forward_fast(&inter, fast)?
                }
            };
            x = layer.out_norm.add_forward(&out, &x, differentiable)?;
        }
        Ok(EncoderOutput {
            last_hidden_state: x,
            attentions,
        })
    }
}

impl Module for Dense {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Dense::forward(self, xs)
    }
}

/// Loads a dense layer for the heads module (same storage convention as the encoder's).
pub(crate) fn load_dense(
    vb: &VarBuilder,
    in_dim: usize,
    out_dim: usize,
) -> candle_core::Result<Dense> {
    Dense::load(vb, in_dim, out_dim)
}
