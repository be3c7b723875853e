"""Journal-club slides (`scripts/notebooks.py slides`): offline, without code inputs, readable.

The decks of two notebooks are built into a temporary folder and checked as files (no external
URL anywhere a browser would fetch one, no code input or nbval marker, every referenced reveal.js
and MathJax file present) and, where Chromium is installed, in a real headless browser with the
network cut off (only file: and data: requests, all of them served, MathJax typeset, every slide
fitting the 16:9 frame). reveal.js and MathJax come from npm and Chromium from apt, both through
scripts/get_slide_assets.sh; without them the tests that need them are skipped and say so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

import notebooks as nbtools

DECKS = ("00_overview", "02_effective_number")  # the series' map, and the notebook with most maths
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves: the page has no network
    "--window-size=1600,900",
)

needs_assets = pytest.mark.skipif(
    bool(nbtools.missing_slide_assets()),
    reason=f"reveal.js/MathJax not in {nbtools.SLIDE_VENDOR}: run `{nbtools.SLIDE_ASSETS_COMMAND}`",
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (as root: apt-get install chromium, "
    f"or `{nbtools.SLIDE_ASSETS_COMMAND}`)",
)


class _Refs(HTMLParser):
    """What a browser would fetch from a page: script/img/... sources, stylesheets, CSS urls."""

    FETCHED: ClassVar[dict[str, str]] = {
        "script": "src",
        "img": "src",
        "link": "href",
        "iframe": "src",
        "source": "src",
        "video": "src",
        "audio": "src",
        "embed": "src",
        "object": "data",
    }

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []  # (where, url)
        self.inline_scripts: list[str] = []
        self.text: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get(self.FETCHED.get(tag, "")):
            self.refs.append((f"<{tag} {self.FETCHED[tag]}>", attrs[self.FETCHED[tag]]))
        if attrs.get("style"):
            self.refs += [("style attribute", u) for u in css_urls(attrs["style"])]
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "style":
            self.refs += [("<style>", u) for u in css_urls(data)]
        elif self._in == "script":
            self.inline_scripts.append(data)
        else:
            self.text.append(data)


def css_urls(css: str) -> list[str]:
    """Every url(...) and @import target in a piece of CSS (comments left out)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    urls = re.findall(r"""url\(\s*(['"]?)(.*?)\1\s*\)""", css)
    imports = re.findall(r"""@import\s+(['"])(.*?)\1""", css)
    return [u for _, u in urls + imports]


def is_local(url: str) -> bool:
    """A relative path, a fragment, or inline data: nothing that leaves the deck's folder."""
    if url.startswith("data:") or url.startswith("#"):
        return True
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and not url.startswith("/")


