"""serve.py as its users meet it: a real server process on a free loopback port, over HTTP, and
in headless Chromium."""

import concurrent.futures
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import metre

from conftest import ROOT, run_script


MAX_BATCH = 4
IDEOGRAPHS = "[\u4e00-\u9fff]"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """serve.py in a subprocess; its output goes to a log file, shown when a test fails."""

    def __init__(self, run_dir, tmp_path, *flags, port=None):
        self.port = port or free_port()
        self.log_path = tmp_path / f"serve-{self.port}.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "serve.py"), "--checkpoint_dir", run_dir, "--port", str(self.port),
                 "--noaccess_log", *map(str, flags)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )

    def log(self):
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait_ready(self, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve.py exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.request("GET", "/api/health", timeout=5)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"serve.py did not answer within {timeout} s:\n{self.log()}")

    def request(self, method, path, body=None, headers=None, timeout=120):
        """(status, answer as JSON or text, headers); body: a dict (sent as JSON) or raw bytes."""
        if isinstance(body, dict):
            body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            text = response.read().decode()
            is_json = response.getheader("Content-Type", "").startswith("application/json")
            return response.status, json.loads(text) if is_json else text, dict(response.getheaders())
        finally:
            connection.close()

    def poems(self, body):
        status, answer, _ = self.request("POST", "/api/poems", body)
        assert status == 200, answer
        return answer

    def health(self):
        status, answer, _ = self.request("GET", "/api/health")
        assert status == 200 and answer["status"] == "ok"
        return answer

    def stop(self, stop_signal=signal.SIGTERM, timeout=60):
        if self.process.poll() is None:
            self.process.send_signal(stop_signal)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"serve.py did not stop within {timeout} s:\n{self.log()}")


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    # A long batch wait, so that requests sent together surely share calls.
    running = Server(trained_run[0], tmp_path_factory.mktemp("serve"), "--max_batch", MAX_BATCH, "--batch_wait_ms", 300)
    try:
        yield running.wait_ready()
    finally:
        running.stop()


def clauses(poem):
    return [clause for line in poem.split("\n") for clause in line.rstrip("。").split("，")]


def assert_quatrain(poem, heads="", clause_length=5):
    """A well-formed 绝句 of that clause length whose clauses begin with heads."""
    lines = poem.split("\n")
    assert len(lines) == 2, poem
    for line in lines:
        assert re.fullmatch(f"{IDEOGRAPHS}{{{clause_length}}}，{IDEOGRAPHS}{{{clause_length}}}。", line), poem
    assert "".join(clause[0] for clause in clauses(poem)).startswith(heads), poem


# --- the API -----------------------------------------------------------------------------------

def test_acrostic_poems_with_their_settings_are_what_sample_py_writes(server, trained_run):
    answer = server.poems({"form": "五言绝句", "acrostic": "春花秋月", "num_samples": 3, "seed": 5, "temperature": 1.2})
    assert len(answer["poems"]) == 3 and len(set(answer["poems"])) > 1
    for poem in answer["poems"]:
        assert_quatrain(poem, "春花秋月")
    settings = answer["settings"]
    assert (settings["seed"], settings["num_samples"], settings["acrostic"], settings["temperature"]) == (5, 3, "春花秋月", 1.2)
    sampled = run_script("sample.py", "--checkpoint_dir", trained_run[0], "--form", "五言绝句", "--acrostic", "春花秋月",
                         "--num_samples", 3, "--seed", 5, "--temperature", 1.2).stdout
    assert sampled.strip().split("\n\n") == answer["poems"]


def test_without_a_seed_each_request_draws_one_and_reports_it(server):
    first, second = server.poems({"form": "七言绝句"}), server.poems({"form": "七言绝句"})
    assert first["settings"]["seed"] != second["settings"]["seed"]
    assert_quatrain(first["poems"][0], clause_length=7)
    again = server.poems({"form": "七言绝句", "seed": first["settings"]["seed"]})
    assert again["poems"] == first["poems"]


def test_free_text_begins_with_the_start_string_and_stops_after_four_lines(server):
    answer = server.poems({"start_string": "春风", "num_samples": 2, "seed": 1})
    for text in answer["poems"]:
        assert text.startswith("春风") and 1 <= text.count("\n") + 1 <= 4
    assert answer["settings"]["max_lines"] == 4 and answer["settings"]["form"] is None


