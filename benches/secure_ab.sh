#!/bin/bash
# What TLS and key checking cost, side by side in one run on one binary: perf_analyzer on
# mlp_tiny at concurrency 1 and 8, the configurations interleaved within each of REPS reps:
#   grpc-open       plaintext gRPC, no key file (the baseline)
#   grpc-tls        gRPC over TLS, no key file
#   grpc-tls-key    gRPC over mutual TLS with a key file: the client certificate's subject names
#                   a key (perf_analyzer ignores -H on gRPC), checked on every call
#   http-open       plaintext REST (JSON), no key file
#   http-key        plaintext REST with a key file and `Authorization: Bearer` on every request
#                   (SHA-256 of the key, compared with 100 stored hashes)
# Each line: throughput, p50, and the server's CPU per inference (utime + stime from /proc over
# the window, divided by the inferences its statistics extension counted; DESIGN.md's yardstick).
#   benches/secure_ab.sh [KILN_BIN]        REPS=3 by default; CONFS="http-open http-key" picks some
cd "$(dirname "$0")/.."
BIN=${1:-target/release/kiln}
LIB=$(.venv/bin/python -c "import nvidia.cuda_runtime,os;print(os.path.join(list(nvidia.cuda_runtime.__path__)[0],'lib'))")
TICK=$(getconf CLK_TCK)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
echo '{"data": [{"INPUT0": [0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6]}]}' > "$work/in.json"
ssl() { openssl "$@" >/dev/null 2>&1; }
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
ssl req -x509 "${ec[@]}" -keyout "$work/ca.key" -out "$work/ca.pem" -days 2 -subj "/CN=bench CA"
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$work/server.ext"
printf 'extendedKeyUsage=clientAuth\n' > "$work/client.ext"
for n in server client; do
  ssl req "${ec[@]}" -keyout "$work/$n.key" -out "$work/$n.csr" -subj "/CN=bench-$n"
  ssl x509 -req -in "$work/$n.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -out "$work/$n.pem" -days 1 -extfile "$work/$n.ext"
done
KEY=bench-key-0123456789abcdef
{
  for i in $(seq 1 99); do
    printf '[[key]]\nid = "other-%s"\nsha256 = "%s"\nscopes = ["infer"]\n\n' "$i" \
      "$(printf %s "other-$i" | sha256sum | cut -d' ' -f1)"
  done
  printf '[[key]]\nid = "bench"\nsha256 = "%s"\nscopes = ["infer", "metrics"]\n\n' \
    "$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"
  printf '[[key]]\nid = "bench-cert"\nsubject = "CN=bench-client"\nscopes = ["infer", "metrics"]\n'
} > "$work/keys.toml"
tls=(--tls-cert "$work/server.pem" --tls-key "$work/server.key")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for rep in $(seq 1 "${REPS:-3}"); do
 for conf in ${CONFS:-grpc-open grpc-tls grpc-tls-key http-open http-key}; do
  flags=(); pa=(); curl=(curl -s); scheme=http; proto=${conf%%-*}
  case $conf in
   grpc-tls) flags=("${tls[@]}"); pa=(--ssl-grpc-use-ssl true --ssl-grpc-root-certifications-file "$work/ca.pem")
     curl+=(--cacert "$work/ca.pem"); scheme=https ;;
   grpc-tls-key) flags=("${tls[@]}" --tls-client-ca "$work/ca.pem" --tls-client-cert-optional true --api-keys "$work/keys.toml")
     pa=(--ssl-grpc-use-ssl true --ssl-grpc-root-certifications-file "$work/ca.pem"
         --ssl-grpc-certificate-chain-file "$work/client.pem" --ssl-grpc-private-key-file "$work/client.key")
     curl+=(--cacert "$work/ca.pem" -H "Authorization: Bearer $KEY"); scheme=https ;;
   http-key) flags=(--api-keys "$work/keys.toml"); pa=(-H "Authorization:Bearer $KEY")
     curl+=(-H "Authorization: Bearer $KEY") ;;
  esac
  $BIN --model-repository models --http-address 127.0.0.1 --grpc-address 127.0.0.1 \
    --http-port 18100 --grpc-port 18101 "${flags[@]}" 2>/dev/null &
  pid=$!
  sleep 2
  inferences() {
    "${curl[@]}" "$scheme://127.0.0.1:18100/v2/models/mlp_tiny/stats" \
      | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["model_stats"][0]["inference_count"])'
  }
  if [ "$proto" = http ]; then url=127.0.0.1:18100; else url=127.0.0.1:18101; fi
  for c in 1 8; do
   t0=$(cpu_ticks $pid); n0=$(inferences)
   out=$(LD_LIBRARY_PATH=$LIB .venv/bin/perf_analyzer -m mlp_tiny -u $url -i "$proto" "${pa[@]}" \
     --concurrency-range $c --measurement-interval 2000 --input-data "$work/in.json" \
     --stability-percentage 200 --max-trials 5 --percentile 50 2>&1)
   t1=$(cpu_ticks $pid); n1=$(inferences)
   thr=$(echo "$out" | grep -oP 'Concurrency: \d+, throughput: \K[\d.]+' | tail -1)
   p50=$(echo "$out" | grep -oP 'p50 latency: \K\d+' | tail -1)
   cpu=$(awk -v a="$t0" -v b="$t1" -v n0="$n0" -v n1="$n1" -v hz="$TICK" 'BEGIN { printf "%.1f", (b - a) / hz * 1e6 / (n1 - n0) }')
   [ -n "$thr" ] || { echo "$conf c=$c failed:"; echo "$out" | tail -5; }
   echo "rep=$rep conf=$conf c=$c infer/s=$thr p50_us=$p50 server_cpu_us_per_infer=$cpu"
  done
  kill $pid; wait $pid 2>/dev/null
 done
done
