//! The one error type of the formats crate. Every variant names the file and, where one is
//! involved, the tensor or field, so a user can find what is wrong without a debugger.

use std::path::PathBuf;

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The OS refused an operation on a file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file's structure is broken or hostile (truncated, bad header, impossible sizes).
    #[error("{path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    /// One tensor in a file is wrong (dtype, shape, values).
    #[error("{path}: tensor '{tensor}': {msg}")]
    Tensor { path: PathBuf, tensor: String, msg: String },
    /// A tensor's values are wrong, found where no file is at hand (packing, ternarising).
    #[error("tensor '{tensor}': {msg}")]
    Values { tensor: String, msg: String },
    /// Input the formats crate does not support (a dtype, a type id, a config value).
    #[error("{path}: {msg}")]
    Unsupported { path: PathBuf, msg: String },
}

impl FormatError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io { path: path.into(), source }
    }

    pub fn corrupt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        FormatError::Corrupt { path: path.into(), msg: msg.into() }
    }

    pub fn tensor(path: impl Into<PathBuf>, tensor: impl Into<String>, msg: impl Into<String>) -> Self {
        FormatError::Tensor { path: path.into(), tensor: tensor.into(), msg: msg.into() }
    }

    pub fn values(tensor: impl Into<String>, msg: impl Into<String>) -> Self {
        FormatError::Values { tensor: tensor.into(), msg: msg.into() }
    }

    pub fn unsupported(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        FormatError::Unsupported { path: path.into(), msg: msg.into() }
    }

    /// Attaches a file to an error raised without one (e.g. while ternarising a tensor).
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        match self {
            FormatError::Values { tensor, msg } => FormatError::Tensor { path: path.into(), tensor, msg },
            other => other,
        }
    }
}
