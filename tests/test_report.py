"""``mer report`` on a synthetic workspace with three runs (two evaluated, one not), a hand-written
``robustness`` section, and, for the gallery, real clips of ../shared/data and a stored trace. The
figures the page shows are read back from its cells and compared with the metrics.json files; the
slow test opens the page in headless Chromium (console, images, figures) and saves a screenshot."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from mercli.cli import cli
from mercli.evaluation import evaluate, predictions_digest
from mercli.report_html import FIGURES, THUMBNAIL_SIDE, write_report
from mercli.train import train
from mercli.traces import TraceSource, TraceStore
from mercli.workspace import Workspace
from support.browser import chromium, open_page, screenshot
from support.training import CLASSES, config, noisy_labels_with_a_mixed_test_split, write_workspace

REPO = Path(__file__).resolve().parents[1]
#: Where the browser test leaves its screenshot for a person to look at (build/ is ignored by git).
SCREENSHOT = REPO / "build" / "test-artifacts" / "report.png"

ROBUSTNESS = {
    "audio-noise": {"parameter": "snr", "clean": {"waf": 0.71, "macro_f1": 0.69, "accuracy": 0.72},
                    "levels": [{"level": 20, "waf": 0.66, "macro_f1": 0.64, "accuracy": 0.67},
                               {"level": 10, "waf": 0.52, "macro_f1": 0.5, "accuracy": 0.55},
                               {"level": 0, "waf": 0.31, "macro_f1": 0.27, "accuracy": 0.36}]},
    "drop:audio": {"parameter": None, "clean": {"waf": 0.71, "macro_f1": 0.69, "accuracy": 0.72},
                   "levels": [{"level": None, "waf": 0.48, "macro_f1": 0.41, "accuracy": 0.5}]},
}
SOURCE = TraceSource("local", "cue-rules", "v1")


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Workspace:
    """Runs "cv" and "cv-seed1" (3 folds each, evaluated; cv with robustness curves) and "plain"
    (the split column's validation clips, never evaluated)."""
    root = tmp_path_factory.mktemp("report")
    labels = write_workspace(root)
    noisy_labels_with_a_mixed_test_split(labels)
    workspace = Workspace(root)
    for name, seed, folds in (("cv", 0, 3), ("cv-seed1", 1, 3), ("plain", 0, None)):
        train(config(**{"train.epochs": 4, "train.seed": seed}), workspace, labels, name=name, folds=folds)
    for name in ("cv", "cv-seed1"):
        evaluate(config(), workspace, [name])
    add_robustness(workspace.runs / "cv", ROBUSTNESS)
    return workspace


def add_robustness(run: Path, section: dict) -> None:
    path = run / "eval" / "metrics.json"
    document = json.loads(path.read_text())
    document["robustness"] = section
    path.write_text(json.dumps(document))


def report_config(**overrides):
    return config(**{"train.device": "cpu", **overrides})


class Page(HTMLParser):
    """The cells of a report that carry data-* attributes, the images and the gallery cards."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.cells: list[tuple[dict, str]] = []
        self.images: list[dict] = []
        self.cards: list[dict] = []
        self._open: list[tuple[str, dict, list[str]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes)
            if self.cards:
                self.cards[-1]["images"].append(attributes)
        if tag == "div" and "card" in attributes.get("class", "").split():
            self.cards.append({"clip": attributes["data-clip"], "class": attributes["class"], "text": [], "images": []})
        if any(key.startswith("data-") and key != "data-clip" for key in attributes):
            self._open.append((tag, attributes, []))

    def handle_endtag(self, tag):
        if self._open and self._open[-1][0] == tag:
            _tag, attributes, text = self._open.pop()
            self.cells.append((attributes, "".join(text)))

    def handle_data(self, data):
        for _tag, _attributes, text in self._open:
            text.append(data)
        if self.cards:
            self.cards[-1]["text"].append(data)

    def value(self, **wanted: str) -> str:
        found = [text for attributes, text in self.cells
                 if all(attributes.get(f"data-{k.replace('_', '-')}") == v for k, v in wanted.items())
                 and len([k for k in attributes if k.startswith("data-")]) == len(wanted)]
        assert len(found) == 1, (wanted, found)
        return found[0]


def shown(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def assert_figures_shown(page: Page, workspace: Workspace) -> None:
    """Every figure of each evaluated run's metrics.json (pooled, fold mean and std, F1 per class,
    robustness) is on the page as eval recorded it."""
    for name in ("cv", "cv-seed1"):
        document = json.loads((workspace.runs / name / "eval" / "metrics.json").read_text())
        for key in FIGURES:
            assert page.value(run=name, figure=key) == shown(document[key])
            for part in ("mean", "std"):
                assert page.value(run=name, figure=key, part=part) == shown(document[part][key])
        for cls in CLASSES:
            assert page.value(run=name, **{"class": cls}) == shown(document["per_class"][cls]["f1"])
    for corruption, curve in ROBUSTNESS.items():
        points = [("clean", curve["clean"])] + [
            (f"{curve['parameter']}={level['level']}" if curve["parameter"] else "on", level) for level in curve["levels"]]
        for label, point in points:
            for key in ("waf", "macro_f1", "accuracy"):
                assert page.value(run="cv", corruption=corruption, level=label, figure=key) == shown(point[key])


def test_the_figures_shown_equal_those_of_metrics_json(space, tmp_path):
    result = write_report(report_config(), space, ["cv", "cv-seed1", "plain"], tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    page = Page(text)
    assert_figures_shown(page, space)
    stds = json.loads((space.runs / "cv" / "eval" / "metrics.json").read_text())["std"]
    assert all(value is not None for value in stds.values())  # three folds: a real spread is shown
    assert "not evaluated" in text and "mer eval --checkpoint plain" in text
    assert [r["evaluated"] for r in result.to_json()["runs"]] == [True, True, False]
    for heading in ("Settings that differ", "F1 per class", "Confusion matrices", "Calibration", "Training curves",
                    "Robustness", "Gallery"):
        assert f"<h2>{heading}</h2>" in text, heading


def test_settings_that_differ_are_listed_and_shared_ones_folded_away(space, tmp_path):
    write_report(report_config(), space, ["cv", "cv-seed1"], tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    differ = text[text.index("<h2>Settings that differ</h2>"):text.index("<details>")]
    rows = dict(re.findall(r"<tr><th>([^<]+)</th>((?:<td>[^<]*</td>)+)</tr>", differ))
    assert set(rows) == {"seed", "train.seed"}
    assert rows["seed"] == "<td>0</td><td>1</td>"
    shared = text[text.index("<details>"):text.index("</details>")]
    assert "train.epochs" in shared and "loss.name" in shared


def test_the_page_needs_no_network(space, tmp_path):
    write_report(report_config(), space, ["cv"], tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    page = Page(text)
    assert len(page.images) >= 5  # F1, confusion, reliability, curves, robustness
    assert all(image["src"].startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for image in page.images)
    assert "<script" not in text and "<link" not in text and "url(" not in text and "@import" not in text
    assert not re.search(r"(src|href)\s*=\s*['\"](?!data:)", text)


def test_the_reliability_diagram_shows_both_eces_of_metrics_json(space, tmp_path):
    write_report(report_config(), space, ["cv"], tmp_path / "r.html")
    reliability = json.loads((space.runs / "cv" / "eval" / "metrics.json").read_text())["reliability"]
    alts = [image["alt"] for image in Page((tmp_path / "r.html").read_text()).images]
    assert "Calibration: cv" in alts
    temperatures = [f["temperature"] for f in json.loads((space.runs / "cv" / "metrics.json").read_text())["folds"]]
    assert ", ".join(f"{t:.3f}" for t in temperatures) in (tmp_path / "r.html").read_text()
    assert reliability["ece_before"] != reliability["ece_after"]


def test_one_run_defaults_to_its_folder_and_several_to_reports(space, tmp_path):
    assert write_report(report_config(), space, ["cv"]).out == space.runs / "cv" / "report.html"
    assert (space.runs / "cv" / "report.html").is_file()
    several = write_report(report_config(), space, ["cv", str(space.runs / "plain")])
    assert several.out == space.root / "reports" / "cv-vs-plain.html" and several.out.is_file()


# --- the gallery ------------------------------------------------------------------------------


def predictions(run: Path) -> list[dict]:
    with (run / "eval" / "predictions.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def worst_first(rows: list[dict]) -> list[str]:
    """The gallery's order, recomputed: mistakes, least probability on the true class first."""
    return [r["clip"] for r in sorted(rows, key=lambda r: (r["label"] == r["predicted"], float(r[f"p_{r['label']}"])))]


