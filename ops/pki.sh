#!/usr/bin/env bash
# The fleet CA and node certificates for the replication data plane (agent to
# agent mutual TLS). Each node certificate names its node id (subject CN and a
# DNS SAN): a sender checks that the receiver's certificate names the target
# node, a receiver that the sender's names the source node.
#
#   ops/pki.sh DIR NODE [NODE ...]
#
# Creates DIR/ca.pem and DIR/ca.key once (kept on later runs), then
# DIR/NODE.pem and DIR/NODE.key for every NODE that has none yet. ECDSA P-256,
# valid 10 years. Keep ca.key off the storage nodes: each node needs only
# ca.pem, its own NODE.pem and NODE.key.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 DIR NODE [NODE ...]" >&2
    exit 2
fi
dir=$1
shift
command -v openssl >/dev/null || { echo "$0: openssl is needed (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
umask 077

if [[ ! -s $dir/ca.pem || ! -s $dir/ca.key ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=zdr fleet CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
fi

for node in "$@"; do
    # Node ids are NATS subject tokens; as certificate names they must be DNS labels too.
    if [[ ! $node =~ ^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$ ]]; then
        echo "$0: node id '$node' is not a DNS label (letters, digits and '-', at most 63)" >&2
        exit 2
    fi
    [[ -s $dir/$node.pem && -s $dir/$node.key ]] && continue
    ext=$(mktemp)
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:%s\n' "$node" >"$ext"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$node" \
        -keyout "$dir/$node.key" -out "$dir/$node.csr" 2>/dev/null
    openssl x509 -req -in "$dir/$node.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 3650 -extfile "$ext" -out "$dir/$node.pem" 2>/dev/null
    rm -f "$dir/$node.csr" "$ext"
done
chmod 644 "$dir"/*.pem
