//! Dense layers on Intel AMX tiles (`TDPBF16PS`: bf16 x bf16 products accumulated in f32),
//! for `model.matmul_precision` `high` and `medium`, with the weights packed once at load.
//!
//! `medium` rounds the inputs and weights of each dense layer to bf16 (8 significant bits,
//! round to nearest even). `high` writes each f32 value as the sum of two bf16 terms and sums
//! three products per pair (PyTorch's "high" float32 matmul precision): about 1e-6 relative
//! error per product, against about 4e-3 for `medium`; under `high` the gradient path's dense
//! layers use it too (forward and input backward, `W^T` packed as well). Bias, embeddings,
//! attention, softmax, GELU and LayerNorm stay f32. AMX multiplies bf16 over ten times faster than AVX-512 FMAs
//! multiply f32, which is why either form beats f32 products; the accuracy cost of each is
//! measured in tests/model.rs and reported in the README.
//!
//! Layout. A weight `[K, M]` (already transposed, `x @ W`) is padded to `Kp x Mp` (multiples
//! of 32) and cut, per bf16 plane, into tiles of 32 K-values x 16 columns, stored per (column
//! block of 16, K block of 32) in the "VNNI" order `TDPBF16PS` reads: row `p` of a tile holds,
//! for each of its 16 columns `j`, the pair `W[2p][j], W[2p+1][j]`. The input becomes a
//! row-major bf16 buffer of `Np` rows (padded to 32), each row its planes side by side, reused
//! from call to call. One task computes a 32-row x 32-column block of the output in four
//! accumulator tiles (2 x 2) that start from the bias, loading two input tiles and two weight
//! tiles per 32 K-values and product.
//!
//! AMX needs the kernel's permission (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), asked for once per
//! process by [`available`]; each thread loads the tile configuration before its first block.

use std::arch::asm;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows and columns of one output block (two tiles each way).
const BLOCK: usize = 32;
/// K-values per tile (16 pairs of bf16 = 64 bytes per tile row).
const KSTEP: usize = 32;
/// Columns per tile.
const TILE_COLS: usize = 16;
/// Elements (u16) in one packed weight tile: 16 rows x 32 bf16.
const TILE_ELEMS: usize = 16 * 32;

/// Compiles a loop for AVX-512 (where AMX is, it is) so the bf16 conversion vectorises.
macro_rules! multiversion_amx {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            unsafe fn v4($($arg: $ty),*) $body
            // SAFETY: only called from the AMX path, and every AMX CPU has AVX-512 (F, BW, VL).
            unsafe { v4($($arg),*) }
        }
    };
}

/// Whether this CPU and kernel let the process use AMX bf16 tiles (checked once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // CPUID leaf 7, sub-leaf 0: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let cpu = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
        if !cpu {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call asking for permission; it touches no memory of ours.
        let granted = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        granted == 0
    })
}

/// bf16 bits of an f32, rounded to nearest even (NaN stays NaN).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    // Both values computed and one selected, so loops over this vectorise.
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let quiet_nan = (bits >> 16) | 0x40;
    let nan = bits & 0x7fff_ffff > 0x7f80_0000;
    (if nan { quiet_nan } else { rounded }) as u16
}

/// The f32 value of bf16 bits.
#[inline(always)]
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// How many bf16 terms stand for one f32 value, and which of their products the kernel sums.
///
/// An f32 `x` splits exactly enough into `hi = bf16(x)`, `mid = bf16(x - hi)`,
/// `lo = bf16(x - hi - mid)` (8 significant bits each). With two planes a product is
/// `hi*hi + hi*mid + mid*hi` (relative error about 2^-16, the terms below dropped); with three,
/// the six terms down to order 2^-16 (`hi*lo`, `lo*hi`, `mid*mid`), leaving about 2^-24, the
/// rounding of f32 itself. Products are summed smallest first, in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planes {
    /// Plain bf16 (`model.precision = "bf16"`).
    One,
    /// bf16x3: three products, f32 to about 1e-5.
    Two,
    /// bf16x6: six products, f32 to its own rounding.
    Three,
}

impl Planes {
    pub fn count(self) -> usize {
        match self {
            Planes::One => 1,
            Planes::Two => 2,
            Planes::Three => 3,
        }
    }

    /// (input plane, weight plane) of each product, smallest terms first.
    fn products(self) -> &'static [(usize, usize)] {
        match self {
            Planes::One => &[(0, 0)],
            Planes::Two => &[(1, 0), (0, 1), (0, 0)],
            Planes::Three => &[(2, 0), (0, 2), (1, 1), (1, 0), (0, 1), (0, 0)],
        }
    }
}

