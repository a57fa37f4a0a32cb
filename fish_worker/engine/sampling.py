"""Token sampling, numerically the same as fish-speech 0.1.0's `logits_to_probs` / `sample`.

Differences on purpose: randomness comes from a per-request `torch.Generator` (so a seed gives the
same tokens whatever else the process is doing), and nothing here touches the global RNG. With a
generator seeded like `torch.manual_seed(seed)`, draws are identical to fish-speech's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fish_worker.engine.sampling_rules import REPETITION_PENALTY, TEMPERATURE, TOP_P


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    repetition_penalty: float = REPETITION_PENALTY
    max_new_tokens: int = 1000

    def as_tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # fish-speech passes these to the model as bf16 0-d tensors; matching the rounding keeps
        # a seeded run token-for-token equal to its output.
        def t(v: float) -> torch.Tensor:
            return torch.tensor(float(v), device=device, dtype=torch.bfloat16)

        return t(self.temperature), t(self.top_p), t(self.repetition_penalty)


def logits_to_probs(
    logits: torch.Tensor,  # [vocab]
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    repetition_penalty: torch.Tensor,
    previous_tokens: torch.Tensor | None = None,  # [window]
) -> torch.Tensor:
    logits = logits.clone()
    if previous_tokens is not None:
        previous_tokens = previous_tokens.long()
        score = torch.gather(logits, dim=-1, index=previous_tokens)
        score = torch.where(score < 0, score * repetition_penalty, score / repetition_penalty)
        logits.scatter_(dim=-1, index=previous_tokens, src=score)

    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cum_probs = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    to_remove = cum_probs > top_p
    to_remove[0] = False  # keep at least one token
    to_remove = to_remove.scatter(dim=-1, index=sorted_indices, src=to_remove)
    logits = logits.masked_fill(to_remove, -float("inf"))
    logits = logits / torch.clip(temperature, min=1e-5)
    return torch.softmax(logits, dim=-1)


def sample_token(
    logits: torch.Tensor,  # [vocab]
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    repetition_penalty: torch.Tensor,
    generator: torch.Generator,
    previous_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token id as a [1] int tensor (exponential race = multinomial without a device sync)."""
    probs = logits_to_probs(logits, temperature, top_p, repetition_penalty, previous_tokens)
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / q, dim=-1, keepdim=True).to(dtype=torch.int)


@dataclass(frozen=True)
class RowSampling:
    """Sampling settings of the rows of a batched step, one row per sequence."""

    temperature: torch.Tensor  # [B, 1] float32, already clipped as fish-speech clips it
    top_p: torch.Tensor  # [B, 1] float32
    repetition_penalty: torch.Tensor  # [B, 1] float32
    generators: list[torch.Generator]

    @classmethod
    def of(cls, params: list[SamplingParams], generators: list[torch.Generator], device: torch.device) -> "RowSampling":
        # The bf16 rounding of `as_tensors`, then float32: the value fish-speech's float32 ops see.
        rows = [p.as_tensors(device) for p in params]
        temperature = torch.stack([torch.clip(t, min=1e-5) for t, _, _ in rows]).float()[:, None]
        top_p = torch.stack([p for _, p, _ in rows]).float()[:, None]
        penalty = torch.stack([r for _, _, r in rows]).float()[:, None]
        return cls(temperature, top_p, penalty, generators)


def sample_rows(logits: torch.Tensor, sampling: RowSampling, previous_tokens: torch.Tensor) -> torch.Tensor:
    """`sample_token` for every row of logits [B, vocab] at once; previous_tokens [B, window]. Returns [B] int.

    Every op works row by row, so a row's result does not depend on the other rows; the random draw
    comes from each row's own generator, exactly as a lone `sample_token` call would draw it.
    """
    logits = logits.clone()
    dtype = logits.dtype  # bf16 logits on GPU: compare and scale in bf16, as the 0-d bf16 settings do there
    previous_tokens = previous_tokens.long()
    score = torch.gather(logits, dim=-1, index=previous_tokens)
    penalty = sampling.repetition_penalty.to(dtype)
    score = torch.where(score < 0, score * penalty, score / penalty)
    logits.scatter_(dim=-1, index=previous_tokens, src=score)

    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cum_probs = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    to_remove = cum_probs > sampling.top_p.to(dtype)
    to_remove[:, 0] = False
    to_remove = to_remove.scatter(dim=-1, index=sorted_indices, src=to_remove)
    logits = logits.masked_fill(to_remove, -float("inf"))
    probs = torch.softmax(logits / sampling.temperature.to(dtype), dim=-1)
    vocab = probs.shape[-1]
    q = torch.stack(
        [
            torch.empty(vocab, dtype=probs.dtype, device=probs.device).exponential_(1, generator=g)
            for g in sampling.generators
        ]
    )
    return torch.argmax(probs / q, dim=-1).to(dtype=torch.int)
