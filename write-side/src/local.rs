//! All four services in one process, each over its own store, the orders service calling the
//! customers, inventory and payments services through their own routers in-process (the
//! service kit client's `InProcess` target): the same handlers and HTTP code paths as the
//! distributed deployment, without sockets, and the place-order saga driven in the process
//! ([`Local::run_sagas`]). What `orderflow serve`, the simulated shop and the tests run.

use std::sync::Arc;

use event_schemas::Service;
use event_store::EventStore;
use projections::{ProjectionError, ReadDb, RunOptions, ServiceLog};
use service_kit::client::{ClientSettings, ServiceClient, Target};
use tokio_util::sync::CancellationToken;

use crate::domain::{CancelOrder, PlaceOrder};
use crate::gateway::{GatewaySettings, SimulatedGateway};
use crate::http::{Auth, HttpConfig, HttpState};
use crate::orders::replica::{self, LiveReplica};
use crate::orders::{Directory, Orders, OrdersError, Peers, SagaOptions, saga};
use crate::{CommandAnswer, CommandContext, CommandHandler, HandlerOptions, Services};

/// The four services of one process.
#[derive(Clone)]
pub struct Local {
    services: Services,
    orders: Orders,
    stores: Vec<(Service, Arc<dyn EventStore>)>,
    replica_db: ReadDb,
    gateway: SimulatedGateway,
    /// The saga driver, until [`Local::run_sagas`] takes it.
    driver: Arc<std::sync::Mutex<Option<saga::Driver>>>,
}

/// How the services of one process run.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalOptions {
    pub handler: HandlerOptions,
    pub saga: SagaOptions,
    /// The simulated payment provider's settings at start.
    pub gateway: GatewaySettings,
}

impl Local {
    /// Every service over its store of `stores` (one per service), the orders service's copy of
    /// customers and products in `replica_db` (its tables and control tables are created); the
    /// saga and the simulated payment provider with their defaults.
    pub async fn new(
        stores: Vec<(Service, Arc<dyn EventStore>)>,
        replica_db: ReadDb,
        options: HandlerOptions,
    ) -> Result<Self, ProjectionError> {
        Self::with_options(
            stores,
            replica_db,
            LocalOptions {
                handler: options,
                ..LocalOptions::default()
            },
        )
        .await
    }

    /// As [`Local::new`], with every option.
    pub async fn with_options(
        stores: Vec<(Service, Arc<dyn EventStore>)>,
        replica_db: ReadDb,
        local: LocalOptions,
    ) -> Result<Self, ProjectionError> {
        let options = local.handler;
        let gateway = SimulatedGateway::new(local.gateway);
        if let Some(missing) = Service::ALL
            .into_iter()
            .find(|service| !stores.iter().any(|(s, _)| s == service))
        {
            return Err(ProjectionError::Invalid(format!("no store for the {missing} service")));
        }
        let mut services = Services::new();
        for (service, store) in &stores {
            services = services.with(*service, CommandHandler::new(Arc::clone(store), options));
        }
        replica_db.migrate().await?;
        let version = replica_db.ensure_live(replica::NAME, 1).await?;
        projections::Projection::prepare(&replica::Replica::new(replica_db.clone(), version)).await?;
        let client = |service: Service| {
            let state = HttpState::new(
                Services::single(service, handler(&services, service).clone()),
                HttpConfig::new(Auth::Disabled),
            )
            .with_simulated_gateway(gateway.clone());
            ServiceClient::new(ClientSettings::new(
                service.name(),
                Target::InProcess(crate::http::router(state)),
            ))
            .map_err(|e| ProjectionError::Invalid(e.to_string()))
        };
        let peers = Peers {
            customers: client(Service::Customers)?,
            inventory: client(Service::Inventory)?,
            payments: client(Service::Payments)?,
        };
        let directory = Directory::new(
            LiveReplica::new(replica_db.clone()),
            peers.customers.clone(),
            peers.inventory.clone(),
        );
        let (orders, driver) = Orders::new(
            handler(&services, Service::Orders).clone(),
            directory,
            peers,
            local.saga,
        );
        Ok(Local {
            services,
            orders,
            stores,
            replica_db,
            gateway,
            driver: Arc::new(std::sync::Mutex::new(Some(driver))),
        })
    }

