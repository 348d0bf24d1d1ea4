#!/usr/bin/env bash
# The `a3s-code worker` container images, built from what this machine has (no base image is
# pulled for the minimal one).
#
#   scripts/container.sh build [--binary PATH] [--tag TAG] [--tools-base IMAGE] [--save FILE]
#       Stages the build context (the stripped binary, the shared libraries `ldd` lists, passwd
#       and group, the CA bundle, /tmp, an empty /workspace owned by 65534) and builds
#       deploy/container/Containerfile: FROM scratch, no shell, uid 65534; its worker serves
#       every built-in tool but bash. --tools-base IMAGE also builds
#       deploy/container/Containerfile.tools (the same binary on IMAGE, which has `sh` and your
#       tools; bash on) as TAG-tools. --save FILE writes the image(s) as a docker-archive to load
#       where no registry is reachable (`docker load -i`, `podman load -i`,
#       `ctr -n k8s.io images import`, `kind load image-archive`).
#       Engine: $CONTAINER_ENGINE, podman by default (docker works too).
#   scripts/container.sh test [--binary PATH] [--tag TAG]
#       Builds the image and runs its worker against a nats-server ($A3S_TEST_NATS_URL, else one
#       of its own): a pool worker answers /healthz `ok waiting` before any session exists; a
#       session (through the Python package, when importable) has its tasks served by it as uid
#       65534 and /healthz says `ok serving`; SIGTERM drains and exits 0; the conformance kit
#       (`a3s-code conformance`) passes against it (the four rules that need bash are n/a: no
#       shell). With busybox-static installed it also builds the tools image on a busybox base
#       and runs the kit against that: every rule, bash included.
#       The images run with `podman run` where that works; where it cannot (no OCI runtime can
#       start a container in this sandbox) each image's root filesystem is exported (`podman
#       create` + `podman export`) and the worker runs from it under `chroot --userspec=<USER>`
#       with the image's ENV, PATH and ENTRYPOINT. It prints which path ran, and why.
#
# Defaults: --binary $CARGO_TARGET_DIR/release/a3s-code (`cargo build --release --locked -p
# a3s-code-cli`), --tag localhost/a3s-code-worker:<version>. Test knobs: $A3S_PYTHON (a python
# that imports a3s_code; default python3), $A3S_DEPLOY_KEEP=1 keeps the temporary directory.
#
# (`exec-image DIR` is the test's own: it starts one worker from the image prepared in DIR,
# with SESSION_ID and A3S_* from the environment; the conformance kit runs it as its worker.)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
self="$repo/scripts/container.sh"
engine="${CONTAINER_ENGINE:-podman}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

say() { printf '%s\n' "$*"; }
die() { printf 'container.sh: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# ----- building ------------------------------------------------------------------------------

# stage_context DIR BINARY: the build context deploy/container/Containerfile copies from.
stage_context() {
  local ctx="$1" bin="$2" rootfs="$1/rootfs" lib
  rm -rf "$ctx"
  mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$ctx/workspace"
  chmod 1777 "$rootfs/tmp"
  # Debug info out, as the CLI archive does (~100 MB -> ~20 MB).
  strip --strip-debug -o "$rootfs/a3s-code" "$bin"
  chmod 0755 "$rootfs/a3s-code"
  # Every library the dynamic loader resolves, at the path it resolved it (rustls: no OpenSSL).
  if ldd "$bin" | grep -q 'not found'; then
    ldd "$bin" >&2
    die "$bin needs a library this machine lacks"
  fi
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
  printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n' \
    >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
  # async-nats trusts the system's roots (rustls-native-certs) when no A3S_NATS_CA is given.
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
  else
    say "note: no /etc/ssl/certs/ca-certificates.crt here; the image trusts only A3S_NATS_CA" >&2
  fi
}

# build BINARY TAG [TOOLS_BASE]: the minimal image as TAG, and the tools image as TAG-tools.
build() {
  local bin="$1" tag="$2" tools_base="${3:-}" ctx="$CARGO_TARGET_DIR/container-context"
  command -v "$engine" >/dev/null || die "$engine not found (apt-get install -y podman, or CONTAINER_ENGINE=docker)"
  stage_context "$ctx" "$bin"
  "$engine" build --quiet -f "$repo/deploy/container/Containerfile" --build-arg "VERSION=$(version "$bin")" \
    -t "$tag" "$ctx" >/dev/null
  [ -z "$tools_base" ] || build_tools "$bin" "$tag" "$tools_base"
}

# build_tools BINARY TAG BASE: Containerfile.tools, from the minimal image TAG, as TAG-tools.
build_tools() {
  local empty
  empty="$(mktemp -d)"
  "$engine" build --quiet -f "$repo/deploy/container/Containerfile.tools" --build-arg "VERSION=$(version "$1")" \
    --build-arg "WORKER=$2" --build-arg "BASE=$3" -t "$2-tools" "$empty" >/dev/null
  rmdir "$empty"
}

version() { "$1" --version | awk '{print $2}'; }

save() {
  local file="$1"; shift
  rm -f "$file"
  if [ "$engine" = podman ]; then
    podman save --quiet --multi-image-archive --format docker-archive -o "$file" "$@"
  else
    "$engine" save -o "$file" "$@"
  fi
}

# A base for the tools image without a registry: busybox-static's `sh` and applets, and the C
# library the minimal image carries (from its staged context: call after build).
build_busybox_base() {
  local tag="$1" ctx="$CARGO_TARGET_DIR/container-busybox" staged="$CARGO_TARGET_DIR/container-context/rootfs" applet
  rm -rf "$ctx"
  mkdir -p "$ctx/bin"
  (cd "$staged" && tar -c --exclude ./a3s-code .) | tar -x -C "$ctx"
  cp /bin/busybox "$ctx/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$ctx/bin/$applet" ] || ln -s busybox "$ctx/bin/$applet"
  done
  printf 'FROM scratch\nCOPY . /\nENV PATH=/bin\n' >"$ctx.Containerfile"
  "$engine" build --quiet -f "$ctx.Containerfile" -t "$tag" "$ctx" >/dev/null
}

