"""Local story backend: any ``transformers`` causal language model, by hub id or folder,
streaming from ``model.generate`` in a thread. The repetition penalty covers the *generated*
tokens only: one over the prompt would punish the caption's words and the few-shot examples.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from ...hf_token import find_hf_token
from ...runtime import get_device
from ..cleaning import turn_cleaner
from ..errors import StoryError
from ..limits import LOCAL_PROMPT_TOKENS, PREFILL_GRACE_SECONDS, fit_to_budget, turn_seconds
from ..options import StoryOptions
from ..prompts import CHAT_STORY_CHARS, COMPLETION_STORY_CHARS, Completion, StoryPrompt
from .base import StoryBackend

MEMORY_HEADROOM = 1.2  # weights x this must fit in the memory that is free
_OOM_WORDS = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate")


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(exc, (MemoryError, oom)) or any(s in str(exc).lower() for s in _OOM_WORDS)


def available_memory(device) -> int | None:
    """Bytes free on ``device`` (CUDA: free GPU memory; CPU: MemAvailable), or None."""
    import torch

    if device.type == "cuda":
        return sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def weights_bytes(folder: Path, dtype_size: int) -> int | None:
    """Bytes the weights in a local model folder take at ``dtype_size`` per value, from the
    safetensors headers alone (instant); ``None`` when unknown."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    try:
        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                    total += math.prod(handle.get_slice(key).get_shape())
    except Exception:  # an unreadable header: loading will report it properly
        return None
    return total * dtype_size


def hub_weights_bytes(model: str, dtype_size: int, token: str | None = None) -> int | None:
    """The same for a hub model id, from its safetensors metadata (``None`` offline, or when
    the Hub does not say)."""
    if os.environ.get("HF_HUB_OFFLINE"):
        return None
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(model, timeout=5, token=token)
        return info.safetensors.total * dtype_size if info.safetensors else None
    except Exception:  # offline, unknown or gated model: loading will say what is wrong
        return None


@contextlib.contextmanager
def quiet_loading(quiet: bool = True) -> Iterator[None]:
    """While a model loads: no progress bars ("Loading weights"), log lines or warnings from
    ``transformers`` and ``huggingface_hub``, each setting restored after."""
    if not quiet:
        yield
        return
    from huggingface_hub import utils as hub
    from transformers.utils import logging

    bars, hub_bars, level = (
        logging.is_progress_bar_enabled(),
        not hub.are_progress_bars_disabled(),
        logging.get_verbosity(),
    )
    logging.disable_progress_bar()  # the hub's too
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
        if hub_bars:
            hub.enable_progress_bars()


