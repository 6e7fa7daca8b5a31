//! Matrix products with bf16 inputs and f32 sums, the arithmetic of
//! PyTorch's CPU autocast and of `torch.set_float32_matmul_precision("medium")`,
//! run on Intel's AMX tile unit (Xeon 4th generation, "Sapphire Rapids", and
//! later).
//!
//! bf16 keeps f32's exponent and 8 of its 24 mantissa bits, so a value
//! rounds with a relative error of at most 2⁻⁹; the products of two bf16
//! values are exact in f32 and every sum runs in f32. One AMX instruction
//! (`tdpbf16ps`) multiplies a 16x32 tile of bf16 by a 32x16 one into a 16x16
//! tile of f32 sums: 8,192 multiply-adds, where an AVX-512 FMA does 16.
//! What that buys a training step: BENCHMARKS.md, "bf16 products on AMX".
//!
//! [`set_matmul_precision`] chooses the precision of the convolutions'
//! products for the whole process, like PyTorch's setting; the default is
//! f32, and bf16 is refused, with the reason, on a CPU without AMX.
//!
//! A product `C = A·B` packs `A` into bf16 rows and `B` into pairs of rows
//! (the layout `tdpbf16ps` reads: row `p` of a B tile holds, for each of 16
//! columns, the values of rows `2p` and `2p + 1` side by side), both padded
//! with zeros to whole tiles, then sums 32x32 blocks of `C` in four tiles.

// Inline assembly for the tile instructions (their intrinsics are not
// stable in Rust), raw reads of strided faer views while packing, and
// the byte views of the packed buffers.
#![allow(unsafe_code)]

mod shifted;

pub(crate) use shifted::{shifted_forward, shifted_weight_gradient};

use faer::{Accum, MatMut, MatRef};
use std::cell::RefCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// The precision of the convolutions' matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// f32 inputs and sums (faer's AVX-512 kernels).
    #[default]
    F32,
    /// Inputs rounded to bf16, sums in f32, on AMX tiles.
    Bf16,
}

impl MatmulPrecision {
    /// The names of the precisions, as flags and config files write them.
    pub const NAMES: cifar_spelling::Names<MatmulPrecision> = cifar_spelling::Names {
        what: "matmul precision",
        table: &[
            ("f32", MatmulPrecision::F32),
            ("bf16", MatmulPrecision::Bf16),
        ],
    };
}

cifar_spelling::named_text!(MatmulPrecision);

/// Why bf16 products cannot run on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bf16 matrix products need AMX tiles (Intel Xeon 4th generation or later): {0}")]
pub struct Bf16Unavailable(String);

/// How the products run: the engine behind a [`MatmulPrecision`], plus the
/// portable emulation of the AMX arithmetic that the tests compare it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    F32,
    Amx,
    /// The same packed bf16 operands summed by plain Rust loops: for tests
    /// on machines without AMX.
    #[cfg_attr(not(test), allow(dead_code))]
    Emulated,
}

static ENGINE: AtomicU8 = AtomicU8::new(0);

/// Sets the precision of the convolutions' matrix products for this
/// process (as PyTorch's `torch.set_float32_matmul_precision`): f32 always
/// works; bf16 needs AMX, and the error says why it is not there.
pub fn set_matmul_precision(precision: MatmulPrecision) -> Result<(), Bf16Unavailable> {
    let engine = match precision {
        MatmulPrecision::F32 => Engine::F32,
        MatmulPrecision::Bf16 => {
            amx_ready().map_err(Bf16Unavailable)?;
            Engine::Amx
        }
    };
    ENGINE.store(engine as u8, Ordering::Relaxed);
    Ok(())
}

/// The precision [`set_matmul_precision`] set last (f32 until then).
pub fn matmul_precision() -> MatmulPrecision {
    match engine() {
        Engine::F32 => MatmulPrecision::F32,
        Engine::Amx | Engine::Emulated => MatmulPrecision::Bf16,
    }
}

