//! Data augmentation for training batches: random crop with padding and
//! random horizontal flip, as in the standard CIFAR-10 recipe.

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

/// Random crop after padding, and random horizontal flip.
///
/// Padding adds zeros, which after centering is the mean color (torchvision
/// pads the raw image with black instead), or mirrors the image across its
/// border ([`reflect`](Self::reflect)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augmentation {
    /// Pixels of zero padding on each side before a crop back to the original size (0: no crop).
    pub pad: usize,
    /// Flip half the images left to right.
    pub flip: bool,
    /// With `flip`: instead of flipping each image at random every epoch,
    /// flip it in every other epoch, so that over any two epochs the network
    /// sees both orientations of every image (airbench's alternating flip).
    /// Needs the epoch: [`CifarBatcher::set_epoch`](crate::CifarBatcher::set_epoch).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub alternate_flip: bool,
    /// Pad by mirroring the image across its border (PyTorch's `reflect`
    /// padding, as airbench does: a shift by 2 shows rows 2 and 1 beyond
    /// the edge) instead of with zeros.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reflect: bool,
}

impl Default for Augmentation {
    fn default() -> Self {
        Self::new()
    }
}

impl Augmentation {
    /// The standard CIFAR-10 augmentation: 4 pixels of padding, and flips.
    pub fn new() -> Self {
        Self {
            pad: 4,
            flip: true,
            alternate_flip: false,
            reflect: false,
        }
    }

    /// Whether image `index` is flipped in `epoch` under the alternating
    /// flip: a coin drawn once per image from `seed`, then every other epoch.
    pub fn alternating_flip(index: usize, epoch: usize, seed: u64) -> bool {
        let coin = crate::mix_seed(seed, index as u64) & 1 == 1;
        coin ^ (epoch % 2 == 1)
    }

    /// Writes an augmented copy of `src` (`[channels, height, width]`) into `dst`.
    pub fn apply<R: Rng + ?Sized>(
        &self,
        src: &[f32],
        dst: &mut [f32],
        [channels, height, width]: [usize; 3],
        rng: &mut R,
    ) {
        debug_assert_eq!(src.len(), channels * height * width);
        let (dy, dx) = self.shift(rng);
        let flip = self.flip && rng.random_bool(0.5);
        let shift = Shift {
            dy,
            dx,
            reflect: self.reflect,
        };
        shift_flip(src, dst, [channels, height, width], shift, flip);
    }

    /// As [`apply`](Self::apply), with the flip decided by the caller
    /// (`flip` is ignored when [`flip`](Self::flip) is off).
    pub fn apply_flipped<R: Rng + ?Sized>(
        &self,
        src: &[f32],
        dst: &mut [f32],
        [channels, height, width]: [usize; 3],
        rng: &mut R,
        flip: bool,
    ) {
        debug_assert_eq!(src.len(), channels * height * width);
        let (dy, dx) = self.shift(rng);
        let shift = Shift {
            dy,
            dx,
            reflect: self.reflect,
        };
        shift_flip(
            src,
            dst,
            [channels, height, width],
            shift,
            self.flip && flip,
        );
    }

    /// A random crop offset in `-pad..=pad` on each axis.
    fn shift<R: Rng + ?Sized>(&self, rng: &mut R) -> (isize, isize) {
        let pad = self.pad as i64;
        debug_assert!(
            !self.reflect || pad < 32,
            "reflect padding needs a shift smaller than the image"
        );
        if pad > 0 {
            (
                rng.random_range(-pad..=pad) as isize,
                rng.random_range(-pad..=pad) as isize,
            )
        } else {
            (0, 0)
        }
    }
}

/// A crop offset, and what lies beyond the image's border.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shift {
    /// Rows down.
    pub dy: isize,
    /// Columns right.
    pub dx: isize,
    /// Mirror the image across its border instead of zeros there.
    pub reflect: bool,
}

impl Shift {
    /// The source index of `i + d` on an axis of `n` pixels: `None` (a zero)
    /// outside, or the mirrored index (`-1 -> 1`, `n -> n - 2`) with `reflect`.
    fn source(&self, i: usize, d: isize, n: usize) -> Option<usize> {
        let s = i as isize + d;
        let n = n as isize;
        if (0..n).contains(&s) {
            Some(s as usize)
        } else if self.reflect {
            let mirrored = if s < 0 { -s } else { 2 * (n - 1) - s };
            (0..n).contains(&mirrored).then_some(mirrored as usize)
        } else {
            None
        }
    }
}

