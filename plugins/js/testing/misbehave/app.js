// A balancer that misbehaves on purpose, for the tests of the fallback and quarantine with a
// JavaScript plugin: `mode` is `trap` (`pick` throws, which ends the call as a trap), `loop`
// (`pick` never returns, so the call deadline interrupts it) or `none` (`pick` answers the
// first backend in the set).

import { ConfigError, exportBalancer } from "../../gantry-plugin.js";

class Misbehave {
  constructor(params) {
    params.rejectUnknown(["mode"]);
    this.mode = params.get("mode", "none");
    if (!["trap", "loop", "none"].includes(this.mode)) {
      throw new ConfigError(`parameter \`mode\`: \`${this.mode}\` is not trap, loop or none`);
    }
    this.first = undefined;
  }

  setBackends(backends) {
    this.first = backends.length ? Math.min(...backends.map((b) => b.id)) : undefined;
  }

  pick(request, attempt) {
    if (this.mode === "trap") throw new Error("this balancer traps on purpose");
    if (this.mode === "loop") for (;;) {}
    return this.first;
  }
}

export const balancers = exportBalancer(Misbehave);
