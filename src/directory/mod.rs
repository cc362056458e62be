//! The domain: tenants' groups (companies) and users, and the lifecycle rules that every
//! protocol (SAML, SCIM, Maestrano) goes through.

pub mod model;
