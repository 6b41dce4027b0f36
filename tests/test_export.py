"""export.py: a SavedModel that writes what sample.py writes, loaded where this repository is not."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

import generator
import saved_generator
import tuning
from conftest import ROOT, run_script

# Loads the SavedModel in a fresh interpreter that cannot import this repository and calls its
# serving_default signature once per request read from stdin (JSON: {input name: value}), each
# value converted to the dtype the signature declares; then loads it again as TensorFlow Serving
# does (a TF1 session running the signature's tensors) for the first request. Prints the answers
# ({"texts", "error"}) as JSON: {"signature": [one per request], "session": the first's}.
CLIENT = textwrap.dedent("""
    import importlib.util, json, os, sys
    saved_model, repository = sys.argv[1:]
    assert importlib.util.find_spec("generator") is None, "the repository's modules are importable"
    assert not any(os.path.isdir(p) and os.path.samefile(p, repository) for p in sys.path), sys.path
    import tensorflow as tf

    def answer(outputs):
        return {"texts": [text.decode() for text in outputs["texts"]], "error": outputs["error"].decode()}

    requests = json.load(sys.stdin)
    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    specs = serve.structured_input_signature[1]
    signature = [answer({name: value.numpy() for name, value in serve(
        **{name: tf.constant(request[name], spec.dtype) for name, spec in specs.items()}).items()})
                 for request in requests]
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        definition = tf.compat.v1.saved_model.loader.load(session, ["serve"], saved_model).signature_def
        inputs, outputs = definition["serving_default"].inputs, definition["serving_default"].outputs
        session_answer = answer(session.run({name: info.name for name, info in outputs.items()},
                                            {inputs[name].name: value for name, value in requests[0].items()}))
    print(json.dumps({"signature": signature, "session": session_answer}, ensure_ascii=False))
""")

DEFAULTS = {"max_length": 300, "max_lines": 0, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0, "form": "",
            "acrostic": ""}


def request(start_strings, **settings):
    return {"start_string": start_strings, **DEFAULTS, **settings}


def call_exported(saved_model, requests, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-P", "-c", CLIENT, str(saved_model), ROOT],
        input=json.dumps(requests), capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def generate_in_process(run_dir, streams, start="", **settings):
    """Generator.generate's texts (sample.py's, with --metre off: the export writes forms without
    metre) for a request made with `streams` copies of start."""
    config, vocab, path = generator.load_run(run_dir)
    return generator.Generator(config, vocab, path, streams).generate(start, metre="off", **settings)


@pytest.fixture(scope="module")
def saved_model(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "poems" / "1"
    run_script("export.py", "--checkpoint_dir", trained_run[0], "--out", out)
    return out


# (streams, start string, settings): free text (one stream, and sample.py's default line limit),
# a 五言绝句 (nucleus), an acrostic begun by the start string (top-k; a few streams), and free
# text on tuning.MANY_STREAMS streams, the loop's bfloat16 form.
CASES = [
    (1, "春", dict(max_length=80, max_lines=4, temperature=0.8, seed=3)),
    (1, "", dict(form="五言绝句", top_p=0.9, seed=5)),
    (3, "春", dict(acrostic="春花秋月", top_k=5, seed=7)),
    (tuning.MANY_STREAMS, "", dict(max_length=30, temperature=1.0, seed=11)),
]
# A different start string per stream (the acrostic case's shapes and filters: nothing new to compile).
MIXED = request(["春", "花月", ""], max_length=40, top_k=5, seed=1)
BAD = [
    request(["春", "春我你我"]),
    request(["春"], form="sonnet"),
    request(["春"], acrostic="春夏"),
    request(["春"], form="wujue", top_p=0.0),
    request(["春风，"], form="wujue"),
]


@pytest.fixture(scope="module")
def answers(saved_model, tmp_path_factory):
    """The exported model's answers to CASES, MIXED, BAD, then CASES[0] again, from one client
    process; and the answer to CASES[0] through a TF1 session, as TensorFlow Serving runs it."""
    requests = [request([start] * streams, **settings) for streams, start, settings in CASES]
    return call_exported(saved_model, requests + [MIXED, *BAD, requests[0]], tmp_path_factory.mktemp("client"))


@pytest.mark.slow  # the export and the client's two loads are the suite's longest fixture
def test_exported_model_writes_what_sample_py_writes_without_the_repository(trained_run, answers):
    run_dir = trained_run[0]
    answers, session_answer = answers["signature"], answers["session"]
    assert session_answer == answers[0]
    for (streams, start, settings), answer in zip(CASES, answers):
        assert answer["error"] == ""
        assert answer["texts"] == generate_in_process(run_dir, streams, start, **settings), settings
    poem = answers[1]["texts"][0]
    assert [len(line) for line in poem.splitlines()] == [12, 12]
    clauses = "".join(answers[2]["texts"][0].splitlines()).replace("，", "。").split("。")
    assert [clause[0] for clause in clauses[:4]] == list("春花秋月")
    mixed = answers[len(CASES)]
    assert mixed["error"] == ""
    assert [text[:len(start)] for text, start in zip(mixed["texts"], MIXED["start_string"])] == MIXED["start_string"]

    # sample.py itself prints the first case's texts.
    streams, start, settings = CASES[0]
    printed = run_script("sample.py", "--checkpoint_dir", run_dir, "--start_string", start, "--num_samples", streams,
                         *[f"--{name}={value}" for name, value in settings.items()]).stdout
    assert printed == "\n\n".join(text.rstrip("\n") for text in answers[0]["texts"]) + "\n"


@pytest.mark.slow
def test_bad_requests_get_an_error_and_the_model_keeps_serving(answers):
    answers = answers["signature"]
    unseen, unknown_form, unseen_head, bad_top_p, misfit = answers[len(CASES) + 1 : -1]
    assert unseen == {"texts": ["", ""],
                      "error": "the start string has characters the model never saw: 我 你; leave them out"}
    assert unknown_form["texts"] == [""]
    assert unknown_form["error"].startswith("unknown poem form 'sonnet'; choose one of 五言绝句")
    assert unseen_head["error"] == "the acrostic has characters the model never saw: 夏; leave them out"
    assert bad_top_p["error"] == "top_p must be in (0, 1]; 1 switches it off"
    assert misfit["error"].endswith("character 3 is '，' where the poem needs a Chinese character")
    assert answers[-1] == answers[0]  # after the errors, the same request gets the same texts


def test_graph_bucket_is_generators_bucket():
    lengths = [1, 63, 64, 65, 127, 128, 129, 300, 1024, 1025, saved_generator.MAX_LENGTH]
    buckets = [int(saved_generator.graph_bucket(tf.constant(n))) for n in lengths]
    assert buckets == [generator.bucket(n) for n in lengths]


def test_export_refuses_an_existing_directory_and_a_missing_run(trained_run, tmp_path):
    existing = tmp_path / "poems" / "1"
    existing.mkdir(parents=True)
    (existing / "saved_model.pb").write_bytes(b"an earlier export")
    result = run_script("export.py", "--checkpoint_dir", tmp_path / "nothing", "--out", tmp_path / "new", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "does not exist; train first" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "new").exists()
    result = run_script("export.py", "--checkpoint_dir", trained_run[0], "--out", existing, check=False)
    assert result.returncode != 0 and "exists already" in result.stderr.strip().splitlines()[-1]
    assert os.listdir(existing) == ["saved_model.pb"]
    assert (existing / "saved_model.pb").read_bytes() == b"an earlier export"
