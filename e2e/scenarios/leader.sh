# Two replicas with leader election on a Lease: one reconciles; killing it hands over to the
# other; a graceful stop releases the Lease. Sourced by e2e/run.sh.
# shellcheck shell=bash

all+=(leader_election)

LEASE_NS=multiarch-system
LEASE_SECONDS=6

start_replica() { # name health-port metrics-port
  env POD_NAME="replica-$1" KUBECONFIG="$E2E_OPERATOR_KUBECONFIG" setsid "$OPERATOR" run --registry-plain-http \
    --health-addr "127.0.0.1:$2" --metrics-addr "127.0.0.1:$3" --leader-elect \
    --leader-election-namespace $LEASE_NS --lease-duration ${LEASE_SECONDS}s \
    >>"$state/replica-$1.log" 2>&1 </dev/null &
  echo $! >"$state/replica-$1.pid"
  local deadline=$((SECONDS + 60))
  until curl -sf "http://127.0.0.1:$2/readyz" >/dev/null; do
    [ $SECONDS -lt $deadline ] || { fail "replica $1 not ready"; return 1; }
    sleep 0.3
  done
}
stop_replica() { # name signal
  local f=$state/replica-$1.pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill "-$2" "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$f"
}
holder() { kubectl get lease -n $LEASE_NS multiarch-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null; }
metric() { # port name
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'
}

scenario_leader_election() {
  local ns=e2e-leader rc=0
  new_ns $ns
  stop_operator TERM
  kubectl delete lease -n $LEASE_NS multiarch-operator --ignore-not-found >/dev/null
  : >"$state/replica-a.log"; : >"$state/replica-b.log"
  ( set -e
    start_replica a 18082 18092
    deadline=$((SECONDS + 30))
    until [ "$(holder)" = replica-a ]; do
      [ $SECONDS -lt $deadline ] || { fail "replica-a never took the lease (holder '$(holder)')"; exit 1; }
      sleep 0.3
    done
    start_replica b 18083 18093
    sleep 3 # b tries the lease at least once
    expect_eq "$(holder)" replica-a "holder while both run"
    expect_eq "$(metric 18092 multiarch_leader) $(metric 18093 multiarch_leader)" "1 0" "leader gauges"
    mai $ns one '["linux/amd64", "linux/arm64"]'
    kubectl wait -n $ns mai/one --for=condition=Ready --timeout=90s >/dev/null || fail "not Ready under replica-a"
    expect_eq "$(metric 18093 multiarch_reconciles_total)" 0 "reconciles by the standby"

    stop_replica a KILL
    killed=$SECONDS
    deadline=$((SECONDS + LEASE_SECONDS * 3))
    until [ "$(holder)" = replica-b ]; do
      [ $SECONDS -lt $deadline ] || { fail "replica-b did not take over (holder '$(holder)')"; exit 1; }
      sleep 0.2
    done
    handover=$((SECONDS - killed))
    echo "    handover after the leader was killed: ${handover}s (lease ${LEASE_SECONDS}s, retry 2s)" >&2
    [ $handover -le $((LEASE_SECONDS + 4)) ] || fail "handover took ${handover}s"
    mai $ns two '["linux/amd64", "linux/arm64"]'
    kubectl wait -n $ns mai/two --for=condition=Ready --timeout=90s >/dev/null || fail "not Ready under replica-b"
    expect_eq "$(metric 18093 multiarch_leader)" 1 "replica-b's leader gauge"

    stop_replica b TERM
    expect_eq "$(holder)" "" "holder after a graceful stop (released)"
    grep -q "released the lease" "$state/replica-b.log" || fail "replica-b did not log the release"
  ) || rc=1
  stop_replica a KILL; stop_replica b KILL
  [ $rc = 0 ] || { echo "    replica logs:" >&2; tail -n 5 "$state"/replica-*.log | sed 's/^/      /' >&2; }
  start_operator || return 1
  return $rc
}
