"""Open an HTML page in headless Chromium (Debian's ``chromium``) and report what a person would
see: the DOM after the page loaded, every console message, each image's natural size, and the
script errors and failed loads the page caused. No Python package is needed: Chromium's own
``--dump-dom`` and ``--screenshot`` do the work, and a small probe script, put first into a copy
of the page, writes its findings into ``document.title``, which the dumped DOM carries out."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

#: The probe: records script errors, failed loads (a capturing listener sees an <img>'s error) and
#: console.error/warn calls; once the page has loaded it writes them, the natural size of every
#: image and the URL of every resource the page fetched, into the title.
PROBE = """<script>
window.__probe = {errors: []};
window.addEventListener("error", function (event) {
  var target = event.target && event.target.tagName ? event.target.tagName + " " + (event.target.alt || "") : "";
  window.__probe.errors.push(event.message || ("failed to load " + target));
}, true);
["error", "warn"].forEach(function (level) {
  var original = console[level];
  console[level] = function () {
    window.__probe.errors.push(level + ": " + Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
});
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (image) {
    return {alt: image.alt, complete: image.complete, width: image.naturalWidth, height: image.naturalHeight};
  });
  var fetched = performance.getEntriesByType("resource").map(function (entry) { return entry.name; });
  document.title = "PROBE" + JSON.stringify({images: images, errors: window.__probe.errors, fetched: fetched});
});
</script>"""

CONSOLE_LINE = re.compile(r":CONSOLE[:(]")


def chromium() -> str | None:
    """The Chromium executable, or ``None`` where none is installed."""
    return next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)


@dataclass
class PageCheck:
    dom: str
    images: list[dict]
    errors: list[str]
    fetched: list[str]
    console: list[str]


def _flags(executable: str, profile: Path) -> list[str]:
    # --no-sandbox: tests may run as root, where Chromium's sandbox refuses to start.
    return [executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]


class _Title(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inside, self.text = False, ""

    def handle_starttag(self, tag: str, attrs) -> None:
        self.inside = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.text += data


def open_page(page: Path, work: Path, executable: str) -> PageCheck:
    """Load a probed copy of ``page`` and return what the probe and the console saw."""
    probed = work / f"probed-{page.name}"
    text = page.read_text(encoding="utf-8")
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    done = subprocess.run([*_flags(executable, work / "profile"), "--virtual-time-budget=10000", "--dump-dom",
                           probed.as_uri()], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    title = _Title()
    title.feed(done.stdout)
    assert title.text.startswith("PROBE"), f"the probe did not run; title {title.text[:200]!r}"
    found = json.loads(title.text[len("PROBE"):])
    console = [line for line in done.stderr.splitlines() if CONSOLE_LINE.search(line)]
    return PageCheck(done.stdout, found["images"], found["errors"], found["fetched"], console)


def screenshot(page: Path, png: Path, work: Path, executable: str, size: tuple[int, int] = (1280, 2400)) -> None:
    """A PNG of ``page`` as a window of ``size`` pixels shows it."""
    png.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([*_flags(executable, work / "profile-shot"), f"--window-size={size[0]},{size[1]}",
                           f"--screenshot={png}", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
