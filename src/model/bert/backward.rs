//! The gradient path written out by hand: one forward pass that keeps what the backward pass
//! needs, and a backward pass for the input only (no weight gradients, no autograd graph).
//!
//! candle's autograd spent most of an integrated-gradients request on bookkeeping: a zeroed
//! gradient buffer and an add per use of every tensor, layout copies around the attention,
//! one op per element-wise step. Here the rows are packed without padding (`T` tokens in all,
//! each row attending over its own length), every buffer is written once, and the products are
//! the inference path's: AMX tiles with `W` and `W^T` packed under `high`, the f32 gemm
//! otherwise. The definitions are those of [`super::Encoder::forward`] (post-LayerNorm BERT,
//! DistilBERT and RoBERTa layers); the head stays on candle's autograd (it is cheap, and one
//! code path serves every head), see [`crate::model::gradients`].

use candle_core::Tensor;
use rayon::prelude::*;

use super::{Activation, Dense, Encoder, Norm};
use crate::model::config::Architecture;
use crate::model::kernels::{self, SharedMut};

/// Token rows packed back to back: `lens[i]` tokens for row `i`.
pub struct PackedInput<'a> {
    pub lens: &'a [usize],
    pub type_ids: &'a [u32],
    /// `[T, hidden]`: the word embeddings to differentiate at.
    pub embeddings: &'a [f32],
}

/// What the backward pass needs from one layer's forward pass.
struct LayerCache {
    /// `[T, 3H]`: queries, keys and values.
    qkv: Vec<f32>,
    /// Per row, `heads x len x len` attention probabilities, rows back to back.
    probs: Vec<f32>,
    norm1: NormCache,
    /// `[T, I]`: the feed-forward pre-activation.
    pre: Vec<f32>,
    norm2: NormCache,
}

/// A LayerNorm's normalised input `[T, H]` and reciprocal standard deviations `[T]`.
struct NormCache {
    xhat: Vec<f32>,
    rstd: Vec<f32>,
}

/// The forward pass's record, from which [`Tape::backward`] runs.
pub struct Tape<'e> {
    encoder: &'e Encoder,
    lens: Vec<usize>,
    /// Each row's first token, and the start of its attention probabilities in a layer's
    /// `probs`.
    offsets: Vec<usize>,
    prob_offsets: Vec<usize>,
    embed_norm: NormCache,
    layers: Vec<LayerCache>,
}

/// Runs `f` on the f32 values of a contiguous CPU weight tensor without copying them.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    kernels::with_f32(t, "gradient path weights", f)
}

impl Dense {
    /// Whether the gradient path runs this layer on AMX tiles (`W` and `W^T` both packed).
    fn amx_pair(
        &self,
    ) -> Option<(
        &crate::model::amx::PackedBf16,
        &crate::model::amx::PackedBf16,
    )> {
        match (&self.bf16, &self.bf16_t) {
            (Some(f), Some(b)) => Some((f, b)),
            _ => None,
        }
    }

    /// `x @ W + b` for `n` rows.
    fn forward_rows(&self, x: &[f32], n: usize) -> candle_core::Result<Vec<f32>> {
        let (k, m) = self.weight_t.dims2()?;
        if let Some((fwd, _)) = self.amx_pair() {
            let mut out = vec![0f32; n * m];
            fwd.matmul_into(x, n, true, &mut out);
            return Ok(out);
        }
        with_values(&self.weight_t, |w| {
            with_values(&self.bias, |b| kernels::linear_rows(x, w, b, n, k, m))
        })?
    }

    /// `dy @ W^T` for `n` rows: the input's gradient.
    fn input_grad_rows(&self, dy: &[f32], n: usize) -> candle_core::Result<Vec<f32>> {
        let (k, m) = self.weight_t.dims2()?;
        let mut out = vec![0f32; n * k];
        if let Some((_, bwd)) = self.amx_pair() {
            bwd.matmul_into(dy, n, false, &mut out);
            return Ok(out);
        }
        with_values(&self.weight_t, |w| {
            // SAFETY: `out` is `n x k`, `dy` is `n x m`; `W^T` element (i, j) is `w[j * m + i]`.
            unsafe {
                gemm::gemm(
                    n,
                    k,
                    m,
                    out.as_mut_ptr(),
                    1,
                    k as isize,
                    false,
                    dy.as_ptr(),
                    1,
                    m as isize,
                    w.as_ptr(),
                    m as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    kernels::gemm_parallelism(n * k * m),
                )
            }
        })?;
        Ok(out)
    }
}

