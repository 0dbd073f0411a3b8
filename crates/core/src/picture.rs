//! Profile pictures: content sniffing, size and dimension limits, and a small PNG
//! thumbnail.
//!
//! The bytes are untrusted (a user-chosen file, or later a peer's picture). The
//! format is decided by magic bytes only, the size and the header dimensions are
//! checked before any pixel is decoded, and decoding runs under `image::Limits`
//! so a decompression bomb cannot allocate without bound.

use std::fmt;
use std::io::Cursor;

use image::imageops::FilterType;
use image::{DynamicImage, ImageError, ImageFormat, ImageReader, Limits};

/// Largest accepted picture file.
pub const MAX_PICTURE_BYTES: usize = 5 * 1024 * 1024;
/// The thumbnail fits in a square of this many pixels per side.
pub const THUMBNAIL_EDGE: u32 = 96;
/// Largest accepted width and height, checked from the header before decoding.
pub const MAX_PICTURE_EDGE: u32 = 8192;
/// Most memory the decoder may allocate (an 8192x8192 RGBA8 image).
pub const MAX_DECODE_BYTES: u64 = MAX_PICTURE_EDGE as u64 * MAX_PICTURE_EDGE as u64 * 4;

/// A supported picture format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PictureFormat {
    Png,
    Jpeg,
    Webp,
}

impl PictureFormat {
    /// The conventional MIME type.
    pub fn mime_type(self) -> &'static str {
        match self {
            PictureFormat::Png => "image/png",
            PictureFormat::Jpeg => "image/jpeg",
            PictureFormat::Webp => "image/webp",
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            PictureFormat::Png => ImageFormat::Png,
            PictureFormat::Jpeg => ImageFormat::Jpeg,
            PictureFormat::Webp => ImageFormat::WebP,
        }
    }
}

impl fmt::Display for PictureFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PictureFormat::Png => "PNG",
            PictureFormat::Jpeg => "JPEG",
            PictureFormat::Webp => "WebP",
        })
    }
}

/// A checked profile picture.
#[derive(Clone, PartialEq, Eq)]
pub struct Picture {
    pub format: PictureFormat,
    pub width: u32,
    pub height: u32,
    /// The original file, unchanged.
    pub bytes: Vec<u8>,
    /// A PNG that fits in `THUMBNAIL_EDGE` x `THUMBNAIL_EDGE`, aspect ratio kept
    /// (never upscaled).
    pub thumbnail_png: Vec<u8>,
}

impl fmt::Debug for Picture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picture")
            .field("format", &self.format)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("bytes", &format_args!("{} bytes", self.bytes.len()))
            .field(
                "thumbnail_png",
                &format_args!("{} bytes", self.thumbnail_png.len()),
            )
            .finish()
    }
}

/// Why a picture was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PictureError {
    #[error("picture is empty (expected a PNG, JPEG or WebP image)")]
    Empty,
    #[error("picture is too large: {size} bytes (at most 5 MiB)")]
    TooLarge { size: usize },
    #[error("not a supported image: expected PNG, JPEG or WebP{}", detected_suffix(.detected))]
    Unsupported {
        /// The other image format the content looks like, if recognised (e.g. "GIF").
        detected: Option<String>,
    },
    #[error(
        "picture is too big: {width}x{height} pixels (at most {max}x{max})",
        max = MAX_PICTURE_EDGE
    )]
    Dimensions { width: u32, height: u32 },
    #[error("could not decode the {format} picture (corrupt or truncated?): {reason}")]
    Decode {
        format: PictureFormat,
        reason: String,
    },
    #[error("could not make a thumbnail of the picture: {0}")]
    Thumbnail(String),
}

fn detected_suffix(detected: &Option<String>) -> String {
    match detected {
        Some(name) => format!(" (this looks like {name})"),
        None => String::new(),
    }
}

/// Check `bytes` and make its thumbnail.
pub fn load_picture(bytes: Vec<u8>) -> Result<Picture, PictureError> {
    if bytes.is_empty() {
        return Err(PictureError::Empty);
    }
    if bytes.len() > MAX_PICTURE_BYTES {
        return Err(PictureError::TooLarge { size: bytes.len() });
    }
    let format = sniff(&bytes)?;
    let decode_error = |e: ImageError| PictureError::Decode {
        format,
        reason: e.to_string(),
    };

    // Header only: find the dimensions and refuse oversized images before decoding.
    let mut header = ImageReader::with_format(Cursor::new(bytes.as_slice()), format.image_format());
    header.limits(alloc_limits());
    let (width, height) = header.into_dimensions().map_err(decode_error)?;
    if width > MAX_PICTURE_EDGE || height > MAX_PICTURE_EDGE {
        return Err(PictureError::Dimensions { width, height });
    }
    if width == 0 || height == 0 {
        return Err(PictureError::Decode {
            format,
            reason: format!("the header says {width}x{height} pixels"),
        });
    }

    let mut reader = ImageReader::with_format(Cursor::new(bytes.as_slice()), format.image_format());
    reader.limits(decode_limits());
    let image = reader.decode().map_err(decode_error)?;
    if (image.width(), image.height()) != (width, height) {
        return Err(PictureError::Decode {
            format,
            reason: format!(
                "decoded {}x{} pixels but the header says {width}x{height}",
                image.width(),
                image.height()
            ),
        });
    }

    let thumbnail_png = thumbnail(&image)?;
    Ok(Picture {
        format,
        width,
        height,
        bytes,
        thumbnail_png,
    })
}

