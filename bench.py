"""Throughput figures on this machine, one JSON line per measurement. Never part of the tests.

    python bench.py                        # every measurement, about 3 s of timing each
    python bench.py --only sample_small_1,sample_medium_1 --seconds 5
    python bench.py --list                 # the measurements and what they time

Sampling measurements load a randomly initialised model of the size named (small: 2x128 units,
embedding 128; medium: 2x512 units, embedding 256; vocabulary 3,501 characters) from a checkpoint
written to a temporary directory, exactly as sample.py loads a trained run; random weights cost
the same per character as trained ones. Each line holds:
  name, description, and the measured figures; for sampling:
  chars_per_s   characters kept per second of generation, all streams together (burn-in included
                in the time, not in the count);
  chars_per_cpu_s  the same per second of this process' CPU time: on a busy machine, close to
                what one stream (one thread) reaches on a quiet one; 64 streams may use two threads;
  load_s        startup: reading the checkpoint and building the generator;
  compile_s     the first generate() call, which traces and XLA-compiles the loop;
  load_avg      the 1-minute load average when the measurement started: other work on the
                machine lowers every figure, so compare runs on a quiet machine.
For poems of a form (train.py's default model, random weights, a vocabulary of 3,501 characters of
the 平水韵 table, temperature 0.8):
  seconds_per_call  one generate() call writing all the poems, drafts included; random weights
                write no early line break, so each stream's burn-in takes all its 100 steps;
  poems_per_s   poems returned per second.
For training (random ids, vocabulary 3,501; small batches 32x26, medium 64x64):
  chars_per_s   characters trained per second through train.py's own compiled training call
                (tuning.STEPS_PER_CALL steps a call, its --steps_per_execution default);
  baseline_chars_per_s, ratio   the same model as a plain Keras Sequential trained by model.fit
                with default settings, measured in the same run in alternating turns (8 of
                --seconds / 8 each side), and our speed over it: the median of the turns' ratios,
                listed in round_ratios;
  peak_rss_mb   (memory lines) peak resident memory of a fresh process doing only that work.
For serving (serve_load; a random model of train.py's default size, or --serve_checkpoint_dir), for
batched (--max_batch 64) and unbatched (--max_batch 1) alike: requests_per_s (answered without
error; one poem each), p50_ms and p99_ms latency of a request as its client sees it, errors,
generation_calls (generate() calls the server made); speedup is batched over unbatched requests/s.
The clients run in this process (one asyncio event loop), on the same cores as the server.
A measurement is a function returning a dict; add new ones to MEASUREMENTS.
"""

import dataclasses
import functools
import json
import os
import tempfile
import time

from absl import app, flags

# TensorFlow and the project's modules are imported inside the measurements, so that --help and
# --list answer at once.

flags.DEFINE_list("only", None, "comma-separated measurement names to run (default: all; see --list)")
flags.DEFINE_float("seconds", 3.0, "timing per measurement after warm-up, in seconds", lower_bound=0)
flags.DEFINE_boolean("list", False, "print the measurement names and descriptions, then exit")
flags.DEFINE_boolean("report_rss", False, "add the process's peak resident memory to every line")
flags.DEFINE_string("serve_checkpoint_dir", None, "serve_load: serve this trained run instead of a random model of the "
                    "default size")
FLAGS = flags.FLAGS

VOCAB_SIZE = 3501
ROUNDS = 8  # alternating turns of our steps and model.fit in train_vs_baseline


@dataclasses.dataclass(frozen=True)
class Measurement:
    name: str
    description: str
    run: object  # () -> dict of figures


@dataclasses.dataclass(frozen=True)
class ModelSize:
    name: str
    lstm_size: int
    embedding_size: int
    num_layers: int = 2


SMALL = ModelSize("small", lstm_size=128, embedding_size=128)
MEDIUM = ModelSize("medium", lstm_size=512, embedding_size=256)
DEFAULT = ModelSize("default", lstm_size=192, embedding_size=128, num_layers=1)  # train.py's (run_dir.ModelConfig)


