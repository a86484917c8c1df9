// Session affinity by a request header, in JavaScript: the Python example's twin
// (plugins/python/examples/header_affinity). Requests carrying the same value of header
// `header` (default `x-user`) go to the same backend for as long as that value comes back
// within `timeout_seconds` (1 to 86400, default 3600) of its last request; requests without
// the header are balanced as usual. Gantry keeps the table; the policy only names the key.

import { exportAffinity, requestHeader } from "../../gantry-plugin.js";

// 32-bit FNV-1a over the value's characters: a stable key that stays exact as a JavaScript
// number (a 64-bit key would be rounded above 2^53; see the SDK's note on numbers). Header
// values are visible ASCII, so a character is a byte. (QuickJS in the sandbox has no
// TextEncoder.)
function fnv1a32(text) {
  let key = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    key = Math.imul(key ^ text.charCodeAt(i), 0x01000193) >>> 0;
  }
  return key;
}

class HeaderAffinity {
  constructor(params) {
    params.rejectUnknown(["header", "timeout_seconds"]);
    this.header = params.get("header", "x-user").toLowerCase();
    this.idleTimeoutSeconds = params.integer("timeout_seconds", 3600, 1, 86400);
  }

  stick(request) {
    const value = requestHeader(this.header);
    if (value === null || value === undefined) return { tag: "none" };
    return { tag: "remembered", val: fnv1a32(value) };
  }
}

export const affinities = exportAffinity(HeaderAffinity);
