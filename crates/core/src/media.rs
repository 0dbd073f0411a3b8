//! Audio and video files: the container sniffed by content, and the duration it states.
//!
//! The bytes are untrusted (any file a user picks, possibly many GiB). The format is decided
//! by magic bytes only, never by the file's name. Nothing here reads a whole file: the parsers
//! seek to the boxes, elements, chunks and pages they need and read each with a bound
//! ([`MAX_READ`]); every walk over boxes, elements or chunks stops after a fixed number of
//! steps; arithmetic on sizes and offsets is checked. A file that is truncated, corrupt or does
//! not state its duration gives `Ok(None)`; only the reader's own IO errors are errors.
//!
//! Supported: ISO BMFF (MP4, MOV, M4A, 3GP: `moov`/`mvhd`, or `mvex`/`mehd` for fragmented
//! files), Matroska and WebM (`Segment`/`Info`/`Duration` × `TimestampScale`), Ogg Opus and
//! Ogg Vorbis (the last page's granule position), WAV (`data` size / `fmt ` byte rate) and MP3
//! with a Xing/Info or VBRI header (frame count × samples per frame / sample rate).

use std::io::{Read, Seek, SeekFrom};

/// Most bytes read at once from a file (the largest is the tail searched for Ogg pages).
pub const MAX_READ: usize = 2 * OGG_MAX_PAGE;
/// Most boxes, elements or chunks visited in one walk over a level of a file.
const MAX_STEPS: usize = 4096;
/// Largest Ogg page: 27 header bytes, 255 lacing values, 255 segments of 255 bytes.
const OGG_MAX_PAGE: usize = 27 + 255 + 255 * 255;
/// Most `OggS` marks in the tail checked for a page (each costs a checksum).
const MAX_OGG_CANDIDATES: usize = 256;
/// Largest Matroska `Info` element read (it holds a few small values and titles).
const MAX_MATROSKA_INFO: u64 = 64 * 1024;
/// Largest EBML header read.
const MAX_EBML_HEADER: u64 = 4 * 1024;
/// How far past an ID3v2 tag the first MP3 frame is looked for.
const MP3_SYNC_WINDOW: usize = 4 * 1024;

/// What went wrong reading a media file: only the reader's IO.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("cannot read the media file: {0}")]
    Io(#[from] std::io::Error),
}

/// A container recognised by its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// ISO BMFF with a brand other than the ones below.
    Mp4,
    /// ISO BMFF with an `M4A `, `M4B ` or `M4P ` brand.
    M4a,
    /// ISO BMFF with a `3gp*` or `3g2*` brand.
    ThreeGp,
    /// QuickTime: brand `qt  `, or the old files with no `ftyp`.
    QuickTime,
    /// Matroska with DocType `webm`.
    WebM,
    /// Matroska with any other DocType.
    Matroska,
    /// Ogg whose first stream is Opus.
    OggOpus,
    /// Ogg whose first stream is Vorbis.
    OggVorbis,
    /// Ogg with some other first stream (its duration is not read).
    Ogg,
    /// RIFF/WAVE.
    Wav,
    /// MPEG audio (layer I, II or III), with or without an ID3v2 tag.
    Mp3,
}

impl Container {
    /// The conventional MIME type.
    pub fn mime_type(self) -> &'static str {
        match self {
            Container::Mp4 => "video/mp4",
            Container::M4a => "audio/mp4",
            Container::ThreeGp => "video/3gpp",
            Container::QuickTime => "video/quicktime",
            Container::WebM => "video/webm",
            Container::Matroska => "video/x-matroska",
            Container::OggOpus | Container::OggVorbis | Container::Ogg => "audio/ogg",
            Container::Wav => "audio/wav",
            Container::Mp3 => "audio/mpeg",
        }
    }
}

/// A media file's container and, where the container states it, its duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaInfo {
    pub container: Container,
    pub duration_ms: Option<u64>,
}

/// Sniffs `reader`'s container and reads the duration it states. `Ok(None)` if the content
/// is no container this module knows. Reads a few bounded pieces wherever they are.
pub fn probe<R: Read + Seek>(reader: &mut R) -> Result<Option<MediaInfo>, MediaError> {
    let mut src = Src::new(reader)?;
    let head = src.read(0, 16)?;
    let Some(container) = sniff(&mut src, &head)? else {
        return Ok(None);
    };
    let duration_ms = match container {
        Container::Mp4 | Container::M4a | Container::ThreeGp | Container::QuickTime => {
            mp4_duration(&mut src)?
        }
        Container::WebM | Container::Matroska => matroska_duration(&mut src)?,
        Container::OggOpus | Container::OggVorbis => ogg_duration(&mut src)?,
        Container::Ogg => None,
        Container::Wav => wav_duration(&mut src)?,
        Container::Mp3 => mp3_duration(&mut src)?,
    };
    Ok(Some(MediaInfo {
        container,
        duration_ms,
    }))
}

/// The duration `reader`'s container states, in milliseconds; `Ok(None)` if the format is
/// unknown or does not say.
pub fn duration_ms<R: Read + Seek>(reader: &mut R) -> Result<Option<u64>, MediaError> {
    Ok(probe(reader)?.and_then(|i| i.duration_ms))
}

/// A reader and its length; reads are bounded and never seek past the end.
struct Src<'a, R> {
    r: &'a mut R,
    len: u64,
}

impl<'a, R: Read + Seek> Src<'a, R> {
    fn new(r: &'a mut R) -> Result<Self, MediaError> {
        let len = r.seek(SeekFrom::End(0))?;
        Ok(Src { r, len })
    }

    /// Up to `max` (at most [`MAX_READ`]) bytes from `offset`; fewer at the end of the file.
    fn read(&mut self, offset: u64, max: usize) -> Result<Vec<u8>, MediaError> {
        if offset >= self.len {
            return Ok(Vec::new());
        }
        let want = (max.min(MAX_READ) as u64).min(self.len - offset);
        self.r.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(want as usize);
        Read::take(&mut *self.r, want).read_to_end(&mut buf)?;
        Ok(buf)
    }
}

