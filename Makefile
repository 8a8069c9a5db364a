# ferrolb: the two commands are `make lab` and `make test`; the rest are their parts.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export CARGO_TERM_COLOR ?= never
# Cargo's intermediate artifacts live in one build directory per machine, shared by every
# checkout (a fresh clone compiles only ferrolb's own crates, not its dependencies again);
# target/ keeps each checkout's final binaries. Builds of two checkouts wait for each other
# (cargo locks the directory). The directory is emptied when
# it outgrows FERROLB_BUILD_DIR_MAX_GIB (default 40) - see e2e/scripts/install-deps.sh.
export CARGO_BUILD_BUILD_DIR ?= $(HOME)/.cache/ferrolb/cargo-build
# Cargo names a workspace crate's artifacts by its path inside the workspace, so checkouts
# share them too; each crate's build script reruns when this changes (build/checkout.rs),
# so switching checkouts recompiles our crates instead of taking another checkout's.
export FERROLB_CHECKOUT := $(CURDIR)

# Tests against a real control plane (etcd + kube-apiserver): <crate>/tests/cp_*.rs
CP_TESTS_E2E := $(patsubst e2e/tests/%.rs,--test %,$(wildcard e2e/tests/cp_*.rs))
CP_TESTS_CONTROLLER := $(patsubst controller/tests/%.rs,--test %,$(wildcard controller/tests/cp_*.rs))

.PHONY: help test lab lab-bins lab-tests fuzz bench bench-lab bench-forwarding deps kube-bins crds check-crds fmt-check clippy unit cp-tests
.PHONY: chart

help:
	@echo "make lab   - run ferrolb on a real cluster on this machine (the lab)"
	@echo "make test  - everything: deps, fmt, clippy, CRD drift, unit and end-to-end tests"

test: deps fmt-check clippy check-crds chart unit fuzz cp-tests lab-tests images-test kind-tests
	@echo "make test: all stages passed"

LAB := target/debug/ferrolb-lab

lab: deps lab-bins
	$(LAB) up
	bash e2e/scripts/lab-demo.sh

lab-bins:
	cargo build -p ferrolb-e2e -p ferrolb-controller -p ferrolb-speaker --bins

# Lab end-to-end tests: IPv4 with iptables (and a speaker cut off from the API, seen to
# disagree by its peers; a request on a VLAN the node lacks),
# dual-stack with nftables (and a bridge that snoops MLD), IPv6 only; each lab always taken down; then the agent on its own, and
# up/down themselves.
lab-tests: lab-bins
	$(LAB) up --nodes 3 --proxy-mode iptables
	cargo test -p ferrolb-e2e --test lab_cluster --test e2e_speaker --test e2e_forwarding --test lab_stale --test lab_agreement --test lab_vlan -- --test-threads=1; s=$$?; $(LAB) down; exit $$s
	$(LAB) up --nodes 3 --proxy-mode nftables --dual-stack
	cargo test -p ferrolb-e2e --test lab_cluster --test e2e_speaker --test e2e_forwarding --test lab_mld -- --test-threads=1; s=$$?; $(LAB) down; exit $$s
	$(LAB) up --nodes 3 --ipv6
	cargo test -p ferrolb-e2e --test lab_cluster --test e2e_speaker --test e2e_forwarding -- --test-threads=1; s=$$?; $(LAB) down; exit $$s
	cargo test -p ferrolb-e2e --test lab_agent --test lab_down -- --test-threads=1

# Benchmarks print Markdown; the committed report is docs/benchmarks.md. `make bench` runs
# the controller's and the speaker's election benchmark; `make bench-lab` the speaker's on a 3-node IPv4 lab (failover, CPU under
# a flood, memory with 1,000 IPs, CPU under EndpointSlice churn, ARP answers while a speaker restarts beside
# 1,000 Services; about 15 minutes; needs root and the one lab of the
# machine, always taken down). Neither is part of `make test`.
bench: deps
	cargo bench -p ferrolb-controller --bench allocator
	cargo bench -p ferrolb-speaker --bench election
	cargo build --release -p ferrolb-controller --bin ferrolb-controller --example api_bench
	./target/release/examples/api_bench --services 2000

