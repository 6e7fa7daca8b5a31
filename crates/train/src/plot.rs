//! Small PNG charts drawn pixel by pixel: a confusion-matrix heat map and
//! per-layer histograms. No fonts: the text reports carry the numbers.

use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const BAR: Rgb<u8> = Rgb([52, 101, 164]);
const AXIS: Rgb<u8> = Rgb([120, 120, 120]);

/// A heat map of `matrix` (rows: true class, columns: predicted), each row
/// normalized to its total, white (0) to dark blue (1), `cell` pixels a cell.
pub fn confusion_png(matrix: &[Vec<u64>], cell: u32, path: &Path) -> Result<()> {
    let n = matrix.len() as u32;
    let mut img = RgbImage::from_pixel(n * cell + 2, n * cell + 2, AXIS);
    for (r, row) in matrix.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1) as f64;
        for (c, &count) in row.iter().enumerate() {
            let v = count as f64 / total;
            let color = Rgb([
                (255.0 * (1.0 - 0.8 * v)) as u8,
                (255.0 * (1.0 - 0.6 * v)) as u8,
                (255.0 * (1.0 - 0.35 * v)) as u8,
            ]);
            for y in 0..cell - 1 {
                for x in 0..cell - 1 {
                    img.put_pixel(1 + c as u32 * cell + x, 1 + r as u32 * cell + y, color);
                }
            }
        }
    }
    save(&img, path)
}

/// One histogram per row (for example one per layer), each bar's height
/// relative to the row's tallest; `zero`, the fraction of the width where
/// the value 0 lies, gets a tick under each row's axis.
pub fn histograms_png(rows: &[Vec<u64>], zero: Option<f64>, path: &Path) -> Result<()> {
    const ROW_HEIGHT: u32 = 60;
    const BAR_WIDTH: u32 = 8;
    let bins = rows.iter().map(Vec::len).max().unwrap_or(1) as u32;
    let width = bins * BAR_WIDTH + 20;
    let height = rows.len() as u32 * (ROW_HEIGHT + 10) + 10;
    let mut img = RgbImage::from_pixel(width, height.max(1), BACKGROUND);
    for (r, counts) in rows.iter().enumerate() {
        let top = 10 + r as u32 * (ROW_HEIGHT + 10);
        let base = top + ROW_HEIGHT;
        for x in 10..width - 10 {
            img.put_pixel(x, base, AXIS);
        }
        if let Some(z) = zero {
            let x = 10 + (z * (bins * BAR_WIDTH) as f64).round() as u32;
            for y in base..(base + 5).min(img.height()) {
                img.put_pixel(x.min(width - 1), y, AXIS);
            }
        }
        let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
        for (b, &count) in counts.iter().enumerate() {
            let h = ((count as f64 / max) * (ROW_HEIGHT - 2) as f64).round() as u32;
            for y in 0..h {
                for x in 1..BAR_WIDTH {
                    img.put_pixel(10 + b as u32 * BAR_WIDTH + x, base - 1 - y, BAR);
                }
            }
        }
    }
    save(&img, path)
}

/// A curve of `values` (for example the loss at every step) scaled to fill a
/// 640x320 frame, a thin line per step, and a thick one for the running mean
/// over `smooth` steps.
pub fn curve_png(values: &[f64], smooth: usize, path: &Path) -> Result<()> {
    const W: u32 = 640;
    const H: u32 = 320;
    const PAD: u32 = 10;
    let mut img = RgbImage::from_pixel(W, H, BACKGROUND);
    for x in PAD..W - PAD {
        img.put_pixel(x, H - PAD, AXIS);
    }
    for y in PAD..=H - PAD {
        img.put_pixel(PAD, y, AXIS);
    }
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.len() >= 2 {
        let (lo, hi) = finite
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let span = (hi - lo).max(1e-12);
        let point = |i: usize, v: f64| {
            let x = PAD
                + 1
                + ((i as f64 / (finite.len() - 1) as f64) * (W - 2 * PAD - 2) as f64) as u32;
            let y = H - PAD - 1 - (((v - lo) / span) * (H - 2 * PAD - 2) as f64) as u32;
            (x, y)
        };
        let raw: Vec<(u32, u32)> = finite
            .iter()
            .enumerate()
            .map(|(i, &v)| point(i, v))
            .collect();
        draw_polyline(&mut img, &raw, Rgb([170, 190, 220]), 0);
        let k = smooth.max(1);
        let mut sum = 0.0;
        let mean: Vec<(u32, u32)> = finite
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                sum += v;
                if i >= k {
                    sum -= finite[i - k];
                }
                point(i, sum / (i + 1).min(k) as f64)
            })
            .collect();
        draw_polyline(&mut img, &mean, BAR, 1);
    }
    save(&img, path)
}

/// Straight segments between consecutive points, `radius` pixels thick.
fn draw_polyline(img: &mut RgbImage, points: &[(u32, u32)], color: Rgb<u8>, radius: i64) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for pair in points.windows(2) {
        let (x0, y0) = (pair[0].0 as i64, pair[0].1 as i64);
        let (x1, y1) = (pair[1].0 as i64, pair[1].1 as i64);
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for t in 0..=steps {
            let x = x0 + (x1 - x0) * t / steps;
            let y = y0 + (y1 - y0) * t / steps;
            for dy in -radius..=radius {
                for dx in -radius..=radius {
                    let (px, py) = (x + dx, y + dy);
                    if px >= 0 && py >= 0 && px < w && py < h {
                        img.put_pixel(px as u32, py as u32, color);
                    }
                }
            }
        }
    }
}

fn save(img: &RgbImage, path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp.png");
    img.save(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_cells_darken_with_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        confusion_png(&[vec![9, 1], vec![0, 10]], 10, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (22, 22));
        let dark = img.get_pixel(5, 5)[0];
        let light = img.get_pixel(15, 5)[0];
        let empty = img.get_pixel(5, 15)[0];
        assert!(dark < light && light < empty, "{dark} {light} {empty}");
        assert_eq!(empty, 255);
    }

    #[test]
    fn curve_goes_down_with_the_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        curve_png(&[2.3, 2.0, 1.5, 1.0], 1, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let row_of = |x: u32| (0..320).find(|&y| *img.get_pixel(x, y) == BAR).unwrap();
        // Highest value at the top left, lowest at the bottom right.
        assert!(
            row_of(12) < row_of(320) && row_of(320) < row_of(627),
            "{} {} {}",
            row_of(12),
            row_of(320),
            row_of(627)
        );
    }

    #[test]
    fn histogram_bars_scale_with_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.png");
        histograms_png(&[vec![1, 4, 2]], Some(0.5), &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let filled = |b: u32| {
            (0..60)
                .filter(|&y| *img.get_pixel(10 + b * 8 + 4, 10 + y) == BAR)
                .count()
        };
        assert_eq!(filled(1), 58);
        assert!(filled(0) < filled(2) && filled(2) < filled(1));
    }
}