    /// Drives the place-order sagas of this process until `cancel` (see
    /// [`saga::Driver`]). Runs once: a second call returns at once, logging why.
    pub async fn run_sagas(&self, cancel: CancellationToken) {
        let driver = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        match driver {
            Some(driver) => driver.run(cancel).await,
            None => tracing::error!("the saga driver of this process runs already"),
        }
    }

    /// The simulated payment provider the payments service asks.
    pub fn gateway(&self) -> &SimulatedGateway {
        &self.gateway
    }

    /// The orders service's commands that involve other services, and its sagas.
    pub fn orders(&self) -> &Orders {
        &self.orders
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The handler of `service`.
    pub fn handler(&self, service: Service) -> &CommandHandler {
        handler(&self.services, service)
    }

    /// Each service's log, for projections.
    pub fn logs(&self) -> Vec<ServiceLog> {
        self.stores
            .iter()
            .map(|(service, store)| ServiceLog::new(*service, Arc::clone(store)))
            .collect()
    }

    /// The HTTP state of all four services (the orders service's flows included).
    pub fn http_state(&self, config: HttpConfig) -> HttpState {
        HttpState::new(self.services.clone(), config)
            .with_orders(self.orders.clone())
            .with_simulated_gateway(self.gateway.clone())
    }

    /// Keeps the orders service's copy of customers and products up with the customers' and
    /// inventory's logs until `cancel`.
    pub async fn run_replica(&self, cancel: CancellationToken) -> Result<(), ProjectionError> {
        let sources = self
            .logs()
            .into_iter()
            .filter(|log| matches!(log.service, Service::Customers | Service::Inventory))
            .collect();
        projections::run_from_stores(
            sources,
            self.replica_db.clone(),
            replica::factory(self.replica_db.clone()),
            RunOptions::default(),
            cancel,
        )
        .await
    }

    /// Whether the orders service's copy has applied the customers' and inventory's logs up to
    /// their heads (the copy is eventually consistent: a customer registered a moment ago may
    /// not be in it yet, and the orders service then asks the customers service).
    pub async fn replica_caught_up(&self) -> Result<bool, ProjectionError> {
        let Some(version) = self.replica_db.live_version(replica::NAME).await? else {
            return Ok(false);
        };
        let progress = self.replica_db.progress(replica::NAME, version).await?;
        for (service, store) in &self.stores {
            if matches!(service, Service::Customers | Service::Inventory)
                && projections::applied_position(&progress, *service) < store.head_position().await?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Places an order as `POST /v1/orders` does.
    pub async fn place_order(&self, ctx: &CommandContext, command: PlaceOrder) -> Result<CommandAnswer, OrdersError> {
        self.orders.place(ctx, &call_of(ctx), command).await
    }

    /// Cancels an order as `POST /v1/orders/{id}/cancel` does.
    pub async fn cancel_order(&self, ctx: &CommandContext, command: CancelOrder) -> Result<CommandAnswer, OrdersError> {
        self.orders.cancel(ctx, &call_of(ctx), command).await
    }
}

/// The handler of `service`; every one is there (built from one store per service).
fn handler(services: &Services, service: Service) -> &CommandHandler {
    services
        .get(service)
        .unwrap_or_else(|| unreachable!("Local hosts every service"))
}

/// The calls a command makes, from its metadata.
fn call_of(ctx: &CommandContext) -> service_kit::client::CallContext {
    service_kit::client::CallContext::new(ctx.metadata.correlation_id.clone(), ctx.metadata.causation_id.clone())
}
