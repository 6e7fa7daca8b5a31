//! The forward product of a 3x3 "same" convolution on AMX tiles, read
//! straight from one bf16 copy of each padded image.
//!
//! Through [`matmul`](super::matmul), each of the nine kernel offsets
//! would pack its own shifted view of the image: nine packings of the
//! image per convolution, about as long as the products themselves on the
//! tiles. Here the image is padded once into pairs of channels (the layout
//! of a B tile: one 32-bit word holds channels `2p` and `2p + 1` of one
//! position), so that the B tile of offset `(i, j)` is a load from `i·(W +
//! 1) + j` words further on, with the pair planes as its rows. The padding
//! is that of the f32 path ([`Shifts`](crate::conv)): rows of `W + 1`
//! values, one zero then the row, so that the output comes out on rows of
//! `W + 1` whose last value is dropped.

use super::{BLOCK, Engine, Line, TILE, bf16_bits, lines, pair, pair_product, words, write_block};
#[cfg(target_arch = "x86_64")]
use super::{load_sums, multiply_tiles, store_sums, zero_sums};
use faer::Accum;
use rayon::prelude::*;

/// The sizes of a 3x3 same convolution and of its packed operands.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
    /// Values per padded row, `W + 1`.
    row: usize,
    /// Output positions on padded rows, `H·(W + 1)`.
    wide: usize,
    /// Channels padded to whole tiles (32).
    kpad: usize,
    /// Output channels padded to whole blocks (32).
    mpad: usize,
    /// Words per padded pair plane: every position a block of any offset
    /// reads.
    plane: usize,
}

impl Sizes {
    fn new([channels, out_channels, height, width]: [usize; 4]) -> Self {
        let row = width + 1;
        let wide = height * row;
        Self {
            channels,
            out_channels,
            height,
            width,
            row,
            wide,
            kpad: channels.next_multiple_of(BLOCK),
            mpad: out_channels.next_multiple_of(BLOCK),
            plane: wide.next_multiple_of(BLOCK) + 2 * row + 2,
        }
    }

    /// Where kernel offset `t = 3i + j` reads from, relative to the output
    /// position.
    fn offset(&self, t: usize) -> usize {
        t / 3 * self.row + t % 3
    }

    /// The weights of `[CO, C, 3, 3]`, as nine bf16 matrices `[mpad, kpad]`
    /// (one per kernel offset), zero-padded.
    fn pack_weights(&self, weights: &[f32]) -> Vec<u16> {
        let (c, co, kpad, mpad) = (self.channels, self.out_channels, self.kpad, self.mpad);
        let mut packed = vec![0u16; 9 * mpad * kpad];
        for (k, &w) in weights.iter().enumerate() {
            let (o, ci, t) = (k / (9 * c), k / 9 % c, k % 9);
            packed[(t * mpad + o) * kpad + ci] = bf16_bits(w) as u16;
        }
        debug_assert_eq!(weights.len(), co * c * 9);
        packed
    }

    /// Pads `image` (`[C, H, W]`) into `pairs`: `kpad / 2` planes of
    /// [`plane`](Self::plane) words, channels `2p` and `2p + 1` of padded
    /// position `(y + 1)·(W + 1) + 1 + x` in word `p·plane + position`.
    fn pack_image(&self, image: &[f32], pairs: &mut [u32]) {
        let (h, w, row) = (self.height, self.width, self.row);
        pairs.fill(0);
        let channel = |ci: usize| (ci < self.channels).then(|| &image[ci * h * w..][..h * w]);
        for (p, plane) in pairs.chunks_exact_mut(self.plane).enumerate() {
            let Some(lo) = channel(2 * p) else { break };
            let hi = channel(2 * p + 1);
            for y in 0..h {
                let out = &mut plane[(y + 1) * row + 1..][..w];
                let lo = &lo[y * w..][..w];
                match hi {
                    Some(hi) => {
                        for ((o, &l), &h) in out.iter_mut().zip(lo).zip(&hi[y * w..][..w]) {
                            *o = pair(l, h);
                        }
                    }
                    None => out.iter_mut().zip(lo).for_each(|(o, &l)| *o = pair(l, 0.0)),
                }
            }
        }
    }

