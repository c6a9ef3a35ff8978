//! Fused CPU kernels for the encoder's non-matmul work (the inference path only; the
//! differentiable path keeps candle's composite ops so gradients flow).
//!
//! candle's unary ops run on one thread with a scalar `erf`, and its softmax uses a scalar
//! `exp`; on a 2-core machine the exact GELU alone took about as long as half the matrix
//! multiplies. These kernels:
//! * fuse what is always done together (bias + GELU, scale + key mask + softmax,
//!   residual add + LayerNorm) so each tensor is read and written once;
//! * split rows over the rayon pool candle already uses;
//! * are written as plain branch-free loops and compiled three times (AVX-512, AVX2+FMA,
//!   baseline), picked at run time, so the compiler vectorises them for the machine at hand
//!   without `-C target-cpu=native` (images run on other CPUs).
//!
//! Accuracy: `exp` is a Cephes-style polynomial (~2 ulp); GELU is a piecewise polynomial of
//! `Phi(x) - 1/2` (within 1.2e-7 of the exact form, the same bits in scalar, AVX2 and AVX-512
//! code); GELU's derivative uses erf from Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7); the
//! golden tests hold these paths to 1e-4 like every other.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, InplaceOp2, InplaceOp3, Layout, Result, Shape,
    Tensor,
};
use rayon::prelude::*;

/// Rows per rayon task: enough work to amortise scheduling.
fn chunk_rows(row_len: usize, rows: usize) -> usize {
    let per_task = (16 * 1024 / row_len.max(1)).max(1);
    per_task.min(rows.max(1))
}

pub(crate) fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{what}: only f32 is supported"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

// ---------------------------------------------------------------- element-wise math

/// `e^x` for `x` in f32 range, branch-free so it vectorises.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting rounds to an integer
                                     // Inputs are clamped below at -70 (e^-70 = 4e-31): results anywhere near the denormal
                                     // range (below 1.2e-38), or products of them with the weights and scales they meet next,
                                     // take a microcode assist of ~100 cycles each. Masked keys (-1e4), the padding lanes of
                                     // the attention kernel and large |x| in GELU all land here; 4e-31 is zero for every sum
                                     // and difference it joins in f32.
    let x = x.clamp(-70.0, 88.0);
    // Round x*log2(e) to the nearest integer n with the magic-number trick: the sum's low
    // mantissa bits hold n, so 2^n is built with integer ops (a float->int `as` cast would be
    // saturating and scalarised, which costs more than the whole polynomial).
    let shifted = x * LOG2E + ROUND;
    let fx = shifted - ROUND;
    let n = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    // `mul_add` is one fused instruction in the multiversioned loops (every x86 level they
    // target has FMA, as has aarch64): half the operations of separate products and sums.
    let r = (-fx).mul_add(C2, (-fx).mul_add(C1, x));
    let mut y = 1.987_569_1e-4_f32;
    y = y.mul_add(r, 1.398_199_9e-3);
    y = y.mul_add(r, 8.333_452e-3);
    y = y.mul_add(r, 4.166_579_6e-2);
    y = y.mul_add(r, 1.666_666_5e-1);
    y = y.mul_add(r, 0.5);
    y = (y * r).mul_add(r, r) + 1.0;
    let scale = f32::from_bits(n.wrapping_add(127) << 23);
    y * scale
}

/// `1 / d` for a positive, normal `d` without a division: an integer-subtraction seed
/// (relative error under 12.5%) and three Newton steps, each squaring the error (to under
/// 5e-8, below f32's own rounding). A 16-lane division is one slow, unpipelined unit on
/// x86 (about 16 cycles per vector); these are six fused multiply-adds.
#[inline(always)]
fn recip_positive(d: f32) -> f32 {
    let mut t = f32::from_bits(0x7EF3_11C7u32.wrapping_sub(d.to_bits()));
    for _ in 0..3 {
        let e = (-d).mul_add(t, 1.0);
        t = t.mul_add(e, t);
    }
    t
}

/// `|erf(x)|` for `z = |x|`, Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7).
#[inline(always)]
fn erf_abs(z: f32) -> f32 {
    let t = recip_positive(0.327_591_1f32.mul_add(z, 1.0));
    let mut poly = 1.061_405_4f32;
    poly = poly.mul_add(t, -1.453_152_1);
    poly = poly.mul_add(t, 1.421_413_8);
    poly = poly.mul_add(t, -0.284_496_74);
    poly = poly.mul_add(t, 0.254_829_6);
    (-(poly * t)).mul_add(exp_f32(-z * z), 1.0)
}

/// Exact-form GELU `x Phi(x)` (`Phi(x) = (1 + erf(x/sqrt 2)) / 2`), piecewise: `Phi(x) - 1/2`
/// for `|x|` in eight intervals of 0.75 on [0, 6) as a degree-7 polynomial per interval
/// (fitted at Chebyshev nodes in f64: |error| under 5e-8, the f32 rounding of 1/2), exactly
/// 1/2 from 6 on, the sign of `x` restoring the odd part. The vector versions
/// ([`gelu_avx512`], [`gelu_avx2`]) pick the coefficients with one register permute each and
/// run the same operations, so all three give the same bits; no division, no `exp`.
#[inline(always)]
pub(crate) fn gelu_f32(x: f32) -> f32 {
    let ax = x.abs();
    let z = ax.min(GELU_Z_MAX);
    let i = ((z * GELU_INV_STEP) as i32).min(7) as usize;
    let t = (-GELU_STEP).mul_add(i as f32, z);
    let mut p = GELU_POLY[7][i];
    for j in (0..7).rev() {
        p = p.mul_add(t, GELU_POLY[j][i]);
    }
    let p = if ax >= 6.0 { 0.5 } else { p };
    x * (0.5 + p.copysign(x))
}

const GELU_STEP: f32 = 0.75;
const GELU_INV_STEP: f32 = 4.0 / 3.0;
/// The largest f32 below 6: `|x|` is clamped here so the interval index stays in 0..8.
const GELU_Z_MAX: f32 = 5.999_999_5;
/// `GELU_POLY[j][i]`: the coefficient of `t^j` on interval `i` (`t = |x| - 0.75 i`) of
/// `erf(|x|/sqrt 2) / 2`.
#[allow(clippy::excessive_precision)]
const GELU_POLY: [[f32; 8]; 8] = [
    [
        0.0,
        0.2733726501464844,
        0.43319278955459595,
        0.4877755343914032,
        0.49865010380744934,
        0.4999115765094757,
        0.4999966025352478,
        0.49999991059303284,
    ],
    [
        0.3989424407482147,
        0.30113744735717773,
        0.12951751053333282,
        0.031739670783281326,
        0.004431858658790588,
        0.0003525935171637684,
        1.598299240868073e-05,
        4.1278357798546494e-07,
    ],
    [
        -4.1640992094471585e-06,
        -0.11292725801467896,
        -0.09713587909936905,
        -0.03570764511823654,
        -0.006648064590990543,
        -0.0006610568379983306,
        -3.5942026443080977e-05,
        -1.0818868076967192e-06,
    ],
    [
        -0.06644680351018906,
        -0.021949080750346184,
        0.026957819238305092,
        0.021495940163731575,
        0.005912348162382841,
        0.0007669948972761631,
        5.104693991597742e-05,
        1.8073006913255085e-06,
    ],
    [
        -0.00022152595920488238,
        0.02288353256881237,
        0.006204308941960335,
        -0.0061648027040064335,
        -0.003341491799801588,
        -0.0006061888998374343,
        -5.042622797191143e-05,
        -2.1051353087386815e-06,
    ],
    [
        0.010572670958936214,
        4.37245616922155e-05,
        -0.006255560554563999,
        -0.0003898964496329427,
        0.0011612725211307406,
        0.0003328964812681079,
        3.502671461319551e-05,
        1.7049447933459305e-06,
    ],
    [
        -0.0008555979584343731,
        -0.003432532073929906,
        0.0012841144343838096,
        0.0008977518300525844,
        -0.0002033329801633954,
        -0.0001190843540825881,
        -1.5706871636211872e-05,
        -8.688862749295367e-07,
    ],
    [
        -0.0006454878021031618,
        0.000812542624771595,
        2.6552648705546744e-05,
        -0.0002240128960693255,
        5.496123321790947e-06,
        2.1287129129632376e-05,
        3.408610155020142e-06,
        2.0760036534284154e-07,
    ],
];

/// [`gelu_f32`] on 16 lanes.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gelu_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let sign = _mm512_set1_epi32(i32::MIN);
    let xi = _mm512_castps_si512(x);
    let ax = _mm512_castsi512_ps(_mm512_andnot_si512(sign, xi));
    let z = _mm512_min_ps(ax, _mm512_set1_ps(GELU_Z_MAX));
    let i = _mm512_min_epi32(
        _mm512_cvttps_epi32(_mm512_mul_ps(z, _mm512_set1_ps(GELU_INV_STEP))),
        _mm512_set1_epi32(7),
    );
    let t = _mm512_fnmadd_ps(_mm512_set1_ps(GELU_STEP), _mm512_cvtepi32_ps(i), z);
    // Coefficient tables in the low 8 lanes; the index is 0..8.
    let coef = |j: usize| {
        let c = &GELU_POLY[j];
        _mm512_permutexvar_ps(
            i,
            _mm512_setr_ps(
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], 0., 0., 0., 0., 0., 0., 0., 0.,
            ),
        )
    };
    let mut p = coef(7);
    for j in (0..7).rev() {
        p = _mm512_fmadd_ps(p, t, coef(j));
    }
    let tail = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(ax, _mm512_set1_ps(6.0));
    let p = _mm512_mask_blend_ps(tail, p, _mm512_set1_ps(0.5));
    let signed = _mm512_or_si512(
        _mm512_andnot_si512(sign, _mm512_castps_si512(p)),
        _mm512_and_si512(sign, xi),
    );
    _mm512_mul_ps(
        x,
        _mm512_add_ps(_mm512_set1_ps(0.5), _mm512_castsi512_ps(signed)),
    )
}

