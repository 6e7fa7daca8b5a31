//! 2-D convolution as one matrix product per image (or per few images, for
//! small maps), forward and backward; 3x3 "same" convolutions over maps 16
//! or more wide as nine shifted products instead (see [`shifted_forward`]),
//! and over maps 5 to 15 wide by Winograd's F(4x4, 3x3) transforms (see
//! [`winograd`]).
//!
//! Each image's patches are unfolded once per pass into a `[C·kh·kw, OH·OW]`
//! matrix (im2col; images with small maps side by side in one matrix); the
//! output is `W · cols`, the weight gradient `Σ dY · colsᵀ`. The input
//! gradient of a "same" convolution (stride 1, output as large as the input)
//! is itself such a convolution, of `dY` by the turned weights; for other
//! geometries it is `Wᵀ · dY` folded back (col2im). The products run in faer, which
//! picks AVX-512 kernels at run time; images spread over the cores, each
//! product on one. burn-flex has no backward of
//! its own: its weight gradient runs as a convolution over swapped tensors
//! with a handful of parallel tasks and its input gradient as a transposed
//! convolution with a scalar col2im, which made them the slowest part of a
//! CNN's training step.

use crate::bf16::{self, Engine};
use crate::{AffineBackward, NoBias, WithBias, add_gradients, lane_sum};
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::ConvOptions;
use burn_autodiff::ops::{Backward, OpsKind};
use burn_flex::FlexTensor;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

mod winograd;

/// 2-D convolution (no dilation, one group) as a backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait ConvKernels: Backend {
    /// `x: [N, C, H, W]`, `weight: [CO, C, KH, KW]`, `bias: [CO]` ->
    /// `[N, CO, OH, OW]`.
    fn conv2d_unfolded(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// As [`conv2d_unfolded`](Self::conv2d_unfolded), without bias.
    fn conv2d_unfolded_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// The gradients of the input (when `input_grad`), the weight and the
    /// bias, given the output's gradient `grad`.
    fn conv2d_unfolded_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        input_grad: bool,
    ) -> (
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}

/// 2-D convolution of `x` by `weight` plus `bias`, as Burn's
/// [`conv2d`](burn::tensor::module::conv2d): the unfolded kernel on flex
/// (with its backward on an autodiff device) when `options` has no dilation
/// and one group, Burn's operation everywhere else.
///
/// # Shapes
///
/// - `x`: `[N, C, H, W]`; `weight`: `[CO, C, KH, KW]`; `bias`: `[CO]`
/// - output: `[N, CO, OH, OW]` with `OH = (H + pad_top + pad_bottom - KH) / stride_h + 1`
///   (and `OW` alike)
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let [_, channels, h, w] = x.dims();
    let [_, weight_channels, kh, kw] = weight.dims();
    let plain = options.dilation == [1, 1] && options.groups == 1;
    let fits = channels == weight_channels
        && h + options.padding[0].0 + options.padding[0].1 >= kh
        && w + options.padding[1].0 + options.padding[1].1 >= kw;
    if crate::on_flex(&x.device()) && plain && fits && x.dtype() == DType::F32 {
        let (x, weight) = (x.into_dispatch(), weight.into_dispatch());
        Tensor::from_dispatch(match bias {
            Some(bias) => {
                <Dispatch as ConvKernels>::conv2d_unfolded(x, weight, bias.into_dispatch(), options)
            }
            None => <Dispatch as ConvKernels>::conv2d_unfolded_no_bias(x, weight, options),
        })
    } else {
        burn::tensor::module::conv2d(x, weight, bias, options)
    }
}

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    out_channels: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    /// Padding before the first row and column.
    pad: [usize; 2],
    out_height: usize,
    out_width: usize,
}

impl Geometry {
    fn new(x: &[usize], weight: &[usize], options: &ConvOptions<2>) -> Self {
        let (kernel, stride) = ([weight[2], weight[3]], options.stride);
        let [(top, bottom), (left, right)] = options.padding;
        Self {
            batch: x[0],
            channels: x[1],
            height: x[2],
            width: x[3],
            out_channels: weight[0],
            kernel,
            stride,
            pad: [top, left],
            out_height: (x[2] + top + bottom - kernel[0]) / stride[0] + 1,
            out_width: (x[3] + left + right - kernel[1]) / stride[1] + 1,
        }
    }

    /// Values per input image.
    fn image(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Rows of the unfolded matrix: values per patch.
    fn patch(&self) -> usize {
        self.channels * self.kernel[0] * self.kernel[1]
    }

    /// Columns of the unfolded matrix: output positions per channel.
    fn positions(&self) -> usize {
        self.out_height * self.out_width
    }

    /// A 1x1 convolution with stride 1 and no padding: the image is its own
    /// unfolded matrix.
    fn pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.pad == [0, 0]
    }

    /// For kernel column `j`, the output columns whose input column lies
    /// inside the image (stride 1): `lo..hi`, reading from column `lo + j - pad`.
    fn inside(&self, j: usize) -> (usize, usize) {
        let lo = self.pad[1].saturating_sub(j).min(self.out_width);
        let hi = (self.width + self.pad[1])
            .saturating_sub(j)
            .min(self.out_width)
            .max(lo);
        (lo, hi)
    }

    /// Visits every (row of the unfolded matrix, output row) pair whose input
    /// row lies inside the image: `f(unfolded row segment start, input row
    /// start, kernel column)`; rows outside are padding. Rows of the unfolded
    /// matrix are `stride` values apart.
    fn for_each_row(&self, stride: usize, mut f: impl FnMut(usize, Option<usize>, usize)) {
        let [kh, kw] = self.kernel;
        for c in 0..self.channels {
            for i in 0..kh {
                for j in 0..kw {
                    let row = ((c * kh + i) * kw + j) * stride;
                    for oy in 0..self.out_height {
                        let y = (oy * self.stride[0] + i).checked_sub(self.pad[0]);
                        let source = y
                            .filter(|&y| y < self.height)
                            .map(|y| (c * self.height + y) * self.width);
                        f(row + oy * self.out_width, source, j);
                    }
                }
            }
        }
    }

    /// Unfolds one image `[C, H, W]` into the first `OH·OW` columns of
    /// `cols`, a `[C·KH·KW, stride]` row-major matrix.
    fn unfold(&self, image: &[f32], cols: &mut [f32], stride: usize) {
        if self.same_size() {
            self.unfold_planes(image, cols, stride);
        } else {
            self.unfold_rows(image, cols, stride);
        }
    }