/// Whether this CPU and operating system run bf16 products.
pub fn bf16_available() -> bool {
    amx_ready().is_ok()
}

pub(crate) fn engine() -> Engine {
    match ENGINE.load(Ordering::Relaxed) {
        1 => Engine::Amx,
        2 => Engine::Emulated,
        _ => Engine::F32,
    }
}

/// AMX present (CPUID) and its tile state granted to this process (Linux
/// hands it out on request, `arch_prctl(ARCH_REQ_XCOMP_PERM)`), checked once.
fn amx_ready() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY.get_or_init(request_amx).clone()
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_amx() -> Result<(), String> {
    use std::arch::x86_64::__cpuid_count;
    // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
    let leaf7 = __cpuid_count(7, 0);
    if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
        return Err("this CPU has none".into());
    }
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return Err("this CPU lacks AVX-512, which the packing uses".into());
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a system call that only changes this process's permissions.
    let granted = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if granted != 0 {
        return Err(format!(
            "the kernel refused the tile state ({})",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_amx() -> Result<(), String> {
    Err("they run on x86-64 Linux only".into())
}

/// The bits of `x` rounded to the nearest bf16 (ties to even), in the low
/// 16 bits. NaN stays NaN; values past bf16's largest round to infinity.
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16
}

/// `x` rounded to the nearest bf16, as an f32.
pub fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x) << 16)
}

/// Two values as one bf16 pair: `lo` in the low half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
}

/// Rows and columns of a tile of f32 sums; a tile of bf16 inputs is 16 rows
/// of 32 values; a tile row is one 64-byte line.
const TILE: usize = 16;
/// Rows and columns of the `C` block one pass sums (2x2 tiles), and the
/// multiple the depth is padded to.
const BLOCK: usize = 32;

/// One cache line, the unit of the packed buffers so that every tile row
/// starts on a line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([u32; 16]);

fn words(lines: &mut [Line]) -> &mut [u32] {
    let len = lines.len() * 16;
    // SAFETY: a `Line` is 16 `u32`s with no padding.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), len) }
}

fn halves(lines: &mut [Line]) -> &mut [u16] {
    let len = lines.len() * 32;
    // SAFETY: a `Line` is 64 bytes with no padding; u16 needs less alignment.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), len) }
}

/// Grows `buffer` to at least `lines` lines and returns them.
fn lines(buffer: &mut Vec<Line>, lines: usize) -> &mut [Line] {
    if buffer.len() < lines {
        buffer.resize(lines, Line::default());
    }
    &mut buffer[..lines]
}

/// `a` (`[M, K]`) as bf16 rows of `kpad` values, `mpad` rows, zero-padded.
fn pack_rows(a: MatRef<'_, f32>, mpad: usize, kpad: usize, dst: &mut [u16]) {
    let (m, k) = (a.nrows(), a.ncols());
    let (rs, cs) = (a.row_stride(), a.col_stride());
    for (i, row) in dst.chunks_exact_mut(kpad).take(mpad).enumerate() {
        if i >= m {
            row.fill(0);
            continue;
        }
        if cs == 1 {
            // SAFETY: row `i < M` holds `K` contiguous values from its start.
            let src = unsafe { std::slice::from_raw_parts(a.as_ptr().offset(i as isize * rs), k) };
            for (d, &s) in row.iter_mut().zip(src) {
                *d = bf16_bits(s) as u16;
            }
        } else {
            for (j, d) in row[..k].iter_mut().enumerate() {
                // SAFETY: `(i, j)` is inside the `[M, K]` view.
                let s = unsafe { *a.as_ptr().offset(i as isize * rs + j as isize * cs) };
                *d = bf16_bits(s) as u16;
            }
        }
        row[k..].fill(0);
    }
}

