//! Session affinity through real sockets: client-IP affinity gives each client (by source
//! address, 127.0.0.x) the backend rendezvous hashing ranks first for it (the same on every
//! replica), keeps it there, and moves it when that backend fails; cookie affinity
//! sets a cookie naming the backend, follows it, and replaces it when the backend leaves; an
//! affinity plugin written in Python or JavaScript keeps each user (by header) on a backend.
//! (Expiry after the idle timeout is proven with a paused clock in `lb-core`'s unit tests.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use http::{Request, StatusCode};
use http_body_util::Full;

use crate::sandbox::{js_plugin, python_plugin};
use crate::support::client::{exchange_from, get, H1};
use crate::support::origin::{HttpOrigin, OriginProtocol, TcpOrigin};
use crate::support::scenario::{Port, Scenario};
use crate::support::{addr, metric, model};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_keeps_each_client_on_one_backend_and_moves_it_off_a_failed_one() {
    let origins = [
        TcpOrigin::start("a", false).await,
        TcpOrigin::start("b", false).await,
        TcpOrigin::start("c", false).await,
    ];
    let backends: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let gantry = Scenario::new()
        .port(
            "db",
            Port::tcp("pg").backends(&backends).set(
                "affinity",
                "{ policy: \"builtin:client-ip\", params: { timeout_seconds: 600 } }",
            ),
        )
        .start()
        .await;
    let proxy = addr(&gantry, "db", "pg");

    let mut home = Vec::new();
    for client in 1..=6 {
        let first = exchange_from(client, proxy).await;
        for _ in 0..4 {
            assert_eq!(exchange_from(client, proxy).await, first, "client {client}");
        }
        home.push(first);
    }
    // A new client gets the backend rendezvous hashing ranks first for its address: the one
    // every replica of Gantry gives it, so a client moved to another appliance keeps it.
    for (client, name) in (1..=6_u8).zip(&home) {
        let key = lb_policy::hash_key(
            &lb_config::HashKey::ClientIp,
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, client))),
            None,
        );
        let ranked =
            lb_policy::rendezvous(key, backends.iter().enumerate().map(|(i, a)| (i, *a, 1)))
                .expect("a backend");
        assert_eq!(name, ["a", "b", "c"][ranked], "client {client}: {home:?}");
    }

    // Client 1's backend fails: its next connection is served elsewhere and stays there.
    let failed = &home[0];
    let index = ["a", "b", "c"]
        .iter()
        .position(|n| n == failed)
        .expect("known");
    origins[index].stop().await;
    let moved = exchange_from(1, proxy).await;
    assert_ne!(&moved, failed);
    for _ in 0..4 {
        assert_eq!(exchange_from(1, proxy).await, moved);
    }
    // Clients on the other backends never noticed.
    for client in 2..=6 {
        let expected = &home[usize::from(client) - 1];
        if expected != failed {
            assert_eq!(&exchange_from(client, proxy).await, expected);
        }
    }

    let metrics = gantry.metrics().render();
    let series = |outcome: &str| {
        metric(
            &metrics,
            &format!("gantry_affinity_total{{outcome=\"{outcome}\",port=\"pg\",service=\"db\"}}"),
        )
    };
    assert_eq!(series("new"), 6.0);
    assert!(series("moved") >= 1.0, "{metrics}");
    assert!(series("stuck") >= 24.0 + 4.0, "{metrics}");
    gantry.shutdown(std::time::Duration::from_secs(1)).await;
}

/// A GET with an optional `Cookie` header, on a new connection.
async fn get_with_cookie(proxy: SocketAddr, cookie: Option<&str>) -> (String, String) {
    let mut request = Request::get("/").header("host", "shop.example");
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let request = request.body(Full::default()).expect("request");
    let mut client = H1::connect(proxy).await.expect("connect");
    let answer = client.send(request).await.expect("answer");
    assert_eq!(answer.status, StatusCode::OK);
    (
        answer.header("x-origin").to_owned(),
        answer.header("set-cookie").to_owned(),
    )
}

