// A canary split by header, in JavaScript: the same policy as the Rust example
// (plugins/examples/canary) and the Python one (plugins/python/examples/canary).
//
// Requests whose header `header` (default `x-canary`) equals `value` (default `always`) go to
// the canary backends, those listening on port `canary_port`; every other request goes,
// round-robin, to the rest. With no canary backend left, canary requests fall back to the
// rest rather than fail.

import { exportBalancer, requestHeader, sequence } from "../../gantry-plugin.js";

class Canary {
  constructor(params) {
    params.rejectUnknown(["header", "value", "canary_port"]);
    this.header = params.get("header", "x-canary").toLowerCase();
    this.value = params.get("value", "always");
    params.require("canary_port", "the port the canary backends listen on");
    this.canaryPort = params.integer("canary_port", 0, 1, 65535);
    this.canary = [];
    this.stable = [];
  }

  setBackends(backends) {
    const live = backends.filter((b) => b.weight > 0);
    this.canary = live.filter((b) => b.port === this.canaryPort).map((b) => b.id);
    this.stable = live.filter((b) => b.port !== this.canaryPort).map((b) => b.id);
  }

  pick(request, attempt) {
    const wantsCanary = requestHeader(this.header) === this.value;
    let group = wantsCanary && this.canary.length ? this.canary : this.stable;
    if (!group.length) group = this.canary;
    if (!group.length) return undefined;
    return group[sequence() % group.length];
  }
}

export const balancers = exportBalancer(Canary);
