//! What one process holds of a group's messages, by stream sequence:
//! the messages it took and has not settled (kept in progress at the
//! broker while they wait or run), and the ones it settled lately (so
//! that a redelivery of one is settled again, not handled again).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_nats::jetstream::{self, AckKind};

/// How a message is settled at the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settlement {
    /// Handled, or durably handed on (parked in the dead-letter stream).
    Ack,
    /// Dead-lettered: durably in the dead-letter stream, not handled.
    Term,
}

impl Settlement {
    fn kind(self) -> AckKind {
        match self {
            Settlement::Ack => AckKind::Ack,
            Settlement::Term => AckKind::Term,
        }
    }
}

/// What [`Ledger::take`] found for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Taken {
    /// Not seen before: this process now holds it.
    New,
    /// A redelivery of a message this process holds (waiting or
    /// running): nothing to do, the one held is settled in time.
    Held,
    /// A redelivery of a message this process settled: settled again.
    Settled(Settlement),
}

#[derive(Default)]
struct State {
    held: HashMap<u64, Arc<jetstream::Message>>,
    settled: HashMap<u64, Settlement>,
    /// Settled sequences, oldest first (the window's eviction order).
    order: VecDeque<u64>,
}

/// A group's messages in this process, by stream sequence.
pub(super) struct Ledger {
    state: Mutex<State>,
    /// How many settled sequences are remembered.
    remembered: usize,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Ledger")
            .field("held", &state.held.len())
            .field("settled", &state.settled.len())
            .finish()
    }
}

impl Ledger {
    /// A ledger that remembers the last `remembered` settlements.
    pub(super) fn new(remembered: usize) -> Self {
        Ledger {
            state: Mutex::new(State::default()),
            remembered: remembered.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a delivery of the message at stream sequence `sequence`.
    /// A redelivery of one held replaces the handle (the newest delivery
    /// is the one settled); one of a settled message is settled again here.
    pub(super) async fn take(&self, message: &Arc<jetstream::Message>, sequence: u64) -> Taken {
        let taken = {
            let mut state = self.lock();
            if let Some(held) = state.held.get_mut(&sequence) {
                *held = Arc::clone(message);
                Taken::Held
            } else if let Some(settlement) = state.settled.get(&sequence) {
                Taken::Settled(*settlement)
            } else {
                state.held.insert(sequence, Arc::clone(message));
                Taken::New
            }
        };
        if let Taken::Settled(settlement) = taken {
            if let Err(error) = message.ack_with(settlement.kind()).await {
                tracing::warn!(%error, sequence, "could not settle a redelivered NATS message");
            }
        }
        taken
    }

    /// The held message at `sequence`, if this process holds it.
    pub(super) fn message(&self, sequence: u64) -> Option<Arc<jetstream::Message>> {
        self.lock().held.get(&sequence).cloned()
    }

    /// Settles the held message at `sequence`: remembered as settled
    /// first (a redelivery racing the acknowledgement is settled again,
    /// not handled), then acknowledged. A lost acknowledgement means a
    /// redelivery, which this ledger settles again while it remembers
    /// the sequence.
    pub(super) async fn settle(&self, sequence: u64, settlement: Settlement) {
        let message = {
            let mut state = self.lock();
            let message = state.held.remove(&sequence);
            if state.settled.insert(sequence, settlement).is_none() {
                state.order.push_back(sequence);
                while state.order.len() > self.remembered {
                    if let Some(oldest) = state.order.pop_front() {
                        state.settled.remove(&oldest);
                    }
                }
            }
            message
        };
        match message {
            Some(message) => {
                if let Err(error) = message.ack_with(settlement.kind()).await {
                    tracing::warn!(%error, sequence, "could not settle a NATS message; it comes back");
                }
            }
            None => tracing::warn!(
                sequence,
                "settling a NATS message this process did not hold"
            ),
        }
    }

    /// Every message held, to keep in progress at the broker.
    pub(super) fn held(&self) -> Vec<Arc<jetstream::Message>> {
        self.lock().held.values().cloned().collect()
    }

    /// Sends a progress acknowledgement for every message held: JetStream
    /// then waits another ack wait before it hands any of them out again.
    pub(super) async fn keep_in_progress(&self) {
        for message in self.held() {
            if let Err(error) = message.ack_with(AckKind::Progress).await {
                tracing::warn!(%error, "could not send a progress acknowledgement to NATS");
            }
        }
    }

    /// Gives every held message back to JetStream (a negative
    /// acknowledgement: redelivered to the group at once) and forgets it.
    pub(super) async fn give_back(&self) {
        let held: Vec<(u64, Arc<jetstream::Message>)> = self.lock().held.drain().collect();
        for (sequence, message) in held {
            if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
                tracing::warn!(%error, sequence, "could not give a NATS message back; it comes back after the ack wait");
            }
        }
    }
}
