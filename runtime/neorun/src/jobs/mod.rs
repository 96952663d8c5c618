//! Jobs that run a model over stored data rather than live requests: batch
//! transform (`batch`), with the JSONPath subset its `DataProcessing` uses
//! (`jsonpath`), over local files or S3-compatible stores (`objects`, and
//! `s3` with the `s3` feature). Asynchronous invocations run through `batch`
//! too.

pub mod batch;
pub mod jsonpath;
pub mod objects;
#[cfg(feature = "s3")]
pub mod s3;
