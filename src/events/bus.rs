//! The bus: a registry of typed topics, and their shutdown.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::task::JoinHandle;

use super::topic::{Topic, TopicOptions};
use crate::{Error, Result};

const COMPONENT: &str = "EventBus";

/// What the bus keeps of a topic: the typed handle, and a way to close it
/// without knowing its type.
struct Entry {
    topic: Box<dyn Any + Send + Sync>,
    close: Box<dyn Fn() -> Vec<JoinHandle<()>> + Send + Sync>,
}

#[derive(Default)]
struct Registry {
    topics: HashMap<String, Entry>,
    closed: bool,
}

/// An in-process event bus of typed topics. Cloning it is cheap; every
/// clone is the same bus.
#[derive(Clone, Default)]
pub struct EventBus {
    registry: Arc<Mutex<Registry>>,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registry = self.lock();
        let mut names: Vec<&String> = registry.topics.keys().collect();
        names.sort();
        f.debug_struct("EventBus")
            .field("topics", &names)
            .field("closed", &registry.closed)
            .finish()
    }
}

impl EventBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The topic `name` carrying events of type `E`, made (retaining
    /// nothing) if it does not exist yet.
    ///
    /// # Errors
    ///
    /// As [`topic_with`](Self::topic_with).
    pub fn topic<E: Clone + Send + Sync + 'static>(&self, name: &str) -> Result<Topic<E>> {
        self.open(name, None)
    }

    /// The topic `name` carrying events of type `E`, made with `options` if
    /// it does not exist yet.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) if the topic exists
    /// with another event type or other options, or the name is empty;
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) once the
    /// bus is shut down.
    pub fn topic_with<E: Clone + Send + Sync + 'static>(
        &self,
        name: &str,
        options: TopicOptions,
    ) -> Result<Topic<E>> {
        self.open(name, Some(options))
    }

    fn open<E: Clone + Send + Sync + 'static>(
        &self,
        name: &str,
        options: Option<TopicOptions>,
    ) -> Result<Topic<E>> {
        if name.is_empty() {
            return Err(Error::config(COMPONENT, "a topic needs a name"));
        }
        let mut registry = self.lock();
        if registry.closed {
            return Err(Error::unavailable(COMPONENT, "the bus is shut down"));
        }
        if let Some(entry) = registry.topics.get(name) {
            let topic = entry.topic.downcast_ref::<Topic<E>>().ok_or_else(|| {
                Error::config(
                    COMPONENT,
                    format!(
                        "topic `{name}` carries another event type than {}",
                        std::any::type_name::<E>()
                    ),
                )
            })?;
            if options.is_some_and(|options| options != topic.options()) {
                return Err(Error::config(
                    COMPONENT,
                    format!("topic `{name}` exists with other options"),
                ));
            }
            return Ok(topic.clone());
        }
        let topic = Topic::<E>::new(name.to_string(), options.unwrap_or_default())?;
        let closer = topic.clone();
        registry.topics.insert(
            name.to_string(),
            Entry {
                topic: Box::new(topic.clone()),
                close: Box::new(move || closer.close()),
            },
        );
        Ok(topic)
    }

    /// Stops accepting events (publishing then fails with
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable)), lets
    /// every group handle (or dead-letter) what it has received, and
    /// returns when all of them are done.
    pub async fn shutdown(&self) {
        let handles: Vec<JoinHandle<()>> = {
            let mut registry = self.lock();
            registry.closed = true;
            registry
                .topics
                .values()
                .flat_map(|entry| (entry.close)())
                .collect()
        };
        for handle in handles {
            if let Err(error) = handle.await {
                tracing::error!(%error, "an event bus worker ended abnormally");
            }
        }
    }
}