/// [`gelu_f32`] on 8 lanes.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    let ax = _mm256_andnot_ps(sign, x);
    let z = _mm256_min_ps(ax, _mm256_set1_ps(GELU_Z_MAX));
    let i = _mm256_min_epi32(
        _mm256_cvttps_epi32(_mm256_mul_ps(z, _mm256_set1_ps(GELU_INV_STEP))),
        _mm256_set1_epi32(7),
    );
    let t = _mm256_fnmadd_ps(_mm256_set1_ps(GELU_STEP), _mm256_cvtepi32_ps(i), z);
    let coef = |j: usize| _mm256_permutevar8x32_ps(_mm256_loadu_ps(GELU_POLY[j].as_ptr()), i);
    let mut p = coef(7);
    for j in (0..7).rev() {
        p = _mm256_fmadd_ps(p, t, coef(j));
    }
    let tail = _mm256_cmp_ps::<_CMP_GE_OQ>(ax, _mm256_set1_ps(6.0));
    let p = _mm256_blendv_ps(p, _mm256_set1_ps(0.5), tail);
    let signed = _mm256_or_ps(_mm256_andnot_ps(sign, p), _mm256_and_ps(sign, x));
    _mm256_mul_ps(x, _mm256_add_ps(_mm256_set1_ps(0.5), signed))
}

/// `dst[i] = GELU(src[i] + bias[i % bias.len()])` (no bias: `src[i]`), with the widest
/// vectors the CPU has; `src` and `dst` may be the same buffer.
///
/// # Safety
/// `src` readable and `dst` writable for `n` values; `bias` empty or dividing `n`.
unsafe fn gelu_apply(src: *const f32, dst: *mut f32, n: usize, bias: &[f32]) {
    let add = |k: usize, v: f32| {
        if bias.is_empty() {
            v
        } else {
            v + bias[k % bias.len()]
        }
    };
    let mut k = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // Both loops run over at most one row: with a bias, `n <= bias.len()` (see below).
        #[target_feature(enable = "avx512f")]
        unsafe fn run512(src: *const f32, dst: *mut f32, n: usize, bias: &[f32]) -> usize {
            let mut k = 0;
            while k + 16 <= n {
                let mut v = _mm512_loadu_ps(src.add(k));
                if !bias.is_empty() {
                    v = _mm512_add_ps(v, _mm512_loadu_ps(bias.as_ptr().add(k)));
                }
                _mm512_storeu_ps(dst.add(k), gelu_avx512(v));
                k += 16;
            }
            k
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run256(src: *const f32, dst: *mut f32, n: usize, bias: &[f32]) -> usize {
            let mut k = 0;
            while k + 8 <= n {
                let mut v = _mm256_loadu_ps(src.add(k));
                if !bias.is_empty() {
                    v = _mm256_add_ps(v, _mm256_loadu_ps(bias.as_ptr().add(k)));
                }
                _mm256_storeu_ps(dst.add(k), gelu_avx2(v));
                k += 8;
            }
            k
        }
        // Rows of `bias.len()` values go one at a time (a row starts at bias value 0), so the
        // vector loops index the bias like the row and never straddle two rows.
        let row = if bias.is_empty() { n } else { bias.len() };
        let wide = if std::is_x86_feature_detected!("avx512f") {
            Some(run512 as unsafe fn(*const f32, *mut f32, usize, &[f32]) -> usize)
        } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            Some(run256 as unsafe fn(*const f32, *mut f32, usize, &[f32]) -> usize)
        } else {
            None
        };
        if let Some(run) = wide {
            let mut start = 0;
            while start < n {
                let len = row.min(n - start);
                let done = run(src.add(start), dst.add(start), len, bias);
                for j in done..len {
                    *dst.add(start + j) = gelu_f32(add(j, *src.add(start + j)));
                }
                start += len;
            }
            k = n;
        }
    }
    while k < n {
        *dst.add(k) = gelu_f32(add(k, *src.add(k)));
        k += 1;
    }
}

// ---------------------------------------------------------------- multiversioned loops

macro_rules! multiversion {
    ($name:ident, $body:ident, ($($arg:ident : $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) { $body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) { $body($($arg),*) }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { v3($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

/// `buf = GELU(buf + bias)` over rows of `bias.len()` values.
fn bias_gelu_dispatch(buf: &mut [f32], bias: &[f32]) {
    assert!(!bias.is_empty() && buf.len().is_multiple_of(bias.len()));
    // SAFETY: in place over `buf`, whose length `bias.len()` divides.
    unsafe { gelu_apply(buf.as_ptr(), buf.as_mut_ptr(), buf.len(), bias) };
}

/// Lanes of the partial sums: float addition is not associative, so the compiler will not
/// vectorise a plain `sum += x` loop; accumulating 16 independent sums lets it.
const LANES: usize = 16;

/// The sum of 16 lanes as a tree (four dependent steps): a sequential sum is a chain of 16
/// dependent additions, which cost more than the whole exp pass of a 73-token softmax row.
#[inline(always)]
fn hsum(mut a: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for j in 0..w {
            a[j] += a[j + w];
        }
        w /= 2;
    }
    a[0]
}

/// [`hsum`] of an accumulator filled chunk by chunk. `black_box` keeps the accumulator one
/// whole vector: when the tree's pairings were visible to the compiler it split the lanes
/// into eight two-float accumulators for the loop that filled them (LayerNorm 0.57 against
/// 0.38 ms on 4672 rows); the array then takes one store and the tree reads it back.
#[inline(always)]
fn lanes_total(acc: [f32; LANES]) -> f32 {
    hsum(std::hint::black_box(acc))
}

/// The maximum of 16 lanes as a tree (see [`hsum`]).
#[inline(always)]
fn hmax(mut a: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for j in 0..w {
            a[j] = a[j].max(a[j + w]);
        }
        w /= 2;
    }
    a[0]
}

/// `sum(a * b)` over equal-length slices in 16 independent lanes (see [`lane_sum`]).
#[inline(always)]
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let ac = a.chunks_exact(LANES);
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(&b[a.len() - a.len() % LANES..])
        .map(|(x, y)| x * y)
        .sum();
    for (ac, bc) in ac.zip(b.chunks_exact(LANES)) {
        let ac: &[f32; LANES] = ac.try_into().expect("a whole chunk");
        let bc: &[f32; LANES] = bc.try_into().expect("a whole chunk");
        for j in 0..LANES {
            acc[j] += ac[j] * bc[j];
        }
    }
    lanes_total(acc) + tail
}

/// `sum(v)` in 16 independent lanes, each adding its chunks in order, then a tree
/// ([`lanes_total`]) and the tail: the same order at every vector width. The chunks are
/// taken as fixed-size arrays so the loop compiles to one whole-vector add per chunk.
#[inline(always)]
fn lane_sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        let c: &[f32; LANES] = c.try_into().expect("a whole chunk");
        for j in 0..LANES {
            acc[j] += c[j];
        }
    }
    lanes_total(acc) + tail
}

#[inline(always)]
fn masked_softmax_rows(src: &[f32], key_bias: &[f32], scale: f32, dst: &mut [f32]) {
    let n = key_bias.len();
    for (s, d) in src.chunks_exact(n).zip(dst.chunks_exact_mut(n)) {
        d.copy_from_slice(s);
        masked_softmax_row_inplace(d, key_bias, scale);
    }
}
multiversion!(masked_softmax_dispatch, masked_softmax_rows, (src: &[f32], key_bias: &[f32], scale: f32, dst: &mut [f32]));

/// `LN(x + r)` per row: the same operations in the same order as adding, then
/// [`lane_sum`], subtracting the mean, then [`lane_dot`] of the centred row with itself, but
/// in three passes instead of five (the add feeds the sum, the centring feeds the squares),
/// and `R` rows at a time so that their dependent reduction chains overlap.
#[inline(always)]
fn add_layer_norm_group<const R: usize>(
    dr: &mut [f32],
    rr: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let h = gamma.len();
    let full = h - h % LANES;
    let mut acc = [[0f32; LANES]; R];
    let mut tail = [0f32; R];
    for c in (0..full).step_by(LANES) {
        for (r, a) in acc.iter_mut().enumerate() {
            let dc: &mut [f32; LANES] = (&mut dr[r * h + c..][..LANES]).try_into().expect("chunk");
            let rc: &[f32; LANES] = rr[r * h + c..][..LANES].try_into().expect("chunk");
            for j in 0..LANES {
                dc[j] += rc[j];
                a[j] += dc[j];
            }
        }
    }
    let mut mean = [0f32; R];
    for r in 0..R {
        for (d, x) in dr[r * h + full..][..h - full]
            .iter_mut()
            .zip(&rr[r * h + full..])
        {
            *d += *x;
            tail[r] += *d;
        }
        mean[r] = (lanes_total(acc[r]) + tail[r]) / h as f32;
    }
    let mut acc = [[0f32; LANES]; R];
    let mut tail = [0f32; R];
    for c in (0..full).step_by(LANES) {
        for (r, a) in acc.iter_mut().enumerate() {
            let dc: &mut [f32; LANES] = (&mut dr[r * h + c..][..LANES]).try_into().expect("chunk");
            for j in 0..LANES {
                dc[j] -= mean[r];
                a[j] += dc[j] * dc[j];
            }
        }
    }
    for r in 0..R {
        let row = &mut dr[r * h..][..h];
        for d in row[full..].iter_mut() {
            *d -= mean[r];
            tail[r] += *d * *d;
        }
        let var = (lanes_total(acc[r]) + tail[r]) / h as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((d, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *d = *d * inv * *g + *b;
        }
    }
}

#[inline(always)]
fn add_layer_norm_rows(buf: &mut [f32], res: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    const R: usize = 4;
    let h = gamma.len();
    let groups = buf.len() / (R * h);
    let (head, rest) = buf.split_at_mut(groups * R * h);
    for (dr, rr) in head.chunks_exact_mut(R * h).zip(res.chunks_exact(R * h)) {
        add_layer_norm_group::<R>(dr, rr, gamma, beta, eps);
    }
    for (dr, rr) in rest
        .chunks_exact_mut(h)
        .zip(res[groups * R * h..].chunks_exact(h))
    {
        add_layer_norm_group::<1>(dr, rr, gamma, beta, eps);
    }
}
multiversion!(add_layer_norm_dispatch, add_layer_norm_rows,
    (buf: &mut [f32], res: &[f32], gamma: &[f32], beta: &[f32], eps: f32));

/// Reads a contiguous f32 tensor on the CPU in place (no copy) and hands its values to `f`.
pub(crate) fn with_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (guard, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &*guard else {
        candle_core::bail!("{what}: expected f32 on the CPU")
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what}: expected a contiguous tensor")
    };
    Ok(f(&data[a..b]))
}

