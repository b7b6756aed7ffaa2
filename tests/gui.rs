//! The GUI at `/gui`, in a real browser: headless Chromium driven over WebDriver against a
//! server that treats the browser as remote (`localhostIsAdmin` off), so every step goes
//! through sign-in with a user token, as a browser on another machine would.
//!
//! An anonymous browser and a non-admin token see no secret name, value or revision; the
//! admin signs in, sees a Mesh whose CA expires in 10 days, pages through a Mesh of 1,050
//! secrets and filters it, reveals and copies a value (never on the page before), rolls a
//! secret back, restores a deleted one, sees a change made through the API arrive in the live feed, and sees a delete
//! of a secret in use refused with the guard's message. axe-core finds no serious or
//! critical accessibility violation on any page. With `KUMA_SECRETS_SCREENSHOTS=DIR` the
//! test saves the README's screenshots there.

#[macro_use]
mod common;

use common::server::{Backend, TestServer};
use common::webdriver::Browser;
use kuma_secrets::domain::{Labels, NewSecret, SecretData, SecretKey};
use kuma_secrets::store::SecretStore;
use reqwest::StatusCode;
use serde_json::{Value, json};

const SECRETS: usize = 1_050;

/// Saves the window as `NAME.png` in `$KUMA_SECRETS_SCREENSHOTS`, when set.
async fn screenshot(browser: &Browser, name: &str) {
    if let Ok(dir) = std::env::var("KUMA_SECRETS_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            std::path::Path::new(&dir).join(format!("{name}.png")),
            browser.screenshot().await,
        )
        .unwrap();
    }
}

/// No serious or critical axe-core violation on the page now.
async fn assert_accessible(browser: &Browser, page: &str) {
    let violations = browser.serious_accessibility_violations().await;
    assert!(violations.is_empty(), "{page}: {violations:#?}");
}

async fn api(
    server: &TestServer,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .request(method, server.at(path))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let (status, _, answer) = common::http::send(request).await;
    (status, answer)
}

