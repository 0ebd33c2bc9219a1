//! Local servers playing Google (OAuth2 token endpoint + FCM HTTP v1) and Apple (APNs over
//! HTTP/2, cleartext with prior knowledge), following the services' contracts: they verify
//! signatures, claims, headers and payload shapes, answer with the services' error bodies,
//! and record every request. Tests script failures with `respond_next`.
//!
//! The keys are test-only fixtures (`tests/fixtures/push/test-only-*`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{StatusCode, Version};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const FCM_PRIVATE_KEY: &str =
    include_str!("../fixtures/push/test-only-fcm-service-account.key.pem");
const FCM_PUBLIC_KEY: &str = include_str!("../fixtures/push/test-only-fcm-service-account.pub.pem");
pub const APNS_PRIVATE_KEY: &str = include_str!("../fixtures/push/test-only-apns.p8");
const APNS_PUBLIC_KEY: &str = include_str!("../fixtures/push/test-only-apns.pub.pem");

pub const PROJECT_ID: &str = "mpr-test-project";
pub const CLIENT_EMAIL: &str = "mpr-test@mpr-test-project.iam.gserviceaccount.com";
pub const PRIVATE_KEY_ID: &str = "test-key-id-1";
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
pub const APNS_KEY_ID: &str = "ABC123DEFG";
pub const APNS_TEAM_ID: &str = "DEF123GHIJ";
pub const APNS_TOPIC: &str = "io.example.wallet";

/// One request a stand-in received, and what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub status: u16,
    pub at: Instant,
}

/// A scripted answer, given instead of the normal one once the request passed every check.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<&'static str>,
}

#[derive(Default)]
struct Log {
    received: Vec<Received>,
    scripted: VecDeque<Scripted>,
    /// Why requests were refused by the checks (a test expects none unless it provokes them).
    refusals: Vec<String>,
}

impl Log {
    /// Answers with `scripted` now, ahead of anything scripted by the test.
    fn answer_with(
        &mut self,
        scripted: Scripted,
        path: String,
        headers: HashMap<String, String>,
        body: &[u8],
    ) -> Response {
        self.scripted.push_front(scripted);
        let body = serde_json::from_slice(body).unwrap_or(Value::Null);
        self.answer(path, headers, body)
    }

    fn answer(&mut self, path: String, headers: HashMap<String, String>, body: Value) -> Response {
        let (status, reply, retry_after) = match self.scripted.pop_front() {
            Some(scripted) => (scripted.status, scripted.body, scripted.retry_after),
            None => (200, Value::Null, None),
        };
        self.received.push(Received {
            path,
            headers,
            body,
            status,
            at: Instant::now(),
        });
        let mut response = if reply.is_null() {
            StatusCode::from_u16(status).unwrap().into_response()
        } else {
            (StatusCode::from_u16(status).unwrap(), axum::Json(reply)).into_response()
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", seconds.parse().unwrap());
        }
        response
    }
}

/// A started stand-in: its base URL and shared state.
pub struct StandIn<S> {
    pub base_url: String,
    state: Arc<S>,
    task: tokio::task::JoinHandle<()>,
}

impl<S> Drop for StandIn<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S: Send + Sync + 'static>(
    state: Arc<S>,
    handler: fn(Arc<S>, Request) -> futures_util::future::BoxFuture<'static, Response>,
) -> StandIn<S> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .fallback(move |State(state): State<Arc<S>>, request: Request| handler(state, request))
        .with_state(state.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    StandIn {
        base_url,
        state,
        task,
    }
}

