//! Latency percentile charts as hand-written SVG, drawn as HdrHistogram's plotter draws a
//! `.hgrm` file: the x axis is the percentile on a log scale of 1/(1−q), labelled 0%,
//! 90%, 99%, 99.9%, 99.99%, 99.999%; the y axis is latency, linear, in µs (ms when the
//! largest value plotted is 10 ms or more). One polyline per series, with a legend.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// One line of a chart: a label and (quantile, latency in ns) points, quantiles rising.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (quantile in [0, 1), latency ns).
    pub points: Vec<(f64, f64)>,
}

/// The number of decades the x axis spans: 0% … 99.999%.
const DECADES: f64 = 5.0;

impl Series {
    /// The percentile curve of `hist` (nanoseconds), 5 steps per halving of the distance
    /// to 100% (as `.hgrm` files), up to the first point at or past 99.999%.
    pub fn from_histogram(label: impl Into<String>, hist: &Histogram<u64>) -> Series {
        let mut points = Vec::new();
        if !hist.is_empty() {
            for v in hist.iter_quantiles(5) {
                let q = v.quantile_iterated_to();
                if q >= 1.0 {
                    break;
                }
                let value = hist.highest_equivalent(v.value_iterated_to()) as f64;
                points.push((q, value));
                if x_of(q) >= DECADES {
                    break;
                }
            }
        }
        Series {
            label: label.into(),
            points,
        }
    }
}

