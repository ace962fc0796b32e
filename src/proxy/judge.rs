//! What an upstream answer says about the key that was sent, asked of the
//! provider's kind once per attempt, before any byte reaches the client. A
//! pure reading: what follows from it (the key's health, metrics, the log,
//! other replicas) is recorded by [`crate::keys::key_events`], and the
//! conductor only decides what to do next.

use http::StatusCode;

use crate::providers::{KeyVerdict, Kind, ProviderError};
use crate::proxy::error_answer::ErrorAnswer;

/// An answer as the provider's kind reads it.
#[derive(Debug)]
pub struct Judged {
    /// What it says about the key.
    pub verdict: KeyVerdict,
    /// The error the provider wrote, when the kind read it to judge.
    pub error: Option<ProviderError>,
}

/// Reads an answer of `status` (and its error body, when it was an error)
/// as `kind` does.
pub fn read_answer(kind: Kind, status: StatusCode, error: Option<&ErrorAnswer>) -> Judged {
    let status = status.as_u16();
    let error = error
        .and_then(ErrorAnswer::bytes)
        .filter(|_| kind.reads_body(status))
        .map(ProviderError::parse);
    let verdict = kind.judge(status, error.as_ref().unwrap_or(&ProviderError::default()));
    Judged { verdict, error }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::error_answer::ErrorBody;

    fn answer(status: u16, body: &str) -> ErrorAnswer {
        let (parts, ()) = http::Response::builder()
            .status(status)
            .body(())
            .unwrap()
            .into_parts();
        ErrorAnswer {
            parts,
            body: ErrorBody::Read(body.as_bytes().to_vec()),
        }
    }

    #[test]
    fn the_body_is_read_only_where_the_kind_needs_it() {
        let xai = Kind::named("xai").unwrap();
        let bad = answer(
            400,
            r#"{"code":"Client specified an invalid argument","error":"Incorrect API key provided: xa***yz."}"#,
        );
        let judged = read_answer(xai, StatusCode::BAD_REQUEST, Some(&bad));
        assert_eq!(judged.verdict, KeyVerdict::Rejected);
        assert!(judged.error.is_some());
        let openai = Kind::named("openai").unwrap();
        let judged = read_answer(openai, StatusCode::UNAUTHORIZED, Some(&answer(401, "{}")));
        assert_eq!(judged.verdict, KeyVerdict::Rejected);
        assert!(judged.error.is_none(), "OpenAI's 401 needs no body");
        let judged = read_answer(openai, StatusCode::OK, None);
        assert_eq!(judged.verdict, KeyVerdict::Accepted);
    }
}