# ----- running a worker from an image (the test's, and the conformance kit's command) --------

# prepare_image TAG DIR: what exec-image needs: DIR/image.{tag,mode,env,user,entrypoint,shell} and,
# without a container runtime, DIR/rootfs (the exported image).
prepare_image() {
  local tag="$1" dir="$2" cid
  mkdir -p "$dir"
  printf '%s\n' "$tag" >"$dir/image.tag"
  printf '%s\n' "$mode" >"$dir/image.mode"
  "$engine" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$tag" | sed '/^$/d' >"$dir/image.env"
  "$engine" image inspect --format '{{.Config.User}}' "$tag" >"$dir/image.user"
  "$engine" image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}' "$tag" | sed '/^$/d' >"$dir/image.entrypoint"
  "$engine" image inspect --format '{{.Config.StopSignal}}' "$tag" >"$dir/image.stopsignal"
  if [ "$mode" = chroot ]; then
    mkdir -p "$dir/rootfs"
    cid="$("$engine" create "$tag")"
    "$engine" export "$cid" | tar -x -C "$dir/rootfs"
    "$engine" rm "$cid" >/dev/null
    runtime_mounts "$dir/rootfs"
    if [ -e "$dir/rootfs/bin/sh" ]; then echo yes; else echo no; fi >"$dir/image.shell"
  else
    if "$engine" run --rm --entrypoint sh "$tag" -c true >/dev/null 2>&1; then echo yes; else echo no; fi >"$dir/image.shell"
  fi
}

# What a container runtime gives every container and chroot does not: the /dev nodes (the bash
# tool's stdin is /dev/null) and /proc (where it finds every process a command started, to end
# them). Unmounted by cleanup.
runtime_mounts() {
  local rootfs="$1" node
  mkdir -p "$rootfs/dev" "$rootfs/proc"
  for node in null:3 zero:5 random:8 urandom:9; do
    mknod -m 666 "$rootfs/dev/${node%:*}" c 1 "${node#*:}"
  done
  if mount -t proc proc "$rootfs/proc"; then
    printf '%s\n' "$rootfs/proc" >>"$work/mounts"
  else
    say "note: cannot mount /proc in the exported tree; the bash tool cannot end what a command leaves behind" >&2
  fi
}

