# The targets CI runs are the ones the README gives: `make test` runs everything.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test unit lint crds check-crds e2e demo down tools fuzz bench-publish

## test: lint, unit and registry/git integration tests, then the end-to-end suite
test: lint unit e2e

## unit: the pure core, plus integration tests against a real registry and a real git daemon
unit:
	e2e/registry/install.sh
	$(CARGO) test --all-targets
	deploy/argocd/test.sh

## lint: formatting, clippy, crds/ equal to `multiarch-operator crd`, helm lint of the chart
lint: check-crds
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	"$$(e2e/tools/build.sh | tail -n1)/helm" lint --strict charts/multiarch-operator

crds:
	$(CARGO) run -q -- crd > crds/multiarchimages.multiarch.dev.yaml
	cp crds/multiarchimages.multiarch.dev.yaml charts/multiarch-operator/files/crds/

check-crds:
	diff -u crds/multiarchimages.multiarch.dev.yaml <($(CARGO) run -q -- crd)
	diff -u crds/multiarchimages.multiarch.dev.yaml charts/multiarch-operator/files/crds/multiarchimages.multiarch.dev.yaml

## tools: build (or find cached) the Go-built control plane, kwok, helm, crane, BuildKit
tools:
	e2e/tools/build.sh

## e2e: the typed end-to-end scenarios (e2e/tests/scenarios) on a real control plane
e2e:
	e2e/run.sh

## demo: a local control plane, registry, the operator and a sample MultiArchImage
demo:
	e2e/demo.sh

## bench-publish: publish against crane, regctl, oras, buildx imagetools and skopeo (not in `test`)
bench-publish:
	e2e/bench-publish.sh

## fuzz: the parsers that read untrusted bytes under cargo-fuzz, FUZZ_SECONDS each (not in `test`)
fuzz:
	fuzz/run.sh

down:
	e2e/env.sh down
