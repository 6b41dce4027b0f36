"""Constants and choices tuned by measurement, in one place, with what they were tuned on.

Every figure behind them is in docs/PERFORMANCE.md, with its date, commit and machine. This module
imports no TensorFlow, so the entry points can read it before TensorFlow starts.
"""

import functools

# --- training (cpu_training.py, trainer.py) ---------------------------------------------------------

# Training steps per compiled call (train.py's --steps_per_execution default): Python's turn between
# calls leaves the cores idle. Tuned on the small model in bfloat16, 2-core CPU with AMX; 4 and 16
# were a little slower than 8.
STEPS_PER_CALL = 8

# Each LSTM layer runs its window in this many pieces, so that the next layer starts on a piece while
# this one computes the next, and the two layers' chains of small operations share the two cores.
# Tuned on the small model, 2 cores.
PIPELINE_PIECES = 2

# The output layer's vocabulary is padded to a multiple of this in the training matmuls: oneDNN's
# fast case. Tuned on vocabulary 3,501 (poetry.txt), 2-core CPU with AMX.
VOCAB_PADDING = 32

# Characters per window of validation (monitor.Evaluator). The states carry across windows, so the
# loss is the same for any length; long windows make few calls of the Keras model, each one of
# which costs a fixed dispatch.
VALIDATION_WINDOW = 256

# --- generation (generator.py) ------------------------------------------------------------------------

# From this many streams on, each layer's recurrent product is made a step ahead (CharStep.ahead).
# Below it the extra add costs more than the overlap gains. Tuned at 1 and 64 streams, small model.
MANY_STREAMS = 16

# XLA has Eigen compute a one-row product of fewer multiply-adds than this on one core; below it,
# one stream's output row is put in twice so that both cores share the product. Found by timing
# 1x129 by 129x3520 (one core) against 1x193 by 193x3520 (two cores), 2-core CPU with AMX.
ONE_CORE_PRODUCT = 600_000


# --- precision by the CPU's features --------------------------------------------------------------------

@functools.cache
def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags as Linux lists them (empty where the file is missing)."""
    try:
        with open(cpuinfo) as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def has_amx(flags=None):
    """True on a CPU with AMX's bfloat16 tiles (flags: cpu_flags(), this CPU's by default).

    There bfloat16 matmuls beat float32 ones. Without AMX (AVX-512 BF16 only, or a laptop's AVX2),
    TensorFlow's bfloat16 matmuls are slower than float32's, and both training and many-stream
    sampling ran slower in bfloat16 (docs/PERFORMANCE.md).
    """
    return "amx_bf16" in (cpu_flags() if flags is None else flags)


def training_precision(has_gpu, flags=None):
    """--precision auto: bfloat16 (mixed, float32 weights) on a CPU with AMX, float32 elsewhere.

    On a GPU the LSTM layers take cuDNN's float32 kernel.
    """
    return "bfloat16" if has_amx(flags) and not has_gpu else "float32"


def sampling_bfloat16(many_streams, flags=None):
    """Whether the sampler's matmuls take bfloat16 inputs: many streams (MANY_STREAMS or more) on a
    CPU with AMX only."""
    return many_streams and has_amx(flags)
