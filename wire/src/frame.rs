//! Bounded, versioned frames: `[u32 BE payload length][u8 version = 1][payload]`.
//!
//! Guarantees:
//! - A frame's payload is at most [`PAYLOAD_BYTES_MAX`] (16 MiB plus slack
//!   for headers, because file data moves in payloads of up to 4 MiB and
//!   state-transfer chunks of up to 16 MiB). The length is checked BEFORE any
//!   buffer is allocated, and the reader grows its buffer only as bytes
//!   actually arrive, so a peer that announces 16 MiB and sends nothing costs
//!   nothing.
//! - Decoding rejects a wrong version, an oversized length and a truncated
//!   frame with typed errors ([`FrameError`]); it never panics on any input.
//! - The length counts payload bytes only (not the 5-byte header).
//!
//! Assumes: frames travel inside QUIC streams, which are already ordered,
//! encrypted and authenticated (TLS 1.3 AEAD), so no checksum is added here.
//! Why a version byte: a peer of a future, incompatible format is refused
//! with a clear error instead of being misread.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::WireError;

/// The only frame format version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Bytes of the frame header: u32 length + u8 version.
pub const FRAME_HEADER_BYTES: usize = 5;
/// Largest payload a frame may carry: 16 MiB plus 64 KiB of slack for
/// envelopes around a 16 MiB data chunk.
pub const PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024 + 64 * 1024;
/// Largest whole frame (header included).
pub const FRAME_BYTES_MAX: usize = FRAME_HEADER_BYTES + PAYLOAD_BYTES_MAX;

/// Initial buffer for a frame being read; it grows as bytes arrive.
const READ_BUFFER_BYTES_INITIAL: usize = 64 * 1024;

/// Why a frame was rejected.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The version byte is not [`FRAME_VERSION`].
    #[error("frame version {found} is not supported (this build speaks version {FRAME_VERSION}) — is the peer a chorus component of the same release?")]
    BadVersion {
        /// The version byte received.
        found: u8,
    },
    /// The announced (or requested) payload exceeds [`PAYLOAD_BYTES_MAX`].
    #[error("frame payload of {payload_bytes} bytes exceeds the bound of {payload_bytes_max} bytes")]
    TooLarge {
        /// Announced payload size.
        payload_bytes: u64,
        /// The bound.
        payload_bytes_max: usize,
    },
    /// The input ended inside a frame.
    #[error("frame truncated: expected {bytes_expected} bytes, got {bytes_got}")]
    Truncated {
        /// Bytes the frame needs (header + payload).
        bytes_expected: usize,
        /// Bytes that were there.
        bytes_got: usize,
    },
}

/// Payload bound of the replica-to-replica transport: peers are other
/// replicas of the cluster (mutually authenticated), and view-change and
/// state-transfer messages carry log suffixes of up to a few checkpoint
/// intervals (file data included).
pub const PEER_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024 + 64 * 1024;

/// Builds the header of a frame carrying `payload_bytes`.
pub fn encode_header(payload_bytes: usize) -> Result<[u8; FRAME_HEADER_BYTES], FrameError> {
    encode_header_max(payload_bytes, PAYLOAD_BYTES_MAX)
}

/// [`encode_header`] with another payload bound (at most [`u32::MAX`]).
pub fn encode_header_max(payload_bytes: usize, payload_bytes_max: usize) -> Result<[u8; FRAME_HEADER_BYTES], FrameError> {
    if payload_bytes > payload_bytes_max {
        return Err(FrameError::TooLarge { payload_bytes: payload_bytes as u64, payload_bytes_max });
    }
    let length = (payload_bytes as u32).to_be_bytes();
    Ok([length[0], length[1], length[2], length[3], FRAME_VERSION])
}

/// Validates a header and returns the payload length it announces.
pub fn decode_header(header: &[u8; FRAME_HEADER_BYTES]) -> Result<usize, FrameError> {
    decode_header_max(header, PAYLOAD_BYTES_MAX)
}

/// [`decode_header`] with another payload bound.
pub fn decode_header_max(header: &[u8; FRAME_HEADER_BYTES], payload_bytes_max: usize) -> Result<usize, FrameError> {
    let payload_bytes = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    // Size first: an oversized length is the more dangerous lie, and it is
    // checked before anything is allocated for it.
    if payload_bytes > payload_bytes_max {
        return Err(FrameError::TooLarge { payload_bytes: payload_bytes as u64, payload_bytes_max });
    }
    if header[4] != FRAME_VERSION {
        return Err(FrameError::BadVersion { found: header[4] });
    }
    Ok(payload_bytes)
}

/// Encodes one whole frame into a fresh buffer.
pub fn encode(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    encode_max(payload, PAYLOAD_BYTES_MAX)
}

