"""Suite-wide: under CI (the ``CI`` environment variable set, as ``.ci/run`` does) a skipped test fails.

A few tests skip where the machine lacks what they need (Chromium for the dashboard's browser test, root for
the bounded /out tmpfs). ``scripts/bootstrap`` on a fresh Debian, as root, provides all of it, so in CI a
skip means a broken setup that would otherwise pass unnoticed: it is reported as a failure, with its reason.
Deselecting (``-m "not docker"``) is not skipping and stays allowed.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

SKIPS_FAIL = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if SKIPS_FAIL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run every test: {reason}"