def refs_of(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


@pytest.fixture(scope="module")
def deck(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slides")
    for name in DECKS:
        nbtools.slides(nbtools.NOTEBOOK_DIR / f"{name}.ipynb", out)
    return out


def _html(deck: Path, name: str) -> str:
    return (deck / f"{name}.slides.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", DECKS)
def test_no_external_url_in_the_page(deck, name):
    page = refs_of(_html(deck, name))
    assert page.refs, "the deck references no script or stylesheet at all"
    external = [(where, url[:80]) for where, url in page.refs if not is_local(url)]
    assert not external, f"the deck fetches from the network: {external}"
    # no CDN import hidden in an inline script (the stock template imports mermaid from one)
    assert not [s for s in page.inline_scripts if re.search(r"(https?:)?//[\w.-]+\.\w+/", s)]


@pytest.mark.parametrize("name", DECKS)
def test_code_inputs_hidden_and_no_test_markers(deck, name):
    html = _html(deck, name)
    nb = nbformat.read(nbtools.NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    assert "NBVAL_" not in html  # NBVAL_CHECK_OUTPUT and the other nbval marker comments
    assert not re.search(r"celltag_(nbval|papermill|injected-parameters)", html)
    assert not re.search(r'class="[^"]*jp-InputArea-editor', html)  # holds a cell's source
    text = re.sub(r"\s+", " ", "".join(refs_of(html).text))
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = [ln.strip() for ln in cell.source.splitlines() if len(ln.strip()) > 20]
        for line in lines:
            if not line.startswith("#"):
                assert line not in text, f"code input shown on a slide: {line!r}"
    # ... while outputs, figures and markdown stay
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert html.count('src="data:image/png') >= figures
    assert figures > 0
    headings = [
        c.source.split("\n", 1)[0].lstrip("# ") for c in nb.cells if c.source.startswith("## ")
    ]
    assert all(h.split(" · ")[-1] in text for h in headings)
    assert "colab-badge.svg" not in html


def test_a_tagged_cell_shows_its_code_without_markers(tmp_path):
    nb = nbformat.v4.new_notebook()
    shown = nbformat.v4.new_code_cell(
        "# NBVAL_CHECK_OUTPUT\nanswer = 6 * 7\nprint(answer)",
        metadata={"tags": ["slide-show-code", "nbval-check-output"]},
        outputs=[nbformat.v4.new_output("stream", name="stdout", text="42\n")],
    )
    hidden = nbformat.v4.new_code_cell(
        "# NBVAL_CHECK_OUTPUT\nprint('hidden' + 'code')",
        outputs=[nbformat.v4.new_output("stream", name="stdout", text="the hidden output\n")],
    )
    silent = nbformat.v4.new_code_cell("import this_has_no_output_and_no_tag")
    nb.cells = [nbformat.v4.new_markdown_cell("# Title\n\n## Section"), shown, hidden, silent]
    path = tmp_path / "99_tagged.ipynb"
    nbformat.write(nb, path)
    html = nbtools.slides(path, tmp_path / "out").read_text(encoding="utf-8")
    text = re.sub(r"\s+", " ", "".join(refs_of(html).text))
    assert "answer = 6 * 7" in text
    assert "42" in text
    assert "the hidden output" in text
    assert "'hidden' + 'code'" not in text
    assert "this_has_no_output_and_no_tag" not in text
    assert "NBVAL_" not in html
    assert "celltag_nbval" not in html
    assert nbformat.read(path, as_version=4) == nb  # the notebook itself is left as it was


@needs_assets
@pytest.mark.parametrize("name", DECKS)
def test_referenced_reveal_and_mathjax_files_are_in_the_folder(deck, name):
    page = refs_of(_html(deck, name))
    local = [unquote(url) for _, url in page.refs if not url.startswith(("data:", "#"))]
    assert any(u.endswith("mathjax/tex-chtml-full.js") for u in local)
    assert any(u.endswith("reveal.js/dist/reveal.js") for u in local)
    missing = [u for u in local if not (deck / u).is_file()]
    assert not missing, f"the deck references files that are not in its folder: {missing}"
    # the stylesheets' own imports and fonts, followed to the end, are there and local too
    todo, seen = [deck / u for u in local if u.endswith(".css")], set()
    while todo:
        css = todo.pop()
        if css in seen:
            continue
        seen.add(css)
        for url in css_urls(css.read_text(encoding="utf-8")):
            assert is_local(url), f"{css.relative_to(deck)} fetches {url}"
            if not url.startswith("data:"):
                target = (css.parent / unquote(url.split("?")[0].split("#")[0])).resolve()
                assert target.is_file(), f"{css.relative_to(deck)} references missing {url}"
                if target.suffix == ".css":
                    todo.append(target)
    fonts = deck / "_assets/mathjax/output/chtml/fonts/woff-v2"
    assert len(list(fonts.glob("*.woff"))) > 10  # MathJax loads these next to its script


def test_missing_assets_give_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "CBNOTES_SLIDE_VENDOR": str(tmp_path / "nothing-here")}
    result = subprocess.run(
        [
            sys.executable,
            str(nbtools.ROOT / "scripts/notebooks.py"),
            "slides",
            "--out",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert nbtools.SLIDE_ASSETS_COMMAND in result.stderr
    assert not list(tmp_path.glob("*.html"))


class _DevTools:
    """Chromium driven over --remote-debugging-pipe (fd 3 in, fd 4 out; JSON + NUL)."""

    def __init__(self, profile: Path):
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()

        def child_fds():  # runs in the child before exec: put the pipe ends on fds 3 and 4
            a = fcntl.fcntl(to_chrome, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=child_fds,
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_for(self, event: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for seen in self.events:
            if seen.get("method") == event:
                return seen
        while True:
            message = self._receive(deadline)
            self.events.append(message)
            if message.get("method") == event:
                return message

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._read)
        os.close(self._write)


# Runs in the page once it has loaded: waits for reveal.js and MathJax, then visits every slide
# and reports what a reader would see.
INSPECT = """
(async () => {
  const until = Date.now() + 30000;
  while (!(window.Reveal && Reveal.isReady() &&
           document.documentElement.getAttribute("data-mathjax") === "done")) {
    if (Date.now() > until) { return {timeout: true}; }
    await new Promise(r => setTimeout(r, 100));
  }
  const slides = document.querySelector(".reveal .slides");
  const prose = slides.cloneNode(true);
  prose.querySelectorAll("pre, code, script, style, mjx-container").forEach(e => e.remove());
  const report = {
    mathjax: slides.querySelectorAll("mjx-container").length,
    mathErrors: slides.querySelectorAll("mjx-merror").length,
    rawDollars: (prose.textContent.match(/\\$/g) || []).length,
    rawTex: (prose.textContent.match(/\\\\(frac|beta|alpha|mathrm|sum)\\b/g) || []).length,
    slides: []
  };
  const width = Reveal.getConfig().width, height = Reveal.getConfig().height;
  const horizontal = Reveal.getHorizontalSlides();
  for (let h = 0; h < horizontal.length; h++) {
    const stack = horizontal[h].querySelectorAll(":scope > section");
    for (let v = 0; v < Math.max(1, stack.length); v++) {
      Reveal.slide(h, v);
      await new Promise(r => setTimeout(r, 30));
      const s = Reveal.getCurrentSlide();
      const box = s.getBoundingClientRect(), scale = Reveal.getScale();
      const images = Array.from(s.querySelectorAll("img")).map(img => {
        const r = img.getBoundingClientRect();
        return {w: r.width / scale, h: r.height / scale, bottom: (r.bottom - box.top) / scale};
      });
      report.slides.push({
        h, v, fit: s.getAttribute("data-cb-fit"), scrolls: s.classList.contains("cb-scroll"),
        height: s.scrollHeight, width: s.scrollWidth, frame: [width, height], images,
        widePre: Array.from(s.querySelectorAll("pre")).filter(
          p => p.scrollWidth > p.clientWidth + 1).length,
        title: (s.querySelector("h1, h2, h3") || {textContent: ""}).textContent.slice(0, 60)
      });
    }
  }
  return report;
})()
"""


@needs_chromium
@needs_assets
@pytest.mark.parametrize("name", DECKS)
def test_deck_in_headless_chromium_offline(deck, name, tmp_path):
    browser = _DevTools(tmp_path / "profile")
    try:
        try:
            target = browser.call("Target.createTarget", timeout=30, url="about:blank")["targetId"]
        except (RuntimeError, TimeoutError) as error:  # the browser itself, not the deck
            pytest.skip(f"{CHROMIUM} did not start in headless mode: {error}")
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        browser.call("Network.enable", session)
        browser.call("Page.enable", session)
        url = (deck / f"{name}.slides.html").as_uri()
        browser.call("Page.navigate", session, url=url)
        browser.wait_for("Page.loadEventFired")
        result = browser.call(
            "Runtime.evaluate",
            session,
            timeout=90,
            expression=INSPECT,
            awaitPromise=True,
            returnByValue=True,
        )
    finally:
        browser.close()
    assert "exceptionDetails" not in result, result.get("exceptionDetails")
    report = result["result"]["value"]
    assert not report.get("timeout"), "reveal.js or MathJax did not finish within 30 s"

    requests = [
        e["params"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"
    ]
    urls = [r["request"]["url"] for r in requests]
    assert any(u.endswith("tex-chtml-full.js") for u in urls)
    external = [u[:80] for u in urls if not u.startswith(("file:", "data:", "about:", "blob:"))]
    assert not external, f"the deck made network requests: {external}"
    failed = [e["params"] for e in browser.events if e.get("method") == "Network.loadingFailed"]
    failed_urls = {r["requestId"]: r["request"]["url"] for r in requests}
    assert not failed, f"requests failed: {[failed_urls.get(f['requestId']) for f in failed]}"

    assert report["mathjax"] > 20, "MathJax typeset no (or hardly any) maths"
    assert report["mathErrors"] == 0
    assert report["rawDollars"] == 0, "raw $...$ left in the slides' text"
    assert report["rawTex"] == 0, "raw TeX left in the slides' text"

    width, height = report["slides"][0]["frame"]
    assert (width, height) == (1280, 720)  # 16:9
    for slide in report["slides"]:
        where = f"slide {slide['h']}/{slide['v']} {slide['title']!r}"
        assert not slide["scrolls"], f"{where} is too long: it scrolls"
        assert slide["height"] <= height + 1, f"{where} is too long"
        assert slide["width"] <= width + 1, f"{where} is too wide"
        assert slide["widePre"] == 0, f"{where} has a text output cut at the right"
        for image in slide["images"]:
            assert image["w"] <= width + 1, f"{where}: a figure is wider than the slide"
            assert image["bottom"] <= height + 1, f"{where}: a figure runs below the slide"
    assert float(report["slides"][0]["fit"]) == 1.0  # the title slide needs no shrinking