/// Decide the format from the magic bytes.
fn sniff(bytes: &[u8]) -> Result<PictureFormat, PictureError> {
    match image::guess_format(bytes) {
        Ok(ImageFormat::Png) => Ok(PictureFormat::Png),
        Ok(ImageFormat::Jpeg) => Ok(PictureFormat::Jpeg),
        Ok(ImageFormat::WebP) => Ok(PictureFormat::Webp),
        Ok(other) => Err(PictureError::Unsupported {
            detected: Some(format!("{other:?}").to_ascii_uppercase()),
        }),
        Err(_) => Err(PictureError::Unsupported {
            detected: is_heif(bytes).then(|| "HEIC".to_owned()),
        }),
    }
}

/// HEIC/HEIF (what iPhones save photos as): an ISO-BMFF `ftyp` box with a HEIF brand.
fn is_heif(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(b"ftyp")
        && bytes.get(8..12).is_some_and(|brand| {
            [
                b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1",
            ]
            .iter()
            .any(|b| brand == &b[..])
        })
}

fn alloc_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

fn decode_limits() -> Limits {
    let mut limits = alloc_limits();
    limits.max_image_width = Some(MAX_PICTURE_EDGE);
    limits.max_image_height = Some(MAX_PICTURE_EDGE);
    limits
}