def synthetic_vocab():
    """VOCAB_SIZE entries like the poetry corpus': CJK ideographs, ，。 and the line break."""
    import read_utils

    punctuation = ["，", "。", "\n"]
    ideographs = [chr(0x4E00 + i) for i in range(VOCAB_SIZE - 1 - len(punctuation))]
    return read_utils.Vocab([read_utils.UNKNOWN] + ideographs + punctuation)


def metre_vocab():
    """synthetic_vocab's layout, its ideographs taken from the 平水韵 table, so that every slot of a
    metre has characters to choose from."""
    import metre
    import poem_forms
    import read_utils

    punctuation = ["，", "。", "\n"]
    in_table = metre.chars_of_tone(metre.LEVEL) | metre.chars_of_tone(metre.OBLIQUE)
    known = sorted(char for char in in_table if poem_forms.is_ideograph(char))
    return read_utils.Vocab([read_utils.UNKNOWN] + known[: VOCAB_SIZE - 1 - len(punctuation)] + punctuation)


def write_random_run(directory, size, vocab=None):
    """A run directory (config.json, vocab.json, checkpoint) of a randomly initialised model; vocab
    defaults to synthetic_vocab()."""
    import tensorflow as tf

    import model as model_lib
    import run_dir

    vocab = vocab or synthetic_vocab()
    config = run_dir.ModelConfig(
        vocab_size=len(vocab), embedding_size=size.embedding_size, lstm_size=size.lstm_size, num_layers=size.num_layers
    )
    net = model_lib.build_model(config)
    tf.train.CheckpointManager(model_lib.weights_checkpoint(net), directory, max_to_keep=1).save()
    vocab.save(os.path.join(directory, "vocab.json"))
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump({"format": run_dir.CONFIG_FORMAT, "model": config.to_json()}, f)


def measure_sampling(size, streams, temperature=0.8, top_p=1.0, max_length=2000):
    """Loads a random model of `size` as sample.py would and times generate() on `streams` streams."""
    import generator

    with tempfile.TemporaryDirectory() as directory:
        write_random_run(directory, size)
        start = time.perf_counter()
        config, vocab, path = generator.load_run(directory)
        # "\n" banned: random weights end lines anywhere, and generate() cuts text back to whole lines.
        gen = generator.Generator(config, vocab, path, streams, banned="\n")
        load_s = time.perf_counter() - start
    generate = functools.partial(gen.generate, max_length=max_length, temperature=temperature, top_p=top_p)
    start = time.perf_counter()
    generate(seed=0)
    compile_s = time.perf_counter() - start
    chars, elapsed, cpu = timed_texts(generate, FLAGS.seconds)
    return {
        "model": dataclasses.asdict(size) | {"vocab_size": VOCAB_SIZE},
        "streams": streams,
        "temperature": temperature,
        "top_p": top_p,
        "chars_per_s": round(chars / elapsed),
        "chars_per_cpu_s": round(chars / cpu),
        "chars": chars,
        "seconds": round(elapsed, 3),
        "load_s": round(load_s, 3),
        "compile_s": round(compile_s, 3),
    }


def timed_texts(generate, seconds):
    """Calls generate(seed=...) with seeds 1, 2, ... for at least `seconds` (and once); returns
    (characters of the texts, elapsed seconds, CPU seconds of this process)."""
    chars, elapsed, cpu, calls = 0, 0.0, 0.0, 0
    while elapsed < seconds or calls == 0:
        start, start_cpu = time.perf_counter(), time.process_time()
        texts = generate(seed=calls + 1)
        elapsed += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        chars += sum(map(len, texts))
        calls += 1
    return chars, elapsed, cpu


