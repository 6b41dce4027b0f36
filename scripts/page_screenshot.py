"""Takes docs/serve.png: serve.py's page for a run, filled in and answered, in headless Chromium.

    python -m scripts.page_screenshot --name default --out docs/serve.png

It starts serve.py on a free loopback port, writes a 五言绝句 with an acrostic as a visitor would
(the same way tests/test_serve.py's browser test drives the page), and saves the window. Needs
Debian's chromium and chromium-driver, and CJK fonts (fonts-noto-cjk) for the poems to show.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("name", "default", "run name: serves checkpoints/<name>")
flags.DEFINE_string("out", os.path.join(ROOT, "docs", "serve.png"), "where to save the PNG")
flags.DEFINE_string("acrostic", "春夏秋冬", "the acrostic typed into the page")
flags.DEFINE_integer("seed", 8, "the seed typed into the page")
FLAGS = flags.FLAGS


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(port, server, seconds=600):
    deadline = time.time() + seconds
    while time.time() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5)
            return
        except OSError:
            time.sleep(1)
    raise SystemExit("serve.py did not come up; run it by hand to see why")


def main(argv):
    del argv
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "serve.py"), "--name", FLAGS.name, "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(port, server)
        with tempfile.TemporaryDirectory() as profile:
            options = webdriver.ChromeOptions()
            options.binary_location = shutil.which("chromium")
            for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=900,860",
                         f"--user-data-dir={profile}"):
                options.add_argument(flag)
            driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
            try:
                driver.get(f"http://127.0.0.1:{port}/")
                Select(driver.find_element(By.NAME, "form")).select_by_value("五言绝句")
                driver.find_element(By.NAME, "acrostic").send_keys(FLAGS.acrostic)
                driver.find_element(By.NAME, "num_samples").clear()
                driver.find_element(By.NAME, "num_samples").send_keys("2")
                driver.find_element(By.NAME, "seed").send_keys(str(FLAGS.seed))
                driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
                WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".poem"))
                driver.save_screenshot(FLAGS.out)
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"saved {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