/// `b` (`[K, N]`) as bf16 row pairs in panels of 32 columns: the pair of
/// rows `2p, 2p + 1` at column `n` is word `(n / 32 · kpad / 2 + p) · 32 +
/// n % 32`, zero-padded to `kpad` rows and `npad` columns.
fn pack_pairs(b: MatRef<'_, f32>, kpad: usize, npad: usize, dst: &mut [u32]) {
    let (k, n) = (b.nrows(), b.ncols());
    let (rs, cs) = (b.row_stride(), b.col_stride());
    let pairs = kpad / 2;
    let at = |row: usize, col: usize| -> f32 {
        if row < k && col < n {
            // SAFETY: `(row, col)` is inside the `[K, N]` view.
            unsafe { *b.as_ptr().offset(row as isize * rs + col as isize * cs) }
        } else {
            0.0
        }
    };
    if cs == 1 {
        // Rows are contiguous: a panel row is the pairs of 32 columns.
        let zeros = [0f32; BLOCK];
        let row = |r: usize, from: usize, len: usize| -> &[f32] {
            if r < k {
                // SAFETY: row `r < K` holds `N ≥ from + len` contiguous values.
                unsafe {
                    std::slice::from_raw_parts(
                        b.as_ptr().offset(r as isize * rs + from as isize),
                        len,
                    )
                }
            } else {
                &zeros[..len]
            }
        };
        for (panel, words) in dst
            .chunks_exact_mut(pairs * BLOCK)
            .take(npad / BLOCK)
            .enumerate()
        {
            let from = panel * BLOCK;
            let len = n.saturating_sub(from).min(BLOCK);
            for (p, out) in words.chunks_exact_mut(BLOCK).enumerate() {
                let (lo, hi) = (row(2 * p, from, len), row(2 * p + 1, from, len));
                for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                    *o = pair(l, h);
                }
                out[len..].fill(0);
            }
        }
    } else if rs == 1 {
        // Columns are contiguous (a transposed row-major matrix): 32
        // columns at a time, each panel row takes one pair from each.
        let zeros = vec![0f32; k];
        for (panel, words) in dst
            .chunks_exact_mut(pairs * BLOCK)
            .take(npad / BLOCK)
            .enumerate()
        {
            let columns: [&[f32]; BLOCK] = std::array::from_fn(|c| {
                let col = panel * BLOCK + c;
                if col < n {
                    // SAFETY: column `col < N` holds `K` contiguous values.
                    unsafe { std::slice::from_raw_parts(b.as_ptr().offset(col as isize * cs), k) }
                } else {
                    &zeros[..]
                }
            });
            let (rows, rest) = words.split_at_mut(k / 2 * BLOCK);
            for (p, out) in rows.chunks_exact_mut(BLOCK).enumerate() {
                for (o, column) in out.iter_mut().zip(&columns) {
                    *o = pair(column[2 * p], column[2 * p + 1]);
                }
            }
            let (odd, rest) = rest.split_at_mut(if k % 2 == 1 { BLOCK } else { 0 });
            for (o, column) in odd.iter_mut().zip(&columns) {
                *o = pair(column[k - 1], 0.0);
            }
            rest.fill(0);
        }
    } else {
        for (panel, words) in dst
            .chunks_exact_mut(pairs * BLOCK)
            .take(npad / BLOCK)
            .enumerate()
        {
            for (p, out) in words.chunks_exact_mut(BLOCK).enumerate() {
                for (c, o) in out.iter_mut().enumerate() {
                    let col = panel * BLOCK + c;
                    *o = pair(at(2 * p, col), at(2 * p + 1, col));
                }
            }
        }
    }
}

/// The packed operands of one product: `A` as `mpad` bf16 rows of `kpad`
/// values, `B` as `npad / 32` panels of `kpad / 2` rows of 32 pairs.
struct Packed<'a> {
    a: &'a [u16],
    b: &'a [u32],
    mpad: usize,
    npad: usize,
    kpad: usize,
}

