//! The usage dashboard in a real browser: headless Chromium (Debian's
//! `chromium` and `chromium-driver`, installed by `./scripts/test`) driven
//! over WebDriver against the real binary. The operator logs in with the
//! admin token (a wrong one is refused), sees the tenant just rate-limited
//! at the top with its 429s, and opens its charts; a tenant logs in with
//! its own key and sees itself and no other tenant. Screenshots go to
//! `target/tmp/dashboard/`. Without Chromium the test fails, saying what
//! to install; it is never skipped.
//!
//! And, over plain HTTP: the login's protections (another origin, a large
//! form, a revoked key ending its tenant's session).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const ACME: &str = "sk-acme-dashboard-test-00000000000001";
const GLOBEX: &str = "sk-globex-dashboard-test-0000000000002";

fn policy(mock: &sluice_mock::MockServer) -> String {
    format!(
        r#"
[policy]
name = "dashboard"
default_tier = "free"

[models."m1"]
[models."m2"]

[tiers.free.models]
"m1" = {{ rpm = 3, tpd = 1000000 }}
"m2" = {{ rpm = 100 }}

[tenants.acme]
[[tenants.acme.keys]]
id = "acme-key"
hash = "{}"

[tenants.globex]
[[tenants.globex.keys]]
id = "globex-key"
hash = "{}"
{}
[admin]
listen = "127.0.0.1:0"
"#,
        key_hash(ACME),
        key_hash(GLOBEX),
        upstream_section(mock)
    )
}

fn env() -> [(&'static str, &'static str); 2] {
    [("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)]
}

/// A program: `$var` if set, else the first of `names` on the PATH.
fn program(var: &str, names: &[&str], package: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var} names {}, which does not exist", p.display());
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "{} is not installed: run ./scripts/test (it installs Debian's `{package}`), or `apt-get install {package}`, or set {var}",
        names[0]
    );
}

/// A chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
    profile: PathBuf,
}

impl Driver {
    fn start() -> Self {
        let bin = program("SLUICE_CHROMEDRIVER", &["chromedriver"], "chromium-driver");
        let port = sluice_testkit::free_port();
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile =
            std::env::temp_dir().join(format!("sluice-chromium-{}-{port}", std::process::id()));
        Self { child, url: format!("http://127.0.0.1:{port}"), profile }
    }

    async fn browser(&self) -> Client {
        let chromium = program("SLUICE_CHROMIUM", &["chromium", "chromium-browser"], "chromium");
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,1100",
                    format!("--user-data-dir={}", self.profile.display()),
                ]
            }
        });
        let serde_json::Value::Object(caps) = caps else { unreachable!() };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn shots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots().join(name), png).unwrap();
}

async fn chat_as(url: &str, key: &str, model: &str) -> u16 {
    post(&client(), &format!("{url}/v1/chat/completions"), Some(key), &chat(model, 7), &[])
        .await
        .status()
        .as_u16()
}

async fn log_in(c: &Client, base: &str, form: &str, field: &str, secret: &str) {
    c.goto(&format!("{base}/dashboard/login")).await.unwrap();
    let f = c.form(Locator::Css(&format!("form#{form}"))).await.unwrap();
    f.set_by_name(field, secret).await.unwrap();
    navigate(c, f.submit()).await;
}

