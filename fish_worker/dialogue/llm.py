"""The chat model: a local Hugging Face causal LM with a chat template, loaded once, replying in deltas.
One of the two chat backends (backend.py); the other asks a remote engine (remote_chat.py).

    model = ChatModel.load("/models/qwen2.5-1.5b-instruct")     # bf16 on CUDA, float32 on CPU
    for delta in model.stream_reply(history, temperature=0.7, max_new_tokens=200, system_prompt=None, seed=1):
        ...

Concurrent replies are decoded together, up to `max_batch` rows per step, by one engine thread
(chat_batching.py); each keeps its own temperature, seed and token budget. The caller's thread turns
the reply's tokens into text deltas, so the model keeps writing while the caller speaks what it has.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from fish_worker.dialogue.batched_decode import BatchedDecoder, UnsupportedChatModelError
from fish_worker.dialogue.chat_batching import ChatBatcher, TokenStream, row_processors
from fish_worker.dialogue.detokenize import IncrementalDetokenizer
from fish_worker.dialogue.prompt import fit_prompt
from fish_worker.engine.sampling_rules import TEMPERATURE

DEFAULT_MAX_BATCH = 8
# A typical chat reply's context, for sizing the KV memory the chat model holds at full batch: a system
# prompt and a few turns of history (~1,500 tokens) plus a spoken reply (~500), in whole 64-token blocks.
TYPICAL_REPLY_TOKENS = 2048


class ChatModelError(RuntimeError):
    """The chat model directory is missing or cannot be loaded."""


class ChatModel:
    def __init__(self, model, tokenizer, *, source: str, context_tokens: int, max_batch: int = DEFAULT_MAX_BATCH):
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.context_tokens = context_tokens
        self.decoder = BatchedDecoder(model)
        self.batcher = ChatBatcher(
            self.decoder,
            max_batch=max_batch,
            eos_token_ids=self._eos_token_ids(),
            processors=row_processors(model.generation_config, model.device),
        )

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def description(self) -> str:  # the ChatBackend protocol (backend.py)
        return f"local model {self.source} on {self.device} (up to {self.batcher.max_batch} replies decoded together)"

    @property
    def max_batch(self) -> int:
        return self.batcher.max_batch

    def kv_bytes(self, tokens: int = TYPICAL_REPLY_TOKENS) -> int:
        """KV cache memory of `max_batch` replies of `tokens` context each (what a full batch holds)."""
        return self.max_batch * tokens * self.decoder.bytes_per_token()

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = None, max_batch: int = DEFAULT_MAX_BATCH
    ) -> ChatModel:
        """Load tokenizer and weights from a local directory (never the network); `max_batch` replies
        decode together, more wait for a row."""
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
            raise ChatModelError(
                f"the tokenizer in {path} is a slow (Python) tokenizer; chat mode needs a fast one (a tokenizer.json)"
            )
        try:
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **{_DTYPE_KWARG: dtype})
        except Exception as exc:
            raise ChatModelError(f"cannot load the chat model's weights from {path}: {exc}") from exc
        model.to(device).eval()  # type: ignore[arg-type]  # transformers' typed wrapper of Module.to is wrong about its argument
        try:
            return cls(
                model,
                tokenizer,
                source=str(path),
                context_tokens=_context_tokens(model, tokenizer),
                max_batch=max_batch,
            )
        except UnsupportedChatModelError as exc:
            raise ChatModelError(f"cannot batch the chat model in {path}: {exc}") from exc

    def stream_reply(
        self,
        messages: list[dict],
        *,
        temperature: float = TEMPERATURE,
        max_new_tokens: int = 256,
        system_prompt: str | None = None,
        seed: int | None = None,
    ) -> ReplyStream:
        """Reply to `messages` (ending with the user turn); yields text deltas as tokens are generated.

        temperature <= 0 means greedy decoding. The same seed (and inputs) gives the same reply.
        The history is shortened from its oldest turns so the prompt plus the reply fit the context.
        Raises ValueError (PromptTooLongError) up front for bad messages or an oversized last message.
        The reply decodes in the model's shared steps alongside any others (chat_batching.py).
        `close()` on the returned iterator ends the reply and frees its row; `abort()` does too, from any
        thread, waking a consumer that waits for the next delta.
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

    def _generate_deltas(self, fitted, temperature: float, seed: int | None) -> ReplyStream:
        config = self.model.generation_config
        tokens = self.batcher.generate(
            fitted.token_ids,
            max_new_tokens=fitted.max_new_tokens,
            temperature=temperature,
            seed=seed,
            top_k=config.top_k,
            top_p=config.top_p,
        )
        return ReplyStream(tokens, IncrementalDetokenizer(self.tokenizer))

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


class ReplyStream:
    """A reply's text deltas, detokenized on the consumer's thread. `close()` ends the reply and frees its
    row; `abort()` (any thread) ends it too and wakes a consumer waiting for the next delta."""

    def __init__(self, tokens: TokenStream, detokenizer: IncrementalDetokenizer):
        self._tokens = tokens
        self._detokenizer = detokenizer
        self._flushed = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        for token_id in self._tokens:
            if delta := self._detokenizer.push(token_id):
                return delta
        if not self._flushed:
            self._flushed = True
            if delta := self._detokenizer.flush():
                return delta
        raise StopIteration

    def abort(self) -> None:
        self._tokens.abort()

    def close(self) -> None:
        self._tokens.close()


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
