#!/bin/sh
# Build the ASVspoof 2019 LA manifests (train, dev, eval) from the official protocol files and check them
# against the published counts.  Usage: sh data_manifests/asvspoof2019_la.sh ROOT   (ROOT holds LA/)
set -eu
ROOT=${1:?usage: sh data_manifests/asvspoof2019_la.sh ROOT (the folder holding LA/)}
HERE=$(dirname "$0")
BIN=${SHARPSCOPE_BIN:-.venv/bin}
for part in train dev eval; do
  "$BIN/sharpscope" manifest build asvspoof2019_la --root "$ROOT" --subset "$part" \
    --out "$HERE/asvspoof2019la_$part.csv"
done
"$BIN/python" -m sharpscope.data.published asvspoof2019_la \
  "$HERE/asvspoof2019la_train.csv" "$HERE/asvspoof2019la_dev.csv" "$HERE/asvspoof2019la_eval.csv"
