//! [`Service`]: the write services, each the owner of its own event store, and
//! [`ConsistencyToken`]: a position in one service's log, the token a command answers and a read
//! waits for.

use std::fmt;
use std::str::FromStr;

use crate::Category;

/// A write service. Each owns the streams of its categories in an event store of its own (its own
/// database and role, its own SQLite file embedded): no service reads another's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Customers: register, rename, change email.
    Customers,
    /// Products, prices and stock, with reservations for orders.
    Inventory,
    /// The order lifecycle and the place-order saga, the process that spans the services.
    Orders,
    /// Payments: authorize, capture, void, refund, decline.
    Payments,
}

impl Service {
    /// Every service, in a fixed order (the order of their logs when merged with equal times).
    pub const ALL: [Self; 4] = [Self::Customers, Self::Inventory, Self::Orders, Self::Payments];

    /// Stable name: in consistency tokens (`orders:12`), database and file names, `--service`,
    /// `/v1/log?service=`. Never rename.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Customers => "customers",
            Self::Inventory => "inventory",
            Self::Orders => "orders",
            Self::Payments => "payments",
        }
    }

    /// The categories whose streams this service owns.
    pub const fn categories(self) -> &'static [Category] {
        match self {
            Self::Customers => &[Category::Customer],
            Self::Inventory => &[Category::Product],
            Self::Orders => &[Category::Order, Category::Saga],
            Self::Payments => &[Category::Payment],
        }
    }

    /// The service that owns `category`'s streams.
    pub const fn owning(category: Category) -> Self {
        match category {
            Category::Customer => Self::Customers,
            Category::Product => Self::Inventory,
            Category::Order | Category::Saga => Self::Orders,
            Category::Payment => Self::Payments,
        }
    }

    /// The service that owns the stream `stream_id` (`order-{uuid}` → orders).
    pub fn of_stream(stream_id: &str) -> Result<Self, crate::DecodeError> {
        crate::parse_stream_id(stream_id).map(|(category, _)| Self::owning(category))
    }

    /// The service whose [`name`](Self::name) is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|service| service.name() == name)
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a service name was refused: names the services there are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown service {0:?}: expected customers, inventory, orders or payments")]
pub struct UnknownService(pub String);

impl FromStr for Service {
    type Err = UnknownService;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| UnknownService(s.to_owned()))
    }
}

/// A position in one service's log: what a command answers as `token` (`orders:12`) and what a
/// read's `min_position` waits for. A bare position is ambiguous once every service has its own
/// log, so it is not a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConsistencyToken {
    pub service: Service,
    pub position: u64,
}

/// Why a token was refused. `Display` shows the form a token takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{given:?} is not a consistency token: expected <service>:<position>, e.g. \"orders:12\", with the service one of customers, inventory, orders, payments"
)]
pub struct InvalidToken {
    pub given: String,
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.position)
    }
}

impl FromStr for ConsistencyToken {
    type Err = InvalidToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidToken { given: s.to_owned() };
        let (service, position) = s.split_once(':').ok_or_else(invalid)?;
        let service = Service::from_name(service).ok_or_else(invalid)?;
        if position.is_empty() || !position.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let position = position.parse().map_err(|_| invalid())?;
        Ok(ConsistencyToken { service, position })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_category_has_one_owner() {
        for category in Category::ALL {
            let owner = Service::owning(category);
            assert!(owner.categories().contains(&category), "{category}");
            let others = Service::ALL.iter().filter(|s| s.categories().contains(&category));
            assert_eq!(others.count(), 1, "{category} is owned once");
        }
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        for service in Service::ALL {
            let token = ConsistencyToken { service, position: 12 };
            assert_eq!(token.to_string().parse::<ConsistencyToken>(), Ok(token));
            assert_eq!(service.name().parse::<Service>(), Ok(service));
        }
        assert_eq!("orders:0".parse::<ConsistencyToken>().map(|t| t.position), Ok(0));
        for bad in [
            "12",
            "orders",
            "orders:",
            "orders:-1",
            "orders:+1",
            "orders:1.5",
            "order:1",
            "ORDERS:1",
            ":1",
            "orders:18446744073709551616",
        ] {
            let e = bad.parse::<ConsistencyToken>().expect_err(bad);
            assert!(e.to_string().contains("orders:12"), "{e}");
        }
        assert!("shipping".parse::<Service>().is_err());
    }
}
