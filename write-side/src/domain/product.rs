//! The product aggregate (`product-{uuid}` streams): catalogue entry, price, and stock.
//!
//! Stock is counted as `available` units plus one reservation per order. Reserving moves units
//! from `available` to the order's reservation; releasing moves the order's whole reservation
//! back, so a release is exact (it returns what that order took, no more) and idempotent (a
//! second release finds nothing to return and appends nothing). Units reserved for an order that
//! is delivered stay reserved: they left the warehouse. `available` never goes below zero:
//! a reservation larger than it is [`DomainError::InsufficientStock`].

use std::collections::BTreeMap;

use event_schemas::{
    Category, DomainEvent, Money, ProductAdded, ProductEvent, ProductPriceChanged, ProductRestocked,
    ProductStockReleased, ProductStockReserved,
};
use uuid::Uuid;

use super::{Aggregate, DomainError, MAX_STOCK, validate};

/// A product as its stream tells it. The default is the state of an empty stream: no product.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Product {
    /// Nil until added.
    pub id: Uuid,
    /// Whether the product was added; every other command needs it.
    pub exists: bool,
    pub sku: String,
    pub name: String,
    /// The unit price; `None` until added. Its currency is fixed when the product is added.
    pub price: Option<Money>,
    /// Units that can still be reserved. Never negative.
    pub available: i64,
    /// Units set aside, per order id. Only orders holding units are present.
    pub reservations: BTreeMap<Uuid, i64>,
}

impl Product {
    /// Units reserved for `order_id` (0 if none).
    pub fn reserved_for(&self, order_id: Uuid) -> i64 {
        self.reservations.get(&order_id).copied().unwrap_or(0)
    }

    /// Units reserved for all orders together.
    pub fn reserved(&self) -> i64 {
        self.reservations
            .values()
            .fold(0, |sum, quantity| sum.saturating_add(*quantity))
    }

    /// The price of an added product, or NotFound naming `product_id`.
    pub(crate) fn require(&self, product_id: Uuid) -> Result<Money, DomainError> {
        match self.price {
            Some(price) if self.exists => Ok(price),
            _ => Err(DomainError::NotFound {
                what: "product",
                id: product_id,
            }),
        }
    }
}

/// What can be asked of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductCommand {
    /// Adds the product to the catalogue with its initial stock (0 to [`MAX_STOCK`]). The
    /// currency is fixed from now on.
    Add {
        product_id: Uuid,
        sku: String,
        name: String,
        price_minor: i64,
        /// ISO 4217 code, e.g. `"EUR"`.
        currency: String,
        stock: i64,
    },
    /// Changes the unit price, in the product's currency. Orders already placed keep the price
    /// they captured. The current price appends nothing.
    ChangePrice { product_id: Uuid, price_minor: i64 },
    /// Adds units to the available stock.
    Restock { product_id: Uuid, quantity: i64 },
    /// Sets `quantity` units aside for an order. Repeating the same reservation appends
    /// nothing; a different quantity for an order that already holds a reservation is rejected
    /// (release it first).
    ReserveStock {
        product_id: Uuid,
        order_id: Uuid,
        quantity: i64,
    },
    /// Returns everything reserved for an order to the available stock. An order that holds no
    /// reservation (never reserved, or already released) appends nothing.
    ReleaseStock { product_id: Uuid, order_id: Uuid },
}

impl Aggregate for Product {
    type Command = ProductCommand;
    type Event = ProductEvent;

    const CATEGORY: Category = Category::Product;

