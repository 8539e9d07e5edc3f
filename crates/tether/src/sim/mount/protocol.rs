//! The mount controller's messages: commands in, replies out.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Axis speed of every move: 10 degrees per second, so a 1° move takes
/// 100 ms.
pub const SPEED_DEG_PER_S: f64 = 10.0;

/// Command codes.
pub mod code {
    /// `TAKE_CONTROL`: the sender's source becomes the commander.
    pub const TAKE_CONTROL: u32 = 1;
    /// `ENABLE axis`.
    pub const ENABLE: u32 = 10;
    /// `MOVE axis position_deg`.
    pub const MOVE: u32 = 20;
    /// `STOP axis`.
    pub const STOP: u32 = 30;
    /// `STATUS`: Done carries the `az` and `el` positions.
    pub const STATUS: u32 = 40;
}

/// The reasons a command is refused ([`Reply::NoAck`]).
pub mod reason {
    /// The sender's source is not the commander.
    pub const NOT_IN_CONTROL: &str = "not in control";
    /// A MOVE was replaced by a newer MOVE or a STOP on its axis.
    pub const SUPERSEDED: &str = "superseded";
    /// The command code is unknown.
    pub const UNSUPPORTED: &str = "unsupported command";
    /// Missing or unreadable fields.
    pub const MALFORMED: &str = "malformed";
    /// MOVE on an axis that is not enabled.
    pub const AXIS_DISABLED: &str = "axis disabled";
}

/// One of the mount's two axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Axis {
    /// Azimuth, written `az`.
    Az,
    /// Elevation, written `el`.
    El,
}

impl Axis {
    /// Both axes, in the order STATUS reports them.
    pub const ALL: [Axis; 2] = [Axis::Az, Axis::El];

    /// `az` or `el`.
    pub fn name(self) -> &'static str {
        match self {
            Axis::Az => "az",
            Axis::El => "el",
        }
    }

    /// Parses `az` or `el`.
    pub fn parse(s: &str) -> Option<Axis> {
        match s {
            "az" => Some(Axis::Az),
            "el" => Some(Axis::El),
            _ => None,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Axis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A command as a client sends it: `seq`, `code`, `source`, `timestamp`,
/// then parameters, separated by `\n` (the pair's `\r\n` terminator ends
/// the message).
///
/// ```
/// use tether::sim::mount::{code, Axis, Command};
///
/// let cmd = Command::move_to(7, 1, Axis::El, 45.0).timestamp("t0");
/// assert_eq!(cmd.encode(), "7\n20\n1\nt0\nel\n45");
/// assert_eq!(cmd.code, code::MOVE);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// A positive integer chosen by the sender, echoed in the replies.
    pub seq: u64,
    /// What to do (see [`code`]).
    pub code: u32,
    /// Who sends it.
    pub source: i64,
    /// Any text; [`Command::new`] uses the Unix time in seconds.
    pub timestamp: String,
    /// The command's parameters.
    pub params: Vec<String>,
}

impl Command {
    /// A command with no parameters, stamped with the current time.
    pub fn new(seq: u64, code: u32, source: i64) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Command {
            seq,
            code,
            source,
            timestamp: format!("{now:.3}"),
            params: Vec::new(),
        }
    }

    /// Replaces the timestamp.
    pub fn timestamp(mut self, timestamp: impl Into<String>) -> Self {
        self.timestamp = timestamp.into();
        self
    }

    /// Adds a parameter.
    pub fn param(mut self, param: impl ToString) -> Self {
        self.params.push(param.to_string());
        self
    }

    /// `TAKE_CONTROL`.
    pub fn take_control(seq: u64, source: i64) -> Self {
        Self::new(seq, code::TAKE_CONTROL, source)
    }

    /// `ENABLE axis`.
    pub fn enable(seq: u64, source: i64, axis: Axis) -> Self {
        Self::new(seq, code::ENABLE, source).param(axis)
    }

    /// `MOVE axis position_deg`.
    pub fn move_to(seq: u64, source: i64, axis: Axis, position_deg: f64) -> Self {
        Self::new(seq, code::MOVE, source)
            .param(axis)
            .param(position_deg)
    }

    /// `STOP axis`.
    pub fn stop(seq: u64, source: i64, axis: Axis) -> Self {
        Self::new(seq, code::STOP, source).param(axis)
    }

    /// `STATUS`.
    pub fn status(seq: u64, source: i64) -> Self {
        Self::new(seq, code::STATUS, source)
    }

    /// The message text, without the terminator.
    pub fn encode(&self) -> String {
        let mut fields = vec![
            self.seq.to_string(),
            self.code.to_string(),
            self.source.to_string(),
            self.timestamp.clone(),
        ];
        fields.extend(self.params.iter().cloned());
        fields.join("\n")
    }
}

