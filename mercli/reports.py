"""Rich tables for what the commands show a person (on stderr)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mercli.contracts import Check

if TYPE_CHECKING:
    from mercli.evaluation import Evaluation
    from mercli.extract import ExtractSummary
    from mercli.predict import Prediction
    from mercli.reason import ReasonSummary
    from mercli.teacher import PseudoLabelSummary
    from mercli.train import RunResult


def _plain(value: object) -> Text:
    """A cell shown as it is: names, paths and messages may hold ``[...]``, which is not markup."""
    return Text(str(value))


def _component_details(row: dict[str, Any]) -> str:
    if row.get("level_setting"):  # the level shown is the default of a setting
        row = {**row, "level": f"{row['level']} (setting: {row['level_setting']})"}
    facts = [f"{key} {row[key]}" for key in ("modality", "level", "dim", "needs_network", "uses_embeddings")
             if row.get(key) is not None]
    if row["options"]:
        facts.append("options: " + ", ".join(row["options"]))
    return ", ".join(facts) or row["description"]


def plugins_table(inventory: dict[str, list[dict[str, Any]]]) -> Table:
    table = Table(title="Installed plug-ins")
    for column in ("stage", "name", "version", "details", "package"):
        table.add_column(column)
    for stage, rows in inventory.items():
        if not rows:
            table.add_row(stage, "[dim](none)[/]", "", "", "")
        for row in rows:
            package = f"{row['package']} {row['package_version']}"
            table.add_row(stage, *map(_plain, (row["name"], row["version"], _component_details(row), package)))
    return table


def checks_table(checks: Iterable[Check]) -> Table:
    table = Table(title="mer doctor")
    for column in ("", "check", "detail"):
        table.add_column(column)
    for check in checks:
        mark = "[green]ok[/]" if check.ok else ("[red]FAIL[/]" if check.required else "[yellow]warn[/]")
        table.add_row(mark, _plain(check.name), _plain(check.detail))
    return table


def config_table(settings: dict[str, dict[str, dict[str, Any]]], workspace: Path, file: Path | None) -> Table:
    table = Table(title=_plain(f"Configuration (workspace {workspace}, file {file or 'none'})"))
    for column in ("setting", "value", "source"):
        table.add_column(column)
    for section, values in settings.items():
        for key, setting in values.items():
            table.add_row(*map(_plain, (f"{section}.{key}", repr(setting["value"]), setting["source"])))
    return table


def add_grouped(table: Table, outcome: str, items: list[dict[str, str]], colour: str) -> None:
    """A row counting ``items`` (``{"clip", "reason"}``), then one row per distinct reason, commonest first."""
    reasons: dict[str, int] = {}
    for item in items:
        reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
    table.add_row(f"[{colour}]{outcome}[/]" if items else outcome, str(len(items)), "")
    for reason, count in sorted(reasons.items(), key=lambda pair: -pair[1]):
        table.add_row("", str(count), escape(reason))


def extract_table(summary: "ExtractSummary") -> Table:
    rate = summary.media_seconds / summary.wall_seconds if summary.wall_seconds else 0.0
    workers = f"{summary.workers} worker{'s' if summary.workers != 1 else ''}"
    table = Table(title=f"mer extract: {summary.clips} clips, {workers}, {rate:.1f} s of media per second")
    table.add_column("outcome")
    table.add_column("clips", justify="right")
    table.add_column("detail")
    table.add_row("done", str(summary.done), "")
    table.add_row("skipped", str(summary.skipped), "already stored under the same manifest")
    add_grouped(table, "failed", summary.failed, "red")
    for partial in summary.partial:
        table.add_row("partly decoded", "1", escape(f"{partial['clip']}: {partial['reason']}"))
    for modality, counts in sorted(summary.absent.items()):
        for reason, count in counts.items():
            table.add_row(f"no {modality}", str(count), escape(reason))
    for feature_set in summary.feature_sets:
        table.add_row("feature set", "", f"{feature_set['path']} ({feature_set['modality']}, "
                      f"{feature_set['level']}, dim {feature_set['dim']})")
    return table


def reason_table(summary: "ReasonSummary") -> Table:
    """Outcomes, calls, tokens and cost of ``mer reason`` (or, for ``--dry-run``, its plan)."""
    source = summary.source
    kind = "plan (nothing called)" if summary.dry_run else f"{summary.clips} clips"
    labels = ", label-conditioned" if source.label_conditioned else ""
    table = Table(title=f"mer reason: {source.reasoner} {source.model} ({source.prompt_version}{labels}): {kind}")
    table.add_column("outcome")
    table.add_column("clips", justify="right")
    table.add_column("detail")
    if summary.dry_run:
        where = "remote calls" if summary.network else "offline, no network"
        table.add_row("to ask", str(summary.calls), f"one call per clip ({where}), retries not counted")
    else:
        table.add_row("done", str(len(summary.done)), "")
    table.add_row("cached", str(len(summary.cached)), "a trace of the same clip content is stored")
    add_grouped(table, "failed", summary.failed, "red")
    if summary.skipped:
        add_grouped(table, "not asked", summary.skipped, "yellow")
    if summary.stopped:
        table.add_row("[red]stopped[/]", "", escape(summary.stopped))
    usage = summary.usage
    estimated = "estimated " if summary.dry_run else ""
    table.add_row("calls", str(summary.calls), f"{estimated}{usage.input_tokens:,} input + "
                  f"{usage.output_tokens:,} output tokens, {estimated}cost {summary.cost_usd:.4f} USD")
    for prior in summary.priors:
        table.add_row("prior set", "", f"{prior['path']} ({prior['modality']}, dim {prior['dim']})")
    batch_rows(table, summary)
    return table


def batch_rows(table: Table, summary: "ReasonSummary") -> None:
    """The jobs of ``mer reason --batch``: submitted, still pending, collected, clips returned."""
    if summary.dry_run and hasattr(summary, "jobs_planned"):
        table.add_row("batch jobs", str(summary.jobs_planned), f"online price {summary.cost_online_usd:.4f} USD, "
                      f"batch price {summary.cost_usd:.4f} USD")
    for kind in ("submitted", "pending", "collected"):
        for job in getattr(summary, kind, []):
            detail = ", ".join(f"{k} {v}" for k, v in job.items() if k != "job" and v is not None)
            table.add_row(f"job {kind}", "", escape(f"{job['job']}: {detail}"))
    if getattr(summary, "returned", None):
        add_grouped(table, "to do again", summary.returned, "yellow")


def predictions_table(predictions: "list[Prediction]", run: str) -> Table:
    """One row per clip: the label, its probability, the modalities measured and the time taken."""
    table = Table(title=f"mer predict with {run}")
    for column in ("clip", "label", "p", "audio", "visual", "text", "seconds"):
        table.add_column(column, justify="right" if column in ("p", "seconds") else "left")
    for p in predictions:
        if p.error:
            table.add_row(_plain(p.clip), "[red]failed[/]", "", "", "", "", "")
            continue
        marks = ["yes" if p.modalities[m] else "-" for m in ("audio", "visual", "text")]
        table.add_row(_plain(p.clip), _plain(p.label), f"{p.probs[p.label]:.2f}", *marks, f"{p.seconds:.2f}")
    return table


def train_table(result: "RunResult") -> Table:
    """The run in one table: its inputs (the exact feature sets), priors, exclusions and folds."""
    table = Table(title=f"mer train: {result.run} ({result.device}, {result.seconds_per_epoch:.2f} s/epoch)")
    table.add_column("")
    table.add_column("detail")
    for spec in result.inputs:
        kind = "prior" if spec.prior else spec.modality
        made_by = result.manifests[spec.name]
        table.add_row("feature set", escape(f"{spec.name} ({kind}, {spec.level}, dim {spec.dim}; "
                                            f"{made_by['encoder']} {made_by['encoder_version']}, "
                                            f"weights {made_by['weights'] or 'unrecorded'})"))
    table.add_row("priors", escape(result.priors_note))
    pseudo = result.pseudo_labels
    if pseudo is not None:
        saw = pseudo["teacher_saw_validation"]
        table.add_row("pseudo-labels", escape(
            f"{pseudo['clips']} clips of {pseudo['path']} (round {pseudo['round']}, teacher {pseudo['teacher']['run']}, "
            f"weight {pseudo['weight']:g} x confidence) in every fold's training clips"))
        if saw["clips"]:
            table.add_row("[yellow]optimistic[/]", escape(f"the teacher trained on {saw['clips']} of the {saw['of']} "
                                                          "validation clips: the validation figures below are optimistic"))
    if result.excluded:
        shown = ", ".join(result.excluded[:10]) + (" ..." if len(result.excluded) > 10 else "")
        table.add_row("[yellow]excluded[/]", escape(f"{len(result.excluded)} labelled clips without features: {shown}"))
    for fold in result.folds:
        table.add_row(f"fold {fold.fold}", f"best epoch {fold.best_epoch}: WAF {fold.waf:.4f}, macro-F1 "
                      f"{fold.macro_f1:.4f}, accuracy {fold.accuracy:.4f} ({fold.train_clips} train, "
                      f"{len(fold.val_clips)} val clips); temperature {fold.calibration.temperature:.2f}")
    table.add_row("[bold]best[/]", f"WAF {result.best['waf']:.4f}, macro-F1 {result.best['macro_f1']:.4f}")
    return table


def pseudolabel_table(summary: "PseudoLabelSummary") -> Table:
    """Per class: clips the teacher predicted as it, kept and dropped; where the file went."""
    document = summary.to_json()
    table = Table(title=_plain(f"mer pseudolabel: round {summary.round}, teacher {summary.teacher.cell()}, "
                               f"{summary.selection.selection} selection"))
    for column in ("class", "predicted", "kept", "dropped"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in document["classes"].items():
        table.add_row(_plain(name), str(row["predicted"]), str(row["kept"]), str(row["dropped"]))
    table.add_row("[bold]all[/]", str(document["pool"]), str(document["kept"]), str(document["dropped"]))
    skipped = [f"{summary.teacher_clips} clips the teacher was trained on skipped"] if summary.teacher_clips else []
    if summary.without_features:
        skipped.append(f"{len(summary.without_features)} clips without features")
    if summary.refused:
        skipped.append(f"{len(summary.refused)} folder entries refused")
    table.caption = _plain("; ".join([f"wrote {summary.out}", *skipped]))
    return table


def _figures_row(figures: dict[str, Any]) -> list[str]:
    return [f"{figures[key]:.4f}" for key in ("waf", "accuracy", "macro_f1", "uar", "ece")]


def eval_summary_table(evaluation: "Evaluation") -> Table:
    """Every fold model's figures, their mean ± std, and the pooled (or fold-averaged) figures."""
    table = Table(title=_plain(f"mer eval: {evaluation.source}"))
    for column in ("model", "T", "clips", "WAF", "accuracy", "macro-F1", "UAR", "ECE"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for member in evaluation.member_figures:
        table.add_row(_plain(f"{Path(member['run']).name} fold {member['fold']}"), f"{member['temperature']:.3f}",
                      str(member["clips"]), *_figures_row(member))
    mean, std = evaluation.spread()
    if len(evaluation.member_figures) > 1:
        table.add_row("mean ± std", "", "", *(f"{mean[k]:.4f} ± {std[k]:.4f}" for k in mean))
    overall = "pooled out-of-fold" if evaluation.mode == "validation" else "mean of the fold models"
    table.add_row(f"[bold]{overall}[/]", "", str(len(evaluation.clip_ids)), *_figures_row(evaluation.figures))
    captions = [f"[yellow]{escape(note)}[/]" for note in evaluation.notes]
    if evaluation.excluded:
        shown = ", ".join(evaluation.excluded[:10]) + (" ..." if len(evaluation.excluded) > 10 else "")
        captions.append(escape(f"excluded: {len(evaluation.excluded)} labelled clips without features: {shown}"))
    table.caption = "\n".join(captions) or None
    return table


def per_class_table(evaluation: "Evaluation") -> Table:
    table = Table(title="per class")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in evaluation.figures["per_class"].items():
        table.add_row(_plain(name), f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}",
                      str(row["support"]))
    return table