    fn decide(&self, command: ProductCommand) -> Result<Vec<ProductEvent>, DomainError> {
        match command {
            ProductCommand::Add {
                product_id,
                sku,
                name,
                price_minor,
                currency,
                stock,
            } => {
                let sku = validate::sku("sku", &sku)?;
                let name = validate::name("name", &name)?;
                let price_minor = validate::price("price_minor", price_minor)?;
                let currency = validate::currency("currency", &currency)?;
                let stock = validate::stock("stock", stock)?;
                if self.exists {
                    return Err(DomainError::AlreadyExists {
                        what: "product",
                        id: product_id,
                    });
                }
                Ok(vec![ProductEvent::Added(ProductAdded {
                    product_id,
                    sku,
                    name,
                    price: Money::new(price_minor, currency),
                    stock,
                })])
            }
            ProductCommand::ChangePrice {
                product_id,
                price_minor,
            } => {
                let price_minor = validate::price("price_minor", price_minor)?;
                let current = self.require(product_id)?;
                if price_minor == current.amount_minor {
                    return Ok(vec![]);
                }
                Ok(vec![ProductEvent::PriceChanged(ProductPriceChanged {
                    product_id,
                    price: Money::new(price_minor, current.currency),
                })])
            }
            ProductCommand::Restock { product_id, quantity } => {
                let quantity = validate::quantity("quantity", quantity)?;
                self.require(product_id)?;
                match self.available.checked_add(quantity) {
                    Some(total) if total <= MAX_STOCK => {}
                    _ => {
                        return Err(DomainError::rejected(format!(
                            "restocking {quantity} units would take product {product_id} from {} to more than \
                             {MAX_STOCK} available units",
                            self.available
                        )));
                    }
                }
                Ok(vec![ProductEvent::Restocked(ProductRestocked { product_id, quantity })])
            }
            ProductCommand::ReserveStock {
                product_id,
                order_id,
                quantity,
            } => {
                let quantity = validate::quantity("quantity", quantity)?;
                self.require(product_id)?;
                match self.reserved_for(order_id) {
                    0 => {}
                    held if held == quantity => return Ok(vec![]),
                    held => {
                        return Err(DomainError::rejected(format!(
                            "order {order_id} already holds {held} units of product {product_id}; release them \
                             before reserving {quantity}"
                        )));
                    }
                }
                if quantity > self.available {
                    return Err(DomainError::InsufficientStock {
                        product_id,
                        requested: quantity,
                        available: self.available,
                    });
                }
                Ok(vec![ProductEvent::StockReserved(ProductStockReserved {
                    product_id,
                    order_id,
                    quantity,
                })])
            }
            ProductCommand::ReleaseStock { product_id, order_id } => {
                self.require(product_id)?;
                match self.reserved_for(order_id) {
                    quantity if quantity > 0 => Ok(vec![ProductEvent::StockReleased(ProductStockReleased {
                        product_id,
                        order_id,
                        quantity,
                    })]),
                    _ => Ok(vec![]),
                }
            }
        }
    }

    fn evolve(mut self, event: &ProductEvent) -> Self {
        match event {
            ProductEvent::Added(e) => {
                self.id = e.product_id;
                self.exists = true;
                self.sku.clone_from(&e.sku);
                self.name.clone_from(&e.name);
                self.price = Some(e.price);
                self.available = e.stock;
            }
            ProductEvent::PriceChanged(e) => self.price = Some(e.price),
            ProductEvent::Restocked(e) => self.available = self.available.saturating_add(e.quantity),
            ProductEvent::StockReserved(e) => {
                self.available = self.available.saturating_sub(e.quantity);
                let held = self.reservations.entry(e.order_id).or_insert(0);
                *held = held.saturating_add(e.quantity);
                if *held <= 0 {
                    self.reservations.remove(&e.order_id);
                }
            }
            ProductEvent::StockReleased(e) => {
                self.available = self.available.saturating_add(e.quantity);
                let held = self.reservations.entry(e.order_id).or_insert(0);
                *held = held.saturating_sub(e.quantity);
                if *held <= 0 {
                    self.reservations.remove(&e.order_id);
                }
            }
        }
        self
    }

