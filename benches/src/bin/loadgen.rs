//! `loadgen`: load generator for servers speaking the nbio-ws seed wire
//! format (JSON-RPC 2.0 over WebSocket), over real loopback sockets.
//!
//! ```text
//! loadgen reply  --url ws://127.0.0.1:9001/ws --connections 50 --inflight 8 --text-size 64 --duration 10s --warmup 2s
//! loadgen fanout --url ws://127.0.0.1:9001/ws --clients 2000 --rate 20 --duration 10s [--url2 ws://127.0.0.1:9002/ws]
//! loadgen idle   --url ws://127.0.0.1:9001/ws --connections 10000 --pid SERVER_PID --hold 5s
//! ```
//!
//! Add `--json` for one JSON object on stdout instead of text, and
//! `--pid SERVER_PID` to `reply`/`fanout` to also report the server's CPU
//! time per request/delivery. By default the generator runs on one thread
//! (`--threads 1`, a current-thread tokio runtime) so that on a small
//! machine most of the CPU is left to the server under test; its own CPU use
//! is reported so you can tell when it, not the server, is the bottleneck.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nbio_ws_benches::ws::WsTarget;
use nbio_ws_benches::{fanout, idle, parse_duration, reply};

/// Longest accepted run phase: keeps every load loop bounded.
const MAX_PHASE: Duration = Duration::from_secs(600);

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for JSON-RPC-over-WebSocket servers (loopback only)"
)]
struct Cli {
    /// Print one JSON object instead of human-readable lines.
    #[arg(long, global = true)]
    json: bool,
    /// Worker threads of the generator (1 = current-thread runtime).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// `self.reply` throughput and latency with pipelined requests.
    Reply(ReplyArgs),
    /// `broadcast` fan-out: delivery latency, missing and duplicate deliveries.
    Fanout(FanoutArgs),
    /// Server RSS per idle connection.
    Idle(IdleArgs),
}

#[derive(Args, Debug, Clone)]
struct ConnectArgs {
    /// Concurrent handshakes while connecting (batch size).
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Timeout of one connect + handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
}

#[derive(Args, Debug)]
struct ReplyArgs {
    /// WebSocket URL, e.g. ws://127.0.0.1:9001/ws.
    #[arg(long)]
    url: String,
    /// Connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Bytes of text per request.
    #[arg(long, default_value_t = 64)]
    text_size: usize,
    /// Measurement window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured load before the window.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Server pid, to report its CPU per request.
    #[arg(long)]
    pid: Option<u32>,
    /// Wait for in-flight responses after the window at most this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Args, Debug)]
struct FanoutArgs {
    /// WebSocket URL of the first server (the senders connect here).
    #[arg(long)]
    url: String,
    /// Further servers (repeatable or comma-separated); receivers are spread
    /// round-robin over --url and these.
    #[arg(long, value_delimiter = ',')]
    url2: Vec<String>,
    /// Receiver connections.
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// Broadcasts per second (all senders together).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Sending period.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Sender connections.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Minimum bytes of broadcast text.
    #[arg(long, default_value_t = 64)]
    text_size: usize,
    /// Pause between "all connected" and the first broadcast.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    settle: Duration,
    /// Longest wait for stragglers after the last broadcast.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    grace: Duration,
    /// Pid of the first server, to report its CPU per delivery.
    #[arg(long)]
    pid: Option<u32>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Args, Debug)]
struct IdleArgs {
    /// WebSocket URL.
    #[arg(long)]
    url: String,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Server pid (its VmRSS is read from /proc/PID/status).
    #[arg(long)]
    pid: u32,
    /// Hold the connections this long before measuring.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    hold: Duration,
    /// Pause after closing before the final RSS reading.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    after_close: Duration,
    #[command(flatten)]
    connect: ConnectArgs,
}

fn check_phase(name: &str, d: Duration) -> Result<(), String> {
    if d > MAX_PHASE {
        Err(format!("--{name} {d:?} exceeds the {MAX_PHASE:?} bound"))
    } else {
        Ok(())
    }
}

/// Prints the report as JSON or text.
fn emit<T: serde::Serialize>(json: bool, report: &T, human: String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("reports serialize")
        );
    } else {
        print!("{human}");
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Reply(a) => {
            check_phase("duration", a.duration)?;
            check_phase("warmup", a.warmup)?;
            if a.inflight == 0 || a.connections == 0 {
                return Err("--connections and --inflight must be at least 1".into());
            }
            nbio_ws_benches::proc::raise_nofile_limit(a.connections as u64 + 1024);
            let report = reply::run(reply::ReplyConfig {
                target: WsTarget::parse(&a.url)?,
                connections: a.connections,
                inflight: a.inflight,
                text_size: a.text_size,
                duration: a.duration,
                warmup: a.warmup,
                server_pid: a.pid,
                connect_concurrency: a.connect.connect_concurrency,
                connect_timeout: a.connect.connect_timeout,
                drain_timeout: a.drain_timeout,
            })
            .await;
            emit(cli.json, &report, report.human());
            if report.connected == 0 {
                return Err("no connection could be established".into());
            }
        }
        Cmd::Fanout(a) => {
            check_phase("duration", a.duration)?;
            check_phase("grace", a.grace)?;
            check_phase("settle", a.settle)?;
            if !(a.rate > 0.0 && a.rate <= 100_000.0) {
                return Err("--rate must be in (0, 100000]".into());
            }
            let mut targets = vec![WsTarget::parse(&a.url)?];
            for u in &a.url2 {
                targets.push(WsTarget::parse(u)?);
            }
            nbio_ws_benches::proc::raise_nofile_limit(a.clients as u64 + 1024);
            let report = fanout::run(fanout::FanoutConfig {
                targets,
                clients: a.clients,
                rate: a.rate,
                duration: a.duration,
                senders: a.senders,
                text_size: a.text_size,
                settle: a.settle,
                grace: a.grace,
                connect_concurrency: a.connect.connect_concurrency,
                connect_timeout: a.connect.connect_timeout,
                server_pid: a.pid,
            })
            .await;
            emit(cli.json, &report, report.human());
            if report.connected == 0 {
                return Err("no connection could be established".into());
            }
        }
        Cmd::Idle(a) => {
            check_phase("hold", a.hold)?;
            let report = idle::run(idle::IdleConfig {
                target: WsTarget::parse(&a.url)?,
                connections: a.connections,
                pid: a.pid,
                hold: a.hold,
                connect_concurrency: a.connect.connect_concurrency,
                connect_timeout: a.connect.connect_timeout,
                after_close: a.after_close,
            })
            .await?;
            emit(cli.json, &report, report.human());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
