//! Where profile changes go: the in-process event bus, or NATS JetStream
//! (feature `nats`), behind one enum so the rest of the program does not
//! care which.

use std::time::Duration;

use scalekit::events::{
    Change, ChangeTopic, EventKey, GroupStats, RetryPolicy, Subscription, Topic,
};

use super::model::User;

pub type UserChange = Change<u64, User>;

/// Where profile changes go: the in-process bus, or NATS JetStream.
#[derive(Debug, Clone)]
pub enum Feed {
    Local(Topic<UserChange>),
    #[cfg(feature = "nats")]
    Nats(std::sync::Arc<scalekit::events::nats::NatsTopic<UserChange>>),
}

impl ChangeTopic<u64, User> for Feed {
    async fn publish_changes(&self, changes: Vec<(EventKey, UserChange)>) -> scalekit::Result<()> {
        match self {
            Feed::Local(topic) => topic.publish_changes(changes).await,
            #[cfg(feature = "nats")]
            Feed::Nats(topic) => topic.publish_changes(changes).await,
        }
    }

    fn topic_name(&self) -> &str {
        match self {
            Feed::Local(topic) => topic.name(),
            #[cfg(feature = "nats")]
            Feed::Nats(topic) => topic.name(),
        }
    }
}

/// A subscription group on either feed.
#[derive(Debug)]
pub enum Group {
    Local(Subscription<UserChange>),
    #[cfg(feature = "nats")]
    Nats(Box<scalekit::events::nats::NatsSubscription<UserChange>>),
}

impl Feed {
    pub async fn subscribe<H>(
        &self,
        name: &str,
        workers: usize,
        handler: H,
    ) -> scalekit::Result<Group>
    where
        H: scalekit::events::Handler<UserChange>,
    {
        let retries = RetryPolicy {
            max_retries: 2,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(10),
        };
        Ok(match self {
            Feed::Local(topic) => Group::Local(
                topic
                    .group(name)
                    .workers(workers)
                    .retries(retries)
                    .subscribe(handler)?,
            ),
            #[cfg(feature = "nats")]
            Feed::Nats(topic) => Group::Nats(Box::new(
                topic
                    .group(name)
                    .workers(workers)
                    .retries(retries)
                    .subscribe(handler)
                    .await?,
            )),
        })
    }
}

impl Group {
    pub fn stats(&self) -> GroupStats {
        match self {
            Group::Local(group) => group.stats(),
            #[cfg(feature = "nats")]
            Group::Nats(group) => group.stats(),
        }
    }

    pub async fn caught_up(&self) -> scalekit::Result<()> {
        match self {
            Group::Local(group) => {
                group.caught_up().await;
                Ok(())
            }
            #[cfg(feature = "nats")]
            Group::Nats(group) => group.caught_up().await,
        }
    }

    /// The group's dead letters (over NATS, read from its dead-letter
    /// stream).
    pub async fn dead_letters(&self) -> scalekit::Result<usize> {
        match self {
            Group::Local(group) => Ok(group.dead_letters().len()),
            #[cfg(feature = "nats")]
            Group::Nats(group) => Ok(group.dead_letters().await?.len()),
        }
    }

    /// Hands the dead letters to the handler again; how many it handled.
    pub async fn replay_dead_letters(&self) -> scalekit::Result<u64> {
        match self {
            Group::Local(group) => Ok(group.replay_dead_letters().await.handled),
            #[cfg(feature = "nats")]
            Group::Nats(group) => Ok(group.replay_dead_letters().await?.handled),
        }
    }
}
