//! The customer aggregate (`customer-{uuid}` streams): registered, renamed, email changed.

use event_schemas::{
    Category, CustomerEmailChanged, CustomerEvent, CustomerRegistered, CustomerRenamed, CustomerSnapshot, DomainEvent,
};
use uuid::Uuid;

use super::{Aggregate, DomainError, validate};

/// A customer as its stream tells it. The default is the state of an empty stream: no customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Customer {
    /// Nil until registered.
    pub id: Uuid,
    /// Whether the customer has registered; every other command needs it.
    pub exists: bool,
    pub name: String,
    pub email: String,
}

impl Customer {
    /// The name and email an order placed now records, so that read models never need to look
    /// the customer up.
    pub fn snapshot(&self) -> CustomerSnapshot {
        CustomerSnapshot {
            name: self.name.clone(),
            email: self.email.clone(),
        }
    }
}

/// What can be asked of a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerCommand {
    /// Creates the customer. The name is trimmed; the email is stored as given.
    Register {
        customer_id: Uuid,
        name: String,
        email: String,
    },
    /// Changes the display name (trimmed). Renaming to the current name appends nothing.
    Rename { customer_id: Uuid, name: String },
    /// Changes the email address. Changing to the current address appends nothing.
    ChangeEmail { customer_id: Uuid, email: String },
}

impl Aggregate for Customer {
    type Command = CustomerCommand;
    type Event = CustomerEvent;

    const CATEGORY: Category = Category::Customer;

    fn decide(&self, command: CustomerCommand) -> Result<Vec<CustomerEvent>, DomainError> {
        match command {
            CustomerCommand::Register {
                customer_id,
                name,
                email,
            } => {
                let name = validate::name("name", &name)?;
                let email = validate::email("email", &email)?;
                if self.exists {
                    return Err(DomainError::AlreadyExists {
                        what: "customer",
                        id: customer_id,
                    });
                }
                Ok(vec![CustomerEvent::Registered(CustomerRegistered {
                    customer_id,
                    name,
                    email,
                })])
            }
            CustomerCommand::Rename { customer_id, name } => {
                let name = validate::name("name", &name)?;
                self.require(customer_id)?;
                if name == self.name {
                    return Ok(vec![]);
                }
                Ok(vec![CustomerEvent::Renamed(CustomerRenamed { customer_id, name })])
            }
            CustomerCommand::ChangeEmail { customer_id, email } => {
                let email = validate::email("email", &email)?;
                self.require(customer_id)?;
                if email == self.email {
                    return Ok(vec![]);
                }
                Ok(vec![CustomerEvent::EmailChanged(CustomerEmailChanged {
                    customer_id,
                    email,
                })])
            }
        }
    }

    fn evolve(mut self, event: &CustomerEvent) -> Self {
        match event {
            CustomerEvent::Registered(e) => {
                self.id = e.customer_id;
                self.exists = true;
                self.name.clone_from(&e.name);
                self.email.clone_from(&e.email);
            }
            CustomerEvent::Renamed(e) => self.name.clone_from(&e.name),
            CustomerEvent::EmailChanged(e) => self.email.clone_from(&e.email),
        }
        self
    }

    fn event_from(event: DomainEvent) -> Option<CustomerEvent> {
        match event {
            DomainEvent::Customer(e) => Some(e),
            _ => None,
        }
    }
}

