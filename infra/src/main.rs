//! `infra`: run the bookstore on this machine. `infra --help` lists the commands.
use anyhow::{anyhow, Context};
use bookstore_common::cli::fail;
use bookstore_common::client::encode;
use bookstore_common::config::{ClusterConfig, Endpoint, Kind};
use clap::{Parser, Subcommand};
use infra::control;
use infra::local::{free_port_cluster, random_token, LocalCluster, LocalOptions};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(version, about = "Start, test and stop the bookstore cluster")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The cluster on this machine.
    Local {
        #[command(subcommand)]
        command: Local,
    },
    /// The cluster on EC2 instances (or an EC2-compatible emulator): up, deploy, test,
    /// collect, down, or all of them with `run`.
    #[cfg(feature = "ec2")]
    Ec2 {
        #[command(subcommand)]
        command: infra::ec2::cli::Ec2Command,
    },
    /// The cluster on EC2 (this build has no EC2 support: build with `--features ec2`).
    #[cfg(not(feature = "ec2"))]
    Ec2 {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Run one server in this process (what `local up` starts, one per process).
    Serve {
        #[command(subcommand)]
        server: Serve,
    },
}

#[derive(Subcommand, Debug)]
enum Local {
    /// Start every server of the cluster file as its own process; Ctrl-C stops them all.
    Up {
        /// Cluster file (`kind,host:port` a line).
        #[arg(long, default_value = "config/cluster.csv", env = "BOOKSTORE_CLUSTER")]
        cluster: PathBuf,
        /// Books CSV the catalogs load.
        #[arg(long, default_value = "data/books.csv", env = "BOOKSTORE_BOOKS")]
        books: PathBuf,
        /// Where logs go; replicas keep their data in `<output-dir>/data/`.
        #[arg(long, default_value = "output", env = "BOOKSTORE_OUTPUT_DIR")]
        output_dir: PathBuf,
        /// Start from the books file again: delete `<output-dir>/data/` first.
        #[arg(long)]
        fresh: bool,
        /// Run N frontends behind HAProxy, which listens on the cluster file's frontend
        /// address (the frontends get free loopback ports).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
        frontends: u32,
    },
    /// Scale out: start a new catalog or order replica, or a coordinator, in the running
    /// `local up`; it joins, catches up and serves, with no restart of anything else.
    Add {
        /// catalog, order or coordinator.
        kind: String,
        /// The `--output-dir` of the running `local up`.
        #[arg(long, default_value = "output", env = "BOOKSTORE_OUTPUT_DIR")]
        output_dir: PathBuf,
    },
    /// Scale in: retire replica ID of KIND (catalog or order) gracefully, or remove
    /// coordinator ID from the group, and stop it.
    Remove {
        kind: String,
        id: u32,
        /// The `--output-dir` of the running `local up`.
        #[arg(long, default_value = "output", env = "BOOKSTORE_OUTPUT_DIR")]
        output_dir: PathBuf,
    },
    /// Restart every catalog and order replica, then every coordinator, of the running
    /// `local up`, one at a time: backups first, the coordinator leader last, each synced
    /// again before the next goes.
    RollingRestart {
        /// The `--output-dir` of the running `local up`.
        #[arg(long, default_value = "output", env = "BOOKSTORE_OUTPUT_DIR")]
        output_dir: PathBuf,
    },
    /// Run the seed's scenarios (starts a fresh cluster on free ports unless --frontend).
    Test {
        /// Test a running cluster at this URL instead of starting one.
        #[arg(long)]
        frontend: Option<String>,
        /// Books CSV the cluster was started with.
        #[arg(long, default_value = "data/books.csv", env = "BOOKSTORE_BOOKS")]
        books: PathBuf,
        /// Where client_log goes; a started cluster keeps its logs and data in
        /// `<output-dir>/test-cluster/` (deleted first).
        #[arg(long, default_value = "output", env = "BOOKSTORE_OUTPUT_DIR")]
        output_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum Serve {
    Coordinator(bookstore_coordinator::cli::Cli),
    Frontend(bookstore_frontend::cli::Cli),
    Cache(bookstore_cache::cli::Cli),
    Catalog(bookstore_catalog::cli::Cli),
    Order(bookstore_order::cli::Cli),
}

/// Progress to stderr; a closed stderr is not a reason to stop the cluster.
fn say(s: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "infra: {s}");
}

/// A line to stdout, ignoring a closed pipe (`infra local up | head -1`).
fn out(s: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{s}");
}

/// The cluster and admin tokens: the environment's (checked), else random ones.
fn tokens() -> anyhow::Result<(String, String)> {
    let get = |var: &str, what: &str| match std::env::var(var) {
        Ok(t) => bookstore_common::auth::check_token(what, &t)
            .map(|()| t)
            .map_err(|e| anyhow!("{var}: {e}")),
        Err(_) => Ok(random_token()),
    };
    Ok((
        get("BOOKSTORE_CLUSTER_TOKEN", "cluster token")?,
        get("BOOKSTORE_ADMIN_TOKEN", "admin token")?,
    ))
}

/// With `--frontends N`: a cluster file in `output_dir` with N frontends on free ports,
/// and the address HAProxy takes over (the given file's frontend 0).
fn with_frontends(
    cluster: &std::path::Path,
    output_dir: &std::path::Path,
    n: u32,
) -> anyhow::Result<(PathBuf, Endpoint)> {
    let c = ClusterConfig::load(cluster)?;
    let listen = c
        .server(Kind::Frontend, 0)
        .cloned()
        .with_context(|| format!("{}: no frontend", cluster.display()))?;
    let mut parts = Vec::new();
    let mut hold = Vec::new();
    for _ in 0..n {
        let l = std::net::TcpListener::bind(format!("{}:0", listen.host))
            .with_context(|| format!("no free port on {}", listen.host))?;
        let port = l.local_addr()?.port();
        parts.push((Kind::Frontend, Endpoint::new(listen.host.clone(), port)));
        hold.push(l);
    }
    for (kind, _, e) in c.all() {
        if kind != Kind::Frontend {
            parts.push((kind, e));
        }
    }
    std::fs::create_dir_all(output_dir).with_context(|| output_dir.display().to_string())?;
    let file = output_dir.join("cluster.generated.csv");
    std::fs::write(&file, ClusterConfig::from_parts(&parts).to_text())
        .with_context(|| file.display().to_string())?;
    Ok((file, listen))
}

async fn up(
    cluster: PathBuf,
    books: PathBuf,
    output_dir: PathBuf,
    fresh: bool,
    frontends: u32,
) -> anyhow::Result<()> {
    let (cluster_token, admin_token) = tokens()?;
    let (cluster, haproxy) = if frontends > 1 {
        let (file, listen) = with_frontends(&cluster, &output_dir, frontends)?;
        say(&format!(
            "{frontends} frontends behind HAProxy on {listen} (cluster file {})",
            file.display()
        ));
        (file, Some(listen))
    } else {
        (cluster, None)
    };
    let data = output_dir.join("data");
    if fresh && data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| data.display().to_string())?;
        say(&format!("deleted {} (--fresh)", data.display()));
    } else if data.exists() {
        say(&format!(
            "keeping the replicas' data in {} (stock and orders survive restarts; --fresh starts over)",
            data.display()
        ));
    }
    let mut options = LocalOptions::new(
        cluster,
        books,
        output_dir.clone(),
        cluster_token,
        admin_token.clone(),
    );
    options.haproxy = haproxy;
    // Installed before anything starts: a SIGTERM or Ctrl-C from here on stops every
    // server cleanly, however early it comes.
    let mut term = Box::pin(bookstore_common::server::termination());
    let mut lc = LocalCluster::start(options, &say).await?;
    let public = lc.public_url();
    out(&format!("bookstore is up: {public}"));
    out(&format!(
        "  try:   curl '{public}/search?topic=distributed%20systems'"
    ));
    out(&format!(
        "         curl -X POST '{public}/buy?item_number=1'"
    ));
    // Tokens are never printed: the admin token is in the state file, mode 0600.
    let state_file = control::state_file(&output_dir);
    out(&format!(
        "  admin: the admin token is in {} (\"admin_token\", readable by you only):",
        state_file.display()
    ));
    out(&format!(
        "         T=$(sed -n 's/.*\"admin_token\": \"\\(.*\\)\".*/\\1/p' {})",
        state_file.display()
    ));
    out(&format!("         curl -X POST -H \"Authorization: Bearer $T\" '{public}/admin/restock?item_number=1&quantity=5'"));
    out("  scale: infra local add catalog|order|coordinator | infra local remove KIND ID | infra local rolling-restart");
    out(&format!(
        "  logs:  {}/ (operation logs *_log, server output *.stderr.log)",
        output_dir.display()
    ));
    out("  Ctrl-C stops every server.");
    // The control API for `local add|remove|rolling-restart`.
    let listener = bookstore_common::server::bind("127.0.0.1:0", "control API")?;
    let control_url = format!("http://{}", listener.local_addr()?);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<control::Request>(4);
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control_server = tokio::spawn(control::serve(listener, admin_token.clone(), tx, async {
        let _ = control_stopped.await;
    }));
    control::write_state(
        &output_dir,
        &control::UpState {
            pid: std::process::id(),
            frontend: public.clone(),
            control: control_url,
            admin_token: admin_token.into(),
        },
    )?;
    loop {
        tokio::select! {
            _ = &mut term => break,
            Some(req) = rx.recv() => {
                let lines = std::sync::Mutex::new(Vec::new());
                let progress = |s: &str| {
                    say(s);
                    lines.lock().expect("not poisoned").push(s.to_string());
                };
                let result = control::execute(&mut lc, req.op, &progress).await;
                if let Err(e) = &result {
                    say(&format!("failed: {e:#}"));
                }
                let lines = lines.into_inner().expect("not poisoned");
                let _ = req
                    .reply
                    .send(result.map(|r| (r, lines)).map_err(|e| format!("{e:#}")));
            }
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {
                while let Some((name, why)) = lc.exited() {
                    say(&format!("{name} exited: {why}"));
                }
            }
        }
    }
    let _ = std::fs::remove_file(control::state_file(&output_dir));
    let _ = stop_control.send(());
    let _ = control_server.await;
    say("stopping every server");
    lc.stop().await;
    say("stopped");
    Ok(())
}