    fn event_from(event: DomainEvent) -> Option<ProductEvent> {
        match event {
            DomainEvent::Product(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use event_schemas::Currency;

    use super::*;
    use crate::domain::MAX_PRICE_MINOR;
    use crate::domain::testing::Given;

    const ID: Uuid = Uuid::from_u128(0xb0);
    const ORDER: Uuid = Uuid::from_u128(0x0a);
    const OTHER_ORDER: Uuid = Uuid::from_u128(0x0b);

    fn added(stock: i64) -> ProductEvent {
        ProductEvent::Added(ProductAdded {
            product_id: ID,
            sku: "TEA-001".to_owned(),
            name: "Green tea".to_owned(),
            price: Money::new(450, Currency::EUR),
            stock,
        })
    }

    fn add() -> ProductCommand {
        ProductCommand::Add {
            product_id: ID,
            sku: "TEA-001".to_owned(),
            name: " Green tea".to_owned(),
            price_minor: 450,
            currency: "EUR".to_owned(),
            stock: 10,
        }
    }

    fn reserved(order_id: Uuid, quantity: i64) -> ProductEvent {
        ProductEvent::StockReserved(ProductStockReserved {
            product_id: ID,
            order_id,
            quantity,
        })
    }

    fn released(order_id: Uuid, quantity: i64) -> ProductEvent {
        ProductEvent::StockReleased(ProductStockReleased {
            product_id: ID,
            order_id,
            quantity,
        })
    }

    fn reserve(order_id: Uuid, quantity: i64) -> ProductCommand {
        ProductCommand::ReserveStock {
            product_id: ID,
            order_id,
            quantity,
        }
    }

    fn release(order_id: Uuid) -> ProductCommand {
        ProductCommand::ReleaseStock {
            product_id: ID,
            order_id,
        }
    }

    fn restock(quantity: i64) -> ProductCommand {
        ProductCommand::Restock {
            product_id: ID,
            quantity,
        }
    }

    fn change_price(price_minor: i64) -> ProductCommand {
        ProductCommand::ChangePrice {
            product_id: ID,
            price_minor,
        }
    }

    fn not_found() -> DomainError {
        DomainError::NotFound {
            what: "product",
            id: ID,
        }
    }

    #[test]
    fn adds_a_product() {
        let state = Product::given([]).when(add()).then([added(10)]);
        assert!(state.exists);
        assert_eq!(state.id, ID);
        assert_eq!(state.name, "Green tea");
        assert_eq!(state.price, Some(Money::new(450, Currency::EUR)));
        assert_eq!(state.available, 10);
        assert!(state.reservations.is_empty());
    }

    #[test]
    fn adding_twice_is_rejected() {
        Product::given([added(10)])
            .when(add())
            .then_rejected(DomainError::AlreadyExists {
                what: "product",
                id: ID,
            });
    }

    #[test]
    fn adding_validates_every_field() {
        let with = |edit: fn(&mut ProductCommand)| {
            let mut command = add();
            edit(&mut command);
            command
        };
        let cases: [(ProductCommand, DomainError); 7] = [
            (
                with(|c| {
                    if let ProductCommand::Add { sku, .. } = c {
                        *sku = "TEA 001".to_owned();
                    }
                }),
                DomainError::invalid("sku", "may only contain ASCII letters, digits, '-', '_' and '.'"),
            ),
            (
                with(|c| {
                    if let ProductCommand::Add { sku, .. } = c {
                        sku.clear();
                    }
                }),
                DomainError::invalid("sku", "must not be empty"),
            ),
            (
                with(|c| {
                    if let ProductCommand::Add { name, .. } = c {
                        *name = " ".to_owned();
                    }
                }),
                DomainError::invalid("name", "must not be empty"),
            ),
            (
                with(|c| {
                    if let ProductCommand::Add { price_minor, .. } = c {
                        *price_minor = -1;
                    }
                }),
                DomainError::invalid("price_minor", "must not be negative"),
            ),
            (
                with(|c| {
                    if let ProductCommand::Add { price_minor, .. } = c {
                        *price_minor = MAX_PRICE_MINOR + 1;
                    }
                }),
                DomainError::invalid("price_minor", format!("must be at most {MAX_PRICE_MINOR}")),
            ),
            (
                with(|c| {
                    if let ProductCommand::Add { currency, .. } = c {
                        *currency = "eur".to_owned();
                    }
                }),
                DomainError::invalid("currency", "must be a three-letter upper-case ISO 4217 code, e.g. EUR"),
            ),
            (
                with(|c| {
                    if let ProductCommand::Add { stock, .. } = c {
                        *stock = -5;
                    }
                }),
                DomainError::invalid("stock", "must not be negative"),
            ),
        ];
        for (command, error) in cases {
            Product::given([]).when(command).then_rejected(error);
        }
    }

    #[test]
    fn a_free_product_with_no_stock_is_fine() {
        let mut command = add();
        if let ProductCommand::Add { price_minor, stock, .. } = &mut command {
            *price_minor = 0;
            *stock = 0;
        }
        let state = Product::given([])
            .when(command)
            .then([ProductEvent::Added(ProductAdded {
                product_id: ID,
                sku: "TEA-001".to_owned(),
                name: "Green tea".to_owned(),
                price: Money::new(0, Currency::EUR),
                stock: 0,
            })]);
        assert_eq!(state.available, 0);
    }

    #[test]
    fn changes_the_price_in_the_products_currency() {
        let state = Product::given([added(10)])
            .when(change_price(500))
            .then([ProductEvent::PriceChanged(ProductPriceChanged {
                product_id: ID,
                price: Money::new(500, Currency::EUR),
            })]);
        assert_eq!(state.price, Some(Money::new(500, Currency::EUR)));
    }

    #[test]
    fn changing_to_the_current_price_appends_nothing() {
        Product::given([added(10)]).when(change_price(450)).then_nothing();
    }

    #[test]
    fn changing_the_price_validates_it_and_needs_the_product() {
        Product::given([added(10)])
            .when(change_price(-1))
            .then_rejected(DomainError::invalid("price_minor", "must not be negative"));
        Product::given([]).when(change_price(100)).then_rejected(not_found());
    }

    #[test]
    fn restocks() {
        let state = Product::given([added(10)])
            .when(restock(5))
            .then([ProductEvent::Restocked(ProductRestocked {
                product_id: ID,
                quantity: 5,
            })]);
        assert_eq!(state.available, 15);
    }

    #[test]
    fn restocking_needs_a_positive_bounded_quantity_and_the_product() {
        Product::given([added(10)])
            .when(restock(0))
            .then_rejected(DomainError::invalid("quantity", "must be greater than zero"));
        Product::given([added(10)])
            .when(restock(-3))
            .then_rejected(DomainError::invalid("quantity", "must be greater than zero"));
        Product::given([added(10)])
            .when(restock(1_000_001))
            .then_rejected(DomainError::invalid("quantity", "must be at most 1000000"));
        Product::given([]).when(restock(1)).then_rejected(not_found());
    }

    #[test]
    fn restocking_beyond_the_stock_limit_is_rejected() {
        Product::given([added(MAX_STOCK)])
            .when(restock(1))
            .then_rejected(DomainError::rejected(format!(
                "restocking 1 units would take product {ID} from {MAX_STOCK} to more than {MAX_STOCK} available \
                 units"
            )));
    }

    #[test]
    fn reserves_stock_for_an_order() {
        let state = Product::given([added(10)])
            .when(reserve(ORDER, 4))
            .then([reserved(ORDER, 4)]);
        assert_eq!(state.available, 6);
        assert_eq!(state.reserved_for(ORDER), 4);
        assert_eq!(state.reserved(), 4);
    }

    #[test]
    fn reserving_all_the_stock_is_fine_but_not_one_more() {
        Product::given([added(10)])
            .when(reserve(ORDER, 10))
            .then([reserved(ORDER, 10)]);
        Product::given([added(10), reserved(OTHER_ORDER, 7)])
            .when(reserve(ORDER, 4))
            .then_rejected(DomainError::InsufficientStock {
                product_id: ID,
                requested: 4,
                available: 3,
            });
    }

    #[test]
    fn repeating_a_reservation_appends_nothing() {
        Product::given([added(10), reserved(ORDER, 4)])
            .when(reserve(ORDER, 4))
            .then_nothing();
    }

    #[test]
    fn reserving_another_quantity_for_the_same_order_is_rejected() {
        Product::given([added(10), reserved(ORDER, 4)])
            .when(reserve(ORDER, 5))
            .then_rejected(DomainError::rejected(format!(
                "order {ORDER} already holds 4 units of product {ID}; release them before reserving 5"
            )));
    }

    #[test]
    fn reserving_needs_a_valid_quantity_and_the_product() {
        Product::given([added(10)])
            .when(reserve(ORDER, 0))
            .then_rejected(DomainError::invalid("quantity", "must be greater than zero"));
        Product::given([]).when(reserve(ORDER, 1)).then_rejected(not_found());
    }

    #[test]
    fn releases_exactly_what_the_order_reserved() {
        let state = Product::given([added(10), reserved(ORDER, 4), reserved(OTHER_ORDER, 2)])
            .when(release(ORDER))
            .then([released(ORDER, 4)]);
        assert_eq!(state.available, 8);
        assert_eq!(state.reserved_for(ORDER), 0);
        assert_eq!(state.reservations, BTreeMap::from([(OTHER_ORDER, 2)]));
    }

    #[test]
    fn releasing_twice_or_without_a_reservation_appends_nothing() {
        Product::given([added(10), reserved(ORDER, 4), released(ORDER, 4)])
            .when(release(ORDER))
            .then_nothing();
        Product::given([added(10)]).when(release(ORDER)).then_nothing();
    }

    #[test]
    fn releasing_needs_the_product() {
        Product::given([]).when(release(ORDER)).then_rejected(not_found());
    }

    #[test]
    fn evolve_saturates_instead_of_overflowing() {
        let state = Product::fold(&[
            added(i64::MAX),
            ProductEvent::Restocked(ProductRestocked {
                product_id: ID,
                quantity: i64::MAX,
            }),
            released(ORDER, i64::MAX),
        ]);
        assert_eq!(state.available, i64::MAX);
        assert!(state.reservations.is_empty());
        let state = Product::fold(&[added(0), reserved(ORDER, i64::MAX), reserved(ORDER, i64::MAX)]);
        assert_eq!(state.available, i64::MIN);
        assert_eq!(state.reserved(), i64::MAX);
    }
}