impl Packed<'_> {
    /// The 32x32 block of `A·B` at rows `m0..`, columns of panel `panel`,
    /// on AMX tiles.
    ///
    /// # Safety
    ///
    /// The tile state must be granted ([`amx_ready`]) and the tiles
    /// configured ([`configure_tiles`]) on this thread.
    #[cfg(target_arch = "x86_64")]
    unsafe fn amx_block(&self, m0: usize, panel: usize, out: &mut [[f32; BLOCK]; BLOCK]) {
        let a_stride = self.kpad * 2;
        let panel_words = self.kpad / 2 * BLOCK;
        // SAFETY: every tile read lies inside the packed buffers: rows
        // `m0..m0 + 32 ≤ mpad` of A at columns `kb·32..+32 ≤ kpad`, rows
        // `kb·16..+16 ≤ kpad / 2` of B's panel; the stores fill `out`.
        unsafe {
            zero_sums();
            let a = self.a.as_ptr().add(m0 * self.kpad);
            let b = self.b.as_ptr().add(panel * panel_words);
            for kb in 0..self.kpad / BLOCK {
                multiply_tiles(
                    a.add(kb * BLOCK),
                    a_stride,
                    b.add(kb * TILE * BLOCK),
                    BLOCK * 4,
                );
            }
            store_sums(out.as_mut_ptr().cast(), BLOCK * 4);
        }
    }

    /// [`amx_block`](Self::amx_block) in plain Rust: each sum in pairs, as
    /// the tile unit takes them.
    fn emulated_block(&self, m0: usize, panel: usize, out: &mut [[f32; BLOCK]; BLOCK]) {
        let panel_words = &self.b[panel * self.kpad / 2 * BLOCK..][..self.kpad / 2 * BLOCK];
        for (i, out_row) in out.iter_mut().enumerate() {
            let a_row = &self.a[(m0 + i) * self.kpad..][..self.kpad];
            for (j, o) in out_row.iter_mut().enumerate() {
                let sum = a_row.chunks_exact(2).enumerate();
                let sum = sum.map(|(p, a)| pair_product(a, panel_words[p * BLOCK + j]));
                *o = sum.sum();
            }
        }
    }
}

/// The tile layout every block uses: tiles 0-7 all 16 rows of 64 bytes
/// (`tmm0-3` the sums, `tmm4-5` A, `tmm6-7` B).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// Loads [`TileConfig`] on this thread (every product does, so a thread
/// never depends on what ran on it before).
///
/// # Safety
///
/// The tile state must be granted ([`amx_ready`]).
#[cfg(target_arch = "x86_64")]
unsafe fn configure_tiles() {
    let mut config = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        config.bytes_per_row[t] = 64;
        config.rows[t] = TILE as u8;
    }
    // SAFETY: a valid palette-1 configuration of 8 tiles, 64 bytes aligned.
    unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
}

/// Zeroes the four tiles of sums (`tmm0-3`).
///
/// # Safety
///
/// Tiles configured on this thread ([`configure_tiles`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn zero_sums() {
    // SAFETY: configured tiles (the caller's promise); no memory access.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        )
    };
}

/// One step of a 32x32 block over 32 of its depth: the sums (`tmm0-3`)
/// plus the A tiles (16 rows of 32 bf16 at `a` and 16 rows further on,
/// rows `a_stride` bytes apart) times the B tiles (16 rows of 16 pairs at
/// `b` and 16 words further on, rows `b_stride` bytes apart).
///
/// # Safety
///
/// Tiles configured on this thread; the 32 rows of 64 bytes from `a` and
/// the 16 rows of 128 bytes from `b` readable.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn multiply_tiles(a: *const u16, a_stride: usize, b: *const u32, b_stride: usize) {
    // SAFETY: the caller's promise.
    unsafe {
        std::arch::asm!(
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a,
            a1 = in(reg) a.byte_add(TILE * a_stride),
            b0 = in(reg) b,
            b1 = in(reg) b.add(TILE),
            sa = in(reg) a_stride,
            sb = in(reg) b_stride,
            options(nostack, readonly)
        )
    };
}

