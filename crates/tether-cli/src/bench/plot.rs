//! `--plot FILE`: a hand-written SVG bar chart of the tether/baseline
//! ratios, one bar per (workload, tether impl, baseline), drawn from a
//! vertical line at 1.0 on a log₂ scale, so 2× better and 2× worse are
//! bars of the same length on either side. Green bars (right) are where
//! tether is better, red bars (left) where it is worse (dark against
//! std-blocking, light against tokio-framed); each bar carries
//! its value, and with `--runs` a whisker from its lowest round's ratio to
//! its highest.

use std::fmt::Write as _;

use super::report::Ratio;
use super::Impl;

const WIDTH: f64 = 960.0;
const LABEL_W: f64 = 360.0;
const PLOT_W: f64 = 540.0;
const ROW_H: f64 = 24.0;
const TOP: f64 = 90.0;
const BOTTOM: f64 = 50.0;

/// The chart of `ratios` as an SVG document.
pub fn svg(ratios: &[Ratio]) -> String {
    let rows = ratios.len().max(1) as f64;
    let height = TOP + rows * ROW_H + BOTTOM;
    // half-width of the scale in powers of two: at least 1 (0.5x..2x), at
    // most 5 (1/32x..32x); beyond it bars are clipped and marked
    let span = ratios
        .iter()
        .flat_map(|r| [Some(r.ratio), r.spread.map(|s| s.0), r.spread.map(|s| s.1)])
        .flatten()
        .map(|ratio| ratio.log2().abs().ceil())
        .fold(1.0f64, f64::max)
        .min(5.0);
    let center = LABEL_W + PLOT_W / 2.0;
    let unit = PLOT_W / 2.0 / span;
    let x_of = |ratio: f64| center + ratio.log2().clamp(-span, span) * unit;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{}" y="24" font-size="16" font-weight="bold" text-anchor="middle">tether bench: tether / baseline (log scale, &gt;1 = tether better)</text>"##,
        WIDTH / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="44" fill="#555" text-anchor="middle">rtt: p50 latency; idle: bytes per session; others: throughput. Same run, same machine.{}</text>"##,
        WIDTH / 2.0,
        if ratios.iter().any(|r| r.spread.is_some()) {
            " Bar: median of the rounds; whisker: lowest to highest round."
        } else {
            ""
        }
    );
    if ratios.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle">no tether result with a baseline beside it</text>"##,
            WIDTH / 2.0,
            TOP + ROW_H / 2.0
        );
    }
    // grid: powers of two
    let bottom = TOP + rows * ROW_H;
    let span_i = span as i32;
    for k in -span_i..=span_i {
        let r = 2f64.powi(k);
        let x = x_of(r);
        let (stroke, width) = if k == 0 { ("#000", 1.5) } else { ("#ddd", 1.0) };
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{bottom}" stroke="{stroke}" stroke-width="{width}"/>"##,
            TOP - 6.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{x:.1}" y="{}" text-anchor="middle" fill="#333">{}</text>"##,
            bottom + 16.0,
            tick_label(r)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{center}" y="{}" text-anchor="middle" fill="#333">← baseline better · tether better →</text>"##,
        bottom + 36.0
    );
    let mut previous = None;
    for (i, r) in ratios.iter().enumerate() {
        let y = TOP + i as f64 * ROW_H;
        if previous.is_some() && previous != Some(r.workload) {
            let _ = writeln!(
                s,
                r##"<line x1="8" y1="{y}" x2="{}" y2="{y}" stroke="#bbb"/>"##,
                WIDTH - 8.0
            );
        }
        let label = format!(
            "{} · {} vs {}",
            r.workload.name(),
            r.tether.name(),
            r.baseline.name()
        );
        let weight = if previous != Some(r.workload) {
            "bold"
        } else {
            "normal"
        };
        previous = Some(r.workload);
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end" font-weight="{weight}">{}</text>"##,
            LABEL_W - 10.0,
            y + ROW_H * 0.65,
            escape(&label)
        );
        let x = x_of(r.ratio);
        let (x0, w) = if x >= center {
            (center, x - center)
        } else {
            (x, center - x)
        };
        let fill = match (r.ratio >= 1.0, r.baseline) {
            (true, Impl::StdBlocking) => "#2e7d32",
            (true, _) => "#66bb6a",
            (false, Impl::StdBlocking) => "#c62828",
            (false, _) => "#ef5350",
        };
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/>"##,
            y + 4.0,
            w.max(1.0),
            ROW_H - 8.0
        );
        // the rounds' spread (with --runs): a whisker across the bar's
        // middle from the lowest round's ratio to the highest's
        let mut reach = x;
        if let Some((low, high)) = r.spread {
            let (xl, xh) = (x_of(low), x_of(high));
            let ym = y + ROW_H / 2.0;
            let _ = writeln!(
                s,
                r##"<path d="M{xl:.1} {:.1}V{:.1}M{xl:.1} {ym:.1}H{xh:.1}M{xh:.1} {:.1}V{:.1}" stroke="#222" stroke-width="1.2" fill="none"/>"##,
                ym - 4.0,
                ym + 4.0,
                ym - 4.0,
                ym + 4.0
            );
            reach = reach.max(xh);
        }
        let clipped = r.ratio.log2().abs() > span;
        let value = format!("{:.2}x{}", r.ratio, if clipped { " ▸" } else { "" });
        // a worse bar's value goes just right of the 1.0 line, where that
        // row is empty, so a long bar never pushes it into the labels
        let tx = if r.ratio >= 1.0 {
            reach + 4.0
        } else {
            center.max(reach) + 4.0
        };
        let anchor = "start";
        let _ = writeln!(
            s,
            r##"<text x="{tx:.1}" y="{:.1}" text-anchor="{anchor}">{value}</text>"##,
            y + ROW_H * 0.65
        );
    }
    // legend: the colour says which baseline, and which side won
    let ly = 70.0;
    let legend = [
        ("#2e7d32", "better than std-blocking"),
        ("#66bb6a", "better than tokio-framed"),
        ("#c62828", "worse than std-blocking"),
        ("#ef5350", "worse than tokio-framed"),
    ];
    for (i, (fill, text)) in legend.iter().enumerate() {
        let lx = 60.0 + i as f64 * 220.0;
        let _ = writeln!(
            s,
            r##"<rect x="{lx}" y="{}" width="12" height="12" fill="{fill}"/><text x="{}" y="{ly}">{text}</text>"##,
            ly - 10.0,
            lx + 16.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn tick_label(r: f64) -> String {
    if r >= 1.0 {
        format!("{r:.0}x")
    } else {
        let s = format!("{r:.3}");
        format!("{}x", s.trim_end_matches('0'))
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Workload;

    #[test]
    fn chart_has_a_bar_and_a_value_per_ratio() {
        let ratios = vec![
            Ratio {
                workload: Workload::Rtt,
                tether: Impl::TetherPacket,
                baseline: Impl::TokioFramed,
                metric: "p50_us",
                ratio: 1.5,
                paired: 3,
                spread: Some((1.25, 1.75)),
            },
            Ratio {
                workload: Workload::Bulk,
                tether: Impl::TetherLength,
                baseline: Impl::StdBlocking,
                metric: "mib_s",
                ratio: 0.25,
                paired: 1,
                spread: None,
            },
        ];
        let svg = svg(&ratios);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("1.50x") && svg.contains("0.25x"));
        assert!(svg.contains("rtt · tether-packet vs tokio-framed"));
        assert_eq!(svg.matches("<rect").count(), 1 + 2 + 4);
        assert_eq!(svg.matches("<path").count(), 1, "one whisker: one spread");
    }

    #[test]
    fn empty_chart_says_so() {
        assert!(svg(&[]).contains("no tether result"));
    }

    #[test]
    fn ticks_read_as_ratios() {
        assert_eq!(tick_label(4.0), "4x");
        assert_eq!(tick_label(0.5), "0.5x");
        assert_eq!(tick_label(0.25), "0.25x");
        assert_eq!(tick_label(0.125), "0.125x");
    }
}
