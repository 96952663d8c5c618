//! The inference layer's one error type. Transports map it to their wire
//! form once (HTTP: `http::error`).

use neoc_runtime::{BadRequest, PredictError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InferError {
    /// Every queue place is taken: retry later.
    Overloaded,
    /// The server is draining; nothing new is admitted.
    ShuttingDown,
    /// No served model has this name.
    UnknownModel { name: String, served: Vec<String> },
    /// The request does not fit the model (its fault).
    BadRequest(String),
    /// The engine failed on an input it accepted.
    Engine(String),
    /// A fault of neorun's own (a task that died, a channel that closed).
    Internal(String),
}

impl std::fmt::Display for InferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InferError::Overloaded => f.write_str("inference queue is full; retry later"),
            InferError::ShuttingDown => f.write_str("server is shutting down"),
            InferError::UnknownModel { name, served } => {
                write!(f, "unknown model `{name}`; served: {}", served.join(", "))
            }
            InferError::BadRequest(m) => f.write_str(m),
            InferError::Engine(m) => write!(f, "inference failed: {m}"),
            InferError::Internal(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for InferError {}

impl From<PredictError> for InferError {
    fn from(e: PredictError) -> InferError {
        match e {
            PredictError::BadRequest(b) => InferError::BadRequest(b.0),
            PredictError::Engine(m) => InferError::Engine(m),
        }
    }
}

impl From<BadRequest> for InferError {
    fn from(b: BadRequest) -> InferError {
        InferError::BadRequest(b.0)
    }
}
