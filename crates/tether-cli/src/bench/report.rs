//! What a bench run prints and writes: the `key=value` line of each
//! result, the table of tether/baseline ratios, the JSON file, and the
//! small statistics (percentiles, median of runs) behind them.
//!
//! Ratio convention: every ratio is oriented so that **> 1 means tether is
//! better** than the baseline: tether/baseline for throughput figures
//! (req/s, MiB/s, messages/s), baseline/tether for figures where less is
//! better (rtt's p50 latency, idle's bytes per session).
//!
//! With `--runs N` the implementations take turns, round after round, so a
//! tether run and a baseline run of the same round are minutes, often
//! seconds, apart. A ratio is then the median of the N ratios of the same
//! round, not the ratio of the two medians: a shared machine that changes
//! pace between rounds (by four times, at times) moves both sides of a
//! round alike, where two medians may come from rounds of different pace.
//! Only the rounds both sides ran are paired; the table shows their spread
//! beside the ratio, and the JSON how many there were.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Map, Value as Json};

use super::{Impl, Workload};

/// One figure of a result line.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A count or a size, printed as an integer.
    Int(u64),
    /// A measurement, printed with the given number of decimals.
    Float(f64, usize),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v, decimals) => write!(f, "{v:.decimals$}"),
        }
    }
}

impl Value {
    fn to_json(&self) -> Json {
        match self {
            Value::Int(v) => json!(v),
            Value::Float(v, _) => json!(v),
        }
    }
}

/// Which way a headline figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Throughput: more is better.
    Higher,
    /// Latency, memory: less is better.
    Lower,
}

/// The result of one workload for one implementation.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Which workload.
    pub workload: Workload,
    /// Which implementation.
    pub implementation: Impl,
    /// The processes it was measured across: 1 (server and client in this
    /// process) or 2 (the server in a `--serve` process).
    pub procs: u8,
    /// The figures, in printing order (after `workload`, `impl`, `procs`).
    pub fields: Vec<(&'static str, Value)>,
    /// The key of the figure ratios and medians are taken on.
    pub headline: &'static str,
    /// Which way that figure improves.
    pub better: Better,
    /// The headline figure of each round, in order, when the record stands
    /// for several (see [`summarize`]); `None` for a round that failed.
    pub rounds: Vec<Option<f64>>,
}

impl Record {
    /// A record with no figures yet.
    pub fn new(workload: Workload, implementation: Impl, headline: &'static str) -> Self {
        let better = match workload {
            Workload::Rtt | Workload::Idle => Better::Lower,
            _ => Better::Higher,
        };
        Record {
            workload,
            implementation,
            procs: 1,
            fields: Vec::new(),
            headline,
            better,
            rounds: Vec::new(),
        }
    }

    /// The record with `procs=` set.
    pub fn with_procs(mut self, procs: u8) -> Self {
        self.procs = procs;
        self
    }

    /// Appends an integer figure.
    pub fn int(mut self, key: &'static str, v: u64) -> Self {
        self.fields.push((key, Value::Int(v)));
        self
    }

    /// Appends a measured figure printed with `decimals` decimals.
    pub fn float(mut self, key: &'static str, v: f64, decimals: usize) -> Self {
        self.fields.push((key, Value::Float(v, decimals)));
        self
    }

