//! 3x3 "same" convolutions by Winograd's minimal filtering F(4x4, 3x3)
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
//! 2016): each 4x4 block of outputs of one pair of channels takes 36
//! multiplications instead of 144.
//!
//! The output is cut into 4x4 tiles; tile `t` reads the 6x6 window `d` of
//! the zero-padded input that covers it. With `g` a 3x3 filter,
//!
//! ```text
//!      [4  0 -5  0  1  0]        [ 1/4    0     0  ]
//!      [0 -4 -4  1  1  0]        [-1/6  -1/6  -1/6 ]
//! Bᵀ = [0  4 -4 -1  1  0]    G = [-1/6   1/6  -1/6 ]    Aᵀ = [1 1  1 1  1 0]
//!      [0 -2 -1  2  1  0]        [ 1/24  1/12  1/6 ]         [0 1 -1 2 -2 0]
//!      [0  2 -1 -2  1  0]        [ 1/24 -1/12  1/6 ]         [0 1  1 4  4 0]
//!      [0  4  0 -5  0  1]        [ 0     0     1   ]         [0 1 -1 8 -8 1]
//! ```
//!
//! the tile's output is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. Summed over the input
//! channels, the elementwise product at each of the 36 positions `ξ` of a
//! 6x6 transform is a matrix product, `M[ξ] = U[ξ] · V[ξ]`, of the
//! transformed filters `U[ξ]` (`[CO, C]`) and the transformed windows
//! `V[ξ]` (`[C, tiles]`). Against the unfolded product (`[CO, 9C]` by
//! `[9C, 16·tiles]`), the 36 products do a quarter of the multiply-adds
//! on maps whose sides are multiples of 4 (less on other maps, whose last
//! tiles hang over the edge: 7x7 maps take 4 tiles of 16 values, a third
//! of the multiply-adds), and the transforms write 2.25 values per input
//! value where im2col writes 9. The transforms' coefficients are written
//! out in [`bt_row`], [`at_row`] and [`a_row`], each checked against the
//! matrices above in the tests.
//!
//! The backward pass reuses them: the input gradient of a "same"
//! convolution is such a convolution itself (of the output gradient by the
//! turned filters, `same_size_input_gradient`), and the weight gradient is
//! `dU[ξ] = Σ dM[ξ] · V[ξ]ᵀ`, with `dM = A dY Aᵀ` per tile, turned back
//! into a 3x3 filter by `dg = Gᵀ dU G`.

use super::{Geometry, add_bias_gradients, row_major, row_major_mut};
use crate::add_gradients;
use faer::linalg::matmul::matmul;
use faer::{Accum, Par};
use rayon::prelude::*;

/// Output values along each side of a tile.
const TILE: usize = 4;

/// Values along each side of a window (and of a transform): `TILE + 2`.
const WINDOW: usize = 6;

/// Positions of a 6x6 transform.
const POSITIONS: usize = WINDOW * WINDOW;

/// `G`, the filter transform (Lavin and Gray's F(4x4, 3x3)).
const G: [[f32; 3]; WINDOW] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Values from one position's `[rows, width]` matrix to the next in the
/// transformed inputs and products: the matrix and one cache line more.
/// Matrices laid end to end put the 36 rows that a transform reads or
/// writes together a power of two apart (`rows·width`, 32 or 128 KB), all
/// in one set of the caches, which hold 8 or 16 lines of a set; with the
/// extra line, the output transform of the recipe's 15x15 layer took
/// 3.6 ms a task instead of 4.8.
fn stride(rows: usize, width: usize) -> usize {
    rows * width + 16
}

/// Tiles a task's products should have at least, so that they are wide
/// enough for the matrix kernels (see [`Tiles::images_per_task`]).
const PRODUCT_TILES: usize = 128;

/// Whether a convolution runs here: a 3x3 kernel, stride 1, padding 1 all
/// round, on maps 5 to 15 values wide (and 5 or more high).
///
/// Measured on the recipe's layers (BENCHMARKS.md, "Winograd
/// convolutions"): on 7x7 maps with 256 channels these kernels take three
/// quarters of the time of the unfolded product, forward and backward; on
/// 15x15 maps as long; on 3x3 maps the tiles are mostly padding, and from
/// 16 values wide the shifted products ([`super::shifted_forward`]) are
/// faster.
pub(super) fn applies(g: &Geometry) -> bool {
    g.kernel == [3, 3]
        && g.pad == [1, 1]
        && g.same_size()
        && g.height >= NARROWEST
        && (NARROWEST..super::SHIFTED_WIDTH).contains(&g.width)
}

/// The narrowest map that runs here: on 4x4 and smaller maps a tile is one
/// image's whole map, and the unfolded product does fewer multiply-adds.
const NARROWEST: usize = 5;

