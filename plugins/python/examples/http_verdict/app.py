"""An HTTP health check with its own verdict, in Python.

Gantry probes ``path`` on every backend each ``interval_ms``; this policy decides what the
answers mean. A backend is healthy on a status in ``healthy_statuses`` (default ``200,204``),
and unhealthy after ``fall`` (default 3) bad answers in a row; a ``503`` (the backend says it
is draining or overloaded) ejects it at once for ``eject_seconds`` (default 10) instead of
waiting for ``fall``. ``rise`` (default 2) good answers in a row make it healthy again.
"""

from gantry_plugin import ConfigError, HealthCheck, Params, export_health, log_info
from wit_world.exports.health_checks import (
    HealthSettings,
    HttpProbe,
    Outcome_Responded,
    ProbeKind_Http,
    ProbePlan,
    Verdict_Eject,
    Verdict_Healthy,
    Verdict_Unchanged,
    Verdict_Unhealthy,
)


class HttpVerdict(HealthCheck):
    def __init__(self, params: Params):
        params.reject_unknown(
            ["path", "interval_ms", "timeout_ms", "healthy_statuses", "fall", "rise", "eject_seconds"]
        )
        self.path = params.get("path", "/healthz")
        if not self.path.startswith("/"):
            raise ConfigError(f"parameter `path`: `{self.path}` does not start with /")
        self.interval_ms = params.integer("interval_ms", 2000, 100, 3_600_000)
        self.timeout_ms = params.integer("timeout_ms", 1000, 10, 60_000)
        statuses = params.get("healthy_statuses", "200,204")
        try:
            self.healthy = {int(s) for s in statuses.split(",") if s.strip()}
        except ValueError:
            raise ConfigError(
                f"parameter `healthy_statuses`: `{statuses}` is not a list of statuses"
            ) from None
        self.fall = params.integer("fall", 3, 1, 100)
        self.rise = params.integer("rise", 2, 1, 100)
        self.eject_seconds = params.integer("eject_seconds", 10, 1, 3600)
        self.bad: dict[int, int] = {}
        self.good: dict[int, int] = {}

    def settings(self):
        probe = ProbePlan(
            kind=ProbeKind_Http(HttpProbe(path=self.path, host=None, tls=False)),
            interval_ms=self.interval_ms,
            timeout_ms=self.timeout_ms,
            port=None,
        )
        return HealthSettings(probe=probe, observe_traffic=False)

    def set_backends(self, backends):
        self.bad = {b.id: 0 for b in backends}
        self.good = {b.id: 0 for b in backends}

    def probed(self, backend, outcome):
        status = outcome.value if isinstance(outcome, Outcome_Responded) else None
        if status == 503:
            log_info(f"backend {backend} answered 503: ejected for {self.eject_seconds}s")
            self.bad[backend] = self.good[backend] = 0
            return Verdict_Eject(self.eject_seconds * 1000)  # the contract counts milliseconds
        if status in self.healthy:
            self.bad[backend] = 0
            self.good[backend] = self.good.get(backend, 0) + 1
            return Verdict_Healthy() if self.good[backend] >= self.rise else Verdict_Unchanged()
        self.good[backend] = 0
        self.bad[backend] = self.bad.get(backend, 0) + 1
        return Verdict_Unhealthy() if self.bad[backend] >= self.fall else Verdict_Unchanged()


HealthChecks = export_health(HttpVerdict)
