//! An HTTP client for the tests that checks every response against
//! `openapi.json`: the status must be documented for the operation (404 and
//! 405 for unknown routes and methods), and the body must match the
//! documented schema. Every HTTP test is thereby also a contract test.

use reqwest::Method;
use rpc_core::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

pub enum Body {
    Json(Value),
    Form(String),
    Raw(&'static str, Vec<u8>),
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn error_field(&self) -> Option<&str> {
        self.body["error"]["field"].as_str()
    }
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        serde_json::from_str(person_service::http::OPENAPI).expect("openapi.json is JSON")
    })
}

/// The documented path template a concrete path matches.
pub fn template_of(path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or(path);
    let parts: Vec<&str> = path.split('/').collect();
    spec()["paths"].as_object()?.keys().find_map(|t| {
        let tp: Vec<&str> = t.split('/').collect();
        let matches = tp.len() == parts.len()
            && tp
                .iter()
                .zip(&parts)
                .all(|(a, b)| (a.starts_with('{') && !b.is_empty()) || a == b);
        matches.then(|| t.clone())
    })
}

fn resolve(v: &Value) -> &Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.trim_start_matches('#');
            resolve(
                spec()
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling $ref {r}")),
            )
        }
        None => v,
    }
}

fn validate(schema: &Value, instance: &Value, what: &str) {
    let mut wrapped = schema.clone();
    if let Value::Object(map) = &mut wrapped {
        map.insert("components".into(), spec()["components"].clone());
    }
    let validator =
        jsonschema::draft202012::new(&wrapped).unwrap_or_else(|e| panic!("schema for {what}: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: response does not match openapi.json: {errors:?}\n{instance}"
    );
}

/// Checks one response against the document; returns the operation's
/// (method, path template, status).
pub fn check_contract(
    method: &str,
    path: &str,
    status: u16,
    content_type: &str,
    body: &Value,
) -> (String, String, u16) {
    let lower = method.to_ascii_lowercase();
    let op =
        template_of(path).and_then(|t| spec()["paths"][&t].get(&lower).map(|op| (t, op.clone())));
    let Some((template, op)) = op else {
        // Not a documented operation: must be the JSON 404/405.
        assert!(
            status == 404 || status == 405,
            "{method} {path}: undocumented operation answered {status}"
        );
        assert!(
            content_type.starts_with("application/json"),
            "{method} {path}: {content_type}"
        );
        validate(
            &json!({"$ref": "#/components/schemas/Error"}),
            body,
            &format!("{method} {path}"),
        );
        let t = template_of(path).unwrap_or_else(|| "unmatched".into());
        return (method.to_owned(), t, status);
    };
    let response = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{method} {template}: status {status} is not documented"));
    let response = resolve(response);
    let media = content_type.split(';').next().unwrap_or("").trim();
    let content = &response["content"];
    let schema = content.get(media).unwrap_or_else(|| {
        panic!("{method} {template} {status}: content type {media} is not documented")
    })["schema"]
        .clone();
    if media == "application/json" {
        validate(&schema, body, &format!("{method} {template} {status}"));
    }
    (method.to_owned(), template, status)
}

#[derive(Clone)]
pub struct Http {
    pub base: String,
    client: reqwest::Client,
    seen: Arc<Mutex<BTreeSet<(String, String, u16)>>>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Self {
        Http {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            seen: Arc::default(),
        }
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<Body>) -> Reply {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{}", self.base, path));
        req = match body {
            None => req,
            Some(Body::Json(v)) => req
                .header("content-type", "application/json")
                .body(v.to_string()),
            Some(Body::Form(f)) => req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(f),
            Some(Body::Raw(ct, bytes)) => {
                let req = if ct.is_empty() {
                    req
                } else {
                    req.header("content-type", ct)
                };
                req.body(bytes)
            }
        };
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("HTTP body");
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = if content_type.starts_with("application/json") {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: invalid JSON ({e}): {text}"))
        } else {
            Value::Null
        };
        assert_ne!(status, 500, "{method} {path} answered 500: {text}");
        let op = check_contract(method.as_str(), path, status, &content_type, &body);
        self.seen.lock().unwrap().insert(op);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    /// Every (method, path template, status) this client has seen.
    pub fn seen(&self) -> BTreeSet<(String, String, u16)> {
        self.seen.lock().unwrap().clone()
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Body) -> Reply {
        self.send(Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Body) -> Reply {
        self.send(Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None).await
    }

    /// `POST /person` with a JSON body, `member` left out.
    pub async fn post_person(&self, first_name: &str, last_name: &str, age: i64) -> Reply {
        let person = json!({"first_name": first_name, "last_name": last_name, "age": age});
        self.post("/person", Body::Json(person)).await
    }
}