/// `dst[c, y, x] = src[c, y + dy, x' + dx]` (zero or mirrored outside, see
/// [`Shift`]), where `x'` is `x` or its mirror `width - 1 - x` when `flip`.
pub(crate) fn shift_flip(
    src: &[f32],
    dst: &mut [f32],
    [channels, height, width]: [usize; 3],
    shift: Shift,
    flip: bool,
) {
    let plane = height * width;
    for c in 0..channels {
        for y in 0..height {
            let row = &mut dst[c * plane + y * width..c * plane + (y + 1) * width];
            let Some(sy) = shift.source(y, shift.dy, height) else {
                row.fill(0.0);
                continue;
            };
            let src_row = &src[c * plane + sy * width..c * plane + (sy + 1) * width];
            for (x, out) in row.iter_mut().enumerate() {
                let xx = if flip { width - 1 - x } else { x };
                *out = shift
                    .source(xx, shift.dx, width)
                    .map_or(0.0, |sx| src_row[sx]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shift_and_flip_move_pixels_where_expected() {
        // One 1x2x3 image: rows [1 2 3] and [4 5 6].
        let src = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut dst = [0.0; 6];
        let zeros = |dy, dx| Shift {
            dy,
            dx,
            reflect: false,
        };
        shift_flip(&src, &mut dst, [1, 2, 3], zeros(0, 0), true);
        assert_eq!(dst, [3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
        shift_flip(&src, &mut dst, [1, 2, 3], zeros(1, 1), false);
        assert_eq!(dst, [5.0, 6.0, 0.0, 0.0, 0.0, 0.0]);
        shift_flip(&src, &mut dst, [1, 2, 3], zeros(0, -1), false);
        assert_eq!(dst, [0.0, 1.0, 2.0, 0.0, 4.0, 5.0]);
    }

    #[test]
    fn reflect_padding_mirrors_the_rows_and_columns_inside_the_border() {
        // PyTorch: F.pad(x, (2, 2, 2, 2), 'reflect') on the row [1 2 3 4]
        // gives [3 2 1 2 3 4 3 2]; shifts by -2 and +2 read its two ends.
        let src = [1.0, 2.0, 3.0, 4.0];
        let mut dst = [0.0; 4];
        let reflect = |dy, dx| Shift {
            dy,
            dx,
            reflect: true,
        };
        shift_flip(&src, &mut dst, [1, 1, 4], reflect(0, -2), false);
        assert_eq!(dst, [3.0, 2.0, 1.0, 2.0]);
        shift_flip(&src, &mut dst, [1, 1, 4], reflect(0, 2), false);
        assert_eq!(dst, [3.0, 4.0, 3.0, 2.0]);
        // Flipped: column x reads src[(3 - x) + 1], the mirror image
        // [4 3 2 1] moved right by one with its edge reflected.
        shift_flip(&src, &mut dst, [1, 1, 4], reflect(0, 1), true);
        assert_eq!(dst, [3.0, 4.0, 3.0, 2.0]);
        // Rows too: a 3x1 column [1 2 3] shifted down by one row reads [2 3 2].
        let column = [1.0, 2.0, 3.0];
        let mut out = [0.0; 3];
        shift_flip(&column, &mut out, [1, 3, 1], reflect(1, 0), false);
        assert_eq!(out, [2.0, 3.0, 2.0]);
    }

    #[test]
    fn alternating_flip_flips_each_image_in_every_other_epoch() {
        let flips = |epoch| {
            (0..1000)
                .map(|i| Augmentation::alternating_flip(i, epoch, 7))
                .collect::<Vec<_>>()
        };
        let (e0, e1, e2) = (flips(0), flips(1), flips(2));
        assert_eq!(e0, e2);
        assert!(e0.iter().zip(&e1).all(|(a, b)| a != b));
        let flipped = e0.iter().filter(|&&f| f).count();
        assert!((400..600).contains(&flipped), "{flipped} of 1000 flipped");
        assert_ne!(
            e0,
            (0..1000)
                .map(|i| Augmentation::alternating_flip(i, 0, 8))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn seeded_augmentation_is_reproducible_and_varied() {
        let src: Vec<f32> = (0..3 * 32 * 32).map(|v| v as f32).collect();
        let aug = Augmentation::new();
        let run = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut out = vec![vec![0.0; src.len()]; 8];
            for o in &mut out {
                aug.apply(&src, o, [3, 32, 32], &mut rng);
            }
            out
        };
        assert_eq!(run(1), run(1));
        let outs = run(2);
        assert!(
            outs.iter().any(|o| o != &src),
            "augmentation changed nothing"
        );
        assert!(outs.windows(2).any(|w| w[0] != w[1]));
    }

    /// torchvision's `RandomCrop(32, padding=4)` then `RandomHorizontalFlip`,
    /// written out directly: pad with zeros to 40x40, crop at `(oy, ox)`,
    /// mirror if `flip`.
    fn reference(src: &[f32], oy: usize, ox: usize, flip: bool) -> Vec<f32> {
        let mut out = vec![0.0; src.len()];
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let (py, px) = (y + oy, if flip { 31 - x } else { x } + ox);
                    let inside = (4..36).contains(&py) && (4..36).contains(&px);
                    out[c * 1024 + y * 32 + x] = if inside {
                        src[c * 1024 + (py - 4) * 32 + (px - 4)]
                    } else {
                        0.0
                    };
                }
            }
        }
        out
    }

    #[test]
    fn every_augmented_image_is_a_padded_crop_flipped_or_not_and_all_occur() {
        // Distinct pixel values, so that each crop and flip is recognisable.
        let src: Vec<f32> = (0..3 * 32 * 32).map(|v| v as f32 + 1.0).collect();
        let aug = Augmentation::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut seen = std::collections::BTreeSet::new();
        let mut out = vec![0.0; src.len()];
        for _ in 0..2000 {
            aug.apply(&src, &mut out, [3, 32, 32], &mut rng);
            let found = (0..=8)
                .flat_map(|oy| (0..=8).flat_map(move |ox| [(oy, ox, false), (oy, ox, true)]))
                .find(|&(oy, ox, flip)| reference(&src, oy, ox, flip) == out);
            let transform = found.expect("the output is no padded crop of the input");
            seen.insert(transform);
        }
        // 9 x 9 offsets x 2 flips, each drawn with probability 1/162.
        assert_eq!(
            seen.len(),
            162,
            "only {} of 162 crops and flips seen",
            seen.len()
        );
    }
}
