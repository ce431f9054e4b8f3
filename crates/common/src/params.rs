//! Query parameters. Each route's parameters are one struct: serde `Deserialize` for the
//! handler, which takes it through the [`Query`] extractor, and utoipa `IntoParams` for its
//! OpenAPI document, so the two cannot drift. Value types that check more than their Rust
//! type ([`ItemNumberParam`], [`Topic`], [`CostOrNa`]) parse at this boundary.
//!
//! Every error is a 400 whose JSON names the parameter and what was wrong: `missing
//! parameter item_number`, `parameter item_number must be a positive integer, got "0"`,
//! `parameter topic is given more than once`. Parameters a route does not know are
//! ignored.
use crate::idempotency::IdempotencyKey;
use crate::types::ItemNumber;
use crate::ApiError;
use actix_web::{dev::Payload, FromRequest, HttpRequest};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// The longest `topic` accepted, in characters.
pub const MAX_TOPIC_CHARS: usize = 256;

/// Query parameters as `T`, or a 400 naming the parameter.
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

impl<T> std::ops::Deref for Query<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(parse(req.query_string()).map(Query))
    }
}

/// Parses a query string (`a=1&b=x`, percent- and plus-decoded) as `T`.
pub fn parse<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    T::deserialize(Pairs {
        pairs: pairs.into_iter(),
        current: None,
    })
    .map_err(|e| ApiError::BadRequest(e.message()))
}

/// `item_number`: a positive integer below 2^32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemNumberParam(pub ItemNumber);

impl<'de> Deserialize<'de> for ItemNumberParam {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.parse::<ItemNumber>() {
            Ok(n) => Ok(ItemNumberParam(n)),
            Err(_) => Err(de::Error::invalid_value(
                de::Unexpected::Str(&raw),
                &"a positive integer",
            )),
        }
    }
}

/// `topic`: not only whitespace, at most [`MAX_TOPIC_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic(pub String);

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = String::deserialize(d)?;
        if t.trim().is_empty() {
            return Err(de::Error::custom("parameter topic must not be empty"));
        }
        if t.chars().count() > MAX_TOPIC_CHARS {
            return Err(de::Error::custom(format!(
                "parameter topic is longer than {MAX_TOPIC_CHARS} characters"
            )));
        }
        Ok(Topic(t))
    }
}

/// A price, or `na` (the seed's "keep the price").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostOrNa(pub Option<u32>);

impl<'de> Deserialize<'de> for CostOrNa {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        if raw == "na" {
            return Ok(CostOrNa(None));
        }
        raw.trim()
            .parse::<u32>()
            .map(|c| CostOrNa(Some(c)))
            .map_err(|_| {
                de::Error::invalid_value(de::Unexpected::Str(&raw), &"a whole number or \"na\"")
            })
    }
}

/// Why a query does not read as its struct.
#[derive(Debug)]
enum ParamError {
    /// The whole message.
    Message(String),
    /// What a value should have been; [`Pairs`] adds the parameter and the value.
    Expected(String),
}

impl ParamError {
    /// This error about the value `raw` of parameter `key`.
    fn about(self, key: &str, raw: &str) -> ParamError {
        match self {
            ParamError::Expected(what) => {
                let shown: String = raw.chars().take(40).collect();
                ParamError::Message(format!("parameter {key} must be {what}, got {shown:?}"))
            }
            m => m,
        }
    }

    fn message(self) -> String {
        match self {
            ParamError::Message(m) | ParamError::Expected(m) => m,
        }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::Message(m) => f.write_str(m),
            ParamError::Expected(what) => write!(f, "must be {what}"),
        }
    }
}

impl std::error::Error for ParamError {}

impl de::Error for ParamError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ParamError::Message(msg.to_string())
    }
    fn invalid_type(_: de::Unexpected, exp: &dyn de::Expected) -> Self {
        ParamError::Expected(exp.to_string())
    }
    fn invalid_value(_: de::Unexpected, exp: &dyn de::Expected) -> Self {
        ParamError::Expected(exp.to_string())
    }
    fn missing_field(field: &'static str) -> Self {
        ParamError::Message(format!("missing parameter {field}"))
    }
    fn duplicate_field(field: &'static str) -> Self {
        ParamError::Message(format!("parameter {field} is given more than once"))
    }
}

/// The query's pairs, as a map of parameters to values.
struct Pairs {
    pairs: std::vec::IntoIter<(String, String)>,
    current: Option<(String, String)>,
}

impl<'de> de::Deserializer<'de> for Pairs {
    type Error = ParamError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ParamError> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de> de::MapAccess<'de> for Pairs {
    type Error = ParamError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ParamError> {
        let Some((k, v)) = self.pairs.next() else {
            return Ok(None);
        };
        let key = seed.deserialize(k.clone().into_deserializer())?;
        self.current = Some((k, v));
        Ok(Some(key))
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ParamError> {
        let (k, v) = self
            .current
            .take()
            .ok_or_else(|| ParamError::Message("a value without its parameter".into()))?;
        seed.deserialize(Value(&v)).map_err(|e| e.about(&k, &v))
    }
}

/// One parameter's value: numbers parse from its text (spaces around them allowed).
struct Value<'a>(&'a str);

macro_rules! parse_number {
    ($($method:ident $visit:ident $t:ty, $what:expr;)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ParamError> {
            match self.0.trim().parse::<$t>() {
                Ok(n) => visitor.$visit(n),
                Err(_) => Err(ParamError::Expected($what.into())),
            }
        })*
    };
}

