"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium).

The page is served by a real ``DashboardServer`` over the stub node. It checks that the node panel and the
task list render, that a job's output that looks like HTML shows as text (no element is created, no script
runs), and that stopping the server shows "daemon unreachable" until it is back. Skipped, with the reason,
only where chromium or chromedriver is not installed (scripts/bootstrap installs both; so does CI).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator

import pytest
import trio

from .conftest import DashboardOps, serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]

XSS = "<img src=x onerror=alert(1)>"
WAIT = 30.0  # seconds for any one thing to appear on the page


@pytest.fixture
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="peerd-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM or ""
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER or ""), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(driver: object, what: str, check: Callable[[object], object]) -> None:
    """Until ``check(driver)`` is true, at most WAIT seconds (Selenium polls)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT).until(check, message=f"the page never showed {what}")


def text_of(driver: object, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)  # type: ignore[attr-defined]


async def test_the_page_renders_escapes_job_output_and_shows_an_unreachable_daemon(
    nursery: trio.Nursery, browser: object
) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    ops = DashboardOps()
    evil = ops.add_task(("echo", XSS))
    evil.finish(0, f"{XSS}\nsecond line\n".encode())
    ops.add_task(("hang",))
    waiting = ops.add_task(("later",))
    waiting.state = "queued"  # no provider has room: its place among the requester's queued tasks
    waiting.queue = {"position": 2, "priority": 0, "queued_at": 1700000000.0, "deadline": 1700003600.0}
    served = await serve(nursery, ops, interval=0.2)
    url = f"http://127.0.0.1:{served.port}/"
    driver = browser

    def render_and_open_the_task() -> None:
        driver.get(url)  # type: ignore[attr-defined]
        wait_for(driver, "the node panel", lambda d: "provider" in text_of(d, "node-facts"))
        assert "1h 2m 5s" in text_of(driver, "node-facts")  # uptime 3725 s
        wait_for(driver, "the capacity panel", lambda d: "2.00 leased / 8.00" in text_of(d, "capacity-body"))
        wait_for(driver, "the tasks", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#task-rows tr")) == 3)
        assert "queued #2" in text_of(driver, "task-rows")
        assert text_of(driver, "peer-rows").count("0.0100") == 1  # the peer's CPU-hour price
        assert "0.75" in text_of(driver, "peer-rows")  # its reputation score (the stub's)
        driver.find_element(By.CSS_SELECTOR, f'#task-rows tr[data-task-id="{evil.task_id}"]').click()  # type: ignore[attr-defined]
        wait_for(driver, "the job's output", lambda d: "second line" in text_of(d, "log"))
        wait_for(driver, "the attempts", lambda d: "succeeded" in text_of(d, "attempt-rows"))

    def output_is_text() -> None:
        assert XSS in text_of(driver, "log")
        assert driver.find_elements(By.CSS_SELECTOR, "img") == []  # type: ignore[attr-defined]
        assert driver.find_elements(By.CSS_SELECTOR, "#log *") == []  # type: ignore[attr-defined]
        try:
            driver.switch_to.alert  # type: ignore[attr-defined]  # noqa: B018
            raise AssertionError("the job's output ran a script")
        except NoAlertPresentException:
            pass
        assert driver.find_element(By.ID, "unreachable").is_displayed() is False  # type: ignore[attr-defined]

    def banner_shows() -> None:
        wait_for(driver, "the unreachable banner", lambda d: d.find_element(By.ID, "unreachable").is_displayed())
        assert "Daemon unreachable" in text_of(driver, "unreachable")

    def banner_goes() -> None:
        wait_for(driver, "the banner gone", lambda d: not d.find_element(By.ID, "unreachable").is_displayed())

    await trio.to_thread.run_sync(render_and_open_the_task)
    await trio.to_thread.run_sync(output_is_text)
    served.scope.cancel()
    await trio.to_thread.run_sync(banner_shows)
    await serve(nursery, ops, port=served.port, interval=0.2)  # the daemon is back on the same port
    await trio.to_thread.run_sync(banner_goes)
