#!/usr/bin/env bash
# The main job on sample data, from a fresh machine: set up, fetch twelve labelled CREMA-D clips,
# check the machine, list the plug-ins, then run the pipeline on the clips and write its report.
# Everything it writes lies under demo/ (ignored by git); running it again reuses what is done.
set -euo pipefail

cd "$(dirname "$0")/.."
CLIPS=demo/crema-d
WORKSPACE=demo/workspace
mer=.venv/bin/mer

bash scripts/setup.sh
bash scripts/sample-data.sh "$CLIPS"

# The demo's classes are CREMA-D's six emotions; the default label map folds the dataset's spellings
# (anger, happiness, sadness) into them.
mkdir -p "$WORKSPACE"
cat > "$WORKSPACE/mer.toml" <<'TOML'
## mer configuration of the demo (written by scripts/demo.sh): CREMA-D's six emotions.
[data]
classes = ["neutral", "angry", "happy", "sad", "fear", "disgust"]
TOML

"$mer" -w "$WORKSPACE" doctor   # exits 1, and stops the demo, when a required piece is missing
"$mer" -w "$WORKSPACE" plugins

# ---- PIPELINE: every stage on the sample clips, offline ------------------------------------------
"$mer" -w "$WORKSPACE" extract "$CLIPS" --labels "$CLIPS/labels.csv"
"$mer" -w "$WORKSPACE" reason "$CLIPS"            # the local reasoner: traces from measured cues, then priors
"$mer" -w "$WORKSPACE" train --labels "$CLIPS/labels.csv" --loss bdcl --folds 3 --name demo-bdcl
"$mer" -w "$WORKSPACE" predict "$CLIPS"/1001_DFA_HAP_XX.flv "$CLIPS"/1001_DFA_SAD_XX.flv
# Twelve clips are far too few to learn six emotions: the report shows the machinery, not a model.
"$mer" -w "$WORKSPACE" eval --checkpoint demo-bdcl

# ---- REPORT: one HTML page of the run (figures, plots, the clips with their cues), viewable offline
"$mer" -w "$WORKSPACE" report demo-bdcl
echo "report: $(realpath "$WORKSPACE/runs/demo-bdcl/report.html")"