def confusion_table(evaluation: "Evaluation") -> Table:
    """Rows: true class; columns: predicted class; the diagonal (correct predictions) in bold."""
    table = Table(title="confusion matrix (rows true, columns predicted)")
    table.add_column("")
    for name in evaluation.classes:
        table.add_column(_plain(name), justify="right")
    for row, (name, counts) in enumerate(zip(evaluation.classes, evaluation.figures["confusion"])):
        table.add_row(_plain(name), *(f"[bold]{c}[/]" if row == column else str(c) for column, c in enumerate(counts)))
    return table


def robustness_table(name: str, curve: dict[str, Any]) -> Table:
    """One corruption: the clean figures, then those of each level; failed clips in the caption."""
    from mercli.plots import ROBUSTNESS_FIGURES, level_label

    table = Table(title=_plain(f"robustness: {name}"))
    for column in ("level", *ROBUSTNESS_FIGURES.values()):
        table.add_column(column, justify="left" if column == "level" else "right")
    points = [("clean", curve["clean"]), *((level_label(curve["parameter"], p["level"]), p) for p in curve["levels"])]
    for label, point in points:
        table.add_row(_plain(label), *(f"{point[key]:.4f}" for key in ROBUSTNESS_FIGURES))
    failed = curve.get("failed", [])
    if failed:
        first = failed[0]
        table.caption = _plain(f"{len(failed)} clip(s) could not be corrupted or re-extracted (scored without the "
                               f"features it reaches); first: {first['clip']}: {first['reason']}")
    return table


def eval_tables(evaluation: "Evaluation") -> list[Table]:
    robustness = [robustness_table(name, curve) for name, curve in (evaluation.robustness or {}).items()]
    return [eval_summary_table(evaluation), per_class_table(evaluation), confusion_table(evaluation), *robustness]