def measure_exported(size, streams, temperature=0.8, max_length=2000):
    """export.py's SavedModel of a random model of `size`, loaded back with tf.saved_model.load,
    and the Generator it was exported from (sample.py's), on `streams` streams, timed in ROUNDS
    alternating turns of --seconds / ROUNDS each (as train_vs_baseline). Both write the same texts."""
    import numpy as np
    import tensorflow as tf

    import generator
    import saved_generator

    with tempfile.TemporaryDirectory() as directory:
        write_random_run(directory, size)
        config, vocab, path = generator.load_run(directory)
        gen = generator.Generator(config, vocab, path, streams, banned="\n")  # as measure_sampling
        saved = os.path.join(directory, "saved")
        saved_generator.save(saved_generator.SavedGenerator(gen), saved)
        start = time.perf_counter()
        serve = tf.saved_model.load(saved).signatures["serving_default"]
        load_s = time.perf_counter() - start

    def exported(seed):
        outputs = serve(start_string=tf.fill([streams], ""), max_length=tf.constant(max_length),
                        max_lines=tf.constant(0), temperature=tf.constant(temperature), top_k=tf.constant(0),
                        top_p=tf.constant(1.0), seed=tf.constant(seed, tf.int64), form=tf.constant(""),
                        acrostic=tf.constant(""))
        return [text.decode() for text in outputs["texts"].numpy()]

    sides = {"exported": exported,
             "generator": functools.partial(gen.generate, max_length=max_length, temperature=temperature)}
    start = time.perf_counter()
    exported(seed=0)
    compile_s = time.perf_counter() - start
    sides["generator"](seed=0)
    rates = {name: [] for name in sides}
    totals = {name: [0, 0.0] for name in sides}
    for _ in range(ROUNDS):
        for name, generate in sides.items():
            chars, elapsed, _ = timed_texts(generate, FLAGS.seconds / ROUNDS)
            rates[name].append(chars / elapsed)
            totals[name][0] += chars
            totals[name][1] += elapsed
    ratios = [ours / theirs for ours, theirs in zip(rates["exported"], rates["generator"])]
    return {
        "model": dataclasses.asdict(size) | {"vocab_size": VOCAB_SIZE},
        "streams": streams,
        "temperature": temperature,
        "chars_per_s": round(totals["exported"][0] / totals["exported"][1]),
        "generator_chars_per_s": round(totals["generator"][0] / totals["generator"][1]),
        "ratio": round(float(np.median(ratios)), 2),
        "round_ratios": [round(r, 2) for r in ratios],
        "load_s": round(load_s, 3),
        "compile_s": round(compile_s, 3),
    }


def exporting(size, streams):
    return Measurement(
        name=f"exported_{size.name}_{streams}",
        description=f"generation by export.py's SavedModel loaded back, {size.name} model, {streams} stream(s), "
                    "temperature 0.8, beside the Generator it came from (sample.py's) in alternating turns",
        run=functools.partial(measure_exported, size, streams),
    )


def sampling(size, streams, temperature=0.8, top_p=1.0, suffix=""):
    decoding = "greedy" if temperature == 0 else f"temperature {temperature}" + (f", top_p {top_p}" if top_p < 1 else "")
    return Measurement(
        name=f"sample_{size.name}_{streams}{suffix}",
        description=f"generation, {size.name} model, {streams} stream(s) in one batch, {decoding}",
        run=functools.partial(measure_sampling, size, streams, temperature, top_p),
    )


def measure_poems(size, poems, form, metre, best_of):
    """Times generate() writing `poems` poems of `form` under `metre`, each the best of `best_of` drafts."""
    import generator

    with tempfile.TemporaryDirectory() as directory:
        write_random_run(directory, size, metre_vocab())
        gen = generator.Generator(*generator.load_run(directory), poems)
    generate = functools.partial(gen.generate, form=form, metre=metre, best_of=best_of, temperature=0.8)
    start = time.perf_counter()
    generate(seed=0)
    compile_s = time.perf_counter() - start
    calls, elapsed = 0, 0.0
    while elapsed < FLAGS.seconds or calls == 0:
        start = time.perf_counter()
        texts = generate(seed=calls + 1)
        elapsed += time.perf_counter() - start
        calls += 1
    return {
        "model": dataclasses.asdict(size) | {"vocab_size": VOCAB_SIZE},
        "poems": len(texts),
        "form": form,
        "metre": metre,
        "best_of": best_of,
        "seconds_per_call": round(elapsed / calls, 3),
        "poems_per_s": round(calls * len(texts) / elapsed, 1),
        "calls": calls,
        "compile_s": round(compile_s, 3),
    }


