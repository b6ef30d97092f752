//! A server-drawn SVG trend chart of one laboratory analyte.
//!
//! [`trend_svg`] returns a self-contained, accessible inline SVG: a line
//! through the results in time order, a dot per result (results flagged as
//! abnormal are drawn as larger red diamonds, so that colour is not the only
//! cue), the reference range as a shaded band, a y-axis with round-number
//! ticks and the unit, and an x-axis with dates. Colours come from the NHS
//! digital service manual palette.
//!
//! Dates are calendar dates in UTC, computed here from Unix seconds.
//!
//! The module is pure and never panics: non-finite values are skipped, and
//! empty, single-point, flat and extreme inputs all produce a drawable chart.

use std::fmt::Write as _;

/// One result to chart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// When the specimen was taken (or the result issued), Unix seconds.
    pub at: i64,
    /// The numeric result.
    pub value: f64,
    /// The laboratory flagged the result as outside its reference range.
    pub abnormal: bool,
}

const WIDTH: f64 = 640.0;
/// Plot area: left, right, top and bottom edges.
const PLOT_LEFT: f64 = 60.0;
const PLOT_RIGHT: f64 = 620.0;
const PLOT_TOP: f64 = 28.0;
const PLOT_BOTTOM: f64 = 222.0;
/// Space between the plot edges and the first and last results.
const INSET: f64 = 14.0;

const BLUE: &str = "#005eb8";
const RED: &str = "#d5281b";
const BAND: &str = "#e8edee";
const TEXT: &str = "#212b32";
const GRID: &str = "#d8dde0";
const AXIS: &str = "#4c6272";

/// Width reserved for a date label (ten characters at font size 12) plus a
/// gap, used to keep the x-axis labels apart.
const DATE_LABEL_SPACING: f64 = 84.0;
const DATE_LABEL_HALF_WIDTH: f64 = 34.0;

