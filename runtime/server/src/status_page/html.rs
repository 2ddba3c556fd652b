//! The status page as HTML, rendered on the server so that it is complete without its script;
//! the script (`page.js`) redraws the same parts from `/v1/status`. One file, no external
//! assets: the style and the script are inline, allowed by their hashes in the page's
//! Content-Security-Policy. Every value is escaped ([`escape`]).

use std::fmt::Write;
use std::sync::LazyLock;

use axum::http::HeaderValue;
use base64::Engine;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{FAILED_SHOWN, PUBLISHERS_SHOWN, PublisherView, StatusView};
use broadcaster_core::routing::display_stored;

/// The page's style.
const CSS: &str = include_str!("page.css");
/// The page's script: refreshes the page from `/v1/status` and redraws the chart.
const SCRIPT: &str = include_str!("page.js");

/// The chart's line colours, one per publisher in name order (the script reads them from the
/// page).
pub const PALETTE: [&str; 8] = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#dc2626", "#4b5563"];

/// The chart's size and margins (the script uses the same).
const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// `text` safe in HTML text and in quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page's Content-Security-Policy: nothing but its own inline style and script (by hash),
/// and requests to its own origin.
pub fn content_security_policy() -> HeaderValue {
    static POLICY: LazyLock<HeaderValue> = LazyLock::new(|| {
        let hash = |text: &str| base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()));
        let policy = format!(
            "default-src 'none'; style-src 'sha256-{}'; script-src 'sha256-{}'; connect-src 'self'; img-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(CSS),
            hash(SCRIPT)
        );
        HeaderValue::from_str(&policy).expect("a header value")
    });
    POLICY.clone()
}

