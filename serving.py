"""What serve.py serves: the request model, the run's description, the batcher and the app.

Concurrent requests whose settings can share a generation call (everything but the seed and the
number of poems) are gathered into one Generator.generate call of up to max_batch streams. Each
request keeps its own seed: its streams draw the random numbers that sample.py draws with that
--seed and --num_samples (generator.seed_groups), so its poems can be written again there.
"""

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import math
import os
import secrets
from typing import Literal

import fastapi
import pydantic
from absl import logging
from fastapi import exceptions, responses

import generator
import metre_plan
import poem_forms
import read_utils
import run_dir

FREE_TEXT_LINES = 4  # sample.py's --max_lines default: free text stops after four lines
MAX_LENGTH = 512  # most characters of free text a request may ask for
SEED_LIMIT = 2**31
WARM_UP = (  # generate() settings compiled at start-up: one shape of each poem length and free text
    {"form": "五言绝句"},  # the length bucket of 五言绝句, 七言绝句 and 五言律诗
    {"form": "七言律诗"},
    {"max_length": 300, "max_lines": FREE_TEXT_LINES},  # free text with the API's defaults
)
EXAMPLE = '{"form": "五言绝句", "acrostic": "春夏秋冬"}'
PAGE_POLICY = (  # the page may load nothing from other sites, and talk only to this server
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'"
)


# --- requests and answers --------------------------------------------------------------------------

