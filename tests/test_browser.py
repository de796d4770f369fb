"""The built book in a real browser: charts draw offline, the dashboard reacts to clicks, themes redraw.

The book is served on 127.0.0.1 and opened in Debian's Chromium through Playwright. Every request to
another host is aborted and recorded, so a page that needs the network fails these tests.
"""

import base64
import functools
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RESULTS_PAGES = ["results_double_mnist", "results_colored_mnist"]
# Milliseconds to wait for vega to draw a page's charts, and for a chart to react to a click or a choice.
DRAW_TIMEOUT_MS = 30_000
REACTION_TIMEOUT_MS = 5_000
# Opacity of the marks of learning rates that are not picked (``charts.results_dashboard``).
DIMMED_OPACITY = 0.12
# Background of vega's "dark" theme (#333).
DARK_BACKGROUND = "rgb(51, 51, 51)"

# Errors that every page of a Jupyter Book 1 build logs, whatever the book contains. The charts depend
# on neither. Checked with jupyter-book 1.0.4, Sphinx 7.4.7, sphinx-thebe 0.3.1 and
# pydata-sphinx-theme 0.17.1.
KNOWN_PAGE_ERRORS = {
    # sphinx-thebe's inline configuration script is written twice into each page, so the second copy
    # fails to declare its constants again.
    "Identifier 'THEBE_JS_URL' has already been declared",
    # pydata-sphinx-theme logs this on a first visit, while localStorage contains no colour mode yet.
    "Got invalid theme mode: . Resetting to auto.",
}

# Data marks of a chart drawn as SVG: points, lines and bands, without axes and legends.
MARKS = "svg.marks g.role-mark path"
# Point marks of the dashboard: one per run in its metric panels, one per (LR, sparsity) in its pruning curves.
POINTS = "svg.marks g.mark-symbol.role-mark path"
DASHBOARD = ".lrstudy-chart:has(.vega-bindings select)"

# Count each chart's drawn data marks: paths of an SVG, or painted pixels of a canvas.
COUNT_MARKS_JS = """
(selector) => [...document.querySelectorAll(".lrstudy-chart")].map((chart) => {
  if (chart.querySelector("svg.marks")) return chart.querySelectorAll(selector).length;
  const canvas = chart.querySelector("canvas.marks");
  if (!canvas || canvas.width === 0 || canvas.height === 0) return 0;
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) painted += 1;
  return painted;
})
"""
EVERY_CHART_DRAWN_JS = """
() => {
  const charts = [...document.querySelectorAll(".lrstudy-chart")];
  return charts.length > 0 && charts.every((chart) => chart.querySelector("svg.marks, canvas.marks"));
}
"""
OPACITIES_JS = "(marks) => marks.map((mark) => Number(mark.getAttribute('opacity') ?? getComputedStyle(mark).opacity))"
LABELS_JS = "(marks) => marks.map((mark) => mark.getAttribute('aria-label'))"


class _BookRequestHandler(SimpleHTTPRequestHandler):
    """Serve files without logging requests, and reply 204 to Chromium's /favicon.ico request (the book has none)."""

    def do_GET(self):
        if self.path == "/favicon.ico":
            self.send_response(HTTPStatus.NO_CONTENT)
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format, *args):
        pass


@dataclass
class OpenedPage:
    """A page of the book with the errors it logged and the requests aborted since it opened."""

    page: "sync_api.Page"
    console_errors: list[str] = field(default_factory=list)
    aborted_urls: list[str] = field(default_factory=list)

    def record_error(self, text: str) -> None:
        if text not in KNOWN_PAGE_ERRORS:
            self.console_errors.append(text)

    def wait_for_charts(self) -> None:
        """Wait until every chart of the page has an SVG or a canvas."""
        self.page.wait_for_function(EVERY_CHART_DRAWN_JS, timeout=DRAW_TIMEOUT_MS)

    def mark_counts(self) -> list[int]:
        """Return the number of data marks of each chart, in page order."""
        return self.page.evaluate(COUNT_MARKS_JS, MARKS)

    def wait_until(self, expression: str, arg=None) -> None:
        """Wait until a JavaScript function returns true, for at most REACTION_TIMEOUT_MS and without raising."""
        try:
            self.page.wait_for_function(expression, arg=arg, timeout=REACTION_TIMEOUT_MS)
        except sync_api.TimeoutError:
            pass  # the caller's asserts report what did not happen


@pytest.fixture(scope="session")
def browser():
    """Start Debian's Chromium headless through Playwright, or skip when it cannot start."""
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: install Debian's chromium package")
    try:
        playwright = sync_api.sync_playwright().start()
    except Exception as error:  # the driver is a separate Node.js process that can fail in many ways
        pytest.skip(f"the Playwright driver failed to start: {error}")
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    except sync_api.Error as error:
        playwright.stop()
        pytest.skip(f"Chromium at {CHROMIUM} failed to start: {error}")
    yield chromium
    chromium.close()
    playwright.stop()


