//! Results as markdown: one section per scenario in docs/benchmarks.md, replaced in place
//! between `<!-- loadgen:<key> -->` markers so runs of single scenarios update only their own.

use std::path::Path;

/// One scenario's results.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Marker key, also the subcommand (`signal`, `lifecycle`, ...).
    pub key: &'static str,
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Goals and what the run showed, one line each.
    pub verdicts: Vec<String>,
    pub notes: Vec<String>,
    /// Correctness: problems seen (lost messages, errors). Empty when everything matched.
    pub problems: Vec<String>,
}

impl Report {
    pub fn new(key: &'static str, title: &str, header: &[&str]) -> Self {
        Self {
            key,
            title: title.to_owned(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            ..Default::default()
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn verdict(&mut self, goal: &str, met: bool, detail: String) {
        let mark = if met { "met" } else { "missed" };
        self.verdicts.push(format!("Goal {goal}: **{mark}** ({detail})"));
    }

    pub fn problem(&mut self, problem: String) {
        self.problems.push(problem);
    }

    /// The section as markdown, with the command that produced it.
    pub fn markdown(&self, command: &str, when: &str) -> String {
        let mut out = format!("<!-- loadgen:{} -->\n## {}\n\n", self.key, self.title);
        out += &format!("Command: `{command}` ({when})\n\n");
        out += &format!("| {} |\n", self.header.join(" | "));
        out += &format!("|{}\n", "---|".repeat(self.header.len()));
        for row in &self.rows {
            out += &format!("| {} |\n", row.join(" | "));
        }
        out.push('\n');
        for line in self.verdicts.iter().chain(&self.notes) {
            out += &format!("- {line}\n");
        }
        if self.problems.is_empty() {
            out += "- Correctness: every message/row accounted for.\n";
        } else {
            for p in &self.problems {
                out += &format!("- **Problem:** {p}\n");
            }
        }
        out += &format!("<!-- /loadgen:{} -->\n", self.key);
        out
    }

    /// The plain-text version for stderr.
    pub fn print(&self) {
        eprintln!("== {} ==", self.title);
        eprintln!("{}", self.header.join(" | "));
        for row in &self.rows {
            eprintln!("{}", row.join(" | "));
        }
        for line in self.verdicts.iter().chain(&self.notes).chain(&self.problems) {
            eprintln!("  {line}");
        }
    }
}

const PREAMBLE: &str = "# Benchmarks\n\n\
Produced by the `loadgen` binary (`benches/loadgen`), which spawns what it measures in-process on \
loopback — api-gateway, signaling relays (scenario 4: a relay child process), PeerJS — against the \
local PostgreSQL (a fresh database per run), Redis and RabbitMQ (a unique cell id and exchange per \
run), and runs each measurement beside a raw baseline on the same machine in the same run. Every \
loop is bounded in count and time. Sections below are replaced by the run that produced them.\n\n\
Build and run (release build; `--quick` is a few-second smoke run with small counts):\n\n\
```sh\n\
export CARGO_TARGET_DIR=$HOME/.cache/videocall/target\n\
cargo build -p loadgen --release\n\
$CARGO_TARGET_DIR/release/loadgen all            # or: signal, lifecycle, outbox, idle, setup, peerjs\n\
$CARGO_TARGET_DIR/release/loadgen all --quick --no-doc\n\
```\n\n\
Scenario 4 opens 10,000 sockets to one relay: the loadgen process holds the 10,000 client ends and \
the relay child process the 10,000 server ends, so both need an open-file limit above 10,000 \
(`ulimit -n 20000` in the shell that starts loadgen; the child inherits it). With a lower limit the \
scenario opens as many as the limit allows and says so.\n\n";

/// Replaces (or appends) each report's section in `path`, creating the file with a preamble.
pub fn write(path: &Path, reports: &[Report], command: &str, when: &str) -> std::io::Result<()> {
    let mut doc = std::fs::read_to_string(path).unwrap_or_else(|_| PREAMBLE.to_owned());
    for report in reports {
        let section = report.markdown(command, when);
        let start = format!("<!-- loadgen:{} -->", report.key);
        let end = format!("<!-- /loadgen:{} -->\n", report.key);
        match (doc.find(&start), doc.find(&end)) {
            (Some(s), Some(e)) if e > s => doc.replace_range(s..e + end.len(), &section),
            _ => {
                if !doc.ends_with("\n\n") {
                    doc.push('\n');
                }
                doc += &section;
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, doc)
}
