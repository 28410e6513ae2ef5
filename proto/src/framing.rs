//! Frames: `[u32 big-endian length][u8 protocol version][postcard payload]`,
//! where the length counts the version byte and the payload.
//!
//! Readers check the length against [`MAX_FRAME_LEN`] before allocating, so a
//! peer cannot make us reserve memory by announcing a huge frame.

use serde::{Serialize, de::DeserializeOwned};

/// Bumped on every incompatible change to a message.
pub const PROTOCOL_VERSION: u8 = 4;

/// Largest frame accepted by default: room for an inline artifact of a few
/// MiB with its task, small enough that a bad peer cannot exhaust memory.
pub const MAX_FRAME_LEN: usize = 32 << 20;

/// Bytes before the body.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame (no version byte)")]
    Empty,
    #[error("protocol version {got} is not supported (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion { got: u8 },
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes one message as a complete frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_into(msg, Vec::new())
}

/// Appends one message as a complete frame to `out`, so that frames sent
/// together go out in one write.
pub fn encode_into<T: Serialize>(msg: &T, mut out: Vec<u8>) -> Result<Vec<u8>, FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    out.push(PROTOCOL_VERSION);
    let mut out = postcard::to_extend(msg, out)?;
    let body_len = out.len() - start - HEADER_LEN;
    let too_large = FrameError::TooLarge {
        len: body_len,
        max: MAX_FRAME_LEN,
    };
    if body_len > MAX_FRAME_LEN {
        return Err(too_large);
    }
    let len = u32::try_from(body_len).map_err(|_| too_large)?;
    out[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Reads the body length from a header, refusing empty and oversized frames.
pub fn body_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    match len {
        0 => Err(FrameError::Empty),
        len if len > max => Err(FrameError::TooLarge { len, max }),
        len => Ok(len),
    }
}

/// Decodes a body (version byte and payload). Trailing bytes are an error:
/// a frame holds exactly one message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (&version, payload) = body.split_first().ok_or(FrameError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion { got: version });
    }
    let (msg, rest) = postcard::take_from_bytes(payload)?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(
            postcard::Error::DeserializeBadEncoding,
        ));
    }
    Ok(msg)
}

/// Decodes one complete frame held in `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, FrameError> {
    let header: [u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Empty)?;
    let len = body_len(header, max)?;
    let body = &bytes[HEADER_LEN..];
    if body.len() != len {
        return Err(FrameError::Malformed(
            postcard::Error::DeserializeUnexpectedEnd,
        ));
    }
    decode_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{AgentToMaster, Call};
    use crate::{OfferId, TaskId};
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let call = Call::Kill {
            task_id: TaskId::new("t1").expect("id"),
        };
        let frame = encode(&call).expect("encode");
        assert_eq!(decode::<Call>(&frame, MAX_FRAME_LEN).expect("decode"), call);
    }

    #[test]
    fn refuses_oversized_and_old_frames() {
        assert!(matches!(
            body_len((MAX_FRAME_LEN as u32 + 1).to_be_bytes(), MAX_FRAME_LEN),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            body_len([0; 4], MAX_FRAME_LEN),
            Err(FrameError::Empty)
        ));
        let mut frame = encode(&Call::Teardown).expect("encode");
        frame[HEADER_LEN] = 99;
        assert!(matches!(
            decode::<Call>(&frame, MAX_FRAME_LEN),
            Err(FrameError::UnsupportedVersion { got: 99 })
        ));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut frame = encode(&Call::Decline {
            offer_ids: vec![OfferId(1)],
            refuse_ms: None,
        })
        .expect("encode");
        frame.push(0);
        let len = (frame.len() - HEADER_LEN) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        assert!(decode::<Call>(&frame, MAX_FRAME_LEN).is_err());
    }

    proptest! {
        /// No byte string makes a decoder panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<AgentToMaster>(&bytes, MAX_FRAME_LEN);
            let _ = decode::<Call>(&bytes, MAX_FRAME_LEN);
            let mut framed = ((bytes.len() + 1) as u32).to_be_bytes().to_vec();
            framed.push(PROTOCOL_VERSION);
            framed.extend_from_slice(&bytes);
            let _ = decode::<AgentToMaster>(&framed, MAX_FRAME_LEN);
            let _ = decode::<crate::messages::Event>(&framed, MAX_FRAME_LEN);
        }
    }
}
