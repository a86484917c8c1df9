//! The admin listener over real sockets: metrics, health, readiness and the config dump.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

use crate::support::certs::TestCa;
use crate::support::client::{get, get_request, Answer, H1};
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};
use crate::support::{addr, metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoints_report_health_metrics_and_the_redacted_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let leaf = ca.issue(dir.path(), "web", &["web.test"]);
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let tls = format!(
        "{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}",
        leaf.cert_path.display(),
        leaf.key_path.display()
    );
    let gantry = Scenario::new()
        .port("web", Port::http("http").backends(&[origin.addr]))
        .port(
            "web",
            Port::new("https", "https")
                .backends(&[origin.addr])
                .set("tls", &tls),
        )
        .start()
        .await;
    let admin = gantry.admin_addr().expect("admin address");
    assert!(admin.ip().is_loopback());
    assert_eq!(get(addr(&gantry, "web", "http"), "/").await.body, "o 0");

    let health = get(admin, "/healthz").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (StatusCode::OK, "ok\n")
    );
    let ready = get(admin, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (StatusCode::OK, "ready\n")
    );

    let metrics = get(admin, "/metrics").await;
    assert!(metrics.header("content-type").starts_with("text/plain"));
    assert!(
        metrics
            .body
            .contains("gantry_connections_total{port=\"http\",service=\"web\"} 1"),
        "{}",
        metrics.body
    );

    let config = get(admin, "/config").await;
    assert_eq!(config.header("content-type"), "application/json");
    let json: serde_json::Value = serde_json::from_str(&config.body).expect("json");
    let listener = &json["listeners"]["web/http"];
    assert_eq!(
        listener["address"],
        addr(&gantry, "web", "http").to_string()
    );
    assert_eq!(listener["policy"], "builtin:round-robin");
    // Which build answers: the same in /config and in the metrics.
    let build = &json["build"];
    assert_eq!(build["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(build["profile"], "dev");
    let commit = build["commit"].as_str().expect("a commit");
    assert_eq!(commit.len(), 40, "{build}");
    let info = format!(
        "gantry_build_info{{commit=\"{commit}\",dirty=\"{}\",profile=\"dev\",version=\"{}\"}}",
        build["dirty"].as_str().expect("dirty"),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric(&gantry.metrics().render(), &info), 1.0);
    assert_eq!(listener["backends"][0]["address"], origin.addr.to_string());
    let cert = &json["config"]["services"]["web"]["ports"]["https"]["tls"]["certificates"][0];
    assert_eq!(cert["names"][0], "web.test");
    assert_eq!(cert["key"], leaf.key_path.display().to_string());
    let key_pem = std::fs::read_to_string(&leaf.key_path).expect("key");
    let key_line = key_pem.lines().nth(1).expect("pem body");
    assert!(
        !config.body.contains(key_line),
        "no key material in /config"
    );

    assert_eq!(get(admin, "/nope").await.status, StatusCode::NOT_FOUND);
    gantry.shutdown(Duration::from_secs(1)).await;
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "admin stops with the rest"
    );
}

/// A GET on `path` at `admin` presenting `authorization`, if any.
async fn get_with(admin: SocketAddr, path: &str, authorization: Option<&str>) -> Answer {
    let mut request = get_request(&admin.to_string(), path);
    if let Some(value) = authorization {
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            value.parse().expect("header value"),
        );
    }
    let mut client = H1::connect(admin).await.expect("connect");
    client.send(request).await.expect("answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_guards_config_metrics_and_explain_but_not_the_probes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "first-token-0123456789\n").expect("token");
    let scenario = Scenario::new().admin(&format!("token_file: \"{}\"", token_file.display()));
    let gantry = scenario.start().await;
    let admin = gantry.admin_addr().expect("admin address");

    for (path, answered) in [
        ("/metrics", StatusCode::OK),
        ("/config", StatusCode::OK),
        // Explanations too; this one's port does not exist.
        (
            "/explain?service=web&port=http&client=127.0.0.1",
            StatusCode::NOT_FOUND,
        ),
    ] {
        let refused = get_with(admin, path, None).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(refused.header("www-authenticate").starts_with("Bearer"));
        let wrong = get_with(admin, path, Some("Bearer first-token-0123456788")).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{path}");
        let right = get_with(admin, path, Some("Bearer first-token-0123456789")).await;
        assert_eq!(right.status, answered, "{path}");
    }
    assert_eq!(get(admin, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);

    let config = get_with(admin, "/config", Some("Bearer first-token-0123456789")).await;
    assert!(
        !config.body.contains("first-token"),
        "/config never shows the token: {}",
        config.body
    );
    assert_eq!(
        config
            .body
            .matches(&format!("file:{}", token_file.display()))
            .count(),
        1,
        "it shows where the token comes from: {}",
        config.body
    );

    // A new token applies to the next request, the old one is refused.
    std::fs::write(&token_file, "second-token-0123456789").expect("token");
    let changes = gantry.apply(scenario.model()).await.expect("applied");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].kind(), "admin_token_changed");
    let old = get_with(admin, "/metrics", Some("Bearer first-token-0123456789")).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    let new = get_with(admin, "/metrics", Some("Bearer second-token-0123456789")).await;
    assert_eq!(new.status, StatusCode::OK);
}