async fn read_request(request: Request) -> (String, Version, HashMap<String, String>, Vec<u8>) {
    let (parts, body) = request.into_parts();
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec();
    (parts.uri.path().to_owned(), parts.version, headers, body)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------- Google

pub struct GoogleState {
    key: DecodingKey,
    issued: Mutex<Vec<String>>,
    revoked: Mutex<HashSet<String>>,
    token_requests: Mutex<u32>,
    log: Mutex<Log>,
}

pub type Google = StandIn<GoogleState>;

impl Google {
    pub async fn start() -> Self {
        let state = Arc::new(GoogleState {
            key: DecodingKey::from_rsa_pem(FCM_PUBLIC_KEY.as_bytes()).unwrap(),
            issued: Mutex::default(),
            revoked: Mutex::default(),
            token_requests: Mutex::default(),
            log: Mutex::default(),
        });
        serve(state, |state, request| {
            Box::pin(async move { google(state, request).await })
        })
        .await
    }

    pub fn token_uri(&self) -> String {
        format!("{}/token", self.base_url)
    }

    /// A service-account file whose `token_uri` points here.
    pub fn service_account_file(&self) -> TempFile {
        let account = json!({
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": PRIVATE_KEY_ID,
            "private_key": FCM_PRIVATE_KEY,
            "client_email": CLIENT_EMAIL,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri(),
        });
        TempFile::new("firebase.json", &account.to_string())
    }

    /// The access tokens issued so far stop being accepted (as when they expire early).
    pub fn revoke_access_tokens(&self) {
        let issued = self.state.issued.lock().unwrap().clone();
        self.state.revoked.lock().unwrap().extend(issued);
    }

    pub fn token_requests(&self) -> u32 {
        *self.state.token_requests.lock().unwrap()
    }

    pub fn respond_next(&self, scripted: Scripted) {
        self.state.log.lock().unwrap().scripted.push_back(scripted);
    }

    pub fn sends(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().received.clone()
    }

    pub fn refusals(&self) -> Vec<String> {
        self.state.log.lock().unwrap().refusals.clone()
    }

    /// Send requests for one device token.
    pub fn sends_to(&self, token: &str) -> Vec<Received> {
        self.sends()
            .into_iter()
            .filter(|send| send.body["message"]["token"] == token)
            .collect()
    }
}

async fn google(state: Arc<GoogleState>, request: Request) -> Response {
    let (path, _, headers, body) = read_request(request).await;
    if path == "/token" {
        return token_endpoint(&state, &headers, &body);
    }
    let refuse = |status: u16, google_status: &str, why: String| {
        state.log.lock().unwrap().refusals.push(why);
        let body =
            json!({"error": {"code": status, "message": google_status, "status": google_status}});
        (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
    };
    let bearer = headers
        .get("authorization")
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let valid = state.issued.lock().unwrap().contains(&bearer)
        && !state.revoked.lock().unwrap().contains(&bearer);
    if !valid {
        // An unknown or revoked token is the service's answer, not a contract breach: recorded as a send.
        let reply = json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}});
        let unauthenticated = Scripted {
            status: 401,
            body: reply,
            retry_after: None,
        };
        return state
            .log
            .lock()
            .unwrap()
            .answer_with(unauthenticated, path, headers, &body);
    }
    let expected = format!("/v1/projects/{PROJECT_ID}/messages:send");
    if path != expected {
        return refuse(
            404,
            "NOT_FOUND",
            format!("path {path}, expected {expected}"),
        );
    }
    if headers.get("content-type").map(String::as_str) != Some("application/json") {
        return refuse(400, "INVALID_ARGUMENT", "content-type".into());
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return refuse(400, "INVALID_ARGUMENT", "body is not JSON".into());
    };
    if let Err(why) = check_fcm_message(&body) {
        return refuse(400, "INVALID_ARGUMENT", why);
    }
    let mut log = state.log.lock().unwrap();
    let n = log.received.len();
    if log.scripted.is_empty() {
        log.scripted.push_back(Scripted {
            status: 200,
            body: json!({"name": format!("projects/{PROJECT_ID}/messages/{n}")}),
            retry_after: None,
        });
    }
    log.answer(path, headers, body)
}

/// The FCM v1 message schema, as far as the server checks it.
fn check_fcm_message(body: &Value) -> Result<(), String> {
    let message = body["message"].as_object().ok_or("no message object")?;
    let token = message.get("token").and_then(Value::as_str);
    if token.is_none_or(str::is_empty) {
        return Err("message.token missing".into());
    }
    let known = ["token", "data", "notification", "android", "apns"];
    if let Some(field) = message.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(format!("unknown field message.{field}"));
    }
    // data is map<string, string>.
    if let Some(data) = message.get("data") {
        let data = data.as_object().ok_or("data is not an object")?;
        if data.values().any(|value| !value.is_string()) {
            return Err("data values must be strings".into());
        }
    }
    if let Some(android) = message.get("android") {
        let priority = android.get("priority").and_then(Value::as_str);
        if !matches!(priority, None | Some("normal" | "high")) {
            return Err("android.priority".into());
        }
    }
    if let Some(headers) = message.get("apns").and_then(|apns| apns.get("headers")) {
        let headers = headers.as_object().ok_or("apns.headers")?;
        if headers.values().any(|value| !value.is_string()) {
            return Err("apns.headers values must be strings".into());
        }
    }
    Ok(())
}