/// The row `id` of an embedding table (`h` wide), or an error when the table has none.
fn table_row<'a>(table: &'a [f32], h: usize, id: u32, what: &str) -> Result<&'a [f32]> {
    let at = id as usize * h;
    table
        .get(at..at + h)
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} id {id} is outside the table")))
}

/// The embedding sum and its LayerNorm for inference, in one parallel pass over the tokens:
/// `LN((word + position) + token_type)` per token (`[N, H]` out), the sums in the order
/// candle's separate `index_select` and `add` ops used. `words` is either the word table with
/// `ids` selecting rows, or (gradient methods' inputs) one given row per token.
pub(crate) struct EmbeddingInput<'a> {
    pub words: &'a [f32],
    pub ids: Option<&'a [u32]>,
    pub positions: (&'a [f32], &'a [u32]),
    pub token_types: Option<(&'a [f32], &'a [u32])>,
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

pub(crate) fn embed_layer_norm(input: &EmbeddingInput) -> Result<Vec<f32>> {
    let h = input.gamma.len();
    let (pos_table, pos_ids) = input.positions;
    let n = pos_ids.len();
    if input.beta.len() != h
        || input.ids.is_some_and(|ids| ids.len() != n)
        || (input.ids.is_none() && input.words.len() != n * h)
        || input.token_types.is_some_and(|(_, t)| t.len() != n)
    {
        candle_core::bail!("embeddings: inconsistent shapes for {n} tokens of width {h}");
    }
    // Every id is checked before the parallel pass, which then cannot fail.
    for &id in input.ids.unwrap_or(&[]) {
        table_row(input.words, h, id, "token")?;
    }
    for &id in pos_ids {
        table_row(pos_table, h, id, "position")?;
    }
    if let Some((table, ids)) = input.token_types {
        for &id in ids {
            table_row(table, h, id, "token type")?;
        }
    }
    let zeros = vec![0f32; h];
    let mut out: Vec<f32> = Vec::with_capacity(n * h);
    out.spare_capacity_mut()
        .par_chunks_mut(h)
        .enumerate()
        .for_each_init(
            || vec![0f32; h],
            |row, (t, dst)| {
                let word = match input.ids {
                    Some(ids) => &input.words[ids[t] as usize * h..][..h],
                    None => &input.words[t * h..][..h],
                };
                let pos = &pos_table[pos_ids[t] as usize * h..][..h];
                for ((r, w), p) in row.iter_mut().zip(word).zip(pos) {
                    *r = w + p;
                }
                let types = match input.token_types {
                    Some((table, ids)) => &table[ids[t] as usize * h..][..h],
                    None => &zeros[..],
                };
                add_layer_norm_dispatch(row, types, input.gamma, input.beta, input.eps);
                for (d, v) in dst.iter_mut().zip(row.iter()) {
                    d.write(*v);
                }
            },
        );
    // SAFETY: the pass above wrote all `n * h` values (one chunk of `h` per token).
    unsafe { out.set_len(n * h) };
    Ok(out)
}

/// Row `map[t]` of `src` (rows `width` wide) as row `t` of the result, in parallel.
pub(crate) fn gather_rows(src: &[f32], width: usize, map: &[u32]) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(map.len() * width);
    out.spare_capacity_mut()
        .par_chunks_mut(width)
        .zip(map.par_iter())
        .for_each(|(dst, &row)| {
            for (d, v) in dst.iter_mut().zip(&src[row as usize * width..][..width]) {
                d.write(*v);
            }
        });
    // SAFETY: every one of the `map.len()` rows of `width` values was written above.
    unsafe { out.set_len(map.len() * width) };
    out
}

/// Mean over real tokens (`mask` 1) of `[B, L, H]` hidden states, L2-normalised, for
/// inference: one parallel task per row instead of candle's broadcast product and a
/// single-threaded strided reduction.
pub(crate) fn mean_pool_normalised_rows(
    hidden: &[f32],
    mask: &[f32],
    (b, l, h): (usize, usize, usize),
) -> Vec<f32> {
    let mut out = vec![0f32; b * h];
    out.par_chunks_mut(h).enumerate().for_each(|(bi, dst)| {
        let mut count = 0f32;
        for t in 0..l {
            let m = mask[bi * l + t];
            count += m;
            if m != 0.0 {
                for (d, x) in dst.iter_mut().zip(&hidden[(bi * l + t) * h..][..h]) {
                    *d += x * m;
                }
            }
        }
        let norm = dst
            .iter()
            .map(|v| {
                let m = v / count;
                m * m
            })
            .sum::<f32>()
            .sqrt();
        for d in dst.iter_mut() {
            *d = (*d / count) / norm;
        }
    });
    out
}

// ---------------------------------------------------------------- the taped gradient path

/// `dst = GELU(src)` element-wise.
fn gelu_erf_rows_dispatch(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    // SAFETY: both slices hold `src.len()` values.
    unsafe { gelu_apply(src.as_ptr(), dst.as_mut_ptr(), src.len(), &[]) };
}

#[inline(always)]
fn gelu_erf_grad_body(pre: &[f32], grad: &mut [f32]) {
    for (g, &x) in grad.iter_mut().zip(pre) {
        *g *= gelu_erf_derivative(x);
    }
}
multiversion!(gelu_erf_grad_dispatch, gelu_erf_grad_body, (pre: &[f32], grad: &mut [f32]));

/// The exact-form GELU's derivative, `Phi(x) + x phi(x)`.
#[inline(always)]
pub(crate) fn gelu_erf_derivative(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
    cdf + x * INV_SQRT_2PI * exp_f32(-0.5 * x * x)
}

/// `dst = GELU(src)` (exact form), element-wise and parallel.
pub(crate) fn gelu_erf_into(src: &[f32], dst: &mut [f32]) {
    const CHUNK: usize = 16 * 1024;
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| gelu_erf_rows_dispatch(s, d));
}

/// `grad *= GELU'(pre)` (exact form), element-wise and parallel.
pub(crate) fn gelu_erf_grad_mul(pre: &[f32], grad: &mut [f32]) {
    const CHUNK: usize = 16 * 1024;
    grad.par_chunks_mut(CHUNK)
        .zip(pre.par_chunks(CHUNK))
        .for_each(|(g, p)| gelu_erf_grad_dispatch(p, g));
}

#[inline(always)]
fn softmax_grad_body(probs: &[f32], grad: &mut [f32], len: usize, scale: f32) {
    for (g, p) in grad.chunks_exact_mut(len).zip(probs.chunks_exact(len)) {
        let dot = lane_dot(g, p);
        for (g, p) in g.iter_mut().zip(p) {
            *g = p * (*g - dot) * scale;
        }
    }
}
multiversion!(softmax_grad_dispatch, softmax_grad_body,
    (probs: &[f32], grad: &mut [f32], len: usize, scale: f32));

/// Softmax backward over the rows (`len` wide) of a block, in place: the scores' gradient
/// `p (g - sum(g p)) * scale` from the probabilities' gradient `g` (`scale` is the factor the
/// scores were multiplied by).
pub(crate) fn softmax_grad_block(probs: &[f32], grad: &mut [f32], len: usize, scale: f32) {
    softmax_grad_dispatch(probs, grad, len, scale);
}

/// Softmax over the rows of an `L x L` block of raw scores, in place, after multiplying them
/// by `scale` (no mask: the taped path packs rows without padding).
pub(crate) fn softmax_block(block: &mut [f32], len: usize, scale: f32) {
    const ZEROS: [f32; 512] = [0.0; 512];
    if len <= ZEROS.len() {
        masked_softmax_dispatch_rows(block, len, &ZEROS[..len], scale);
    } else {
        masked_softmax_dispatch_rows(block, len, &vec![0.0; len], scale);
    }
}

#[inline(always)]
fn layer_norm_keep_body(
    x: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let h = gamma.len();
    for ((x, xh), rs) in x
        .chunks_exact_mut(h)
        .zip(xhat.chunks_exact_mut(h))
        .zip(rstd)
    {
        let mean = lane_sum(x) / h as f32;
        for (d, v) in xh.iter_mut().zip(x.iter()) {
            *d = *v - mean;
        }
        let var = lane_dot(xh, xh) / h as f32;
        let r = 1.0 / (var + eps).sqrt();
        *rs = r;
        for (((x, xh), g), b) in x.iter_mut().zip(xh.iter_mut()).zip(gamma).zip(beta) {
            *xh *= r;
            *x = *xh * g + b;
        }
    }
}
multiversion!(layer_norm_keep_dispatch, layer_norm_keep_body,
    (x: &mut [f32], xhat: &mut [f32], rstd: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32));

/// LayerNorm over rows of `gamma.len()` values in place, keeping the normalised input and
/// the reciprocal standard deviations for the backward pass; parallel.
pub(crate) fn layer_norm_keep(
    x: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let h = gamma.len();
    let rows = chunk_rows(h, rstd.len());
    x.par_chunks_mut(rows * h)
        .zip(xhat.par_chunks_mut(rows * h))
        .zip(rstd.par_chunks_mut(rows))
        .for_each(|((x, xh), rs)| layer_norm_keep_dispatch(x, xh, rs, gamma, beta, eps));
}