/// Loads the four tiles of sums from a 32x32 block of f32 at `c`, rows
/// `stride` bytes apart.
///
/// # Safety
///
/// Tiles configured on this thread; the 32 rows of 128 bytes readable.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_sums(c: *const f32, stride: usize) {
    // SAFETY: the caller's promise.
    unsafe {
        std::arch::asm!(
            "tileloadd tmm0, [{c00} + {s}*1]",
            "tileloadd tmm1, [{c01} + {s}*1]",
            "tileloadd tmm2, [{c10} + {s}*1]",
            "tileloadd tmm3, [{c11} + {s}*1]",
            c00 = in(reg) c,
            c01 = in(reg) c.add(TILE),
            c10 = in(reg) c.byte_add(TILE * stride),
            c11 = in(reg) c.byte_add(TILE * stride).add(TILE),
            s = in(reg) stride,
            options(nostack, readonly)
        )
    };
}

/// Stores the four tiles of sums into a 32x32 block of f32 at `c`, rows
/// `stride` bytes apart.
///
/// # Safety
///
/// Tiles configured on this thread; the 32 rows of 128 bytes writable.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_sums(c: *mut f32, stride: usize) {
    // SAFETY: the caller's promise.
    unsafe {
        std::arch::asm!(
            "tilestored [{c00} + {s}*1], tmm0",
            "tilestored [{c01} + {s}*1], tmm1",
            "tilestored [{c10} + {s}*1], tmm2",
            "tilestored [{c11} + {s}*1], tmm3",
            c00 = in(reg) c,
            c01 = in(reg) c.add(TILE),
            c10 = in(reg) c.byte_add(TILE * stride),
            c11 = in(reg) c.byte_add(TILE * stride).add(TILE),
            s = in(reg) stride,
            options(nostack)
        )
    };
}

/// `a[0]·lo + a[1]·hi` for a bf16 pair `a` and a word of two bf16 values,
/// as one step of `tdpbf16ps` (for the emulated engine).
fn pair_product(a: &[u16], word: u32) -> f32 {
    let value = |h: u32| f32::from_bits(h << 16);
    value(u32::from(a[0])) * value(word & 0xffff) + value(u32::from(a[1])) * value(word >> 16)
}

/// Runs `f`, which computes blocks on `engine`, with the tiles configured
/// on this thread when the engine is AMX.
///
/// # Panics
///
/// On [`Engine::F32`], or AMX without the tile state granted.
fn on_tiles<R>(engine: Engine, f: impl FnOnce() -> R) -> R {
    match engine {
        Engine::Amx => {
            amx_ready().expect("bf16 products on AMX without the tile state");
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the tile state is granted (checked above).
            unsafe {
                configure_tiles()
            };
        }
        Engine::Emulated => {}
        Engine::F32 => panic!("the f32 engine runs in faer, not here"),
    }
    f()
}

