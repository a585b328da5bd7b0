"""The real app in headless Chromium: upload an image, wait for its verdict, save a screenshot."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Trained, migrated, register_production_detector
from tests.synthetic import make_images

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (.ci/run installs it)"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_healthy(
    url: str,
    process: subprocess.Popen,  # type: ignore[type-arg]
    log: Path | None = None,
    timeout: float = 90,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"streamlit exited (its log: {log.read_text()[-2000:] if log else ''})"
            )
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("the app did not become healthy")


def test_upload_an_image_and_see_its_verdict(trained: Trained, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)  # (a SQLite URL's folder is not made for it)
    url = f"sqlite:///{data_dir / 'defects.db'}"
    migrated(url)
    register_production_detector(url, trained.weights, data_dir / "models")
    image = make_images(tmp_path / "parts", n=2)[1]
    port = _free_port()
    server_log = tmp_path / "server.log"
    env = {**os.environ, "DEFECTS_DATA_DIR": str(data_dir), "DEFECTS_DEVICE": "cpu"}
    env.pop("DEFECTS_DATABASE_URL", None)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "dashboard/app.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        # To a file, not a pipe nobody reads while the app runs: a full pipe would stop the
        # server mid-page at its next warning.
        stderr=server_log.open("w"),
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(base, server, server_log)
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(
                executable_path=str(CHROMIUM),
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 1200})
            page.goto(base, timeout=60_000)
            upload = page.locator('[data-testid="stFileUploaderDropzoneInput"]').first
            upload.wait_for(state="attached", timeout=60_000)
            upload.set_input_files(str(tmp_path / "parts" / image.name))
            verdict = page.get_by_text("PASS").or_(page.get_by_text("FAIL")).first
            verdict.wait_for(timeout=120_000)
            page.wait_for_timeout(500)
            screenshot = tmp_path / "inspect.png"
            page.screenshot(path=str(screenshot), full_page=True)
            # The History page's download, built when its button is pressed: the part is in it.
            page.goto(f"{base}/history", timeout=120_000)
            button = page.locator('[data-testid="stDownloadButton"] button').first
            button.wait_for(timeout=120_000)
            page.wait_for_timeout(1000)  # (the page's run ends with the button: let it end)
            with page.expect_download(timeout=120_000) as download:
                button.click()
            downloaded = Path(download.value.path()).read_text()
            browser.close()
        assert downloaded.startswith("captured_at,inspected_at,line,station,part,")
        assert image.name in downloaded
        assert screenshot.stat().st_size > 10_000
        shots = os.environ.get("DEFECTS_TEST_SCREENSHOTS")
        if shots:  # CI keeps the picture for people to look at
            Path(shots).mkdir(parents=True, exist_ok=True)
            (Path(shots) / "inspect.png").write_bytes(screenshot.read_bytes())
    except Exception:
        print("the app's log:", server_log.read_text()[-4000:])  # shown with the failure
        raise
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_login_is_kept_across_a_reload_and_a_logout_ends_it(tmp_path: Path) -> None:
    """In a real browser: the login cookie the page's script sets, sent with the next session
    a reload begins (AppTest has no browser to carry it)."""
    playwright = pytest.importorskip("playwright.sync_api")
    from db.accounts import add_user
    from db.models import Role
    from db.session import session_scope

    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    url = f"sqlite:///{data_dir / 'defects.db'}"
    migrated(url)
    with session_scope(url) as session:
        add_user(session, "ana", Role.REVIEWER, "right-pass")
    port = _free_port()
    server_log = tmp_path / "server.log"
    env = {**os.environ, "DEFECTS_DATA_DIR": str(data_dir), "DEFECTS_DEVICE": "cpu"}
    env.pop("DEFECTS_DATABASE_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py"]
        + ["--server.port", str(port), "--server.address", "127.0.0.1"]
        + ["--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=server_log.open("w"),
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(base, server, server_log)
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(
                executable_path=str(CHROMIUM),
                args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
            )
            page = browser.new_page()
            page.goto(base, timeout=60_000)
            page.get_by_label("Name").fill("ana")
            page.get_by_label("Password", exact=True).fill("right-pass")
            page.get_by_role("button", name="Log in").click()
            logged_in = page.get_by_text("Logged in as ana (reviewer)")
            logged_in.wait_for(timeout=60_000)
            page.wait_for_function(f"document.cookie.includes('defects_login_{port}=')")
            [cookie] = [c for c in page.context.cookies() if c["name"] == f"defects_login_{port}"]
            assert cookie["sameSite"] == "Strict" and cookie["path"] == "/"
            assert cookie["expires"] > time.time() + 3600  # (kept past this session)
            page.reload(timeout=60_000)
            logged_in.wait_for(timeout=60_000)  # no login form after the reload
            assert not page.get_by_role("button", name="Log in").count()
            page.get_by_role("button", name="Log out").click()
            page.get_by_role("button", name="Log in").wait_for(timeout=60_000)
            page.wait_for_function(f"!document.cookie.includes('defects_login_{port}=')")
            page.reload(timeout=60_000)
            page.get_by_role("button", name="Log in").wait_for(timeout=60_000)
            # Logged in and out within one session (no reload between): the cookie goes too.
            page.get_by_label("Name").fill("ana")
            page.get_by_label("Password", exact=True).fill("right-pass")
            page.get_by_role("button", name="Log in").click()
            logged_in.wait_for(timeout=60_000)
            page.wait_for_function(f"document.cookie.includes('defects_login_{port}=')")
            page.get_by_role("button", name="Log out").click()
            page.get_by_role("button", name="Log in").wait_for(timeout=60_000)
            page.wait_for_function(f"!document.cookie.includes('defects_login_{port}=')")
            browser.close()
    except Exception:
        print("the app's log:", server_log.read_text()[-4000:])  # shown with the failure
        raise
    finally:
        server.terminate()
        server.wait(timeout=30)