impl Norm {
    /// `LayerNorm(x)` in place, keeping `xhat` and `rstd` for the backward pass.
    fn forward_keep(&self, x: &mut [f32], h: usize) -> candle_core::Result<NormCache> {
        let t = x.len() / h;
        let mut xhat = vec![0f32; t * h];
        let mut rstd = vec![0f32; t];
        let eps = self.eps as f32;
        with_values(&self.weight, |g| {
            with_values(&self.bias, |b| {
                kernels::layer_norm_keep(x, &mut xhat, &mut rstd, g, b, eps)
            })
        })??;
        Ok(NormCache { xhat, rstd })
    }

    /// The input's gradient from the output's, in place.
    fn backward(&self, dy: &mut [f32], cache: &NormCache) -> candle_core::Result<()> {
        with_values(&self.weight, |gamma| {
            kernels::layer_norm_grad(dy, &cache.xhat, &cache.rstd, gamma)
        })
    }
}

impl Activation {
    fn value(self, x: f32) -> f32 {
        match self {
            Activation::GeluErf => crate::model::kernels::gelu_f32(x),
            Activation::GeluTanh => {
                let t = gelu_tanh_inner(x).tanh();
                0.5 * x * (1.0 + t)
            }
            Activation::Relu => x.max(0.0),
        }
    }

    fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::GeluErf => kernels::gelu_erf_derivative(x),
            Activation::GeluTanh => {
                const C: f32 = 0.797_884_6; // sqrt(2 / pi)
                let t = gelu_tanh_inner(x).tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * 0.044_715 * x * x)
            }
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

fn gelu_tanh_inner(x: f32) -> f32 {
    0.797_884_6 * (x + 0.044_715 * x * x * x)
}

/// Where each row's block starts when row `i` takes `size(lens[i])` values.
fn starts(lens: &[usize], size: impl Fn(usize) -> usize) -> Vec<usize> {
    lens.iter()
        .scan(0, |acc, &l| {
            let start = *acc;
            *acc += size(l);
            Some(start)
        })
        .collect()
}

