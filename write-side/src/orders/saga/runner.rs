//! Advancing one saga: load it and its order, ask [`Saga::next`], make the call, record its
//! outcome; again, until there is nothing to do now (ADR 0010).
//!
//! Every call carries the step's idempotency key ([`Saga::key`]) and the order's correlation
//! id; every record is appended with the saga stream's expected version through the command
//! pipeline (a conflict decides again on what the store holds). How an answer is read:
//!
//! | answer | for a forward step | for a compensation |
//! |---|---|---|
//! | success | recorded, next step | recorded, next step |
//! | out of stock (inventory 409 `insufficient_stock`) | the saga fails, `out_of_stock` | – |
//! | declined (payments' answer says so) | the saga fails, `payment_declined` | – |
//! | the target down, a timeout, its breaker open, a 5xx, our own store failing | try again later (until the deadline) | try again later (always) |
//! | anything else (an unexpected refusal or answer) | parked | parked |

use chrono::{DateTime, Utc};
use event_schemas::Category;
use event_store::EventMetadata;
use serde::{Deserialize, Serialize};
use service_kit::client::{CallContext, ClientError, ServiceClient};
use service_kit::http::StatusCode;
use uuid::Uuid;

use crate::domain::saga::{Next, OrderView, Phase, ReasonCode, Saga, SagaCommand};
use crate::domain::{Aggregate as _, Order, OrderCommand};
use crate::{CommandContext, CommandError, CommandHandler};

/// The actor of every event a saga records.
pub const ACTOR: &str = "saga";

/// What one turn of [`Runner::advance`] ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advanced {
    /// Nothing to do now: it waits for its order to ship or be cancelled, or for an operator;
    /// or it is completed.
    Idle(Phase),
    /// A call failed for a reason that may pass: try again (the driver's backoff), no later
    /// than `deadline` when there is one.
    Retry {
        phase: Phase,
        deadline: Option<DateTime<Utc>>,
        error: String,
    },
}

/// Why a turn stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// The services a saga calls, and its own service's handler.
#[derive(Clone)]
pub struct Runner {
    handler: CommandHandler,
    inventory: ServiceClient,
    payments: ServiceClient,
}

/// `POST /v1/products/{id}/reservations`.
#[derive(Serialize)]
struct Reserve {
    order_id: Uuid,
    quantity: i64,
}

/// `POST /v1/payments`.
#[derive(Serialize)]
struct Authorize {
    payment_id: Uuid,
    order_id: Uuid,
    amount_minor: i64,
    currency: String,
}

/// What payments answers to an authorization, as far as the saga needs it.
#[derive(Deserialize)]
struct Authorization {
    payment_status: String,
    #[serde(default)]
    decline_reason: Option<String>,
}

/// The outcome of a call, as the saga reads it.
enum Outcome {
    /// Nothing called: record this.
    Recorded(SagaCommand),
    Done,
    Refused {
        reason_code: ReasonCode,
        reason: String,
    },
    Retry(String),
    Park(String),
}

impl Runner {
    pub fn new(handler: CommandHandler, inventory: ServiceClient, payments: ServiceClient) -> Self {
        Runner {
            handler,
            inventory,
            payments,
        }
    }

    pub fn handler(&self) -> &CommandHandler {
        &self.handler
    }

    /// The clients of the services it calls (for `GET /v1/services`).
    pub fn clients(&self) -> [&ServiceClient; 2] {
        [&self.inventory, &self.payments]
    }

