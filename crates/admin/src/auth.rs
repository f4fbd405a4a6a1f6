//! Bearer-token authentication as a tower layer.
//!
//! The check runs before routing, so every endpoint — including ones added
//! later and the 404/405 fallbacks — is protected unless its path is listed
//! in [`PUBLIC_PATHS`]. The token is compared in constant time and never
//! logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::state::Token;

/// Paths answered without a token (exact match on the request path; any
/// other spelling routes elsewhere and needs the token).
pub(crate) const PUBLIC_PATHS: &[&str] = &["/healthz"];

/// Adds [`RequireBearer`] around a service.
#[derive(Clone)]
pub(crate) struct RequireBearerLayer {
    token: Option<Arc<Token>>,
}

impl RequireBearerLayer {
    /// With `None`, requests pass unchecked.
    pub(crate) fn new(token: Option<Arc<Token>>) -> Self {
        RequireBearerLayer { token }
    }
}

impl<S> Layer<S> for RequireBearerLayer {
    type Service = RequireBearer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireBearer {
            inner,
            token: self.token.clone(),
        }
    }
}

/// Answers 401 unless the request carries the configured bearer token.
#[derive(Clone)]
pub(crate) struct RequireBearer<S> {
    inner: S,
    token: Option<Arc<Token>>,
}

impl<S> Service<Request> for RequireBearer<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<std::future::Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match check(self.token.as_deref(), &req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(refusal) => {
                let peer = req
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map_or_else(|| "-".to_owned(), |ConnectInfo(addr)| addr.to_string());
                tracing::warn!(
                    %peer,
                    method = %req.method(),
                    path = req.uri().path(),
                    reason = refusal.code(),
                    "Admin request refused: no valid bearer token."
                );
                Either::Left(std::future::ready(Ok(refusal.into_response())))
            }
        }
    }
}

/// `Ok` when no token is configured, the path is public, or the request
/// carries `Authorization: Bearer <token>` (scheme case-insensitive).
fn check(token: Option<&Token>, req: &Request) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    if PUBLIC_PATHS.contains(&req.uri().path()) {
        return Ok(());
    }
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        // None, or several (ambiguous: which one would a proxy have checked?).
        return Err(ApiError::missing_token());
    };
    let presented = bearer(value.as_bytes()).ok_or_else(ApiError::missing_token)?;
    // `ct_eq` on slices returns early only on a length mismatch; the length
    // of the token is not a secret (the config requires 32 or more).
    if bool::from(presented.ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::wrong_token())
    }
}

/// The credentials of a `Bearer` authorization value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let credentials = rest.trim_ascii();
    (!credentials.is_empty()).then_some(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b""), None);
    }
}
