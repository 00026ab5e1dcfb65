//! The write services one process hosts, each with the command handler over its own event store.
//!
//! A distributed deployment runs one service per process (`write-side --service orders`); the
//! embedded `orderflow serve` hosts all four in one process, each still over its own store (its
//! own SQLite file). Either way a service only ever appends to its own store: [`Services`] hands
//! out the handler of the service that owns a stream's category, and nothing else.

use std::collections::BTreeMap;

use event_schemas::{Category, Service};

use crate::CommandHandler;

/// The hosted services and their handlers. Cheap to clone.
#[derive(Clone, Default)]
pub struct Services {
    handlers: BTreeMap<Service, CommandHandler>,
}

impl Services {
    /// No service yet: add them with [`Self::with`].
    pub fn new() -> Self {
        Self::default()
    }

    /// One service, over the store of `handler`.
    pub fn single(service: Service, handler: CommandHandler) -> Self {
        Self::new().with(service, handler)
    }

    /// This set with `service` hosted too, over the store of `handler` (which must be that
    /// service's own store).
    #[must_use]
    pub fn with(mut self, service: Service, handler: CommandHandler) -> Self {
        self.handlers.insert(service, handler);
        self
    }

    /// The handler of `service`, when this process hosts it.
    pub fn get(&self, service: Service) -> Option<&CommandHandler> {
        self.handlers.get(&service)
    }

    /// The handler of the service that owns `category`'s streams, when hosted here.
    pub fn owning(&self, category: Category) -> Option<&CommandHandler> {
        self.get(Service::owning(category))
    }

    /// Whether `service` is hosted here.
    pub fn hosts(&self, service: Service) -> bool {
        self.handlers.contains_key(&service)
    }

    /// The hosted services, in [`Service::ALL`] order.
    pub fn hosted(&self) -> impl Iterator<Item = Service> + '_ {
        self.handlers.keys().copied()
    }

    /// The hosted services with their handlers.
    pub fn iter(&self) -> impl Iterator<Item = (Service, &CommandHandler)> {
        self.handlers.iter().map(|(service, handler)| (*service, handler))
    }
}