#[inline(always)]
fn layer_norm_grad_body(dy: &mut [f32], xhat: &[f32], rstd: &[f32], gamma: &[f32]) {
    let h = gamma.len();
    for ((dy, xh), r) in dy.chunks_exact_mut(h).zip(xhat.chunks_exact(h)).zip(rstd) {
        for (d, g) in dy.iter_mut().zip(gamma) {
            *d *= g;
        }
        let m1 = lane_sum(dy) / h as f32;
        let m2 = lane_dot(dy, xh) / h as f32;
        for (d, x) in dy.iter_mut().zip(xh) {
            *d = r * (*d - m1 - x * m2);
        }
    }
}
multiversion!(layer_norm_grad_dispatch, layer_norm_grad_body,
    (dy: &mut [f32], xhat: &[f32], rstd: &[f32], gamma: &[f32]));

/// LayerNorm backward for the input, in place: `dx = rstd (g - mean(g) - xhat mean(g xhat))`
/// with `g = dy * gamma`; parallel.
pub(crate) fn layer_norm_grad(dy: &mut [f32], xhat: &[f32], rstd: &[f32], gamma: &[f32]) {
    let h = gamma.len();
    let rows = chunk_rows(h, rstd.len());
    dy.par_chunks_mut(rows * h)
        .zip(xhat.par_chunks(rows * h))
        .zip(rstd.par_chunks(rows))
        .for_each(|((dy, xh), rs)| layer_norm_grad_dispatch(dy, xh, rs, gamma));
}

// ---------------------------------------------------------------- candle custom ops

/// The whole buffer of a contiguous f32 tensor, for in-place kernels.
fn contiguous_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_mut_slice(),
        _ => candle_core::bail!("{what}: only f32 is supported"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// `x <- gelu(x + bias)` over the last dimension, in place: the matmul output it reads is
/// fresh and owned by the caller, so no new buffer (and no zeroing of one) is needed.
struct BiasGelu;

impl InplaceOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "glassbox-bias-gelu"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let bias = contiguous(s2, l2, "bias_gelu bias")?;
        let n = bias.len();
        if l1.dims().last() != Some(&n) {
            candle_core::bail!("bias_gelu: bias of {n} for input {:?}", l1.dims());
        }
        let x = contiguous_mut(s1, l1, "bias_gelu")?;
        let rows = chunk_rows(n, x.len() / n) * n;
        x.par_chunks_mut(rows)
            .for_each(|chunk| bias_gelu_dispatch(chunk, bias));
        Ok(())
    }
}

/// `gelu(x + bias)` (exact-form GELU), fused and parallel. Overwrites `x` when it is
/// contiguous (callers pass a fresh matmul output they do not reuse) and returns it.
pub fn bias_gelu_inplace(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.inplace_op2(bias, &BiasGelu)?;
    Ok(x)
}

/// `softmax(scale * scores + key_bias)` over the last dimension of `[B, heads, Lq, Lk]`
/// scores, with a `[B, Lk]` additive key bias (0 on real keys, a large negative on padding).
struct MaskedSoftmax {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "glassbox-masked-softmax"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let scores = contiguous(s1, l1, "masked_softmax")?;
        let bias = contiguous(s2, l2, "masked_softmax bias")?;
        let &[b, h, lq, lk] = l1.dims() else {
            candle_core::bail!(
                "masked_softmax: scores must be [B, heads, Lq, Lk], got {:?}",
                l1.dims()
            )
        };
        if l2.dims() != [b, lk] {
            candle_core::bail!(
                "masked_softmax: bias must be [{b}, {lk}], got {:?}",
                l2.dims()
            );
        }
        let mut dst = vec![0f32; scores.len()];
        let per_batch = h * lq * lk;
        let scale = self.scale;
        // One task per (batch row, head): every row of it shares the same key bias.
        dst.par_chunks_mut(lq * lk)
            .zip(scores.par_chunks(lq * lk))
            .enumerate()
            .for_each(|(i, (d, s))| {
                let bi = i * lq * lk / per_batch;
                masked_softmax_dispatch(s, &bias[bi * lk..(bi + 1) * lk], scale, d);
            });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
    /// The gradient path: `d scores = scale * y * (g - sum(g y))` per row (the key bias is
    /// not differentiated).
    fn bwd(
        &self,
        arg1: &Tensor,
        _arg2: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let y = values(res)?;
        let g = values(grad_res)?;
        let n = arg1.dims().last().copied().unwrap_or(1).max(1);
        let scale = self.scale;
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(n * 64)
            .zip(y.par_chunks(n * 64).zip(g.par_chunks(n * 64)))
            .for_each(|(d, (y, g))| {
                for ((d, y), g) in d
                    .chunks_exact_mut(n)
                    .zip(y.chunks_exact(n))
                    .zip(g.chunks_exact(n))
                {
                    let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                    for j in 0..n {
                        d[j] = scale * y[j] * (g[j] - dot);
                    }
                }
            });
        Ok((
            Some(Tensor::from_vec(dx, arg1.shape(), arg1.device())?),
            None,
        ))
    }
}

/// Attention probabilities from raw `q k^T` scores, fused and parallel.
pub fn masked_softmax(scores: &Tensor, key_bias: &Tensor, scale: f32) -> Result<Tensor> {
    scores
        .contiguous()?
        .apply_op2_no_bwd(&key_bias.contiguous()?, &MaskedSoftmax { scale })
}

/// [`masked_softmax`] on the gradient path: differentiable in the scores (one op instead of
/// candle's scale, bias add and softmax composition, each a pass forward and backward).
pub fn masked_softmax_input_grad(scores: &Tensor, key_bias: &Tensor, scale: f32) -> Result<Tensor> {
    scores
        .contiguous()?
        .apply_op2(&key_bias.contiguous()?, MaskedSoftmax { scale })
}

/// `x <- LayerNorm(x + residual)` with `[2, H]` parameters (gamma row 0, beta row 1), in
/// place on `x`.
struct AddLayerNorm {
    eps: f32,
}

impl InplaceOp3 for AddLayerNorm {
    fn name(&self) -> &'static str {
        "glassbox-add-layer-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let res = contiguous(s2, l2, "add_layer_norm residual")?;
        let params = contiguous(s3, l3, "add_layer_norm params")?;
        let h = params.len() / 2;
        if l1.dims() != l2.dims() || l1.dims().last() != Some(&h) {
            candle_core::bail!(
                "add_layer_norm: shapes {:?} {:?} {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let (gamma, beta) = params.split_at(h);
        let x = contiguous_mut(s1, l1, "add_layer_norm")?;
        let rows = chunk_rows(h, x.len() / h) * h;
        let eps = self.eps;
        x.par_chunks_mut(rows)
            .zip(res.par_chunks(rows))
            .for_each(|(xs, rs)| add_layer_norm_dispatch(xs, rs, gamma, beta, eps));
        Ok(())
    }
}

/// `LayerNorm(x + residual)`, fused and parallel; `params` is `[2, H]` (gamma, beta).
/// Overwrites `x` when it is contiguous (callers pass a fresh sublayer output they do not
/// reuse) and returns it.
pub fn add_layer_norm_inplace(
    x: &Tensor,
    residual: &Tensor,
    params: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.inplace_op3(&residual.contiguous()?, params, &AddLayerNorm { eps })?;
    Ok(x)
}

/// Multi-head attention straight from the fused QKV projection, for rows that do not ask for
/// their attention probabilities.
///
/// candle's batched matmul runs the `B x heads` small products one after another, each split
/// over threads, so at BERT sizes (`hd = 32`) the threading overhead dominates; it also needs
/// the Q/K/V and context transposes as copies. Here one rayon task per (row, head) reads Q, K
/// and V in place from `[B, L, 3H]` with strides, runs both products single-threaded with the
/// `gemm` crate candle itself uses, applies scale + key mask + softmax + head mask in between,
/// and writes its context slice directly into `[B, L, H]`.
struct FusedAttention {
    heads: usize,
    scale: f32,
}

/// A raw pointer that rayon tasks may share: every task writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
// SAFETY: tasks write disjoint (row, head) slices; see `FusedAttention::cpu_fwd` and the
// taped gradient path.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The element `offset` places on (a method, so closures capture the whole wrapper).
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "glassbox-fused-attention"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous(s1, l1, "attention qkv")?;
        let key_bias = contiguous(s2, l2, "attention key bias")?;
        let head_keep = contiguous(s3, l3, "attention head mask")?;
        let &[b, l, three_h] = l1.dims() else {
            candle_core::bail!("attention: qkv must be [B, L, 3H], got {:?}", l1.dims())
        };
        let nh = self.heads;
        let h = three_h / 3;
        let hd = h / nh;
        if three_h % 3 != 0 || h % nh != 0 || l2.dims() != [b, l] || l3.dims() != [b, nh] {
            candle_core::bail!(
                "attention: shapes {:?} {:?} {:?} for {nh} heads",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        // Not zeroed first (a serial pass over the whole output): every task writes its
        // whole `L x hd` block, a masked head as zeros.
        let mut ctx: Vec<f32> = Vec::with_capacity(b * l * h);
        let out = SharedMut(ctx.as_mut_ptr());
        let scale = self.scale;
        // Score rows start on cache lines (`ls` floats apart): the softmax ends each row with
        // a masked store of its last partial chunk, and a load of the next row's first chunk
        // from the same line could not be forwarded from it and stalled until it retired.
        let ls = l.next_multiple_of(16);
        // Head width 32 on AVX-512: the hand-written products (see `head32`).
        #[cfg(target_arch = "x86_64")]
        let head32 = hd == head32::HD && std::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let head32 = false;
        (0..b * nh).into_par_iter().for_each_init(
            || {
                (
                    vec![0f32; l * ls + 16],
                    vec![0f32; if head32 { hd * ls } else { 0 }],
                )
            },
            |(buf, kt), task| {
                let skip = (16 - (buf.as_ptr() as usize % 64) / 4) % 16;
                let scores = &mut buf[skip..skip + l * ls];
                let (bi, hi) = (task / nh, task % nh);
                let keep = head_keep[bi * nh + hi];
                let base = bi * l * three_h + hi * hd;
                let q = qkv[base..].as_ptr();
                let k = qkv[base + h..].as_ptr();
                let v = qkv[base + 2 * h..].as_ptr();
                let dst = out.at(bi * l * h + hi * hd);
                if keep == 0.0 {
                    // A masked head contributes nothing: its context is zero.
                    for r in 0..l {
                        // SAFETY: row r of this task's block lies inside `ctx`'s capacity.
                        unsafe { std::ptr::write_bytes(dst.add(r * h), 0, hd) };
                    }
                    return;
                }
                // SAFETY: every pointer stays inside its buffer: Q/K/V rows are `3H` apart with
                // `hd` columns from `base`, the scores buffer is `L x ls`, `kt` is `hd x ls`,
                // and this task alone writes the `L x hd` block of `ctx` at (row bi, head hi);
                // `head32` only where the CPU has AVX-512 F.
                unsafe {
                    // This task's Q, K and V rows are 3H apart, a page or more: the hardware
                    // prefetchers do not follow them, and the products stalled on each row
                    // (measured on a 64 x 73-token batch: the whole forward pass 4% faster
                    // with these prefetches, 2026-11-29).
                    #[cfg(target_arch = "x86_64")]
                    for j in 0..l {
                        for p in [q, k, v] {
                            let row = p.add(j * three_h).cast::<i8>();
                            for line in (0..hd * 4).step_by(64) {
                                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(line));
                            }
                        }
                    }
                    if head32 {
                        #[cfg(target_arch = "x86_64")]
                        head32::scores(q, k, three_h, l, ls, kt, scores.as_mut_ptr());
                    } else {
                        small_gemm(
                            (l, l, hd),
                            scores.as_mut_ptr(),
                            ls,
                            (q, three_h, 1),
                            (k, 1, three_h),
                            1.0,
                        );
                    }
                }
                masked_softmax_dispatch_rows(scores, ls, &key_bias[bi * l..(bi + 1) * l], scale);
                if keep != 1.0 {
                    scores.iter_mut().for_each(|p| *p *= keep);
                }
                unsafe {
                    if head32 {
                        #[cfg(target_arch = "x86_64")]
                        head32::context(scores.as_ptr(), ls, v, three_h, l, dst, h);
                    } else {
                        small_gemm(
                            (l, hd, l),
                            dst,
                            h,
                            (scores.as_ptr(), ls, 1),
                            (v, three_h, 1),
                            1.0,
                        );
                    }
                }
            },
        );
        // SAFETY: the tasks above wrote every (row, head) block, together all `b * l * h`.
        unsafe { ctx.set_len(b * l * h) };
        Ok((CpuStorage::F32(ctx), Shape::from_dims(&[b, l, h])))
    }
}

