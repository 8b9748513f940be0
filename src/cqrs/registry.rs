//! The handler table both buses keep: one handler per message type, found
//! by the type; a second handler for a type is remembered and refused at
//! `build()`.

use std::any::{Any, TypeId};
use std::collections::HashMap;

use crate::{Error, Result};

#[derive(Default)]
pub(super) struct Registry {
    handlers: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    duplicate: Option<&'static str>,
}

impl Registry {
    /// Registers `handler` (an erased handler, boxed as `H`) for messages
    /// of type `M`.
    pub(super) fn insert<M: 'static, H: Send + Sync + 'static>(&mut self, handler: H) {
        if self
            .handlers
            .insert(TypeId::of::<M>(), Box::new(handler))
            .is_some()
        {
            self.duplicate = Some(std::any::type_name::<M>());
        }
    }

    /// How many message types have a handler.
    pub(super) fn len(&self) -> usize {
        self.handlers.len()
    }

    /// Refuses a table with two handlers for one type (`bus` and `kind`
    /// name the bus and its messages in the error).
    pub(super) fn check(&self, bus: &'static str, kind: &str) -> Result<()> {
        match self.duplicate {
            Some(message) => Err(Error::config(
                bus,
                format!("two handlers for {message}: a {kind} has exactly one"),
            )),
            None => Ok(()),
        }
    }

    /// The handler of messages of type `M`, as registered (`H`).
    pub(super) fn get<M: 'static, H: 'static>(&self, bus: &'static str) -> Result<&H> {
        self.handlers
            .get(&TypeId::of::<M>())
            .and_then(|handler| handler.downcast_ref::<H>())
            .ok_or_else(|| {
                Error::config(
                    bus,
                    format!("no handler for {}", std::any::type_name::<M>()),
                )
            })
    }
}
