//! tether: long-lived conversations between programs and the devices or
//! services they talk to.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blocking;
pub mod framing;
pub mod session;
pub mod sim;
pub mod transport;