def request_model(max_poems, vocab_size):
    """The POST /api/poems body: every field optional and named as sample.py's flag."""

    class PoemRequest(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid", strict=True)

        start_string: str = pydantic.Field(
            "", max_length=64, description="text every poem begins with, up to 64 characters the model knows (--start_string)")
        title: str = pydantic.Field(
            "", max_length=32, description="the poem's title, up to 32 characters (--title; only for a run trained on titled poems, --input tang)")
        acrostic: str = pydantic.Field(
            "", max_length=8, description="藏头诗 heads, up to 8 Chinese characters: clause k begins with the k-th (--acrostic)")
        form: Literal[tuple(poem_forms.FORM_NAMES)] | None = pydantic.Field(
            None, description=f"a fixed form, one of {', '.join(poem_forms.FORM_NAMES)}; left out: free text (--form)")
        metre: Literal["off", "rhyme", "strict"] | None = pydantic.Field(
            None, description=f"off, rhyme or strict, for a poem of a form or an acrostic (--metre; default {metre_plan.DEFAULT_METRE})")
        temperature: float = pydantic.Field(0.8, ge=0, le=10, description="a number from 0 (greedy) to 10 (--temperature)")
        top_k: int = pydantic.Field(
            0, ge=0, le=vocab_size, description=f"a number of most likely characters to sample from, 0 (all) to {vocab_size} (--top_k)")
        top_p: float = pydantic.Field(
            1.0, gt=0, le=1, description="a probability above 0 and at most 1 (off): sample from the fewest characters that hold it (--top_p)")
        num_samples: int = pydantic.Field(
            1, ge=1, le=max_poems, description=f"a number of poems, 1 to {max_poems} (--num_samples)")
        seed: int | None = pydantic.Field(
            None, ge=0, lt=SEED_LIMIT, description=f"an integer from 0 to {SEED_LIMIT - 1}; random when left out (--seed)")
        max_length: int = pydantic.Field(
            300, ge=1, le=MAX_LENGTH, description=f"a number of characters of free text, 1 to {MAX_LENGTH} (--max_length)")

    return PoemRequest


def settings_model(request_class):
    """The settings an answer reports: the request's, with the seed drawn and sample.py's --max_lines."""

    class Settings(request_class):
        seed: int
        max_lines: int = pydantic.Field(description="lines of free text (sample.py's --max_lines default)")

    return Settings


def answer_model(settings_class):
    class PoemsAnswer(pydantic.BaseModel):
        poems: list[str] = pydantic.Field(description="the poems, one couplet a line")
        settings: settings_class = pydantic.Field(
            description="what the poems were written with: sample.py with these flags writes them again")

    return PoemsAnswer


class ErrorAnswer(pydantic.BaseModel):
    detail: str = pydantic.Field(description="what is wrong and what to do, in one line")
    field: str | None = pydantic.Field(description="the request field at fault, if one is")


class RequestError(Exception):
    """A request the server cannot serve; answered with status 422 naming the field."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field = field


def error_answer(status, message, field=None):
    return responses.JSONResponse({"detail": message, "field": field}, status_code=status)


def validation_message(error, request_class):
    """One of pydantic's errors about a request body as (field, what is wrong and what to do)."""
    where = error["loc"][1:]  # past "body"
    kind = error["type"]
    if kind == "json_invalid":
        reason = error.get("ctx", {}).get("error", "")
        return None, f"the body is not valid JSON ({reason} at character {where[0] if where else 0}); send an object such as {EXAMPLE}"
    if not where:  # the body as a whole
        if kind == "missing":
            return None, f"the request has no body; send a JSON object of the fields you set ({{}} for all defaults), e.g. {EXAMPLE}"
        return None, f"the body must be a JSON object sent as Content-Type: application/json, e.g. {EXAMPLE}"
    field = str(where[0])
    if kind == "extra_forbidden":
        return field, f"{field}: there is no such field; the fields are {', '.join(request_class.model_fields)}"
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    description = request_class.model_fields[field].description
    return field, f"{field}: {error['msg']} (got {shown}); {field} takes {description}"


def check_request(request, pool):
    """RequestError for what the request model cannot see, before the request joins a shared call:
    a title for a run without titles, characters the model never saw, an acrostic or start string
    that does not fit the form, or a metre they contradict."""
    if request.title and not pool.records:
        raise RequestError("title", "this run was not trained on titled poems (train.py --input tang); leave title out")
    for field in ("start_string", "title", "acrostic"):
        with blaming(field):
            generator.check_seen(pool.vocab, {field: getattr(request, field)})
    poem = bool(request.form or request.acrostic)
    with blaming("metre"):
        if request.metre is not None and not poem:
            raise read_utils.InputError("metre applies to a poem of a form or an acrostic: set form or acrostic, or leave metre out")
    if poem:
        form = poem_forms.find_form(request.form) if request.form else poem_forms.form_for_acrostic(request.acrostic)
        with blaming("acrostic"):
            poem_forms.check_acrostic(form, request.acrostic)
        with blaming("start_string"):
            slots = poem_forms.template(form, request.acrostic, request.start_string)
        metre = request.metre or metre_plan.DEFAULT_METRE
        if metre != "off":
            with blaming("metre"):
                pool.check_metre(form, tuple(slots), metre)


@contextlib.contextmanager
def blaming(field):
    """Turns an InputError inside into a RequestError about field."""
    try:
        yield
    except read_utils.InputError as e:
        raise RequestError(field, str(e)) from None


def generate_settings(request):
    """Generator.generate's keyword arguments but the seed, as sorted items: the key of a shared call."""
    settings = {
        "prompt": request.start_string,
        "max_length": request.max_length,
        "max_lines": FREE_TEXT_LINES,
        "temperature": request.temperature,
        "top_k": request.top_k,
        "top_p": request.top_p,
        "form": poem_forms.find_form(request.form).name if request.form else None,
        "acrostic": request.acrostic,
    }
    settings["title"] = request.title
    settings["metre"] = request.metre or metre_plan.DEFAULT_METRE
    return tuple(sorted(settings.items()))


# --- the run -------------------------------------------------------------------------------------

def describe_run(checkpoint_dir, checkpoint_path):
    """What the page shows about the run: name, corpus file, training step, held-out loss (nats/char).

    The step is the checkpoint's number (train.py numbers checkpoints by step); the loss is the
    last validation loss train.py logged up to that step, None when the run has no such logs, or
    the best one when the checkpoint kept the weights that validated best (config.json's "kept").
    """
    with open(os.path.join(checkpoint_dir, "config.json"), encoding="utf-8") as f:
        record = json.load(f)
    corpus = record.get("corpus", {}).get("path")
    number = checkpoint_path.rsplit("-", 1)[-1]
    step = int(number) if number.isdigit() else None
    kept = record.get("kept", {})
    if step is not None and kept.get("step") == step:
        loss = round(kept["val_loss"], 4)
    else:
        loss = held_out_loss(os.path.join(checkpoint_dir, "logs", "validation"), step)
    return {
        "name": os.path.basename(os.path.abspath(checkpoint_dir)),
        "corpus": os.path.basename(corpus) if corpus else None,
        "step": step,
        "held_out_loss": loss,
    }


def held_out_loss(validation_logdir, step):
    """The last "loss" train.py wrote to its validation TensorBoard logs at or before step."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    if not os.path.isdir(validation_logdir):
        return None
    events = event_accumulator.EventAccumulator(validation_logdir, size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    if "loss" not in events.Tags()["tensors"]:
        return None
    losses = [event for event in events.Tensors("loss") if step is None or event.step <= step]
    if not losses:
        return None
    value = float(tf.make_ndarray(max(losses, key=lambda event: event.step).tensor_proto))
    return round(value, 4) if math.isfinite(value) else None


# --- generation ------------------------------------------------------------------------------------

def batch_sizes(max_batch):
    """The batch sizes served: powers of two below max_batch, and max_batch."""
    return [2**i for i in range(max_batch.bit_length()) if 2**i < max_batch] + [max_batch]


class GeneratorPool:
    """A Generator for each of batch_sizes(max_batch): a call of n streams runs on the smallest
    that holds them, the rest padded, so only a few shapes are ever compiled.

    Every size computes in float32, as sample.py's few-stream calls do (Generator's reproducible),
    so a request's poems are what sample.py writes with its seed, whatever else shares its call.
    """

    def __init__(self, run, checkpoint_path, max_batch):
        self.vocab = run.vocab
        self.sizes = batch_sizes(max_batch)
        self.records = records = run_dir.trained_on_records(run.record)
        self.generators = {
            size: generator.Generator(run.config, run.vocab, checkpoint_path, size, records=records, reproducible=True)
            for size in self.sizes
        }
        self.writable = self.generators[self.sizes[0]].writable  # the characters a poem's clauses may take
        # The event loop checks each request's metre; most requests repeat a few forms and heads.
        self.check_metre = functools.lru_cache(maxsize=4096)(self.plan_metre)

    def plan_metre(self, form, slots, metre):
        """Plans a poem under metre (metre_plan.Planner): an InputError when its fixed characters leave no pattern or rhyme."""
        metre_plan.Planner(form, list(slots), metre, "", self.writable)

    def holding(self, streams):
        return self.generators[min(size for size in self.sizes if size >= streams)]

    def warm_up(self):
        """Compiles every batch size for the WARM_UP settings, so that no visitor waits for XLA."""
        for size, gen in self.generators.items():
            logging.info("compiling generation for %d stream(s)", size)
            for settings in WARM_UP:
                gen.generate(**settings)


@dataclasses.dataclass
class Job:
    """One request's poems, waiting for a call."""

    settings: tuple  # from generate_settings: jobs with equal settings may share a call
    seed: int
    count: int
    done: asyncio.Future  # its texts


