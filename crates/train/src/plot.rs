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
/// relative to the row's tallest; rows share no scale.
pub fn histograms_png(rows: &[Vec<u64>], path: &Path) -> Result<()> {
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
    fn histogram_bars_scale_with_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.png");
        histograms_png(&[vec![1, 4, 2]], &path).unwrap();
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
