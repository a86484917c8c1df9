// An HTTP health check with its own verdict, in JavaScript: the same policy as the Python
// example (plugins/python/examples/http_verdict).
//
// Gantry probes `path` on every backend each `interval_ms`; this policy decides what the
// answers mean. A backend is healthy on a status in `healthy_statuses` (default `200,204`),
// and unhealthy after `fall` (default 3) bad answers in a row; a `503` (the backend says it is
// draining or overloaded) ejects it at once for `eject_seconds` (default 10) instead of
// waiting for `fall`. `rise` (default 2) good answers in a row make it healthy again.

import { ConfigError, exportHealth, logInfo } from "../../gantry-plugin.js";

class HttpVerdict {
  constructor(params) {
    params.rejectUnknown([
      "path", "interval_ms", "timeout_ms", "healthy_statuses", "fall", "rise", "eject_seconds",
    ]);
    this.path = params.get("path", "/healthz");
    if (!this.path.startsWith("/")) {
      throw new ConfigError(`parameter \`path\`: \`${this.path}\` does not start with /`);
    }
    this.intervalMs = params.integer("interval_ms", 2000, 100, 3_600_000);
    this.timeoutMs = params.integer("timeout_ms", 1000, 10, 60_000);
    const statuses = params.get("healthy_statuses", "200,204");
    this.healthy = new Set(statuses.split(",").filter((s) => s.trim()).map(Number));
    if ([...this.healthy].some((s) => !Number.isInteger(s))) {
      throw new ConfigError(`parameter \`healthy_statuses\`: \`${statuses}\` is not a list of statuses`);
    }
    this.fall = params.integer("fall", 3, 1, 100);
    this.rise = params.integer("rise", 2, 1, 100);
    this.ejectSeconds = params.integer("eject_seconds", 10, 1, 3600);
    this.bad = new Map();
    this.good = new Map();
  }

  settings() {
    return {
      probe: {
        kind: { tag: "http", val: { path: this.path, host: undefined, tls: false } },
        intervalMs: this.intervalMs,
        timeoutMs: this.timeoutMs,
        port: undefined,
      },
      observeTraffic: false,
    };
  }

  setBackends(backends) {
    this.bad = new Map(backends.map((b) => [b.id, 0]));
    this.good = new Map(backends.map((b) => [b.id, 0]));
  }

  probed(backend, outcome) {
    const status = outcome.tag === "responded" ? outcome.val : undefined;
    if (status === 503) {
      logInfo(`backend ${backend} answered 503: ejected for ${this.ejectSeconds}s`);
      this.bad.set(backend, 0);
      this.good.set(backend, 0);
      return { tag: "eject", val: this.ejectSeconds * 1000 }; // the contract counts milliseconds
    }
    if (this.healthy.has(status)) {
      this.bad.set(backend, 0);
      this.good.set(backend, (this.good.get(backend) ?? 0) + 1);
      return { tag: this.good.get(backend) >= this.rise ? "healthy" : "unchanged" };
    }
    this.good.set(backend, 0);
    this.bad.set(backend, (this.bad.get(backend) ?? 0) + 1);
    return { tag: this.bad.get(backend) >= this.fall ? "unhealthy" : "unchanged" };
  }
}

export const healthChecks = exportHealth(HttpVerdict);