def pack(jobs, max_batch):
    """Jobs in calls, in order of arrival: a call holds whole jobs of one settings, at most max_batch streams."""
    calls, filling = [], {}
    for job in jobs:
        call = filling.get(job.settings)
        if call is None or sum(j.count for j in call) + job.count > max_batch:
            call = filling[job.settings] = []
            calls.append(call)
        call.append(job)
    return calls


GATHER_WAITS = 5  # a call waits at most this many --batch_wait_ms for its requests (Batcher.gather)


class Batcher:
    """Gathers concurrent jobs and runs them in shared Generator calls, one call at a time, in a
    worker thread: the event loop, and so /api/health, keeps answering while a call runs."""

    def __init__(self, pool, max_batch, wait_seconds):
        self.pool = pool
        self.max_batch = max_batch
        self.wait_seconds = wait_seconds
        self.queue = asyncio.Queue()
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="generate")
        self.calls = 0  # generate() calls made
        self.poems = 0  # texts written for requests (padding streams not counted)
        self.waiting = 0  # requests waiting for their poems
        self.generating = False  # a call is running

    async def write(self, settings, seed, count):
        """The count texts of one request, once a call holding it has run."""
        job = Job(settings, seed, count, asyncio.get_running_loop().create_future())
        self.waiting += 1
        self.queue.put_nowait(job)
        try:
            return await job.done
        finally:
            self.waiting -= 1

    async def serve(self):
        """Runs until cancelled: gathers jobs, then runs their calls."""
        while True:
            for call in pack(await self.gather(), self.max_batch):
                await self.run(call)

    async def gather(self):
        """The first job to come, then those that keep coming, each within wait_seconds of the one
        before, until max_batch streams wait or GATHER_WAITS times wait_seconds have passed.

        Under load, the clients that a call has just answered send their next requests in a burst
        while their answers go out; gathering the whole burst makes one full call of it, where
        taking only what waits already would split the clients into half-full calls in turn.
        """
        loop = asyncio.get_running_loop()
        jobs = [await self.queue.get()]
        deadline = loop.time() + GATHER_WAITS * self.wait_seconds
        while True:
            while not self.queue.empty():  # those that came while the last calls ran
                jobs.append(self.queue.get_nowait())
            wait = min(self.wait_seconds, deadline - loop.time())
            if sum(job.count for job in jobs) >= self.max_batch or wait <= 0:
                return jobs
            try:
                jobs.append(await asyncio.wait_for(self.queue.get(), wait))
            except TimeoutError:
                return jobs

    async def run(self, call):
        """One generate() call for the jobs of call; each job gets its own texts or the call's error."""
        streams = sum(job.count for job in call)
        gen = self.pool.holding(streams)
        seeds = [(job.seed, job.count) for job in call]
        if gen.num_streams > streams:
            seeds.append((0, gen.num_streams - streams))  # padding streams, whose texts are dropped
        generate = functools.partial(gen.generate, seed=seeds, **dict(call[0].settings))
        self.generating = True
        try:
            texts = await asyncio.get_running_loop().run_in_executor(self.worker, generate)
        except Exception as e:  # noqa: BLE001 - every job of the call shares its settings, and so its error
            for job in call:
                if not job.done.done():
                    job.done.set_exception(e)
            return
        finally:
            self.generating = False
        self.calls += 1
        self.poems += streams
        start = 0
        for job in call:
            if not job.done.done():  # its client may have gone
                job.done.set_result([text.rstrip("\n") for text in texts[start : start + job.count]])
            start += job.count

    def stop(self):
        """Lets a running call finish; nothing else runs after."""
        self.worker.shutdown(wait=True, cancel_futures=True)