def poem_sampling(poems, form, metre, best_of=1):
    drafts = f", each the best of {best_of} drafts" if best_of > 1 else ""
    return Measurement(
        name=f"poems_{form}_{metre}_{poems}" + (f"_best_of_{best_of}" if best_of > 1 else ""),
        description=f"{poems} poem(s) of form {form} under --metre {metre}{drafts}, default model, one batch",
        run=functools.partial(measure_poems, DEFAULT, poems, form, metre, best_of),
    )


# --- training ---------------------------------------------------------------------------------

TRAIN_BATCH = {"small": (32, 26), "medium": (64, 64)}


def random_windows(batch, steps, seed=0, calls=None):
    """Random ids [batch, steps + 1]; with calls, [batch, calls, steps + 1]: the windows of one training call."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (batch, steps + 1) if calls is None else (batch, calls, steps + 1)
    return rng.integers(1, VOCAB_SIZE, shape).astype("int32")


def timed_steps(step, seconds):
    """Runs step() for at least `seconds` (and 3 calls); returns (calls, elapsed)."""
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < 3:
        step()
        calls += 1
    return calls, time.perf_counter() - start


def our_trainer(size, precision="float32"):
    """train(seconds) -> (characters, elapsed) through train.py's own compiled training call
    (trainer.make_train_steps), tuning.STEPS_PER_CALL steps a call, as train.py's default."""
    import tensorflow as tf

    import cpu_training
    import model as model_lib
    import run_dir
    import trainer
    import tuning

    batch, steps = TRAIN_BATCH[size.name]
    config = run_dir.ModelConfig(
        vocab_size=VOCAB_SIZE, embedding_size=size.embedding_size, lstm_size=size.lstm_size,
        num_layers=size.num_layers, dropout=0.1,
    )
    net = model_lib.build_model(config, precision)
    train_steps = trainer.make_train_steps(net, cpu_training.Adam(1e-3), 5.0, tf.distribute.get_strategy())
    windows = tf.constant(random_windows(batch, steps, calls=tuning.STEPS_PER_CALL))
    x, y = windows[..., :-1], windows[..., 1:]
    starts_epoch = tf.zeros([tuning.STEPS_PER_CALL], tf.bool)
    states = model_lib.zero_states(config, batch)

    def call():
        nonlocal states
        losses, _, states = train_steps(x, y, states, starts_epoch)
        losses.numpy()

    def train(seconds):
        calls, elapsed = timed_steps(call, seconds)
        return calls * tuning.STEPS_PER_CALL * batch * steps, elapsed

    for _ in range(2):  # tracing and warm-up
        call()
    return train


def keras_trainer(size):
    """train(seconds) -> (characters, elapsed) the plain Keras way: Sequential Embedding/LSTM/Dense,
    compile, model.fit, default settings. Each call is one fit() of the same compiled model,
    timed from its fourth batch on."""
    import keras
    import tensorflow as tf

    batch, steps = TRAIN_BATCH[size.name]
    net = keras.Sequential(
        [keras.Input(batch_shape=(batch, steps), dtype="int32"), keras.layers.Embedding(VOCAB_SIZE, size.embedding_size)]
        + [keras.layers.LSTM(size.lstm_size, return_sequences=True, stateful=True) for _ in range(size.num_layers)]
        + [keras.layers.Dense(VOCAB_SIZE)]
    )
    net.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    window = random_windows(batch, steps)
    num_batches = 400
    dataset = tf.data.Dataset.from_tensors((window[:, :-1], window[:, 1:])).repeat(num_batches)
    options = tf.data.Options()
    options.autotune.enabled = False  # docs/DESIGN.md: avoids a multi-second stall when fit ends
    dataset = dataset.with_options(options)

    class StepClock(keras.callbacks.Callback):
        """Times batches after three warm-up ones; stops fit once enough time is measured."""

        def __init__(self, seconds):
            super().__init__()
            self.seconds, self.count, self.start = seconds, 0, None

        def on_train_batch_end(self, index, logs=None):
            if index == 2:
                self.start = time.perf_counter()
            elif index > 2:
                self.count += 1
                if time.perf_counter() - self.start >= self.seconds:
                    self.model.stop_training = True

    def train(seconds):
        clock = StepClock(seconds)
        net.fit(dataset, epochs=1, verbose=0, callbacks=[clock])
        return clock.count * batch * steps, time.perf_counter() - clock.start

    return train


