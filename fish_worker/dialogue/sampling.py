"""Sampling with a private, seeded torch.Generator, plugged into `generate()` as a logits processor.

`generate(do_sample=True)` draws from torch's *global* RNG. In streaming chat the TTS model samples on
another thread at the same time, so a global seed would make neither reply reproducible. Instead we run
`generate` greedily and let this processor (applied last) pick the token with its own generator and
mask every other token, so greedy's argmax takes exactly the sampled one.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class SeededSampler(LogitsProcessor):
    """Temperature, then top-k, then top-p (nucleus), then one draw from `generator`."""

    def __init__(
        self, generator: torch.Generator, temperature: float, top_k: int | None = None, top_p: float | None = None
    ):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        self.generator = generator
        self.temperature = temperature
        self.top_k = top_k if top_k and top_k > 0 else None
        self.top_p = top_p if top_p is not None and 0 < top_p < 1 else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth_best = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth_best, float("-inf"))
        if self.top_p is not None:
            logits = _keep_nucleus(logits, self.top_p)
        probs = torch.softmax(logits, dim=-1)
        chosen = torch.multinomial(probs, num_samples=1, generator=self.generator)
        only_chosen = torch.full_like(scores, float("-inf"))
        return only_chosen.scatter(-1, chosen, 0.0)  # type: ignore[return-value]  # transformers types logits with the legacy torch.FloatTensor/LongTensor classes; torch ops give torch.Tensor


def _keep_nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask the tokens outside the smallest set whose probability reaches `top_p` (the best always stays)."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    # A token is dropped when the tokens ranked above it already reach top_p.
    drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def make_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A generator on `device`, seeded with `seed`, or from OS entropy when no seed is given."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