class _TurnClock:
    """A ``StoppingCriteria`` that ends generation when :attr:`event` is set or ``seconds``
    after the prompt was read: ``generate``'s own ``max_time`` counts the reading, 15-45 s of a
    60 s turn on a busy CPU, and a steered turn would end inside its first sentence."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock = seconds, clock
        self.started: float | None = None  # when the first new token was there
        self.timed_out = False
        self.event = threading.Event()

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        now = self.clock()
        if self.started is None:  # called after each new token: the prompt has been read
            self.started = now
        self.timed_out = self.timed_out or now - self.started >= self.seconds
        stop = self.timed_out or self.event.is_set()
        return torch.full((input_ids.shape[0],), stop, device=input_ids.device)


class _GeneratedRepetitionPenalty:
    """CTRL-style repetition penalty over the tokens generated so far (not the prompt)."""

    def __init__(self, prompt_length: int, penalty: float):
        self.prompt_length, self.penalty = prompt_length, penalty

    def __call__(self, input_ids, scores):
        import torch

        generated = input_ids[:, self.prompt_length :]  # (batch, new tokens so far)
        if generated.shape[1] == 0 or self.penalty == 1.0:
            return scores
        picked = torch.gather(scores, 1, generated)  # (batch, new tokens so far)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, generated, picked)  # (batch, vocab)


class _NoEndBefore:
    """Forbid paragraph ends (newline tokens) and end-of-text before ``min_new`` tokens."""

    def __init__(self, prompt_length: int, min_new: int, banned):
        self.prompt_length, self.min_new, self.banned = prompt_length, min_new, banned

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_length >= self.min_new or self.banned.numel() == 0:
            return scores
        scores = scores.clone()  # (batch, vocab)
        scores[:, self.banned.to(scores.device)] = -float("inf")
        return scores


class TransformersBackend(StoryBackend):
    """A ``transformers`` causal LM (a hub id or a folder) loaded once, one turn at a time.

    ``chat`` forces the chat template on or off (default: when the tokenizer has one);
    ``token`` is for gated hub models; ``timeout`` is the seconds one turn may write (default
    ``$STORYTELLER_STORY_TIME_LIMIT`` or 60), counted once the prompt is read
    (:class:`_TurnClock`). A request waits for the lock at most one such turn.
    """

    name = "transformers"

    def __init__(
        self,
        model: str | Path,
        device: str | None = None,
        token: str | None = None,
        repetition_penalty: float = 1.2,
        chat: bool | None = None,
        timeout: float | None = None,
    ):
        import torch

        self.time_limit = turn_seconds(timeout)  # before loading: a bad value fails at once
        self.model_name = str(model)
        self.device = get_device(device)
        self.repetition_penalty = repetition_penalty
        if self.device.type == "cuda":  # half precision on GPUs; bf16 where supported (Ampere+)
            major, _ = torch.cuda.get_device_capability(self.device)
            self.dtype = torch.bfloat16 if major >= 8 else torch.float16
        else:
            self.dtype = torch.float32
        self._lock = threading.Lock()
        token = find_hf_token(token)  # the Hub's own token: models download from the Hub
        self._check_memory(token)
        self.tokenizer, self.model = self._load(token)
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.chat = has_template if chat is None else bool(chat and has_template)

    def describe(self) -> str:
        mode = "chat template" if self.chat else "completion prompt"
        return f"{self.name}: {self.model_name} on {self.device.type} ({mode})"

    def _too_large(self, detail: str) -> StoryError:
        return StoryError(
            f"{self.name}: model '{self.model_name}' is too large for this machine ({detail}): "
            "pick a smaller model, a GPU machine, or the hosted backend (set HF_TOKEN)"
        )

    def _check_memory(self, token: str | None = None) -> None:
        """Refuse a model whose weights cannot fit before loading it (on a CPU the kernel would
        kill the process instead of raising an error)."""
        import torch

        dtype_size = torch.finfo(self.dtype).bits // 8
        folder = Path(self.model_name).expanduser()
        if folder.is_dir():
            need = weights_bytes(folder, dtype_size)
        else:
            need = hub_weights_bytes(self.model_name, dtype_size, token)
        free = available_memory(self.device)
        if need and free and need * MEMORY_HEADROOM > free:
            raise self._too_large(
                f"needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB is free on "
                f"{self.device.type}"
            )

    def _load(self, token: str | None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"token": token} if token else {}
        where = self.model_name
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            if self.device.type == "cuda":
                # every visible GPU for a plain "cuda" (Kaggle's two T4s), else the one named
                device_map = "auto" if self.device.index is None else {"": str(self.device)}
                model = AutoModelForCausalLM.from_pretrained(
                    where, dtype=self.dtype, device_map=device_map, **kwargs
                )
            else:
                model = AutoModelForCausalLM.from_pretrained(where, dtype=self.dtype, **kwargs)
                model.to(self.device)
        except Exception as exc:  # any load failure becomes one clear line
            if _is_out_of_memory(exc):
                raise self._too_large("out of memory while loading") from exc
            raise StoryError(
                f"{self.name}: cannot load model '{where}': {type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:300]} (a hub id needs internet; offline, give a "
                "local folder or use --backend offline)"
            ) from exc
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer, model

    def _end_token_ids(self):
        """Ids of every token that contains a line break, plus the end-of-text tokens."""
        if getattr(self, "_ends", None) is None:
            import torch

            newline = ("\n", "\u010a", "<0x0A>")  # plain, byte-level BPE, byte fallback
            vocab = self.tokenizer.get_vocab().items()
            ids = [i for token, i in vocab if any(n in token for n in newline)]
            eos = self.model.generation_config.eos_token_id
            ids += [eos] if isinstance(eos, int) else list(eos or [])
            self._ends = torch.tensor(sorted(set(ids)), dtype=torch.long)
        return self._ends

    def _encode(self, prompt: StoryPrompt, options: StoryOptions, story_chars: int):
        """Token ids for the prompt, and the :class:`Completion` that says how to read the
        output (forced opening, stop markers; none of those for chat models)."""
        if not self.chat:
            completion = prompt.completion(options, story_chars)
            return self.tokenizer(completion.text, return_tensors="pt"), completion
        messages = prompt.messages(options, story_chars)
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception:  # templates without a system role (Gemma, Mistral): merge it
            merged = messages[0]["content"] + "\n\n" + messages[1]["content"]
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": merged}], add_generation_prompt=True, tokenize=False
            )
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return ids, Completion(text, stop=(), joins=())

    @staticmethod
    def _turn_seconds(writing: float) -> float:
        """Seconds a turn that may write for ``writing`` seconds holds the model at most."""
        return writing + PREFILL_GRACE_SECONDS

    @property
    def lock_wait(self) -> float:
        """Seconds a request waits for the model: one whole turn of another request."""
        return self._turn_seconds(self.time_limit)

    def stream(self, prompt: StoryPrompt, options: StoryOptions) -> Iterator[str]:
        # One story at a time per loaded model (the CPU or GPU is busy anyway); the one
        # writing now ends within its time limit, so waiting longer than that means trouble.
        if not self._lock.acquire(timeout=self.lock_wait):
            raise StoryError(
                f"{self.name}: the model is busy writing other stories (waited "
                f"{self.lock_wait:g} s): try again in a minute"
            )
        try:
            yield from self._stream(prompt, options)
        finally:
            self._lock.release()

    def _stream(self, prompt: StoryPrompt, options: StoryOptions) -> Iterator[str]:
        """One turn: fit the prompt, generate in a thread, clean what it streams."""
        from transformers import TextIteratorStreamer

        inputs, completion = fit_to_budget(  # counted by this model's own tokenizer
            lambda story_chars: self._encode(prompt, options, story_chars),
            lambda encoded: encoded[0]["input_ids"].shape[1],
            LOCAL_PROMPT_TOKENS,
            CHAT_STORY_CHARS if self.chat else COMPLETION_STORY_CHARS,
            f"{self.name}: the prompt",
        )
        seconds = options.turn_limit(self.time_limit)
        streamer = TextIteratorStreamer(  # the first text comes after the prompt is read
            self.tokenizer,
            skip_prompt=True,
            skip_special_tokens=True,
            timeout=self._turn_seconds(seconds),
        )
        clock = _TurnClock(seconds)
        kwargs = self._generate_kwargs(inputs, options, streamer, clock)
        failure: list[BaseException] = []
        thread = threading.Thread(
            target=self._generate, args=(kwargs, failure), name="story-generate", daemon=True
        )
        cleaner = turn_cleaner(prompt.story, completion.opening, completion.stop, completion.joins)
        thread.start()
        try:
            if completion.opening:
                yield completion.opening
            yield from cleaner.clean(streamer)
        finally:
            clock.event.set()  # a stop marker, or the reader stopped: end generation
            thread.join()
        if failure:
            exc = failure[0]
            if _is_out_of_memory(exc):
                raise self._too_large("out of memory while generating") from exc
            raise StoryError(
                f"{self.name}: generation failed: {type(exc).__name__}: {exc}"
            ) from exc
        if rest := cleaner.finish():
            yield rest

    def _generate_kwargs(self, inputs, options: StoryOptions, streamer, clock: _TurnClock):
        """``model.generate``'s arguments for one turn (and the seed of its sampling)."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        prompt_length = inputs["input_ids"].shape[1]
        processors = [_GeneratedRepetitionPenalty(prompt_length, self.repetition_penalty)]
        if not self.chat:  # a base model ends its paragraph early unless told to go on
            processors.append(
                _NoEndBefore(prompt_length, options.token_budget // 3, self._end_token_ids())
            )
        sampling = options.temperature > 0
        if options.seed is not None:
            torch.manual_seed(options.seed)  # the generation thread draws from this generator
        return dict(
            **inputs,
            streamer=streamer,
            max_new_tokens=options.token_budget,
            max_time=self._turn_seconds(clock.seconds),  # a hard cap, prompt reading included
            do_sample=sampling,
            temperature=options.temperature if sampling else None,
            top_p=0.95 if sampling else None,
            top_k=64 if sampling else None,
            stopping_criteria=StoppingCriteriaList([clock]),
            logits_processor=LogitsProcessorList(processors),
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def _generate(self, kwargs: dict, failure: list[BaseException]) -> None:
        """``model.generate`` in the generation thread; a failure is kept for the reader."""
        import torch

        try:
            with torch.inference_mode():
                self.model.generate(**kwargs)
        except BaseException as exc:  # re-raised by _stream
            failure.append(exc)
            kwargs["streamer"].end()
