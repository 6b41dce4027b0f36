"""Generates text (Tang poems by default) from a trained run.

    python sample.py --start_string 春
    python sample.py --name poetry --num_samples 4 --temperature 0.8

Every model setting comes from the run's config.json; no model flag is repeated here.
"""

import os

from absl import app, flags

import cli
import generator
import read_utils

flags.DEFINE_string("name", "default", "run name: reads checkpoints/<name>")
flags.DEFINE_string("checkpoint_dir", None, "run directory written by train.py (default: checkpoints/<name>)")
flags.DEFINE_string("start_string", "", "text that primes the model and begins every sample")
flags.DEFINE_integer("max_length", 300, "most characters generated per sample", lower_bound=1)
flags.DEFINE_integer("max_lines", 4, "stop a sample after this many lines (0: only --max_length)", lower_bound=0)
flags.DEFINE_integer("num_samples", 1, "samples generated together in one batch", lower_bound=1)
flags.DEFINE_float("temperature", 0.8, "sampling temperature; 0 is greedy", lower_bound=0)
flags.DEFINE_integer("top_k", 0, "sample only from the k most likely characters (0: all)", lower_bound=0)
flags.DEFINE_float("top_p", 1.0, "nucleus sampling: the smallest set of characters with this much probability")
flags.DEFINE_string("ban", "", "characters never to produce")
flags.DEFINE_integer("seed", 0, "random seed: the same seed gives the same text")
flags.register_validator("top_p", lambda v: 0 < v <= 1, "--top_p must be in (0, 1]")
# The original project's names. Its model flags are accepted and ignored: config.json has them.
flags.DEFINE_alias("checkpoint_path", "checkpoint_dir")
flags.DEFINE_string("converter_path", None, "original flag, ignored: the vocabulary is vocab.json in the run")
for _name in ("lstm_size", "num_layers", "embedding_size"):
    flags.DEFINE_integer(_name, None, "original flag, ignored: the run's config.json has it")
flags.DEFINE_boolean("use_embedding", None, "original flag, ignored: the run's config.json has it")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.quiet_library_info()
    checkpoint_dir = FLAGS.checkpoint_dir or os.path.join("checkpoints", FLAGS.name)
    try:
        config, vocab, path = generator.load_run(checkpoint_dir)
        unseen = vocab.unknown_chars(FLAGS.start_string + FLAGS.ban)
        if unseen:
            cli.fail(
                f"--start_string/--ban has characters the model never saw: {' '.join(unseen)}; "
                "leave them out"
            )
        if FLAGS.top_k > len(vocab):
            cli.fail(f"--top_k={FLAGS.top_k} is larger than the vocabulary ({len(vocab)}); use at most that")
        gen = generator.Generator(config, vocab, path, FLAGS.num_samples, banned=FLAGS.ban)
    except read_utils.InputError as e:
        cli.fail(e)
    texts = gen.generate(
        FLAGS.start_string,
        max_length=FLAGS.max_length,
        max_lines=FLAGS.max_lines,
        temperature=FLAGS.temperature,
        top_k=FLAGS.top_k,
        top_p=FLAGS.top_p,
        seed=FLAGS.seed,
    )
    print("\n\n".join(text.rstrip("\n") for text in texts))


if __name__ == "__main__":
    app.run(main)
