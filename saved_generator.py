"""The Generator as a tf.Module whose SavedModel generates text and poems without this repository.

export.py writes it. The SavedModel holds the run's weights, its vocabulary as lookup tables, the
poem forms and the compiled generation loop that sample.py runs (generator.generation_loop); for
the same run, settings and seed it writes the same texts as sample.py. Its serving_default
signature (SIGNATURE) takes:

    start_string  string [n]  one text is written per start string ("" for none)
    max_length    int32       sample.py's --max_length (free text only)
    max_lines     int32       sample.py's --max_lines (free text only; 0: no limit)
    temperature   float32     0 is greedy
    top_k         int32       0: off
    top_p         float32     1: off
    seed          int64
    form          string      "" or a form name (五言绝句 or wujue, ...)
    acrostic      string      "" or one Chinese character per clause

and returns `texts` (string [n]) and `error` (a string scalar: empty, or one line saying what in
the request is wrong and how to fix it; the texts are then empty).
"""

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

import generator
import poem_forms
import read_utils
import tuning

MAX_LENGTH = 10_000  # the most characters a request may ask for: bounds the memory one request takes
MAX_STREAMS = 256  # the most start strings (texts) in one request, for the same reason
# Greedy, then sampling with neither, top-k, top-p or both filters: each is its own compiled loop,
# as generator.decoding_args gives None for a filter that is off.
DECODINGS = ((False, False, False), (True, False, False), (True, True, False), (True, False, True), (True, True, True))

SIGNATURE = [
    tf.TensorSpec([None], tf.string, name="start_string"),
    tf.TensorSpec([], tf.int32, name="max_length"),
    tf.TensorSpec([], tf.int32, name="max_lines"),
    tf.TensorSpec([], tf.float32, name="temperature"),
    tf.TensorSpec([], tf.int32, name="top_k"),
    tf.TensorSpec([], tf.float32, name="top_p"),
    tf.TensorSpec([], tf.int64, name="seed"),
    tf.TensorSpec([], tf.string, name="form"),
    tf.TensorSpec([], tf.string, name="acrostic"),
]