    /// [`unfold`](Self::unfold) one output row at a time: any geometry.
    fn unfold_rows(&self, image: &[f32], cols: &mut [f32], stride: usize) {
        let (ow, sw, pad) = (self.out_width, self.stride[1], self.pad[1]);
        self.for_each_row(stride, |at, source, j| {
            let out = &mut cols[at..at + ow];
            let Some(source) = source else {
                out.fill(0.0);
                return;
            };
            let row = &image[source..source + self.width];
            if sw == 1 {
                let (lo, hi) = self.inside(j);
                out[..lo].fill(0.0);
                out[hi..].fill(0.0);
                out[lo..hi].copy_from_slice(&row[lo + j - pad..hi + j - pad]);
            } else {
                for (ox, o) in out.iter_mut().enumerate() {
                    *o = (ox * sw + j)
                        .checked_sub(pad)
                        .and_then(|x| row.get(x))
                        .copied()
                        .unwrap_or(0.0);
                }
            }
        });
    }

    /// Adds the unfolded gradient in the first `OH·OW` columns of `cols`
    /// (`[C·KH·KW, stride]`) back onto the image gradient `image` (the
    /// adjoint of [`unfold`](Self::unfold)). Same-size convolutions take
    /// their input gradient as a convolution instead
    /// ([`same_size_input_gradient`]), so this runs only for the others.
    fn fold(&self, cols: &[f32], image: &mut [f32], stride: usize) {
        let (ow, sw, pad) = (self.out_width, self.stride[1], self.pad[1]);
        self.for_each_row(stride, |at, source, j| {
            let Some(source) = source else { return };
            let cols = &cols[at..at + ow];
            let row = &mut image[source..source + self.width];
            if sw == 1 {
                let (lo, hi) = self.inside(j);
                for (r, &g) in row[lo + j - pad..hi + j - pad]
                    .iter_mut()
                    .zip(&cols[lo..hi])
                {
                    *r += g;
                }
            } else {
                for (ox, &g) in cols.iter().enumerate() {
                    if let Some(r) = (ox * sw + j).checked_sub(pad).and_then(|x| row.get_mut(x)) {
                        *r += g;
                    }
                }
            }
        });
    }

    /// Stride 1 and an output as large as the input ("same" padding). Then
    /// kernel offset `(i, j)` moves a whole channel plane by one offset,
    /// `(i - pad_top)·W + j - pad_left` values, so a plane of the unfolded
    /// matrix is the image plane shifted, except in the columns that the
    /// shift wraps across a row edge. [`unfold_planes`](Self::unfold_planes)
    /// copies the plane in one pass and zeroes those columns, where the
    /// row-by-row loop works on rows of 8-32 values, too short to run in
    /// vector registers.
    fn same_size(&self) -> bool {
        self.stride == [1, 1] && self.out_height == self.height && self.out_width == self.width
    }

    /// Visits every plane of the unfolded matrix in the same-size case:
    /// `f(plane start in the unfolded matrix, channel, shift, kernel column)`,
    /// where unfolded value `q` of the plane is image value `q + shift` of
    /// the channel's plane when that position lies inside the image.
    fn for_each_plane(&self, stride: usize, mut f: impl FnMut(usize, usize, isize, usize)) {
        let [kh, kw] = self.kernel;
        let (top, left) = (self.pad[0] as isize, self.pad[1] as isize);
        for c in 0..self.channels {
            for i in 0..kh {
                for j in 0..kw {
                    let shift = (i as isize - top) * self.width as isize + j as isize - left;
                    f(((c * kh + i) * kw + j) * stride, c, shift, j);
                }
            }
        }
    }

    /// The values `lo..hi` of a plane of `len` values whose shifted index
    /// `q + shift` lies inside the plane, and where that range starts in
    /// the shifted plane; `None` when no value's does.
    fn shifted_range(len: usize, shift: isize) -> Option<(usize, usize, usize)> {
        let len_i = len as isize;
        let lo = (-shift).clamp(0, len_i) as usize;
        let hi = (len_i - shift).clamp(0, len_i) as usize;
        (lo < hi).then(|| (lo, hi, (lo as isize + shift) as usize))
    }

    /// Zeroes, in one unfolded plane of kernel column `j` (same-size case),
    /// the columns whose input column lies outside the image. The rows
    /// outside are the values beyond [`shifted_range`](Self::shifted_range).
    fn zero_outside_columns(&self, plane: &mut [f32], j: usize) {
        let (lo, hi) = self.inside(j);
        if lo == 0 && hi == self.out_width {
            return;
        }
        // Column by column: a row's one or two padding values as a `fill`
        // became a `memset` call each, 5% of the default CNN's step.
        for column in (0..lo).chain(hi..self.out_width) {
            for v in plane[column..].iter_mut().step_by(self.out_width) {
                *v = 0.0;
            }
        }
    }

    /// [`unfold`](Self::unfold) one plane at a time (same-size case).
    fn unfold_planes(&self, image: &[f32], cols: &mut [f32], stride: usize) {
        let plane = self.height * self.width;
        self.for_each_plane(stride, |at, c, shift, j| {
            let out = &mut cols[at..at + plane];
            let source = &image[c * plane..][..plane];
            let Some((lo, hi, from)) = Self::shifted_range(plane, shift) else {
                out.fill(0.0);
                return;
            };
            out[..lo].fill(0.0);
            out[hi..].fill(0.0);
            out[lo..hi].copy_from_slice(&source[from..from + (hi - lo)]);
            self.zero_outside_columns(out, j);
        });
    }

    /// How the matrix products inside one image's work are parallelized:
    /// across images when there are enough of them, inside the product when not.
    fn product_parallelism(&self) -> Par {
        if self.batch >= rayon::current_num_threads() {
            Par::Seq
        } else {
            Par::rayon(0)
        }
    }

    /// Whether this convolution runs as nine shifted products
    /// ([`shifted_forward`]): 3x3, stride 1, padding 1 all round; in f32
    /// only with at least 16 channels in and columns 16 wide, where it beats
    /// the unfolded product. With bf16 products the image is packed once
    /// instead of unfolded nine times ([`bf16::shifted_forward`]), which
    /// pays at every size (BENCHMARKS.md, "bf16 products on AMX").
    fn shifted(&self, engine: Engine) -> bool {
        let same_3x3 = self.kernel == [3, 3] && self.pad == [1, 1] && self.same_size();
        same_3x3 && (engine != Engine::F32 || (self.channels >= 16 && self.width >= SHIFTED_WIDTH))
    }

