//! Attachments (photos, videos, voice notes, files): end-to-end encrypted, in chunks that can
//! travel any way and are checked on arrival.
//!
//! Each attachment gets a fresh random 32-byte key. Its plaintext is cut into chunks of the
//! attachment's chunk size ([`chunk_layout`]; the last may be shorter), and chunk `i` is sealed
//! with ChaCha20-Poly1305 under that key, the nonce being `i`. The associated data binds the
//! chunk to its place: the attachment's size, chunk size, chunk count and the index, so chunks
//! cannot be reordered, dropped from the end, or moved between attachments of another shape.
//! A sealed chunk is addressed by the BLAKE3 hash of its bytes ([`chunk_hash`]).
//!
//! The manifest — key, chunk hashes, size, and a BLAKE3 hash of the whole plaintext — travels
//! inside the pairwise (Olm) or group (Megolm) session, so only the recipients learn the key.
//! The chunks themselves may go directly or through relays; a receiver checks each chunk's
//! hash against the manifest before it stores it ([`open_chunk`] checks it again, with the
//! AEAD tag), and the whole file's hash at the end ([`AttachmentOpener::finish`]). Since a
//! chunk is identified by its hash, an interrupted transfer resumes by fetching only the
//! chunks that are missing.
//!
//! Sealing is deterministic for a given key (same chunk, same bytes): a sender that resumes
//! after a crash reproduces the chunks it had already given out, and no nonce ever encrypts two
//! different plaintexts under one key.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::error::CryptoError;

/// Chunk size of every attachment up to [`MAX_ATTACHMENT_CHUNKS`] × this size: a sealed chunk
/// then fits one relay envelope, with room for the envelope's own overhead.
pub const ATTACHMENT_CHUNK_BYTES: u32 = 48 * 1024;
/// Most chunks of one attachment: the manifest lists every chunk's hash (32 bytes each), and
/// must fit in one message. Larger files get larger chunks (direct transfers only).
pub const MAX_ATTACHMENT_CHUNKS: u32 = instaconnect_wire::proto::MAX_MANIFEST_CHUNKS as u32;
/// Largest chunk, which bounds the largest attachment (4 GiB).
pub const MAX_ATTACHMENT_CHUNK_BYTES: u32 = 4 * 1024 * 1024;
/// Largest attachment this format can describe.
pub const MAX_ATTACHMENT_BYTES: u64 =
    MAX_ATTACHMENT_CHUNKS as u64 * MAX_ATTACHMENT_CHUNK_BYTES as u64;
/// What sealing adds to a chunk (the Poly1305 tag).
pub const CHUNK_TAG_BYTES: usize = 16;
/// Domain separation of the associated data.
const CHUNK_AAD_DOMAIN: &[u8] = b"instaconnect attachment chunk v1";

/// Bytes a relayed chunk's envelope payload adds before the sealed chunk (its index).
pub const RELAY_CHUNK_HEADER_BYTES: usize = 4;
/// Largest chunk size whose sealed chunks travel through relays, one per envelope: the largest
/// multiple of 4 KiB whose sealed chunk and index fit [`crate::MAX_ENVELOPE_PAYLOAD`] (60 KiB).
pub const MAX_RELAYED_CHUNK_BYTES: u32 =
    ((crate::envelope::MAX_ENVELOPE_PAYLOAD - CHUNK_TAG_BYTES - RELAY_CHUNK_HEADER_BYTES) as u32
        / CHUNK_ALIGN)
        * CHUNK_ALIGN;
/// Largest attachment whose chunks can travel through relays (1,024 chunks of
/// [`MAX_RELAYED_CHUNK_BYTES`]: 60 MiB). Larger ones go only directly.
pub const MAX_RELAYED_ATTACHMENT_BYTES: u64 =
    MAX_ATTACHMENT_CHUNKS as u64 * MAX_RELAYED_CHUNK_BYTES as u64;
/// Domain of the ids under which relayed chunks are deposited.
const CHUNK_DEPOSIT_CONTEXT: &str = "instaconnect attachment chunk deposit id v1";

/// Chunk sizes are multiples of this, so a layout never depends on odd divisions.
const CHUNK_ALIGN: u32 = 4096;

/// The key of one attachment. Zeroized on drop; never printed.
#[derive(Clone)]
pub struct AttachmentKey(Zeroizing<[u8; 32]>);

impl AttachmentKey {
    /// A fresh key from `rng` (the OS RNG on devices, a seeded one in the simulator).
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> AttachmentKey {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(k.as_mut());
        AttachmentKey(k)
    }