@pytest.fixture(scope="module")
def site(built_book):
    """Serve the built HTML on a free port of 127.0.0.1 and return its base URL."""
    handler = functools.partial(_BookRequestHandler, directory=str(built_book.html_root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def open_page(browser, site):
    """Return a function that opens a chapter of the book, with requests to other hosts aborted."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})

    def open_chapter(name: str) -> OpenedPage:
        page = context.new_page()
        opened = OpenedPage(page)

        def route(request_route):
            url = request_route.request.url
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob", "about") or parts.hostname == "127.0.0.1":
                request_route.continue_()
            else:
                opened.aborted_urls.append(url)
                request_route.abort()

        page.route("**/*", route)
        page.on("console", lambda message: message.type == "error" and opened.record_error(message.text))
        page.on("pageerror", lambda error: opened.record_error(str(error)))
        page.goto(f"{site}/book/{name}.html", wait_until="load")
        return opened

    yield open_chapter
    context.close()


@pytest.mark.parametrize("name", RESULTS_PAGES)
def test_results_page_draws_every_chart(open_page, name):
    opened = open_page(name)
    opened.wait_for_charts()

    counts = opened.mark_counts()
    assert counts, "the page has no chart"
    assert all(count > 0 for count in counts), f"charts without marks: {counts}"
    assert opened.console_errors == []
    assert opened.aborted_urls == []


@pytest.mark.parametrize("name", RESULTS_PAGES)
def test_lr_dropdown_dims_other_rates(open_page, name):
    opened = open_page(name)
    opened.wait_for_charts()
    dashboard = opened.page.locator(DASHBOARD)
    points = dashboard.locator(POINTS)
    assert points.count() > 0, "the dashboard has no SVG point marks"
    before = points.evaluate_all(OPACITIES_JS)

    dashboard.locator(".vega-bind", has_text="highlight LR").locator("select").select_option(index=1)
    opened.wait_until(
        "([selector, dimmed]) => [...document.querySelectorAll(selector)].some("
        "  (mark) => Number(mark.getAttribute('opacity')) === dimmed)",
        [f"{DASHBOARD} {POINTS}", DIMMED_OPACITY],
    )
    after = points.evaluate_all(OPACITIES_JS)

    assert set(before) == {1.0}
    assert DIMMED_OPACITY in after, f"no mark dimmed after picking an LR: opacities {sorted(set(after))}"
    assert 1.0 in after, "the picked LR's marks are dimmed too"
    assert opened.console_errors == []


@pytest.mark.parametrize("name", RESULTS_PAGES)
def test_dataset_dropdown_changes_data(open_page, name):
    opened = open_page(name)
    opened.wait_for_charts()
    dashboard = opened.page.locator(DASHBOARD)
    dropdown = dashboard.locator(".vega-bind", has_text="dataset").locator("select")
    options = dropdown.locator("option").all_text_contents()
    assert len(options) >= 2, f"the dropdown offers {options}"

    points = dashboard.locator(POINTS)
    before = points.evaluate_all(LABELS_JS)
    current = dropdown.input_value()
    other = next(option for option in options if option != current)
    dropdown.select_option(other)
    opened.wait_until(
        "([selector, before]) => JSON.stringify([...document.querySelectorAll(selector)].map("
        "  (mark) => mark.getAttribute('aria-label'))) !== JSON.stringify(before)",
        [f"{DASHBOARD} {POINTS}", before],
    )
    after = points.evaluate_all(LABELS_JS)

    # Each point's label contains its run id, which starts with the dataset name.
    assert any(current in label for label in before), f"no point of {current} before the switch"
    assert any(other in label for label in after), f"no point of {other} after the switch"
    assert not any(current in label for label in after), f"points of {current} left after the switch"
    assert opened.console_errors == []


def test_runs_page_offers_csv_download(open_page):
    opened = open_page("runs")
    link = opened.page.locator("a[download]")
    assert link.count() == 1

    href = link.get_attribute("href")
    header, _, payload = href.partition(",")
    data = base64.b64decode(payload) if header.endswith(";base64") else unquote_to_bytes(payload)
    columns = data.decode("utf-8").splitlines()[0].split(",")

    assert header.startswith("data:text/csv")
    assert link.get_attribute("download").endswith(".csv")
    assert "run_id" in columns
    assert opened.console_errors == []
    assert opened.aborted_urls == []


@pytest.mark.parametrize("name", RESULTS_PAGES)
def test_dark_theme_redraws_charts(open_page, name):
    opened = open_page(name)
    opened.wait_for_charts()
    page = opened.page
    # Tag the light drawings, so the wait below ends once every chart has drawn again.
    page.evaluate("() => document.querySelectorAll('.lrstudy-chart .marks').forEach((m) => m.classList.add('light'))")

    page.evaluate("() => { document.documentElement.dataset.theme = 'dark'; }")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.lrstudy-chart')].every("
        "  (chart) => chart.querySelector('.marks') && !chart.querySelector('.marks.light'))",
        timeout=DRAW_TIMEOUT_MS,
    )
    drawings = page.evaluate(
        "() => [...document.querySelectorAll('.lrstudy-chart')].map((chart) => chart.querySelectorAll('.marks').length)"
    )
    backgrounds = page.evaluate(
        "() => [...document.querySelectorAll('.lrstudy-chart .marks')].map((m) => getComputedStyle(m).backgroundColor)"
    )

    assert all(count > 0 for count in opened.mark_counts())
    assert set(drawings) == {1}, f"drawings per chart after the redraw: {drawings}"
    assert set(backgrounds) == {DARK_BACKGROUND}
    assert opened.console_errors == []
    assert opened.aborted_urls == []
