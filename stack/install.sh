#!/usr/bin/env bash
# Install and build the real binaries inferwatch's pipeline runs on; idempotent.
#
#   stack/install.sh            # everything: postgres, wrk, chromium (apt), collector,
#                               #   prometheus+promtool, jaeger, compose-check, vegeta
#   stack/install.sh collector  # only one part: postgres | wrk | chromium | collector |
#                               #   prometheus | jaeger | compose-check | vegeta
#
# Output goes to ${INFERWATCH_CACHE:-<repo>/.stack} (git-ignored):
#   bin/otelcol-inferwatch, bin/prometheus, bin/promtool, bin/jaeger, bin/builder (ocb),
#   bin/compose-check, bin/vegeta (constant-rate load: the soak test and bench/)
#   stamps/*.sha256  (what each binary was built from; a matching stamp skips the rebuild)
#   logs/*.log       (full build output; the tail is printed when a step fails)
# Go's module and build caches stay at Go's defaults (GOMODCACHE, GOCACHE), so later
# runs on the same machine are warm. Versions come from stack/versions.env only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${INFERWATCH_CACHE:-$ROOT/.stack}"
BIN="$CACHE/bin"
STAMPS="$CACHE/stamps"
LOGS="$CACHE/logs"
mkdir -p "$BIN" "$STAMPS" "$LOGS" "$CACHE/build"

# shellcheck source=versions.env
source "$ROOT/stack/versions.env"

log() { printf '[install %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

# run_logged NAME CMD...: run CMD with output in $LOGS/NAME.log; on failure show its tail.
run_logged() {
    local name="$1"; shift
    if ! "$@" >"$LOGS/$name.log" 2>&1; then
        printf '[install] ---- last lines of %s ----\n' "$LOGS/$name.log" >&2
        tail -n 30 "$LOGS/$name.log" >&2
        die "$name failed (full log: $LOGS/$name.log)"
    fi
}

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root (or sudo) to run: $*"; fi
}

apt_install() {
    if ! command -v apt-get >/dev/null; then
        die "apt-get not found: install $* with your package manager"
    fi
    if [[ -z "${_APT_UPDATED:-}" ]]; then
        log "apt-get update"
        run_logged apt-update as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        _APT_UPDATED=1
    fi
    log "apt-get install $*"
    run_logged "apt-install-$1" as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@"
}

go_env() {
    command -v go >/dev/null || die "go not found on PATH (need Go >= 1.25)"
    export GOWORK=off GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-}"
    # Only when the checksum database is unreachable: pinned versions + go.sum still fix content.
    if [[ -z "${GOSUMDB:-}" ]] && ! curl -fsS -m 5 -o /dev/null https://sum.golang.org/latest 2>/dev/null; then
        log "sum.golang.org unreachable: GOSUMDB=off"
        export GOSUMDB=off
    fi
}

# stamp_of FILES/STRINGS...: sha256 over the inputs that define a build.
stamp_of() { { for x in "$@"; do if [[ -f "$x" ]]; then cat "$x"; else printf '%s\n' "$x"; fi; done; go version; } | sha256sum | cut -d' ' -f1; }

is_fresh() { # is_fresh NAME STAMP BINARY...
    local name="$1" stamp="$2"; shift 2
    for b in "$@"; do [[ -x "$b" ]] || return 1; done
    [[ -f "$STAMPS/$name.sha256" && "$(cat "$STAMPS/$name.sha256")" == "$stamp" ]]
}

install_postgres() {
    if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
        log "postgres: $(ls -d /usr/lib/postgresql/*/bin/initdb | tail -1) present"
    else
        apt_install postgresql
        compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
            || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
    fi
    id postgres >/dev/null 2>&1 || die "OS user 'postgres' missing (Postgres refuses to run as root)"
}

install_wrk() {
    if command -v wrk >/dev/null; then log "wrk: present"; else apt_install wrk; fi
}