    /// Advances the saga of `order_id` as far as it can go now.
    ///
    /// What the calls did is recorded in as few commits as is safe: at most one forward
    /// effect (a reservation, the authorization, the capture) is ever unrecorded, since the
    /// compensation relies on it (it releases the one line it may hold without a record, and
    /// voids once every line is recorded reserved); the authorization is recorded in the
    /// commit that confirms the order; a failure is recorded before the first compensating
    /// call; the compensation's own outcomes are appended together with the order's
    /// cancellation. A crash before an append loses nothing: the next turn repeats the calls
    /// with the same keys and gets the same answers.
    pub async fn advance(&self, order_id: Uuid, now: impl Fn() -> DateTime<Utc>) -> Result<Advanced, RunError> {
        let loaded = self.handler.load::<Saga>(order_id, None).await?;
        let mut saga = loaded.state;
        let mut unrecorded: Vec<SagaCommand> = Vec::new();
        // A saga takes a handful of steps; the bound only stops a bug from looping for ever.
        for _ in 0..64 {
            let order = self.handler.load::<Order>(order_id, None).await?.state;
            let view = OrderView {
                status: order.status,
                cancellation_reason: order.cancellation_reason.clone(),
            };
            let next = saga.next(&view, now());
            let phase = saga.phase();
            let ctx = context(&saga, &next);
            let outcome = match &next {
                Next::Wait => {
                    self.flush(&ctx, order_id, None, &mut unrecorded).await?;
                    return Ok(Advanced::Idle(phase));
                }
                Next::Complete { outcome } => {
                    metrics::counter!("orderflow_sagas_completed_total", "outcome" => *outcome).increment(1);
                    Outcome::Recorded(SagaCommand::Complete {
                        outcome: (*outcome).to_owned(),
                    })
                }
                Next::Fail {
                    reason_code,
                    reason,
                    step,
                } => Outcome::Recorded(fail(&saga, *reason_code, reason, step.clone())),
                // At most one forward effect is ever unrecorded: the compensation releases the
                // one line it may hold without a record (the frontier) and voids only once
                // every line is recorded reserved, so what came before is recorded first.
                Next::Reserve { line } => {
                    self.flush(&ctx, order_id, None, &mut unrecorded).await?;
                    self.reserve(&saga, *line).await
                }
                Next::Authorize => {
                    self.flush(&ctx, order_id, None, &mut unrecorded).await?;
                    self.authorize(&saga).await
                }
                Next::Capture => {
                    self.flush(&ctx, order_id, None, &mut unrecorded).await?;
                    self.capture(&saga).await
                }
                Next::Refund => self.refund(&saga).await,
                Next::Void => self.void(&saga).await,
                Next::Release { line, frontier } => self.release(&saga, *line, *frontier).await,
                Next::Confirm => {
                    unrecorded.push(SagaCommand::Confirmed);
                    let confirm = OrderCommand::Confirm { order_id };
                    self.flush(&ctx, order_id, Some(confirm), &mut unrecorded).await?;
                    saga = self.reload(order_id).await?;
                    continue;
                }
                Next::CancelOrder => {
                    let (reason, reason_code) = saga.failure.clone().map_or_else(
                        || ("cancelled".to_owned(), ReasonCode::Requested),
                        |f| (f.reason, f.reason_code),
                    );
                    let cancel = OrderCommand::Cancel {
                        order_id,
                        reason: trimmed_reason(&reason),
                        reason_code: Some(reason_code.as_str().to_owned()),
                    };
                    unrecorded.push(SagaCommand::OrderCancelled);
                    self.flush(&ctx, order_id, Some(cancel), &mut unrecorded).await?;
                    saga = self.reload(order_id).await?;
                    continue;
                }
            };
            let record = match outcome {
                Outcome::Recorded(record) => record,
                Outcome::Done => match done_record(&next, &saga) {
                    Some(record) => record,
                    None => continue,
                },
                Outcome::Refused { reason_code, reason } => fail(&saga, reason_code, &reason, step_name(&next)),
                Outcome::Retry(error) => {
                    self.flush(&ctx, order_id, None, &mut unrecorded).await?;
                    metrics::counter!("orderflow_saga_step_retries_total", "step" => step_label(&next)).increment(1);
                    let deadline = (saga.failure.is_none() && !saga.confirmed)
                        .then_some(saga.deadline)
                        .flatten();
                    return Ok(Advanced::Retry { phase, deadline, error });
                }
                Outcome::Park(error) => {
                    tracing::error!(%order_id, step = %step_name(&next), %error, "parking a saga: an answer it cannot act on");
                    metrics::counter!("orderflow_sagas_parked_total").increment(1);
                    unrecorded.push(SagaCommand::Park {
                        step: step_name(&next),
                        error,
                    });
                    self.flush(&ctx, order_id, None, &mut unrecorded).await?;
                    return Ok(Advanced::Idle(Phase::Parked));
                }
            };
            // Decided on the saga as this turn knows it; the commit decides again on the store.
            let failing = matches!(record, SagaCommand::Fail { .. });
            match saga.decide(record.clone()) {
                Ok(events) => {
                    saga = events.iter().fold(saga, |s, e| s.evolve(e));
                    unrecorded.push(record);
                    // A saga that compensates says so before its first compensating call: a
                    // turn resumed after a crash must not go forward again.
                    if failing {
                        self.flush(&ctx, order_id, None, &mut unrecorded).await?;
                        // The store may hold another driver's failure, or a confirmation.
                        saga = self.reload(order_id).await?;
                    }
                }
                Err(e) => {
                    tracing::debug!(%order_id, error = %e, "a saga record is refused; deciding again on the store");
                    self.flush(&ctx, order_id, None, &mut unrecorded).await?;
                    saga = self.reload(order_id).await?;
                }
            }
        }
        Err(RunError::Command(CommandError::Corrupt {
            stream_id: Category::Saga.stream_id(order_id),
            reason: "the saga took 64 steps in one turn; something decides the same step for ever".to_owned(),
        }))
    }