def train_speed(size, precision="float32"):
    """Characters per second through train.py's own training call, timed for --seconds."""
    chars, elapsed = our_trainer(size, precision)(FLAGS.seconds)
    return {"chars_per_s": round(chars / elapsed), "batch": "x".join(map(str, TRAIN_BATCH[size.name])),
            "precision": precision}


def train_vs_baseline(size, precision="float32"):
    """Our step and model.fit in ROUNDS alternating turns of --seconds / ROUNDS each.

    The machine's speed drifts by 10-20% over tens of seconds; alternating turns put both sides
    under the same drift, and the ratio is the median of the rounds' ratios.
    """
    import numpy as np

    trainers = {"ours": our_trainer(size, precision), "baseline": keras_trainer(size)}
    rates = {name: [] for name in trainers}
    totals = {name: [0, 0.0] for name in trainers}
    for _ in range(ROUNDS):
        for name, train in trainers.items():
            chars, elapsed = train(FLAGS.seconds / ROUNDS)
            rates[name].append(chars / elapsed)
            totals[name][0] += chars
            totals[name][1] += elapsed
    ratios = [ours / baseline for ours, baseline in zip(rates["ours"], rates["baseline"])]
    return {
        "chars_per_s": round(totals["ours"][0] / totals["ours"][1]),
        "baseline_chars_per_s": round(totals["baseline"][0] / totals["baseline"][1]),
        "ratio": round(float(np.median(ratios)), 2),
        "round_ratios": [round(r, 2) for r in ratios],
        "batch": "x".join(map(str, TRAIN_BATCH[size.name])),
        "precision": precision,
    }


# --- memory -----------------------------------------------------------------------------------

