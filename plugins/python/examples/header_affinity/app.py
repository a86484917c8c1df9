"""Session affinity by a request header, in Python: requests carrying the same value of header
``header`` (default ``x-user``) go to the same backend for as long as that value comes back
within ``timeout_seconds`` (1 to 86400, default 3600) of its last request; requests without
the header are balanced as usual. Gantry keeps the table; the policy only names the key.

A new value is placed where rendezvous hashing of its key ranks it (the same on every Gantry
replica), so users spread over the backends and keep theirs when another leaves.
"""

from gantry_plugin import Affinity, Params, export_affinity, request_header
from wit_world.exports.affinities import Stickiness_None_, Stickiness_Remembered

# 64-bit FNV-1a: a stable key for a header value, the same in every process.
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def fnv1a64(text: str) -> int:
    key = FNV_OFFSET
    for byte in text.encode():
        key = ((key ^ byte) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return key


class HeaderAffinity(Affinity):
    def __init__(self, params: Params):
        params.reject_unknown(["header", "timeout_seconds"])
        self.header = params.get("header", "x-user").lower()
        self.idle_timeout_seconds = params.integer(
            "timeout_seconds", default=3600, low=1, high=86400
        )

    def stick(self, request):
        value = request_header(self.header)
        if value is None:
            return Stickiness_None_()
        return Stickiness_Remembered(fnv1a64(value))


Affinities = export_affinity(HeaderAffinity)
