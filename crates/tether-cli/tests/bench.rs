//! `tether bench` through the real binary, with counts divided so far
//! (the hidden `--scale`) that every workload takes a moment. No figure is
//! asserted: only the shape of the output and of the files. The
//! two-process mode runs a `--serve` child and a `--target` one.

mod common;

use std::io::Write;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{run, spawn_until, tether, KillOnDrop, Scratch};

/// How long one `tether bench` may take.
const LIMIT: Duration = Duration::from_secs(240);

/// Runs `tether bench ARGS…`, killing it (and failing) after `LIMIT`.
fn bench(args: &[&str]) -> (ExitStatus, String, String) {
    run(tether("bench").args(args), b"", LIMIT)
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
        "connect-per-request",
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
        "fan-in",
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
    (
        "tls",
        &[
            "tokio-framed",
            "tether-sentinel",
            "tether-length",
            "tether-packet",
        ],
    ),
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
    let scratch = Scratch::new("bench");
    let json = scratch.path("bench.json");
    let svg = scratch.path("bench.svg");
    let (status, out, err) = bench(&["--scale", "1000", "--json", &json, "--plot", &svg]);
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
    // with --runs 2 each line says so, and each ratio shows the spread of
    // the two rounds' own ratios: `1.02x (0.98-1.05)`
    assert!(out
        .lines()
        .filter(|l| l.starts_with("workload="))
        .all(|l| l.ends_with(" runs=2")));
    let rtt_row = out
        .lines()
        .find(|l| l.starts_with("rtt ") && l.contains("tether-length"))
        .unwrap_or_else(|| panic!("no rtt row:\n{out}"));
    // rtt tether-length p50_us 1.02x (0.98-1.05) 1.01x (0.97-1.03)
    let cells: Vec<&str> = rtt_row.split_whitespace().skip(3).collect();
    assert_eq!(cells.len(), 4, "{rtt_row}");
    for pair in cells.chunks(2) {
        let ratio = pair[0]
            .strip_suffix('x')
            .and_then(|v| v.parse::<f64>().ok());
        let spread = pair[1]
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .and_then(|v| v.split_once('-'))
            .and_then(|(low, high)| Some((low.parse::<f64>().ok()?, high.parse::<f64>().ok()?)));
        assert!(
            ratio.is_some() && spread.is_some(),
            "not a ratio and its spread: {pair:?} in {rtt_row}"
        );
    }
}

