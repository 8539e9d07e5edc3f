use std::io;

/// A framing failure. `FrameTooLong`, `InvalidUtf8`, `Malformed`,
/// `SentinelInFrame`, `WrongLength` and `PayloadOutOfFrame` concern one
/// frame; `TruncatedFrame` and `Io` mean the stream is over.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// A frame is longer than the codec's maximum (the peer's or ours).
    #[error("frame exceeds the maximum length of {max} bytes")]
    FrameTooLong {
        /// The configured maximum.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes of an unfinished frame)")]
    TruncatedFrame {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
    /// A text frame is not valid UTF-8.
    #[error("invalid UTF-8 at byte {position} of the frame")]
    InvalidUtf8 {
        /// Offset of the first invalid byte within the frame.
        position: usize,
    },
    /// A frame to send contains the sentinel (or ends with its beginning,
    /// so that the sentinel appended would start early), so the peer
    /// would split it.
    #[error("frame contains the sentinel at byte {position}")]
    SentinelInFrame {
        /// Offset within the frame where the peer would see the sentinel.
        position: usize,
    },
    /// A fixed-length frame to send has the wrong size.
    #[error("fixed-length frame must be {expected} bytes, not {actual}")]
    WrongLength {
        /// The codec's frame length.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// A frame arrived whole but does not decode to the expected value.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// A [`FrameEncoder`](super::FrameEncoder) placed its payload past the
    /// bytes it wrote: a bug in that codec. Nothing of the frame was sent.
    #[error("the codec placed its payload at byte {at} of a frame it wrote {written} bytes of")]
    PayloadOutOfFrame {
        /// Where the codec said the payload goes.
        at: usize,
        /// The bytes it wrote.
        written: usize,
    },
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl FramingError {
    /// A [`FramingError::Malformed`] with this reason: for unmarshallers.
    pub fn malformed(reason: impl Into<String>) -> Self {
        FramingError::Malformed {
            reason: reason.into(),
        }
    }

    /// True when the stream cannot be read any further.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            FramingError::TruncatedFrame { .. } | FramingError::Io(_)
        )
    }
}