    /// Whether the convolution runs by Winograd's transforms: in f32 (bf16
    /// keeps its own products), on the maps [`winograd::applies`] takes.
    fn winograd(&self, engine: Engine) -> bool {
        engine == Engine::F32 && winograd::applies(self)
    }

    /// Images per parallel task, so that each core gets a few tasks.
    fn images_per_task(&self) -> usize {
        (self.batch / (4 * rayon::current_num_threads())).max(1)
    }

    /// Images side by side in one matrix product: enough that a product has
    /// about [`PRODUCT_COLUMNS`] columns, while leaving each core at least
    /// two products. Late layers' small maps (the recipe network's 3x3) make
    /// thin, slow products one image at a time; grouping made its 3x3 layer
    /// about 1.7x faster and left 7x7 and larger maps as they were.
    fn images_per_product(&self) -> usize {
        self.images_for_columns(PRODUCT_COLUMNS, self.positions())
    }

    /// Images side by side in one product of at least `columns` columns,
    /// `per_image` from each image, while leaving each core at least two
    /// products.
    fn images_for_columns(&self, columns: usize, per_image: usize) -> usize {
        let wanted = columns.div_ceil(per_image);
        let most = self.batch / (2 * rayon::current_num_threads());
        wanted.min(most).max(1)
    }
}

/// Adds to `bias` the bias gradient of the output gradients `dy`
/// (`[n, CO, plane]`): each channel's sum.
fn add_bias_gradients(bias: &mut [f32], dy: &[f32], plane: usize) {
    for image_dy in dy.chunks_exact(bias.len() * plane) {
        for (b, values) in bias.iter_mut().zip(image_dy.chunks_exact(plane)) {
            *b += lane_sum(values);
        }
    }
}

/// The narrowest map on which a 3x3 "same" convolution runs as shifted
/// products in f32 ([`Geometry::shifted`]); narrower maps from 5 wide run
/// by Winograd's transforms ([`winograd`]).
const SHIFTED_WIDTH: usize = 16;

/// Columns a matrix product should have at least (see
/// [`Geometry::images_per_product`]).
const PRODUCT_COLUMNS: usize = 128;

/// `c = a·b` (or `c += a·b`) in faer at f32, or with bf16 inputs
/// ([`bf16::matmul`], one core: `par` applies to f32 only).
fn multiply(
    engine: Engine,
    c: MatMut<'_, f32>,
    accum: Accum,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    par: Par,
) {
    match engine {
        Engine::F32 => matmul(c, accum, a, b, alpha, par),
        engine => {
            assert_eq!(alpha, 1.0, "bf16 products scale by 1");
            bf16::matmul(engine, c, accum, a, b)
        }
    }
}

fn row_major(data: &[f32], rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(data, rows, cols)
}

fn row_major_mut(data: &mut [f32], rows: usize, cols: usize) -> MatMut<'_, f32> {
    MatMut::from_row_major_slice_mut(data, rows, cols)
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// The product's column block of image `i` of a group: `p` values of each
/// of `rows` rows, in a `[rows, width]` row-major matrix.
fn image_columns(
    product: &[f32],
    rows: usize,
    width: usize,
    i: usize,
    p: usize,
) -> impl Iterator<Item = &[f32]> {
    (0..rows).map(move |r| &product[r * width + i * p..][..p])
}

fn forward(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
    engine: Engine,
) -> FlexTensor {
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let g = Geometry::new(x.layout().shape(), weight.layout().shape(), options);
    let (xs, ws): (&[f32], &[f32]) = (x.storage(), weight.storage());
    let bias = bias.map(|b| b.to_contiguous().storage::<f32>().to_vec());
    let (co, k, p) = (g.out_channels, g.patch(), g.positions());
    if g.winograd(engine) {
        let out = winograd::forward(xs, ws, bias.as_deref(), &g);
        return tensor(out, &[g.batch, co, g.out_height, g.out_width]);
    }
    if g.shifted(engine) {
        let out = shifted_forward(xs, ws, bias.as_deref(), &g, engine);
        return tensor(out, &[g.batch, co, g.out_height, g.out_width]);
    }
    let w = row_major(ws, co, k);
    let par = g.product_parallelism();
    let group = g.images_per_product();
    // One image alone is written straight into the output; a group's
    // product `[CO, n·OH·OW]` is written out image by image.
    let (own_cols, own_product) = (group > 1 || !g.pointwise(), group > 1);
    let mut out = crate::zeros(g.batch * co * p);
    out.par_chunks_mut(group * co * p)
        .zip(xs.par_chunks(group * g.image()))
        .with_min_len(g.images_per_task().div_ceil(group))
        .for_each_init(
            || {
                let len = |own| if own { group * p } else { 0 };
                (
                    vec![0f32; k * len(own_cols)],
                    vec![0f32; co * len(own_product)],
                )
            },
            |(cols, product), (out, images)| {
                let width = images.len() / g.image() * p;
                let cols = if own_cols {
                    for (i, image) in images.chunks_exact(g.image()).enumerate() {
                        g.unfold(image, &mut cols[i * p..], width);
                    }
                    &cols[..k * width]
                } else {
                    images
                };
                let target = if own_product {
                    &mut product[..co * width]
                } else {
                    &mut out[..]
                };
                if let Some(bias) = &bias {
                    for (row, &b) in target.chunks_exact_mut(width).zip(bias) {
                        row.fill(b);
                    }
                }
                let accum = if bias.is_some() {
                    Accum::Add
                } else {
                    Accum::Replace
                };
                multiply(
                    engine,
                    row_major_mut(target, co, width),
                    accum,
                    w,
                    row_major(cols, k, width),
                    1.0,
                    par,
                );
                if own_product {
                    for (i, out) in out.chunks_exact_mut(co * p).enumerate() {
                        for (to, from) in out
                            .chunks_exact_mut(p)
                            .zip(image_columns(product, co, width, i, p))
                        {
                            to.copy_from_slice(from);
                        }
                    }
                }
            },
        );
    tensor(out, &[g.batch, co, g.out_height, g.out_width])
}

