#!/usr/bin/env bash
# Vendor the dashboard's charting library (uPlot) from npm into clasp-analytics.
#   bash scripts/vendor-assets.sh            the pinned version below
#   UPLOT_VERSION=1.6.32 bash scripts/vendor-assets.sh
# The files are committed (with the licence), so installing and serving the gateway
# never needs npm or a CDN; run this only to upgrade. `npm pack` fetches the published
# tarball (no install scripts run); its checksum is printed for the commit message.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${UPLOT_VERSION:-1.6.32}
DEST=plugins/clasp-analytics/clasp_analytics/static/vendor
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
( cd "$WORK" && npm pack --silent "uplot@${VERSION}" >/dev/null && tar -xzf "uplot-${VERSION}.tgz" )
mkdir -p "$DEST"
cp "$WORK/package/dist/uPlot.iife.min.js" "$DEST/uPlot.iife.min.js"
cp "$WORK/package/dist/uPlot.min.css" "$DEST/uPlot.min.css"
cp "$WORK/package/LICENSE" "$DEST/uPlot.LICENSE"
echo "uplot ${VERSION} (npm)" > "$DEST/VERSIONS"
sha256sum "$WORK/uplot-${VERSION}.tgz" | awk '{print "sha256 " $1}' >> "$DEST/VERSIONS"
echo "vendored uplot ${VERSION} into ${DEST}:"
ls -l "$DEST"
