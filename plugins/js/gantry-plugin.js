// Gantry's plugin SDK for JavaScript: what the raw WIT bindings leave awkward.
//
// A policy written in JavaScript is a WebAssembly component built by jco with its QuickJS
// backend (componentize-qjs) against Gantry's contract (plugins-wit/). The bindings map the
// contract directly: an exported interface is an object (`balancers`, `affinities`,
// `healthChecks`) holding `configure` and the resource's class; a `result` error is a thrown
// value; a record is an object with camelCase fields. This module gives:
//
// - `Params`: the operator's parameters, with typed getters whose errors name the parameter,
//   and a check that refuses unknown names (a typo is an error, not a default);
// - `exportBalancer`, `exportAffinity` and `exportHealth`: the object the balancer, affinity
//   or health world exports, made from your class, whose constructor takes `Params`; anything
//   it throws becomes the operator's error message at `gantry check`, never a trap;
// - `requestHeader`, `sequence`, `logInfo` and friends over the host interface, and a
//   `console` whose lines go to Gantry's log (the sandbox has none).
//
// Numbers: the contract's u64 values (`sequence()`, `random()`, a request's `hashKey`) arrive
// as JavaScript numbers, exact only up to 2^53; a modulo of `sequence()` is fine, but a
// consistent-hash policy over `hashKey` sees its low bits rounded. See docs/plugins.md,
// "JavaScript". TypeScript authors get these declarations from gantry-plugin.d.ts.

import * as host from "gantry:plugins/host@0.3.0";

export { host };

/** A parameter the policy cannot work with; its message is shown to the operator. */
export class ConfigError extends Error {}

/** The operator's parameters (`params:` in the configuration), by name. */
export class Params {
  constructor(parameters) {
    this.values = new Map(parameters.map((p) => [p.name, p.value]));
  }

  /** The value as text, or `fallback` when absent. */
  get(name, fallback = undefined) {
    return this.values.has(name) ? this.values.get(name) : fallback;
  }

  /** The value as text; absent is an error that says what the parameter is for. */
  require(name, what) {
    if (!this.values.has(name)) {
      throw new ConfigError(`parameter \`${name}\` is required: ${what}`);
    }
    return this.values.get(name);
  }

  /** The value as an integer within low..=high; `fallback` when absent. */
  integer(name, fallback, low, high) {
    if (!this.values.has(name)) return fallback;
    const text = this.values.get(name);
    if (!/^-?\d+$/.test(text)) {
      throw new ConfigError(`parameter \`${name}\`: \`${text}\` is not an integer`);
    }
    const value = Number(text);
    if (value < low || value > high) {
      throw new ConfigError(`parameter \`${name}\`: ${value} is not within ${low} to ${high}`);
    }
    return value;
  }

  /** Refuses a parameter the policy does not know (most likely a typo). */
  rejectUnknown(known) {
    const unknown = [...this.values.keys()].filter((name) => !known.includes(name)).sort();
    if (unknown.length) {
      const names = unknown.map((n) => `\`${n}\``).join(", ");
      const expected = [...known].sort().map((n) => `\`${n}\``).join(", ") || "none";
      throw new ConfigError(`unknown parameter ${names} (known: ${expected})`);
    }
  }
}

/** The value of a header of the HTTP request being placed (see `host.request-header`). */
export function requestHeader(name) {
  return host.requestHeader(name);
}

/** The next value of the counter shared by every worker for this backend set. */
export function sequence() {
  return Number(host.sequence());
}

export const logDebug = (message) => host.log("debug", String(message));
export const logInfo = (message) => host.log("info", String(message));
export const logWarn = (message) => host.log("warn", String(message));
export const logError = (message) => host.log("error", String(message));

// QuickJS in the sandbox has no `console`: importing this module gives one that writes to
// Gantry's log (tagged with the plugin's name), so `console.log` works as authors expect.
globalThis.console ??= {
  debug: (...parts) => logDebug(parts.join(" ")),
  log: (...parts) => logInfo(parts.join(" ")),
  info: (...parts) => logInfo(parts.join(" ")),
  warn: (...parts) => logWarn(parts.join(" ")),
  error: (...parts) => logError(parts.join(" ")),
};

/** Builds the policy; a refusal or a bug in the constructor becomes the operator's message. */
function configured(Policy, parameters) {
  try {
    return new Policy(new Params(parameters));
  } catch (error) {
    throw error instanceof ConfigError ? error.message : `${error?.name ?? "Error"}: ${error?.message ?? error}`;
  }
}

/** The `balancers` export of the balancer world, serving `Policy` (a class with
 * `setBackends`, `pick`, and optionally `plan`). */
export function exportBalancer(Policy) {
  if (!Policy.prototype.plan) {
    Policy.prototype.plan = () => undefined;
  }
  return { Balancer: Policy, configure: (parameters) => configured(Policy, parameters) };
}

/** The `affinities` export of the affinity world, serving `Policy` (a class with `stick`, and
 * optionally `setBackends` and `assigned`). Its `idleTimeoutSeconds` (set in the constructor;
 * 0 by default) is how long the host remembers a key: 0 keeps no table. `stick` answers
 * `{ tag: "none" }`, `{ tag: "remembered", val: key }` or `{ tag: "named", val: id }`. */
export function exportAffinity(Policy) {
  Policy.prototype.setBackends ??= () => {};
  Policy.prototype.assigned ??= () => null;
  return {
    Affinity: Policy,
    configure(parameters) {
      const made = configured(Policy, parameters);
      return [made, { idleTimeoutSeconds: made.idleTimeoutSeconds ?? 0 }];
    },
  };
}

/** The `healthChecks` export of the health world, serving `Policy` (a class with
 * `settings()`, which says what the host probes, and `probed`/`observed`, which answer
 * verdicts; `setBackends`, `probed` and `observed` default to doing nothing). Verdicts and
 * outcomes are `{ tag, val }` objects: `{ tag: "eject", val: milliseconds }`. */
export function exportHealth(Policy) {
  Policy.prototype.setBackends ??= () => {};
  Policy.prototype.probed ??= () => ({ tag: "unchanged" });
  Policy.prototype.observed ??= () => ({ tag: "unchanged" });
  return {
    Checker: Policy,
    configure(parameters) {
      const made = configured(Policy, parameters);
      return [made, made.settings()];
    },
  };
}