/// Scale down (never up) to fit `THUMBNAIL_EDGE`, then encode as 8-bit PNG.
fn thumbnail(image: &DynamicImage) -> Result<Vec<u8>, PictureError> {
    let small = if image.width() <= THUMBNAIL_EDGE && image.height() <= THUMBNAIL_EDGE {
        image.clone()
    } else {
        image.resize(THUMBNAIL_EDGE, THUMBNAIL_EDGE, FilterType::Triangle)
    };
    let small = if small.color().has_alpha() {
        DynamicImage::ImageRgba8(small.to_rgba8())
    } else {
        DynamicImage::ImageRgb8(small.to_rgb8())
    };
    let mut png = Vec::new();
    small
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| PictureError::Thumbnail(e.to_string()))?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};
    use proptest::prelude::*;

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut out), format)
            .expect("encode test image");
        out
    }

    fn gradient(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        }))
    }

    fn thumb_dims(p: &Picture) -> (u32, u32) {
        assert_eq!(
            image::guess_format(&p.thumbnail_png).unwrap(),
            ImageFormat::Png
        );
        let t = image::load_from_memory_with_format(&p.thumbnail_png, ImageFormat::Png).unwrap();
        (t.width(), t.height())
    }

    #[test]
    fn png_is_loaded_and_thumbnailed() {
        let bytes = encode(gradient(200, 100), ImageFormat::Png);
        let p = load_picture(bytes.clone()).unwrap();
        assert_eq!(
            (p.format, p.width, p.height),
            (PictureFormat::Png, 200, 100)
        );
        assert_eq!(p.bytes, bytes);
        assert_eq!(thumb_dims(&p), (96, 48));
        assert!(format!("{p:?}").contains("bytes"));
    }

    #[test]
    fn png_with_alpha_keeps_alpha_in_thumbnail() {
        let img = DynamicImage::ImageRgba8(RgbaImage::from_pixel(300, 150, Rgba([1, 2, 3, 4])));
        let p = load_picture(encode(img, ImageFormat::Png)).unwrap();
        let t = image::load_from_memory(&p.thumbnail_png).unwrap();
        assert!(t.color().has_alpha());
        assert_eq!((t.width(), t.height()), (96, 48));
        assert_eq!(t.to_rgba8().get_pixel(10, 10), &Rgba([1, 2, 3, 4]));
    }

    #[test]
    fn jpeg_small_image_is_not_upscaled() {
        let p = load_picture(encode(gradient(50, 80), ImageFormat::Jpeg)).unwrap();
        assert_eq!((p.format, p.width, p.height), (PictureFormat::Jpeg, 50, 80));
        assert_eq!(thumb_dims(&p), (50, 80));
    }

    #[test]
    fn webp_square_and_extreme_aspect() {
        let p = load_picture(encode(gradient(300, 300), ImageFormat::WebP)).unwrap();
        assert_eq!(
            (p.format, p.width, p.height),
            (PictureFormat::Webp, 300, 300)
        );
        assert_eq!(thumb_dims(&p), (96, 96));
        let p = load_picture(encode(gradient(1, 500), ImageFormat::WebP)).unwrap();
        assert_eq!(thumb_dims(&p), (1, 96));
    }

    #[test]
    fn format_is_decided_by_content() {
        let png = encode(gradient(4, 4), ImageFormat::Png);
        assert_eq!(sniff(&png), Ok(PictureFormat::Png));
        assert_eq!(PictureFormat::Png.to_string(), "PNG");
        assert_eq!(PictureFormat::Webp.mime_type(), "image/webp");
    }

    #[test]
    fn random_bytes_are_not_an_image() {
        // A fixed xorshift stream: deterministic "random" bytes.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let e = load_picture(bytes).unwrap_err();
        assert_eq!(e, PictureError::Unsupported { detected: None });
        assert_eq!(
            e.to_string(),
            "not a supported image: expected PNG, JPEG or WebP"
        );
    }

    #[test]
    fn gif_and_heic_are_named() {
        let mut gif = b"GIF89a".to_vec();
        gif.extend_from_slice(&[1, 0, 1, 0, 0, 0, 0, 0x3b]);
        let e = load_picture(gif).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a supported image: expected PNG, JPEG or WebP (this looks like GIF)"
        );
        let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic".to_vec();
        let e = load_picture(heic).unwrap_err();
        assert_eq!(
            e,
            PictureError::Unsupported {
                detected: Some("HEIC".into())
            }
        );
    }

    #[test]
    fn size_limit() {
        let e = load_picture(vec![0x89; 6 * 1024 * 1024]).unwrap_err();
        assert_eq!(e, PictureError::TooLarge { size: 6_291_456 });
        assert_eq!(
            e.to_string(),
            "picture is too large: 6291456 bytes (at most 5 MiB)"
        );
        // Exactly at the limit is not "too large" (it is just not an image).
        assert!(matches!(
            load_picture(vec![0; MAX_PICTURE_BYTES]),
            Err(PictureError::Unsupported { .. })
        ));
        assert_eq!(load_picture(Vec::new()), Err(PictureError::Empty));
    }

    #[test]
    fn truncated_or_corrupt_images_are_decode_errors() {
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let good = encode(gradient(64, 64), format);
            for cut in [16, 40, good.len() / 2] {
                let e = load_picture(good[..cut].to_vec()).unwrap_err();
                assert!(
                    matches!(e, PictureError::Decode { .. }),
                    "{format:?} cut at {cut}: {e}"
                );
            }
        }
        let good = encode(gradient(64, 64), ImageFormat::Png);
        let e = load_picture(good[..good.len() / 2].to_vec()).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("could not decode the PNG picture (corrupt or truncated?): "));
    }

    #[test]
    fn oversized_dimensions_are_refused() {
        let e = load_picture(encode(gradient(9000, 1), ImageFormat::Png)).unwrap_err();
        assert_eq!(
            e,
            PictureError::Dimensions {
                width: 9000,
                height: 1
            }
        );
        assert_eq!(
            e.to_string(),
            "picture is too big: 9000x1 pixels (at most 8192x8192)"
        );
        // 8192 itself is fine.
        let p = load_picture(encode(gradient(8192, 1), ImageFormat::Png)).unwrap();
        assert_eq!(thumb_dims(&p), (96, 1));
    }

    /// A PNG whose header claims 20000x20000 but has one pixel of data: it must be
    /// refused from the header, before any decoding is attempted.
    #[test]
    fn decompression_bomb_header_is_refused_before_decoding() {
        let mut png = encode(gradient(1, 1), ImageFormat::Png);
        // Signature (8) + IHDR length (4) + "IHDR" (4), then width and height.
        assert_eq!(&png[12..16], b"IHDR");
        png[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            load_picture(png),
            Err(PictureError::Dimensions {
                width: 20_000,
                height: 20_000
            })
        );
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
            }
        }
        !crc
    }

    fn sample(format: ImageFormat) -> Vec<u8> {
        encode(gradient(24, 16), format)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = load_picture(bytes);
        }

        #[test]
        fn magic_prefix_with_garbage_never_panics(
            prefix in prop::sample::select(vec![
                b"\x89PNG\r\n\x1a\n".to_vec(),
                vec![0xff, 0xd8, 0xff],
                b"RIFF\x10\0\0\0WEBPVP8 ".to_vec(),
                b"RIFF\x10\0\0\0WEBPVP8L".to_vec(),
            ]),
            tail in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = prefix;
            bytes.extend(tail);
            let _ = load_picture(bytes);
        }

        #[test]
        fn mutated_real_images_never_panic(
            format in prop::sample::select(vec![ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP]),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = sample(format);
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let keep = cut.index(bytes.len()) + 1;
            bytes.truncate(keep);
            if let Ok(p) = load_picture(bytes) {
                prop_assert!(p.width <= MAX_PICTURE_EDGE && p.height <= MAX_PICTURE_EDGE);
                prop_assert!(!p.thumbnail_png.is_empty());
            }
        }
    }
}