/// The 4x4 output tiles of the images and how a task lays them out.
///
/// A task transforms `n` images at once. Its products' columns are the
/// tiles, row of tiles by row of tiles, with the image innermost: tile
/// `(ty, tx)` of image `i` is column `(ty·columns + tx)·n + i`. Each
/// channel's row of the transformed matrices covers all the task's tiles,
/// one run of `n·tiles` values that the transforms fill in vector
/// registers even where a map is only 2 tiles wide (a transform per row of
/// tiles, on runs of 8 values, spent as much on its bookkeeping as on its
/// arithmetic). With the image innermost, the gathers and the scatter move
/// runs of `n` values, copies of whole vectors, to and from a copy of one
/// channel's planes with the image innermost; with the tile innermost they
/// moved one value at a time, every fourth of a row, and took a fifth of
/// the recipe's step.
#[derive(Debug, Clone, Copy)]
struct Tiles {
    g: Geometry,
    /// Tile rows, `⌈H/4⌉`.
    rows: usize,
    /// Tile columns, `⌈W/4⌉`.
    columns: usize,
}

impl Tiles {
    fn new(g: &Geometry) -> Self {
        Self {
            g: *g,
            rows: g.height.div_ceil(TILE),
            columns: g.width.div_ceil(TILE),
        }
    }

    fn per_image(&self) -> usize {
        self.rows * self.columns
    }

    fn plane(&self) -> usize {
        self.g.height * self.g.width
    }

    /// Images per task: enough that a product has about [`PRODUCT_TILES`]
    /// columns, while leaving each core at least two tasks.
    fn images_per_task(&self) -> usize {
        self.g.images_for_columns(PRODUCT_TILES, self.per_image())
    }

    /// Tasks of `group` images that each core runs, so that each core
    /// allocates its buffers once.
    fn tasks_per_core(&self, group: usize) -> usize {
        self.g
            .batch
            .div_ceil(group)
            .div_ceil(rayon::current_num_threads())
    }

    /// Values of the buffer [`gather`](Self::gather) fills with windows
    /// for `n` images: 36 runs of `n·tiles`.
    fn windows_len(&self, n: usize) -> usize {
        POSITIONS * n * self.per_image()
    }

    /// Values of one channel of `n` images, the buffer through which the
    /// gathers and the scatter go (see [`interleave`]).
    fn planes_len(&self, n: usize) -> usize {
        n * self.plane()
    }

    /// Where value `(a, b)` of the block of tile `tile` (in the runs'
    /// order) that starts at image value `(4ty - shift, 4tx - shift)` lies
    /// in a plane: its index, or `None` outside the map.
    fn value_at(&self, tile: usize, (a, b): (usize, usize), shift: usize) -> Option<usize> {
        let (ty, tx) = (tile / self.columns, tile % self.columns);
        // Before the map's first row or column the difference wraps round
        // to past its end.
        let y = (TILE * ty + a).wrapping_sub(shift);
        let x = (TILE * tx + b).wrapping_sub(shift);
        (y < self.g.height && x < self.g.width).then_some(y * self.g.width + x)
    }

    /// Fills `runs` with channel `channel` of the `n` images `[n, channels,
    /// H, W]`, as a transform reads it: run `side·a + b` holds value `(a,
    /// b)` of every tile's `side x side` block that starts at image value
    /// `(4ty - shift, 4tx - shift)`, the `n` images of tile `(ty, tx)` side
    /// by side (see [`Tiles`]), zero outside the map. The input transform
    /// reads 6x6 windows of the input zero-padded by one (`side` 6, `shift`
    /// 1), the gradient transform the 4x4 tiles of the output gradients
    /// (`side` 4, `shift` 0). `planes` holds the channel with the image
    /// innermost on the way.
    fn gather(
        &self,
        images: &[f32],
        (channels, channel): (usize, usize),
        n: usize,
        (side, shift): (usize, usize),
        planes: &mut [f32],
        runs: &mut [f32],
    ) {
        let hw = self.plane();
        interleave(&images[channel * hw..], channels * hw, n, hw, planes);
        for (ab, run) in runs.chunks_exact_mut(n * self.per_image()).enumerate() {
            let value = (ab / side, ab % side);
            for (tile, values) in run.chunks_exact_mut(n).enumerate() {
                match self.value_at(tile, value, shift) {
                    Some(at) => values.copy_from_slice(&planes[at * n..][..n]),
                    None => values.fill(0.0),
                }
            }
        }
    }

    /// Writes the 16 runs of `values` (value `(p, q)` of every tile of
    /// channel `o` in run `4p + q`) into the outputs `[n, CO, H, W]`,
    /// dropping those past the edge of the map; `planes` holds the channel
    /// with the image innermost on the way.
    fn scatter_output(
        &self,
        values: &[f32],
        o: usize,
        n: usize,
        planes: &mut [f32],
        out: &mut [f32],
    ) {
        let hw = self.plane();
        for (pq, run) in values.chunks_exact(n * self.per_image()).enumerate() {
            let value = (pq / TILE, pq % TILE);
            for (tile, values) in run.chunks_exact(n).enumerate() {
                if let Some(at) = self.value_at(tile, value, 0) {
                    planes[at * n..][..n].copy_from_slice(values);
                }
            }
        }
        deinterleave(planes, n, hw, &mut out[o * hw..], self.g.out_channels * hw);
    }
}

