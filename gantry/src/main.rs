//! `gantry`: the command line. Parses arguments, loads the configuration and hands over to the
//! `gantry` library; nothing else lives here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gantry::demo::{Demo, DemoOptions};
use gantry::routing::daemon::Withdrawal;
use gantry::run::RunOptions;
use lb_core::logging::{self, LogFormat};

/// jemalloc rather than the C library's allocator: its background threads give memory freed
/// after a burst of connections (an attack, a traffic peak) back to the system within seconds,
/// whatever the workers do meanwhile, where glibc's keeps it resident; and it is faster than
/// musl's, which the static build would otherwise use.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "gantry", version = gantry::build_info::LONG_VERSION, about = "Gantry load-balancer appliance")]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormatArg,
    /// Log level when RUST_LOG is not set (error, warn, info, debug, trace).
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

/// The log formats, as the command line names them.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(format: LogFormatArg) -> LogFormat {
        match format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the services in a configuration file (reloads on SIGHUP and on change).
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "/etc/gantry/gantry.yaml")]
        config: PathBuf,
        /// Take over the ports of the Gantry running here (the one holding the control
        /// socket): it hands its sockets and UDP flows over, then drains and exits. Without
        /// it, Gantry refuses to start while another holds the control socket.
        #[arg(long)]
        takeover: bool,
        /// The control socket: an abstract Unix socket name (no `@`). One Gantry per name and
        /// network namespace.
        #[arg(long, default_value = gantry::takeover::DEFAULT_CONTROL_SOCKET)]
        control_socket: String,
    },
    /// Validate a configuration file and print every problem found.
    Check {
        /// The configuration file.
        #[arg(long, short, default_value = "/etc/gantry/gantry.yaml")]
        config: PathBuf,
    },
    /// Withdraw the routes a Gantry announced through the routing daemon, unless a Gantry
    /// still runs with them (for systemd's `ExecStopPost=`).
    WithdrawRoutes {
        /// The configuration file (its `routing:` section says where the routes are).
        #[arg(long, short, default_value = "/etc/gantry/gantry.yaml")]
        config: PathBuf,
    },
    /// Wait until no Gantry announces from a routing folder any more, then withdraw its
    /// routes. Gantry starts it by itself; it is not meant to be run by hand.
    #[command(hide = true)]
    RoutingGuard {
        /// The routing daemon: `bird` or `keepalived`.
        #[arg(long, default_value = "bird")]
        daemon: String,
        /// Gantry's routing folder.
        #[arg(long)]
        directory: PathBuf,
        /// BIRD's control socket.
        #[arg(long)]
        control_socket: Option<PathBuf>,
    },
    /// Ask a running Gantry which backend a request would reach now, and why (its affinity
    /// lookup, its balancer's answers, the backends as the policies see them). Changes nothing.
    Explain {
        /// The admin endpoint of the running Gantry.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// A file holding the admin token, when the endpoint wants one.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The service.
        #[arg(long)]
        service: String,
        /// The port's name.
        #[arg(long)]
        port: String,
        /// The client's address: an IP, or IP:port.
        #[arg(long)]
        client: String,
        /// The TLS server name or HTTP `Host`.
        #[arg(long)]
        authority: Option<String>,
        /// The request's path.
        #[arg(long)]
        path: Option<String>,
        /// A request header, `name: value` (repeat for more).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// A cookie, `name=value` (repeat for more).
        #[arg(long = "cookie")]
        cookies: Vec<String>,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start demo backends on loopback and Gantry balancing across them.
    Demo {
        /// The proxy's address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The admin endpoint's address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Number of demo backends.
        #[arg(long, default_value_t = 3)]
        backends: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Gantry uses ring through rustls and nothing else; pinning it process-wide keeps any
    // library that asks for "the default provider" on the same one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    logging::init(cli.log_format.into(), &cli.log_level);
    raise_open_files();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Explain {
            admin,
            token_file,
            service,
            port,
            client,
            authority,
            path,
            headers,
            cookies,
            json,
        } => {
            // One spelling for the question, whichever way it came: the endpoint's query.
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("service", &service);
            query.append_pair("port", &port);
            query.append_pair("client", &client);
            for (key, values) in [
                ("authority", Vec::from_iter(authority)),
                ("path", Vec::from_iter(path)),
                ("header", headers),
                ("cookie", cookies),
            ] {
                for value in values {
                    query.append_pair(key, &value);
                }
            }
            explain(admin, token_file.as_deref(), &query.finish(), json)
        }
        Command::WithdrawRoutes { config } => withdraw_routes(&config),
        Command::RoutingGuard {
            daemon,
            directory,
            control_socket,
        } => routing_guard(&daemon, directory, control_socket),
        Command::Run {
            config,
            takeover,
            control_socket,
        } => run(
            config,
            RunOptions {
                control_socket,
                takeover,
            },
        ),
        Command::Demo {
            listen,
            admin,
            backends,
        } => demo(DemoOptions {
            listen,
            admin,
            backends,
        }),
    }
}