/// A 3x3 "same" convolution ([`Geometry::shifted`]) as products over
/// shifted views of the zero-padded image instead of an unfolded one:
/// `Y += W[:, :, i, j] · X_ij`, where `X_ij` is the padded image read from
/// offset `i·(W+1) + j`, a `[C, H·(W+1)]` view with one padded plane
/// between rows. Padded rows are `W + 1` wide: one zero, then the row; the
/// next row's zero is this row's right padding. The output is computed on
/// rows of `W + 1` (the last value of each row is wrap-around, dropped when
/// copied out).
///
/// With few channels, one product per offset would be only `C` deep, so
/// the image is padded into [`Shifts::copies`] copies, copy `j` moved left by
/// `j` columns: one product then covers the offsets `(i, 0..copies)` of a
/// kernel row at depth `copies·C`.
///
/// im2col writes nine copies of the input for one product of depth `9C`;
/// here the input is copied once (or three times) and faer packs what each
/// product reads in cache-sized blocks. Measured (BENCHMARKS.md, "Seventh
/// round"), it pays from rows of 16 and 16 input channels on; smaller maps
/// waste more of their wider rows, and fewer channels make shallow products.
fn shifted_forward(
    xs: &[f32],
    ws: &[f32],
    bias: Option<&[f32]>,
    g: &Geometry,
    engine: Engine,
) -> Vec<f32> {
    let (c, co, h, w) = (g.channels, g.out_channels, g.height, g.width);
    if engine != Engine::F32 {
        return bf16::shifted_forward(engine, xs, ws, bias, [g.batch, c, co, h, w]);
    }
    let s = Shifts::new(g);
    let wide = h * s.row;
    let depth = s.copies * c;
    let mut per_product = vec![0f32; 9 * co * c];
    for (k, &weight) in ws.iter().enumerate() {
        per_product[s.product_index(co, k)] = weight;
    }
    #[allow(unsafe_code)]
    // SAFETY: `out` holds `batch` images of `co` planes of `h` rows of `w`
    // values; each image is written in full, row by row, from its padded
    // product (`h` rows of `w` values kept of each of `co` planes).
    let out = unsafe {
        crate::written(g.batch * co * h * w, |out| {
            out.par_chunks_mut(co * h * w)
                .zip(xs.par_chunks(c * h * w))
                .for_each_init(
                    || (vec![0f32; s.buffer_len()], vec![0f32; co * wide]),
                    |(padded, wide_out), (out, image)| {
                        s.pad(image, padded);
                        if let Some(b) = bias {
                            for (row, &bv) in wide_out.chunks_exact_mut(wide).zip(b) {
                                row.fill(bv);
                            }
                        }
                        for p in 0..s.products() {
                            let accum = if p == 0 && bias.is_none() {
                                Accum::Replace
                            } else {
                                Accum::Add
                            };
                            multiply(
                                engine,
                                row_major_mut(wide_out, co, wide),
                                accum,
                                row_major(
                                    &per_product[p * co * depth..(p + 1) * co * depth],
                                    co,
                                    depth,
                                ),
                                s.view(padded, p),
                                1.0,
                                Par::Seq,
                            );
                        }
                        for (plane, wide_plane) in
                            out.chunks_exact_mut(h * w).zip(wide_out.chunks_exact(wide))
                        {
                            for (row, wide_row) in plane
                                .chunks_exact_mut(w)
                                .zip(wide_plane.chunks_exact(s.row))
                            {
                                row.write_copy_of_slice(&wide_row[..w]);
                            }
                        }
                    },
                )
        })
    };
    out
}

/// Channels below which a shifted convolution pads the image into three
/// copies ([`Shifts`]): at 32 channels a product per kernel offset is too
/// shallow; from 64 on the copies cost more than they save (measured,
/// BENCHMARKS.md, "Eighth round").
const THREE_COPIES_BELOW: usize = 64;

/// The padded image of a shifted convolution ([`shifted_forward`]):
/// `copies` copies of each image padded by one zero all round, copy `j`
/// moved left by `j` columns, as `copies·C` planes of `(H + 2)·(W + 1)`
/// values (copy-major), so that kernel row `i`, columns `j..j + copies`,
/// is one `[copies·C, H·(W + 1)]` view from offset `i·(W + 1)`.
///
/// A padded row is a zero and the image row; the zero of the row below
/// pads it on the right. Rows of `W + 2` (a zero on each side) made the
/// products 2/(W + 2) wider than the output: 11% at 16x16.
struct Shifts {
    channels: usize,
    height: usize,
    width: usize,
    /// Values per padded row, `W + 1`.
    row: usize,
    /// Values per padded plane, `(H + 2)·(W + 1)`.
    plane: usize,
    /// 3 (one product per kernel row) or 1 (one per kernel offset).
    copies: usize,
}

impl Shifts {
    fn new(g: &Geometry) -> Self {
        let row = g.width + 1;
        Self {
            channels: g.channels,
            height: g.height,
            width: g.width,
            row,
            plane: (g.height + 2) * row,
            copies: if g.channels < THREE_COPIES_BELOW {
                3
            } else {
                1
            },
        }
    }

    /// Products per convolution: 9 offsets, `copies` per product.
    fn products(&self) -> usize {
        9 / self.copies
    }

    /// Length of the padded buffer; it ends with two more zeros, which the
    /// last offsets' wrap-around columns read.
    fn buffer_len(&self) -> usize {
        self.copies * self.channels * self.plane + 2
    }

    /// Pads `image` (`[C, H, W]`) into `padded`, a reused buffer of
    /// [`buffer_len`](Self::buffer_len) whose padding is never written, so it
    /// stays zero (the copies' last `j` values, read only by wrap-around
    /// columns, too).
    fn pad(&self, image: &[f32], padded: &mut [f32]) {
        let (h, w, row, plane) = (self.height, self.width, self.row, self.plane);
        for (ci, channel) in image.chunks_exact(h * w).enumerate() {
            let dst = &mut padded[ci * plane..(ci + 1) * plane];
            for (y, values) in channel.chunks_exact(w).enumerate() {
                dst[(y + 1) * row + 1..][..w].copy_from_slice(values);
            }
        }
        let copy = self.channels * plane;
        for j in 1..self.copies {
            for ci in 0..self.channels {
                let from = ci * plane;
                padded.copy_within(from + j..from + plane, j * copy + from);
            }
        }
    }

    /// Where weight `k` of a `[CO, C, 3, 3]` kernel sits among the
    /// products' weights: product `p` is a `[CO, copies·C]` matrix whose
    /// column `j·C + c` multiplies copy `j` of channel `c`, for kernel
    /// offset `t = p·copies + j`.
    fn product_index(&self, out_channels: usize, k: usize) -> usize {
        let (o, ci, t) = (k / (9 * self.channels), k / 9 % self.channels, k % 9);
        let (p, j) = (t / self.copies, t % self.copies);
        (p * out_channels + o) * self.copies * self.channels + j * self.channels + ci
    }