fn bytes<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}
fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    bytes(b, at).map(u32::from_be_bytes)
}
fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    bytes(b, at).map(u64::from_be_bytes)
}
fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    bytes(b, at).map(u16::from_le_bytes)
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    bytes(b, at).map(u32::from_le_bytes)
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    bytes(b, at).map(u64::from_le_bytes)
}

/// `units` at `per_second` units a second, in milliseconds (`None` for a zero rate).
fn to_ms(units: u64, per_second: u64) -> Option<u64> {
    if per_second == 0 {
        return None;
    }
    u64::try_from(u128::from(units) * 1000 / u128::from(per_second)).ok()
}

fn sniff<R: Read + Seek>(
    src: &mut Src<'_, R>,
    head: &[u8],
) -> Result<Option<Container>, MediaError> {
    if head.get(0..4) == Some(b"RIFF") && head.get(8..12) == Some(b"WAVE") {
        return Ok(Some(Container::Wav));
    }
    if head.get(0..4) == Some(b"OggS") {
        return ogg_sniff(src);
    }
    if head.get(0..4) == Some(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return matroska_sniff(src);
    }
    if head.get(4..8) == Some(b"ftyp") {
        let brand = bytes::<4>(head, 8).unwrap_or_default();
        return Ok(Some(match &brand {
            b"qt  " => Container::QuickTime,
            b"M4A " | b"M4B " | b"M4P " => Container::M4a,
            [b'3', b'g', b'p' | b'2', _] => Container::ThreeGp,
            _ => Container::Mp4,
        }));
    }
    if head.get(0..3) == Some(b"ID3") || mp3_frame(head, 0).is_some() {
        return Ok(Some(Container::Mp3));
    }
    // Old QuickTime files start with a `moov`, `mdat`, `wide`, `free` or `skip` atom and no
    // `ftyp`: accept them only if the first atom's size fits the file.
    if let (Some(size), Some(kind)) = (be_u32(head, 0), bytes::<4>(head, 4)) {
        let known = matches!(&kind, b"moov" | b"mdat" | b"wide" | b"free" | b"skip");
        if known && size >= 8 && u64::from(size) <= src.len {
            return Ok(Some(Container::QuickTime));
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// ISO BMFF (MP4, MOV, M4A, 3GP)

struct Mp4Box {
    kind: [u8; 4],
    body: u64,
    end: u64,
}

/// The box at `pos`, which ends by `limit` (a box claiming more is cut at `limit`).
fn mp4_box<R: Read + Seek>(
    src: &mut Src<'_, R>,
    pos: u64,
    limit: u64,
) -> Result<Option<Mp4Box>, MediaError> {
    let h = src.read(pos, 16)?;
    let (Some(size32), Some(kind)) = (be_u32(&h, 0), bytes::<4>(&h, 4)) else {
        return Ok(None);
    };
    let (header, size) = match size32 {
        0 => (8, limit.saturating_sub(pos)),
        1 => match be_u64(&h, 8) {
            Some(s) => (16, s),
            None => return Ok(None),
        },
        n => (8, u64::from(n)),
    };
    if size < header {
        return Ok(None);
    }
    let Some(end) = pos.checked_add(size) else {
        return Ok(None);
    };
    Ok(Some(Mp4Box {
        kind,
        body: pos + header,
        end: end.min(limit),
    }))
}

/// The first box of type `kind` among those from `start` to `end`.
fn mp4_find<R: Read + Seek>(
    src: &mut Src<'_, R>,
    start: u64,
    end: u64,
    kind: &[u8; 4],
) -> Result<Option<Mp4Box>, MediaError> {
    let mut pos = start;
    for _ in 0..MAX_STEPS {
        if pos >= end {
            break;
        }
        let Some(b) = mp4_box(src, pos, end)? else {
            break;
        };
        if &b.kind == kind {
            return Ok(Some(b));
        }
        pos = b.end;
    }
    Ok(None)
}

fn mp4_duration<R: Read + Seek>(src: &mut Src<'_, R>) -> Result<Option<u64>, MediaError> {
    let len = src.len;
    let Some(moov) = mp4_find(src, 0, len, b"moov")? else {
        return Ok(None);
    };
    let Some(mvhd) = mp4_find(src, moov.body, moov.end, b"mvhd")? else {
        return Ok(None);
    };
    let b = src.read(mvhd.body, 32)?;
    let (timescale, duration) = match b.first() {
        Some(0) => (be_u32(&b, 12), be_u32(&b, 16).map(u64::from)),
        Some(1) => (be_u32(&b, 20), be_u64(&b, 24)),
        _ => return Ok(None),
    };
    let (Some(timescale), Some(duration)) = (timescale, duration) else {
        return Ok(None);
    };
    let unknown =
        (b.first() == Some(&0) && duration == u64::from(u32::MAX)) || duration == u64::MAX;
    if unknown {
        return Ok(None);
    }
    if duration != 0 {
        return Ok(to_ms(duration, timescale.into()));
    }
    // A fragmented file: the movie header says 0, `mvex`/`mehd` may say the whole length.
    let Some(mvex) = mp4_find(src, moov.body, moov.end, b"mvex")? else {
        return Ok(None);
    };
    let Some(mehd) = mp4_find(src, mvex.body, mvex.end, b"mehd")? else {
        return Ok(None);
    };
    let b = src.read(mehd.body, 12)?;
    let fragment = match b.first() {
        Some(0) => be_u32(&b, 4).map(u64::from),
        Some(1) => be_u64(&b, 4),
        _ => None,
    };
    Ok(fragment
        .filter(|&d| d != 0)
        .and_then(|d| to_ms(d, timescale.into())))
}

// ---------------------------------------------------------------------------------------------
// Matroska and WebM (EBML)

const EBML_HEADER: u32 = 0x1A45_DFA3;
const EBML_DOCTYPE: u32 = 0x4282;
const MKV_SEGMENT: u32 = 0x1853_8067;
const MKV_INFO: u32 = 0x1549_A966;
const MKV_TIMESTAMP_SCALE: u32 = 0x2A_D7B1;
const MKV_DURATION: u32 = 0x4489;

/// An element's ID, size (`None`: unknown) and where its body starts, parsed at `at`.
fn ebml_element(b: &[u8], at: usize) -> Option<(u32, Option<u64>, usize)> {
    let first = *b.get(at)?;
    let id_len = first.leading_zeros() as usize + 1;
    if id_len > 4 {
        return None;
    }
    let mut id = 0u32;
    for i in 0..id_len {
        id = (id << 8) | u32::from(*b.get(at.checked_add(i)?)?);
    }
    let at = at.checked_add(id_len)?;
    let first = *b.get(at)?;
    let size_len = first.leading_zeros() as usize + 1;
    if size_len > 8 {
        return None;
    }
    let mut size = u64::from(first) & (0xFF >> size_len);
    for i in 1..size_len {
        size = (size << 8) | u64::from(*b.get(at.checked_add(i)?)?);
    }
    let all_ones = (1u64 << (7 * size_len)) - 1;
    let size = (size != all_ones).then_some(size);
    Some((id, size, at.checked_add(size_len)?))
}

/// Calls `f` with each child (ID, body) of the element body `b`, until it returns `Some` or a
/// child is unknown-sized or runs past `b`.
fn ebml_children<T>(b: &[u8], mut f: impl FnMut(u32, &[u8]) -> Option<T>) -> Option<T> {
    let mut at = 0;
    for _ in 0..MAX_STEPS {
        let (id, size, body) = ebml_element(b, at)?;
        let end = body.checked_add(usize::try_from(size?).ok()?)?;
        if let Some(t) = f(id, b.get(body..end)?) {
            return Some(t);
        }
        at = end;
    }
    None
}

/// The EBML header: its DocType decides WebM or Matroska; also where the header ends.
fn ebml_header<R: Read + Seek>(
    src: &mut Src<'_, R>,
) -> Result<Option<(Container, u64)>, MediaError> {
    let h = src.read(0, MAX_EBML_HEADER as usize + 16)?;
    let Some((EBML_HEADER, Some(size), body)) = ebml_element(&h, 0) else {
        return Ok(None);
    };
    if size > MAX_EBML_HEADER {
        return Ok(None);
    }
    let end = body + size as usize;
    let doc_type = h
        .get(body..end)
        .and_then(|b| ebml_children(b, |id, v| (id == EBML_DOCTYPE).then(|| v.to_vec())));
    let container = match doc_type.as_deref() {
        Some(b"webm") => Container::WebM,
        _ => Container::Matroska,
    };
    Ok(Some((container, end as u64)))
}

fn matroska_sniff<R: Read + Seek>(src: &mut Src<'_, R>) -> Result<Option<Container>, MediaError> {
    // The magic alone says EBML; a header that cannot be read is still Matroska's.
    Ok(Some(
        ebml_header(src)?.map_or(Container::Matroska, |(c, _)| c),
    ))
}

fn matroska_duration<R: Read + Seek>(src: &mut Src<'_, R>) -> Result<Option<u64>, MediaError> {
    let Some((_, header_end)) = ebml_header(src)? else {
        return Ok(None);
    };
    let h = src.read(header_end, 12)?;
    let Some((MKV_SEGMENT, size, body)) = ebml_element(&h, 0) else {
        return Ok(None);
    };
    let start = header_end + body as u64;
    // An unknown-sized Segment (a live recording) runs to the end of the file.
    let end = size
        .and_then(|s| start.checked_add(s))
        .map_or(src.len, |e| e.min(src.len));
    let mut pos = start;
    for _ in 0..MAX_STEPS {
        if pos >= end {
            break;
        }
        let h = src.read(pos, 12)?;
        // An unknown-sized child (a live Cluster) cannot be stepped over.
        let Some((id, Some(size), body)) = ebml_element(&h, 0) else {
            return Ok(None);
        };
        let body = pos + body as u64;
        if id == MKV_INFO {
            if size > MAX_MATROSKA_INFO {
                return Ok(None);
            }
            let info = src.read(body, size as usize)?;
            return Ok(matroska_info_duration(&info));
        }
        let Some(next) = body.checked_add(size) else {
            return Ok(None);
        };
        pos = next;
    }
    Ok(None)
}

fn matroska_info_duration(info: &[u8]) -> Option<u64> {
    let mut scale: u64 = 1_000_000;
    let mut duration: Option<f64> = None;
    ebml_children(info, |id, v| {
        match id {
            MKV_TIMESTAMP_SCALE if (1..=8).contains(&v.len()) => {
                scale = v.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            }
            MKV_DURATION => {
                duration = match v.len() {
                    4 => bytes::<4>(v, 0).map(|b| f64::from(f32::from_be_bytes(b))),
                    8 => bytes::<8>(v, 0).map(f64::from_be_bytes),
                    _ => None,
                };
            }
            _ => {}
        }
        None::<()>
    });
    let ms = duration? * scale as f64 / 1_000_000.0;
    // `as` saturates, but a duration past a million years is no duration.
    (ms.is_finite() && (0.0..1e16).contains(&ms) && scale != 0).then(|| ms.round() as u64)
}

// ---------------------------------------------------------------------------------------------
// Ogg (Opus, Vorbis)

struct OggPage<'a> {
    granule: u64,
    serial: u32,
    /// The page's body: its packets (or pieces of them) one after another.
    body: &'a [u8],
    /// The lacing values.
    lacing: &'a [u8],
}

/// The complete page at `at` in `b` with a valid checksum (of stream `want_serial` if given), if
/// there is one.
fn ogg_page(b: &[u8], at: usize, want_serial: Option<u32>) -> Option<OggPage<'_>> {
    let p = b.get(at..)?;
    if p.get(0..4)? != b"OggS" || *p.get(4)? != 0 {
        return None;
    }
    let granule = le_u64(p, 6)?;
    let serial = le_u32(p, 14)?;
    if want_serial.is_some_and(|s| s != serial) {
        return None;
    }
    let crc = le_u32(p, 22)?;
    let segments = usize::from(*p.get(26)?);
    let lacing = p.get(27..27 + segments)?;
    let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
    let page_len = 27 + segments + body_len;
    let page = p.get(..page_len)?;
    if ogg_crc(page) != crc {
        return None;
    }
    Some(OggPage {
        granule,
        serial,
        body: page.get(27 + segments..)?,
        lacing,
    })
}

/// The Ogg CRC-32 (polynomial 0x04C11DB7, not reflected, initial 0) of a page, its CRC field
/// taken as zero.
fn ogg_crc(page: &[u8]) -> u32 {
    let mut crc = 0u32;
    for (i, &byte) in page.iter().enumerate() {
        let byte = if (22..26).contains(&i) { 0 } else { byte };
        crc = (crc << 8) ^ OGG_CRC_TABLE[usize::from((crc >> 24) as u8 ^ byte)];
    }
    crc
}

const OGG_CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The first stream's codec: Opus (with its pre-skip) or Vorbis (with its sample rate).
enum OggCodec {
    Opus { pre_skip: u16 },
    Vorbis { rate: u32 },
    Other,
}

/// The first page: its stream's serial number and codec.
fn ogg_first<R: Read + Seek>(src: &mut Src<'_, R>) -> Result<Option<(u32, OggCodec)>, MediaError> {
    let head = src.read(0, OGG_MAX_PAGE)?;
    let Some(page) = ogg_page(&head, 0, None) else {
        return Ok(None);
    };
    // The first packet: lacing values up to the first one under 255.
    let first_len: usize = page
        .lacing
        .iter()
        .scan(true, |more, &l| {
            let take = *more;
            *more = l == 255;
            take.then_some(usize::from(l))
        })
        .sum();
    let packet = page.body.get(..first_len).unwrap_or(page.body);
    let codec = if packet.starts_with(b"OpusHead") {
        match le_u16(packet, 10) {
            Some(pre_skip) => OggCodec::Opus { pre_skip },
            None => OggCodec::Other,
        }
    } else if packet.starts_with(b"\x01vorbis") {
        match le_u32(packet, 12) {
            Some(rate) => OggCodec::Vorbis { rate },
            None => OggCodec::Other,
        }
    } else {
        OggCodec::Other
    };
    Ok(Some((page.serial, codec)))
}

fn ogg_sniff<R: Read + Seek>(src: &mut Src<'_, R>) -> Result<Option<Container>, MediaError> {
    Ok(Some(match ogg_first(src)? {
        Some((_, OggCodec::Opus { .. })) => Container::OggOpus,
        Some((_, OggCodec::Vorbis { .. })) => Container::OggVorbis,
        _ => Container::Ogg,
    }))
}

fn ogg_duration<R: Read + Seek>(src: &mut Src<'_, R>) -> Result<Option<u64>, MediaError> {
    let Some((serial, codec)) = ogg_first(src)? else {
        return Ok(None);
    };
    // The last complete page of the stream lies in the last two page lengths of the file.
    let start = src.len.saturating_sub(MAX_READ as u64);
    let tail = src.read(start, MAX_READ)?;
    let mut granule = None;
    let mut at = tail.len();
    for _ in 0..MAX_OGG_CANDIDATES {
        let Some(found) = tail.get(..at).and_then(|t| memrfind(t, b"OggS")) else {
            break;
        };
        if let Some(page) = ogg_page(&tail, found, Some(serial)) {
            // -1: no packet ends on this page.
            if page.granule != u64::MAX {
                granule = Some(page.granule);
                break;
            }
        }
        at = found;
    }
    let Some(granule) = granule.filter(|&g| g != 0 && g <= i64::MAX as u64) else {
        return Ok(None);
    };
    Ok(match codec {
        OggCodec::Opus { pre_skip } => to_ms(granule.saturating_sub(pre_skip.into()), 48_000),
        OggCodec::Vorbis { rate } => to_ms(granule, rate.into()),
        OggCodec::Other => None,
    })
}

/// Where the last `needle` starts in `hay`.
fn memrfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// WAV

fn wav_duration<R: Read + Seek>(src: &mut Src<'_, R>) -> Result<Option<u64>, MediaError> {
    let mut byte_rate = None;
    let mut data_len = None;
    let mut pos: u64 = 12;
    for _ in 0..MAX_STEPS {
        let h = src.read(pos, 8)?;
        let (Some(id), Some(size)) = (bytes::<4>(&h, 0), le_u32(&h, 4)) else {
            break;
        };
        let body = pos + 8;
        match &id {
            b"fmt " => byte_rate = le_u32(&src.read(body, 16)?, 8),
            // A recording never finished may say 0 or 0xFFFFFFFF: count what is there.
            b"data" => data_len = Some(u64::from(size).min(src.len.saturating_sub(body))),
            _ => {}
        }
        if let (Some(rate), Some(len)) = (byte_rate, data_len) {
            return Ok(to_ms(len, rate.into()).filter(|&ms| ms != 0));
        }
        pos = body + u64::from(size) + u64::from(size & 1);
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// MP3

struct Mp3Frame {
    /// MPEG-1 (else 2 or 2.5).
    mpeg1: bool,
    mono: bool,
    sample_rate: u32,
    samples: u32,
}

/// The MPEG audio frame header at `at`, if it is a valid one.
fn mp3_frame(b: &[u8], at: usize) -> Option<Mp3Frame> {
    let h = bytes::<4>(b, at)?;
    if h[0] != 0xFF || h[1] & 0xE0 != 0xE0 {
        return None;
    }
    let version = (h[1] >> 3) & 3; // 0: 2.5, 1: reserved, 2: 2, 3: 1
    let layer = (h[1] >> 1) & 3; // 1: III, 2: II, 3: I
    let bitrate = h[2] >> 4;
    let rate_index = (h[2] >> 2) & 3;
    if version == 1 || layer == 0 || bitrate == 15 || rate_index == 3 {
        return None;
    }
    let base = [44_100, 48_000, 32_000][usize::from(rate_index)];
    let sample_rate = match version {
        3 => base,
        2 => base / 2,
        _ => base / 4,
    };
    let samples = match (layer, version) {
        (3, _) => 384,
        (2, _) | (1, 3) => 1152,
        _ => 576,
    };
    Some(Mp3Frame {
        mpeg1: version == 3,
        mono: h[3] >> 6 == 3,
        sample_rate,
        samples,
    })
}

fn mp3_duration<R: Read + Seek>(src: &mut Src<'_, R>) -> Result<Option<u64>, MediaError> {
    let head = src.read(0, 10)?;
    let mut start: u64 = 0;
    if head.get(0..3) == Some(b"ID3") {
        let Some(size) = head.get(6..10) else {
            return Ok(None);
        };
        if size.iter().any(|&b| b & 0x80 != 0) {
            return Ok(None);
        }
        let size = size.iter().fold(0u64, |acc, &b| (acc << 7) | u64::from(b));
        let footer = if head.get(5).is_some_and(|f| f & 0x10 != 0) {
            10
        } else {
            0
        };
        start = 10 + size + footer;
    }
    let window = src.read(start, MP3_SYNC_WINDOW)?;
    let Some((at, frame)) = (0..window.len()).find_map(|i| mp3_frame(&window, i).map(|f| (i, f)))
    else {
        return Ok(None);
    };
    let f = src.read(start + at as u64, 64)?;
    let side_info = match (frame.mpeg1, frame.mono) {
        (true, true) => 17,
        (true, false) => 32,
        (false, true) => 9,
        (false, false) => 17,
    };
    let xing = 4 + side_info;
    let frames = match f.get(xing..xing + 4) {
        Some(b"Xing" | b"Info") => match be_u32(&f, xing + 4) {
            Some(flags) if flags & 1 != 0 => be_u32(&f, xing + 8),
            _ => None,
        },
        _ if f.get(36..40) == Some(b"VBRI") => be_u32(&f, 36 + 14),
        _ => None,
    };
    Ok(frames.filter(|&n| n != 0).and_then(|n| {
        to_ms(
            u64::from(n) * u64::from(frame.samples),
            frame.sample_rate.into(),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn probe_bytes(b: &[u8]) -> Option<MediaInfo> {
        probe(&mut Cursor::new(b)).expect("a cursor never fails")
    }

    fn duration(b: &[u8]) -> Option<u64> {
        probe_bytes(b).and_then(|i| i.duration_ms)
    }

    // --- fixtures, built by hand ---

    fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }

    fn mvhd_v0(timescale: u32, duration: u32) -> Vec<u8> {
        let mut body = vec![0u8; 4 + 8]; // version, flags, creation, modification
        body.extend_from_slice(&timescale.to_be_bytes());
        body.extend_from_slice(&duration.to_be_bytes());
        body.extend_from_slice(&[0u8; 80]);
        mp4_box(b"mvhd", &body)
    }

    fn mvhd_v1(timescale: u32, duration: u64) -> Vec<u8> {
        let mut body = vec![1, 0, 0, 0];
        body.extend_from_slice(&[0u8; 16]);
        body.extend_from_slice(&timescale.to_be_bytes());
        body.extend_from_slice(&duration.to_be_bytes());
        body.extend_from_slice(&[0u8; 80]);
        mp4_box(b"mvhd", &body)
    }

    fn ftyp(brand: &[u8; 4]) -> Vec<u8> {
        let mut body = brand.to_vec();
        body.extend_from_slice(&[0, 0, 2, 0]);
        body.extend_from_slice(b"isommp41");
        mp4_box(b"ftyp", &body)
    }

    /// ftyp, mdat, then moov (as a camera writes it): 42.5 s.
    fn mp4_fixture() -> Vec<u8> {
        let mut f = ftyp(b"isom");
        f.extend(mp4_box(b"mdat", &[0xAB; 100]));
        let mut moov_body = mp4_box(b"udta", &[1, 2, 3]);
        moov_body.extend(mvhd_v0(1000, 42_500));
        f.extend(mp4_box(b"moov", &moov_body));
        f
    }

    fn ebml(id: u32, body: &[u8]) -> Vec<u8> {
        let mut b: Vec<u8> = id
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|&x| x == 0)
            .collect();
        // An 8-byte size, as some muxers write it.
        b.push(0x01);
        b.extend_from_slice(&(body.len() as u64).to_be_bytes()[1..]);
        b.extend_from_slice(body);
        b
    }

    fn ebml_head(doc_type: &[u8]) -> Vec<u8> {
        let mut h = ebml(0x4286, &[1]);
        h.extend(ebml(EBML_DOCTYPE, doc_type));
        ebml(EBML_HEADER, &h)
    }

    /// WebM: 12.345 s as an 8-byte float in a 1 ms timescale, after a SeekHead.
    fn webm_fixture() -> Vec<u8> {
        let mut info = ebml(MKV_TIMESTAMP_SCALE, &[0x0F, 0x42, 0x40]);
        info.extend(ebml(0x4D80, b"handmade"));
        info.extend(ebml(MKV_DURATION, &12_345.0f64.to_be_bytes()));
        let mut seg = ebml(0x114D_9B74, &[0xEC, 0x81, 0x00]);
        seg.extend(ebml(MKV_INFO, &info));
        seg.extend(ebml(0x1F43_B675, &[0u8; 50]));
        let mut f = ebml_head(b"webm");
        f.extend(ebml(MKV_SEGMENT, &seg));
        f
    }

    fn ogg_page_bytes(serial: u32, seq: u32, granule: u64, flags: u8, packet: &[u8]) -> Vec<u8> {
        let mut lacing = vec![255u8; packet.len() / 255];
        lacing.push((packet.len() % 255) as u8);
        let mut p = b"OggS".to_vec();
        p.push(0);
        p.push(flags);
        p.extend_from_slice(&granule.to_le_bytes());
        p.extend_from_slice(&serial.to_le_bytes());
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&[0; 4]);
        p.push(lacing.len() as u8);
        p.extend_from_slice(&lacing);
        p.extend_from_slice(packet);
        let crc = ogg_crc(&p);
        p[22..26].copy_from_slice(&crc.to_le_bytes());
        p
    }

    /// Opus: pre-skip 312, last granule 312 + 48000 * 3.5 = 3.5 s; a second stream's page
    /// (another serial) after it must be ignored.
    fn opus_fixture() -> Vec<u8> {
        let mut head = b"OpusHead".to_vec();
        head.push(1); // version
        head.push(1); // channels
        head.extend_from_slice(&312u16.to_le_bytes());
        head.extend_from_slice(&16_000u32.to_le_bytes());
        head.extend_from_slice(&[0, 0, 0]);
        let mut f = ogg_page_bytes(7, 0, 0, 2, &head);
        f.extend(ogg_page_bytes(7, 1, 0, 0, b"OpusTags\0\0\0\0\0\0\0\0"));
        f.extend(ogg_page_bytes(7, 2, 312 + 48_000, 0, &[0x55; 300]));
        f.extend(ogg_page_bytes(7, 3, 312 + 168_000, 4, &[0x66; 600]));
        f.extend(ogg_page_bytes(9, 0, 999_999_999, 4, &[0x77; 20]));
        f
    }

    /// Vorbis at 44.1 kHz: 2 s.
    fn vorbis_fixture() -> Vec<u8> {
        let mut id = b"\x01vorbis".to_vec();
        id.extend_from_slice(&0u32.to_le_bytes());
        id.push(2);
        id.extend_from_slice(&44_100u32.to_le_bytes());
        id.extend_from_slice(&[0; 13]);
        let mut f = ogg_page_bytes(1, 0, 0, 2, &id);
        f.extend(ogg_page_bytes(1, 1, 88_200, 4, &[0x11; 1000]));
        f
    }

    /// 16-bit stereo 8 kHz PCM (32 000 bytes a second), a LIST chunk before fmt: 1.5 s.
    fn wav_fixture() -> Vec<u8> {
        let mut body = b"WAVE".to_vec();
        body.extend_from_slice(b"LIST");
        body.extend_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(b"abc\0"); // odd size, padded
        body.extend_from_slice(b"fmt ");
        body.extend_from_slice(&16u32.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&2u16.to_le_bytes());
        body.extend_from_slice(&8_000u32.to_le_bytes());
        body.extend_from_slice(&32_000u32.to_le_bytes());
        body.extend_from_slice(&4u16.to_le_bytes());
        body.extend_from_slice(&16u16.to_le_bytes());
        body.extend_from_slice(b"data");
        body.extend_from_slice(&48_000u32.to_le_bytes());
        body.extend_from_slice(&vec![0u8; 48_000]);
        let mut f = b"RIFF".to_vec();
        f.extend_from_slice(&(body.len() as u32).to_le_bytes());
        f.extend(body);
        f
    }

    /// An ID3v2 tag, then an MPEG-1 layer III stereo 44.1 kHz frame with a Xing header of 1000
    /// frames: 1000 * 1152 / 44100 s = 26 122 ms.
    fn mp3_fixture() -> Vec<u8> {
        let mut f = b"ID3\x03\x00\x00\x00\x00\x00\x0A".to_vec();
        f.extend_from_slice(&[0u8; 10]);
        let mut frame = vec![0xFF, 0xFB, 0x90, 0x00];
        frame.extend_from_slice(&[0u8; 32]);
        frame.extend_from_slice(b"Xing");
        frame.extend_from_slice(&1u32.to_be_bytes());
        frame.extend_from_slice(&1000u32.to_be_bytes());
        frame.resize(417, 0);
        f.extend(frame);
        f
    }

    fn fixtures() -> Vec<Vec<u8>> {
        vec![
            mp4_fixture(),
            webm_fixture(),
            opus_fixture(),
            vorbis_fixture(),
            wav_fixture(),
            mp3_fixture(),
        ]
    }

    // --- each format ---

    #[test]
    fn mp4_with_moov_after_mdat() {
        let info = probe_bytes(&mp4_fixture()).unwrap();
        assert_eq!(info.container, Container::Mp4);
        assert_eq!(info.duration_ms, Some(42_500));
    }

    #[test]
    fn mp4_brands_and_version_1_and_64_bit_sizes() {
        // M4A, a 64-bit mdat size, mvhd version 1 at 44.1 kHz: 10 s.
        let mut f = ftyp(b"M4A ");
        let mut mdat = 1u32.to_be_bytes().to_vec();
        mdat.extend_from_slice(b"mdat");
        mdat.extend_from_slice(&(16u64 + 40).to_be_bytes());
        mdat.extend_from_slice(&[0; 40]);
        f.extend(mdat);
        f.extend(mp4_box(b"moov", &mvhd_v1(44_100, 441_000)));
        let info = probe_bytes(&f).unwrap();
        assert_eq!(info.container, Container::M4a);
        assert_eq!(info.container.mime_type(), "audio/mp4");
        assert_eq!(info.duration_ms, Some(10_000));

        let mut qt = ftyp(b"qt  ");
        qt.extend(mp4_box(b"moov", &mvhd_v0(600, 600 * 61)));
        let info = probe_bytes(&qt).unwrap();
        assert_eq!(info.container, Container::QuickTime);
        assert_eq!(info.duration_ms, Some(61_000));

        let mut g = ftyp(b"3gp4");
        // moov last with size 0: to the end of the file.
        let mut moov = 0u32.to_be_bytes().to_vec();
        moov.extend_from_slice(b"moov");
        moov.extend(mvhd_v0(1000, 7));
        g.extend(moov);
        let info = probe_bytes(&g).unwrap();
        assert_eq!(info.container, Container::ThreeGp);
        assert_eq!(info.duration_ms, Some(7));

        // An old QuickTime file with no ftyp.
        let old = mp4_box(b"moov", &mvhd_v0(1000, 2_000));
        let info = probe_bytes(&old).unwrap();
        assert_eq!(info.container, Container::QuickTime);
        assert_eq!(info.duration_ms, Some(2_000));
    }

    #[test]
    fn mp4_unknown_zero_and_fragmented_durations() {
        let mut f = ftyp(b"isom");
        f.extend(mp4_box(b"moov", &mvhd_v0(1000, u32::MAX)));
        assert_eq!(duration(&f), None, "all ones is unknown");

        let mut f = ftyp(b"isom");
        f.extend(mp4_box(b"moov", &mvhd_v0(0, 5000)));
        assert_eq!(duration(&f), None, "no timescale");

        let mut f = ftyp(b"iso6");
        f.extend(mp4_box(b"moov", &mvhd_v0(1000, 0)));
        assert_eq!(duration(&f), None, "fragmented without mehd");

        let mut mehd = vec![0, 0, 0, 0];
        mehd.extend_from_slice(&9_000u32.to_be_bytes());
        let mut moov = mvhd_v0(1000, 0);
        moov.extend(mp4_box(b"mvex", &mp4_box(b"mehd", &mehd)));
        let mut f = ftyp(b"iso6");
        f.extend(mp4_box(b"moov", &moov));
        assert_eq!(duration(&f), Some(9_000), "fragmented with mehd");

        // A huge 64-bit size does not overflow.
        let mut f = ftyp(b"isom");
        f.extend_from_slice(&1u32.to_be_bytes());
        f.extend_from_slice(b"mdat");
        f.extend_from_slice(&u64::MAX.to_be_bytes());
        f.extend(mp4_box(b"moov", &mvhd_v0(1000, 1)));
        assert_eq!(duration(&f), None);
    }

    #[test]
    fn webm_and_matroska() {
        let info = probe_bytes(&webm_fixture()).unwrap();
        assert_eq!(info.container, Container::WebM);
        assert_eq!(info.duration_ms, Some(12_345));

        // Matroska, 4-byte float, default timescale, unknown-sized Segment: 2.5 s.
        let mut f = ebml_head(b"matroska");
        f.extend_from_slice(&MKV_SEGMENT.to_be_bytes());
        f.push(0xFF);
        f.extend(ebml(
            MKV_INFO,
            &ebml(MKV_DURATION, &2_500.0f32.to_be_bytes()),
        ));
        let info = probe_bytes(&f).unwrap();
        assert_eq!(info.container, Container::Matroska);
        assert_eq!(info.duration_ms, Some(2_500));

        // A timescale of 1 µs: Duration counts microseconds.
        let mut info = ebml(MKV_TIMESTAMP_SCALE, &1_000u32.to_be_bytes());
        info.extend(ebml(MKV_DURATION, &3_000_000.0f64.to_be_bytes()));
        let mut f = ebml_head(b"webm");
        f.extend(ebml(MKV_SEGMENT, &ebml(MKV_INFO, &info)));
        assert_eq!(duration(&f), Some(3_000));
    }

    #[test]
    fn webm_without_duration_or_behind_an_unknown_sized_cluster_is_none() {
        // A live recording: Info has no Duration.
        let mut f = ebml_head(b"webm");
        f.extend(ebml(
            MKV_SEGMENT,
            &ebml(MKV_INFO, &ebml(MKV_TIMESTAMP_SCALE, &[0x0F, 0x42, 0x40])),
        ));
        assert_eq!(duration(&f), None);

        // An unknown-sized Cluster before Info: stop.
        let mut seg = 0x1F43_B675u32.to_be_bytes().to_vec();
        seg.push(0xFF);
        seg.extend_from_slice(&[0xA3, 0x81, 0x00]);
        let mut f = ebml_head(b"webm");
        f.extend(ebml(MKV_SEGMENT, &seg));
        assert_eq!(duration(&f), None);

        // NaN and negative durations.
        for d in [f64::NAN, -1.0, f64::INFINITY, 1e300] {
            let mut f = ebml_head(b"webm");
            f.extend(ebml(
                MKV_SEGMENT,
                &ebml(MKV_INFO, &ebml(MKV_DURATION, &d.to_be_bytes())),
            ));
            assert_eq!(duration(&f), None, "{d}");
        }
    }

    #[test]
    fn ogg_opus_and_vorbis() {
        let info = probe_bytes(&opus_fixture()).unwrap();
        assert_eq!(info.container, Container::OggOpus);
        assert_eq!(info.duration_ms, Some(3_500));

        let info = probe_bytes(&vorbis_fixture()).unwrap();
        assert_eq!(info.container, Container::OggVorbis);
        assert_eq!(info.duration_ms, Some(2_000));
    }

    #[test]
    fn ogg_skips_a_torn_last_page_and_bad_checksums() {
        let f = opus_fixture();
        // Cut the other stream off, and the last Opus page in the middle: the page before it.
        let other = ogg_page_bytes(9, 0, 999_999_999, 4, &[0x77; 20]).len();
        let cut = &f[..f.len() - other - 100];
        assert_eq!(duration(cut), Some(1_000));

        let mut bad = vorbis_fixture();
        let n = bad.len();
        bad[n - 1] ^= 1; // the last page's checksum no longer holds
        assert_eq!(duration(&bad), None, "only the header page is left");

        // A long file: the last page is found in the tail.
        let mut long = opus_fixture();
        for seq in 0..300 {
            long.extend(ogg_page_bytes(7, 10 + seq, 1_000, 0, &[0x42; 1000]));
        }
        long.extend(ogg_page_bytes(7, 400, 312 + 48_000 * 60, 4, &[0x42; 1000]));
        assert_eq!(duration(&long), Some(60_000));

        // A tail full of page marks that are no pages: a bounded search, no duration.
        let mut junk = opus_fixture()[..47].to_vec();
        let mut fake = b"OggS\0\0".to_vec();
        fake.extend_from_slice(&[0u8; 8]);
        fake.extend_from_slice(&7u32.to_le_bytes());
        fake.extend_from_slice(&[0u8; 8]);
        fake.push(255);
        for _ in 0..4000 {
            junk.extend_from_slice(&fake);
        }
        assert_eq!(duration(&junk), None);

        // Ogg with an unknown codec: recognised, no duration.
        let f = ogg_page_bytes(3, 0, 0, 2, b"\x80theora");
        let info = probe_bytes(&f).unwrap();
        assert_eq!(info.container, Container::Ogg);
        assert_eq!(info.duration_ms, None);
    }

    #[test]
    fn wav() {
        let info = probe_bytes(&wav_fixture()).unwrap();
        assert_eq!(info.container, Container::Wav);
        assert_eq!(info.duration_ms, Some(1_500));
        // A recording cut short: what is there counts.
        let f = wav_fixture();
        assert_eq!(duration(&f[..f.len() - 16_000]), Some(1_000));
        // No fmt: no duration.
        let mut f = wav_fixture();
        let at = f.windows(4).position(|w| w == b"fmt ").unwrap();
        f[at..at + 4].copy_from_slice(b"junk");
        assert_eq!(duration(&f), None);
    }

    #[test]
    fn mp3_with_xing_or_vbri_and_without() {
        let info = probe_bytes(&mp3_fixture()).unwrap();
        assert_eq!(info.container, Container::Mp3);
        assert_eq!(info.duration_ms, Some(26_122));

        // MPEG-2 layer III mono 22.05 kHz with VBRI: 500 * 576 / 22050 s.
        let mut f = vec![0xFF, 0xF3, 0x40, 0xC0];
        f.extend_from_slice(&[0u8; 32]);
        f.extend_from_slice(b"VBRI");
        f.extend_from_slice(&[0u8; 10]);
        f.extend_from_slice(&500u32.to_be_bytes());
        f.resize(200, 0);
        assert_eq!(duration(&f), Some(13_061));

        // A constant bitrate file with no header: recognised, no duration.
        let mut f = vec![0xFF, 0xFB, 0x90, 0x00];
        f.resize(417, 0);
        let info = probe_bytes(&f).unwrap();
        assert_eq!(info.container, Container::Mp3);
        assert_eq!(info.duration_ms, None);
    }

    #[test]
    fn unknown_and_empty_content_is_none() {
        assert_eq!(probe_bytes(b""), None);
        assert_eq!(probe_bytes(b"hello, this is a text file"), None);
        assert_eq!(probe_bytes(b"Get free stuff today, a long text"), None);
        assert_eq!(probe_bytes(b"%PDF-1.7\n"), None);
        // A PNG is no media file here.
        assert_eq!(probe_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), None);
    }

    #[test]
    fn every_truncation_of_every_fixture_is_handled() {
        for f in fixtures() {
            for n in 0..=f.len().min(2048) {
                let _ = probe_bytes(&f[..n]);
            }
            for n in (0..f.len()).step_by(97) {
                let _ = probe_bytes(&f[..n]);
            }
        }
    }

    /// A file of `len` zero bytes with some bytes laid over it, that counts what is read.
    struct Sparse {
        len: u64,
        pos: u64,
        patches: Vec<(u64, Vec<u8>)>,
        read: u64,
    }

    impl Read for Sparse {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
            for (i, byte) in buf[..n].iter_mut().enumerate() {
                let at = self.pos + i as u64;
                *byte = self
                    .patches
                    .iter()
                    .find(|(o, b)| at >= *o && at < o + b.len() as u64)
                    .map_or(0, |(o, b)| b[(at - o) as usize]);
            }
            self.pos += n as u64;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl Seek for Sparse {
        fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
            self.pos = match to {
                SeekFrom::Start(p) => p,
                SeekFrom::End(d) => self.len.checked_add_signed(d).unwrap(),
                SeekFrom::Current(d) => self.pos.checked_add_signed(d).unwrap(),
            };
            Ok(self.pos)
        }
    }

    #[test]
    fn a_6_gib_mp4_with_moov_at_the_end_is_read_in_a_few_small_pieces() {
        let mdat_len: u64 = 6 << 30;
        let mut head = ftyp(b"isom");
        let mdat_at = head.len() as u64;
        head.extend_from_slice(&1u32.to_be_bytes());
        head.extend_from_slice(b"mdat");
        head.extend_from_slice(&mdat_len.to_be_bytes());
        let moov = mp4_box(b"moov", &mvhd_v1(90_000, 90_000 * 3_600));
        let moov_at = mdat_at + mdat_len;
        let mut file = Sparse {
            len: moov_at + moov.len() as u64,
            pos: 0,
            patches: vec![(0, head), (moov_at, moov)],
            read: 0,
        };
        assert_eq!(duration_ms(&mut file).unwrap(), Some(3_600_000));
        assert!(file.read < 1024, "read {} bytes", file.read);

        // And a 6 GiB Ogg: the head and the tail only.
        let f = opus_fixture();
        let (first, rest) = f.split_at(60);
        let mut file = Sparse {
            len: (6 << 30) + rest.len() as u64,
            pos: 0,
            patches: vec![(0, first.to_vec()), (6 << 30, rest.to_vec())],
            read: 0,
        };
        assert_eq!(duration_ms(&mut file).unwrap(), Some(3_500));
        assert!(file.read <= 3 * MAX_READ as u64, "read {} bytes", file.read);
    }

    #[test]
    fn io_errors_are_errors() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        impl Seek for Broken {
            fn seek(&mut self, _: SeekFrom) -> std::io::Result<u64> {
                Ok(100)
            }
        }
        assert!(matches!(probe(&mut Broken), Err(MediaError::Io(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = probe_bytes(&bytes);
        }

        #[test]
        fn mutated_fixtures_never_panic(
            which in 0usize..6,
            cut in any::<prop::sample::Index>(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        ) {
            let mut f = fixtures().swap_remove(which);
            for (at, byte) in edits {
                let i = at.index(f.len());
                f[i] = byte;
            }
            let n = cut.index(f.len() + 1);
            let _ = probe_bytes(&f[..n]);
            let _ = probe_bytes(&f);
        }
    }
}