    /// The value of figure `key`, if present.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.fields
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| match v {
                Value::Int(i) => *i as f64,
                Value::Float(f, _) => *f,
            })
    }

    /// How many of the rounds it stands for ran, when more than one did:
    /// the `runs=` figure, printed after the others.
    pub fn runs(&self) -> Option<u64> {
        let ran = self.rounds.iter().filter(|r| r.is_some()).count();
        (ran > 1).then_some(ran as u64)
    }

    /// The headline figure (NaN if missing, which sorts it last).
    pub fn headline_value(&self) -> f64 {
        self.get(self.headline).unwrap_or(f64::NAN)
    }

    /// The `key=value` line: `workload=… impl=… procs=… …`.
    pub fn line(&self) -> String {
        let mut s = format!(
            "workload={} impl={} procs={}",
            self.workload.name(),
            self.implementation.name(),
            self.procs
        );
        for (k, v) in &self.fields {
            let _ = write!(s, " {k}={v}");
        }
        if let Some(n) = self.runs() {
            let _ = write!(s, " runs={n}");
        }
        s
    }

    /// The record as a JSON object (same keys as the line).
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        m.insert("workload".into(), json!(self.workload.name()));
        m.insert("impl".into(), json!(self.implementation.name()));
        m.insert("procs".into(), json!(self.procs));
        for (k, v) in &self.fields {
            m.insert((*k).into(), v.to_json());
        }
        if let Some(n) = self.runs() {
            m.insert("runs".into(), json!(n));
        }
        m.insert("headline".into(), json!(self.headline));
        if self.rounds.len() > 1 {
            // every round's headline figure, in order (null: it failed)
            m.insert("rounds".into(), json!(self.rounds));
        }
        Json::Object(m)
    }
}

/// One cell of the ratio table: a tether result against a baseline result
/// of the same workload, measured in the same run.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    /// The workload.
    pub workload: Workload,
    /// The tether implementation.
    pub tether: Impl,
    /// The baseline.
    pub baseline: Impl,
    /// The figure compared.
    pub metric: &'static str,
    /// Oriented so that > 1 means tether is better: the median of the
    /// ratios of the rounds both ran, else (a single run, or no round in
    /// common) the ratio of the two results.
    pub ratio: f64,
    /// How many rounds both ran (0 when the ratio is not of rounds).
    pub paired: usize,
    /// The lowest and the highest of the rounds' ratios, when two or more
    /// rounds were paired.
    pub spread: Option<(f64, f64)>,
}

/// Every tether-vs-baseline ratio among `records`, in record order.
pub fn ratios(records: &[Record]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for t in records.iter().filter(|r| !r.implementation.is_baseline()) {
        for b in records
            .iter()
            .filter(|r| r.implementation.is_baseline() && r.workload == t.workload)
        {
            // (a figure of 0 or less, or NaN, has no ratio: NaN, left out)
            let oriented = |tv: f64, bv: f64| match t.better {
                _ if !(tv > 0.0 && bv > 0.0) => f64::NAN,
                Better::Higher => tv / bv,
                Better::Lower => bv / tv,
            };
            // the ratio of each round both measured, side by side in time
            let mut by_round: Vec<f64> = t
                .rounds
                .iter()
                .zip(&b.rounds)
                .filter_map(|(tv, bv)| Some(oriented((*tv)?, (*bv)?)))
                .filter(|r| r.is_finite())
                .collect();
            by_round.sort_by(f64::total_cmp);
            let (ratio, spread) = match by_round.as_slice() {
                [] => (oriented(t.headline_value(), b.headline_value()), None),
                [only] => (*only, None),
                [first, .., last] => (median(&by_round), Some((*first, *last))),
            };
            if ratio.is_finite() {
                out.push(Ratio {
                    workload: t.workload,
                    tether: t.implementation,
                    baseline: b.implementation,
                    metric: t.headline,
                    ratio,
                    paired: by_round.len(),
                    spread,
                });
            }
        }
    }
    out
}

/// The median of sorted, non-empty ratios (for an even count, the
/// geometric mean of the two in the middle: ratios are read on a log scale,
/// where 0.5x and 2x are as far from 1 and their middle is 1x, whichever
/// way a ratio is oriented).
fn median(ratios: &[f64]) -> f64 {
    let mid = ratios.len() / 2;
    if ratios.len() % 2 == 1 {
        ratios[mid]
    } else {
        (ratios[mid - 1] * ratios[mid]).sqrt()
    }
}