/// The first `n` bf16 terms of `x` (see [`Planes`]).
#[inline(always)]
fn split(x: f32, n: usize, out: &mut [u16; 3]) {
    let mut rest = x;
    for slot in out.iter_mut().take(n) {
        let b = to_bf16(rest);
        *slot = b;
        rest -= from_bf16(b);
    }
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// A dense layer's weight and bias, packed for the AMX kernel.
#[derive(Debug)]
pub struct PackedBf16 {
    k: usize,
    m: usize,
    kp: usize,
    mp: usize,
    /// bf16 terms per value: 1 (bf16), 2 or 3 (a split f32, see [`Planes`]).
    planes: Planes,
    /// Per plane, tiles in (column block, K block) order, [`TILE_ELEMS`] each.
    tiles: Vec<u16>,
    /// Per column block of 16: 16 rows of the bias, the accumulators' starting value.
    bias_tiles: Vec<f32>,
}

impl PackedBf16 {
    /// Packs a `[K, M]` row-major f32 weight and its `M` biases as `planes` bf16 terms.
    pub fn pack(weight: &[f32], k: usize, m: usize, bias: &[f32], planes: Planes) -> Self {
        assert_eq!(weight.len(), k * m, "weight is not [K, M]");
        assert_eq!(bias.len(), m, "bias is not [M]");
        let kp = round_up(k, KSTEP);
        let mp = round_up(m, BLOCK);
        let k_blocks = kp / KSTEP;
        let plane_len = (mp / TILE_COLS) * k_blocks * TILE_ELEMS;
        let n_planes = planes.count();
        let mut tiles = vec![0u16; n_planes * plane_len];
        let mut terms = [0u16; 3];
        for cb in 0..mp / TILE_COLS {
            for kb in 0..k_blocks {
                let at = (cb * k_blocks + kb) * TILE_ELEMS;
                for p in 0..16 {
                    for j in 0..TILE_COLS {
                        let col = cb * TILE_COLS + j;
                        for t in 0..2 {
                            let row = kb * KSTEP + 2 * p + t;
                            if row < k && col < m {
                                split(weight[row * m + col], n_planes, &mut terms);
                                for (plane, term) in terms.iter().take(n_planes).enumerate() {
                                    tiles[plane * plane_len + at + p * 32 + 2 * j + t] = *term;
                                }
                            }
                        }
                    }
                }
            }
        }
        let mut bias_tiles = vec![0f32; (mp / TILE_COLS) * 16 * TILE_COLS];
        for cb in 0..mp / TILE_COLS {
            for r in 0..16 {
                for j in 0..TILE_COLS {
                    let col = cb * TILE_COLS + j;
                    if col < m {
                        bias_tiles[(cb * 16 + r) * TILE_COLS + j] = bias[col];
                    }
                }
            }
        }
        Self {
            k,
            m,
            kp,
            mp,
            planes,
            tiles,
            bias_tiles,
        }
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.m
    }

    /// The weight as the kernel sees it (its bf16 terms summed, `[K, M]`): what a reference
    /// computation must use to check the kernel.
    pub fn rounded_weight(&self) -> Vec<f64> {
        let k_blocks = self.kp / KSTEP;
        let plane_len = self.tiles.len() / self.planes.count();
        let mut w = vec![0f64; self.k * self.m];
        for (row, chunk) in w.chunks_mut(self.m).enumerate() {
            let (kb, rem) = (row / KSTEP, row % KSTEP);
            let (p, t) = (rem / 2, rem % 2);
            for (col, v) in chunk.iter_mut().enumerate() {
                let (cb, j) = (col / TILE_COLS, col % TILE_COLS);
                let at = (cb * k_blocks + kb) * TILE_ELEMS + p * 32 + 2 * j + t;
                *v = (0..self.planes.count())
                    .map(|plane| from_bf16(self.tiles[plane * plane_len + at]) as f64)
                    .sum();
            }
        }
        w
    }

    /// `x @ W (+ b)` for `n` rows of `k` f32 values into `out` (`n x m`). Panics when AMX is
    /// not [`available`] (callers check before packing).
    pub fn matmul_into(&self, x: &[f32], n: usize, with_bias: bool, out: &mut [f32]) {
        assert!(available(), "AMX bf16 is not available on this machine");
        assert_eq!(x.len(), n * self.k);
        assert_eq!(out.len(), n * self.m);
        if n == 0 {
            return;
        }
        let np = round_up(n, BLOCK);
        SCRATCH.with_borrow_mut(|a| {
            to_bf16_rows(x, n, self.k, self.kp, np, self.planes.count(), a);
            self.multiply(a, n, np, with_bias, out);
        });
    }

    fn multiply(&self, a: &[u16], n: usize, np: usize, with_bias: bool, out: &mut [f32]) {
        let row_blocks = np / BLOCK;
        let col_blocks = self.mp / BLOCK;
        let out_ptr = OutPtr(out.as_mut_ptr());
        let work = |item: usize| {
            let (rb, cb) = (item / col_blocks, item % col_blocks);
            // SAFETY: AMX is available (asserted above); every task writes its own block of
            // `out` (rows rb*32.., columns cb*32..), inside `n x m`.
            unsafe { self.block(a, rb, cb, n, with_bias, out_ptr) };
        };
        let items = row_blocks * col_blocks;
        let flops = 2 * np * self.kp * self.mp * self.planes.products().len();
        if items > 1 && flops >= 1 << 20 {
            (0..items).into_par_iter().for_each(work);
        } else {
            (0..items).for_each(work);
        }
    }

    /// One 32 x 32 output block: four accumulator tiles over the whole K.
    ///
    /// # Safety
    /// AMX must be [`available`]; `a` is the `np x kp` bf16 input with `rb` in range; `out`
    /// points at an `n x m` f32 buffer no other task writes this block of.
    unsafe fn block(
        &self,
        a: &[u16],
        rb: usize,
        cb: usize,
        n: usize,
        with_bias: bool,
        out: OutPtr,
    ) {
        configure_tiles();
        let k_blocks = self.kp / KSTEP;
        let planes = self.planes.count();
        let a_row = planes * self.kp; // u16 per input row (its planes side by side)
        let a_stride = a_row * 2; // bytes
        let w_plane = self.tiles.len() / self.planes.count();
        let c0 = 2 * cb; // first column block of 16
        if with_bias {
            let b0 = self.bias_tiles.as_ptr().add(c0 * 16 * TILE_COLS);
            let b1 = self.bias_tiles.as_ptr().add((c0 + 1) * 16 * TILE_COLS);
            asm!(
                "tileloadd tmm0, [{b0} + {s}*1]",
                "tileloadd tmm1, [{b1} + {s}*1]",
                "tileloadd tmm2, [{b0} + {s}*1]",
                "tileloadd tmm3, [{b1} + {s}*1]",
                b0 = in(reg) b0, b1 = in(reg) b1, s = in(reg) 64usize,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
        let products = self.planes.products();
        for kb in 0..k_blocks {
            for &(pa, pw) in products {
                let a0 = a
                    .as_ptr()
                    .add(rb * BLOCK * a_row + pa * self.kp + kb * KSTEP);
                let a1 = a0.add(16 * a_row);
                let w = self.tiles.as_ptr().add(pw * w_plane);
                let w0 = w.add((c0 * k_blocks + kb) * TILE_ELEMS);
                let w1 = w.add(((c0 + 1) * k_blocks + kb) * TILE_ELEMS);
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{w0} + {sw}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{w1} + {sw}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a1,
                    w0 = in(reg) w0,
                    w1 = in(reg) w1,
                    sa = in(reg) a_stride,
                    sw = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
        }
        let (row0, col0) = (rb * BLOCK, cb * BLOCK);
        let rows = BLOCK.min(n - row0);
        let cols = BLOCK.min(self.m - col0);
        if rows == BLOCK && cols == BLOCK {
            // A whole block: straight into the output.
            let base = out.0.add(row0 * self.m + col0);
            store_tiles(base, self.m * 4);
        } else {
            let mut local = [0f32; BLOCK * BLOCK];
            store_tiles(local.as_mut_ptr(), BLOCK * 4);
            for r in 0..rows {
                let dst = out.0.add((row0 + r) * self.m + col0);
                std::ptr::copy_nonoverlapping(local.as_ptr().add(r * BLOCK), dst, cols);
            }
        }
    }
}

/// Stores the four accumulators as a 32 x 32 f32 block at `base` with `stride` bytes per row.
///
/// # Safety
/// `base` must have 32 rows of 32 writable f32 at `stride` bytes apart; tiles configured.
unsafe fn store_tiles(base: *mut f32, stride: usize) {
    let lower = base.add(16 * stride / 4);
    asm!(
        "tilestored [{c0} + {s}*1], tmm0",
        "tilestored [{c1} + {s}*1], tmm1",
        "tilestored [{c2} + {s}*1], tmm2",
        "tilestored [{c3} + {s}*1], tmm3",
        c0 = in(reg) base,
        c1 = in(reg) base.add(16),
        c2 = in(reg) lower,
        c3 = in(reg) lower.add(16),
        s = in(reg) stride,
        options(nostack),
    );
}

/// Loads the tile configuration on this thread once: eight tiles of 16 rows x 64 bytes.
///
/// # Safety
/// AMX must be [`available`].
unsafe fn configure_tiles() {
    thread_local! {
        static CONFIGURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if CONFIGURED.with(|c| c.replace(true)) {
        return;
    }
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);
    let mut cfg = TileConfig([0; 64]);
    cfg.0[0] = 1; // palette 1
    for t in 0..8 {
        cfg.0[16 + 2 * t] = 64; // bytes per row (low byte of a u16)
        cfg.0[48 + t] = 16; // rows
    }
    asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
}

/// A raw output pointer shared by the tasks of one multiply (disjoint blocks).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint blocks; see `PackedBf16::matmul_into`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

thread_local! {
    /// The calling thread's bf16 copy of the input, reused from call to call (no allocation
    /// or page faults per multiply).
    static SCRATCH: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `n x k` f32 rows into `a` as `np` rows of `planes x kp` bf16 terms (each row's planes side
/// by side), zero-padded. Every element of `a` is written.
fn to_bf16_rows(
    x: &[f32],
    n: usize,
    k: usize,
    kp: usize,
    np: usize,
    planes: usize,
    a: &mut Vec<u16>,
) {
    let row = planes * kp;
    a.resize(np * row, 0);
    let convert = |(dst, src): (&mut [u16], &[f32])| convert_row(src, dst, kp, planes);
    if n * k * planes >= 1 << 16 {
        a[..n * row]
            .par_chunks_mut(row)
            .zip(x.par_chunks(k))
            .for_each(convert);
    } else {
        a[..n * row]
            .chunks_mut(row)
            .zip(x.chunks(k))
            .for_each(convert);
    }
    a[n * row..].fill(0);
}

multiversion_amx! {
    /// One input row into its bf16 planes, pads zeroed.
    fn convert_row(src: &[f32], dst: &mut [u16], kp: usize, planes: usize) {
        let k = src.len();
        if planes == 1 {
            for (d, s) in dst[..k].iter_mut().zip(src) {
                *d = to_bf16(*s);
            }
            dst[k..kp].fill(0);
            return;
        }
        let (hi, rest) = dst.split_at_mut(kp);
        let (mid, lo) = rest.split_at_mut(kp);
        for j in 0..k {
            let x = src[j];
            let h = to_bf16(x);
            let r = x - from_bf16(h);
            let m = to_bf16(r);
            hi[j] = h;
            mid[j] = m;
            if planes == 3 {
                lo[j] = to_bf16(r - from_bf16(m));
            }
        }
        hi[k..].fill(0);
        mid[k..kp].fill(0);
        if planes == 3 {
            lo[k..kp].fill(0);
        }
    }
}

/// The custom candle op: `x @ W (+ b)` over the last dimension, f32 in and out.
struct Bf16Linear<'a> {
    packed: &'a PackedBf16,
    with_bias: bool,
}

impl CustomOp1 for Bf16Linear<'_> {
    fn name(&self) -> &'static str {
        "glassbox-amx-bf16-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("bf16 linear: the input must be f32")
        };
        let Some(x) = layout
            .contiguous_offsets()
            .map(|(start, end)| &data[start..end])
        else {
            candle_core::bail!("bf16 linear: the input must be contiguous")
        };
        let dims = layout.dims();
        if dims.last() != Some(&self.packed.k) {
            candle_core::bail!(
                "bf16 linear: input {:?} does not end in {} features",
                dims,
                self.packed.k
            );
        }
        let n = x.len() / self.packed.k;
        let mut out = Vec::with_capacity(n * self.packed.m);
        // SAFETY: `matmul_into` writes every element of its output (each 32 x 32 block of
        // `n x m` is stored whole or copied row by row) and reads none of it; f32 has no
        // invalid bit patterns.
        #[allow(clippy::uninit_vec)]
        unsafe {
            out.set_len(n * self.packed.m)
        };
        self.packed.matmul_into(x, n, self.with_bias, &mut out);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = self.packed.m;
        Ok((CpuStorage::F32(out), Shape::from_dims(&out_dims)))
    }
}

/// `x @ W + b` (or without the bias) through the AMX kernel; inference only.
pub fn linear(x: &Tensor, packed: &PackedBf16, with_bias: bool) -> Result<Tensor> {
    x.contiguous()?
        .apply_op1_no_bwd(&Bf16Linear { packed, with_bias })
}

/// The gradient path's dense layer on AMX tiles: `x @ W + b` forward, and a backward pass
/// for the input only, `grad @ W^T`, with `W^T` packed as well (weights get no gradient, as
/// in `kernels::linear_input_grad`).
struct Bf16InputGradLinear {
    forward: std::sync::Arc<PackedBf16>,
    backward: std::sync::Arc<PackedBf16>,
}

impl CustomOp1 for Bf16InputGradLinear {
    fn name(&self) -> &'static str {
        "glassbox-amx-linear-input-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        Bf16Linear {
            packed: &self.forward,
            with_bias: true,
        }
        .cpu_fwd(storage, layout)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(linear(grad_res, &self.backward, false)?))
    }
}

