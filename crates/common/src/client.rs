//! The HTTP client services use to call each other: one pooled `reqwest::Client` per
//! process, the cluster token on every call, short timeouts, typed failures.
//!
//! It follows no redirect (a redirect would carry the cluster token to whatever host it
//! names: a `3xx` is an error like any other), and reads no answer past
//! [`MAX_ANSWER_BYTES`] (a broken or hostile server cannot make a caller allocate
//! without bound).
use crate::error::ErrorBody;
use crate::types::CLUSTER_TOKEN_HEADER;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// The largest answer body a call reads.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Why a call to another service failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No answer: connection refused or reset, timeout.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// An answer with a non-2xx status.
    #[error("status {status}: {}", body.error)]
    Status { status: u16, body: ErrorBody },
    /// A 2xx answer whose body did not decode.
    #[error("bad answer: {0}")]
    Decode(String),
    /// An answer body larger than [`MAX_ANSWER_BYTES`].
    #[error("answer larger than {limit} bytes")]
    TooLarge { limit: usize },
}

impl CallError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A cheap-to-clone handle on the process's pooled client.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
}

impl Client {
    /// A client that sends `token` as the cluster token, with a 5 s request timeout.
    pub fn new(token: &str) -> Client {
        Client::with_timeout(token, Duration::from_secs(5))
    }

    pub fn with_timeout(token: &str, timeout: Duration) -> Client {
        let mut headers = HeaderMap::new();
        let mut value = HeaderValue::from_str(token).expect("cluster token is visible ASCII");
        value.set_sensitive(true);
        headers.insert(CLUSTER_TOKEN_HEADER, value);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_millis(500))
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(512)
            .tcp_nodelay(true)
            .build()
            .expect("the HTTP client builds");
        Client { http }
    }

    /// The underlying reqwest client (for requests this API does not cover).
    pub fn raw(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends a request; returns the body of a 2xx answer.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Bytes, CallError> {
        self.send_timed(req).await.map(|(body, _)| body)
    }

    /// Sends a request; returns the body of a 2xx answer and its `Server-Timing` header.
    pub async fn send_timed(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(Bytes, Option<String>), CallError> {
        self.send_with_header(req, crate::timing::SERVER_TIMING)
            .await
    }

    /// Sends a request; returns the body of a 2xx answer and its header `name`.
    pub async fn send_with_header(
        &self,
        req: reqwest::RequestBuilder,
        name: &str,
    ) -> Result<(Bytes, Option<String>), CallError> {
        let resp = req
            .send()
            .await
            .map_err(|e| CallError::Unreachable(error_chain(&e)))?;
        let status = resp.status();
        let header = resp
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_limited(resp, MAX_ANSWER_BYTES).await?;
        if status.is_success() {
            Ok((body, header))
        } else {
            let body = serde_json::from_slice(&body).unwrap_or_else(|_| ErrorBody {
                error: String::from_utf8_lossy(&body).chars().take(200).collect(),
                ..ErrorBody::default()
            });
            Err(CallError::Status {
                status: status.as_u16(),
                body,
            })
        }
    }

    pub async fn get_bytes(&self, url: &str) -> Result<Bytes, CallError> {
        self.send(self.http.get(url)).await
    }

    pub async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, CallError> {
        decode(self.get_bytes(url).await?)
    }

    /// POST with optional headers and no body.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<T, CallError> {
        let mut req = self.http.post(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        decode(self.send(req).await?)
    }

    /// POST a JSON body.
    pub async fn post_body<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
    ) -> Result<T, CallError> {
        decode(self.send(self.http.post(url).json(body)).await?)
    }
}

/// The body of `resp`, refused once it passes `limit` bytes (declared or read).
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Bytes, CallError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(CallError::TooLarge { limit });
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| CallError::Unreachable(error_chain(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(CallError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn decode<T: DeserializeOwned>(body: Bytes) -> Result<T, CallError> {
    serde_json::from_slice(&body).map_err(|e| CallError::Decode(e.to_string()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What [`encode`] leaves as it is: RFC 3986's unreserved characters (letters, digits,
/// `-._~`).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a query value: every byte but the unreserved characters as `%XX`
/// (a space is `%20`).
pub fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("graduate school"), "graduate%20school");
        assert_eq!(encode("a-b_c.d~e09"), "a-b_c.d~e09");
        assert_eq!(
            encode("http://127.0.0.1:8001/x?a=b&c+d*"),
            "http%3A%2F%2F127.0.0.1%3A8001%2Fx%3Fa%3Db%26c%2Bd%2A"
        );
        assert_eq!(encode("é"), "%C3%A9");
    }
}