/// The compact ratio table printed after the result lines: one row per
/// tether result, one column per baseline: `ratios` are [`ratios`]'s.
pub fn ratio_table(ratios: &[Ratio]) -> String {
    let baselines = [Impl::StdBlocking, Impl::TokioFramed];
    let mut rows: Vec<(Workload, Impl, &str)> = Vec::new();
    for r in ratios {
        if !rows
            .iter()
            .any(|(w, i, _)| *w == r.workload && *i == r.tether)
        {
            rows.push((r.workload, r.tether, r.metric));
        }
    }
    let cell = |w: Workload, t: Impl, b: Impl| {
        ratios
            .iter()
            .find(|r| r.workload == w && r.tether == t && r.baseline == b)
            .map_or_else(|| "-".to_string(), cell_text)
    };
    let cells: Vec<[String; 2]> = rows
        .iter()
        .map(|&(w, t, _)| baselines.map(|b| cell(w, t, b)))
        .collect();
    // as wide as the widest cell (a spread makes them wider)
    let width = cells
        .iter()
        .flatten()
        .map(|c| c.chars().count())
        .chain(["vs std-blocking".len()])
        .max()
        .unwrap_or(0);
    let mut s = String::from(
        "ratios tether/baseline (>1 = tether better; rtt: p50 latency, idle: bytes/session, others: throughput)\n",
    );
    let _ = writeln!(
        s,
        "{:<19} {:<16} {:<17} {:>width$} {:>width$}",
        "workload", "impl", "metric", "vs std-blocking", "vs tokio-framed"
    );
    if rows.is_empty() {
        s.push_str("(no tether result with a baseline beside it)\n");
    }
    for ((w, t, metric), [vs_std, vs_framed]) in rows.into_iter().zip(cells) {
        let _ = writeln!(
            s,
            "{:<19} {:<16} {:<17} {vs_std:>width$} {vs_framed:>width$}",
            w.name(),
            t.name(),
            metric,
        );
    }
    s
}

/// A ratio as the table shows it: `1.04x`, or with the rounds' spread,
/// `1.04x (0.97-1.10)`.
fn cell_text(r: &Ratio) -> String {
    match r.spread {
        None => format!("{:.2}x", r.ratio),
        Some((low, high)) => format!("{:.2}x ({low:.2}-{high:.2})", r.ratio),
    }
}

/// The whole run as JSON: settings (`procs`: the run's mode, 2 when
/// measured against a `--serve` process; each result says where it was
/// measured, and W8's always says 1), every result, every ratio (`ratios`:
/// [`ratios`]'s of `records`).
pub fn to_json(records: &[Record], ratios: &[Ratio], divisor: u64, runs: usize, procs: u8) -> Json {
    json!({
        "procs": procs,
        "divisor": divisor,
        "runs": runs,
        "ratio_convention": "greater than 1 means tether is better: tether/baseline for throughput, baseline/tether for rtt p50 latency and idle bytes per session",
        "results": records.iter().map(Record::to_json).collect::<Vec<_>>(),
        "ratios": ratios.iter().map(|r| json!({
            "workload": r.workload.name(),
            "impl": r.tether.name(),
            "baseline": r.baseline.name(),
            "metric": r.metric,
            "ratio": r.ratio,
            "rounds_paired": r.paired,
            "rounds_min": r.spread.map(|(low, _)| low),
            "rounds_max": r.spread.map(|(_, high)| high),
        })).collect::<Vec<_>>(),
    })
}

/// The `p`-th quantile (0..=1) of sorted latencies, in microseconds, by the
/// nearest rank: the smallest sample with at least `p` of them at or below
/// it (the 50th of 100 for p50). `NaN` for no samples.
pub fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (sorted.len() as f64 * p.clamp(0.0, 1.0)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e6
}

/// The record that stands for the rounds of one workload and
/// implementation (`None`: a round that failed): the median round by the
/// headline figure (for an even count, the worse of the two middle runs:
/// a real run, never an average of two, and never flattering, whichever
/// way the figure improves), with every round's headline kept for [`ratios`]
/// (and for the `runs=N` figure, when N > 1 ran: [`Record::runs`]).
pub fn summarize(rounds: Vec<Option<Record>>) -> Option<Record> {
    let headlines = rounds
        .iter()
        .map(|r| r.as_ref().map(Record::headline_value))
        .collect();
    let mut chosen = median_run(rounds.into_iter().flatten().collect())?;
    chosen.rounds = headlines;
    Some(chosen)
}

