// TypeScript declarations of Gantry's JavaScript plugin SDK (gantry-plugin.js) and of the
// contract (plugins-wit/0.3.0) as the QuickJS bindings hand it over: u64 values are numbers
// (exact up to 2^53), `option` is a value or `null`, a list is an array, a record an object
// with camelCase fields, a variant `{ tag, val }`. (jco's own `jco types` describes its other
// backend, StarlingMonkey, where u64 is a bigint and none is `undefined`: not these.)
//
// `tsc --noEmit -p plugins/js` checks every TypeScript plugin of the repository against them
// (plugins/js/build.sh does, before building one).

/** An IPv4 address (four bytes) or an IPv6 one (eight 16-bit groups). */
export type IpAddress =
  | { tag: "v4"; val: [number, number, number, number] }
  | { tag: "v6"; val: [number, number, number, number, number, number, number, number] };

/** One backend of the port's set; `id` is what `pick` answers. */
export interface Backend {
  id: number;
  address: IpAddress;
  port: number;
  /** 0: drained, take no new work. */
  weight: number;
}

export type Protocol = "tcp" | "tls" | "http" | "https" | "udp";

/** The connection or request being placed. */
export interface Request {
  clientAddress: IpAddress;
  clientPort: number;
  /** TLS server name, or the HTTP `Host` without its port, when known. */
  authority: string | null;
  protocol: Protocol;
  /** The request's hash key (XXH3-64, see the contract); a number, so rounded above 2^53. */
  hashKey: number;
}

/** One operator parameter, as text. */
export interface Parameter {
  name: string;
  value: string;
}

/** How the host may place first picks itself (see the contract's `pick-plan`). */
export type PickPlan =
  | { tag: "rotation"; val: number[] }
  | { tag: "by-hash"; val: number[] }
  | { tag: "by-random"; val: number[] };

/** Live figures of one backend. */
export interface Figures {
  inFlight: number;
  latencyMicros: number;
  healthy: boolean;
}

/** What a session-affinity policy says a request sticks by. */
export type Stickiness =
  | { tag: "none" }
  | { tag: "remembered"; val: number }
  | { tag: "named"; val: number };

/** A header for the response (`set-cookie`), from an affinity's `assigned`. */
export interface Header {
  name: string;
  value: string;
}

/** What a probe or a request to a backend came to. */
export type Outcome =
  | { tag: "connected" }
  | { tag: "responded"; val: number }
  | { tag: "connect-failed" }
  | { tag: "timed-out" };

/** A health policy's answer; `eject` holds the backend out for `val` milliseconds. */
export type Verdict =
  | { tag: "unchanged" }
  | { tag: "healthy" }
  | { tag: "unhealthy" }
  | { tag: "eject"; val: number };

/** What the host probes, and whether it reports live traffic (see the contract). */
export interface HealthSettings {
  probe: {
    kind: { tag: "tcp-connect" } | { tag: "http"; val: { path: string; host: string | null; tls: boolean } };
    intervalMs: number;
    timeoutMs: number;
    port: number | null;
  } | null;
  observeTraffic: boolean;
}

/** A parameter the policy cannot work with; its message is shown to the operator. */
export class ConfigError extends Error {}

/** The operator's parameters (`params:` in the configuration), by name. */
export class Params {
  constructor(parameters: Parameter[]);
  /** The value as text, or `fallback` when absent. */
  get(name: string): string | undefined;
  get(name: string, fallback: string): string;
  /** The value as text; absent is an error that says what the parameter is for. */
  require(name: string, what: string): string;
  /** The value as an integer within low..=high; `fallback` when absent. */
  integer(name: string, fallback: number, low: number, high: number): number;
  /** Refuses a parameter the policy does not know (most likely a typo). */
  rejectUnknown(known: string[]): void;
}

/** A balancing policy: one instance per port, given its backend set. */
export interface BalancerPolicy {
  setBackends(backends: Backend[]): void;
  /** The backend for this request, by id; `undefined` lets the host choose. */
  pick(request: Request, attempt: number): number | undefined;
  /** How the host may place first picks itself; `undefined`: ask `pick` every time. */
  plan?(): PickPlan | undefined;
}

/** A session-affinity policy. */
export interface AffinityPolicy {
  /** How long the host remembers a key, seconds; 0 (the default) keeps no table. */
  idleTimeoutSeconds?: number;
  setBackends?(backends: Backend[]): void;
  stick(request: Request): Stickiness;
  assigned?(request: Request, backend: number): Header | null;
}

/** A health policy. */
export interface HealthPolicy {
  settings(): HealthSettings;
  setBackends?(backends: Backend[]): void;
  probed?(backend: number, outcome: Outcome): Verdict;
  observed?(backend: number, outcome: Outcome): Verdict;
}

/** A policy class: its constructor takes the port's parameters (and may throw ConfigError). */
export type PolicyClass<P> = new (params: Params) => P;

/** The `balancers` export of the balancer world. */
export function exportBalancer(policy: PolicyClass<BalancerPolicy>): unknown;
/** The `affinities` export of the affinity world. */
export function exportAffinity(policy: PolicyClass<AffinityPolicy>): unknown;
/** The `healthChecks` export of the health world. */
export function exportHealth(policy: PolicyClass<HealthPolicy>): unknown;

/** The value of a header of the HTTP request being placed; `null` when absent. */
export function requestHeader(name: string): string | null;
/** The next value of the counter shared by every worker for this backend set. */
export function sequence(): number;

export function logDebug(message: unknown): void;
export function logInfo(message: unknown): void;
export function logWarn(message: unknown): void;
export function logError(message: unknown): void;

/** The host interface itself, as the bindings give it. */
export const host: {
  log(level: "trace" | "debug" | "info" | "warn" | "error", message: string): void;
  monotonicNow(): number;
  random(): number;
  sequence(): number;
  backendFigures(id: number): Figures | null;
  requestHeader(name: string): string | null;
};