# chromium: headless, renders the service's /docs page in tests/integration/test_serve.py
# (Debian's package; the test drives the binary directly, no driver needed).
install_chromium() {
    if command -v chromium >/dev/null; then log "chromium: present"; else apt_install chromium; fi
}

# vegeta: open-loop, constant-rate HTTP load (wrk is closed-loop): the soak test in the
# suite, bench/soak and bench/overhead's equal-load latency comparison.
build_vegeta() {
    go_env
    local stamp
    stamp=$(stamp_of "vegeta $VEGETA_VERSION")
    if is_fresh vegeta "$stamp" "$BIN/vegeta"; then log "vegeta: $VEGETA_VERSION up to date"; return; fi
    log "vegeta: go install vegeta@v$VEGETA_VERSION"
    run_logged vegeta-install env GOBIN="$BIN" \
        go install "github.com/tsenart/vegeta/v12@v$VEGETA_VERSION"
    printf '%s\n' "$stamp" >"$STAMPS/vegeta.sha256"
}

build_collector() {
    go_env
    local manifest="$ROOT/collector/builder-config.yaml"
    local out="$BIN/otelcol-inferwatch"
    local stamp; stamp="$(stamp_of "$manifest" "otelcol $OTELCOL_VERSION")"
    if is_fresh otelcol "$stamp" "$out"; then log "collector: up to date ($out)"; return; fi
    grep -q "version: $OTELCOL_VERSION\$" "$manifest" \
        || die "collector/builder-config.yaml dist.version differs from OTELCOL_VERSION=$OTELCOL_VERSION"
    local t0=$SECONDS
    if [[ "$("$BIN/builder" version 2>&1 || true)" != *"v$OTELCOL_VERSION"* ]]; then
        log "collector: go install builder@v$OTELCOL_VERSION"
        run_logged ocb-install env GOBIN="$BIN" \
            go install "go.opentelemetry.io/collector/cmd/builder@v$OTELCOL_VERSION"
    fi
    local build="$CACHE/build/otelcol"
    sed "s|^  output_path:.*|  output_path: $build|" "$manifest" >"$CACHE/build/builder-config.yaml"
    log "collector: building with ocb (log: $LOGS/otelcol-build.log)"
    run_logged otelcol-build "$BIN/builder" --config="$CACHE/build/builder-config.yaml"
    install -m 0755 "$build/otelcol-inferwatch" "$out"
    echo "$stamp" >"$STAMPS/otelcol.sha256"
    log "collector: built $out in $((SECONDS - t0))s"
}

build_prometheus() {
    go_env
    local mod="github.com/prometheus/prometheus@v$PROMETHEUS_MODULE_VERSION"
    local tags="remove_all_sd"  # from 3.10: no bundled SD providers except file/http (we use file_sd)
    local stamp; stamp="$(stamp_of "$mod $tags")"
    if is_fresh prometheus "$stamp" "$BIN/prometheus" "$BIN/promtool"; then
        log "prometheus: up to date ($BIN/prometheus)"; return
    fi
    local t0=$SECONDS
    log "prometheus: go mod download $mod"
    run_logged prometheus-download go mod download -json "$mod"
    local dir
    dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' "$LOGS/prometheus-download.log")"
    [[ -d "$dir" ]] || die "go mod download gave no module Dir (see $LOGS/prometheus-download.log)"
    local v="github.com/prometheus/common/version"
    log "prometheus: go build -tags $tags (log: $LOGS/prometheus-build.log)"
    # The module cache is read-only: build from it, write the binaries to $BIN.
    (cd "$dir" && run_logged prometheus-build go build -trimpath -tags "$tags" \
        -ldflags "-X $v.Version=$PROMETHEUS_VERSION -X $v.Revision=v$PROMETHEUS_MODULE_VERSION -X $v.Branch=HEAD -X $v.BuildUser=inferwatch" \
        -o "$BIN/" ./cmd/prometheus ./cmd/promtool)
    "$BIN/prometheus" --version 2>&1 | grep -q "version $PROMETHEUS_VERSION " \
        || die "built prometheus does not report version $PROMETHEUS_VERSION"
    echo "$stamp" >"$STAMPS/prometheus.sha256"
    log "prometheus: built $BIN/prometheus and promtool in $((SECONDS - t0))s"
}

