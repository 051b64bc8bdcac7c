# Helpers shared by bench/run and bench/rotation (sourced; ROOT is the repository).
log() { printf '==> %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
wait_http() { for _ in $(seq 1 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }

# oha holds a fixed request rate (wrk cannot); sets OHA. Building it takes minutes.
ensure_oha() {
  OHA=$(command -v oha || echo "$ROOT/bench/.tools/bin/oha")
  if [[ ! -x $OHA ]]; then
    log "installing oha (cargo install, a few minutes)"
    cargo install --quiet --locked --root "$ROOT/bench/.tools" oha
  fi
}