/// Draws the trend of one analyte as an accessible inline SVG.
///
/// `title` names the chart (e.g. "Serum potassium") and `unit` the unit of
/// the values (e.g. "mmol/L"); both are XML-escaped. `low` and `high` are
/// the reference range, either or both of which may be absent; non-finite
/// limits are ignored. Points with non-finite values are skipped, and the
/// rest are sorted by time here, so the caller need not sort them.
///
/// The SVG has `role="img"` and is labelled by its `<title>` and `<desc>`;
/// the description gives the number of results, the first and last dates,
/// and the minimum and maximum. It is 640 × 260 with a matching `viewBox`
/// and scales to the width of its container.
pub fn trend_svg(
    title: &str,
    unit: &str,
    points: &[Point],
    low: Option<f64>,
    high: Option<f64>,
) -> String {
    let mut pts: Vec<&Point> = points.iter().filter(|p| p.value.is_finite()).collect();
    pts.sort_by_key(|p| p.at);

    let low = low.filter(|x| x.is_finite());
    let high = high.filter(|x| x.is_finite());
    let (low, high) = match (low, high) {
        (Some(a), Some(b)) if a > b => (Some(b), Some(a)),
        other => other,
    };

    let title_text = if title.trim().is_empty() {
        "Results trend"
    } else {
        title
    };
    let id = chart_id(title, unit, &pts);
    let mut svg = String::with_capacity(4096 + pts.len() * 160);

    let _ = write!(
        svg,
        concat!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="trend-chart" "#,
            r#"viewBox="0 0 640 260" width="640" height="260" "#,
            r#"preserveAspectRatio="xMidYMid meet" style="width:100%;height:auto" "#,
            r#"role="img" aria-labelledby="{id}-title {id}-desc" "#,
            r#"font-family="inherit" font-size="12" fill="{text}">"#,
            r#"<title id="{id}-title">{title}</title>"#
        ),
        id = id,
        text = TEXT,
        title = escape(title_text),
    );

    let (first, last) = match (pts.first(), pts.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => {
            let _ = write!(
                svg,
                concat!(
                    r#"<desc id="{id}-desc">No results to chart.</desc>"#,
                    r#"<text x="320" y="130" text-anchor="middle" "#,
                    r#"dominant-baseline="middle">No results to chart</text></svg>"#
                ),
                id = id
            );
            return svg;
        }
    };

    // ---- Description -------------------------------------------------
    let mut min = f64::INFINITY;
    let mut max = f64::NEG_INFINITY;
    for p in &pts {
        min = min.min(p.value);
        max = max.max(p.value);
    }
    let abnormal_count = pts.iter().filter(|p| p.abnormal).count();
    let mut desc = format!(
        "{} {} from {} to {}. Minimum {}, maximum {}.",
        pts.len(),
        if pts.len() == 1 { "result" } else { "results" },
        date(first.at),
        date(last.at),
        with_unit(min, unit),
        with_unit(max, unit),
    );
    if abnormal_count > 0 {
        let _ = write!(
            desc,
            " {} {} flagged abnormal.",
            abnormal_count,
            if abnormal_count == 1 { "result" } else { "results" }
        );
    }
    match (low, high) {
        (Some(l), Some(h)) => {
            let _ = write!(desc, " Reference range {} to {}.", num(l), with_unit(h, unit));
        }
        (Some(l), None) => {
            let _ = write!(desc, " Reference range at least {}.", with_unit(l, unit));
        }
        (None, Some(h)) => {
            let _ = write!(desc, " Reference range up to {}.", with_unit(h, unit));
        }
        (None, None) => {}
    }
    let _ = write!(svg, r#"<desc id="{id}-desc">{}</desc>"#, escape(&desc));

    // ---- Scales ------------------------------------------------------
    let mut lo = min;
    let mut hi = max;
    for limit in [low, high].into_iter().flatten() {
        lo = lo.min(limit);
        hi = hi.max(limit);
    }
    if lo >= hi {
        let pad = (lo.abs() * 0.1).min(f64::MAX);
        let pad = if pad > 0.0 && lo + pad != lo { pad } else { 1.0 };
        lo = clamp_finite(lo - pad);
        hi = clamp_finite(hi + pad);
    }
    let ticks = y_ticks(lo, hi);
    let (y_min, y_max) = match (ticks.first(), ticks.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => (a.0, b.0),
        _ => (lo, hi),
    };
    let y_of = |v: f64| -> f64 {
        let half_span = y_max / 2.0 - y_min / 2.0;
        if half_span > 0.0 {
            let f = (v / 2.0 - y_min / 2.0) / half_span;
            PLOT_BOTTOM - f.clamp(-0.05, 1.05) * (PLOT_BOTTOM - PLOT_TOP)
        } else {
            (PLOT_TOP + PLOT_BOTTOM) / 2.0
        }
    };
    let t0 = first.at;
    let t_span = i128::from(last.at) - i128::from(first.at);
    let x_of = |t: i64| -> f64 {
        if t_span > 0 {
            let f = (i128::from(t) - i128::from(t0)) as f64 / t_span as f64;
            PLOT_LEFT + INSET + f * (PLOT_RIGHT - PLOT_LEFT - 2.0 * INSET)
        } else {
            (PLOT_LEFT + PLOT_RIGHT) / 2.0
        }
    };

    // ---- Reference range band ---------------------------------------
    if low.is_some() || high.is_some() {
        let top = high.map_or(PLOT_TOP, &y_of).clamp(PLOT_TOP, PLOT_BOTTOM);
        let bottom = low.map_or(PLOT_BOTTOM, &y_of).clamp(PLOT_TOP, PLOT_BOTTOM);
        let _ = write!(
            svg,
            r#"<rect class="reference-range" x="{}" y="{}" width="{}" height="{}" fill="{BAND}" fill-opacity="0.8"/>"#,
            c(PLOT_LEFT),
            c(top),
            c(PLOT_RIGHT - PLOT_LEFT),
            c((bottom - top).max(0.0)),
        );
    }

    // ---- Y axis: grid lines, tick labels, unit ------------------------
    svg.push_str(r#"<g class="y-axis">"#);
    for (value, label) in &ticks {
        let y = y_of(*value);
        let _ = write!(
            svg,
            concat!(
                r#"<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{GRID}" stroke-width="1"/>"#,
                r#"<text x="{tx}" y="{y}" text-anchor="end" dominant-baseline="middle">{label}</text>"#
            ),
            x1 = c(PLOT_LEFT),
            x2 = c(PLOT_RIGHT),
            y = c(y),
            tx = c(PLOT_LEFT - 6.0),
            label = escape(label),
            GRID = GRID,
        );
    }
    let _ = write!(
        svg,
        r#"</g><text class="unit" x="{}" y="14" text-anchor="start">{}</text>"#,
        c(8.0),
        escape(unit)
    );

    // ---- X axis: baseline and dates -----------------------------------
    let _ = write!(
        svg,
        r#"<g class="x-axis"><line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{AXIS}" stroke-width="1"/>"#,
        c(PLOT_LEFT),
        c(PLOT_RIGHT),
        y = c(PLOT_BOTTOM),
    );
    for (x, label) in date_labels(first.at, last.at, &x_of) {
        let _ = write!(
            svg,
            concat!(
                r#"<line x1="{x}" y1="{y1}" x2="{x}" y2="{y2}" stroke="{AXIS}" stroke-width="1"/>"#,
                r#"<text x="{tx}" y="{ty}" text-anchor="middle">{label}</text>"#
            ),
            x = c(x),
            y1 = c(PLOT_BOTTOM),
            y2 = c(PLOT_BOTTOM + 4.0),
            tx = c(x.clamp(
                DATE_LABEL_HALF_WIDTH + 2.0,
                WIDTH - DATE_LABEL_HALF_WIDTH - 2.0
            )),
            ty = c(PLOT_BOTTOM + 18.0),
            label = label,
            AXIS = AXIS,
        );
    }
    svg.push_str("</g>");

    // ---- Line --------------------------------------------------------
    if pts.len() > 1 {
        let mut coords = String::with_capacity(pts.len() * 14);
        for (i, p) in pts.iter().enumerate() {
            if i > 0 {
                coords.push(' ');
            }
            let _ = write!(coords, "{},{}", c(x_of(p.at)), c(y_of(p.value)));
        }
        let _ = write!(
            svg,
            r#"<polyline class="trend-line" fill="none" stroke="{BLUE}" stroke-width="2" stroke-linejoin="round" stroke-linecap="round" points="{coords}"/>"#
        );
    }

    // ---- Dots --------------------------------------------------------
    svg.push_str(r#"<g class="results">"#);
    for p in &pts {
        let x = x_of(p.at);
        let y = y_of(p.value);
        let tip = escape(&format!(
            "{}: {}{}",
            date(p.at),
            with_unit(p.value, unit),
            if p.abnormal { " (abnormal)" } else { "" }
        ));
        if p.abnormal {
            let r = 6.5;
            let _ = write!(
                svg,
                r##"<path class="abnormal" d="M{} {}L{} {}L{} {}L{} {}Z" fill="{RED}" stroke="#ffffff" stroke-width="1"><title>{tip}</title></path>"##,
                c(x),
                c(y - r),
                c(x + r),
                c(y),
                c(x),
                c(y + r),
                c(x - r),
                c(y),
            );
        } else {
            let _ = write!(
                svg,
                r##"<circle class="normal" cx="{}" cy="{}" r="4" fill="{BLUE}" stroke="#ffffff" stroke-width="1"><title>{tip}</title></circle>"##,
                c(x),
                c(y),
            );
        }
    }
    svg.push_str("</g>");

    // ---- Legend for the abnormal marker -------------------------------
    if abnormal_count > 0 {
        let x = PLOT_RIGHT - 104.0;
        let _ = write!(
            svg,
            concat!(
                r#"<g class="legend"><path d="M{x} 8L{xr} 14L{x} 20L{xl} 14Z" fill="{RED}"/>"#,
                r#"<text x="{tx}" y="14" dominant-baseline="middle">Abnormal result</text></g>"#
            ),
            x = c(x),
            xr = c(x + 6.0),
            xl = c(x - 6.0),
            tx = c(x + 10.0),
            RED = RED,
        );
    }

    svg.push_str("</svg>");
    svg
}

/// Escapes text for XML content and attribute values, and drops characters
/// that XML 1.0 does not allow.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

/// A coordinate with one decimal place; non-finite values (which the scales
/// should never produce) become 0 so the markup stays valid.
fn c(x: f64) -> String {
    if x.is_finite() {
        let r = (x * 10.0).round() / 10.0;
        if r == 0.0 {
            "0".to_string()
        } else {
            format!("{r}")
        }
    } else {
        "0".to_string()
    }
}

/// A value as written in the description and tooltips.
fn num(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e9).contains(&a) {
        format!("{v:e}")
    } else if v == 0.0 {
        "0".to_string()
    } else {
        format!("{v}")
    }
}

fn with_unit(v: f64, unit: &str) -> String {
    let unit = unit.trim();
    if unit.is_empty() {
        num(v)
    } else {
        format!("{} {}", num(v), unit)
    }
}

fn clamp_finite(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(f64::MIN, f64::MAX)
    }
}