    /// The key carried in a manifest.
    pub fn from_bytes(bytes: &[u8]) -> Result<AttachmentKey, CryptoError> {
        let k: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::InvalidLength {
            what: "attachment key",
            expected: 32,
            got: bytes.len(),
        })?;
        Ok(AttachmentKey(Zeroizing::new(k)))
    }

    /// The key's bytes, to put in a manifest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for AttachmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttachmentKey([redacted])")
    }
}

/// How an attachment of `size` bytes is cut: its chunk size and chunk count. Up to
/// [`MAX_ATTACHMENT_CHUNKS`] × [`ATTACHMENT_CHUNK_BYTES`] (48 MiB) the chunk size is
/// [`ATTACHMENT_CHUNK_BYTES`]; beyond, the smallest multiple of 4 KiB that keeps the count
/// within [`MAX_ATTACHMENT_CHUNKS`]. An empty attachment is one empty chunk.
pub fn chunk_layout(size: u64) -> Result<Layout, CryptoError> {
    if size > MAX_ATTACHMENT_BYTES {
        return Err(CryptoError::AttachmentTooLarge {
            size,
            max: MAX_ATTACHMENT_BYTES,
        });
    }
    let max_chunks = u64::from(MAX_ATTACHMENT_CHUNKS);
    let mut chunk = u64::from(ATTACHMENT_CHUNK_BYTES);
    if size > chunk * max_chunks {
        let align = u64::from(CHUNK_ALIGN);
        chunk = size.div_ceil(max_chunks).div_ceil(align) * align;
    }
    let count = size.div_ceil(chunk).max(1);
    Ok(Layout {
        size,
        chunk_size: chunk as u32,
        count: count as u32,
    })
}

/// The shape of an attachment: total size, chunk size, chunk count. Checked by
/// [`Layout::new`] when it comes from a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Plaintext bytes in all.
    pub size: u64,
    /// Plaintext bytes per chunk (the last may hold fewer).
    pub chunk_size: u32,
    /// Chunks in all (at least one).
    pub count: u32,
}

impl Layout {
    /// The layout a manifest declares, checked: exactly what [`chunk_layout`] gives for its
    /// size, so every sender and receiver cut alike and a manifest cannot ask for absurd
    /// allocations.
    pub fn new(size: u64, chunk_size: u32, count: u32) -> Result<Layout, CryptoError> {
        let expected = chunk_layout(size)?;
        if expected.chunk_size != chunk_size || expected.count != count {
            return Err(CryptoError::Encoding("attachment layout"));
        }
        Ok(expected)
    }

    /// Plaintext length of chunk `index`, or `None` past the end.
    pub fn chunk_len(&self, index: u32) -> Option<usize> {
        if index >= self.count {
            return None;
        }
        let start = u64::from(index) * u64::from(self.chunk_size);
        let len = (self.size - start.min(self.size)).min(u64::from(self.chunk_size));
        Some(len as usize)
    }

    /// Byte offset of chunk `index` in the plaintext.
    pub fn offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.chunk_size)
    }

    fn aad(&self, index: u32) -> [u8; CHUNK_AAD_DOMAIN.len() + 20] {
        let mut aad = [0u8; CHUNK_AAD_DOMAIN.len() + 20];
        let (domain, rest) = aad.split_at_mut(CHUNK_AAD_DOMAIN.len());
        domain.copy_from_slice(CHUNK_AAD_DOMAIN);
        rest[..8].copy_from_slice(&self.size.to_be_bytes());
        rest[8..12].copy_from_slice(&self.chunk_size.to_be_bytes());
        rest[12..16].copy_from_slice(&self.count.to_be_bytes());
        rest[16..20].copy_from_slice(&index.to_be_bytes());
        aad
    }
}

fn nonce(index: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&index.to_be_bytes());
    Nonce::from(n)
}

fn cipher(key: &AttachmentKey) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(&(*key.0).into())
}

/// The address of a sealed chunk: the BLAKE3 hash of its bytes.
pub fn chunk_hash(sealed: &[u8]) -> [u8; 32] {
    *blake3::hash(sealed).as_bytes()
}

/// The payload of a [`crate::PayloadKind::Chunk`] envelope: chunk `index` (u32 BE) followed by
/// the sealed chunk.
pub fn relay_chunk_payload(index: u32, sealed: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(RELAY_CHUNK_HEADER_BYTES + sealed.len());
    p.extend_from_slice(&index.to_be_bytes());
    p.extend_from_slice(sealed);
    p
}