/// [`encode`] with another payload bound.
pub fn encode_max(payload: &[u8], payload_bytes_max: usize) -> Result<Vec<u8>, FrameError> {
    let header = encode_header_max(payload.len(), payload_bytes_max)?;
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Encodes a frame whose payload is `parts` concatenated (avoids a copy of a
/// large body just to prepend a small envelope).
pub fn encode_parts(parts: &[&[u8]]) -> Result<Vec<u8>, FrameError> {
    let payload_bytes: usize = parts.iter().map(|p| p.len()).sum();
    let header = encode_header(payload_bytes)?;
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload_bytes);
    frame.extend_from_slice(&header);
    for part in parts {
        frame.extend_from_slice(part);
    }
    Ok(frame)
}

/// Decodes the frame at the start of `buf`: returns its payload and the
/// number of bytes the whole frame occupies (so a caller can continue with
/// the rest of `buf`).
pub fn decode(buf: &[u8]) -> Result<(&[u8], usize), FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Truncated { bytes_expected: FRAME_HEADER_BYTES, bytes_got: buf.len() });
    }
    let header: &[u8; FRAME_HEADER_BYTES] = buf[..FRAME_HEADER_BYTES].try_into().expect("length checked");
    let payload_bytes = decode_header(header)?;
    let frame_bytes = FRAME_HEADER_BYTES + payload_bytes;
    if buf.len() < frame_bytes {
        return Err(FrameError::Truncated { bytes_expected: frame_bytes, bytes_got: buf.len() });
    }
    Ok((&buf[FRAME_HEADER_BYTES..frame_bytes], frame_bytes))
}

/// Reads one frame from a stream. Returns `Ok(None)` on a clean end of
/// stream at a frame boundary; a stream that ends inside a frame is
/// [`FrameError::Truncated`]. I/O errors (connection lost, stream reset) are
/// [`WireError::ConnectionLost`]; callers that hold the connection can ask it
/// for a more precise reason.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Vec<u8>>, WireError> {
    read_frame_max(reader, PAYLOAD_BYTES_MAX).await
}

/// [`read_frame`] with another payload bound.
pub async fn read_frame_max<R: AsyncRead + Unpin>(reader: &mut R, payload_bytes_max: usize) -> Result<Option<Vec<u8>>, WireError> {
    match read_header_max(reader, payload_bytes_max).await? {
        Some(payload_bytes) => read_payload(reader, payload_bytes).await.map(Some),
        None => Ok(None),
    }
}

/// The first half of [`read_frame_max`]: reads and checks one frame header
/// and returns the payload length it announces (`Ok(None)` on a clean end
/// of stream). A server reserves its budget for that many bytes before
/// reading them with [`read_payload`].
pub async fn read_header_max<R: AsyncRead + Unpin>(reader: &mut R, payload_bytes_max: usize) -> Result<Option<usize>, WireError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut header_bytes = 0;
    while header_bytes < FRAME_HEADER_BYTES {
        let n = reader.read(&mut header[header_bytes..]).await.map_err(io_lost)?;
        if n == 0 {
            if header_bytes == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated { bytes_expected: FRAME_HEADER_BYTES, bytes_got: header_bytes }.into());
        }
        header_bytes += n;
    }
    Ok(Some(decode_header_max(&header, payload_bytes_max)?))
}

/// The second half of [`read_frame_max`]: reads a payload of `payload_bytes`
/// (from a checked header), growing the buffer only as bytes arrive.
pub async fn read_payload<R: AsyncRead + Unpin>(reader: &mut R, payload_bytes: usize) -> Result<Vec<u8>, WireError> {
    let mut payload = Vec::with_capacity(payload_bytes.min(READ_BUFFER_BYTES_INITIAL));
    let got = (&mut *reader).take(payload_bytes as u64).read_to_end(&mut payload).await.map_err(io_lost)?;
    if got < payload_bytes {
        return Err(
            FrameError::Truncated { bytes_expected: FRAME_HEADER_BYTES + payload_bytes, bytes_got: FRAME_HEADER_BYTES + got }.into()
        );
    }
    debug_assert_eq!(payload.len(), payload_bytes);
    Ok(payload)
}

/// Writes one already-encoded frame (from [`encode`] / [`encode_parts`]).
pub async fn write_encoded<W: AsyncWrite + Unpin>(writer: &mut W, frame: &[u8]) -> Result<(), WireError> {
    debug_assert!(frame.len() >= FRAME_HEADER_BYTES && frame.len() <= FRAME_BYTES_MAX);
    writer.write_all(frame).await.map_err(io_lost)
}