fn cookie_config(origins: &[&HttpOrigin]) -> Scenario {
    let backends: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    Scenario::new().port(
        "shop",
        Port::http("web").backends(&backends).set(
            "affinity",
            "{ policy: \"builtin:cookie\", params: { name: sid, max_age_seconds: 3600 } }",
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_sets_a_cookie_follows_it_and_replaces_it_when_its_backend_leaves() {
    let a = HttpOrigin::start("a", OriginProtocol::Http1).await;
    let b = HttpOrigin::start("b", OriginProtocol::Http1).await;
    let c = HttpOrigin::start("c", OriginProtocol::Http1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    cookie_config(&[&a, &b, &c]).write(&config);
    let gantry = gantry::Gantry::start(lb_config::load_file(&config).expect("valid"))
        .await
        .expect("gantry starts");
    let proxy = addr(&gantry, "shop", "web");

    // Without the cookie: balanced, and told where to come back.
    let (first, set_cookie) = get_with_cookie(proxy, None).await;
    let (pair, attributes) = set_cookie.split_once(';').expect("attributes");
    assert!(pair.starts_with("sid="), "{set_cookie}");
    assert_eq!(
        attributes, " Path=/; Max-Age=3600; SameSite=Lax; HttpOnly",
        "{set_cookie}"
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        seen.insert(get_with_cookie(proxy, None).await.0);
    }
    assert_eq!(seen.len(), 3, "requests without the cookie are balanced");

    // With it: always the same backend, among other cookies, and nothing set again.
    for cookie in [pair.to_owned(), format!("theme=dark; {pair}; lang=en")] {
        for _ in 0..5 {
            let (origin, set) = get_with_cookie(proxy, Some(&cookie)).await;
            assert_eq!(origin, first);
            assert_eq!(set, "", "a sticking request gets no new cookie");
        }
    }
    // A cookie naming no backend is replaced.
    let (_, replaced) = get_with_cookie(proxy, Some("sid=0123456789abcdef")).await;
    assert!(replaced.starts_with("sid="), "{replaced}");

    // The cookie's backend leaves the set: served elsewhere, with a new cookie.
    let rest: Vec<&HttpOrigin> = [&a, &b, &c]
        .into_iter()
        .filter(|o| o.name != first)
        .collect();
    cookie_config(&rest).write(&config);
    gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect("reload");
    let (moved, new_cookie) = get_with_cookie(proxy, Some(pair)).await;
    assert_ne!(moved, first);
    let new_pair = new_cookie.split(';').next().expect("pair");
    assert!(
        new_pair.starts_with("sid=") && new_pair != pair,
        "{new_cookie}"
    );
    let (again, set) = get_with_cookie(proxy, Some(new_pair)).await;
    assert_eq!((again.as_str(), set.as_str()), (moved.as_str(), ""));

    let plain = get(proxy, "/").await;
    assert!(plain.header("set-cookie").starts_with("sid="));
    gantry.shutdown(std::time::Duration::from_secs(1)).await;
}

/// The cookie's attributes for each `same_site`/`secure` pair: `SameSite=None` always goes with
/// `Secure`, which browsers require of it, even when `secure: false` says otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_site_none_cookie_is_always_secure() {
    let origin = HttpOrigin::start("a", OriginProtocol::Http1).await;
    for (params, attributes) in [
        (
            "same_site: none",
            " Path=/; SameSite=None; Secure; HttpOnly",
        ),
        (
            "same_site: none, secure: false",
            " Path=/; SameSite=None; Secure; HttpOnly",
        ),
        (
            "same_site: strict, secure: false",
            " Path=/; SameSite=Strict; HttpOnly",
        ),
        ("secure: true", " Path=/; SameSite=Lax; Secure; HttpOnly"),
    ] {
        let gantry = Scenario::new()
            .port(
                "shop",
                Port::http("web").backends(&[origin.addr]).set(
                    "affinity",
                    &format!("{{ policy: \"builtin:cookie\", params: {{ name: sid, {params} }} }}"),
                ),
            )
            .start()
            .await;
        let (_, set_cookie) = get_with_cookie(addr(&gantry, "shop", "web"), None).await;
        let (_, got) = set_cookie.split_once(';').expect("attributes");
        assert_eq!(got, attributes, "{params}");
        gantry.shutdown(std::time::Duration::from_secs(1)).await;
    }
}

#[test]
fn an_affinity_must_name_an_affinity_plugin() {
    let problems = lb_config::parse_str(
        "services:\n  - name: s\n    ports:\n      - { port: 1, backends: [\"127.0.0.1:1\"], affinity: { policy: \"builtin:maglev\" } }\n      - { port: 2, backends: [\"127.0.0.1:1\"], affinity: { params: { a: 1 } } }\n",
        std::path::Path::new("/"),
    )
    .expect_err("invalid")
    .to_string();
    assert!(
        problems.contains("services[0].ports[0].affinity.policy: unknown built-in `maglev`; built-ins are builtin:client-ip, builtin:cookie"),
        "{problems}"
    );
    assert!(
        problems.contains("services[0].ports[1].affinity.policy: required"),
        "{problems}"
    );
    let model = model("services:\n  - name: s\n    ports:\n      - { port: 1, backends: [\"127.0.0.1:1\"], affinity: { policy: \"builtin:client-ip\", params: { timeout_seconds: 86401 } } }\n");
    let refused = lb_plugins::check(&model).to_string();
    assert_eq!(
        refused,
        "services[0].ports[0].affinity: plugin `builtin:client-ip` refused its parameters: parameter `timeout_seconds`: 86401 is out of range 1..=86400"
    );
}

/// The header affinity example (`plugins/{python,js}/examples/header_affinity`) from `file`:
/// each user (`x-user`) stays on one backend, users spread, requests without the header are
/// balanced, and the plugin never faults.
async fn header_affinity_keeps_each_user_on_one_backend(file: &Path) {
    let origins = [
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
        HttpOrigin::start("c", OriginProtocol::Http1).await,
    ];
    let backends: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let gantry = Scenario::new()
        .plugin("users", file)
        .port(
            "web",
            Port::http("http").backends(&backends).set(
                "affinity",
                "{ policy: users, params: { header: X-User, timeout_seconds: 600 } }",
            ),
        )
        .start()
        .await;
    let mut client = H1::connect(addr(&gantry, "web", "http"))
        .await
        .expect("connect");
    let mut served_as = async |user: Option<&str>| {
        let mut request = Request::get("/").header("host", "web");
        if let Some(user) = user {
            request = request.header("x-user", user);
        }
        let request = request
            .body(Full::new(bytes::Bytes::new()))
            .expect("request");
        let answer = client.send(request).await.expect("answered");
        assert_eq!(answer.status, StatusCode::OK);
        answer.header("x-origin").to_owned()
    };
    let users = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let mut homes = Vec::new();
    for user in users {
        let home = served_as(Some(user)).await;
        for _ in 0..4 {
            assert_eq!(served_as(Some(user)).await, home, "{user}");
        }
        homes.push(home);
    }
    homes.sort();
    homes.dedup();
    assert!(homes.len() >= 2, "six users all on {homes:?}");
    let mut anonymous = Vec::new();
    for _ in 0..6 {
        anonymous.push(served_as(None).await);
    }
    anonymous.sort();
    anonymous.dedup();
    assert_eq!(
        anonymous,
        ["a", "b", "c"],
        "requests without the header are balanced"
    );

    let text = gantry.metrics().render();
    let affinity = |outcome: &str| {
        metric(
            &text,
            &format!(
                "gantry_affinity_total{{outcome=\"{outcome}\",port=\"http\",service=\"web\"}}"
            ),
        )
    };
    // Each user's first request and each anonymous one found nothing to stick to.
    assert_eq!(affinity("new"), 6.0 + 6.0);
    assert_eq!(affinity("stuck"), 6.0 * 4.0);
    for kind in ["trap", "deadline", "invalid_answer"] {
        let series = format!("gantry_plugin_faults_total{{kind=\"{kind}\",plugin=\"users\"}}");
        assert_eq!(metric(&text, &series), 0.0, "{kind}");
    }
    gantry.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_affinity_plugin_keeps_each_user_on_one_backend() {
    header_affinity_keeps_each_user_on_one_backend(&python_plugin("header_affinity")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_affinity_plugin_keeps_each_user_on_one_backend() {
    header_affinity_keeps_each_user_on_one_backend(&js_plugin("header_affinity")).await;
}