/// What the mount answers: first field the reply code.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `0`: accepted; Done (or NoAck `superseded`) follows within
    /// `timeout_ms`.
    Ack {
        /// The command's seq.
        seq: u64,
        /// How long until Done, in milliseconds.
        timeout_ms: u64,
    },
    /// `1`: refused, or a move replaced before it ended.
    NoAck {
        /// The command's seq (0 when it could not be read).
        seq: u64,
        /// Why (see [`reason`]).
        reason: String,
    },
    /// `2`: done; STATUS adds the `az` and `el` positions.
    Done {
        /// The command's seq.
        seq: u64,
        /// Extra fields.
        extra: Vec<String>,
    },
}

/// A reply that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad mount reply {reply:?}: {what}")]
pub struct ReplyError {
    /// The reply as received.
    pub reply: String,
    /// What is wrong with it.
    pub what: &'static str,
}

impl Reply {
    /// The seq the reply answers.
    pub fn seq(&self) -> u64 {
        match self {
            Reply::Ack { seq, .. } | Reply::NoAck { seq, .. } | Reply::Done { seq, .. } => *seq,
        }
    }

    /// `NoAck` with a reason.
    pub fn no_ack(seq: u64, reason: &str) -> Self {
        Reply::NoAck {
            seq,
            reason: reason.to_string(),
        }
    }

    /// The message text, without the terminator.
    ///
    /// ```
    /// use tether::sim::mount::Reply;
    /// assert_eq!(Reply::Ack { seq: 3, timeout_ms: 100 }.encode(), "0\n3\n100");
    /// assert_eq!(Reply::no_ack(0, "malformed").encode(), "1\n0\nmalformed");
    /// ```
    pub fn encode(&self) -> String {
        match self {
            Reply::Ack { seq, timeout_ms } => format!("0\n{seq}\n{timeout_ms}"),
            Reply::NoAck { seq, reason } => format!("1\n{seq}\n{reason}"),
            Reply::Done { seq, extra } => {
                let mut s = format!("2\n{seq}");
                for field in extra {
                    s.push('\n');
                    s.push_str(field);
                }
                s
            }
        }
    }

    /// Parses a reply's text.
    ///
    /// ```
    /// use tether::sim::mount::Reply;
    /// let r = Reply::parse("2\n9\n1.500\n45.000").unwrap();
    /// assert_eq!(r, Reply::Done { seq: 9, extra: vec!["1.500".into(), "45.000".into()] });
    /// assert!(Reply::parse("7\n1").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Reply, ReplyError> {
        let bad = |what| ReplyError {
            reply: text.to_string(),
            what,
        };
        let fields: Vec<&str> = text.split('\n').collect();
        let seq = fields
            .get(1)
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("no readable seq"))?;
        match (fields[0], fields.len()) {
            ("0", 3) => Ok(Reply::Ack {
                seq,
                timeout_ms: fields[2]
                    .parse()
                    .map_err(|_| bad("timeout_ms is not an integer"))?,
            }),
            ("1", 3) => Ok(Reply::no_ack(seq, fields[2])),
            ("2", _) => Ok(Reply::Done {
                seq,
                extra: fields[2..].iter().map(|s| s.to_string()).collect(),
            }),
            ("0" | "1", _) => Err(bad("wrong number of fields")),
            _ => Err(bad("unknown reply code")),
        }
    }
}