class SavedGenerator(tf.Module):
    """A Generator's weights, vocabulary and poem forms as TensorFlow state, and its generate() as a graph.

    What Generator.generate computes in Python per call (the plan of forced characters and slot
    classes, the length bucket, the random numbers, the texts cut from the loop's ids) is
    computed here in the graph, the same way, around the same generation_loop.
    """

    def __init__(self, gen):
        super().__init__()
        variable = lambda value: tf.Variable(value, trainable=False)  # noqa: E731
        self.step_weights = [variable(weights) for weights in tf.nest.flatten(gen.step._replace(position=()))]
        self.position_weights = [variable(weights) for weights in gen.step.position or ()]
        self.masks = variable(gen.masks)
        self.newline, self.burn_in = gen.newline, gen.burn_in
        self.records = gen.records  # a run on poems separated by empty lines writes whole poems, titles included
        vocab = gen.vocab
        self.vocab_size = len(vocab)
        self.chars = tf.constant(vocab.chars)  # id -> character (id 0: the unknown entry, never written)
        self.char_ids = lookup_table(vocab.chars[1:], range(1, len(vocab)), default=0)
        self.forms = PoemForms(gen, self.chars)

    def step(self):
        """The CharStep of the weights, read as tensors, as Generator passes it to generation_loop.

        The weights are kept as a list: a NamedTuple of variables on a tf.Module becomes a wrapper
        that the loaded SavedModel keeps a restore object alive for, which errs at exit.
        """
        table, recurrent, *stacked, output_kernel = map(tf.convert_to_tensor, self.step_weights)
        position = generator.PositionTables(*map(tf.convert_to_tensor, self.position_weights)) if self.position_weights else None
        return generator.CharStep(table, recurrent, tuple(stacked), output_kernel, position)

    @tf.function(input_signature=SIGNATURE)
    def generate(self, start_string, max_length, max_lines, temperature, top_k, top_p, seed, form, acrostic):
        """{"texts": one text per start string, "error": "" or why the request cannot be served}."""
        start = self.encode(start_string)
        heads = tuple(values[0] for values in self.encode(acrostic[None]))
        poem = tf.not_equal(form, "") | tf.not_equal(acrostic, "")
        form_index = self.forms.index(form, tf.size(heads[1]))
        settings = (max_length, max_lines, temperature, top_k, top_p)
        error = self.request_error(start, heads, poem, form, form_index, settings)
        texts = tf.cond(
            tf.equal(error, ""),
            lambda: self.write(start[1], heads[1], poem, form_index, *settings, seed),
            lambda: tf.fill(tf.shape(start_string), ""),
        )
        return {"texts": texts, "error": error}

    def encode(self, strings):
        """(characters, ids), each ragged [n, None]; characters the model never saw get id 0.
        Invalid UTF-8 reads as U+FFFD, which the vocabulary does not hold either."""
        chars = tf.strings.unicode_split(strings, "UTF-8", errors="replace").with_row_splits_dtype(tf.int32)
        return chars, tf.ragged.map_flat_values(self.char_ids.lookup, chars)

    def request_error(self, start, heads, poem, form, form_index, settings):
        """The first error of the request, in the order sample.py meets them; "" if there is none."""
        n = start[1].nrows()
        checks = [
            (tf.equal(n, 0), lambda: tf.constant('start_string is empty: give one start string per text to '
                                                 'write ([""] for one text from scratch)')),
            (n > MAX_STREAMS, lambda: tf.constant(f"at most {MAX_STREAMS} start strings (texts) a request")),
            *settings_errors(*settings),
            unseen_error("the start string", *start),
            unseen_error("the acrostic", *heads),
            (tf.not_equal(form, "") & (form_index < 0), lambda: tf.strings.join(
                ["unknown poem form '", form, f"'; choose one of {', '.join(poem_forms.FORM_NAMES)}"])),
            *[(poem & failed, message) for failed, message in self.forms.errors(form_index, heads, start)],
        ]
        return tf.case(checks, default=lambda: tf.constant(""), exclusive=False)

    def write(self, start_ids, head_ids, poem, form_index, max_length, max_lines, temperature, top_k, top_p, seed):
        """The texts of a valid request: its plan, the generation loop, the kept characters."""
        start_lengths = start_ids.row_lengths()
        forced, classes, length, max_lines = tf.cond(
            poem,
            lambda: self.forms.plan(form_index, head_ids, start_ids),
            lambda: free_plan(start_ids, tf.maximum(max_length, start_lengths), max_lines),
        )
        ids, shown, first, kept, _ = self.run_loop(forced, classes, length, max_lines, temperature, top_k, top_p, seed)
        return self.kept_texts(ids, shown, first, kept, ~poem, start_lengths)

    def run_loop(self, forced, classes, length, max_lines, temperature, top_k, top_p, seed):
        """generation_loop's (ids, shown, first, kept) for the plan, called as Generator.generate calls it.

        The number of streams (one, or many: tuning.MANY_STREAMS or more) and the decoding filters in use
        shape the loop when it is traced, so each combination is traced here, and each request
        runs the one its settings select.
        """
        n, room = tf.unstack(tf.shape(forced) - [0, 1])
        uniforms = tf.random.stateless_uniform(tf.stack([self.burn_in + room, n]), seed=tf.stack([seed, 0]))
        streams = tf.where(tf.equal(n, 1), 0, tf.where(n < tuning.MANY_STREAMS, 1, 2))
        decoding = tf.where(tf.equal(temperature, 0), 0,
                            1 + tf.cast(top_k > 0, tf.int32) + 2 * tf.cast(top_p < 1, tf.int32))
        args = (forced, classes, uniforms, length, max_lines, temperature, tf.minimum(top_k, self.vocab_size), top_p)
        branches = [
            self.loop_branch(args, known_streams, many, filters)
            for known_streams, many in ((1, False), (None, False), (None, True))
            for filters in DECODINGS
        ]
        return tf.switch_case(streams * len(DECODINGS) + decoding, branches)

    def loop_branch(self, args, known_streams, many, filters):
        """A branch of run_loop: the loop for one stream (known when traced, as CharStep's
        one-stream output layer needs it) or any number, in CharStep's many-stream form or not,
        with the decoding filters given (DECODINGS)."""
        forced, classes, uniforms, length, max_lines, temperature, top_k, top_p = args
        sampled, with_top_k, with_top_p = filters

        def branch():
            return generator.generation_loop(
                self.step(),
                tf.convert_to_tensor(self.masks),
                tf.ensure_shape(forced, [known_streams, None]),
                tf.ensure_shape(classes, [known_streams, None]),
                tf.ensure_shape(uniforms, [None, known_streams]),
                tf.ensure_shape(length, [known_streams]),
                max_lines,
                tf.constant(self.newline),
                tf.constant(self.burn_in),
                self.records,
                self.records,  # the model writes each poem's title: the signature takes none
                temperature if sampled else None,
                top_k if with_top_k else None,
                top_p if with_top_p else None,
                tf.ensure_shape(tf.fill(tf.shape(length), generator.RHYME), [known_streams]),  # forms without metre
                False,  # no scores
                many=many,
                bfloat16=tuning.sampling_bfloat16(many),
            )

        return branch

    def kept_texts(self, ids, shown, first, kept, whole_lines, start_lengths):
        """Each stream's text from its first shown character (the model's title, on a run of
        records) to its last kept one, as Generator.generate cuts them from the loop's ids.
        whole_lines: free text, cut back to its last line break after the start string, if it has
        one there (generator.whole_lines)."""
        length = first - shown + kept
        offsets = tf.range(tf.reduce_max(length))
        rows = tf.gather(ids, tf.minimum(shown[:, None] + offsets, tf.shape(ids)[1] - 1), batch_dims=1)
        line_breaks = (offsets < length[:, None]) & tf.equal(rows, self.newline)
        line_end = tf.reduce_max(tf.where(line_breaks, offsets + 1, 0), axis=1)
        count = tf.where(whole_lines & (line_end > first - shown + start_lengths), line_end, length)
        keep = (offsets < count[:, None]) & (rows > 0)  # as Vocab.decode, which leaves the unknown id out
        return tf.strings.reduce_join(tf.gather(self.chars, tf.ragged.boolean_mask(rows, keep)), axis=1)