/// One row of a masked softmax in place: three passes (scale, bias and max; exp and sum;
/// normalise), each over whole 16-lane chunks. The last partial chunk goes through a padded
/// copy, so rows whose length is not a multiple of 16 (73 tokens: 4 chunks and 9 left) stay
/// vectorised instead of ending in a scalar loop that cost as much as the rest of the row.
#[inline(always)]
fn masked_softmax_row_inplace(row: &mut [f32], key_bias: &[f32], scale: f32) {
    let n = row.len();
    let full = n - n % LANES;
    let mut tail = [-1e30f32; LANES];
    let mut mx = [f32::NEG_INFINITY; LANES];
    for (rc, bc) in row[..full]
        .chunks_exact_mut(LANES)
        .zip(key_bias[..full].chunks_exact(LANES))
    {
        for ((d, b), m) in rc.iter_mut().zip(bc).zip(mx.iter_mut()) {
            *d = *d * scale + *b;
            *m = m.max(*d);
        }
    }
    for (j, (d, b)) in row[full..].iter().zip(&key_bias[full..]).enumerate() {
        tail[j] = *d * scale + *b;
    }
    for (m, t) in mx.iter_mut().zip(&tail) {
        *m = m.max(*t);
    }
    let max = hmax(mx);
    let mut acc = [0f32; LANES];
    for rc in row[..full].chunks_exact_mut(LANES) {
        for (d, a) in rc.iter_mut().zip(acc.iter_mut()) {
            *d = exp_f32(*d - max);
            *a += *d;
        }
    }
    // Padding lanes hold -1e30: their exp underflows to the smallest normal (~1e-38), far
    // below the sum's rounding, and is not written back.
    for (t, a) in tail.iter_mut().zip(acc.iter_mut()) {
        *t = exp_f32(*t - max);
        *a += *t;
    }
    let inv = 1.0 / hsum(acc);
    for d in row[..full].iter_mut() {
        *d *= inv;
    }
    for (d, t) in row[full..].iter_mut().zip(&tail) {
        *d = *t * inv;
    }
}

/// Rows of `key_bias.len()` values, `stride` apart.
///
/// With a stride of whole 16-lane chunks (the attention kernel pads its score rows so) the
/// block goes in three passes over all rows (scale, bias and max; exp and sum; normalise),
/// the padding lanes biased to -1e30 so no row has a partial chunk: each row is a chain of
/// dependent reductions, and interleaving rows lets them overlap.
#[inline(always)]
fn masked_softmax_block(block: &mut [f32], stride: usize, key_bias: &[f32], scale: f32) {
    let n = key_bias.len();
    const MAX_ROWS: usize = 1024;
    let rows = block.len().div_ceil(stride);
    if !stride.is_multiple_of(LANES) || stride < n || stride > MAX_ROWS || rows > MAX_ROWS {
        for row in block.chunks_mut(stride) {
            masked_softmax_row_inplace(&mut row[..n], key_bias, scale);
        }
        return;
    }
    let mut bias = [-1e30f32; MAX_ROWS];
    bias[..n].copy_from_slice(key_bias);
    let bias = &bias[..stride];
    let mut stat = [0f32; MAX_ROWS];
    for (row, m) in block.chunks_exact_mut(stride).zip(stat.iter_mut()) {
        let mut mx = [f32::NEG_INFINITY; LANES];
        for (rc, bc) in row.chunks_exact_mut(LANES).zip(bias.chunks_exact(LANES)) {
            for ((d, b), m) in rc.iter_mut().zip(bc).zip(mx.iter_mut()) {
                *d = *d * scale + *b;
                *m = m.max(*d);
            }
        }
        *m = hmax(mx);
    }
    for (row, m) in block.chunks_exact_mut(stride).zip(stat.iter_mut()) {
        let max = *m;
        let mut acc = [0f32; LANES];
        for rc in row.chunks_exact_mut(LANES) {
            for (d, a) in rc.iter_mut().zip(acc.iter_mut()) {
                *d = exp_f32(*d - max);
                *a += *d;
            }
        }
        *m = 1.0 / hsum(acc);
    }
    for (row, inv) in block.chunks_exact_mut(stride).zip(&stat) {
        for d in row.iter_mut() {
            *d *= inv;
        }
    }
}
multiversion!(masked_softmax_dispatch_rows, masked_softmax_block,
    (block: &mut [f32], stride: usize, key_bias: &[f32], scale: f32));

/// Attention context `[B, L, H]` from `qkv` `[B, L, 3H]`, the key bias `[B, L]` and the
/// per-row head keep factors `[B, heads]` (1 keeps a head, 0 switches it off).
pub fn fused_attention(
    qkv: &Tensor,
    key_bias: &Tensor,
    head_keep: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<Tensor> {
    qkv.contiguous()?.apply_op3_no_bwd(
        &key_bias.contiguous()?,
        &head_keep.contiguous()?,
        &FusedAttention { heads, scale },
    )
}

/// `x @ W + b` for a `[N, K]` input and a pre-transposed `[K, M]` weight: the output starts
/// as the bias broadcast over rows and one `gemm` call accumulates the product into it, so the
/// bias costs no extra pass over the output (candle's matmul + broadcast_add reads and writes
/// it twice).
struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "glassbox-linear"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "linear input")?;
        let w = contiguous(s2, l2, "linear weight")?;
        let bias = contiguous(s3, l3, "linear bias")?;
        let &[k, m] = l2.dims() else {
            candle_core::bail!("linear: weight must be [K, M], got {:?}", l2.dims())
        };
        let dims = l1.dims();
        if dims.last() != Some(&k) || bias.len() != m {
            candle_core::bail!(
                "linear: input {:?}, weight {:?}, bias {:?}",
                dims,
                l2.dims(),
                l3.dims()
            );
        }
        let out = linear_rows(x, w, bias, x.len() / k, k, m);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = m;
        Ok((CpuStorage::F32(out), Shape::from_dims(&out_dims)))
    }
}

/// `dst = beta * lhs @ rhs` for an `m x n` result over `k` on the calling thread (the small
/// per-row, per-head products of attention). `dst` rows are `dst_rs` apart with contiguous
/// columns; each operand is given by its row and column strides, so transposed views cost
/// nothing.
///
/// # Safety
/// Every element the strides reach must lie inside its buffer, and no other thread may write
/// the `m x n` block of `dst`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn small_gemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        0.0,
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// Attention products of one (row, head) with head width 32 on AVX-512, register-blocked and
/// without `gemm`'s packing (which cost as much as its multiply-adds at these sizes):
/// `scores = Q K^T` (`l x ls`, the columns past `l` zero) and, once the caller has turned
/// the scores into probabilities, `ctx = P V`. Q, K and V rows are `stride` apart.
#[cfg(target_arch = "x86_64")]
mod head32 {
    use std::arch::x86_64::*;

    /// Head width.
    pub(super) const HD: usize = 32;

