//! `perch rollout report`: one self-contained HTML page (inline CSS and SVG, no script,
//! nothing fetched) from a rollout's saved state and its [journal](super::journal):
//! p50/p99 latency and error rate over time for the canary cohort and the rest of the
//! group, the stage timeline, and the decision log.
//!
//! The figures plotted at each time are the ones the controller judged then: each
//! cohort over the current stage's window so far (a stage starts a new window).

use std::fmt::Write;

use perch_runtime::bundle::rfc3339;
use perch_runtime::rollout::Phase;

use super::cohort::CohortFigures;
use super::controller::RolloutState;
use super::journal::JournalPoint;

const WIDTH: f64 = 880.0;
const HEIGHT: f64 = 260.0;
/// Plot margins: left (axis labels), right, top, bottom (time labels).
const MARGIN: (f64, f64, f64, f64) = (64.0, 40.0, 16.0, 36.0);

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:960px}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}table{border-collapse:collapse}\
td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}\
svg{background:#fafafa;border:1px solid #ddd}.axis{stroke:#999}.grid{stroke:#e4e4e4}\
.stage{stroke:#aaa;stroke-dasharray:4 3}text{font-size:11px;fill:#555}\
.legend span{display:inline-block;margin-right:1.5em}.swatch{display:inline-block;width:1.5em;\
height:3px;vertical-align:middle;margin-right:.4em}.aborted{color:#b00020}";

/// Escapes text for HTML and SVG.
fn esc(text: &str) -> String {
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

/// `HH:MM:SS` (UTC) of a wall-clock time.
fn clock(unix_ms: u64) -> String {
    let stamp = rfc3339(unix_ms / 1000);
    stamp.get(11..19).unwrap_or(&stamp).to_string()
}

/// One line of a plot.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    dashed: bool,
    /// (wall-clock ms, value); points without a value break the line.
    points: Vec<(u64, Option<f64>)>,
}

/// A line chart over `span` (wall-clock ms) with vertical marks at stage changes.
fn chart(
    id: &str,
    unit: &str,
    series: &[Series<'_>],
    span: (u64, u64),
    marks: &[(u64, String)],
) -> String {
    let (left, right, top, bottom) = MARGIN;
    let (x0, x1) = (span.0 as f64, span.1.max(span.0 + 1) as f64);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y_max = if y_max > 0.0 {
        nice_ceiling(y_max)
    } else {
        1.0
    };
    let x = |t: u64| left + (t as f64 - x0) / (x1 - x0) * (WIDTH - left - right);
    let y = |v: f64| HEIGHT - bottom - v / y_max * (HEIGHT - top - bottom);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg id="{id}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">"#
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{left}" x2="{}" y1="{yv:.1}" y2="{yv:.1}"/><text x="{}" y="{:.1}" text-anchor="end">{} {unit}</text>"#,
            WIDTH - right,
            left - 6.0,
            y(v) + 4.0,
            trim(v),
            yv = y(v),
        );
    }
    for i in 0..=4 {
        let t = span.0 + (span.1.saturating_sub(span.0)) * i / 4;
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="{anchor}">{}</text>"#,
            x(t),
            HEIGHT - bottom + 16.0,
            clock(t)
        );
    }
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{b}"/><line class="axis" x1="{left}" x2="{}" y1="{b}" y2="{b}"/>"#,
        WIDTH - right,
        b = HEIGHT - bottom
    );
    for (i, (t, label)) in marks.iter().enumerate() {
        let xt = x(*t);
        // Alternate rows, so the labels of close marks do not overlap.
        let ty = top + 10.0 + 14.0 * (i % 2) as f64;
        // Labels near the right edge go to the left of their line.
        let (tx, anchor) = if xt > WIDTH - 140.0 {
            (xt - 3.0, "end")
        } else {
            (xt + 3.0, "start")
        };
        let _ = write!(
            svg,
            r#"<line class="stage" x1="{xt:.1}" x2="{xt:.1}" y1="{top}" y2="{}"><title>{}</title></line><text x="{tx:.1}" y="{}" text-anchor="{anchor}">{}</text>"#,
            HEIGHT - bottom,
            esc(label),
            ty,
            esc(label),
        );
    }
    for s in series {
        let mut runs: Vec<Vec<(u64, f64)>> = vec![Vec::new()];
        for &(t, v) in &s.points {
            match v {
                Some(v) => runs.last_mut().into_iter().for_each(|r| r.push((t, v))),
                None if runs.last().is_some_and(|r| !r.is_empty()) => runs.push(Vec::new()),
                None => {}
            }
        }
        for run in runs.iter().filter(|r| !r.is_empty()) {
            let points: Vec<String> = run
                .iter()
                .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline class="series" data-series="{}" fill="none" stroke="{}" stroke-width="2"{} points="{}"><title>{}</title></polyline>"#,
                esc(s.name),
                s.color,
                if s.dashed {
                    r#" stroke-dasharray="6 4""#
                } else {
                    ""
                },
                points.join(" "),
                esc(s.name)
            );
        }
    }
    if series
        .iter()
        .all(|s| s.points.iter().all(|p| p.1.is_none()))
    {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">no figures recorded</text>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
    }
    svg.push_str("</svg>");
    let mut legend = String::from(r#"<p class="legend">"#);
    for s in series {
        let background = if s.dashed {
            format!(
                "repeating-linear-gradient(90deg,{0} 0 6px,transparent 6px 10px)",
                s.color
            )
        } else {
            s.color.to_string()
        };
        let _ = write!(
            legend,
            r#"<span><span class="swatch" style="background:{background}"></span>{}</span>"#,
            esc(s.name)
        );
    }
    legend.push_str("</p>");
    svg + &legend
}

