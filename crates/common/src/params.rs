//! Strict query-string parsing: every error names the parameter and what was wrong.
use crate::ApiError;
use std::str::FromStr;

/// The longest `topic` accepted, in characters.
pub const MAX_TOPIC_CHARS: usize = 256;

/// What [`Params::u63`] accepts.
const U63: &str = "a whole number below 2^63";

/// The decoded parameters of one query string.
#[derive(Debug, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parses `a=1&b=x` (percent- and plus-decoded).
    pub fn parse(query: &str) -> Params {
        Params {
            pairs: form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        }
    }

    /// The raw value of `name`; an error if it is given more than once.
    pub fn optional_str(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut found = None;
        for (k, v) in &self.pairs {
            if k == name {
                if found.is_some() {
                    return Err(ApiError::BadRequest(format!(
                        "parameter {name} is given more than once"
                    )));
                }
                found = Some(v.as_str());
            }
        }
        Ok(found)
    }

    /// The raw value of a required parameter.
    pub fn required_str(&self, name: &str) -> Result<&str, ApiError> {
        self.optional_str(name)?
            .ok_or_else(|| ApiError::BadRequest(format!("missing parameter {name}")))
    }

    /// A required parameter parsed as `T`; `what` describes the expected form.
    pub fn required<T: FromStr>(&self, name: &str, what: &str) -> Result<T, ApiError> {
        let raw = self.required_str(name)?;
        parse_value(name, raw, what)
    }

    /// An optional parameter parsed as `T`.
    pub fn optional<T: FromStr>(&self, name: &str, what: &str) -> Result<Option<T>, ApiError> {
        match self.optional_str(name)? {
            None => Ok(None),
            Some(raw) => parse_value(name, raw, what).map(Some),
        }
    }

    /// An optional whole number below 2^63 (the range every JSON tool reads exactly).
    pub fn optional_u63(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.optional::<i64>(name, U63)?
            .map(u64::try_from)
            .transpose()
            .map_err(|_| ApiError::BadRequest(format!("parameter {name} must be {U63}")))
    }

    /// A required whole number below 2^63.
    pub fn u63(&self, name: &str) -> Result<u64, ApiError> {
        self.required_str(name)?;
        Ok(self.optional_u63(name)?.unwrap_or_default())
    }

    /// The `item_number` parameter: a positive integer.
    pub fn item_number(&self) -> Result<u32, ApiError> {
        let n: u32 = self.required("item_number", "a positive integer")?;
        if n == 0 {
            return Err(ApiError::BadRequest(
                "parameter item_number must be a positive integer, got \"0\"".into(),
            ));
        }
        Ok(n)
    }

    /// The `topic` parameter: not only whitespace, at most [`MAX_TOPIC_CHARS`] characters.
    pub fn topic(&self) -> Result<&str, ApiError> {
        let t = self.required_str("topic")?;
        if t.trim().is_empty() {
            return Err(ApiError::BadRequest(
                "parameter topic must not be empty".into(),
            ));
        }
        if t.chars().count() > MAX_TOPIC_CHARS {
            return Err(ApiError::BadRequest(format!(
                "parameter topic is longer than {MAX_TOPIC_CHARS} characters"
            )));
        }
        Ok(t)
    }
}

fn parse_value<T: FromStr>(name: &str, raw: &str, what: &str) -> Result<T, ApiError> {
    raw.trim().parse::<T>().map_err(|_| {
        let shown: String = raw.chars().take(40).collect();
        ApiError::BadRequest(format!("parameter {name} must be {what}, got {shown:?}"))
    })
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

/// Validates the idempotency key of entry `i` of a batch body's list `list`.
pub fn batch_key(list: &str, i: usize, key: &str) -> Result<String, ApiError> {
    idempotency_key(Some(key.as_bytes()))
        .map(|k| k.unwrap_or_default())
        .map_err(|e| ApiError::BadRequest(format!("{list}[{i}].key: {e}")))
}

/// Validates a client's `Idempotency-Key`: 1 to 128 visible ASCII characters.
pub fn idempotency_key(raw: Option<&[u8]>) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let ok = !raw.is_empty() && raw.len() <= 128 && raw.iter().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(ApiError::BadRequest(
            "header Idempotency-Key must be 1 to 128 visible ASCII characters".into(),
        ));
    }
    Ok(Some(String::from_utf8_lossy(raw).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_number_errors_name_the_parameter() {
        let e = Params::parse("").item_number().unwrap_err();
        assert_eq!(e.to_string(), "missing parameter item_number");
        let e = Params::parse("item_number=abc").item_number().unwrap_err();
        assert!(e
            .to_string()
            .contains("item_number must be a positive integer"));
        let e = Params::parse("item_number=-1").item_number().unwrap_err();
        assert!(e.to_string().contains("\"-1\""));
        let e = Params::parse("item_number=0").item_number().unwrap_err();
        assert!(e.to_string().contains("positive"));
        let e = Params::parse("item_number=1&item_number=2")
            .item_number()
            .unwrap_err();
        assert!(e.to_string().contains("more than once"));
        assert_eq!(Params::parse("item_number=7").item_number().unwrap(), 7);
    }

    #[test]
    fn topic_is_decoded_and_checked() {
        let p = Params::parse("topic=distributed+systems");
        assert_eq!(p.topic().unwrap(), "distributed systems");
        let p = Params::parse("topic=graduate%20school");
        assert_eq!(p.topic().unwrap(), "graduate school");
        assert!(Params::parse("topic=").topic().is_err());
        assert!(Params::parse("topic=%20").topic().is_err());
    }

    #[test]
    fn idempotency_keys_are_validated() {
        assert_eq!(idempotency_key(None).unwrap(), None);
        assert_eq!(
            idempotency_key(Some(b"abc-1")).unwrap().as_deref(),
            Some("abc-1")
        );
        assert!(idempotency_key(Some(b"")).is_err());
        assert!(idempotency_key(Some(b"a b")).is_err());
        assert!(idempotency_key(Some(&[b'x'; 129])).is_err());
    }
}
