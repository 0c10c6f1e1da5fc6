"""Bytes and first paint per page of a built site, cold visit on a throttled phone line.

    python tools/measure_pages.py [_build/html] [--before _build/html-before] [pages ...]

Serves the folder on 127.0.0.1 (Python's http.server: uncompressed, as the review measured),
opens each page in headless Chromium with the cache disabled and the "Fast 4G" profile of
Chrome's DevTools (9 Mbit/s down, 60 ms latency), and prints a Markdown table: transferred bytes,
number of requests, first contentful paint and the load event. With ``--before`` the same pages of
an earlier build are measured too, side by side.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from build_pdf import find_chromium  # noqa: E402
from devtools import HEADLESS_FLAGS, DevToolsPage  # noqa: E402

PAGES = ["index.html", "chapters/01-overview.html", "chapters/02-gradient-descent.html",
         "chapters/05-inverse-simulators.html", "chapters/07-pde.html", "chapters/08-networks.html",
         "chapters/09-summary.html", "notebooks/explorables.html", "notebooks/05-comparison.html",
         "notebooks/08b-scaling.html", "chapters/api/updates.html", "search.html"]
FAST_4G = dict(offline=False, latency=60, downloadThroughput=9e6 / 8, uploadThroughput=1.5e6 / 8)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder: Path):
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/"


def measure(folder: Path, pages: list[str], chromium: str) -> dict[str, dict]:
    httpd, base = serve(folder)
    out = {}
    try:
        for page in pages:
            if not (folder / page).is_file():
                continue
            p = DevToolsPage(chromium, size=(390, 844), flags=HEADLESS_FLAGS)
            try:
                p.send("Emulation.setDeviceMetricsOverride", width=390, height=844,
                       deviceScaleFactor=2, mobile=True)
                p.send("Network.setCacheDisabled", cacheDisabled=True)
                p.send("Network.emulateNetworkConditions", **FAST_4G)
                p.goto(base + page, timeout=300)
                time.sleep(0.5)
                timing = p.js("""(() => {
                    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
                    const nav = performance.getEntriesByType('navigation')[0];
                    return {fcp: fcp ? fcp.startTime : null, load: nav ? nav.loadEventEnd : null};
                })()""")
                done = [e["params"] for e in p.events if e.get("method") == "Network.loadingFinished"]
                out[page] = dict(bytes=sum(d.get("encodedDataLength", 0) for d in done),
                                 requests=len(done), **timing)
            finally:
                p.close()
    finally:
        httpd.shutdown()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", nargs="?", default=str(ROOT / "_build" / "html"))
    ap.add_argument("--before", help="an earlier build to measure side by side")
    ap.add_argument("pages", nargs="*", default=None)
    args = ap.parse_args(argv)
    pages = args.pages or PAGES
    chromium = find_chromium()
    after = measure(Path(args.site), pages, chromium)
    before = measure(Path(args.before), pages, chromium) if args.before else {}

    def cell(m):
        if not m:
            return "– | – | – | –"
        fcp = f"{m['fcp'] / 1000:.2f} s" if m["fcp"] is not None else "–"
        load = f"{m['load'] / 1000:.2f} s" if m["load"] else "–"
        return f"{m['bytes'] / 1e6:.2f} MB | {m['requests']} | {fcp} | {load}"

    if before:
        print("| page | before: bytes | req. | first paint | load | after: bytes | req. | first paint | load |")
        print("|---|---|---|---|---|---|---|---|---|")
    else:
        print("| page | bytes | requests | first paint | load |")
        print("|---|---|---|---|---|")
    for page in pages:
        row = f"| `{page}` | " + ((cell(before.get(page)) + " | ") if before else "") + cell(after.get(page)) + " |"
        print(row)
    print(f"\nCold visits over http://127.0.0.1 (uncompressed), Chromium headless, 390×844, "
          f"Fast 4G throttling ({FAST_4G['downloadThroughput'] * 8 / 1e6:.0f} Mbit/s, "
          f"{FAST_4G['latency']} ms).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
