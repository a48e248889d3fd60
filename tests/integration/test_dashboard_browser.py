"""The dashboard in a real headless Debian chromium (selenium + chromium-driver): a running job's
card, its progress bar moving, its endpoint table; readable at 1280x800 and on a phone."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from mpdistill.mock.server import MockServer
from mpdistill.serve.auth import ServeSettings
from tests.conftest import write_jsonl
from tests.integration.servekit import LiveServer, ended, prepare_env, wait_job

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


GOOD_KEY, BAD_KEY = "sk-dash-good-0000000001", "sk-dash-revoked-000000002"


def dashboard_task(tmp_path, url: str) -> str:
    """A priced model over three endpoints (one with a revoked key); some rows get a 429 first."""
    rows = [{"id": f"d{i}", "prompt": f"question {i}" + (" [[fail:429:1:0]]" if i % 5 == 0 else "")}
            for i in range(40)]
    src = write_jsonl(tmp_path / "dash.jsonl", rows)
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(
        "endpoints:\n"
        f"  - {{name: api_1, base_url: '{url}', api_key: {GOOD_KEY}}}\n"
        f"  - {{name: api_2, base_url: '{url}', api_key: {GOOD_KEY}, rpm: 600}}\n"
        f"  - {{name: api_old, base_url: '{url}', api_key: {BAD_KEY}}}\n")
    return (f"task_type: distill\ninput: {src}\noutput_dir: {tmp_path / 'dash'}\nendpoints: {endpoints}\n"
            "processes: 2\ncheckpoint_interval: 1\nrun_name: distill-demo\n"
            "models:\n  - {name: demo-model, model: mock-model, price_per_million_input: 2.5, "
            "price_per_million_output: 10}\n")


def cell_texts(driver, job_id: str) -> list[list[str]]:
    return driver.execute_script(
        "return [...document.querySelectorAll(`#run-${arguments[0]} table.endpoints tbody tr`)]"
        ".map(tr => [...tr.cells].map(td => td.textContent));", job_id)


def test_dashboard_shows_a_running_job_live(tmp_path, monkeypatch):
    """The page of a running job: the progress bar moves without a reload, the endpoint table shows
    each endpoint (the revoked key disabled, by name); no key on the page; screenshots at 1280x800
    and phone width are saved under tmp_path."""
    keep_screenshot = os.environ.get("MPDISTILL_SCREENSHOT_DIR")   # how docs/dashboard.png is made
    keep_screenshot = keep_screenshot and os.path.abspath(keep_screenshot)
    prepare_env(monkeypatch, tmp_path)
    driver = browser(tmp_path)
    settings = ServeSettings(watch=(str(tmp_path / "checkpoints"),), jobs_dir=str(tmp_path / "jobs"))
    try:
        with MockServer(latency_ms=250, api_keys=[GOOD_KEY]) as mock, LiveServer(settings) as server:
            status, view = server.call("POST", "/api/jobs", dashboard_task(tmp_path, mock.url),
                                       content_type="application/yaml")
            assert status == 201, view
            job_id = view["id"]
            driver.get(server.url + "/")
            assert wait_until(lambda: progress(driver, job_id) > 0), driver.page_source[:2000]
            first = progress(driver, job_id)
            assert wait_until(lambda: progress(driver, job_id) > first), "the progress bar did not move"
            assert wait_until(lambda: any(r[1] == "disabled" for r in cell_texts(driver, job_id)))
            rows = {r[0]: r for r in cell_texts(driver, job_id)}
            assert set(rows) == {"api_1", "api_2", "api_old"}, rows
            assert rows["api_1"][1] == "ok" and rows["api_old"][7].startswith("api_old:")
            assert "(max 600)" in rows["api_2"][3] or rows["api_2"][3].endswith("/ 600")
            badge = driver.execute_script(
                "return document.querySelector(`#run-${arguments[0]} .badge`).textContent;", job_id)
            assert badge == "running"
            assert GOOD_KEY not in driver.page_source and BAD_KEY not in driver.page_source
            time.sleep(2.5)   # let the chart collect a few points
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