    /// The 32x32 block of sums at output channels `m0..`, wide positions
    /// `n0..`, over the nine offsets, on AMX tiles.
    ///
    /// # Safety
    ///
    /// Tiles configured on this thread ([`super::configure_tiles`]);
    /// `weights` and `pairs` as [`pack_weights`](Self::pack_weights) and
    /// [`pack_image`](Self::pack_image) make them.
    #[cfg(target_arch = "x86_64")]
    unsafe fn amx_block(
        &self,
        weights: &[u16],
        pairs: &[u32],
        (m0, n0): (usize, usize),
        out: &mut [[f32; BLOCK]; BLOCK],
    ) {
        let (kpad, mpad, plane) = (self.kpad, self.mpad, self.plane);
        assert!(weights.len() >= 9 * mpad * kpad && pairs.len() >= kpad / 2 * plane);
        // SAFETY: the A tiles read rows `m0..m0 + 32 ≤ mpad` of an offset's
        // `[mpad, kpad]` weights; the B tiles rows `kb·16..+16 ≤ kpad / 2`
        // of the pair planes at words `offset + n0..+32 ≤ plane` (`n0 <
        // wide`, so `n0 + 32 ≤ wide` rounded up to 32, and `offset ≤ 2·row
        // + 2`); the stores fill `out`.
        unsafe {
            zero_sums();
            for t in 0..9 {
                let a = weights.as_ptr().add((t * mpad + m0) * kpad);
                let b = pairs.as_ptr().add(self.offset(t) + n0);
                for kb in 0..kpad / BLOCK {
                    multiply_tiles(
                        a.add(kb * BLOCK),
                        kpad * 2,
                        b.add(kb * TILE * plane),
                        plane * 4,
                    );
                }
            }
            store_sums(out.as_mut_ptr().cast(), BLOCK * 4);
        }
    }

    /// [`amx_block`](Self::amx_block) in plain Rust.
    fn emulated_block(
        &self,
        weights: &[u16],
        pairs: &[u32],
        (m0, n0): (usize, usize),
        out: &mut [[f32; BLOCK]; BLOCK],
    ) {
        for (i, out_row) in out.iter_mut().enumerate() {
            for (j, o) in out_row.iter_mut().enumerate() {
                let mut sum = 0f32;
                for t in 0..9 {
                    let a = &weights[(t * self.mpad + m0 + i) * self.kpad..][..self.kpad];
                    for (p, a) in a.chunks_exact(2).enumerate() {
                        sum += pair_product(a, pairs[p * self.plane + self.offset(t) + n0 + j]);
                    }
                }
                *o = sum;
            }
        }
    }
}

/// The 3x3 "same" convolution (stride 1, padding 1) of `xs` (`[N, C, H,
/// W]`) by `ws` (`[CO, C, 3, 3]`) plus `bias`, with bf16 products on
/// `engine`: `[N, CO, H, W]`.
pub(crate) fn shifted_forward(
    engine: Engine,
    xs: &[f32],
    ws: &[f32],
    bias: Option<&[f32]>,
    [batch, channels, out_channels, height, width]: [usize; 5],
) -> Vec<f32> {
    let s = Sizes::new([channels, out_channels, height, width]);
    let (c, co, h, w) = (channels, out_channels, height, width);
    assert_eq!(xs.len(), batch * c * h * w, "images of [{c}, {h}, {w}]");
    let weights = s.pack_weights(ws);
    let pair_words = s.kpad / 2 * s.plane;
    let mut out = crate::zeros(batch * co * h * w);
    out.par_chunks_mut(co * h * w)
        .zip(xs.par_chunks(c * h * w))
        .for_each_init(
            || (Vec::<Line>::new(), vec![0f32; co * s.wide]),
            |(buffer, wide_out), (out, image)| {
                let pairs = &mut words(lines(buffer, pair_words.div_ceil(16)))[..pair_words];
                s.pack_image(image, pairs);
                super::on_tiles(engine, || {
                    let mut block = [[0f32; BLOCK]; BLOCK];
                    for n0 in (0..s.wide).step_by(BLOCK) {
                        for m0 in (0..co).step_by(BLOCK) {
                            match engine {
                                #[cfg(target_arch = "x86_64")]
                                // SAFETY: `on_tiles` configured the tiles;
                                // the operands are packed by `s`.
                                Engine::Amx => unsafe {
                                    s.amx_block(&weights, pairs, (m0, n0), &mut block)
                                },
                                _ => s.emulated_block(&weights, pairs, (m0, n0), &mut block),
                            }
                            write_block(
                                &block,
                                wide_out.as_mut_ptr(),
                                (m0, n0),
                                (co, s.wide),
                                (s.wide as isize, 1),
                                Accum::Replace,
                            );
                        }
                    }
                });
                for (o, (plane, wide_plane)) in out
                    .chunks_exact_mut(h * w)
                    .zip(wide_out.chunks_exact(s.wide))
                    .enumerate()
                {
                    let b = bias.map_or(0.0, |b| b[o]);
                    for (row, wide_row) in plane
                        .chunks_exact_mut(w)
                        .zip(wide_plane.chunks_exact(s.row))
                    {
                        row.iter_mut().zip(wide_row).for_each(|(r, &v)| *r = v + b);
                    }
                }
            },
        );
    out
}

