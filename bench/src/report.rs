//! Text output: the machine header, one aligned table per scenario, the targets.

use std::ffi::CStr;

use crate::scenario::{Kind, Spec};
use crate::Row;

fn uname() -> String {
    // SAFETY: utsname is plain old data; zeroed is a valid value for it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown kernel".into();
    }
    let field = |f: &[libc::c_char]| {
        // SAFETY: uname fills each field with a NUL-terminated string within the array.
        unsafe { CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    format!(
        "{} {} {}",
        field(&u.sysname),
        field(&u.release),
        field(&u.machine)
    )
}

/// The header line(s): machine, counter, plan.
pub fn header(plan: &str, counter: &str) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "volley bench on {}, {cpus} CPUs\n  transitions: {counter}\n  {plan}\n  \
         latency: per batch = the writes one flush covers plus the flush (naive/tokio: the \
         writes; tokio-uring: the joined futures; bufwriters: writes + flush), per message where \
         a batch is one message; verified by receivers every round\n  \
         ×peer: over the scenario's best peer (fastest other library, naive included); \
         ×floor: over the fastest no-library method (raw-*)",
        uname()
    )
}

fn si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

/// What a scenario sends, for its table's title.
fn describe(spec: Spec) -> String {
    let per_message = if spec.is_per_message() {
        " (latency per message)"
    } else {
        ""
    };
    match spec.kind {
        Kind::Tcp if spec.peers == 1 => format!(
            "{} on 1 TCP connection, {} per flush{per_message}",
            size(spec.msg_size),
            spec.per_peer
        ),
        Kind::Tcp => format!(
            "{} TCP connections × {} × {}, one flush_all",
            spec.peers,
            spec.per_peer,
            size(spec.msg_size)
        ),
        Kind::UdpConnected => format!(
            "{}-byte datagrams on 1 connected UDP socket, {} per flush{per_message}",
            spec.msg_size, spec.per_peer
        ),
        Kind::UdpUnconnected if spec.frame_major => format!(
            "{}-byte frames to {} peers via 1 unconnected socket, frame-major (each frame to \
             every peer in turn), {} frames per flush",
            spec.msg_size, spec.peers, spec.per_peer
        ),
        Kind::UdpUnconnected => format!(
            "{}-byte datagrams to {} peers × {} via 1 unconnected socket, one flush",
            spec.msg_size, spec.peers, spec.per_peer
        ),
    }
}

/// "64-byte messages", "64 KiB buffers".
fn size(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB buffers", bytes / 1024)
    } else {
        format!("{bytes}-byte messages")
    }
}

