//! The usage dashboard, on the admin listener, embedded in the binary: HTML
//! rendered here with inline SVG charts, one stylesheet, no script and
//! nothing fetched from elsewhere ([ADR 0009](../../../../docs/adr/0009-dashboard.md)).
//!
//! - `/dashboard/login`: a form for the admin token (the operator) or an
//!   API key (a tenant); a login sets a session cookie (see [`session`]).
//! - `/dashboard`: the operator's overview of every tenant.
//! - `/dashboard/tenants/{id}`: one tenant, for the operator.
//! - `/dashboard/me`: the logged-in tenant's own page, and nothing else.
//!
//! Every POST must come from this origin (`Origin`, on top of the cookie's
//! `SameSite=Strict`); pages are sent with a content security policy that
//! allows only this origin's stylesheet, and are never cached.

pub mod board;
pub mod html;
pub mod pages;
pub mod session;
pub mod svg;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sluice_core::CounterStore;
use sluice_served::auth::{hash_secret, same};
use sluice_served::usage::limits_of;
use sluice_store::TenantStore;

use crate::api::AdminState;
use board::Board;
use html::{Viewer, esc, page};
use pages::{OverviewQuery, Range};
use session::{Role, Sessions};

/// The most dashboard sessions at once, and per tenant.
const MAX_SESSIONS: usize = 10_000;
const SESSIONS_PER_TENANT: usize = 8;
/// The largest login form accepted.
const MAX_FORM: usize = 4 * 1024;

/// The dashboard's own state.
pub struct Dashboard {
    /// Logins.
    pub sessions: Sessions,
    /// Every tenant's limits, as last read.
    pub board: Arc<Board>,
}

impl Dashboard {
    /// A dashboard whose logins last `ttl`.
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            sessions: Sessions::new(ttl, MAX_SESSIONS, SESSIONS_PER_TENANT),
            board: Arc::new(Board::default()),
        }
    }
}

/// An HTML answer, with the headers every page carries.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: with it, browsers send `Origin: null` on the login
    // form, and the origin check could not tell this site from another.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    r
}

fn to_login() -> Response {
    Redirect::to("/dashboard/login").into_response()
}

type St<S, T> = State<Arc<AdminState<S, T>>>;

/// The routes (merged into the admin router when the dashboard is on).
pub fn router<S, T>(state: Arc<AdminState<S, T>>) -> Router
where
    S: CounterStore + Clone + Unpin,
    T: TenantStore + Clone,
{
    Router::new()
        .route("/dashboard", get(overview::<S, T>))
        .route("/dashboard/", get(|| async { Redirect::to("/dashboard") }))
        .route("/dashboard/login", get(login_page::<S, T>).post(login::<S, T>))
        .route("/dashboard/logout", post(logout::<S, T>))
        .route("/dashboard/tenants/{id}", get(operator_tenant::<S, T>))
        .route("/dashboard/me", get(own_page::<S, T>))
        .route("/dashboard/style.css", get(style))
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .with_state(state)
}

async fn style() -> Response {
    let mut r = html::STYLE.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
    r
}

impl<S: CounterStore + Clone + Unpin, T: TenantStore + Clone> AdminState<S, T> {
    /// Who the request's session belongs to (`None`: not logged in, or a
    /// tenant whose key no longer works).
    fn viewer(&self, headers: &HeaderMap) -> Option<Role> {
        let d = self.dashboard()?;
        let id = session::cookie(headers)?;
        let role = d.sessions.get(id)?;
        if let Role::Tenant { tenant, key } = &role {
            let served = &self.control.served;
            let rt = served.runtime();
            let ok = rt.keys.find_hash(key).is_some_and(|k| {
                k.expires.is_none_or(|e| served.clock.now() < e)
                    && rt.tenants.get(k.tenant).is_some_and(|t| t.facts.id() == tenant)
            });
            if !ok {
                d.sessions.end(id);
                return None;
            }
        }
        Some(role)
    }
}

