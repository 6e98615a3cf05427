//! Reports from a results CSV with the header `metric,unit,server,value`: a Markdown table
//! (one row per metric, one column per server, then wshub/peer ratios) and an SVG bar chart
//! (one panel per metric, one bar per server, bars scaled to the panel's largest value).

use std::fmt::Write as _;
use std::path::Path;

struct Row {
    metric: String,
    unit: String,
    server: String,
    value: f64,
}

const PALETTE: [&str; 8] =
    ["#d9480f", "#1971c2", "#2f9e44", "#7048e8", "#e67700", "#0c8599", "#c2255c", "#5c940d"];

fn lower_is_better(unit: &str) -> bool {
    unit.contains("KiB") || unit.ends_with("us") || unit.contains("latency")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn read(csv: &Path) -> Result<Vec<Row>, String> {
    let text = std::fs::read_to_string(csv).map_err(|e| format!("{}: {e}", csv.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 4 {
            return Err(format!("{}:{}: want 4 fields", csv.display(), n + 1));
        }
        let Ok(value) = f[3].trim().parse::<f64>() else { continue };
        rows.push(Row { metric: f[0].to_string(), unit: f[1].to_string(), server: f[2].to_string(), value });
    }
    Ok(rows)
}

/// Metrics and servers in first-seen order, the baseline server first.
fn axes(rows: &[Row], baseline: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut metrics: Vec<(String, String)> = Vec::new();
    let mut servers: Vec<String> = vec![baseline.to_string()];
    for r in rows {
        if !metrics.iter().any(|(m, _)| *m == r.metric) {
            metrics.push((r.metric.clone(), r.unit.clone()));
        }
        if !servers.contains(&r.server) {
            servers.push(r.server.clone());
        }
    }
    (metrics, servers)
}

/// The Markdown table: metric, unit, each server's value, then baseline/peer for each peer.
pub fn table(csv: &Path, baseline: &str) -> Result<String, String> {
    let rows = read(csv)?;
    let (metrics, servers) = axes(&rows, baseline);
    let peers = &servers[1..];
    let mut out = String::from("| metric | unit |");
    for s in &servers {
        let _ = write!(out, " {s} |");
    }
    for p in peers {
        let _ = write!(out, " {baseline}/{p} |");
    }
    out.push_str("\n|---|---|");
    for _ in 0..servers.len() + peers.len() {
        out.push_str("---:|");
    }
    out.push('\n');
    let value = |m: &str, s: &str| rows.iter().find(|r| r.metric == m && r.server == s).map(|r| r.value);
    for (metric, unit) in &metrics {
        let _ = write!(out, "| {metric} | {unit} |");
        for s in &servers {
            match value(metric, s) {
                Some(v) => {
                    let _ = write!(out, " {} |", human(v));
                }
                None => out.push_str(" – |"),
            }
        }
        for p in peers {
            match (value(metric, baseline), value(metric, p)) {
                (Some(b), Some(v)) if v > 0.0 => {
                    let r = b / v;
                    let _ = if r >= 0.1 { write!(out, " {r:.2} |") } else { write!(out, " {r:.4} |") };
                }
                _ => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    Ok(out)
}

pub fn render(csv: &Path, out: &Path, baseline: &str) -> Result<(), String> {
    let rows = read(csv)?;
    let (metrics, servers) = axes(&rows, baseline);
    let bar_h = 16.0;
    let panel_h = 28.0 + servers.len() as f64 * (bar_h + 4.0) + 12.0;
    let label_w = 150.0;
    let bar_w = 480.0;
    let width = label_w + bar_w + 110.0;
    let height = 40.0 + metrics.len() as f64 * panel_h;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="24" font-size="16" font-weight="bold">wshub benchmarks (bars scaled per metric)</text>"#
    );
    for (mi, (metric, unit)) in metrics.iter().enumerate() {
        let y0 = 40.0 + mi as f64 * panel_h;
        let better = if lower_is_better(unit) { "lower is better" } else { "higher is better" };
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.1}" font-weight="bold">{} ({}, {better})</text>"#,
            y0 + 16.0,
            escape(metric),
            escape(unit)
        );
        let max = rows.iter().filter(|r| r.metric == *metric).map(|r| r.value).fold(0.0, f64::max);
        for (si, server) in servers.iter().enumerate() {
            let y = y0 + 24.0 + si as f64 * (bar_h + 4.0);
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                label_w - 8.0,
                y + bar_h - 4.0,
                escape(server)
            );
            let Some(r) = rows.iter().find(|r| r.metric == *metric && r.server == *server) else {
                let _ = writeln!(
                    svg,
                    r##"<text x="{label_w}" y="{:.1}" fill="#868e96">not measured</text>"##,
                    y + bar_h - 4.0
                );
                continue;
            };
            let w = if max > 0.0 { (r.value / max * bar_w).max(1.0) } else { 1.0 };
            let _ = writeln!(
                svg,
                r#"<rect x="{label_w}" y="{y:.1}" width="{w:.1}" height="{bar_h}" fill="{}"/>"#,
                PALETTE[si % PALETTE.len()]
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                label_w + w + 6.0,
                y + bar_h - 4.0,
                human(r.value)
            );
        }
    }
    svg.push_str("</svg>\n");
    std::fs::write(out, svg).map_err(|e| format!("{}: {e}", out.display()))
}