/// Copies `len` values of each of the `n` planes that start `stride` apart
/// in `planes` into `out`, with the plane innermost: `out[p·n + i] =
/// planes[i·stride + p]`.
fn interleave(planes: &[f32], stride: usize, n: usize, len: usize, out: &mut [f32]) {
    for i in 0..n {
        let plane = &planes[i * stride..][..len];
        for (values, &x) in out.chunks_exact_mut(n).zip(plane) {
            values[i] = x;
        }
    }
}

/// The inverse of [`interleave`]: `planes[i·stride + p] = values[p·n + i]`.
fn deinterleave(values: &[f32], n: usize, len: usize, planes: &mut [f32], stride: usize) {
    for i in 0..n {
        let plane = &mut planes[i * stride..][..len];
        for (x, values) in plane.iter_mut().zip(values.chunks_exact(n)) {
            *x = values[i];
        }
    }
}

/// A function of `I` vectors giving `O` vectors, applied by [`lanewise`].
///
/// A trait rather than a closure: pulp's vector operations are inlined
/// only into functions compiled for the same instructions, and a closure
/// cannot be marked `#[inline(always)]`, so one left out of line would call
/// each addition as a function.
trait Lanes<const I: usize, const O: usize> {
    fn apply<S: pulp::Simd>(&self, simd: S, x: [S::f32s; I]) -> [S::f32s; O];
}

/// `outputs[o][j] = f(inputs[0][j], inputs[1][j], ...)[o]` for every `j`,
/// a vector register of values at a time. Inputs that `f` does not use are
/// not read.
///
/// # Panics
///
/// When an input or output is shorter than the first output.
#[inline(always)]
#[allow(unsafe_code)]
fn lanewise<S: pulp::Simd, const I: usize, const O: usize>(
    simd: S,
    inputs: [&[f32]; I],
    outputs: [&mut [f32]; O],
    f: impl Lanes<I, O>,
) {
    let len = outputs[0].len();
    assert!(
        inputs.iter().all(|v| v.len() >= len) && outputs.iter().all(|v| v.len() >= len),
        "lanewise operands shorter than {len}"
    );
    let lanes = std::mem::size_of::<S::f32s>() / std::mem::size_of::<f32>();
    let full = len / lanes * lanes;
    let inputs = inputs.map(<[f32]>::as_ptr);
    let outputs = outputs.map(<[f32]>::as_mut_ptr);
    let mut x = [simd.splat_f32s(0.0); I];
    let mut j = 0;
    while j < full {
        for k in 0..I {
            // SAFETY: `j + lanes <= len`, and every input holds `len` values.
            x[k] = unsafe { inputs[k].add(j).cast::<S::f32s>().read_unaligned() };
        }
        let y = f.apply(simd, x);
        for o in 0..O {
            // SAFETY: as above, for the outputs, which do not overlap:
            // they come from distinct `&mut` slices.
            unsafe { outputs[o].add(j).cast::<S::f32s>().write_unaligned(y[o]) };
        }
        j += lanes;
    }
    if full < len {
        for k in 0..I {
            // SAFETY: `full..len` lies inside every input.
            let from = unsafe { std::slice::from_raw_parts(inputs[k].add(full), len - full) };
            x[k] = simd.partial_load_f32s(from);
        }
        let y = f.apply(simd, x);
        for o in 0..O {
            // SAFETY: as above, for the outputs.
            let to = unsafe { std::slice::from_raw_parts_mut(outputs[o].add(full), len - full) };
            simd.partial_store_f32s(to, y[o]);
        }
    }
}

/// Row `K` of `Bᵀ` times `d`, written out so that the coefficients are
/// folded in: `4d0 - 5d2 + d4`, `-4(d1 + d2) + d3 + d4`, `4(d1 - d2) + d4 -
/// d3`, `2(d3 - d1) + d4 - d2`, `2(d1 - d3) + d4 - d2`, `4d1 - 5d3 + d5`.
#[inline(always)]
fn bt_row<S: pulp::Simd, const K: usize>(simd: S, d: [S::f32s; WINDOW]) -> S::f32s {
    let (two, four, minus_four, minus_five) = (
        simd.splat_f32s(2.0),
        simd.splat_f32s(4.0),
        simd.splat_f32s(-4.0),
        simd.splat_f32s(-5.0),
    );
    match K {
        0 => simd.mul_add_f32s(four, d[0], simd.mul_add_f32s(minus_five, d[2], d[4])),
        1 => simd.mul_add_f32s(
            minus_four,
            simd.add_f32s(d[1], d[2]),
            simd.add_f32s(d[3], d[4]),
        ),
        2 => simd.mul_add_f32s(four, simd.sub_f32s(d[1], d[2]), simd.sub_f32s(d[4], d[3])),
        3 => simd.mul_add_f32s(two, simd.sub_f32s(d[3], d[1]), simd.sub_f32s(d[4], d[2])),
        4 => simd.mul_add_f32s(two, simd.sub_f32s(d[1], d[3]), simd.sub_f32s(d[4], d[2])),
        _ => simd.mul_add_f32s(four, d[1], simd.mul_add_f32s(minus_five, d[3], d[5])),
    }
}