#[test]
fn connect_quotes_the_rtt_of_its_own_round_only_when_rtt_ran() {
    let connect_lines = |args: &[&str]| {
        let (status, out, err) = bench(args);
        assert!(status.success(), "{err}");
        out.lines()
            .filter(|l| l.starts_with("workload=connect-per-request "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let with_rtt = connect_lines(&["rtt", "connect", "--scale", "1000", "--runs", "2"]);
    assert_eq!(with_rtt.len(), 6, "{with_rtt:?}");
    assert!(
        with_rtt.iter().all(|l| l.contains(" rtt_over_connect=")),
        "{with_rtt:?}"
    );
    let alone = connect_lines(&["connect", "--scale", "1000"]);
    assert_eq!(alone.len(), 6, "{alone:?}");
    assert!(
        alone.iter().all(|l| !l.contains("rtt_over_connect")),
        "{alone:?}"
    );
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

#[test]
fn a_failed_run_leaves_an_earlier_json_file_as_it_was() {
    let scratch = Scratch::new("bench-keep");
    let json = scratch.path("keep.json");
    std::fs::write(&json, "{\"earlier\": true}\n").unwrap();
    // port 1: no bench server there, so the run fails before measuring
    let (status, _, err) = bench(&["--target", "127.0.0.1:1", "rtt", "--json", &json]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(
        std::fs::read_to_string(&json).unwrap(),
        "{\"earlier\": true}\n"
    );
    let left: Vec<_> = std::fs::read_dir(scratch.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["keep.json"], "nothing else is left behind");
    let (status, _, err) = bench(&["rtt", "--json", &json, "--plot", &json]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("the same file"), "{err}");
    let same = format!("{}/./keep.json", scratch.path(""));
    let (status, _, err) = bench(&["rtt", "--json", &json, "--plot", &same]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("the same file"), "{err}");
    // a directory is not a file to write
    let (status, _, err) = bench(&["rtt", "--json", &scratch.path("")]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("not a file name"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&json).unwrap(),
        "{\"earlier\": true}\n"
    );
}

// ---- two processes: `--serve` and `--target` ----

/// How long a bench server may take to start, or to stop once signalled.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// A running `tether bench --serve 127.0.0.1:0`: the guard, the lines it
/// printed, and where its listing is (the `--target`).
fn serve() -> (KillOnDrop, Vec<String>, String) {
    spawn_until(
        tether("bench")
            .args(["--serve", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit()),
        "serve listing=",
        STOP_LIMIT,
    )
}

#[test]
fn a_served_bench_measures_in_two_processes_and_stops_on_sigterm() {
    let (server, served, target) = serve();
    assert_eq!(served.len(), 13, "{served:?}");
    for line in &served {
        let kv = pairs(line.strip_prefix("serve ").unwrap());
        let keys: Vec<&str> = kv.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["impl", "workload-set", "addr"], "{line}");
    }
    assert!(served
        .iter()
        .any(|l| l.contains("impl=tether-packet workload-set=push")));

    let workloads = ["rtt", "pipelined", "fan-in", "bulk", "push", "tls", "idle"];
    let mut args = vec!["--target", &target, "--quick", "--scale", "100"];
    args.extend(workloads);
    let (status, out, err) = bench(&args);
    assert!(
        status.success(),
        "exit {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    let mut seen = Vec::new();
    for line in out.lines().filter(|l| l.starts_with("workload=")) {
        let kv = pairs(line);
        // idle measures in local processes of its own, and says so
        let procs = if kv[0].1 == "idle" { "1" } else { "2" };
        assert_eq!(kv[2], ("procs", procs), "{line}");
        for (k, v) in &kv[3..] {
            assert!(v.parse::<f64>().is_ok(), "{k}={v} in {line}");
        }
        seen.push((kv[0].1, kv[1].1));
    }
    let expected: Vec<(&str, &str)> = EXPECTED
        .iter()
        .filter(|(w, _)| workloads.contains(w))
        .flat_map(|(w, impls)| impls.iter().map(move |i| (*w, *i)))
        .collect();
    assert_eq!(seen, expected, "stdout:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("note: workload=idle") && l.contains("procs=1")),
        "{out}"
    );
    assert!(out.contains("ratios tether/baseline"), "{out}");
    for w in ["rtt ", "pipelined ", "push ", "tls "] {
        assert!(
            out.lines().any(|l| l.starts_with(w) && l.contains('x')),
            "no {w}ratio:\n{out}"
        );
    }

    assert!(server.signal_and_wait("TERM").success());
}

#[test]
fn a_bench_server_stops_cleanly_on_sigint() {
    let (server, _, _) = serve();
    assert!(server.signal_and_wait("INT").success());
}

#[test]
fn a_busy_listing_port_fails_before_any_server_starts() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = busy.local_addr().unwrap().to_string();
    let (status, out, err) = run(tether("bench").args(["--serve", &at]), b"", STOP_LIMIT);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("cannot serve the listing"), "{err}");
    assert!(
        !out.contains("serve impl="),
        "no server said where it is: {out}"
    );
}

#[test]
fn serve_and_target_together_are_a_usage_error() {
    let (status, out, err) = bench(&["--serve", "127.0.0.1:0", "--target", "127.0.0.1:7000"]);
    assert_eq!(status.code(), Some(2), "stdout {out} stderr {err}");
    assert!(err.contains("--serve") && err.contains("--target"), "{err}");
}

#[test]
fn an_unreachable_target_is_a_clear_error() {
    // port 1: privileged, so no test running beside this one can take it
    // (a port found free a moment ago could be a `--serve 127.0.0.1:0`'s)
    let target = "127.0.0.1:1".to_string();
    let (status, out, err) = bench(&["--target", &target, "rtt", "--scale", "1000"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("cannot reach a bench server"), "{err}");
    assert!(!out.contains("workload="), "{out}");
}

#[test]
fn a_target_that_is_not_a_bench_server_is_a_clear_error() {
    // one that answers something else
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = http.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = http.accept() {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let (status, _, err) = bench(&["--target", &target, "rtt", "--scale", "1000"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("not a tether bench server"), "{err}");
    assert!(err.contains("HTTP/1.1 400"), "{err}");

    // one that accepts and says nothing: the wait for the listing is bounded
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = silent.local_addr().unwrap().to_string();
    let start = Instant::now();
    let (status, _, err) = bench(&["--target", &target, "rtt", "--scale", "1000"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("sent nothing"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30));
    drop(silent);

    // one that trickles the greeting a byte at a time: the 5 s are for the
    // whole listing, not for each read
    let slow = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = slow.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = slow.accept() {
            for b in b"tether-bench-serve 1\nserve " {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(400));
            }
        }
    });
    let start = Instant::now();
    let (status, _, err) = bench(&["--target", &target, "rtt", "--scale", "1000"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("not a tether bench server"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn serving_on_an_unspecified_address_is_refused() {
    let (status, out, err) = bench(&["--serve", "0.0.0.0:0"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs the address clients will reach"),
        "{err}"
    );
    assert!(!out.contains("serve impl="), "{out}");
}