/// Lays out `cells` (the first row is the header): the first column left-aligned, the last
/// unpadded, the others right-aligned.
fn align(cells: &[Vec<String>]) -> String {
    let cols = cells.first().map_or(0, Vec::len);
    let mut widths = vec![0usize; cols];
    for row in cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in cells {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            let pad = w - c.chars().count();
            if i == 0 || i == row.len() - 1 {
                line.push_str(c);
                if i == 0 {
                    line.push_str(&" ".repeat(pad));
                }
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(c);
            }
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One scenario's table: the rows, ratios to naive, the best peer and the floor, and a line
/// naming the best peer and the floor.
pub fn table(spec: Spec, rounds: usize, rows: &[Row]) -> String {
    let mut out = format!(
        "== {}: {}; median of {rounds} rounds ==\n",
        spec.name.name(),
        describe(spec)
    );
    // Bandwidth first where the messages are big (tcp-bulk).
    let bytes_first = spec.msg_size >= 16 * 1024;
    let (rate_a, rate_b) = if bytes_first {
        ("MB/s", "msgs/s")
    } else {
        ("msgs/s", "MB/s")
    };
    let head = [
        "method",
        rate_a,
        rate_b,
        "trans/msg",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "×naive",
        "×peer",
        "×floor",
        "msgs/round",
        "status",
    ];
    let mut cells: Vec<Vec<String>> = vec![head.map(String::from).to_vec()];
    for r in rows {
        let status = match (&r.error, r.status) {
            (Some(e), "n/a") => format!("n/a: {e}"),
            (Some(e), _) => format!("FAILED: {e}"),
            (None, s) => s.to_string(),
        };
        let na = r.status == "n/a";
        let dash = |s: String| if na { "n/a".to_string() } else { s };
        let msgs = dash(opt(r.messages_per_sec, si));
        let mb = dash(opt(r.bytes_per_sec, |v| format!("{:.1}", v / 1e6)));
        let (a, b) = if bytes_first { (mb, msgs) } else { (msgs, mb) };
        let ratio = |v: Option<f64>| dash(opt(v, |v| format!("{v:.2}×")));
        cells.push(vec![
            label(r),
            a,
            b,
            if r.ok && r.transitions_per_message.is_none() {
                "n/a".into()
            } else {
                dash(opt(r.transitions_per_message, |v| format!("{v:.4}")))
            },
            dash(opt(r.p50_us, |v| format!("{v:.1}"))),
            dash(opt(r.p99_us, |v| format!("{v:.1}"))),
            dash(opt(r.p999_us, |v| format!("{v:.1}"))),
            dash(opt(r.ratio_to_naive, |v| format!("{v:.1}×"))),
            ratio(r.ratio_to_best_peer),
            ratio(r.ratio_to_floor),
            if r.ok {
                r.messages_per_round.to_string()
            } else {
                dash("-".into())
            },
            status,
        ]);
    }
    out.push_str(&align(&cells));
    // One line per thread count (the ratios are within one).
    for group in rows.chunk_by(|a, b| a.threads == b.threads) {
        let named = |name: Option<&str>| {
            name.and_then(|n| group.iter().find(|r| r.method == n))
                .map_or_else(
                    || "none ran".to_string(),
                    |r| format!("{} ({} msgs/s)", label(r), opt(r.messages_per_sec, si)),
                )
        };
        let first = &group[0];
        out.push_str(&format!(
            "best peer: {}; floor: {}\n",
            named(first.best_peer),
            named(first.floor)
        ));
    }
    for r in rows {
        if let (Some(k), Some(own)) = (r.transitions_per_message, r.engine_transitions_per_message)
        {
            if (k - own).abs() > 0.1 * k.max(own) + 1e-9 {
                out.push_str(&format!(
                    "note: {} counts {own:.4} transitions/msg itself, the kernel saw {k:.4}\n",
                    label(r)
                ));
            }
        }
    }
    out.trim_end().to_string()
}

/// What a target compares.
#[derive(Clone, Copy)]
enum Check {
    /// messages/s ≥ `x` × `other`'s (same scenario).
    Rate { other: &'static str, x: f64 },
    /// p99 batch latency ≤ `x` × `other`'s (same scenario).
    P99 { other: &'static str, x: f64 },
    /// Kernel-counted transitions per message ≤ `max`.
    Transitions { max: f64 },
    /// bytes/s ≥ `x` × the same method's bytes/s in scenario `of`.
    Bandwidth { of: &'static str, x: f64 },
}

/// A target of the issue, checked on every run where its scenario ran (informational).
struct Target {
    scenario: &'static str,
    /// `Some(gro)`: only on runs with (`true`) or without `--udp-gro`.
    gro: Option<bool>,
    method: &'static str,
    check: Check,
}

const fn target(scenario: &'static str, method: &'static str, check: Check) -> Target {
    Target {
        scenario,
        gro: None,
        method,
        check,
    }
}

const fn rate(other: &'static str, x: f64) -> Check {
    Check::Rate { other, x }
}

const fn p99(other: &'static str, x: f64) -> Check {
    Check::P99 { other, x }
}

fn with_gro(gro: bool, t: Target) -> Target {
    Target {
        gro: Some(gro),
        ..t
    }
}

/// The targets, in report order.
fn all_targets() -> Vec<Target> {
    let mut all = vec![
        target("tcp-small", "uring", rate("naive", 30.0)),
        target("tcp-small", "uring", rate("epoll", 0.95)),
        target("tcp-small", "uring", Check::Transitions { max: 1.0 / 32.0 }),
        target("tcp-small", "uring", rate("bufwriter", 1.0)),
        target("tcp-small", "uring", rate("raw-writev", 0.9)),
        target(
            "tcp-small",
            "uring",
            Check::Bandwidth {
                of: "tcp-bulk",
                x: 0.4,
            },
        ),
        target("tcp-fanout", "uring", rate("bufwriter", 1.2)),
        target("tcp-fanout", "uring", rate("epoll", 1.2)),
    ];
    // The latency scenarios, both backends: ≥ 0.97× naive's messages/s, p99 ≤ 1.1× naive's.
    for s in ["tcp-latency", "udp-latency"] {
        for m in ["epoll", "uring"] {
            all.push(target(s, m, rate("naive", 0.97)));
            all.push(target(s, m, p99("naive", 1.1)));
        }
    }
    all.extend([
        target("udp-relay", "uring", rate("raw-sendmmsg", 2.0)),
        target("udp-relay", "uring", rate("naive", 3.0)),
        target("udp-fanout", "uring", rate("epoll", 1.0)),
        with_gro(false, target("udp-gso", "uring", rate("raw-gso", 0.95))),
        with_gro(true, target("udp-gso", "uring", rate("raw-gso", 0.95))),
        with_gro(true, target("udp-gso", "uring", rate("quinn-udp", 1.0))),
    ]);
    all
}

/// The method, with its sender threads where more than one.
fn label(r: &Row) -> String {
    if r.threads == 1 {
        r.method.to_string()
    } else {
        format!("{} ({} threads)", r.method, r.threads)
    }
}

/// For every method that ran with several thread counts (`--threads`): its aggregate rate at
/// each count over its rate at the smallest, measured side by side in the same rounds.
pub fn scaling(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    let mut methods: Vec<&str> = Vec::new();
    for r in rows {
        if !methods.contains(&r.method) {
            methods.push(r.method);
        }
    }
    for m in methods {
        let runs: Vec<(usize, f64)> = rows
            .iter()
            .filter(|r| r.method == m && r.ok)
            .filter_map(|r| r.messages_per_sec.map(|v| (r.threads, v)))
            .collect();
        let Some(&(t0, base)) = runs.iter().min_by_key(|r| r.0) else {
            continue;
        };
        if runs.len() < 2 || base <= 0.0 {
            continue;
        }
        let steps: Vec<String> = runs
            .iter()
            .filter(|r| r.0 != t0)
            .map(|&(t, v)| format!("{t} threads {} ({:.2}×)", si(v), v / base))
            .collect();
        out.push(format!(
            "scaling {m}: {t0} thread{} {} msgs/s → {}",
            if t0 == 1 { "" } else { "s" },
            si(base),
            steps.join(", ")
        ));
    }
    out
}

/// The targets whose scenario ran, one line each (informational): the measured value and
/// whether it is met, or why it could not be checked.
pub fn targets(rows: &[Row]) -> Vec<String> {
    let find = |scenario: &str, gro: Option<bool>, method: &str| {
        rows.iter().find(|r| {
            r.scenario == scenario
                && r.method == method
                && r.ok
                && gro.is_none_or(|g| r.udp_gro == g)
        })
    };
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut out = Vec::new();
    for t in &all_targets() {
        let ran = rows
            .iter()
            .any(|r| r.scenario == t.scenario && t.gro.is_none_or(|g| r.udp_gro == g));
        if !ran {
            continue;
        }
        let gro = match t.gro {
            Some(true) => " (--udp-gro)",
            _ => "",
        };
        let m = t.method;
        let row = |method: &'static str| (method, find(t.scenario, t.gro, method));
        let (what, result) = match t.check {
            Check::Rate { other, x } => (
                format!("{m} ≥ {x}× {other}"),
                ratio_of(row(m), row(other), |r| r.messages_per_sec)
                    .map(|v| format!("{v:.2}× — {}", verdict(v >= x))),
            ),
            Check::P99 { other, x } => (
                format!("{m} p99 ≤ {x}× {other}'s"),
                ratio_of(row(m), row(other), |r| r.p99_us)
                    .map(|v| format!("{v:.2}× — {}", verdict(v <= x))),
            ),
            Check::Transitions { max } => (
                format!("{m} ≤ {max:.4} transitions per message"),
                match find(t.scenario, t.gro, m) {
                    None => Err(format!("{m} did not run")),
                    Some(r) => r.transitions_per_message.map_or_else(
                        || Err("no kernel counter".into()),
                        |v| Ok(format!("{v:.4} — {}", verdict(v <= max))),
                    ),
                },
            ),
            Check::Bandwidth { of, x } => (
                format!("{m} bytes/s ≥ {:.0} % of {of}'s", x * 100.0),
                ratio_of(row(m), (of, find(of, t.gro, m)), |r| r.bytes_per_sec)
                    .map(|v| format!("{:.0} % — {}", v * 100.0, verdict(v >= x))),
            ),
        };
        let result = result.unwrap_or_else(|why| format!("n/a ({why})"));
        out.push(format!("  {}{gro}: {what}: {result}", t.scenario));
    }
    if !out.is_empty() {
        out.insert(0, "targets (informational):".into());
    }
    out
}

/// `field` of row `a` over `field` of row `b` (each with its name), or why there is none.
fn ratio_of(
    (a_name, a): (&str, Option<&Row>),
    (b_name, b): (&str, Option<&Row>),
    field: fn(&Row) -> Option<f64>,
) -> Result<f64, String> {
    let a = a.ok_or_else(|| format!("{a_name} did not run"))?;
    let b = b.ok_or_else(|| format!("{b_name} did not run"))?;
    match (field(a), field(b)) {
        (Some(x), Some(y)) if y > 0.0 => Ok(x / y),
        _ => Err("no value".into()),
    }
}