/// `Bᵀ` times `d`.
#[inline(always)]
fn bt<S: pulp::Simd>(simd: S, d: [S::f32s; WINDOW]) -> [S::f32s; WINDOW] {
    [
        bt_row::<S, 0>(simd, d),
        bt_row::<S, 1>(simd, d),
        bt_row::<S, 2>(simd, d),
        bt_row::<S, 3>(simd, d),
        bt_row::<S, 4>(simd, d),
        bt_row::<S, 5>(simd, d),
    ]
}

/// Row `P` of `Aᵀ` times `m`: `m0 + m1 + m2 + m3 + m4`, `(m1 - m2) +
/// 2(m3 - m4)`, `(m1 + m2) + 4(m3 + m4)`, `(m1 - m2) + 8(m3 - m4) + m5`.
#[inline(always)]
fn at_row<S: pulp::Simd, const P: usize>(simd: S, m: [S::f32s; WINDOW]) -> S::f32s {
    let (sum12, difference12) = (simd.add_f32s(m[1], m[2]), simd.sub_f32s(m[1], m[2]));
    let (sum34, difference34) = (simd.add_f32s(m[3], m[4]), simd.sub_f32s(m[3], m[4]));
    match P {
        0 => simd.add_f32s(simd.add_f32s(m[0], sum12), sum34),
        1 => simd.mul_add_f32s(simd.splat_f32s(2.0), difference34, difference12),
        2 => simd.mul_add_f32s(simd.splat_f32s(4.0), sum34, sum12),
        _ => simd.add_f32s(
            simd.mul_add_f32s(simd.splat_f32s(8.0), difference34, difference12),
            m[5],
        ),
    }
}

/// Column `K` of `Aᵀ` times `g` (row `K` of `A`): `g0`, `g0 + g1 + g2 +
/// g3`, `g0 - g1 + g2 - g3`, `g0 + 2g1 + 4g2 + 8g3`, `g0 - 2g1 + 4g2 -
/// 8g3`, `g3`.
#[inline(always)]
fn a_row<S: pulp::Simd, const K: usize>(simd: S, g: [S::f32s; TILE]) -> S::f32s {
    let (even, odd) = (simd.add_f32s(g[0], g[2]), simd.add_f32s(g[1], g[3]));
    let even4 = simd.mul_add_f32s(simd.splat_f32s(4.0), g[2], g[0]);
    let odd2 = simd.mul_add_f32s(simd.splat_f32s(8.0), g[3], simd.add_f32s(g[1], g[1]));
    match K {
        0 => g[0],
        1 => simd.add_f32s(even, odd),
        2 => simd.sub_f32s(even, odd),
        3 => simd.add_f32s(even4, odd2),
        4 => simd.sub_f32s(even4, odd2),
        _ => g[3],
    }
}

/// Row `r` of a window (`d`, row-major 6x6) times column `K` of `B`.
#[inline(always)]
fn window_row<S: pulp::Simd, const K: usize>(
    simd: S,
    d: &[S::f32s; POSITIONS],
    r: usize,
) -> S::f32s {
    let w = WINDOW * r;
    bt_row::<S, K>(
        simd,
        [d[w], d[w + 1], d[w + 2], d[w + 3], d[w + 4], d[w + 5]],
    )
}

/// Row `P` of `Aᵀ` times column `b` of `m` (row-major 6x6).
#[inline(always)]
fn product_column<S: pulp::Simd, const P: usize>(
    simd: S,
    m: &[S::f32s; POSITIONS],
    b: usize,
) -> S::f32s {
    let column = [
        m[b],
        m[WINDOW + b],
        m[2 * WINDOW + b],
        m[3 * WINDOW + b],
        m[4 * WINDOW + b],
        m[5 * WINDOW + b],
    ];
    at_row::<S, P>(simd, column)
}

/// Row `p` of a tile's gradient (`g`, row-major 4x4) times row `K` of `Aᵀ`
/// transposed.
#[inline(always)]
fn gradient_row<S: pulp::Simd, const K: usize>(simd: S, g: &[S::f32s; 16], p: usize) -> S::f32s {
    let t = TILE * p;
    a_row::<S, K>(simd, [g[t], g[t + 1], g[t + 2], g[t + 3]])
}

/// Positions `(a, K)` (`ξ = 6a + K`) of `Bᵀ d B` for a row of tiles, from
/// the window's 36 runs (row `r`, column `k` at `6r + k`): column `K` of
/// `Bᵀ` along each of the 6 rows, then `Bᵀ` down.
struct InputColumn<const K: usize>;

