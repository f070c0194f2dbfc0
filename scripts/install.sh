#!/usr/bin/env bash
# Installs (or upgrades) stird from this checkout on Debian 12 and starts it.
#
#   bash scripts/install.sh           install or upgrade, then (re)start and wait for /healthz
#   bash scripts/install.sh --check   only wait for /healthz and print where things are
#
# Layout: program in the virtualenv /opt/stird (command /usr/local/bin/stird), units in
# /etc/systemd/system, user "stird" from /etc/sysusers.d/stird.conf, directories from
# /etc/tmpfiles.d/stird.conf: configuration /etc/stird (stird.toml is optional), state
# /var/lib/stird. With systemd as PID 1 it runs as stird.service; without (containers) it
# is started in the background as user stird, logging to /var/log/stird.log.
# Safe to run again: it reinstalls the checkout and restarts the daemon.
set -euo pipefail

PREFIX=/opt/stird
STATE_DIR=/var/lib/stird
LOG_FILE=/var/log/stird.log
PID_FILE=/run/stird/stird.pid
STIRD_URL=${STIRD_URL:-http://127.0.0.1:8790}   # the [server] http listener
HEALTH_TIMEOUT=20
# Debian's interpreter, not one from PATH (pyenv, /root/.local...): the service user must
# be able to run it, and the unit hides /root and /home (ProtectHome=yes).
PYTHON=/usr/bin/python3
SRC=$(cd "$(dirname "$0")/.." && pwd)

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
have_systemd() { [ -d /run/systemd/system ]; }

need_root() {
  [ "$(id -u)" -eq 0 ] && return
  command -v sudo >/dev/null || die "run as root (sudo is not installed)"
  exec sudo -- bash "$SRC/scripts/install.sh" "$@"
}

install_packages() {
  local missing=()
  [ -x "$PYTHON" ] || missing+=(python3)
  "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  command -v curl >/dev/null || missing+=(curl)
  ((${#missing[@]})) || return 0
  say "apt-get install ${missing[*]}"
  # wait for a running apt/unattended-upgrades to release the dpkg lock instead of failing
  local apt=(apt-get -o DPkg::Lock::Timeout=300)
  "${apt[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends \
    "${missing[@]}" ca-certificates
}

install_program() {
  say "installing stird into $PREFIX"
  [ -x "$PREFIX/bin/python" ] || "$PYTHON" -m venv "$PREFIX"
  # Build from a copy: pip builds in the source tree, and root must not leave files there.
  BUILD=$(mktemp -d)
  trap 'rm -rf "$BUILD"' EXIT
  tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./state \
    --exclude='.*_cache' --exclude=.hypothesis --exclude=__pycache__ -cf - . | tar -C "$BUILD" -xf -
  local pip=("$PREFIX/bin/python" -m pip -q --disable-pip-version-check)
  "${pip[@]}" wheel --no-deps --wheel-dir "$BUILD/dist" "$BUILD"
  local wheel=("$BUILD"/dist/stird-*.whl)
  "${pip[@]}" install --upgrade "${wheel[0]}"   # dependencies
  "${pip[@]}" install --force-reinstall --no-deps "${wheel[0]}"   # even at the same version
  ln -sfn "$PREFIX/bin/stird" /usr/local/bin/stird
}

install_units() {
  say "installing units, sysusers.d and tmpfiles.d files"
  install -d /etc/systemd/system
  install -m 0644 "$SRC/systemd/stird.service" "$SRC/systemd/stird-cps.service" /etc/systemd/system/
  install -D -m 0644 "$SRC/systemd/stird.sysusers" /etc/sysusers.d/stird.conf
  install -D -m 0644 "$SRC/systemd/stird.tmpfiles" /etc/tmpfiles.d/stird.conf
}

create_user_and_dirs() {
  if command -v systemd-sysusers >/dev/null && command -v systemd-tmpfiles >/dev/null; then
    systemd-sysusers /etc/sysusers.d/stird.conf
    systemd-tmpfiles --create /etc/tmpfiles.d/stird.conf
  else  # no systemd package at all (a minimal container): the same, by hand
    getent passwd stird >/dev/null || useradd --system --user-group --home-dir "$STATE_DIR" \
      --no-create-home --shell /usr/sbin/nologin --comment "STIR daemon" stird
    install -d -m 0750 -o root -g stird /etc/stird
    install -d -m 0700 -o stird -g stird "$STATE_DIR"
  fi
}

start_with_systemd() {
  say "systemd found: enabling and (re)starting stird.service"
  systemctl daemon-reload
  systemctl enable stird.service
  systemctl restart stird.service
}

stop_background() {
  local pid
  pid=$(cat "$PID_FILE" 2>/dev/null) || return 0
  if [ -n "$pid" ] && grep -qs 'stird' "/proc/$pid/cmdline"; then
    say "stopping the running stird (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && die "stird (pid $pid) did not stop"
  fi
  rm -f "$PID_FILE"
}

start_in_background() {
  say "systemd is not running as PID 1 (container?): starting stird in the background"
  say "as user stird, logging to $LOG_FILE; it will not come back after a reboot"
  stop_background
  install -d -m 0755 -o stird -g stird "$(dirname "$PID_FILE")"
  touch "$LOG_FILE" && chmod 0640 "$LOG_FILE"
  (
    cd / && umask 077
    exec setsid env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$STATE_DIR" LANG=C.UTF-8 \
      setpriv --reuid=stird --regid=stird --init-groups --inh-caps=-all --no-new-privs \
      "$PREFIX/bin/stird" serve --state-dir "$STATE_DIR"
  ) </dev/null >>"$LOG_FILE" 2>&1 &
  echo $! >"$PID_FILE"
}

wait_healthy() {
  say "waiting up to ${HEALTH_TIMEOUT}s for $STIRD_URL/healthz"
  local deadline=$((SECONDS + HEALTH_TIMEOUT))
  while ((SECONDS < deadline)); do
    if curl -fs --max-time 2 "$STIRD_URL/healthz"; then echo; return 0; fi
    sleep 0.5
  done
  echo "install.sh: stird did not answer $STIRD_URL/healthz within ${HEALTH_TIMEOUT}s" >&2
  if have_systemd; then
    journalctl -u stird.service -n 30 --no-pager >&2 || true
  else
    tail -n 30 "$LOG_FILE" >&2 || true
  fi
  return 1
}

summary() {
  local logs="journalctl -u stird   (reload: systemctl reload stird)"
  have_systemd || logs="$LOG_FILE   (reload: kill -HUP \$(cat $PID_FILE))"
  cat <<EOF

stird is running.
  HTTP API        $STIRD_URL   (/healthz, /metrics, POST /v1/sign, /v1/verify)
  JSON-RPC        127.0.0.1:8791 (netstring; default, see [server] in stird.toml)
  FastAGI         agi://127.0.0.1:4573 (default)
  Certificates    $STIRD_URL/certs/dev.pem
  Configuration   /etc/stird/stird.toml (none yet: the development setup)
  Dev credential  $STATE_DIR/dev/private.pem and cert.pem (self-signed, not for production)
  Logs            $logs
EOF
}

main() {
  need_root "$@"
  if [ "${1:-}" != "--check" ]; then
    install_packages
    install_program
    install_units
    create_user_and_dirs
    if have_systemd; then start_with_systemd; else start_in_background; fi
  fi
  wait_healthy
  summary
}

main "$@"
