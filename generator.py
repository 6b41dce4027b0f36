"""Text generation from a checkpoint directory: one compiled loop over a batch of streams.

The trained Keras model is read into plain weight tensors and its one-character step written out
by hand (CharStep), so the whole generation loop - LSTM steps, masks, sampling, stopping - compiles
with XLA into one program: a loop of stock Keras cells pays TensorFlow's per-op dispatch at every
character (docs/DESIGN.md).

Each stream first writes a throwaway burn-in line (on a corpus of records, such as tang's poems,
up to an empty line, so that a sample is a whole poem), then follows a plan of slots: fixed
characters (a title; the start string; a form's punctuation and line breaks; an acrostic's heads)
and sampled ones, masked to what their slot allows: under a metre (metre_plan.py), each stream's
own tones and rhyme.
"""

import math
import typing

import numpy as np
import tensorflow as tf

import cpu_training
import metre as metre_lib
import metre_plan
import model as model_lib
import poem_forms
import poem_position
import read_utils
import run_dir
import tuning

NEWLINE = "\n"
# The classes of slot, each with its row of the slot masks: any character but the banned ones; CJK
# ideographs only; those of level (平) or oblique (仄) tone in the 平水韵; the characters of the
# stream's rhyme group, whose row is RHYME + k for the k-th level group (metre.level_groups()).
FREE, CLAUSE, LEVEL, OBLIQUE, RHYME = range(5)
CLASS_OF_REQUIREMENT = {metre_lib.LEVEL: LEVEL, metre_lib.OBLIQUE: OBLIQUE, metre_plan.RHYME: RHYME}
BLOCK = 64  # ids per block of the two-level sampler: one pass over blocks, one inside one block


def load_run(checkpoint_dir):
    """(ModelConfig, Vocab, checkpoint path) of a training run directory (run_dir.read_run)."""
    run = run_dir.read_run(checkpoint_dir)
    return run.config, run.vocab, run_dir.latest_checkpoint(checkpoint_dir)


def restore_weights(net, path):
    """Loads trained weights into a model of any batch size; a damaged file is a run_dir.RunError."""
    try:
        model_lib.weights_checkpoint(net).read(path).expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:  # IndexError: a truncated data file
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise run_dir.RunError(
            f"cannot load checkpoint {path} ({first_line[:200]}); the files are truncated or from "
            "another model: retrain, or point --checkpoint_dir at an intact run"
        ) from None


# --- the model's step ----------------------------------------------------------------------------