    /// The `[copies·C, H·(W + 1)]` operand of product `p`.
    fn view<'a>(&self, padded: &'a [f32], p: usize) -> MatRef<'a, f32> {
        let t = p * self.copies;
        let offset = (t / 3) * self.row + t % 3;
        let rows = self.copies * self.channels;
        MatRef::from_row_major_slice_with_stride(
            &padded[offset..],
            rows,
            self.height * self.row,
            self.plane,
        )
    }
}

/// The weight and bias gradients of a [`shifted_forward`] convolution:
/// `dW[:, :, i, j] = Σ dY · X_ijᵀ` over the images, with `dY` on the same
/// rows of `W + 1` (its extra value per row zero).
fn shifted_weight_gradient(
    xs: &[f32],
    dy: &[f32],
    g: &Geometry,
    engine: Engine,
) -> (Vec<f32>, Vec<f32>) {
    let (c, co, h, w) = (g.channels, g.out_channels, g.height, g.width);
    if engine != Engine::F32 {
        return bf16::shifted_weight_gradient(engine, xs, dy, [g.batch, c, co, h, w]);
    }
    let s = Shifts::new(g);
    let wide = h * s.row;
    let depth = s.copies * c;
    let (per_product, bias) = dy
        .par_chunks(co * h * w)
        .zip(xs.par_chunks(c * h * w))
        .fold(
            || {
                (
                    vec![0f32; 9 * co * c],
                    vec![0f32; co],
                    vec![0f32; s.buffer_len()],
                    vec![0f32; co * wide],
                )
            },
            |(mut dw, mut bias, mut padded, mut dy_wide), (image_dy, image)| {
                s.pad(image, &mut padded);
                for ((b, plane), wide_plane) in bias
                    .iter_mut()
                    .zip(image_dy.chunks_exact(h * w))
                    .zip(dy_wide.chunks_exact_mut(wide))
                {
                    *b += lane_sum(plane);
                    // The extra column of each row stays zero.
                    for (row, wide_row) in plane
                        .chunks_exact(w)
                        .zip(wide_plane.chunks_exact_mut(s.row))
                    {
                        wide_row[..w].copy_from_slice(row);
                    }
                }
                for p in 0..s.products() {
                    multiply(
                        engine,
                        row_major_mut(&mut dw[p * co * depth..(p + 1) * co * depth], co, depth),
                        Accum::Add,
                        row_major(&dy_wide, co, wide),
                        s.view(&padded, p).transpose(),
                        1.0,
                        Par::Seq,
                    );
                }
                (dw, bias, padded, dy_wide)
            },
        )
        .map(|(dw, bias, _, _)| (dw, bias))
        .reduce(|| (vec![0f32; 9 * co * c], vec![0f32; co]), add_gradients);
    let mut dw = vec![0f32; co * c * 9];
    for (k, weight) in dw.iter_mut().enumerate() {
        *weight = per_product[s.product_index(co, k)];
    }
    (dw, bias)
}

/// The input gradient of a same-size convolution
/// ([`Geometry::same_size`]), as one more same-size convolution: of the
/// output gradient by the weights with input and output channels swapped
/// and the kernel turned by 180 degrees, padded on the opposite sides
/// (`dX[c, y, x] = Σ W[o, c, i, j] · dY[o, y - i + top, x - j + left]`).
/// Against `Wᵀ · dY` folded back (col2im), its product sums `CO·KH·KW`
/// terms per value instead of `CO`, and writes the `C·H·W` values of the
/// gradient instead of `KH·KW` times as many for the fold to add up.
fn same_size_input_gradient(
    grad: &FlexTensor,
    weight: &[f32],
    g: &Geometry,
    options: &ConvOptions<2>,
    engine: Engine,
) -> FlexTensor {
    let ([kh, kw], c, co) = (g.kernel, g.channels, g.out_channels);
    let mut turned = vec![0f32; c * co * kh * kw];
    for o in 0..co {
        for i in 0..c {
            for y in 0..kh {
                for x in 0..kw {
                    turned[((i * co + o) * kh + kh - 1 - y) * kw + kw - 1 - x] =
                        weight[((o * c + i) * kh + y) * kw + x];
                }
            }
        }
    }
    let [(top, bottom), (left, right)] = options.padding;
    let options = ConvOptions::new_with_padding([1, 1], [(bottom, top), (right, left)], [1, 1], 1);
    forward(
        grad.clone(),
        tensor(turned, &[c, co, kh, kw]),
        None,
        &options,
        engine,
    )
}

/// Per-task sums of the weight and bias gradients, with the task's buffers.
struct Partial {
    weight: Vec<f32>,
    bias: Vec<f32>,
    cols: Vec<f32>,
    cols_grad: Vec<f32>,
    grad: Vec<f32>,
}

