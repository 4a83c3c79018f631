//! The HTTP face: the same people over REST, thin over the same domain
//! rules and store as the RPC face, so a change made through one is visible
//! through the other at once.
//!
//! Input is HTML-form encoding or JSON; output is always JSON, and every
//! error has one shape: `{"error": {"code", "message", "field"}}`. Bad input
//! is a 4xx, never a 500 (see `openapi.json` for the whole contract).

use crate::domain::{DomainError, NewPerson, Page, Person, PersonChanges};
use crate::metrics::Metrics;
use crate::people::{Origin, People};
use axum::body::Body;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rpc_core::{ServiceStatus, Value};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// The OpenAPI document of this interface, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The people (the same store and events as the RPC face).
    pub people: People,
    /// Metrics of both faces.
    pub metrics: Arc<Metrics>,
    /// The RPC service's status, for `/healthz`.
    pub rpc_status: watch::Receiver<ServiceStatus>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

/// Every route, with metrics and JSON errors for anything unmatched.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/person", get(list).post(create))
        .route("/person/{id}", get(read).put(update).delete(remove))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// An error response: `{"error": {"code", "message", "field"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
    field: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn invalid(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "validation_error",
            message: format!("{field}: {message}"),
            field: Some(field.to_owned()),
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            DomainError::Invalid { field, message } => ApiError::invalid(&field, message),
            DomainError::Storage => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage_error",
                e.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn list(
    State(s): State<HttpState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Vec<Person>>> {
    let mut fields = Fields::from_query(query.as_deref().unwrap_or(""))?;
    let limit = fields.int("limit")?;
    let after_id = fields.int("after_id")?;
    fields.finish()?;
    Ok(Json(s.people.list(Page::new(limit, after_id)?).await?))
}

async fn create(State(s): State<HttpState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let mut fields = Fields::from_body(&headers, body, s.max_body_bytes).await?;
    let first_name = fields.required_string("first_name")?;
    let last_name = fields.required_string("last_name")?;
    let age = fields
        .int("age")?
        .ok_or_else(|| ApiError::invalid("age", "is required"))?;
    let member = fields.bool("member")?.unwrap_or(false);
    fields.finish()?;
    let person = s
        .people
        .create(
            NewPerson::new(first_name, last_name, age, member)?,
            Origin::Http,
        )
        .await?;
    let location = format!("/person/{}", person.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(person),
    )
        .into_response())
}

async fn read(State(s): State<HttpState>, Path(id): Path<String>) -> ApiResult<Json<Person>> {
    Ok(Json(s.people.get(parse_id(&id)?).await?))
}

async fn update(
    State(s): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Person>> {
    let id = parse_id(&id)?;
    let mut fields = Fields::from_body(&headers, body, s.max_body_bytes).await?;
    let changes = PersonChanges::new(
        fields.string("first_name")?,
        fields.string("last_name")?,
        fields.int("age")?,
        fields.bool("member")?,
    )?;
    fields.finish()?;
    Ok(Json(s.people.update(id, changes, Origin::Http).await?))
}

#[derive(Serialize)]
struct Deleted {
    id: i64,
    deleted: bool,
}

async fn remove(State(s): State<HttpState>, Path(id): Path<String>) -> ApiResult<Json<Deleted>> {
    let id = parse_id(&id)?;
    s.people.delete(id, Origin::Http).await?;
    Ok(Json(Deleted { id, deleted: true }))
}

fn parse_id(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .map_err(|_| ApiError::invalid("id", "must be an integer"))
}

async fn health(State(s): State<HttpState>) -> Response {
    let store = match s.people.store().check().await {
        Ok(()) => Ok("ok".to_owned()),
        Err(e) => Err(format!("store: {e}")),
    };
    let broker = match &*s.rpc_status.borrow() {
        ServiceStatus::Consuming => Ok("consuming".to_owned()),
        ServiceStatus::Starting => Err("broker: not connected yet".to_owned()),
        ServiceStatus::Reconnecting(why) => Err(format!("broker: reconnecting after {why}")),
        ServiceStatus::Stopped(_) => Err("broker: the RPC service has stopped".to_owned()),
    };
    let reasons: Vec<&str> = [&store, &broker]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
        .map(String::as_str)
        .collect();
    let check = |r: &Result<String, String>| match r {
        Ok(v) | Err(v) => Value::from(v.as_str()),
    };
    let (status, state, reason) = if reasons.is_empty() {
        (StatusCode::OK, "ok", Value::Null)
    } else {
        let reason = Value::from(reasons.join("; "));
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason)
    };
    let body = serde_json::json!({
        "status": state,
        "checks": {"store": check(&store), "broker": check(&broker)},
        "reason": reason,
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(s): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Metrics for every request, labelled by route template.
async fn observe(State(s): State<HttpState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    s.metrics.http_started();
    let response = json_errors_only(next.run(req).await);
    s.metrics.http_finished(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Rewrites an error the framework produced itself (a path it could not
/// decode, for instance) into the JSON error shape, so that no response
/// ever has another format.
fn json_errors_only(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_client_error() => "bad_request",
        _ => "internal_error",
    };
    let message = status.canonical_reason().unwrap_or("error");
    ApiError::new(status, code, message).into_response()
}

/// How much of an oversize body is read and thrown away before the 413 is
/// sent. Answering while the client is still sending makes the server close
/// the connection under it, and most clients then report a broken pipe
/// instead of the 413; past this much, protecting the server wins.
const DRAIN_LIMIT: usize = 1 << 20;

enum BodyError {
    TooLarge,
    Broken(String),
}

/// Reads a body of at most `limit` bytes; a longer one is drained (up to
/// [`DRAIN_LIMIT`] more) and refused.
async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            seen = seen.saturating_add(data.len());
            if seen <= limit {
                kept.extend_from_slice(data);
            } else if seen > limit.saturating_add(DRAIN_LIMIT) {
                return Err(BodyError::TooLarge);
            }
        }
    }
    if seen > limit {
        Err(BodyError::TooLarge)
    } else {
        Ok(kept)
    }
}

/// One input field: text from a form or query string, or a JSON value.
enum Field {
    Text(String),
    Json(Value),
}

/// The fields of a request, taken one by one; whatever is left at the end
/// is an unknown field and refused, so a typo never passes silently.
struct Fields(BTreeMap<String, Field>);

impl Fields {
    fn from_query(query: &str) -> ApiResult<Self> {
        Self::from_pairs(
            serde_urlencoded::from_str::<Vec<(String, String)>>(query).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("malformed query string: {e}"),
                )
            })?,
        )
    }

    fn from_pairs(pairs: Vec<(String, String)>) -> ApiResult<Self> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if map.insert(k.clone(), Field::Text(v)).is_some() {
                return Err(ApiError::invalid(&k, "is given more than once"));
            }
        }
        Ok(Fields(map))
    }

    async fn from_body(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Self> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let form = match essence.as_str() {
            "application/x-www-form-urlencoded" => true,
            "application/json" => false,
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send application/x-www-form-urlencoded or application/json",
                ))
            }
        };
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {limit} bytes"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit.saturating_add(DRAIN_LIMIT)) {
            return Err(too_large());
        }
        let bytes = read_limited(body, limit).await.map_err(|e| match e {
            BodyError::TooLarge => too_large(),
            BodyError::Broken(why) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the body could not be read: {why}"),
            ),
        })?;
        if form {
            let pairs =
                serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("malformed form body: {e}"),
                    )
                })?;
            Self::from_pairs(pairs)
        } else {
            let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("malformed JSON body: {e}"),
                )
            })?;
            let Value::Object(map) = value else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the JSON body must be an object",
                ));
            };
            Ok(Fields(
                map.into_iter().map(|(k, v)| (k, Field::Json(v))).collect(),
            ))
        }
    }

    /// Takes a field; JSON `null` counts as not given.
    fn take(&mut self, name: &str) -> Option<Field> {
        match self.0.remove(name) {
            Some(Field::Json(Value::Null)) | None => None,
            other => other,
        }
    }

    fn string(&mut self, name: &str) -> ApiResult<Option<String>> {
        match self.take(name) {
            None => Ok(None),
            Some(Field::Text(s)) | Some(Field::Json(Value::String(s))) => Ok(Some(s)),
            Some(Field::Json(_)) => Err(ApiError::invalid(name, "must be a string")),
        }
    }

    fn required_string(&mut self, name: &str) -> ApiResult<String> {
        self.string(name)?
            .ok_or_else(|| ApiError::invalid(name, "is required"))
    }

    fn int(&mut self, name: &str) -> ApiResult<Option<i64>> {
        match self.take(name) {
            None => Ok(None),
            Some(Field::Text(s)) => s
                .trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| ApiError::invalid(name, "must be an integer")),
            Some(Field::Json(v)) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| ApiError::invalid(name, "must be an integer")),
        }
    }

    fn bool(&mut self, name: &str) -> ApiResult<Option<bool>> {
        match self.take(name) {
            None => Ok(None),
            Some(Field::Text(s)) => match s.trim().to_ascii_lowercase().as_str() {
                // HTML checkboxes send "on".
                "true" | "1" | "on" | "yes" => Ok(Some(true)),
                "false" | "0" | "off" | "no" | "" => Ok(Some(false)),
                _ => Err(ApiError::invalid(name, "must be true or false")),
            },
            Some(Field::Json(Value::Bool(b))) => Ok(Some(b)),
            Some(Field::Json(_)) => Err(ApiError::invalid(name, "must be true or false")),
        }
    }

    fn finish(self) -> ApiResult<()> {
        match self.0.into_keys().next() {
            None => Ok(()),
            Some(unknown) => Err(ApiError::invalid(&unknown, "is not a known field")),
        }
    }
}
