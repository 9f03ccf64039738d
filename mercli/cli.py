"""The ``mer`` command line. Each stage command parses its options and hands them, by the same
names, to the stage's function in :mod:`mercli.api`; it prints the result and sets the exit status."""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from mercli import __version__, api, config as configuration
from mercli.console import (emit_json, error, print_nothing_more, reserve_standard_streams, stderr,
                            to_devnull)
from mercli.errors import (EXIT_INTERRUPTED, EXIT_READER_GONE, EXIT_SOME_FAILED, EXIT_TERMINATED, EXIT_USAGE, MerError,
                           OutputError, UsageError, unwritable_message, writing)
from mercli.vocabulary import one_line
from mercli.workspace import Workspace


@dataclass
class App:
    """What every subcommand shares: the workspace, the configuration and the output mode."""

    workspace: Workspace
    config_path: Path
    config_named: bool = False  # given with -c, so it must exist
    overrides: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def config(self) -> configuration.Config:
        return configuration.load(self.config_path, overrides=self.overrides, required=self.config_named)

    def call(self, stage: Callable[..., T], *args: Any, **options: Any) -> T:
        """Call the Python API's ``stage`` with the group's workspace, ``-c`` file and ``-s``
        settings; options it refuses together are a usage error, as click's own are."""
        try:
            return stage(*args, **options, workspace=self.workspace.root,
                         config=self.config_path if self.config_named else None, settings=self.overrides)
        except UsageError as problem:
            raise click.UsageError(str(problem)) from problem


F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

JSON_REQUESTED = "mer.json"  # ctx.meta key: the subcommand was given --json
JSON_ON_COMMAND_LINE = "mer.json-word"  # ctx.meta key: --json is among the command line's words
JSON_SENT = "mer.json-sent"  # ctx.meta key: the error's JSON document is printed


def fail(message: str, exit_code: int, as_json: bool, short: str | None = None) -> None:
    """End the command with ``error: MESSAGE`` on stderr and, with ``--json``, the one JSON
    document stdout owes its reader: ``{"error": SHORT or MESSAGE, "exit_code": N}``."""
    error(message)
    if as_json:
        with contextlib.suppress(OutputError):  # the error may be stdout's own: its line is on stderr
            emit_json({"error": short or one_line(message), "exit_code": exit_code})
    sys.exit(exit_code)


def json_on_command_line(words: list[str]) -> bool:
    """Whether ``--json`` is among the command line's words (before a lone ``--``, after which
    words are arguments): a usage error found before the option was parsed still owes the JSON
    document."""
    return "--json" in (words[:words.index("--")] if "--" in words else words)


def usage_error_as_json(meta: dict[str, Any], problem: click.ClickException) -> None:
    """Print a usage error's JSON document when the command line asks for JSON, once (a nested
    group passes the error up to its parent's handler)."""
    if (meta.get(JSON_ON_COMMAND_LINE) or meta.get(JSON_REQUESTED)) and not meta.get(JSON_SENT):
        meta[JSON_SENT] = True
        emit_json({"error": problem.format_message(), "exit_code": problem.exit_code})


