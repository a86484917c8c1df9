#!/usr/bin/env bash
# The HTTPS port's TLS configuration against Mozilla's "intermediate" profile (TLS 1.2 and
# 1.3 only, no weak suites, forward secrecy only), scanned from outside by sslyze (PyPI). The
# one finding accepted is the certificate: self-signed, made here for the scan.
#
#   bash .ci/tls-scan.sh                       # GANTRY=target/debug/gantry by default
set -euo pipefail
cd "$(dirname "$0")/.."

GANTRY=${GANTRY:-target/debug/gantry}
[ -x "$GANTRY" ] || cargo build --locked -p gantry --bin gantry
# shellcheck source=bench/lib.sh
source bench/lib.sh

install_missing openssl:openssl
SSLYZE=$(python_tool sslyze sslyze==6.3.1)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=scan.test -addext subjectAltName=DNS:scan.test \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
HTTPS=$(free_port)
cat > "$work/gantry.yaml" <<CONF
admin: { listen: "127.0.0.1:0" }
services:
  - name: scan
    address: 127.0.0.1
    ports:
      - name: https
        port: $HTTPS
        protocol: https
        backends: ["127.0.0.1:9"]
        tls: { certificates: [{ cert: "$work/cert.pem", key: "$work/key.pem" }] }
CONF
"$GANTRY" --log-level warn run --config "$work/gantry.yaml" & pids+=($!)
wait_port "$HTTPS"

status=0
"$SSLYZE" --mozilla_config=intermediate --json_out="$work/scan.json" \
  "scan.test:$HTTPS{127.0.0.1}" > "$work/scan.txt" 2>&1 || status=$?
python3 - "$work/scan.json" "$work/scan.txt" "$status" <<'PY'
import json, re, sys
scan = json.load(open(sys.argv[1]))
text = open(sys.argv[2]).read()
status = int(sys.argv[3])
result = scan["server_scan_results"][0]
assert result["scan_status"] == "COMPLETED", result["scan_status"]
commands = result["scan_result"]
accepted = {
    name: len(commands[name]["result"]["accepted_cipher_suites"])
    for name in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites",
                 "tls_1_1_cipher_suites", "tls_1_2_cipher_suites", "tls_1_3_cipher_suites")
}
print("accepted suites per version:", accepted)
# The scan reached the server: it speaks TLS 1.3 and 1.2, and nothing older.
assert accepted["tls_1_3_cipher_suites"] > 0 and accepted["tls_1_2_cipher_suites"] > 0, accepted
assert all(accepted[v] == 0 for v in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites",
                                      "tls_1_0_cipher_suites", "tls_1_1_cipher_suites")), accepted
findings = re.findall(r"^\s+\* (\w+):", text.split("COMPLIANCE AGAINST TLS CONFIGURATION", 1)[-1], re.M)
print("findings against Mozilla intermediate:", findings or "none")
unexpected = [f for f in findings if f != "certificate_path_validation"]
if unexpected or (status != 0 and not findings):
    print(text)
    sys.exit(f"not compliant with Mozilla intermediate: {unexpected or 'sslyze failed'}")
print("TLS scan: compliant with Mozilla intermediate (the self-signed test certificate aside)")
PY
