// The canary balancer in TypeScript: the JavaScript example (../canary/app.js) with types,
// checked by `tsc` against gantry-plugin.d.ts and built by jco, which bundles TypeScript.
//
// Requests whose header `header` (default `x-canary`) equals `value` (default `always`) go to
// the canary backends, those listening on port `canary_port`; every other request goes,
// round-robin, to the rest. With no canary backend left, canary requests fall back to the
// rest rather than fail.

import {
  exportBalancer,
  requestHeader,
  sequence,
  type Backend,
  type BalancerPolicy,
  type Params,
  type Request,
} from "../../gantry-plugin.js";

class Canary implements BalancerPolicy {
  private readonly header: string;
  private readonly value: string;
  private readonly canaryPort: number;
  private canary: number[] = [];
  private stable: number[] = [];

  constructor(params: Params) {
    params.rejectUnknown(["header", "value", "canary_port"]);
    this.header = params.get("header", "x-canary").toLowerCase();
    this.value = params.get("value", "always");
    params.require("canary_port", "the port the canary backends listen on");
    this.canaryPort = params.integer("canary_port", 0, 1, 65535);
  }

  setBackends(backends: Backend[]): void {
    const live = backends.filter((b) => b.weight > 0);
    this.canary = live.filter((b) => b.port === this.canaryPort).map((b) => b.id);
    this.stable = live.filter((b) => b.port !== this.canaryPort).map((b) => b.id);
  }

  pick(_request: Request, _attempt: number): number | undefined {
    const wantsCanary = requestHeader(this.header) === this.value;
    let group = wantsCanary && this.canary.length > 0 ? this.canary : this.stable;
    if (group.length === 0) group = this.canary;
    if (group.length === 0) return undefined;
    return group[sequence() % group.length];
  }
}

export const balancers = exportBalancer(Canary);
