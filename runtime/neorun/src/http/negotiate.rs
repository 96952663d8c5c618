//! Content negotiation for the SageMaker routes: what a request body is
//! (`Content-Type`) and what the client accepts back (`Accept`).

use axum::http::{header, HeaderMap, StatusCode};
use neoc_runtime::codec::Format;

use super::error::ApiError;

/// What the response is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    Json,
    Csv,
    JsonLines,
}

/// The body's format, and whether it is JSON Lines (one instance a line).
pub fn content_type(headers: &HeaderMap) -> Result<(Format, bool), ApiError> {
    let ct = match headers.get(header::CONTENT_TYPE) {
        None => "application/json",
        Some(v) => v.to_str().map_err(|_| ApiError::bad("Content-Type is not ASCII"))?,
    };
    let base = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match base.as_str() {
        "text/csv" => Ok((Format::Csv, false)),
        "application/json" => Ok((Format::Json, false)),
        "application/x-npy" => Ok((Format::Npy, false)),
        "application/jsonlines" | "application/x-jsonlines" | "application/jsonl" => Ok((Format::Json, true)),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type `{other}` is not supported; use text/csv, application/json, application/jsonlines or application/x-npy"),
        )),
    }
}

/// The first acceptable response format in `Accept` (JSON when absent).
pub fn accept(headers: &HeaderMap) -> Result<Out, ApiError> {
    let Some(a) = headers.get(header::ACCEPT) else { return Ok(Out::Json) };
    let a = a.to_str().map_err(|_| ApiError::bad("Accept is not ASCII"))?;
    for part in a.split(',') {
        match part.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
            "application/json" | "*/*" | "application/*" | "" => return Ok(Out::Json),
            "text/csv" | "text/*" => return Ok(Out::Csv),
            "application/jsonlines" | "application/x-jsonlines" | "application/jsonl" => return Ok(Out::JsonLines),
            _ => {}
        }
    }
    Err(ApiError::new(
        StatusCode::NOT_ACCEPTABLE,
        format!("cannot answer in `{a}`; accept application/json, text/csv or application/jsonlines"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn formats_are_read_from_the_headers() {
        assert_eq!(content_type(&headers(&[])).unwrap(), (Format::Json, false));
        assert_eq!(
            content_type(&headers(&[("content-type", "text/csv; charset=utf-8")])).unwrap(),
            (Format::Csv, false)
        );
        assert_eq!(content_type(&headers(&[("content-type", "application/jsonlines")])).unwrap(), (Format::Json, true));
        assert_eq!(content_type(&headers(&[("content-type", "image/png")])).unwrap_err().status, 415);
        assert_eq!(accept(&headers(&[("accept", "text/html, text/csv;q=0.5")])).unwrap(), Out::Csv);
        assert_eq!(accept(&headers(&[("accept", "image/png")])).unwrap_err().status, 406);
    }
}
