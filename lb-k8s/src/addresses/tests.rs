//! Address pools: handed out in order, kept, asked for, shared only when both Services opt
//! in with disjoint ports, re-adopted after a restart, never taken from another Service.

use std::net::IpAddr;

use ipnet::IpNet;
use lb_config::AddressRange;

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("shop", name)
}

fn net(text: &str) -> AddressRange {
    AddressRange::of_net(text.parse::<IpNet>().expect("cidr"), true)
}

fn pools() -> Vec<Pool> {
    vec![
        Pool {
            name: "public".into(),
            ranges: vec![net("192.0.2.0/30")],
        },
        Pool {
            name: "spare".into(),
            ranges: vec![AddressRange {
                first: ip("198.51.100.10"),
                last: ip("198.51.100.11"),
            }],
        },
        Pool {
            name: "v6".into(),
            ranges: vec![net("2001:db8::/64")],
        },
    ]
}

fn http() -> Request {
    Request {
        ports: vec![(80, "TCP".into())],
        ..Request::default()
    }
}

#[test]
fn addresses_are_handed_out_in_order_kept_and_released() {
    let mut addresses = Addresses::new(pools());
    // A /30 gives its two host addresses, then the next pool's range.
    assert_eq!(addresses.assign(&key("a"), &http()), Ok(ip("192.0.2.1")));
    assert_eq!(addresses.assign(&key("b"), &http()), Ok(ip("192.0.2.2")));
    assert_eq!(
        addresses.assign(&key("c"), &http()),
        Ok(ip("198.51.100.10"))
    );
    assert_eq!(
        addresses.assign(&key("a"), &http()),
        Ok(ip("192.0.2.1")),
        "kept"
    );
    assert_eq!(
        addresses.assign(&key("d"), &http()),
        Ok(ip("198.51.100.11"))
    );
    assert_eq!(
        addresses.assign(&key("e"), &http()),
        Err(Refusal::Exhausted)
    );
    addresses.release(&key("b"));
    assert_eq!(addresses.assign(&key("e"), &http()), Ok(ip("192.0.2.2")));
    assert_eq!(
        addresses.in_use().into_iter().collect::<Vec<_>>(),
        [("public", 2), ("spare", 2), ("v6", 0)]
    );
}

#[test]
fn an_address_asked_for_is_given_only_from_a_pool_and_never_taken_from_another_service() {
    let mut addresses = Addresses::new(pools());
    let asking = |address: &str| Request {
        address: Some(ip(address)),
        ..http()
    };
    assert_eq!(
        addresses.assign(&key("a"), &asking("192.0.2.2")),
        Ok(ip("192.0.2.2"))
    );
    assert_eq!(
        addresses.assign(&key("b"), &asking("203.0.113.1")),
        Err(Refusal::NotInPool(ip("203.0.113.1")))
    );
    assert_eq!(
        addresses.assign(&key("b"), &asking("192.0.2.2")),
        Err(Refusal::Taken {
            address: ip("192.0.2.2"),
            by: key("a")
        })
    );
    assert_eq!(
        addresses.held(&key("b")),
        Vec::<IpAddr>::new(),
        "a refused Service holds nothing"
    );
    // A Service that changes what it asks for moves, and frees its old address.
    assert_eq!(
        addresses.assign(&key("a"), &asking("192.0.2.1")),
        Ok(ip("192.0.2.1"))
    );
    assert_eq!(
        addresses.assign(&key("b"), &asking("192.0.2.2")),
        Ok(ip("192.0.2.2"))
    );
}