/// The whole page for `view`.
pub fn render(view: &StatusView) -> String {
    let mut page = String::with_capacity(16 * 1024);
    let palette = serde_json::to_string(&PALETTE).expect("JSON");
    let error_hidden = if view.outbox.error.is_some() { "" } else { " hidden" };
    let error = view.outbox.error.as_deref().map(|e| format!("counting the outbox failed: {e}")).unwrap_or_default();
    let _ = write!(
        page,
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Broadcaster status</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>Broadcaster status</h1>
<p class="meta">outbox <code id="outbox-url">{url}</code> · counted {counted} · page {generated} · <span id="refresh">static: reload to refresh</span></p>
</header>
<p id="outbox-error" class="warning"{error_hidden}>{error}</p>
<section>
<h2>Publishers</h2>
<p class="note">Backlog as counted in the outbox; published, retried and failed since {since} (this process's start).</p>
<table id="publishers">
<thead><tr><th>Publisher</th><th>Kind</th><th>Health</th><th class="num">Pending</th><th class="num">Retrying</th><th class="num">In flight</th><th class="num">Oldest due</th><th class="num">Published</th><th class="num">Retried</th><th class="num">Failed</th></tr></thead>
<tbody>
"#,
        url = escape(&view.outbox.url),
        counted = time_element("counted-at", view.outbox.counted_at),
        generated = time_element("generated-at", Some(view.generated_at)),
        since = time_element("counting-since", Some(view.counting_since)),
    );
    for publisher in &view.publishers {
        publisher_row(&mut page, publisher);
    }
    let _ = write!(page, "</tbody>\n</table>\n");
    let omitted_hidden = if view.publishers_omitted > 0 { "" } else { " hidden" };
    let _ = writeln!(
        page,
        "<p class=\"note\" id=\"omitted\"{omitted_hidden}><span id=\"omitted-count\">{}</span> more publishers not \
         shown: healthy or idle with nothing waiting and nothing published since the start (or past the first \
         {PUBLISHERS_SHOWN}).</p>",
        view.publishers_omitted
    );
    if !view.unconfigured.is_empty() {
        page.push_str("<p class=\"note\" id=\"unconfigured\">Waiting for a publisher that is not configured: ");
        let names: Vec<String> = view
            .unconfigured
            .iter()
            .map(|u| {
                format!(
                    "<code>{}</code> {} ({})",
                    escape(&display_stored(&u.publisher)),
                    u.waiting,
                    if u.removed_by_reload { "removed by a reload: they wait" } else { "they fail when claimed" }
                )
            })
            .collect();
        page.push_str(&names.join(", "));
        page.push_str(".</p>\n");
    }
    let _ = write!(
        page,
        r#"</section>
<section>
<h2>Failed events</h2>
<p class="note">The <span id="failed-count">{count}</span> most recently failed (at most {FAILED_SHOWN}), newest first. <code>broadcaster retry &lt;id&gt;</code> sends one again.</p>
<table id="failed">
<thead><tr><th>Id</th><th>Publisher</th><th>Type</th><th class="num">Retries</th><th class="num">Failed at</th><th>Last error</th></tr></thead>
<tbody>
"#,
        count = view.failed_events.len(),
    );
    if view.failed_events.is_empty() {
        page.push_str("<tr><td class=\"empty\" colspan=\"6\">no failed events</td></tr>\n");
    }
    for failed in &view.failed_events {
        let _ = writeln!(
            page,
            "<tr><td class=\"mono id\">{}</td><td class=\"mono\">{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"error-text\">{}</td></tr>",
            escape(&failed.id),
            escape(&display_stored(&failed.publisher_backend)),
            escape(&failed.event_type),
            failed.retry_count,
            escape(&format_time(failed.updated_at)),
            escape(&failed.last_error),
        );
    }
    let _ = write!(
        page,
        r#"</tbody>
</table>
</section>
<section>
<h2>Throughput</h2>
<p class="note">Published events per second, per publisher, over the last 10 minutes (sampled every {sample} s).</p>
<div id="chart">
"#,
        sample = view.throughput.sample_seconds,
    );
    chart(&mut page, view);
    let _ = write!(
        page,
        r#"</div>
</section>
<script type="application/json" id="palette">{palette}</script>
<script>{SCRIPT}</script>
</body>
</html>
"#
    );
    page
}

fn publisher_row(page: &mut String, p: &PublisherView) {
    let _ = writeln!(
        page,
        "<tr><td class=\"mono\">{name}</td><td>{kind}<span class=\"detail\">{runs}</span></td>\
         <td class=\"health {health_class}\">{health}<span class=\"detail\">{detail}</span></td>\
         <td class=\"num\">{pending}</td><td class=\"num\">{retrying}</td><td class=\"num\">{in_flight}</td>\
         <td class=\"num\">{oldest}</td><td class=\"num\">{published}</td><td class=\"num\">{retried}</td>\
         <td class=\"num\">{failed}</td></tr>",
        name = escape(&p.name),
        kind = p.kind,
        runs = escape(&p.runs),
        health_class = p.health.replace(' ', "-"),
        health = p.health,
        detail = escape(&p.health_detail),
        pending = p.pending,
        retrying = p.retrying,
        in_flight = p.in_flight,
        oldest = age(p.oldest_due_seconds),
        published = p.published,
        retried = p.retried,
        failed = p.failed,
    );
}

/// The throughput chart as inline SVG, and its legend.
fn chart(page: &mut String, view: &StatusView) {
    let throughput = &view.throughput;
    let max = nice_max(throughput.rates.values().flatten().copied().fold(0.0, f64::max));
    let (w, h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |at: DateTime<Utc>| {
        let ago = (view.generated_at - at).num_milliseconds() as f64 / 1000.0;
        LEFT + w * (1.0 - ago / throughput.window_seconds)
    };
    let y = |rate: f64| TOP + h * (1.0 - rate / max);
    let _ = writeln!(
        page,
        "<svg class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
         aria-label=\"published events per second, per publisher, over the last 10 minutes\">"
    );
    for value in [0.0, max / 2.0, max] {
        let _ = writeln!(
            page,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}/s</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(value) + 4.0,
            rate(value),
            y = y(value),
        );
    }
    for (label, fraction, anchor) in [("-10 min", 0.0, "start"), ("-5 min", 0.5, "middle"), ("now", 1.0, "end")] {
        let _ = writeln!(
            page,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"{anchor}\">{label}</text>",
            LEFT + w * fraction,
            HEIGHT - 8.0
        );
    }
    if throughput.times.is_empty() {
        let _ = writeln!(
            page,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no samples yet: one every {} s</text>",
            LEFT + w / 2.0,
            TOP + h / 2.0,
            throughput.sample_seconds
        );
    }
    let mut legend = String::from("<ul class=\"legend\">\n");
    for (i, (name, rates)) in throughput.rates.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        // Steps: each rate is level over its interval (the first one's is a sample long).
        let mut points = Vec::new();
        for (k, (at, r)) in throughput.times.iter().zip(rates).enumerate() {
            let start = match k {
                0 => *at - chrono::Duration::milliseconds((throughput.sample_seconds * 1000.0) as i64),
                _ => throughput.times[k - 1],
            };
            points.push(format!("{:.1},{:.1}", x(start).max(LEFT), y(*r)));
            points.push(format!("{:.1},{:.1}", x(*at), y(*r)));
        }
        let _ = writeln!(
            page,
            "<polyline class=\"series\" stroke=\"{color}\" points=\"{}\"><title>{}</title></polyline>",
            points.join(" "),
            escape(name)
        );
        let _ = writeln!(
            legend,
            "<li class=\"mono\"><svg viewBox=\"0 0 10 10\"><rect width=\"10\" height=\"10\" fill=\"{color}\"/></svg>{}</li>",
            escape(name)
        );
    }
    page.push_str("</svg>\n");
    legend.push_str("</ul>\n");
    page.push_str(&legend);
}

