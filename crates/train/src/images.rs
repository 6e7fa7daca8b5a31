//! Reading a user's image for `train predict`: PNG or JPEG of any size,
//! grayscale, RGB or RGBA, decoded within memory limits (a small file that
//! claims huge dimensions is refused before anything is allocated), and
//! resized to CIFAR-10's 32x32, as `[3, 32, 32]` bytes.

use std::path::Path;

use anyhow::{Context, Result};
use image::{ImageReader, Limits};

/// Widest or tallest image decoded.
pub const MAX_SIDE: u32 = 8192;
/// Most memory one decoded image may take.
pub const MAX_DECODED_BYTES: u64 = 128 << 20;

/// The image at `path` as 32x32 RGB bytes in channel-height-width order.
/// Grayscale is spread over the three channels; an alpha channel is dropped.
pub fn read_32x32_rgb(path: &Path) -> Result<Vec<u8>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    anyhow::ensure!(
        size > 0,
        "{} is empty (0 bytes): not an image",
        path.display()
    );
    let mut reader = ImageReader::open(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| {
        let why = match &e {
            image::ImageError::Limits(_) => format!(
                "it is larger than this command decodes ({MAX_SIDE}x{MAX_SIDE} pixels, {} MiB); shrink it first",
                MAX_DECODED_BYTES >> 20
            ),
            image::ImageError::Unsupported(_) => format!("{e}; give a PNG or JPEG image"),
            _ => format!("{e}: the file is damaged or not a PNG or JPEG image"),
        };
        anyhow::anyhow!("cannot decode {}: {why}", path.display())
    })?;
    let img = img.to_rgb8();
    let img = if img.dimensions() == (32, 32) {
        img
    } else {
        image::imageops::resize(&img, 32, 32, image::imageops::FilterType::Triangle)
    };
    let mut pixels = Vec::with_capacity(3 * 32 * 32);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                pixels.push(img.get_pixel(x, y)[c]);
            }
        }
    }
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgba, RgbaImage};

    fn message(result: Result<Vec<u8>>) -> String {
        format!("{:#}", result.unwrap_err())
    }

    #[test]
    fn grayscale_and_rgba_become_rgb_of_the_same_colour() {
        let dir = tempfile::tempdir().unwrap();
        let gray = dir.path().join("gray.png");
        GrayImage::from_pixel(64, 48, Luma([200]))
            .save(&gray)
            .unwrap();
        let pixels = read_32x32_rgb(&gray).unwrap();
        assert_eq!(pixels.len(), 3072);
        assert!(pixels.iter().all(|&p| p == 200));
        let rgba = dir.path().join("rgba.png");
        RgbaImage::from_pixel(32, 32, Rgba([10, 20, 30, 0]))
            .save(&rgba)
            .unwrap();
        let pixels = read_32x32_rgb(&rgba).unwrap();
        assert_eq!((pixels[0], pixels[1024], pixels[2048]), (10, 20, 30));
    }

    #[test]
    fn empty_damaged_and_foreign_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.png");
        std::fs::write(&empty, b"").unwrap();
        assert!(message(read_32x32_rgb(&empty)).contains("empty.png is empty"));
        let text = dir.path().join("notes.jpg");
        std::fs::write(&text, b"not an image at all").unwrap();
        let msg = message(read_32x32_rgb(&text));
        assert!(
            msg.contains("cannot decode") && msg.contains("notes.jpg"),
            "{msg}"
        );
        // A real PNG cut in half.
        let whole = dir.path().join("whole.png");
        GrayImage::from_fn(40, 40, |x, y| Luma([(x * y) as u8]))
            .save(&whole)
            .unwrap();
        let bytes = std::fs::read(&whole).unwrap();
        let cut = dir.path().join("cut.png");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let msg = message(read_32x32_rgb(&cut));
        assert!(msg.contains("cut.png") && msg.contains("damaged"), "{msg}");
        let missing = message(read_32x32_rgb(&dir.path().join("none.png")));
        assert!(missing.contains("cannot read") && missing.contains("none.png"));
    }

    #[test]
    fn an_image_too_large_to_decode_is_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        // Wider than MAX_SIDE: refused from its header.
        let wide = dir.path().join("wide.png");
        GrayImage::new(MAX_SIDE + 1, 2).save(&wide).unwrap();
        let msg = message(read_32x32_rgb(&wide));
        assert!(msg.contains("larger than this command decodes"), "{msg}");
        // Within the sides but over the memory cap (8000 x 8000 x 4 bytes = 244 MiB),
        // in a file of a few hundred kilobytes: a decompression bomb.
        let bomb = dir.path().join("bomb.png");
        RgbaImage::new(8000, 8000).save(&bomb).unwrap();
        assert!(std::fs::metadata(&bomb).unwrap().len() < 2 << 20);
        let msg = message(read_32x32_rgb(&bomb));
        assert!(msg.contains("larger than this command decodes"), "{msg}");
    }
}