# --- the app ------------------------------------------------------------------------------------

class BodyLimit:
    """ASGI middleware: a request whose body is over max_bytes gets a 413 answer and never reaches the app."""

    def __init__(self, app, max_bytes):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self.refuse(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:  # the body is read here, so an over-long one without a declared length is refused too
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self.refuse(scope, receive, send)
            more = message.get("more_body", False)
        body = b"".join(chunks)

        async def replay():
            nonlocal body
            if body is None:
                return await receive()
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message

        await self.app(scope, replay, send)

    async def refuse(self, scope, receive, send):
        message = f"the request body is over {self.max_bytes} bytes; send only the fields you set, e.g. {EXAMPLE}"
        await error_answer(413, message)(scope, receive, send)


def make_app(pool, run, page, max_batch, wait_seconds, max_body_bytes):
    """The FastAPI app serving the page (HTML text), POST /api/poems, GET /api/health and /openapi.json."""
    batcher = Batcher(pool, max_batch, wait_seconds)
    supports = {"title": pool.records, "metre": True}  # what the page offers: titles need a run of titled poems
    request_class = request_model(max_batch, len(pool.vocab))
    settings_class = settings_model(request_class)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.serve())
        yield
        task.cancel()  # the server stops after its requests are answered, so no job waits here
        batcher.stop()

    app = fastapi.FastAPI(
        title="CharRNN poems",
        summary="Tang poems from a character-level LSTM; fields are named as sample.py's flags.",
        docs_url=None,  # the interactive docs load scripts from other sites; /openapi.json describes the API
        redoc_url=None,
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(exceptions.RequestValidationError)
    async def invalid_request(request, error):
        problems = [validation_message(e, request_class) for e in error.errors()]
        return error_answer(422, "; ".join(message for _, message in problems), problems[0][0])

    @app.exception_handler(RequestError)
    async def unservable_request(request, error):
        return error_answer(422, str(error), error.field)

    @app.get("/", response_class=responses.HTMLResponse, include_in_schema=False)
    async def home():
        return responses.HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/api/health", summary="The server is up; which run it serves and how much it has written")
    async def health():
        return {
            "status": "ok",
            "run": run,
            "supports": supports,
            "forms": poem_forms.FORM_NAMES,
            "max_poems": max_batch,
            "generation_calls": batcher.calls,
            "poems_written": batcher.poems,
            "requests_waiting": batcher.waiting,
            "generating": batcher.generating,
        }

    @app.post(
        "/api/poems",
        response_model=answer_model(settings_class),
        responses={413: {"model": ErrorAnswer, "description": "body too large"},
                   422: {"model": ErrorAnswer, "description": "a field is wrong; detail says which and what to do"}},
        summary="Write poems",
    )
    async def poems(request: request_class):
        check_request(request, pool)
        seed = secrets.randbelow(SEED_LIMIT) if request.seed is None else request.seed
        try:
            texts = await batcher.write(generate_settings(request), seed, request.num_samples)
        except read_utils.InputError as e:  # e.g. a run whose vocabulary has no poem punctuation
            raise RequestError(None, str(e)) from None
        used = {"seed": seed, "max_lines": FREE_TEXT_LINES}
        if request.form or request.acrostic:
            used["metre"] = request.metre or metre_plan.DEFAULT_METRE
        return {"poems": texts, "settings": request.model_dump() | used}

    return app
