//! Product events: the `product-{uuid}` streams (catalogue and stock).

use uuid::Uuid;

use crate::convert::{id, money, uuid};
use crate::{DecodeError, Money, proto};

/// A product entered the catalogue: the first event of its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductAdded {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub price: Money,
    /// Units in stock when the product was added.
    pub stock: i64,
}
event_type!(ProductAdded, "product.added", version 1);

/// A product's unit price changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductPriceChanged {
    pub product_id: Uuid,
    pub price: Money,
}
event_type!(ProductPriceChanged, "product.price_changed", version 1);

/// Units were added to a product's stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRestocked {
    pub product_id: Uuid,
    pub quantity: i64,
}
event_type!(ProductRestocked, "product.restocked", version 1);

/// Units of stock were set aside for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductStockReserved {
    pub product_id: Uuid,
    pub order_id: Uuid,
    pub quantity: i64,
}
event_type!(ProductStockReserved, "product.stock_reserved", version 1);

/// Units an order had reserved went back to stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductStockReleased {
    pub product_id: Uuid,
    pub order_id: Uuid,
    pub quantity: i64,
}
event_type!(ProductStockReleased, "product.stock_released", version 1);

/// Every event of a product stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductEvent {
    Added(ProductAdded),
    PriceChanged(ProductPriceChanged),
    Restocked(ProductRestocked),
    StockReserved(ProductStockReserved),
    StockReleased(ProductStockReleased),
}

impl ProductEvent {
    /// The stable type name of this event.
    pub const fn event_type(&self) -> &'static str {
        match self {
            Self::Added(_) => ProductAdded::EVENT_TYPE,
            Self::PriceChanged(_) => ProductPriceChanged::EVENT_TYPE,
            Self::Restocked(_) => ProductRestocked::EVENT_TYPE,
            Self::StockReserved(_) => ProductStockReserved::EVENT_TYPE,
            Self::StockReleased(_) => ProductStockReleased::EVENT_TYPE,
        }
    }

    /// The schema version this build writes for this event.
    pub const fn schema_version(&self) -> u32 {
        match self {
            Self::Added(_) => ProductAdded::SCHEMA_VERSION,
            Self::PriceChanged(_) => ProductPriceChanged::SCHEMA_VERSION,
            Self::Restocked(_) => ProductRestocked::SCHEMA_VERSION,
            Self::StockReserved(_) => ProductStockReserved::SCHEMA_VERSION,
            Self::StockReleased(_) => ProductStockReleased::SCHEMA_VERSION,
        }
    }

    /// The product the event belongs to.
    pub const fn product_id(&self) -> Uuid {
        match self {
            Self::Added(e) => e.product_id,
            Self::PriceChanged(e) => e.product_id,
            Self::Restocked(e) => e.product_id,
            Self::StockReserved(e) => e.product_id,
            Self::StockReleased(e) => e.product_id,
        }
    }
}

impl From<ProductEvent> for proto::ProductEvent {
    fn from(event: ProductEvent) -> Self {
        use proto::product_event::Event;
        let event = match event {
            ProductEvent::Added(e) => Event::Added(proto::ProductAdded {
                product_id: id(e.product_id),
                sku: e.sku,
                name: e.name,
                price: Some(e.price.into()),
                stock: e.stock,
            }),
            ProductEvent::PriceChanged(e) => Event::PriceChanged(proto::ProductPriceChanged {
                product_id: id(e.product_id),
                price: Some(e.price.into()),
            }),
            ProductEvent::Restocked(e) => Event::Restocked(proto::ProductRestocked {
                product_id: id(e.product_id),
                quantity: e.quantity,
            }),
            ProductEvent::StockReserved(e) => Event::StockReserved(proto::ProductStockReserved {
                product_id: id(e.product_id),
                order_id: id(e.order_id),
                quantity: e.quantity,
            }),
            ProductEvent::StockReleased(e) => Event::StockReleased(proto::ProductStockReleased {
                product_id: id(e.product_id),
                order_id: id(e.order_id),
                quantity: e.quantity,
            }),
        };
        Self { event: Some(event) }
    }
}

impl From<&ProductEvent> for proto::ProductEvent {
    fn from(event: &ProductEvent) -> Self {
        event.clone().into()
    }
}

impl TryFrom<proto::ProductEvent> for ProductEvent {
    type Error = DecodeError;

    fn try_from(message: proto::ProductEvent) -> Result<Self, Self::Error> {
        use proto::product_event::Event;
        let event = message.event.ok_or(DecodeError::EmptyOneof {
            message: "ProductEvent",
        })?;
        Ok(match event {
            Event::Added(e) => Self::Added(ProductAdded {
                product_id: uuid("ProductAdded.product_id", &e.product_id)?,
                sku: e.sku,
                name: e.name,
                price: money("ProductAdded.price", e.price)?,
                stock: e.stock,
            }),
            Event::PriceChanged(e) => Self::PriceChanged(ProductPriceChanged {
                product_id: uuid("ProductPriceChanged.product_id", &e.product_id)?,
                price: money("ProductPriceChanged.price", e.price)?,
            }),
            Event::Restocked(e) => Self::Restocked(ProductRestocked {
                product_id: uuid("ProductRestocked.product_id", &e.product_id)?,
                quantity: e.quantity,
            }),
            Event::StockReserved(e) => Self::StockReserved(ProductStockReserved {
                product_id: uuid("ProductStockReserved.product_id", &e.product_id)?,
                order_id: uuid("ProductStockReserved.order_id", &e.order_id)?,
                quantity: e.quantity,
            }),
            Event::StockReleased(e) => Self::StockReleased(ProductStockReleased {
                product_id: uuid("ProductStockReleased.product_id", &e.product_id)?,
                order_id: uuid("ProductStockReleased.order_id", &e.order_id)?,
                quantity: e.quantity,
            }),
        })
    }
}
