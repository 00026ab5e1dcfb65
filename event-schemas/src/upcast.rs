//! Upcasting: how a payload stored at an old schema version is read by a newer build.
//!
//! Stored events are never rewritten. When an event type's schema changes in a way old payloads
//! cannot satisfy, its `SCHEMA_VERSION` goes up by one and an [`Upcaster`] from the previous
//! version is registered in [`Upcasters::builtin`]. [`decode`](crate::decode) then takes a payload
//! stored at version `n` through the steps `n → n+1 → … → current` and decodes the result with
//! today's types. There are no old versions yet: the v1 registry is empty.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use crate::event::decode_current;
use crate::{DecodeError, DomainEvent, EventSchema};

/// One step of a schema change: turns a payload of [`event_type`](Self::event_type) at
/// [`from_version`](Self::from_version) into the payload of `from_version + 1`.
pub trait Upcaster: Send + Sync {
    /// The stable type name of the events this step applies to.
    fn event_type(&self) -> &str;

    /// The schema version it reads.
    #[allow(
        clippy::wrong_self_convention,
        reason = "\"from version n\" is the domain's phrase, not a `from_*` constructor"
    )]
    fn from_version(&self) -> u32;

    /// The payload at `from_version + 1`. Fails (with any [`DecodeError`]) when the old payload
    /// is malformed; the caller reports it wrapped in [`DecodeError::Upcast`].
    fn upcast(&self, payload: &[u8]) -> Result<Vec<u8>, DecodeError>;
}

/// A registry of upcasters, and the decoder that goes through them.
#[derive(Default)]
pub struct Upcasters {
    steps: BTreeMap<(String, u32), Box<dyn Upcaster>>,
    /// Current versions that differ from [`EventSchema::schema_version`]; see
    /// [`with_current_version`](Self::with_current_version).
    current_overrides: BTreeMap<String, u32>,
}

impl Upcasters {
    /// An empty registry: reads current-version payloads only.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry [`decode`](crate::decode) uses: every upcaster this build ships. Empty in
    /// v1, since no event type has an older version yet.
    pub fn builtin() -> &'static Self {
        static BUILTIN: OnceLock<Upcasters> = OnceLock::new();
        // When an event type moves to version n + 1, register its n → n + 1 step here, e.g.
        // `Upcasters::new().with(OrderPlacedV1ToV2)`, and keep the version n fixture.
        BUILTIN.get_or_init(Upcasters::new)
    }

    /// Adds a step.
    ///
    /// # Panics
    ///
    /// If a step for the same event type and version is already registered: two ways to read
    /// the same stored bytes is a bug to catch at start-up, not to settle silently.
    #[must_use]
    pub fn with(mut self, upcaster: impl Upcaster + 'static) -> Self {
        let key = (upcaster.event_type().to_owned(), upcaster.from_version());
        assert!(
            !self.steps.contains_key(&key),
            "two upcasters for {:?} from schema version {}",
            key.0,
            key.1
        );
        self.steps.insert(key, Box::new(upcaster));
        self
    }

    /// Treats `version` as the current schema version of `event_type` instead of the one in
    /// [`EVENT_SCHEMAS`](crate::EVENT_SCHEMAS).
    ///
    /// For rehearsing a schema change in tests: register the steps of a pretend new version and
    /// check that old payloads come out right, before the real constant moves. Production code
    /// has no use for it.
    #[must_use]
    pub fn with_current_version(mut self, event_type: &str, version: u32) -> Self {
        self.current_overrides.insert(event_type.to_owned(), version);
        self
    }

    /// The version payloads of `event_type` are decoded at, or `None` for an unknown type.
    pub fn current_version(&self, event_type: &str) -> Option<u32> {
        let schema = EventSchema::find(event_type)?;
        Some(self.current_version_of(schema))
    }

    fn current_version_of(&self, schema: &EventSchema) -> u32 {
        self.current_overrides
            .get(schema.event_type)
            .copied()
            .unwrap_or(schema.schema_version)
    }

    /// Like [`decode`](crate::decode), through this registry.
    pub fn decode(&self, event_type: &str, schema_version: u32, payload: &[u8]) -> Result<DomainEvent, DecodeError> {
        let schema =
            EventSchema::find(event_type).ok_or_else(|| DecodeError::UnknownEventType(event_type.to_owned()))?;
        let current = self.current_version_of(schema);
        if schema_version == 0 || schema_version > current {
            return Err(DecodeError::UnsupportedSchemaVersion {
                event_type: event_type.to_owned(),
                version: schema_version,
                current,
            });
        }
        let payload = self.upcast(schema.event_type, schema_version, current, payload)?;
        let event = decode_current(schema.category, &payload)?;
        if event.event_type() != schema.event_type {
            return Err(DecodeError::EventTypeMismatch {
                declared: event_type.to_owned(),
                actual: event.event_type(),
            });
        }
        Ok(event)
    }

    /// Takes `payload` from version `from` to version `to` one registered step at a time.
    fn upcast<'a>(
        &self,
        event_type: &str,
        from: u32,
        to: u32,
        payload: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, DecodeError> {
        let mut payload = Cow::Borrowed(payload);
        for version in from..to {
            let step =
                self.steps
                    .get(&(event_type.to_owned(), version))
                    .ok_or_else(|| DecodeError::MissingUpcaster {
                        event_type: event_type.to_owned(),
                        from_version: version,
                    })?;
            let next = step.upcast(&payload).map_err(|source| DecodeError::Upcast {
                event_type: event_type.to_owned(),
                from_version: version,
                source: Box::new(source),
            })?;
            payload = Cow::Owned(next);
        }
        Ok(payload)
    }
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upcasters")
            .field("steps", &self.steps.keys().collect::<Vec<_>>())
            .field("current_overrides", &self.current_overrides)
            .finish()
    }
}
