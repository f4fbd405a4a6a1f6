//! Errors as responses: a status, a stable machine-readable code and a short
//! message, sent as `{"error": "...", "code": "..."}`.

use std::fmt;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gatehouse_files::{FilesError, Rejection};
use serde::Serialize;

/// An error answer of the admin API.
///
/// The `code` values are part of the API (documented in `docs/admin.md`);
/// the message is for people and may change. Causes that are not the
/// client's business (file paths, I/O errors) are logged, never sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
}

/// The challenge sent with every 401 (RFC 6750 §3).
const CHALLENGE: &str = "Bearer realm=\"gatehouse admin\"";
/// The challenge when a token was sent but is not the right one.
const CHALLENGE_INVALID: &str = "Bearer realm=\"gatehouse admin\", error=\"invalid_token\"";

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// 401: no usable `Authorization: Bearer` header.
    pub(crate) fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs `Authorization: Bearer <admin token>`",
        )
    }

    /// 401: a bearer token that is not the configured one.
    pub(crate) fn wrong_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the admin token is not valid",
        )
    }

    pub(crate) fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint; see docs/admin.md",
        )
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not accept that method (see the Allow header)",
        )
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn upload_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the upload is larger than this slot's max_upload of {limit} bytes"),
        )
    }

    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }

    /// Maps a release-store error. Refusals carry their reason (it is about
    /// the client's own upload); anything else is logged and answered 500.
    pub(crate) fn from_files(slot: &str, err: FilesError) -> Self {
        let code = match &err {
            FilesError::Rejected(r) => match r {
                Rejection::MissingIndex => "missing_index",
                Rejection::Empty => "empty_release",
                r if r.is_too_large() => "too_large",
                _ => "bad_archive",
            },
            FilesError::UnknownRelease { .. } => "unknown_release",
            FilesError::AmbiguousRelease { .. } => "ambiguous_release",
            FilesError::NoPreviousRelease { .. } => "no_previous_release",
            FilesError::NoActiveRelease { .. } => "no_active_release",
            _ => {
                tracing::error!(slot, error = %err, "Admin release operation failed.");
                return Self::internal();
            }
        };
        Self::new(err.http_status(), code, err.to_string())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: &self.message,
            code: self.code,
        });
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = if self.code == "invalid_token" {
                CHALLENGE_INVALID
            } else {
                CHALLENGE
            };
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}