async fn test(
    frontend: Option<String>,
    books_file: PathBuf,
    output_dir: PathBuf,
) -> anyhow::Result<bool> {
    let books = bookstore_common::config::load_books(&books_file)?;
    let mut started = None;
    let url = match frontend {
        Some(u) => u,
        None => {
            let dir = output_dir.join("test-cluster");
            if dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| dir.display().to_string())?;
            }
            std::fs::create_dir_all(&dir)?;
            let cluster = free_port_cluster(2, 2)?;
            let file = dir.join("cluster.csv");
            std::fs::write(&file, cluster.to_text())?;
            let (cluster_token, admin_token) = tokens()?;
            say(&format!("starting a fresh cluster ({})", file.display()));
            let lc = LocalCluster::start(
                LocalOptions::new(file, books_file, dir.clone(), cluster_token, admin_token),
                &|_| {},
            )
            .await?;
            let u = lc.frontend_url();
            started = Some(lc);
            u
        }
    };
    let log = output_dir.join("client_log");
    say(&format!("running the scenarios against {url}"));
    let verdicts = infra::scenarios::run_all(&url, &books, &log, started.as_mut()).await;
    if let Some(mut lc) = started {
        lc.stop().await;
    }
    let verdicts = verdicts?;
    print!("{}", infra::scenarios::table(&verdicts));
    println!("client log: {}", log.display());
    Ok(verdicts.iter().all(|v| v.passed || v.skipped))
}