#[test]
fn a_token_too_short_or_from_nowhere_is_a_problem_at_its_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short");
    std::fs::write(&short, "abc").expect("token");
    let cases = [
        (
            format!("token_file: \"{}\"", short.display()),
            "admin.token_file",
        ),
        (
            format!("token_file: \"{}\"", dir.path().join("absent").display()),
            "admin.token_file",
        ),
        (
            "token_env: GANTRY_TEST_NO_SUCH_VARIABLE".to_owned(),
            "admin.token_env",
        ),
    ];
    for (field, at) in cases {
        let yaml = Scenario::new().admin(&field).yaml();
        let problems = match lb_config::parse_str(&yaml, std::path::Path::new("/")) {
            Ok(_) => panic!("{field} was accepted"),
            Err(err) => err.to_string(),
        };
        assert!(problems.contains(at), "{field}: {problems}");
        assert!(
            !problems.contains("abc"),
            "the token is never echoed: {problems}"
        );
    }
}

/// Off loopback (here the wildcard, reached through 127.0.0.1), an endpoint with no token
/// serves the probes and refuses `/config` and `/metrics` with how to configure a token;
/// `open: true` serves them to anyone; a token guards them as on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_config_and_metrics_need_a_token_unless_opened_explicitly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "off-loopback-token-0123").expect("token");
    let cases = [
        (String::new(), None, StatusCode::UNAUTHORIZED),
        (", open: true".to_owned(), None, StatusCode::OK),
        (
            format!(", token_file: \"{}\"", token_file.display()),
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            format!(", token_file: \"{}\"", token_file.display()),
            Some("Bearer off-loopback-token-0123"),
            StatusCode::OK,
        ),
    ];
    for (fields, authorization, expected) in cases {
        let yaml = format!("admin: {{ listen: \"0.0.0.0:0\"{fields} }}\n");
        let gantry = gantry::Gantry::start(crate::support::model(&yaml))
            .await
            .expect("gantry starts");
        let port = gantry.admin_addr().expect("admin").port();
        let admin = SocketAddr::from(([127, 0, 0, 1], port));
        for probe in ["/healthz", "/readyz"] {
            assert_eq!(get_with(admin, probe, None).await.status, StatusCode::OK);
        }
        for path in ["/config", "/metrics"] {
            let answer = get_with(admin, path, authorization).await;
            assert_eq!(answer.status, expected, "{path} with {fields:?}");
            if expected == StatusCode::UNAUTHORIZED && fields.is_empty() {
                for how in ["admin.token_file", "admin.token_env", "admin.open: true"] {
                    assert!(answer.body.contains(how), "{how} in {}", answer.body);
                }
            }
        }
        gantry.shutdown(std::time::Duration::from_secs(1)).await;
    }
}

#[test]
fn open_and_a_token_together_are_a_problem_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "open-and-token-0123456").expect("token");
    let yaml = format!(
        "admin: {{ listen: \"0.0.0.0:9901\", open: true, token_file: \"{}\" }}\n",
        token_file.display()
    );
    let problems = match lb_config::parse_str(&yaml, std::path::Path::new("/")) {
        Ok(_) => panic!("accepted"),
        Err(err) => err.to_string(),
    };
    assert!(problems.contains("admin.open"), "{problems}");
}