# exec-image DIR [ARGS]: one worker from the image prepared in DIR. The image's ENV are
# defaults under the caller's SESSION_ID and A3S_* (as `docker run -e` does).
exec_image() {
  local dir="$1" kv key name; shift
  local rootfs="$dir/rootfs" user mode tag
  user="$(cat "$dir/image.user")" mode="$(cat "$dir/image.mode")" tag="$(cat "$dir/image.tag")"
  # Without a shell the bash tool cannot run: whoever deploys the image leaves it off, so that
  # bash tasks are refused ("bash is disabled") rather than failing one by one.
  if [ "$(cat "$dir/image.shell")" = no ] && [ -n "${A3S_ALLOW_BASH:-}" ]; then
    echo "container.sh: the image has no shell; A3S_ALLOW_BASH=$A3S_ALLOW_BASH left out" >&2
    unset A3S_ALLOW_BASH
  fi
  if [ "$mode" = run ]; then
    local args=(run --rm -i --network host --label "a3s-deploy-test=$(basename "$(dirname "$dir")")")
    for name in $(compgen -e); do
      case "$name" in SESSION_ID | A3S_*) args+=(-e "$name") ;; esac
    done
    if [ -n "${A3S_WORKSPACE:-}" ] && [ -d "$A3S_WORKSPACE" ]; then
      chown -R "$user" "$A3S_WORKSPACE"
      args+=(-v "$A3S_WORKSPACE:$A3S_WORKSPACE")
    fi
    exec "$engine" "${args[@]}" "$tag" "$@"
  fi
  # The image's PATH, not this host's (the worker looks `sh` up in it).
  local chroot_bin
  chroot_bin="$(command -v chroot)"
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  while IFS= read -r kv; do
    key="${kv%%=*}"
    if [ "$key" = PATH ] || [[ ! -v "$key" ]]; then export "${kv?}"; fi
  done <"$dir/image.env"
  # A workspace made for this worker inside the exported tree (the conformance kit's is created
  # by root, mode 0700): hand it to the image's user, as a volume mounted for it would be, and
  # name it as the worker sees it after chroot.
  if [[ "${A3S_WORKSPACE:-}" == "$rootfs"/* ]]; then
    chown -R "$user" "$A3S_WORKSPACE"
    export A3S_WORKSPACE="${A3S_WORKSPACE#"$rootfs"}"
  fi
  mapfile -t entrypoint <"$dir/image.entrypoint"
  exec "$chroot_bin" --userspec="$user" "$rootfs" "${entrypoint[@]}" "$@"
}

# ----- the test ------------------------------------------------------------------------------

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_healthz PORT PID: the body of the first 200 from /healthz, while the worker lives.
wait_healthz() {
  local port="$1" pid="$2" body
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || return 1
    if body="$(curl -fsS -m 1 "http://127.0.0.1:$port/healthz" 2>/dev/null)"; then
      printf '%s\n' "$body"
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# conformance DIR NA...: the kit against the image in DIR; every rule passes but those named NA,
# which must be not applicable.
conformance() {
  local dir="$1" report; shift
  # The kit's workspaces go inside the exported tree (exec-image hands them to the image's
  # user); its workers serve /metrics on ports of their own (they share this host's network).
  mkdir -p "$dir/rootfs/tmp"
  report="$(TMPDIR="$dir/rootfs/tmp" A3S_METRICS_ADDR=127.0.0.1:0 A3S_LOG=error \
    "$bin" conformance --json --nats "$nats_url" -- "$self" exec-image "$dir")" || true
  python3 - "$report" "$@" <<'EOF'
import json, sys
try:
    report = json.loads(sys.argv[1])
except ValueError:
    sys.exit(f"no JSON report from the kit: {sys.argv[1]!r}")
allowed_na = set(sys.argv[2:])
rules = report["rules"]
bad = [r for r in rules if r["status"] != "passed" and not (r["status"] == "not_applicable" and r["rule"] in allowed_na)]
bad += [r for r in rules if r["rule"] in allowed_na and r["status"] != "not_applicable"]
for r in bad:
    print(f"  {r['rule']} ({'mandatory' if r['mandatory'] else 'optional'}): {r['status']}: {r['reason']}", file=sys.stderr)
if bad or not rules:
    sys.exit(1)
passed = sum(r["status"] == "passed" for r in rules)
na = [r["rule"] for r in rules if r["status"] == "not_applicable"]
print(f"{passed}/{len(rules)} rules passed" + (f", n/a as expected: {', '.join(na)}" if na else ""))
EOF
}

# start_pool DIR: a pool worker from the image in DIR, in the background, on a fresh prefix
# (sets worker_pid, hport, prefix, pool_log, pool_workspace).
start_pool() {
  local dir="$1"
  prefix="dep$(basename "$dir")$RANDOM"
  hport="$(free_port)"
  pool_log="$dir/pool.log"
  if [ "$mode" = chroot ]; then pool_workspace="$dir/rootfs/workspace"; else pool_workspace="$dir/workspace"; fi
  mkdir -p "$pool_workspace"
  printf 'hello from the workspace\n' >"$pool_workspace/hello.txt"
  SESSION_ID='*' A3S_NATS_URL="$nats_url" A3S_NATS_PREFIX="$prefix" A3S_LANES=query,execute \
    A3S_WORKSPACE="$pool_workspace" A3S_METRICS_ADDR="127.0.0.1:$hport" A3S_WORKER_ID=deploy-pool \
    A3S_LABELS=region=test A3S_LOG=info "$self" exec-image "$dir" >"$pool_log" 2>&1 &
  worker_pid=$!
}

# session_check MODE ARGS: deploy/container/session_check.py against the pool worker.
session_check() {
  A3S_LOG=warn "${A3S_PYTHON:-python3}" "$repo/deploy/container/session_check.py" "$@" \
    --nats "$nats_url" --prefix "$prefix" --worker "http://127.0.0.1:$hport"
}

# wait_exit_0: the pool worker (sent SIGTERM) exits within 20 s, with status 0, saying so.
wait_exit_0() {
  local status=0
  for _ in $(seq 400); do kill -0 "$worker_pid" 2>/dev/null || break; sleep 0.05; done
  kill -0 "$worker_pid" 2>/dev/null && die "the worker was still running 20 s after SIGTERM"
  wait "$worker_pid" || status=$?
  worker_pid=""
  [ "$status" = 0 ] || { cat "$pool_log" >&2; die "the worker exited with $status after SIGTERM"; }
  if ! grep -q 'draining' "$pool_log" || ! grep -q 'worker stopped' "$pool_log"; then
    cat "$pool_log" >&2
    die "no 'draining' and 'worker stopped' in the worker's log"
  fi
}

cleanup() {
  [ -n "${worker_pid:-}" ] && kill -KILL "$worker_pid" 2>/dev/null
  [ -n "${nats_pid:-}" ] && kill "$nats_pid" 2>/dev/null
  if [ "${mode:-}" = run ]; then
    "$engine" ps -aq --filter "label=a3s-deploy-test=$(basename "$work")" | xargs -r "$engine" rm -f >/dev/null 2>&1
  fi
  if [ -f "$work/mounts" ]; then
    while IFS= read -r m; do umount -l "$m" 2>/dev/null || true; done <"$work/mounts"
  fi
  if [ "${A3S_DEPLOY_KEEP:-}" = 1 ]; then say "kept $work"; else rm -rf --one-file-system "$work"; fi
}

run_test() {
  local tag="$1" t0 t reason
  t0="$(now)"
  # Globals, for the EXIT trap and the helpers.
  work="$(mktemp -d "${TMPDIR:-/tmp}/a3s-deploy.XXXXXX")"
  mode="" worker_pid="" nats_pid="" nats_url=""
  trap cleanup EXIT

  t="$(now)"
  build "$bin" "$tag"
  say "image $tag built ($(since "$t"), $("$engine" image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"

  # Which way images can run here.
  if reason="$("$engine" run --rm --network host --entrypoint /a3s-code "$tag" --version 2>&1)"; then
    mode=run
    say "container path: $engine run (it works here)"
  else
    mode=chroot
    reason="$(printf '%s' "$reason" | tail -n 1)"
    [ "$(id -u)" = 0 ] || die "'$engine run' fails here ($reason), and the fallback (chroot, mknod, mount) needs root"
    say "container path: chroot of the exported image, as uid 65534, because '$engine run' fails here: $reason"
  fi

  t="$(now)"
  local min="$work/minimal"
  prepare_image "$tag" "$min"
  [ "$(cat "$min/image.user")" = 65534:65534 ] || die "image USER is $(cat "$min/image.user"), not 65534:65534"
  [ "$(cat "$min/image.stopsignal")" = SIGTERM ] || die "image STOPSIGNAL is '$(cat "$min/image.stopsignal")', not SIGTERM"
  [ "$(paste -sd' ' "$min/image.entrypoint")" = "/a3s-code worker" ] || die "ENTRYPOINT is $(paste -sd' ' "$min/image.entrypoint")"
  if [ "$mode" = chroot ]; then
    [ "$(stat -c %u:%g "$min/rootfs/workspace")" = 65534:65534 ] || die "/workspace in the image is not owned by 65534"
    [ ! -e "$min/rootfs/bin/sh" ] || die "the minimal image has a shell"
  fi
  say "image config: USER 65534:65534, STOPSIGNAL SIGTERM, ENTRYPOINT /a3s-code worker, ENV $(grep -v '^PATH=' "$min/image.env" | paste -sd' ') ($(since "$t"))"

  if [ -n "${A3S_TEST_NATS_URL:-}" ]; then
    nats_url="$A3S_TEST_NATS_URL"
  else
    local port nats_bin
    nats_bin="${NATS_SERVER_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
    port="$(free_port)"
    # Streams reserve their max_bytes against the store's limit (75% of the free disk by
    # default): the kit's many prefixes need a generous one, as scripts/test.sh gives.
    mkdir -p "$work/nats"
    printf 'jetstream {\n  max_file_store: 1TB\n  max_memory_store: 1GB\n}\n' >"$work/nats/server.conf"
    "$nats_bin" -a 127.0.0.1 -p "$port" -js -sd "$work/nats/js" -c "$work/nats/server.conf" >"$work/nats/server.log" 2>&1 &
    nats_pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    nats_url="nats://127.0.0.1:$port"
  fi

  local py="${A3S_PYTHON:-python3}" have_py=1 body out
  "$py" -c 'import a3s_code' 2>/dev/null || have_py=0

  # A pool worker of the image, as deploy/kubernetes runs it, started before any session.
  t="$(now)"
  start_pool "$min"
  body="$(wait_healthz "$hport" "$worker_pid")" || { cat "$pool_log" >&2; die "/healthz never answered 200"; }
  [ "$body" = "ok waiting" ] || die "/healthz before any session: '$body', not 'ok waiting'"
  curl -fsS "http://127.0.0.1:$hport/metrics" | grep -q '^a3s_worker_state{.*state="waiting".*} 1' \
    || die "/metrics has no a3s_worker_state{state=\"waiting\"} 1"
  say "pool worker (SESSION_ID='*') up before any session: /healthz 200 '$body' ($(since "$t"))"

  # A session's tasks, served by it.
  if [ "$have_py" = 1 ]; then
    t="$(now)"
    out="$(session_check serve --workspace "$pool_workspace")" \
      || { cat "$pool_log" >&2; die "a session's tasks were not served by the image's worker"; }
    say "session: $out ($(since "$t"))"
  else
    say "session check skipped: $py cannot import a3s_code (set A3S_PYTHON)"
  fi

  # SIGTERM drains and exits 0, as `docker stop`, deleting a pod or `systemctl stop` does.
  t="$(now)"
  kill -TERM "$worker_pid"
  wait_exit_0
  say "SIGTERM: drained and exited 0 ($(since "$t"))"

  t="$(now)"
  out="$(conformance "$min" tool-bash lease-renewal cancel taken-notice)" || die "the image's worker does not conform"
  say "conformance kit against the image: $out ($(since "$t"))"

  if [ -x /bin/busybox ]; then
    t="$(now)"
    local tools="$work/tools" base="localhost/a3s-code-test-busybox:latest"
    build_busybox_base "$base"
    build_tools "$bin" "$tag" "$base"
    prepare_image "$tag-tools" "$tools"
    say "tools image $tag-tools on a busybox base built ($(since "$t"))"
    t="$(now)"
    out="$(conformance "$tools")" || die "the tools image's worker does not conform"
    say "conformance kit against the tools image: $out ($(since "$t"))"
    if [ "$have_py" = 1 ]; then
      t="$(now)"
      start_pool "$tools"
      wait_healthz "$hport" "$worker_pid" >/dev/null || { cat "$pool_log" >&2; die "/healthz never answered 200"; }
      out="$(session_check drain --pid "$worker_pid")" \
        || { cat "$pool_log" >&2; die "draining did not finish the running task"; }
      wait_exit_0
      say "drain: $out; exited 0 ($(since "$t"))"
    fi
  else
    say "tools image skipped: no /bin/busybox (apt-get install busybox-static) to stand in for a base with a shell"
  fi
  say "container test passed ($mode path, $(since "$t0") in all)"
}

# ----- arguments -----------------------------------------------------------------------------

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  exec-image) exec_image "$@" ;;
  build | test)
    bin="$CARGO_TARGET_DIR/release/a3s-code" tag="" tools_base="" save_to=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --binary) bin="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --tools-base) tools_base="$2"; shift 2 ;;
        --save) save_to="$2"; shift 2 ;;
        *) die "unknown argument $1 (see the top of scripts/container.sh)" ;;
      esac
    done
    [ -x "$bin" ] || die "no binary at $bin (cargo build --release --locked -p a3s-code-cli)"
    bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
    [ -n "$tag" ] || tag="localhost/a3s-code-worker:$(version "$bin")"
    if [ "$cmd" = build ]; then
      build "$bin" "$tag" "$tools_base"
      images=("$tag")
      [ -z "$tools_base" ] || images+=("$tag-tools")
      [ -z "$save_to" ] || save "$save_to" "${images[@]}"
      say "built ${images[*]}${save_to:+, saved to $save_to}"
    else
      run_test "$tag"
    fi
    ;;
  *)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    [ -z "$cmd" ] || [ "$cmd" = -h ] || [ "$cmd" = --help ] || exit 2
    ;;
esac
