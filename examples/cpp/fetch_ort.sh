#!/usr/bin/env bash
# Prepare ONNX Runtime for the C++ example without vendoring anything:
#   headers: Debian trixie's libonnxruntime-dev (.deb fetched with apt-get download, unpacked);
#   library: the onnxruntime PyPI wheel's capi/libonnxruntime.so.* (+ a libonnxruntime.so link).
# usage: fetch_ort.sh DEST     -> DEST/include/onnxruntime_cxx_api.h, DEST/lib/libonnxruntime.so
set -euo pipefail
DEST=$(mkdir -p "${1:-ort}" && cd "${1:-ort}" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mirror=$(grep -hoE '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
mirror=${mirror:-$(grep -hoE '^deb +[^ ]+' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')}
mirror=${mirror:-http://deb.debian.org/debian}
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial"
echo "deb [trusted=yes] $mirror trixie main" > "$WORK/trixie.list"
APT=(-o "Dir::Etc::SourceList=$WORK/trixie.list" -o "Dir::Etc::SourceParts=-" -o "Dir::State::Lists=$WORK/lists"
     -o "Dir::Cache=$WORK/cache" -o "APT::Get::List-Cleanup=0" -o "Acquire::AllowInsecureRepositories=1"
     -o "APT::Sandbox::User=root")
apt-get "${APT[@]}" update -qq >/dev/null
(cd "$WORK" && apt-get "${APT[@]}" download -qq libonnxruntime-dev >/dev/null)
dpkg-deb -x "$WORK"/libonnxruntime-dev_*.deb "$WORK/x"
mkdir -p "$DEST/include" "$DEST/lib"
hdr=$(dirname "$(find "$WORK/x" -name onnxruntime_cxx_api.h | head -1)")
cp -r "$hdr"/. "$DEST/include/"
capi=$(python3 -c "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))")
lib=$(ls "$capi"/libonnxruntime.so.* | head -1)
ln -sf "$lib" "$DEST/lib/$(basename "$lib")"
ln -sf "$lib" "$DEST/lib/libonnxruntime.so"
soname=$(objdump -p "$lib" 2>/dev/null | awk "/SONAME/{print \$2}")
[ -n "$soname" ] && ln -sf "$lib" "$DEST/lib/$soname"
echo "$DEST"
