// SCRATCH: delete before commit
use bytes::{Bytes, BytesMut};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use tether::framing::{FramingError, LengthCodec};
use tether::session::{Client, ClientOptions, ConnectionInfo, Handler, HandlerError, Server};
use tether::transport::Endpoint;

struct Echo;
impl Handler<BytesMut> for Echo {
    type Response = BytesMut;
    fn handle(
        &self,
        request: BytesMut,
        _c: &ConnectionInfo,
    ) -> impl std::future::Future<Output = Result<Option<BytesMut>, HandlerError>> + Send {
        std::future::ready(Ok(Some(request)))
    }
}
const SIZE: usize = 1 << 20;
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
fn main() {
    let mode = std::env::args().nth(1).unwrap();
    let n: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(512);
    let p = Bytes::from(vec![7u8; SIZE]);
    let t = match mode.as_str() {
        "length" | "sentinel" => {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                rt().block_on(async move {
                    let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
                    let s = Server::bind(&ep, LengthCodec::new(), Echo).await.unwrap();
                    tx.send(s.local_endpoint()).unwrap();
                    s.run(std::future::pending(), Duration::from_secs(1)).await;
                })
            });
            let ep = rx.recv().unwrap();
            {
                let r = rt();
                r.block_on(r.spawn(async move {
                    let mut s = Client::new(ep, LengthCodec::new(), ClientOptions::default())
                        .connect()
                        .await
                        .unwrap();
                    let t = Instant::now();
                    for _ in 0..n {
                        let r: BytesMut = s.request(p.clone()).await.unwrap();
                        assert_eq!(r.len(), SIZE);
                    }
                    t.elapsed()
                }))
                .unwrap()
            }
        }
        "packet" => {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                rt().block_on(async move {
                    let l =
                        tether::transport::Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap())
                            .await
                            .unwrap();
                    tx.send(l.local_endpoint()).unwrap();
                    tether::packet::serve(
                        l,
                        tether::packet::EchoService,
                        tether::packet::PacketConfig::default(),
                        std::future::pending::<()>(),
                    )
                    .await;
                })
            });
            let ep = rx.recv().unwrap();
            {
                let r = rt();
                r.block_on(r.spawn(async move {
                    let c = tether::packet::PacketConnection::connect(
                        &ep,
                        Duration::from_secs(5),
                        tether::packet::NoHandler,
                        tether::packet::PacketConfig::default(),
                    )
                    .await
                    .unwrap();
                    let t = Instant::now();
                    for _ in 0..n {
                        let r = c.submit(0, 0, p.clone()).await.unwrap();
                        assert_eq!(r.payload.len(), SIZE);
                    }
                    t.elapsed()
                }))
                .unwrap()
            }
        }
        "blocking" => {
            let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
            let server = tether::blocking::Server::bind_with(
                &ep,
                LengthCodec::new(),
                |r: BytesMut, _: &ConnectionInfo| Ok::<_, HandlerError>(Some(r)),
                Default::default(),
            )
            .unwrap();
            let mut s = tether::blocking::Client::new(
                server.local_endpoint(),
                LengthCodec::new(),
                ClientOptions::default(),
            )
            .connect()
            .unwrap();
            let t = Instant::now();
            for _ in 0..n {
                let r = s.request(&p[..]).unwrap();
                assert_eq!(r.len(), SIZE);
            }
            t.elapsed()
        }
        "std" => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap();
            std::thread::spawn(move || {
                let (mut c, _) = l.accept().unwrap();
                c.set_nodelay(true).unwrap();
                let mut fr = FR::default();
                while let Some(f) = fr.next(&mut c).unwrap() {
                    c.write_all(f).unwrap();
                }
            });
            let mut c = std::net::TcpStream::connect(a).unwrap();
            c.set_nodelay(true).unwrap();
            let mut fr = FR::default();
            let t = Instant::now();
            let mut f = (SIZE as u32).to_be_bytes().to_vec();
            f.extend_from_slice(&p);
            for _ in 0..n {
                c.write_all(&f).unwrap();
                assert_eq!(fr.next(&mut c).unwrap().unwrap().len(), SIZE + 4);
            }
            t.elapsed()
        }
        _ => panic!(),
    };
    let _ = FramingError::TruncatedFrame { buffered: 0 };
    println!("{mode}: {:.1} MiB/s", n as f64 / t.as_secs_f64());
}

#[derive(Default)]
struct FR {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}
impl FR {
    fn next(&mut self, s: &mut impl Read) -> std::io::Result<Option<&[u8]>> {
        while self.end - self.start < 4 {
            if !self.fill(s, 4)? {
                return Ok(None);
            }
        }
        let n =
            u32::from_be_bytes(self.buf[self.start..self.start + 4].try_into().unwrap()) as usize;
        while self.end - self.start < 4 + n {
            if !self.fill(s, 4 + n)? {
                panic!()
            }
        }
        let frame = self.start..self.start + 4 + n;
        self.start = frame.end;
        Ok(Some(&self.buf[frame]))
    }
    fn fill(&mut self, s: &mut impl Read, want: usize) -> std::io::Result<bool> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if self.buf.len() < self.start + want.max(8192) {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.buf.len() < want.max(8192) {
                self.buf.resize(want.max(8192), 0);
            }
        }
        let n = s.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n > 0)
    }
}
