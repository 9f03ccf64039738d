"""``mer report``: one self-contained HTML page that compares trained runs.

The page reads what the other stages wrote, and nothing else: a run's ``config.json``,
``metrics.json`` and ``history.json`` (mercli.train), its evaluation under ``RUN/eval/``
(``metrics.json`` and ``predictions.csv``, mercli.evaluation), the clip files named by the labels
file the predictions came from (thumbnails, decoded by mercli.media), and the reasoning traces of the
workspace (mercli.traces). A run that was never evaluated still shows its settings and training
curves, and the page says which command adds the rest.

It is one file that needs no network when it is viewed: styles are inline, every plot is a PNG
drawn by mercli.plots and every thumbnail a small JPEG, each embedded as a ``data:`` URI. A clip
whose file is gone or cannot be decoded shows a placeholder saying so, never a broken image.

Robustness curves are drawn from an optional ``robustness`` section of ``RUN/eval/metrics.json``
(what ``mer eval --corrupt`` records)::

    "robustness": {
      "audio-noise": {"parameter": "snr",
                      "clean": {"waf": 0.61, "macro_f1": 0.55, "accuracy": 0.63},
                      "levels": [{"level": 20, "waf": 0.58, "macro_f1": 0.52, "accuracy": 0.60}, ...]},
      "drop:audio": {"parameter": null, "clean": {...}, "levels": [{"level": null, ...}]}
    }

one entry per corruption, its levels in the order they are drawn; ``parameter`` names what
``level`` measures (``null`` for a corruption without levels).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from mercli.atomic import read_json, write_text
from mercli.clips import scan
from mercli.config import Config
from mercli.errors import DataError
from mercli.evaluation import PREDICTIONS_DIGEST, predictions_digest
from mercli.plots import (ROBUSTNESS_FIGURES, Curve, confusion_png, curves_png, level_label, per_class_png,
                          reliability_png, robustness_png)
from mercli.runs import CONFIG, HISTORY, METRICS, resolve_run
from mercli.traces import TraceSource, TraceStore, list_trace_stores
from mercli.version import __version__
from mercli.vocabulary import TRACE_MODALITIES, one_line
from mercli.workspace import Workspace

#: The figures of the comparison table, with the names the page shows.
FIGURES = {"waf": "WAF", "macro_f1": "macro-F1", "uar": "UAR", "ece": "ECE", "accuracy": "accuracy"}
#: Longest side of a gallery thumbnail, in pixels.
THUMBNAIL_SIDE = 160
#: Settings of config.json that are not settings a person compares (long lists, provenance).
UNCOMPARED = ("manifests", "excluded", "inputs")


# --- what a run holds -------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """One row of eval's predictions.csv."""

    clip: str
    label: str
    predicted: str
    probabilities: dict[str, float]
    origin: str

    @property
    def wrong(self) -> bool:
        return self.label != self.predicted

    @property
    def truth_probability(self) -> float:
        return self.probabilities[self.label]


@dataclass
class RunData:
    """A run's documents, read and checked for what the page shows; ``evaluation`` is ``None``
    for a run that was never evaluated."""

    name: str
    path: Path
    config: dict[str, Any]
    trained: dict[str, Any]
    history: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    predictions: list[Prediction]

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def labels_file(self) -> Path:
        """The labels file the evaluated clips came from (their clip files lie beside it)."""
        given = (self.evaluation or {}).get("labels_file") or self.config.get("labels", "")
        return Path(str(given))

    @property
    def robustness(self) -> dict[str, Any] | None:
        return (self.evaluation or {}).get("robustness")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _inside(where: str, key: str) -> str:
    """``FILE: a.b`` -> ``FILE: a.b.key``; ``FILE:`` -> ``FILE: key``."""
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def _check_scores(value: Any, keys: Iterable[str], where: str) -> None:
    """Every one of ``keys`` in ``value`` is a finite number; else a DataError naming the key."""
    if not isinstance(value, dict):
        raise DataError(f"{where.rstrip(':')}: not an object")
    for key in keys:
        if not _is_number(value.get(key)):
            raise DataError(f"{_inside(where, key)}: {value.get(key)!r} is not a number")


