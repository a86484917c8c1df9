"""A balancer that misbehaves on purpose, for the tests of the fallback and quarantine with a
Python plugin: ``mode`` is ``trap`` (``pick`` raises, which ends the call as a trap), ``loop``
(``pick`` never returns, so the call deadline interrupts it) or ``none`` (``pick`` answers
the first backend in the set)."""

from gantry_plugin import Balancer, ConfigError, Params, export_balancer


class Misbehave(Balancer):
    def __init__(self, params: Params):
        params.reject_unknown(["mode"])
        self.mode = params.get("mode", "none")
        if self.mode not in ("trap", "loop", "none"):
            raise ConfigError(f"parameter `mode`: `{self.mode}` is not trap, loop or none")
        self.first = None

    def set_backends(self, backends):
        self.first = min((b.id for b in backends), default=None)

    def pick(self, request, attempt):
        if self.mode == "trap":
            raise RuntimeError("this balancer traps on purpose")
        if self.mode == "loop":
            while True:
                pass
        return self.first


Balancers = export_balancer(Misbehave)