class MerGroup(click.Group):
    """Turns a :class:`MerError` into one line on stderr and its exit status, Ctrl-C into a short
    note (every stage writes atomically, so running it again resumes), and an OSError that no stage
    expected (a disk that filled up, a folder that cannot be created) into one line naming the
    path: exit 2, the user's to fix. With --json each of them also prints its JSON document, and so
    does a usage error (click prints its usage text on stderr after it). A reader that closed the
    output early (``mer ... | head -1``) ends the command quietly."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        meta = parent.meta if parent is not None else {JSON_ON_COMMAND_LINE: json_on_command_line(args)}
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except click.ClickException as problem:  # the group's own options: before its context exists
            usage_error_as_json(meta, problem)
            raise
        ctx.meta.setdefault(JSON_ON_COMMAND_LINE, meta[JSON_ON_COMMAND_LINE])
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self.invoke_reporting_errors(ctx)
        except BrokenPipeError:
            # Exit status 141 (128 + SIGPIPE), what the shell reports for a tool killed by SIGPIPE, as
            # 130 and 143 are for SIGINT and SIGTERM; Python's recipe exits 1, which here would read
            # "finished, but some items failed". No error message: the reader asked for no more.
            # SIGPIPE itself stays ignored (Python's default): at its default action a closed
            # network connection would kill the process too, in the middle of writing a file.
            print_nothing_more()
            sys.exit(EXIT_READER_GONE)

    def invoke_reporting_errors(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as problem:  # a usage error: click prints it, after the JSON document
            usage_error_as_json(ctx.meta, problem)
            raise
        except MerError as problem:
            fail(str(problem), problem.exit_code, ctx.meta.get(JSON_REQUESTED, False))
        except BrokenPipeError:
            raise
        except OSError as problem:
            fail(unwritable_message(None, problem), EXIT_USAGE, ctx.meta.get(JSON_REQUESTED, False))
        except KeyboardInterrupt:
            from mercli.signals import terminated

            what, status = ("terminated", EXIT_TERMINATED) if terminated() else ("interrupted", EXIT_INTERRUPTED)
            fail(f"{what}; what was finished is kept, and running the same command again resumes",
                 status, ctx.meta.get(JSON_REQUESTED, False), short=what)


def parse_set(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    parsed = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"'{item}' is not KEY=VALUE (for example extract.fps=4)")
        parsed[key.strip()] = configuration.Text(raw.strip())
    return parsed


@click.group(cls=MerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mer")
@click.option("-w", "--workspace", type=click.Path(file_okay=False, path_type=Path), envvar=api.WORKSPACE_VARIABLE,
              help="Workspace folder [default: the folder holding mer.toml, else the current one].")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Configuration file [default: WORKSPACE/mer.toml].")
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE", callback=parse_set,
              help="Override any setting, e.g. -s extract.fps=4 or -s loss.bdcl.temperature=0.1.")
@click.pass_context
def cli(ctx: click.Context, workspace: Path | None, config_path: Path | None, overrides: dict[str, Any]) -> None:
    """Multimodal video emotion recognition with reasoning priors.

    Stages: extract -> reason -> train -> eval -> predict (and pseudolabel -> train for self-training). Human output goes to stderr; with
    --json, stdout carries exactly one JSON document (predict: one object per line), an error's
    too. Exit status: 0 all done, 1 finished but some items failed, 2 usage or configuration
    error, 130 interrupted, 141 the output's reader went away (| head -1).
    """
    located = Workspace.locate(workspace)
    ctx.obj = App(located, config_path or located.config_path, config_path is not None, dict(overrides))


def note_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """Tell :class:`MerGroup` that an error must be printed as JSON too (eager: known before any
    other option can fail to parse)."""
    ctx.meta[JSON_REQUESTED] = value
    return value


class SettingOption(click.Option):
    """An option that sets the configuration key ``setting``; the stage function takes it as the
    keyword of the same name and makes it a command-line override, checked with every other source."""

    def __init__(self, *args: Any, setting: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setting = setting


def setting_option(dotted: str, flag: str | None = None, metavar: str | None = None) -> Callable[[F], F]:
    """The option that sets the core setting ``dotted`` (``extract.fps``) for one command. Its type,
    help and allowed values come from the setting's declaration (its field in :mod:`mercli.settings`),
    so each is written once. A list setting takes comma-separated names."""
    option = configuration.declaration(dotted)
    if option is None:
        raise ValueError(f"{dotted} is not a core setting")
    name = flag or f"--{option.name.replace('_', '-')}"
    allowed = f"; {option.allowed()}" if option.range or option.choices else ""
    details = f"{option.help.rstrip('.')}{allowed} [default: {dotted}]."
    if option.kind is bool:
        return click.option(f"{name}/--no-{name[2:]}", default=None, cls=SettingOption, setting=dotted, help=details)
    kind = str if option.kind is list else option.kind
    return click.option(name, type=kind, metavar=metavar or ("NAMES" if option.kind is list else None),
                        cls=SettingOption, setting=dotted, help=details)


json_option = click.option("--json", "as_json", is_flag=True, is_eager=True, callback=note_json,
                           help="Print one JSON document on stdout (an error too).")
pass_app = click.make_pass_decorator(App)


@cli.command()
@click.argument("clips_dir", type=click.Path(path_type=Path))
@click.option("--labels", type=click.Path(path_type=Path), help="Labels file (its transcripts feed the text encoders).")
@setting_option("extract.encoders")
@setting_option("extract.fps")
@setting_option("extract.workers")
@setting_option("extract.batch_size")
@click.option("--shard", metavar="K/N", help="Process only shard K of N (SLURM arrays: --shard $((ID+1))/N).")
@json_option
@pass_app
def extract(app: App, as_json: bool, **options: Any) -> None:
    """Turn a folder of clips into feature sets; resumable, parallel and shardable."""
    from mercli.reports import extract_table

    summary = app.call(api.extract, progress=True, **options)
    if as_json:
        emit_json(summary.to_json())
    else:
        stderr.print(extract_table(summary))
    sys.exit(EXIT_SOME_FAILED if summary.failed else 0)


@cli.command()
@click.argument("clips_dir", type=click.Path(path_type=Path))
@click.option("--model", metavar="REASONER[:MODEL]",
              help="Reasoner, and optionally its model, e.g. local, gemini, gemini:gemini-2.5-pro, openai:qwen2.5-vl "
                   "[default: reason.reasoner].")
@click.option("--labels", type=click.Path(path_type=Path), help="Labels file (transcripts; labels only with --label-conditioned).")
@setting_option("reason.concurrency")
@setting_option("reason.requests_per_minute", "--rpm")
@setting_option("reason.max_cost", metavar="USD")
@click.option("--dry-run", is_flag=True, help="Print the plan (clips, calls, tokens, cost) and call nothing.")
@click.option("--retry-failed", is_flag=True, help="Ask again about clips whose last answer failed.")
@click.option("--label-conditioned", is_flag=True,
              help="Show each clip's label to the reasoner; such traces are marked, kept apart, and refused for "
                   "validation and test clips.")
@click.option("--no-embed", is_flag=True, help="Do not turn the traces into prior feature sets.")
@click.option("--batch", is_flag=True, help="Send the clips still to do as batch jobs (half price, answers within "
              "24 h); run again to collect them.")
@click.option("--wait", is_flag=True, help="With --batch: poll until every job has ended, showing progress.")
@json_option
@pass_app
def reason(app: App, as_json: bool, **options: Any) -> None:
    """Per-modality reasoning traces for every clip, cached by clip content; then prior feature sets."""
    from mercli.reports import reason_table

    summary = app.call(api.reason, progress=True, **options)
    dry_run = options["dry_run"]
    if as_json:
        emit_json(summary.to_json())
    else:
        stderr.print(reason_table(summary))
    if summary.stopped and not dry_run:
        error(summary.stopped)
    unfinished = summary.failed or summary.skipped or summary.stopped or getattr(summary, "returned", None)
    sys.exit(EXIT_SOME_FAILED if unfinished and not dry_run else 0)


@cli.command()
@click.option("--labels", type=click.Path(path_type=Path), required=True, help="Labels file with the training clips.")
@setting_option("train.loss")
@setting_option("train.features")
@click.option("--name", help="Run folder under runs/ [default: a timestamp and the loss].")
@click.option("--group-column", help="Hold out whole groups for validation (speaker-independent), e.g. speaker.")
@click.option("--folds", type=int, help="K-fold cross-validation (by group when --group-column is given).")
@setting_option("train.epochs")
@setting_option("train.batch_size")
@setting_option("train.lr")
@setting_option("train.weight_decay")
@setting_option("train.seed")
@setting_option("train.deterministic")
@setting_option("train.fold_workers")
@setting_option("train.priors")
@click.option("--pseudo-labels", type=click.Path(path_type=Path),
              help="Pseudo-label file (`mer pseudolabel`): its clips join the training folds only.")
@setting_option("pseudolabel.weight", "--pseudo-weight")
@json_option
@pass_app
def train(app: App, as_json: bool, **options: Any) -> None:
    """Train the fusion network on the workspace's feature sets; writes runs/NAME/."""
    from mercli.reports import train_table

    result = app.call(api.train, progress=True, **options)
    if as_json:
        emit_json(result.to_json())
    else:
        stderr.print(train_table(result))


