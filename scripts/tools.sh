#!/usr/bin/env bash
# Command-line tools the tests need beyond Python: today Helm (chart lint and template tests).
# Built from the Go module proxy with `go install`, into ${INVAD_CACHE:-$HOME/.cache/invad}/bin, once;
# a later run finds the right version there and does nothing. Prints the helm binary's path on its
# last line.
#
#   scripts/tools.sh            build what is missing (first time: several minutes of Go compilation)
#
# Needs Go >= the version helm's go.mod asks for; GOPROXY is whatever the machine uses.
# INVAD_HELM_VERSION overrides the version (a helm.sh/helm/v3 module version).
set -euo pipefail

cache=${INVAD_CACHE:-$HOME/.cache/invad}
bin="$cache/bin"
helm_version=${INVAD_HELM_VERSION:-v3.22.0}
helm="$bin/helm"

log() { echo "[tools] $*" >&2; }
die() { echo "[tools] ERROR: $*" >&2; exit 1; }

# The version a helm binary reports; `go install` alone leaves it at a default (e.g. "v3.22"), so a
# binary built without this script's flags is rebuilt once.
helm_reports() { # $1 = binary
  [[ -x "$1" ]] && "$1" version --template '{{.Version}}' 2>/dev/null || true
}

install_helm() {
  if [[ "$(helm_reports "$helm")" == "$helm_version" ]]; then
    log "helm $helm_version already in $bin"
    return
  fi
  command -v go >/dev/null || die "go is not installed; install Go (https://go.dev/dl/) or put a helm $helm_version binary at $helm"
  log "helm: building helm.sh/helm/v3/cmd/helm@$helm_version from the Go module proxy (a few minutes, once)"
  local gomod client_go k8s_minor tmp t0
  # Helm's Makefile stamps its version, and the Kubernetes version that `helm template` and `helm lint`
  # assume without a cluster (the client-go minor it is built with), into the binary; do the same, or
  # a plain `go install` assumes Kubernetes 1.20 and refuses charts that need newer.
  gomod=$(go mod download -json "helm.sh/helm/v3@$helm_version" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  client_go=$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod")
  k8s_minor=$(echo "$client_go" | cut -d. -f2)
  [[ "$k8s_minor" =~ ^[0-9]+$ ]] || die "cannot read the k8s.io/client-go version from $gomod"
  # Build into a private folder and move into place, so a concurrent run never sees half a binary.
  tmp=$(mktemp -d "$bin/.helm-build.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  t0=$(date +%s)
  GOBIN="$tmp" GOFLAGS=-mod=mod CGO_ENABLED=0 go install -trimpath -ldflags "-s -w \
    -X helm.sh/helm/v3/internal/version.version=$helm_version \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor" \
    "helm.sh/helm/v3/cmd/helm@$helm_version" \
    || die "go install helm.sh/helm/v3/cmd/helm@$helm_version failed (see above)"
  mv -f "$tmp/helm" "$helm"
  log "helm: built in $(($(date +%s) - t0)) s (assumes Kubernetes 1.$k8s_minor without a cluster)"
}

mkdir -p "$bin"
exec 9>"$bin/.tools.lock"
flock 9
install_helm
echo "$helm"
