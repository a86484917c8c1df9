//! Port settings (timeouts, limits, retries, back-off, trusted proxies): the built-in defaults,
//! `defaults:` over them, a port's own over those, every value checked against its documented
//! range. Every duration has a maximum, so nothing the data path adds to a clock can overflow
//! on a value that passed validation.

use std::time::Duration;

use crate::file::PortSettingsFile;
use crate::lenient::DurationText;
use crate::model::{Backoff, Limits, Networks, PortSettings, Timeouts};
use crate::problems::{FieldPath, Problems};

use super::{lenient_ref, parse_net};

/// Header count ceiling: the HTTP/1 relay parses a head into 256 header slots.
const MAX_HEADERS_CEILING: u32 = 256;
/// Header size ceiling (1 MiB - 1): a head is read whole into memory before it is parsed.
const MAX_HEADER_BYTES_CEILING: u32 = 1_048_575;
/// Weight ceiling, as HAProxy's: keeps the native weighted schedule small.
pub const MAX_WEIGHT: u32 = 256;
const MAX_RETRIES: u32 = 16;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// The range a duration must fall in.
#[derive(Clone, Copy, Debug)]
pub(super) struct DurationRange {
    /// Shortest accepted; zero means zero is accepted.
    pub(super) min: Duration,
    /// Longest accepted.
    pub(super) max: Duration,
}

impl DurationRange {
    /// Greater than zero, at most `max`.
    pub(super) const fn positive(max: Duration) -> Self {
        DurationRange {
            min: Duration::from_nanos(1),
            max,
        }
    }
}

/// The ranges of port timeouts, by field name, as `docs/configuration.md` lists them.
const TIMEOUT_RANGES: [(&str, DurationRange); 10] = [
    (
        "connect",
        DurationRange::positive(Duration::from_secs(5 * 60)),
    ),
    ("header_read", DurationRange::positive(HOUR)),
    (
        "tls_handshake",
        DurationRange::positive(Duration::from_secs(5 * 60)),
    ),
    ("client_idle", DurationRange::positive(DAY)),
    (
        "tcp_idle",
        DurationRange::positive(Duration::from_secs(7 * 24 * 3600)),
    ),
    ("upstream_read", DurationRange::positive(DAY)),
    ("upstream_idle", DurationRange::positive(DAY)),
    ("udp_idle", DurationRange::positive(DAY)),
    ("udp_stream_idle", DurationRange::positive(DAY)),
    ("udp_drain_quiet", DurationRange::positive(HOUR)),
];

/// The largest UDP payload over IPv4 (65535 minus the IP and UDP headers).
pub(super) const MAX_DATAGRAM_CEILING: u32 = 65_507;

/// The most UDP flows one port may hold.
pub(super) const MAX_FLOWS_CEILING: u32 = 1 << 24;

/// The range of both back-off durations.
const BACKOFF_RANGE: DurationRange = DurationRange::positive(HOUR);

/// Port settings when neither the port nor `defaults:` says otherwise.
pub fn builtin_port_settings() -> PortSettings {
    PortSettings {
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            header_read: Duration::from_secs(10),
            tls_handshake: Duration::from_secs(10),
            client_idle: MINUTE,
            tcp_idle: HOUR,
            upstream_read: MINUTE,
            upstream_idle: MINUTE,
            // kube-proxy's conntrack UDP timeouts.
            udp_idle: Duration::from_secs(30),
            udp_stream_idle: Duration::from_secs(120),
            udp_drain_quiet: Duration::from_secs(1),
        },
        limits: Limits {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_flows: 65_536,
            max_datagram_bytes: MAX_DATAGRAM_CEILING,
        },
        retries: 2,
        backoff: Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(30),
        },
        trusted_proxies: Networks::default(),
        source_ranges: Networks::default(),
    }
}

