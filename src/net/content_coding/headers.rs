//! The header side of content codings: which codings a body's
//! `Content-Encoding` lists, and the `Accept-Encoding` keygate sends upstream
//! for the client's (only codings it can decode).

use http::header::{self, HeaderMap, HeaderValue};

use super::coding::{Coding, CodingError, MAX_STACK};

/// The codings of `headers`' `Content-Encoding`, in the order they were
/// applied (`identity` left out). Empty when the body is not encoded; no
/// allocation then.
pub fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, CodingError> {
    let mut found = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| CodingError::Unsupported("(not text)".into()))?;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("identity") {
                continue;
            }
            let coding = Coding::from_token(token).ok_or_else(|| unsupported(token))?;
            if found.len() == MAX_STACK {
                return Err(CodingError::TooDeep);
            }
            found.push(coding);
        }
    }
    Ok(found)
}

fn unsupported(token: &str) -> CodingError {
    let printable: String = token
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    CodingError::Unsupported(printable)
}

/// The `Accept-Encoding` to send upstream for the client's: the client's
/// list without the codings keygate cannot decode (`*` becomes the four it
/// can). `None`: send none (the client sent none). When the client accepts
/// nothing keygate decodes, `identity`. The client's value is reused as it is
/// when every coding in it is known (the SDKs' `gzip, deflate` and `br`
/// lists), so the usual request allocates nothing here.
pub fn accept_encoding_upstream(client: Option<&HeaderValue>) -> Option<HeaderValue> {
    let client = client?;
    let Ok(text) = client.to_str() else {
        return Some(HeaderValue::from_static("identity"));
    };
    let known = |item: &str| {
        let token = item.split(';').next().unwrap_or("").trim();
        token.is_empty()
            || token.eq_ignore_ascii_case("identity")
            || Coding::from_token(token).is_some()
    };
    if text.split(',').all(known) {
        return Some(client.clone());
    }
    let mut offered: Vec<String> = Vec::new();
    for item in text.split(',') {
        let token = item.split(';').next().unwrap_or("").trim();
        if token == "*" {
            let params = item.find(';').map_or("", |at| &item[at..]);
            for coding in ["gzip", "deflate", "br", "zstd"] {
                offered.push(format!("{coding}{params}"));
            }
        } else if !token.is_empty() && known(item) {
            offered.push(item.trim().to_owned());
        }
    }
    if offered.is_empty() {
        return Some(HeaderValue::from_static("identity"));
    }
    HeaderValue::from_str(&offered.join(", "))
        .ok()
        .or(Some(HeaderValue::from_static("identity")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_encoding_is_parsed_in_order() {
        let mut headers = HeaderMap::new();
        assert!(codings(&headers).unwrap().is_empty());
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert!(codings(&headers).unwrap().is_empty());
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("GZIP, br"),
        );
        assert_eq!(codings(&headers).unwrap(), [Coding::Gzip, Coding::Br]);
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("compress"),
        );
        assert!(matches!(codings(&headers), Err(CodingError::Unsupported(t)) if t == "compress"));
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip,gzip,gzip,gzip"),
        );
        assert!(matches!(codings(&headers), Err(CodingError::TooDeep)));
    }

    #[test]
    fn only_decodable_codings_are_offered_upstream() {
        let offer = |v: &'static str| {
            accept_encoding_upstream(Some(&HeaderValue::from_static(v)))
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(accept_encoding_upstream(None), None);
        assert_eq!(offer("gzip, deflate").as_deref(), Some("gzip, deflate"));
        assert_eq!(
            offer("gzip, compress;q=0.5, br;q=0.8").as_deref(),
            Some("gzip, br;q=0.8")
        );
        assert_eq!(offer("compress").as_deref(), Some("identity"));
        assert_eq!(
            offer("*;q=0.1").as_deref(),
            Some("gzip;q=0.1, deflate;q=0.1, br;q=0.1, zstd;q=0.1")
        );
    }
}
