"""Loss of a trained run on a text file: nats per character, bits per character, perplexity.

    python evaluate.py --name default --input data/poetry_val.txt
"""

import math
import os

from absl import app, flags

import cli
import generator
import model as model_lib
import read_utils

flags.DEFINE_string("name", "default", "run name: reads checkpoints/<name>")
flags.DEFINE_string("checkpoint_dir", None, "run directory written by train.py (default: checkpoints/<name>)")
flags.DEFINE_string("input", None, "UTF-8 text file to score")
flags.DEFINE_integer("seq_length", 256, "characters per evaluation window", lower_bound=1)
flags.DEFINE_integer("num_streams", 16, "parallel streams the file is cut into", lower_bound=1)
flags.mark_flag_as_required("input")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.quiet_library_info()
    checkpoint_dir = FLAGS.checkpoint_dir or os.path.join("checkpoints", FLAGS.name)
    try:
        config, vocab, path = generator.load_run(checkpoint_dir)
        text = read_utils.read_text(FLAGS.input)
        ids = vocab.encode(text)
        windows = read_utils.EvalWindows(ids, FLAGS.num_streams, FLAGS.seq_length)
        evaluator = model_lib.Evaluator(config, windows)
        generator.restore_weights(evaluator.model, path)
    except read_utils.InputError as e:
        cli.fail(e)
    unknown = int((ids == 0).sum())
    loss = evaluator.loss()
    print(f"checkpoint: {path}")
    print(f"characters scored: {windows.num_targets:,} ({unknown:,} outside the vocabulary)")
    print(f"loss: {loss:.4f} nats/char")
    print(f"bits per character: {loss / math.log(2):.4f}")
    print(f"perplexity: {math.exp(loss):.2f}")


if __name__ == "__main__":
    app.run(main)