def trace(clip: str, digest: str) -> dict:
    return {
        "clip": clip,
        "visual": {"cues": ["lip corners pulled down (frames 2-6)"], "emotion": "sad", "confidence": 0.7},
        "acoustic": {"cues": [], "emotion": None, "confidence": None, "absent": "silent audio track"},
        "textual": {"cues": ["says 'don't forget a jacket'"], "emotion": "neutral", "confidence": 0.4},
        "overall": {"emotion": "sad", "confidence": 0.6, "summary": "A downcast face over neutral words."},
        "provenance": {"reasoner": SOURCE.reasoner, "model": SOURCE.model, "prompt_version": SOURCE.prompt_version,
                       "label_conditioned": False, "usage": {"input_tokens": 0, "output_tokens": 0}, "cost_usd": 0,
                       "content_hash": digest, "created": "2026-01-01T00:00:00+00:00"},
    }


@pytest.fixture
def with_clips(space, tmp_path, shared_data) -> tuple[Workspace, list[str]]:
    """A copy of run cv in a workspace whose clips folder holds, for the four worst predictions,
    a real video, a real audio-only file, a file that is not media, and nothing; the video clip
    has a trace."""
    workspace = Workspace(tmp_path / "ws")
    run = workspace.runs / "cv"
    shutil.copytree(space.runs / "cv", run)
    clips = tmp_path / "ws" / "clips"
    clips.mkdir()
    shutil.copy(space.root / "labels.csv", clips / "labels.csv")
    document = json.loads((run / "config.json").read_text())
    document["labels"] = str(clips / "labels.csv")
    (run / "config.json").write_text(json.dumps(document))
    order = worst_first(predictions(run))
    shutil.copy(shared_data / "crema-d" / "1001_DFA_SAD_XX.flv", clips / f"{order[0]}.flv")
    shutil.copy(shared_data / "crema-d" / "1002_DFA_SAD_XX.mp3", clips / f"{order[1]}.mp3")
    (clips / f"{order[2]}.mp4").write_text("not a video")
    TraceStore.open(workspace.reasoning, SOURCE).write(order[0], trace(order[0], "c" * 64))
    return workspace, order


