//! The payments service's payment provider: [`PaymentGateway`], and the simulated provider
//! that serves the demo and the tests ([`SimulatedGateway`]) until a real one plugs in.
//!
//! The payments service asks the provider first and records what it answered: an
//! authorization becomes `PaymentAuthorized` or `PaymentDeclined`; a capture, void or refund
//! its event. A provider that does not answer (down, too slow) records nothing, and the
//! payments service answers 503 `gateway_unavailable`: the caller (the saga) tries again with
//! the same payment id, which a provider must treat as the same request.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use event_schemas::Money;
use uuid::Uuid;

/// What a provider answers to an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Authorized,
    Declined { reason: String },
}

/// The provider did not answer: nothing happened there, or what happened will happen again
/// the same way when asked again with the same payment id.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("the payment provider is unavailable: {0}")]
pub struct GatewayUnavailable(pub String);

/// A payment provider. Every call is keyed by the payment id: asking again gets the same
/// answer, and never moves money twice.
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    async fn authorize(
        &self,
        payment_id: Uuid,
        order_id: Uuid,
        amount: Money,
    ) -> Result<Authorization, GatewayUnavailable>;
    async fn capture(&self, payment_id: Uuid, amount: Money) -> Result<(), GatewayUnavailable>;
    async fn void(&self, payment_id: Uuid) -> Result<(), GatewayUnavailable>;
    async fn refund(&self, payment_id: Uuid, amount: Money) -> Result<(), GatewayUnavailable>;
}

/// How the simulated provider behaves; changed at run time by `PUT /v1/gateway`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// The share of authorizations declined, from 0 to 1. Which ones is a function of the
    /// payment id, so a repeated authorization gets the same answer.
    pub decline_rate: f64,
    /// How long every call takes, in milliseconds (at most a minute).
    #[serde(deserialize_with = "whole_milliseconds")]
    pub latency_ms: u64,
    /// While true, every call fails as if the provider were down.
    pub unavailable: bool,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            decline_rate: 0.0,
            latency_ms: 0,
            unavailable: false,
        }
    }
}

/// A count of milliseconds, also when a client writes it `250.0`.
fn whole_milliseconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    crate::http::non_negative(deserializer).map(|ms| ms as u64)
}

/// Longest simulated latency: a minute.
pub const MAX_LATENCY_MS: u64 = 60_000;

impl GatewaySettings {
    /// The settings' own checks: a rate between 0 and 1, a latency of at most a minute.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.decline_rate) || self.decline_rate.is_nan() {
            return Err(format!(
                "decline_rate must be between 0 and 1, not {}",
                self.decline_rate
            ));
        }
        if self.latency_ms > MAX_LATENCY_MS {
            return Err(format!(
                "latency_ms must be at most {MAX_LATENCY_MS}, not {}",
                self.latency_ms
            ));
        }
        Ok(())
    }
}

/// The simulated provider: declines a share of authorizations, takes a set time, and can be
/// made unavailable.
#[derive(Debug, Clone, Default)]
pub struct SimulatedGateway {
    settings: Arc<RwLock<GatewaySettings>>,
}

impl SimulatedGateway {
    pub fn new(settings: GatewaySettings) -> Self {
        SimulatedGateway {
            settings: Arc::new(RwLock::new(settings)),
        }
    }

    pub fn settings(&self) -> GatewaySettings {
        *self.settings.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set(&self, settings: GatewaySettings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    /// Waits the latency, then fails if unavailable.
    async fn call(&self) -> Result<GatewaySettings, GatewayUnavailable> {
        let settings = self.settings();
        if settings.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(settings.latency_ms)).await;
        }
        if settings.unavailable {
            return Err(GatewayUnavailable(
                "the simulated provider is set unavailable".to_owned(),
            ));
        }
        Ok(settings)
    }
}

/// Where in [0, 1) a payment id falls: the same for every call with it.
fn draw(payment_id: Uuid) -> f64 {
    let bits = payment_id.as_u128();
    let mixed = (bits ^ (bits >> 64)) as u64;
    let mixed = mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    async fn authorize(
        &self,
        payment_id: Uuid,
        _order_id: Uuid,
        _amount: Money,
    ) -> Result<Authorization, GatewayUnavailable> {
        let settings = self.call().await?;
        if draw(payment_id) < settings.decline_rate {
            return Ok(Authorization::Declined {
                reason: "insufficient funds (simulated)".to_owned(),
            });
        }
        Ok(Authorization::Authorized)
    }

    async fn capture(&self, _payment_id: Uuid, _amount: Money) -> Result<(), GatewayUnavailable> {
        self.call().await.map(drop)
    }

    async fn void(&self, _payment_id: Uuid) -> Result<(), GatewayUnavailable> {
        self.call().await.map(drop)
    }

    async fn refund(&self, _payment_id: Uuid, _amount: Money) -> Result<(), GatewayUnavailable> {
        self.call().await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use event_schemas::Currency;

    use super::*;

    fn euros(minor: i64) -> Money {
        Money::new(minor, Currency::EUR)
    }

    #[tokio::test]
    async fn a_payment_id_gets_the_same_answer_every_time_and_the_rate_holds() {
        let gateway = SimulatedGateway::new(GatewaySettings {
            decline_rate: 0.25,
            ..GatewaySettings::default()
        });
        let mut declined = 0;
        for _ in 0..4_000 {
            let id = Uuid::new_v4();
            let first = gateway.authorize(id, Uuid::new_v4(), euros(100)).await;
            let again = gateway.authorize(id, Uuid::new_v4(), euros(100)).await;
            assert_eq!(first, again, "the same payment id, the same answer");
            if matches!(first, Ok(Authorization::Declined { .. })) {
                declined += 1;
            }
        }
        assert!(
            (800..1_200).contains(&declined),
            "about a quarter declined: {declined} of 4000"
        );
    }

    #[tokio::test]
    async fn unavailable_fails_every_call_until_set_back() {
        let gateway = SimulatedGateway::default();
        gateway.set(GatewaySettings {
            unavailable: true,
            ..GatewaySettings::default()
        });
        let id = Uuid::new_v4();
        assert!(gateway.authorize(id, id, euros(1)).await.is_err());
        assert!(gateway.void(id).await.is_err());
        gateway.set(GatewaySettings::default());
        assert_eq!(gateway.authorize(id, id, euros(1)).await, Ok(Authorization::Authorized));
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        for bad in [
            GatewaySettings {
                decline_rate: 1.5,
                ..GatewaySettings::default()
            },
            GatewaySettings {
                decline_rate: f64::NAN,
                ..GatewaySettings::default()
            },
            GatewaySettings {
                latency_ms: 60_001,
                ..GatewaySettings::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(GatewaySettings::default().validate().is_ok());
    }
}
