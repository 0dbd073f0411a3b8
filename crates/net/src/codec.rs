//! The `/instaconnect/msg/1` request-response codec.
//!
//! Each request and each response is exactly one frame on its own stream:
//!
//! ```text
//! frame = length:u32 big-endian || payload[length]
//! ```
//!
//! The length is checked against [`MAX_FRAME_BYTES`] before anything is allocated, so a peer
//! that announces a huge frame costs us four bytes of reading and an error, never memory.
//!
//! libp2p's request-response only logs a failed `read_request` (it cannot say which peer sent
//! it), so on the inbound side a refused request (oversize or truncated) is not an I/O error but
//! an [`InboundRequest::Refused`] value: the network task then knows the peer, reports and
//! counts it, and drops the response channel, which closes that one stream; the sender sees its
//! request fail, and the connection and its other streams carry on. Responses that are
//! oversize or truncated are ordinary errors (the outbound request fails with its id).
//!
//! Before refusing an oversize request, the reader discards (into a fixed 8 KiB buffer, never
//! allocating) at most [`MAX_DRAIN_BYTES`] of its body for at most [`DRAIN_TIMEOUT`]: a Yamux
//! sender blocked on flow-control credit would otherwise never see our close and would only
//! fail at its request timeout.

use std::io;

use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// [`crate::MSG_PROTOCOL`] as a libp2p stream protocol.
pub(crate) const MSG_STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new(crate::MSG_PROTOCOL);

/// Largest payload of one frame (request or response), in bytes: 256 KiB.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// [`crate::MAILBOX_PROTOCOL`] as a libp2p stream protocol.
pub(crate) const MAILBOX_STREAM_PROTOCOL: StreamProtocol =
    StreamProtocol::new(crate::MAILBOX_PROTOCOL);

/// Largest frame on the mailbox protocol (a fetch answer carries many envelopes): 1 MiB.
pub const MAX_MAILBOX_FRAME_BYTES: usize = instaconnect_wire::mailbox::MAX_MAILBOX_FRAME_BYTES;

/// The frame limit of a protocol.
pub(crate) fn limit_for(protocol: &StreamProtocol) -> usize {
    if *protocol == MAILBOX_STREAM_PROTOCOL {
        MAX_MAILBOX_FRAME_BYTES
    } else {
        MAX_FRAME_BYTES
    }
}

/// Most body bytes of a refused oversize request that are read and discarded.
pub const MAX_DRAIN_BYTES: u64 = 2 * MAX_MAILBOX_FRAME_BYTES as u64;

/// Longest time spent discarding the body of a refused oversize request.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Size of the scratch buffer used to discard a refused body.
const DRAIN_CHUNK: usize = 8 * 1024;

/// Bytes of the length prefix.
const LEN_PREFIX_BYTES: usize = 4;

/// Start of the error text for an oversize frame.
pub(crate) const OVERSIZE_MARKER: &str = "frame exceeds MAX_FRAME_BYTES";

/// Length-prefixed frame codec with a hard size limit (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec;

/// A request as read from (or written to) a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundRequest {
    /// A well-formed frame.
    Frame(Vec<u8>),
    /// A frame we refused (oversize or truncated), and why; its body was never stored.
    Refused(String),
}

pub(crate) fn oversize_error(len: usize, max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{OVERSIZE_MARKER}: {len} > {max}"),
    )
}

/// Whether `e` means the peer sent a bad frame (too large, or cut short), as opposed to the
/// connection failing.
fn is_bad_frame(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}

/// Reads the length prefix.
async fn read_len<T>(io: &mut T) -> io::Result<usize>
where
    T: AsyncRead + Unpin + Send,
{
    let mut prefix = [0u8; LEN_PREFIX_BYTES];
    io.read_exact(&mut prefix).await?;
    // On every supported target usize is at least 32 bits; fall back to "too large" otherwise.
    Ok(usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX))
}

/// Reads a body of `len` bytes, `len` already checked against [`MAX_FRAME_BYTES`].
async fn read_body<T>(io: &mut T, len: usize) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
/// Reads one frame, refusing an announced length above [`MAX_FRAME_BYTES`] before allocating.
pub async fn read_frame<T>(io: &mut T) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    read_frame_limited(io, MAX_FRAME_BYTES).await
}

/// [`read_frame`] with another limit.
pub async fn read_frame_limited<T>(io: &mut T, max: usize) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let len = read_len(io).await?;
    if len > max {
        return Err(oversize_error(len, max));
    }
    read_body(io, len).await
}

/// Discards up to `min(len, MAX_DRAIN_BYTES)` bytes, stopping early at end of stream or error.
async fn drain<T>(io: &mut T, len: usize) -> u64
where
    T: AsyncRead + Unpin + Send,
{
    let limit = u64::try_from(len).unwrap_or(u64::MAX).min(MAX_DRAIN_BYTES);
    let mut scratch = [0u8; DRAIN_CHUNK];
    let mut done = 0u64;
    while done < limit {
        let want = usize::try_from(limit - done).map_or(DRAIN_CHUNK, |r| r.min(DRAIN_CHUNK));
        match io.read(&mut scratch[..want]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => done += n as u64,
        }
    }
    done
}

#[cfg(test)]
/// Reads one request; a bad one becomes [`InboundRequest::Refused`] (see the module docs).
pub async fn read_request_frame<T>(io: &mut T) -> io::Result<InboundRequest>
where
    T: AsyncRead + Unpin + Send,
{
    read_request_limited(io, MAX_FRAME_BYTES).await
}

