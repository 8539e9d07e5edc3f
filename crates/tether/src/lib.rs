//! tether: long-lived conversations between programs and the devices or
//! services they talk to.
//!
//! # Design
//!
//! tether is a stack of small layers; each is usable on its own and knows
//! only the layer below it.
//!
//! ```text
//!   your program ──► packet (PacketConnection, Service): either end asks, many
//!                      │  requests in flight, tagged; wire-compatible with cs.packetstream
//!                    session (Client / Session / Server)  │ pair (Pair, OneClientServer):
//!                      │  requests and replies,           │ two one-way sockets as one
//!                      │  deadlines, concurrency          │ link, retrying connect
//!                    framing (SentinelCodec, FixedLengthCodec, LengthCodec, MapCodec)
//!                      │  sans-IO: bytes ⇄ frames, with a maximum length
//!                    transport (ByteStream, Listener, Endpoint)
//!                         TCP · TLS 1.3 · Unix · Telnet · stdio · child process · memory
//! ```
//!
//! [`sim`] holds device simulators (a line-protocol device, a telescope
//! mount controller) used by the `tether` command, the demo and the tests.
//!
//! Principles:
//!
//! * **Protocol cores are sans-IO.** Codecs take bytes and return frames;
//!   they never touch a socket or a clock. The async and the blocking drivers
//!   are thin loops around the same codecs, so both behave alike.
//! * **No copy of a bulk payload.** A session's codec is a tokio-util
//!   `Encoder` that is also a [`framing::FrameEncoder`]: it may leave a long
//!   payload out of the write buffer, and the driver writes it from the
//!   caller's own bytes beside the frame's prefix or sentinel, in vectored
//!   writes where the stream takes them (TCP, Unix); the packet layer does
//!   the same with its payloads.
//! * **Everything is bounded.** Every decoder has a maximum frame length
//!   ([`framing::DEFAULT_MAX_FRAME_LENGTH`]); servers cap their connections.
//! * **Errors are values.** One error enum per layer, saying what a user
//!   needs (the endpoint, the limit, the byte offset) and whether the
//!   connection survives. No input from the network can cause a panic.
//! * **Every wait ends.** Connects and requests have deadlines; a request
//!   that times out closes its session rather than risk misreading the late
//!   reply as the next one.
//!
//! What tether does not do: it does not interpret your device's commands
//! (that is your codec's and handler's job), and it does not retry a
//! request on your behalf — a device command may not be safe to repeat.
//!
//! # A session in a few lines
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tether::framing::{text, SentinelCodec};
//! use tether::session::{Client, ClientOptions};
//! use tether::sim::lines::LinesDevice;
//!
//! // A simulated line-protocol device on loopback.
//! let device = LinesDevice::new().bind(&"127.0.0.1:0".parse()?, b"\r\n", 4096).await?.spawn();
//!
//! let client = Client::new(device.local_endpoint().clone(), text(SentinelCodec::crlf()), ClientOptions::default());
//! let mut session = client.connect().await?;
//! assert_eq!(session.request("REV tether".to_string()).await?, "rehtet");
//! assert_eq!(session.request("SET volts 5".to_string()).await?, "OK");
//! assert_eq!(session.request("GET volts".to_string()).await?, "5");
//! session.close().await?;
//! # device.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```
//!
//! Synchronous programs use [`blocking`], which mirrors the async API.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blocking;
mod buffers;
pub mod framing;
pub mod packet;
pub mod pair;
pub mod session;
pub mod sim;
pub mod transport;