fn backward(
    x: FlexTensor,
    weight: FlexTensor,
    grad: FlexTensor,
    options: &ConvOptions<2>,
    input_grad: bool,
    engine: Engine,
) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
    let (x, weight, grad) = (
        x.to_contiguous(),
        weight.to_contiguous(),
        grad.to_contiguous(),
    );
    let g = Geometry::new(x.layout().shape(), weight.layout().shape(), options);
    let (xs, ws, dy): (&[f32], &[f32], &[f32]) = (x.storage(), weight.storage(), grad.storage());
    // A same-size convolution's input gradient is a convolution of its own;
    // the pass below then computes the weight and bias gradients only.
    let same_size_dx = (input_grad && g.same_size())
        .then(|| same_size_input_gradient(&grad, ws, &g, options, engine));
    let input_grad = input_grad && same_size_dx.is_none();
    let (co, k, p) = (g.out_channels, g.patch(), g.positions());
    // Winograd's transforms and the shifted products compute the weight and
    // bias gradients without unfolding the images.
    let without_unfolding = if g.winograd(engine) {
        Some(winograd::weight_gradient(xs, dy, &g))
    } else if g.shifted(engine) {
        Some(shifted_weight_gradient(xs, dy, &g, engine))
    } else {
        None
    };
    if let Some((dw, bias)) = without_unfolding {
        let shape = weight.layout().shape().clone();
        return (
            same_size_dx,
            tensor(dw, shape.as_slice()),
            tensor(bias, &[co]),
        );
    }
    let w = row_major(ws, co, k);
    let par = g.product_parallelism();
    let group = g.images_per_product();
    // As in the forward pass: a lone pointwise image is its own unfolded
    // matrix (and its gradient), a group gathers its output gradients into
    // one `[CO, n·OH·OW]` matrix.
    let (own_cols, own_grad) = (group > 1 || !g.pointwise(), group > 1);
    // Without an input gradient, a one-value stand-in per image keeps the
    // iteration the same.
    let image_len = if input_grad { g.image() } else { 1 };
    let mut dx = crate::zeros(g.batch * image_len);
    let len = |own| if own { group * p } else { 0 };
    let init = || Partial {
        weight: vec![0f32; co * k],
        bias: vec![0f32; co],
        cols: vec![0f32; k * len(own_cols)],
        cols_grad: vec![0f32; k * len(input_grad && own_cols)],
        grad: vec![0f32; co * len(own_grad)],
    };
    let partial = dx
        .par_chunks_mut(group * image_len)
        .zip(
            xs.par_chunks(group * g.image())
                .zip(dy.par_chunks(group * co * p)),
        )
        .with_min_len(g.images_per_task().div_ceil(group))
        .fold(init, |mut acc, (images_grad, (images, dy))| {
            let width = images.len() / g.image() * p;
            add_bias_gradients(&mut acc.bias, dy, p);
            let dy = if own_grad {
                for (i, image_dy) in dy.chunks_exact(co * p).enumerate() {
                    for (r, from) in image_dy.chunks_exact(p).enumerate() {
                        acc.grad[r * width + i * p..][..p].copy_from_slice(from);
                    }
                }
                &acc.grad[..co * width]
            } else {
                dy
            };
            let dy = row_major(dy, co, width);
            let cols = if own_cols {
                for (i, image) in images.chunks_exact(g.image()).enumerate() {
                    g.unfold(image, &mut acc.cols[i * p..], width);
                }
                &acc.cols[..k * width]
            } else {
                images
            };
            // dW += dY · colsᵀ
            multiply(
                engine,
                row_major_mut(&mut acc.weight, co, k),
                Accum::Add,
                dy,
                row_major(cols, k, width).transpose(),
                1.0,
                par,
            );
            if input_grad {
                // dcols = Wᵀ · dY, folded back onto each image.
                let target = if own_cols {
                    &mut acc.cols_grad[..k * width]
                } else {
                    &mut images_grad[..]
                };
                multiply(
                    engine,
                    row_major_mut(target, k, width),
                    Accum::Replace,
                    w.transpose(),
                    dy,
                    1.0,
                    par,
                );
                if own_cols {
                    for (i, image_grad) in images_grad.chunks_exact_mut(g.image()).enumerate() {
                        g.fold(&acc.cols_grad[i * p..], image_grad, width);
                    }
                }
            }
            acc
        })
        .map(|acc| (acc.weight, acc.bias))
        .reduce(|| (vec![0f32; co * k], vec![0f32; co]), add_gradients);
    let dx = same_size_dx
        .or_else(|| input_grad.then(|| tensor(dx, &[g.batch, g.channels, g.height, g.width])));
    let shape = weight.layout().shape().clone();
    (
        dx,
        tensor(partial.0, shape.as_slice()),
        tensor(partial.1, &[co]),
    )
}

impl ConvKernels for Flex {
    fn conv2d_unfolded(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        forward(x, weight, Some(bias), &options, bf16::engine())
    }

    fn conv2d_unfolded_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        forward(x, weight, None, &options, bf16::engine())
    }

    fn conv2d_unfolded_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        input_grad: bool,
    ) -> (
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        backward(x, weight, grad, &options, input_grad, bf16::engine())
    }
}

/// What the backward pass keeps of the forward: the input, the weight and
/// the options.
type Saved<B> = (FloatTensor<B>, FloatTensor<B>, ConvOptions<2>);

/// The convolution's backward: the inner backend's kernel.
#[derive(Debug)]
struct Conv;

impl<B: Backend + ConvKernels> AffineBackward<B> for Conv {
    type State = Saved<B>;

    fn gradients(
        (x, weight, options): Saved<B>,
        grad: FloatTensor<B>,
        input_grad: bool,
    ) -> (Option<FloatTensor<B>>, FloatTensor<B>, FloatTensor<B>) {
        B::conv2d_unfolded_backward(x, weight, grad, options, input_grad)
    }
}

