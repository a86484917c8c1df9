//! Announcing the addresses Gantry serves through a routing daemon (BIRD 2: [`bird`]), so the
//! network reaches several appliances at once (ECMP) and routes around one that is gone.
//! Gantry never speaks BGP itself.
//!
//! One task follows the `routing:` section. It works out the addresses to announce from the
//! listeners that serve (with `announce: healthy`, only those with a port that has a healthy
//! backend), and when they change it writes them for the daemon and asks it to reconfigure,
//! trying again with backoff while it cannot. A stopping Gantry withdraws first
//! ([`Routes::withdraw`]) and drains after; one that hands over to a successor withdraws
//! nothing, since the successor announces the same routes. If Gantry dies, the [`guard`]
//! withdraws.

pub(crate) mod bird;
pub mod daemon;
pub mod guard;
pub(crate) mod keepalived;
pub(crate) mod offer;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_config::{Announce, Routing};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::daemon::Withdrawal;
use self::guard::OwnerLock;
use self::offer::{Announcement, Offer};
use lb_core::metrics::Metrics;

/// How often backends' health is looked at with `announce: healthy`.
const HEALTH_POLL: Duration = Duration::from_millis(200);

/// The first wait before a failed update is tried again; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// The longest wait before a failed update is tried again.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The longest a stopping Gantry waits for the daemon to take its withdrawal.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(5);

/// What serves, as the announcer needs to know it.
pub(crate) trait Served: Send + Sync + 'static {
    /// Every address a listener serves on, with whether one of its ports has a healthy
    /// backend.
    fn served(&self) -> BTreeMap<IpAddr, bool>;
}

/// What the daemon was last given, for `/config`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Shown {
    /// The addresses announced, with their pools' attributes.
    pub announced: Vec<ShownRoute>,
    /// Why the last update failed, while it does.
    pub error: Option<String>,
    /// Everything was withdrawn because Gantry is stopping.
    pub withdrawn: bool,
}

/// One announced address.
#[derive(Clone, Debug, Serialize)]
pub struct ShownRoute {
    /// `203.0.113.1/32`.
    pub prefix: String,
    /// Its communities.
    pub communities: Vec<String>,
    /// Its `LOCAL_PREF`.
    pub local_preference: Option<u32>,
}

