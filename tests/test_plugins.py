"""The plug-in manager: broken plug-ins are reported as one line naming them (never a traceback), and
the built-ins, listed in the core, are registered by the same hooks as third-party plug-ins.

Broken plug-ins are installed as fake distributions: a module beside a ``*.dist-info`` folder
holding ``METADATA`` and ``entry_points.txt``, put on ``PYTHONPATH`` of a child ``mer``.
"""

from __future__ import annotations

import json

import pytest

from mercli import plugins
from mercli.contracts import STAGES, Dataset, Encoder, Loss
from mercli.errors import PluginError
from mercli.hookspecs import hookimpl
from support.plugins import fake_distribution
from support.mer_process import error_document, mer_environment, one_error_line, run_mer, with_site

BUILTIN_DATASET_PLUGINS = {"dataset-mer2024", "dataset-folders", "dataset-crema-d", "dataset-ravdess", "dataset-emodb"}

GOOD_ENCODER = """
from mercli.contracts import Encoder
from mercli.hookspecs import hookimpl

class Twin(Encoder):
    name = "twin"
    modality = "audio"
    level = "utterance"
    dim = 1

@hookimpl
def register_encoders(register):
    register(Twin)
"""


BROKEN = {
    "raises-on-import": (
        [("broken-pkg", "broken", "raise RuntimeError('cannot find my model')")],
        ["plug-in 'broken' (broken-pkg) failed to load", "RuntimeError: cannot find my model"],
    ),
    "duplicate-component": (
        [("first-pkg", "first", GOOD_ENCODER), ("second-pkg", "second", GOOD_ENCODER)],
        ["registers encoder 'twin', already registered by plug-in '"],
    ),
    "duplicate-plugin-name": (
        [("first-pkg", "same", GOOD_ENCODER), ("second-pkg", "same", GOOD_ENCODER)],
        ["plug-in 'same' (", "the plug-in name 'same' is already taken by "],
    ),
    "takes-a-builtin-name": (
        [("rival-pkg", "encoder-whisper", GOOD_ENCODER)],
        ["plug-in 'encoder-whisper' (rival-pkg): the plug-in name 'encoder-whisper' is already taken by mer"],
    ),
    "non-component": (
        [("odd-pkg", "odd", """
            from mercli.hookspecs import hookimpl

            @hookimpl
            def register_losses(register):
                register(len)
        """)],
        ["plug-in 'odd' (odd-pkg) registered <built-in function len>, which is not a Loss subclass"],
    ),
    "encoder-without-modality": (
        [("vague-pkg", "vague", """
            from mercli.contracts import Encoder
            from mercli.hookspecs import hookimpl

            class Vague(Encoder):
                name = "vague"
                level = "frame"

            @hookimpl
            def register_encoders(register):
                register(Vague)
        """)],
        ["plug-in 'vague' (vague-pkg) registered Vague, which must declare modality as one of audio, visual, text"],
    ),
    "raises-in-hook": (
        [("faulty-pkg", "faulty", """
            from mercli.hookspecs import hookimpl

            @hookimpl
            def register_datasets(register):
                raise KeyError("labels")
        """)],
        ["plug-in 'faulty' (faulty-pkg) failed in register_datasets: KeyError: 'labels'"],
    ),
    "misspelt-hook": (
        [("typo-pkg", "typo", """
            from mercli.hookspecs import hookimpl

            @hookimpl
            def register_encoder(register):
                pass
        """)],
        ["plug-in 'typo' (typo-pkg): unknown hook 'register_encoder'"],
    ),
    "wrong-hook-argument": (
        [("args-pkg", "args", """
            from mercli.hookspecs import hookimpl

            @hookimpl
            def register_encoders(add):
                pass
        """)],
        ["plug-in 'args' (args-pkg) failed to load: PluginValidationError"],
    ),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_broken_plugin_gives_one_error_line_and_status_2(tmp_path, case, as_json):
    site = tmp_path / "site"
    site.mkdir()
    distributions, expected = BROKEN[case]
    for package, plugin, source in distributions:
        fake_distribution(site, package, plugin, source)
    result = run_mer("plugins", *(["--json"] if as_json else []), cwd=tmp_path,
                     env=with_site(site))
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    if as_json:
        error_document(result.stdout, line, 2)
    else:
        assert result.stdout == ""
    for fragment in expected:
        assert fragment in line


def test_a_distribution_seen_twice_on_the_path_is_loaded_once(tmp_path):
    """An editable install run from its own checkout finds its metadata twice; that is no clash."""
    sites = [tmp_path / "site-a", tmp_path / "site-b"]
    for site in sites:
        site.mkdir()
        fake_distribution(site, "twice-pkg", "twice", GOOD_ENCODER)
    result = run_mer("plugins", "--json", cwd=tmp_path,
                     env=mer_environment(PYTHONPATH=":".join(map(str, sites))))
    assert result.returncode == 0, result.stderr
    assert [row["plugin"] for row in json.loads(result.stdout)["encoders"]].count("twice") == 1


def test_a_broken_plugin_also_stops_help_with_one_line(tmp_path):
    """Plug-ins can add subcommands, so even ``mer --help`` loads them; a broken one is named there too."""
    site = tmp_path / "site"
    site.mkdir()
    fake_distribution(site, "broken-pkg", "broken", "import no_such_module_here")
    result = run_mer("--help", cwd=tmp_path, env=with_site(site))
    assert result.returncode == 2
    assert "plug-in 'broken' (broken-pkg) failed to load: ModuleNotFoundError" in one_error_line(result)


def test_a_plugin_can_add_a_command(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    fake_distribution(site, "greeter-pkg", "greeter", """
        import click
        from mercli.hookspecs import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def hello():
                "Say hello."
                click.echo("hello from a plug-in")
    """)
    environment = with_site(site)
    assert "hello" in run_mer("--help", cwd=tmp_path, env=environment).stdout
    result = run_mer("hello", cwd=tmp_path, env=environment)
    assert (result.returncode, result.stdout) == (0, "hello from a plug-in\n")


def test_plugins_json_lists_the_builtins_with_provenance(tmp_path):
    result = run_mer("plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    inventory = json.loads(result.stdout)
    assert set(inventory) == set(STAGES)
    datasets = inventory["datasets"]
    assert BUILTIN_DATASET_PLUGINS <= {row["plugin"] for row in datasets}
    for row in datasets:
        assert row["package"] == "mer" and row["name"] and row["version"]
    for row in inventory["encoders"]:
        assert row["modality"] in ("audio", "visual", "text") and row["level"] in ("utterance", "frame")


def test_the_builtins_are_registered_from_the_core_list_without_entry_points(fresh_plugins, monkeypatch):
    """No built-in depends on installed metadata: with no entry point at all, each one in
    ``plugins.BUILTINS`` still registers its components, and every component comes from one."""
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [])
    plugins.reset()
    registering = {r.provenance.plugin for stage in STAGES for r in plugins.registry(stage).values()}
    assert registering == set(plugins.BUILTINS)
    assert {r.provenance.package for stage in STAGES for r in plugins.registry(stage).values()} == {"mer"}


# --- in-process: lookup by name and the contract checks ------------------------------------------


class Quiet(Loss):
    name = "quiet-loss"


class QuietPlugin:
    @hookimpl
    def register_losses(self):  # a hook may take none of the arguments the spec offers
        pass

    @hookimpl
    def register_datasets(self, register):
        register(NamelessDataset)


class NamelessDataset(Dataset):
    name = ""


class LossPlugin:
    @hookimpl
    def register_losses(self, register):
        register(Quiet)


def test_get_by_name_and_unknown_names_list_what_exists(fresh_plugins):
    plugins.loaded().manager.register(LossPlugin(), name="test-losses")
    assert plugins.get("losses", "quiet-loss").component is Quiet
    assert plugins.get("losses", "quiet-loss").provenance.plugin == "test-losses"
    with pytest.raises(PluginError, match=r"unknown loss 'nope' \(available: .*quiet-loss"):
        plugins.get("losses", "nope")


def test_a_component_without_a_name_is_refused(fresh_plugins):
    plugins.loaded().manager.register(QuietPlugin(), name="test-quiet")
    with pytest.raises(PluginError, match=r"plug-in 'test-quiet' .*registered NamelessDataset, which has no name"):
        plugins.registry("datasets")
    assert "quiet-loss" not in plugins.registry("losses")  # the hook without arguments was called


def test_contract_problem_accepts_a_complete_encoder():
    class Complete(Encoder):
        name = "complete"
        modality = "visual"
        level = "frame"
        dim = 3

    assert plugins.contract_problem(Complete) is None
    Complete.level = "clip"
    assert "level" in plugins.contract_problem(Complete)


def test_an_encoder_whose_level_is_a_setting_says_so_in_the_inventory_and_the_table():
    from mercli.reports import _component_details

    rows = {row["name"]: row for row in plugins.inventory()["encoders"]}
    for name in ("hf-audio", "hf-vision"):
        row = rows[name]
        assert row["level"] == "utterance"  # the default, where it always was
        assert row["level_setting"] == f"encoder.{name}.level"
        assert f"level utterance (setting: encoder.{name}.level)" in _component_details(row)
    assert rows["egemaps"]["level_setting"] is None and "level utterance," in _component_details(rows["egemaps"])


def test_a_level_option_that_the_encoder_does_not_declare_is_a_contract_problem():
    class Chosen(Encoder):
        name = "chosen"
        modality = "audio"
        level = "utterance"
        level_option = "granularity"
        dim = 2

    assert "granularity" in plugins.contract_problem(Chosen)
