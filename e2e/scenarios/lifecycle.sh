# Builds in a messy cluster: a node lost mid-build, no node at all, a stuck build, finished
# builders cleaned up after their time-to-live, and recovery after a failure. Sourced by
# e2e/run.sh, which provides the helpers (mai, status, wait_reason, fail, expect_*, ...).
# shellcheck shell=bash

all+=(node_lost no_node_timeout build_timeout rebuild_after_failure cleanup_ttl)

wait_field() { # ns name jsonpath value [timeout] [what]
  kubectl wait -n "$1" "mai/$2" --for=jsonpath="$3"="$4" --timeout="${5:-60s}" >/dev/null \
    || fail "${6:-$2}: $3 never became '$4' (it is '$(status "$1" "$2" "$3")')"
}

arm64_node_back() { # the suite's arm64 node, for the scenarios after this one
  kubectl get node kwok-arm64-1 >/dev/null 2>&1 || "$here/env.sh" add-node arm64 kwok-arm64-1 >/dev/null 2>&1
}

# 10. A spot interruption: the arm64 node disappears under a running builder. kube-controller-manager
#     fails the orphaned pod with a DisruptionTarget condition; the Job replaces it, the replacement
#     waits for a new arm64 node, and the build finishes with the disruption not counted as an attempt.
scenario_node_lost() {
  local ns=e2e-node-lost
  new_ns $ns
  mai $ns app '["linux/amd64", "linux/arm64"]' "" '"e2e.multiarch.dev/fault.linux-arm64": hang'
  wait_field $ns app '{.status.platforms[1].phase}' Building 60s || return 1
  local first
  first=$(kubectl get pods -n $ns -l multiarch.dev/platform=linux-arm64 -o jsonpath='{.items[0].metadata.name}')
  # the replacement pod builds normally
  kubectl annotate mai -n $ns app e2e.multiarch.dev/fault.linux-arm64- >/dev/null
  kubectl delete node kwok-arm64-1 >/dev/null
  # PodGC waits 40 s before it acts on pods of a vanished node
  wait_field $ns app '{.status.platforms[1].disruptions}' 1 150s "disruption recorded" || { arm64_node_back; return 1; }
  wait_field $ns app '{.status.platforms[1].reason}' WaitingForNode 60s "replacement waits for a node" || { arm64_node_back; return 1; }
  expect_eq "$(status $ns app '{.status.platforms[1].attempts}')" 0 "attempts after a disruption" || { arm64_node_back; return 1; }
  expect_eq "$(status $ns app '{.status.platforms[1].builder}')" \
    "$(kubectl get jobs -n $ns -l multiarch.dev/platform=linux-arm64 -o jsonpath='{.items[0].metadata.name}')" "the same Job carries on" || { arm64_node_back; return 1; }
  [ -z "$(kubectl get pod -n $ns "$first" -o name 2>/dev/null)" ] || \
    expect_contains "$(kubectl get pod -n $ns "$first" -o jsonpath='{.status.conditions[?(@.type=="DisruptionTarget")].reason}')" "DeletionByPodGC" "the lost pod's condition" || { arm64_node_back; return 1; }
  arm64_node_back
  kubectl wait -n $ns mai/app --for=condition=Ready --timeout=90s >/dev/null || fail "not Ready after the new node came" || return 1
  expect_eq "$(status $ns app '{.status.platforms[1].attempts}') $(status $ns app '{.status.platforms[1].disruptions}')" "0 1" "attempts and disruptions" || return 1
  expect_eq "$(status $ns app '{.status.platforms[1].node}')" kwok-arm64-1 "the new node" || return 1
}

# 11. No node ever comes for arm64: after the provisioning timeout the platform fails with
#     NoNodeForPlatform naming the node selector; the waiting builder is stopped; nothing is tagged.
scenario_no_node_timeout() {
  local ns=e2e-no-node
  new_ns $ns
  kubectl delete node kwok-arm64-1 >/dev/null
  mai $ns app '["linux/amd64", "linux/arm64"]' "  builder: {provisioningTimeout: 15s}"
  wait_field $ns app '{.status.platforms[1].reason}' WaitingForNode 60s || { arm64_node_back; return 1; }
  wait_reason $ns app Stalled NoNodeForPlatform 60s || { arm64_node_back; return 1; }
  arm64_node_back
  local msg job
  msg=$(status $ns app '{.status.platforms[1].message}')
  expect_contains "$msg" "{kubernetes.io/arch=arm64,kubernetes.io/os=linux}" "names the node selector" || return 1
  expect_contains "$msg" "didn't match Pod's node affinity/selector" "carries the scheduler's reason" || return 1
  expect_eq "$(status $ns app '{.status.phase}')" Failed "phase" || return 1
  job=$(status $ns app '{.status.platforms[1].builder}')
  expect_eq "$(kubectl get job -n $ns "$job" -o jsonpath='{.spec.suspend}')" true "the waiting builder is stopped" || return 1
  expect_contains "$(kubectl get job -n $ns "$job" -o jsonpath='{.metadata.annotations.multiarch\.dev/stopped}')" NoNodeForPlatform "stopped annotation" || return 1
  # a node arriving after the deadline does not revive the failed build
  sleep 3
  expect_eq "$(status $ns app '{.status.phase}')" Failed "phase after the node came back" || return 1
  expect_eq "$(tags_of $ns/app)" "" "tags" || return 1
}

