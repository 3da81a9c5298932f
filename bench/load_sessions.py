"""Many browser sessions on one PiMoE Studio server: do pages render, do trainings advance, does memory come back?

Starts `streamlit run app.py` (from --app-dir, so an older tree can be measured the same way), opens --sessions
browser contexts in Debian's chromium (each a separate Streamlit session), starts live training in --training of them
and keeps the others moving the Routing lab's temperature slider on a 512-byte text (one of them reloading the page
now and then). Then it prints:

    page render     seconds from navigation to the page drawn (heading, no skeletons, charts drawn): p50, p95, max over
                    every page opened under the load (the lab sessions now and then visit the other pages too, each
                    listed); and the same for fresh sessions opened one at a time on the idle server (the floor)
    training        per run: seconds in "starting", seconds from Start to the first step shown, steps in the window, the fewest steps in any 2 s, the longest
                    stall (time between two step increases, as the page showed them; the page redraws every second)
    lab redraw      ms from a temperature key press to the heatmap redrawn with new data, in the browser: p50, p95, for
                    one session alone on the server (before the load) and for the lab sessions under the load
    server CPU      the server process's CPU seconds per wall second, total and per session, idle and under load
    server memory   RSS at baseline (after one warm-up session), under load, and after every session closed

    python bench/load_sessions.py [--sessions 8] [--training 4] [--window 60] [--press-every 1] [--app-dir PATH]

Timings come from the browser itself (a script in each page records when the Step metric changes and when the heatmap
gets new data), so the driver visiting pages one after another does not distort them.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-quic", "--no-first-run", "--disable-sync",
                 # background tabs must keep running their timers, as eight users' foreground tabs would
                 "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                 "--disable-backgrounding-occluded-windows"]
LAB_TEXT = ("If 12 + 30 = 42 then the answer is even, so we say yes. Therefore x * 3 > 7 and not y. " * 8)[:512]
RENDER_TIMEOUT_MS = 120_000  # --render-timeout; a page not drawn by then counts as a render of that length
ORPHAN_WAIT_S = 20.0  # the scheduler frees a gone session's run after 10 s

# Records, in the page, every change of the training page's Status and Step metrics with its time.
TRAINING_PROBE = """() => {
  window.__steps = []; let last = null;
  const read = (label) => { for (const m of document.querySelectorAll('[data-testid=stMetric]')) {
      const l = m.querySelector('[data-testid=stMetricLabel]');
      if (l && l.innerText.trim() === label) return m.querySelector('[data-testid=stMetricValue]').innerText.trim(); }
    return null; };
  setInterval(() => { const status = read('Status'), step = parseInt(read('Step') || '0', 10);
    const key = status + ':' + step;
    if (key !== last) { window.__steps.push([Date.now(), status, step]); last = key; } }, 100);
}"""
# Records how long after `window.__pressed` the heatmap was redrawn with new data: the Routing lab's first live chart
# (studio/canvas_chart.js) counts its redraws in data-draws. A MutationObserver, not a requestAnimationFrame loop: the
# loop made every lab tab render 60 frames a second, which cost chromium about 0.08 of a core per idle tab (measured),
# load that no user's tab produces.
REDRAW_PROBE = """() => {
  window.__redraws = []; window.__pressed = null; let seen = null;
  const check = () => { const chart = document.querySelector('.pimoe-chart');
    const draws = chart ? chart.dataset.draws : null;
    if (draws !== seen) { if (window.__pressed !== null && seen !== null && draws !== undefined) {
        window.__redraws.push(performance.now() - window.__pressed); window.__pressed = null; }
      seen = draws; } };
  const start = () => new MutationObserver(check).observe(document.body,
    {childList: true, subtree: true, attributes: true, attributeFilter: ['data-draws']});
  if (document.body) start(); else document.addEventListener('DOMContentLoaded', start);
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_idle() -> tuple[int, int]:
    """(busy, idle) jiffies of the whole machine so far (/proc/stat), to tell a saturated machine from a slow server."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, idle


def main_thread_seconds(cdp) -> float:
    """The page's renderer main-thread busy time so far (chromium's TaskDuration counter)."""
    from playwright.sync_api import Error

    try:
        return next(m["value"] for m in cdp.send("Performance.getMetrics")["metrics"] if m["name"] == "TaskDuration")
    except (Error, StopIteration):
        return float("nan")


def start_server(app_dir: Path, port: int, log: Path, trace: Path | None = None,
                 gate_trace: Path | None = None) -> subprocess.Popen:
    options = ["run", "app.py", "--server.headless", "true", "--server.port", str(port), "--server.address",
               "127.0.0.1", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    command = [sys.executable, "-m", "streamlit", *options]
    if trace is not None:  # every thread's stack every 10 s, to see where a slow server spends its time
        command = [sys.executable, "-c", "import faulthandler, sys; faulthandler.dump_traceback_later(10, repeat=True, "
                   f"file=open({str(trace)!r}, 'w')); sys.argv = ['streamlit', *{options!r}]; "
                   "from streamlit.web.cli import main; main()"]
    env = {**os.environ, "PYTHONPATH": str(app_dir)}
    if gate_trace is not None:
        gate_trace.unlink(missing_ok=True)
        env["PIMOE_GATE_TRACE"] = str(gate_trace.resolve())
    proc = subprocess.Popen(command, cwd=app_dir, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return proc
        time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"the server did not start; see {log}")


def wait_drawn(page, heading: str, timeout_ms: float = 120_000) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name=heading)).to_be_visible(timeout=timeout_ms)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=stApp]')?.getAttribute('data-test-script-state') === 'notRunning'"
        " && !document.querySelector('[data-testid=stSkeleton]')"
        " && [...document.querySelectorAll('[data-testid=stPlotlyChart]')].every(c => c.querySelector('.main-svg'))"
        " && [...document.querySelectorAll('.pimoe-chart')].every(c => c.dataset.draws)",
        timeout=timeout_ms)


# The pages a Routing-lab user visits now and then under the load (each visit returns to the lab afterwards): every
# page of the app must render within the budget, not only the two live ones.
OTHER_PAGES = (("/computation", "Computation"), ("/performance", "Performance"), ("/optimisation", "Optimisation"),
               ("/guide", "Guide: how a token finds its experts"))


def timed_open(page, url: str, heading: str, renders: list[float], timeout_ms: float = 120_000) -> bool:
    """Navigate and wait until drawn; a page not drawn within the timeout counts as a render of that length."""
    from playwright.sync_api import Error

    started = time.perf_counter()
    try:
        page.goto(url)
        wait_drawn(page, heading, timeout_ms)
    except (AssertionError, Error):
        renders.append(time.perf_counter() - started)
        return False
    renders.append(time.perf_counter() - started)
    return True


def open_lab(page, base: str, renders: list[float]) -> None:
    from playwright.sync_api import Error

    if not timed_open(page, f"{base}/", "Routing lab", renders, RENDER_TIMEOUT_MS):
        return
    try:
        area = page.get_by_role("textbox", name="Text")
        area.fill(LAB_TEXT)
        area.press("Control+Enter")
        page.get_by_test_id("stMetricValue").get_by_text("512", exact=True).wait_for(timeout=RENDER_TIMEOUT_MS)
        wait_drawn(page, "Routing lab", RENDER_TIMEOUT_MS)
    except (AssertionError, Error):
        return


def press_temperature(page, key: str) -> None:
    slider = page.get_by_test_id("stSidebar").get_by_role("slider", name="Temperature")
    slider.focus()
    page.evaluate("() => { window.__pressed = performance.now(); }")
    page.keyboard.press(key)


def training_figures(timeline: list, window_end_ms: float) -> dict[str, float]:
    """From [(ms, status, step)]: seconds from the Start press (or, in timelines without it, the first "starting")
    to "running", and over the running part the step rate and longest stall."""
    start = next((t for t, status, _ in timeline if status == "pressed"),
                 next((t for t, status, _ in timeline if status == "starting"), timeline[0][0] if timeline else 0))
    started = next((t for t, status, _ in timeline if status == "running"), window_end_ms)
    running = [(t, step) for t, status, step in timeline if status == "running" and step > 0]
    if not running:
        return {"starting_s": (started - start) / 1e3, "first_step_s": float("inf"), "steps": 0,
                "min_steps_per_2s": 0, "max_stall_s": float("inf")}
    changes = [t for t, _ in running]
    gaps = [(b - a) / 1e3 for a, b in zip(changes, changes[1:], strict=False)]
    gaps.append((window_end_ms - changes[-1]) / 1e3)

    def step_at(ms: float) -> int:
        return max((step for at, step in running if at <= ms), default=0)

    windows = []
    t = changes[0]
    while t + 2000 <= window_end_ms:
        windows.append(step_at(t + 2000) - step_at(t))
        t += 2000
    return {"starting_s": (started - start) / 1e3, "first_step_s": (changes[0] - start) / 1e3, "steps": running[-1][1] - running[0][1],
            "min_steps_per_2s": min(windows) if windows else 0, "max_stall_s": max(gaps)}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def read(page, expression: str) -> list:
    from playwright.sync_api import Error

    try:
        return page.evaluate(f"() => {expression}") or []
    except Error:
        return []


def idle_redraws(browser, base: str, presses: int = 20) -> list[float]:
    """Lab redraw times of one session on an otherwise idle server: the Routing lab's own speed at 512 tokens."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script(f"({REDRAW_PROBE})()")
    page = context.new_page()
    open_lab(page, base, [])
    for index in range(presses):
        press_temperature(page, "ArrowLeft" if index % 2 else "ArrowRight")
        time.sleep(1.5)
    redraws = read(page, "window.__redraws")
    context.close()
    return redraws


