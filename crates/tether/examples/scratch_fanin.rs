// scratch: W4 fan-in instruction counts (not committed)
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tether::framing::LengthCodec;
use tether::session::{Client, ClientOptions, ConnectionInfo, HandlerError, Server};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args[1].parse().unwrap();
    let which = args[2].clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let w2 = which.clone();
    std::thread::spawn(move || {
        rt().block_on(async move {
            if w2 == "framed" {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(format!("tcp://{}", l.local_addr().unwrap()))
                    .unwrap();
                loop {
                    let (s, _) = l.accept().await.unwrap();
                    s.set_nodelay(true).unwrap();
                    tokio::spawn(async move {
                        let mut f = Framed::new(s, LengthDelimitedCodec::new());
                        while let Some(Ok(m)) = f.next().await {
                            f.send(m.freeze()).await.unwrap();
                        }
                    });
                }
            } else {
                let server = Server::bind(
                    &"tcp://127.0.0.1:0".parse().unwrap(),
                    LengthCodec::new(),
                    |r: BytesMut, _: &ConnectionInfo| async move { Ok::<_, HandlerError>(Some(r)) },
                )
                .await
                .unwrap();
                tx.send(server.local_endpoint().to_string()).unwrap();
                let _s = server.spawn();
                std::future::pending::<()>().await;
            }
        })
    });
    let ep = rx.recv().unwrap();
    let r = rt();
    let h = r.spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let ep = ep.clone();
            let framed = which == "framed";
            set.spawn(async move {
                let p = Bytes::from(vec![b'x'; 64]);
                if framed {
                    let s = tokio::net::TcpStream::connect(ep.trim_start_matches("tcp://"))
                        .await
                        .unwrap();
                    s.set_nodelay(true).unwrap();
                    let mut f = Framed::new(s, LengthDelimitedCodec::new());
                    for _ in 0..n / 64 {
                        f.send(p.clone()).await.unwrap();
                        f.next().await.unwrap().unwrap();
                    }
                } else {
                    let c = Client::new(
                        ep.parse().unwrap(),
                        LengthCodec::new(),
                        ClientOptions::default(),
                    );
                    let mut s = c.connect().await.unwrap();
                    for _ in 0..n / 64 {
                        s.request(p.clone()).await.unwrap();
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
    });
    r.block_on(h).unwrap();
}