fn token_endpoint(state: &GoogleState, headers: &HashMap<String, String>, body: &[u8]) -> Response {
    *state.token_requests.lock().unwrap() += 1;
    let refuse = |why: String| {
        state
            .log
            .lock()
            .unwrap()
            .refusals
            .push(format!("token: {why}"));
        let body = json!({"error": "invalid_grant", "error_description": why});
        (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    };
    if headers.get("content-type").map(String::as_str) != Some("application/x-www-form-urlencoded")
    {
        return refuse("content-type".into());
    }
    let form: HashMap<String, String> = match parse_form(body) {
        Ok(form) => form,
        Err(why) => return refuse(why),
    };
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refuse(format!("grant_type {:?}", form.get("grant_type")));
    }
    let Some(assertion) = form.get("assertion") else {
        return refuse("no assertion".into());
    };
    let token_uri = format!(
        "http://{}/token",
        headers.get("host").cloned().unwrap_or_default()
    );
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&token_uri]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let decoded = match jsonwebtoken::decode::<Value>(assertion, &state.key, &validation) {
        Ok(decoded) => decoded,
        Err(error) => return refuse(format!("assertion: {error}")),
    };
    if decoded.header.kid.as_deref() != Some(PRIVATE_KEY_ID) {
        return refuse("kid".into());
    }
    let claims = decoded.claims;
    if claims["scope"] != FCM_SCOPE {
        return refuse(format!("scope {}", claims["scope"]));
    }
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    if exp != iat + 3600 || iat.abs_diff(now_s()) > 60 {
        return refuse(format!("iat {iat} exp {exp}"));
    }
    let mut issued = state.issued.lock().unwrap();
    let access_token = format!("ya29.test-{}", issued.len() + 1);
    issued.push(access_token.clone());
    axum::Json(json!({"access_token": access_token, "expires_in": 3599, "token_type": "Bearer"}))
        .into_response()
}

