//! The packet protocol on the command line: `tether serve packet`,
//! `tether call --packet` and the packet section of `tether demo`.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether::packet::{
    handler_fn, EchoService, IncomingRequest, NoHandler, PacketConfig, PacketConnection, Response,
};
use tether::transport::{ConnectOptions, Listener};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::call::CallArgs;
use crate::CliResult;

/// `tether serve packet`: the contract handler ([`EchoService`]) on every
/// connection, all served at once, until SIGINT/SIGTERM (on `stdio:`, or
/// until its one connection ends); then every connection closes in order.
pub async fn serve(listener: Listener) -> CliResult {
    let stop = crate::interrupted()?;
    crate::serve::announce(&listener)?;
    tether::packet::serve(listener, EchoService, PacketConfig::default(), stop).await;
    Ok(())
}

/// `tether call ENDPOINT --packet --rq-type N [--flags F]`: one connection,
/// one request per input line (or argument after `--`), one output line
/// each: `ok flags=<F> <payload>` or `fail flags=<F> <payload>`.
pub async fn call(args: CallArgs, timeout: Duration) -> CliResult {
    let rq_type = args.rq_type.ok_or("--packet needs --rq-type N")?;
    let mut options = ConnectOptions::new(timeout);
    if let Some(tls) = args.tls.config(&args.endpoint)? {
        options = options.tls(tls);
    }
    let conn = PacketConnection::connect_with(
        &args.endpoint,
        &options,
        NoHandler,
        PacketConfig::default(),
    )
    .await?;
    let one = |payload: Bytes| {
        let conn = &conn;
        async move {
            let r = tokio::time::timeout(timeout, conn.submit(rq_type, args.flags, payload))
                .await
                .map_err(|_| format!("no reply within {timeout:?}"))??;
            let mut out = std::io::stdout().lock();
            let word = if r.ok { "ok" } else { "fail" };
            write!(out, "{word} flags={} ", r.flags)?;
            out.write_all(&r.payload)?;
            out.write_all(b"\n")?;
            out.flush()?;
            CliResult::Ok(())
        }
    };
    if !args.requests.is_empty() {
        for request in &args.requests {
            one(Bytes::from(request.clone())).await?;
        }
    } else {
        let mut lines = BufReader::new(tokio::io::stdin()).split(b'\n');
        while let Some(mut line) = lines.next_segment().await? {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            one(Bytes::from(line)).await?;
        }
    }
    let _ = tokio::time::timeout(timeout, conn.close()).await;
    Ok(())
}

/// The packet section of `tether demo`: out-of-order completion, a
/// request sent by the server to its client, and a last request sent with
/// the close, on one connection.
pub async fn demo_section() -> CliResult {
    let mut listener = Listener::bind(&"tcp://127.0.0.1:0".parse()?).await?;
    let endpoint = listener.local_endpoint();
    println!("packet server (cs.packetstream wire format) listening on {endpoint}");
    let accept = tokio::spawn(async move {
        let stream = listener.accept().await?;
        std::io::Result::Ok(PacketConnection::spawn(
            stream,
            EchoService,
            PacketConfig::default(),
        ))
    });
    let client = PacketConnection::connect(
        &endpoint,
        Duration::from_secs(5),
        handler_fn(|rq: IncomingRequest| async move {
            let mut reply = b"client got: ".to_vec();
            reply.extend_from_slice(&rq.payload);
            Response::ok(rq.flags, reply)
        }),
        PacketConfig::default(),
    )
    .await?;
    let server = accept.await??;

    // Two sleeps in flight at once: the short one is answered first.
    let t0 = Instant::now();
    let order = std::sync::Mutex::new(Vec::new());
    let sleep = |ms: &'static str| {
        let (client, order) = (&client, &order);
        async move {
            let r = client.submit(4, 0, ms).await;
            order.lock().unwrap().push((ms, t0.elapsed()));
            r
        }
    };
    let (slow, fast) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(sleep("300"), sleep("20"))
    })
    .await?;
    let (slow, fast) = (slow?, fast?);
    let order = order.into_inner().unwrap();
    let shown: Vec<String> = order
        .iter()
        .map(|(ms, at)| format!("SLEEP {ms} done after {at:.0?}"))
        .collect();
    println!(
        "  out of order: sent SLEEP 300 then SLEEP 20 on one connection: {}",
        shown.join(", then ")
    );
    if !(slow.ok && fast.ok && order.first().map(|o| o.0) == Some("20")) {
        return Err(format!("the short sleep should complete first: {order:?}").into());
    }

    // The contract, and a request the other way.
    let rev = client.submit(1, 0, "stressed").await?;
    let flags = client.submit(2, 41, "").await?;
    let fail = client.submit(3, 0, "").await?;
    println!(
        "  client → server: REV stressed → {} | flags 41 → {} | rq_type 3 → fail \"{}\"",
        String::from_utf8_lossy(&rev.payload),
        flags.flags,
        String::from_utf8_lossy(&fail.payload)
    );
    let back = server.submit(0, 7, "are you there?").await?;
    println!(
        "  server → client on the same connection: \"{}\" (flags {})",
        String::from_utf8_lossy(&back.payload),
        back.flags
    );
    if !(rev.payload == "desserts" && flags.flags == 42 && !fail.ok && back.ok) {
        return Err("the packet contract was not followed".into());
    }
    // The last request and the orderly close in one write.
    let last = client.submit_and_close(1, 0, "won").await?;
    server.closed().await?;
    let s = client.stats();
    println!(
        "  last request with the close (request, ERQ, EOF in one write): REV won → {}; \
         closed in order, {} requests sent, {} received by the client",
        String::from_utf8_lossy(&last.payload),
        s.requests_sent,
        s.requests_received
    );
    if last.payload != "now" {
        return Err("the last request was not answered before the close".into());
    }
    Ok(())
}
