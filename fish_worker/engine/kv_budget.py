"""How many jobs fit: the KV page pool's size and the default concurrency, from device memory.

Per token of context the slow transformer keeps keys and values for every layer:

    bytes/token = 2 (k, v) × n_layer × n_local_heads × head_dim × bytes per element

At openaudio-s1-mini shapes in bf16: 2 × 28 × 8 × 128 × 2 = 114,688 bytes (112 KiB). A job holds
pages for its prompt plus its token budget (docs/performance.md has the numbers per card).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fish_worker.engine.batched_forward import PagedKVCache

# A typical job: a 30 s reference (646 frames at 21.53/s) with its transcript and the text (~130
# tokens), plus 1,000 generated frames (the default max_tokens), in whole 64-token pages.
TYPICAL_JOB_TOKENS = 1792
CPU_DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 64  # the settings' upper bound
# Left free on a GPU for activations, the codec decode, a prefill's batch-1 cache and the allocator's slack.
GPU_WORKSPACE_BYTES = 2 * 1024**3
GPU_WORKSPACE_FRACTION = 0.05


@dataclass(frozen=True)
class KVBudget:
    max_concurrency: int
    kv_tokens: int  # the page pool's capacity, tokens of context
    bytes_per_token: int

    @property
    def pool_bytes(self) -> int:
        return self.kv_tokens * self.bytes_per_token


def plan(
    model,
    dtype: torch.dtype,
    device: torch.device,
    max_concurrency: int | None,
    kv_tokens: int | None,
    reserved_bytes: int = 0,
) -> KVBudget:
    """Fill in what the settings leave unset. On a GPU the pool takes the memory free after loading
    (less a workspace, and less `reserved_bytes` that others will take later: the chat model's KV)
    and concurrency follows from typical jobs; on the CPU: 4 typical jobs."""
    per_token = PagedKVCache.bytes_per_token(model, dtype)
    if kv_tokens is None:
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            usable = free - reserved_bytes - GPU_WORKSPACE_BYTES - int(GPU_WORKSPACE_FRACTION * total)
            kv_tokens = max(usable // per_token, model.config.max_seq_len)
        else:
            kv_tokens = (max_concurrency or CPU_DEFAULT_CONCURRENCY) * TYPICAL_JOB_TOKENS
    kv_tokens = max(kv_tokens, model.config.max_seq_len)  # one job of any size always fits
    if max_concurrency is None:
        if device.type == "cuda":
            max_concurrency = max(1, min(MAX_CONCURRENCY, kv_tokens // TYPICAL_JOB_TOKENS))
        else:
            max_concurrency = CPU_DEFAULT_CONCURRENCY
    return KVBudget(max_concurrency, kv_tokens, per_token)


def jobs_that_fit(card_bytes: int, fixed_bytes: int, bytes_per_token: int, job_tokens: int = TYPICAL_JOB_TOKENS) -> int:
    """Concurrent jobs of `job_tokens` on a card, after `fixed_bytes` (the weights) and the workspace."""
    usable = card_bytes - fixed_bytes - GPU_WORKSPACE_BYTES - int(GPU_WORKSPACE_FRACTION * card_bytes)
    return max(0, usable // (job_tokens * bytes_per_token))
