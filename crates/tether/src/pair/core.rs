//! The pair's connection state as a sans-IO state machine.
//!
//! [`LinkCore`] is told what happened to the two sockets (up, down, closed)
//! and answers with what the driver must do: which socket to close, and
//! which `connected` changes to report to the connect callback. It touches
//! no socket and no clock, so the rules below are tested without I/O:
//!
//! - `connected` is true exactly when both sockets are up and the pair is
//!   not closed.
//! - When the link is up and either socket goes down, the link is lost: the
//!   other socket is closed too (so the peer notices at once), the loss is
//!   counted and its reason kept for the errors readers and writers get.
//! - Every change of `connected` queues exactly one callback event, and
//!   never two events in a row for the same state.
//! - Events are delivered by one drainer at a time, in order, and an event
//!   queued while a callback runs (even by that callback) is delivered
//!   after it returns.

use std::collections::VecDeque;

/// Identifies one socket connection; never reused within a pair.
pub(crate) type ConnId = u64;

/// What the driver must do after a state change.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Actions {
    /// Close the client (write) connection with this id.
    pub close_client: Option<ConnId>,
    /// Close the server (read) connection with this id, for this reason.
    pub close_server: Option<(ConnId, String)>,
}

/// A snapshot of the link, published to waiters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LinkStatus {
    pub client: Option<ConnId>,
    pub server: Option<ConnId>,
    pub connected: bool,
    pub losses: u64,
    pub closed: bool,
}

#[derive(Debug, Default)]
pub(crate) struct LinkCore {
    status: LinkStatus,
    last_loss: Option<String>,
    /// The last state queued for the callback (it starts as "not connected").
    last_queued: bool,
    pending: VecDeque<bool>,
    draining: bool,
}

impl LinkCore {
    pub fn status(&self) -> &LinkStatus {
        &self.status
    }

    /// Why the link was last lost, if it ever was.
    pub fn last_loss(&self) -> Option<&str> {
        self.last_loss.as_deref()
    }

    /// The client connection `id` is up.
    pub fn client_up(&mut self, id: ConnId) -> Actions {
        if self.status.closed {
            return Actions {
                close_client: Some(id),
                ..Actions::default()
            };
        }
        self.status.client = Some(id);
        self.update();
        Actions::default()
    }

    /// The server accepted connection `id`.
    pub fn server_up(&mut self, id: ConnId) -> Actions {
        if self.status.closed {
            return Actions {
                close_server: Some((id, "the pair is closed".into())),
                ..Actions::default()
            };
        }
        self.status.server = Some(id);
        self.update();
        Actions::default()
    }

    /// The client connection `id` ended. Stale ids are ignored.
    pub fn client_down(&mut self, id: ConnId, reason: &str) -> Actions {
        if self.status.client != Some(id) {
            return Actions::default();
        }
        self.status.client = None;
        let mut actions = Actions::default();
        if self.status.connected {
            self.lose(format!("the write connection ended: {reason}"));
            if let Some(server) = self.status.server.take() {
                actions.close_server = Some((server, "the pair's write connection ended".into()));
            }
        }
        self.update();
        actions
    }

    /// The server connection `id` ended. Stale ids are ignored.
    pub fn server_down(&mut self, id: ConnId, reason: &str) -> Actions {
        if self.status.server != Some(id) {
            return Actions::default();
        }
        self.status.server = None;
        let mut actions = Actions::default();
        if self.status.connected {
            self.lose(format!("the read connection ended: {reason}"));
            actions.close_client = self.status.client.take();
        }
        self.update();
        actions
    }

    /// The application drops the link (the pair stays usable): both
    /// sockets are to be closed, and it counts as a loss if the link was up.
    pub fn disconnect(&mut self, reason: &str) -> Actions {
        if self.status.connected {
            self.lose(reason.to_string());
        }
        let actions = Actions {
            close_client: self.status.client.take(),
            close_server: self.status.server.take().map(|id| (id, reason.to_string())),
        };
        self.update();
        actions
    }

    /// The pair is closed for good: both sockets are to be closed.
    pub fn close(&mut self) -> Actions {
        self.status.closed = true;
        let actions = Actions {
            close_client: self.status.client.take(),
            close_server: self
                .status
                .server
                .take()
                .map(|id| (id, "the pair is closed".into())),
        };
        self.update();
        actions
    }

    fn lose(&mut self, reason: String) {
        self.status.losses += 1;
        self.last_loss = Some(reason);
    }

