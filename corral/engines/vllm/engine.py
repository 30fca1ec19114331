"""The vllm engine: a thin adapter over vLLM's in-process async engine.

vLLM does the batching, scheduling, sampling, stop strings and detokenisation; this
adapter only translates. ``start`` builds ``AsyncEngineArgs`` from the options and creates
``vllm.v1.engine.async_llm.AsyncLLM`` (``vllm.AsyncLLMEngine`` on a vLLM without it) on a
loader thread, as that call loads the weights. ``generate``:

- renders the chat template and tokenises on the event loop with vLLM's own tokenizer,
  so a prompt or ``max_tokens`` that does not fit ``max_model_len`` is refused (400)
  before vLLM sees it, and the ids counted are the ids vLLM evaluates (they are passed as
  a ``TokensPrompt``);
- asks vLLM for ``RequestOutputKind.DELTA`` outputs; a vLLM whose ``SamplingParams`` has
  no ``output_kind`` streams cumulative texts, which are diffed instead;
- aborts the vLLM request whenever the stream is closed before its end, including a
  stream never read (``ClosingStream``): vLLM would otherwise generate for nobody;
- answers greedy sampling with ``n > 1``, which vLLM refuses, as OpenAI does: with n
  greedy choices, from n one-choice requests read together (``merge``);
- translates vLLM's exceptions (``errors``): its validation errors are 400s naming the
  field, its queue limits 429s, a dead engine marks this engine failed.

``stop`` aborts every request still generating before shutting vLLM down (vLLM's
``shutdown`` ends no stream), so each stream ends with an error instead of hanging.

Tested here only against the fake in ``tests/fakes/vllm`` (no CPU build of vLLM), which
follows vLLM 0.33.0's source (see docs/engines.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import inspect
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from corral.core.errors import ConfigError, CorralError, EngineError, InvalidRequest, Unavailable
from corral.core.spec import ModelSpec
from corral.core.types import (
    RESPONSE_FORMAT,
    TOOLS,
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    SamplingParams,
    Usage,
)
from corral.engines.limits import context_room
from corral.engines.streams import ClosingStream
from corral.engines.sync import Blocking, heavy_imports
from corral.engines.vllm.errors import VLLMErrors
from corral.engines.vllm.merge import merged
from corral.engines.vllm.options import NAMED_ARGS, VLLMOptions

log = logging.getLogger(__name__)

SAMPLING_EPS = 1e-5  # vLLM samples greedily below this temperature (vllm/sampling_params.py:32)
STOP_WAIT = 5.0  # seconds ``stop`` waits for aborted streams to end before shutting vLLM down

_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.CANCELLED}


@dataclasses.dataclass(eq=False)  # hashed by identity: kept in a set
class _Job:
    """One admitted request, as vLLM knows it."""

    vllm_ids: list[str]  # one per request sent: several when greedy choices are fanned out
    prompt_ids: list[int]
    params: Any  # vllm.SamplingParams
    delta: bool  # False: vLLM sends cumulative texts
    settled: bool = False
    started: bool = False  # vLLM was asked to generate it
    ended: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # set once settled


class VLLMEngine:
    def __init__(self, spec: ModelSpec, options: VLLMOptions) -> None:
        self._spec = spec
        self._opts = options
        self._blocking = Blocking(f"{spec.name}-load")
        self._llm: Any = None
        self._tokenizer: Any = None
        self._sampling_cls: Any = None  # vllm.SamplingParams
        self._delta: Any = None  # RequestOutputKind.DELTA; None once known unsupported
        self._max_model_len = 0
        self._ids = itertools.count()
        self._errors: VLLMErrors | None = None
        self._aborts: set[asyncio.Task[None]] = set()
        self._jobs: set[_Job] = set()  # not settled yet
        self._stopping = False
        self._failure: str | None = None
        self._in_flight = 0
        self._completed = 0
        self._cancelled = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        llm = await self._blocking.run(self._create)
        try:
            tokenizer = llm.get_tokenizer()
            if inspect.isawaitable(tokenizer):  # a coroutine in vLLM 0.10, a plain method in later ones
                tokenizer = await tokenizer
            config = getattr(llm, "model_config", None)
            if config is None:  # the v0 AsyncLLMEngine exposes it through a coroutine only
                config = await llm.get_model_config()
            self._max_model_len = int(config.max_model_len)
        except BaseException:
            await _shutdown(llm)
            raise
        self._tokenizer = tokenizer
        self._llm = llm
        log.info("loaded %s (vllm) from %s: max_model_len %d", self._spec.name, self._spec.source, self._max_model_len)

    def _create(self) -> Any:
        """On the loader thread: import vLLM and load the model."""
        with heavy_imports():
            import vllm

            try:
                from vllm.v1.engine.async_llm import AsyncLLM as engine_cls
            except ImportError:
                engine_cls = vllm.AsyncLLMEngine
            try:
                from vllm.sampling_params import RequestOutputKind
            except ImportError:
                self._delta = None
            else:
                self._delta = RequestOutputKind.DELTA
            self._errors = VLLMErrors.load()
        self._sampling_cls = vllm.SamplingParams
        args = self._engine_args(vllm.AsyncEngineArgs)
        return engine_cls.from_engine_args(args)

    def _engine_args(self, args_cls: Any) -> Any:
        """``AsyncEngineArgs`` for this spec; a ConfigError names an unknown key."""
        known = {f.name for f in dataclasses.fields(args_cls)}
        for key in self._opts.engine_args:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"model {self._spec.name!r}: options.engine_args.{key} is not an AsyncEngineArgs field "
                    f"of the installed vLLM{hint}",
                    param=f"options.engine_args.{key}",
                )
        values: dict[str, Any] = dict(self._opts.engine_args)
        for name in NAMED_ARGS:
            value = getattr(self._opts, name)
            if value is not None and value is not False:  # unset: vLLM's own default
                values[name] = value
        try:
            return args_cls(model=self._spec.source, **values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model {self._spec.name!r}: vLLM refused its engine arguments: {exc}", param="options") from None

    async def stop(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await self._abort_in_flight(llm)
        if self._aborts:
            await asyncio.gather(*self._aborts, return_exceptions=True)
        if llm is not None:
            await _shutdown(llm)
        self._blocking.shutdown()

    async def _abort_in_flight(self, llm: Any) -> None:
        """Abort every request still generating, and wait (at most ``STOP_WAIT``) for their
        streams to end: vLLM's ``shutdown`` cancels its output handler without a word to
        the requests' queues (vllm/v1/engine/async_llm.py:305-317), so a stream left
        running would wait forever. vLLM gives each aborted request a last "abort" output
        (vllm/v1/engine/output_processor.py:637), which ``_stream`` turns into an error."""
        self._stopping = True
        jobs = [job for job in self._jobs if job.started and not job.settled]  # the others will not start
        if not jobs:
            return
        log.info("stopping %s: aborting %d request(s) still generating", self._spec.name, len(jobs))
        try:
            await asyncio.wait_for(llm.abort([i for job in jobs for i in job.vllm_ids]), STOP_WAIT)
            await asyncio.wait_for(asyncio.gather(*(job.ended.wait() for job in jobs)), STOP_WAIT)
        except TimeoutError:
            log.warning("stopping %s: %d stream(s) did not end within %.0fs", self._spec.name,
                        sum(not job.settled for job in jobs), STOP_WAIT)
        except Exception as exc:
            log.warning("stopping %s: could not abort the requests in flight: %r", self._spec.name, exc)

    def load(self) -> EngineLoad:
        return EngineLoad(
            in_flight=self._in_flight,
            cancelled_total=self._cancelled,
            completed_total=self._completed,
            failure=self._failure,
        )

    # -- admission ---------------------------------------------------------------------

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        tok = self._tokenizer
        if request.messages is None:
            assert request.prompt is not None
            ids = list(tok.encode(request.prompt))
            if not ids:
                raise InvalidRequest("the prompt is empty", param="prompt")
            return ids
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        # Hugging Face tokenizers carry their template as ``chat_template`` (None: none);
        # vLLM's MistralTokenizer has no such attribute and renders with its own
        # ``apply_chat_template`` (vllm/tokenizers/mistral.py:386), returning ids
        hugging_face = hasattr(tok, "chat_template")
        if hugging_face and not tok.chat_template:
            raise InvalidRequest(f"model {self._spec.name!r} has no chat template; use /v1/completions", param="messages")
        try:
            rendered = tok.apply_chat_template(messages, tokenize=not hugging_face, add_generation_prompt=True)
        except Exception as exc:  # templates raise for roles or orders they do not accept
            raise InvalidRequest(f"the model's chat template refused these messages: {exc}", param="messages") from None
        if not hugging_face:
            return [int(i) for i in rendered]
        # the template already wrote the special tokens it wants (as vLLM's own chat server does)
        return list(tok.encode(rendered, add_special_tokens=False))

    def _sampling(self, p: SamplingParams, n: int, max_tokens: int, prompt_param: str) -> tuple[Any, bool]:
        """``vllm.SamplingParams`` for ``p`` with ``n`` choices, and whether vLLM will send deltas."""
        cls = self._sampling_cls
        try:
            if self._delta is not None:
                try:
                    return self._params(cls, p, n, max_tokens, self._delta), True
                except TypeError:
                    log.info("this vLLM's SamplingParams takes no output_kind; diffing cumulative outputs")
                    self._delta = None
            return self._params(cls, p, n, max_tokens, None), False
        except Exception as exc:  # vLLM's own checks (VLLMValidationError)
            raise self._translate(exc, prompt_param) from None

    def _translate(self, exc: BaseException, prompt_param: str) -> CorralError:
        assert self._errors is not None  # set by start
        if self._errors.is_dead(exc) and self._failure is None:
            self._failure = f"vLLM's engine died: {type(exc).__name__}: {exc}"
            log.error("model %s: %s", self._spec.name, self._failure)
        return self._errors.translate(exc, self._spec.name, prompt_param)

    @staticmethod
    def _params(cls: Any, p: SamplingParams, n: int, max_tokens: int, output_kind: Any) -> Any:
        common = dict(
            n=n,
            max_tokens=max_tokens,  # always given: vLLM's default is 16
            temperature=p.temperature,  # 0: greedy
            top_p=p.top_p,
            top_k=p.top_k,  # 0: off, as in Corral
            seed=p.seed,
            stop=list(p.stop) or None,
            ignore_eos=p.ignore_eos,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            repetition_penalty=p.repetition_penalty,  # over prompt and output tokens, as Corral's engines
        )
        if output_kind is None:
            return cls(**common)
        return cls(**common, output_kind=output_kind)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        llm = self._llm
        if llm is None:
            raise Unavailable(f"model {self._spec.name!r} is not serving")
        needs = request.features()
        if needs:  # the router refuses these already (no ToolCalling/StructuredOutput here); never ignore them
            feature = TOOLS if TOOLS in needs else RESPONSE_FORMAT
            raise InvalidRequest(
                f"model {self._spec.name!r} (engine 'vllm') does not support {feature}",
                param=feature,
                code="unsupported_parameter",
            )
        prompt_ids = self._prompt_ids(request)
        param = "messages" if request.messages is not None else "prompt"
        room = context_room(self._max_model_len, len(prompt_ids), request.sampling.max_tokens, param)
        n = request.sampling.n
        # vLLM refuses greedy sampling with n > 1 (vllm/sampling_params.py:769-773): one
        # request per choice instead (with prefix caching, the prompt is computed once)
        fan_out = n if n > 1 and request.sampling.temperature < SAMPLING_EPS else 1
        params, delta = self._sampling(request.sampling, n // fan_out, request.sampling.max_tokens or room, param)
        first = next(self._ids)
        ids = [f"{request.request_id}-{first}"] + [f"{request.request_id}-{first}.{k}" for k in range(1, fan_out)]
        job = _Job(ids, prompt_ids, params, delta)
        self._in_flight += 1
        self._jobs.add(job)
        return ClosingStream(self._stream(llm, request, job), lambda: self._settle(llm, job, "cancelled"))

    # -- streaming ---------------------------------------------------------------------

    async def _stream(
        self, llm: Any, request: GenerationRequest, job: _Job
    ) -> AsyncGenerator[GenerationChunk | GenerationEnd, None]:
        n = request.sampling.n
        finished = [False] * n
        tokens = [0] * n  # generated so far, per choice
        sent = [0] * n  # cumulative mode: characters of each choice already sent
        param = "messages" if request.messages is not None else "prompt"
        try:
            if request.echo and request.prompt is not None:
                for i in range(n):
                    yield GenerationChunk(i, request.prompt)
            if self._stopping:  # vLLM is being shut down: it would never answer
                raise Unavailable(f"model {self._spec.name!r} is stopping")
            prompt = {"prompt_token_ids": job.prompt_ids}
            job.started = True
            outputs = merged([llm.generate(prompt, job.params, vllm_id) for vllm_id in job.vllm_ids])
            async with contextlib.aclosing(outputs):
                async for source, out in outputs:
                    for c in out.outputs:
                        i = source + c.index  # a fanned-out request has one choice, index 0
                        if not 0 <= i < n or finished[i]:
                            continue
                        if job.delta:
                            text = c.text
                            tokens[i] += len(c.token_ids)
                        else:
                            text = c.text[sent[i]:]
                            sent[i] = len(c.text)
                            tokens[i] = len(c.token_ids)
                        finish = self._finish(c.finish_reason)
                        if finish is FinishReason.CANCELLED and self._stopping:  # stop's abort
                            raise Unavailable(f"model {self._spec.name!r} stopped while generating this answer")
                        finished[i] = finish is not None
                        if text or finish is not None:
                            yield GenerationChunk(i, text, finish)
            if not all(finished):
                raise EngineError(
                    f"vLLM ended request {job.vllm_ids[0]} before every choice of model {self._spec.name!r} finished"
                )
            self._settle(llm, job, "ok")  # before the last yield: a consumer may stop reading there
        except CorralError:
            self._settle(llm, job, "error")
            raise
        except Exception as exc:  # vLLM refused, rejected or failed the request, or died
            error = self._translate(exc, param)
            if error.status >= 500:
                log.error("vLLM failed on request %s of %s: %r (cause: %r)", job.vllm_ids[0], self._spec.name, exc,
                          exc.__cause__)
            self._settle(llm, job, "error")
            raise error from None
        finally:
            self._settle(llm, job, "cancelled")  # a no-op unless the consumer left early
        yield GenerationEnd(Usage(len(job.prompt_ids), sum(tokens)))

    def _finish(self, reason: str | None) -> FinishReason | None:
        if reason is None:
            return None
        if reason == "error":
            raise EngineError(f"vLLM failed a request of model {self._spec.name!r}")
        return _FINISH.get(reason, FinishReason.STOP)

    def _settle(self, llm: Any, job: _Job, outcome: str) -> None:
        """Account for the job once; any end but a complete one aborts it in vLLM."""
        if job.settled:
            return
        job.settled = True
        job.ended.set()
        self._jobs.discard(job)
        self._in_flight -= 1
        if outcome == "ok":
            self._completed += 1
            return
        if outcome == "cancelled":
            self._cancelled += 1
        try:
            task = asyncio.get_running_loop().create_task(self._abort(llm, job.vllm_ids))
        except RuntimeError:  # no loop left (interpreter shutdown): nothing is generating either
            return
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def _abort(self, llm: Any, vllm_ids: list[str]) -> None:
        try:
            # a no-op in vLLM for a finished or unknown request; one id as vLLM < 0.10 takes only a str
            await llm.abort(vllm_ids[0] if len(vllm_ids) == 1 else vllm_ids)
        except Exception as exc:
            log.warning("could not abort vLLM request(s) %s of %s: %r", vllm_ids, self._spec.name, exc)


async def _shutdown(llm: Any) -> None:
    shutdown = getattr(llm, "shutdown", None)
    if shutdown is None:
        return
    result = shutdown()
    if inspect.isawaitable(result):
        await result