    async fn reload(&self, order_id: Uuid) -> Result<Saga, RunError> {
        Ok(self.handler.load::<Saga>(order_id, None).await?.state)
    }

    /// Appends what the turn has not recorded yet, with `order`'s command in the same commit.
    async fn flush(
        &self,
        ctx: &CommandContext,
        order_id: Uuid,
        order: Option<OrderCommand>,
        unrecorded: &mut Vec<SagaCommand>,
    ) -> Result<(), RunError> {
        if unrecorded.is_empty() && order.is_none() {
            return Ok(());
        }
        let records = std::mem::take(unrecorded);
        match self.handler.saga_records(ctx, order_id, order, records).await {
            Ok(_) => Ok(()),
            // The order moved meanwhile (a client cancelled it): the next decision sees it.
            Err(CommandError::Rejected(e)) => {
                tracing::debug!(%order_id, error = %e, "a saga commit was refused; deciding again");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn reserve(&self, saga: &Saga, line: usize) -> Outcome {
        let Some(held) = saga.lines.get(line) else {
            return Outcome::Park(format!("no line {line}"));
        };
        let body = Reserve {
            order_id: saga.order_id,
            quantity: held.quantity,
        };
        let path = format!("/v1/products/{}/reservations", held.product_id);
        let call = call(saga, &format!("reserve-{line}"));
        match self
            .inventory
            .post_json::<_, serde_json::Value>(&path, &body, &call)
            .await
        {
            Ok(_) => Outcome::Done,
            Err(ClientError::Rejected { status, body, .. })
                if status == StatusCode::CONFLICT && body.error.code == "insufficient_stock" =>
            {
                Outcome::Refused {
                    reason_code: ReasonCode::OutOfStock,
                    reason: body.error.message,
                }
            }
            Err(e) => read_error(e),
        }
    }

    async fn authorize(&self, saga: &Saga) -> Outcome {
        let Some(amount) = saga.amount else {
            return Outcome::Park("the saga has no amount".to_owned());
        };
        let body = Authorize {
            payment_id: saga.payment_id,
            order_id: saga.order_id,
            amount_minor: amount.amount_minor,
            currency: amount.currency.to_string(),
        };
        let call = call(saga, "authorize");
        match self
            .payments
            .post_json::<_, Authorization>("/v1/payments", &body, &call)
            .await
        {
            Ok(answer) => match answer.payment_status.as_str() {
                "authorized" => Outcome::Done,
                "declined" => Outcome::Refused {
                    reason_code: ReasonCode::PaymentDeclined,
                    reason: answer.decline_reason.unwrap_or_else(|| "declined".to_owned()),
                },
                // Voided before it was authorized: another driver compensates it.
                "voided" => Outcome::Done,
                other => Outcome::Park(format!("payments answered an authorization {other}")),
            },
            Err(e) => read_error(e),
        }
    }

    async fn capture(&self, saga: &Saga) -> Outcome {
        let amount_minor = saga.amount.map_or(0, |a| a.amount_minor);
        let path = format!("/v1/payments/{}/capture", saga.payment_id);
        let body = serde_json::json!({ "amount_minor": amount_minor });
        self.payments_call(&path, &body, &call(saga, "capture")).await
    }

    async fn refund(&self, saga: &Saga) -> Outcome {
        let path = format!("/v1/payments/{}/refund", saga.payment_id);
        let body = serde_json::json!({ "amount_minor": saga.captured_minor });
        self.payments_call(&path, &body, &call(saga, "refund")).await
    }

    async fn void(&self, saga: &Saga) -> Outcome {
        let path = format!("/v1/payments/{}/void", saga.payment_id);
        // The same body from every driver and every turn: it goes with the step's one key.
        let body = serde_json::json!({ "order_id": saga.order_id, "reason": "order cancelled by its saga" });
        self.payments_call(&path, &body, &call(saga, "void")).await
    }

    async fn payments_call(&self, path: &str, body: &serde_json::Value, call: &CallContext) -> Outcome {
        match self.payments.post_json::<_, serde_json::Value>(path, body, call).await {
            Ok(_) => Outcome::Done,
            Err(e) => read_error(e),
        }
    }

    async fn release(&self, saga: &Saga, line: usize, frontier: bool) -> Outcome {
        let Some(held) = saga.lines.get(line) else {
            return Outcome::Park(format!("no line {line}"));
        };
        let path = format!(
            "/v1/products/{}/reservations/{}/release",
            held.product_id, saga.order_id
        );
        let step = if frontier {
            format!("release-{line}-frontier")
        } else {
            format!("release-{line}")
        };
        match self
            .inventory
            .post_json::<_, serde_json::Value>(&path, &serde_json::json!({}), &call(saga, &step))
            .await
        {
            Ok(_) => Outcome::Done,
            Err(e) => read_error(e),
        }
    }
}

/// What a step that succeeded records.
fn done_record(next: &Next, saga: &Saga) -> Option<SagaCommand> {
    match *next {
        Next::Reserve { line } => Some(SagaCommand::Reserved { line }),
        Next::Authorize => Some(SagaCommand::Authorized),
        Next::Capture => Some(SagaCommand::Captured {
            amount_minor: saga.amount.map_or(0, |a| a.amount_minor),
        }),
        Next::Refund => Some(SagaCommand::Refunded {
            amount_minor: saga.captured_minor,
        }),
        Next::Void => Some(SagaCommand::Voided),
        Next::Release { line, .. } => Some(SagaCommand::Released { line }),
        _ => None,
    }
}

/// The saga compensates from now on.
fn fail(saga: &Saga, reason_code: ReasonCode, reason: &str, step: String) -> SagaCommand {
    tracing::info!(order_id = %saga.order_id, %reason_code, %reason, %step, "the saga compensates");
    metrics::counter!("orderflow_saga_compensations_total", "reason_code" => reason_code.as_str()).increment(1);
    if matches!(reason_code, ReasonCode::TimedOut | ReasonCode::PaymentUnavailable) {
        metrics::counter!("orderflow_saga_deadlines_expired_total", "reason_code" => reason_code.as_str()).increment(1);
    }
    SagaCommand::Fail {
        reason_code,
        reason: trimmed_reason(reason),
        step,
    }
}

/// A failed call: what may pass is retried, anything else parks the saga.
fn read_error(error: ClientError) -> Outcome {
    match error {
        ClientError::Unavailable { .. } | ClientError::CircuitOpen { .. } => Outcome::Retry(error.to_string()),
        ClientError::Failed { status, .. } if status.is_some_and(|s| s.is_server_error()) => {
            Outcome::Retry(error.to_string())
        }
        other => Outcome::Park(other.to_string()),
    }
}

/// What every call of a saga's step carries: the order's correlation id, the saga's step as the
/// cause, and the step's idempotency key.
fn call(saga: &Saga, step: &str) -> CallContext {
    CallContext::new(saga.correlation_id.clone(), saga.key(step)).with_idempotency_key(saga.key(step))
}

/// What the saga's records carry.
fn context(saga: &Saga, next: &Next) -> CommandContext {
    CommandContext {
        metadata: EventMetadata {
            correlation_id: saga.correlation_id.clone(),
            causation_id: saga.key(&step_name(next)),
            actor: ACTOR.to_owned(),
        },
        idempotency: None,
        if_match: None,
    }
}

fn step_name(next: &Next) -> String {
    match next {
        Next::Reserve { line } => format!("reserve {line}"),
        Next::Release { line, .. } => format!("release {line}"),
        other => step_label(other).to_owned(),
    }
}

fn step_label(next: &Next) -> &'static str {
    match next {
        Next::Reserve { .. } => "reserve",
        Next::Authorize => "authorize",
        Next::Confirm => "confirm",
        Next::Capture => "capture",
        Next::Refund => "refund",
        Next::Void => "void",
        Next::Release { .. } => "release",
        Next::CancelOrder => "cancel",
        Next::Fail { .. } => "fail",
        Next::Complete { .. } => "complete",
        Next::Wait => "wait",
    }
}

/// A reason the domain accepts: trimmed, non-empty, not too long.
fn trimmed_reason(reason: &str) -> String {
    let trimmed: String = reason.trim().chars().take(crate::domain::MAX_REASON_CHARS).collect();
    if trimmed.is_empty() {
        "cancelled".to_owned()
    } else {
        trimmed
    }
}
