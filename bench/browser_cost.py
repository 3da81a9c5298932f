"""Browser main-thread time one Routing-lab key press and one second of a live-training page cost, in Debian's chromium.

Under load the two cores of this machine are shared by eight chromium renderers and the server, so what each page
costs the browser decides how many sessions fit. This starts `streamlit run app.py` (from --app-dir), opens the
Routing lab on a 512-byte text in one tab, reads chromium's own counters (CDP `Performance.getMetrics`: TaskDuration,
ScriptDuration, LayoutDuration, RecalcStyleDuration) around --presses temperature key presses one second apart, then
opens Live training in a second tab, starts a run and reads the same counters over --seconds.

    python bench/browser_cost.py [--app-dir PATH] [--presses 20] [--seconds 20] [--lab-only]
    python bench/browser_cost.py --pages [--rounds 3] [--only /computation]   # each page opened fresh: seconds to drawn, browser counters

Compare variants of the app by pointing --app-dir at a copy with the change.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load_sessions import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    free_port,
    open_lab,
    press_temperature,
    start_server,
    wait_drawn,
)

COUNTERS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")


def counters(cdp) -> dict[str, float]:
    values = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return {name: values[name] for name in COUNTERS}


def per_unit(before: dict[str, float], after: dict[str, float], units: float) -> dict[str, float]:
    return {name: round((after[name] - before[name]) / units, 4) for name in COUNTERS}


def page_opens(browser, base: str, rounds: int, only: str | None = None) -> None:
    """Each page opened in a fresh context (a new user) on an otherwise idle server: seconds from navigation to drawn,
    and the renderer's main-thread time that open cost."""
    from bench.load_sessions import OTHER_PAGES, timed_open

    for url, heading in (("/", "Routing lab"), ("/training", "Live training"), *OTHER_PAGES):
        if only is not None and url != only:
            continue
        renders, costs = [], []
        for _ in range(rounds):
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable")
            before = counters(cdp)
            timed_open(page, f"{base}{url}", heading, renders)
            costs.append(per_unit(before, counters(cdp), 1))
            context.close()
        mean = {name: round(sum(c[name] for c in costs) / rounds, 3) for name in COUNTERS}
        print(f"{url:14s} drawn in {' '.join(f'{r:.2f}' for r in renders)} s;  main thread per open {mean}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-dir", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--presses", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--lab-only", action="store_true")
    parser.add_argument("--pages", action="store_true", help="only open each page fresh, --rounds times")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="with --pages: only this page's path, e.g. /computation")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = start_server(args.app_dir, port, Path(tempfile.gettempdir()) / "pimoe-browser-cost-server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            if args.pages:
                page_opens(browser, base, args.rounds, args.only)
                browser.close()
                return 0
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            lab = context.new_page()
            open_lab(lab, base, [])
            cdp = context.new_cdp_session(lab)
            cdp.send("Performance.enable")
            time.sleep(2)
            before = counters(cdp)
            for index in range(args.presses):
                press_temperature(lab, "ArrowLeft" if index % 2 else "ArrowRight")
                time.sleep(1.0)
            print("Routing lab, seconds per key press:", per_unit(before, counters(cdp), args.presses))
            if not args.lab_only:
                training = context.new_page()
                training.goto(f"{base}/training")
                wait_drawn(training, "Live training")
                cdp = context.new_cdp_session(training)
                cdp.send("Performance.enable")
                training.get_by_role("button", name="Start", exact=True).click()
                time.sleep(8)  # past the start: the page at its steady cadence
                before = counters(cdp)
                time.sleep(args.seconds)
                print("Live training (one run), seconds per second:", per_unit(before, counters(cdp), args.seconds))
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
