//! [`Money`] in integer minor units and its validated [`Currency`] code.

use std::fmt;
use std::str::FromStr;

/// An ISO 4217 alphabetic currency code: exactly three ASCII upper-case letters, e.g. `EUR`.
///
/// Only the form is checked, not whether ISO has assigned the code: a shop that sells in a
/// currency this crate has never heard of must still be able to record it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Euro.
    pub const EUR: Self = Self(*b"EUR");
    /// US dollar.
    pub const USD: Self = Self(*b"USD");
    /// Pound sterling.
    pub const GBP: Self = Self(*b"GBP");

    /// Validates `code`: three ASCII upper-case letters, nothing else (no trimming, no case
    /// folding: `"eur"` is rejected so that one currency has one spelling in the store).
    pub fn new(code: &str) -> Result<Self, InvalidCurrency> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(InvalidCurrency { code: code.to_owned() }),
        }
    }

    /// The code, e.g. `"EUR"`.
    pub fn as_str(&self) -> &str {
        // `new` and the constants only ever store ASCII letters, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl FromStr for Currency {
    type Err = InvalidCurrency;

    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Self::new(code)
    }
}

impl TryFrom<&str> for Currency {
    type Error = InvalidCurrency;

    fn try_from(code: &str) -> Result<Self, Self::Error> {
        Self::new(code)
    }
}

impl AsRef<str> for Currency {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// A string that is not three ASCII upper-case letters was given as a currency code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?} is not a currency code (three upper-case letters, e.g. \"EUR\")")]
pub struct InvalidCurrency {
    /// The rejected input.
    pub code: String,
}

/// An amount of money: an integer count of the currency's minor units, never a float.
///
/// `Money { amount_minor: 1999, currency: Currency::EUR }` is 19.99 EUR. Which power of ten a
/// currency's minor unit is does not matter here: amounts are only ever added, multiplied by
/// quantities and compared, always in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub const fn new(amount_minor: i64, currency: Currency) -> Self {
        Self { amount_minor, currency }
    }
}

/// A currency serializes as its code (`"EUR"`) and deserializes through [`Currency::new`], so a
/// snapshot or JSON body can never smuggle in an invalid code.
impl serde::Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Currency::new(&code).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_three_upper_case_letters() {
        let eur = Currency::new("EUR").expect("EUR is valid");
        assert_eq!(eur, Currency::EUR);
        assert_eq!(eur.as_str(), "EUR");
        assert_eq!(eur.to_string(), "EUR");
        assert_eq!("JPY".parse::<Currency>().map(|c| c.to_string()), Ok("JPY".to_owned()));
    }

    #[test]
    fn rejects_anything_else() {
        for code in ["", "EU", "EURO", "eur", "Eur", "E1R", " EUR", "EUR ", "ÉUR", "€"] {
            let err = Currency::new(code).expect_err(code);
            assert_eq!(err.code, code);
        }
    }
}