const WHOLE: &str = "a whole number >= 0";
const SIGNED: &str = "a whole number";

impl<'de> de::Deserializer<'de> for Value<'_> {
    type Error = ParamError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ParamError> {
        visitor.visit_str(self.0)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ParamError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ParamError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ParamError> {
        match self.0.trim() {
            "1" | "true" => visitor.visit_bool(true),
            "0" | "false" => visitor.visit_bool(false),
            _ => Err(ParamError::Expected("1, true, 0 or false".into())),
        }
    }

    parse_number! {
        deserialize_u8 visit_u8 u8, WHOLE;
        deserialize_u16 visit_u16 u16, WHOLE;
        deserialize_u32 visit_u32 u32, WHOLE;
        deserialize_u64 visit_u64 u64, WHOLE;
        deserialize_i8 visit_i8 i8, SIGNED;
        deserialize_i16 visit_i16 i16, SIGNED;
        deserialize_i32 visit_i32 i32, SIGNED;
        deserialize_i64 visit_i64 i64, SIGNED;
    }

    serde::forward_to_deserialize_any! {
        i128 u128 f32 f64 char str string bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// Validates the size of a batch body's list `name` (1 to [`crate::types::MAX_BATCH`]).
pub fn batch_len(name: &str, n: usize) -> Result<(), ApiError> {
    let max = crate::types::MAX_BATCH;
    if n == 0 || n > max {
        return Err(ApiError::BadRequest(format!(
            "{name} must hold 1 to {max} entries, got {n}"
        )));
    }
    Ok(())
}

/// The idempotency key of entry `i` of a batch body's list `list`.
pub fn batch_key(list: &str, i: usize, key: &str) -> Result<IdempotencyKey, ApiError> {
    IdempotencyKey::parse(key.as_bytes())
        .map_err(|e| ApiError::BadRequest(format!("{list}[{i}].key: header Idempotency-Key {e}")))
}

/// A client's `Idempotency-Key` header, if it sent one.
pub fn idempotency_key(raw: Option<&[u8]>) -> Result<Option<IdempotencyKey>, ApiError> {
    raw.map(|raw| {
        IdempotencyKey::parse(raw)
            .map_err(|e| ApiError::BadRequest(format!("header Idempotency-Key {e}")))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Item {
        item_number: ItemNumberParam,
    }

    #[derive(Debug, Deserialize)]
    struct Search {
        topic: Topic,
    }

    #[derive(Debug, Deserialize)]
    struct Update {
        stock: Option<i64>,
        cost: Option<CostOrNa>,
        consistent: Option<bool>,
    }

    fn item(q: &str) -> Result<u32, String> {
        parse::<Item>(q)
            .map(|i| i.item_number.0.get())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn item_number_errors_name_the_parameter() {
        assert_eq!(item("").unwrap_err(), "missing parameter item_number");
        assert!(item("item_number=abc")
            .unwrap_err()
            .contains("item_number must be a positive integer"));
        assert!(item("item_number=-1").unwrap_err().contains("\"-1\""));
        assert_eq!(
            item("item_number=0").unwrap_err(),
            "parameter item_number must be a positive integer, got \"0\""
        );
        assert!(item("item_number=1&item_number=2")
            .unwrap_err()
            .contains("more than once"));
        assert_eq!(item("item_number=7").unwrap(), 7);
        assert_eq!(item("item_number=7&other=x&other=y").unwrap(), 7);
    }

    #[test]
    fn topic_is_decoded_and_checked() {
        let t = |q: &str| parse::<Search>(q).map(|s| s.topic.0);
        assert_eq!(
            t("topic=distributed+systems").unwrap(),
            "distributed systems"
        );
        assert_eq!(t("topic=graduate%20school").unwrap(), "graduate school");
        assert!(t("topic=").is_err());
        assert!(t("topic=%20").is_err());
        assert_eq!(t("").unwrap_err().to_string(), "missing parameter topic");
    }

    #[test]
    fn numbers_cost_and_flags_say_what_they_expect() {
        let u = parse::<Update>("stock=-3&cost=na&consistent=1").unwrap();
        assert_eq!(
            (u.stock, u.cost, u.consistent),
            (Some(-3), Some(CostOrNa(None)), Some(true))
        );
        assert_eq!(
            parse::<Update>("cost=12").unwrap().cost,
            Some(CostOrNa(Some(12)))
        );
        let e = parse::<Update>("stock=x").unwrap_err().to_string();
        assert_eq!(e, "parameter stock must be a whole number, got \"x\"");
        let e = parse::<Update>("cost=-1").unwrap_err().to_string();
        assert_eq!(
            e,
            "parameter cost must be a whole number or \"na\", got \"-1\""
        );
        assert!(parse::<Update>("").is_ok());
    }

    #[test]
    fn idempotency_keys_are_validated() {
        assert_eq!(idempotency_key(None).unwrap(), None);
        assert_eq!(
            idempotency_key(Some(b"abc-1"))
                .unwrap()
                .as_ref()
                .map(IdempotencyKey::as_str),
            Some("abc-1")
        );
        assert!(idempotency_key(Some(b"")).is_err());
        assert!(idempotency_key(Some(b"a b")).is_err());
        assert!(idempotency_key(Some(&[b'x'; 129])).is_err());
    }
}
