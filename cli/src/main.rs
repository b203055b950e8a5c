//! `volley`: send stdin through the engine, sink what arrives, benchmark the engine against
//! per-buffer system calls, tokio, tokio-uring and quinn-udp (the methods live in the
//! `volley-bench` library), or run a VPN-style TUN ↔ UDP tunnel on it.

mod addr;
mod send;
mod sink;
mod tls;
mod tunnel;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "volley",
    version,
    about = "Batched socket writes through io_uring (epoll fallback)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// `--backend` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Uring,
    Epoll,
}

impl From<BackendArg> for volley::Backend {
    fn from(b: BackendArg) -> volley::Backend {
        match b {
            BackendArg::Auto => volley::Backend::Auto,
            BackendArg::Uring => volley::Backend::Uring,
            BackendArg::Epoll => volley::Backend::Epoll,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Read stdin (or --input), cut it into messages, send them through the engine.
    Send {
        /// tcp://HOST:PORT, tls://HOST:PORT or udp://HOST:PORT
        url: String,
        /// Bytes per message (the last one may be shorter); for UDP, bytes per datagram.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Messages per flush.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Backend (default: VOLLEY_BACKEND, else auto).
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
        /// Read this file instead of stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        #[command(flatten)]
        tls: tls::SendTlsArgs,
    },
    /// Receive and count: TCP connections (bytes each) or UDP datagrams (count and sizes).
    Sink {
        /// tcp://BIND[:PORT], tls://BIND[:PORT] (with --cert, --key) or udp://BIND[:PORT] (no
        /// port or 0: any free port, printed)
        url: String,
        /// Write what arrives to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// TCP: exit after this many connections; UDP: after this many datagrams.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many idle seconds (UDP default 2; TCP: waiting for a connection).
        #[arg(long)]
        idle_timeout: Option<f64>,
        #[command(flatten)]
        tls: tls::SinkTlsArgs,
    },
    /// Compare send methods side by side (interleaved rounds, medians).
    Bench {
        /// Short run (under a minute).
        #[arg(long)]
        quick: bool,
        /// Print a JSON array instead of tables.
        #[arg(long)]
        json: bool,
        /// Scenario to run (repeatable; default all).
        #[arg(long = "scenario", value_enum)]
        scenarios: Vec<volley_bench::ScenarioName>,
        /// Method to run (repeatable; default all).
        #[arg(long = "method", value_enum)]
        methods: Vec<volley_bench::MethodName>,
        /// Timed rounds per method.
        #[arg(long)]
        rounds: Option<usize>,
        /// Messages per flush for tcp-small and udp-gso (default 1024).
        #[arg(long)]
        batch: Option<usize>,
        /// UDP receivers enable UDP_GRO: GSO sends then reach them unsegmented, as with a NIC
        /// doing UDP segmentation offload and a GRO peer (default off: the sender's CPU also pays
        /// the per-datagram segmentation and receive work of loopback).
        #[arg(long)]
        udp_gro: bool,
        /// Sender threads per method, each with its own sockets, receivers and engine (one
        /// engine per core; rates are the sum). Repeatable: several counts run side by side,
        /// with the scaling (default 1).
        #[arg(long = "threads")]
        threads: Vec<usize>,
    },
    /// VPN-style tunnel: TUN packets to the peer as UDP datagrams (batched through the engine),
    /// the peer's datagrams into the TUN device. Runs until SIGINT/SIGTERM; prints a summary.
    Tunnel {
        /// TUN device name (created, or attached if it exists).
        #[arg(long)]
        tun: String,
        /// Local UDP address, ADDR:PORT.
        #[arg(long)]
        listen: String,
        /// The peer tunnel's UDP address, ADDR:PORT; datagrams from anywhere else are dropped.
        #[arg(long)]
        peer: String,
        /// TUN MTU; must fit the underlay route's MTU minus 28 (IPv4) or 48 (IPv6) bytes.
        #[arg(long, default_value_t = tunnel::DEFAULT_MTU)]
        mtu: usize,
        /// Backend (default: VOLLEY_BACKEND, else auto).
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
        /// Baseline: one read→sendto and one recvfrom→write per packet, no engine.
        #[arg(long, conflicts_with = "backend")]
        naive: bool,
        /// TUN packets read per wake-up at most (one submission each).
        #[arg(long, default_value_t = tunnel::DEFAULT_BATCH)]
        batch: usize,
        /// IFF_VNET_HDR + TSO/checksum offload: TCP super-packets of up to 64 KiB in one TUN
        /// read, cut into MTU-sized packets here (as wireguard-go does).
        #[arg(long, conflicts_with = "naive")]
        offload: bool,
        /// The engine's queue limit per socket, in bytes (default: the engine's); a packet
        /// refused at the limit is held, and the TUN device not read, until there is room.
        #[arg(long, conflicts_with = "naive")]
        queue_bytes: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Send {
            url,
            size,
            batch,
            backend,
            input,
            tls,
        } => {
            return send::run(&send::SendOpts {
                url,
                size,
                batch,
                backend: backend.map(Into::into),
                input,
                tls,
            })
        }
        Cmd::Sink {
            url,
            out,
            count,
            idle_timeout,
            tls,
        } => sink::run(&sink::SinkOpts {
            url,
            out,
            count,
            idle_timeout,
            tls,
        }),
        Cmd::Bench {
            quick,
            json,
            scenarios,
            methods,
            rounds,
            batch,
            udp_gro,
            threads,
        } => volley_bench::run(&volley_bench::BenchOpts {
            quick,
            json,
            scenarios,
            methods,
            rounds,
            batch,
            udp_gro,
            threads,
        }),
        Cmd::Tunnel {
            tun,
            listen,
            peer,
            mtu,
            backend,
            naive,
            batch,
            offload,
            queue_bytes,
        } => {
            return tunnel::run(&tunnel::TunnelOpts {
                tun,
                listen,
                peer,
                mtu,
                backend: backend.map(Into::into),
                naive,
                batch,
                offload,
                queue_bytes,
            })
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("volley: {e}");
            ExitCode::FAILURE
        }
    }
}