/// What one task of [`shifted_weight_gradient`] sums over its images.
struct Sums {
    /// Per kernel offset `t`, `dWᵀ_t` as `[kpad, npad]` f32 (channels by
    /// output channels).
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// The padded image as bf16 rows of [`Sizes::plane`] values per
    /// channel, `kpad` channels.
    image: Vec<Line>,
    /// The output gradient as pairs of positions: `wide / 2` (rounded up
    /// to whole tiles) rows of `npad` words.
    grad: Vec<Line>,
    /// One output channel's gradient on rows of `W + 1`, [`Sizes::depth`]
    /// values.
    row: Vec<f32>,
}

impl Sizes {
    /// Output channels padded to whole blocks, the columns of `dWᵀ`.
    fn npad(&self) -> usize {
        self.mpad
    }

    /// Positions summed over: `wide` rounded up to whole tiles.
    fn depth(&self) -> usize {
        self.wide.next_multiple_of(BLOCK)
    }

    /// Pads `image` into bf16 rows: channel `c`'s padded position
    /// `(y + 1)·(W + 1) + 1 + x` at `c·plane + position`.
    fn pack_image_rows(&self, image: &[f32], rows: &mut [u16]) {
        let (h, w, row) = (self.height, self.width, self.row);
        rows.fill(0);
        for (plane, channel) in rows
            .chunks_exact_mut(self.plane)
            .zip(image.chunks_exact(h * w))
        {
            for (y, values) in channel.chunks_exact(w).enumerate() {
                let out = &mut plane[(y + 1) * row + 1..][..w];
                out.iter_mut()
                    .zip(values)
                    .for_each(|(o, &v)| *o = bf16_bits(v) as u16);
            }
        }
    }

    /// `dy` (`[CO, H, W]`) on rows of `W + 1` (the last value of each zero)
    /// as pairs of positions: word `p·npad + o` holds positions `2p` and
    /// `2p + 1` of output channel `o`; every channel's sum into `bias`.
    /// `row_buffer` holds [`depth`](Self::depth) values, zero where no
    /// gradient value goes (the last of each row, and past `wide`): only
    /// the others are written, so it is zeroed once per task.
    fn pack_grad(&self, dy: &[f32], pairs: &mut [u32], bias: &mut [f32], row_buffer: &mut [f32]) {
        let (h, w, row, npad) = (self.height, self.width, self.row, self.npad());
        pairs.fill(0);
        for (o, (plane, b)) in dy.chunks_exact(h * w).zip(bias.iter_mut()).enumerate() {
            *b += crate::lane_sum(plane);
            for (y, values) in plane.chunks_exact(w).enumerate() {
                row_buffer[y * row..][..w].copy_from_slice(values);
            }
            let (whole, _) = row_buffer.as_chunks::<2>();
            for (p, &[lo, hi]) in whole.iter().enumerate() {
                pairs[p * npad + o] = pair(lo, hi);
            }
        }
    }

    /// Adds this image's `dWᵀ_t` block at channels `m0..`, output channels
    /// `n0..` to `sums` (`[kpad, npad]`), on AMX tiles.
    ///
    /// # Safety
    ///
    /// Tiles configured on this thread; `image` and `grad` as
    /// [`pack_image_rows`](Self::pack_image_rows) and
    /// [`pack_grad`](Self::pack_grad) make them.
    #[cfg(target_arch = "x86_64")]
    unsafe fn amx_gradient_block(
        &self,
        t: usize,
        image: &[u16],
        grad: &[u32],
        (m0, n0): (usize, usize),
        sums: &mut [f32],
    ) {
        let (plane, npad, depth) = (self.plane, self.npad(), self.depth());
        assert!(image.len() >= self.kpad * plane && grad.len() >= depth / 2 * npad);
        assert!(sums.len() >= self.kpad * npad && m0 + BLOCK <= self.kpad && n0 + BLOCK <= npad);
        // SAFETY: the sums' tiles are rows `m0..m0 + 32 ≤ kpad` at columns
        // `n0..n0 + 32 ≤ npad` of `sums`; the A tiles rows `m0..+32` of the
        // image at positions `offset + k0..+32 ≤ depth + 2·row + 2 = plane`;
        // the B tiles pair rows `k0 / 2..+16 ≤ depth / 2` at columns
        // `n0..+32` (all checked above).
        unsafe {
            let c = sums.as_mut_ptr().add(m0 * npad + n0);
            load_sums(c, npad * 4);
            let a = image.as_ptr().add(m0 * plane + self.offset(t));
            let b = grad.as_ptr().add(n0);
            for k0 in (0..depth).step_by(BLOCK) {
                multiply_tiles(a.add(k0), plane * 2, b.add(k0 / 2 * npad), npad * 4);
            }
            store_sums(c, npad * 4);
        }
    }