/// Splits a [`crate::PayloadKind::Chunk`] envelope's payload into the chunk index and the sealed
/// chunk (which the caller checks against the manifest's hash).
pub fn parse_relay_chunk(payload: &[u8]) -> Result<(u32, &[u8]), CryptoError> {
    if payload.len() < RELAY_CHUNK_HEADER_BYTES + CHUNK_TAG_BYTES {
        return Err(CryptoError::Encoding("relayed attachment chunk"));
    }
    let (index, sealed) = payload.split_at(RELAY_CHUNK_HEADER_BYTES);
    let index = u32::from_be_bytes(index.try_into().expect("split at 4"));
    Ok((index, sealed))
}

/// The id under which chunk `index` of attachment `id` is deposited (and its deletion secret
/// derived), distinct for every chunk and from every message id.
pub fn chunk_deposit_id(id: &[u8; 16], index: u32) -> [u8; 16] {
    let mut h = blake3::Hasher::new_derive_key(CHUNK_DEPOSIT_CONTEXT);
    h.update(id);
    h.update(&index.to_be_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// Whether the sealed chunks of an attachment laid out as `layout` fit one relay envelope each.
pub fn relayable(layout: &Layout) -> bool {
    layout.chunk_size <= MAX_RELAYED_CHUNK_BYTES
}

/// Seals chunk `index` of an attachment laid out as `layout`. The plaintext must have the
/// length [`Layout::chunk_len`] gives.
pub fn seal_chunk(
    key: &AttachmentKey,
    layout: &Layout,
    index: u32,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let expected = layout
        .chunk_len(index)
        .ok_or(CryptoError::Encoding("attachment chunk index"))?;
    if plaintext.len() != expected {
        return Err(CryptoError::InvalidLength {
            what: "attachment chunk",
            expected,
            got: plaintext.len(),
        });
    }
    let mut out = Vec::with_capacity(plaintext.len() + CHUNK_TAG_BYTES);
    out.extend_from_slice(plaintext);
    let tag = cipher(key)
        .encrypt_inout_detached(&nonce(index), &layout.aad(index), out.as_mut_slice().into())
        .map_err(|_| CryptoError::Encoding("attachment chunk"))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens chunk `index`, which the manifest says hashes to `hash`: checks the hash, the length
/// and the tag. Untrusted bytes never panic.
pub fn open_chunk(
    key: &AttachmentKey,
    layout: &Layout,
    index: u32,
    hash: &[u8; 32],
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if &chunk_hash(sealed) != hash {
        return Err(CryptoError::AttachmentChunk { index });
    }
    let expected = layout
        .chunk_len(index)
        .ok_or(CryptoError::Encoding("attachment chunk index"))?;
    if sealed.len() != expected + CHUNK_TAG_BYTES {
        return Err(CryptoError::InvalidLength {
            what: "sealed attachment chunk",
            expected: expected + CHUNK_TAG_BYTES,
            got: sealed.len(),
        });
    }
    let (body, tag) = sealed.split_at(expected);
    let tag = Tag::try_from(tag).map_err(|_| CryptoError::AttachmentChunk { index })?;
    let mut out = body.to_vec();
    cipher(key)
        .decrypt_inout_detached(
            &nonce(index),
            &layout.aad(index),
            out.as_mut_slice().into(),
            &tag,
        )
        .map_err(|_| CryptoError::AttachmentChunk { index })?;
    Ok(out)
}

/// Seals an attachment chunk by chunk, in order, and gathers what its manifest needs.
pub struct AttachmentSealer {
    key: AttachmentKey,
    layout: Layout,
    next: u32,
    hashes: Vec<[u8; 32]>,
    whole: blake3::Hasher,
}

/// What the manifest of a sealed attachment carries, besides its descriptive fields.
#[derive(Debug)]
pub struct Sealed {
    /// The attachment's key.
    pub key: AttachmentKey,
    /// Its shape.
    pub layout: Layout,
    /// The hash of every sealed chunk, in order.
    pub chunks: Vec<[u8; 32]>,
    /// BLAKE3 of the whole plaintext.
    pub plaintext_hash: [u8; 32],
}

impl AttachmentSealer {
    /// Starts sealing an attachment of `size` bytes under a fresh key from `rng`.
    pub fn new<R: RngCore + CryptoRng>(
        size: u64,
        rng: &mut R,
    ) -> Result<AttachmentSealer, CryptoError> {
        Self::with_key(size, AttachmentKey::generate(rng))
    }

    /// Starts sealing under a key already chosen (a sender resuming after a restart).
    pub fn with_key(size: u64, key: AttachmentKey) -> Result<AttachmentSealer, CryptoError> {
        let layout = chunk_layout(size)?;
        Ok(AttachmentSealer {
            key,
            layout,
            next: 0,
            hashes: Vec::with_capacity(layout.count as usize),
            whole: blake3::Hasher::new(),
        })
    }

    /// The attachment's shape: how long the next chunk must be.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Plaintext length of the next chunk, or `None` when every chunk has been sealed.
    pub fn next_len(&self) -> Option<usize> {
        self.layout.chunk_len(self.next)
    }

    /// Seals the next chunk; returns its hash and sealed bytes.
    pub fn push(&mut self, plaintext: &[u8]) -> Result<([u8; 32], Vec<u8>), CryptoError> {
        let sealed = seal_chunk(&self.key, &self.layout, self.next, plaintext)?;
        let hash = chunk_hash(&sealed);
        self.whole.update(plaintext);
        self.hashes.push(hash);
        self.next += 1;
        Ok((hash, sealed))
    }

    /// Ends sealing, once every chunk was pushed.
    pub fn finish(self) -> Result<Sealed, CryptoError> {
        if self.next != self.layout.count {
            return Err(CryptoError::InvalidLength {
                what: "attachment (chunks sealed)",
                expected: self.layout.count as usize,
                got: self.next as usize,
            });
        }
        Ok(Sealed {
            key: self.key,
            layout: self.layout,
            chunks: self.hashes,
            plaintext_hash: *self.whole.finalize().as_bytes(),
        })
    }
}

/// Checks the whole plaintext of a received attachment as its chunks are read back in order.
pub struct AttachmentOpener {
    expected: [u8; 32],
    whole: blake3::Hasher,
}

impl AttachmentOpener {
    /// For an attachment whose manifest says its plaintext hashes to `plaintext_hash`.
    pub fn new(plaintext_hash: [u8; 32]) -> AttachmentOpener {
        AttachmentOpener {
            expected: plaintext_hash,
            whole: blake3::Hasher::new(),
        }
    }

    /// The next chunk's plaintext, in order.
    pub fn update(&mut self, plaintext: &[u8]) {
        self.whole.update(plaintext);
    }

    /// Whether the whole plaintext is what the sender sealed.
    pub fn finish(self) -> Result<(), CryptoError> {
        if *self.whole.finalize().as_bytes() == self.expected {
            Ok(())
        } else {
            Err(CryptoError::AttachmentChunk { index: u32::MAX })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::OsRng;

    fn seal_all(data: &[u8]) -> (Sealed, Vec<Vec<u8>>) {
        let mut s = AttachmentSealer::new(data.len() as u64, &mut OsRng).unwrap();
        let mut chunks = Vec::new();
        let mut at = 0;
        while let Some(len) = s.next_len() {
            let (_, sealed) = s.push(&data[at..at + len]).unwrap();
            chunks.push(sealed);
            at += len;
        }
        (s.finish().unwrap(), chunks)
    }

    #[test]
    fn a_file_comes_back_byte_identical_and_checked() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let (sealed, chunks) = seal_all(&data);
        assert_eq!(sealed.layout.count, 5, "200,000 bytes in 48 KiB chunks");
        let mut back = Vec::new();
        let mut check = AttachmentOpener::new(sealed.plaintext_hash);
        for (i, c) in chunks.iter().enumerate() {
            let p =
                open_chunk(&sealed.key, &sealed.layout, i as u32, &sealed.chunks[i], c).unwrap();
            check.update(&p);
            back.extend_from_slice(&p);
        }
        check.finish().unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_chunk_altered_swapped_or_under_another_key_is_refused() {
        let data = vec![42u8; 100_000];
        let (sealed, chunks) = seal_all(&data);
        let l = sealed.layout;
        let mut bad = chunks[0].clone();
        bad[3] ^= 1;
        assert_eq!(
            open_chunk(&sealed.key, &l, 0, &sealed.chunks[0], &bad),
            Err(CryptoError::AttachmentChunk { index: 0 }),
            "the hash no longer matches"
        );
        // The same plaintext in chunks 0 and 1, yet chunk 1 does not open as chunk 0.
        assert!(open_chunk(&sealed.key, &l, 0, &sealed.chunks[1], &chunks[1]).is_err());
        let other = AttachmentKey::generate(&mut OsRng);
        assert!(open_chunk(&other, &l, 0, &sealed.chunks[0], &chunks[0]).is_err());
        // A layout claiming another size changes the associated data.
        let shorter = chunk_layout(l.size - 1).unwrap();
        assert!(open_chunk(&sealed.key, &shorter, 0, &sealed.chunks[0], &chunks[0]).is_err());
        let mut opener = AttachmentOpener::new(sealed.plaintext_hash);
        opener.update(&data[1..]);
        assert!(opener.finish().is_err(), "a truncated whole is refused");
    }

    #[test]
    fn resealing_under_the_same_key_gives_the_same_chunks() {
        let data = vec![9u8; 60_000];
        let (sealed, chunks) = seal_all(&data);
        let mut again = AttachmentSealer::with_key(60_000, sealed.key.clone()).unwrap();
        let (h0, c0) = again
            .push(&data[..ATTACHMENT_CHUNK_BYTES as usize])
            .unwrap();
        assert_eq!((h0, &c0), (sealed.chunks[0], &chunks[0]));
    }

    #[test]
    fn layouts_keep_the_manifest_small_and_refuse_what_does_not_fit() {
        assert_eq!(chunk_layout(0).unwrap().count, 1, "one empty chunk");
        let mib48 = 48 * 1024 * 1024;
        let l = chunk_layout(mib48).unwrap();
        assert_eq!((l.chunk_size, l.count), (ATTACHMENT_CHUNK_BYTES, 1024));
        let gib = 1u64 << 30;
        let l = chunk_layout(gib).unwrap();
        assert_eq!((l.chunk_size, l.count), (1024 * 1024, 1024));
        assert!(chunk_layout(MAX_ATTACHMENT_BYTES + 1).is_err());
        assert!(
            Layout::new(gib, 4096, 262_144).is_err(),
            "not the layout of its size"
        );
        assert!(Layout::new(gib, 1024 * 1024, 1024).is_ok());
    }

    #[test]
    fn relayed_chunks_fit_one_envelope_up_to_60_mib() {
        assert_eq!(MAX_RELAYED_CHUNK_BYTES, 60 * 1024);
        assert_eq!(MAX_RELAYED_ATTACHMENT_BYTES, 60 * 1024 * 1024);
        let largest = chunk_layout(MAX_RELAYED_ATTACHMENT_BYTES).unwrap();
        assert!(relayable(&largest));
        let sealed = MAX_RELAYED_CHUNK_BYTES as usize + CHUNK_TAG_BYTES;
        assert!(crate::bucket_for(RELAY_CHUNK_HEADER_BYTES + sealed).is_some());
        assert!(!relayable(
            &chunk_layout(MAX_RELAYED_ATTACHMENT_BYTES + 1).unwrap()
        ));
        assert!(relayable(&chunk_layout(0).unwrap()));

        let payload = relay_chunk_payload(7, &[9; 40]);
        assert_eq!(parse_relay_chunk(&payload).unwrap(), (7, &[9u8; 40][..]));
        assert!(
            parse_relay_chunk(&payload[..19]).is_err(),
            "shorter than a tag"
        );
        assert_ne!(chunk_deposit_id(&[1; 16], 0), chunk_deposit_id(&[1; 16], 1));
        assert_ne!(chunk_deposit_id(&[1; 16], 0), chunk_deposit_id(&[2; 16], 0));
    }

    proptest! {
        #[test]
        fn any_size_cuts_into_chunks_that_cover_it_exactly(size in 0u64..=MAX_ATTACHMENT_BYTES) {
            let l = chunk_layout(size).unwrap();
            prop_assert!(l.count >= 1 && l.count <= MAX_ATTACHMENT_CHUNKS);
            prop_assert!(l.chunk_size <= MAX_ATTACHMENT_CHUNK_BYTES);
            let total: u64 = (0..l.count).map(|i| l.chunk_len(i).unwrap() as u64).sum();
            prop_assert_eq!(total, size);
            prop_assert!(l.chunk_len(l.count).is_none());
        }

        #[test]
        fn opening_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            index in 0u32..4,
        ) {
            let key = AttachmentKey::generate(&mut OsRng);
            let l = chunk_layout(3000).unwrap();
            let hash = chunk_hash(&bytes);
            prop_assert!(open_chunk(&key, &l, index, &hash, &bytes).is_err());
        }
    }
}