def test_concurrent_requests_share_calls_and_each_keeps_its_seed(server):
    requests = [{"form": "五言绝句", "seed": seed} for seed in range(6)] + [{"form": "七言绝句", "seed": seed} for seed in (0, 1)]
    before = server.health()["generation_calls"]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(server.poems, requests))
    calls = server.health()["generation_calls"] - before
    # 6 五言 streams need two calls of at most MAX_BATCH, the 七言 ones a third: 3 if all came at
    # once; a request that came late may start another, but never one call each.
    assert calls <= 5, calls
    for request, answer in zip(requests, together):
        assert_quatrain(answer["poems"][0], clause_length=5 if request["form"] == "五言绝句" else 7)
    alone = [server.poems(request) for request in requests]  # one by one: a call each
    assert [answer["poems"] for answer in together] == [answer["poems"] for answer in alone]
    assert len({answer["poems"][0] for answer in alone[:6]}) == 6  # different seeds, different poems


def test_health_answers_while_a_call_runs(server):
    # Greedy decoding is not compiled at start-up: this call compiles first, so it runs for a while.
    request = {"start_string": "山", "max_length": 40, "temperature": 0}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(server.poems, request)
        answered_during_call = False
        while not pending.done():
            started = time.monotonic()
            health = server.health()
            answered_during_call |= health["generating"] and time.monotonic() - started < 1
            time.sleep(0.02)
        assert pending.result()["poems"][0].startswith("山")
    assert answered_during_call


BAD_REQUESTS = [
    # (body, headers, status, field, words the answer must hold)
    ({"form": "八言绝句"}, None, 422, "form", "五言绝句"),
    ({"form": ""}, None, 422, "form", "五言绝句"),
    ({"start_string": "龘"}, None, 422, "start_string", "never saw: 龘"),
    ({"acrostic": "春ab"}, None, 422, "acrostic", "never saw: a b"),
    ({"form": "五言绝句", "acrostic": "春花秋月夜风"}, None, 422, "acrostic", "only 4 clauses"),
    ({"form": "五言绝句", "start_string": "春风，"}, None, 422, "start_string", "does not fit"),
    ({"start_string": "春" * 65}, None, 422, "start_string", "at most 64 characters"),
    ({"temperature": "hot"}, None, 422, "temperature", "valid number"),
    ({"num_samples": 2.5}, None, 422, "num_samples", "valid integer"),
    ({"top_p": 0}, None, 422, "top_p", "greater than 0"),
    ({"num_samples": MAX_BATCH + 1}, None, 422, "num_samples", f"less than or equal to {MAX_BATCH}"),
    ({"tempreature": 1.0}, None, 422, "tempreature", "no such field"),
    (b'{"form": ', {"Content-Type": "application/json"}, 422, None, "not valid JSON"),
    (b"[1, 2]", {"Content-Type": "application/json"}, 422, None, "must be a JSON object"),
    (b"", {"Content-Type": "application/json"}, 422, None, "no body"),
    (b'{"form": "wujue"}', {"Content-Type": "text/plain"}, 422, None, "Content-Type: application/json"),
    (json.dumps({"start_string": "春" * 20_000}).encode(), {"Content-Type": "application/json"}, 413, None, "over 16384 bytes"),
]