def peak_rss_mb():
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def in_child(name):
    """Runs one measurement in a fresh process, so its peak memory is its own."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--only", name, "--seconds", str(FLAGS.seconds), "--report_rss"],
        capture_output=True, text=True, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def train_memory(size):
    figures = in_child(f"train_step_{size.name}")
    return {"peak_rss_mb": figures["peak_rss_mb"], "chars_per_s": figures["chars_per_s"]}


def generate_corpus(path, megabytes, alphabet=5000):
    """A corpus of random twelve-character lines over `alphabet` CJK ideographs, megabytes of UTF-8."""
    import numpy as np

    import read_utils

    rng = np.random.default_rng(0)
    lines, width = 100_000, 12
    with open(path, "wb") as f:
        while f.tell() < megabytes * 1_000_000:
            block = np.full((lines, width + 1), read_utils.NEWLINE_CODE, np.uint32)
            block[:, :width] = 0x4E00 + rng.integers(0, alphabet, (lines, width))
            f.write(read_utils.text_of(block.ravel()).encode("utf-8"))


def encode_large_corpus(megabytes):
    """Encodes a generated corpus as train.py does (read_utils.encode_corpus, into a fresh cache)."""
    import read_utils

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "corpus.txt")
        generate_corpus(path, megabytes)
        start = time.perf_counter()
        corpus = read_utils.encode_corpus(path, os.path.join(directory, "cache"), 0.05)
        elapsed = time.perf_counter() - start
        characters = len(corpus.train_ids) + len(corpus.val_ids)
        return {"megabytes": round(os.path.getsize(path) / 1e6), "characters": characters, "seconds": round(elapsed, 2),
                "ids_mb": round((corpus.train_ids.nbytes + corpus.val_ids.nbytes) / 1e6)}


def encode_memory(megabytes):
    figures = in_child(f"encode_{megabytes_name(megabytes)}")
    return {k: figures[k] for k in ("megabytes", "characters", "seconds", "peak_rss_mb")}


def train_large_corpus(megabytes, steps=300):
    """Peak resident memory of train.py (default model) training `steps` steps on a generated corpus."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "corpus.txt")
        generate_corpus(path, megabytes)
        command = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py"), "--input", path,
                   "--checkpoint_dir", os.path.join(directory, "run"), "--cache_dir", os.path.join(directory, "cache"),
                   "--max_steps", str(steps), "--save_every_n", str(steps), "--eval_every", str(steps)]
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)  # the resource usage of this child alone
        stderr = proc.stderr.read().decode(errors="replace")
        if status:
            raise RuntimeError(f"train.py failed: {stderr[-2000:]}")
        return {"megabytes": round(os.path.getsize(path) / 1e6), "steps": steps,
                "seconds": round(time.perf_counter() - start, 1), "train_peak_rss_mb": round(usage.ru_maxrss / 1024)}


# --- whole processes, as a user runs them -------------------------------------------------------------

def run_entry_point(script, *args):
    """Seconds one run of an entry point takes, start-up included, and its stdout."""
    import subprocess
    import sys

    command = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), script), *map(str, args)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{script} failed: {result.stderr[-2000:]}")
    return time.perf_counter() - start, result.stdout


def train_process(size, steps=(200, 1700)):
    """train.py's speed as a user gets it: two runs of the same recipe, `steps` apart, timed from
    outside; their difference is training alone, start-up and compilation taken out. Both runs
    validate, save and sample poems as train.py's defaults say."""
    batch, seq_length = TRAIN_BATCH[size.name]
    with tempfile.TemporaryDirectory() as directory:
        corpus = os.path.join(directory, "corpus.txt")
        generate_corpus(corpus, 2, alphabet=VOCAB_SIZE - 2)  # with the line break and <unk>: the in-process vocabulary
        model = ["--lstm_size", size.lstm_size, "--num_layers", size.num_layers, "--embedding_size", size.embedding_size,
                 "--batch_size", batch, "--seq_length", seq_length, "--cache_dir", os.path.join(directory, "cache")]
        seconds = [run_entry_point("train.py", "--input", corpus, "--checkpoint_dir", os.path.join(directory, f"run{n}"),
                                   "--max_steps", n, *model)[0] for n in steps]
    chars = (steps[1] - steps[0]) * batch * seq_length
    return {"chars_per_s": round(chars / (seconds[1] - seconds[0])), "seconds": [round(t, 1) for t in seconds],
            "steps": list(steps), "batch": f"{batch}x{seq_length}"}


def sample_process(size, lengths=(20_000, 30_000)):
    """sample.py's speed, one stream, as a user gets it: two runs `lengths` characters long, timed
    from outside; their difference is generation alone."""
    with tempfile.TemporaryDirectory() as directory:
        write_random_run(directory, size)
        runs = [run_entry_point("sample.py", "--checkpoint_dir", directory, "--max_length", n, "--max_lines", 0,
                                "--ban", "\n") for n in lengths]
    chars = [len(stdout.rstrip("\n")) for _, stdout in runs]
    return {"chars_per_s": round((chars[1] - chars[0]) / (runs[1][0] - runs[0][0])),
            "seconds": [round(t, 1) for t, _ in runs], "characters": chars}