def test_the_gallery_shows_the_worst_mistakes_first_with_thumbnails_and_cues(with_clips, tmp_path):
    workspace, order = with_clips
    result = write_report(report_config(**{"report.gallery": 5}), workspace, ["cv"], tmp_path / "r.html")
    page = Page((tmp_path / "r.html").read_text())
    assert [card["clip"] for card in page.cards] == order[:5]
    rows = {r["clip"]: r for r in predictions(workspace.runs / "cv")}
    assert rows[order[0]]["label"] != rows[order[0]]["predicted"]  # the noisy labels leave mistakes to show
    for card in page.cards:
        row = rows[card["clip"]]
        text = "".join(card["text"])
        assert f"true: {row['label']}" in text and f"predicted: {row['predicted']}" in text
        predicted_probability = float(row["p_" + row["predicted"]])
        assert f"({predicted_probability:.2f})" in text
        assert ("wrong" in card["class"]) == (row["label"] != row["predicted"])
    video, audio, garbage, gone, _ = page.cards
    assert len(video["images"]) == 1 and video["images"][0]["src"].startswith("data:image/jpeg;base64,")
    jpeg = Image.open(io.BytesIO(base64.b64decode(video["images"][0]["src"].split(",", 1)[1])))
    assert jpeg.format == "JPEG" and max(jpeg.size) == THUMBNAIL_SIDE
    video_text = "".join(video["text"])
    assert "lip corners pulled down (frames 2-6)" in video_text and "silent audio track" in video_text
    assert "A downcast face over neutral words." in video_text
    for card, reason in ((audio, "audio-only file"), (garbage, "cannot decode"), (gone, "clip file not found")):
        assert not card["images"] and reason in "".join(card["text"]), (reason, card)
    assert result.gallery.__dict__ == {"shown": 5, "thumbnails": 1, "placeholders": 4, "traces": 1}