/// log10(1/(1−q)), clamped to the axis.
fn x_of(q: f64) -> f64 {
    if q >= 1.0 {
        return DECADES;
    }
    (1.0 / (1.0 - q.max(0.0))).log10().clamp(0.0, DECADES)
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about `n` steps up to `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

fn fmt_tick(v: f64) -> String {
    if v == v.trunc() {
        format!("{v:.0}")
    } else if (v * 10.0) == (v * 10.0).trunc() {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Line colours, distinct on white (Tableau 10).
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// Renders `series` as a standalone SVG document titled `title`.
pub fn percentile_chart(title: &str, series: &[Series]) -> String {
    let (w, h) = (900.0_f64, 540.0_f64);
    let (left, right, top, bottom) = (80.0, 30.0, 50.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let max_ns = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let (unit, div) = if max_ns >= 10_000_000.0 {
        ("ms", 1e6)
    } else {
        ("µs", 1e3)
    };
    let max_v = (max_ns / div).max(f64::MIN_POSITIVE);
    let step = nice_step(max_v, 5.0);
    let y_max = ((max_v / step).ceil() * step).max(step);
    let px = |q: f64| left + x_of(q) / DECADES * pw;
    let py = |ns: f64| top + ph - (ns / div / y_max).clamp(0.0, 1.0) * ph;

    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    // Grid and x ticks: one per decade.
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
    for (i, l) in labels.iter().enumerate() {
        let x = left + i as f64 / DECADES * pw;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{:.1}" stroke="#dddddd"/>"##,
            top + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{l}</text>"#,
            top + ph + 18.0
        );
    }
    // y ticks.
    let n = (y_max / step).round() as usize;
    for i in 0..=n {
        let v = i as f64 * step;
        let y = top + ph - v / y_max * ph;
        let _ = writeln!(
            s,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dddddd"/>"##,
            left + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y + 4.0,
            fmt_tick(v)
        );
    }
    // Axes and their labels.
    let _ = writeln!(
        s,
        r#"<rect x="{left:.1}" y="{top:.1}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">Percentile (log scale of 1/(1−q))</text>"#,
        left + pw / 2.0,
        h - 16.0
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">Latency ({unit})</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // The series.
    for (i, se) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mut pts = String::new();
        for &(q, ns) in &se.points {
            if !pts.is_empty() {
                pts.push(' ');
            }
            let _ = write!(pts, "{:.1},{:.1}", px(q), py(ns));
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"><title>{}</title></polyline>"#,
            escape(&se.label)
        );
    }
    // Legend, top left inside the plot.
    let lh = 18.0;
    let lw = 12.0
        + 30.0
        + series
            .iter()
            .map(|se| se.label.chars().count())
            .max()
            .unwrap_or(0) as f64
            * 7.0;
    let (lx, ly) = (left + 12.0, top + 12.0);
    let _ = writeln!(
        s,
        r##"<rect x="{lx:.1}" y="{ly:.1}" width="{lw:.1}" height="{:.1}" fill="white" fill-opacity="0.85" stroke="#999999"/>"##,
        series.len() as f64 * lh + 8.0
    );
    for (i, se) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let y = ly + 4.0 + lh * (i as f64 + 0.5);
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="3"/>"#,
            lx + 6.0,
            lx + 30.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 36.0,
            y + 4.0,
            escape(&se.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hgrm::latency_histogram;

    /// A small well-formedness check: balanced tags, quoted attributes, no bare `<` or
    /// `&` in text, one root element.
    fn well_formed(doc: &str) -> Result<Vec<String>, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut elements = Vec::new();
        let mut roots = 0;
        let mut rest = doc;
        while let Some(i) = rest.find('<') {
            let text = &rest[..i];
            check_text(text)?;
            if !text.trim().is_empty() && stack.is_empty() {
                return Err(format!("text outside the root: {text:?}"));
            }
            let end = rest[i..].find('>').ok_or("unclosed tag")? + i;
            let tag = &rest[i + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('?') {
                if !tag.ends_with('?') {
                    return Err(format!("bad declaration <{tag}>"));
                }
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body
                .split_whitespace()
                .next()
                .ok_or("empty tag")?
                .to_string();
            check_attrs(&body[name.len()..])?;
            if stack.is_empty() {
                roots += 1;
            }
            elements.push(name.clone());
            if !self_closing {
                stack.push(name);
            }
        }
        check_text(rest)?;
        if !stack.is_empty() {
            return Err(format!("unclosed elements {stack:?}"));
        }
        if roots != 1 {
            return Err(format!("{roots} root elements"));
        }
        Ok(elements)
    }

    fn check_text(t: &str) -> Result<(), String> {
        for (i, _) in t.match_indices('&') {
            let ent = &t[i..];
            if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|e| ent.starts_with(e))
            {
                return Err(format!("bare & in {t:?}"));
            }
        }
        if t.contains('>') {
            return Err(format!("bare > in text {t:?}"));
        }
        Ok(())
    }

    fn check_attrs(mut a: &str) -> Result<(), String> {
        loop {
            a = a.trim_start();
            if a.is_empty() {
                return Ok(());
            }
            let eq = a
                .find('=')
                .ok_or_else(|| format!("attribute without value: {a}"))?;
            let name = &a[..eq];
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("bad attribute name {name:?}"));
            }
            let v = &a[eq + 1..];
            let q = v.chars().next().ok_or("missing value")?;
            if q != '"' {
                return Err(format!("unquoted attribute {name}"));
            }
            let close = v[1..].find('"').ok_or("unterminated attribute")? + 1;
            check_text(&v[1..close])?;
            if v[1..close].contains('<') {
                return Err("< in attribute".into());
            }
            a = &v[close + 1..];
        }
    }

    fn hist(scale: u64) -> Histogram<u64> {
        let mut h = latency_histogram();
        for v in 1..=20_000u64 {
            h.record(v * scale).unwrap();
        }
        h
    }

    #[test]
    fn chart_is_well_formed_with_one_polyline_per_series() {
        let series = vec![
            Series::from_histogram("walship portable", &hist(10)),
            Series::from_histogram("okaywal <0.3> & co", &hist(25)),
            Series::from_histogram("empty", &latency_histogram()),
        ];
        let doc = percentile_chart("Local, 1 writer × 128 B", &series);
        let elements = well_formed(&doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
        assert_eq!(elements[0], "svg");
        assert_eq!(elements.iter().filter(|e| *e == "polyline").count(), 3);
        assert!(doc.contains("okaywal &lt;0.3&gt; &amp; co"));
        for l in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"] {
            assert!(doc.contains(&format!(">{l}</text>")), "x label {l}");
        }
        // Coordinates stay inside the plot area.
        for line in doc.lines().filter(|l| l.starts_with("<polyline")) {
            let pts = line.split("points=\"").nth(1).unwrap();
            let pts = &pts[..pts.find('"').unwrap()];
            for p in pts.split_whitespace() {
                let (x, y) = p.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((80.0..=870.0).contains(&x), "{x}");
                assert!((50.0..=480.0).contains(&y), "{y}");
            }
        }
        // 20,000 values of up to 500 µs: µs on the y axis.
        assert!(doc.contains("Latency (µs)"));
    }

    #[test]
    fn curves_rise_and_stop_at_the_axis_end() {
        let s = Series::from_histogram("x", &hist(1_000));
        assert!(s.points.len() > 20);
        assert!(s
            .points
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!(s.points.iter().all(|p| p.0 < 1.0));
        assert!(x_of(s.points.last().unwrap().0) <= DECADES);
        let doc = percentile_chart("t", &[s]);
        assert!(doc.contains("Latency (ms)"), "20 ms max is drawn in ms");
    }

    #[test]
    fn steps() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9 * b;
        assert!(close(nice_step(100.0, 5.0), 20.0));
        assert!(close(nice_step(7.0, 5.0), 2.0));
        assert!(close(nice_step(0.3, 5.0), 0.1));
    }
}
