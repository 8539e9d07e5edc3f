//! The simulated mount as a sans-IO state machine: commands and the time
//! in, replies out.

use std::time::Duration;

use tokio::time::Instant;

use super::protocol::{code, reason, Axis, Reply, SPEED_DEG_PER_S};

/// The longest move the mount takes on: a day. (A real one takes minutes;
/// a MOVE to 1e15° is malformed, not a timer near the clock's end.)
const LONGEST_MOVE: Duration = Duration::from_secs(24 * 3600);

/// The mount's state: who commands it, and each axis.
///
/// [`handle`](Self::handle) takes one command frame and the current time and
/// returns the replies to send at once; [`poll`](Self::poll) returns the
/// Done replies of moves that have ended by then;
/// [`next_deadline`](Self::next_deadline) says when to poll next. Nothing
/// here reads a clock or a socket, so tests drive it with made-up times.
///
/// ```
/// use std::time::Duration;
/// use tether::sim::mount::{Axis, Command, MountCore, Reply};
/// use tokio::time::Instant;
///
/// let mut mount = MountCore::new();
/// let t0 = Instant::now();
/// mount.handle(Command::take_control(1, 5).encode().as_bytes(), t0);
/// mount.handle(Command::enable(2, 5, Axis::Az).encode().as_bytes(), t0);
/// let replies = mount.handle(Command::move_to(3, 5, Axis::Az, 1.0).encode().as_bytes(), t0);
/// assert_eq!(replies, [Reply::Ack { seq: 3, timeout_ms: 100 }]);
/// assert_eq!(mount.next_deadline(), Some(t0 + Duration::from_millis(100)));
/// let done = mount.poll(t0 + Duration::from_millis(100));
/// assert_eq!(done, [Reply::Done { seq: 3, extra: vec![] }]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct MountCore {
    commander: Option<i64>,
    axes: [AxisState; 2],
}

#[derive(Debug, Clone, Default)]
struct AxisState {
    enabled: bool,
    /// Where the axis is, or where the current move started.
    position: f64,
    motion: Option<Motion>,
}

#[derive(Debug, Clone)]
struct Motion {
    seq: u64,
    target: f64,
    start: Instant,
    end: Instant,
    /// False once the peer that asked for it is gone: the move goes on,
    /// but nobody is owed a reply.
    report: bool,
}

impl AxisState {
    fn position_at(&self, now: Instant) -> f64 {
        match &self.motion {
            None => self.position,
            Some(m) if now >= m.end => m.target,
            Some(m) => {
                let total = (m.end - m.start).as_secs_f64();
                let done = (now.saturating_duration_since(m.start)).as_secs_f64();
                self.position + (m.target - self.position) * (done / total)
            }
        }
    }

    /// Stops the axis where it is now; the Done or NoAck owed for the move
    /// in progress, if any, is `superseded`.
    fn halt(&mut self, now: Instant) -> Option<Reply> {
        let position = self.position_at(now);
        let motion = self.motion.take()?;
        self.position = position;
        motion
            .report
            .then(|| Reply::no_ack(motion.seq, reason::SUPERSEDED))
    }
}

/// A command's header, read field by field.
struct Header<'a> {
    seq: u64,
    code: u32,
    source: i64,
    params: Vec<&'a str>,
}

/// Reads the header; `Err(seq)` is the seq to put in NoAck `malformed`
/// (0 when even the seq is unreadable).
fn parse(frame: &[u8]) -> Result<Header<'_>, u64> {
    let fields: Vec<&[u8]> = frame.split(|&b| b == b'\n').collect();
    let seq = std::str::from_utf8(fields[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&seq| seq > 0)
        .ok_or(0u64)?;
    if fields.len() < 4 {
        return Err(seq);
    }
    fn text(b: &[u8], seq: u64) -> Result<&str, u64> {
        std::str::from_utf8(b).map_err(|_| seq)
    }
    let code = text(fields[1], seq)?.parse::<u32>().map_err(|_| seq)?;
    let source = text(fields[2], seq)?.parse::<i64>().map_err(|_| seq)?;
    text(fields[3], seq)?; // the timestamp: any text
    let params = fields[4..]
        .iter()
        .map(|f| text(f, seq))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Header {
        seq,
        code,
        source,
        params,
    })
}

