"""The dashboard as a person sees it: Datasette serving a database of known rows (as
``scripts/dashboard`` does), read by headless Chromium (Debian's ``chromium``, driven by
Playwright; no browser is downloaded)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import ROOT, free_port
from mitmflare.storage import schema
from mitmflare.storage.writer import open_analytics_db

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("needs Chromium: apt-get install -y chromium", allow_module_level=True)

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DATASETTE = Path(sys.executable).with_name("datasette")
OVERVIEW = "/-/dashboards/overview"
REALISTIC_S = 35  # the default 10 s refresh, watched this long
CHARTS = yaml.safe_load((ROOT / "datasette-metadata.yml").read_text())[
    "plugins"]["datasette-dashboards"]["overview"]["charts"]
# the plugin's metric and table renderers append to the chart's element on every call
APPENDED = [f"chart-{c}" for c, spec in CHARTS.items() if spec.get("library") in ("metric", "table")]


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def fill(path: Path) -> None:
    """Known rows: 12 subscription requests on max-1, 8 API-key requests on key-1 and one
    failed request (``long``) whose error and user agent are 2,000-character words."""
    db = open_analytics_db(str(path))
    conn = db.conn
    now = time.time()
    conn.execute("insert into accounts (name, provider, credential, priority, status, position)"
                 " values ('max-1', 'anthropic', 'oauth', 0, 'available', 1),"
                 " ('key-1', 'anthropic', 'api_key', 1, 'available', 2)")
    rows = []
    for i in range(20):
        account, cost, out, duration = (("max-1", 0.25, 300, 4000.0) if i < 12
                                        else ("key-1", 0.10, 200, 2000.0))
        rows.append((f"r{i:02d}", iso(now - 1200 + 30 * i), account, "claude-sonnet-4-6", 200,
                     duration, 1000.0, 100, out, cost, 1))
    conn.executemany(
        "insert into requests (id, started_at, account, model, status, duration_ms, ttfb_ms,"
        " input_tokens, output_tokens, cost_usd, streamed) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows)
    conn.execute("insert into requests (id, started_at, account, model, status, duration_ms,"
                 " streamed, error, user_agent) values ('long', ?, 'key-1', 'claude-sonnet-4-6',"
                 " 500, 300.0, 0, ?, ?)", (iso(now - 5), "E" * 2000, "agent/" + "a" * 1990))
    schema.rebuild_rollup(conn)
    conn.commit()
    conn.close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``datasette serve`` over the filled database, as ``scripts/dashboard`` runs it."""
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "mitmflare.db"
        fill(db)
        port = free_port()
        proc = subprocess.Popen(
            [str(DATASETTE), "serve", str(db), "-m", str(ROOT / "datasette-metadata.yml"),
             "--static", f"assets:{ROOT / 'datasette-assets'}", "--port", str(port),
             "--setting", "default_cache_ttl", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    httpx.get(url + "/-/versions.json", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


def open_page(browser: Browser, url: str, width: int = 1400, height: int = 900) -> Page:
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    return page


# Counts, every 200 ms, the drawings of the tables and tiles the plugin draws (and the account
# cards), keeping the largest count seen, so a copy that shows up between two looks counts.
WATCH = """() => {
  window.mfMost = {};
  const look = () => {
    const counts = {tables: document.querySelectorAll('#card-account-status table').length,
                    cards: document.querySelectorAll('.mf-card').length};
    document.querySelectorAll('.dashboard-card-chart').forEach((el) => {
      counts[el.id] = el.childElementCount;
    });
    for (const [key, n] of Object.entries(counts)) window.mfMost[key] = Math.max(window.mfMost[key] || 0, n);
  };
  setInterval(look, 200);
}"""


def refreshes(page: Page) -> int:
    return int(page.get_attribute("#mf-health", "data-refreshes") or 0)


@pytest.fixture(scope="module")
def realistic(browser: Browser, server: str) -> Iterator[tuple[Page, float]]:
    """The overview at its default 10 s refresh, opened when the module starts; the last test
    looks at it once REALISTIC_S seconds have passed (the tests in between run meanwhile)."""
    page = open_page(browser, server + OVERVIEW)
    page.evaluate(WATCH)
    yield page, time.monotonic()
    page.close()


def test_redraw_replaces_tables_tiles_and_cards(realistic, browser, server):
    page = open_page(browser, server + OVERVIEW + "#refresh=1")
    page.evaluate(WATCH)
    page.wait_for_function("() => Number(document.querySelector('#mf-health')"
                           "?.dataset.refreshes || 0) >= 4", timeout=30000)
    page.wait_for_timeout(500)  # a last look after the fourth redraw
    most = page.evaluate("window.mfMost")
    assert most["tables"] == 1 and most["cards"] == 2
    assert {key: most[key] for key in APPENDED} == dict.fromkeys(APPENDED, 1)
    assert page.locator("#chart-requests p").all_inner_texts() == ["21"]
    page.close()


def test_default_refresh_keeps_one_accounts_table_over_35_s(realistic):
    page, opened = realistic
    page.wait_for_timeout(max(0.0, REALISTIC_S - (time.monotonic() - opened)) * 1000)
    most = page.evaluate("window.mfMost")
    assert most["tables"] == 1, most
    assert page.locator("#card-account-status table").count() == 1
    assert {key: most[key] for key in APPENDED} == dict.fromkeys(APPENDED, 1)
    assert most["cards"] == 2
    assert refreshes(page) >= 3  # 10 s apart: at about 10, 20 and 30 s


# Elements of the page's content that stick out to the right of the viewport, or that scroll
# sideways (cells with a very long value may scroll up and down, never sideways).
CUT_OFF = """() => {
  const width = window.innerWidth;
  return [...document.querySelectorAll('section.content *')].filter((el) =>
    el.getBoundingClientRect().right > width + 1 || el.scrollWidth > el.clientWidth + 1
  ).map((el) => el.tagName + '.' + el.className);
}"""


def test_request_page_fits_1400_px_and_wraps_long_values(browser, server):
    page = open_page(browser, server + "/mitmflare/requests/long", width=1400)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400
    assert page.evaluate(CUT_OFF) == []
    for column, value in (("error", "E" * 2000), ("user_agent", "agent/" + "a" * 1990),
                          ("status", "500")):
        cell = page.locator(f"td.col-{column}")
        assert cell.inner_text().strip() == value
        assert cell.bounding_box()["width"] < 1400
    assert page.locator("th", has_text="cache_creation_1h_input_tokens").is_visible()
    page.close()


TILES = ["requests", "success-rate", "tokens", "cost", "plan-value", "median-latency",
         "output-speed"]


def test_overview_reads_tiles_then_accounts_then_charts(browser, server):
    page = open_page(browser, server + OVERVIEW)
    page.wait_for_selector(".mf-card")
    for tile in TILES:
        page.wait_for_selector(f"#chart-{tile} p")
    top = {key: page.locator(selector).bounding_box()["y"] for key, selector in {
        "tiles": "#card-requests", "cards": ".mf-cards", "charts": "#card-requests-over-time",
        "recent": "#mf-recent"}.items()}
    assert top["tiles"] < top["cards"] < top["charts"] < top["recent"], top
    assert {page.locator(f"#card-{tile}").bounding_box()["y"] for tile in TILES} == {top["tiles"]}
    assert top["charts"] < 900  # the charts start on the first screen
    page.wait_for_selector("#mf-recent table.mf-recent tbody tr")
    assert page.locator("#mf-recent table.mf-recent tbody tr").count() == 10  # of 21
    assert page.locator("#mf-recent a", has_text="all requests").get_attribute("href") \
        == "/mitmflare/requests"
    page.close()


def test_tiles_show_the_known_rows_totals(browser, server):
    page = open_page(browser, server + OVERVIEW)
    for tile in TILES:
        page.wait_for_selector(f"#chart-{tile} p")
    shown = {tile: page.locator(f"#chart-{tile} p").inner_text() for tile in TILES}
    assert shown == {
        "requests": "21",
        "success-rate": "95.2 %",   # 20 of 21
        "tokens": "7200",           # 20 x 100 in, 12 x 300 + 8 x 200 out
        "cost": "$0.80",            # what key-1 (API key) cost: 8 x $0.10
        "plan-value": "$3.00",      # max-1 (subscription) at API prices: 12 x $0.25
        "median-latency": "4000 ms",
        "output-speed": "118.2",    # 5200 tokens in 12 x 3 s + 8 x 1 s of generation
    }
    card = page.locator(".mf-card[data-account='max-1']").inner_text()
    assert "at API prices" in card
    page.close()
