//! `infra`: run the bookstore on this machine. `infra --help` lists the commands.
use bookstore_common::cli::fail;
use clap::{Parser, Subcommand};
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

fn tokens() -> (String, String) {
    let cluster = std::env::var("BOOKSTORE_CLUSTER_TOKEN").unwrap_or_else(|_| random_token());
    let admin = std::env::var("BOOKSTORE_ADMIN_TOKEN").unwrap_or_else(|_| random_token());
    (cluster, admin)
}

async fn up(
    cluster: PathBuf,
    books: PathBuf,
    output_dir: PathBuf,
    fresh: bool,
) -> Result<(), String> {
    let (cluster_token, admin_token) = tokens();
    let data = output_dir.join("data");
    if fresh && data.exists() {
        std::fs::remove_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        say(&format!("deleted {} (--fresh)", data.display()));
    } else if data.exists() {
        say(&format!(
            "keeping the replicas' data in {} (stock and orders survive restarts; --fresh starts over)",
            data.display()
        ));
    }
    let mut lc = LocalCluster::start(
        LocalOptions {
            cluster_file: cluster,
            books,
            output_dir: output_dir.clone(),
            cluster_token,
            admin_token: admin_token.clone(),
            program: None,
            env: Vec::new(),
        },
        &say,
    )
    .await?;
    out(&format!("bookstore is up: {}", lc.frontend_url()));
    out(&format!(
        "  try:   curl '{}/search?topic=distributed%20systems'",
        lc.frontend_url()
    ));
    out(&format!(
        "         curl -X POST '{}/buy?item_number=1'",
        lc.frontend_url()
    ));
    out(&format!("  admin: curl -X POST -H 'Authorization: Bearer {admin_token}' '{}/admin/restock?item_number=1&quantity=5'", lc.frontend_url()));
    out(&format!(
        "  logs:  {}/ (operation logs *_log, server output *.stderr.log)",
        output_dir.display()
    ));
    out("  Ctrl-C stops every server.");
    let mut term = Box::pin(bookstore_common::server::termination());
    loop {
        tokio::select! {
            _ = &mut term => break,
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {
                while let Some((name, why)) = lc.exited() {
                    say(&format!("{name} exited: {why}"));
                }
            }
        }
    }
    say("stopping every server");
    lc.stop().await;
    say("stopped");
    Ok(())
}

async fn test(
    frontend: Option<String>,
    books_file: PathBuf,
    output_dir: PathBuf,
) -> Result<bool, String> {
    let books = bookstore_common::config::load_books(&books_file).map_err(|e| e.to_string())?;
    let mut started = None;
    let url = match frontend {
        Some(u) => u,
        None => {
            let dir = output_dir.join("test-cluster");
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let cluster = free_port_cluster(2, 2).map_err(|e| e.to_string())?;
            let file = dir.join("cluster.csv");
            std::fs::write(&file, cluster.to_text()).map_err(|e| e.to_string())?;
            let (cluster_token, admin_token) = tokens();
            say(&format!("starting a fresh cluster ({})", file.display()));
            let lc = LocalCluster::start(
                LocalOptions {
                    cluster_file: file,
                    books: books_file,
                    output_dir: dir.clone(),
                    cluster_token,
                    admin_token,
                    program: None,
                    env: Vec::new(),
                },
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

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let result = match args.command {
        Command::Serve { server } => match server {
            Serve::Frontend(c) => bookstore_frontend::cli::launch(c).await,
            Serve::Cache(c) => bookstore_cache::cli::launch(c).await,
            Serve::Catalog(c) => bookstore_catalog::cli::launch(c).await,
            Serve::Order(c) => bookstore_order::cli::launch(c).await,
        },
        #[cfg(feature = "ec2")]
        Command::Ec2 { command } => match infra::ec2::cli::main(command).await {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e),
        },
        #[cfg(not(feature = "ec2"))]
        Command::Ec2 { .. } => Err(
            "this infra was built without EC2 support (the AWS SDK is left out of the main \
             build); run `cargo run --release -p infra --features ec2 -- ec2 ...`"
                .to_string(),
        ),
        Command::Local { command } => match command {
            Local::Up {
                cluster,
                books,
                output_dir,
                fresh,
            } => up(cluster, books, output_dir, fresh).await,
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
        fail(e);
    }
}
