//! `tether bench` through the real binary, with counts divided so far
//! (the hidden `--scale`) that every workload takes a moment. No figure is
//! asserted: only the shape of the output and of the files.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const LIMIT: Duration = Duration::from_secs(240);

/// Runs `tether bench ARGS…`, killing it (and failing) after `LIMIT`.
fn bench(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(TETHER)
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // read both pipes on threads so a full pipe never stalls the child
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("tether bench did not exit within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// The `key=value` pairs of a result line.
fn pairs(line: &str) -> Vec<(&str, &str)> {
    line.split(' ')
        .map(|kv| {
            kv.split_once('=')
                .unwrap_or_else(|| panic!("{kv:?} in {line:?} is not key=value"))
        })
        .collect()
}

const EXPECTED: &[(&str, &[&str])] = &[
    (
        "rtt",
        &[
            "std-blocking",
            "tokio-framed",
            "tether-sentinel",
            "tether-length",
            "tether-blocking",
            "tether-packet",
        ],
    ),
    (
        "connect",
        &[
            "std-blocking",
            "tokio-framed",
            "tether-sentinel",
            "tether-length",
            "tether-blocking",
            "tether-packet",
        ],
    ),
    (
        "pipelined",
        &["tokio-framed", "tether-packet", "tether-pipeline"],
    ),
    (
        "fanin",
        &[
            "tokio-framed",
            "tether-sentinel",
            "tether-length",
            "tether-packet",
        ],
    ),
    (
        "bulk",
        &[
            "std-blocking",
            "tokio-framed",
            "tether-sentinel",
            "tether-length",
            "tether-blocking",
            "tether-packet",
        ],
    ),
    ("push", &["tokio-framed", "tether-packet"]),
    ("tls", &["tokio-framed", "tether-length", "tether-packet"]),
    (
        "idle",
        &[
            "tokio-framed",
            "tether-sentinel",
            "tether-length",
            "tether-packet",
        ],
    ),
];

#[test]
fn every_workload_prints_its_lines_the_table_the_json_and_the_chart() {
    let dir = std::env::temp_dir().join(format!("tether-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let svg = dir.join("bench.svg");
    let (status, out, err) = bench(&[
        "--scale",
        "1000",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(
        status.success(),
        "exit {status}\nstdout:\n{out}\nstderr:\n{err}"
    );

    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("workload=")).collect();
    let mut seen = Vec::new();
    for line in &lines {
        let kv = pairs(line);
        assert_eq!(kv[0].0, "workload", "{line}");
        assert_eq!(kv[1].0, "impl", "{line}");
        assert_eq!(kv[2], ("procs", "1"), "{line}");
        for (k, v) in &kv[3..] {
            assert!(
                v.parse::<f64>().is_ok(),
                "{k}={v} is not a number in {line}"
            );
        }
        seen.push((kv[0].1, kv[1].1));
    }
    let expected: Vec<(&str, &str)> = EXPECTED
        .iter()
        .flat_map(|(w, impls)| impls.iter().map(move |i| (*w, *i)))
        .collect();
    assert_eq!(seen, expected, "stdout:\n{out}");
    assert!(
        out.contains("ratios tether/baseline"),
        "no ratio table:\n{out}"
    );
    assert!(out
        .lines()
        .any(|l| l.starts_with("rtt ") && l.contains('x')));

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["results"].as_array().unwrap().len(), expected.len());
    assert!(!doc["ratios"].as_array().unwrap().is_empty());
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(
        chart.starts_with("<svg"),
        "{}",
        &chart[..chart.len().min(80)]
    );
    assert!(chart.trim_end().ends_with("</svg>"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn workloads_are_chosen_by_name_or_id() {
    let (status, out, err) = bench(&["w1", "pipelined", "--scale", "1000", "--runs", "2"]);
    assert!(status.success(), "{err}");
    let workloads: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("workload="))
        .map(|l| pairs(l)[0].1)
        .collect();
    assert_eq!(workloads.iter().filter(|w| **w == "rtt").count(), 6);
    assert_eq!(workloads.iter().filter(|w| **w == "pipelined").count(), 3);
    assert_eq!(workloads.len(), 9, "{out}");
    // with --runs 2 each line says so
    assert!(out
        .lines()
        .filter(|l| l.starts_with("workload="))
        .all(|l| l.ends_with(" runs=2")));
}

#[test]
fn an_unknown_workload_is_a_usage_error() {
    let (status, out, err) = bench(&["warp-speed"]);
    assert_eq!(status.code(), Some(2), "stdout {out} stderr {err}");
    assert!(err.contains("warp-speed"), "{err}");
    assert!(err.contains("rtt"), "the error lists the workloads: {err}");
    assert!(!out.contains("workload="));
}

#[test]
fn an_unwritable_json_path_fails_before_measuring() {
    let (status, out, err) = bench(&["rtt", "--json", "/nonexistent-dir/x/bench.json"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write --json"), "{err}");
    assert!(!out.contains("workload="));
}