/// Lets the process open as many files as the system allows it: every connection, and every
/// UDP flow, holds sockets, and the usual soft limit (1024) is far below what a load
/// balancer serves. The hard limit is the operator's (systemd's `LimitNOFILE=`).
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%err, "could not raise the open-file limit");
            }
        }
    }
}

/// `gantry explain`: the question checked here, answered by the running Gantry.
fn explain(admin: SocketAddr, token_file: Option<&Path>, query: &str, json: bool) -> ExitCode {
    let request = match gantry::explain::ExplainRequest::from_query(query) {
        Ok(request) => request,
        Err(problem) => {
            eprintln!("gantry explain: {problem}");
            return ExitCode::from(2);
        }
    };
    let token = match token_file.map(std::fs::read_to_string).transpose() {
        Ok(token) => token,
        Err(err) => {
            eprintln!("gantry explain: cannot read the token file: {err}");
            return ExitCode::from(2);
        }
    };
    match gantry::explain::ask(admin, token.as_deref(), &request) {
        Ok(answer) if json => {
            println!("{answer:#}");
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            print!("{}", gantry::explain::explain_text(&answer));
            ExitCode::SUCCESS
        }
        Err(problem) => {
            eprintln!("gantry explain: {problem}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    // What only running the plugins can tell (does each accept its port's parameters?) is
    // reported like the rest, with the field path of the policy.
    let checked = lb_config::load_file(path).and_then(|model| {
        let problems = lb_plugins::check(&model);
        if problems.is_empty() {
            Ok(model)
        } else {
            Err(lb_config::ConfigError::Invalid(problems))
        }
    });
    match checked {
        Ok(model) => {
            for warning in model.warnings() {
                eprintln!(
                    "{}: warning: {}: {}",
                    path.display(),
                    warning.field,
                    warning.message
                );
            }
            let ports = model.ports().count();
            println!(
                "{}: OK ({} service(s), {ports} port(s))",
                path.display(),
                model.services.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{}: {err}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn routing_guard(daemon: &str, directory: PathBuf, control_socket: Option<PathBuf>) -> ExitCode {
    let withdrawal = match (daemon, control_socket) {
        ("bird", Some(control_socket)) => Withdrawal::Bird {
            directory,
            control_socket,
        },
        ("keepalived", None) => Withdrawal::Keepalived { directory },
        _ => {
            eprintln!("routing-guard: --daemon bird --control-socket PATH, or --daemon keepalived");
            return ExitCode::FAILURE;
        }
    };
    match gantry::routing::guard::guard(&withdrawal) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(directory = %withdrawal.directory().display(), %err, "could not withdraw the routes");
            ExitCode::FAILURE
        }
    }
}

fn withdraw_routes(path: &Path) -> ExitCode {
    let model = match lb_config::load_file(path) {
        Ok(model) => model,
        Err(err) => {
            eprintln!("{}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(routing) = model.routing else {
        println!(
            "{}: no routing section: nothing to withdraw",
            path.display()
        );
        return ExitCode::SUCCESS;
    };
    let withdrawal = Withdrawal::of(&routing.daemon);
    let directory = withdrawal.directory().to_owned();
    match gantry::routing::guard::withdraw_if_unowned(&withdrawal) {
        Ok(true) => {
            println!("routes in {} withdrawn", directory.display());
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!(
                "a Gantry still announces from {}: nothing withdrawn",
                directory.display()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!(
                "cannot withdraw the routes in {}: {err}",
                directory.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    builder.enable_all().thread_name("gantry-worker").build()
}

fn run(config: PathBuf, options: RunOptions) -> ExitCode {
    let baseline = gantry::reload::Baseline::before_loading(&config);
    let builder = match lb_config::load_builder(&config) {
        Ok(builder) => builder,
        Err(err) => {
            eprintln!("{}: {err}", config.display());
            return ExitCode::FAILURE;
        }
    };
    let runtime = match runtime(builder.workers()) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match gantry::run::serve_file(builder, config, baseline, options).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!("cannot start: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

fn demo(options: DemoOptions) -> ExitCode {
    let runtime = match runtime(None) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let demo = match Demo::start(options).await {
            Ok(demo) => demo,
            Err(err) => {
                eprintln!("cannot start the demo: {err}");
                return ExitCode::FAILURE;
            }
        };
        println!("{}", demo.banner());
        let result = gantry::run::serve_until_signalled(demo.gantry.clone(), None, None).await;
        demo.stop_backends().await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("signal handling failed: {err}");
                ExitCode::FAILURE
            }
        }
    })
}