impl<const K: usize> Lanes<POSITIONS, WINDOW> for InputColumn<K> {
    #[inline(always)]
    fn apply<S: pulp::Simd>(&self, simd: S, d: [S::f32s; POSITIONS]) -> [S::f32s; WINDOW] {
        let rows = [
            window_row::<S, K>(simd, &d, 0),
            window_row::<S, K>(simd, &d, 1),
            window_row::<S, K>(simd, &d, 2),
            window_row::<S, K>(simd, &d, 3),
            window_row::<S, K>(simd, &d, 4),
            window_row::<S, K>(simd, &d, 5),
        ];
        bt(simd, rows)
    }
}

/// Row `P` of each 4x4 output tile of a row of tiles, `Aᵀ m A + bias`,
/// from the 36 positions' products: row `P` of `Aᵀ` down each column,
/// then `Aᵀ` along the row.
struct OutputRow<const P: usize> {
    bias: f32,
}

impl<const P: usize> Lanes<POSITIONS, TILE> for OutputRow<P> {
    #[inline(always)]
    fn apply<S: pulp::Simd>(&self, simd: S, m: [S::f32s; POSITIONS]) -> [S::f32s; TILE] {
        let s = [
            product_column::<S, P>(simd, &m, 0),
            product_column::<S, P>(simd, &m, 1),
            product_column::<S, P>(simd, &m, 2),
            product_column::<S, P>(simd, &m, 3),
            product_column::<S, P>(simd, &m, 4),
            product_column::<S, P>(simd, &m, 5),
        ];
        let bias = simd.splat_f32s(self.bias);
        [
            simd.add_f32s(at_row::<S, 0>(simd, s), bias),
            simd.add_f32s(at_row::<S, 1>(simd, s), bias),
            simd.add_f32s(at_row::<S, 2>(simd, s), bias),
            simd.add_f32s(at_row::<S, 3>(simd, s), bias),
        ]
    }
}

/// Positions `(a, K)` of `A dY Aᵀ` for a row of tiles, from the tiles' 16
/// gradient values (`(p, q)` at `4p + q`): `A` along each row (column `K`
/// of `Aᵀ`), then down.
struct GradientColumn<const K: usize>;

impl<const K: usize> Lanes<16, WINDOW> for GradientColumn<K> {
    #[inline(always)]
    fn apply<S: pulp::Simd>(&self, simd: S, g: [S::f32s; 16]) -> [S::f32s; WINDOW] {
        let e = [
            gradient_row::<S, K>(simd, &g, 0),
            gradient_row::<S, K>(simd, &g, 1),
            gradient_row::<S, K>(simd, &g, 2),
            gradient_row::<S, K>(simd, &g, 3),
        ];
        [
            a_row::<S, 0>(simd, e),
            a_row::<S, 1>(simd, e),
            a_row::<S, 2>(simd, e),
            a_row::<S, 3>(simd, e),
            a_row::<S, 4>(simd, e),
            a_row::<S, 5>(simd, e),
        ]
    }
}

/// The 36 row segments `at(ξ)..at(ξ) + len` of a `[36, rows, n]` matrix,
/// one per position (`at` increasing in `ξ`), filled column by column of
/// the transform.
struct Positions<'a> {
    parts: [Option<&'a mut [f32]>; POSITIONS],
}

impl<'a> Positions<'a> {
    fn new(values: &'a mut [f32], at: impl Fn(usize) -> usize, len: usize) -> Self {
        let mut rest = values;
        let mut start = 0;
        let mut parts: [Option<&mut [f32]>; POSITIONS] = std::array::from_fn(|_| None);
        for (xi, part) in parts.iter_mut().enumerate() {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(at(xi) - start);
            let (segment, tail) = tail.split_at_mut(len);
            *part = Some(segment);
            rest = tail;
            start = at(xi) + len;
        }
        Self { parts }
    }

    /// Positions `k, 6 + k, ..., 30 + k`.
    fn take(&mut self, k: usize) -> [&'a mut [f32]; WINDOW] {
        std::array::from_fn(|a| {
            self.parts[WINDOW * a + k]
                .take()
                .expect("each column of positions is taken once")
        })
    }

    /// Fills every position from the runs `inputs`, column `K` of the
    /// transform (positions `K, 6 + K, ..., 30 + K`) by `columns.K`.
    #[inline(always)]
    fn fill<S: pulp::Simd, const I: usize>(
        mut self,
        simd: S,
        inputs: [&[f32]; I],
        columns: (
            impl Lanes<I, WINDOW>,
            impl Lanes<I, WINDOW>,
            impl Lanes<I, WINDOW>,
            impl Lanes<I, WINDOW>,
            impl Lanes<I, WINDOW>,
            impl Lanes<I, WINDOW>,
        ),
    ) {
        lanewise(simd, inputs, self.take(0), columns.0);
        lanewise(simd, inputs, self.take(1), columns.1);
        lanewise(simd, inputs, self.take(2), columns.2);
        lanewise(simd, inputs, self.take(3), columns.3);
        lanewise(simd, inputs, self.take(4), columns.4);
        lanewise(simd, inputs, self.take(5), columns.5);
    }
}

