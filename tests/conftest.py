"""Shared fixtures. Real clips and model files come from ../shared beside the checkout; tests that
need them are skipped, with the reason, where that folder is absent (a clone elsewhere)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from mercli import plugins

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (read-only): real labelled clips."""
    folder = SHARED / "data"
    if not folder.is_dir():
        pytest.skip(f"real clips not available: {folder} is missing (it ships beside the checkout only)")
    return folder


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """``../shared/models`` (read-only): model files that need no hub."""
    folder = SHARED / "models"
    if not folder.is_dir():
        pytest.skip(f"model files not available: {folder} is missing (it ships beside the checkout only)")
    return folder


SHARED_FIXTURES = {"shared_data", "shared_models"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs ../shared, through whichever fixture, so that ``-m "not shared"``
    is the suite a clone without it runs in full."""
    for item in items:
        if SHARED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared)


@pytest.fixture
def fresh_plugins():
    """Reload the entry points before and after a test that changes what is installed."""
    plugins.reset()
    yield
    plugins.reset()


def ctrl_c_state() -> tuple:
    """SIGINT's Python handler, and whether the kernel has it ignored or blocked for this process
    (native code can change those behind Python's back)."""
    bit = 1 << (signal.SIGINT - 1)
    try:
        status = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines()
                      if ":\t" in line)
        kernel = tuple(bool(int(status[key], 16) & bit) for key in ("SigIgn", "SigBlk"))
    except (OSError, KeyError, ValueError):
        kernel = ()
    return signal.getsignal(signal.SIGINT), signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []), kernel


@pytest.fixture(autouse=True)
def ctrl_c_left_as_found():
    """Every test leaves Ctrl-C as it found it: a SIGINT left ignored or blocked in the pytest process
    is inherited by the ``mer`` processes later tests start, which then cannot be interrupted."""
    before = ctrl_c_state()
    handler, mask = signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    after = ctrl_c_state()
    signal.signal(signal.SIGINT, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if after != before:
        pytest.fail(f"the test left SIGINT as (handler, blocked, kernel ignored/blocked) {after}, found {before}")