fn login_form(error: Option<&str>) -> String {
    let mut body = String::from(
        r#"<h1>Log in</h1><p class="sub">Operators log in with the admin token; tenants with one of their API keys, to see their own usage.</p>"#,
    );
    if let Some(e) = error {
        body.push_str(&format!(r#"<p class="error" id="error">{}</p>"#, esc(e)));
    }
    body.push_str(
        r#"<div class="login"><form method="post" action="/dashboard/login" id="operator"><label for="admin_token">Admin token</label><input type="password" id="admin_token" name="admin_token" autocomplete="off" required><button type="submit">Log in as operator</button></form><form method="post" action="/dashboard/login" id="tenant"><label for="api_key">API key</label><input type="password" id="api_key" name="api_key" autocomplete="off" required><button type="submit">Log in as tenant</button></form></div>"#,
    );
    page("Log in", &Viewer::Nobody, &body)
}

async fn login_page<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): St<S, T>,
    headers: HeaderMap,
) -> Response {
    match st.viewer(&headers) {
        Some(Role::Operator) => Redirect::to("/dashboard").into_response(),
        Some(Role::Tenant { .. }) => Redirect::to("/dashboard/me").into_response(),
        None => html(StatusCode::OK, login_form(None)),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    admin_token: Option<String>,
    api_key: Option<String>,
}

async fn login<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): St<S, T>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(d) = st.dashboard() else { return StatusCode::NOT_FOUND.into_response() };
    if !session::same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            login_form(Some("This form was sent from another site.")),
        );
    }
    if !session::plain_loopback(&headers) && !session::forwarded_https(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            login_form(Some(
                "This dashboard is reached over plain HTTP on a network address, where its session cookie would travel in clear. Reach it over HTTPS (a TLS proxy in front that sends X-Forwarded-Proto: https), or through an SSH tunnel to 127.0.0.1.",
            )),
        );
    }
    let f = match form {
        Ok(Form(f)) => f,
        Err(rejected) => {
            return html(rejected.status(), login_form(Some("The form could not be read.")));
        }
    };
    let role = match (f.admin_token.as_deref(), f.api_key.as_deref()) {
        (Some(t), None) if same(&hash_secret(t.trim()), st.token_hash()) => Some(Role::Operator),
        (None, Some(k)) => {
            let served = &st.control.served;
            let rt = served.runtime();
            let key = hash_secret(k.trim());
            rt.keys
                .find_hash(&key)
                .filter(|e| e.expires.is_none_or(|x| served.clock.now() < x))
                .and_then(|e| rt.tenants.get(e.tenant))
                .map(|t| Role::Tenant { tenant: t.facts.id().to_owned(), key })
        }
        _ => None,
    };
    let Some(role) = role else {
        return html(StatusCode::UNAUTHORIZED, login_form(Some("That token or key is not valid.")));
    };
    let to = match role {
        Role::Operator => "/dashboard",
        Role::Tenant { .. } => "/dashboard/me",
    };
    let Some(id) = d.sessions.create(role) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let mut r = Redirect::to(to).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id, d.sessions.ttl(), &headers)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): St<S, T>,
    headers: HeaderMap,
) -> Response {
    if !session::same_origin(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    if let (Some(d), Some(id)) = (st.dashboard(), session::cookie(&headers)) {
        d.sessions.end(id);
    }
    let mut r = to_login();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(&headers)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn overview<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): St<S, T>,
    headers: HeaderMap,
    Query(q): Query<OverviewQuery>,
) -> Response {
    match st.viewer(&headers) {
        Some(Role::Operator) => {}
        Some(Role::Tenant { .. }) => return Redirect::to("/dashboard/me").into_response(),
        None => return to_login(),
    }
    let Some(d) = st.dashboard() else { return to_login() };
    let body = pages::overview(&st.control.served, &d.board, &q);
    html(StatusCode::OK, page("All tenants", &Viewer::Operator, &body))
}

#[derive(Deserialize)]
struct RangeQuery {
    range: Option<String>,
}

/// One tenant's page, read now.
async fn tenant_body<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    st: &AdminState<S, T>,
    id: &str,
    range: Range,
    base: &str,
) -> Result<String, Response> {
    let served = &st.control.served;
    let rt = served.runtime();
    let not_found = || {
        html(StatusCode::NOT_FOUND, page("Not found", &Viewer::Operator, "<h1>No such tenant</h1>"))
    };
    let index = *rt.tenant_index.get(id).ok_or_else(not_found)?;
    let now = served.clock.now();
    let rows = match limits_of(&served.store, &rt, index, now).await {
        Some(Ok(rows)) => rows,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "the dashboard could not read counters");
            return Err(html(
                StatusCode::SERVICE_UNAVAILABLE,
                page(
                    "Unavailable",
                    &Viewer::Operator,
                    "<h1>The counter store does not answer</h1>",
                ),
            ));
        }
        None => return Err(not_found()),
    };
    let rows: Vec<_> = rows
        .into_iter()
        .filter_map(|r| rt.policy.limit(r.status.limit).map(|l| l.name.clone()).map(|n| (r, n)))
        .collect();
    let tenant = &rt.tenants[index].facts;
    let tier = rt.policy.tier_info(tenant.tier()).map_or("?", |t| &t.name);
    Ok(pages::tenant(served.history().map(|h| &**h), id, tier, &rows, range, now, base))
}

async fn operator_tenant<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): St<S, T>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Response {
    match st.viewer(&headers) {
        Some(Role::Operator) => {}
        Some(Role::Tenant { .. }) => return Redirect::to("/dashboard/me").into_response(),
        None => return to_login(),
    }
    let base = format!("/dashboard/tenants/{}", html::url(&id));
    match tenant_body(&st, &id, Range::parse(q.range.as_deref()), &base).await {
        Ok(body) => html(StatusCode::OK, page(&id, &Viewer::Operator, &body)),
        Err(r) => r,
    }
}

async fn own_page<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): St<S, T>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Response {
    let tenant = match st.viewer(&headers) {
        Some(Role::Tenant { tenant, .. }) => tenant,
        Some(Role::Operator) => return Redirect::to("/dashboard").into_response(),
        None => return to_login(),
    };
    match tenant_body(&st, &tenant, Range::parse(q.range.as_deref()), "/dashboard/me").await {
        Ok(body) => html(StatusCode::OK, page(&tenant, &Viewer::Tenant(&tenant), &body)),
        Err(r) => r,
    }
}
