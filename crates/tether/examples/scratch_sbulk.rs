// SCRATCH: delete before committing.
use bytes::{Bytes, BytesMut};
use std::time::{Duration, Instant};
use tether::framing::{LengthCodec, SentinelCodec};
use tether::session::{Client, ClientOptions, ConnectionInfo, Handler, HandlerError, Server};

struct Echo;
impl Handler<BytesMut> for Echo {
    type Response = BytesMut;
    fn handle(
        &self,
        r: BytesMut,
        _: &ConnectionInfo,
    ) -> impl std::future::Future<Output = Result<Option<BytesMut>, HandlerError>> + Send {
        std::future::ready(Ok(Some(r)))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args[1].clone();
    let n: usize = args[2].parse().unwrap();
    let size: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(1 << 20);
    let (tx, rx) = std::sync::mpsc::channel();
    let m2 = mode.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ep = "tcp://127.0.0.1:0".parse().unwrap();
            if m2 == "s" {
                let s = Server::bind(&ep, SentinelCodec::lines(), Echo)
                    .await
                    .unwrap()
                    .spawn();
                tx.send(s.local_endpoint().clone()).unwrap();
                std::future::pending::<()>().await;
            } else {
                let s = Server::bind(&ep, LengthCodec::new(), Echo)
                    .await
                    .unwrap()
                    .spawn();
                tx.send(s.local_endpoint().clone()).unwrap();
                std::future::pending::<()>().await;
            }
        });
    });
    let ep = rx.recv().unwrap();
    let p: Bytes = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let opts = ClientOptions::default().connect_timeout(Duration::from_secs(5));
        let start;
        if mode == "s" {
            let mut s = Client::new(ep, SentinelCodec::lines(), opts)
                .connect()
                .await
                .unwrap();
            start = Instant::now();
            for _ in 0..n {
                assert_eq!(s.request(p.clone()).await.unwrap().len(), size);
            }
        } else {
            let mut s = Client::new(ep, LengthCodec::new(), opts)
                .connect()
                .await
                .unwrap();
            start = Instant::now();
            for _ in 0..n {
                assert_eq!(s.request(p.clone()).await.unwrap().len(), size);
            }
        }
        let e = start.elapsed();
        println!("{mode} {n}: {:.1} us/rt", e.as_secs_f64() * 1e6 / n as f64);
    });
}
