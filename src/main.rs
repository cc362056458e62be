//! The `idgate` command line. Parsing, exit codes and printing only; the product lives
//! in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use idgate::identity::keys::{self, Algorithm};
use idgate::telemetry::{self, LogFormat};

// mimalloc: see `idgate::alloc` for why, and for how it is called.
#[global_allocator]
static GLOBAL: idgate::alloc::Mimalloc = idgate::alloc::Mimalloc;

/// Exit code for an invalid config (EX_USAGE from sysexits.h).
const EXIT_CONFIG: u8 = 64;
/// Exit code for a failure at run time (EX_SOFTWARE).
const EXIT_RUNTIME: u8 = 70;

#[derive(Parser)]
#[command(
    name = "idgate",
    version,
    about = "Identity sidecar: SAML SSO, SCIM and signed identity headers in front of an unmodified app"
)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "json")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Serve {
        /// Config file (TOML).
        #[arg(long, env = "IDGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config and print every error with its key path.
    CheckConfig {
        /// Config file (TOML).
        #[arg(long, env = "IDGATE_CONFIG")]
        config: PathBuf,
    },
    /// Run on embedded defaults with a built-in echo app as the upstream.
    Demo {
        /// Public listen address: IP:PORT or HOST:PORT (localhost:8080).
        #[arg(long, value_parser = idgate::config::listen_addr)]
        listen: Option<SocketAddr>,
    },
    /// Print a new PEM private key for signing identity JWTs.
    Keygen {
        /// Algorithm: EdDSA (default), ES256 or RS256.
        #[arg(long, default_value = "EdDSA")]
        alg: Algorithm,
    },
    /// Print a new SCIM bearer token (line 1) and its hash for the config (line 2).
    Token,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve { .. } | Command::Demo { .. }) {
        tune_memory();
    }
    match cli.command {
        Command::Keygen { alg } => match keys::generate_pem(alg) {
            Ok(pem) => {
                print!("{pem}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("idgate: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        },
        Command::Token => {
            let (token, hash) = idgate::scim::token::generate();
            println!("{token}");
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match idgate::check_config(&config) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
                println!("{}: valid", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}: {} error(s)", config.display(), errors.0.len());
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Serve { config: path } => {
            // Read before the subscriber is installed, which `[telemetry]` shapes; its
            // errors and warnings are logged right after.
            let checked = idgate::check_config(&path);
            let tracing =
                telemetry::init(cli.log_format, checked.as_ref().ok().map(|c| &c.telemetry));
            let config = match checked {
                Ok(c) => {
                    for w in &c.warnings {
                        tracing::warn!(key = w.path, "{}", w.message);
                    }
                    c
                }
                Err(errors) => {
                    for e in &errors.0 {
                        tracing::error!(key = e.path, "{}", e.message);
                        eprintln!("{e}");
                    }
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let code = run(async move {
                let running = idgate::App::new(config)?.reload_from(path).start().await?;
                running.run_until_signal().await;
                Ok::<_, idgate::StartError>(())
            });
            // After the runtime is gone: the last spans (the drained requests') go out.
            tracing.shutdown();
            code
        }
        Command::Demo { listen } => {
            telemetry::init(cli.log_format, None);
            run(idgate::demo::run(listen))
        }
    }
}

/// How often freed memory is handed back to the kernel while idgate is idle.
const RETURN_MEMORY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Memory for a long-running server: idle RSS low and memory given back after a burst.
///
/// - Transparent huge pages off for this process: mimalloc asks for them on its arenas,
///   and 2 MiB pages made a freshly started idgate 28 MB resident instead of 17, and
///   10,000 idle connections 324 MB instead of 191.
/// - mimalloc returns freed pages to the kernel only once they have been free for a
///   second *and* the allocator runs again: after a burst of connections closed, an idle
///   process never did (its RSS stayed at the peak). A collection every second lets it,
///   at the cost of one call per interval; once a second, so that the buffers an idle
///   keep-alive connection gives up when it parks (`server/conn.rs`) leave RSS about as
///   soon as they are freed (10,000 connections that made a request and went quiet were
///   still 157 MB resident 2 s later with a collection every 5 s).
fn tune_memory() {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory map.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let _ = std::thread::Builder::new()
        .name("idgate-memory".into())
        .spawn(|| {
            loop {
                std::thread::sleep(RETURN_MEMORY_EVERY);
                // SAFETY: mi_collect may be called from any thread at any time.
                unsafe { libmimalloc_sys::mi_collect(false) };
            }
        });
}

fn run<E: std::fmt::Display>(fut: impl std::future::Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("idgate: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "idgate failed");
            eprintln!("idgate: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
