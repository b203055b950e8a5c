//! Text output: the machine header, one aligned table per scenario, the tcp-small targets.

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
         writes; tokio-uring: the joined futures); verified by receivers every round",
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

/// One scenario's table.
pub fn table(spec: Spec, rounds: usize, rows: &[Row]) -> String {
    let what = match spec.kind {
        Kind::Tcp if spec.peers == 1 => format!(
            "{}-byte messages on 1 TCP connection, {} per flush",
            spec.msg_size, spec.per_peer
        ),
        Kind::Tcp => format!(
            "{} TCP connections × {} × {}-byte messages, one flush_all",
            spec.peers, spec.per_peer, spec.msg_size
        ),
        Kind::UdpConnected => format!(
            "{}-byte datagrams on 1 connected UDP socket, {} per flush",
            spec.msg_size, spec.per_peer
        ),
        Kind::UdpUnconnected => format!(
            "{}-byte datagrams to {} peers × {} via 1 unconnected socket, one flush",
            spec.msg_size, spec.peers, spec.per_peer
        ),
    };
    let mut out = format!(
        "== {}: {what}; median of {rounds} rounds ==\n",
        spec.name.name()
    );
    let head = [
        "method",
        "msgs/s",
        "MB/s",
        "trans/msg",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "×naive",
        "msgs/round",
        "status",
    ];
    let mut cells: Vec<[String; 10]> = vec![head.map(String::from)];
    for r in rows {
        let status = match (&r.error, r.status) {
            (Some(e), "n/a") => format!("n/a: {e}"),
            (Some(e), _) => format!("FAILED: {e}"),
            (None, s) => s.to_string(),
        };
        let na = r.status == "n/a";
        let dash = |s: String| if na { "n/a".to_string() } else { s };
        cells.push([
            r.method.to_string(),
            dash(opt(r.messages_per_sec, si)),
            dash(opt(r.bytes_per_sec, |v| format!("{:.1}", v / 1e6))),
            if r.ok && r.transitions_per_message.is_none() {
                "n/a".into()
            } else {
                dash(opt(r.transitions_per_message, |v| format!("{v:.4}")))
            },
            dash(opt(r.p50_us, |v| format!("{v:.1}"))),
            dash(opt(r.p99_us, |v| format!("{v:.1}"))),
            dash(opt(r.p999_us, |v| format!("{v:.1}"))),
            dash(opt(r.ratio_to_naive, |v| format!("{v:.1}×"))),
            if r.ok {
                r.messages_per_round.to_string()
            } else {
                dash("-".into())
            },
            status,
        ]);
    }
    let mut widths = [0usize; 10];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in &cells {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
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
    for r in rows {
        if let (Some(k), Some(own)) = (r.transitions_per_message, r.engine_transitions_per_message)
        {
            if (k - own).abs() > 0.1 * k.max(own) + 1e-9 {
                out.push_str(&format!(
                    "note: {} counts {own:.4} transitions/msg itself, the kernel saw {k:.4}\n",
                    r.method
                ));
            }
        }
    }
    out.trim_end().to_string()
}

/// The tcp-small targets (informational): uring ≥ 30× naive, ≥ 0.95× epoll, ≤ 1/32
/// transitions per message.
pub fn targets(rows: &[Row]) -> Vec<String> {
    let find = |m: &str| {
        rows.iter()
            .find(|r| r.scenario == "tcp-small" && r.method == m && r.ok)
    };
    let Some(uring) = find("uring") else {
        return if rows.iter().any(|r| r.scenario == "tcp-small") {
            vec!["targets (tcp-small): uring did not run or failed; nothing to check".into()]
        } else {
            Vec::new()
        };
    };
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut out = vec!["targets (tcp-small, informational):".to_string()];
    let mps = uring.messages_per_sec.unwrap_or(0.0);
    match find("naive").and_then(|r| r.messages_per_sec) {
        Some(n) if n > 0.0 => out.push(format!(
            "  uring ≥ 30× naive: {:.1}× — {}",
            mps / n,
            verdict(mps / n >= 30.0)
        )),
        _ => out.push("  uring ≥ 30× naive: naive did not run".into()),
    }
    match find("epoll").and_then(|r| r.messages_per_sec) {
        Some(e) if e > 0.0 => out.push(format!(
            "  uring ≥ 0.95× epoll: {:.2}× — {}",
            mps / e,
            verdict(mps / e >= 0.95)
        )),
        _ => out.push("  uring ≥ 0.95× epoll: epoll did not run".into()),
    }
    match uring.transitions_per_message {
        Some(t) => out.push(format!(
            "  uring ≤ 1/32 transitions per message: {t:.4} (1/32 = 0.0312) — {}",
            verdict(t <= 1.0 / 32.0)
        )),
        None => out.push("  uring ≤ 1/32 transitions per message: n/a (no kernel counter)".into()),
    }
    out
}
