//! A headless Chromium driven over W3C WebDriver (Debian's `chromium` and `chromedriver`,
//! installed by `.ci/install-browser`), with just the commands the GUI test uses: open a
//! URL, find elements, click, type, read text, run a script, accept a confirm dialog, grant
//! a permission, take a screenshot.

use serde_json::{Value, json};
use std::time::Duration;

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session; the driver process ends with it.
pub struct Browser {
    driver: std::process::Child,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session, 1280x900.
    pub async fn start() -> Self {
        let driver_path = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("chromedriver is not installed: run `bash .ci/install-browser` (Debian's chromium and chromium-driver)")
            });
        let port = kuma_secrets::testing::cluster::free_port();
        let driver = std::process::Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        crate::common::ha::wait_for(Duration::from_secs(30), "chromedriver to answer", || {
            let http = http.clone();
            let base = base.clone();
            async move {
                match http.get(format!("{base}/status")).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v["value"]["ready"] == true),
                    Err(_) => false,
                }
            }
        })
        .await;
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,900"],
                },
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"))
            .to_owned();
        Self {
            driver,
            session: format!("{base}/session/{session}"),
            http,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let value = self.call(reqwest::Method::POST, path, Some(body)).await;
        if let Some(error) = value.get("error") {
            panic!("WebDriver {path}: {error} {}", value["message"]);
        }
        value
    }

    /// Opens `url` and waits for the GUI to have drawn it (`body[data-ready]` is the hash).
    pub async fn open(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
        self.wait_drawn().await;
    }

    /// Waits until the GUI has drawn the page its hash names.
    pub async fn wait_drawn(&self) {
        self.wait_until(
            "the GUI to draw its page",
            "return document.body.getAttribute('data-ready') === location.hash",
        )
        .await;
    }

    /// Waits until `script` (a function body) returns true.
    pub async fn wait_until(&self, what: &str, script: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.run(script, json!([])).await == Value::Bool(true) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gave up waiting for {what}; the page says: {}",
                self.text("body").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `script` (a function body) with `args`; its return value.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Runs `script` (a function body whose last argument is the callback); what it passed.
    pub async fn run_async(&self, script: &str, args: Value) -> Value {
        self.post("/execute/async", json!({ "script": script, "args": args }))
            .await
    }

    /// The element `css` matches (panics if none).
    pub async fn find(&self, css: &str) -> String {
        let found = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await;
        found[ELEMENT].as_str().unwrap().to_owned()
    }

    /// Clicks the element `css` matches.
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    /// Types `text` into the element `css` matches, in place of what it held.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/clear"), json!({}))
            .await;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// The rendered text of the element `css` matches (the whole page for `body`).
    pub async fn text(&self, css: &str) -> String {
        self.run(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// The page's whole markup, as the browser holds it now.
    pub async fn source(&self) -> String {
        self.run("return document.documentElement.outerHTML", json!([]))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Accepts the open `confirm` dialog, once one is open.
    pub async fn accept_dialog(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.call(reqwest::Method::GET, "/alert/text", None).await;
            if text.is_string() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no dialog opened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.post("/alert/accept", json!({})).await;
    }

    /// Grants the page's origin a permission (`clipboard-read`, `clipboard-write`).
    pub async fn grant(&self, permission: &str) {
        self.post(
            "/permissions",
            json!({ "descriptor": { "name": permission }, "state": "granted" }),
        )
        .await;
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap()
    }

    /// axe-core's violations on the page now whose impact is serious or critical, each as
    /// `id: help (n nodes)`; axe is read from `$AXE_CORE_DIR/axe.min.js` (default
    /// /opt/axe-core).
    pub async fn serious_accessibility_violations(&self) -> Vec<String> {
        let dir = std::env::var("AXE_CORE_DIR").unwrap_or_else(|_| "/opt/axe-core".to_owned());
        let axe = std::fs::read_to_string(format!("{dir}/axe.min.js")).unwrap_or_else(|_| {
            panic!("axe-core is not installed in {dir}: run `bash .ci/install-browser`")
        });
        self.run(&axe, json!([])).await;
        let result = self
            .run_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] })
                    .then(r => done(r.violations.map(v => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length }))))
                    .catch(e => done([{ id: 'axe-error', impact: 'critical', help: String(e), nodes: 0 }]));",
                json!([]),
            )
            .await;
        result
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .map(|v| format!("{}: {} ({} nodes)", v["id"], v["help"], v["nodes"]))
            .collect()
    }
}

impl Drop for Browser {
    /// Ends the session (Chromium quits with it), then the driver: a plain HTTP DELETE, as
    /// a drop cannot wait on the async client.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        if let Ok(url) = reqwest::Url::parse(&self.session)
            && let Some(port) = url.port()
            && let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port))
        {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                stream,
                "DELETE {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                url.path()
            );
            let _ = stream.read_to_end(&mut Vec::new());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