    /// `kt` (`HD x ls`) = K transposed, zero past `l`; then `scores = Q K^T`.
    ///
    /// # Safety
    /// AVX-512 F; `q`, `k` reach `l` rows of `HD` values `stride` apart; `kt` holds
    /// `HD * ls` values; `scores` has `l` rows of `ls` (a multiple of 16) writable values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores(
        q: *const f32,
        k: *const f32,
        stride: usize,
        l: usize,
        ls: usize,
        kt: &mut [f32],
        scores: *mut f32,
    ) {
        debug_assert!(ls.is_multiple_of(16) && ls >= l && kt.len() >= HD * ls);
        for j in 0..l {
            let row = k.add(j * stride);
            for d in 0..HD {
                *kt.get_unchecked_mut(d * ls + j) = *row.add(d);
            }
        }
        for d in 0..HD {
            kt[d * ls + l..(d + 1) * ls].fill(0.0);
        }
        let kt = kt.as_ptr();
        let chunks = ls / 16;
        let mut i = 0;
        while i < l {
            let rows = (l - i).min(4);
            let mut c = 0;
            while c < chunks {
                let cols = (chunks - c).min(5);
                let (qi, out, kc) = (
                    q.add(i * stride),
                    scores.add(i * ls + 16 * c),
                    kt.add(16 * c),
                );
                match (rows, cols) {
                    (4, 5) => score_block::<4, 5>(qi, stride, kc, ls, out),
                    (4, 4) => score_block::<4, 4>(qi, stride, kc, ls, out),
                    (4, 3) => score_block::<4, 3>(qi, stride, kc, ls, out),
                    (4, 2) => score_block::<4, 2>(qi, stride, kc, ls, out),
                    (4, _) => score_block::<4, 1>(qi, stride, kc, ls, out),
                    (3, 5) => score_block::<3, 5>(qi, stride, kc, ls, out),
                    (3, 4) => score_block::<3, 4>(qi, stride, kc, ls, out),
                    (3, 3) => score_block::<3, 3>(qi, stride, kc, ls, out),
                    (3, 2) => score_block::<3, 2>(qi, stride, kc, ls, out),
                    (3, _) => score_block::<3, 1>(qi, stride, kc, ls, out),
                    (2, 5) => score_block::<2, 5>(qi, stride, kc, ls, out),
                    (2, 4) => score_block::<2, 4>(qi, stride, kc, ls, out),
                    (2, 3) => score_block::<2, 3>(qi, stride, kc, ls, out),
                    (2, 2) => score_block::<2, 2>(qi, stride, kc, ls, out),
                    (2, _) => score_block::<2, 1>(qi, stride, kc, ls, out),
                    (_, 5) => score_block::<1, 5>(qi, stride, kc, ls, out),
                    (_, 4) => score_block::<1, 4>(qi, stride, kc, ls, out),
                    (_, 3) => score_block::<1, 3>(qi, stride, kc, ls, out),
                    (_, 2) => score_block::<1, 2>(qi, stride, kc, ls, out),
                    (_, _) => score_block::<1, 1>(qi, stride, kc, ls, out),
                }
                c += cols;
            }
            i += rows;
        }
    }

    /// `R` score rows x `C` chunks of 16 columns: a sum over the head width in order.
    #[inline(always)]
    unsafe fn score_block<const R: usize, const C: usize>(
        q: *const f32,
        stride: usize,
        kt: *const f32,
        ls: usize,
        out: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for d in 0..HD {
            let mut kv = [_mm512_setzero_ps(); C];
            for (c, v) in kv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(kt.add(d * ls + 16 * c));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let qv = _mm512_set1_ps(*q.add(r * stride + d));
                for c in 0..C {
                    a[c] = _mm512_fmadd_ps(qv, kv[c], a[c]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (c, v) in a.iter().enumerate() {
                _mm512_storeu_ps(out.add(r * ls + 16 * c), *v);
            }
        }
    }

    /// `ctx = P V`: `l` rows of `HD` values at `dst`, `dst_rs` apart, from the probabilities
    /// (`l` rows, `ls` apart; the first `l` columns used) and V's `l` rows `stride` apart.
    ///
    /// # Safety
    /// AVX-512 F; every pointer reaches the rows and columns named.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn context(
        p: *const f32,
        ls: usize,
        v: *const f32,
        stride: usize,
        l: usize,
        dst: *mut f32,
        dst_rs: usize,
    ) {
        let mut i = 0;
        while i < l {
            let rows = (l - i).min(8);
            let (pi, out) = (p.add(i * ls), dst.add(i * dst_rs));
            match rows {
                8 => context_block::<8>(pi, ls, v, stride, l, out, dst_rs),
                7 => context_block::<7>(pi, ls, v, stride, l, out, dst_rs),
                6 => context_block::<6>(pi, ls, v, stride, l, out, dst_rs),
                5 => context_block::<5>(pi, ls, v, stride, l, out, dst_rs),
                4 => context_block::<4>(pi, ls, v, stride, l, out, dst_rs),
                3 => context_block::<3>(pi, ls, v, stride, l, out, dst_rs),
                2 => context_block::<2>(pi, ls, v, stride, l, out, dst_rs),
                _ => context_block::<1>(pi, ls, v, stride, l, out, dst_rs),
            }
            i += rows;
        }
    }

    /// `R` context rows: a sum over the keys in order.
    #[inline(always)]
    unsafe fn context_block<const R: usize>(
        p: *const f32,
        ls: usize,
        v: *const f32,
        stride: usize,
        l: usize,
        dst: *mut f32,
        dst_rs: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for j in 0..l {
            let v0 = _mm512_loadu_ps(v.add(j * stride));
            let v1 = _mm512_loadu_ps(v.add(j * stride + 16));
            for (r, a) in acc.iter_mut().enumerate() {
                let pv = _mm512_set1_ps(*p.add(r * ls + j));
                a[0] = _mm512_fmadd_ps(pv, v0, a[0]);
                a[1] = _mm512_fmadd_ps(pv, v1, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(dst.add(r * dst_rs), a[0]);
            _mm512_storeu_ps(dst.add(r * dst_rs + 16), a[1]);
        }
    }
}

/// candle's threads for a `gemm` of `macs` multiply-adds when there are enough of them to
/// share (below 2^16 the split costs more than it saves), else the calling thread.
pub(crate) fn gemm_parallelism(macs: usize) -> gemm::Parallelism {
    let threads = candle_core::utils::get_num_threads();
    if threads > 1 && macs >= 1 << 16 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// `x @ W + b` for `n` rows: `x` is `n x k`, `w` is `k x m`, all row-major. The output starts
/// as the bias broadcast over rows and one `gemm` call accumulates the product into it, over
/// candle's threads when the product is large enough.
pub(crate) fn linear_rows(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    n: usize,
    k: usize,
    m: usize,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * m);
    for _ in 0..n {
        out.extend_from_slice(bias);
    }
    let parallelism = gemm_parallelism(n * m * k);
    // SAFETY: `out` is `n x m` row-major, `x` is `n x k` row-major, `w` is `k x m` row-major;
    // the strides below describe exactly those buffers.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            out.as_mut_ptr(),
            1,
            m as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            m as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    out
}

/// `x @ W + b` with a pre-transposed contiguous `[K, M]` weight (inference only).
pub fn linear(x: &Tensor, weight_t: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(weight_t, bias, &Linear)
}

/// [`Linear`] on the gradient path: the same forward, and a backward pass that gives only the
/// input's gradient, `grad @ W^T`. Candle's own matmul backward also computes the weight's
/// gradient (`x^T @ grad`, as many FLOPs as the forward) and the bias's, whether or not
/// anything asked for them; input attributions never need them.
struct InputGradLinear;

impl CustomOp3 for InputGradLinear {
    fn name(&self) -> &'static str {
        "glassbox-linear-input-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Linear.cpu_fwd(s1, l1, s2, l2, s3, l3)
    }
    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _arg3: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (k, m) = arg2.dims2()?;
        let n = grad_res.elem_count() / m.max(1);
        let grad = grad_res
            .contiguous()?
            .reshape((n, m))?
            .matmul(&arg2.t()?)?
            .reshape(arg1.dims())?;
        debug_assert_eq!(grad.dim(grad.rank() - 1)?, k);
        Ok((Some(grad), None, None))
    }
}

/// `x @ W + b` for the gradient path (f32): differentiable in `x` only (see
/// [`InputGradLinear`]).
pub fn linear_input_grad(x: &Tensor, weight_t: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(weight_t, bias, InputGradLinear)
}

// ---------------------------------------------------------------- gradient path
//
// Candle differentiates LayerNorm and softmax through their compositions (mean, subtract,
// square, divide, exp, sum, ...): a dozen element-wise ops forward and twice as many
// backward, each a pass over the whole activation. The two ops below compute the same
// function in one pass and give the input's gradient in closed form in one more.

/// Mean and `1 / sqrt(var + eps)` of one row (f64 sums, as the fused inference kernel).
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len().max(1) as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row
        .iter()
        .map(|&v| (v as f64 - mean) * (v as f64 - mean))
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// The rows of a contiguous f32 tensor as a vector (for a backward pass).
fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

/// LayerNorm over the last dimension, differentiable in its input only:
/// `dx = rstd * (g w - mean(g w) - xhat * mean(g w xhat))`.
struct InputGradLayerNorm {
    eps: f32,
}