/// Frames `payload` and writes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, payload: &[u8]) -> Result<(), WireError> {
    let header = encode_header(payload.len())?;
    writer.write_all(&header).await.map_err(io_lost)?;
    writer.write_all(payload).await.map_err(io_lost)
}

fn io_lost(err: std::io::Error) -> WireError {
    WireError::ConnectionLost(format!("stream error: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for payload in [&b""[..], b"x", &[7u8; 100_000][..]] {
            let frame = encode(payload).unwrap();
            assert_eq!(frame.len(), FRAME_HEADER_BYTES + payload.len());
            let (decoded, used) = decode(&frame).unwrap();
            assert_eq!(decoded, payload);
            assert_eq!(used, frame.len());
        }
    }

    #[test]
    fn parts_equal_whole() {
        assert_eq!(encode_parts(&[b"ab", b"", b"cde"]).unwrap(), encode(b"abcde").unwrap());
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut buf = encode(b"one").unwrap();
        buf.extend(encode(b"three").unwrap());
        let (first, used) = decode(&buf).unwrap();
        assert_eq!(first, b"one");
        let (second, _) = decode(&buf[used..]).unwrap();
        assert_eq!(second, b"three");
    }

    #[test]
    fn header_layout_is_big_endian_length_then_version() {
        let frame = encode(&[0u8; 0x0102]).unwrap();
        assert_eq!(&frame[..5], &[0, 0, 1, 2, FRAME_VERSION]);
    }

    #[test]
    fn rejects_bad_version() {
        let mut frame = encode(b"hello").unwrap();
        frame[4] = 2;
        assert_eq!(decode(&frame), Err(FrameError::BadVersion { found: 2 }));
        frame[4] = 0;
        assert_eq!(decode(&frame), Err(FrameError::BadVersion { found: 0 }));
    }

    #[test]
    fn rejects_oversized_length_before_reading_payload() {
        // Only a header: the length alone must be refused, not reported truncated.
        let header = [0xff, 0xff, 0xff, 0xff, FRAME_VERSION];
        assert_eq!(decode(&header), Err(FrameError::TooLarge { payload_bytes: u32::MAX as u64, payload_bytes_max: PAYLOAD_BYTES_MAX }));
        let just_over = ((PAYLOAD_BYTES_MAX + 1) as u32).to_be_bytes();
        let header = [just_over[0], just_over[1], just_over[2], just_over[3], FRAME_VERSION];
        assert!(matches!(decode(&header), Err(FrameError::TooLarge { .. })));
        assert!(matches!(encode_header(PAYLOAD_BYTES_MAX + 1), Err(FrameError::TooLarge { .. })));
        assert!(encode_header(PAYLOAD_BYTES_MAX).is_ok());
    }

    #[test]
    fn rejects_truncated() {
        let frame = encode(b"hello").unwrap();
        for cut in 0..frame.len() {
            assert!(matches!(decode(&frame[..cut]), Err(FrameError::Truncated { .. })), "cut at {cut} not reported truncated");
        }
    }

    #[test]
    fn decode_never_panics_on_garbage() {
        // A fixed pseudo-random walk over short inputs: every outcome must be a value, not a panic.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 16) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 8 * 8)) as u8).collect();
            let _ = decode(&bytes);
        }
    }

    #[tokio::test]
    async fn stream_round_trip_and_clean_eof() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"abc").await.unwrap();
        write_frame(&mut wire, &vec![1u8; 200_000]).await.unwrap();
        let mut reader = &wire[..];
        assert_eq!(read_frame(&mut reader).await.unwrap().unwrap(), b"abc");
        assert_eq!(read_frame(&mut reader).await.unwrap().unwrap().len(), 200_000);
        assert!(read_frame(&mut reader).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn stream_rejects_truncated_and_oversized() {
        let frame = encode(b"hello world").unwrap();
        let mut reader = &frame[..frame.len() - 1];
        assert!(matches!(read_frame(&mut reader).await, Err(WireError::Frame(FrameError::Truncated { .. }))));
        let mut reader = &frame[..3];
        assert!(matches!(read_frame(&mut reader).await, Err(WireError::Frame(FrameError::Truncated { .. }))));
        let huge = [0x7f, 0xff, 0xff, 0xff, FRAME_VERSION];
        let mut reader = &huge[..];
        assert!(matches!(read_frame(&mut reader).await, Err(WireError::Frame(FrameError::TooLarge { .. }))));
        let mut bad = encode(b"x").unwrap();
        bad[4] = 9;
        let mut reader = &bad[..];
        assert!(matches!(read_frame(&mut reader).await, Err(WireError::Frame(FrameError::BadVersion { found: 9 }))));
    }
}