/// Y-axis ticks for the range `lo..hi` (with `lo < hi`): four to six round
/// numbers (multiples of 1, 2 or 5 times a power of ten) covering the range,
/// each with its label.
fn y_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    if let Some(t) = nice_ticks(lo, hi) {
        return t;
    }
    // Fallback for ranges too extreme for round numbers: five even ticks.
    (0..5)
        .map(|i| {
            let f = f64::from(i) / 4.0;
            let v = lo * (1.0 - f) + hi * f;
            (v, num(v))
        })
        .collect()
}

fn nice_ticks(lo: f64, hi: f64) -> Option<Vec<(f64, String)>> {
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return None;
    }
    // A fifth of the span, computed without overflowing.
    let rough = (hi / 2.0 - lo / 2.0) * 0.4;
    if !(rough > 0.0 && rough.is_finite()) {
        return None;
    }
    let base = rough.log10().floor() as i32 - 1;
    for exp in base..base + 4 {
        for mantissa in [1.0_f64, 2.0, 5.0] {
            // Work in integers of `step` so that ticks are exact multiples.
            let scale = 10f64.powi(exp.abs());
            let step = if exp >= 0 {
                mantissa * scale
            } else {
                mantissa / scale
            };
            if !(step > 0.0 && step.is_finite()) {
                continue;
            }
            // The tolerance keeps binary noise (36.4 / 0.2 = 181.999…) from
            // adding a needless tick.
            let first = (lo / step + 1e-9).floor();
            let last = (hi / step - 1e-9).ceil();
            if !(first.is_finite() && last.is_finite()) {
                continue;
            }
            let count = last - first + 1.0;
            if count > 6.0 {
                continue;
            }
            let mut ks: Vec<f64> = Vec::with_capacity(6);
            let mut k = first;
            while k <= last && ks.len() < 6 {
                ks.push(k);
                k += 1.0;
            }
            // Too few: widen the axis by whole steps, alternately below and
            // above, until there are four.
            let mut below = true;
            while ks.len() < 4 {
                match (ks.first().copied(), ks.last().copied()) {
                    (Some(a), Some(b)) => {
                        if below {
                            ks.insert(0, a - 1.0);
                        } else {
                            ks.push(b + 1.0);
                        }
                    }
                    _ => ks.push(first),
                }
                below = !below;
            }
            let decimals = if exp < 0 { exp.unsigned_abs() as usize } else { 0 };
            let ticks: Vec<(f64, String)> = ks
                .iter()
                .map(|&k| {
                    let v = if exp >= 0 {
                        k * mantissa * scale
                    } else {
                        k * mantissa / scale
                    };
                    (v, tick_label(v, decimals))
                })
                .collect();
            let distinct = ticks.windows(2).all(|w| w[1].0 > w[0].0);
            let finite = ticks.iter().all(|t| t.0.is_finite());
            return if distinct && finite { Some(ticks) } else { None };
        }
    }
    None
}

