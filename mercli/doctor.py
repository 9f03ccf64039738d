"""``mer doctor``: is everything the stages need present on this machine?"""

from __future__ import annotations

import shutil
import subprocess
import sys

import mercli.plugins as plugins
from mercli.config import Config
from mercli.contracts import STAGES, Check

def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", sys.version_info >= (3, 10), f"Python {version}")


def check_ffmpeg() -> Check:
    """Present on PATH and able to run: a binary that is there but broken fails here, not mid-run."""
    found = shutil.which("ffmpeg")
    if found is None:
        return Check("ffmpeg", False, "missing: not found on PATH (Debian/Ubuntu: apt-get install ffmpeg)")
    try:
        answer = subprocess.run([found, "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as error:
        return Check("ffmpeg", False, f"{found} does not run: {error}")
    if answer.returncode != 0:
        return Check("ffmpeg", False, f"{found} does not run: '-version' exited with status {answer.returncode}")
    version = " ".join(answer.stdout.split()[:3])  # "ffmpeg version 5.1.6-0+deb12u1"
    return Check("ffmpeg", True, f"{found} ({version})" if version else found)


def check_torch() -> Check:
    try:
        import torch
    except Exception as error:  # a broken install must be reported, not crash the doctor
        return Check("torch", False, f"cannot import torch: {error}")
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu"
    return Check("torch", True, f"torch {torch.__version__}, device {device}")


def component_checks(config: Config) -> list[Check]:
    """What each installed encoder, transcriber and reasoner says it needs (model files, packages,
    API keys: reported present or absent, never shown)."""
    checks = []
    for stage in ("encoders", "transcribers", "reasoners"):
        for name, registered in plugins.registry(stage).items():
            try:
                found = plugins.build(stage, name, config).checks()
            except Exception as error:
                found = [Check("setup", False, f"cannot be set up: {type(error).__name__}: {error}")]
            checks += [Check(f"{STAGES[stage].table} {name}: {c.name}", c.ok, c.detail, c.required) for c in found]
    return checks


def run_checks(config: Config) -> list[Check]:
    return [check_python(), check_ffmpeg(), check_torch(), *component_checks(config)]