/// Asks the running `local up` to do something; prints its progress and result.
async fn remote(output_dir: &std::path::Path, path: &str) -> anyhow::Result<()> {
    say("asking the running `local up` (this waits until the change is complete)");
    let answer = control::call(output_dir, path).await?;
    if let Some(lines) = answer["progress"].as_array() {
        for l in lines {
            say(l.as_str().unwrap_or_default());
        }
    }
    out(&answer["result"].to_string());
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let result = match args.command {
        Command::Serve { server } => match server {
            Serve::Coordinator(c) => bookstore_coordinator::cli::launch(c).await,
            Serve::Frontend(c) => bookstore_frontend::cli::launch(c).await,
            Serve::Cache(c) => bookstore_cache::cli::launch(c).await,
            Serve::Catalog(c) => bookstore_catalog::cli::launch(c).await,
            Serve::Order(c) => bookstore_order::cli::launch(c).await,
        }
        .map_err(anyhow::Error::from),
        #[cfg(feature = "ec2")]
        Command::Ec2 { command } => match infra::ec2::cli::main(command).await {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e),
        },
        #[cfg(not(feature = "ec2"))]
        Command::Ec2 { .. } => Err(anyhow!(
            "this infra was built without EC2 support (the AWS SDK is left out of the main \
             build); run `cargo run --release -p infra --features ec2 -- ec2 ...`"
        )),
        Command::Local { command } => match command {
            Local::Up {
                cluster,
                books,
                output_dir,
                fresh,
                frontends,
            } => up(cluster, books, output_dir, fresh, frontends).await,
            Local::Add { kind, output_dir } => {
                remote(&output_dir, &format!("/add?kind={}", encode(&kind))).await
            }
            Local::Remove {
                kind,
                id,
                output_dir,
            } => {
                remote(
                    &output_dir,
                    &format!("/remove?kind={}&id={id}", encode(&kind)),
                )
                .await
            }
            Local::RollingRestart { output_dir } => remote(&output_dir, "/rolling-restart").await,
            Local::Test {
                frontend,
                books,
                output_dir,
            } => match test(frontend, books, output_dir).await {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(1),
                Err(e) => Err(e),
            },
        },
    };
    if let Err(e) = result {
        // The whole chain, "context: cause", as the messages always read.
        fail(format!("{e:#}"));
    }
}