# compose-check: docker-compose.yml loaded by the Compose Specification's own loader
# (compose-go, pinned in stack/compose-check/go.mod + go.sum); tests/integration/test_compose.py.
build_compose_check() {
    go_env
    local src="$ROOT/stack/compose-check"
    local stamp
    stamp="$(stamp_of "$src/main.go" "$src/go.mod" "$src/go.sum")"
    if is_fresh compose-check "$stamp" "$BIN/compose-check"; then
        log "compose-check: up to date ($BIN/compose-check)"; return
    fi
    local t0=$SECONDS
    log "compose-check: go build (log: $LOGS/compose-check-build.log)"
    (cd "$src" && run_logged compose-check-build env GOFLAGS=-mod=readonly \
        go build -trimpath -o "$BIN/compose-check" .)
    echo "$stamp" >"$STAMPS/compose-check.sha256"
    log "compose-check: built $BIN/compose-check in $((SECONDS - t0))s"
}

# Jaeger v2 from its Go module. `go install .../cmd/jaeger@vX` is refused (Jaeger's go.mod
# has a `replace` line), so jaeger/go.mod is a wrapper module that requires Jaeger as a
# `tool` and restates that replace; with its committed go.sum the build is pinned and
# reproducible (-mod=readonly: a go.mod that needs changing is an error, never an update).
build_jaeger() {
    go_env
    local dir="$ROOT/jaeger"
    local stamp; stamp="$(stamp_of "$dir/go.mod" "$dir/go.sum" "jaeger $JAEGER_VERSION")"
    if is_fresh jaeger "$stamp" "$BIN/jaeger"; then log "jaeger: up to date ($BIN/jaeger)"; return; fi
    grep -q "^	github.com/jaegertracing/jaeger v$JAEGER_MODULE_VERSION\( \|\$\)" "$dir/go.mod" \
        || die "jaeger/go.mod does not require github.com/jaegertracing/jaeger v$JAEGER_MODULE_VERSION (JAEGER_MODULE_VERSION)"
    local t0=$SECONDS
    local v="github.com/jaegertracing/jaeger/internal/version"
    log "jaeger: go build v$JAEGER_VERSION (module v$JAEGER_MODULE_VERSION; log: $LOGS/jaeger-build.log)"
    (cd "$dir" && run_logged jaeger-build go build -mod=readonly -trimpath \
        -ldflags "-X $v.latestVersion=v$JAEGER_VERSION -X $v.commitSHA=v$JAEGER_MODULE_VERSION" \
        -o "$BIN/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger)
    [[ "$("$BIN/jaeger" --version 2>/dev/null)" == "jaeger version v$JAEGER_VERSION" ]] \
        || die "built jaeger does not report version v$JAEGER_VERSION"
    echo "$stamp" >"$STAMPS/jaeger.sha256"
    log "jaeger: built $BIN/jaeger in $((SECONDS - t0))s"
}

main() {
    local parts=("$@")
    [[ ${#parts[@]} -gt 0 ]] || parts=(postgres wrk chromium collector prometheus jaeger compose-check vegeta)
    local t0=$SECONDS
    for p in "${parts[@]}"; do
        case "$p" in
            postgres) install_postgres ;;
            wrk) install_wrk ;;
            chromium) install_chromium ;;
            collector) build_collector ;;
            prometheus) build_prometheus ;;
            compose-check) build_compose_check ;;
            jaeger) build_jaeger ;;
            vegeta) build_vegeta ;;
            *) die "unknown part '$p' (postgres | wrk | chromium | collector | prometheus | jaeger | compose-check | vegeta)" ;;
        esac
    done
    log "done in $((SECONDS - t0))s; binaries in $BIN"
}

main "$@"
