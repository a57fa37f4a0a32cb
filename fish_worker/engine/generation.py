"""Text → codec tokens with fish-speech's dual-AR transformer, one frame at a time.

The prompt format and the per-step computation are fish-speech 0.1.0's (`ContentSequence`,
`decode_one_token_ar`, `decode_n_tokens`), run through the package's own model modules. What
this loop adds: frames are yielded as they are produced (so audio can start early), a
per-request random generator, and a stop flag checked between steps (cancellation).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fish_worker.engine.sampling import SamplingParams, sample_token

if TYPE_CHECKING:  # fish-speech ships no type information: to mypy this is Any, to a reader what the model is
    from fish_speech.models.text2semantic.llama import DualARTransformer

REPETITION_WINDOW = 16  # fish-speech's windowed repetition penalty


@dataclass(frozen=True)
class VoicePrompt:
    """A voice to imitate: a transcript and its codec tokens ([num_codebooks, frames], int)."""

    text: str
    codes: torch.Tensor


class PromptTooLongError(ValueError):
    pass


@contextlib.contextmanager
def short_prefill_cache(model: DualARTransformer, length: int) -> Iterator[None]:
    """A batch-1 KV cache of `length` positions for fish-speech's `forward_generate` while a prompt is prefilled.

    `forward_generate` attends over its whole cache (`max_seq_len`, 8,192 at S1-mini, as fish-speech's
    own loop sets it up), so a short prompt's prefill mostly multiplies masked zeros: measured on the
    bench checkpoint, 100 of a join's 178 ms. With a cache as long as the prompt rounded up to a page,
    it attends over what it holds (same tokens: the masked keys only ever added zeros;
    tests/test_batching.py, tests/test_equivalence.py), and no full-context batch-1 cache stays
    resident. The caller must own the model (the engine thread, under the generator's lock); the
    model's own caches come back after.
    """
    from fish_speech.models.text2semantic.llama import KVCache

    full = [layer.attention.kv_cache for layer in model.layers]
    full_length = model.max_seq_len
    cfg = model.config
    try:
        for layer, cache in zip(model.layers, full):
            with torch.device(cache.k_cache.device):
                layer.attention.kv_cache = KVCache(
                    1, length, cfg.n_local_heads, cfg.head_dim, dtype=cache.k_cache.dtype
                )
        model.max_seq_len = length  # forward_generate's mask spans this many keys
        yield
    finally:
        model.max_seq_len = full_length
        for layer, cache in zip(model.layers, full):
            layer.attention.kv_cache = cache


class SemanticGenerator:
    """Owns the text2semantic model and its KV caches; one sequence at a time."""

    def __init__(self, model: DualARTransformer, device: torch.device):
        self.model = model
        self.device = device
        self.config = model.config
        self.tokenizer = model.tokenizer
        self.im_end_id = self.tokenizer.get_token_id("<|im_end|>")
        self.lock = threading.Lock()  # held by whoever uses the model's batch-1 KV caches (they are shared state)

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    def encode_prompt(self, text: str, voices: list[VoicePrompt]) -> tuple[torch.Tensor, object, object]:
        from fish_speech.content_sequence import ContentSequence, VQPart

        seq = ContentSequence(modality="interleave")
        for voice in voices:
            seq.append([self.text_part(voice.text), VQPart(codes=voice.codes.cpu())], add_end=True, speaker=0)
        seq.append([self.text_part(text)], add_end=False, speaker=0)
        return seq.encode_for_inference(self.tokenizer, num_codebooks=self.num_codebooks)

    def text_part(self, text: str):
        """User text as plain text: "<|im_end|>" in it is seven ordinary characters, never the control token.

        fish-speech's `TextPart(text=...)` encodes special-token strings as their control ids; giving the
        part its tokens, encoded with no special token allowed, keeps ordinary text's ids unchanged.
        """
        from fish_speech.content_sequence import TextPart

        return TextPart(tokens=self.tokenizer.encode(text, allowed_special=False))

    def prompt_length(self, text: str, voices: list[VoicePrompt]) -> int:
        return int(self.encode_prompt(text, voices)[0].shape[1])

    def prepare(self, text: str, voices: list[VoicePrompt], params: SamplingParams):
        """(prompt, audio_masks, audio_parts, token budget); PromptTooLongError when nothing fits."""
        prompt, audio_masks, audio_parts = self.encode_prompt(text, voices)
        max_len = self.config.max_seq_len
        if prompt.shape[1] >= max_len:
            raise PromptTooLongError(f"prompt is {prompt.shape[1]} tokens, the model's context is {max_len}")
        return prompt, audio_masks, audio_parts, min(params.max_new_tokens, max_len - prompt.shape[1])

    @torch.inference_mode()
    def generate(
        self,
        text: str,
        voices: list[VoicePrompt],
        params: SamplingParams,
        generator: torch.Generator,
        stop: threading.Event | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield codec frames ([num_codebooks] int tensors) until <|im_end|>, the token budget or `stop`.

        fish-speech's own batch-1 loop, step for step: the reference the batched engine is tested and
        benchmarked against (tests/test_batching.py, tests/test_equivalence.py, bench/run.py); serving
        goes through BatchScheduler."""
        prompt, audio_masks, audio_parts, budget = self.prepare(text, voices, params)
        prompt_len = prompt.shape[1]
        temperature, top_p, repetition_penalty = params.as_tensors(self.device)
        rows = self.num_codebooks + 1
        history = torch.zeros((rows, budget), dtype=torch.int, device=self.device)

        with self.lock:
            self._full_context_cache()
            x = prompt.to(self.device).view(1, rows, prompt_len)
            input_pos = torch.arange(0, prompt_len, device=self.device)
            token = self.decode_frame(
                x, input_pos, temperature, top_p, repetition_penalty, generator, audio_masks, audio_parts, window=None
            )
            input_pos = torch.tensor([prompt_len], device=self.device, dtype=torch.int)
            for step in range(budget):
                if int(token[0, 0]) == self.im_end_id:
                    return
                yield token[1:, 0].clone()
                if step == budget - 1 or (stop is not None and stop.is_set()):
                    return
                # fish-speech's window: the first 16 slots (zeros included) until 16 tokens exist
                window = (
                    history[:, :REPETITION_WINDOW]
                    if step < REPETITION_WINDOW
                    else history[:, step - REPETITION_WINDOW : step]
                )
                with sdpa_kernel(SDPBackend.MATH):
                    token = self.decode_frame(
                        token.view(1, rows, 1),
                        input_pos,
                        temperature,
                        top_p,
                        repetition_penalty,
                        generator,
                        audio_masks,
                        audio_parts,
                        window,
                    )
                input_pos += 1
                history[:, step : step + 1] = token

    def _full_context_cache(self) -> None:
        """fish-speech's batch-1 cache at the model's whole context, as its own generate() sets it up
        (the loader leaves it small: the batched engine never uses it; this loop is the reference)."""
        if self.model.max_seq_len >= self.config.max_seq_len:
            return  # already (setup_caches would also renew the fast caches, for nothing)
        with torch.device(self.device):
            self.model.setup_caches(
                max_batch_size=1, max_seq_len=self.config.max_seq_len, dtype=next(self.model.parameters()).dtype
            )

    def decode_frame(
        self, x, input_pos, temperature, top_p, repetition_penalty, generator, audio_masks, audio_parts, window
    ) -> torch.Tensor:
        """One frame: the slow transformer picks the semantic token, the fast one the residual codes.
        Public: the batched engine (batching.py) prefills a joining job's prompt with it."""
        model = self.model
        out = model.forward_generate(x, input_pos, audio_masks=audio_masks, audio_parts=audio_parts)
        # fish-speech penalises the window's first column (all rows) for the semantic token.
        semantic = sample_token(
            out.logits[0, -1],
            temperature,
            top_p,
            repetition_penalty,
            generator,
            window[:, 0] if window is not None else None,
        )
        codebooks = [semantic]

        for layer in model.fast_layers:  # the fast transformer starts afresh for every frame
            layer.attention.kv_cache.k_cache.fill_(0)
            layer.attention.kv_cache.v_cache.fill_(0)
        hidden = out.hidden_states
        model.forward_generate_fast(hidden, torch.tensor([0], device=hidden.device, dtype=torch.long))
        code = semantic - self.tokenizer.semantic_begin_id
        code[code < 0] = 0
        hidden = model.fast_embeddings(code)
        codebooks.append(code)
        for idx in range(1, self.num_codebooks):
            logits = model.forward_generate_fast(hidden, torch.tensor([idx], device=hidden.device, dtype=torch.long))
            code = sample_token(
                logits[0, -1, :1024],
                temperature,
                top_p,
                repetition_penalty,
                generator,
                window[idx + 1] if window is not None else None,
            )
            hidden = model.fast_embeddings(code)
            codebooks.append(code)
        return torch.stack(codebooks, dim=1).T  # [rows, 1]
