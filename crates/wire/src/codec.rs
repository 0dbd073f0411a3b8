//! The postcard codec with size limits.

use serde::{de::DeserializeOwned, Serialize};

/// Largest record the store will decode (a profile with its 5 MiB picture fits, with room).
pub const MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("input of {len} bytes is over the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed {what}: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("trailing bytes after {what}: {extra} bytes")]
    Trailing { what: &'static str, extra: usize },
    #[error("could not encode: {0}")]
    Encode(postcard::Error),
}

/// Encodes a value with postcard.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, WireError> {
    postcard::to_stdvec(value).map_err(WireError::Encode)
}

/// Decodes a record of at most [`MAX_RECORD_BYTES`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    decode_with_limit(bytes, MAX_RECORD_BYTES)
}

/// Decodes a value of at most `limit` bytes. The whole input must be consumed.
pub fn decode_with_limit<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let what = std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("value");
    let (value, rest) = postcard::take_from_bytes::<T>(bytes)
        .map_err(|source| WireError::Malformed { what, source })?;
    if !rest.is_empty() {
        return Err(WireError::Trailing {
            what,
            extra: rest.len(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::*;
    use proptest::prelude::*;

    #[test]
    fn oversize_input_is_refused_before_decoding() {
        let big = vec![0u8; 100];
        let err = decode_with_limit::<ContactRecord>(&big, 10).unwrap_err();
        assert!(matches!(
            err,
            WireError::TooLarge {
                len: 100,
                limit: 10
            }
        ));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut b = encode(&Visibility::Contacts).unwrap();
        b.push(0);
        assert!(matches!(
            decode::<Visibility>(&b),
            Err(WireError::Trailing { extra: 1, .. })
        ));
    }

    #[test]
    fn huge_declared_length_fails_cleanly() {
        // A varint length of ~2^32 followed by nothing: must error, not allocate 4 GiB.
        let b = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode::<Vec<u8>>(&b).is_err());
        assert!(decode::<String>(&b).is_err());
    }

    fn contact() -> impl Strategy<Value = ContactRecord> {
        (
            "\\+[1-9][0-9]{6,13}",
            proptest::option::of(".{0,20}"),
            proptest::option::of("12D3Koo[a-zA-Z0-9]{10}"),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(phone, name, peer_id, a, u)| ContactRecord {
                phone,
                name,
                peer_id,
                identity_key: None,
                card: None,
                added_at_ms: a,
                updated_at_ms: u,
            })
    }

    proptest! {
        #[test]
        fn contact_roundtrips(c in contact()) {
            let b = encode(&c).unwrap();
            prop_assert_eq!(decode::<ContactRecord>(&b).unwrap(), c);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ContactRecord>(&b);
            let _ = decode::<GroupRecord>(&b);
            let _ = decode::<Settings>(&b);
            let _ = decode::<Profile>(&b);
            let _ = decode::<AccountRecord>(&b);
        }
    }
}