impl Encoder {
    /// The forward pass of packed rows, keeping what [`Tape::backward`] needs; returns the
    /// last hidden states `[T, hidden]` and the tape. f32 weights only (callers check).
    pub fn forward_taped(&self, input: &PackedInput) -> candle_core::Result<(Vec<f32>, Tape<'_>)> {
        let h = self.config.hidden_size;
        let nh = self.config.num_heads;
        let hd = h / nh;
        let t: usize = input.lens.iter().sum();
        if input.type_ids.len() != t || input.embeddings.len() != t * h {
            candle_core::bail!("gradient path: packed rows of inconsistent sizes");
        }
        // Embeddings: words (given) + positions + token types, then LayerNorm.
        let mut x = input.embeddings.to_vec();
        // Out-of-range positions or token types are errors, not panics (the batched path's
        // `index_select` refuses them the same way).
        with_values(
            &self.position_embeddings,
            |pos| -> candle_core::Result<()> {
                let mut at = 0;
                for &len in input.lens {
                    for i in 0..len {
                        let p = match self.config.architecture {
                            Architecture::Roberta => self.config.pad_token_id as usize + 1 + i,
                            _ => i,
                        };
                        let Some(table) = pos.get(p * h..(p + 1) * h) else {
                            candle_core::bail!("gradient path: position {p} has no embedding");
                        };
                        let row = &mut x[(at + i) * h..(at + i + 1) * h];
                        row.iter_mut().zip(table).for_each(|(x, p)| *x += p);
                    }
                    at += len;
                }
                Ok(())
            },
        )??;
        if let Some(tt) = &self.token_type_embeddings {
            with_values(tt, |types| -> candle_core::Result<()> {
                for (row, &ty) in x.chunks_exact_mut(h).zip(input.type_ids) {
                    let ty = ty as usize;
                    let Some(table) = types.get(ty * h..(ty + 1) * h) else {
                        candle_core::bail!("gradient path: token type {ty} has no embedding");
                    };
                    row.iter_mut().zip(table).for_each(|(x, e)| *x += e);
                }
                Ok(())
            })??;
        }
        let embed_norm = self.embed_norm.forward_keep(&mut x, h)?;

        let offsets = starts(input.lens, |l| l);
        let prob_offsets = starts(input.lens, |l| nh * l * l);
        let prob_len: usize = input.lens.iter().map(|l| nh * l * l).sum();
        let scale = 1.0 / (hd as f32).sqrt();
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let qkv = layer.qkv.forward_rows(&x, t)?;
            let mut probs = vec![0f32; prob_len];
            let mut ctx = vec![0f32; t * h];
            let (pp, cp) = (SharedMut(probs.as_mut_ptr()), SharedMut(ctx.as_mut_ptr()));
            (0..input.lens.len() * nh).into_par_iter().for_each(|task| {
                let (r, head) = (task / nh, task % nh);
                let (len, t0) = (input.lens[r], offsets[r]);
                let p = pp.at(prob_offsets[r] + head * len * len);
                let base = t0 * 3 * h + head * hd;
                // SAFETY: Q, K, V of this row and head lie in `qkv`; this task alone writes
                // its `len x len` probabilities and its `len x hd` block of `ctx`.
                unsafe {
                    let q = qkv.as_ptr().add(base);
                    let k = q.add(h);
                    let v = q.add(2 * h);
                    kernels::small_gemm((len, len, hd), p, len, (q, 3 * h, 1), (k, 1, 3 * h), 1.0);
                    let block = std::slice::from_raw_parts_mut(p, len * len);
                    kernels::softmax_block(block, len, scale);
                    kernels::small_gemm(
                        (len, hd, len),
                        cp.at(t0 * h + head * hd),
                        h,
                        (p, len, 1),
                        (v, 3 * h, 1),
                        1.0,
                    );
                }
            });
            let mut attn = layer.attn_out.forward_rows(&ctx, t)?;
            attn.par_iter_mut().zip(&x).for_each(|(a, x)| *a += x);
            let norm1 = layer.attn_norm.forward_keep(&mut attn, h)?;
            let h1 = attn;
            let pre = layer.ffn_in.forward_rows(&h1, t)?;
            let act = self.activation;
            let inter: Vec<f32> = match act {
                Activation::GeluErf => {
                    let mut inter = vec![0f32; pre.len()];
                    kernels::gelu_erf_into(&pre, &mut inter);
                    inter
                }
                _ => pre.par_iter().map(|&u| act.value(u)).collect(),
            };
            let mut out = layer.ffn_out.forward_rows(&inter, t)?;
            out.par_iter_mut().zip(&h1).for_each(|(o, r)| *o += r);
            let norm2 = layer.out_norm.forward_keep(&mut out, h)?;
            x = out;
            layers.push(LayerCache {
                qkv,
                probs,
                norm1,
                pre,
                norm2,
            });
        }
        Ok((
            x,
            Tape {
                encoder: self,
                lens: input.lens.to_vec(),
                offsets,
                prob_offsets,
                embed_norm,
                layers,
            },
        ))
    }
}