# 12. A build that hangs: stopped after builder.timeout (counted from its start) with BuildTimeout.
scenario_build_timeout() {
  local ns=e2e-timeout
  new_ns $ns
  mai $ns app '["linux/amd64", "linux/arm64"]' "  builder: {timeout: 15s}" '"e2e.multiarch.dev/fault.linux-amd64": hang'
  wait_reason $ns app Stalled BuildTimeout 90s || return 1
  expect_eq "$(status $ns app '{.status.platforms[0].reason}')" BuildTimeout "amd64 reason" || return 1
  expect_contains "$(status $ns app '{.status.platforms[0].message}')" "did not finish within 15s" "message" || return 1
  local job
  job=$(status $ns app '{.status.platforms[0].builder}')
  expect_eq "$(kubectl get job -n $ns "$job" -o jsonpath='{.spec.suspend}')" true "the stuck builder is stopped" || return 1
  local deadline=$((SECONDS + 60))
  until [ -z "$(kubectl get pods -n $ns -l multiarch.dev/platform=linux-amd64 -o name)" ]; do
    [ $SECONDS -lt $deadline ] || { fail "the stuck builder's pod is still there"; return 1; }
    sleep 0.5
  done
  expect_eq "$(tags_of $ns/app)" "" "tags" || return 1
}

# 13. A failed build is retried by a new multiarch.dev/rebuild value (after the cause is fixed), and
#     a builder rejected by Pod Security runs once the namespace allows it and the object is rebuilt.
scenario_rebuild_after_failure() {
  local ns=e2e-rebuild
  new_ns $ns
  mai $ns app '["linux/amd64", "linux/arm64"]' "  retries: 0" '"e2e.multiarch.dev/fault.linux-arm64": fail'
  wait_reason $ns app Stalled BuildFailed || return 1
  local failed_build
  failed_build=$(status $ns app '{.status.build.id}')
  kubectl annotate mai -n $ns app e2e.multiarch.dev/fault.linux-arm64- multiarch.dev/rebuild=fixed-1 >/dev/null
  kubectl wait -n $ns mai/app --for=condition=Ready --timeout=90s >/dev/null || fail "not Ready after the rebuild" || return 1
  [ "$(status $ns app '{.status.build.id}')" != "$failed_build" ] || fail "the rebuild kept the failed build id" || return 1
  expect_eq "$(status $ns app '{.status.rebuild}')" fixed-1 "status.rebuild" || return 1
  expect_eq "$(tags_of $ns/app)" "1.0.0 1.0.0-amd64 1.0.0-arm64 latest" "tags after the rebuild" || return 1

  local pns=e2e-admission-fixed
  new_ns $pns
  kubectl label namespace $pns pod-security.kubernetes.io/enforce=baseline >/dev/null
  mai $pns app '["linux/amd64"]'
  wait_reason $pns app Stalled BuilderRejected || return 1
  kubectl label namespace $pns --overwrite pod-security.kubernetes.io/enforce=privileged >/dev/null
  kubectl annotate mai -n $pns app multiarch.dev/rebuild=psa-fixed >/dev/null
  kubectl wait -n $pns mai/app --for=condition=Ready --timeout=90s >/dev/null || fail "not Ready once the namespace allows builders" || return 1
}

# 14. Finished builders are deleted after the operator's time-to-live, except the most recent
#     failed one, kept for debugging. The operator runs with --finished-builder-ttl 5s here.
scenario_cleanup_ttl() {
  local ns=e2e-ttl
  new_ns $ns
  stop_operator TERM
  OPERATOR_ARGS=(--finished-builder-ttl 5s)
  start_operator || { OPERATOR_ARGS=(); start_operator; return 1; }
  local rc=0
  ( set -e
    mai $ns app '["linux/amd64", "linux/arm64"]' "  retries: 1" '"e2e.multiarch.dev/fault.linux-amd64": fail-once'
    kubectl wait -n $ns mai/app --for=condition=Ready --timeout=90s >/dev/null || fail "not Ready"
    # three Jobs: amd64 attempts 1 (failed) and 2, arm64 attempt 1
    kept=$(status $ns app '{.status.build.id}')
    deadline=$((SECONDS + 60))
    until [ "$(kubectl get jobs -n $ns -o name | wc -l)" = 1 ]; do
      [ $SECONDS -lt $deadline ] || { fail "finished builders not cleaned up: $(kubectl get jobs -n $ns -o name | tr '\n' ' ')"; exit 1; }
      sleep 0.5
    done
    expect_eq "$(kubectl get jobs -n $ns -o name)" "job.batch/app-$kept-linux-amd64-1" "the failed builder kept for debugging"
    expect_eq "$(kubectl get pods -n $ns -l multiarch.dev/platform=linux-arm64 -o name | wc -l)" 0 "pods of deleted builders"
    expect_eq "$(status $ns app '{.status.phase}')" Succeeded "status after the clean-up"
    expect_eq "$(status $ns app '{.status.platforms[0].digest}' | cut -c1-7)" "sha256:" "digests stay in status"
  ) || rc=1
  stop_operator TERM
  OPERATOR_ARGS=()
  start_operator || return 1
  return $rc
}
