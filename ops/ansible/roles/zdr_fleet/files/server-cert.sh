#!/usr/bin/env bash
# A NATS server certificate from the fleet CA that ops/pki.sh made:
#   server-cert.sh PKI_DIR NAME ADDRESS
# writes PKI_DIR/NAME.pem and NAME.key (once). ADDRESS (a DNS name or an IP)
# is what clients and routes dial; it goes into the subjectAltName with NAME.
set -euo pipefail
dir=$1 name=$2 addr=$3
[[ -s $dir/$name.pem && -s $dir/$name.key ]] && exit 0
[[ -s $dir/ca.pem && -s $dir/ca.key ]] || { echo "$0: no fleet CA in $dir (run ops/pki.sh first)" >&2; exit 1; }
umask 077
san="DNS:$name"
if [[ $addr =~ ^[0-9.]+$ || $addr == *:* ]]; then san+=",IP:$addr"; elif [[ $addr != "$name" ]]; then san+=",DNS:$addr"; fi
ext=$(mktemp)
trap 'rm -f "$ext" "$dir/$name.csr"' EXIT
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$san" >"$ext"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 3650 -extfile "$ext" -out "$dir/$name.pem" 2>/dev/null
chmod 644 "$dir/$name.pem"