fn tick_label(v: f64, decimals: usize) -> String {
    let a = v.abs();
    if a >= 1e9 || decimals > 6 {
        if a == 0.0 {
            "0".to_string()
        } else {
            format!("{v:e}")
        }
    } else {
        let s = format!("{v:.decimals$}");
        // Avoid "-0" and "-0.0".
        if s.starts_with('-') && s[1..].chars().all(|ch| ch == '0' || ch == '.') {
            s[1..].to_string()
        } else {
            s
        }
    }
}

/// Date labels for the x-axis: the first and last dates and up to three
/// evenly spaced between, none closer than a label's width to another and
/// none repeating the previous date.
fn date_labels(t0: i64, t1: i64, x_of: &dyn Fn(i64) -> f64) -> Vec<(f64, String)> {
    let span = i128::from(t1) - i128::from(t0);
    if span <= 0 {
        return vec![(x_of(t0), date(t0))];
    }
    let first = (x_of(t0), date(t0));
    let last = (x_of(t1), date(t1));
    let mut labels = vec![first];
    const SLOTS: i128 = 4;
    for i in 1..SLOTS {
        let t = i128::from(t0) + span * i / SLOTS;
        let t = i64::try_from(t).unwrap_or(t1);
        let x = x_of(t);
        let text = date(t);
        let clear_of_previous = labels
            .last()
            .is_some_and(|(px, pt)| x - px >= DATE_LABEL_SPACING && *pt != text);
        let clear_of_last = last.0 - x >= DATE_LABEL_SPACING && last.1 != text;
        if clear_of_previous && clear_of_last {
            labels.push((x, text));
        }
    }
    if labels.last().is_some_and(|(_, pt)| *pt != last.1) {
        if labels
            .last()
            .is_some_and(|(px, _)| last.0 - px >= DATE_LABEL_SPACING)
        {
            labels.push(last);
        } else if labels.len() > 1 {
            labels.pop();
            labels.push(last);
        } else {
            // Only the first label so far and the last is too close to it
            // (cannot happen with the fixed layout); keep the last date too.
            labels.push(last);
        }
    }
    labels
}