/// `x @ W + b`, differentiable in `x` only: `forward` packs `W` (`[K, M]`) with the bias,
/// `backward` packs `W^T` (`[M, K]`) with a zero bias.
pub fn linear_input_grad(
    x: &Tensor,
    forward: &std::sync::Arc<PackedBf16>,
    backward: &std::sync::Arc<PackedBf16>,
) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Bf16InputGradLinear {
        forward: forward.clone(),
        backward: backward.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway as well: rounds up to the even 1 + 2^-6.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    /// The kernel against an exact f64 product, for shapes with every kind of edge (rows,
    /// columns and K not multiples of the tile sizes), with and without the bias: plain bf16
    /// equals the product of the rounded operands; the split forms approach f32.
    #[test]
    fn amx_matmul_matches_exact_products() {
        if !available() {
            eprintln!("skipped: this CPU has no AMX bf16 (the bf16 mode is refused at load)");
            return;
        }
        let mut seed = 7;
        for &(n, k, m) in &[
            (1, 32, 32),
            (5, 40, 17),
            (32, 384, 1152),
            (47, 100, 70),
            (70, 1536, 384),
        ] {
            let w: Vec<f32> = (0..k * m).map(|_| lcg(&mut seed)).collect();
            let b: Vec<f32> = (0..m).map(|_| lcg(&mut seed)).collect();
            let x: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
            for (planes, tol) in [
                (Planes::One, 1e-6),
                (Planes::Two, 3e-5),
                (Planes::Three, 1e-6),
            ] {
                let packed = PackedBf16::pack(&w, k, m, &b, planes);
                // Plain bf16 is checked against the rounded operands, the split forms against
                // the exact f32 values.
                let (wr, xr): (Vec<f64>, Vec<f64>) = if planes == Planes::One {
                    (
                        packed.rounded_weight(),
                        x.iter().map(|v| from_bf16(to_bf16(*v)) as f64).collect(),
                    )
                } else {
                    (
                        w.iter().map(|v| *v as f64).collect(),
                        x.iter().map(|v| *v as f64).collect(),
                    )
                };
                let mut worst = 0f64;
                for with_bias in [true, false] {
                    let mut out = vec![f32::NAN; n * m];
                    packed.matmul_into(&x, n, with_bias, &mut out);
                    for i in 0..n {
                        for j in 0..m {
                            let mut acc = if with_bias { b[j] as f64 } else { 0.0 };
                            let mut scale = acc.abs();
                            for p in 0..k {
                                let t = xr[i * k + p] * wr[p * m + j];
                                acc += t;
                                scale += t.abs();
                            }
                            let err = (out[i * m + j] as f64 - acc).abs() / scale;
                            worst = worst.max(err);
                            assert!(
                                err <= tol,
                                "{planes:?} {n}x{k}x{m} bias={with_bias} at ({i},{j}): {} vs \
                                 {acc} (error {err:e} of the terms' magnitude)",
                                out[i * m + j]
                            );
                        }
                    }
                }
                eprintln!("{planes:?} {n}x{k}x{m}: worst error {worst:e} of the terms' magnitude");
            }
        }
    }

    #[test]
    fn rounded_weight_is_the_weight_rounded() {
        let mut seed = 3;
        let (k, m) = (45, 21);
        let w: Vec<f32> = (0..k * m).map(|_| lcg(&mut seed)).collect();
        let packed = PackedBf16::pack(&w, k, m, &vec![0.0; m], Planes::One);
        let expected: Vec<f64> = w.iter().map(|v| from_bf16(to_bf16(*v)) as f64).collect();
        assert_eq!(packed.rounded_weight(), expected);
        // Three terms hold an f32 exactly.
        let packed = PackedBf16::pack(&w, k, m, &vec![0.0; m], Planes::Three);
        let exact: Vec<f64> = w.iter().map(|v| *v as f64).collect();
        assert_eq!(packed.rounded_weight(), exact);
    }
}
