//! `/releases/{slot}`: list, upload (`PUT`, a `.tar.gz`) and roll back the
//! releases of a static slot. The same operations as `gatehouse releases`,
//! `deploy` and `rollback`, on the same store.

use std::net::SocketAddr;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use gatehouse_files::{FilesError, ReleaseInfo};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::AdminState;
use crate::upload::{Cutoff, UploadBody};

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/releases/{slot}", get(list).put(upload))
        .route("/releases/{slot}/rollback", post(rollback))
}

/// A release as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ReleaseJson {
    pub(crate) slot: String,
    pub(crate) id: String,
    /// Deploy time, RFC 3339 UTC with seconds.
    pub(crate) created: String,
    pub(crate) size_bytes: u64,
    pub(crate) files: u64,
    pub(crate) active: bool,
}

impl From<ReleaseInfo> for ReleaseJson {
    fn from(r: ReleaseInfo) -> Self {
        ReleaseJson {
            created: rfc3339(r.created),
            slot: r.slot,
            id: r.id,
            size_bytes: r.size_bytes,
            files: r.files,
            active: r.active,
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `GET /releases/{slot}`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ReleaseList {
    pub(crate) slot: String,
    /// The active release's id, if any.
    pub(crate) active: Option<String>,
    /// Newest first.
    pub(crate) releases: Vec<ReleaseJson>,
}

/// The `{slot}` of the path, checked against the slots the config knows.
pub(crate) struct SlotName(String);

impl FromRequestParts<AdminState> for SlotName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, ApiError> {
        // Undecodable percent-escapes cannot name a configured slot either.
        let name = match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => name,
            Err(_) => String::new(),
        };
        if state.slot(&name).is_some() {
            return Ok(SlotName(name));
        }
        let known: Vec<String> = state.slot_names().map(|s| format!("{s:?}")).collect();
        let known = if known.is_empty() {
            "none (a slot exists when a route serves it, or with [release.NAME])".to_owned()
        } else {
            known.join(", ")
        };
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_slot",
            format!("no release slot {name:?} in the config; configured slots: {known}"),
        ))
    }
}

/// The client's address for log lines, when served from a socket (absent in
/// tests).
pub(crate) struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("-"),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(a)| *a),
        ))
    }
}

/// Runs blocking store work off the I/O thread.
async fn blocking<T, F>(slot: &str, f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, FilesError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| ApiError::from_files(slot, e)),
        Err(e) => {
            tracing::error!(slot, error = %e, "Admin release task failed.");
            Err(ApiError::internal())
        }
    }
}

async fn list(State(state): State<AdminState>, SlotName(slot): SlotName) -> Result<Json<ReleaseList>, ApiError> {
    let store = state.releases.clone();
    let name = slot.clone();
    let releases = blocking(&slot, move || store.list(&name)).await?;
    let active = releases.iter().find(|r| r.active).map(|r| r.id.clone());
    Ok(Json(ReleaseList {
        slot,
        active,
        releases: releases.into_iter().map(ReleaseJson::from).collect(),
    }))
}

/// `PUT /releases/{slot}`: the body is a `.tar.gz` of the build, unpacked as
/// it arrives; the slot switches only once the release is complete and
/// valid.
async fn upload(
    State(state): State<AdminState>,
    SlotName(slot): SlotName,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ReleaseJson>), ApiError> {
    let Some(config) = state.slot(&slot) else {
        return Err(ApiError::internal()); // SlotName checked it
    };
    let opts = config.deploy.clone();
    let limit = opts.max_archive_bytes;
    // Refuse before reading a byte when the client announces too much.
    if let Some(len) = content_length(&headers) {
        if len > limit {
            tracing::warn!(slot, %peer, bytes = len, limit, "Upload refused: larger than max_upload.");
            return Err(ApiError::upload_too_large(limit));
        }
    }
    let Ok(_one_at_a_time) = config.upload.clone().try_lock_owned() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "deploy_in_progress",
            format!("another upload to slot {slot:?} is in progress; retry when it has finished"),
        ));
    };
    let (body, cutoff) = UploadBody::new(body, limit, state.upload_idle_timeout, state.upload_timeout);
    tracing::info!(slot, %peer, "Release upload started.");
    let result = state.releases.deploy_tar_gz_body(&slot, body, opts).await;
    match result {
        Ok(info) => {
            tracing::info!(slot, %peer, release = %info.id, files = info.files, bytes = info.size_bytes, "Release uploaded and activated.");
            Ok((StatusCode::CREATED, Json(info.into())))
        }
        Err(e) => {
            let err = match cutoff.get() {
                Some(Cutoff::TooLarge) => ApiError::upload_too_large(limit),
                Some(Cutoff::Idle) => ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "upload_timeout",
                    format!(
                        "no data for {} s; the upload was abandoned",
                        state.upload_idle_timeout.as_secs_f32()
                    ),
                ),
                Some(Cutoff::Deadline) => ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "upload_timeout",
                    format!(
                        "the upload took longer than {} s and was abandoned",
                        state.upload_timeout.as_secs_f32()
                    ),
                ),
                None => ApiError::from_files(&slot, e),
            };
            tracing::warn!(slot, %peer, status = err.status().as_u16(), reason = err.message(), "Release upload refused; the slot is unchanged.");
            Err(err)
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Which release to roll back to, from the query string or a JSON body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackRequest {
    /// A release id or unique prefix; absent: the release before the active one.
    id: Option<String>,
}

/// `POST /releases/{slot}/rollback[?id=ID]`, optionally with `{"id": "ID"}`.
async fn rollback(
    State(state): State<AdminState>,
    SlotName(slot): SlotName,
    peer: Peer,
    query: Result<Query<RollbackRequest>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ReleaseJson>, ApiError> {
    let Query(from_query) = query.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let body = body.map_err(|e| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_request"
        };
        ApiError::new(e.status(), code, e.body_text())
    })?;
    let from_body = if body.trim_ascii().is_empty() {
        RollbackRequest::default()
    } else {
        serde_json::from_slice::<RollbackRequest>(&body)
            .map_err(|e| ApiError::bad_request(format!("expected a JSON body like {{\"id\": \"…\"}}: {e}")))?
    };
    let id = match (from_query.id, from_body.id) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "the query string and the body name different ids; give one",
            ));
        }
        (Some(id), _) | (None, Some(id)) => Some(id),
        (None, None) => None,
    };
    if id.as_deref().is_some_and(str::is_empty) {
        return Err(ApiError::bad_request("`id` is empty; omit it to roll back one release"));
    }
    let store = state.releases.clone();
    let name = slot.clone();
    let info = blocking(&slot, move || store.rollback(&name, id.as_deref())).await?;
    tracing::info!(slot, %peer, release = %info.id, "Release rolled back through the admin API.");
    Ok(Json(info.into()))
}
