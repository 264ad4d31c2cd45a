//! The one error type of the image layer, [`ImageError`], and its coarse
//! [`ErrorKind`] so the CRI adapter can map it to a gRPC status.
//!
//! Owns only error shapes and messages (lower case, no trailing period, naming
//! the image, reference or path concerned). No I/O and no policy live here.

use std::io;
use std::path::{Path, PathBuf};

/// What kind of failure an [`ImageError`] is, for mapping to CRI/gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No image matches the reference (gRPC NOT_FOUND).
    NotFound,
    /// The caller's input is wrong: a malformed or ambiguous reference, bad
    /// pack options, a name that cannot apply (gRPC INVALID_ARGUMENT).
    InvalidArgument,
    /// The image content itself is bad or unsupported: malformed JSON or tar,
    /// digest mismatch, unsafe layer path (gRPC INVALID_ARGUMENT or
    /// FAILED_PRECONDITION, at the caller's choice).
    InvalidImage,
    /// Local failure: I/O, a corrupt store (gRPC INTERNAL).
    Internal,
    /// The registry cannot be reached or fails (connection refused, DNS,
    /// TLS, timeouts, 5xx, a download cut short) (gRPC UNAVAILABLE).
    Unavailable,
    /// The registry wants credentials, or refused the ones given (gRPC
    /// UNAUTHENTICATED).
    Unauthenticated,
}

/// Errors of the image store, import, pack and unpack.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("image {reference:?} not found")]
    NotFound { reference: String },

    #[error("image reference {reference:?} is ambiguous: it matches {count} images")]
    Ambiguous { reference: String, count: usize },

    /// Bad input that is not a reference (pack options, import arguments).
    #[error("{0}")]
    InvalidArgument(String),

    #[error("image {image:?}: {what}: digest mismatch (expected {expected}, got {actual})")]
    DigestMismatch {
        image: String,
        what: String,
        expected: String,
        actual: String,
    },

    #[error("image {image:?}: {what}: size mismatch (expected {expected} bytes, got {actual})")]
    SizeMismatch {
        image: String,
        what: String,
        expected: u64,
        actual: u64,
    },

    /// A layer entry that would escape the root filesystem or is otherwise unsafe.
    #[error("image {image:?}: layer {layer}: unsafe path {path:?}: {reason}")]
    UnsafePath {
        image: String,
        layer: String,
        path: String,
        reason: String,
    },

    /// Malformed or unsupported image content (JSON, tar, media type, platform).
    #[error("image {image:?}: {reason}")]
    InvalidImage { image: String, reason: String },

    /// The store itself is inconsistent (a blob named by index.json is missing...).
    #[error("image store {}: {reason}", dir.display())]
    CorruptStore { dir: PathBuf, reason: String },

    /// A registry answered with an error or could not be reached; `kind`
    /// says which (not found, unavailable, unauthenticated, bad content).
    #[error("image {image:?}: {reason}")]
    Registry {
        image: String,
        kind: ErrorKind,
        reason: String,
    },

    /// One outcome shared by every caller of a pull done once.
    #[error(transparent)]
    Shared(std::sync::Arc<ImageError>),

    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    /// The coarse class of this error, for the CRI layer.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::NotFound { .. } => ErrorKind::NotFound,
            ImageError::InvalidReference { .. }
            | ImageError::Ambiguous { .. }
            | ImageError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ImageError::DigestMismatch { .. }
            | ImageError::SizeMismatch { .. }
            | ImageError::UnsafePath { .. }
            | ImageError::InvalidImage { .. } => ErrorKind::InvalidImage,
            ImageError::CorruptStore { .. } | ImageError::Io { .. } => ErrorKind::Internal,
            ImageError::Registry { kind, .. } => *kind,
            ImageError::Shared(inner) => inner.kind(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    pub(crate) fn invalid_reference(reference: &str, reason: impl Into<String>) -> Self {
        ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_image(image: &str, reason: impl Into<String>) -> Self {
        ImageError::InvalidImage {
            image: image.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(dir: &Path, reason: impl Into<String>) -> Self {
        ImageError::CorruptStore {
            dir: dir.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// `map_err` helper: `.map_err(io_err("reading", &path))`.
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lower_case_and_name_the_subject() {
        let e = ImageError::DigestMismatch {
            image: "example.com/echo:1.0".into(),
            what: "layer sha256:ab".into(),
            expected: "sha256:ab".into(),
            actual: "sha256:cd".into(),
        };
        assert_eq!(
            e.to_string(),
            "image \"example.com/echo:1.0\": layer sha256:ab: digest mismatch (expected sha256:ab, got sha256:cd)"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidImage);
        let e = io_err("reading", Path::new("/x"))(io::Error::from(io::ErrorKind::NotFound));
        assert!(e.to_string().starts_with("reading /x: "));
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(ImageError::NotFound {
            reference: "x".into()
        }
        .is_not_found());
    }
}