def encoding(megabytes):
    """The time and the memory measurement of encoding a generated corpus of that size."""
    name = megabytes_name(megabytes)
    return [
        Measurement(f"encode_{name}", f"train.py's corpus encoding (one pass, into a cache) of a generated {megabytes:,} MB corpus",
                    functools.partial(encode_large_corpus, megabytes)),
        Measurement(f"encode_memory_{name}", f"peak resident memory of a process doing encode_{name}",
                    functools.partial(encode_memory, megabytes)),
    ]


def megabytes_name(megabytes):
    return f"{megabytes // 1000}gb" if megabytes >= 1000 else f"{megabytes}mb"


# --- serving ----------------------------------------------------------------------------------

SERVE_CLIENTS, SERVE_REQUESTS = 64, 10


def serve_load(run_dir, max_batch):
    """serve.py on run_dir with --max_batch, on a free loopback port: SERVE_CLIENTS clients, each
    asking for SERVE_REQUESTS 五言绝句 one after another on its own connection, all starting together."""
    import asyncio
    import socket
    import subprocess
    import sys

    import numpy as np

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.py"), "--checkpoint_dir",
               run_dir, "--port", str(port), "--max_batch", str(max_batch), "--noaccess_log"]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            health = wait_for_server(server, port, log)
            results, elapsed = asyncio.run(poem_clients(port))
            calls = server_health(port)["generation_calls"] - health["generation_calls"]
        finally:
            server.terminate()
            server.wait(60)
    latencies = np.concatenate([latencies for latencies, _ in results])
    errors = sum(errors for _, errors in results)
    return {
        "max_batch": max_batch,
        "requests_per_s": round((len(latencies) - errors) / elapsed, 1),
        "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 1),
        "errors": errors,
        "generation_calls": calls,
        "seconds": round(elapsed, 2),
    }


async def poem_clients(port):
    """([(latencies, errors)] of each client, seconds for all): serve_load's clients, on one event
    loop in this thread, so that the clients take as little of the two cores as they can."""
    import asyncio

    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(SERVE_CLIENTS)]
    start = time.perf_counter()
    results = await asyncio.gather(*[poem_client(index, port, *streams) for index, streams in enumerate(connections)])
    return results, time.perf_counter() - start