/// What a well-formed command asks.
enum Action {
    TakeControl,
    Enable(Axis),
    Move(Axis, f64),
    Stop(Axis),
    Status,
}

impl MountCore {
    /// A mount at az 0°, el 0°, both axes disabled, nobody in control.
    pub fn new() -> Self {
        Self::default()
    }

    /// The source in control, if any.
    pub fn commander(&self) -> Option<i64> {
        self.commander
    }

    /// Is `axis` enabled?
    pub fn enabled(&self, axis: Axis) -> bool {
        self.axes[axis.index()].enabled
    }

    /// Where `axis` is at `now`, in degrees.
    pub fn position(&self, axis: Axis, now: Instant) -> f64 {
        self.axes[axis.index()].position_at(now)
    }

    /// Handles one command frame (the message without its terminator).
    pub fn handle(&mut self, frame: &[u8], now: Instant) -> Vec<Reply> {
        let header = match parse(frame) {
            Ok(header) => header,
            Err(seq) => return vec![Reply::no_ack(seq, reason::MALFORMED)],
        };
        let seq = header.seq;
        let action = match Self::action(&header) {
            Ok(action) => action,
            Err(why) => return vec![Reply::no_ack(seq, why)],
        };
        if !matches!(action, Action::TakeControl) && self.commander != Some(header.source) {
            return vec![Reply::no_ack(seq, reason::NOT_IN_CONTROL)];
        }
        let ack_done = |extra| {
            vec![
                Reply::Ack { seq, timeout_ms: 0 },
                Reply::Done { seq, extra },
            ]
        };
        match action {
            Action::TakeControl => {
                self.commander = Some(header.source);
                ack_done(Vec::new())
            }
            Action::Enable(axis) => {
                self.axes[axis.index()].enabled = true;
                ack_done(Vec::new())
            }
            Action::Stop(axis) => {
                let mut replies: Vec<Reply> =
                    self.axes[axis.index()].halt(now).into_iter().collect();
                replies.extend(ack_done(Vec::new()));
                replies
            }
            Action::Status => ack_done(
                Axis::ALL
                    .iter()
                    .map(|&axis| format!("{:.3}", self.position(axis, now)))
                    .collect(),
            ),
            Action::Move(axis, target) => self.start_move(seq, axis, target, now),
        }
    }

    /// Answers a message that could not even be framed (too long, …).
    pub fn unreadable(&self) -> Reply {
        Reply::no_ack(0, reason::MALFORMED)
    }

    fn action(header: &Header<'_>) -> Result<Action, &'static str> {
        let axis = |s: &str| Axis::parse(s).ok_or(reason::MALFORMED);
        match (header.code, header.params.as_slice()) {
            (code::TAKE_CONTROL, []) => Ok(Action::TakeControl),
            (code::ENABLE, [a]) => Ok(Action::Enable(axis(a)?)),
            (code::MOVE, [a, position]) => {
                let position = position
                    .parse::<f64>()
                    .ok()
                    .filter(|p| p.is_finite())
                    .ok_or(reason::MALFORMED)?;
                Ok(Action::Move(axis(a)?, position))
            }
            (code::STOP, [a]) => Ok(Action::Stop(axis(a)?)),
            (code::STATUS, []) => Ok(Action::Status),
            (code::TAKE_CONTROL | code::ENABLE | code::MOVE | code::STOP | code::STATUS, _) => {
                Err(reason::MALFORMED)
            }
            _ => Err(reason::UNSUPPORTED),
        }
    }

    fn start_move(&mut self, seq: u64, axis: Axis, target: f64, now: Instant) -> Vec<Reply> {
        let state = &mut self.axes[axis.index()];
        if !state.enabled {
            return vec![Reply::no_ack(seq, reason::AXIS_DISABLED)];
        }
        let from = state.position_at(now);
        let millis = ((target - from).abs() / SPEED_DEG_PER_S * 1000.0).round();
        // Absurd distances give a duration the clock cannot represent, or
        // one so near its end that a timer for it would overflow: a move
        // takes at most a day.
        let Some(end) = Duration::try_from_secs_f64(millis / 1000.0)
            .ok()
            .filter(|d| *d <= LONGEST_MOVE)
            .and_then(|d| now.checked_add(d))
        else {
            return vec![Reply::no_ack(seq, reason::MALFORMED)];
        };
        let mut replies: Vec<Reply> = state.halt(now).into_iter().collect();
        // `millis` is finite and non-negative here; `as` saturates.
        replies.push(Reply::Ack {
            seq,
            timeout_ms: millis as u64,
        });
        state.position = from;
        if end <= now {
            state.position = target;
            replies.push(Reply::Done {
                seq,
                extra: Vec::new(),
            });
        } else {
            state.motion = Some(Motion {
                seq,
                target,
                start: now,
                end,
                report: true,
            });
        }
        replies
    }

    /// The Done replies of moves that have ended by `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<Reply> {
        let mut replies = Vec::new();
        for state in &mut self.axes {
            if let Some(motion) = state.motion.take_if(|m| m.end <= now) {
                state.position = motion.target;
                if motion.report {
                    replies.push(Reply::Done {
                        seq: motion.seq,
                        extra: Vec::new(),
                    });
                }
            }
        }
        replies
    }

