# Patu. `sudo make demo` shows it working; `sudo make test` runs every test tier.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
BIN := bin

.PHONY: help deps test-deps build generate check-generated test test-unit bench demo clean kernels kernels-arm64

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

deps: ## install missing build packages (Debian) and the demo's runtime (containerd 1.6 and 2.x, crictl)
	@hack/deps.sh
	@hack/e2e-deps.sh

test-deps: deps ## also the other e2e runtimes: podman, CRI-O (built from source: 10-15 min the first time), the Kubernetes node (hack/k8s-deps.sh: ~8 min the first time)
	@hack/podman-deps.sh
	@hack/crio-deps.sh
	@hack/apps-deps.sh
	@hack/k8s-deps.sh

build: ## build the binaries into bin/ (static: they run on any node)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags=-s -o $(BIN)/patu ./cmd/patu
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags=-s -o $(BIN)/patu-cni ./cmd/patu-cni
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/patu-testpeer ./test/peer
	CGO_ENABLED=0 GOARCH=arm64 $(GO) build -trimpath -ldflags=-s -o $(BIN)/linux-arm64/patu ./cmd/patu
	CGO_ENABLED=0 GOARCH=arm64 $(GO) build -trimpath -ldflags=-s -o $(BIN)/linux-arm64/patu-cni ./cmd/patu-cni

generate: ## regenerate the eBPF objects and Go bindings from bpf/*.c
	$(GO) generate ./bpf/

check-generated: generate ## fail when committed generated files differ from their sources
	@git diff --exit-code --stat -- bpf/ || { echo "generated files are stale: run make generate and commit" >&2; exit 1; }

test: ## all tiers (setup, static, unit, privileged, e2e), each timed; needs root. TIERS="unit privileged" for some
	@hack/test.sh

test-unit: ## unprivileged tests only
	PATU_SKIP_PRIVILEGED=1 $(GO) test -count=1 ./...

bench: deps ## bridge vs Patu vs loopback, side by side; table + out/bench.json; needs root
	@hack/apps-deps.sh
	$(GO) run ./test/bench -o out/bench.json

demo: deps ## two pods on a private containerd via crictl, bridge vs Patu, all cleaned up; needs root
	$(GO) run ./test/demo

clean:
	rm -rf $(BIN) out

kernels: ## the privileged subset on Debian's 6.1 and 6.12 in QEMU/TCG, then this kernel; one line each; needs root
	@hack/kernels.sh amd64

kernels-arm64: ## the same on Debian's arm64 kernel (qemu-system-aarch64, TCG); needs root
	@hack/kernels.sh arm64

.PHONY: image
image: build ## Patu's container image ghcr.io/patu-dev/patu:<deploy/VERSION> as an OCI tarball, out/patu-image.tar (ctr images import)
	$(GO) run ./hack/image -bin $(BIN) -o out/patu-image.tar

.PHONY: demo-k8s
demo-k8s: ## the demo on a real Kubernetes node: image, kubectl apply, a transfer over Patu vs opted out, kubectl delete; needs root and make test-deps
	$(GO) run ./test/k8sdemo
