"""A real browser (Debian's headless Chromium) uses the MLflow UI through nginx."""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.services import TEST_ARTIFACTS, Stack

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Chromium's profile and its singleton-socket directory (made under TMPDIR) go in a
    # directory of this test's, removed afterwards, so nothing of them outlives it. A short
    # path: the socket's must fit a Unix socket address (108 bytes), pytest's tmp_path does not.
    scratch = Path(tempfile.mkdtemp(prefix="chromium-"))
    options = webdriver.ChromeOptions()
    options.add_argument(f"--user-data-dir={scratch / 'profile'}")
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in (
        "--headless",
        "--no-sandbox",  # as root in CI
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    service = Service(
        executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver",
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    try:
        driver = webdriver.Chrome(options=options, service=service)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_ui_shows_an_experiment_created_by_the_test(stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    name = f"browser-check-{uuid.uuid4().hex[:8]}"
    created = requests.post(
        f"{stack.url}/api/2.0/mlflow/experiments/create",
        json={"name": name},
        auth=stack.auth,
        timeout=30,
    )
    assert created.status_code == 200
    token = base64.b64encode(f"{stack.username}:{stack.password}".encode()).decode()
    # The login goes on every request the page makes, as a browser sends it after the prompt.
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )
    browser.get(f"{stack.url}/#/experiments")
    TEST_ARTIFACTS.mkdir(exist_ok=True)
    screenshot = TEST_ARTIFACTS / "mlflow-ui-experiments.png"
    try:
        WebDriverWait(browser, 60).until(
            expected_conditions.presence_of_element_located(
                (By.XPATH, f"//*[contains(text(), '{name}')]")
            )
        )
    finally:
        browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    # The page's own API calls went through nginx with the login and were all answered.
    # (Requests from web workers do not get CDP's extra header, so they are left out.)
    output = stack.wait_for_output(re.compile(r"/ajax-api/2\.0/mlflow/experiments/search.*Chrome"))
    logs = [
        entry
        for entry in output.splitlines()
        if "HeadlessChrome" in entry and f"user={stack.username}" in entry and "ajax-api" in entry
    ]
    assert any("experiments/search" in entry and '" 200 ' in entry for entry in logs), logs
    # 404 is MLflow's own answer to the UI's probe of the (absent) auth app's /users/current.
    refused = [entry for entry in logs if any(f'" {code} ' in entry for code in (401, 403, 429))]
    failed = [entry for entry in logs if '" 5' in entry.split("HTTP/1.1", 1)[1][:4]]
    assert refused == []
    assert failed == []
