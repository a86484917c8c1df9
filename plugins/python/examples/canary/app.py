"""A canary split by header, in Python: the same policy as the Rust example
(plugins/examples/canary).

Requests whose header ``header`` (default ``x-canary``) equals ``value`` (default ``always``)
go to the canary backends, those listening on port ``canary_port``; every other request goes,
round-robin, to the rest. With no canary backend left, canary requests fall back to the rest
rather than fail.
"""

from gantry_plugin import Balancer, Params, export_balancer, request_header, sequence


class Canary(Balancer):
    def __init__(self, params: Params):
        params.reject_unknown(["header", "value", "canary_port"])
        self.header = params.get("header", "x-canary").lower()
        self.value = params.get("value", "always")
        params.require("canary_port", "the port the canary backends listen on")
        self.canary_port = params.integer("canary_port", default=0, low=1, high=65535)
        self.canary: list[int] = []
        self.stable: list[int] = []

    def set_backends(self, backends):
        live = [b for b in backends if b.weight > 0]
        self.canary = [b.id for b in live if b.port == self.canary_port]
        self.stable = [b.id for b in live if b.port != self.canary_port]

    def pick(self, request, attempt):
        wants_canary = request_header(self.header) == self.value
        if wants_canary and self.canary:
            group = self.canary
        else:
            group = self.stable or self.canary
        if not group:
            return None
        return group[sequence() % len(group)]


Balancers = export_balancer(Canary)
