//! `idgate demo`: the product on its embedded defaults, with everything it needs built in
//! (an in-memory store and an echo app as the upstream), so one command shows it working.

pub mod echo;
pub mod idp;
mod routes;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{
    AttributeMap, Config, ConfigErrors, IdpSource, NameOrder, ProvisioningConfig, SamlConfig,
    ScimConfig, TenantConfig,
};
use crate::{App, StartError};

/// The demo's config, shipped as `config/demo.toml` and embedded here so the binary
/// alone can run the demo.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The embedded config did not validate (a build defect; a test guards it).
    #[error("embedded demo config is invalid:\n{0}")]
    Config(#[from] ConfigErrors),
    /// The echo app could not listen.
    #[error("cannot start the echo app: {0}")]
    Echo(std::io::Error),
    /// The proxy could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The development IdP could not be made.
    #[error(transparent)]
    Idp(#[from] idp::DevIdpError),
}

/// The demo config with the proxy on `listen` (default from `config/demo.toml`) and the
/// upstream pointing at `upstream`.
pub fn config(listen: Option<SocketAddr>, upstream: SocketAddr) -> Result<Config, ConfigErrors> {
    let mut config = Config::from_toml(DEMO_CONFIG, Path::new("."))?;
    if let Some(listen) = listen {
        config.server.listen = listen;
        if let Ok(url) = url::Url::parse(&format!("http://{listen}")) {
            config.server.public_url = url;
        }
    }
    config.server.upstream = format!("http://{upstream}")
        .parse()
        .expect("a socket address forms a valid URI");
    Ok(config)
}

/// The tenant `demo`, whose IdP is the development IdP, and that IdP.
pub fn dev_tenant(config: &Config) -> Result<(TenantConfig, idp::DevIdp), idp::DevIdpError> {
    let base = config
        .server
        .public_url
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    let sp_entity_id = format!("{base}/_idgate/saml/demo/metadata");
    let idp = idp::DevIdp::new(
        format!("{base}/_idgate/saml/demo/acs"),
        sp_entity_id.clone(),
    )?;
    let sso_url = url::Url::parse(&format!("{base}/_idgate/dev-idp/sso"))
        .map_err(|e| idp::DevIdpError(e.to_string()))?;
    let tenant = TenantConfig {
        id: "demo".into(),
        hosts: Vec::new(),
        default: true,
        saml: SamlConfig {
            idp: IdpSource::Explicit {
                entity_id: idp::ENTITY_ID.into(),
                sso_url,
                certificates: vec![idp.cert_pem.clone()],
            },
            sp_entity_id,
            idp_slo_url: None,
            after_logout_url: None,
            allow_idp_initiated: false,
            want_assertions_signed: true,
            allow_sha1: false,
            sp_key: None,
            sp_previous_keys: Vec::new(),
            require_encrypted_assertions: false,
            allow_rsa1_5: false,
            sign_requests: false,
            name_id_format: "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent".into(),
            attributes: AttributeMap {
                user_id: "uid".into(),
                email: "email".into(),
                first_name: "name".into(),
                last_name: "surname".into(),
                group_id: "group_uid".into(),
                group_name: "group_name".into(),
                role: "group_role".into(),
            },
        },
        provisioning: ProvisioningConfig {
            create_groups: true,
            create_users: true,
            link_by_email: true,
            default_role: crate::config::defaults::DEFAULT_ROLE.into(),
        },
        scim: None,
        maestrano: None,
        bearer: Vec::new(),
        from_devpl: false,
    };
    Ok((tenant, idp))
}

/// Turns SCIM on for the demo tenant with a token made for this run, so the tour can
/// deactivate someone the way an IdP would. Returns the plain token, which only this
/// run's printout and echo page ever show.
pub fn enable_scim(tenant: &mut TenantConfig) -> String {
    let (token, _) = crate::scim::token::generate();
    tenant.scim = Some(ScimConfig {
        token_sha256: crate::scim::token::digest(&token),
        previous_token_sha256: Vec::new(),
        name_order: NameOrder::GivenFamily,
    });
    token
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(listen: Option<SocketAddr>) -> Result<(), DemoError> {
    let echo = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(DemoError::Echo)?;
    let echo_addr = echo.local_addr().map_err(DemoError::Echo)?;
    let mut config = config(listen, echo_addr)?;
    let (mut tenant, dev_idp) = dev_tenant(&config)?;
    let scim_token = enable_scim(&mut tenant);
    let base = config.server.public_url.as_str().trim_end_matches('/');
    let tour = echo::Tour {
        scim_base: format!("{base}/_idgate/scim/{}/v2", tenant.id),
        scim_token,
    };
    config.tenants.push(tenant);
    let jwks_url = format!("http://{}/_idgate/jwks.json", config.server.listen);
    let (stop_echo, stop_rx) = watch::channel(false);
    let echo_task = tokio::spawn(crate::server::serve(
        echo,
        Arc::new(echo::Echo::guided(jwks_url, tour.clone())),
        stop_rx,
        std::time::Duration::from_secs(1),
    ));
    let running = App::with_dev_idp(config, dev_idp)?.start().await?;
    let open = format!("http://{}/", running.public_addr());
    // The tour in three steps, the same as README.md's first screen. Printing the SCIM
    // token is for the demo only: it was made for this run and dies with it.
    println!();
    println!("  idgate demo is running. Try it in three steps:");
    println!("  1. Open {open} in a browser and sign in at the built-in dev IdP (pick anyone).");
    println!("  2. The page shows what the app behind idgate receives: identity headers and a");
    println!("     verified JWT. It has Log out and Sign in as someone else.");
    println!(
        "  3. Run the deactivation curl shown on that page, then reload: the user is blocked."
    );
    println!();
    println!("  SCIM base URL: {}", tour.scim_base);
    println!(
        "  SCIM token:    {}   (made for this demo run only)",
        tour.scim_token
    );
    println!(
        "  Admin: http://{}/metrics   Stop: Ctrl-C",
        running.admin_addr()
    );
    println!();
    running.run_until_signal().await;
    let _ = stop_echo.send(true);
    let _ = echo_task.await;
    Ok(())
}