/// The smallest of 1, 2, 2.5, 5 × 10^k at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * power)
}

/// A value without needless digits.
fn trim(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn phase_color(phase: Phase) -> &'static str {
    match phase {
        Phase::Running => "#4c78a8",
        Phase::Paused => "#f2a93b",
        Phase::Aborted => "#b00020",
        Phase::Completed => "#2e8b57",
    }
}

/// The stage timeline: one band per run of points in the same stage and phase.
fn timeline(points: &[JournalPoint], span: (u64, u64)) -> String {
    let (left, right) = (MARGIN.0, MARGIN.1);
    let (x0, x1) = (span.0 as f64, span.1.max(span.0 + 1) as f64);
    let x = |t: u64| left + (t as f64 - x0) / (x1 - x0) * (WIDTH - left - right);
    let mut svg = format!(
        r#"<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="70" viewBox="0 0 {WIDTH} 70" role="img">"#
    );
    let mut i = 0;
    while i < points.len() {
        let p = &points[i];
        let mut j = i;
        while j + 1 < points.len()
            && points[j + 1].stage == p.stage
            && points[j + 1].phase == p.phase
        {
            j += 1;
        }
        let end = points.get(j + 1).map_or(points[j].unix_ms, |n| n.unix_ms);
        let (a, b) = (x(p.unix_ms), x(end).max(x(p.unix_ms) + 2.0));
        let label = format!("stage {} · {} % · {}", p.stage, trim(p.percent), p.phase);
        let _ = write!(
            svg,
            r#"<rect class="stage-band" x="{a:.1}" y="10" width="{:.1}" height="30" fill="{}"><title>{} from {} to {}</title></rect>"#,
            b - a,
            phase_color(p.phase),
            esc(&label),
            clock(p.unix_ms),
            clock(end),
        );
        // Under the band when it has room; a narrow one (an end) keeps it in its title.
        if b - a >= 130.0 {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="56">{}</text>"#,
                a + 2.0,
                esc(&label)
            );
        } else if j + 1 == points.len() {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="56" text-anchor="end">{}</text>"#,
                b,
                esc(&label)
            );
        }
        i = j + 1;
    }
    if points.is_empty() {
        svg.push_str(r#"<text x="20" y="30">no figures recorded</text>"#);
    }
    svg.push_str("</svg>");
    svg
}

fn canary(p: &JournalPoint) -> &CohortFigures {
    &p.canary
}

fn rest(p: &JournalPoint) -> &CohortFigures {
    &p.rest
}

fn figure(f: &CohortFigures, pick: fn(&CohortFigures) -> Option<f64>, scale: f64) -> Option<f64> {
    pick(f).map(|v| v * scale)
}

