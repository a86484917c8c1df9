//! `kubernetes.leader_election:`: the Lease that decides which of several replicas writes to
//! the cluster, with client-go's defaults and the relations between its durations checked.

use std::time::Duration;

use crate::file::LeaderElectionFile;
use crate::lenient::Lenient;
use crate::model::LeaderElection;
use crate::names::{is_dns_label, is_dns_subdomain};
use crate::problems::{FieldPath, Problems};

use super::settings::{set_duration, DurationRange};
use super::take;

/// The Lease's name unless configured otherwise.
const DEFAULT_LEASE_NAME: &str = "gantry";

/// Its namespace unless configured otherwise: the one `deploy/rbac.yaml` grants it in.
const DEFAULT_LEASE_NAMESPACE: &str = "gantry-system";

const HOUR: Duration = Duration::from_secs(3600);

/// client-go's `JitterFactor`: the renew deadline must leave room for a jittered retry.
const RETRY_JITTER: f64 = 1.2;

/// Election is on unless the section says `enabled: false`; `None` then (its other fields
/// are checked all the same).
pub(super) fn build_leader_election(
    file: Option<Lenient<LeaderElectionFile>>,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<LeaderElection> {
    let file = match file {
        None => LeaderElectionFile::default(),
        some => take(some, path, p)?,
    };
    // Checked even when turned off: a value written is a value meant, and an error in it is
    // reported now, not when election is turned on.
    let enabled = file.enabled != Some(false);
    let lease_name = file
        .lease_name
        .unwrap_or_else(|| DEFAULT_LEASE_NAME.to_owned());
    if !is_dns_subdomain(&lease_name) || lease_name.is_empty() {
        p.push(
            &path.field("lease_name"),
            format!("`{lease_name}` is not a name: lowercase letters, digits, `-` and `.`"),
        );
    }
    let lease_namespace = file
        .lease_namespace
        .unwrap_or_else(|| DEFAULT_LEASE_NAMESPACE.to_owned());
    if !is_dns_label(&lease_namespace) {
        p.push(
            &path.field("lease_namespace"),
            format!("`{lease_namespace}` is not a namespace: lowercase letters, digits and `-`, at most 63"),
        );
    }
    let mut election = LeaderElection {
        lease_name,
        lease_namespace,
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    };
    let lease_duration = path.field("lease_duration");
    if let Some(text) = &file.lease_duration {
        if text.0.subsec_nanos() != 0 {
            // `spec.leaseDurationSeconds` is an integer.
            p.push(&lease_duration, "must be a whole number of seconds");
        }
    }
    set_duration(
        file.lease_duration,
        &mut election.lease_duration,
        DurationRange {
            min: Duration::from_secs(1),
            max: HOUR,
        },
        &lease_duration,
        p,
    );
    set_duration(
        file.renew_deadline,
        &mut election.renew_deadline,
        DurationRange::positive(HOUR),
        &path.field("renew_deadline"),
        p,
    );
    set_duration(
        file.retry_period,
        &mut election.retry_period,
        DurationRange {
            min: Duration::from_millis(100),
            max: HOUR,
        },
        &path.field("retry_period"),
        p,
    );
    if election.renew_deadline >= election.lease_duration {
        p.push(
            &path.field("renew_deadline"),
            "must be below `lease_duration`: the holder stops writing before another may take the Lease",
        );
    }
    if election.renew_deadline.as_secs_f64() <= RETRY_JITTER * election.retry_period.as_secs_f64() {
        p.push(
            &path.field("renew_deadline"),
            "must be above 1.2 × `retry_period`: room for a renewal to be tried again",
        );
    }
    enabled.then_some(election)
}