@cli.command(name="eval")
@click.option("--checkpoint", multiple=True, metavar="RUN",
              help="A run name under runs/ or a run folder; repeat it to aggregate seeds [default: the newest run].")
@click.option("--labels", type=click.Path(path_type=Path),
              help="Evaluate on these clips instead of each fold's validation clips.")
@click.option("--split", help="Rows of --labels to evaluate: a split name or all [default: test when the file "
                              "has a split column, else all].")
@click.option("--allow-train-clips", is_flag=True, help="Evaluate even clips the run was trained or selected on.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for metrics.json, predictions.csv and confusion.png [default: RUN/eval].")
@click.option("--submission", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the predictions as a MER2024 submission CSV (name,discrete).")
@click.option("--corrupt", multiple=True, metavar="SPEC",
              help="Also score corrupted copies of the clips, e.g. 'audio-noise:snr=20,10,0 video-blur:sigma=4 "
                   "drop:audio' (repeatable).")
@json_option
@pass_app
def eval_command(app: App, as_json: bool, **options: Any) -> None:
    """Score a run: WAF, accuracy, macro-F1, UAR, ECE, per-class figures and the confusion matrix."""
    from mercli.corruptions import failures
    from mercli.reports import eval_tables

    evaluation = app.call(api.evaluate, progress=True, **options)
    if as_json:
        emit_json(evaluation.to_json())
    else:
        for table in eval_tables(evaluation):
            stderr.print(table)
    sys.exit(EXIT_SOME_FAILED if failures(evaluation.robustness) else 0)


@cli.command()
@click.argument("clips_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", help="The teacher: a run name under runs/, or a run folder [default: the newest run].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Pseudo-label file to write [default: pseudolabels/RUN-roundN.csv in the workspace].")
@click.option("--agree-with", metavar="REASONER[:MODEL]",
              help="Keep (or weigh) clips by agreement with this reasoner's traces [default: pseudolabel.agree_with].")
@json_option
@pass_app
def pseudolabel(app: App, as_json: bool, **options: Any) -> None:
    """Label unlabelled clips with a run's fold ensemble; keep a class-balanced, confident share."""
    from mercli.reports import pseudolabel_table

    summary = app.call(api.pseudolabel, **options)
    if as_json:
        emit_json(summary.to_json())
    else:
        stderr.print(pseudolabel_table(summary))


@cli.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML file to write [default: RUN/report.html; several runs: reports/A-vs-B.html].")
@setting_option("report.gallery")
@json_option
@pass_app
def report(app: App, as_json: bool, **options: Any) -> None:
    """Write one self-contained HTML page comparing runs (names under runs/ or run folders)."""
    result = app.call(api.report, **options)
    if as_json:
        emit_json(result.to_json())
    else:
        names = ", ".join(run.name for run in result.runs)
        stderr.print(f"report of {names}: {result.out}", markup=False, highlight=False, soft_wrap=True)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--checkpoint", help="Run name under runs/, or a run folder [default: the newest run].")
@click.option("--submission", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a MER2024 submission CSV (name,discrete) of the clips predicted.")
@json_option
@pass_app
def predict(app: App, paths: tuple[Path, ...], checkpoint: str | None, submission: Path | None, as_json: bool) -> None:
    """Emotion probabilities for video or audio files (or folders of them) from a trained run."""
    from mercli.reports import predictions_table

    run = app.call(api.load_run, checkpoint)
    predictions = []
    for prediction in run.predict(paths):  # printed as each is made
        predictions.append(prediction)
        if prediction.error:
            error(prediction.error)
        if as_json:
            emit_json(prediction.to_json())
    if not as_json:
        stderr.print(predictions_table(predictions, run.path.name))
    if submission is not None:
        api.write_submission(submission, predictions)
    sys.exit(EXIT_SOME_FAILED if any(p.error for p in predictions) else 0)


@cli.command(name="plugins")
@json_option
def plugins_command(as_json: bool) -> None:
    """List installed plug-ins by stage, with versions."""
    import mercli.plugins as plugins
    from mercli.reports import plugins_table

    inventory = plugins.inventory()
    if as_json:
        emit_json(inventory)
    else:
        stderr.print(plugins_table(inventory))


@cli.command()
@json_option
@pass_app
def doctor(app: App, as_json: bool) -> None:
    """Check that ffmpeg, torch, model files and API keys are in place (keys are never printed)."""
    from mercli.doctor import run_checks
    from mercli.reports import checks_table

    checks = run_checks(app.config)
    failed = [c for c in checks if c.required and not c.ok]
    if as_json:
        emit_json({"ok": not failed, "checks": [c.__dict__ for c in checks]})
    else:
        stderr.print(checks_table(checks))
    sys.exit(EXIT_SOME_FAILED if failed else 0)


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite an existing mer.toml.")
@json_option
@pass_app
def init(app: App, force: bool, as_json: bool) -> None:
    """Write a commented mer.toml into the workspace (or to the file named with -c)."""
    from mercli.atomic import write_text

    target = app.config_path
    if target.exists() and not force:
        raise MerError(f"{target} already exists (use --force to overwrite it)")
    with writing(target):
        write_text(target, configuration.template())
    if as_json:
        emit_json({"config": str(target)})
    else:
        stderr.print(f"wrote {target}")


@cli.group(name="config", cls=MerGroup)
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command(name="show")
@json_option
@pass_app
def config_show(app: App, as_json: bool) -> None:
    """The resolved configuration, and where each value came from."""
    from mercli.reports import config_table

    resolved = app.config.as_dict(with_sources=True)
    if as_json:
        emit_json({"workspace": str(app.workspace.root), "file": str(app.config.path or ""), "settings": resolved})
    else:
        stderr.print(config_table(resolved, app.workspace.root, app.config.path))


def main() -> None:
    """Console-script entry point: adds plug-in commands, then runs the group."""
    import mercli.plugins as plugins
    from mercli.signals import stop_on_sigterm_as_on_ctrl_c

    # The interpreter's last garbage collection walks every object torch and the model libraries
    # made (measured: half a second of every command that imports torch) only to free memory the
    # process is about to give back; objects are still released as their modules are cleared.
    atexit.register(gc.freeze)
    reserve_standard_streams()
    stop_on_sigterm_as_on_ctrl_c()
    try:
        os.getcwd()
    except FileNotFoundError:  # else every relative path, and the workspace search, fails without a name
        fail("the current folder no longer exists (removed while the shell was in it); cd to one that does",
             EXIT_USAGE, json_on_command_line(sys.argv[1:]))

    try:
        plugins.register_commands(cli)
    except MerError as problem:  # before any command is parsed: --json can only be seen among the words
        fail(str(problem), EXIT_USAGE, json_on_command_line(sys.argv[1:]))
    try:
        cli(prog_name="mer")
    except OSError as problem:  # click's own text (--help, --version, a usage error) on a stream that cannot take it
        to_devnull(sys.stdout)
        fail(f"the output cannot be written: {problem.strerror or problem}", EXIT_USAGE, False)