    /// When the next move ends, if one is in progress.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.axes
            .iter()
            .filter_map(|a| a.motion.as_ref().map(|m| m.end))
            .min()
    }

    /// The peer is gone: moves in progress go on, but their replies are
    /// not owed to the next peer.
    pub fn peer_lost(&mut self) {
        for state in &mut self.axes {
            if let Some(motion) = &mut state.motion {
                motion.report = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Command;
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ready(t0: Instant) -> MountCore {
        let mut m = MountCore::new();
        m.handle(Command::take_control(1, 7).encode().as_bytes(), t0);
        m.handle(Command::enable(2, 7, Axis::Az).encode().as_bytes(), t0);
        m.handle(Command::enable(3, 7, Axis::El).encode().as_bytes(), t0);
        m
    }

    #[test]
    fn moves_at_ten_degrees_per_second_and_reports_positions() {
        let t0 = Instant::now();
        let mut m = ready(t0);
        let r = m.handle(
            Command::move_to(4, 7, Axis::El, 2.0).encode().as_bytes(),
            t0,
        );
        assert_eq!(
            r,
            [Reply::Ack {
                seq: 4,
                timeout_ms: 200
            }]
        );
        assert!(m.poll(t0 + ms(199)).is_empty());
        assert!((m.position(Axis::El, t0 + ms(100)) - 1.0).abs() < 1e-9);
        let r = m.handle(Command::status(5, 7).encode().as_bytes(), t0 + ms(100));
        assert_eq!(
            r[1],
            Reply::Done {
                seq: 5,
                extra: vec!["0.000".into(), "1.000".into()]
            }
        );
        assert_eq!(
            m.poll(t0 + ms(200)),
            [Reply::Done {
                seq: 4,
                extra: vec![]
            }]
        );
        assert_eq!(m.next_deadline(), None);
        assert_eq!(m.position(Axis::El, t0 + ms(500)), 2.0);
    }

    #[test]
    fn a_new_move_or_a_stop_supersedes_the_move_in_progress() {
        let t0 = Instant::now();
        let mut m = ready(t0);
        m.handle(
            Command::move_to(4, 7, Axis::Az, 10.0).encode().as_bytes(),
            t0,
        );
        let r = m.handle(
            Command::move_to(5, 7, Axis::Az, 0.0).encode().as_bytes(),
            t0 + ms(500),
        );
        assert_eq!(
            r,
            [
                Reply::no_ack(4, reason::SUPERSEDED),
                Reply::Ack {
                    seq: 5,
                    timeout_ms: 500
                }
            ]
        );
        let r = m.handle(
            Command::stop(6, 7, Axis::Az).encode().as_bytes(),
            t0 + ms(750),
        );
        assert_eq!(r[0], Reply::no_ack(5, reason::SUPERSEDED));
        assert_eq!(
            &r[1..],
            [
                Reply::Ack {
                    seq: 6,
                    timeout_ms: 0
                },
                Reply::Done {
                    seq: 6,
                    extra: vec![]
                }
            ]
        );
        assert!((m.position(Axis::Az, t0 + ms(2000)) - 2.5).abs() < 1e-9);
        assert!(
            m.poll(t0 + ms(5000)).is_empty(),
            "superseded moves get no Done"
        );
    }

    #[test]
    fn control_and_refusals() {
        let t0 = Instant::now();
        let mut m = MountCore::new();
        let r = m.handle(Command::enable(1, 7, Axis::Az).encode().as_bytes(), t0);
        assert_eq!(r, [Reply::no_ack(1, reason::NOT_IN_CONTROL)]);
        m.handle(Command::take_control(2, 7).encode().as_bytes(), t0);
        let r = m.handle(
            Command::move_to(3, 7, Axis::Az, 1.0).encode().as_bytes(),
            t0,
        );
        assert_eq!(r, [Reply::no_ack(3, reason::AXIS_DISABLED)]);
        let r = m.handle(Command::status(4, 8).encode().as_bytes(), t0);
        assert_eq!(r, [Reply::no_ack(4, reason::NOT_IN_CONTROL)]);
        m.handle(Command::take_control(5, 8).encode().as_bytes(), t0);
        assert_eq!(m.commander(), Some(8));
        let r = m.handle(Command::status(6, 7).encode().as_bytes(), t0);
        assert_eq!(r, [Reply::no_ack(6, reason::NOT_IN_CONTROL)]);
        let r = m.handle(Command::new(7, 99, 8).encode().as_bytes(), t0);
        assert_eq!(r, [Reply::no_ack(7, reason::UNSUPPORTED)]);
    }

    #[test]
    fn malformed_commands_name_their_seq_when_it_is_readable() {
        let t0 = Instant::now();
        let mut m = ready(t0);
        let cases: &[(&[u8], u64)] = &[
            (b"", 0),
            (b"x\n20\n7\nt\naz\n1", 0),
            (b"0\n40\n7\nt", 0),
            (b"-3\n40\n7\nt", 0),
            (b"9", 9),
            (b"9\n40\n7", 9),
            (b"9\nforty\n7\nt", 9),
            (b"9\n40\nseven\nt", 9),
            (b"9\n40\n7\nt\nextra", 9),
            (b"9\n20\n7\nt\naz", 9),
            (b"9\n20\n7\nt\nra\n1", 9),
            (b"9\n20\n7\nt\naz\nNaN", 9),
            (b"9\n20\n7\nt\naz\n1e308", 9),
            (b"9\n20\n7\nt\naz\n1e15", 9),
            (b"9\n10\n7\n\xff\naz", 9),
            (b"\xff\n10\n7\nt\naz", 0),
        ];
        for (frame, seq) in cases {
            let r = m.handle(frame, t0);
            assert_eq!(
                r,
                [Reply::no_ack(*seq, reason::MALFORMED)],
                "{:?}",
                String::from_utf8_lossy(frame)
            );
        }
    }

    #[test]
    fn any_bytes_get_an_answer_and_never_a_panic() {
        // Frames built from the bytes that matter to the parser, by a
        // deterministic xorshift generator: every one gets a reply for its
        // own seq (or 0), and the last reply closes it unless it is a move.
        const ALPHABET: &[u8] = b"0123456789\n\n\n-.e+azel\xff \r";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let t0 = Instant::now();
        let mut m = ready(t0);
        for i in 0..20_000u64 {
            let len = (next() % 24) as usize;
            let mut frame: Vec<u8> = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            if i % 3 == 0 {
                // A valid header, so that the commands themselves are exercised.
                let code = [1u64, 10, 20, 30, 40, 99][(next() % 6) as usize];
                let mut header = format!("{}\n{code}\n7\nt\n", i + 1).into_bytes();
                header.append(&mut frame);
                frame = header;
            }
            let now = t0 + ms(i);
            let replies = m.handle(&frame, now);
            let last = replies.last().expect("every command gets a reply");
            assert!(
                matches!(last, Reply::NoAck { .. } | Reply::Done { .. })
                    || (matches!(last, Reply::Ack { .. }) && m.next_deadline().is_some()),
                "{:?} → {replies:?}",
                String::from_utf8_lossy(&frame)
            );
            m.poll(now);
        }
    }

    #[test]
    fn replies_of_a_lost_peer_are_not_sent_to_the_next() {
        let t0 = Instant::now();
        let mut m = ready(t0);
        m.handle(
            Command::move_to(4, 7, Axis::Az, 1.0).encode().as_bytes(),
            t0,
        );
        m.peer_lost();
        assert!(m.poll(t0 + ms(100)).is_empty());
        assert_eq!(m.position(Axis::Az, t0 + ms(100)), 1.0);
    }
}