async def poem_client(index, port, reader, writer):
    """One client's (latencies, errors): SERVE_REQUESTS 五言绝句 one after another on one HTTP/1.1
    connection (h11, which uvicorn brings), a new connection after a failed request."""
    import asyncio

    import h11

    connection = h11.Connection(h11.CLIENT)
    latencies, errors = [], 0
    for request in range(SERVE_REQUESTS):
        body = json.dumps({"form": "五言绝句", "seed": index * SERVE_REQUESTS + request}).encode()
        headers = [("Host", f"127.0.0.1:{port}"), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start = time.perf_counter()
        try:
            writer.write(connection.send(h11.Request(method="POST", target="/api/poems", headers=headers)))
            writer.write(connection.send(h11.Data(data=body)) + connection.send(h11.EndOfMessage()))
            status, answer = await http_response(connection, reader)
            ok = status == 200 and len(json.loads(answer)["poems"]) == 1
            connection.start_next_cycle()
        except (OSError, h11.ProtocolError, ValueError, KeyError):
            ok = False
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            connection = h11.Connection(h11.CLIENT)
        latencies.append(time.perf_counter() - start)
        errors += not ok
    writer.close()
    return latencies, errors


async def http_response(connection, reader):
    """(status, body) of the response to the request just sent on the h11 connection."""
    import h11

    status, body = None, b""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, body
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("the server closed the connection")


def server_health(port):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/api/health")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def wait_for_server(server, port, log, timeout=900):
    """/api/health's answer once the server answers; it compiles every batch size first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"serve.py exited with {server.returncode}: {log.read().decode(errors='replace')[-2000:]}")
        try:
            return server_health(port)
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"serve.py did not answer within {timeout} s")


def measure_serving():
    """serve_load with batching (--max_batch 64) and without (--max_batch 1), one after the other."""
    with tempfile.TemporaryDirectory() as directory:
        run_dir = FLAGS.serve_checkpoint_dir
        if run_dir is None:
            run_dir = directory
            write_random_run(directory, DEFAULT)
        batched, unbatched = serve_load(run_dir, 64), serve_load(run_dir, 1)
    return {
        "run": os.path.abspath(FLAGS.serve_checkpoint_dir) if FLAGS.serve_checkpoint_dir else dataclasses.asdict(DEFAULT),
        "clients": SERVE_CLIENTS,
        "requests_per_client": SERVE_REQUESTS,
        "batched": batched,
        "unbatched": unbatched,
        "speedup": round(batched["requests_per_s"] / unbatched["requests_per_s"], 2),
    }


MEASUREMENTS = [
    sampling(SMALL, 1),
    sampling(MEDIUM, 1),
    sampling(SMALL, 64),
    sampling(SMALL, 1, temperature=0, suffix="_greedy"),
    sampling(MEDIUM, 1, temperature=0, suffix="_greedy"),
    sampling(SMALL, 1, top_p=0.9, suffix="_top_p"),
    exporting(SMALL, 1),
    exporting(SMALL, 64),
    poem_sampling(16, "qilv", "strict"),  # issue 19's targets: under a second each, after compilation
    poem_sampling(1, "qilv", "strict", best_of=8),
    poem_sampling(16, "qilv", "off"),  # what the metre's masks cost
    Measurement("train_small", "training, small model, batches 32x26: train.py's steps vs plain Keras model.fit",
                functools.partial(train_vs_baseline, SMALL)),
    Measurement("train_small_bf16", "training, small model, batches 32x26, --precision bfloat16 vs model.fit",
                functools.partial(train_vs_baseline, SMALL, "bfloat16")),
    Measurement("train_medium", "training, medium model, batches 64x64: train.py's steps vs plain Keras model.fit",
                functools.partial(train_vs_baseline, MEDIUM)),
    Measurement("train_medium_bf16", "training, medium model, batches 64x64, --precision bfloat16 vs model.fit",
                functools.partial(train_vs_baseline, MEDIUM, "bfloat16")),
    Measurement("train_step_medium", "training, medium model, train.py's steps alone", functools.partial(train_speed, MEDIUM)),
    Measurement("train_memory_medium", "peak resident memory of a process training the medium model",
                functools.partial(train_memory, MEDIUM)),
    Measurement("train_process_small", "train.py as a process, small model, batches 32x26: 1,700 against 200 steps",
                functools.partial(train_process, SMALL)),
    Measurement("sample_process_small_1", "sample.py as a process, small model, one stream: 30,000 against 20,000 "
                "characters", functools.partial(sample_process, SMALL)),
    *encoding(100),
    *encoding(1000),
    Measurement("serve_load", f"serve.py on loopback, {SERVE_CLIENTS} clients each asking for {SERVE_REQUESTS} "
                "五言绝句 one after another: requests/s, p50 and p99 latency, errors, with batching (--max_batch 64) and "
                "without (--max_batch 1)", measure_serving),
    Measurement("train_memory_1gb", "peak resident memory of train.py (default model) training 300 steps on a "
                "generated 1 GB corpus, encoding included", functools.partial(train_large_corpus, 1000)),
]


def selected(names):
    known = {m.name: m for m in MEASUREMENTS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise app.UsageError(f"unknown measurement(s) {', '.join(unknown)}; see --list")
    return [known[name] for name in names]


def main(argv):
    del argv
    if FLAGS.list:
        for m in MEASUREMENTS:
            print(f"{m.name}: {m.description}")
        return
    import cli

    cli.import_tensorflow()
    for m in selected(FLAGS.only) if FLAGS.only else MEASUREMENTS:
        load_avg = os.getloadavg()[0]
        figures = m.run()
        if FLAGS.report_rss:
            figures["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps({"name": m.name, "description": m.description, **figures, "load_avg": load_avg},
                         ensure_ascii=False), flush=True)


if __name__ == "__main__":
    app.run(main)