def _check_robustness(section: Any, where: str) -> None:
    """The shape the module notes give, so that a malformed section is one line, not a traceback."""
    if not isinstance(section, dict) or not section:
        raise DataError(f"{where}: not an object with one entry per corruption")
    for name, curve in section.items():
        here = f"{where}.{name}"
        if not isinstance(curve, dict):
            raise DataError(f"{here}: not an object")
        if not isinstance(curve.get("parameter"), (str, type(None))):
            raise DataError(f"{here}.parameter: {curve.get('parameter')!r} is neither a name nor null")
        _check_scores(curve.get("clean"), ROBUSTNESS_FIGURES, f"{here}.clean")
        levels = curve.get("levels")
        if not isinstance(levels, list) or not levels:
            raise DataError(f"{here}.levels: not a non-empty list")
        for number, level in enumerate(levels):
            _check_scores(level, ROBUSTNESS_FIGURES, f"{here}.levels[{number}]")
            if "level" not in level:
                raise DataError(f"{here}.levels[{number}].level: missing")


def _check_evaluation(document: Any, path: Path, classes: Sequence[str]) -> None:
    """What the page reads of eval's metrics.json, so that a damaged file is one line naming the key."""
    where = f"{path}:"
    _check_scores(document, FIGURES, where)
    for part in ("mean", "std", "per_class"):
        if not isinstance(document.get(part), dict):
            raise DataError(f"{_inside(where, part)}: not an object")
    _check_scores(document["mean"], FIGURES, _inside(where, "mean"))
    spread = {k: v for k, v in document["std"].items() if v is not None}  # None: one fold model, no spread
    _check_scores(spread, [k for k in FIGURES if k in spread], _inside(where, "std"))
    if document.get("classes") != list(classes):
        raise DataError(f"{_inside(where, 'classes')}: {document.get('classes')!r} are not the run's classes "
                        f"{list(classes)!r}")
    confusion = document.get("confusion")
    if not (isinstance(confusion, list) and len(confusion) == len(classes)
            and all(isinstance(row, list) and len(row) == len(classes) for row in confusion)):
        raise DataError(f"{_inside(where, 'confusion')}: not a {len(classes)} x {len(classes)} matrix")
    for name in classes:
        _check_scores(document["per_class"].get(name), ("f1",), _inside(where, f"per_class.{name}"))
    if "reliability" in document:
        _check_reliability(document["reliability"], _inside(where, "reliability"))
    if "robustness" in document:
        _check_robustness(document["robustness"], _inside(where, "robustness"))


def _check_reliability(section: Any, where: str) -> None:
    _check_scores(section, ("ece_before", "ece_after"), where)
    for moment in ("before", "after"):
        bins = section.get(moment)
        if not isinstance(bins, list):
            raise DataError(f"{where}.{moment}: not a list of bins")
        for number, one in enumerate(bins):
            _check_scores(one, ("lower", "upper", "share", "confidence", "accuracy"), f"{where}.{moment}[{number}]")