class CharStep(typing.NamedTuple):
    """A trained model's one-character step over plain tensors: the Keras model's logits, fewer ops.

    The embedding (or one-hot) times the first LSTM layer's input kernel, plus its bias, is
    precomputed as a [vocab, 4*units] table, so the first layer's input is a row lookup; each
    later layer multiplies [input, state, 1] by its stacked [kernel; recurrent kernel; bias] in one
    matmul, and the output layer [h, 1] by [kernel; bias]. With the bias inside the matmul, XLA
    keeps each matmul a plain dot, which runs on both cores for the larger models, where it fuses
    a dot followed by a bias add into one single-threaded loop. Dropout is off, as in Keras
    inference. The output layer gets extra columns up to a multiple of BLOCK, with bias -inf: ids
    that are never drawn, so the sampler views a row as blocks without copying it.
    """

    table: tf.Tensor  # [vocab, 4*units]
    recurrent: tf.Tensor  # first layer's recurrent kernel [units, 4*units]
    stacked: tuple  # later layers' [kernel; recurrent kernel; bias], each [2*units + 1, 4*units]
    output_kernel: tf.Tensor  # [kernel; bias], [units + 1, padded vocab], bias -inf on the padding
    position: "PositionTables | None" = None  # a model that reads poem positions (poem_position.py)

    @classmethod
    def from_model(cls, net, vocab):
        found = model_lib.layers_of(net)
        first, *rest = found.lstms
        kernel = first.cell.kernel.value
        position = None
        if found.slot_embedding is not None:
            facts = poem_position.CharFacts.of(vocab.chars)
            position = PositionTables(
                slots=tf.matmul(found.slot_embedding.embeddings.value, kernel),
                rhymes=tf.matmul(found.rhyme_embedding.embeddings.value, kernel),
                kind=tf.constant(facts.kind),
                group=tf.constant(facts.group),
            )
        if found.embedding is not None:
            kernel = tf.matmul(found.embedding.embeddings.value, kernel)
        dense = found.logits
        padding = -dense.kernel.shape[1] % BLOCK
        output_bias = tf.concat([dense.bias.value, tf.fill([padding], float("-inf"))], 0)
        return cls(
            table=kernel + first.cell.bias.value,
            recurrent=tf.convert_to_tensor(first.cell.recurrent_kernel.value),
            stacked=tuple(
                tf.concat([layer.cell.kernel.value, layer.cell.recurrent_kernel.value, layer.cell.bias.value[None]], 0)
                for layer in rest
            ),
            output_kernel=tf.concat([tf.pad(dense.kernel.value, [[0, 0], [0, padding]]), output_bias[None]], 0),
            position=position,
        )

    def first_inputs(self, ids, position):
        """The first layer's input projection (plus bias) of ids [n], and of their poem positions
        (a poem_position.State) when the model reads them."""
        projected = tf.gather(self.table, ids)
        if self.position is None:
            return projected
        return projected + tf.gather(self.position.slots, position.slots()) + tf.gather(self.position.rhymes, position.rhyme)

    def zero_state(self, num_streams, ahead=False):
        """Each layer's (h, c) at zero; ahead (for CharStep.ahead): (h, c, share), share being
        the layer's part of its next gate inputs that comes from h (with the bias, past the first layer)."""
        zeros = tf.zeros([num_streams, self.recurrent.shape[0]])
        if not ahead:
            return tuple((zeros, zeros) for _ in range(1 + len(self.stacked)))
        first = (zeros, zeros, tf.zeros([num_streams, self.recurrent.shape[1]]))
        return (first,) + tuple((zeros, zeros, tf.tile(kernel[-1:], [num_streams, 1])) for kernel in self.stacked)

    def __call__(self, ids, state, bfloat16=False, position=None):
        """(logits [n, padded vocab] for the next character, new state) after feeding ids [n] (at
        their poem positions, for a model that reads them).

        bfloat16: every matmul takes bfloat16 inputs (weights and activations rounded), sums and
        biases staying float32 (matmul_float32_sums); on a CPU with AMX, XLA runs them there
        (tuning.sampling_bfloat16). Logits differ from float32's by bfloat16 rounding.
        """
        (h, c), *upper = state
        h, c = lstm_cell(self.first_inputs(ids, position) + matmul_float32_sums(h, self.recurrent, bfloat16), c)
        new_state = [(h, c)]
        for kernel, (h_own, c_own) in zip(self.stacked, upper):
            h, c = lstm_cell(affine(tf.concat([h, h_own], 1), kernel, bfloat16), c_own)
            new_state.append((h, c))
        return output_logits(h, self.output_kernel, bfloat16), tuple(new_state)

    def ahead(self, ids, state, bfloat16=False, position=None):
        """__call__ for many streams, state from zero_state(n, ahead=True): each layer's product
        with its recurrent kernel is made a step ahead, for the next character.

        Those products then wait for nothing in the step that makes them, and XLA runs them on
        the other core while the output layer and the draw run. For one stream they cost more
        than they gain: a matrix-vector product plus an add becomes one single-threaded loop (see
        CharStep), so __call__ keeps one matmul a layer (tuning.MANY_STREAMS).
        """
        (h, c, share), *upper = state
        units = self.recurrent.shape[0]
        h, c = lstm_cell(self.first_inputs(ids, position) + share, c)
        new_state = [(h, c, matmul_float32_sums(h, self.recurrent, bfloat16))]
        for kernel, (h_own, c_own, share_own) in zip(self.stacked, upper):
            h, c = lstm_cell(matmul_float32_sums(h, kernel[:units], bfloat16) + share_own, c_own)
            new_state.append((h, c, affine(h, kernel[units:], bfloat16)))
        return affine(h, self.output_kernel, bfloat16), tuple(new_state)


class PositionTables(typing.NamedTuple):
    """What a model that reads poem positions adds to the first layer's input (poem_position.py)."""

    slots: tf.Tensor  # [poem_position.SLOTS, 4*units]: the slot embedding times the first layer's input kernel
    rhymes: tf.Tensor  # [poem_position.GROUPS, 4*units]: the same of the rhyme group embedding
    kind: tf.Tensor  # [vocab] int32: each id's kind (poem_position.CharFacts)
    group: tf.Tensor  # [vocab] int32: each id's level group


