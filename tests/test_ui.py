"""The MLflow UI over a zoo registry made by the product, checked in a real headless browser.

A tiny zoo is built and registered with the product's Python API, a real ``mlflow server`` serves it on
loopback, the REST API is checked to serve the zoo models and their ``tans.*`` tags, and headless
Chromium (driven by Selenium through the system chromedriver; nothing is ever downloaded) opens the
Models page, a zoo model's page and a version page and finds the zoo names and tags in the rendered DOM.

Needs Chromium: ``scripts/install_browser.sh`` (Debian packages ``chromium`` and ``chromium-driver``).
Without it the test fails, never skips: CI installs it. Screenshots go to the test's tmp dir, and also to
``$TANS_UI_SCREENSHOT_DIR`` when set (that is how ``docs/zoo-models.png`` and ``docs/zoo-version.png``
are made).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tans_registry import tracking
from tans_registry.registry.codec import decode_embedding
from tans_registry.registry.config import RegisterConfig
from tans_registry.registry.register import register_zoo
from tans_registry.zoo.build import build_zoo
from tans_registry.zoo.config import ZooConfig

pytestmark = pytest.mark.ui

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = ("install it with `scripts/install_browser.sh` (as root: apt-get update && "
                "apt-get install -y chromium chromium-driver)")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--no-proxy-server", "--lang=en-US",
                  "--force-device-scale-factor=1", "--window-size=1400,1000")
SERVER_START_TIMEOUT_S = 90   # measured ~17 s on 2 busy cores
PAGE_TIMEOUT_S = 60           # per page: the React bundle loads, then the registry calls return
POLL_S = 0.5
GROUPS = {"zoo.digits": "digits", "zoo.cells": "cells"}
N_SUBNETS = 3
VERSION_TAGS = ("tans.dataset", "tans.accuracy", "tans.n_params", "tans.flops", "tans.arch",
                "tans.model_embedding", "tans.network_id", "tans.arch_hash")

# talk to the loopback server directly, whatever proxy the environment names
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------------------------- helpers

def _require_browser():
    """Chromium, chromedriver and Selenium, or a failure that says how to install them."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not (p.is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.fail(f"the UI test needs headless Chromium, but {', '.join(missing)} is missing: "
                    f"{INSTALL_HINT}", pytrace=False)
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("the UI test needs Selenium: `.venv/bin/pip install -e '.[dev]'`", pytrace=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 30.0):
    with _HTTP.open(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def _api(base: str, endpoint: str, **params) -> dict:
    query = urllib.parse.urlencode(params)
    return _get(f"{base}/api/2.0/mlflow/{endpoint}" + (f"?{query}" if query else ""))


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no output)"


@contextmanager
def mlflow_server(work: Path, logs: Path):
    """A real ``mlflow server`` over the work directory's SQLite store, on loopback; always stopped."""
    exe = Path(sys.executable).with_name("mlflow")
    if not exe.is_file():
        exe = Path(shutil.which("mlflow") or "mlflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    # no telemetry; no background job runner (a dozen Huey worker processes, for GenAI scorers only)
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", NO_PROXY="127.0.0.1,localhost",
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    logs.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # a free port can be taken between picking and binding it: pick again
        port = _free_port()
        cmd = tracking.server_command(f"sqlite:///{work / 'mlflow.db'}", work / "mlruns", port=port,
                                      mlflow_exe=exe, workers=1)
        out, err = logs / f"server-{attempt}.out", logs / f"server-{attempt}.err"
        with open(out, "wb") as fout, open(err, "wb") as ferr:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=fout, stderr=ferr,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    break
                try:
                    with _HTTP.open(f"{base}/health", timeout=5) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"`mlflow server` did not answer {base}/health within "
                                f"{SERVER_START_TIMEOUT_S} s.\ncommand: {' '.join(cmd)}\n"
                                f"stderr (tail):\n{_tail(err)}", pytrace=False)
                time.sleep(POLL_S)
            if proc.poll() is not None:
                text = _tail(err)
                if "address already in use" in text.lower() and attempt < 2:
                    continue
                pytest.fail(f"`mlflow server` exited with status {proc.returncode} before answering.\n"
                            f"command: {' '.join(cmd)}\nstderr (tail):\n{text}", pytrace=False)
            yield base
            return
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and the workers it started (its own process group, nothing else)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:  # workers that outlived the CLI process
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=10)


