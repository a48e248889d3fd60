"""The dashboard in a real headless Debian chromium (selenium + chromium-driver): a running job's
card, its progress bar moving, its endpoint table; readable at 1280x800 and on a phone."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from mpdistill.mock.server import MockServer
from mpdistill.serve.auth import ServeSettings
from tests.integration.servekit import LiveServer, ended, job_config, prepare_env, wait_job

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def browser(tmp_path):
    """Debian's chromium through chromium-driver; never a downloaded browser. Fails under CI=true."""
    missing = [p for p in (CHROMIUM, DRIVER) if not shutil.which(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        message = f"the dashboard test needs {', '.join(missing)} (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + (f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,800"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)


def progress(driver, job_id: str) -> float:
    value = driver.execute_script(
        "const b = document.querySelector(`#run-${arguments[0]} .progress`);"
        "return b ? b.getAttribute('aria-valuenow') : null;", job_id)
    return float(value) if value else -1.0


def wait_until(predicate, timeout: float = 40.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_dashboard_shows_a_running_job_live(tmp_path, monkeypatch):
    """The page of a running job: the progress bar moves without a reload, the endpoint table shows the
    endpoint; screenshots at 1280x800 and phone width are saved under tmp_path."""
    keep_screenshot = os.environ.get("MPDISTILL_SCREENSHOT_DIR")   # how docs/dashboard.png is made
    keep_screenshot = keep_screenshot and os.path.abspath(keep_screenshot)
    prepare_env(monkeypatch, tmp_path)
    driver = browser(tmp_path)
    settings = ServeSettings(watch=(str(tmp_path / "ck"),), jobs_dir=str(tmp_path / "jobs"))
    try:
        with MockServer(latency_ms=300) as mock, LiveServer(settings) as server:
            status, view = server.call("POST", "/api/jobs", job_config(tmp_path, mock.url, 24, name="browser"))
            assert status == 201, view
            job_id = view["id"]
            driver.get(server.url + "/")
            assert wait_until(lambda: progress(driver, job_id) > 0), driver.page_source[:2000]
            first = progress(driver, job_id)
            assert wait_until(lambda: progress(driver, job_id) > first), "the progress bar did not move"
            cells = driver.execute_script(
                "return [...document.querySelectorAll(`#run-${arguments[0]} table.endpoints tbody td`)]"
                ".map(td => td.textContent);", job_id)
            assert cells[:2] == ["default", "ok"], cells
            badge = driver.execute_script(
                "return document.querySelector(`#run-${arguments[0]} .badge`).textContent;", job_id)
            assert badge == "running"
            time.sleep(1.5)   # let the chart collect a few points
            driver.save_screenshot(str(tmp_path / "dashboard.png"))
            driver.set_window_size(390, 844)
            time.sleep(1.2)
            overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth;")
            assert overflow <= 0, f"the page is {overflow} px wider than a phone screen"
            driver.save_screenshot(str(tmp_path / "dashboard-phone.png"))
            server.call("POST", f"/api/jobs/{job_id}/stop", None)
            wait_job(lambda j: server.call("GET", f"/api/jobs/{j}")[1], job_id, ended)
    finally:
        driver.quit()
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    assert (tmp_path / "dashboard-phone.png").stat().st_size > 5_000
    if keep_screenshot:
        shutil.copy(tmp_path / "dashboard.png", keep_screenshot)
