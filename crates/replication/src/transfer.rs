//! Replication messages on the wire: one HTTP POST per batch to a peer's
//! `/replication/msg?from=ID` (bincode `Vec<Msg>`, cluster token), and, for a batch larger
//! than one part (a snapshot), a transfer in parts that the receiver reassembles.
//!
//! A part is `POST /replication/msg?from=ID&xfer=X&offset=O&total=T` carrying bytes
//! `O..O+len` of the encoded batch. The sender sends the parts of one transfer in order and
//! gives up at the first error (the protocol sends the snapshot again later). The receiver
//! keeps one transfer in progress per peer: a part at offset 0 starts a new one (dropping
//! an unfinished one), a part that does not continue the current transfer is refused with
//! 409, and the last part hands the whole batch to the protocol. So no request body is
//! larger than [`PART_BYTES`] whatever the size of a snapshot: the replicas' body limit
//! ([`bookstore_common::server::Limits::replica`]) is no cliff for the state's size.
use crate::protocol::ReplicaId;
use bookstore_common::client::{CallError, Client};
use bookstore_common::ApiError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

/// The largest request body a sender makes: batches up to this size go whole, larger
/// ones in parts of this size.
pub const PART_BYTES: usize = 4 << 20;

/// Sends `body` (an encoded batch) to `url` (`.../replication/msg?from=ID`): whole when it
/// fits in `part_bytes`, else in parts.
pub async fn post(
    client: &Client,
    url: &str,
    body: Vec<u8>,
    part_bytes: usize,
) -> Result<(), CallError> {
    if body.len() <= part_bytes {
        let size = body.len();
        return post_part(client, url.to_string(), body.into(), size).await;
    }
    let xfer = next_xfer();
    let total = body.len();
    // Each part is a view of the one buffer, not a copy.
    let body = bytes::Bytes::from(body);
    let step = part_bytes.max(1);
    for offset in (0..total).step_by(step) {
        let part = body.slice(offset..total.min(offset + step));
        let url = format!("{url}&xfer={xfer}&offset={offset}&total={total}");
        post_part(client, url, part, total).await?;
    }
    Ok(())
}

/// A transfer id no earlier transfer of this process had (and, by the clock, unlikely one
/// of an earlier run of it).
fn next_xfer() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    clock.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Posts one body; the receiver may decode `batch_bytes` before it answers (the whole
/// batch, on the last part).
async fn post_part(
    client: &Client,
    url: String,
    body: bytes::Bytes,
    batch_bytes: usize,
) -> Result<(), CallError> {
    // A batch is usually a few kB; a snapshot tens of MB: give it time.
    let timeout = Duration::from_secs(1) + Duration::from_millis(batch_bytes as u64 / 10_000);
    let req = client
        .raw()
        .post(url)
        .timeout(timeout)
        .header("content-type", "application/octet-stream")
        .body(body);
    client.send(req).await.map(|_| ())
}

/// One transfer being received.
struct Transfer {
    xfer: u64,
    total: usize,
    buf: Vec<u8>,
}

/// The transfers in progress, one per peer.
#[derive(Default)]
pub struct Assemblies(Mutex<HashMap<ReplicaId, Transfer>>);

/// Query of `POST /replication/msg`: who sends, and, for a part of a larger batch, where
/// the part goes.
#[derive(Debug, Clone, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MsgQuery {
    /// The sending replica's id.
    pub from: ReplicaId,
    /// The transfer this part belongs to (absent: the body is a whole batch).
    pub xfer: Option<u64>,
    /// Where the part starts in the whole batch, in bytes (with `xfer`).
    pub offset: Option<u64>,
    /// The whole batch's size in bytes (with `xfer`).
    pub total: Option<u64>,
}

/// Where a part of a transfer is: `Some` for a part, `None` for a whole batch.
pub fn part_of(q: &MsgQuery) -> Result<Option<(u64, usize, usize)>, ApiError> {
    let Some(xfer) = q.xfer else {
        return Ok(None);
    };
    let need = |v: Option<u64>, name: &str| {
        v.and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| ApiError::BadRequest(format!("missing parameter {name}")))
    };
    Ok(Some((
        xfer,
        need(q.offset, "offset")?,
        need(q.total, "total")?,
    )))
}

impl Assemblies {
    /// Adds a part from `from`; returns the whole batch once its last part arrived.
    pub fn add(
        &self,
        from: ReplicaId,
        (xfer, offset, total): (u64, usize, usize),
        part: &[u8],
    ) -> Result<Option<Vec<u8>>, ApiError> {
        if part.is_empty() || offset.checked_add(part.len()).is_none_or(|end| end > total) {
            return Err(ApiError::BadRequest(format!(
                "part of {} bytes at offset {offset} does not fit a transfer of {total} bytes",
                part.len()
            )));
        }
        let mut all = self.0.lock();
        if offset == 0 {
            // Grows as parts arrive: a claimed total reserves nothing.
            all.insert(
                from,
                Transfer {
                    xfer,
                    total,
                    buf: Vec::new(),
                },
            );
        }
        let Some(t) = all
            .get_mut(&from)
            .filter(|t| t.xfer == xfer && t.total == total)
        else {
            return Err(ApiError::Conflict(format!(
                "part at offset {offset} of transfer {xfer}: no such transfer in progress"
            )));
        };
        if t.buf.len() != offset {
            let have = t.buf.len();
            all.remove(&from);
            return Err(ApiError::Conflict(format!(
                "part at offset {offset} of transfer {xfer}: expected offset {have}"
            )));
        }
        t.buf.extend_from_slice(part);
        if t.buf.len() < t.total {
            return Ok(None);
        }
        Ok(all.remove(&from).map(|t| t.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_in_order_make_the_batch_and_anything_else_is_refused() {
        let a = Assemblies::default();
        assert_eq!(a.add(1, (7, 0, 6), b"abc").unwrap(), None);
        assert_eq!(a.add(1, (7, 3, 6), b"def").unwrap().unwrap(), b"abcdef");
        // Out of order, unknown transfer, past the end, empty.
        assert_eq!(a.add(1, (8, 0, 6), b"ab").unwrap(), None);
        assert!(a.add(1, (8, 3, 6), b"def").is_err());
        assert!(
            a.add(1, (8, 2, 6), b"c").is_err(),
            "the transfer was dropped"
        );
        assert!(a.add(1, (9, 0, 2), b"abc").is_err());
        assert!(a.add(1, (9, 0, 2), b"").is_err());
        assert!(a.add(1, (9, usize::MAX, 2), b"a").is_err());
        // Peers do not mix.
        assert_eq!(a.add(1, (1, 0, 2), b"a").unwrap(), None);
        assert_eq!(a.add(2, (1, 0, 2), b"x").unwrap(), None);
        assert_eq!(a.add(1, (1, 1, 2), b"b").unwrap().unwrap(), b"ab");
        assert_eq!(a.add(2, (1, 1, 2), b"y").unwrap().unwrap(), b"xy");
    }
}
