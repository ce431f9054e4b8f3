//! The error answers that routes of several services share, one type each, so that a
//! route's `responses(...)` names the answer and its status and description are written
//! once: `responses((status = 200, body = Book), NoSuchBook, NotPrimary)`.
//!
//! Each wraps [`ErrorBody`], the JSON every error carries. The document's components
//! hold `ErrorBody` already ([`super::finish`] adds it), so these answers refer to it.
use crate::error::ErrorBody;
use utoipa::IntoResponses;

/// Declares each answer: `Name = (status, "description");`, after its doc comment.
macro_rules! answers {
    ($($(#[$doc:meta])* $name:ident = ($status:tt, $description:tt);)*) => {$(
        $(#[$doc])*
        #[derive(IntoResponses)]
        #[response(status = $status, description = $description)]
        pub struct $name(pub ErrorBody);
    )*};
}

answers! {
    /// A JSON body that does not parse into the route's type.
    MalformedBody = (400, "Malformed body");
    /// A query parameter or header that does not parse.
    MalformedParameter = (400, "Malformed parameter");
    /// A binary (bincode) body that does not decode.
    Undecodable = (400, "Undecodable request");
    /// No book has that item number.
    NoSuchBook = (404, "No such book");
    /// The book is sold out.
    OutOfStock = (409, "Out of stock");
    /// A write (or a consistent read) sent to a replica that is not the primary.
    NotPrimary = (421, "Not the primary");
    /// An `Idempotency-Key` seen before with another request.
    KeyReused = (422, "Idempotency-Key already used for another request");
    /// A membership change naming a kind the cluster does not replicate.
    BadKind = (400, "Bad kind");
    /// No replica of that kind has that id.
    NoSuchMember = (404, "No such member");
    /// A view service route naming a kind the cluster does not replicate.
    NoSuchService = (404, "No such replicated service");
    /// Retiring the one replica that holds every committed write.
    SoleHolder = (409, "No other member holds every committed write");
    /// A control-plane write sent to a coordinator that does not lead; the body's
    /// `leader` names the one that does, when it is known.
    NotLeader = (421, "Not the leader; `leader` names it");
}
