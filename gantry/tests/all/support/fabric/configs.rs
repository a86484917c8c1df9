//! The configuration texts of the fabric's daemons and Gantrys.

use std::path::Path;

use super::{Liveness, Mode, ROUTER, VIP, VIP6};

pub(super) fn router_config(dir: &Path, appliances: &[String], liveness: Liveness) -> String {
    let bfd = match liveness {
        Liveness::Bfd => "on",
        Liveness::HoldTime => "off",
    };
    let mut config = format!(
        "log \"{}/bird.log\" all;\nrouter id {ROUTER};\nprotocol device {{ scan time 1; }}\n\
         protocol bfd {{ interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
         protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; merge paths on; }}\n\
         protocol kernel {{ ipv6 {{ import none; export where source = RTS_BGP; }}; merge paths on; }}\n\
         template bgp appliance {{ local {ROUTER} as 65000; hold time 9; keepalive time 3; \
         connect delay time 1; connect retry time 1; error wait time 1, 5; graceful restart off; bfd {bfd}; \
         ipv4 {{ import where net ~ [ 203.0.113.0/24{{32,32}} ]; export none; }}; }}\n\
         template bgp appliance6 {{ local fd00::1 as 65000; hold time 9; keepalive time 3; \
         connect delay time 1; connect retry time 1; error wait time 1, 5; graceful restart off; bfd {bfd}; \
         ipv6 {{ import where net ~ [ 2001:db8:100::/48{{128,128}} ]; export none; }}; }}\n",
        dir.display()
    );
    for (i, name) in appliances.iter().enumerate() {
        config.push_str(&format!(
            "protocol bgp {name} from appliance {{ neighbor 10.0.0.1{n} as 65010; }}\n\
             protocol bgp {name}v6 from appliance6 {{ neighbor fd00::1{n} as 65010; }}\n",
            n = i + 1
        ));
    }
    config
}

pub(super) fn kubernetes_config(dir: &Path, instance: &str) -> String {
    format!(
        "kubernetes:\n  kubeconfig: {}/kubeconfig\n  instance: {instance}\n  leader_election: {{ lease_namespace: default, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 300ms }}\n  address_pools: [{{ name: public, addresses: [203.0.113.32/28] }}]\n",
        dir.display()
    )
}

pub(super) fn appliance_bird_config(dir: &Path, address: &str) -> String {
    format!(
        "log \"{dir}/bird.log\" all;\nrouter id {address};\nprotocol device {{ scan time 1; }}\n\
         protocol bfd {{}}\ninclude \"{dir}/routes/gantry.con[f]\";\n",
        dir = dir.display()
    )
}

/// Gantry's configuration on an appliance: the service on `VIP`, and its `routing:` section.
pub(super) fn gantry_config(dir: &Path, address: &str, mode: Mode) -> String {
    let routing = match mode {
        Mode::Bgp(liveness) => format!(
            "routing:\n  daemon: bird\n  control_socket: {dir}/bird.ctl\n  directory: {dir}/routes\n  asn: 65010\n  withdraw_delay: 1s\n  peers: [{{ address: {ROUTER}, asn: 65000, bfd: {bfd} }}, {{ address: \"fd00::1\", asn: 65000, bfd: {bfd} }}]\n  pools: [{{ addresses: [203.0.113.0/24, \"2001:db8:100::/64\"] }}]\n",
            bfd = liveness == Liveness::Bfd,
            dir = dir.display()
        ),
        Mode::L2 => format!(
            "routing:\n  daemon: keepalived\n  directory: {dir}/routes\n  pid_file: {dir}/keepalived.pid\n  withdraw_delay: 1s\n  pools: [{{ addresses: [203.0.113.0/24] }}]\n",
            dir = dir.display()
        ),
    };
    format!(
        "admin: {{ listen: \"{address}:9901\", open: true }}\n\
         runtime: {{ shutdown_grace: 10s }}\n\
         services:\n{}{}{routing}",
        service("web", VIP),
        // IPv6 on the BGP fabric only (the L2 one is IPv4).
        match mode {
            Mode::Bgp(_) => service("web6", VIP6),
            Mode::L2 => String::new(),
        }
    )
}

/// keepalived on an appliance: one VRRP instance on `eth0` with an anchor address, Gantry's
/// addresses included from its folder (`virtual_ipaddress_excluded`), and its track file. The
/// folder starts out saying "not serving", as the appliance's tmpfiles.d makes it.
pub(super) fn keepalived_config(dir: &Path, priority: u8) -> String {
    let routes = dir.join("routes");
    std::fs::write(routes.join("ready"), "1\n").expect("ready");
    std::fs::write(routes.join("addresses.conf"), "").expect("addresses");
    format!(
        "global_defs {{\n  vrrp_version 3\n}}\n\
         track_file gantry {{\n  file \"{routes}/ready\"\n  weight 0\n}}\n\
         vrrp_instance gantry {{\n  state BACKUP\n  nopreempt\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int 0.1\n\
         virtual_ipaddress {{\n    10.0.0.100/32\n  }}\n\
         virtual_ipaddress_excluded {{\n    include {routes}/addresses.conf\n  }}\n\
         track_file {{\n    gantry\n  }}\n}}\n",
        routes = routes.display()
    )
}

/// A service on `address`, port 80, balancing over both backends with client-IP affinity.
fn service(name: &str, address: &str) -> String {
    format!(
        "  - name: {name}\n    address: \"{address}\"\n    ports:\n      - name: http\n        port: 80\n        protocol: http\n        backends: [\"10.0.0.21:8080\", \"10.0.0.22:8080\"]\n        affinity: {{ policy: \"builtin:client-ip\" }}\n"
    )
}
