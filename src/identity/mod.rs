//! The identity that idgate asserts to the app: signing keys now; claims, headers and
//! the JWKS build on them.

pub mod keys;
