//! The command line: one binary, `rebound`, with the commands of the contract.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Durable Redis Streams jobs for Resend webhooks, bounced-email re-sends and event forwarding.
#[derive(Debug, Parser)]
#[command(name = "rebound", version, about)]
pub struct Cli {
    /// Config file (default: config/rebound.toml when it exists).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every role in one process: ingress, workers, scheduler, reclaimer, metrics.
    Up {
        /// Also run the Resend emulator and point the workers at it.
        #[arg(long)]
        sandbox: bool,
    },
    /// Ingress + admin API + /metrics.
    Serve,
    /// Consumer-group worker + scheduler + reclaimer + /metrics.
    Work {
        /// Jobs in flight per queue (overrides worker.concurrency).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Address of /metrics (overrides worker.metrics_listen).
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Suppressed recipients.
    #[command(subcommand)]
    Suppression(SuppressionCommand),
    /// Forwarding subscribers.
    #[command(subcommand)]
    Subscriptions(SubscriptionsCommand),
    /// Stream lengths, pending, consumers, retry and dead counts.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The Resend emulator alone.
    Sandbox,
    /// Built-in load generators; print one JSON line.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Load and validate the config; print it with secrets masked.
    CheckConfig,
}

/// `rebound dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full.
    Show {
        /// Dead-letter entry id.
        id: String,
    },
    /// Put dead letters back on their queue with attempts reset.
    Replay {
        /// Dead-letter entry ids.
        ids: Vec<String>,
        /// Replay every dead letter (of --queue when given).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// With --all: only this queue.
        #[arg(long)]
        queue: Option<String>,
    },
    /// Delete dead letters.
    Purge {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

/// `rebound suppression ...`
#[derive(Debug, Subcommand)]
pub enum SuppressionCommand {
    /// List suppressed recipients.
    List,
    /// Suppress a recipient.
    Add {
        /// Address.
        email: String,
        /// Why.
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// Allow a recipient again.
    Remove {
        /// Address.
        email: String,
    },
}

/// `rebound subscriptions ...`
#[derive(Debug, Subcommand)]
pub enum SubscriptionsCommand {
    /// List subscribers and their state.
    List,
    /// Resume a suspended subscriber and release its parked deliveries.
    Resume {
        /// Subscription name.
        name: String,
    },
}

/// `rebound bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The real worker over no-op jobs.
    Queue(BenchQueueArgs),
    /// Signed webhooks over keep-alive HTTP into a running ingress.
    Ingress(BenchIngressArgs),
}

/// Queue benchmark mode.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BenchMode {
    /// Enqueue everything, then drain it.
    Drain,
    /// Offer jobs at a fixed rate and measure enqueue-to-done latency.
    Steady,
    /// Put every job in the retry set due at one instant.
    Delayed,
}

/// `rebound bench queue`
#[derive(Debug, Clone, Args)]
pub struct BenchQueueArgs {
    /// Jobs.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Worker concurrency.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = BenchMode::Drain)]
    pub mode: BenchMode,
    /// Jobs per second offered in steady mode.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
}

/// `rebound bench ingress`
#[derive(Debug, Clone, Args)]
pub struct BenchIngressArgs {
    /// Requests.
    #[arg(long, default_value_t = 50_000)]
    pub requests: usize,
    /// Connections.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Ingress URL; when absent an ingress is started in-process on a free port.
    #[arg(long)]
    pub url: Option<String>,
}