@contextmanager
def chromium(profile_dir: Path):
    """Headless Chromium through the system chromedriver; Selenium Manager is never consulted."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # belt and braces (the explicit driver path already skips Selenium Manager): never download
    saved = {k: os.environ.get(k) for k in ("SE_OFFLINE", "SE_AVOID_STATS")}
    os.environ.update(SE_OFFLINE="true", SE_AVOID_STATS="true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    profile_dir.mkdir(parents=True, exist_ok=True)
    opts.add_argument(f"--user-data-dir={profile_dir}")
    service = Service(str(CHROMEDRIVER), log_output=str(profile_dir.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT_S)
        driver.set_script_timeout(30)
        yield driver
    finally:
        driver.quit()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _page_text(driver) -> str:
    return driver.execute_script("return document.body ? document.body.innerText : ''") or ""


def _dismiss_dialogs(driver) -> int:
    """Close every visible modal dialog (MLflow shows an announcement over the Models page)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    closed = 0
    for dialog in driver.find_elements(By.CSS_SELECTOR, '[role="dialog"]'):
        try:
            if not dialog.is_displayed():
                continue
            buttons = [b for b in dialog.find_elements(By.CSS_SELECTOR, 'button[aria-label="Close"]')
                       if b.is_displayed()]
            if buttons:
                buttons[0].click()
            else:
                dialog.send_keys(Keys.ESCAPE)
            closed += 1
        except WebDriverException:  # stale while animating: seen again on the next poll
            closed += 1
    return closed


def _close_assistant_panel(driver) -> None:
    """Best effort: fold MLflow's chat side panel so the screenshots show the registry."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        for b in driver.find_elements(By.CSS_SELECTOR, '[data-component-id="mlflow.assistant.chat_panel.close"]'):
            if b.is_displayed():
                b.click()
    except WebDriverException:
        pass


def open_page(driver, url: str, needles: list[str], shots: Path, name: str) -> str:
    """Load ``url`` and poll the DOM text until every needle shows and no dialog covers the page.

    Each page is a fresh document: the app routes by URL fragment, so a plain ``get`` from one zoo page
    to the next would keep the previous page's text (which holds most needles) until React re-renders.
    """
    driver.get("about:blank")
    driver.get(url)
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    clear_polls, text = 0, ""
    while time.monotonic() < deadline:
        text = _page_text(driver)
        covered = _dismiss_dialogs(driver)
        if all(n in text for n in needles) and not covered:
            clear_polls += 1
            if clear_polls >= 2:  # stable: content there, and no late dialog popped up in between
                _close_assistant_panel(driver)
                return text
        else:
            clear_polls = 0
        time.sleep(POLL_S)
    driver.save_screenshot(str(shots / f"{name}-timeout.png"))
    missing = [n for n in needles if n not in text]
    pytest.fail(f"{url}: after {PAGE_TIMEOUT_S} s the page still lacks {missing} "
                f"(screenshot {shots / (name + '-timeout.png')}); page text (head):\n{text[:1500]}",
                pytrace=False)


def _collapse_description(driver) -> None:
    """Best effort: fold the version's long model card so the Tags table is in the first screen."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        for header in driver.find_elements(By.CSS_SELECTOR, '[role="button"][aria-expanded="true"]'):
            if header.text.strip().startswith("Description"):
                header.find_element(By.XPATH, "./*[1]").click()
                break
        tags = driver.find_elements(By.XPATH, "//*[normalize-space(text())='Tags']")
        if tags:
            driver.execute_script("arguments[0].scrollIntoView({block: 'nearest'})", tags[0])
    except WebDriverException:
        pass


def screenshot(driver, filename: str, shots: Path, publish: bool = True) -> Path:
    time.sleep(0.5)  # let the last re-render (dialog fade-out, collapse animation) settle
    path = shots / filename
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, f"{path} is not a real screenshot"
    extra = os.environ.get("TANS_UI_SCREENSHOT_DIR")
    if extra and publish:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(extra) / filename)
    return path


def _tags(entity: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in entity.get("tags", [])}


# ------------------------------------------------------------------------------------------------ test