impl CustomOp3 for InputGradLayerNorm {
    fn name(&self) -> &'static str {
        "glassbox-layer-norm-input-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "layer norm input")?;
        let w = contiguous(s2, l2, "layer norm weight")?;
        let b = contiguous(s3, l3, "layer norm bias")?;
        let h = w.len();
        if h == 0 || b.len() != h || l1.dims().last() != Some(&h) {
            candle_core::bail!(
                "layer norm: input {:?}, weight {:?}, bias {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let mut out = vec![0f32; x.len()];
        for (row, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
            let (mean, rstd) = moments(row, self.eps);
            for j in 0..h {
                o[j] = (row[j] - mean) * rstd * w[j] + b[j];
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _arg3: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let x = values(arg1)?;
        let w = values(arg2)?;
        let g = values(grad_res)?;
        let h = w.len().max(1);
        let mut dx = vec![0f32; x.len()];
        for ((row, g), d) in x
            .chunks_exact(h)
            .zip(g.chunks_exact(h))
            .zip(dx.chunks_exact_mut(h))
        {
            let (mean, rstd) = moments(row, self.eps);
            let (mut sum_gw, mut sum_gw_xhat) = (0f64, 0f64);
            for j in 0..h {
                let gw = (g[j] * w[j]) as f64;
                sum_gw += gw;
                sum_gw_xhat += gw * ((row[j] - mean) * rstd) as f64;
            }
            let (m1, m2) = ((sum_gw / h as f64) as f32, (sum_gw_xhat / h as f64) as f32);
            for j in 0..h {
                let xhat = (row[j] - mean) * rstd;
                d[j] = rstd * (g[j] * w[j] - m1 - xhat * m2);
            }
        }
        let dx = Tensor::from_vec(dx, arg1.shape(), arg1.device())?;
        Ok((Some(dx), None, None))
    }
}

/// LayerNorm over the last dimension for the gradient path (f32): differentiable in `x` only.
pub fn layer_norm_input_grad(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(weight, bias, InputGradLayerNorm { eps })
}

/// erf from Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7), for GELU's derivative (the forward
/// [`gelu_f32`] is piecewise; the two agree to about 1e-7).
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    erf_abs(x.abs()).copysign(x)
}

/// Exact-form GELU, differentiable: `d gelu / dx = Phi(x) + x phi(x)`.
struct InputGradGelu;

impl CustomOp1 for InputGradGelu {
    fn name(&self) -> &'static str {
        "glassbox-gelu-input-grad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l, "gelu input")?;
        let mut out = vec![0f32; x.len()];
        gelu_erf_into(x, &mut out);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let x = values(arg)?;
        let mut dx = values(grad_res)?;
        gelu_erf_grad_mul(&x, &mut dx);
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// Exact-form GELU for the gradient path (f32).
pub fn gelu_erf_input_grad(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(InputGradGelu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg_vec(seed: &mut u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The fused embedding pass equals candle's lookups, sums and LayerNorm; given word rows
    /// equal looked-up ones; an id outside a table is an error, not a panic.
    #[test]
    fn embedding_pass_matches_the_composition() {
        let dev = candle_core::Device::Cpu;
        let (vocab, max_pos, types, h) = (50, 20, 2, 24);
        let mut seed = 5;
        let words = lcg_vec(&mut seed, vocab * h);
        let positions = lcg_vec(&mut seed, max_pos * h);
        let type_table = lcg_vec(&mut seed, types * h);
        let gamma: Vec<f32> = lcg_vec(&mut seed, h).iter().map(|g| 1.0 + g).collect();
        let beta = lcg_vec(&mut seed, h);
        let ids: Vec<u32> = vec![3, 17, 49, 0, 8, 8, 21];
        let pos_ids: Vec<u32> = vec![0, 1, 2, 3, 0, 1, 19];
        let type_ids: Vec<u32> = vec![0, 0, 1, 1, 0, 1, 1];
        let t = |v: &[f32], rows: usize| Tensor::from_vec(v.to_vec(), (rows, h), &dev).unwrap();
        let idx = |v: &[u32]| Tensor::new(v, &dev).unwrap();
        let sum = ((t(&words, vocab).index_select(&idx(&ids), 0).unwrap()
            + t(&positions, max_pos)
                .index_select(&idx(&pos_ids), 0)
                .unwrap())
        .unwrap()
            + t(&type_table, types)
                .index_select(&idx(&type_ids), 0)
                .unwrap())
        .unwrap();
        let want = candle_nn::ops::layer_norm(
            &sum,
            &Tensor::new(gamma.as_slice(), &dev).unwrap(),
            &Tensor::new(beta.as_slice(), &dev).unwrap(),
            1e-12,
        )
        .unwrap();
        let input = EmbeddingInput {
            words: &words,
            ids: Some(&ids),
            positions: (&positions, &pos_ids),
            token_types: Some((&type_table, &type_ids)),
            gamma: &gamma,
            beta: &beta,
            eps: 1e-12,
        };
        let got = embed_layer_norm(&input).unwrap();
        assert!(max_diff(&t(&got, ids.len()), &want) < 1e-5);
        // The same rows given directly (gradient methods' embeddings).
        let given: Vec<f32> = ids
            .iter()
            .flat_map(|&i| words[i as usize * h..][..h].to_vec())
            .collect();
        let direct = embed_layer_norm(&EmbeddingInput {
            words: &given,
            ids: None,
            ..input
        })
        .unwrap();
        assert_eq!(direct, got);
        for (ids, pos, ty) in [
            (vec![50u32], vec![0u32], vec![0u32]),
            (vec![1], vec![20], vec![0]),
            (vec![1], vec![0], vec![2]),
        ] {
            let err = embed_layer_norm(&EmbeddingInput {
                ids: Some(&ids),
                positions: (&positions, &pos),
                token_types: Some((&type_table, &ty)),
                ..input
            })
            .unwrap_err();
            assert!(err.to_string().contains("outside the table"), "{err}");
        }
    }

    /// The parallel mean pool equals candle's masked mean and L2 normalisation, padding
    /// included.
    #[test]
    fn mean_pool_matches_the_composition() {
        let dev = candle_core::Device::Cpu;
        let (b, l, h) = (3, 7, 16);
        let mut seed = 9;
        let hidden = lcg_vec(&mut seed, b * l * h);
        let lens = [7usize, 3, 1];
        let mask: Vec<f32> = (0..b * l)
            .map(|i| if i % l < lens[i / l] { 1.0 } else { 0.0 })
            .collect();
        let got = mean_pool_normalised_rows(&hidden, &mask, (b, l, h));
        let ht = Tensor::from_vec(hidden, (b, l, h), &dev).unwrap();
        let mt = Tensor::from_vec(mask, (b, l), &dev).unwrap();
        let summed = ht
            .broadcast_mul(&mt.unsqueeze(2).unwrap())
            .unwrap()
            .sum(1)
            .unwrap();
        let mean = summed.broadcast_div(&mt.sum_keepdim(1).unwrap()).unwrap();
        let norm = mean.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
        let want = mean.broadcast_div(&norm).unwrap();
        let got = Tensor::from_vec(got, (b, h), &dev).unwrap();
        assert!(max_diff(&got, &want) < 1e-6);
    }

    /// Largest absolute difference between two tensors of the same shape.
    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn input_grad_linear_has_candles_forward_and_input_gradient() {
        use candle_core::{Device, Var};
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (8, 5), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap();
        let grad_of = |fused: bool| {
            let x = Var::from_tensor(&x0).unwrap();
            let y = if fused {
                linear_input_grad(x.as_tensor(), &w, &b).unwrap()
            } else {
                x.as_tensor()
                    .broadcast_matmul(&w)
                    .unwrap()
                    .broadcast_add(&b)
                    .unwrap()
            };
            let loss = (&y * &probe).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            (
                y,
                grads.get(x.as_tensor()).unwrap().clone(),
                grads.get(&w).is_some(),
            )
        };
        let (y_fused, g_fused, weight_grad) = grad_of(true);
        let (y_plain, g_plain, _) = grad_of(false);
        assert!(max_diff(&y_fused, &y_plain) < 1e-5);
        assert!(max_diff(&g_fused, &g_plain) < 1e-5);
        assert!(!weight_grad, "no gradient for the weight");
    }

    #[test]
    fn gradient_path_layer_norm_softmax_and_gelu_match_candles_compositions() {
        use candle_core::{Device, Var, D};
        let dev = Device::Cpu;
        let x0 = (Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap() * 3.0).unwrap();
        let w = Tensor::randn(1f32, 0.5, 16, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.5, 16, &dev).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
        // 0 on real keys, -1e4 on the last three keys of the second row (padding).
        let mut bias = vec![0f32; 32];
        bias[29..].iter_mut().for_each(|v| *v = -1e4);
        let key_bias = Tensor::from_vec(bias, (2, 16), &dev).unwrap();
        let run = |which: u8| {
            let x = Var::from_tensor(&x0).unwrap();
            let t = x.as_tensor();
            let y = match which {
                0 => layer_norm_input_grad(t, &w, &b, 1e-12).unwrap(),
                1 => candle_nn::ops::layer_norm_slow(t, &w, &b, 1e-12).unwrap(),
                2 => {
                    let scores = t.reshape((2, 1, 3, 16)).unwrap();
                    masked_softmax_input_grad(&scores, &key_bias, 0.3)
                        .unwrap()
                        .reshape((2, 3, 16))
                        .unwrap()
                }
                3 => {
                    let scores = (t.reshape((2, 1, 3, 16)).unwrap() * 0.3).unwrap();
                    let biased = scores
                        .broadcast_add(&key_bias.reshape((2, 1, 1, 16)).unwrap())
                        .unwrap();
                    candle_nn::ops::softmax(&biased, D::Minus1)
                        .unwrap()
                        .reshape((2, 3, 16))
                        .unwrap()
                }
                4 => gelu_erf_input_grad(t).unwrap(),
                _ => t.gelu_erf().unwrap(),
            };
            let loss = (&y * &probe).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            (y, grads.get(t).unwrap().clone())
        };
        for (ours, theirs) in [(0, 1), (2, 3), (4, 5)] {
            let (y_ours, g_ours) = run(ours);
            let (y_theirs, g_theirs) = run(theirs);
            assert!(max_diff(&y_ours, &y_theirs) < 1e-5, "forward {ours}");
            assert!(max_diff(&g_ours, &g_theirs) < 1e-4, "gradient {ours}");
        }
    }

    #[test]
    fn exp_matches_std_over_the_range_softmax_uses() {
        let mut worst = 0f32;
        let mut x = -70.0f32;
        while x < 80.0 {
            let rel = (exp_f32(x) - x.exp()).abs() / x.exp();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
    }

    #[test]
    fn gelu_matches_exact_form() {
        // erf via f64 series is not in std; compare against candle's own exact GELU.
        let xs: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.005).collect();
        let t = Tensor::new(xs.as_slice(), &candle_core::Device::Cpu).unwrap();
        let want = t.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        let zero = Tensor::zeros(1, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let got = bias_gelu_inplace(&t.reshape((xs.len(), 1)).unwrap(), &zero)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for ((g, w), x) in got.iter().zip(&want).zip(&xs) {
            assert!((g - w).abs() < 2e-6, "gelu({x}) = {g}, want {w}");
        }
    }

    /// The piecewise GELU is within 1.2e-7 (relative to max(1, |x|)) of the exact form in f64
    /// everywhere, including the interval edges, the cut at 6 and far tails, and its 16-lane,
    /// 8-lane and scalar forms give the same bits, as do the slice kernels with a bias.
    #[test]
    fn gelu_is_accurate_and_the_same_in_every_width() {
        let mut xs: Vec<f32> = (-16000..16000).map(|i| i as f32 * 0.00137).collect();
        for k in 0..=8 {
            let e = 0.75 * k as f32;
            for v in [
                e,
                f32::from_bits(e.to_bits() + 1),
                f32::from_bits(e.to_bits().max(1) - 1),
            ] {
                xs.extend([v, -v]);
            }
        }
        xs.extend([
            5.999_999_5,
            -5.999_999_5,
            1e-30,
            -1e-30,
            1e4,
            -1e4,
            3e38,
            -3e38,
            -0.0,
        ]);
        while !xs.len().is_multiple_of(16) {
            xs.push(0.5);
        }
        let dev = candle_core::Device::Cpu;
        let exact = Tensor::new(
            xs.iter().map(|&x| x as f64).collect::<Vec<_>>().as_slice(),
            &dev,
        )
        .unwrap()
        .gelu_erf()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
        let scalar: Vec<f32> = xs.iter().map(|&x| gelu_f32(x)).collect();
        for ((x, g), w) in xs.iter().zip(&scalar).zip(&exact) {
            let err = (*g as f64 - w).abs() / (x.abs() as f64).max(1.0);
            assert!(err < 1.2e-7, "gelu({x}) = {g}, want {w}");
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*;
            if std::is_x86_feature_detected!("avx512f") {
                for (c, want) in xs.chunks(16).zip(scalar.chunks(16)) {
                    let mut got = [0f32; 16];
                    // SAFETY: the CPU has AVX-512 F; 16 values in and out.
                    unsafe {
                        _mm512_storeu_ps(got.as_mut_ptr(), gelu_avx512(_mm512_loadu_ps(c.as_ptr())))
                    };
                    for ((g, w), x) in got.iter().zip(want).zip(c) {
                        assert_eq!(g.to_bits(), w.to_bits(), "16 lanes at {x}");
                    }
                }
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                for (c, want) in xs.chunks(8).zip(scalar.chunks(8)) {
                    let mut got = [0f32; 8];
                    // SAFETY: the CPU has AVX2 and FMA; 8 values in and out.
                    unsafe {
                        _mm256_storeu_ps(got.as_mut_ptr(), gelu_avx2(_mm256_loadu_ps(c.as_ptr())))
                    };
                    for ((g, w), x) in got.iter().zip(want).zip(c) {
                        assert_eq!(g.to_bits(), w.to_bits(), "8 lanes at {x}");
                    }
                }
            }
        }
        // The slice kernels: rows of 37 with a bias (vectors and scalar tails), and plain.
        let bias: Vec<f32> = (0..37).map(|i| i as f32 * 0.1 - 1.8).collect();
        let mut buf: Vec<f32> = xs[..37 * 20].to_vec();
        let want: Vec<f32> = buf
            .iter()
            .enumerate()
            .map(|(i, v)| gelu_f32(v + bias[i % 37]))
            .collect();
        bias_gelu_dispatch(&mut buf, &bias);
        assert!(buf
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        let mut out = vec![0f32; xs.len() - 3];
        gelu_erf_rows_dispatch(&xs[3..], &mut out);
        assert!(out
            .iter()
            .zip(&scalar[3..])
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn fused_ops_match_candle_composites() {
        let dev = candle_core::Device::Cpu;
        let s = Tensor::randn(0f32, 3.0, (2, 3, 5, 5), &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1., 0., 0.], [1., 1., 1., 1., 1.]], &dev).unwrap();
        let bias = ((mask.ones_like().unwrap() - &mask).unwrap() * -1e4).unwrap();
        let got = masked_softmax(&s, &bias, 0.5).unwrap();
        let want = candle_nn::ops::softmax_last_dim(
            &(&s * 0.5)
                .unwrap()
                .broadcast_add(&bias.reshape((2, 1, 1, 5)).unwrap())
                .unwrap(),
        )
        .unwrap();
        let d = max_diff(&got, &want);
        assert!(d < 1e-6, "softmax diff {d}");

        let x = Tensor::randn(0f32, 1.0, (4, 7, 16), &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (4, 7, 16), &dev).unwrap();
        let g = Tensor::randn(1f32, 0.1, 16, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 16, &dev).unwrap();
        let params = Tensor::stack(&[&g, &b], 0).unwrap();
        let want = candle_nn::ops::layer_norm_slow(&(&x + &r).unwrap(), &g, &b, 1e-12).unwrap();
        let got = add_layer_norm_inplace(&x, &r, &params, 1e-12).unwrap();
        let d = max_diff(&got, &want);
        assert!(d < 1e-5, "layer norm diff {d}");
    }

    /// The fused three-pass, four-rows-at-a-time `LN(x + r)` performs the five-pass row
    /// composition's operations in its order (add; 16-lane sum; centre; 16-lane sum of
    /// squares; scale and shift), so it equals it bit for bit: through the dispatched (vector)
    /// build and the plain one, on widths with and without a partial chunk and row counts off
    /// the group of four.
    #[test]
    fn add_layer_norm_equals_its_row_composition_bit_for_bit() {
        let mut seed = 7u64;
        for (h, rows) in [(384, 9), (312, 5), (40, 3), (16, 4), (7, 6)] {
            let x: Vec<f32> = lcg_vec(&mut seed, rows * h)
                .iter()
                .map(|v| v * 3.0 + 0.5)
                .collect();
            let r = lcg_vec(&mut seed, rows * h);
            let gamma: Vec<f32> = lcg_vec(&mut seed, h)
                .iter()
                .map(|v| 1.0 + v * 0.1)
                .collect();
            let beta = lcg_vec(&mut seed, h);
            let mut want = x.clone();
            for (row, res) in want.chunks_exact_mut(h).zip(r.chunks_exact(h)) {
                for (d, v) in row.iter_mut().zip(res) {
                    *d += *v;
                }
                let mean = lane_sum(row) / h as f32;
                for d in row.iter_mut() {
                    *d -= mean;
                }
                let inv = 1.0 / (lane_dot(row, row) / h as f32 + 1e-12).sqrt();
                for ((d, g), b) in row.iter_mut().zip(&gamma).zip(&beta) {
                    *d = *d * inv * *g + *b;
                }
            }
            let mut plain = x.clone();
            add_layer_norm_rows(&mut plain, &r, &gamma, &beta, 1e-12);
            let mut dispatched = x.clone();
            add_layer_norm_dispatch(&mut dispatched, &r, &gamma, &beta, 1e-12);
            for (name, got) in [("plain", &plain), ("dispatched", &dispatched)] {
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{name} h={h} rows={rows}");
            }
        }
    }

    #[test]
    fn fused_attention_matches_the_composite_path() {
        let dev = candle_core::Device::Cpu;
        // Head widths 8, 16 and 32 (32 takes the hand-written products on AVX-512, in blocks
        // of 4 score rows x 5 column chunks and 8 context rows: 100 tokens leave partial
        // blocks of each), lengths off the 16-lane softmax chunks, padded keys and
        // switched-off, halved and full heads.
        for (l, nh, hd) in [
            (6, 4, 8),
            (7, 4, 32),
            (19, 4, 16),
            (33, 4, 32),
            (100, 4, 32),
        ] {
            let b = 3;
            let h = nh * hd;
            let qkv = Tensor::randn(0f32, 1.0, (b, l, 3 * h), &dev).unwrap();
            let lens = [l - 2, l, 2];
            let mask: Vec<f32> = lens
                .iter()
                .flat_map(|&n| (0..l).map(move |j| if j < n { 1.0 } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (b, l), &dev).unwrap();
            let bias = ((mask.ones_like().unwrap() - &mask).unwrap() * -1e4).unwrap();
            let keep = Tensor::new(
                &[[1f32, 0., 1., 1.], [1., 1., 1., 1.], [0., 1., 0.5, 1.]],
                &dev,
            )
            .unwrap();
            let scale = 1.0 / (hd as f32).sqrt();
            let got = fused_attention(&qkv, &bias, &keep, nh, scale).unwrap();

            let t = qkv
                .reshape((b, l, 3, nh, hd))
                .unwrap()
                .permute((2, 0, 3, 1, 4))
                .unwrap();
            let (q, k, v) = (
                t.get(0).unwrap().contiguous().unwrap(),
                t.get(1).unwrap().contiguous().unwrap(),
                t.get(2).unwrap().contiguous().unwrap(),
            );
            let p = masked_softmax(&q.matmul(&k.t().unwrap()).unwrap(), &bias, scale).unwrap();
            let p = p
                .broadcast_mul(&keep.reshape((b, nh, 1, 1)).unwrap())
                .unwrap();
            let want = p
                .matmul(&v)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, l, h))
                .unwrap();
            let d = max_diff(&got, &want);
            assert!(
                d < 1e-5,
                "attention diff {d} at L={l}, heads={nh}, width={hd}"
            );
        }
    }

    #[test]
    fn linear_matches_matmul_plus_bias() {
        let dev = candle_core::Device::Cpu;
        for (n, k, m) in [(1, 3, 2), (7, 16, 5), (64, 48, 96)] {
            let x = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (k, m), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, m, &dev).unwrap();
            let got = linear(&x, &w, &b).unwrap();
            let want = x.matmul(&w).unwrap().broadcast_add(&b).unwrap();
            let d = max_diff(&got, &want);
            assert!(d < 1e-4, "linear diff {d} at {n}x{k}x{m}");
        }
    }
}