/// The transformed windows `V = Bᵀ d B` of a task's `n` images into `v`,
/// a `[36, C, n·tiles]` matrix.
struct InputTransform<'a> {
    tiles: Tiles,
    images: &'a [f32],
    n: usize,
    /// One channel of the images, the image innermost.
    planes: &'a mut [f32],
    windows: &'a mut [f32],
    v: &'a mut [f32],
}

impl pulp::WithSimd for InputTransform<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let (t, n) = (self.tiles, self.n);
        let (c, width) = (t.g.channels, n * t.per_image());
        for ci in 0..c {
            t.gather(
                self.images,
                (c, ci),
                n,
                (WINDOW, 1),
                self.planes,
                self.windows,
            );
            let d: [&[f32]; POSITIONS] =
                std::array::from_fn(|rk| &self.windows[rk * width..][..width]);
            let columns = (
                InputColumn::<0>,
                InputColumn::<1>,
                InputColumn::<2>,
                InputColumn::<3>,
                InputColumn::<4>,
                InputColumn::<5>,
            );
            Positions::new(self.v, |xi| xi * stride(c, width) + ci * width, width)
                .fill(simd, d, columns);
        }
    }
}

/// A task's outputs `[n, CO, H, W]` from `m`, the `[36, CO, n·tiles]`
/// products: `Aᵀ m A` per tile, plus the bias.
struct OutputTransform<'a> {
    tiles: Tiles,
    m: &'a [f32],
    n: usize,
    bias: Option<&'a [f32]>,
    /// 16 runs: value `(p, q)` of each tile of a row of tiles.
    values: &'a mut [f32],
    /// One channel of the outputs, the image innermost.
    planes: &'a mut [f32],
    out: &'a mut [f32],
}

impl pulp::WithSimd for OutputTransform<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let (t, n) = (self.tiles, self.n);
        let (co, width) = (t.g.out_channels, n * t.per_image());
        for o in 0..co {
            let bias = self.bias.map_or(0.0, |b| b[o]);
            let m: [&[f32]; POSITIONS] =
                std::array::from_fn(|xi| &self.m[xi * stride(co, width) + o * width..][..width]);
            let [r0, r1, r2, r3] = split4(self.values, TILE * width);
            lanewise(simd, m, split4(r0, width), OutputRow::<0> { bias });
            lanewise(simd, m, split4(r1, width), OutputRow::<1> { bias });
            lanewise(simd, m, split4(r2, width), OutputRow::<2> { bias });
            lanewise(simd, m, split4(r3, width), OutputRow::<3> { bias });
            t.scatter_output(self.values, o, n, self.planes, self.out);
        }
    }
}

/// The first four runs of `len` values of `values`.
fn split4(values: &mut [f32], len: usize) -> [&mut [f32]; 4] {
    let (a, rest) = values.split_at_mut(len);
    let (b, rest) = rest.split_at_mut(len);
    let (c, rest) = rest.split_at_mut(len);
    [a, b, c, &mut rest[..len]]
}

/// The transformed output gradients `A dY Aᵀ` of a task's `n` images into
/// `dm`, a `[36, CO, n·tiles]` matrix.
struct GradientTransform<'a> {
    tiles: Tiles,
    dy: &'a [f32],
    n: usize,
    /// 16 runs: value `(p, q)` of each tile's gradient.
    gradient: &'a mut [f32],
    /// One channel of the output gradients, the image innermost.
    planes: &'a mut [f32],
    dm: &'a mut [f32],
}

impl pulp::WithSimd for GradientTransform<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let (t, n) = (self.tiles, self.n);
        let (co, width) = (t.g.out_channels, n * t.per_image());
        for o in 0..co {
            t.gather(self.dy, (co, o), n, (TILE, 0), self.planes, self.gradient);
            let g: [&[f32]; 16] = std::array::from_fn(|k| &self.gradient[k * width..][..width]);
            let columns = (
                GradientColumn::<0>,
                GradientColumn::<1>,
                GradientColumn::<2>,
                GradientColumn::<3>,
                GradientColumn::<4>,
                GradientColumn::<5>,
            );
            Positions::new(self.dm, |xi| xi * stride(co, width) + o * width, width)
                .fill(simd, g, columns);
        }
    }
}

/// `U[ξ] = G g Gᵀ` for every filter of a `[CO, C, 3, 3]` kernel, as a
/// `[36, CO, C]` matrix.
fn transform_weights(ws: &[f32], co: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0f32; POSITIONS * co * c];
    for (k, g) in ws.chunks_exact(9).enumerate() {
        for a in 0..WINDOW {
            for b in 0..WINDOW {
                let mut sum = 0.0;
                for i in 0..3 {
                    for j in 0..3 {
                        sum += G[a][i] * g[3 * i + j] * G[b][j];
                    }
                }
                u[(WINDOW * a + b) * co * c + k] = sum;
            }
        }
    }
    u
}