thread_local! {
    /// Each thread's packing buffers, reused across products.
    static SCRATCH: RefCell<(Vec<Line>, Vec<Line>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// What packing an operand costs relative to its size: contiguous rows
/// convert in vector loops; other layouts read or write value by value.
fn packing_cost(x: MatRef<'_, f32>, pairs: bool) -> usize {
    let size = x.nrows() * x.ncols();
    match (x.col_stride() == 1, pairs && x.row_stride() == 1) {
        (true, _) => size,
        (false, true) => 2 * size,
        (false, false) => 4 * size,
    }
}

/// `C = A·B` (or `C += A·B`, after `accum`) with bf16 inputs and f32 sums
/// on one core, on `engine` ([`Engine::Amx`] or [`Engine::Emulated`]).
///
/// # Panics
///
/// If the shapes do not match, or `engine` is [`Engine::F32`] or AMX
/// without the tile state granted.
pub(crate) fn matmul(
    engine: Engine,
    c: MatMut<'_, f32>,
    accum: Accum,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
) {
    assert!(
        a.ncols() == b.nrows() && c.nrows() == a.nrows() && c.ncols() == b.ncols(),
        "bf16 product of [{}, {}] by [{}, {}] into [{}, {}]",
        a.nrows(),
        a.ncols(),
        b.nrows(),
        b.ncols(),
        c.nrows(),
        c.ncols()
    );
    // Cᵀ = Bᵀ·Aᵀ when that packs cheaper.
    let straight = packing_cost(a, false) + packing_cost(b, true);
    let turned = packing_cost(b.transpose(), false) + packing_cost(a.transpose(), true);
    if turned < straight {
        return product(
            engine,
            c.transpose_mut(),
            accum,
            b.transpose(),
            a.transpose(),
        );
    }
    product(engine, c, accum, a, b)
}

fn product(
    engine: Engine,
    c: MatMut<'_, f32>,
    accum: Accum,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
) {
    let (m, n, k) = (a.nrows(), b.ncols(), a.ncols());
    if m == 0 || n == 0 {
        return;
    }
    let (mpad, npad, kpad) = (
        m.next_multiple_of(BLOCK),
        n.next_multiple_of(BLOCK),
        k.max(1).next_multiple_of(BLOCK),
    );
    SCRATCH.with_borrow_mut(|(a_lines, b_lines)| {
        let a_packed = halves(lines(a_lines, mpad * kpad / 32));
        pack_rows(a, mpad, kpad, a_packed);
        let b_packed = words(lines(b_lines, npad * kpad / 32));
        pack_pairs(b, kpad, npad, b_packed);
        let packed = Packed {
            a: a_packed,
            b: b_packed,
            mpad,
            npad,
            kpad,
        };
        let (rs, cs) = (c.row_stride(), c.col_stride());
        let c = c.as_ptr_mut();
        on_tiles(engine, || {
            let mut block = [[0f32; BLOCK]; BLOCK];
            for panel in 0..packed.npad / BLOCK {
                for m0 in (0..packed.mpad).step_by(BLOCK) {
                    match engine {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: `on_tiles` configured the tiles.
                        Engine::Amx => unsafe { packed.amx_block(m0, panel, &mut block) },
                        _ => packed.emulated_block(m0, panel, &mut block),
                    }
                    write_block(&block, c, (m0, panel * BLOCK), (m, n), (rs, cs), accum);
                }
            }
        });
    });
}

/// Writes (or adds, after `accum`) the part of a 32x32 block of sums at
/// `(m0, n0)` that lies inside the `[M, N]` output at `c` with strides
/// `(rs, cs)`: along rows when they are contiguous, along columns when those
/// are.
fn write_block(
    block: &[[f32; BLOCK]; BLOCK],
    c: *mut f32,
    (m0, n0): (usize, usize),
    (m, n): (usize, usize),
    (rs, cs): (isize, isize),
    accum: Accum,
) {
    let (rows, cols) = ((m - m0).min(BLOCK), (n - n0).min(BLOCK));
    let start = m0 as isize * rs + n0 as isize * cs;
    let store = |out: &mut f32, v: f32| match accum {
        Accum::Add => *out += v,
        Accum::Replace => *out = v,
    };
    if cs == 1 {
        for (i, values) in block.iter().take(rows).enumerate() {
            // SAFETY: row `m0 + i < M` holds columns `n0..n0 + cols ≤ N`.
            let out =
                unsafe { std::slice::from_raw_parts_mut(c.offset(start + i as isize * rs), cols) };
            out.iter_mut().zip(values).for_each(|(o, &v)| store(o, v));
        }
    } else if rs == 1 {
        for j in 0..cols {
            // SAFETY: column `n0 + j < N` holds rows `m0..m0 + rows ≤ M`.
            let out =
                unsafe { std::slice::from_raw_parts_mut(c.offset(start + j as isize * cs), rows) };
            out.iter_mut()
                .zip(block)
                .for_each(|(o, values)| store(o, values[j]));
        }
    } else {
        for (i, values) in block.iter().take(rows).enumerate() {
            for (j, &v) in values.iter().take(cols).enumerate() {
                // SAFETY: `(m0 + i, n0 + j)` is inside the `[M, N]` output.
                store(
                    unsafe { &mut *c.offset(start + i as isize * rs + j as isize * cs) },
                    v,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    #[test]
    fn rounding_to_bf16_keeps_eight_bits_ties_to_even() {
        // By hand: 1 + 2⁻⁷ is a bf16 (7 stored mantissa bits); 1 + 2⁻⁸ is
        // halfway between 1 and 1 + 2⁻⁷ and goes to the even one, 1;
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ and 1 + 2⁻⁶ and goes to
        // the even 1 + 2⁻⁶; just above halfway rounds up.
        assert_eq!(round_to_bf16(1.0 + 2f32.powi(-7)), 1.0 + 2f32.powi(-7));
        assert_eq!(round_to_bf16(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(
            round_to_bf16(1.0 + 3.0 * 2f32.powi(-8)),
            1.0 + 2f32.powi(-6)
        );
        assert_eq!(
            round_to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(round_to_bf16(-2.5), -2.5);
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert!(round_to_bf16(f32::NAN).is_nan());
        assert_eq!(round_to_bf16(f32::MAX), f32::INFINITY);
        for x in [0.1f32, -3.7, 1e-20, 6.5e4] {
            assert!(
                (round_to_bf16(x) - x).abs() <= x.abs() * 2f32.powi(-9),
                "{x}"
            );
        }
    }

    /// A matrix of values in (-1, 1) from a fixed sequence.
    fn matrix(rows: usize, cols: usize, seed: u32) -> Mat<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        Mat::from_fn(rows, cols, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
    }

    /// `A·B` of the bf16-rounded inputs, in f64: what the products must
    /// give up to f32 summing.
    fn reference(a: MatRef<'_, f32>, b: MatRef<'_, f32>) -> Mat<f64> {
        Mat::from_fn(a.nrows(), b.ncols(), |i, j| {
            (0..a.ncols())
                .map(|k| f64::from(round_to_bf16(a[(i, k)])) * f64::from(round_to_bf16(b[(k, j)])))
                .sum()
        })
    }

    fn engines() -> Vec<Engine> {
        let mut engines = vec![Engine::Emulated];
        if bf16_available() {
            engines.push(Engine::Amx);
        } else {
            eprintln!("no AMX on this machine: checking the emulated engine only");
        }
        engines
    }

    fn assert_close(c: MatRef<'_, f32>, expected: &Mat<f64>, depth: usize, what: &str) {
        // f32 sums of `depth` terms of size < 1: each within depth · 2⁻²⁴.
        let tolerance = depth as f64 * 2f64.powi(-23) + 1e-6;
        for i in 0..c.nrows() {
            for j in 0..c.ncols() {
                let (got, want) = (f64::from(c[(i, j)]), expected[(i, j)]);
                assert!(
                    (got - want).abs() <= tolerance,
                    "{what}: ({i}, {j}) {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn products_of_any_shape_and_layout_equal_the_bf16_rounded_reference() {
        // Edges in every dimension (not multiples of 16 or 32), a depth of
        // one, an odd depth, and each operand row-major, transposed and
        // strided (a view of every other column).
        for engine in engines() {
            for &(m, n, k) in &[
                (1, 1, 1),
                (37, 45, 70),
                (64, 96, 33),
                (5, 130, 257),
                (45, 37, 71),
                (48, 16, 2),
            ] {
                let a = matrix(m, k, 1);
                let b = matrix(k, n, 2);
                let expected = reference(a.as_ref(), b.as_ref());
                let mut c = Mat::<f32>::zeros(m, n);
                matmul(engine, c.as_mut(), Accum::Replace, a.as_ref(), b.as_ref());
                assert_close(c.as_ref(), &expected, k, &format!("{engine:?} {m}x{n}x{k}"));

                // Transposed operands: Aᵀᵀ and Bᵀᵀ as views of the transposes.
                let (at, bt) = (a.transpose().to_owned(), b.transpose().to_owned());
                let mut c2 = Mat::<f32>::zeros(m, n);
                matmul(
                    engine,
                    c2.as_mut(),
                    Accum::Replace,
                    at.transpose(),
                    bt.transpose(),
                );
                assert_close(
                    c2.as_ref(),
                    &expected,
                    k,
                    &format!("{engine:?} {m}x{n}x{k} transposed"),
                );

                // Row-major A by a transposed B: B's pairs read down its
                // columns (when N ≤ M, else the product turns around).
                let mut c4 = Mat::<f32>::zeros(m, n);
                matmul(
                    engine,
                    c4.as_mut(),
                    Accum::Replace,
                    a.as_ref(),
                    bt.transpose(),
                );
                assert_close(
                    c4.as_ref(),
                    &expected,
                    k,
                    &format!("{engine:?} {m}x{n}x{k} B transposed"),
                );

                // Strided B, neither rows nor columns contiguous: every
                // other column of a matrix whose rows are 2N + 3 apart.
                let stride = 2 * n + 3;
                let mut wide = vec![9f32; k * stride];
                for i in 0..k {
                    for j in 0..n {
                        wide[i * stride + 2 * j] = b[(i, j)];
                    }
                }
                // SAFETY: `(i, j)` of the view is `wide[i·stride + 2j]`, inside `wide`.
                let strided =
                    unsafe { MatRef::from_raw_parts(wide.as_ptr(), k, n, stride as isize, 2) };
                let mut c3 = Mat::<f32>::zeros(m, n);
                matmul(engine, c3.as_mut(), Accum::Replace, a.as_ref(), strided);
                assert_close(
                    c3.as_ref(),
                    &expected,
                    k,
                    &format!("{engine:?} {m}x{n}x{k} strided"),
                );
            }
        }
    }

    #[test]
    fn accumulating_adds_to_the_output_and_replacing_overwrites_it() {
        for engine in engines() {
            let (a, b) = (matrix(20, 40, 3), matrix(40, 50, 4));
            let expected = reference(a.as_ref(), b.as_ref());
            let mut c = Mat::from_fn(20, 50, |_, _| 0.5f32);
            matmul(engine, c.as_mut(), Accum::Add, a.as_ref(), b.as_ref());
            let plus_half = Mat::from_fn(20, 50, |i, j| expected[(i, j)] + 0.5);
            assert_close(c.as_ref(), &plus_half, 40, &format!("{engine:?} add"));
            matmul(engine, c.as_mut(), Accum::Replace, a.as_ref(), b.as_ref());
            assert_close(c.as_ref(), &expected, 40, &format!("{engine:?} replace"));
        }
    }

    #[test]
    fn a_bf16_product_is_within_bf16_rounding_of_the_f32_one() {
        // The error bf16 inputs bring: each term off by at most 2⁻⁸
        // relative (two roundings of 2⁻⁹), random signs, so the sum's
        // error is about 2⁻⁸ · sqrt(K) · (term size) ≪ 2⁻⁸ · K.
        let k = 256;
        let (a, b) = (matrix(32, k, 5), matrix(k, 32, 6));
        let exact = &a * &b;
        let mut c = Mat::<f32>::zeros(32, 32);
        matmul(
            Engine::Emulated,
            c.as_mut(),
            Accum::Replace,
            a.as_ref(),
            b.as_ref(),
        );
        let worst = (0..32)
            .flat_map(|i| (0..32).map(move |j| (i, j)))
            .map(|(i, j)| (c[(i, j)] - exact[(i, j)]).abs())
            .fold(0f32, f32::max);
        assert!(worst > 0.0, "bf16 rounding changed nothing");
        assert!(worst < 0.05, "worst error {worst}");
    }

    #[test]
    fn bf16_is_granted_only_where_amx_is() {
        let result = set_matmul_precision(MatmulPrecision::Bf16);
        assert_eq!(result.is_ok(), bf16_available());
        if let Err(e) = &result {
            assert!(e.to_string().contains("AMX"), "{e}");
            assert_eq!(matmul_precision(), MatmulPrecision::F32);
        }
        set_matmul_precision(MatmulPrecision::F32).unwrap();
        assert_eq!(matmul_precision(), MatmulPrecision::F32);
    }
}