def matmul_float32_sums(x, kernel, bfloat16):
    """x times kernel; bfloat16 rounds both inputs to bfloat16 and keeps the sums float32 (inside
    XLA only: TensorFlow's own kernels have no such matmul, see cpu_training.rounded_matmul)."""
    if bfloat16:
        return tf.linalg.matmul(tf.cast(x, tf.bfloat16), tf.cast(kernel, tf.bfloat16), output_type=tf.float32)
    return tf.matmul(x, kernel)


def affine(x, kernel_and_bias, bfloat16):
    """x times a [kernel; bias] matrix, plus the bias."""
    if bfloat16:  # a separate float32 add: many streams make no matrix-vector dot for XLA to fuse
        return matmul_float32_sums(x, kernel_and_bias[:-1], True) + kernel_and_bias[-1]
    return tf.matmul(cpu_training.with_one(x), kernel_and_bias)


def output_logits(h, kernel_and_bias, bfloat16):
    """The output layer's affine(h, ...), with one stream's row put in twice when that is faster.

    XLA has Eigen compute a one-row product of fewer than about tuning.ONE_CORE_PRODUCT
    multiply-adds on one core. For the small model the output matrix then does not stay in one
    core's L2 cache beside the LSTM weights, and streams from L3 at every character; with two rows
    Eigen splits the columns between both cores, each of which keeps its half cached. Larger
    products are split already, and the second row would only add work.
    """
    if h.shape[0] == 1 and kernel_and_bias.shape.num_elements() < tuning.ONE_CORE_PRODUCT:
        return affine(tf.tile(h, [2, 1]), kernel_and_bias, bfloat16)[:1]
    return affine(h, kernel_and_bias, bfloat16)


def lstm_cell(z, c):
    """Keras' LSTM update from the summed gate inputs z, gates in Keras' order i, f, c, o."""
    i, f, g, o = tf.split(z, 4, axis=1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c


# --- decoding --------------------------------------------------------------------------------------
# Under XLA on a CPU, sorting one vocabulary-wide row costs more than a whole step of the small
# model, and argmax and per-entry random numbers (Gumbel-max) cost several times a pass of exp
# (docs/PERFORMANCE.md). So nothing here sorts, and a sampled character costs one exp per id.

def order_keys(x):
    """int32 keys that order like the floats x (-inf lowest), for exact bisection on values."""
    bits = tf.bitcast(x, tf.int32)
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, 0x7FFFFFFF), bits)


def largest_threshold(keys, holds):
    """Per row, the largest key t for which holds(t) is true (holds falls from true to false as t grows).

    32 halvings of the int32 range pin it exactly; keys are int64 here so the midpoints cannot overflow.
    """
    lo = tf.fill(tf.shape(keys)[:1], tf.constant(-(2**31), tf.int64))  # holds: every key is >= it
    hi = lo + 2**32  # above every key, where holds is false
    for _ in range(32):
        mid = (lo + hi) // 2
        ok = holds(mid[:, None])
        lo, hi = tf.where(ok, mid, lo), tf.where(ok, hi, mid)
    return lo


def filter_logits(logits, temperature, top_k=None, top_p=None):
    """Logits divided by temperature, with everything outside the top-k and the nucleus at -inf.

    top_k / top_p None switch those filters off. The nucleus is the smallest set of most likely ids
    whose probability reaches top_p (ties at its edge included); it is taken after top-k, so from
    the top-k ids renormalised. The most likely id always survives.
    """
    logits = logits / tf.maximum(temperature, 1e-6)
    if top_k is None and top_p is None:
        return logits
    neg_inf = tf.fill(tf.shape(logits), float("-inf"))
    keys = tf.cast(order_keys(logits), tf.int64)
    if top_k is not None:
        kth = largest_threshold(keys, lambda t: row_sum(tf.cast(keys >= t, tf.int32)) >= top_k)
        logits = tf.where(keys >= kth[:, None], logits, neg_inf)
    if top_p is not None:
        probs = tf.exp(logits - row_max(logits)[:, None])
        mass = top_p * row_sum(probs)
        cut = largest_threshold(keys, lambda t: row_sum(tf.where(keys >= t, probs, 0.0)) >= mass)
        logits = tf.where(keys >= cut[:, None], logits, neg_inf)
    return logits


def row_reduce(x, op, reduce):
    """reduce(x, -1), its halvings done first as elementwise ops (op on the two halves).

    XLA vectorizes elementwise operations but not its own row reductions, so halving first makes
    greedy decoding and top-p's bisection (which sums rows 32 times a character) faster
    (docs/PERFORMANCE.md). sample() keeps XLA's own reductions, which XLA hands to YNNPACK there:
    halvings of its exp made that step slower. The last axis must be known when traced.
    """
    while x.shape[-1] % 2 == 0:
        half = x.shape[-1] // 2
        x = op(x[..., :half], x[..., half:])
    return reduce(x, -1)


