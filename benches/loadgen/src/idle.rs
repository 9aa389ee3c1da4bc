//! Scenario 4: idle authenticated WebSockets on one relay, run as a child process (the same relay
//! library code as the `signaling-relay` binary, started through loadgen's hidden `serve-relay`
//! subcommand) so that its memory is read from /proc/<pid>/status alone.

use std::{
    path::Path,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::StreamExt;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;

use crate::{
    Scale,
    fleet::Fleet,
    report::Report,
    stats::{Progress, phase, rate},
    wsclient,
};

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft open-file limit of this process.
pub fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub async fn run(scale: &Scale, exe: &Path) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "idle",
        "4. Idle WebSocket connections on one relay",
        &["sockets asked", "open", "relay RSS before (MiB)", "relay RSS after (MiB)", "KiB / socket", "opened/s"],
    );
    let limit = fd_limit().unwrap_or(1024);
    let target = if limit < scale.idle as u64 + 200 {
        let n = limit.saturating_sub(200) as usize;
        report
            .notes
            .push(format!("The open-file limit is {limit}: opened {n} instead of {} (`ulimit -n 20000`).", scale.idle));
        n
    } else {
        scale.idle
    };
    phase("idle", "starting gateway in-process, relay as a child process");
    let fleet = Fleet::spawn(0, crate::fleet::no_ice()).await?;
    let mut child = Command::new(exe)
        .args(["serve-relay", "--cell", &fleet.cell, "--gateway", &fleet.gateway.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", exe.display()))?;
    let pid = child.id().context("child pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("child stdout")?).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("listening ") {
                return Some(addr.to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .context("the relay child did not report its address")?;
    // Warm up (first connection initialises lazies and pools), then the baseline.
    let mut warm = wsclient::connect(&format!("ws://{addr}/ws?token={}", fleet.token("idle-warm")), "hello").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid).context("read the child's VmRSS")?;
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let hold = CancellationToken::new();
    let progress = Progress::start("idle".into(), "sockets open", target as u64, opened.clone());
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + scale.deadline * 3;
    let concurrency = Arc::new(Semaphore::new(64));
    let mut holders = Vec::with_capacity(target);
    for i in 0..target {
        if tokio::time::Instant::now() > deadline {
            report.problem(format!("deadline reached after {i} connection attempts"));
            break;
        }
        let Ok(permit) = concurrency.clone().acquire_owned().await else { break };
        let url = format!("ws://{addr}/ws?token={}", fleet.token(&format!("idle-{i}")));
        let (opened, failed_here, hold) = (opened.clone(), failed.clone(), hold.clone());
        holders.push(tokio::spawn(async move {
            let ws = wsclient::connect(&url, "hello").await;
            drop(permit);
            let Ok(mut ws) = ws else {
                failed_here.fetch_add(1, Ordering::Relaxed);
                return;
            };
            opened.fetch_add(1, Ordering::Relaxed);
            // Idle, but answer the relay's pings (tungstenite does while reading).
            loop {
                tokio::select! {
                    _ = hold.cancelled() => break,
                    m = ws.next() => if !matches!(m, Some(Ok(_))) { break },
                }
            }
            let _ = ws.close(None).await;
        }));
        if failed.load(Ordering::Relaxed) > 100 {
            report.problem("more than 100 connections failed; stopped opening".into());
            break;
        }
    }
    // Let the last handshakes finish.
    let _ = concurrency.acquire_many(64).await;
    let open_time = started.elapsed();
    drop(progress);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid).unwrap_or(before);
    let open = opened.load(Ordering::Relaxed);
    phase("idle", format!("{open} open, relay RSS {before} KiB → {after} KiB"));
    hold.cancel();
    for h in holders {
        let _ = h.await;
    }
    let _ = warm.close(None).await;
    drop(child.stdin.take()); // the child stops when its stdin closes
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let _ = child.start_kill();
    fleet.stop().await;
    let per = (after.saturating_sub(before)) as f64 / open.max(1) as f64;
    report.row(vec![
        target.to_string(),
        open.to_string(),
        format!("{:.1}", before as f64 / 1024.0),
        format!("{:.1}", after as f64 / 1024.0),
        format!("{per:.1}"),
        format!("{:.0}", rate(open, open_time)),
    ]);
    let failed = failed.load(Ordering::Relaxed);
    if open != target as u64 {
        report.problem(format!("{open} of {target} sockets opened ({failed} failed)"));
    }
    report.verdict(
        "10,000 sockets at ≤ 10 KiB each",
        open >= 10_000 && per <= 10.0,
        format!("{open} sockets, {per:.1} KiB each"),
    );
    report.notes.push("Each socket is a distinct user with a fresh token: authenticated before the upgrade, registered in the hub (its Redis channel subscribed), `hello` and the call sync (GetUserCalls over gRPC) done, then idle (the client answers pings). RSS is the relay child's VmRSS after a warm-up connection and after all sockets are open; the difference divided by the sockets is the cost of one.".into());
    Ok(report)
}