class PoemForms(tf.Module):
    """poem_forms' four forms as tables: each form's plan (Generator.plan_arrays of its template),
    clause starts, names and sizes, and an index by name and alias."""

    def __init__(self, gen, chars):
        super().__init__()
        forms = poem_forms.FORMS
        templates = [poem_forms.template(form) for form in forms]
        self.width = generator.bucket(max(map(len, templates))) + 1  # plan entries: the longest form's room + 1
        self.cannot = ""  # why the model cannot write poems, if it cannot; every poem request gets it
        try:
            plans = [gen.plan_arrays(slots, self.width - 1) for slots in templates]
        except read_utils.InputError as e:
            self.cannot = str(e)
            plans = [(np.full(self.width, -1, np.int32), np.full(self.width, generator.FREE, np.int32))] * len(forms)
        self.forced = tf.constant([forced for forced, _ in plans])
        self.classes = tf.constant([classes for _, classes in plans])
        self.lengths = tf.constant([len(slots) for slots in templates])
        self.clauses = tf.constant([form.clauses for form in forms])
        most = max(form.clauses for form in forms)
        self.clause_starts = tf.constant(
            [poem_forms.clause_starts(form) + [0] * (most - form.clauses) for form in forms])
        self.names = tf.constant([form.name for form in forms])
        clause = lambda form: "X" * form.clause_length  # noqa: E731
        self.patterns = tf.constant(
            [f"{clause(form)}{poem_forms.COMMA}{clause(form)}{poem_forms.STOP}" for form in forms])
        aliases = [(name, i) for i, form in enumerate(forms) for name in (form.name, form.alias)]
        self.by_name = lookup_table([name for name, _ in aliases], [i for _, i in aliases], default=-1)
        # The form an acrostic of each length takes without a form name; longer ones take the last.
        self.for_acrostic = tf.constant([forms.index(poem_forms.form_for_acrostic("x" * k)) for k in range(most + 1)])
        self.chars = chars
        self.ideographs = tf.constant([poem_forms.is_ideograph(char) for char in gen.vocab.chars])

    def index(self, form, acrostic_length):
        """The index of the form named (-1: unknown), or poem_forms.form_for_acrostic's when none is named."""
        by_length = tf.gather(self.for_acrostic, tf.minimum(acrostic_length, tf.size(self.for_acrostic) - 1))
        return tf.where(tf.equal(form, ""), by_length, self.by_name.lookup(form))

    def with_heads(self, index, head_ids):
        """(forced, classes) [width] of the form's plan with clause k's first character fixed to
        head k, as poem_forms.template fixes it; heads past the form's clauses are left out."""
        count = tf.minimum(tf.size(head_ids), tf.gather(self.clauses, index))
        positions = tf.gather(self.clause_starts, index)[:count, None]
        forced = tf.tensor_scatter_nd_update(tf.gather(self.forced, index), positions, head_ids[:count])
        free = tf.fill([count], generator.FREE)
        classes = tf.tensor_scatter_nd_update(tf.gather(self.classes, index), positions, free)
        return forced, classes

    def plan(self, index, head_ids, start_ids):
        """(forced [n, room + 1], classes, length [n], max lines) of poems of this form, with the
        heads and each stream's start string fixed in them; room is the form's length bucketed."""
        forced, classes = self.with_heads(index, head_ids)
        fixed = tf.range(self.width) < start_ids.row_lengths()[:, None]
        forced = tf.where(fixed, start_ids.to_tensor(-1, shape=[None, self.width]), forced)
        classes = tf.where(fixed, generator.FREE, classes)
        length = tf.gather(self.lengths, index)
        room = graph_bucket(length)
        return forced[:, : room + 1], classes[:, : room + 1], tf.fill([start_ids.nrows()], length), tf.constant(0)

    def errors(self, form_index, heads, start):
        """(failed, message) of each check poem_forms.template makes, for a poem of a known form
        (form_index >= 0) with these heads and start strings, (characters, ids) each."""
        index = tf.maximum(form_index, 0)  # any valid index: the checks only count for a known form
        name, whole = tf.gather(self.names, index), tf.gather(self.lengths, index)
        (head_chars, head_ids), (start_chars, start_ids) = heads, start
        heads_count, clauses = tf.size(head_ids), tf.gather(self.clauses, index)
        not_ideographs = tf.unique(tf.boolean_mask(head_chars, ~tf.gather(self.ideographs, head_ids))).y
        longest_start = tf.reduce_max(tf.concat([start_ids.row_lengths(), [0]], 0))
        return [
            *([(tf.constant(True), lambda: tf.constant(self.cannot))] if self.cannot else []),
            (heads_count > clauses, lambda: join(
                "the acrostic has ", heads_count, " characters but a ", name, " has only ", clauses,
                " clauses; give one character per clause (绝句 have 4 clauses, 律诗 8)")),
            (tf.size(not_ideographs) > 0, lambda: join(
                "an acrostic is made of Chinese characters, one per clause; ",
                tf.strings.reduce_join(tf.strings.join(["'", not_ideographs, "'"]), separator=" "),
                " cannot begin a clause")),
            (longest_start > whole, lambda: join(
                "the start string has ", longest_start, " characters, more than a whole ", name, " (", whole,
                " with punctuation and line breaks)")),
            self.start_misfit(index, name, head_ids, start_chars, start_ids),
        ]

    def start_misfit(self, index, name, head_ids, start_chars, start_ids):
        """poem_forms.fit_start's check: each start character is the plan's, or a Chinese character
        where the plan samples one; the first one that is not is reported."""
        forced, classes = self.with_heads(index, head_ids)
        ids = start_ids.to_tensor(-1, shape=[None, self.width])
        open_slot = tf.equal(classes, generator.CLAUSE)
        fits = tf.equal(ids, forced) | (open_slot & tf.gather(self.ideographs, tf.maximum(ids, 0)))
        misfits = tf.where((tf.range(self.width) < start_ids.row_lengths()[:, None]) & ~fits)  # (stream, position)

        def message():
            stream, position = misfits[0, 0], misfits[0, 1]
            wanted = tf.where(open_slot[position], "a Chinese character",
                              tf.strings.join(["'", tf.gather(self.chars, tf.maximum(forced[position], 0)), "'"]))
            return join("the start string does not fit a ", name, " (one couplet per line, ",
                        tf.gather(self.patterns, index), "): character ", position + 1, " is '",
                        start_chars[stream][position], "' where the poem needs ", wanted)

        return tf.size(misfits) > 0, message


