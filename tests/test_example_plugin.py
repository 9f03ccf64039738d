"""The example third-party plug-in (examples/mer-example-plugin) installs like any package, appears
in `mer plugins` and works by name. It is installed into a temporary folder put on the path of this
test (and on PYTHONPATH of a child mer), never into the shared environment; the build runs on a copy
so that the source tree stays clean, with no index and no build isolation so that nothing is fetched."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mercli import config, plugins
from mercli.contracts import DecodedClip
from mercli.errors import ConfigError
from support.mer_process import mer_environment, run_mer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mer-example-plugin"
RATE = 16000


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("example-plugin")
    source = work / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return target


@pytest.fixture
def example(installed, monkeypatch, fresh_plugins):
    """The example importable in this process, then forgotten again."""
    monkeypatch.syspath_prepend(str(installed))
    yield
    for module in [m for m in sys.modules if m == "mer_example" or m.startswith("mer_example.")]:
        del sys.modules[module]


def tone_then_silence() -> DecodedClip:
    """One second: a 440 Hz tone at amplitude 0.5, then silence."""
    times = np.arange(RATE // 2) / RATE
    audio = np.concatenate([0.5 * np.sin(2 * np.pi * 440 * times), np.zeros(RATE // 2)]).astype(np.float32)
    return DecodedClip("tone", Path("tone.wav"), 1.0, audio=audio, sample_rate=RATE)


@pytest.mark.slow
def test_listed_by_mer_plugins(tmp_path, installed):
    environment = mer_environment(PYTHONPATH=str(installed))
    result = run_mer("plugins", "--json", cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr
    inventory = json.loads(result.stdout)
    encoder = next(row for row in inventory["encoders"] if row["name"] == "energy-contour")
    assert encoder | {"description": None} == {
        "name": "energy-contour", "version": "1", "description": None, "plugin": "example",
        "package": "mer-example-plugin", "package_version": "0.1.0", "options": ["frame_ms", "hop_ms"],
        "modality": "audio", "level": "frame", "level_setting": None, "dim": 2,
    }
    loss = next(row for row in inventory["losses"] if row["name"] == "label-smoothing")
    assert (loss["package"], loss["options"], loss["uses_embeddings"]) == ("mer-example-plugin", ["smoothing"], False)
    assert "energy-contour" in run_mer("plugins", cwd=tmp_path, env=environment).stderr


def test_encoder_builds_by_name_and_encodes(example):
    encoder = plugins.build("encoders", "energy-contour", config.load(None, environ={}))
    features = encoder.encode(tone_then_silence())
    window, hop = 400, 160
    assert features.values.shape == (1 + (RATE - window) // hop, 2)
    assert features.values.dtype == np.float32 and features.mask.all()
    loudness, crossings = features.values.T
    tone, silence = slice(0, 40), slice(-40, None)
    assert np.allclose(loudness[tone], 20 * np.log10(0.5 / np.sqrt(2)), atol=0.3)
    assert np.all(loudness[silence] == pytest.approx(-100.0))
    assert np.allclose(crossings[tone], 2 * 440 / RATE, atol=0.01)
    assert np.all(crossings[silence] == 0)


def test_encoder_options_come_from_mer_toml(tmp_path, example):
    path = tmp_path / "mer.toml"
    path.write_text("[encoder.energy-contour]\nframe_ms = 50\nhop_ms = 25\n", encoding="utf-8")
    encoder = plugins.build("encoders", "energy-contour", config.load(path, environ={}))
    assert encoder.encode(tone_then_silence()).values.shape == (1 + (RATE - 800) // 400, 2)

    path.write_text("[encoder.energy-contour]\nframe_ms = 'long'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{path}:2: 'frame_ms' must be a number"):
        config.load(path, environ={})
    with pytest.raises(ConfigError, match=r"'hop_ms' must be a finite number > 0, got 0"):
        config.load(None, environ={}, overrides={"encoder.energy-contour.hop_ms": 0})


def test_encoder_reports_a_clip_without_audio_as_absent(example):
    encoder = plugins.build("encoders", "energy-contour", config.load(None, environ={}))
    silent_film = DecodedClip("film", Path("film.mp4"), 2.0, absent={"audio": "no audio track"})
    features = encoder.encode(silent_film)
    assert features.values is None and features.absent == "no audio track"
    short = DecodedClip("blip", Path("blip.wav"), 0.001, audio=np.ones(16, dtype=np.float32))
    assert encoder.encode(short).values.shape == (1, 2)


def test_loss_builds_by_name_and_matches_torch(example):
    import torch

    loss = plugins.build("losses", "label-smoothing", config.load(None, environ={}, overrides={
        "loss.label-smoothing.smoothing": 0.2}))
    module = loss.build(class_counts=[5, 3, 2], embedding_dim=4)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3, generator=generator, requires_grad=True)
    labels = torch.randint(0, 3, (8,), generator=generator)
    value = module(logits, None, labels)
    assert value.dim() == 0 and torch.isfinite(value)
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.2)
    assert torch.allclose(value, expected, atol=1e-6)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_loss_rejects_a_smoothing_outside_0_to_1(example):
    with pytest.raises(ConfigError, match=r"'smoothing' must be a finite number in \[0, 1\), got 1"):
        config.load(None, environ={}, overrides={"loss.label-smoothing.smoothing": 1})