/// Formats Unix seconds as a UTC calendar date, YYYY-MM-DD.
fn date(unix_seconds: i64) -> String {
    let (y, m, d) = civil_from_days(unix_seconds.div_euclid(86_400));
    if (0..=9999).contains(&y) {
        format!("{y:04}-{m:02}-{d:02}")
    } else {
        format!("{y}-{m:02}-{d:02}")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), after
/// Howard Hinnant's `civil_from_days`. Valid for every `i64` day count that
/// arises from `i64` seconds.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// A stable identifier for the chart's `<title>` and `<desc>`, derived from
/// its content (FNV-1a), so that several charts on a page do not clash.
fn chart_id(title: &str, unit: &str, pts: &[&Point]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(title.as_bytes());
    eat(&[0]);
    eat(unit.as_bytes());
    for p in pts {
        eat(&p.at.to_le_bytes());
        eat(&p.value.to_bits().to_le_bytes());
        eat(&[u8::from(p.abnormal)]);
    }
    format!("trend-{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    /// 2024-01-01T09:00:00Z.
    const T0: i64 = 1_704_099_600;

    fn p(day: i64, value: f64) -> Point {
        Point {
            at: T0 + day * DAY,
            value,
            abnormal: false,
        }
    }

    fn bad(day: i64, value: f64) -> Point {
        Point {
            abnormal: true,
            ..p(day, value)
        }
    }

    /// The text of every `<text>` element in the y-axis group.
    fn y_labels(svg: &str) -> Vec<String> {
        let Some(start) = svg.find(r#"<g class="y-axis">"#) else {
            return vec![];
        };
        let Some(len) = svg[start..].find("</g>") else {
            return vec![];
        };
        texts(&svg[start..start + len])
            .into_iter()
            .collect()
    }

    fn texts(fragment: &str) -> Vec<String> {
        let mut out = vec![];
        let mut rest = fragment;
        while let Some(i) = rest.find("<text") {
            rest = &rest[i..];
            let Some(open_end) = rest.find('>') else { break };
            let Some(close) = rest.find("</text>") else { break };
            out.push(rest[open_end + 1..close].to_string());
            rest = &rest[close..];
        }
        out
    }

    fn x_labels(svg: &str) -> Vec<String> {
        let Some(start) = svg.find(r#"<g class="x-axis">"#) else {
            return vec![];
        };
        let Some(len) = svg[start..].find("</g>") else {
            return vec![];
        };
        texts(&svg[start..start + len])
    }

    /// Checks that tags balance, as a cheap well-formedness test.
    fn balanced(svg: &str) -> bool {
        let mut stack: Vec<String> = vec![];
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            let Some(end) = rest.find('>') else {
                return false;
            };
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                if stack.pop().as_deref() != Some(name) {
                    return false;
                }
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or("");
                stack.push(name.to_string());
            }
        }
        stack.is_empty()
    }

    fn sample() -> Vec<Point> {
        vec![
            p(0, 4.1),
            p(7, 4.6),
            bad(14, 5.9),
            p(21, 5.0),
            p(30, 4.4),
        ]
    }

    #[test]
    fn basic_structure() {
        let svg = trend_svg("Serum potassium", "mmol/L", &sample(), Some(3.5), Some(5.3));
        assert!(svg.starts_with("<svg"));
        assert!(svg.ends_with("</svg>"));
        assert!(svg.contains(r#"viewBox="0 0 640 260""#));
        assert!(svg.contains(r#"width="640""#));
        assert!(svg.contains(r#"height="260""#));
        assert!(svg.contains("width:100%"));
        assert!(svg.contains(r#"role="img""#));
        assert!(svg.contains("aria-labelledby=\"trend-"));
        assert!(svg.contains("<title id=\"trend-"));
        assert!(svg.contains("<desc id=\"trend-"));
        assert!(svg.contains(r#"font-family="inherit""#));
        assert!(svg.contains(r#"font-size="12""#));
        assert!(svg.contains("#212b32"));
        assert!(svg.contains(r##"stroke="#005eb8""##));
        assert!(svg.contains("<polyline"));
        assert!(svg.contains(">mmol/L</text>"));
        assert!(balanced(&svg), "{svg}");
    }

    #[test]
    fn aria_ids_match() {
        let svg = trend_svg("Sodium", "mmol/L", &sample(), None, None);
        let start = svg.find("aria-labelledby=\"").map(|i| i + 17).unwrap_or(0);
        let end = svg[start..].find('"').map(|i| start + i).unwrap_or(start);
        let ids: Vec<&str> = svg[start..end].split(' ').collect();
        assert_eq!(ids.len(), 2);
        assert!(svg.contains(&format!("<title id=\"{}\">Sodium</title>", ids[0])));
        assert!(svg.contains(&format!("<desc id=\"{}\">", ids[1])));
    }

    #[test]
    fn description_lists_count_dates_and_extremes() {
        let svg = trend_svg("Serum potassium", "mmol/L", &sample(), Some(3.5), Some(5.3));
        let start = svg.find("<desc").unwrap_or(0);
        let end = svg.find("</desc>").unwrap_or(0);
        let desc = &svg[start..end];
        assert!(desc.contains("5 results"), "{desc}");
        assert!(desc.contains("2024-01-01"), "{desc}");
        assert!(desc.contains("2024-01-31"), "{desc}");
        assert!(desc.contains("Minimum 4.1 mmol/L"), "{desc}");
        assert!(desc.contains("maximum 5.9 mmol/L"), "{desc}");
        assert!(desc.contains("1 result flagged abnormal"), "{desc}");
        assert!(desc.contains("Reference range 3.5 to 5.3 mmol/L"), "{desc}");
    }

    #[test]
    fn text_is_escaped() {
        let svg = trend_svg(
            "<script>alert('x')</script> & \"more\"",
            "<b>mmol/L</b>",
            &sample(),
            None,
            None,
        );
        assert!(!svg.contains("<script>"));
        assert!(!svg.contains("<b>"));
        assert!(svg.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;more&quot;"));
        assert!(svg.contains("&lt;b&gt;mmol/L&lt;/b&gt;"));
        assert!(balanced(&svg), "{svg}");
        assert_eq!(escape("a\u{0}b\u{1b}c"), "abc");
    }

    #[test]
    fn empty_input() {
        let svg = trend_svg("Creatinine", "µmol/L", &[], Some(60.0), Some(110.0));
        assert!(svg.contains("No results to chart"));
        assert!(svg.contains("viewBox"));
        assert!(svg.contains(r#"role="img""#));
        assert!(!svg.contains("<polyline"));
        assert!(!svg.contains("reference-range"));
        assert!(balanced(&svg), "{svg}");
    }

    #[test]
    fn only_non_finite_values_is_empty() {
        let pts = [p(0, f64::NAN), p(1, f64::INFINITY), p(2, f64::NEG_INFINITY)];
        let svg = trend_svg("Creatinine", "µmol/L", &pts, None, None);
        assert!(svg.contains("No results to chart"));
    }

    #[test]
    fn one_point() {
        let svg = trend_svg("HbA1c", "mmol/mol", &[p(0, 48.0)], None, None);
        assert!(!svg.contains("No results to chart"));
        assert!(!svg.contains("<polyline"));
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("1 result from 2024-01-01 to 2024-01-01"));
        let labels = y_labels(&svg);
        assert!((4..=6).contains(&labels.len()), "{labels:?}");
        // 48 ± 10 % gives a range around 43–53.
        let values: Vec<f64> = labels.iter().filter_map(|l| l.parse().ok()).collect();
        assert_eq!(values.len(), labels.len());
        assert!(values.first().is_some_and(|&v| (30.0..=43.2).contains(&v)), "{values:?}");
        assert!(values.last().is_some_and(|&v| (52.8..=70.0).contains(&v)), "{values:?}");
        assert_eq!(x_labels(&svg), vec!["2024-01-01".to_string()]);
        assert!(balanced(&svg));
    }

    #[test]
    fn zero_single_value_gets_unit_range() {
        let svg = trend_svg("Troponin", "ng/L", &[p(0, 0.0), p(1, 0.0)], None, None);
        let values: Vec<f64> = y_labels(&svg).iter().filter_map(|l| l.parse().ok()).collect();
        assert!(values.first().is_some_and(|&v| v <= -1.0), "{values:?}");
        assert!(values.last().is_some_and(|&v| v >= 1.0), "{values:?}");
    }

    #[test]
    fn all_equal_values() {
        let pts = [p(0, 140.0), p(3, 140.0), p(9, 140.0)];
        let svg = trend_svg("Sodium", "mmol/L", &pts, None, None);
        let values: Vec<f64> = y_labels(&svg).iter().filter_map(|l| l.parse().ok()).collect();
        assert!((4..=6).contains(&values.len()), "{values:?}");
        assert!(values.first().is_some_and(|&v| v <= 126.0));
        assert!(values.last().is_some_and(|&v| v >= 154.0));
        assert!(svg.contains("<polyline"));
    }

    #[test]
    fn all_points_at_the_same_time() {
        let pts = [p(0, 3.0), p(0, 5.0), bad(0, 9.0)];
        let svg = trend_svg("Glucose", "mmol/L", &pts, None, None);
        assert!(svg.contains("<polyline"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains(r#"<path class="abnormal""#));
        assert_eq!(x_labels(&svg), vec!["2024-01-01".to_string()]);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn abnormal_points_are_diamonds() {
        let svg = trend_svg("Potassium", "mmol/L", &sample(), None, None);
        assert_eq!(svg.matches(r#"<path class="abnormal""#).count(), 1);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains(r##"fill="#d5281b""##));
        assert!(svg.contains("Abnormal result"));
        let plain = trend_svg("Potassium", "mmol/L", &[p(0, 4.0), p(1, 4.2)], None, None);
        assert!(!plain.contains("abnormal"));
        assert!(!plain.contains("#d5281b"));
    }

    #[test]
    fn nan_values_are_skipped() {
        let pts = [p(0, 4.0), p(1, f64::NAN), p(2, 5.0), p(3, f64::INFINITY)];
        let svg = trend_svg("Potassium", "mmol/L", &pts, Some(f64::NAN), Some(f64::INFINITY));
        assert!(svg.contains("2 results"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(!svg.contains("NaN"));
        assert!(!svg.contains("inf"));
        assert!(!svg.contains("reference-range"));
    }

    #[test]
    fn points_are_sorted_by_time() {
        let pts = [p(10, 3.0), p(0, 1.0), p(5, 2.0)];
        let svg = trend_svg("X", "", &pts, None, None);
        assert!(svg.contains("3 results from 2024-01-01 to 2024-01-11"));
        let start = svg.find("points=\"").map(|i| i + 8).unwrap_or(0);
        let end = svg[start..].find('"').map(|i| start + i).unwrap_or(start);
        let xs: Vec<f64> = svg[start..end]
            .split(' ')
            .filter_map(|pair| pair.split(',').next()?.parse().ok())
            .collect();
        assert_eq!(xs.len(), 3);
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "{xs:?}");
        // Higher values are drawn higher up, i.e. with smaller y.
        let ys: Vec<f64> = svg[start..end]
            .split(' ')
            .filter_map(|pair| pair.split(',').nth(1)?.parse().ok())
            .collect();
        assert!(ys.windows(2).all(|w| w[0] > w[1]), "{ys:?}");
    }

    #[test]
    fn range_band_only_when_given() {
        let none = trend_svg("K", "mmol/L", &sample(), None, None);
        assert!(!none.contains("reference-range"));
        assert!(!none.contains("#e8edee"));
        for (low, high) in [(Some(3.5), Some(5.3)), (Some(3.5), None), (None, Some(5.3))] {
            let svg = trend_svg("K", "mmol/L", &sample(), low, high);
            assert_eq!(svg.matches(r#"class="reference-range""#).count(), 1);
            assert!(svg.contains(r##"fill="#e8edee""##));
            assert!(svg.contains("fill-opacity"));
        }
        let low_only = trend_svg("K", "mmol/L", &sample(), Some(3.5), None);
        assert!(low_only.contains("Reference range at least 3.5 mmol/L"));
    }

    #[test]
    fn range_is_inside_the_axis() {
        // The band 3.5–5.3 lies within data 4.1–5.9; the axis must reach 3.5.
        let svg = trend_svg("K", "mmol/L", &sample(), Some(3.5), Some(5.3));
        let values: Vec<f64> = y_labels(&svg).iter().filter_map(|l| l.parse().ok()).collect();
        assert!(values.first().is_some_and(|&v| v <= 3.5), "{values:?}");
        assert!(values.last().is_some_and(|&v| v >= 5.9), "{values:?}");
        // Reversed limits are tolerated.
        let swapped = trend_svg("K", "mmol/L", &sample(), Some(5.3), Some(3.5));
        assert!(swapped.contains("Reference range 3.5 to 5.3"));
    }

    #[test]
    fn ticks_are_round_numbers() {
        let pts = [p(0, 3.1), p(1, 7.9)];
        let svg = trend_svg("X", "mmol/L", &pts, None, None);
        assert_eq!(y_labels(&svg), vec!["3", "4", "5", "6", "7", "8"]);

        let t: Vec<String> = y_ticks(0.0, 100.0).into_iter().map(|t| t.1).collect();
        assert_eq!(t, vec!["0", "20", "40", "60", "80", "100"]);
        let t: Vec<String> = y_ticks(36.4, 37.2).into_iter().map(|t| t.1).collect();
        assert_eq!(t, vec!["36.4", "36.6", "36.8", "37.0", "37.2"]);
        let t: Vec<String> = y_ticks(-0.3, 0.2).into_iter().map(|t| t.1).collect();
        assert_eq!(t, vec!["-0.3", "-0.2", "-0.1", "0.0", "0.1", "0.2"]);
    }

    #[test]
    fn ticks_always_four_to_six_and_round() {
        let mut seed: u64 = 0x1234_5678;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..20_000 {
            let scale = 10f64.powf(next() * 12.0 - 6.0);
            let a = (next() - 0.3) * scale;
            let b = a + next() * scale + f64::MIN_POSITIVE;
            if b.partial_cmp(&a) != Some(std::cmp::Ordering::Greater) {
                continue;
            }
            let ticks = y_ticks(a, b);
            assert!((4..=6).contains(&ticks.len()), "{a} {b} {ticks:?}");
            let first = ticks.first().map(|t| t.0).unwrap_or(f64::NAN);
            let last = ticks.last().map(|t| t.0).unwrap_or(f64::NAN);
            let step = ticks[1].0 - ticks[0].0;
            assert!(first <= a + step * 1e-6 && last >= b - step * 1e-6, "{a} {b} {ticks:?}");
            let m = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0, 10.0].iter().any(|n| (m - n).abs() < 1e-6),
                "{a} {b} step {step}"
            );
        }
    }

    #[test]
    fn date_labels_do_not_overlap() {
        for days in [1, 2, 3, 5, 10, 30, 365, 3650] {
            let pts = [p(0, 1.0), p(days, 2.0)];
            let svg = trend_svg("X", "", &pts, None, None);
            let labels = x_labels(&svg);
            assert!(labels.len() >= 2 && labels.len() <= 5, "{days}: {labels:?}");
            assert_eq!(labels.first().map(String::as_str), Some("2024-01-01"));
            assert_eq!(labels.last(), Some(&date(T0 + days * DAY)));
            for w in labels.windows(2) {
                assert_ne!(w[0], w[1]);
            }
        }
        // Same day: one label only.
        let l = date_labels(T0, T0 + 3600, &|t| if t == T0 { 74.0 } else { 606.0 });
        assert_eq!(l.len(), 1);
        // Positions are at least a label's width apart.
        let l = date_labels(T0, T0 + 365 * DAY, &|t| {
            74.0 + (t - T0) as f64 / (365 * DAY) as f64 * 532.0
        });
        assert_eq!(l.len(), 5);
        for w in l.windows(2) {
            assert!(w[1].0 - w[0].0 >= DATE_LABEL_SPACING);
        }
    }

    #[test]
    fn dates_from_unix_seconds() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(-1), "1969-12-31");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_709_164_800), "2024-02-29");
        assert_eq!(date(1_735_689_599), "2024-12-31");
        assert_eq!(date(1_735_689_600), "2025-01-01");
        assert_eq!(date(253_402_300_799), "9999-12-31");
        assert_eq!(date(-62_135_596_800), "0001-01-01");
        // Extremes do not panic.
        let _ = date(i64::MAX);
        let _ = date(i64::MIN);
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let cases: Vec<Vec<Point>> = vec![
            vec![p(0, f64::MAX), p(1, f64::MIN)],
            vec![p(0, f64::MAX)],
            vec![p(0, f64::MIN_POSITIVE)],
            vec![p(0, 5e-324), p(1, 5e-324)],
            vec![p(0, 1e300), p(1, 1e300 + 1e285)],
            vec![p(0, 1e17), p(1, 1e17 + 16.0)],
            vec![
                Point { at: i64::MIN, value: 1.0, abnormal: true },
                Point { at: i64::MAX, value: 2.0, abnormal: false },
            ],
            vec![Point { at: i64::MAX, value: -0.0, abnormal: false }],
        ];
        for pts in cases {
            for (low, high) in [(None, None), (Some(f64::MIN), Some(f64::MAX)), (Some(0.0), None)] {
                let svg = trend_svg("X", "u", &pts, low, high);
                assert!(svg.ends_with("</svg>"));
                assert!(!svg.contains("NaN"), "{svg}");
                assert!(!svg.contains("=\"inf"), "{svg}");
                assert!(balanced(&svg));
                let labels = y_labels(&svg);
                assert!((4..=6).contains(&labels.len()), "{labels:?}");
            }
        }
    }

    #[test]
    fn many_points() {
        let pts: Vec<Point> = (0..1000)
            .map(|i| Point {
                at: T0 + i * 3600,
                value: (i as f64 / 10.0).sin() * 2.0 + 5.0,
                abnormal: i % 50 == 0,
            })
            .collect();
        let svg = trend_svg("Glucose", "mmol/L", &pts, Some(4.0), Some(7.0));
        assert_eq!(svg.matches(r#"<path class="abnormal""#).count(), 20);
        assert_eq!(svg.matches("<circle").count(), 980);
        assert!(balanced(&svg));
    }

    #[test]
    fn identical_charts_share_ids_and_different_charts_do_not() {
        let a = trend_svg("K", "mmol/L", &sample(), None, None);
        let b = trend_svg("K", "mmol/L", &sample(), None, None);
        let c = trend_svg("Na", "mmol/L", &sample(), None, None);
        assert_eq!(a, b);
        let id = |s: &str| s.split("<title id=\"").nth(1).and_then(|r| r.split('"').next()).map(str::to_string);
        assert_ne!(id(&a), id(&c));
    }
}