/// `base` overridden by whatever `file` sets, each value range-checked.
pub(super) fn apply_settings(
    base: &PortSettings,
    file: &PortSettingsFile,
    path: &FieldPath,
    p: &mut Problems,
) -> PortSettings {
    let mut out = base.clone();
    if let Some(timeouts) = lenient_ref(&file.timeouts, &path.field("timeouts"), p) {
        let tp = path.field("timeouts");
        let t = &mut out.timeouts;
        let slots = [
            (timeouts.connect, &mut t.connect),
            (timeouts.header_read, &mut t.header_read),
            (timeouts.tls_handshake, &mut t.tls_handshake),
            (timeouts.client_idle, &mut t.client_idle),
            (timeouts.tcp_idle, &mut t.tcp_idle),
            (timeouts.upstream_read, &mut t.upstream_read),
            (timeouts.upstream_idle, &mut t.upstream_idle),
            (timeouts.udp_idle, &mut t.udp_idle),
            (timeouts.udp_stream_idle, &mut t.udp_stream_idle),
            (timeouts.udp_drain_quiet, &mut t.udp_drain_quiet),
        ];
        for ((value, slot), (name, range)) in slots.into_iter().zip(TIMEOUT_RANGES) {
            set_duration(value, slot, range, &tp.field(name), p);
        }
    }
    if let Some(limits) = lenient_ref(&file.limits, &path.field("limits"), p) {
        let lp = path.field("limits");
        let l = &mut out.limits;
        for (value, slot, name, range) in [
            (
                limits.max_connections,
                &mut l.max_connections,
                "max_connections",
                1..=u32::MAX,
            ),
            (
                limits.max_header_bytes,
                &mut l.max_header_bytes,
                "max_header_bytes",
                1024..=MAX_HEADER_BYTES_CEILING,
            ),
            (
                limits.max_headers,
                &mut l.max_headers,
                "max_headers",
                1..=MAX_HEADERS_CEILING,
            ),
            (
                limits.max_flows,
                &mut l.max_flows,
                "max_flows",
                1..=MAX_FLOWS_CEILING,
            ),
            (
                limits.max_datagram_bytes,
                &mut l.max_datagram_bytes,
                "max_datagram_bytes",
                512..=MAX_DATAGRAM_CEILING,
            ),
        ] {
            match value {
                Some(v) if range.contains(&v) => *slot = v,
                Some(v) => p.push(
                    &lp.field(name),
                    format!("{v} is out of range {}..={}", range.start(), range.end()),
                ),
                None => {}
            }
        }
    }
    match file.retries {
        Some(r) if r <= MAX_RETRIES => out.retries = r,
        Some(r) => p.push(
            &path.field("retries"),
            format!("{r} is out of range 0..={MAX_RETRIES}"),
        ),
        None => {}
    }
    if let Some(backoff) = lenient_ref(&file.backoff, &path.field("backoff"), p) {
        let bp = path.field("backoff");
        let b = &mut out.backoff;
        set_duration(
            backoff.initial,
            &mut b.initial,
            BACKOFF_RANGE,
            &bp.field("initial"),
            p,
        );
        set_duration(backoff.max, &mut b.max, BACKOFF_RANGE, &bp.field("max"), p);
        if b.max < b.initial {
            p.push(&bp.field("max"), "must not be shorter than backoff.initial");
        }
    }
    if let Some(cidrs) = &file.trusted_proxies {
        out.trusted_proxies = networks(cidrs, &path.field("trusted_proxies"), p);
    }
    if let Some(cidrs) = &file.source_ranges {
        out.source_ranges = networks(cidrs, &path.field("source_ranges"), p);
    }
    out
}

/// Most networks in one list: a list is matched per connection.
const MAX_NETWORKS: usize = 4096;

/// A list of CIDRs or addresses, each checked.
fn networks(texts: &[String], path: &FieldPath, p: &mut Problems) -> Networks {
    if texts.len() > MAX_NETWORKS {
        p.push(
            path,
            format!("{} entries; at most {MAX_NETWORKS}", texts.len()),
        );
    }
    Networks(
        texts
            .iter()
            .enumerate()
            .filter_map(|(i, text)| parse_net(text, &path.index(i), p))
            .collect(),
    )
}

/// Sets `slot` to `value` when it lies in `range`; otherwise reports why not.
pub(super) fn set_duration(
    value: Option<DurationText>,
    slot: &mut Duration,
    range: DurationRange,
    path: &FieldPath,
    p: &mut Problems,
) {
    let Some(DurationText(d)) = value else {
        return;
    };
    if d.is_zero() && !range.min.is_zero() {
        p.push(path, "must be greater than zero");
    } else if d < range.min {
        p.push(path, format!("must be at least {}", text(range.min)));
    } else if d > range.max {
        p.push(
            path,
            format!("{} is above the maximum of {}", text(d), text(range.max)),
        );
    } else {
        *slot = d;
    }
}

fn text(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}