@pytest.mark.parametrize("body, headers, status, field, words", BAD_REQUESTS,
                         ids=[f"{field or 'body'}-{status}-{words[:20]}" for _, _, status, field, words in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_goes_on(server, body, headers, status, field, words):
    answered, answer, _ = server.request("POST", "/api/poems", body, headers)
    assert (answered, answer["field"]) == (status, field), answer
    assert words in answer["detail"] and "\n" not in answer["detail"]
    assert len(server.poems({"form": "五言绝句", "seed": 0})["poems"]) == 1


def test_a_body_over_the_limit_without_a_length_is_refused_too(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    chunks = (b'{"start_string": "' + b"x" * 1000 for _ in range(20))  # no Content-Length: sent chunked
    connection.request("POST", "/api/poems", body=chunks, headers={"Content-Type": "application/json"},
                       encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "over 16384 bytes" in json.loads(response.read())["detail"]
    connection.close()
    assert server.health()["status"] == "ok"


def test_metre_is_applied_and_a_title_needs_a_run_of_titled_poems(server):
    status, answer, _ = server.request("POST", "/api/poems", {"form": "五言绝句", "metre": "rhyme", "seed": 1})
    assert status == 200 and answer["settings"]["metre"] == "rhyme"
    assert metre.rhymes(answer["poems"][0])
    status, answer, _ = server.request("POST", "/api/poems", {"form": "五言绝句", "seed": 1})
    assert status == 200 and answer["settings"]["metre"] == "strict"  # sample.py's default, reported
    assert server.health()["supports"] == {"title": False, "metre": True}  # the toy run has no titles
    status, answer, _ = server.request("POST", "/api/poems", {"form": "五言绝句", "title": "春夜"})
    assert (status, answer["field"]) == (422, "title") and "--input tang" in answer["detail"]
    status, answer, _ = server.request("POST", "/api/poems", {"metre": "strict"})
    assert (status, answer["field"]) == (422, "metre") and "set form or acrostic" in answer["detail"]


def test_openapi_describes_the_request_fields(server):
    status, document, _ = server.request("GET", "/openapi.json")
    assert status == 200 and "/api/poems" in document["paths"] and "/api/health" in document["paths"]
    schema_name = document["paths"]["/api/poems"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    fields = document["components"]["schemas"][schema_name.rsplit("/", 1)[1]]["properties"]
    assert set(fields) == {"start_string", "title", "acrostic", "form", "metre", "temperature", "top_k", "top_p",
                           "num_samples", "seed", "max_length"}


def test_the_page_is_utf8_and_loads_nothing_from_other_sites(server):
    status, page, headers = server.request("GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert '<meta charset="utf-8">' in page and "Noto Sans CJK SC" in page and 'name="viewport"' in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "default-src 'none'" in headers["content-security-policy"]


# --- starting and stopping -----------------------------------------------------------------------

@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_stops_cleanly_after_answering_the_request_in_flight(trained_run, tmp_path, stop_signal):
    # A one-poem request waits 3 s for company to fill a call of two, so the signal surely comes
    # while it is in flight.
    server = Server(trained_run[0], tmp_path, "--max_batch", 2, "--batch_wait_ms", 3000).wait_ready()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(server.poems, {"form": "五言绝句", "acrostic": "春"})
        deadline = time.monotonic() + 2
        while server.health()["requests_waiting"] == 0:
            assert time.monotonic() < deadline, "the request did not arrive"
            time.sleep(0.05)
        assert server.stop(stop_signal) == 0, server.log()
        assert_quatrain(pending.result()["poems"][0], "春")
    with pytest.raises(OSError):
        server.request("GET", "/api/health", timeout=5)


def test_a_busy_port_is_one_line_naming_it(trained_run, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_script("serve.py", "--checkpoint_dir", trained_run[0], "--port", port, check=False)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


# --- a real browser ---------------------------------------------------------------------------

def chromium_driver(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=420,900",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_a_browser_writes_an_acrostic_quatrain_on_the_page(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium_driver(tmp_path)
    try:
        driver.get(f"http://127.0.0.1:{server.port}/")
        wait = WebDriverWait(driver, 60)
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "run"), "step 300"))
        assert re.search(r"held-out loss \d+\.\d{3} nats/char", driver.find_element(By.ID, "run").text)
        Select(driver.find_element(By.NAME, "form")).select_by_value("五言绝句")
        driver.find_element(By.NAME, "acrostic").send_keys("春花秋月")
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        poems = wait.until(expected_conditions.visibility_of_all_elements_located((By.CSS_SELECTOR, ".poem")))
        assert len(poems) == 2  # the page asks for two by default
        for poem in poems:
            assert_quatrain(poem.text, "春花秋月")
        copy = driver.find_element(By.CSS_SELECTOR, ".card button")
        copy.click()
        wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, ".card button"), "已复制"))
        assert "--acrostic 春花秋月" in driver.find_element(By.CLASS_NAME, "command").text
        driver.find_element(By.NAME, "acrostic").clear()
        driver.find_element(By.NAME, "acrostic").send_keys("龘")
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "status"), "never saw: 龘"))
    finally:
        driver.quit()