#[test]
fn services_share_an_address_only_with_the_same_key_and_no_common_port() {
    let mut addresses = Addresses::new(pools());
    let sharing = |key: Option<&str>, port: u16| Request {
        sharing_key: key.map(str::to_owned),
        ports: vec![(port, "TCP".into())],
        ..Request::default()
    };
    let first = addresses
        .assign(&key("web"), &sharing(Some("edge"), 80))
        .expect("an address");
    assert_eq!(
        addresses.assign(&key("mail"), &sharing(Some("edge"), 25)),
        Ok(first)
    );
    // Same key but a common port, or another key: an address of its own.
    let other = addresses
        .assign(&key("web2"), &sharing(Some("edge"), 80))
        .expect("an address");
    assert_ne!(other, first);
    let asked = Request {
        address: Some(first),
        ..sharing(Some("other"), 443)
    };
    assert_eq!(
        addresses.assign(&key("tls"), &asked),
        Err(Refusal::Taken {
            address: first,
            by: key("mail")
        })
    );
    // UDP and TCP on one port number do not collide.
    let dns = Request {
        address: Some(first),
        sharing_key: Some("edge".into()),
        ports: vec![(80, "UDP".into())],
        ..Request::default()
    };
    assert_eq!(addresses.assign(&key("dns"), &dns), Ok(first));
}

#[test]
fn a_restart_gives_every_service_back_the_address_its_status_shows() {
    // Before the restart a, b and c held .1, .2 and .10; a new Service d arrives first in
    // the watch, but every status is adopted before anything new is handed out.
    let mut addresses = Addresses::new(pools());
    for (name, shown) in [
        ("a", "192.0.2.1"),
        ("b", "192.0.2.2"),
        ("c", "198.51.100.10"),
    ] {
        assert!(addresses.adopt(&key(name), ip(shown), &http()));
    }
    assert!(
        !addresses.adopt(&key("x"), ip("203.0.113.5"), &http()),
        "not a pool's"
    );
    assert_eq!(
        addresses.assign(&key("d"), &http()),
        Ok(ip("198.51.100.11"))
    );
    assert_eq!(addresses.assign(&key("b"), &http()), Ok(ip("192.0.2.2")));
}

#[test]
fn pools_and_families_are_honoured() {
    let mut addresses = Addresses::new(pools());
    let v6 = Request {
        family: Some(Family::V6),
        ..http()
    };
    // Never 2001:db8:: itself, the subnet-router anycast address.
    assert_eq!(addresses.assign(&key("a"), &v6), Ok(ip("2001:db8::1")));
    assert_eq!(addresses.assign(&key("b"), &v6), Ok(ip("2001:db8::2")));
    let spare = Request {
        pool: Some("spare".into()),
        ..http()
    };
    assert_eq!(addresses.assign(&key("c"), &spare), Ok(ip("198.51.100.10")));
    let unknown = Request {
        pool: Some("nowhere".into()),
        ..http()
    };
    assert_eq!(
        addresses.assign(&key("d"), &unknown),
        Err(Refusal::UnknownPool("nowhere".into()))
    );
}

#[test]
fn a_dual_stack_service_holds_one_address_per_family() {
    let mut addresses = Addresses::new(pools());
    let of = |family| Request {
        family: Some(family),
        ..http()
    };
    assert_eq!(
        addresses.assign(&key("a"), &of(Family::V4)),
        Ok(ip("192.0.2.1"))
    );
    assert_eq!(
        addresses.assign(&key("a"), &of(Family::V6)),
        Ok(ip("2001:db8::1"))
    );
    assert_eq!(
        addresses.held(&key("a")),
        vec![ip("192.0.2.1"), ip("2001:db8::1")]
    );
    // Each family keeps its own address.
    assert_eq!(
        addresses.assign(&key("a"), &of(Family::V4)),
        Ok(ip("192.0.2.1"))
    );
    // Single-stack again: the IPv6 address goes back.
    addresses.keep_families(&key("a"), &[Family::V4]);
    assert_eq!(addresses.held(&key("a")), vec![ip("192.0.2.1")]);
    assert_eq!(
        addresses.assign(&key("b"), &of(Family::V6)),
        Ok(ip("2001:db8::1"))
    );
    // A status address of the other family is not adopted for this request.
    assert!(!addresses.adopt(&key("c"), ip("2001:db8::5"), &of(Family::V4)));
    assert!(addresses.adopt(&key("c"), ip("2001:db8::5"), &of(Family::V6)));
}
