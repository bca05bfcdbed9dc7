#!/usr/bin/env bash
# kmsfs's peer benchmark. Installs what it needs (as root, Debian/Ubuntu),
# builds kmsfs and a passthrough-free go-fuse loopback, then runs the same
# workloads on native, loopback, gocryptfs, securefs and kmsfs over tmpfs
# and disk, interleaved, and writes bench/RESULTS.md.
#
#   bench/run.sh                 # full run (about 70 minutes on 2 cores)
#   bench/run.sh -quick -rounds 1   # a trial run
#
# Flags go to bench/runner (see go run ./bench/runner -h).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	echo "bench/run.sh needs root: it mounts tmpfs and drops page caches" >&2
	exit 1
fi
need=()
for t in fio:fio gocryptfs:gocryptfs securefs:securefs fusermount3:fuse3 strace:strace restic:restic; do
	command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${need[@]}" >/dev/null
fi
exec go run ./bench/runner "$@"