impl<B: Backend + ConvKernels, C: CheckpointStrategy> ConvKernels for Autodiff<B, C> {
    fn conv2d_unfolded(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match WithBias(Conv)
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight) = (x.into_primitive(), weight.into_primitive());
                let output = B::conv2d_unfolded(
                    x.clone(),
                    weight.clone(),
                    bias.into_primitive(),
                    options.clone(),
                );
                prep.finish((x, weight, options), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_unfolded(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                options,
            )),
        }
    }

    fn conv2d_unfolded_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match NoBias(Conv)
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight) = (x.into_primitive(), weight.into_primitive());
                let output = B::conv2d_unfolded_no_bias(x.clone(), weight.clone(), options.clone());
                prep.finish((x, weight, options), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_unfolded_no_bias(
                x.into_primitive(),
                weight.into_primitive(),
                options,
            )),
        }
    }

    fn conv2d_unfolded_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        input_grad: bool,
    ) -> (
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        // Not differentiable itself: the autodiff path above calls the inner backend's.
        let lift = <Self as AutodiffBackend>::from_inner;
        let (dx, dweight, dbias) = B::conv2d_unfolded_backward(
            x.into_primitive(),
            weight.into_primitive(),
            grad.into_primitive(),
            options,
            input_grad,
        );
        (dx.map(lift), lift(dweight), lift(dbias))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Relative closeness, scaled by the largest magnitude of the reference
    /// (sums of many products cancel, so single values can be near zero).
    fn close<const D: usize>(ours: Tensor<D>, reference: Tensor<D>, what: &str) {
        let (a, b) = (
            ours.into_data().try_to_vec::<f32>().unwrap(),
            reference.into_data().try_to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{what}: sizes differ");
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{what}[{i}]: {x} vs Burn's {y} (scale {scale})"
            );
        }
    }

    /// Checks the output and every gradient against Burn's own convolution
    /// on the same autodiff flex device.
    fn check(
        x: [usize; 4],
        out_channels: usize,
        kernel: [usize; 2],
        options: ConvOptions<2>,
        bias: bool,
    ) {
        let device = Device::flex().autodiff();
        let [n, c, _, _] = x;
        let what =
            format!("x {x:?}, {out_channels} out, kernel {kernel:?}, {options:?}, bias {bias}");
        let x = Tensor::<4>::random(x, Distribution::Normal(0.0, 1.0), &device).require_grad();
        let weight = Tensor::<4>::random(
            [out_channels, c, kernel[0], kernel[1]],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
        .require_grad();
        let bias = bias.then(|| {
            Tensor::<1>::random([out_channels], Distribution::Normal(0.0, 1.0), &device)
                .require_grad()
        });
        let ours = conv2d(x.clone(), weight.clone(), bias.clone(), options.clone());
        let reference =
            burn::tensor::module::conv2d(x.clone(), weight.clone(), bias.clone(), options);
        assert_eq!(ours.dims(), reference.dims(), "{what}: output shape");
        assert_eq!(ours.dims()[0], n);
        // A gradient that differs per output value, so misrouting shows.
        let upstream = Tensor::<4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
        close(ours.clone(), reference.clone(), &format!("{what}: output"));
        let g1 = (ours * upstream.clone()).sum().backward();
        let g2 = (reference * upstream).sum().backward();
        close(
            x.grad(&g1).unwrap(),
            x.grad(&g2).unwrap(),
            &format!("{what}: input gradient"),
        );
        close(
            weight.grad(&g1).unwrap(),
            weight.grad(&g2).unwrap(),
            &format!("{what}: weight gradient"),
        );
        if let Some(bias) = bias {
            close(
                bias.grad(&g1).unwrap(),
                bias.grad(&g2).unwrap(),
                &format!("{what}: bias gradient"),
            );
        }
    }

    fn options(stride: usize, padding: usize) -> ConvOptions<2> {
        ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1)
    }

    #[test]
    fn same_padded_3x3_equals_burns_convolution() {
        Device::flex().autodiff().seed(1);
        check([4, 3, 8, 8], 5, [3, 3], options(1, 1), true);
        check([3, 6, 7, 5], 4, [3, 3], options(1, 1), false);
    }

    #[test]
    fn nine_shifted_products_equal_burns_convolution() {
        Device::flex().autodiff().seed(2);
        // 16 or more channels, rows 16 or more wide: the shifted products
        // over three copies of the image, forward and weight gradient; with
        // 16 or more outputs the input gradient (a convolution by the turned
        // weights) takes them too.
        check([2, 16, 16, 16], 16, [3, 3], options(1, 1), true);
        check([1, 17, 5, 20], 3, [3, 3], options(1, 1), false);
        check([3, 16, 9, 16], 18, [3, 3], options(1, 1), true);
        // From 64 channels, one product per offset instead of three copies
        // of the image; the input gradient (3 outputs) goes through im2col.
        check([2, 64, 4, 17], 3, [3, 3], options(1, 1), true);
    }

    #[test]
    fn winograd_transforms_equal_burns_convolution() {
        // On two threads: 13 images of 7x9 make tasks of 3 images and a
        // last task of one; 8x8 maps with 64 channels in, a whole number of
        // tiles; 15x5, tiles hanging over the bottom and right edges. The
        // input gradients (convolutions by the turned weights) run here too.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a thread pool");
        pool.install(|| {
            for x in [[13, 8, 7, 9], [4, 64, 8, 8], [3, 5, 15, 5]] {
                let g = Geometry::new(&x, &[6, x[1], 3, 3], &options(1, 1));
                assert!(winograd::applies(&g), "{g:?}");
            }
            Device::flex().autodiff().seed(8);
            check([13, 8, 7, 9], 6, [3, 3], options(1, 1), true);
            check([4, 64, 8, 8], 32, [3, 3], options(1, 1), false);
            check([3, 5, 15, 5], 7, [3, 3], options(1, 1), true);
        });
    }

    #[test]
    fn strides_paddings_odd_sizes_and_batch_one_equal_burns_convolution() {
        Device::flex().autodiff().seed(2);
        check([1, 2, 9, 7], 3, [3, 3], options(2, 1), true);
        check([2, 3, 11, 10], 4, [5, 3], options(2, 2), false);
        check([2, 2, 6, 6], 3, [3, 3], options(1, 0), true);
        check([1, 1, 5, 5], 2, [5, 5], options(1, 2), true);
        check([2, 3, 8, 9], 2, [2, 2], options(2, 0), true);
        // Asymmetric padding, as Burn's "same" padding gives for even kernels.
        let asymmetric = ConvOptions::new_with_padding([1, 1], [(0, 1), (1, 0)], [1, 1], 1);
        check([2, 2, 6, 5], 3, [2, 2], asymmetric, true);
    }

    #[test]
    fn same_size_planes_unfold_as_the_row_by_row_loop() {
        // Kernel, padding (top, bottom), (left, right) and input size; every
        // case keeps the output the size of the input.
        let cases = [
            ([3, 3], [(1, 1), (1, 1)], [8, 8]),
            ([3, 3], [(1, 1), (1, 1)], [2, 3]),
            ([3, 3], [(1, 1), (1, 1)], [1, 1]),
            ([5, 5], [(2, 2), (2, 2)], [3, 7]),
            ([1, 3], [(0, 0), (1, 1)], [4, 5]),
            ([5, 1], [(2, 2), (0, 0)], [6, 2]),
            ([2, 2], [(0, 1), (1, 0)], [6, 5]),
        ];
        for (kernel, padding, [h, w]) in cases {
            let options = ConvOptions::new_with_padding([1, 1], padding, [1, 1], 1);
            let g = Geometry::new(&[1, 3, h, w], &[2, 3, kernel[0], kernel[1]], &options);
            assert!(g.same_size(), "{g:?}");
            // Two images side by side, as a product of a group sees them.
            let stride = 2 * g.positions() + 3;
            let image: Vec<f32> = (0..g.image()).map(|v| v as f32 * 0.37 - 4.0).collect();
            let (mut planes, mut rows) = (
                vec![9f32; g.patch() * stride],
                vec![9f32; g.patch() * stride],
            );
            g.unfold_planes(&image, &mut planes[g.positions()..], stride);
            g.unfold_rows(&image, &mut rows[g.positions()..], stride);
            assert_eq!(planes, rows, "unfold, {g:?}");
        }
        Device::flex().autodiff().seed(7);
        check([2, 3, 2, 3], 4, [3, 3], options(1, 1), true);
        let wide = ConvOptions::new_with_padding([1, 1], [(0, 0), (1, 1)], [1, 1], 1);
        check([2, 2, 4, 5], 3, [1, 3], wide, true);
    }

    #[test]
    fn pointwise_and_padding_wider_than_the_kernel_equal_burns_convolution() {
        Device::flex().autodiff().seed(3);
        check([3, 4, 5, 6], 7, [1, 1], options(1, 0), true);
        check([2, 4, 5, 6], 3, [1, 1], options(2, 0), false);
        check([2, 2, 4, 4], 3, [3, 3], options(1, 3), true);
    }

    #[test]
    fn small_maps_share_products_across_images_and_equal_burns_convolution() {
        // On two threads, 4x4 and 2x2 outputs put several images in one
        // product; 13 and 11 images leave a shorter last group.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a thread pool");
        pool.install(|| {
            let g = Geometry::new(&[13, 6, 4, 4], &[5, 6, 3, 3], &options(1, 1));
            assert!(g.images_per_product() > 1, "{g:?}");
            Device::flex().autodiff().seed(6);
            check([13, 6, 4, 4], 5, [3, 3], options(1, 1), true);
            check([11, 3, 4, 4], 4, [3, 3], options(2, 1), false);
            check([12, 4, 2, 2], 3, [1, 1], options(1, 0), true);
        });
    }

    #[test]
    fn an_input_without_gradient_still_gives_the_weight_gradient() {
        let device = Device::flex().autodiff();
        device.seed(4);
        let x = Tensor::<4>::random([2, 3, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        let weight = Tensor::<4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let ours = conv2d(x.clone(), weight.clone(), None, options(1, 1));
        let reference = burn::tensor::module::conv2d(x, weight.clone(), None, options(1, 1));
        let g1 = ours.sum().backward();
        let g2 = reference.sum().backward();
        close(
            weight.grad(&g1).unwrap(),
            weight.grad(&g2).unwrap(),
            "weight gradient",
        );
    }

    #[test]
    #[allow(deprecated)]
    fn plain_flex_and_other_backends_give_burns_values() {
        for device in [Device::flex(), Device::ndarray()] {
            device.seed(5);
            let x = Tensor::<4>::random([2, 3, 7, 7], Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
            let b = Tensor::<1>::random([4], Distribution::Normal(0.0, 1.0), &device);
            close(
                conv2d(x.clone(), w.clone(), Some(b.clone()), options(1, 1)),
                burn::tensor::module::conv2d(x, w, Some(b), options(1, 1)),
                "forward",
            );
        }
    }

    /// `n` values in (-1, 1) from a fixed sequence, rounded to bf16 when
    /// `bf16`.
    fn values(n: usize, seed: u32, bf16: bool) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let v = (state as f32 / u32::MAX as f32) * 2.0 - 1.0;
                if bf16 { crate::round_to_bf16(v) } else { v }
            })
            .collect()
    }

    /// The largest difference between two tensors' values, and the larger
    /// tensor's largest magnitude.
    fn difference(a: &FlexTensor, b: &FlexTensor) -> (f32, f32) {
        let (a, b) = (a.to_contiguous(), b.to_contiguous());
        let (a, b) = (crate::values(&a), crate::values(&b));
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        (worst, scale)
    }

    #[test]
    fn bf16_products_run_every_path_of_the_convolution() {
        // Inputs that are bf16 values already lose nothing to rounding, so
        // the bf16 engine must give the f32 results up to the order of the
        // sums, in every path: that catches an operand packed or routed
        // wrong. Inputs that are not lose about 2⁻⁹ relative per factor.
        let mut engines = vec![Engine::Emulated];
        if crate::bf16_available() {
            engines.push(Engine::Amx);
        } else {
            eprintln!("no AMX on this machine: checking the emulated engine only");
        }
        let cases = [
            (
                [2, 16, 16, 16],
                8,
                [3, 3],
                options(1, 1),
                "shifted, three copies",
            ),
            (
                [2, 64, 16, 16],
                4,
                [3, 3],
                options(1, 1),
                "shifted, one copy",
            ),
            (
                [3, 5, 9, 7],
                6,
                [3, 3],
                options(1, 1),
                "same size, odd sizes",
            ),
            (
                [16, 8, 3, 3],
                8,
                [3, 3],
                options(1, 1),
                "small maps (grouped in f32)",
            ),
            ([2, 6, 8, 8], 4, [1, 1], options(1, 0), "pointwise"),
            (
                [2, 3, 9, 9],
                4,
                [3, 3],
                options(2, 1),
                "strided, folded back",
            ),
            ([2, 3, 8, 8], 6, [2, 2], options(1, 0), "2x2 as whitening"),
        ];
        for (engine, (seed, (x, co, [kh, kw], options, what))) in engines
            .into_iter()
            .flat_map(|e| cases.clone().into_iter().enumerate().map(move |c| (e, c)))
        {
            let [n, c, h, w] = x;
            let seed = seed as u32 * 4;
            let g = Geometry::new(&x, &[co, c, kh, kw], &options);
            let dy_len = n * co * g.out_height * g.out_width;
            let dy_shape = [n, co, g.out_height, g.out_width];
            for rounded in [true, false] {
                let xs = tensor(values(n * c * h * w, seed, rounded), &x);
                let ws = tensor(
                    values(co * c * kh * kw, seed + 1, rounded),
                    &[co, c, kh, kw],
                );
                let bias = tensor(values(co, seed + 2, false), &[co]);
                let dy = tensor(values(dy_len, seed + 3, rounded), &dy_shape);
                let run = |engine| {
                    let y = forward(xs.clone(), ws.clone(), Some(bias.clone()), &options, engine);
                    let (dx, dw, db) =
                        backward(xs.clone(), ws.clone(), dy.clone(), &options, true, engine);
                    [y, dx.expect("input gradient asked"), dw, db]
                };
                let (f32s, bf16s) = (run(Engine::F32), run(engine));
                for (part, (a, b)) in [
                    "output",
                    "input gradient",
                    "weight gradient",
                    "bias gradient",
                ]
                .iter()
                .zip(bf16s.iter().zip(&f32s))
                {
                    let (worst, scale) = difference(a, b);
                    let bound = if rounded { 1e-5 } else { 2e-2 };
                    assert!(
                        worst <= bound * scale,
                        "{engine:?}, {what}, {part}, rounded inputs {rounded}: off by {worst} (scale {scale})"
                    );
                    if !rounded && *part != "bias gradient" {
                        assert!(worst > 0.0, "{what}, {part}: bf16 rounding changed nothing");
                    }
                }
            }
        }
    }
}
