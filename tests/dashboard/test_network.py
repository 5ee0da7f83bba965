"""The dashboard of real ``peerd run`` processes (seed, 2 gang-enabled providers, requester), in headless
Chromium: the providers appear in the peer table; a job submitted through the CLI appears, runs and ends with
its receipt; its ``<script>`` output shows as text; the provider's earnings and the requester's spending move;
a gang of 2 shows its ranks. Screenshots of the views are written to ``$PEERD_SCREENSHOTS`` (default: the
test's temporary directory); ``docs/screenshots/`` holds the ones linked from the README.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerd.devnet import DevNet, NodeProc, free_port
from tests.dashboard.test_browser import CHROMEDRIVER, CHROMIUM, browser, text_of, wait_for

pytestmark = [
    pytest.mark.browser, pytest.mark.docker, pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]
__all__ = ["browser"]  # the fixture, shared with test_browser

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
SCRIPT = "<script>document.title='owned'</script>"
PROVIDERS = ["provider-1", "provider-2"]


class DashboardNet(DevNet):
    """Every node but the seed serves its dashboard on a loopback port of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.gangs = True
        self.ports: dict[str, int] = {}

    def config_text(self, node: NodeProc) -> str:
        text = super().config_text(node)
        if node.role == "seed":
            return text
        self.ports[node.name] = port = self.ports.get(node.name) or free_port()
        return text + f'\n[dashboard]\nlisten = "127.0.0.1:{port}"\n'


@pytest.fixture(scope="module")
def net() -> Iterator[DashboardNet]:
    with DashboardNet() as devnet:
        devnet.add_seed()
        for name in PROVIDERS:
            devnet.add(name, "provider")
        devnet.add("requester", "requester")
        devnet.wait_adverts("requester", PROVIDERS)
        yield devnet


def submit(node: NodeProc, *args: str) -> dict[str, object]:
    out = node.peerd("submit", "--image", IMAGE, "--cpus", "0.2", "--memory", "64M", *args, timeout=300)
    assert out.stdout, out.stderr
    return dict(json.loads(out.stdout))


def shots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("PEERD_SCREENSHOTS", str(tmp_path)))
    where.mkdir(parents=True, exist_ok=True)
    return where


def show(driver: object, element_id: str) -> None:
    """Scroll the element to the top of the window (for the screenshot)."""
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, element_id)  # type: ignore[attr-defined]
    driver.execute_script("arguments[0].scrollIntoView(true);", element)  # type: ignore[attr-defined]


def test_the_dashboard_of_a_real_network(net: DashboardNet, browser: object, tmp_path: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    driver = browser
    requester = net.nodes["requester"]
    out = shots(tmp_path)
    url = f"http://127.0.0.1:{net.ports['requester']}/"
    driver.set_window_size(1280, 1400)  # type: ignore[attr-defined]
    driver.get(url)  # type: ignore[attr-defined]
    wait_for(driver, "the node panel", lambda d: "requester" in text_of(d, "node-facts"))
    wait_for(driver, "both providers", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#peer-rows tr")) >= 2)

    job = submit(requester, "--wait", "--json", "--", "echo", SCRIPT)
    assert job["state"] == "succeeded", job
    row = f'#task-rows tr[data-task-id="{job["task_id"]}"]'
    wait_for(driver, "the job, succeeded", lambda d: "succeeded" in d.find_element(By.CSS_SELECTOR, row).text)
    driver.find_element(By.CSS_SELECTOR, row).click()  # type: ignore[attr-defined]
    wait_for(driver, "the job's output", lambda d: SCRIPT in text_of(d, "log"))
    wait_for(driver, "its receipt", lambda d: "receipt signed by both" in text_of(d, "task-facts"))
    assert driver.find_elements(By.CSS_SELECTOR, "#log *") == []  # type: ignore[attr-defined]
    assert driver.title != "owned"  # type: ignore[attr-defined]
    try:
        driver.switch_to.alert  # type: ignore[attr-defined]  # noqa: B018
        raise AssertionError("the job's output ran a script")
    except NoAlertPresentException:
        pass
    wait_for(driver, "the spending", lambda d: "1 receipt(s)" in text_of(d, "money-totals"))
    show(driver, "task")
    driver.save_screenshot(str(out / "dashboard-job.png"))  # type: ignore[attr-defined]

    gang = submit(requester, "--nodes", "2", "--wait", "--json", "--", "sh", "-c", "echo rank $RANK")
    assert gang["state"] == "succeeded", gang
    row = f'#task-rows tr[data-task-id="{gang["task_id"]}"]'
    wait_for(driver, "the gang", lambda d: "gang of 2" in d.find_element(By.CSS_SELECTOR, row).text)
    driver.find_element(By.CSS_SELECTOR, row).click()  # type: ignore[attr-defined]
    wait_for(driver, "its ranks", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#rank-rows tr")) == 2
             and text_of(d, "rank-rows").count("succeeded") == 2)
    show(driver, "task")
    driver.save_screenshot(str(out / "dashboard-gang.png"))  # type: ignore[attr-defined]

    ran_on = str(job["provider"])
    provider = next(n for n in PROVIDERS if net.nodes[n].status()["peer_id"] == ran_on)
    driver.get(f"http://127.0.0.1:{net.ports[provider]}/")  # type: ignore[attr-defined]
    wait_for(driver, "the provider's earnings", lambda d: "Earned" in text_of(d, "money-totals")
             and "0 receipt(s); spent" not in text_of(d, "money-totals"))
    driver.save_screenshot(str(out / "dashboard-provider.png"))  # type: ignore[attr-defined]
