//! The `bf16` precision mode: dense layers as bf16 x bf16 -> f32 matrix multiplies on Intel
//! AMX tiles (`TDPBF16PS`), with the weights packed once at load time.
//!
//! What changes against f32: the inputs of each dense layer and its weights are rounded to
//! bf16 (8 bits of mantissa, round to nearest even); products are accumulated in f32 and the
//! bias is added in f32. Everything else (embeddings, attention, softmax, GELU, LayerNorm) stays
//! f32. The mode exists because AMX multiplies bf16 many times faster than AVX-512 multiplies
//! f32; its accuracy cost is measured and reported in the README.
//!
//! Layout. A weight `[K, M]` (already transposed, `x @ W`) is padded to `Kp x Mp` (multiples
//! of 32) and cut into tiles of 32 K-values x 16 columns, stored contiguously per
//! (column block of 16, K block of 32) in the "VNNI" order `TDPBF16PS` reads: row `p` of a tile
//! holds, for each of its 16 columns `j`, the pair `W[2p][j], W[2p+1][j]`. The input is
//! converted to a row-major bf16 buffer `Np x Kp` (rows padded to 32). One task computes a
//! 32-row x 32-column block of the output in four accumulator tiles (2 x 2), loading two input
//! tiles and two weight tiles per 32 K-values; the accumulators start from the bias.
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
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// The f32 value of bf16 bits.
#[inline(always)]
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
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
    /// Tiles in (column block, K block) order, [`TILE_ELEMS`] each.
    tiles: Vec<u16>,
    /// Per column block of 16: 16 rows of the bias, the accumulators' starting value.
    bias_tiles: Vec<f32>,
}

impl PackedBf16 {
    /// Packs a `[K, M]` row-major f32 weight and its `M` biases.
    pub fn pack(weight: &[f32], k: usize, m: usize, bias: &[f32]) -> Self {
        assert_eq!(weight.len(), k * m, "weight is not [K, M]");
        assert_eq!(bias.len(), m, "bias is not [M]");
        let kp = round_up(k, KSTEP);
        let mp = round_up(m, BLOCK);
        let k_blocks = kp / KSTEP;
        let mut tiles = vec![0u16; (mp / TILE_COLS) * k_blocks * TILE_ELEMS];
        for cb in 0..mp / TILE_COLS {
            for kb in 0..k_blocks {
                let tile = &mut tiles[(cb * k_blocks + kb) * TILE_ELEMS..][..TILE_ELEMS];
                for p in 0..16 {
                    for j in 0..TILE_COLS {
                        let col = cb * TILE_COLS + j;
                        for t in 0..2 {
                            let row = kb * KSTEP + 2 * p + t;
                            if row < k && col < m {
                                tile[p * 32 + 2 * j + t] = to_bf16(weight[row * m + col]);
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

    /// The weight as the kernel sees it (bf16-rounded, back in f32, `[K, M]`): what a
    /// reference computation must use to check the kernel.
    pub fn rounded_weight(&self) -> Vec<f32> {
        let k_blocks = self.kp / KSTEP;
        let mut w = vec![0f32; self.k * self.m];
        for (row, chunk) in w.chunks_mut(self.m).enumerate() {
            let (kb, rem) = (row / KSTEP, row % KSTEP);
            let (p, t) = (rem / 2, rem % 2);
            for (col, v) in chunk.iter_mut().enumerate() {
                let (cb, j) = (col / TILE_COLS, col % TILE_COLS);
                *v = from_bf16(self.tiles[(cb * k_blocks + kb) * TILE_ELEMS + p * 32 + 2 * j + t]);
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
        let a = to_bf16_rows(x, n, self.k, self.kp, np);
        let row_blocks = np / BLOCK;
        let col_blocks = self.mp / BLOCK;
        let out_ptr = OutPtr(out.as_mut_ptr());
        let work = |item: usize| {
            let (rb, cb) = (item / col_blocks, item % col_blocks);
            // SAFETY: AMX is available (asserted above); every task writes its own block of
            // `out` (rows rb*32.., columns cb*32..), inside `n x m`.
            unsafe { self.block(&a, rb, cb, n, with_bias, out_ptr) };
        };
        let items = row_blocks * col_blocks;
        let flops = 2 * np * self.kp * self.mp;
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
        let a_stride = self.kp * 2; // bytes per input row
        let a0 = a.as_ptr().add(rb * BLOCK * self.kp);
        let a1 = a0.add(16 * self.kp);
        let c0 = 2 * cb; // first column block of 16
        let w0 = self.tiles.as_ptr().add(c0 * k_blocks * TILE_ELEMS);
        let w1 = self.tiles.as_ptr().add((c0 + 1) * k_blocks * TILE_ELEMS);
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
        for kb in 0..k_blocks {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{w0} + {sw}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{w1} + {sw}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0.add(kb * KSTEP),
                a1 = in(reg) a1.add(kb * KSTEP),
                w0 = in(reg) w0.add(kb * TILE_ELEMS),
                w1 = in(reg) w1.add(kb * TILE_ELEMS),
                sa = in(reg) a_stride,
                sw = in(reg) 64usize,
                options(nostack, readonly),
            );
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

/// `n x k` f32 rows as an `np x kp` bf16 buffer, zero-padded.
fn to_bf16_rows(x: &[f32], n: usize, k: usize, kp: usize, np: usize) -> Vec<u16> {
    let mut a = vec![0u16; np * kp];
    let convert = |(dst, src): (&mut [u16], &[f32])| {
        for (d, s) in dst[..k].iter_mut().zip(src) {
            *d = to_bf16(*s);
        }
    };
    if n * k >= 1 << 16 {
        a.par_chunks_mut(kp).zip(x.par_chunks(k)).for_each(convert);
    } else {
        a.chunks_mut(kp).zip(x.chunks(k)).for_each(convert);
    }
    a
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
        let mut out = vec![0f32; n * self.packed.m];
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

    /// The kernel equals an f64 reference on the same bf16-rounded operands, for shapes with
    /// every kind of edge (rows, columns and K not multiples of the tile sizes), with and
    /// without the bias.
    #[test]
    fn amx_matmul_matches_a_reference_on_rounded_operands() {
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
            let packed = PackedBf16::pack(&w, k, m, &b);
            let wr = packed.rounded_weight();
            for with_bias in [true, false] {
                let mut out = vec![f32::NAN; n * m];
                packed.matmul_into(&x, n, with_bias, &mut out);
                for i in 0..n {
                    for j in 0..m {
                        let mut acc = if with_bias { b[j] as f64 } else { 0.0 };
                        for p in 0..k {
                            acc += from_bf16(to_bf16(x[i * k + p])) as f64 * wr[p * m + j] as f64;
                        }
                        let got = out[i * m + j] as f64;
                        assert!(
                            (got - acc).abs() <= 1e-4 * (1.0 + acc.abs()),
                            "{n}x{k}x{m} bias={with_bias} at ({i},{j}): {got} vs {acc}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rounded_weight_is_the_weight_rounded() {
        let mut seed = 3;
        let (k, m) = (45, 21);
        let w: Vec<f32> = (0..k * m).map(|_| lcg(&mut seed)).collect();
        let packed = PackedBf16::pack(&w, k, m, &vec![0.0; m]);
        let expected: Vec<f32> = w.iter().map(|v| from_bf16(to_bf16(*v))).collect();
        assert_eq!(packed.rounded_weight(), expected);
    }
}