/// Runs `action` (a click or a form's submit, which start a navigation)
/// and waits until the next page has loaded: WebDriver returns from a
/// click before the browser has left the page.
async fn navigate<F, T>(c: &Client, action: F)
where
    F: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
{
    c.execute("window.sluiceOldPage = true;", vec![]).await.unwrap();
    action.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let loaded = c
            .execute(
                "return window.sluiceOldPage === undefined && document.readyState === 'complete';",
                vec![],
            )
            .await
            .is_ok_and(|v| v == serde_json::Value::Bool(true));
        if loaded {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the next page did not load");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn path(c: &Client) -> String {
    c.current_url().await.unwrap().path().to_owned()
}

async fn browse(c: &Client, base: &str) {
    // A wrong token is refused, with a message, and no session.
    log_in(c, base, "operator", "admin_token", "not-the-admin-token-at-all").await;
    assert_eq!(path(c).await, "/dashboard/login");
    let error = c.find(Locator::Css("#error")).await.unwrap().text().await.unwrap();
    assert!(error.contains("not valid"), "{error}");
    assert!(c.get_all_cookies().await.unwrap().is_empty());
    shot(c, "login-refused.png").await;
    c.goto(&format!("{base}/dashboard")).await.unwrap();
    assert_eq!(path(c).await, "/dashboard/login", "no session, no overview");

    // The operator: the tenant just refused is at the top, with its 429s.
    log_in(c, base, "operator", "admin_token", ADMIN_TOKEN).await;
    assert_eq!(path(c).await, "/dashboard");
    let cookie = c.get_named_cookie("sluice_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let first = c.find(Locator::Css("table#tenants tbody tr")).await.unwrap();
        let tenant = first.attr("data-tenant").await.unwrap();
        let refused = match first.find(Locator::Css(".r429")).await {
            Ok(e) => e.text().await.unwrap(),
            Err(_) => String::new(),
        };
        if tenant.as_deref() == Some("acme") && refused == "2" {
            let text = first.text().await.unwrap();
            // Its bar shows the rolling minute as last read: 3 / 3 right
            // after the requests, less once part of it has come back (a
            // slow machine can take that long to start the browser).
            assert!(text.contains("m1/rpm") && text.contains(" / 3"), "{text}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acme is not at the top with 2 429s: first row {tenant:?}, 429s {refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.refresh().await.unwrap();
    }
    let rows = c.find_all(Locator::Css("table#tenants tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 2, "acme and globex");
    shot(c, "overview.png").await;

    // Its page: limits, 429s by limit, and charts with bars in them.
    let link = c.find(Locator::LinkText("acme")).await.unwrap();
    navigate(c, link.click()).await;
    assert_eq!(path(c).await, "/dashboard/tenants/acme");
    let refusals = c.find(Locator::Css("table#refusals")).await.unwrap().text().await.unwrap();
    assert!(refusals.contains("m1/rpm"), "{refusals}");
    for chart in ["all-requests", "all-tokens"] {
        let bars =
            c.find_all(Locator::Css(&format!("svg[data-chart='{chart}'] rect[x]"))).await.unwrap();
        assert!(!bars.is_empty(), "the {chart} chart has no bar");
    }
    let m1 = c.find(Locator::Css("h2[data-model='m1']")).await.unwrap();
    assert_eq!(m1.text().await.unwrap(), "Model m1");
    shot(c, "tenant.png").await;
    let link = c.find(Locator::LinkText("last week")).await.unwrap();
    navigate(c, link.click()).await;
    let title = c
        .find(Locator::Css("svg[data-chart='all-requests']"))
        .await
        .unwrap()
        .attr("aria-label")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(title.contains("last week"), "{title}");

    // Log out: the session is gone.
    let link = c.find(Locator::Css("form.logout button")).await.unwrap();
    navigate(c, link.click()).await;
    assert_eq!(path(c).await, "/dashboard/login");
    c.goto(&format!("{base}/dashboard")).await.unwrap();
    assert_eq!(path(c).await, "/dashboard/login");

    // A tenant, with its own key: itself, and nothing of any other tenant.
    log_in(c, base, "tenant", "api_key", GLOBEX).await;
    assert_eq!(path(c).await, "/dashboard/me");
    let h1 = c.find(Locator::Css("h1[data-tenant]")).await.unwrap();
    assert_eq!(h1.text().await.unwrap(), "globex");
    let limits = c.find(Locator::Css("table#limits")).await.unwrap().text().await.unwrap();
    assert!(limits.contains("m2/rpm") && limits.contains("/ 100"), "{limits}");
    let refusals = c.find(Locator::Css("table#refusals")).await.unwrap().text().await.unwrap();
    assert!(refusals.contains("none in the last day"), "{refusals}");
    let bars = c.find_all(Locator::Css("svg[data-chart='all-requests'] rect[x]")).await.unwrap();
    assert_eq!(bars.len(), 1, "globex's one request");
    assert!(!c.source().await.unwrap().contains("acme"));
    shot(c, "tenant-view.png").await;
    for elsewhere in ["/dashboard", "/dashboard/tenants/acme"] {
        c.goto(&format!("{base}{elsewhere}")).await.unwrap();
        assert_eq!(path(c).await, "/dashboard/me", "{elsewhere}");
        assert!(!c.source().await.unwrap().contains("acme"), "{elsewhere}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let mock = mock().await;
    let mut s = Sluice::start(&policy(&mock), &env());
    let admin = s.line("sluice admin on ").expect("the admin listener");
    for i in 0..5 {
        let status = chat_as(&s.url, ACME, "m1").await;
        assert_eq!(status, if i < 3 { 200 } else { 429 });
    }
    assert_eq!(chat_as(&s.url, GLOBEX, "m2").await, 200);

    let driver = Driver::start();
    let c = driver.browser().await;
    let result = tokio::time::timeout(Duration::from_secs(90), browse(&c, &admin)).await;
    let _ = c.close().await;
    result.expect("the browser test took over 90 s");
}

/// A login over plain HTTP, as a script would: the status and the cookie.
async fn login_raw(
    admin: &str,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (u16, Option<String>) {
    let mut r = client().post(format!("{admin}/dashboard/login")).form(form);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .execute(r.build().unwrap())
        .await
        .unwrap();
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    (r.status().as_u16(), cookie)
}

async fn get_with(admin: &str, path: &str, cookie: &str) -> (u16, String) {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{admin}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let location = r.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, location.unwrap_or(r.text().await.unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_refuse_other_origins_large_forms_and_revoked_keys() {
    let mock = mock().await;
    let mut s = Sluice::start(&policy(&mock), &env());
    let admin = s.line("sluice admin on ").expect("the admin listener");
    let ops = Ops::of(&mut s);

    // A form posted from another site: refused, no session.
    let evil = [("origin", "http://evil.example")];
    let (status, cookie) = login_raw(&admin, &[("admin_token", ADMIN_TOKEN)], &evil).await;
    assert_eq!((status, cookie), (403, None));
    // The same from this origin: a session cookie, HttpOnly, SameSite=Strict.
    let origin = admin.clone();
    let (status, cookie) =
        login_raw(&admin, &[("admin_token", ADMIN_TOKEN)], &[("origin", &origin)]).await;
    assert_eq!(status, 303);
    let cookie = cookie.expect("a session cookie");
    assert_eq!(get_with(&admin, "/dashboard", &cookie).await.0, 200);
    // A made-up session id is no session.
    let forged = format!("sluice_session={}", "0".repeat(64));
    assert_eq!(get_with(&admin, "/dashboard", &forged).await, (303, "/dashboard/login".into()));
    // Over plain HTTP on a network address: no login, whatever the token.
    let (status, cookie) =
        login_raw(&admin, &[("admin_token", ADMIN_TOKEN)], &[("host", "10.1.2.3:8090")]).await;
    assert_eq!((status, cookie), (403, None));
    // Behind a TLS proxy: a Secure cookie.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{admin}/dashboard/login"))
        .header("host", "ops.example.com")
        .header("x-forwarded-proto", "https")
        .form(&[("admin_token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.ends_with("Secure"),
        "{set}"
    );
    // A form larger than a login: refused before it is read.
    let big = "x".repeat(64 * 1024);
    let (status, cookie) = login_raw(&admin, &[("admin_token", &big)], &[]).await;
    assert_eq!((status, cookie), (413, None));

    // A tenant's session ends when its key is revoked.
    ops.tenant(json!({"id": "initech"})).await;
    let (key_id, secret) = ops.key("initech", json!({})).await;
    let (status, cookie) = login_raw(&admin, &[("api_key", &secret)], &[]).await;
    assert_eq!(status, 303);
    let cookie = cookie.unwrap();
    let (status, page) = get_with(&admin, "/dashboard/me", &cookie).await;
    assert!(status == 200 && page.contains("initech"), "{status} {page}");
    let (st, _) =
        ops.call(reqwest::Method::DELETE, &format!("/tenants/initech/keys/{key_id}"), None).await;
    assert_eq!(st, 204);
    assert_eq!(get_with(&admin, "/dashboard/me", &cookie).await, (303, "/dashboard/login".into()));
}