# The lab starts the debug speakers (target/debug); the example only probes and reads /proc.
bench-lab: deps lab-bins
	cargo build -p ferrolb-e2e --example speaker_bench
	$(LAB) up --nodes 3 || { s=$$?; $(LAB) down; exit $$s; }
	./target/debug/examples/speaker_bench --out target/bench-lab.md; s=$$?; $(LAB) down; exit $$s

# What NodePort forwarding costs against VIP mode, on a 3-node IPv4 lab (about 3 minutes;
# root; always taken down). Report: docs/benchmarks.md.
bench-forwarding: deps lab-bins
	cargo build -p ferrolb-e2e --example forwarding_bench
	$(LAB) up --nodes 3 || { s=$$?; $(LAB) down; exit $$s; }
	./target/debug/examples/forwarding_bench --out target/bench-forwarding.md; s=$$?; $(LAB) down; exit $$s

deps:
	@bash e2e/scripts/install-deps.sh

kube-bins:
	@bash e2e/scripts/build-kube.sh

crds:
	cargo run -q -p ferrolb-crds --bin crdgen

check-crds:
	cargo run -q -p ferrolb-crds --bin crdgen -- --check

# The Helm chart: strict lint, then the render tests (defaults equal deploy/, every value
# lands where it must, bad values refused). Its install on a real API server is cp_chart.rs.
chart: deps
	"$$(bash e2e/scripts/build-helm.sh --print-path)" lint --strict deploy/charts/ferrolb
	cargo test -p ferrolb-e2e --test chart

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

unit:
	cargo test --workspace --lib --bins
	# Speaker tests that need loopback sockets, or (as root) a network namespace of their own.
	cargo test -p ferrolb-speaker --tests

# A short run of the packet-codec fuzzer (cargo-fuzz; installs itself once).
fuzz:
	bash speaker/fuzz/run.sh 20

cp-tests:
	cargo test -p ferrolb-e2e $(CP_TESTS_E2E)
	cargo test -p ferrolb-controller $(CP_TESTS_CONTROLLER)

# kind: a real kind cluster `ferrolb` (docker; the node image is built here when none can be
# pulled), ferrolb installed, a demo Service curled from a client container. Variables:
# KIND_IP_FAMILY=ipv4|ipv6|dual, KIND_PROXY_MODE=iptables|nftables, KIND_NODE_IMAGE.
# State: /run/ferrolb-kind/cluster.json. `make kind-down` removes all of it.
.PHONY: kind kind-down
kind: deps
	@if [ -f e2e/scripts/images.sh ]; then $(MAKE) images; else echo "make kind: e2e/scripts/images.sh does not exist yet: ferrolb's images are not built"; fi
	bash e2e/scripts/kind/up.sh

kind-down:
	bash e2e/scripts/kind/down.sh

# Container images, FROM scratch with static binaries (nothing is pulled). Names:
# `e2e/scripts/images.sh --print-names`; IMAGE_REGISTRY and IMAGE_TAG choose them.
.PHONY: images images-test
images:
	bash e2e/scripts/images.sh

# What users rely on in the images (the commit in --version, the controller's user and
# read-only root, the speaker image's files, the echo server's replies), and the
# controller's own --version (the speaker's runs with its tests in `unit`).
images-test: images
	cargo test -p ferrolb-controller --test version
	cargo test -p ferrolb-e2e --test images

# The end-to-end suite again, on kind: a dual-stack cluster (kube-proxy in iptables mode;
# the lab covers nftables) made and removed by this run, ferrolb from its images under its
# chart; then the operations a user does (rolling update, leader deletion) and last
# `helm uninstall`. Figures go to target/kind-operations.md; on failure the cluster's state
# is printed before it is removed.
.PHONY: kind-tests
kind-tests: lab-bins
	$(MAKE) kind-down
	rm -f target/kind-operations.md
	KIND_IP_FAMILY=dual KIND_PROXY_MODE=iptables $(MAKE) kind || { s=$$?; bash e2e/scripts/kind/diagnose.sh; $(MAKE) kind-down; exit $$s; }
	FERROLB_E2E_CLUSTER=kind cargo test -p ferrolb-e2e --test e2e_speaker --test e2e_forwarding --test kind_operations -- --test-threads=1 && \
	  FERROLB_E2E_CLUSTER=kind cargo test -p ferrolb-e2e --test kind_uninstall; \
	  s=$$?; [ $$s = 0 ] || bash e2e/scripts/kind/diagnose.sh; $(MAKE) kind-down; exit $$s
