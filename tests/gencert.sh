#!/usr/bin/env bash
# A throwaway CA and a server certificate it signed, for localhost and 127.0.0.1 (P-256 keys,
# valid 30 days), for the TLS tests and for trying wss:// locally. Nothing here is secret.
#
# Usage: tests/gencert.sh DIR   ->  DIR/cert.pem (leaf, then the CA), DIR/key.pem (PKCS#8),
#                                   DIR/ca.pem (what clients trust: curl --cacert DIR/ca.pem)
set -euo pipefail
dir="${1:?usage: tests/gencert.sh DIR}"
if ! command -v openssl >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && apt-get install -y -qq openssl >/dev/null
fi
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=wshub test CA" -keyout ca-key.pem -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout key.pem -out leaf.csr 2>/dev/null
printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > leaf.ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
    -extfile leaf.ext -out leaf.pem 2>/dev/null
cat leaf.pem ca.pem > cert.pem
rm -f leaf.csr leaf.ext leaf.pem ca.srl ca-key.pem
