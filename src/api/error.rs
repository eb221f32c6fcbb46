//! The API's one error shape, `{"error": {"rule": ..., "message": ...}}` with the status code
//! that says who must act: 4xx the client, 503 try again later.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine name: a deposit rule, or one of the request rules below.
    pub rule: &'static str,
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<&'static str>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, rule: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            rule,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 400 for a bad or missing field of the request body.
    pub fn field(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message)
        }
    }

    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs.max(1));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "rule": self.rule, "message": self.message });
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        let mut response = super::deposit::json_response(self.status, &json!({ "error": error }));
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}