    /// [`amx_gradient_block`](Self::amx_gradient_block) in plain Rust.
    fn emulated_gradient_block(
        &self,
        t: usize,
        image: &[u16],
        grad: &[u32],
        (m0, n0): (usize, usize),
        sums: &mut [f32],
    ) {
        let npad = self.npad();
        for i in m0..m0 + BLOCK {
            let a = &image[i * self.plane + self.offset(t)..][..self.depth()];
            for j in n0..n0 + BLOCK {
                let sum = a.chunks_exact(2).enumerate();
                let sum: f32 = sum.map(|(p, a)| pair_product(a, grad[p * npad + j])).sum();
                sums[i * npad + j] += sum;
            }
        }
    }
}

/// The weight (`[CO, C, 3, 3]`) and bias gradients of [`shifted_forward`]
/// given the output gradient `dy`: `dW[o, c, i, j] = Σ dY[o, q] · X[c, q +
/// offset(i, j)]` over the images and positions, with bf16 products.
pub(crate) fn shifted_weight_gradient(
    engine: Engine,
    xs: &[f32],
    dy: &[f32],
    [batch, channels, out_channels, height, width]: [usize; 5],
) -> (Vec<f32>, Vec<f32>) {
    let s = Sizes::new([channels, out_channels, height, width]);
    let (c, co, h, w) = (channels, out_channels, height, width);
    assert_eq!(xs.len(), batch * c * h * w, "images of [{c}, {h}, {w}]");
    assert_eq!(
        dy.len(),
        batch * co * h * w,
        "gradients of [{co}, {h}, {w}]"
    );
    let (kpad, npad) = (s.kpad, s.npad());
    let sums_len = 9 * kpad * npad;
    let (image_len, grad_len) = (kpad * s.plane, s.depth() / 2 * npad);
    let init = || Sums {
        weight: vec![0f32; sums_len],
        bias: vec![0f32; co],
        image: vec![Line::default(); image_len.div_ceil(32)],
        grad: vec![Line::default(); grad_len.div_ceil(16)],
        row: vec![0f32; s.depth()],
    };
    let total = dy
        .par_chunks(co * h * w)
        .zip(xs.par_chunks(c * h * w))
        .fold(init, |mut sums, (image_dy, image)| {
            let image_rows = &mut super::halves(&mut sums.image)[..image_len];
            s.pack_image_rows(image, image_rows);
            let grad = &mut words(&mut sums.grad)[..grad_len];
            s.pack_grad(image_dy, grad, &mut sums.bias, &mut sums.row);
            let (image_rows, grad) = (&*image_rows, &*grad);
            super::on_tiles(engine, || {
                for (t, sums) in sums.weight.chunks_exact_mut(kpad * npad).enumerate() {
                    for m0 in (0..kpad).step_by(BLOCK) {
                        for n0 in (0..npad).step_by(BLOCK) {
                            match engine {
                                #[cfg(target_arch = "x86_64")]
                                // SAFETY: `on_tiles` configured the tiles;
                                // the operands are packed by `s`.
                                Engine::Amx => unsafe {
                                    s.amx_gradient_block(t, image_rows, grad, (m0, n0), sums)
                                },
                                _ => s.emulated_gradient_block(t, image_rows, grad, (m0, n0), sums),
                            }
                        }
                    }
                }
            });
            sums
        })
        .map(|sums| (sums.weight, sums.bias))
        .reduce(
            || (vec![0f32; sums_len], vec![0f32; co]),
            crate::add_gradients,
        );
    let (sums, bias) = total;
    let mut dw = vec![0f32; co * c * 9];
    for (k, weight) in dw.iter_mut().enumerate() {
        let (o, ci, t) = (k / (9 * c), k / 9 % c, k % 9);
        *weight = sums[(t * kpad + ci) * npad + o];
    }
    (dw, bias)
}