/// `dg = Gᵀ dU G` for every filter: the `[CO, C, 3, 3]` weight gradient
/// from the `[36, CO, C]` gradient of the transformed filters.
fn untransform_weight_gradient(du: &[f32], co: usize, c: usize) -> Vec<f32> {
    let mut dw = vec![0f32; co * c * 9];
    for (k, dg) in dw.chunks_exact_mut(9).enumerate() {
        for i in 0..3 {
            for j in 0..3 {
                let mut sum = 0.0;
                for a in 0..WINDOW {
                    for b in 0..WINDOW {
                        sum += G[a][i] * du[(WINDOW * a + b) * co * c + k] * G[b][j];
                    }
                }
                dg[3 * i + j] = sum;
            }
        }
    }
    dw
}

/// The convolution's output, `[N, CO, H, W]`.
pub(super) fn forward(xs: &[f32], ws: &[f32], bias: Option<&[f32]>, g: &Geometry) -> Vec<f32> {
    let t = Tiles::new(g);
    let (c, co, tiles) = (t.g.channels, t.g.out_channels, t.per_image());
    let u = transform_weights(ws, co, c);
    let group = t.images_per_task();
    let arch = pulp::Arch::new();
    let mut out = crate::zeros(t.g.batch * co * t.plane());
    out.par_chunks_mut(group * co * t.plane())
        .zip(xs.par_chunks(group * c * t.plane()))
        .with_min_len(t.tasks_per_core(group))
        .for_each_init(
            || {
                (
                    vec![0f32; t.planes_len(group)],
                    vec![0f32; t.windows_len(group)],
                    vec![0f32; POSITIONS * stride(c, group * tiles)],
                    vec![0f32; POSITIONS * stride(co, group * tiles)],
                    vec![0f32; TILE * TILE * group * tiles],
                )
            },
            |(planes, windows, v, m, values), (out, images)| {
                let n = images.len() / (c * t.plane());
                let width = n * tiles;
                arch.dispatch(InputTransform {
                    tiles: t,
                    images,
                    n,
                    planes: &mut planes[..t.planes_len(n)],
                    windows: &mut windows[..t.windows_len(n)],
                    v,
                });
                for xi in 0..POSITIONS {
                    matmul(
                        row_major_mut(&mut m[xi * stride(co, width)..][..co * width], co, width),
                        Accum::Replace,
                        row_major(&u[xi * co * c..][..co * c], co, c),
                        row_major(&v[xi * stride(c, width)..][..c * width], c, width),
                        1.0,
                        Par::Seq,
                    );
                }
                arch.dispatch(OutputTransform {
                    tiles: t,
                    m,
                    n,
                    bias,
                    values: &mut values[..TILE * TILE * width],
                    planes: &mut planes[..t.planes_len(n)],
                    out,
                });
            },
        );
    out
}