/// The announcer of a running Gantry.
pub(crate) struct Routes {
    section: watch::Sender<Option<Routing>>,
    nudge: Arc<Notify>,
    withdrawing: watch::Sender<bool>,
    shown: watch::Sender<Shown>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Routes {
    /// An announcer with no section yet.
    pub(crate) fn new() -> Routes {
        Routes {
            section: watch::channel(None).0,
            nudge: Arc::new(Notify::new()),
            withdrawing: watch::channel(false).0,
            shown: watch::channel(Shown::default()).0,
            stop: CancellationToken::new(),
            task: Mutex::new(None),
        }
    }

    /// Starts following the section, announcing what `served` serves.
    pub(crate) fn start(&self, served: Arc<dyn Served>, metrics: Arc<Metrics>) {
        let task = tokio::spawn(supervise(Supervised {
            section: self.section.subscribe(),
            stop: self.stop.clone(),
            announcer: Announcer {
                served,
                nudge: self.nudge.clone(),
                withdrawing: self.withdrawing.subscribe(),
                shown: self.shown.clone(),
                metrics,
            },
        }));
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// The running model's section (the announcer restarts when it changes), after a change
    /// of what serves.
    pub(crate) fn follow(&self, section: Option<&Routing>) {
        self.section.send_if_modified(|current| {
            let changed = current.as_ref() != section;
            if changed {
                *current = section.cloned();
            }
            changed
        });
        self.nudge.notify_one();
    }

    /// What the daemon was last given.
    pub(crate) fn shown(&self) -> Shown {
        self.shown.borrow().clone()
    }

    /// Withdraws every route (for good: Gantry is stopping), and once the daemon has it (or
    /// after [`WITHDRAW_TIMEOUT`]), waits `withdraw_delay` so routers stop sending before the
    /// listeners close. Without a section, returns at once.
    pub(crate) async fn withdraw(&self) {
        let Some(delay) = self.section.borrow().as_ref().map(|r| r.withdraw_delay) else {
            return;
        };
        self.withdrawing.send_replace(true);
        let mut shown = self.shown.subscribe();
        let taken = tokio::time::timeout(WITHDRAW_TIMEOUT, shown.wait_for(|s| s.withdrawn)).await;
        match taken {
            Ok(Ok(_)) => tracing::info!(
                delay = ?delay,
                "routes withdrawn; serving on while routers move away"
            ),
            _ => tracing::error!(
                "the routing daemon did not take the withdrawal in time; draining anyway"
            ),
        }
        tokio::time::sleep(delay).await;
    }

    /// Stops the announcer, leaving the routes as they are (a successor announces them, or
    /// they were withdrawn).
    pub(crate) async fn stop(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// What the supervising task works with.
struct Supervised {
    section: watch::Receiver<Option<Routing>>,
    stop: CancellationToken,
    announcer: Announcer,
}

/// What the announcer works with.
struct Announcer {
    served: Arc<dyn Served>,
    nudge: Arc<Notify>,
    withdrawing: watch::Receiver<bool>,
    shown: watch::Sender<Shown>,
    metrics: Arc<Metrics>,
}

/// Runs the announcer for each section in turn. The hold on the routing folder is kept
/// across sections that keep the folder, so a change of section never wakes the guard.
async fn supervise(s: Supervised) {
    let Supervised {
        mut section,
        stop,
        mut announcer,
    } = s;
    let mut held: Option<OwnerLock> = None;
    let mut previous: Option<Routing> = None;
    loop {
        let current = section.borrow_and_update().clone();
        let directory = current.as_ref().map(|r| r.directory().to_owned());
        if let Some(lock) = held.take_if(|l| Some(l.directory()) != directory.as_deref()) {
            if let Some(old) = &previous {
                retire(old).await;
            }
            drop(lock);
        }
        previous.clone_from(&current);
        let Some(routing) = current else {
            announcer.shown.send_replace(Shown::default());
            announcer.metrics.routing_off();
            tokio::select! {
                () = stop.cancelled() => return,
                changed = section.changed() => if changed.is_err() { return },
            }
            continue;
        };
        if held.is_none() {
            let directory = routing.directory();
            match guard::hold(directory).await {
                Ok(lock) => {
                    guard::spawn(&Withdrawal::of(&routing.daemon));
                    held = Some(lock);
                }
                Err(err) => {
                    // Nothing is announced without the hold: the guard could not withdraw it.
                    tracing::error!(directory = %directory.display(), %err, "cannot use the routing folder: nothing is announced");
                    announcer.metrics.routing_update(false);
                    announcer.shown.send_replace(Shown {
                        error: Some(format!("{}: {err}", directory.display())),
                        ..Shown::default()
                    });
                    tokio::select! {
                        () = stop.cancelled() => return,
                        changed = section.changed() => if changed.is_err() { return },
                        () = tokio::time::sleep(MAX_RETRY) => {}
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = section.changed() => if changed.is_err() { return },
            () = announcer.announce(&routing) => return,
        }
    }
}

/// Removes what a section that went (or moved) had given the daemon.
async fn retire(routing: &Routing) {
    let directory = routing.directory();
    match daemon::retire(&routing.daemon).await {
        Ok(()) => {
            tracing::info!(directory = %directory.display(), "routing section gone: what it announced is removed")
        }
        Err(err) => {
            tracing::error!(%err, "could not remove the routing section's sessions and routes")
        }
    }
}

impl Announcer {
    /// Announces what serves under `routing` until the section changes or Gantry stops.
    async fn announce(&mut self, routing: &Routing) {
        let mut given: Option<Offer> = None;
        let mut retry = FIRST_RETRY;
        loop {
            let withdrawing = *self.withdrawing.borrow_and_update();
            let offer = Offer {
                wanted: if withdrawing {
                    Vec::new()
                } else {
                    wanted(routing, &self.served.served())
                },
                withdrawing,
            };
            let mut failed = false;
            if given.as_ref() != Some(&offer) {
                match daemon::give(&routing.daemon, &offer, given.is_none()).await {
                    Ok(()) => {
                        self.metrics.routing_update(true);
                        let v4 = offer.wanted.iter().filter(|a| a.address.is_ipv4()).count();
                        self.metrics.routing_announced(v4, offer.wanted.len() - v4);
                        tracing::info!(
                            announced = offer.wanted.len(),
                            withdrawing,
                            "routes given to the routing daemon"
                        );
                        self.shown.send_replace(show(&offer, None));
                        given = Some(offer);
                        retry = FIRST_RETRY;
                    }
                    Err(err) => {
                        self.metrics.routing_update(false);
                        tracing::warn!(%err, retry = ?retry, "the routing daemon did not take the routes; trying again");
                        self.shown
                            .send_modify(|shown| shown.error = Some(err.to_string()));
                        failed = true;
                    }
                }
            }
            let wait = if failed {
                let wait = retry;
                retry = (retry * 2).min(MAX_RETRY);
                wait
            } else if routing.announce == Announce::Healthy && !withdrawing {
                HEALTH_POLL
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                () = self.nudge.notified() => {}
                changed = self.withdrawing.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The routes for what serves: each served address in a routed pool (with `announce:
/// healthy`, only while healthy), with that pool's attributes, in address order.
fn wanted(routing: &Routing, served: &BTreeMap<IpAddr, bool>) -> Vec<Announcement> {
    served
        .iter()
        .filter(|(_, healthy)| routing.announce == Announce::Always || **healthy)
        .filter_map(|(address, _)| {
            let pool = routing.pool_of(*address)?;
            Some(Announcement {
                address: *address,
                communities: pool.communities.clone(),
                local_preference: pool.local_preference,
            })
        })
        .collect()
}

fn show(offer: &Offer, error: Option<String>) -> Shown {
    Shown {
        announced: offer
            .wanted
            .iter()
            .map(|a| ShownRoute {
                prefix: match a.address {
                    IpAddr::V4(ip) => format!("{ip}/32"),
                    IpAddr::V6(ip) => format!("{ip}/128"),
                },
                communities: a.communities.iter().map(ToString::to_string).collect(),
                local_preference: a.local_preference,
            })
            .collect(),
        error,
        withdrawn: offer.withdrawing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_addresses_of_routed_pools_are_wanted_and_healthy_ones_when_asked() {
        let yaml = "routing:\n  daemon: bird\n  asn: 65010\n  peers: [{ address: 10.0.0.1, asn: 65000 }]\n  pools:\n    - { addresses: [203.0.113.0/24], communities: [\"65000:7\"] }\n";
        let mut routing = lb_config::parse_str(yaml, std::path::Path::new("/"))
            .expect("valid")
            .routing
            .expect("routing");
        let served: BTreeMap<IpAddr, bool> = [
            ("203.0.113.1", true),
            ("203.0.113.2", false),
            ("198.51.100.1", true),
            ("127.0.0.1", true),
        ]
        .into_iter()
        .map(|(ip, healthy)| (ip.parse().expect("ip"), healthy))
        .collect();
        let addresses = |wanted: Vec<Announcement>| -> Vec<String> {
            wanted.iter().map(|a| a.address.to_string()).collect()
        };
        let always = wanted(&routing, &served);
        assert_eq!(addresses(always.clone()), ["203.0.113.1", "203.0.113.2"]);
        assert_eq!(
            always[0].communities,
            vec![lb_config::Community::Standard(65000, 7)]
        );
        routing.announce = Announce::Healthy;
        assert_eq!(addresses(wanted(&routing, &served)), ["203.0.113.1"]);
    }
}
