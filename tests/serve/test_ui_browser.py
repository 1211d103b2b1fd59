"""The web page in a real headless browser (Debian's chromium driven by selenium through chromedriver): the page
loads, an example video is picked, a question typed and sent, and the answer that streams into the page equals
``Aurora.ask`` on the same video and question at temperature 0; a follow-up question is answered without reading
the video again. The server (uvicorn, 127.0.0.1, a free port) runs in a thread and is stopped at the end.

Skips, with the reason, where no chromium / chromedriver is installed (``apt-get install chromium
chromium-driver``; docs/serving.md). ``AURORA_UI_SCREENSHOT=PATH`` saves a screenshot of the page there (how the
one in docs/img/ was taken, by hand)."""
from __future__ import annotations

import os
import random
import shutil
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from aurora.data.synthetic import render
from aurora.data.video import encode_mp4
from infer.servefix import video_bytes, write_checkpoint

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("no headless browser: install Debian's chromium and chromedriver (apt-get install chromium "
                "chromium-driver) to run the page's browser test", allow_module_level=True)
pytest.importorskip("selenium", reason="the browser test drives chromium with selenium (pip install 'aurora-long[dev]')")
pytest.importorskip("gradio", reason="the web page needs gradio (pip install 'aurora-long[dev]')")

Q1, Q2 = "What colour is the shape?", "Which way does it move?"


@contextmanager
def serving(app):
    """uvicorn in a thread on a socket bound to a free port of 127.0.0.1; stopped on exit."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))  # lifespan on: it starts gradio's queue
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the page's server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "the server thread did not stop"


@contextmanager
def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1400", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)  # the installed driver: nothing downloaded
    try:
        yield driver
    finally:
        driver.quit()


def test_a_question_in_the_browser_gets_the_answer_of_aurora_ask(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from aurora import Aurora
    from aurora.serve.ui import create_ui_app

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(encode_mp4(render("red", "square", "right", 12, 64, random.Random(0))))
    (videos / "other.mp4").write_bytes(video_bytes(1))
    model = Aurora.from_pretrained(write_checkpoint(tmp_path / "run"), device="cpu")
    ref1 = model.ask(videos / "clip.mp4", Q1, temperature=0.0).text
    # the follow-up is answered from the state read for the first question (the question before the video)
    ref2 = model.answer(model.read(videos / "clip.mp4", context=model.engine.lead_context(Q1)), Q2).text
    app = create_ui_app(model, videos)
    page = app.state.aurora_ui
    assert ref1
    with serving(app) as url, chromium() as driver:
        wait = WebDriverWait(driver, 60, poll_frequency=0.1)
        driver.get(url + "/")  # redirects to /ui/
        label = wait.until(EC.element_to_be_clickable(
            (By.XPATH, "//*[@id='aurora-examples']//label[.//*[normalize-space()='clip.mp4']]")))
        label.click()
        wait.until(lambda d: "sha256" in d.find_element(By.ID, "aurora-info").text)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#aurora-frames img")) >= 1)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#aurora-merge img"))

        def ask(question, answered):
            box = driver.find_element(By.CSS_SELECTOR, "#aurora-question textarea")
            box.clear()
            box.send_keys(question)
            driver.find_element(By.ID, "aurora-ask").click()
            wait.until(lambda d: f"{answered} question(s) answered" in d.find_element(By.ID, "aurora-info").text)
            bots = driver.find_elements(By.CSS_SELECTOR, "#aurora-chat [data-testid='bot']")
            return " ".join(bots[-1].text.split())

        assert ask(Q1, 1) == " ".join(ref1.split())
        assert page.reads == 1
        assert ask(Q2, 2) == " ".join(ref2.split())
        assert page.reads == 1  # the follow-up came from the kept state
        shot = os.environ.get("AURORA_UI_SCREENSHOT")
        if shot:
            driver.save_screenshot(shot)