/// The smallest of 1, 2, 5 × a power of ten at or above `max` (1 for nothing).
fn nice_max(max: f64) -> f64 {
    if max.is_nan() || max <= 0.0 {
        return 1.0;
    }
    let step = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * step).find(|v| *v >= max).unwrap_or(10.0 * step)
}

/// A rate for an axis label: `0`, `0.5`, `2.5`, `12.5`, `250`.
fn rate(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        let text = format!("{value:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// How long the oldest event has been due: `4.2 s`, `3 min 7 s`, `2 h 5 min`.
fn age(seconds: Option<f64>) -> String {
    let Some(seconds) = seconds else { return "none due".into() };
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let s = seconds as u64;
    if s < 3600 { format!("{} min {} s", s / 60, s % 60) } else { format!("{} h {} min", s / 3600, s % 3600 / 60) }
}

fn format_time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "never".into(), |at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn time_element(id: &str, at: Option<DateTime<Utc>>) -> String {
    let datetime = at.map(|at| at.to_rfc3339()).unwrap_or_default();
    format!("<time id=\"{id}\" datetime=\"{datetime}\">{}</time>", format_time(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status_page::{OutboxView, throughput::Throughput};
    use broadcaster_outbox::FailedEvent;

    fn view(hostile: &str) -> StatusView {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        StatusView {
            generated_at: now,
            counting_since: now,
            outbox: OutboxView { url: "sqlite://o.db".into(), counted_at: Some(now), error: None },
            publishers: vec![PublisherView {
                name: hostile.into(),
                kind: "native",
                runs: "redis-stream (native)".into(),
                health: "down",
                health_detail: hostile.into(),
                pending: 1,
                retrying: 2,
                in_flight: 3,
                oldest_due_seconds: Some(75.0),
                published: 4,
                retried: 5,
                failed: 6,
            }],
            publishers_omitted: 0,
            throughput: Throughput {
                sample_seconds: 5.0,
                window_seconds: 600.0,
                times: vec![now],
                rates: [(hostile.to_string(), vec![3.0])].into(),
            },
            failed_events: vec![FailedEvent {
                id: hostile.into(),
                publisher_backend: hostile.into(),
                event_type: hostile.into(),
                retry_count: 3,
                updated_at: Some(now),
                last_error: hostile.into(),
            }],
            unconfigured: vec![super::super::UnconfiguredView {
                publisher: hostile.into(),
                removed_by_reload: true,
                waiting: 7,
            }],
        }
    }

    #[test]
    fn every_value_from_the_outbox_or_the_configuration_is_escaped() {
        let hostile = "<script>alert('x')</script>\"&";
        let page = render(&view(hostile));
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("'x'"), "{page}");
        let escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;";
        // name, health detail, chart title, legend; failed id, publisher, type, error; the
        // name events wait for.
        assert_eq!(page.matches(escaped).count(), 9, "{page}");
        assert_eq!(page.matches("<script").count(), 2, "only the palette and the page's own script");
    }

    #[test]
    fn the_page_is_complete_without_its_script() {
        let page = render(&view("orders"));
        for text in ["orders", "down", "1 min 15 s", "<polyline", "5/s", "2027-01-15 08:00:00 UTC", "sqlite://o.db"] {
            assert!(page.contains(text), "{text}: {page}");
        }
        assert!(page.contains("<td class=\"num\">6</td>"), "failed count: {page}");
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_style_and_script() {
        let policy = content_security_policy().to_str().unwrap().to_string();
        let hash = |text: &str| base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()));
        assert!(policy.contains(&format!("script-src 'sha256-{}'", hash(SCRIPT))), "{policy}");
        assert!(policy.contains(&format!("style-src 'sha256-{}'", hash(CSS))), "{policy}");
        assert!(policy.starts_with("default-src 'none'"), "{policy}");
        let page = render(&view("orders"));
        assert!(
            page.contains(&format!("<script>{SCRIPT}</script>")) && page.contains(&format!("<style>{CSS}</style>"))
        );
    }

    #[test]
    fn axis_values_are_rounded_up_to_one_two_or_five() {
        assert_eq!([0.0, 0.3, 1.0, 1.2, 4.0, 7.0, 120.0].map(nice_max), [1.0, 0.5, 1.0, 2.0, 5.0, 10.0, 200.0]);
        assert_eq!([0.0, 0.25, 2.5, 12.5, 250.0].map(rate), ["0", "0.25", "2.5", "12.5", "250"]);
        assert_eq!(
            [Some(4.24), Some(187.0), Some(7500.0), None].map(age),
            ["4.2 s", "3 min 7 s", "2 h 5 min", "none due"]
        );
    }
}