    fn update(&mut self) {
        let connected =
            self.status.client.is_some() && self.status.server.is_some() && !self.status.closed;
        self.status.connected = connected;
        // The callback rule: queue every change, never the same state twice.
        if connected != self.last_queued {
            self.last_queued = connected;
            self.pending.push_back(connected);
        }
    }

    /// Claims the right to deliver events; false if another caller has it
    /// (that caller will deliver ours too).
    pub fn begin_drain(&mut self) -> bool {
        if self.draining || self.pending.is_empty() {
            return false;
        }
        self.draining = true;
        true
    }

    /// The next event for the drainer; `None` ends the drain (atomically
    /// with the check, so no event is left behind).
    pub fn next_event(&mut self) -> Option<bool> {
        let event = self.pending.pop_front();
        if event.is_none() {
            self.draining = false;
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(core: &mut LinkCore) -> Vec<bool> {
        let mut out = Vec::new();
        if core.begin_drain() {
            while let Some(e) = core.next_event() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn connected_needs_both_sockets_in_either_order() {
        let mut a = LinkCore::default();
        a.client_up(1);
        assert!(!a.status().connected);
        a.server_up(2);
        assert!(a.status().connected);
        assert_eq!(drain(&mut a), [true]);

        let mut b = LinkCore::default();
        b.server_up(1);
        assert!(!b.status().connected);
        b.client_up(2);
        assert!(b.status().connected);
        assert_eq!(drain(&mut b), [true]);
    }

    #[test]
    fn losing_either_socket_closes_the_other_and_counts_one_loss() {
        let mut core = LinkCore::default();
        core.client_up(1);
        core.server_up(2);
        let actions = core.server_down(2, "EOF");
        assert_eq!(actions.close_client, Some(1));
        assert_eq!(core.status().losses, 1);
        assert!(core
            .last_loss()
            .unwrap()
            .contains("read connection ended: EOF"));
        // The client's own end, reported later, is stale: no second loss.
        assert_eq!(core.client_down(1, "aborted"), Actions::default());
        assert_eq!(core.status().losses, 1);
        assert_eq!(drain(&mut core), [true, false]);

        core.client_up(3);
        core.server_up(4);
        let actions = core.client_down(3, "EOF");
        assert_eq!(actions.close_server.map(|(id, _)| id), Some(4));
        assert_eq!(core.status().losses, 2);
        assert_eq!(drain(&mut core), [true, false]);
    }

    #[test]
    fn a_socket_dropping_before_the_link_is_up_is_no_loss() {
        let mut core = LinkCore::default();
        core.client_up(1);
        assert_eq!(core.client_down(1, "EOF"), Actions::default());
        assert_eq!(core.status().losses, 0);
        assert!(drain(&mut core).is_empty());
    }

    #[test]
    fn callback_events_follow_every_change_and_only_changes() {
        let mut core = LinkCore::default();
        core.client_up(1);
        core.server_up(2);
        core.server_down(2, "EOF");
        core.client_up(3);
        core.server_up(4);
        assert_eq!(drain(&mut core), [true, false, true]);
        assert!(drain(&mut core).is_empty());
        core.close();
        core.close();
        assert_eq!(drain(&mut core), [false]);
    }

    #[test]
    fn one_drainer_at_a_time_and_nothing_left_behind() {
        let mut core = LinkCore::default();
        core.client_up(1);
        core.server_up(2);
        assert!(core.begin_drain());
        assert!(
            !core.begin_drain(),
            "a second drainer must leave it to the first"
        );
        assert_eq!(core.next_event(), Some(true));
        // An event queued while the first callback runs is delivered by the same drainer.
        core.close();
        assert!(!core.begin_drain());
        assert_eq!(core.next_event(), Some(false));
        assert_eq!(core.next_event(), None);
        assert!(!core.begin_drain(), "nothing pending");
    }

    #[test]
    fn disconnect_drops_the_link_but_not_the_pair() {
        let mut core = LinkCore::default();
        core.client_up(1);
        core.server_up(2);
        let actions = core.disconnect("asked to");
        assert_eq!(actions.close_client, Some(1));
        assert_eq!(actions.close_server.map(|(id, _)| id), Some(2));
        assert_eq!(core.status().losses, 1);
        core.client_up(3);
        core.server_up(4);
        assert!(core.status().connected);
        assert_eq!(drain(&mut core), [true, false, true]);
    }

    #[test]
    fn after_close_new_sockets_are_closed_at_once() {
        let mut core = LinkCore::default();
        core.close();
        assert_eq!(core.client_up(7).close_client, Some(7));
        assert_eq!(core.server_up(8).close_server.map(|(id, _)| id), Some(8));
        assert!(!core.status().connected);
        assert!(drain(&mut core).is_empty());
    }
}
