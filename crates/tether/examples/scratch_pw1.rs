// scratch: packet W1 instruction count
use std::time::Duration;
use tether::packet::{EchoService, NoHandler, PacketConfig, PacketConnection};
use tether::transport::{Endpoint, Listener};
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
fn main() {
    let n: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        rt().block_on(async move {
            let l = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            tx.send(l.local_endpoint()).unwrap();
            tether::packet::serve(
                l,
                EchoService,
                PacketConfig::default(),
                std::future::pending::<()>(),
            )
            .await;
        })
    });
    let ep: Endpoint = rx.recv().unwrap();
    let r = rt();
    let h = r.spawn(async move {
        let c = PacketConnection::connect(
            &ep,
            Duration::from_secs(5),
            NoHandler,
            PacketConfig::default(),
        )
        .await
        .unwrap();
        let p = bytes::Bytes::from(vec![b'x'; 64]);
        for _ in 0..n {
            c.submit(0, 0, p.clone()).await.unwrap();
        }
        c.close().await.unwrap();
    });
    r.block_on(h).unwrap();
}