/// The weight gradient (`[CO, C, 3, 3]`) and the bias gradient (`[CO]`),
/// given the input `xs` and the output gradient `dy`.
pub(super) fn weight_gradient(xs: &[f32], dy: &[f32], g: &Geometry) -> (Vec<f32>, Vec<f32>) {
    let t = Tiles::new(g);
    let (c, co, tiles) = (t.g.channels, t.g.out_channels, t.per_image());
    let group = t.images_per_task();
    let arch = pulp::Arch::new();
    let zero = || (vec![0f32; POSITIONS * co * c], vec![0f32; co]);
    let (du, bias) = xs
        .par_chunks(group * c * t.plane())
        .zip(dy.par_chunks(group * co * t.plane()))
        .with_min_len(t.tasks_per_core(group))
        .fold(
            || {
                (
                    zero(),
                    vec![0f32; t.planes_len(group)],
                    vec![0f32; t.windows_len(group)],
                    vec![0f32; TILE * TILE * group * tiles],
                    vec![0f32; POSITIONS * stride(c, group * tiles)],
                    vec![0f32; POSITIONS * stride(co, group * tiles)],
                )
            },
            |((mut du, mut bias), mut planes, mut windows, mut gradient, mut v, mut dm),
             (images, dy)| {
                let n = images.len() / (c * t.plane());
                let width = n * tiles;
                add_bias_gradients(&mut bias, dy, t.plane());
                arch.dispatch(InputTransform {
                    tiles: t,
                    images,
                    n,
                    planes: &mut planes[..t.planes_len(n)],
                    windows: &mut windows[..t.windows_len(n)],
                    v: &mut v,
                });
                arch.dispatch(GradientTransform {
                    tiles: t,
                    dy,
                    n,
                    gradient: &mut gradient[..TILE * TILE * width],
                    planes: &mut planes[..t.planes_len(n)],
                    dm: &mut dm,
                });
                for xi in 0..POSITIONS {
                    matmul(
                        row_major_mut(&mut du[xi * co * c..][..co * c], co, c),
                        Accum::Add,
                        row_major(&dm[xi * stride(co, width)..][..co * width], co, width),
                        row_major(&v[xi * stride(c, width)..][..c * width], c, width).transpose(),
                        1.0,
                        Par::Seq,
                    );
                }
                ((du, bias), planes, windows, gradient, v, dm)
            },
        )
        .map(|(sums, ..)| sums)
        .reduce(zero, add_gradients);
    (untransform_weight_gradient(&du, co, c), bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::ops::ConvOptions;

    /// `Bᵀ` and `Aᵀ` of F(4x4, 3x3) as Lavin and Gray give them, against
    /// which the written-out transforms are checked.
    const BT: [[f32; WINDOW]; WINDOW] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    const AT: [[f32; WINDOW]; TILE] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];

    fn close(a: f32, b: f32, what: &str) {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "{what}: {a} vs {b}"
        );
    }

    /// The 3x3 "same" convolution of one channel by one filter, summed
    /// directly from its definition.
    fn direct(image: &[f32], h: usize, w: usize, filter: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; h * w];
        for y in 0..h {
            for x in 0..w {
                for i in 0..3 {
                    for j in 0..3 {
                        let (yy, xx) = ((y + i).checked_sub(1), (x + j).checked_sub(1));
                        if let (Some(yy), Some(xx)) = (yy, xx)
                            && yy < h
                            && xx < w
                        {
                            out[y * w + x] += filter[i * 3 + j] * image[yy * w + xx];
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_written_out_transforms_multiply_by_lavin_and_grays_matrices() {
        let simd = pulp::Scalar;
        let d: [f32; WINDOW] = std::array::from_fn(|k| (k as f32 * 1.7 + 0.3).sin());
        let transformed = bt(simd, d);
        for (row, value) in BT.iter().zip(transformed) {
            let reference: f32 = row.iter().zip(&d).map(|(b, x)| b * x).sum();
            close(value, reference, "Bᵀ d");
        }
        let rows = [
            at_row::<_, 0>(simd, d),
            at_row::<_, 1>(simd, d),
            at_row::<_, 2>(simd, d),
            at_row::<_, 3>(simd, d),
        ];
        for (row, value) in AT.iter().zip(rows) {
            let reference: f32 = row.iter().zip(&d).map(|(a, x)| a * x).sum();
            close(value, reference, "Aᵀ m");
        }
        let g = [d[0], d[1], d[2], d[3]];
        let columns = [
            a_row::<_, 0>(simd, g),
            a_row::<_, 1>(simd, g),
            a_row::<_, 2>(simd, g),
            a_row::<_, 3>(simd, g),
            a_row::<_, 4>(simd, g),
            a_row::<_, 5>(simd, g),
        ];
        for (k, value) in columns.into_iter().enumerate() {
            let reference: f32 = (0..TILE).map(|p| AT[p][k] * g[p]).sum();
            close(value, reference, "A g");
        }
    }

    #[test]
    fn transformed_products_give_the_direct_convolution_on_even_and_odd_maps() {
        // Maps a whole number of tiles, maps whose last tiles hang over the
        // right or bottom edge, and maps smaller than one tile.
        for (h, w) in [(8, 8), (5, 3), (1, 1), (2, 7), (6, 9), (7, 7)] {
            let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
            let g = Geometry::new(&[1, 1, h, w], &[1, 1, 3, 3], &options);
            let image: Vec<f32> = (0..h * w).map(|v| (v as f32 * 0.7).sin()).collect();
            let filter = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75, 1.0, 0.0, -2.0];
            let ours = forward(&image, &filter, Some(&[0.125]), &g);
            let reference = direct(&image, h, w, &filter);
            for (a, b) in ours.iter().zip(&reference) {
                close(*a, b + 0.125, &format!("{h}x{w}"));
            }
        }
    }

    #[test]
    fn the_weight_gradient_transform_is_the_adjoint_of_the_filter_transform() {
        // <G g Gᵀ, d> = <g, Gᵀ d G> for any filter g and any 6x6 d.
        let g: Vec<f32> = (0..9).map(|v| (v as f32 * 1.3).cos()).collect();
        let d: Vec<f32> = (0..POSITIONS).map(|v| (v as f32 * 0.9).sin()).collect();
        let u = transform_weights(&g, 1, 1);
        let back = untransform_weight_gradient(&d, 1, 1);
        let left: f32 = u.iter().zip(&d).map(|(a, b)| a * b).sum();
        let right: f32 = g.iter().zip(&back).map(|(a, b)| a * b).sum();
        close(left, right, "adjoint");
    }

    #[test]
    fn only_maps_5_to_15_wide_run_here() {
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let runs = |h: usize, w: usize, kernel: usize| {
            applies(&Geometry::new(
                &[2, 8, h, w],
                &[4, 8, kernel, kernel],
                &options,
            ))
        };
        assert!(runs(7, 7, 3) && runs(5, 15, 3) && runs(15, 5, 3));
        assert!(!runs(4, 8, 3) && !runs(8, 4, 3) && !runs(16, 16, 3) && !runs(3, 3, 3));
        // Another kernel, or a convolution whose output is smaller.
        assert!(!runs(8, 8, 5) && !runs(8, 8, 1));
        let valid = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        assert!(!applies(&Geometry::new(
            &[2, 8, 8, 8],
            &[4, 8, 3, 3],
            &valid
        )));
    }
}