/// Signs in through the form with `token`, from whatever page shows the sign-in button,
/// and waits for the page to be drawn again (or for the form to say the token was refused).
async fn sign_in(browser: &Browser, token: &str) {
    if browser
        .run("return !document.getElementById('sign-in-form')", json!([]))
        .await
        == Value::Bool(true)
    {
        browser.click("main button.primary").await;
    }
    browser.type_into("#token", token).await;
    browser.click("#sign-in").await;
    browser
        .wait_until(
            "the sign-in to land",
            "return !!(document.getElementById('sign-in-error') || {}).innerText || (!document.getElementById('sign-in-form') && document.body.getAttribute('data-ready') === location.hash)",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gui_in_a_real_browser() {
    let server = TestServer::start_tokens_only(Backend::Sqlite).await;
    let admin = server.admin_token().await;
    // A Mesh of 1,050 secrets, a CA expiring in 10 days used by its mTLS backend.
    for n in 0..SECRETS {
        server
            .store
            .create_secret(NewSecret {
                key: SecretKey::parse(Some("default"), &format!("secret-{n:04}")).unwrap(),
                data: SecretData::new(format!("value {n}").into_bytes()).unwrap(),
                labels: Labels::parse([("team".to_owned(), format!("t{}", n % 3))].into()).unwrap(),
            })
            .await
            .unwrap();
    }
    let (ca_cert, ca_key) = common::pki::ca_pair_valid_for("gui CA", Some(10));
    for (name, value) in [("ca-cert", &ca_cert), ("ca-key", &ca_key)] {
        let (status, body) = api(
            &server,
            &admin,
            reqwest::Method::PUT,
            &format!("/meshes/default/secrets/{name}"),
            Some(common::http::secret_json("default", name, value)),
        )
        .await;
        assert!(status.is_success(), "{body}");
    }
    let (status, body) = api(
        &server,
        &admin,
        reqwest::Method::PUT,
        "/meshes/default",
        Some(
            json!({"type": "Mesh", "name": "default", "mtls": {"enabledBackend": "ca-1",
            "backends": [{"name": "ca-1", "type": "provided",
                "conf": {"cert": {"secret": "ca-cert"}, "key": {"secret": "ca-key"}}}]}}),
        ),
    )
    .await;
    assert!(status.is_success(), "{body}");
    let viewer = {
        let response = reqwest::Client::new()
            .post(server.at("/tokens/user"))
            .bearer_auth(&admin)
            .json(&json!({"name": "viewer", "validFor": "1h"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap()
    };

    // The page's own headers: a strict policy, no inline script, no framing; the API's
    // answers are never stored.
    let page = reqwest::get(server.at("/gui")).await.unwrap();
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
    assert!(
        !policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"),
        "{policy}"
    );
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "inline script or style"
    );
    let listed = common::http::get_as(server.at("/meshes/default/secrets"), &admin).await;
    assert_eq!(listed.headers()["cache-control"], "no-store");

    let browser = Browser::start().await;
    let gui = server.at("/gui");

    // Anonymous: no secret name, value or revision anywhere on the page.
    browser
        .open(&format!("{gui}#/meshes/default/secrets"))
        .await;
    assert!(browser.text("main").await.contains("Access denied"));
    for page in [
        "#/",
        "#/meshes/default/secrets",
        "#/meshes/default",
        "#/global-secrets",
        "#/secret/default/secret-0007",
        "#/changes",
    ] {
        browser.open(&format!("{gui}{page}")).await;
        let source = browser.source().await;
        // (The name in the address is the visitor's own; any other is a leak.)
        for secret in ["secret-0001", "value ", "ca-cert", "admin-user-token"] {
            assert!(
                !source.contains(secret),
                "anonymous {page} shows {secret:?}"
            );
        }
    }
    browser
        .open(&format!("{gui}#/meshes/default/secrets"))
        .await;
    sign_in(&browser, "not-a-token").await;
    assert!(browser.text("#sign-in-error").await.contains("refused"));
    assert_accessible(&browser, "sign-in").await;
    screenshot(&browser, "sign-in").await;

    // A token that is not the admin's sees what the API gives it: no secrets.
    browser
        .open(&format!("{gui}#/meshes/default/secrets"))
        .await;
    sign_in(&browser, &viewer).await;
    assert!(browser.text("#who").await.contains("viewer"));
    let text = browser.text("main").await;
    assert!(text.contains("Access denied"), "{text}");
    assert!(!browser.source().await.contains("secret-0001"));
    browser.click("#sign-out").await;
    browser.wait_drawn().await;

    // The admin: the Mesh, its CA expiring in 10 days.
    browser.open(&format!("{gui}#/meshes/default")).await;
    sign_in(&browser, &admin).await;
    let earliest = browser.text("#earliest-expiry").await;
    assert!(
        earliest.contains("(9 days left)") || earliest.contains("(10 days left)"),
        "{earliest}"
    );
    assert_accessible(&browser, "mesh").await;
    screenshot(&browser, "mesh").await;
    browser.open(&format!("{gui}#/")).await;
    browser
        .wait_until(
            "the Meshes' CA expiry",
            "return !!document.querySelector('[data-not-after]')",
        )
        .await;
    assert_accessible(&browser, "meshes").await;
    screenshot(&browser, "meshes").await;

    // Paging through 1,052 secrets, and filtering.
    browser
        .open(&format!("{gui}#/meshes/default/secrets"))
        .await;
    let rows = "return document.querySelectorAll('tbody tr').length";
    assert_eq!(browser.run(rows, json!([])).await, 100);
    let first = browser.text("tbody tr:first-child td:first-child").await;
    assert_eq!(first, "ca-cert");
    assert!(browser.text("main").await.contains("1052 in all"));
    assert!(
        !browser.source().await.contains("value 1"),
        "a list shows values"
    );
    browser
        .wait_until(
            "what uses the CA to show",
            "return document.querySelector('tbody tr:first-child td.used-by').innerText === 'mTLS ca-1'",
        )
        .await;
    assert_accessible(&browser, "secrets").await;
    screenshot(&browser, "secrets").await;
    browser.click("#next-page").await;
    browser.wait_drawn().await;
    assert_eq!(
        browser.text("tbody tr:first-child td:first-child").await,
        "secret-0098"
    );
    for _ in 0..9 {
        browser.click("#next-page").await;
        browser.wait_drawn().await;
    }
    assert_eq!(browser.run(rows, json!([])).await, 52);
    assert_eq!(
        browser.text("tbody tr:last-child td:first-child").await,
        "secret-1049"
    );
    browser
        .open(&format!("{gui}#/meshes/default/secrets"))
        .await;
    browser.type_into("#filter-name", "secret-010").await;
    browser.type_into("#filter-label", "team=t1").await;
    browser.click("#filter button").await;
    browser.wait_drawn().await;
    let names: Vec<String> = serde_json::from_value(
        browser
            .run(
                "return [...document.querySelectorAll('tbody tr td:first-child')].map(e => e.innerText)",
                json!([]),
            )
            .await,
    )
    .unwrap();
    assert_eq!(
        names,
        ["secret-0100", "secret-0103", "secret-0106", "secret-0109"]
    );

    // A secret: its value only on "Reveal"; copy; roll back to version 1.
    let (status, _) = api(
        &server,
        &admin,
        reqwest::Method::PUT,
        "/meshes/default/secrets/secret-0007",
        Some(common::http::secret_json(
            "default",
            "secret-0007",
            "value 7, changed",
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    browser
        .open(&format!("{gui}#/secret/default/secret-0007"))
        .await;
    assert!(
        !browser.source().await.contains("value 7"),
        "shown before reveal"
    );
    browser.click("#reveal").await;
    browser
        .wait_until(
            "the value",
            "return (document.querySelector('#value pre') || {}).innerText === 'value 7, changed'",
        )
        .await;
    browser.grant("clipboard-read").await;
    browser.grant("clipboard-write").await;
    browser.click("#copy").await;
    browser
        .wait_until(
            "the copy",
            "return document.getElementById('status').innerText.includes('Copied')",
        )
        .await;
    let copied = browser
        .run_async(
            "const done = arguments[0]; navigator.clipboard.readText().then(done, e => done(String(e)));",
            json!([]),
        )
        .await;
    assert_eq!(copied, "value 7, changed");
    screenshot(&browser, "secret").await;
    browser
        .open(&format!("{gui}#/secret/default/secret-0007"))
        .await;
    assert_accessible(&browser, "secret").await;
    browser
        .click("button.version-action[data-version='1']")
        .await;
    browser.accept_dialog().await;
    browser
        .wait_until("the rollback", "return (document.getElementById('status') || {}).innerText === 'Rolled back to version 1.'")
        .await;
    let (_, now) = api(
        &server,
        &admin,
        reqwest::Method::GET,
        "/meshes/default/secrets/secret-0007",
        None,
    )
    .await;
    assert_eq!(now["data"], common::http::b64("value 7"));
    assert!(browser.text("main").await.contains("Roll back to 2"));

    // A deleted secret: its history, and a restore.
    let (status, _) = api(
        &server,
        &admin,
        reqwest::Method::DELETE,
        "/meshes/default/secrets/secret-0008",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    browser
        .open(&format!("{gui}#/secret/default/secret-0008"))
        .await;
    assert!(browser.text("#deleted").await.contains("deleted"));
    browser
        .click("button.version-action[data-version='1']")
        .await;
    browser.accept_dialog().await;
    browser
        .wait_until(
            "the restore",
            "return (document.getElementById('status') || {}).innerText === 'Restored version 1.'",
        )
        .await;
    let (_, restored) = api(
        &server,
        &admin,
        reqwest::Method::GET,
        "/meshes/default/secrets/secret-0008",
        None,
    )
    .await;
    assert_eq!(restored["data"], common::http::b64("value 8"));

    // A certificate, decoded; its delete refused while the Mesh uses it.
    browser
        .open(&format!("{gui}#/secret/default/ca-cert"))
        .await;
    let page = browser.text("main").await;
    assert!(
        page.contains("CN=gui CA") && page.contains("Mesh default mTLS backend ca-1"),
        "{page}"
    );
    assert_accessible(&browser, "certificate").await;
    screenshot(&browser, "certificate").await;
    browser.click("#delete").await;
    browser.accept_dialog().await;
    browser
        .wait_until(
            "the guard's message",
            "return !!document.getElementById('delete-error')",
        )
        .await;
    let refused = browser.text("#delete-error").await;
    assert!(refused.contains("currently in use in Mesh"), "{refused}");
    let (status, _) = api(
        &server,
        &admin,
        reqwest::Method::GET,
        "/meshes/default/secrets/ca-cert",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // The live feed: a change made through the API appears.
    browser.open(&format!("{gui}#/changes?type=Secret")).await;
    browser
        .wait_until(
            "the feed to follow",
            "return document.getElementById('feed-state').innerText.startsWith('Live')",
        )
        .await;
    api(
        &server,
        &admin,
        reqwest::Method::PUT,
        "/meshes/default/secrets/fresh-from-api",
        Some(common::http::secret_json(
            "default",
            "fresh-from-api",
            "new",
        )),
    )
    .await;
    browser
        .wait_until(
            "the change in the feed",
            "return document.getElementById('feed-rows').innerText.includes('fresh-from-api')",
        )
        .await;
    assert!(
        browser
            .text("#feed-rows")
            .await
            .contains("mesh-system:admin")
    );
    assert_accessible(&browser, "changes").await;
    screenshot(&browser, "changes").await;
}

/// As the README says to open it: `serve` with its defaults, a browser on the same machine.
/// Loopback is the admin (`localhostIsAdmin`): the secrets show without signing in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_on_the_servers_machine_is_the_admin() {
    let server = TestServer::start(Backend::Sqlite).await;
    common::http::put_secret(&server, "default", "local-secret", "v").await;
    let browser = Browser::start().await;
    browser
        .open(&format!("{}/gui#/meshes/default/secrets", server.url))
        .await;
    assert_eq!(
        browser.text("tbody tr:first-child td:first-child").await,
        "local-secret"
    );
    browser
        .wait_until(
            "the local admin to be named",
            "return document.getElementById('who').innerText === 'Admin (this machine)'",
        )
        .await;
    assert!(
        browser
            .run("return !document.getElementById('sign-in-form')", json!([]))
            .await
            == Value::Bool(true)
    );
}
