#!/usr/bin/env python3
"""Dashboard page load with 1,000 tasks: first paint and the node view filled, in headless Chromium.

    .venv/bin/python scripts/bench/dashboard.py [--tasks 1000] [--rounds 5] [--quick]

Serves the dashboard (a real ``DashboardServer`` on loopback) over the control tests' stub node holding
``--tasks`` finished tasks, and loads the page ``--rounds`` times in headless Chromium. Prints the median
first contentful paint (the browser's own ``paint`` timing), the time until the node panel shows the node's
facts, and until the task table shows its rows (the newest tasks the API lists), beside the same page with
no tasks (the baseline, same run). Target: first paint of the node view < 300 ms with 1,000 tasks. Needs
chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from peerd.dashboard import DashboardServer  # noqa: E402
from tests.dashboard.conftest import DashboardOps  # noqa: E402


def serve(ops: DashboardOps) -> tuple[int, trio.lowlevel.TrioToken]:
    ready: dict[str, object] = {}
    started = threading.Event()

    async def main() -> None:
        server = DashboardServer(ops, ("127.0.0.1", 0), interval=2.0, heartbeat=5.0)
        async with trio.open_nursery() as nursery:
            ready["port"] = await nursery.start(server.run)
            ready["token"] = trio.lowlevel.current_trio_token()
            started.set()

    threading.Thread(target=trio.run, args=(main,), daemon=True).start()
    started.wait(30)
    return int(ready["port"]), ready["token"]  # type: ignore[arg-type,return-value]


def load_times(port: int, tasks: int, rounds: int) -> list[tuple[float, float, float]]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    found = []
    with tempfile.TemporaryDirectory(prefix="peerd-bench-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or ""
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                     f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver") or ""),
                                  options=options)
        try:
            for _ in range(rounds):
                started = time.perf_counter()
                driver.get(f"http://127.0.0.1:{port}/")
                WebDriverWait(driver, 30, poll_frequency=0.005).until(
                    lambda d: d.find_element("id", "node-id").text != "")
                node = time.perf_counter() - started
                WebDriverWait(driver, 60, poll_frequency=0.005).until(  # the list the API gives (its newest)
                    lambda d: d.execute_script("return document.querySelectorAll('#task-rows tr').length")
                    >= min(tasks, 1))
                table = time.perf_counter() - started
                paint = driver.execute_script(
                    "const p = performance.getEntriesByName('first-contentful-paint')[0]; return p ? p.startTime : -1")
                found.append((float(paint) / 1000, node, table))
        finally:
            driver.quit()
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        print("dashboard: needs chromium and chromium-driver (scripts/bootstrap installs them)")
        return 1
    rows = []
    for count in (0, args.tasks):
        ops = DashboardOps()
        for i in range(count):
            ops.add_task(("echo", str(i))).finish(0, f"{i}\n".encode())
        port, _ = serve(ops)
        times = load_times(port, count, rounds)
        rows.append((count, *(statistics.median(t[k] for t in times) for k in range(3))))
    print(f"dashboard page load, median of {rounds} loads (headless Chromium, loopback)")
    for count, paint, node, table in rows:
        print(f"  {count:>5} tasks: first paint {paint * 1000:6.0f} ms, node view {node * 1000:6.0f} ms, "
              f"all task rows {table * 1000:6.0f} ms")
    print(f"  target: first paint of the node view < 300 ms with {args.tasks} tasks: "
          f"{'met' if rows[1][2] < 0.3 else 'NOT met'} ({rows[1][2] * 1000:.0f} ms vs {rows[0][2] * 1000:.0f} ms "
          "with none)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