def _read_predictions(path: Path, classes: Sequence[str]) -> list[Prediction]:
    """The rows of eval's predictions.csv (an empty list when there is none)."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        predictions = [Prediction(row["clip"], row["label"], row["predicted"],
                                  {name: float(row[f"p_{name}"]) for name in classes},
                                  f"fold {row['fold']}" if row.get("fold") else "") for row in rows]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as problem:
        raise DataError(f"{path}: not eval's predictions ({one_line(problem)})") from None
    strange = [p.clip for p in predictions if p.label not in classes or p.predicted not in classes]
    if strange:
        raise DataError(f"{path}: clip {strange[0]} has a label or prediction outside the run's classes")
    return predictions


def _check_predictions_belong(evaluation: dict[str, Any], folder: Path) -> None:
    """The predictions.csv beside an evaluation's metrics.json must be the one written with it (an
    evaluation stopped between its files leaves the other one's); metrics.json from before the
    record was kept are taken as they are."""
    recorded = evaluation.get(PREDICTIONS_DIGEST)
    if recorded is None:
        return
    try:
        found = predictions_digest((folder / "predictions.csv").read_bytes())
    except OSError:
        found = None
    if found != recorded:
        raise DataError(f"{folder / 'predictions.csv'}: missing, or not the predictions of {folder / METRICS} (an "
                        "evaluation stopped midway?); run `mer eval` again")


def load_run_data(workspace: Workspace, reference: str) -> RunData:
    """The run named by ``reference`` (a name under runs/ or a folder); a path that is not a run
    is a DataError naming it."""
    path = resolve_run(workspace, reference, given_as="")
    if not (path / CONFIG).is_file():
        raise DataError(f"{path}: not a run folder (it has no {CONFIG}; `mer train` writes runs)")
    config = read_json(path / CONFIG)
    if not isinstance(config, dict) or not isinstance(config.get("classes"), list):
        raise DataError(f"{path / CONFIG}: not a run configuration (no list of classes)")
    trained = read_json(path / METRICS)
    history = read_json(path / HISTORY) if (path / HISTORY).is_file() else {}
    for name, document in ((METRICS, trained), (HISTORY, history)):
        if not isinstance(document, dict) or not isinstance(document.get("folds", []), list):
            raise DataError(f"{path / name}: not what `mer train` writes (no list of folds)")
    evaluation = None
    if (path / "eval" / METRICS).is_file():
        evaluation = read_json(path / "eval" / METRICS)
        _check_evaluation(evaluation, path / "eval" / METRICS, config["classes"])
        _check_predictions_belong(evaluation, path / "eval")
    predictions = _read_predictions(path / "eval" / "predictions.csv", config["classes"])
    return RunData(path.name, path, config, trained, history.get("folds", []), evaluation, predictions)


# --- settings ---------------------------------------------------------------------------------


def _flattened(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested settings as ``{"train.lr": "0.001", ...}``."""
    if isinstance(value, dict) and value:
        flat: dict[str, str] = {}
        for key, inner in value.items():
            flat.update(_flattened(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value if isinstance(value, str) else json.dumps(value)}


def run_settings(config: dict[str, Any]) -> dict[str, str]:
    """What a person compares between runs: every setting of config.json but the provenance
    lists, and the feature sets by name."""
    kept = {key: value for key, value in config.items() if key not in UNCOMPARED}
    features = ", ".join(str(spec.get("name")) for spec in config.get("inputs", []) if isinstance(spec, dict))
    return {**_flattened(kept), "features": features}


def differing_settings(runs: Sequence[RunData]) -> tuple[list[str], list[str]]:
    """The setting names whose values differ between ``runs`` (all of them for one run), and
    those that are the same everywhere."""
    tables = [run_settings(run.config) for run in runs]
    names = sorted(set().union(*tables))
    differ = [n for n in names if len(runs) == 1 or len({t.get(n, "(unset)") for t in tables}) > 1]
    return differ, [n for n in names if n not in differ]


# --- clips, thumbnails and traces -------------------------------------------------------------


@dataclass
class ClipFiles:
    """The clip files of the folder a labels file lies in (the folder itself for a folder
    layout), by clip id; ``problem`` says why there are none when the folder cannot be read."""

    folder: Path
    paths: dict[str, Path]
    problem: str = ""

    @classmethod
    def beside(cls, labels_file: Path) -> "ClipFiles":
        folder = labels_file if labels_file.is_dir() else labels_file.parent
        try:
            return cls(folder, {clip.clip_id: clip.path for clip in scan(folder).clips})
        except DataError as problem:
            return cls(folder, {}, str(problem))

    def missing(self, clip_id: str) -> str:
        """Why ``clip_id`` has no file here."""
        return f"clip file not found: {self.problem or f'no clip {clip_id} in {self.folder}'}"


def thumbnail(path: Path, clip_id: str) -> tuple[bytes | None, str]:
    """A small JPEG of the clip's middle sampled frame, or ``None`` and why there is none."""
    from PIL import Image

    from mercli.media import decode

    try:
        clip = decode(path, clip_id, fps=1.0, audio=False, max_side=THUMBNAIL_SIDE)
    except DataError as problem:
        return None, str(problem)
    if clip.frames is None:
        return None, f"no frame: {clip.absent.get('visual', 'no video stream')}"
    buffer = io.BytesIO()
    Image.fromarray(clip.frames[len(clip.frames) // 2]).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue(), ""


def trace_store(workspace: Workspace, config: dict[str, Any]) -> tuple[TraceStore | None, str]:
    """The traces to show beside a run's clips: those of the source its priors were made from,
    else the first source in the workspace whose reasoner did not see the labels; and a note when
    the workspace's traces cannot be read."""
    sources = [manifest.get("settings", {}).get("source") for manifest in config.get("manifests", {}).values()
               if isinstance(manifest, dict)]
    try:
        stores = list_trace_stores(workspace.reasoning)
        own = {TraceSource.from_json(s) for s in sources if isinstance(s, dict)}
    except DataError as problem:
        return None, f"traces unavailable: {problem}"
    chosen = [s for s in stores if s.source in own] or [s for s in stores if not s.source.label_conditioned]
    return (chosen[0] if chosen else None), ""


def _trace(store: TraceStore | None, clip_id: str) -> tuple[dict[str, Any] | None, str]:
    if store is None or clip_id not in store.clip_ids():
        return None, ""
    try:
        return store.read(clip_id), ""
    except DataError as problem:
        return None, str(problem)


# --- the page ---------------------------------------------------------------------------------


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #666; font-size: .9em; } .figures img { max-width: 100%; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: .8em; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: .6em; display: flex; gap: .6em; }
.card.wrong { border-color: #c33; background: #fff7f7; }
.thumb { flex: 0 0 160px; }
.placeholder { width: 160px; height: 100px; background: #eee; color: #555; font-size: .75em; display: flex;
  align-items: center; justify-content: center; text-align: center; padding: .3em; box-sizing: border-box;
  word-break: break-word; }
.bar { background: #4a7fb5; height: .55em; display: inline-block; vertical-align: middle; }
.probs td { border: none; padding: 0 .3em; font-size: .8em; }
.cues { font-size: .8em; max-height: 14em; overflow: auto; } .cues ul { margin: 0; padding-left: 1.1em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _image(data: bytes, mime: str, alt: str, css: str = "") -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img class="{css}" src="data:{mime};base64,{encoded}" alt="{_e(alt)}">'


def _number(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}"


def _settings_section(runs: Sequence[RunData]) -> str:
    differ, same = differing_settings(runs)
    tables = [run_settings(run.config) for run in runs]

    def rows(names: list[str]) -> str:
        return "".join(f"<tr><th>{_e(n)}</th>" + "".join(f"<td>{_e(t.get(n, '(unset)'))}</td>" for t in tables)
                       + "</tr>" for n in names)

    head = "<tr><th>setting</th>" + "".join(f"<th>{_e(run.name)}</th>" for run in runs) + "</tr>"
    if len(runs) == 1:
        return (f"<h2>Settings</h2><details><summary>{len(differ)} settings of the run</summary>"
                f"<table>{head}{rows(differ)}</table></details>")
    shared = (f"<details><summary>{len(same)} settings the runs share</summary><table>{head}{rows(same)}</table>"
              "</details>") if same else ""
    body = rows(differ) or f'<tr><td colspan="{len(runs) + 1}">no setting differs</td></tr>'
    return f"<h2>Settings that differ</h2><table>{head}{body}</table>{shared}"


def _figures_section(runs: Sequence[RunData]) -> str:
    head = "<tr><th>run</th><th>clips</th>" + "".join(f"<th>{name}</th>" for name in FIGURES.values()) + "</tr>"
    rows = []
    for run in runs:
        document = run.evaluation
        if document is None:
            rows.append(f'<tr><td>{_e(run.name)}</td><td colspan="{len(FIGURES) + 1}" class="note">not evaluated: '
                        f"run <code>mer eval --checkpoint {_e(run.name)}</code></td></tr>")
            continue
        pooled = "".join(f'<td class="num" data-run="{_e(run.name)}" data-figure="{k}">{_number(document[k])}</td>'
                         for k in FIGURES)
        spread = "".join(
            f'<td class="num"><span data-run="{_e(run.name)}" data-figure="{k}" data-part="mean">'
            f'{_number(document["mean"].get(k))}</span> ± <span data-run="{_e(run.name)}" data-figure="{k}" '
            f'data-part="std">{_number(document["std"].get(k))}</span></td>' for k in FIGURES)
        models = len(document.get("folds", []))
        rows.append(f"<tr><td>{_e(run.name)} <span class='note'>({_e(document.get('source', ''))})</span></td>"
                    f"<td class='num'>{_e(document.get('clips', ''))}</td>{pooled}</tr>"
                    f"<tr><td class='note'>mean ± std over {models} fold models</td><td></td>{spread}</tr>")
    return ("<h2>Figures</h2><p class='note'>Pooled over every prediction, then the mean ± standard deviation over "
            "the fold models (— where one model leaves no spread).</p>"
            f"<table>{head}{''.join(rows)}</table>")


def _per_class_section(runs: Sequence[RunData]) -> str:
    evaluated = [run for run in runs if run.evaluation is not None]
    if not evaluated:
        return ""
    classes = evaluated[0].classes
    f1 = {run.name: [run.evaluation["per_class"][c]["f1"] for c in classes] for run in evaluated
          if run.classes == classes}
    head = "<tr><th>run</th>" + "".join(f"<th>{_e(c)}</th>" for c in classes) + "</tr>"
    rows = "".join(f"<tr><td>{_e(name)}</td>" + "".join(
        f'<td class="num" data-run="{_e(name)}" data-class="{_e(c)}">{_number(v)}</td>'
        for c, v in zip(classes, values)) + "</tr>" for name, values in f1.items())
    plot = _image(per_class_png(classes, f1), "image/png", "F1 per class")
    return f"<h2>F1 per class</h2><div class='figures'>{plot}</div><table>{head}{rows}</table>"


def _per_run_images(runs: Sequence[RunData], title: str, draw, note: str = "", lacking: str = "") -> str:
    """A section with one image per run that ``draw(run)`` gives bytes for (``None``: nothing;
    ``lacking``, if given, says why, naming those runs)."""
    images = [(run, draw(run)) for run in runs]
    shown = "".join(_image(png, "image/png", f"{title}: {run.name}") for run, png in images if png is not None)
    without = [run.name for run, png in images if png is None]
    missing = f"<p class='note'>{_e(', '.join(without))}: {_e(lacking)}</p>" if lacking and without else ""
    if not shown and not missing:
        return ""
    return f"<h2>{_e(title)}</h2>{note if shown else ''}{missing}<div class='figures'>{shown}</div>"


def _confusion(run: RunData) -> bytes | None:
    if run.evaluation is None:
        return None
    return confusion_png(run.evaluation["confusion"], run.classes, f"{run.name}: WAF {run.evaluation['waf']:.3f}")


def _reliability(run: RunData) -> bytes | None:
    bins = (run.evaluation or {}).get("reliability")
    if not bins:
        return None
    return reliability_png(bins["before"], bins["after"], bins["ece_before"], bins["ece_after"], run.name)


def _curves(run: RunData) -> bytes | None:
    best = {f.get("fold"): f.get("best_epoch") for f in run.trained.get("folds", []) if isinstance(f, dict)}
    curves = [Curve(f"fold {fold['fold']}", fold["epochs"], best.get(fold["fold"])) for fold in run.history
              if fold.get("epochs")]
    return curves_png(curves, run.name) if curves else None


def _robustness_section(runs: Sequence[RunData]) -> str:
    with_curves = [run for run in runs if run.robustness]
    if not with_curves:
        return ""
    tables = []
    for run in with_curves:
        rows = []
        for name, curve in run.robustness.items():
            points = [("clean", curve["clean"]), *((level_label(curve.get("parameter"), level["level"]), level)
                                                   for level in curve["levels"])]
            rows.extend(f"<tr><td>{_e(name)}</td><td>{_e(label)}</td>" + "".join(
                f'<td class="num" data-run="{_e(run.name)}" data-corruption="{_e(name)}" data-level="{_e(label)}" '
                f'data-figure="{key}">{_number(point[key])}</td>' for key in ROBUSTNESS_FIGURES) + "</tr>"
                for label, point in points)
        head = "<tr><th>corruption</th><th>level</th>" + "".join(f"<th>{v}</th>" for v in ROBUSTNESS_FIGURES.values())
        tables.append(f"<h3>{_e(run.name)}</h3><table>{head}</tr>{''.join(rows)}</table>")
    images = _per_run_images(with_curves, "Robustness", lambda run: robustness_png(run.robustness, run.name))
    return images + "".join(tables)


def _probabilities(prediction: Prediction) -> str:
    ranked = sorted(prediction.probabilities.items(), key=lambda pair: -pair[1])
    return "<table class='probs'>" + "".join(
        f"<tr><td>{_e(name)}</td><td><span class='bar' style='width:{80 * p:.0f}px'></span></td>"
        f"<td class='num'>{p:.2f}</td></tr>" for name, p in ranked) + "</table>"


def _cues(trace: dict[str, Any] | None, problem: str) -> str:
    if trace is None:
        return f"<div class='cues note'>{_e(problem)}</div>" if problem else ""
    parts = []
    for part in TRACE_MODALITIES:
        judged = trace[part]
        if judged.get("absent"):
            parts.append(f"<div><b>{part}</b>: <span class='note'>absent ({_e(judged['absent'])})</span></div>")
            continue
        cues = "".join(f"<li>{_e(cue)}</li>" for cue in judged["cues"])
        parts.append(f"<div><b>{part}</b>: {_e(judged['emotion'])} ({judged['confidence']:.2f})<ul>{cues}</ul></div>")
    overall = trace["overall"]
    parts.append(f"<div><b>overall</b>: {_e(overall['emotion'])} ({overall['confidence']:.2f}) — "
                 f"{_e(overall['summary'])}</div>")
    return f"<div class='cues'>{''.join(parts)}</div>"


@dataclass
class GalleryCount:
    shown: int = 0
    thumbnails: int = 0
    placeholders: int = 0
    traces: int = 0


def gallery_order(predictions: Sequence[Prediction]) -> list[Prediction]:
    """Mistakes first, the most confident ones (least probability on the true class) first among
    them; then the right answers, least sure first."""
    return sorted(predictions, key=lambda p: (not p.wrong, p.truth_probability))


def _gallery_section(workspace: Workspace, runs: Sequence[RunData], size: int, count: GalleryCount) -> str:
    sections = []
    for run in runs:
        if size == 0 or not run.predictions:
            continue
        files = ClipFiles.beside(run.labels_file)
        store, trace_note = trace_store(workspace, run.config)
        cards = []
        for prediction in gallery_order(run.predictions)[:size]:
            path = files.paths.get(prediction.clip)
            jpeg, reason = (thumbnail(path, prediction.clip) if path is not None
                            else (None, files.missing(prediction.clip)))
            picture = (_image(jpeg, "image/jpeg", prediction.clip) if jpeg is not None
                       else f"<div class='placeholder'>{_e(reason)}</div>")
            trace, problem = _trace(store, prediction.clip)
            count.shown += 1
            count.thumbnails += jpeg is not None
            count.placeholders += jpeg is None
            count.traces += trace is not None
            verdict = "wrong" if prediction.wrong else "right"
            cards.append(
                f"<div class='card {verdict}' data-clip='{_e(prediction.clip)}'><div class='thumb'>{picture}</div><div>"
                f"<div><b>{_e(prediction.clip)}</b> <span class='note'>{_e(prediction.origin)}</span></div>"
                f"<div>true: <b>{_e(prediction.label)}</b> · predicted: <b>{_e(prediction.predicted)}</b> "
                f"({prediction.probabilities[prediction.predicted]:.2f})</div>"
                f"{_probabilities(prediction)}{_cues(trace, problem)}</div></div>")
        where = (f"traces of {_e(store.source.reasoner)} {_e(store.source.model)} ({_e(store.source.prompt_version)})"
                 if store is not None else trace_note or "no reasoning traces in the workspace")
        sections.append(f"<h3>{_e(run.name)}</h3><p class='note'>{len(cards)} of {len(run.predictions)} predictions, "
                        f"mistakes first; {where}.</p><div class='gallery'>{''.join(cards)}</div>")
    if not sections:
        return ""
    return "<h2>Gallery</h2>" + "".join(sections)


def render(workspace: Workspace, runs: Sequence[RunData], gallery: int, count: GalleryCount) -> str:
    """The whole page."""
    names = ", ".join(run.name for run in runs)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    calibration_note = "<p class='note'>Temperatures per fold: " + "; ".join(
        f"{_e(run.name)}: " + ", ".join(f"{f.get('temperature', 1.0):.3f}" for f in run.trained.get("folds", []))
        for run in runs) + "</p>"
    body = [
        f"<h1>mer report: {_e(names)}</h1><p class='note'>Written {created} by mer {__version__}.</p>",
        _settings_section(runs), _figures_section(runs), _per_class_section(runs),
        _per_run_images(runs, "Confusion matrices", _confusion),
        _per_run_images(runs, "Calibration", _reliability, calibration_note,
                        "no reliability bins; `mer eval` records them (again, for an evaluation written before)"),
        _per_run_images(runs, "Training curves", _curves),
        _robustness_section(runs),
        _gallery_section(workspace, runs, gallery, count),
    ]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mer report: {_e(names)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")


# --- the command ------------------------------------------------------------------------------


@dataclass
class ReportResult:
    out: Path
    runs: list[RunData]
    gallery: GalleryCount = field(default_factory=GalleryCount)

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out),
                "runs": [{"name": run.name, "path": str(run.path), "evaluated": run.evaluation is not None,
                          "robustness": bool(run.robustness)} for run in self.runs],
                "gallery": vars(self.gallery)}


def default_out(workspace: Workspace, runs: Sequence[RunData]) -> Path:
    """``RUN/report.html`` for one run; ``reports/A-vs-B.html`` in the workspace for several."""
    if len(runs) == 1:
        return runs[0].path / "report.html"
    return workspace.root / "reports" / ("-vs-".join(run.name for run in runs) + ".html")


def write_report(config: Config, workspace: Workspace, references: Sequence[str], out: Path | None = None
                 ) -> ReportResult:
    """Read the runs named by ``references`` and write their page to ``out`` (atomically)."""
    runs = [load_run_data(workspace, reference) for reference in references]
    unique = list({run.path.resolve(): run for run in runs}.values())
    result = ReportResult(out or default_out(workspace, unique), unique)
    page = render(workspace, unique, config.report.gallery, result.gallery)
    write_text(result.out, page)
    return result