impl Tape<'_> {
    /// The gradient with respect to the word embeddings `[T, hidden]`, given the gradient with
    /// respect to the last hidden states `[T, hidden]`.
    pub fn backward(self, mut grad: Vec<f32>) -> candle_core::Result<Vec<f32>> {
        let enc = self.encoder;
        let h = enc.config.hidden_size;
        let nh = enc.config.num_heads;
        let hd = h / nh;
        let t: usize = self.lens.iter().sum();
        let scale = 1.0 / (hd as f32).sqrt();
        let (offsets, prob_offsets) = (&self.offsets, &self.prob_offsets);
        for (layer, cache) in enc.layers.iter().zip(&self.layers).rev() {
            // out = LN2(ffn_out(act(ffn_in(h1))) + h1)
            layer.out_norm.backward(&mut grad, &cache.norm2)?;
            let mut d_inter = layer.ffn_out.input_grad_rows(&grad, t)?;
            match enc.activation {
                Activation::GeluErf => kernels::gelu_erf_grad_mul(&cache.pre, &mut d_inter),
                act => d_inter
                    .par_iter_mut()
                    .zip(&cache.pre)
                    .for_each(|(d, &u)| *d *= act.derivative(u)),
            }
            let d_h1 = layer.ffn_in.input_grad_rows(&d_inter, t)?;
            grad.par_iter_mut().zip(&d_h1).for_each(|(g, d)| *g += d);
            // h1 = LN1(attn_out(ctx) + x)
            layer.attn_norm.backward(&mut grad, &cache.norm1)?;
            let d_ctx = layer.attn_out.input_grad_rows(&grad, t)?;
            let mut d_qkv = vec![0f32; t * 3 * h];
            let dq = SharedMut(d_qkv.as_mut_ptr());
            let qkv = &cache.qkv;
            let probs = &cache.probs;
            let lens = &self.lens;
            (0..lens.len() * nh).into_par_iter().for_each_init(
                Vec::<f32>::new,
                |d_scores, task| {
                    let (r, head) = (task / nh, task % nh);
                    let (len, t0) = (lens[r], offsets[r]);
                    let p = &probs[prob_offsets[r] + head * len * len..][..len * len];
                    let base = t0 * 3 * h + head * hd;
                    d_scores.resize(len * len, 0.0);
                    // SAFETY: reads stay inside `qkv`, `d_ctx` and `p`; this task alone writes
                    // the Q, K and V columns of its head in its rows of `d_qkv`.
                    unsafe {
                        let q = qkv.as_ptr().add(base);
                        let k = q.add(h);
                        let v = q.add(2 * h);
                        let dc = d_ctx.as_ptr().add(t0 * h + head * hd);
                        // dP = dctx v^T
                        kernels::small_gemm(
                            (len, len, hd),
                            d_scores.as_mut_ptr(),
                            len,
                            (dc, h, 1),
                            (v, 1, 3 * h),
                            1.0,
                        );
                        // dV = P^T dctx
                        kernels::small_gemm(
                            (len, hd, len),
                            dq.at(base + 2 * h),
                            3 * h,
                            (p.as_ptr(), 1, len),
                            (dc, h, 1),
                            1.0,
                        );
                        // dS = P (dP - rowsum(dP P)) * scale
                        kernels::softmax_grad_block(p, d_scores, len, scale);
                        // dQ = dS K, dK = dS^T Q
                        kernels::small_gemm(
                            (len, hd, len),
                            dq.at(base),
                            3 * h,
                            (d_scores.as_ptr(), len, 1),
                            (k, 3 * h, 1),
                            1.0,
                        );
                        kernels::small_gemm(
                            (len, hd, len),
                            dq.at(base + h),
                            3 * h,
                            (d_scores.as_ptr(), 1, len),
                            (q, 3 * h, 1),
                            1.0,
                        );
                    }
                },
            );
            let d_x = layer.qkv.input_grad_rows(&d_qkv, t)?;
            grad.par_iter_mut().zip(&d_x).for_each(|(g, d)| *g += d);
        }
        enc.embed_norm.backward(&mut grad, &self.embed_norm)?;
        Ok(grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each activation's derivative against central differences of its value (f64 steps on
    /// f32 functions: tolerance 1e-3 of the larger of 1 and the value).
    #[test]
    fn activation_derivatives_match_central_differences() {
        for act in [Activation::GeluErf, Activation::GeluTanh, Activation::Relu] {
            let mut x = -6.0f32;
            while x < 6.0 {
                if !(matches!(act, Activation::Relu) && x.abs() < 0.01) {
                    let h = 1e-2f32;
                    let fd = (act.value(x + h) - act.value(x - h)) / (2.0 * h);
                    let d = act.derivative(x);
                    assert!(
                        (fd - d).abs() < 1e-3 * d.abs().max(1.0),
                        "{act:?} at {x}: derivative {d}, central difference {fd}"
                    );
                }
                x += 0.037;
            }
        }
    }
}