def free_plan(start_ids, lengths, max_lines):
    """(forced, classes, length, max lines) of free text: each start string, then free slots."""
    room = graph_bucket(tf.reduce_max(lengths))
    forced = start_ids.to_tensor(-1, shape=tf.stack([start_ids.nrows(), room + 1]))
    return forced, tf.fill(tf.shape(forced), generator.FREE), lengths, max_lines


def graph_bucket(length):
    """generator.bucket(length) in the graph: the smallest power of two from generator.bucket(1) on
    that is at least length."""
    return tf.while_loop(lambda room: room < length, lambda room: [room * 2], [tf.constant(generator.bucket(1))])[0]


def settings_errors(max_length, max_lines, temperature, top_k, top_p):
    """(failed, message) of each decoding setting out of its range: sample.py's flag bounds."""
    message = lambda text: lambda: tf.constant(text)  # noqa: E731
    return [
        (~((max_length >= 1) & (max_length <= MAX_LENGTH)), message(f"max_length must be between 1 and {MAX_LENGTH}")),
        (max_lines < 0, message("max_lines must be 0 (no limit) or more")),
        (~(tf.math.is_finite(temperature) & (temperature >= 0)), message("temperature must be 0 (greedy) or more")),
        (top_k < 0, message("top_k must be 0 (off) or more")),
        (~((top_p > 0) & (top_p <= 1)), message("top_p must be in (0, 1]; 1 switches it off")),
    ]


def unseen_error(name, chars, ids):
    """(failed, message): generator.check_seen's error for the characters with id 0 (ragged or not)."""
    flat = lambda values: values.flat_values if isinstance(values, tf.RaggedTensor) else values  # noqa: E731
    unseen = tf.unique(tf.boolean_mask(flat(chars), tf.equal(flat(ids), 0))).y
    listed = tf.strings.reduce_join(unseen, separator=" ")
    return tf.size(unseen) > 0, lambda: join(name, " has characters the model never saw: ", listed, "; leave them out")


def join(*parts):
    """One string of text and scalar tensors, numbers written in decimal."""
    return tf.strings.join([part if isinstance(part, str) or part.dtype == tf.string else tf.strings.as_string(part)
                            for part in parts])


def lookup_table(keys, values, default):
    keys, values = tf.constant(list(keys)), tf.constant(list(values), tf.int32)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=default)


def save(module, out):
    """Writes the SavedModel into a new directory next to out, then renames it: out appears whole or not at all."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        tf.saved_model.save(module, partial, signatures={"serving_default": module.generate})
        os.chmod(partial, 0o755)  # mkdtemp's 0700 would keep a server running as another user out
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