def row_max(x):
    return row_reduce(x, tf.maximum, tf.reduce_max)


def row_sum(x):
    return row_reduce(x, tf.add, tf.reduce_sum)


def greedy(logits):
    """Per row, the first id of the highest logit."""
    return first_true(logits >= row_max(logits)[:, None])


def first_true(condition):
    size = condition.shape[-1]
    return row_reduce(tf.where(condition, tf.range(size), size), tf.minimum, tf.reduce_min)


def sample(logits, uniform):
    """One id per row drawn from softmax(logits), given one uniform number in [0, 1) per row.

    Inverse-CDF sampling in two levels over a width that is a multiple of BLOCK: a block by the
    blocks' masses, then an id inside it, so only one pass of exp touches the whole row. Ids with
    logit -inf (masked or filtered out) are never drawn: a block without mass is never picked, and
    inside a block only finite logits are.
    """
    grid = tf.reshape(logits, [-1, logits.shape[-1] // BLOCK, BLOCK])  # pick() needs the block count when traced
    top = tf.reduce_max(logits, -1)
    block_mass = tf.reduce_sum(tf.exp(grid - top[:, None, None]), -1)
    # The total as the running sum's end, which pick() computes anyway: XLA turns a sum of the
    # block masses into a second pass of exp over the whole row.
    target = uniform * tf.cumsum(block_mass, -1)[:, -1]
    block, mass_before = pick(block_mass, block_mass > 0, target)
    inner = tf.gather(grid, block, batch_dims=1)
    within, _ = pick(tf.exp(inner - top[:, None]), inner > float("-inf"), target - mass_before)
    return block * BLOCK + within


def pick(mass, allowed, target):
    """(index, mass before it) per row: the entry where the running sum of mass passes target.

    Rounding can put target at or past an edge; then the nearest allowed entry at or before that
    index is taken (or the first allowed one), never an entry that is not allowed.
    """
    size = mass.shape[-1]
    cumulative = tf.cumsum(mass, -1)
    index = tf.reduce_sum(tf.cast(cumulative <= target[:, None], tf.int32), -1)
    positions = tf.range(size)
    # One reduction for both choices: allowed entries at or before index rank above the allowed
    # entries after it (last first, then first first); entries that are not allowed rank lowest.
    rank = tf.where(allowed, tf.where(positions <= index[:, None], size + positions, size - positions), 0)
    best = tf.reduce_max(rank, -1)
    index = tf.where(best >= size, best - size, size - best)  # size where nothing is allowed
    return index, tf.gather(cumulative - mass, index, batch_dims=1)


def choose(logits, uniform, temperature, top_k, top_p):
    """Greedy when temperature is None, otherwise sampled from the filtered logits."""
    if temperature is None:
        return greedy(logits)
    return sample(filter_logits(logits, temperature, top_k, top_p), uniform)


# --- the compiled loop -----------------------------------------------------------------------------

@tf.function(jit_compile=True)
def generation_loop(step, masks, forced, classes, uniforms, length, max_lines, newline, burn_in, records,
                    model_title, temperature, top_k, top_p, rhymes, score, many, bfloat16):
    """(ids [n, steps], first shown step [n], first kept step [n], kept characters [n], log-probability [n])
    of n streams.

    A stream samples freely from the zero state until its first line break or, on a record corpus
    (records), its first empty line, and then, if the model writes the title (model_title), the
    line break that ends it; or until burn_in steps. From the next character on it is kept: stream
    i's kept character k is forced[i, k] where that is >= 0, else sampled under the mask of its
    class classes[i, k] (slot_mask; rhymes[i] is the row of its rhyme group). It stops after
    `length` kept characters (a scalar, or one per stream), after `max_lines` line breaks (0: no
    line limit) or, on a record corpus, at an empty line. The text shown starts with the kept text,
    or with the title the model writes. temperature, top_k, top_p as in choose(). With score, the
    log-probability is the sum over the stream's sampled kept characters of the model's own
    log-probability of each (log_softmax_at); without it, zeros. A model that reads poem positions
    (step.position) gets each stream's, stepped with every character (poem_position.State).
    many: CharStep.ahead's form, for tuning.MANY_STREAMS streams or more; bfloat16: bfloat16 matmul
    inputs (CharStep). records, model_title, score, many and bfloat16 are Python booleans, compiled
    into the loop; many is given apart from the shapes, which may be unknown when the loop is traced
    (saved_generator.py traces it for any number of streams and any length).
    Module-level, so every generator of the same shapes and decoding shares one compiled program.
    """
    steps, n = dims(uniforms)
    last_slot = dims(forced)[1] - 1  # the plan's padding entry: free, nothing forced
    advance = step.ahead if many else step
    ids, state = tf.fill([n], newline), step.zero_state(n, ahead=many)
    # Where each stream stands in its poem, for a model that reads it (an empty loop variable otherwise).
    position = poem_position.State.start(n) if step.position is not None else ()
    rhyme_rows = tf.gather(masks, rhymes)  # [n, width], the same at every step
    log_probability = tf.zeros([n])
    out = tf.TensorArray(tf.int32, size=steps, element_shape=uniforms.shape[1:])
    started = tf.fill([n], burn_in == 0)
    first = tf.zeros([n], tf.int32)
    shown = tf.zeros([n], tf.int32)
    after_blank = tf.zeros([n], tf.bool)  # the burn-in has written an empty line
    kept = tf.zeros([n], tf.int32)
    lines = tf.zeros([n], tf.int32)
    done = tf.zeros([n], tf.bool)
    t = tf.constant(0)
    while t < steps and not tf.reduce_all(done):
        # The step and the draw from its logits in one iteration: the logits are not carried over
        # to the next one, so XLA fuses the mask and the temperature into the passes that read them.
        logits, state = advance(ids, state, bfloat16, position)
        slot = tf.minimum(kept, last_slot)
        fixed = tf.where(started, tf.gather(forced, slot, batch_dims=1), -1)
        slot_class = tf.where(started, tf.gather(classes, slot, batch_dims=1), FREE)
        sampled = choose(logits + slot_mask(slot_class, masks, rhyme_rows), uniforms[t], temperature, top_k, top_p)
        next_ids = tf.where(fixed >= 0, fixed, sampled)
        out = out.write(t, next_ids)
        is_newline = tf.equal(next_ids, newline)
        empty_line = is_newline & tf.equal(ids, newline)  # ids: the previous character
        keeping = started & ~done
        if score:
            log_probability += tf.where(keeping & (fixed < 0), log_softmax_at(logits, sampled), 0.0)
        kept += tf.cast(keeping, tf.int32)
        lines += tf.cast(keeping & is_newline, tf.int32)
        ends = (kept >= length) | ((max_lines > 0) & (lines >= max_lines))
        line_start = is_newline
        if records:
            ends |= empty_line & (kept >= 2)  # a record ends at its empty line (the break before it kept too)
            line_start = is_newline & after_blank if model_title else empty_line
            reaches_blank = ~started & ~after_blank & empty_line
            shown = tf.where(reaches_blank, t + 1, shown)
            after_blank |= reaches_blank
        done |= keeping & ends
        starting = ~started & (line_start | (t + 1 >= burn_in))
        first = tf.where(starting, t + 1, first)
        shown = tf.where(starting & ~after_blank, t + 1, shown)
        started |= starting
        ids = next_ids
        if step.position is not None:
            position = position.advance(tf.gather(step.position.kind, ids), tf.gather(step.position.group, ids))
        t += 1
    return tf.transpose(out.stack()), shown, first, kept, log_probability


def dims(x):
    """x's dimensions: ints where known when traced, scalar tensors where not."""
    return [size if size is not None else tf.shape(x)[axis] for axis, size in enumerate(x.shape)]


def slot_mask(slot_class, masks, rhyme_rows):
    """[n, width]: each stream's mask for the class of its slot; rhyme_rows [n, width] its rhyme group's.

    Selects, which XLA fuses into the passes that read the mask; a gather of rows did not fuse.
    """
    mask = tf.where(tf.equal(slot_class, RHYME)[:, None], rhyme_rows, masks[FREE])
    for row in (CLAUSE, LEVEL, OBLIQUE):
        mask = tf.where(tf.equal(slot_class, row)[:, None], masks[row], mask)
    return mask


def log_softmax_at(logits, ids):
    """Per row, log softmax(logits)[id]: the model's log-probability of the id, at temperature 1
    and before any mask or filter."""
    top = row_max(logits)
    return tf.gather(logits, ids, batch_dims=1) - top - tf.math.log(row_sum(tf.exp(logits - top[:, None])))


class Draft(typing.NamedTuple):
    """A generated text and its score: the mean of the model's log-probability of each character it
    sampled (log_softmax_at; forced characters left out), 0 if it sampled none."""

    text: str
    score: float


class Generator:
    """Generates num_streams texts at once from a trained run's weights.

    A stream first writes one throwaway line (the burn-in): a model trained on long streams
    rarely saw the all-zero state it starts from, and its first line from there is often
    malformed. From the burn-in's line break on, the stream is at a natural line start and
    follows its plan (see generate). With records (a model trained on records separated by empty
    lines, such as tang's poems: read_utils.RECORDS) the burn-in runs to an empty line, so that a
    sample is a whole record, title line first, and it ends at its own empty line.
    """

    BURN_IN_LIMIT = 100  # a stream that writes no line break by then starts anyway
    RECORD_BURN_IN_LIMIT = 400  # with records: room for the rest of a poem and a title

    def __init__(self, config, vocab, checkpoint_path, num_streams=1, banned="", records=False, reproducible=False):
        check_seen(vocab, {"--ban": banned})
        net = model_lib.build_model(config)
        restore_weights(net, checkpoint_path)
        self.step = CharStep.from_model(net, vocab)
        self.vocab = vocab
        self.num_streams = num_streams
        self.banned = set(banned)
        self.masks = tf.constant(slot_masks(vocab, self.banned, width=self.step.output_kernel.shape[1]))
        # What a clause may hold: metre_plan.Planner checks every slot's tone against it.
        self.writable = frozenset(c for c in vocab.chars[1:] if poem_forms.is_ideograph(c) and c not in self.banned)
        if not np.isfinite(self.masks[FREE].numpy()).any():
            raise read_utils.InputError("--ban bans every character the model knows; it could write nothing")
        self.newline = vocab.id_of(NEWLINE)  # 0 when the corpus has no line breaks: no burn-in then
        self.records = records
        # Many streams take CharStep.ahead, and bfloat16 inputs on a CPU with AMX: faster, but
        # bfloat16's rounding leads a stream elsewhere than sample.py's few-stream float32 with the
        # same seed; reproducible keeps float32 for any number of streams (serve.py's calls).
        self.many = num_streams >= tuning.MANY_STREAMS
        self.bfloat16 = tuning.sampling_bfloat16(self.many) and not reproducible
        self.burn_in = (self.RECORD_BURN_IN_LIMIT if records else self.BURN_IN_LIMIT) if self.newline else 0

    def generate(self, prompt="", max_length=300, max_lines=0, temperature=1.0, top_k=0, top_p=1.0, seed=0,
                 form=None, acrostic="", title="", metre=metre_plan.DEFAULT_METRE, rhyme="", best_of=1, scored=False):
        """num_streams texts that begin with prompt; the same seed gives the same texts.

        Free text stops after max_lines line breaks (0: no limit) or max_length characters, cut
        back to its last whole line. With a form (a name in poem_forms.FORM_NAMES) or an acrostic,
        each text is one poem of that form, whose clause k begins with acrostic[k]; an acrostic
        alone takes a five-character form (poem_forms.form_for_acrostic). max_length and max_lines
        do not apply to poems. temperature 0 is greedy; top_k 0 and top_p 1 switch those off.
        With records, a text is one record that ends at its empty line (max_lines does not apply):
        the title line, given (title) or written by the model, then the prompt or poem. A poem
        follows metre ("off", "rhyme" or "strict", see metre_plan.py), drawing its pattern and rhyme
        group from the seed, or rhyming in the group that the character rhyme names. best_of N
        writes N drafts of each text in one batch and keeps the one of the highest score (Draft);
        scored returns Drafts instead of texts. seed may also be a list of (seed, count) groups of
        streams, counts summing to num_streams (see stream_uniforms): several requests then share
        one call.
        """
        check_seen(self.vocab, {"the start string": prompt, "the acrostic": acrostic, "the title": title})
        head = self.title_slots(title)
        poem = bool(form or acrostic)
        metre_plan.check_request(metre, rhyme, poem)
        if poem:
            form = poem_forms.find_form(form) if form else poem_forms.form_for_acrostic(acrostic)
            slots = head + poem_forms.template(form, acrostic, prompt)
            length, max_lines = len(slots), 0
        else:
            slots = head + list(prompt)
            length = max(max_length, len(slots))
        if self.records:
            max_lines = 0
        room = bucket(length)  # few distinct shapes, so few compilations
        forced, classes = self.plan_arrays(slots, room)
        streams = self.num_streams * best_of
        # The title's slots come first; the planner places the poem's own.
        planner = metre_plan.Planner(form, slots[len(head):], metre, rhyme, self.writable) if poem and metre != "off" else None
        groups = seed_groups(seed, streams)
        classes, rhymes = self.metre_arrays(classes, groups, planner, offset=len(head))
        steps = self.burn_in + room
        score = best_of > 1 or scored
        ids, shown, first, kept, log_probability = generation_loop(
            self.step,
            self.masks,
            tf.constant(np.tile(forced, (streams, 1))),
            tf.constant(classes),
            stream_uniforms(groups, steps),
            tf.constant(length),
            tf.constant(max_lines),
            tf.constant(self.newline),
            tf.constant(self.burn_in),
            self.records,
            self.records and not title,
            *decoding_args(temperature, top_k, top_p, len(self.vocab)),
            tf.constant(rhymes),
            score,
            many=self.many,
            bfloat16=self.bfloat16,
        )
        kept = kept.numpy()
        rows = list(zip(ids.numpy(), shown.numpy(), first.numpy(), kept))
        texts = [self.vocab.decode(row[start : begin + count]) for row, start, begin, count in rows]
        if not poem:
            # The model's title and the given slots stay, whatever whole_lines cuts.
            texts = [whole_lines(text, begin - start + len(slots)) for text, (_, start, begin, _) in zip(texts, rows)]
        if not score:
            return texts
        drafts = best_drafts(texts, mean_scores(log_probability.numpy(), kept, forced), best_of)
        return drafts if scored else [draft.text for draft in drafts]

    def title_slots(self, title):
        """The slots of a title line: its characters and a line break; none without a title."""
        if not title:
            return []
        if not self.records:
            raise read_utils.InputError(
                "a title needs a model trained on titled poems separated by empty lines (train.py --input tang); "
                "this run's corpus has none: leave out the title"
            )
        if NEWLINE in title:
            raise read_utils.InputError("a title is one line: leave out its line breaks")
        return list(title) + [NEWLINE]

    def plan_arrays(self, slots, room):
        """(forced ids, mask classes) for room + 1 kept characters: the slots, then free ones."""
        forced = np.full(room + 1, -1, np.int32)
        classes = np.full(room + 1, FREE, np.int32)
        for i, slot in enumerate(slots):
            if slot is poem_forms.OPEN:
                classes[i] = CLAUSE
            else:
                forced[i] = self.fixed_id(slot)
        if (classes == CLAUSE).any() and not np.isfinite(self.masks[CLAUSE].numpy()).any():
            raise read_utils.InputError(
                "the model knows no Chinese character that is not banned, so it cannot write a poem form"
            )
        return forced, classes

    def metre_arrays(self, classes, groups, planner, offset=0):
        """(classes [streams, room + 1], rhyme rows [streams]): plan_arrays' classes for every stream
        of the seed groups (seed_groups), with each stream's own tones and rhyme group drawn by
        planner (a metre_plan.Planner, or None: no metre) from its group's seed, the poem's slots
        starting at offset (after a title)."""
        streams = sum(count for _, count in groups)
        classes = np.tile(classes, (streams, 1))
        rhymes = np.full(streams, RHYME, np.int32)
        if planner is None:
            return classes, rhymes
        rows = {group.index: RHYME + k for k, group in enumerate(metre_lib.level_groups())}
        stream = 0
        for seed, count in groups:
            rng = np.random.default_rng(seed % 2**64)
            for _ in range(count):
                choice, group = planner.draw(rng)
                for index, requirement in choice.requirements.items():
                    classes[stream, offset + index] = CLASS_OF_REQUIREMENT[requirement]
                rhymes[stream] = rows[group.index]
                stream += 1
        return classes, rhymes

    def fixed_id(self, char):
        if char in self.banned:
            raise read_utils.InputError(
                f"{char!r} is banned (--ban) but the title, start string, acrostic or form needs it"
            )
        if not self.vocab.id_of(char):
            raise read_utils.InputError(
                f"the model's vocabulary has no {char!r}; poem forms need a model trained on poems written "
                f"one couplet per line, punctuated with {poem_forms.COMMA} and {poem_forms.STOP}"
            )
        return self.vocab.id_of(char)


def check_seen(vocab, texts):
    """A clear error listing the characters of each text (named by its key) the model never saw."""
    for name, text in texts.items():
        unseen = vocab.unknown_chars(text)
        if unseen:
            raise read_utils.InputError(f"{name} has characters the model never saw: {' '.join(unseen)}; leave them out")


def seed_groups(seed, streams):
    """seed as a list of (seed, count) groups of streams: an int seeds them all.

    A list's counts must sum to streams. Each group draws what a Generator of count streams draws
    from that seed alone (stream_uniforms, Generator.metre_arrays), so a group writes what sample.py
    writes with that --seed and --num_samples, in the same arithmetic (Generator's reproducible).
    """
    groups = [(seed, streams)] if isinstance(seed, int) else [(int(s), int(count)) for s, count in seed]
    if sum(count for _, count in groups) != streams:
        raise ValueError(f"seed groups {groups} do not add up to {streams} streams")
    return groups


def stream_uniforms(groups, steps):
    """[steps, streams] uniform numbers, one column per stream, for the seed groups (seed_groups):
    group (seed, count)'s columns are tf.random.stateless_uniform([steps, count], seed=[seed, 0])."""
    seeds, counts = zip(*groups)
    return group_uniforms(tf.constant(seeds, tf.int64), tf.constant(counts, tf.int32), tf.constant(steps))


@tf.function(input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)])
def group_uniforms(seeds, counts, steps):
    """stream_uniforms' numbers in one graph call: op by op in eager mode, a call of 64 one-stream
    groups (serve.py's) costs a tenth of its generation loop."""
    blocks = tf.TensorArray(tf.float32, size=tf.size(seeds), infer_shape=False, element_shape=tf.TensorShape([None, None]))
    for i in tf.range(tf.size(seeds)):
        seed = tf.stack([seeds[i], tf.constant(0, tf.int64)])
        blocks = blocks.write(i, tf.transpose(tf.random.stateless_uniform(tf.stack([steps, counts[i]]), seed=seed)))
    return tf.transpose(blocks.concat())


