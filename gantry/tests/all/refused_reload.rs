//! A reload that is refused leaves nothing changed: building it touches nothing live (health
//! checkers, backend state, plugin instances and fault records, metric series, the admin
//! listener); only its commit does.

use std::net::SocketAddr;
use std::time::Duration;

use gantry::{ApplyError, Gantry};

use crate::sandbox::plugin;
use crate::support::client::{get, tcp_exchange};
use crate::support::origin::{HttpOrigin, OriginProtocol, TcpOrigin};
use crate::support::scenario::{Port, Scenario};
use crate::support::{addr, eventually, has_series, metric, model};

/// A port on an address something else already holds, which any reload adding it must
/// refuse; the listener holding it lives as long as the returned value.
fn taken_address() -> (std::net::TcpListener, SocketAddr) {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = holder.local_addr().expect("addr");
    (holder, address)
}

fn healthy(gantry: &Gantry, backend: SocketAddr) -> f64 {
    metric(
        &gantry.metrics().render(),
        &format!("gantry_backend_healthy{{backend=\"{backend}\",port=\"db\",service=\"s\"}}"),
    )
}

fn db_port(backends: &[SocketAddr]) -> Scenario {
    Scenario::new().port(
        "s",
        Port::tcp("db").backends(backends).set(
            "health",
            "[{ policy: \"builtin:tcp-check\", params: { interval: 100ms, timeout: 100ms } }]",
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_leaves_health_checking_on_the_running_backends() {
    let (a, b, c) = (
        TcpOrigin::start("a", false).await,
        TcpOrigin::start("b", false).await,
        TcpOrigin::start("c", false).await,
    );
    let gantry = db_port(&[a.addr, b.addr]).start().await;
    let proxy = addr(&gantry, "s", "db");
    eventually("both backends to be checked healthy", || async {
        healthy(&gantry, a.addr) == 1.0 && healthy(&gantry, b.addr) == 1.0
    })
    .await;

    // The same port moves to backends a and c, and a port on a taken address is added.
    let (_holder, taken) = taken_address();
    let refused = format!(
        "{}      - {{ name: extra, port: {}, backends: [\"{}\"] }}\n",
        db_port(&[a.addr, c.addr]).yaml(),
        taken.port(),
        a.addr
    );
    let err = gantry
        .apply(model(&refused))
        .await
        .expect_err("taken address");
    assert!(matches!(err, ApplyError::Bind { .. }), "{err}");
    let before = gantry.model();
    assert_eq!(
        before
            .port(&lb_config::ListenerKey {
                service: "s".into(),
                port: "db".into()
            })
            .map(|p| p.backends.len()),
        Some(2)
    );
    let text = gantry.metrics().render();
    assert!(
        !has_series(
            &text,
            &format!(
                "gantry_backend_healthy{{backend=\"{}\",port=\"db\",service=\"s\"}}",
                c.addr
            )
        ),
        "the refused backend set left a series:\n{text}"
    );
    assert!(
        !text.contains("port=\"extra\""),
        "the refused port left series:\n{text}"
    );

    // b dies: the running checker, still watching a and b, takes it out.
    b.stop().await;
    eventually("b to be found unhealthy", || async {
        healthy(&gantry, b.addr) == 0.0
    })
    .await;
    assert_eq!(healthy(&gantry, a.addr), 1.0);
    for _ in 0..10 {
        assert_eq!(
            tcp_exchange(proxy, b"ping").await,
            "a:ping",
            "b is out of rotation"
        );
    }
    gantry.shutdown(Duration::from_secs(1)).await;
}

/// Port `live` balanced by the `misbehave` plugin in mode `good`, and with `new_mode`, port
/// `new` balanced by it in that mode; both serve `backend`.
fn plugin_ports(backend: SocketAddr, new_mode: Option<&str>) -> Scenario {
    let port = |name: &str, mode: &str| {
        Port::http(name).backends(&[backend]).set(
            "balancer",
            &format!("{{ policy: mis, params: {{ mode: {mode} }} }}"),
        )
    };
    let live = Scenario::new()
        .plugin("mis", &plugin("misbehave"))
        .port("web", port("live", "good"));
    match new_mode {
        Some(mode) => live.port("web", port("new", mode)),
        None => live,
    }
}

fn instantiate_faults(gantry: &Gantry) -> f64 {
    metric(
        &gantry.metrics().render(),
        "gantry_plugin_faults_total{kind=\"instantiate\",plugin=\"mis\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_prepares_no_plugin_instance_and_records_no_fault() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = plugin_ports(origin.addr, None).start().await;
    assert_eq!(get(addr(&gantry, "web", "live"), "/").await.status, 200);
    assert_eq!(instantiate_faults(&gantry), 0.0);

    // The added port's plugin accepts its parameters but traps when given its backends, so
    // preparing its instances would record faults on the plugin's live record. The reload
    // is refused (taken address): nothing may have been prepared.
    let (_holder, taken) = taken_address();
    for _ in 0..3 {
        let refused = format!(
            "{}      - {{ name: new, port: {}, protocol: http, backends: [\"{}\"], \
             balancer: {{ policy: mis, params: {{ mode: trap_on_backends }} }} }}\n",
            plugin_ports(origin.addr, None).yaml(),
            taken.port(),
            origin.addr
        );
        let err = gantry.apply(model(&refused)).await.expect_err("taken");
        assert!(matches!(err, ApplyError::Bind { .. }), "{err}");
    }
    assert_eq!(
        instantiate_faults(&gantry),
        0.0,
        "a refused reload left faults"
    );
    assert_eq!(get(addr(&gantry, "web", "live"), "/").await.status, 200);

    // The same port applied for real does prepare instances, and the faults show: the
    // check above can fail.
    let applied = plugin_ports(origin.addr, Some("trap_on_backends"));
    gantry.apply(applied.model()).await.expect("applied");
    assert!(instantiate_faults(&gantry) >= 1.0);
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_keeps_the_admin_listener_where_it_was() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = Scenario::new()
        .port("web", Port::http("http").backends(&[origin.addr]))
        .start()
        .await;
    let admin = gantry.admin_addr().expect("admin");
    let (free, free_address) = taken_address();
    drop(free); // a free address for the admin to move to
    let (_holder, taken) = taken_address();
    let refused = format!(
        "admin: {{ listen: \"{free_address}\" }}\nservices:\n  - name: web\n    address: 127.0.0.1\n    ports:\n      - {{ name: http, port: 0, protocol: http, backends: [\"{}\"] }}\n      - {{ name: extra, port: {}, protocol: http }}\n",
        origin.addr,
        taken.port()
    );
    let err = gantry.apply(model(&refused)).await.expect_err("taken");
    assert!(matches!(err, ApplyError::Bind { .. }), "{err}");
    assert_eq!(gantry.admin_addr(), Some(admin));
    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert!(
        tokio::net::TcpStream::connect(free_address).await.is_err(),
        "the refused admin address is not served"
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}
