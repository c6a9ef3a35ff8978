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
//! for each of its 16 columns `j`, the pair `W[2p][j], W[2p+1][j]`. The input is converted
//! into tiles too (`Np` rows padded to 32; per 16 rows, K block and plane one contiguous
//! 1 KiB tile), one row block of 32 at a time by the task that multiplies it, into a
//! per-thread buffer that stays in cache. Every buffer starts on a cache line:
//! misaligned tile loads measured three times slower. One task computes a 32-row x 32-column
//! block of the output in four accumulator tiles (2 x 2) that start from the bias, loading
//! two input tiles and two weight tiles per 32 K-values and product (ten loads for the three
//! products of `high`, which share operands).
//!
//! A feed-forward block ([`feed_forward_gelu`]) applies the GELU in the first product's
//! epilogue and writes the result straight into the second product's input tiles. On large
//! batches its second product (K = 4 x M) runs in two K halves, the second half's blocks
//! starting from the first half's stored values, so that each thread reads half of the
//! activation instead of all of it, with the same bits (see
//! `PackedBf16::multiply_split_k`).
//!
//! AMX needs the kernel's permission (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), asked for once per
//! process by [`available`]; each thread loads the tile configuration before its first block.

use std::arch::asm;
use std::sync::atomic::{AtomicBool, Ordering};
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
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
            unsafe fn v4($($arg: $ty),*) $body
            // SAFETY: only called from the AMX path, and `available` checked that the CPU has
            // AVX-512 (F, BW, VL, BF16), as every AMX CPU does.
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
        let cpu = leaf7.edx & (1 << 22) != 0
            && leaf7.edx & (1 << 24) != 0
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bf16");
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
/// rounding of f32 itself. Products are summed in f32 (smallest first, except that `Two` runs
/// `hi*hi` first so the three products share tile loads).
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

/// 64 bytes aligned to a cache line: the storage unit of the kernel's buffers.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Plain values every bit pattern of which (all zeros included) is valid.
trait Pod: Copy {}
impl Pod for u16 {}
impl Pod for f32 {}

/// A buffer of `T` that starts on a cache line. A tile load or store of 16 rows x 64 bytes
/// from an address off a 64-byte boundary touches two lines per row and runs about three
/// times slower (measured: 35 against 11.5 cycles per `TDPBF16PS` with its operands in L1).
struct AlignedBuf<T> {
    lines: Vec<Line>,
    len: usize,
    _values: std::marker::PhantomData<T>,
}

impl<T: Pod> AlignedBuf<T> {
    const fn new() -> Self {
        Self {
            lines: Vec::new(),
            len: 0,
            _values: std::marker::PhantomData,
        }
    }

    fn zeroed(len: usize) -> Self {
        let mut buf = Self::new();
        buf.resize(len);
        buf
    }

    /// Sets the length to `len`, growing the storage (with zeros) when needed; values kept
    /// from before are unspecified, as callers overwrite what they use.
    fn resize(&mut self, len: usize) {
        let lines = (len * std::mem::size_of::<T>()).div_ceil(64);
        if self.lines.len() < lines {
            self.lines.resize(lines, Line([0; 64]));
        }
        self.len = len;
    }

    fn as_slice(&self) -> &[T] {
        // SAFETY: the lines hold at least `len` values of `T` (see `resize`), are aligned
        // for any `T` of at most 64 bytes, and every bit pattern is a valid `T` (`Pod`).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }
}

impl<T> std::fmt::Debug for AlignedBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} values)", self.len)
    }
}

