//! SCIM 2.0 provisioning. This first cut holds the bearer-token helpers that the CLI
//! (`idgate token`) and config validation share.

pub mod token;