/// [`read_request_frame`] with another limit.
pub async fn read_request_limited<T>(io: &mut T, max: usize) -> io::Result<InboundRequest>
where
    T: AsyncRead + Unpin + Send,
{
    let len = match read_len(io).await {
        Ok(len) => len,
        Err(e) if is_bad_frame(&e) => return Ok(InboundRequest::Refused(e.to_string())),
        Err(e) => return Err(e),
    };
    if len > max {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain(io, len)).await;
        return Ok(InboundRequest::Refused(
            oversize_error(len, max).to_string(),
        ));
    }
    match read_body(io, len).await {
        Ok(frame) => Ok(InboundRequest::Frame(frame)),
        Err(e) if is_bad_frame(&e) => Ok(InboundRequest::Refused(e.to_string())),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
/// Writes one frame, refusing a payload above [`MAX_FRAME_BYTES`].
pub async fn write_frame<T>(io: &mut T, frame: &[u8]) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    write_frame_limited(io, frame, MAX_FRAME_BYTES).await
}

/// [`write_frame`] with another limit.
pub async fn write_frame_limited<T>(io: &mut T, frame: &[u8], max: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    if frame.len() > max {
        return Err(oversize_error(frame.len(), max));
    }
    let len = u32::try_from(frame.len()).map_err(|_| oversize_error(frame.len(), max))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(frame).await?;
    io.flush().await
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = InboundRequest;
    type Response = Vec<u8>;

    async fn read_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<InboundRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_request_limited(io, limit_for(protocol)).await
    }

    async fn read_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame_limited(io, limit_for(protocol)).await
    }

    async fn write_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        req: InboundRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            InboundRequest::Frame(frame) => {
                write_frame_limited(io, &frame, limit_for(protocol)).await
            }
            InboundRequest::Refused(why) => Err(io::Error::new(io::ErrorKind::InvalidInput, why)),
        }
    }

    async fn write_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame_limited(io, &res, limit_for(protocol)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;

    #[test]
    fn round_trip_including_empty_and_max() {
        for len in [0usize, 1, 1000, MAX_FRAME_BYTES] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut wire = Cursor::new(Vec::new());
            block_on(write_frame(&mut wire, &payload)).unwrap();
            assert_eq!(wire.get_ref().len(), len + LEN_PREFIX_BYTES);
            let mut rd = Cursor::new(wire.into_inner());
            assert_eq!(block_on(read_frame(&mut rd)).unwrap(), payload);
        }
    }

    #[test]
    fn oversize_announcement_is_refused_without_reading_the_body() {
        // Announces 4 GiB - 1 but carries nothing: must fail on the prefix alone.
        let mut rd = Cursor::new(u32::MAX.to_be_bytes().to_vec());
        let err = block_on(read_frame(&mut rd)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(OVERSIZE_MARKER));
        assert_eq!(rd.position(), LEN_PREFIX_BYTES as u64);

        let just_over = u32::try_from(MAX_FRAME_BYTES + 1).unwrap();
        let mut rd = Cursor::new(just_over.to_be_bytes().to_vec());
        assert!(block_on(read_frame(&mut rd)).is_err());
    }

    #[test]
    fn oversize_payload_is_not_written() {
        let mut wire = Cursor::new(Vec::new());
        let err = block_on(write_frame(&mut wire, &vec![0u8; MAX_FRAME_BYTES + 1])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(wire.get_ref().is_empty());
    }

    #[tokio::test]
    async fn refused_requests_are_values_with_the_reason() {
        use libp2p::request_response::Codec;
        let mut codec = FrameCodec;
        let mut rd = Cursor::new(u32::MAX.to_be_bytes().to_vec());
        let req = codec
            .read_request(&MSG_STREAM_PROTOCOL, &mut rd)
            .await
            .unwrap();
        assert!(matches!(&req, InboundRequest::Refused(why) if why.contains(OVERSIZE_MARKER)));
        // The body of an oversize request is discarded, up to MAX_DRAIN_BYTES.
        let mut wire = u32::try_from(MAX_FRAME_BYTES + 1)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        wire.extend(std::iter::repeat_n(7u8, MAX_FRAME_BYTES + 1 + 10));
        let mut rd = Cursor::new(wire);
        let req = codec
            .read_request(&MSG_STREAM_PROTOCOL, &mut rd)
            .await
            .unwrap();
        assert!(matches!(req, InboundRequest::Refused(_)));
        assert_eq!(
            rd.position(),
            (LEN_PREFIX_BYTES + MAX_FRAME_BYTES + 1) as u64
        );
        let mut wire = u32::MAX.to_be_bytes().to_vec();
        wire.resize(LEN_PREFIX_BYTES + 2 * MAX_DRAIN_BYTES as usize, 0);
        let mut rd = Cursor::new(wire);
        read_request_frame(&mut rd).await.unwrap();
        assert_eq!(rd.position(), LEN_PREFIX_BYTES as u64 + MAX_DRAIN_BYTES);

        let mut rd = Cursor::new(vec![0, 0, 0, 9, 1]);
        let req = codec
            .read_request(&MSG_STREAM_PROTOCOL, &mut rd)
            .await
            .unwrap();
        assert!(matches!(req, InboundRequest::Refused(_)));
        let mut rd = Cursor::new(vec![0, 0, 0, 2, 7, 8]);
        let req = codec
            .read_request(&MSG_STREAM_PROTOCOL, &mut rd)
            .await
            .unwrap();
        assert_eq!(req, InboundRequest::Frame(vec![7, 8]));
    }

    #[test]
    fn truncated_frames_are_errors_not_panics() {
        for bytes in [vec![], vec![0, 0], vec![0, 0, 0, 5, 1, 2]] {
            let mut rd = Cursor::new(bytes);
            let err = block_on(read_frame(&mut rd)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        }
    }
}