impl Customer {
    fn require(&self, customer_id: Uuid) -> Result<(), DomainError> {
        if self.exists {
            Ok(())
        } else {
            Err(DomainError::NotFound {
                what: "customer",
                id: customer_id,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::Given;

    const ID: Uuid = Uuid::from_u128(0xc0);

    fn registered() -> CustomerEvent {
        CustomerEvent::Registered(CustomerRegistered {
            customer_id: ID,
            name: "Ada Lovelace".to_owned(),
            email: "ada@example.com".to_owned(),
        })
    }

    fn register(name: &str, email: &str) -> CustomerCommand {
        CustomerCommand::Register {
            customer_id: ID,
            name: name.to_owned(),
            email: email.to_owned(),
        }
    }

    fn rename(name: &str) -> CustomerCommand {
        CustomerCommand::Rename {
            customer_id: ID,
            name: name.to_owned(),
        }
    }

    fn change_email(email: &str) -> CustomerCommand {
        CustomerCommand::ChangeEmail {
            customer_id: ID,
            email: email.to_owned(),
        }
    }

    fn not_found() -> DomainError {
        DomainError::NotFound {
            what: "customer",
            id: ID,
        }
    }

    #[test]
    fn registers_a_new_customer_with_a_trimmed_name() {
        let state = Customer::given([])
            .when(register("  Ada Lovelace ", "ada@example.com"))
            .then([registered()]);
        assert_eq!(
            state,
            Customer {
                id: ID,
                exists: true,
                name: "Ada Lovelace".to_owned(),
                email: "ada@example.com".to_owned(),
            }
        );
    }

    #[test]
    fn registering_twice_is_rejected() {
        Customer::given([registered()])
            .when(register("Ada", "ada@example.com"))
            .then_rejected(DomainError::AlreadyExists {
                what: "customer",
                id: ID,
            });
    }

    #[test]
    fn registering_needs_a_name_and_a_valid_email() {
        Customer::given([])
            .when(register("  ", "ada@example.com"))
            .then_rejected(DomainError::invalid("name", "must not be empty"));
        Customer::given([])
            .when(register(&"x".repeat(201), "ada@example.com"))
            .then_rejected(DomainError::invalid("name", "must be at most 200 characters"));
        Customer::given([])
            .when(register("Ada", "ada.example.com"))
            .then_rejected(DomainError::invalid(
                "email",
                "must be an address like name@example.com",
            ));
    }

    #[test]
    fn invalid_input_is_reported_before_the_state() {
        Customer::given([registered()])
            .when(register("", "ada@example.com"))
            .then_rejected(DomainError::invalid("name", "must not be empty"));
        Customer::given([])
            .when(rename(""))
            .then_rejected(DomainError::invalid("name", "must not be empty"));
    }

    #[test]
    fn renames_a_customer() {
        let state = Customer::given([registered()])
            .when(rename(" Countess of Lovelace "))
            .then([CustomerEvent::Renamed(CustomerRenamed {
                customer_id: ID,
                name: "Countess of Lovelace".to_owned(),
            })]);
        assert_eq!(state.name, "Countess of Lovelace");
        assert_eq!(state.email, "ada@example.com");
    }

    #[test]
    fn renaming_to_the_current_name_appends_nothing() {
        Customer::given([registered()])
            .when(rename("Ada Lovelace "))
            .then_nothing();
    }

    #[test]
    fn renaming_an_unknown_customer_is_not_found() {
        Customer::given([]).when(rename("Ada")).then_rejected(not_found());
    }

    #[test]
    fn renaming_needs_a_valid_name() {
        Customer::given([registered()])
            .when(rename("Ada\u{7}"))
            .then_rejected(DomainError::invalid("name", "must not contain control characters"));
    }

    #[test]
    fn changes_the_email() {
        let state = Customer::given([registered()])
            .when(change_email("ada@lovelace.org"))
            .then([CustomerEvent::EmailChanged(CustomerEmailChanged {
                customer_id: ID,
                email: "ada@lovelace.org".to_owned(),
            })]);
        assert_eq!(state.email, "ada@lovelace.org");
        assert_eq!(
            state.snapshot(),
            CustomerSnapshot {
                name: "Ada Lovelace".to_owned(),
                email: "ada@lovelace.org".to_owned(),
            }
        );
    }

    #[test]
    fn changing_to_the_current_email_appends_nothing() {
        Customer::given([registered()])
            .when(change_email("ada@example.com"))
            .then_nothing();
    }

    #[test]
    fn changing_the_email_of_an_unknown_customer_is_not_found() {
        Customer::given([])
            .when(change_email("ada@example.com"))
            .then_rejected(not_found());
    }

    #[test]
    fn changing_to_an_invalid_email_is_rejected() {
        Customer::given([registered()])
            .when(change_email("ada@localhost"))
            .then_rejected(DomainError::invalid(
                "email",
                "needs a domain with a dot after the @, like example.com",
            ));
    }

    #[test]
    fn event_from_keeps_only_customer_events() {
        assert_eq!(Customer::event_from(registered().into()), Some(registered()));
        let other = DomainEvent::Order(event_schemas::OrderEvent::Confirmed(event_schemas::OrderConfirmed {
            order_id: ID,
        }));
        assert_eq!(Customer::event_from(other), None);
    }
}