def test_mlflow_ui_shows_the_zoo_registry(tiny_data_dir, tmp_path, request):
    def record_property(name, value):  # kept with the test's report (junit xunit1 <property>)
        request.node.user_properties.append((name, value))

    _require_browser()  # first: no point building a zoo when the browser is missing

    # 1. a tiny zoo, built and registered by the product
    work = tmp_path / "work"
    t0 = time.perf_counter()
    build_zoo(ZooConfig(profile="quick", base_epochs=0, datasets=("digits", "cells"), subnets=N_SUBNETS, epochs=1,
                        data_dir=str(tiny_data_dir), work_dir=str(work), progress=False))
    rec = register_zoo(RegisterConfig(work_dir=str(work), progress=False))
    assert rec.models == {name: N_SUBNETS for name in GROUPS}
    record_property("zoo_build_register_s", round(time.perf_counter() - t0, 1))

    import mlflow

    tracking.setup(work)
    client = mlflow.MlflowClient()
    written = {(v.name, str(v.version)): dict(v.tags)
               for name in GROUPS for v in client.search_model_versions(f"name = '{name}'")}
    assert len(written) == len(GROUPS) * N_SUBNETS

    shots = tmp_path / "screenshots"
    shots.mkdir()
    with mlflow_server(work, tmp_path / "server-logs") as base:
        # 2. the REST API serves the zoo models and every tag the product wrote
        page = _api(base, "registered-models/search", max_results=5)
        models = {m["name"]: m for m in page["registered_models"]}
        assert set(models) == set(GROUPS)
        for name, group in GROUPS.items():
            assert _tags(models[name])["tans.kind"] == "zoo"
            assert _tags(models[name])["tans.dataset"] == group
        assert {m["name"] for m in _api(base, "registered-models/search", filter="name LIKE 'zoo.%'",
                                        max_results=5)["registered_models"]} == set(GROUPS)

        served = {}
        for name, group in GROUPS.items():
            versions = _api(base, "model-versions/search", filter=f"name='{name}'")["model_versions"]
            assert sorted(int(v["version"]) for v in versions) == list(range(1, N_SUBNETS + 1))
            for v in versions:
                tags = _tags(v)
                served[(name, v["version"])] = tags
                assert set(VERSION_TAGS) <= set(tags), f"{name} v{v['version']} lacks tags"
                assert tags["tans.dataset"] == group
                assert 0.0 <= float(tags["tans.accuracy"]) <= 1.0
                assert int(tags["tans.n_params"]) > 0 and int(tags["tans.flops"]) > 0
                assert set(json.loads(tags["tans.arch"])) == {"ks", "e", "d"}
                emb = decode_embedding(tags["tans.model_embedding"])
                assert emb.shape == (45 + 1280,) and np.isfinite(emb).all()
        assert served == written  # byte for byte what register_zoo wrote

        # the version's source folder is browsable through the server's artifact API
        v1 = next(v for v in _api(base, "model-versions/search", filter="name='zoo.digits'")["model_versions"]
                  if v["version"] == "1")
        files = {f["path"] for f in _api(base, "artifacts/list", run_id=v1["run_id"],
                                         path="registry/n0")["files"]}
        assert "registry/n0/MLmodel" in files

        # REST time of a search for a page of 5 models: one cold call, then the median of 5 warm ones
        def timed():
            t = time.perf_counter()
            _api(base, "registered-models/search", max_results=5)
            return (time.perf_counter() - t) * 1000.0

        cold_ms = timed()
        warm_ms = statistics.median(timed() for _ in range(5))
        record_property("rest_search_5_models_cold_ms", round(cold_ms, 1))
        record_property("rest_search_5_models_ms", round(warm_ms, 1))
        print(f"\nREST registered-models/search (page of 5): cold {cold_ms:.1f} ms, median {warm_ms:.1f} ms")
        assert warm_ms < 5000, f"a page of 5 models took {warm_ms:.0f} ms"

        # 3. the UI, in headless Chromium
        digits_v1 = served[("zoo.digits", "1")]
        t1 = time.perf_counter()
        with chromium(tmp_path / "chromium-profile") as driver:
            text = open_page(driver, f"{base}/#/models", ["Registered Models", *GROUPS], shots, "models")
            assert "zoo.digits" in text and "zoo.cells" in text
            screenshot(driver, "zoo-models.png", shots)

            text = open_page(driver, f"{base}/#/models/zoo.digits",
                             ["zoo.digits", "Versions", "Version 1", f"Version {N_SUBNETS}", "tans.dataset"],
                             shots, "model")
            screenshot(driver, "zoo-model.png", shots, publish=False)

            text = open_page(driver, f"{base}/#/models/zoo.digits/versions/1",
                             ["Version 1", "Tags", "tans.accuracy", "tans.dataset", "tans.n_params",
                              "tans.flops", "tans.arch"], shots, "version")
            assert digits_v1["tans.accuracy"] in text  # the values, not only the keys
            assert digits_v1["tans.n_params"] in text and digits_v1["tans.arch_hash"] in text
            _collapse_description(driver)
            screenshot(driver, "zoo-version.png", shots)
        record_property("browser_s", round(time.perf_counter() - t1, 1))