def test_a_gallery_of_zero_clips_leaves_the_section_out(space, tmp_path):
    write_report(report_config(**{"report.gallery": 0}), space, ["cv"], tmp_path / "r.html")
    assert "<h2>Gallery</h2>" not in (tmp_path / "r.html").read_text()


# --- the command line -------------------------------------------------------------------------


def mer(workspace: Workspace, *args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["-w", str(workspace.root), "report", *args])


def test_the_command_writes_the_page_and_says_where(space, tmp_path):
    outcome = mer(space, "cv", "--out", str(tmp_path / "page.html"), "--gallery", "3", "--json")
    assert outcome.exit_code == 0, outcome.output
    document = json.loads(outcome.stdout)
    assert document["out"] == str(tmp_path / "page.html") and document["gallery"]["shown"] == 3
    assert document["runs"][0]["robustness"] is True
    outcome = mer(space, "cv", "--out", str(tmp_path / "page.html"))
    assert outcome.exit_code == 0 and str(tmp_path / "page.html") in outcome.stderr and outcome.stdout == ""


def broken_robustness(level: dict) -> dict:
    section = json.loads(json.dumps(ROBUSTNESS))
    section["audio-noise"]["levels"][1] = level
    return section


@pytest.mark.parametrize("make, message", [
    (lambda ws, tmp: "nowhere", "error: nowhere: no such run folder"),
    (lambda ws, tmp: str(tmp), "not a run folder (it has no config.json"),
    (lambda ws, tmp: str(copy_run(ws, tmp, lambda run: add_robustness(run, broken_robustness({"level": 10, "waf": "x"})))),
     "eval/metrics.json: robustness.audio-noise.levels[1].waf: 'x' is not a number"),
    (lambda ws, tmp: str(copy_run(ws, tmp, lambda run: add_robustness(run, {"audio-noise": {"clean": {}}}))),
     "robustness.audio-noise.clean.waf: None is not a number"),
    (lambda ws, tmp: str(copy_run(ws, tmp, lambda run: (run / "eval" / "metrics.json").write_text("{"))),
     "eval/metrics.json: unreadable"),
    (lambda ws, tmp: str(copy_run(ws, tmp, lambda run: edit_evaluation(run, lambda d: d["mean"].update(uar="x")))),
     "eval/metrics.json: mean.uar: 'x' is not a number"),
    (lambda ws, tmp: str(copy_run(ws, tmp, lambda run: edit_evaluation(run, lambda d: d["reliability"]["after"][0].pop(
        "accuracy")))), "eval/metrics.json: reliability.after[0].accuracy: None is not a number"),
    (lambda ws, tmp: str(copy_run(ws, tmp, lambda run: replace_predictions(
        run, "clip,label,predicted,p_neutral,p_angry,p_happy\nx,sad,happy,0.1,0.2,0.7\n"))),
     "predictions.csv: clip x has a label or prediction outside the run's classes"),
    (lambda ws, tmp: str(copy_run(ws, tmp, lambda run: (run / "eval" / "predictions.csv").write_text(
        (run / "eval" / "predictions.csv").read_text().replace("0.", "1.", 1)))),
     "eval/predictions.csv: missing, or not the predictions of"),
    (lambda ws, tmp: str(copy_run(ws, tmp, lambda run: (run / "eval" / "predictions.csv").unlink())),
     "eval/predictions.csv: missing, or not the predictions of"),
    (lambda ws, tmp: str(copy_run(ws, tmp, lambda run: (run / "metrics.json").write_text("[]"))),
     "copy/metrics.json: not what `mer train` writes"),
])
def test_what_is_not_a_run_is_one_line_and_exit_2_and_the_old_page_stays(space, tmp_path, make, message):
    (tmp_path / "stray.txt").write_text("not a run")
    out = tmp_path / "out" / "page.html"
    out.parent.mkdir()
    out.write_text("the earlier page")
    outcome = mer(space, "cv", make(space, tmp_path), "--out", str(out))
    assert outcome.exit_code == 2, outcome.output
    assert message in outcome.stderr and len(outcome.stderr.strip().splitlines()) == 1, outcome.stderr
    assert "Traceback" not in outcome.output and outcome.stdout == ""
    assert out.read_text() == "the earlier page" and sorted(p.name for p in out.parent.iterdir()) == ["page.html"]


