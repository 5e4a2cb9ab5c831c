//! Bucket origins (S3 and S3-compatible object APIs): `sigv4` signs requests (AWS Signature
//! V4), `bucket` builds the object requests and counts their answers.

pub mod bucket;
pub mod sigv4;
