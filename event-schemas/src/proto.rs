//! The prost messages generated from `proto/orderflow/v1/*.proto` (package `orderflow.v1`).
//!
//! These are the wire types. Services work with the domain types at the crate root and convert
//! with `From` (encode) and `TryFrom` (decode); only this crate and the edges that move raw
//! messages need to name these.

include!(concat!(env!("OUT_DIR"), "/orderflow.v1.rs"));
