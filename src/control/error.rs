//! The control plane's errors, and their one mapping to gRPC statuses.

use tonic::{Code, Status};

use super::container::ContainerError;
use super::image::{ErrorKind as ImageErrorKind, ImageError};
use crate::pool::NameError;

/// Every way a CRI call can fail. Messages are lower case, name the pod,
/// container, image or label concerned, and say what to do where it is not
/// obvious.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The state database could not be read or written (disk full,
    /// unwritable directory, corruption).
    #[error("{0}")]
    State(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) | Error::Name(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Container(ContainerError::NotReady { .. }) => Code::DeadlineExceeded,
            Error::Container(
                ContainerError::StartFailed { .. } | ContainerError::ExitedDuringStart { .. },
            ) => Code::FailedPrecondition,
            Error::Container(ContainerError::Io { .. }) | Error::Io { .. } | Error::State(_) => {
                Code::Internal
            }
            Error::Image(e) => match e.kind() {
                ImageErrorKind::NotFound => Code::NotFound,
                ImageErrorKind::InvalidArgument => Code::InvalidArgument,
                ImageErrorKind::InvalidImage => Code::FailedPrecondition,
                ImageErrorKind::Internal => Code::Internal,
                ImageErrorKind::Unavailable => Code::Unavailable,
                ImageErrorKind::Unauthenticated => Code::Unauthenticated,
            },
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