/// The report page of the rollout in `state` with the journal's `points` (those of
/// this rollout, oldest first).
pub fn render(state: &RolloutState, points: &[JournalPoint]) -> String {
    let plan = &state.plan;
    let first = points.first().map(|p| p.unix_ms);
    let last = points.last().map(|p| p.unix_ms);
    let decisions = state.log.iter().map(|d| d.unix_ms);
    let lo = first
        .into_iter()
        .chain(decisions.clone())
        .min()
        .unwrap_or(0);
    let hi = last.into_iter().chain(decisions).max().unwrap_or(lo + 1);
    let span = (lo, hi.max(lo + 1));
    let marks: Vec<(u64, String)> = points
        .windows(2)
        .filter(|w| w[0].stage != w[1].stage || w[0].phase != w[1].phase)
        .map(|w| (w[1].unix_ms, format!("stage {} {}", w[1].stage, w[1].phase)))
        .collect();
    // The canary in blue, the rest of the fleet in brown.
    let (blue, brown) = ("#4c78a8", "#9d755d");
    let line = |name: &'static str,
                color: &'static str,
                dashed: bool,
                cohort: fn(&JournalPoint) -> &CohortFigures,
                pick: fn(&CohortFigures) -> Option<f64>,
                scale: f64| Series {
        name,
        color,
        dashed,
        points: points
            .iter()
            .map(|p| (p.unix_ms, figure(cohort(p), pick, scale)))
            .collect(),
    };
    let latency = [
        line("canary p50", blue, true, canary, |f| f.p50_ms, 1.0),
        line("canary p99", blue, false, canary, |f| f.p99_ms, 1.0),
        line("rest p50", brown, true, rest, |f| f.p50_ms, 1.0),
        line("rest p99", brown, false, rest, |f| f.p99_ms, 1.0),
    ];
    let rate = |f: &CohortFigures| f.error_rate;
    let errors = [
        line("canary error rate", blue, false, canary, rate, 100.0),
        line("rest error rate", brown, false, rest, rate, 100.0),
    ];

    let title = format!(
        "Rollout of {} {} to {}",
        plan.bundle.name, plan.bundle.version, plan.group
    );
    let mut html = String::with_capacity(64 * 1024);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
        esc(&title)
    );
    let _ = write!(html, "<h1>{}</h1><table>", esc(&title));
    let stages: Vec<String> = plan
        .stages
        .iter()
        .map(|&bp| format!("{} %", trim(f64::from(bp) / 100.0)))
        .collect();
    let gates: Vec<String> = plan.gates.iter().map(|g| g.to_string()).collect();
    let phase_class = if state.phase == Phase::Aborted {
        " class=\"aborted\""
    } else {
        ""
    };
    for (key, value) in [
        ("rollout", plan.rollout_id.clone()),
        (
            "phase",
            format!(
                "{} (stage {} of {})",
                state.phase,
                state.stage + 1,
                plan.stages.len()
            ),
        ),
        ("reason", state.reason.clone().unwrap_or_else(|| "-".into())),
        ("stages", stages.join(" → ")),
        ("soak per stage", format!("{} s", plan.soak_ms / 1000)),
        (
            "gates",
            if gates.is_empty() {
                "-".into()
            } else {
                gates.join(", ")
            },
        ),
        ("devices", state.devices.len().to_string()),
        ("journal", format!("{} points", points.len())),
    ] {
        let class = if key == "phase" { phase_class } else { "" };
        let _ = write!(
            html,
            "<tr><th>{key}</th><td{class}>{}</td></tr>",
            esc(&value)
        );
    }
    html.push_str("</table>");
    html.push_str("<h2>Latency (p50 dashed, p99 solid), per cohort</h2>");
    html.push_str(&chart("latency", "ms", &latency, span, &marks));
    html.push_str("<h2>Error rate, per cohort</h2>");
    html.push_str(&chart("errors", "%", &errors, span, &marks));
    html.push_str("<h2>Stage timeline</h2>");
    html.push_str(&timeline(points, span));
    html.push_str("<h2>Decision log</h2><table><tr><th>time (UTC)</th><th>phase</th><th>stage</th><th>decision</th></tr>");
    for d in &state.log {
        let _ = write!(
            html,
            "<tr class=\"decision\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&rfc3339(d.unix_ms / 1000)),
            d.phase,
            d.stage + 1,
            esc(&d.message)
        );
    }
    html.push_str("</table></body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings_round_up_to_one_two_five_steps() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.2), 2.0);
        assert_eq!(nice_ceiling(2.2), 2.5);
        assert_eq!(nice_ceiling(4.0), 5.0);
        assert_eq!(nice_ceiling(7.5), 10.0);
        assert_eq!(nice_ceiling(230.0), 250.0);
    }

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(
            esc("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
    }
}