def idle_renders(browser, base: str, rounds: int = 3) -> list[float]:
    """Fresh sessions (new browser contexts, as new users) opening each page one at a time on an idle server: the
    floor under the page-render figure of the load, which those same page opens cannot beat with company."""
    renders: list[float] = []
    for _ in range(rounds):
        for url, heading in (("/", "Routing lab"), ("/training", "Live training")):
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            timed_open(context.new_page(), f"{base}{url}", heading, renders, RENDER_TIMEOUT_MS)
            context.close()
    return renders


def run_load(browser, base: str, server_pid: int, args) -> dict:
    renders: list[float] = []
    viewport = {"width": 1400, "height": 900}
    contexts = []

    cdps = {}

    def new_page(probe: str):
        # Each user's tab is made just before it opens its page, as users arrive: made all at once, eight chromium
        # renderers started during the first page's render and it alone took 4-5 s (the bench's cost, not the app's).
        context = browser.new_context(viewport=viewport)
        context.add_init_script(f"({probe})()")  # init scripts survive reloads and the app's own URL changes
        contexts.append(context)
        page = context.new_page()
        cdps[page] = context.new_cdp_session(page)
        cdps[page].send("Performance.enable")
        return page

    trainers, labs = [], []
    for _ in range(args.training):
        trainers.append(new_page(TRAINING_PROBE))
        timed_open(trainers[-1], f"{base}/training", "Live training", renders, RENDER_TIMEOUT_MS)
    for _ in range(args.sessions - args.training):
        labs.append(new_page(REDRAW_PROBE))
        open_lab(labs[-1], base, renders)
    for page in trainers:
        # the press goes into the page's own timeline: "starting" counts from it, also for a run so quick that its
        # page never showed "starting"
        page.evaluate("() => window.__steps.push([Date.now(), 'pressed', 0])")
        page.get_by_role("button", name="Start", exact=True).click()
    cpu0, t0, t0_ms = cpu_seconds(server_pid), time.monotonic(), time.time() * 1e3
    machine0 = machine_busy_idle()
    tasks0 = {page: main_thread_seconds(cdp) for page, cdp in cdps.items()}
    end = t0 + args.window
    round_number = 0
    by_page: dict[str, list[float]] = {}
    visits = 0
    while time.monotonic() < end:
        for index, page in enumerate(labs):
            if round_number % 6 == 5 and index == (round_number // 6) % len(labs):
                # every other time a user reloads the lab; in between one opens another page and comes back
                if visits % 2 == 0:
                    open_lab(page, base, by_page.setdefault("/", renders))
                else:
                    url, heading = OTHER_PAGES[(visits // 2) % len(OTHER_PAGES)]
                    timed_open(page, f"{base}{url}", heading, by_page.setdefault(url, []), RENDER_TIMEOUT_MS)
                    renders.append(by_page[url][-1])
                    open_lab(page, base, renders)
                visits += 1
                continue
            press_temperature(page, "ArrowLeft" if round_number % 2 else "ArrowRight")
        round_number += 1
        time.sleep(args.press_every)
    window_end_ms = time.time() * 1e3
    window_s = time.monotonic() - t0
    load_cpu = (cpu_seconds(server_pid) - cpu0) / window_s
    busy, idle = (b - a for a, b in zip(machine0, machine_busy_idle(), strict=True))
    main_threads = {kind: [(main_thread_seconds(cdps[page]) - tasks0[page]) / window_s for page in pages]
                    for kind, pages in (("training", trainers), ("lab", labs))}
    load_mb = rss_mb(server_pid)
    timelines = [read(page, "window.__steps") for page in trainers]
    run_ids = [parse_qs(urlparse(page.url).query).get("run", [None])[0] for page in trainers]
    runs = [training_figures(timeline, window_end_ms) for timeline in timelines]
    redraws = [ms for page in labs for ms in read(page, "window.__redraws")]
    same_run = 0
    for page in trainers:  # a refreshed page renders within the budget too, and finds its run again
        url = page.url
        timed_open(page, url, "Live training", renders, RENDER_TIMEOUT_MS)
        same_run += int(page.url == url and "run=" in url and
                        page.get_by_test_id("stMetricValue").first.inner_text() in ("running", "starting"))
    for context in contexts:
        context.close()
    return {"renders": renders, "other_pages": {url: by_page[url] for url in by_page if url != "/"}, "runs": runs,
            "redraws": redraws, "load_cpu": load_cpu, "load_mb": load_mb, "machine_idle": idle / max(1, busy + idle),
            "main_thread_s_per_s": main_threads,
            "timelines": timelines, "run_ids": run_ids, "window_ms": (t0_ms, window_end_ms),
            "same_run": same_run}


GAP_S = 1.9  # an on-screen gap this long between two steps of a run is explained from the gate trace


def read_trace(trace: Path) -> list[tuple[str, float, float]]:
    """(label, acquired, released) of every gate hold in a PIMOE_GATE_TRACE file."""
    holds = []
    for line in trace.read_text().splitlines():
        label, _requested, acquired, released = line.split("\t")
        holds.append((label, float(acquired), float(released)))
    return holds


def display_lags(trace: Path, timelines: list, run_ids: list, window_ms: tuple[float, float],
                 steps_label: str = "step") -> list[dict[str, float]]:
    """Per training page: how long after the server finished step n the page showed it (p50, p95, max seconds; the
    n-th hold labelled '<steps_label> <run id>' is step n), and the longest time between two steps of its run on the
    server within the window: an on-screen gap is the server's gap plus the difference of two display lags."""
    holds = read_trace(trace)
    start, end = window_ms[0] / 1e3, window_ms[1] / 1e3
    figures = []
    for timeline, run_id in zip(timelines, run_ids, strict=True):
        ends = [released for label, _, released in holds if label == f"{steps_label} {run_id}"]
        lags = [t / 1e3 - ends[step - 1] for t, status, step in timeline if status == "running" and 0 < step <= len(ends)]
        inside = [t for t in ends if start < t < end]
        gaps = [b - a for a, b in itertools.pairwise(inside)]
        figures.append({"lag_p50_s": pct(lags, .5), "lag_p95_s": pct(lags, .95), "lag_max_s": pct(lags, 1.0),
                        "server_gap_max_s": max(gaps, default=float("nan"))})
    return figures


def explain_gaps(trace: Path, timelines: list, run_ids: list | None = None, steps_label: str = "step") -> list[str]:
    """For every on-screen gap of a training page, who held the compute gate meanwhile: the holds overlapping it summed
    by kind, the longest one, and how many training steps the server took, of all runs and of the page's own run
    (run_ids, from the pages' URLs): steps taken but not shown mean the page, not the training, stalled."""
    holds = read_trace(trace)
    lines = []
    for index, timeline in enumerate(timelines):
        shown = [(t / 1e3, step) for t, status, step in timeline if status == "running"]
        for (start, before), (end, after) in itertools.pairwise(shown):
            if end - start < GAP_S:
                continue
            inside = [(label, max(a, start), min(r, end)) for label, a, r in holds if a < end and r > start]
            by_kind: dict[str, float] = {}
            for label, a, r in inside:
                kind = label.split(" ")[0]
                by_kind[kind] = by_kind.get(kind, 0.0) + r - a
            longest = max(inside, key=lambda h: h[2] - h[1], default=None)
            ended = [label for label, _, r in holds if label.startswith(steps_label) and start < r <= end]
            own_id = run_ids[index] if run_ids and index < len(run_ids) else None
            own = "" if own_id is None else f", {ended.count(f'{steps_label} {own_id}')} of its own run"
            lines.append(f"training {index} gap {end - start:.1f} s (steps {before}->{after} shown): server took "
                         f"{len(ended)} steps of all runs{own}; gate held "
                         + ", ".join(f"{kind} {sec:.2f} s" for kind, sec in sorted(by_kind.items(), key=lambda kv: -kv[1]))
                         + (f"; longest {longest[0]!r} {longest[2] - longest[1]:.2f} s" if longest else "")
                         + f"; gate idle {end - start - sum(by_kind.values()):.2f} s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--training", type=int, default=4)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of measured load")
    parser.add_argument("--press-every", type=float, default=1.0,
                        help="seconds between two temperature changes of each Routing lab session (default 1; every "
                             "sixth round one lab session reloads its page instead)")
    parser.add_argument("--app-dir", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--log", type=Path, default=Path("/tmp/pimoe-load-server.log"))
    parser.add_argument("--render-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument("--trace", type=Path, help="write the server's thread stacks here every 10 s")
    parser.add_argument("--gate-trace", type=Path, help="have the server log every compute-gate hold here, and explain "
                                                              "each on-screen training gap from it")
    from pimoe.output_paths import output_file
    parser.add_argument("--json", type=output_file("results file"), help="also write every figure, with the training pages' timelines, here")
    args = parser.parse_args()
    if not 0 <= args.training < args.sessions:
        parser.error("--training must be at least 0 and below --sessions (the others use the Routing lab)")
    from playwright.sync_api import sync_playwright

    global RENDER_TIMEOUT_MS
    RENDER_TIMEOUT_MS = args.render_timeout * 1e3
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(args.app_dir.resolve(), port, args.log, args.trace, args.gate_trace)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            # Warm-up session: imports (the optimiser pulls in torch._dynamo), model load, first chart, one training
            # step; the baseline is the server after it has gone, so one-time imports are not counted as a leak.
            warm = browser.new_context(viewport={"width": 1400, "height": 900})
            page = warm.new_page()
            timed_open(page, f"{base}/", "Routing lab", [])
            timed_open(page, f"{base}/training", "Live training", [])
            page.get_by_role("button", name="Start", exact=True).click()
            # the save row appears with the first step (the charts are drawn, empty, before it)
            page.get_by_role("button", name="Checkpoint (.safetensors)").wait_for(timeout=180_000)
            warm.close()
            time.sleep(ORPHAN_WAIT_S)
            baseline_mb = rss_mb(server.pid)
            idle_cpu0, idle_t0 = cpu_seconds(server.pid), time.monotonic()
            time.sleep(5)
            idle_cpu = (cpu_seconds(server.pid) - idle_cpu0) / (time.monotonic() - idle_t0)
            alone_renders = idle_renders(browser, base)
            alone = idle_redraws(browser, base)
            result = run_load(browser, base, server.pid, args)
            browser.close()
        freed_after = None
        closed = time.monotonic()
        while time.monotonic() - closed < 150:
            time.sleep(2)
            if time.monotonic() - closed >= ORPHAN_WAIT_S and rss_mb(server.pid) <= baseline_mb + 100:
                freed_after = time.monotonic() - closed
                break
        after_mb = rss_mb(server.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)

    n, renders, redraws = args.sessions, result["renders"], result["redraws"]
    if args.json:
        import json

        args.json.write_text(json.dumps({"sessions": n, "training": args.training, "window_s": args.window,
                                         "press_every_s": args.press_every,
                                         "alone_redraws_ms": alone, "alone_renders_s": alone_renders,
                                         "baseline_mb": baseline_mb,
                                         "after_mb": after_mb, **result}, indent=1))
    print(f"{n} sessions ({args.training} training, {n - args.training} in the Routing lab at 512 tokens), "
          f"{args.window:.0f} s window, a lab change every {args.press_every:g} s, app {args.app_dir.resolve()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"page render   n={len(renders)}  p50 {pct(renders, .5):.2f} s  p95 {pct(renders, .95):.2f} s  "
          f"max {max(renders):.2f} s;  one fresh session alone: n={len(alone_renders)}  p50 "
          f"{pct(alone_renders, .5):.2f} s  max {max(alone_renders):.2f} s")
    for url, seconds in result["other_pages"].items():
        print(f"  {url:<14} visited under the load: " + ", ".join(f"{value:.2f} s" for value in seconds))
    for index, run in enumerate(result["runs"]):
        print(f"training {index}    in starting {run['starting_s']:.1f} s  first step shown after "
              f"{run['first_step_s']:.1f} s  steps {run['steps']}  fewest steps in a 2 s "
              f"window {run['min_steps_per_2s']}  longest stall {run['max_stall_s']:.1f} s")
    if args.gate_trace is not None:
        for index, lag in enumerate(display_lags(args.gate_trace, result["timelines"], result["run_ids"],
                                                 result["window_ms"])):
            print(f"  training {index} step shown {lag['lag_p50_s']:.2f} s after the server took it (p50), p95 "
                  f"{lag['lag_p95_s']:.2f} s, max {lag['lag_max_s']:.2f} s; longest between two steps on the server "
                  f"{lag['server_gap_max_s']:.2f} s")
        for line in explain_gaps(args.gate_trace, result["timelines"], result["run_ids"]):
            print("  " + line)
    print(f"refresh       {result['same_run']} of {args.training} training pages came back to their running run")
    print(f"lab redraw    one session alone: n={len(alone)}  p50 {pct(alone, .5):.0f} ms  p95 {pct(alone, .95):.0f} ms;"
          f"  under this load: n={len(redraws)}  p50 {pct(redraws, .5):.0f} ms  p95 {pct(redraws, .95):.0f} ms")
    print(f"server CPU    idle {idle_cpu:.2f} cores; under load {result['load_cpu']:.2f} cores = "
          f"{result['load_cpu'] / n:.3f} per session")
    if "machine_idle" in result:
        shares = {kind: ", ".join(f"{v:.2f}" for v in values) for kind, values in result["main_thread_s_per_s"].items()}
        print(f"machine       {100 * result['machine_idle']:.0f}% idle over the window; browser main threads (s per s): "
              f"training tabs {shares['training']}; lab tabs {shares['lab']}")
    print(f"server memory baseline {baseline_mb:.0f} MB, under load {result['load_mb']:.0f} MB, after closing every "
          f"session {after_mb:.0f} MB ({after_mb - baseline_mb:+.0f} MB"
          + (f"; within 100 MB {freed_after:.0f} s after closing)" if freed_after is not None
             else "; not within 100 MB after 150 s)"))


if __name__ == "__main__":
    main()
