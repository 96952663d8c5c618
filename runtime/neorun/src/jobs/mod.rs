//! Jobs that run a model over stored data rather than live requests: batch
//! transform (`batch`), with the JSONPath subset its `DataProcessing` uses
//! (`jsonpath`).

pub mod batch;
pub mod jsonpath;
pub mod objects;
