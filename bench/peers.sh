# shellcheck shell=bash
# The gateways users would pick instead, installed from the registries into bench/.peers
# (ignored) and started on loopback against the same upstream. Sourced by bench/run.

PEERS_DIR="$ROOT/bench/.peers"

start_portkey() {
  local dir="$PEERS_DIR/portkey" port main pid
  mkdir -p "$dir"
  if [[ ! -f "$dir/node_modules/@portkey-ai/gateway/package.json" ]]; then
    log "installing the Portkey gateway (npm)"
    (cd "$dir" && npm install --silent --no-audit --no-fund @portkey-ai/gateway >"$WORK/portkey-install.log" 2>&1) || return 1
  fi
  main=$(cd "$dir" && node -p "const p=require('@portkey-ai/gateway/package.json'); require.resolve('@portkey-ai/gateway/' + (typeof p.bin === 'string' ? p.bin : Object.values(p.bin)[0]))")
  port=$(free_port)
  taskset -c 1 node "$main" --port="$port" --headless >"$WORK/portkey.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  curl -s -o /dev/null "http://127.0.0.1:$port/" || return 1
  CONTENDERS+=(portkey)
  URL[portkey]="http://127.0.0.1:$port/v1/chat/completions"
  AUTH[portkey]="Bearer sk-bench-provider-key"
  MODEL[portkey]=bench
  PID[portkey]=$pid
  EXTRA[portkey]="wrk.headers[\"x-portkey-provider\"] = \"openai\"
wrk.headers[\"x-portkey-custom-host\"] = \"$UPSTREAM/v1\""
  EXTRA_CURL[portkey]="-H x-portkey-provider:openai -H x-portkey-custom-host:$UPSTREAM/v1"
}

start_litellm() {
  local venv="$PEERS_DIR/litellm-venv" port pid
  if [[ ! -x "$venv/bin/litellm" ]]; then
    log "installing the LiteLLM proxy (pip, a few minutes)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'litellm[proxy]' >"$WORK/litellm-install.log" 2>&1 || return 1
  fi
  cat >"$WORK/litellm.yaml" <<YAML
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench
      api_base: $UPSTREAM/v1
      api_key: sk-bench-provider-key
general_settings:
  master_key: sk-bench-master
litellm_settings:
  telemetry: false
YAML
  port=$(free_port)
  LITELLM_LOG=ERROR taskset -c 1 "$venv/bin/litellm" --config "$WORK/litellm.yaml" --host 127.0.0.1 --port "$port" --num_workers 1 \
    >"$WORK/litellm.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 600); do curl -sf -o /dev/null "http://127.0.0.1:$port/health/liveliness" && break; sleep 0.2; done
  curl -sf -o /dev/null "http://127.0.0.1:$port/health/liveliness" || return 1
  CONTENDERS+=(litellm)
  URL[litellm]="http://127.0.0.1:$port/v1/chat/completions"
  AUTH[litellm]="Bearer sk-bench-master"
  MODEL[litellm]=bench-model
  PID[litellm]=$pid
}

start_peers() {
  start_portkey || log "Portkey gateway not measured (see $WORK/portkey*.log)"
  start_litellm || log "LiteLLM proxy not measured (see $WORK/litellm*.log)"
}
