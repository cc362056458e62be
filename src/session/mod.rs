//! Sessions: the cookie, the record, the in-process cache of live sessions, and
//! revocation.

pub mod model;