/// The median of several runs by the headline figure (see [`summarize`]).
fn median_run(mut runs: Vec<Record>) -> Option<Record> {
    let n = runs.len();
    // worst first, so that the lower middle is the worse one
    runs.sort_by(|a, b| {
        let order = a.headline_value().total_cmp(&b.headline_value());
        match a.better {
            Better::Higher => order,
            Better::Lower => order.reverse(),
        }
    });
    runs.into_iter().nth(n.checked_sub(1)? / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(w: Workload, i: Impl, key: &'static str, v: f64) -> Record {
        Record::new(w, i, key).float(key, v, 1)
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let lat: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile_us(&lat, 0.5), 50.0);
        assert_eq!(percentile_us(&lat, 0.99), 99.0);
        assert_eq!(percentile_us(&lat, 0.0), 1.0);
        assert_eq!(percentile_us(&lat, 1.0), 100.0);
        assert_eq!(percentile_us(&lat[..1], 0.99), 1.0);
        assert!(percentile_us(&[], 0.5).is_nan());
    }

    #[test]
    fn median_takes_the_middle_run_by_headline() {
        let runs = vec![
            rec(Workload::Bulk, Impl::TetherLength, "mib_s", 300.0),
            rec(Workload::Bulk, Impl::TetherLength, "mib_s", 100.0),
            rec(Workload::Bulk, Impl::TetherLength, "mib_s", 200.0),
        ];
        let m = median_run(runs).unwrap();
        assert_eq!(m.get("mib_s"), Some(200.0));
        // even count: the worse of the two middle runs, a real run: the
        // lower throughput, the higher latency
        let runs = vec![
            rec(Workload::Push, Impl::TetherPacket, "msgs_s", 4.0),
            rec(Workload::Push, Impl::TetherPacket, "msgs_s", 1.0),
        ];
        assert_eq!(median_run(runs).unwrap().get("msgs_s"), Some(1.0));
        let runs = vec![
            rec(Workload::Rtt, Impl::TetherPacket, "p50_us", 30.0),
            rec(Workload::Rtt, Impl::TetherPacket, "p50_us", 20.0),
            rec(Workload::Rtt, Impl::TetherPacket, "p50_us", 10.0),
            rec(Workload::Rtt, Impl::TetherPacket, "p50_us", 40.0),
        ];
        assert_eq!(median_run(runs).unwrap().get("p50_us"), Some(30.0));
        let one = median_run(vec![rec(Workload::Rtt, Impl::TokioFramed, "p50_us", 3.0)]).unwrap();
        assert_eq!(one.get("p50_us"), Some(3.0));
        assert!(median_run(Vec::new()).is_none());
    }

    #[test]
    fn line_is_key_value_pairs_in_order() {
        let r = Record::new(Workload::Rtt, Impl::TokioFramed, "p50_us")
            .int("requests", 20000)
            .float("req_s", 61234.4, 0)
            .float("p50_us", 15.84, 1);
        assert_eq!(
            r.line(),
            "workload=rtt impl=tokio-framed procs=1 requests=20000 req_s=61234 p50_us=15.8"
        );
        assert_eq!(r.to_json()["p50_us"], json!(15.84));
        assert_eq!(r.to_json()["impl"], json!("tokio-framed"));
        assert!(r.with_procs(2).line().contains(" procs=2 "));
    }

    #[test]
    fn a_figure_of_zero_or_less_has_no_ratio() {
        for bad in [0.0, -120.0, f64::NAN] {
            let records = vec![
                rec(
                    Workload::Idle,
                    Impl::TokioFramed,
                    "bytes_per_session",
                    9000.0,
                ),
                rec(Workload::Idle, Impl::TetherLength, "bytes_per_session", bad),
                rec(Workload::Bulk, Impl::StdBlocking, "mib_s", bad),
                rec(Workload::Bulk, Impl::TetherLength, "mib_s", 100.0),
            ];
            assert!(ratios(&records).is_empty(), "{bad}");
        }
    }

    #[test]
    fn ratios_are_oriented_so_more_is_better_for_tether() {
        let records = vec![
            rec(Workload::Rtt, Impl::StdBlocking, "p50_us", 20.0),
            rec(Workload::Rtt, Impl::TokioFramed, "p50_us", 40.0),
            rec(Workload::Rtt, Impl::TetherPacket, "p50_us", 25.0),
            rec(Workload::Pipelined, Impl::TokioFramed, "req_s", 100.0),
            rec(Workload::Pipelined, Impl::TetherPacket, "req_s", 150.0),
            rec(
                Workload::Idle,
                Impl::TokioFramed,
                "bytes_per_session",
                9000.0,
            ),
            rec(
                Workload::Idle,
                Impl::TetherLength,
                "bytes_per_session",
                3000.0,
            ),
        ];
        let r = ratios(&records);
        let get = |w, t, b| {
            r.iter()
                .find(|x| x.workload == w && x.tether == t && x.baseline == b)
                .map(|x| x.ratio)
        };
        assert_eq!(
            get(Workload::Rtt, Impl::TetherPacket, Impl::StdBlocking),
            Some(0.8)
        );
        assert_eq!(
            get(Workload::Rtt, Impl::TetherPacket, Impl::TokioFramed),
            Some(1.6)
        );
        assert_eq!(
            get(Workload::Pipelined, Impl::TetherPacket, Impl::TokioFramed),
            Some(1.5)
        );
        assert_eq!(
            get(Workload::Idle, Impl::TetherLength, Impl::TokioFramed),
            Some(3.0)
        );
        assert_eq!(r.len(), 4);
        let table = ratio_table(&ratios(&records));
        assert!(table.contains("1.60x"), "{table}");
        let row = table.lines().find(|l| l.starts_with("pipelined")).unwrap();
        assert!(row.contains(" - ") || row.contains("-  "), "{row}");
        assert!(row.ends_with("1.50x"), "{row}");
    }

    /// The record `summarize` makes of rounds with these headline figures
    /// (`None`: a failed round).
    fn rounds(w: Workload, i: Impl, key: &'static str, values: &[Option<f64>]) -> Record {
        summarize(
            values
                .iter()
                .map(|v| v.map(|v| rec(w, i, key, v)))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn summarize_keeps_every_rounds_headline() {
        let r = rounds(
            Workload::Bulk,
            Impl::TetherLength,
            "mib_s",
            &[Some(3.0), None, Some(1.0), Some(2.0)],
        );
        assert_eq!(r.get("mib_s"), Some(2.0));
        assert_eq!(r.runs(), Some(3), "the rounds that ran");
        assert!(r.line().ends_with(" runs=3"), "{}", r.line());
        assert_eq!(r.to_json()["runs"], json!(3));
        assert_eq!(r.rounds, [Some(3.0), None, Some(1.0), Some(2.0)]);
        assert_eq!(r.to_json()["rounds"], json!([3.0, null, 1.0, 2.0]));
        assert!(summarize(vec![None, None]).is_none());
        // one round that ran, of one or of two: no runs= figure
        for values in [&[Some(1.0)][..], &[Some(1.0), None]] {
            let r = rounds(Workload::Bulk, Impl::TetherLength, "mib_s", values);
            assert_eq!(r.runs(), None);
            assert!(!r.line().contains("runs="), "{}", r.line());
            assert!(r.to_json().get("runs").is_none());
        }
    }

    #[test]
    fn a_ratio_of_rounds_pairs_the_runs_of_each_round() {
        // the machine slowed down four times in round 2, for both sides:
        // the medians (100 vs 100) would say 1.00x, each round says tether
        // is 10% slower
        let w = Workload::Pipelined;
        let records = vec![
            rounds(
                w,
                Impl::TokioFramed,
                "req_s",
                &[Some(100.0), Some(25.0), Some(200.0)],
            ),
            rounds(
                w,
                Impl::TetherPacket,
                "req_s",
                &[Some(90.0), Some(22.5), Some(180.0)],
            ),
        ];
        let r = &ratios(&records)[0];
        assert!((r.ratio - 0.9).abs() < 1e-9, "{r:?}");
        let (low, high) = r.spread.unwrap();
        assert!((low - 0.9).abs() < 1e-9 && (high - 0.9).abs() < 1e-9);

        // a round that failed on one side is left out; latency is inverted;
        // an even count of rounds gives the geometric mean of the middle two
        let w = Workload::Rtt;
        let records = vec![
            rounds(
                w,
                Impl::TokioFramed,
                "p50_us",
                &[Some(40.0), Some(40.0), None, Some(40.0), Some(40.0)],
            ),
            rounds(
                w,
                Impl::TetherLength,
                "p50_us",
                &[Some(20.0), Some(40.0), Some(1.0), Some(80.0), Some(50.0)],
            ),
        ];
        let r = &ratios(&records)[0];
        assert!(
            (r.ratio - 0.8f64.sqrt()).abs() < 1e-9,
            "median of 0.5, 0.8, 1, 2: {r:?}"
        );
        assert_eq!((r.spread, r.paired), (Some((0.5, 2.0)), 4));
        let table = ratio_table(&ratios(&records));
        assert!(table.contains("0.89x (0.50-2.00)"), "{table}");
        // the header and every row line up, however wide the cells
        let widths: Vec<usize> = table.lines().skip(1).map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{table}");

        // 0.5x and 2x: their middle is 1x, whichever way ratios point
        let records = vec![
            rounds(w, Impl::TokioFramed, "p50_us", &[Some(40.0), Some(40.0)]),
            rounds(w, Impl::TetherLength, "p50_us", &[Some(80.0), Some(20.0)]),
        ];
        assert!((ratios(&records)[0].ratio - 1.0).abs() < 1e-9);

        // one round in common: its ratio, though the median runs (20 and
        // 40) would say 2x
        let records = vec![
            rounds(w, Impl::TokioFramed, "p50_us", &[Some(40.0), None]),
            rounds(w, Impl::TetherLength, "p50_us", &[Some(40.0), Some(20.0)]),
        ];
        let r = &ratios(&records)[0];
        assert_eq!((r.ratio, r.paired, r.spread), (1.0, 1, None));

        // one run each, or no round in common: the ratio of the results
        for (framed, tether) in [
            (&[Some(40.0)][..], &[Some(20.0)][..]),
            (&[Some(40.0), None], &[None, Some(20.0)]),
        ] {
            let records = vec![
                rounds(w, Impl::TokioFramed, "p50_us", framed),
                rounds(w, Impl::TetherLength, "p50_us", tether),
            ];
            let r = &ratios(&records)[0];
            assert_eq!(
                (r.ratio, r.paired, r.spread),
                (2.0, usize::from(framed.len() == 1), None)
            );
        }
    }

    #[test]
    fn json_holds_results_and_ratios() {
        let records = vec![
            rec(Workload::Bulk, Impl::TokioFramed, "mib_s", 100.0),
            rec(Workload::Bulk, Impl::TetherLength, "mib_s", 90.0),
        ];
        let j = to_json(&records, &ratios(&records), 10, 1, 2);
        assert_eq!(j["procs"], json!(2));
        assert_eq!(j["results"].as_array().unwrap().len(), 2);
        assert_eq!(j["ratios"][0]["baseline"], json!("tokio-framed"));
        assert!((j["ratios"][0]["ratio"].as_f64().unwrap() - 0.9).abs() < 1e-9);
        assert_eq!(
            j["ratios"][0]["rounds_min"],
            Json::Null,
            "one round: no spread"
        );
        assert_eq!(j["ratios"][0]["rounds_paired"], json!(0));
    }
}
