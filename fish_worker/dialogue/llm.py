"""The chat model: a local Hugging Face causal LM with a chat template, loaded once, replying in deltas.
One of the two chat backends (backend.py); the other asks a remote engine (remote_chat.py).

    model = ChatModel.load("/models/qwen2.5-1.5b-instruct")     # bf16 on CUDA, float32 on CPU
    for delta in model.stream_reply(history, temperature=0.7, max_new_tokens=200, system_prompt=None, seed=1):
        ...

`generate()` runs on a background thread (`async_bridge.merge_threads`) so the model keeps writing
while the caller speaks the sentences it already has. Calls are serialised by a lock: one model instance serves one reply at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

from fish_worker.async_bridge import Emit, merge_threads
from fish_worker.dialogue.detokenize import IncrementalDetokenizer
from fish_worker.dialogue.prompt import FittedPrompt, fit_prompt
from fish_worker.dialogue.sampling import SeededSampler, make_generator


class ChatModelError(RuntimeError):
    """The chat model directory is missing or cannot be loaded."""


class ChatModel:
    def __init__(self, model, tokenizer, *, source: str, context_tokens: int):
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.context_tokens = context_tokens
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def description(self) -> str:  # the ChatBackend protocol (backend.py)
        return f"local model {self.source} on {self.device} (one reply at a time)"

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> ChatModel:
        """Load tokenizer and weights from a local directory (never the network)."""
        path = Path(path)
        if not path.is_dir():
            raise ChatModelError(f"chat model directory not found: {path}")
        if not (path / "config.json").is_file():
            raise ChatModelError(f"chat model directory {path} has no config.json (not a Hugging Face model)")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as exc:
            raise ChatModelError(f"cannot load the chat model's tokenizer from {path}: {exc}") from exc
        if not tokenizer.chat_template:
            raise ChatModelError(f"the tokenizer in {path} has no chat template (is it a chat/instruct model?)")
        if not tokenizer.is_fast:  # prompts keep message text plain using its character offsets (chat_template.py)
            raise ChatModelError(f"the tokenizer in {path} is a slow (Python) tokenizer; chat mode needs a fast "
                                 "one (a tokenizer.json)")
        try:
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **{_DTYPE_KWARG: dtype})
        except Exception as exc:
            raise ChatModelError(f"cannot load the chat model's weights from {path}: {exc}") from exc
        model.to(device).eval()
        return cls(model, tokenizer, source=str(path), context_tokens=_context_tokens(model, tokenizer))

    def stream_reply(
        self,
        messages: list[dict],
        *,
        temperature: float = 0.7,
        max_new_tokens: int = 256,
        system_prompt: str | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Reply to `messages` (ending with the user turn); yields text deltas as tokens are generated.

        temperature <= 0 means greedy decoding. The same seed (and inputs) gives the same reply.
        The history is shortened from its oldest turns so the prompt plus the reply fit the context.
        Raises ValueError (PromptTooLongError) up front for bad messages or an oversized last message.
        `close()` on the returned iterator stops the generation.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        fitted = fit_prompt(
            self.tokenizer,
            messages,
            system_prompt=system_prompt,
            max_new_tokens=max_new_tokens,
            context_tokens=self.context_tokens,
        )
        return self._generate_deltas(fitted, temperature, seed)

    def reply(self, messages: list[dict], **options) -> str:
        """The whole reply at once (same options as stream_reply)."""
        return "".join(self.stream_reply(messages, **options))

    def _generate_deltas(self, fitted: FittedPrompt, temperature: float, seed: int | None) -> Iterator[str]:
        def generate(emit: Emit, cancelled: threading.Event) -> None:
            self._run_generate(fitted, temperature, seed, emit, cancelled)

        with self._lock, closing(merge_threads(generate, name="chat")) as tokens:
            detokenizer = IncrementalDetokenizer(self.tokenizer)
            for token_id in tokens:
                if delta := detokenizer.push(token_id):
                    yield delta
            if delta := detokenizer.flush():
                yield delta
        # Leaving the `with` early (the stream closed) sets `cancelled`: generate() stops at its next
        # token; the thread is joined before the lock is released.

    def _run_generate(self, fitted, temperature, seed, emit: Emit, cancelled: threading.Event) -> None:
        config = self.model.generation_config
        input_ids = torch.tensor([fitted.token_ids], device=self.device)
        samplers = []
        if temperature > 0:
            generator = make_generator(self.device, seed)
            samplers.append(SeededSampler(generator, temperature, config.top_k, config.top_p))
        self.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            # Greedy on purpose: SeededSampler (last processor) has already chosen the token.
            do_sample=False,
            temperature=None,
            top_k=None,
            top_p=None,
            max_new_tokens=fitted.max_new_tokens,
            eos_token_id=self._eos_token_ids(),
            pad_token_id=self._pad_token_id(),
            logits_processor=samplers,
            stopping_criteria=StoppingCriteriaList([_StopWhen(cancelled)]),
            streamer=_TokenEmitter(emit),
        )

    def _eos_token_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    def _pad_token_id(self) -> int | None:
        pad = self.model.generation_config.pad_token_id
        if pad is None:
            pad = self.tokenizer.pad_token_id
        if pad is None:
            eos = self._eos_token_ids()
            pad = eos[0] if eos else None
        return pad


class _TokenEmitter:
    """The streamer `generate()` feeds: emits each new token id, skipping the initial prompt."""

    def __init__(self, emit: Emit):
        self._emit = emit
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        for token_id in value.reshape(-1).tolist():
            self._emit(token_id)

    def end(self) -> None:
        pass  # the bridge reports the end itself, also when generate() raises


class _StopWhen(StoppingCriteria):
    """Stops generation once the consumer has gone away (closed the stream)."""

    def __init__(self, event: threading.Event):
        self._event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self._event.is_set(), dtype=torch.bool, device=input_ids.device)


def _context_tokens(model, tokenizer) -> int:
    """How many tokens prompt + reply may span: the model's position limit, or the tokenizer's if lower."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (int(1e30)); ignore those.
    if tokenizer_limit and tokenizer_limit < 10_000_000:
        limit = min(limit, tokenizer_limit) if limit else tokenizer_limit
    if not limit:
        raise ChatModelError("cannot tell the chat model's context length (no max_position_embeddings in config.json)")
    return int(limit)


# transformers renamed `torch_dtype` to `dtype` in 4.56; the old name is deprecated in 5.x.
_DTYPE_KWARG = "dtype" if tuple(int(p) for p in transformers.__version__.split(".")[:2]) >= (4, 56) else "torch_dtype"