def edit_evaluation(run: Path, change) -> None:
    path = run / "eval" / "metrics.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def replace_predictions(run: Path, text: str) -> None:
    """Write predictions.csv and record it in metrics.json, as a whole evaluation would."""
    (run / "eval" / "predictions.csv").write_text(text)
    edit_evaluation(run, lambda d: d.update(predictions_sha256=predictions_digest(text.encode())))


def test_an_evaluation_without_reliability_bins_says_how_to_get_them(space, tmp_path):
    run = copy_run(space, tmp_path, lambda run: edit_evaluation(run, lambda d: d.pop("reliability")))
    write_report(report_config(), space, [str(run), "cv-seed1"], tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    calibration = text[text.index("<h2>Calibration</h2>"):text.index("<h2>Training curves</h2>")]
    assert "copy: no reliability bins; `mer eval` records them" in calibration
    assert [image["alt"] for image in Page(calibration).images] == ["Calibration: cv-seed1"]


def copy_run(workspace: Workspace, tmp_path: Path, damage) -> Path:
    run = tmp_path / "copy"
    shutil.copytree(workspace.runs / "cv", run)
    damage(run)
    return run


# --- in a browser -----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_page_renders_in_chromium_with_every_image_and_the_figures_of_metrics_json(space, with_clips, tmp_path):
    executable = chromium()
    if executable is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; scripts/setup.sh tries)")
    workspace, _order = with_clips
    for name in ("cv-seed1", "plain"):
        shutil.copytree(space.runs / name, workspace.runs / name)
    page_path = write_report(report_config(**{"report.gallery": 6}), workspace, ["cv", "cv-seed1", "plain"],
                             tmp_path / "report.html").out
    seen = open_page(page_path, tmp_path, executable)
    assert seen.console == [] and seen.errors == [], (seen.console, seen.errors)
    assert seen.fetched == [] or all(url.startswith("data:") for url in seen.fetched), seen.fetched
    assert len(seen.images) == len(Page(page_path.read_text()).images) >= 9
    broken = [image for image in seen.images if not (image["complete"] and image["width"] > 0 and image["height"] > 0)]
    assert broken == [], broken
    assert_figures_shown(Page(seen.dom), workspace)
    screenshot(page_path, SCREENSHOT, tmp_path, executable)
    assert Image.open(SCREENSHOT).size == (1280, 2400)
    print(f"screenshot of the report: {SCREENSHOT}")