def decoding_args(temperature, top_k, top_p, vocab_size):
    """choose()'s temperature, top_k and top_p as generation_loop takes them: None where off."""
    if temperature == 0:
        return None, None, None
    return (
        tf.constant(float(temperature)),
        tf.constant(min(int(top_k), vocab_size)) if top_k else None,
        tf.constant(float(top_p)) if top_p < 1 else None,
    )


def slot_masks(vocab, banned, width):
    """[RHYME + 30, width] additive masks, a row per class of slot: row FREE bans the unknown token
    and banned characters; row CLAUSE also every character that is not a CJK ideograph
    (punctuation, line breaks, letters); rows LEVEL and OBLIQUE also the characters without a
    reading of that tone in the 平水韵 table (those outside it included), and row RHYME + k those
    outside the k-th level rhyme group. Ids past the vocabulary (the logits' padding) are banned in all."""
    free = np.full(width, -np.inf, np.float32)
    free[1 : len(vocab)] = 0
    free[np.array([vocab.id_of(char) for char in banned], int)] = -np.inf
    clause = free.copy()
    clause[[i for i, char in enumerate(vocab.chars) if not poem_forms.is_ideograph(char)]] = -np.inf

    def within(chars):
        row = clause.copy()
        row[[i for i, char in enumerate(vocab.chars) if char not in chars]] = -np.inf
        return row

    tones = [within(metre_lib.chars_of_tone(tone)) for tone in (metre_lib.LEVEL, metre_lib.OBLIQUE)]
    return np.stack([free, clause, *tones, *(within(group.chars) for group in metre_lib.level_groups())])


def mean_scores(log_probability, kept, forced):
    """Each stream's summed log-probability over the number of characters it sampled (0 for none):
    its first kept[stream] characters, less those the plan forced."""
    sampled = np.cumsum(np.concatenate([[0], forced < 0]))[kept]
    return np.divide(log_probability, sampled, out=np.zeros_like(log_probability), where=sampled > 0)


def best_drafts(texts, scores, best_of):
    """Draft of the highest score among each run of best_of consecutive texts (a text's drafts)."""
    best = np.asarray(scores).reshape(-1, best_of).argmax(1) + np.arange(0, len(texts), best_of)
    return [Draft(texts[i], float(scores[i])) for i in best]


def bucket(length):
    """length rounded up to a power of two, at least 64."""
    return max(64, 2 ** math.ceil(math.log2(length)))


def whole_lines(text, keep):
    """text cut back to its last line break, if it has one after the first keep characters."""
    cut = text.rfind(NEWLINE) + 1
    return text[:cut] if cut > keep else text