/// `application/x-www-form-urlencoded`, strictly: every pair is `name=value`.
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "form is not UTF-8")?;
    text.split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').ok_or("form pair without =")?;
            Ok((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, String> {
    let mut bytes = Vec::new();
    let mut input = text.bytes();
    while let Some(byte) = input.next() {
        match byte {
            b'%' => {
                let hex: String = input.by_ref().take(2).map(char::from).collect();
                bytes.push(u8::from_str_radix(&hex, 16).map_err(|_| "bad % escape")?);
            }
            b'+' => bytes.push(b' '),
            b':' | b'/' => return Err(format!("unencoded {:?} in form", byte as char)),
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).map_err(|_| "form value is not UTF-8".into())
}

// ---------------------------------------------------------------- Apple

pub struct AppleState {
    key: DecodingKey,
    expired: Mutex<HashSet<String>>,
    seen: Mutex<Vec<String>>,
    log: Mutex<Log>,
}

pub type Apple = StandIn<AppleState>;

impl Apple {
    pub async fn start() -> Self {
        let state = Arc::new(AppleState {
            key: DecodingKey::from_ec_pem(APNS_PUBLIC_KEY.as_bytes()).unwrap(),
            expired: Mutex::default(),
            seen: Mutex::default(),
            log: Mutex::default(),
        });
        serve(state, |state, request| {
            Box::pin(async move { apple(state, request).await })
        })
        .await
    }

    /// `APNS_CFG_FILE`, `APNS_PATH_KEY`, `APNS_TOPIC` and `APNS_BASE_URL` for a server.
    pub fn credentials(&self) -> (TempFile, TempFile) {
        let config = json!({"keyId": APNS_KEY_ID, "teamId": APNS_TEAM_ID, "production": false});
        (
            TempFile::new("apns.json", &config.to_string()),
            TempFile::new("apns.p8", APNS_PRIVATE_KEY),
        )
    }

    /// Every provider token seen so far is from now on answered `ExpiredProviderToken`.
    pub fn expire_provider_tokens(&self) {
        let seen = self.state.seen.lock().unwrap().clone();
        self.state.expired.lock().unwrap().extend(seen);
    }

    pub fn respond_next(&self, scripted: Scripted) {
        self.state.log.lock().unwrap().scripted.push_back(scripted);
    }

    pub fn pushes(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().received.clone()
    }

    pub fn refusals(&self) -> Vec<String> {
        self.state.log.lock().unwrap().refusals.clone()
    }

    pub fn pushes_to(&self, token: &str) -> Vec<Received> {
        let path = format!("/3/device/{token}");
        self.pushes()
            .into_iter()
            .filter(|push| push.path == path)
            .collect()
    }
}

async fn apple(state: Arc<AppleState>, request: Request) -> Response {
    let (path, version, headers, body) = read_request(request).await;
    let refuse = |status: u16, reason: &str, why: String| {
        state.log.lock().unwrap().refusals.push(why);
        (
            StatusCode::from_u16(status).unwrap(),
            axum::Json(json!({"reason": reason})),
        )
            .into_response()
    };
    if version != Version::HTTP_2 {
        return refuse(505, "HttpVersionNotSupported", format!("{version:?}"));
    }
    if path.strip_prefix("/3/device/").is_none_or(str::is_empty) {
        return refuse(404, "BadPath", path);
    }
    let Some(jwt) = headers
        .get("authorization")
        .and_then(|value| value.strip_prefix("bearer "))
    else {
        return refuse(403, "MissingProviderToken", "no bearer".into());
    };
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[APNS_TEAM_ID]);
    validation.set_required_spec_claims(&["iss"]);
    validation.validate_exp = false;
    let decoded = match jsonwebtoken::decode::<Value>(jwt, &state.key, &validation) {
        Ok(decoded) => decoded,
        Err(error) => return refuse(403, "InvalidProviderToken", format!("jwt: {error}")),
    };
    if decoded.header.kid.as_deref() != Some(APNS_KEY_ID) {
        return refuse(403, "InvalidProviderToken", "kid".into());
    }
    let iat = decoded.claims["iat"].as_u64().unwrap_or(0);
    if iat.abs_diff(now_s()) > 3600 {
        return refuse(403, "ExpiredProviderToken", format!("iat {iat}"));
    }
    {
        let mut seen = state.seen.lock().unwrap();
        if !seen.iter().any(|known| known == jwt) {
            seen.push(jwt.to_owned());
        }
    }
    if state.expired.lock().unwrap().contains(jwt) {
        let expired = Scripted {
            status: 403,
            body: json!({"reason": "ExpiredProviderToken"}),
            retry_after: None,
        };
        return state
            .log
            .lock()
            .unwrap()
            .answer_with(expired, path, headers, &body);
    }
    if headers.get("apns-topic").map(String::as_str) != Some(APNS_TOPIC) {
        return refuse(
            400,
            "TopicDisallowed",
            format!("{:?}", headers.get("apns-topic")),
        );
    }
    let push_type = headers.get("apns-push-type").map(String::as_str);
    let priority = headers.get("apns-priority").map(String::as_str);
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return refuse(400, "PayloadEmpty", "payload is not JSON".into());
    };
    let aps = &payload["aps"];
    let valid = match (push_type, priority) {
        (Some("alert"), Some("10" | "5")) => aps["alert"].is_object(),
        (Some("background"), Some("5")) => {
            aps["content-available"] == 1 && aps.get("alert").is_none()
        }
        _ => false,
    };
    if !valid {
        return refuse(
            400,
            "BadPriority",
            format!("push type {push_type:?}, priority {priority:?}, aps {aps}"),
        );
    }
    let mut response = state.log.lock().unwrap().answer(path, headers, payload);
    if response.status() == StatusCode::OK {
        response.headers_mut().insert(
            "apns-id",
            "6a9e3c4e-0000-4000-8000-000000000001".parse().unwrap(),
        );
    }
    response
}

// ---------------------------------------------------------------- helpers

/// A server that accepts connections and never answers: a push service that hangs.
pub async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (base_url, task)
}

/// A file removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(name: &str, contents: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mpr-push-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        Self { path }
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            std::fs::remove_dir_all(dir).ok();
        }
    }
}