/// 32 f32 values into their first `planes` bf16 terms (see [`Planes`]), written to
/// `out[plane]` (32 values each), with `VCVTNEPS2BF16`: round to nearest even like
/// [`to_bf16`], one instruction per 16 values instead of a dozen (denormal inputs, which no
/// model value comes near, count as zero).
///
/// # Safety
/// The CPU must have AVX-512 F and BF16; each `out[plane]` for `plane < planes` must have 32
/// writable values.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn split32(vals: &[f32; 32], planes: usize, out: [*mut u16; 3]) {
    use std::arch::x86_64::*;
    for half in 0..2 {
        let x = _mm512_loadu_ps(vals.as_ptr().add(16 * half));
        let hi = _mm512_cvtneps_pbh(x);
        _mm256_storeu_si256(
            out[0].add(16 * half).cast(),
            std::mem::transmute::<__m256bh, __m256i>(hi),
        );
        if planes > 1 {
            let rest = _mm512_sub_ps(x, _mm512_cvtpbh_ps(hi));
            let mid = _mm512_cvtneps_pbh(rest);
            _mm256_storeu_si256(
                out[1].add(16 * half).cast(),
                std::mem::transmute::<__m256bh, __m256i>(mid),
            );
            if planes > 2 {
                let lo = _mm512_cvtneps_pbh(_mm512_sub_ps(rest, _mm512_cvtpbh_ps(mid)));
                _mm256_storeu_si256(
                    out[2].add(16 * half).cast(),
                    std::mem::transmute::<__m256bh, __m256i>(lo),
                );
            }
        }
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
    tiles: AlignedBuf<u16>,
    /// Per column block of 16: 16 rows of the bias, the accumulators' starting value.
    bias_tiles: AlignedBuf<f32>,
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
        let mut buf = AlignedBuf::<u16>::zeroed(n_planes * plane_len);
        let tiles = buf.as_mut_slice();
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
        let tiles = buf;
        let mut bias_buf = AlignedBuf::<f32>::zeroed((mp / TILE_COLS) * 16 * TILE_COLS);
        let bias_tiles = bias_buf.as_mut_slice();
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
            bias_tiles: bias_buf,
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
        let tiles = self.tiles.as_slice();
        let plane_len = tiles.len() / self.planes.count();
        let mut w = vec![0f64; self.k * self.m];
        for (row, chunk) in w.chunks_mut(self.m).enumerate() {
            let (kb, rem) = (row / KSTEP, row % KSTEP);
            let (p, t) = (rem / 2, rem % 2);
            for (col, v) in chunk.iter_mut().enumerate() {
                let (cb, j) = (col / TILE_COLS, col % TILE_COLS);
                let at = (cb * k_blocks + kb) * TILE_ELEMS + p * 32 + 2 * j + t;
                *v = (0..self.planes.count())
                    .map(|plane| from_bf16(tiles[plane * plane_len + at]) as f64)
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
        self.multiply(Input::rows(x), n, np, with_bias, out);
    }

    fn multiply(&self, a: Input, n: usize, np: usize, with_bias: bool, out: &mut [f32]) {
        assert_eq!(out.len(), n * self.m);
        self.multiply_with(
            a,
            n,
            np,
            with_bias,
            Epilogue::Store(OutPtr(out.as_mut_ptr())),
        );
    }

    /// Whether a product over `row_blocks` blocks of 32 rows cuts K in two halves (see
    /// [`PackedBf16::multiply_split_k`]): with at least two threads, enough row blocks to
    /// share, and an input at least twice as wide as the output (the feed-forward block's
    /// second product, K = 4 x M), where reading the input is what column groups pay for.
    fn splits_k(&self, row_blocks: usize) -> bool {
        rayon::current_num_threads() >= 2
            && self.kp >= 2 * self.mp
            && self.kp >= 2 * KSTEP
            && enough_row_blocks(row_blocks)
    }

    /// `a @ W + b` into `out` with K cut in two halves, each run by half of the threads: the
    /// first half's blocks start from the bias and are stored in `out`; the second half's
    /// blocks start from those stored values (a tile load, exact) once they are there, and
    /// go on over the remaining K blocks. Every block thus accumulates in the same order as
    /// in [`PackedBf16::multiply`]: the same bits, whatever the batch.
    ///
    /// With column groups alone every thread reads the whole input; here each reads the half
    /// of the input its K half needs, and the output, four times narrower than the input in
    /// a feed-forward block's second product, is written twice and read once more. With the
    /// first product's column groups (one per thread) a thread's K half is then mostly the
    /// part of the activation it wrote itself. The second half trails the first by about one
    /// row block. Measured on a 64 x 73-token batch with two threads (2026-11-29, a
    /// stand-alone example kept out of the repository, 20-40 runs each): this product took
    /// 5.7 ms (minimum; median 6.5) against 6.4 (7.4) with column groups alone, the whole
    /// feed-forward block 12.8 (13.9) against 13.5 (14.9).
    fn multiply_split_k(&self, a: &[u16], n: usize, np: usize, out: &mut [f32]) {
        assert_eq!(out.len(), n * self.m);
        let row_blocks = np / BLOCK;
        let col_blocks = self.mp / BLOCK;
        let k_blocks = self.kp / KSTEP;
        let threads = rayon::current_num_threads().max(1);
        let groups = (threads / 2).clamp(1, col_blocks);
        let per_group = col_blocks.div_ceil(groups);
        let out = OutPtr(out.as_mut_ptr());
        // (group, row block) items whose first half is stored.
        let done: Vec<AtomicBool> = (0..groups * row_blocks)
            .map(|_| AtomicBool::new(false))
            .collect();
        let half = |second: bool, item: usize| {
            let (group, rb) = (item / row_blocks, item % row_blocks);
            let (start, kbs) = if second {
                // Spin (yielding now and then) until the first half of these blocks is
                // stored. The first half never waits, so this always ends: its items run on
                // other threads or, once this thread is done, on this one.
                let mut spins = 0u32;
                while !done[item].load(Ordering::Acquire) {
                    spins += 1;
                    if spins.is_multiple_of(64) {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                (Start::Output(out), k_blocks / 2..k_blocks)
            } else {
                (Start::Bias, 0..k_blocks / 2)
            };
            for cb in group * per_group..((group + 1) * per_group).min(col_blocks) {
                // SAFETY: AMX is available (asserted by the callers); each (half, item) is one
                // task; the second half's task for a block runs after the first's stored it
                // (the flag's release/acquire), and the two never touch it at once.
                unsafe {
                    self.block(
                        &a[rb * self.row_block_len()..],
                        (rb, cb),
                        n,
                        start,
                        Epilogue::Store(out),
                        None,
                        kbs.clone(),
                    )
                };
            }
            if !second {
                done[item].store(true, Ordering::Release);
            }
        };
        let items = groups * row_blocks;
        rayon::join(
            || {
                (0..items)
                    .into_par_iter()
                    .for_each(|item| half(false, item))
            },
            || (0..items).into_par_iter().for_each(|item| half(true, item)),
        );
    }

    /// Tiles per row block of 32 (two groups of 16 rows) of this layer's input.
    fn row_block_len(&self) -> usize {
        2 * (self.kp / KSTEP) * self.planes.count() * TILE_ELEMS
    }

    /// [`PackedBf16::multiply`] with the blocks handed to `epilogue`.
    fn multiply_with(&self, a: Input, n: usize, np: usize, with_bias: bool, epilogue: Epilogue) {
        let row_blocks = np / BLOCK;
        let col_blocks = self.mp / BLOCK;
        // Columns are split into one group per thread and each group runs through all rows:
        // a thread then reads its slice of the weight (under 2 MiB for these models) from L3
        // once and keeps it in L2, instead of reading the whole weight again for every 32
        // rows. rayon hands each thread a contiguous range of items, so this order gives each
        // thread its own group (work stealing moves only the tail).
        //
        // A weight that fits in L2 with room to spare (at most 1 MiB, e.g. 384 x 384 under
        // `high`) is kept whole by every thread, and the threads split the rows instead: each
        // row block's input is then read from L3 by one thread, not by all (the attention
        // output projection of a 64 x 73-token batch: 1.96 -> 1.54-1.85 ms), as long as
        // there are enough row blocks to share.
        let threads = rayon::current_num_threads().max(1);
        let whole =
            self.tiles.len * std::mem::size_of::<u16>() <= 1 << 20 && enough_row_blocks(row_blocks);
        let groups = if whole {
            1
        } else {
            threads.clamp(1, col_blocks)
        };
        let per_group = col_blocks.div_ceil(groups);
        // One task per (group, row block, run of column blocks): a run's blocks go in order,
        // so a GELU epilogue can run while the next block multiplies (see `run_gelu`). With
        // few rows a (group, row block) is cut into shorter runs so that there are at least
        // 8 tasks per thread to balance (a single 64-token row has 2 row blocks: 4 tasks of 24
        // blocks each would leave a thread idle whenever one started late).
        let min_items = 8 * threads;
        let parts = min_items.div_ceil(groups * row_blocks).clamp(1, per_group);
        let run = per_group.div_ceil(parts);
        let work = |item: usize| {
            let (group, rest) = (item / (row_blocks * parts), item % (row_blocks * parts));
            let (rb, part) = (rest / parts, rest % parts);
            let first = group * per_group + part * run;
            let end = ((group + 1) * per_group).min(first + run).min(col_blocks);
            let cbs = first..end.max(first);
            let run = |a: &[u16]| {
                // SAFETY: AMX is available (asserted by the callers); `a` is row block rb's
                // tiles; every task writes its own blocks of the output (rows rb*32..,
                // columns cb*32.. for its cbs), inside its bounds.
                unsafe {
                    match epilogue {
                        Epilogue::Store(_) | Epilogue::Local(_) => {
                            for cb in cbs {
                                self.block(
                                    a,
                                    (rb, cb),
                                    n,
                                    Start::bias(with_bias),
                                    epilogue,
                                    None,
                                    0..self.kp / KSTEP,
                                );
                            }
                        }
                        Epilogue::GeluTiles { .. } => {
                            self.run_gelu(a, rb, cbs, n, with_bias, epilogue)
                        }
                    }
                }
            };
            match a {
                Input::Tiles(a) => run(&a[rb * self.row_block_len()..]),
                Input::Rows { x, call } => ROW_TILES.with_borrow_mut(|(buf, converted)| {
                    // This thread's tiles of row block rb, converted here unless its previous
                    // task in this multiply converted the same row block.
                    if *converted != Some((call, rb)) {
                        let len = self.row_block_len();
                        buf.resize(len);
                        let (k, group_rows) = (self.k, 16 * self.k);
                        for (g, dst) in buf.as_mut_slice().chunks_exact_mut(len / 2).enumerate() {
                            let first = ((2 * rb + g) * group_rows).min(x.len());
                            let end = (first + group_rows).min(x.len());
                            convert_group(&x[first..end], dst, k, self.planes.count());
                        }
                        *converted = Some((call, rb));
                    }
                    run(buf.as_slice())
                }),
            }
        };
        let items = groups * row_blocks * parts;
        let flops = 2 * np * self.kp * self.mp * self.planes.products().len();
        if items > 1 && flops >= 1 << 20 {
            (0..items).into_par_iter().for_each(work);
        } else {
            (0..items).for_each(work);
        }
    }

    /// The blocks `cbs` of row block `rb` with the GELU epilogue: each block's GELU (vector
    /// work) runs a few rows at a time between the tile products of the next block, which
    /// the AMX unit executes meanwhile, instead of after its own products with the tile
    /// unit idle. Two local blocks alternate; the last block's GELU runs on its own.
    ///
    /// # Safety
    /// As [`PackedBf16::block`], with `epilogue` a [`Epilogue::GeluTiles`].
    unsafe fn run_gelu(
        &self,
        a: &[u16],
        rb: usize,
        cbs: std::ops::Range<usize>,
        n: usize,
        with_bias: bool,
        epilogue: Epilogue,
    ) {
        let Epilogue::GeluTiles {
            dst,
            k_blocks,
            planes,
        } = epilogue
        else {
            unreachable!("run_gelu takes the GELU epilogue")
        };
        let mut bufs = [
            AlignedBlock([0f32; BLOCK * BLOCK]),
            AlignedBlock([0f32; BLOCK * BLOCK]),
        ];
        let mut previous: Option<(usize, usize)> = None; // (index, column block)
        for (i, cb) in cbs.enumerate() {
            let [first, second] = &mut bufs;
            let (current, done) = if i % 2 == 0 {
                (first, second)
            } else {
                (second, first)
            };
            let pending = previous.map(|(_, pcb)| PendingGelu {
                block: &done.0,
                dst,
                rb,
                cb: pcb,
                k_blocks,
                planes,
            });
            self.block(
                a,
                (rb, cb),
                n,
                Start::bias(with_bias),
                Epilogue::Local(OutPtr(current.0.as_mut_ptr())),
                pending.as_ref(),
                0..self.kp / KSTEP,
            );
            previous = Some((i, cb));
        }
        if let Some((i, cb)) = previous {
            let last = PendingGelu {
                block: &bufs[i % 2].0,
                dst,
                rb,
                cb,
                k_blocks,
                planes,
            };
            gelu_into_tiles(&last, 0, BLOCK);
        }
    }

    /// One 32 x 32 output block: four accumulator tiles, started as `start` says, over the
    /// K blocks `kbs` (all of them but in a split product), then handed to `epilogue`.
    ///
    /// # Safety
    /// AMX must be [`available`]; `a` holds row block `rb`'s input tiles (its two groups of
    /// 16 rows, from the first); the epilogue's output (and a [`Start::Output`]) is sized for `n x m` (or the next layer's
    /// tiles) and no other task touches this block meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        a: &[u16],
        (rb, cb): (usize, usize),
        n: usize,
        start: Start,
        epilogue: Epilogue,
        overlap: Option<&PendingGelu>,
        kbs: std::ops::Range<usize>,
    ) {
        configure_tiles();
        let k_blocks = self.kp / KSTEP;
        let planes = self.planes.count();
        // `a` starts at this row block's first group of 16 rows; `group` is 0 or 1.
        let a_tile = |group: usize, kb: usize, plane: usize| {
            a.as_ptr()
                .add(((group * k_blocks + kb) * planes + plane) * TILE_ELEMS)
        };
        let w_plane = self.tiles.len / planes;
        let w_tile = |plane: usize, col_block: usize, kb: usize| {
            self.tiles
                .as_slice()
                .as_ptr()
                .add(plane * w_plane + (col_block * k_blocks + kb) * TILE_ELEMS)
        };
        // Every K step ends by storing an input tile into this throw-away tile. Measured on
        // this machine (examples kept out of the repository; 2026-11-29): a block of 11 or
        // more K steps (132+ products) between two tile stores pays about 800 cycles when
        // its accumulators are finally stored (17 instead of 11.5 cycles per product at 12
        // K steps), blocks of 10 or fewer pay about 50, and a store of any tile once per K
        // step removes the cost (11.9 cycles per product). A 60-word SHAP request went from
        // 1.37-1.48 s to 1.31-1.40 s with it.
        // Only ever written (through the pointer), so it needs no zeroing per block.
        let mut sink_buf = std::mem::MaybeUninit::<AlignedTile>::uninit();
        let sink = sink_buf.as_mut_ptr().cast::<u16>();
        // After K step `kb`: that step's share of the pending block's GELU rows.
        let overlap_step = |kb: usize| {
            if let Some(p) = overlap {
                gelu_into_tiles(p, kb * BLOCK / k_blocks, (kb + 1) * BLOCK / k_blocks);
            }
        };
        let c0 = 2 * cb; // first column block of 16
        match start {
            Start::Bias => {
                let b0 = self.bias_tiles.as_slice().as_ptr().add(c0 * 16 * TILE_COLS);
                let b1 = b0.add(16 * TILE_COLS);
                asm!(
                    "tileloadd tmm0, [{b0} + {s}*1]",
                    "tileloadd tmm1, [{b1} + {s}*1]",
                    "tileloadd tmm2, [{b0} + {s}*1]",
                    "tileloadd tmm3, [{b1} + {s}*1]",
                    b0 = in(reg) b0, b1 = in(reg) b1, s = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            Start::Zero => asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            ),
            Start::Output(out) => {
                let (row0, col0) = (rb * BLOCK, cb * BLOCK);
                let rows = BLOCK.min(n - row0);
                let cols = BLOCK.min(self.m - col0);
                if rows == BLOCK && cols == BLOCK {
                    load_tiles(out.0.add(row0 * self.m + col0), self.m * 4);
                } else {
                    let mut local = AlignedBlock([0f32; BLOCK * BLOCK]);
                    for r in 0..rows {
                        let src = out.0.add((row0 + r) * self.m + col0);
                        std::ptr::copy_nonoverlapping(
                            src,
                            local.0.as_mut_ptr().add(r * BLOCK),
                            cols,
                        );
                    }
                    load_tiles(local.0.as_ptr(), BLOCK * 4);
                }
            }
        }
        if self.planes == Planes::Two {
            // The three products of a split pair share operands: ten tile loads
            // instead of twelve (hi x hi, hi x lo with the input tiles kept, lo x hi).
            for kb in kbs.clone() {
                asm!(
                    "tileloadd tmm4, [{a0h} + {s}*1]",
                    "tileloadd tmm6, [{w0h} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{w1h} + {s}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1h} + {s}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "tileloadd tmm6, [{w0l} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tileloadd tmm7, [{w1l} + {s}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "tileloadd tmm4, [{a0l} + {s}*1]",
                    "tileloadd tmm6, [{w0h} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{w1h} + {s}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1l} + {s}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "tilestored [{sink} + {s}*1], tmm4",
                    sink = in(reg) sink,
                    a0h = in(reg) a_tile(0, kb, 0),
                    a1h = in(reg) a_tile(1, kb, 0),
                    a0l = in(reg) a_tile(0, kb, 1),
                    a1l = in(reg) a_tile(1, kb, 1),
                    w0h = in(reg) w_tile(0, c0, kb),
                    w1h = in(reg) w_tile(0, c0 + 1, kb),
                    w0l = in(reg) w_tile(1, c0, kb),
                    w1l = in(reg) w_tile(1, c0 + 1, kb),
                    s = in(reg) 64usize,
                    options(nostack),
                );
                overlap_step(kb);
            }
        } else {
            for kb in kbs {
                for &(pa, pw) in self.planes.products() {
                    asm!(
                        "tileloadd tmm4, [{a0} + {s}*1]",
                        "tileloadd tmm6, [{w0} + {s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{w1} + {s}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1} + {s}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a_tile(0, kb, pa),
                        a1 = in(reg) a_tile(1, kb, pa),
                        w0 = in(reg) w_tile(pw, c0, kb),
                        w1 = in(reg) w_tile(pw, c0 + 1, kb),
                        s = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                }
                asm!(
                    "tilestored [{sink} + {s}*1], tmm4",
                    sink = in(reg) sink,
                    s = in(reg) 64usize,
                    options(nostack),
                );
                overlap_step(kb);
            }
        }
        self.finish(rb, cb, n, epilogue);
    }

    /// Hands the finished block `(rb, cb)`, in the accumulator tiles, to `epilogue`.
    ///
    /// # Safety
    /// As [`PackedBf16::panel`].
    unsafe fn finish(&self, rb: usize, cb: usize, n: usize, epilogue: Epilogue) {
        let out = match epilogue {
            Epilogue::Store(out) => out,
            Epilogue::Local(block) => {
                store_tiles(block.0, BLOCK * 4);
                return;
            }
            Epilogue::GeluTiles { .. } => unreachable!("GELU blocks go through run_gelu"),
        };
        let (row0, col0) = (rb * BLOCK, cb * BLOCK);
        let rows = BLOCK.min(n - row0);
        let cols = BLOCK.min(self.m - col0);
        if rows == BLOCK && cols == BLOCK {
            // A whole block: straight into the output.
            let base = out.0.add(row0 * self.m + col0);
            store_tiles(base, self.m * 4);
        } else {
            let mut local = AlignedBlock([0f32; BLOCK * BLOCK]);
            store_tiles(local.0.as_mut_ptr(), BLOCK * 4);
            for r in 0..rows {
                let dst = out.0.add((row0 + r) * self.m + col0);
                std::ptr::copy_nonoverlapping(local.0.as_ptr().add(r * BLOCK), dst, cols);
            }
        }
    }
}

/// Whether `row_blocks` blocks of 32 rows are enough for the threads to share them out (at
/// least four per thread): the condition for splitting a product by rows
/// ([`PackedBf16::multiply_with`]) or by K halves ([`PackedBf16::multiply_split_k`]).
fn enough_row_blocks(row_blocks: usize) -> bool {
    row_blocks >= 4 * rayon::current_num_threads().max(1)
}

/// Where a finished 32 x 32 block goes.
#[derive(Clone, Copy)]
enum Epilogue {
    /// Into the `n x m` f32 output.
    Store(OutPtr),
    /// Through the exact-form GELU into the input tiles of the next layer (see
    /// [`convert_group`]: `k_blocks` K blocks of 32 per group of 16 rows, `planes` terms):
    /// block column `cb` is that layer's K block `cb`, so the activation never exists as an
    /// f32 tensor.
    GeluTiles {
        dst: TilePtr,
        k_blocks: usize,
        planes: usize,
    },
    /// Into one 32 x 32 f32 block on a cache line (a [`AlignedBlock`]).
    Local(OutPtr),
}

/// What a block's accumulators start from.
#[derive(Clone, Copy)]
enum Start {
    /// The bias.
    Bias,
    /// Zero.
    Zero,
    /// The block's own values in the `n x m` f32 output, as a first K half left them (see
    /// [`PackedBf16::multiply_split_k`]).
    Output(OutPtr),
}

impl Start {
    fn bias(with_bias: bool) -> Self {
        if with_bias {
            Start::Bias
        } else {
            Start::Zero
        }
    }
}

/// A finished block waiting for its GELU epilogue (see [`PackedBf16::run_gelu`]).
#[derive(Clone, Copy)]
struct PendingGelu<'b> {
    block: &'b [f32; BLOCK * BLOCK],
    dst: TilePtr,
    rb: usize,
    cb: usize,
    k_blocks: usize,
    planes: usize,
}

/// One 1 KiB tile on a cache line.
#[repr(C, align(64))]
struct AlignedTile([u16; TILE_ELEMS]);

/// A 32 x 32 f32 block on a cache line, for whole-tile stores.
#[repr(C, align(64))]
struct AlignedBlock([f32; BLOCK * BLOCK]);

/// The next layer's input tiles, shared by the tasks of one multiply (disjoint tiles).
#[derive(Clone, Copy)]
struct TilePtr(*mut u16);
// SAFETY: tasks write disjoint tiles; see `Epilogue::GeluTiles`.
unsafe impl Send for TilePtr {}
unsafe impl Sync for TilePtr {}

multiversion_amx! {
    /// GELU of rows `r0..r1` of a finished 32 x 32 block (rows `32 rb..`, columns `32 cb..`)
    /// split into `planes` bf16 terms and written as the tiles (groups `2 rb` and `2 rb + 1`,
    /// K block `cb`) of the next layer's input.
    fn gelu_into_tiles(pending: &PendingGelu, r0: usize, r1: usize) {
        let PendingGelu { block, dst, rb, cb, k_blocks, planes } = *pending;
        for r in r0..r1 {
            let group = 2 * rb + r / 16;
            let mut vals = [0f32; KSTEP];
            for half in 0..2 {
                // SAFETY: `v4` runs with AVX-512 F; 16 values at each half of row r.
                unsafe {
                    use std::arch::x86_64::*;
                    let x = _mm512_loadu_ps(block.as_ptr().add(r * BLOCK + 16 * half));
                    _mm512_storeu_ps(vals.as_mut_ptr().add(16 * half), crate::model::kernels::gelu_avx512(x));
                }
            }
            let at = |plane: usize| {
                ((group * k_blocks + cb) * planes + plane.min(planes - 1)) * TILE_ELEMS + (r % 16) * KSTEP
            };
            // SAFETY: `v4` runs with AVX-512 BF16; the caller sized `dst` for every group and
            // K block of this multiply, and this block alone writes these 32 values per plane.
            unsafe { split32(&vals, planes, [dst.0.add(at(0)), dst.0.add(at(1)), dst.0.add(at(2))]) };
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

/// Loads a 32 x 32 f32 block at `base` (`stride` bytes per row) into the four accumulators.
///
/// # Safety
/// `base` must have 32 rows of 32 readable f32 at `stride` bytes apart; tiles configured.
unsafe fn load_tiles(base: *const f32, stride: usize) {
    let lower = base.add(16 * stride / 4);
    asm!(
        "tileloadd tmm0, [{c0} + {s}*1]",
        "tileloadd tmm1, [{c1} + {s}*1]",
        "tileloadd tmm2, [{c2} + {s}*1]",
        "tileloadd tmm3, [{c3} + {s}*1]",
        c0 = in(reg) base,
        c1 = in(reg) base.add(16),
        c2 = in(reg) lower,
        c3 = in(reg) lower.add(16),
        s = in(reg) stride,
        options(nostack, readonly),
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

/// A product's input: f32 rows, converted into tiles one row block at a time by the task
/// that multiplies it, or tiles already converted (a GELU epilogue's output).
#[derive(Clone, Copy)]
enum Input<'a> {
    /// `n x k` f32 rows; `call` tells this multiply's row blocks from an earlier one's.
    Rows { x: &'a [f32], call: u64 },
    /// Every row block's tiles, in order (see [`convert_group`]).
    Tiles(&'a [u16]),
}

impl<'a> Input<'a> {
    fn rows(x: &'a [f32]) -> Self {
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Input::Rows {
            x,
            call: CALLS.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// A row block's tiles and the (multiply, row block) they were converted for.
type RowTiles = (AlignedBuf<u16>, Option<(u64, usize)>);

thread_local! {
    /// This thread's tiles of the row block it multiplies (converted from f32 rows), and
    /// which (multiply, row block) they hold. Converting per row block instead of the whole
    /// input up front keeps the tiles in this core's cache: the up-front copy, as large as
    /// the f32 input, was written to memory and read back by the products (4.6% of a SHAP
    /// request's time). With one column group per thread each thread converts every row
    /// block once: twice the conversion work, none of the memory traffic.
    static ROW_TILES: std::cell::RefCell<RowTiles> =
        const { std::cell::RefCell::new((AlignedBuf::new(), None)) };
}

multiversion_amx! {
    /// Up to 16 input rows (`src`, `k` values each) into one group's tiles: per K block of 32,
    /// per plane, one tile of 16 rows x 32 bf16 (1 KiB), so each tile load reads 16
    /// consecutive cache lines. Missing rows and the padding columns are zero.
    fn convert_group(src: &[f32], dst: &mut [u16], k: usize, planes: usize) {
        let rows = src.len() / k;
        let k_blocks = dst.len() / (planes * TILE_ELEMS);
        for r in 0..16 {
            for kb in 0..k_blocks {
                let at = |plane: usize| ((kb * planes + plane.min(planes - 1)) * 16 + r) * KSTEP;
                let start = kb * KSTEP;
                if r >= rows || start >= k {
                    for plane in 0..planes {
                        dst[at(plane)..at(plane) + KSTEP].fill(0);
                    }
                    continue;
                }
                let base = dst.as_mut_ptr();
                let out = [base.wrapping_add(at(0)), base.wrapping_add(at(1)), base.wrapping_add(at(2))];
                assert!(at(planes - 1) + KSTEP <= dst.len());
                if start + KSTEP <= k {
                    // A whole block: split straight from the input, no copy.
                    let vals: &[f32; KSTEP] = src[r * k + start..][..KSTEP].try_into().expect("32 values");
                    // SAFETY: `v4` runs with AVX-512 BF16 (see `multiversion_amx`); each
                    // plane's 32 values lie inside `dst` (asserted above).
                    unsafe { split32(vals, planes, out) };
                } else {
                    let mut vals = [0f32; KSTEP];
                    vals[..k - start].copy_from_slice(&src[r * k + start..(r + 1) * k]);
                    // SAFETY: as above.
                    unsafe { split32(&vals, planes, out) };
                }
            }
        }
    }
}

thread_local! {
    /// The calling thread's buffer for the activation between the two dense layers of a
    /// feed-forward block, in input-tile layout.
    static SCRATCH_MID: std::cell::RefCell<AlignedBuf<u16>> =
        const { std::cell::RefCell::new(AlignedBuf::new()) };
}

/// A transformer feed-forward block on AMX tiles: `GELU(x @ W1 + b1) @ W2 + b2` (exact-form
/// GELU), with the activation computed in the first product's epilogue and written straight
/// into the second's bf16 input tiles: no f32 intermediate tensor, no separate GELU or
/// conversion pass over it.
struct FeedForward<'a> {
    inner: &'a PackedBf16,
    outer: &'a PackedBf16,
}

impl CustomOp1 for FeedForward<'_> {
    fn name(&self) -> &'static str {
        "glassbox-amx-feed-forward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (inner, outer) = (self.inner, self.outer);
        let x = super::kernels::contiguous(storage, layout, "feed-forward input")?;
        let dims = layout.dims();
        if dims.last() != Some(&inner.k) || inner.m != outer.k || inner.planes != outer.planes {
            candle_core::bail!(
                "feed-forward: input {:?} for layers {}x{} and {}x{} ({:?}, {:?})",
                dims,
                inner.k,
                inner.m,
                outer.k,
                outer.m,
                inner.planes,
                outer.planes
            );
        }
        assert!(available(), "AMX bf16 is not available on this machine");
        let n = x.len() / inner.k;
        let mut out = Vec::with_capacity(n * outer.m);
        // SAFETY: as in `Bf16Linear::cpu_fwd`: the second multiply writes every element.
        #[allow(clippy::uninit_vec)]
        unsafe {
            out.set_len(n * outer.m)
        };
        if n > 0 {
            let np = round_up(n, BLOCK);
            let planes = inner.planes.count();
            let k_blocks = inner.mp / KSTEP; // = outer.kp / KSTEP
            SCRATCH_MID.with_borrow_mut(|mid| {
                mid.resize((np / 16) * k_blocks * planes * TILE_ELEMS);
                let dst = TilePtr(mid.as_mut_slice().as_mut_ptr());
                inner.multiply_with(
                    Input::rows(x),
                    n,
                    np,
                    true,
                    Epilogue::GeluTiles {
                        dst,
                        k_blocks,
                        planes,
                    },
                );
                if outer.splits_k(np / BLOCK) {
                    outer.multiply_split_k(mid.as_slice(), n, np, &mut out);
                } else {
                    outer.multiply(Input::Tiles(mid.as_slice()), n, np, true, &mut out);
                }
            });
        }
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = outer.m;
        Ok((CpuStorage::F32(out), Shape::from_dims(&out_dims)))
    }
}

/// `GELU(x @ W1 + b1) @ W2 + b2` through the AMX kernel, the activation computed in the first
/// product's epilogue straight into the second's input tiles; inference only.
pub fn feed_forward_gelu(x: &Tensor, inner: &PackedBf16, outer: &PackedBf16) -> Result<Tensor> {
    x.contiguous()?
        .apply_op1_no_bwd(&FeedForward { inner, outer })
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
        let x = super::kernels::contiguous(storage, layout, "bf16 linear input")?;
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
        let two_threads = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a pool of two threads");
        let mut seed = 7;
        for &(n, k, m) in &[
            (1, 32, 32),
            (5, 40, 17),
            (32, 384, 1152),
            (47, 100, 70),
            (70, 1536, 384),
            // 10 row blocks and a weight under 1 MiB: with two threads (the pool below) they
            // split the rows, each keeping the whole weight.
            (300, 384, 96),
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
                    two_threads.install(|| packed.matmul_into(&x, n, with_bias, &mut out));
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

    /// The fused feed-forward block equals its unfused composition (product, GELU, product)
    /// bit for bit: the epilogue computes the same GELU and the same bf16 terms.
    #[test]
    fn feed_forward_equals_its_composition() {
        if !available() {
            eprintln!("skipped: this CPU has no AMX bf16");
            return;
        }
        // Pools of 2, 3 and 5 threads, so that the two largest cases (10 and 22 row blocks,
        // K = 4 x M in the second product) cut the second product in two K halves
        // (`multiply_split_k`) with one or two column groups per half (uneven ones with 5
        // threads: 3 column blocks in 2 groups), which must give the unsplit product's bits.
        let pools: Vec<rayon::ThreadPool> = [2, 3, 5]
            .iter()
            .map(|&t| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .expect("a thread pool")
            })
            .collect();
        let mut seed = 11;
        for &(n, k, i) in &[
            (1, 40, 70),
            (37, 64, 96),
            (70, 384, 1536),
            (300, 96, 384),
            (700, 96, 384),
        ] {
            let w1: Vec<f32> = (0..k * i).map(|_| lcg(&mut seed)).collect();
            let b1: Vec<f32> = (0..i).map(|_| lcg(&mut seed)).collect();
            let w2: Vec<f32> = (0..i * k).map(|_| lcg(&mut seed) * 0.2).collect();
            let b2: Vec<f32> = (0..k).map(|_| lcg(&mut seed)).collect();
            let x: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed) * 3.0).collect();
            for planes in [Planes::One, Planes::Two, Planes::Three] {
                let inner = PackedBf16::pack(&w1, k, i, &b1, planes);
                let outer = PackedBf16::pack(&w2, i, k, &b2, planes);
                let mut mid = vec![0f32; n * i];
                inner.matmul_into(&x, n, true, &mut mid);
                mid.iter_mut()
                    .for_each(|v| *v = crate::model::kernels::gelu_f32(*v));
                let mut want = vec![0f32; n * k];
                outer.matmul_into(&mid, n, true, &mut want);
                let xt = Tensor::from_vec(x.clone(), (n, k), &candle_core::Device::Cpu).unwrap();
                let row_blocks = round_up(n, BLOCK) / BLOCK;
                for pool in &pools {
                    let threads = pool.current_num_threads();
                    let split = pool.install(|| outer.splits_k(row_blocks));
                    let expected = n >= 300 && row_blocks >= 4 * threads;
                    assert_eq!(split, expected, "{n}x{k}x{i} on {threads} threads");
                    let got = pool
                        .install(|| feed_forward_gelu(&xt, &inner, &outer))
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    assert_eq!(got, want, "{planes:?} {n}x{k}x{i} on {threads} threads");
                }
            }
        }
    }
}
