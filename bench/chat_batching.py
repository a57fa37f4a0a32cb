"""The local chat model's batching: N concurrent replies vs the same N replies one after another.

    python bench/chat_batching.py [--shape qwen2.5-0.5b|tiny] [--replies 8] [--max-tokens 32] [--threads N]
                                  [--runner] [--out FILE.json]

The model is written randomly in memory at the shape of a real chat model (`qwen2.5-0.5b`: Qwen2.5-0.5B's
config, hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocabulary 151,936, tied embeddings; the
tiny model hides the cost) and served by `ChatModel` with the tiny model's tokenizer, so prompts are
short ChatML turns; the random model never writes an end-of-turn token, so every reply is exactly
`--max-tokens` long. Each reply is sampled (temperature 0.7) with its own seed. Reports the wall time
and aggregate tokens/s of both ways, their ratio, the steps and rows the batcher ran, and whether each
concurrent reply equals its solo one. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, SuppressTokensLogitsProcessor  # noqa: E402

from fish_worker.devtools.tiny_chat_model import IM_END, build_tokenizer  # noqa: E402
from fish_worker.dialogue.llm import ChatModel  # noqa: E402

MESSAGES = [
    "Hello, how are you?",
    "What's the weather like today?",
    "And what about tomorrow?",
    "Tell me something nice.",
    "Where should we go this weekend?",
    "What time is it?",
    "Can you sing?",
    "Goodbye for now.",
]

SHAPES = {
    # Qwen/Qwen2.5-0.5B-Instruct's config.json
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
}


def random_chat_model(shape: str, max_batch: int) -> ChatModel:
    tokenizer = build_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(IM_END)
    config = Qwen2Config(**SHAPES[shape], eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=[eos], pad_token_id=tokenizer.pad_token_id)
    return ChatModel(
        model, tokenizer, source=f"random {shape}", context_tokens=config.max_position_embeddings, max_batch=max_batch
    )


def reply_options(index: int, max_tokens: int) -> tuple[list[dict], dict]:
    messages = [{"role": "user", "content": MESSAGES[index % len(MESSAGES)]}]
    return messages, {"temperature": 0.7, "seed": index, "max_new_tokens": max_tokens}


def one_after_another(chat: ChatModel, count: int, max_tokens: int) -> tuple[float, list[str]]:
    started = time.perf_counter()
    replies = []
    for index in range(count):
        messages, options = reply_options(index, max_tokens)
        replies.append(chat.reply(messages, **options))
    return time.perf_counter() - started, replies


def concurrently(chat: ChatModel, count: int, max_tokens: int) -> tuple[float, list[str]]:
    replies = [""] * count

    def consume(index: int) -> None:
        messages, options = reply_options(index, max_tokens)
        replies[index] = "".join(chat.stream_reply(messages, **options))

    started = time.perf_counter()
    threads = [threading.Thread(target=consume, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, replies


async def _job(runner, index: int, max_tokens: int) -> None:
    job = {
        "id": f"c{index}",
        "input": {
            "message": MESSAGES[index % len(MESSAGES)],
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "seed": index,
            "mode": "chat",
        },
    }
    async for chunk in runner.run(job):
        if "error" in chunk:
            raise SystemExit(f"job {index} failed: {chunk['error']}")


def through_runner(chat: ChatModel, count: int, max_tokens: int) -> dict:
    """The same replies as chat jobs through JobRunner (tiny TTS checkpoint speaks them): at once vs in turn."""
    import asyncio
    import tempfile

    from fish_worker.conversations import MemoryConversationStore
    from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint
    from fish_worker.dialogue.turns import ConversationService
    from fish_worker.jobs.runner import JobRunner
    from fish_worker.settings import ChatSettings, Settings, StorageSettings
    from fish_worker.tts.loader import load_tts

    work = Path(tempfile.mkdtemp(prefix="chat-batching-"))
    settings = Settings(
        checkpoint_dir=write_tiny_checkpoint(work / "ckpt", seed=0),
        device="cpu",
        warmup=False,
        max_concurrency=count,
        storage=StorageSettings(voices_dir=work / "voices"),
        chat=ChatSettings(frames_per_sentence=8),
    )
    service = load_tts(settings)
    store = MemoryConversationStore(ttl_s=60, max_conversations=100)
    runner = JobRunner(service, settings, ConversationService(service, store, chat=chat, settings=settings))

    async def in_turn():
        for index in range(count):
            await _job(runner, index, max_tokens)

    async def at_once():
        await asyncio.gather(*(_job(runner, index, max_tokens) for index in range(count)))

    asyncio.run(_job(runner, 0, 2))  # warm-up
    walls = {}
    for name, fn in (("one_after_another_s", in_turn), ("at_once_s", at_once)):
        started = time.perf_counter()
        asyncio.run(fn())
        walls[name] = round(time.perf_counter() - started, 2)
    walls["speedup"] = round(walls["one_after_another_s"] / walls["at_once_s"], 2)
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--replies", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--runner",
        action="store_true",
        help="also run the replies as chat jobs through JobRunner (tiny TTS checkpoint)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    built = time.perf_counter()
    chat = random_chat_model(args.shape, max_batch=args.replies)
    print(
        f"model: {args.shape}, {sum(p.numel() for p in chat.model.parameters()) / 1e6:.0f} M parameters "
        f"(float32, built in {time.perf_counter() - built:.0f} s), {torch.get_num_threads()} torch threads",
        flush=True,
    )
    chat.reply([{"role": "user", "content": "Hi"}], max_new_tokens=2, seed=0)  # warm-up

    def run(fn):
        steps, rows = chat.batcher.steps, chat.batcher.rows_decoded
        wall, replies = fn(chat, args.replies, args.max_tokens)
        return wall, replies, chat.batcher.steps - steps, chat.batcher.rows_decoded - rows

    seq_wall, seq_replies, seq_steps, _ = run(one_after_another)
    con_wall, con_replies, con_steps, con_rows = run(concurrently)
    tokens = args.replies * args.max_tokens
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average": round(os.getloadavg()[0], 1),
        "torch_threads": torch.get_num_threads(),
        "shape": args.shape,
        "replies": args.replies,
        "max_tokens": args.max_tokens,
        "one_after_another": {
            "wall_s": round(seq_wall, 2),
            "tokens_per_s": round(tokens / seq_wall, 2),
            "steps": seq_steps,
        },
        "concurrent": {
            "wall_s": round(con_wall, 2),
            "tokens_per_s": round(tokens / con_wall, 2),
            "steps": con_steps,
            "rows_per_step": round(con_rows / max(con_steps, 1), 2),
        },
        "speedup": round(seq_wall / con_wall, 2),
        "replies_equal_to_solo": sum(a == b for a, b in zip(seq_replies, con_replies)),
    }
    if args.runner:
        # Let the random model write only the tokens the tiny tokenizer can decode, so there is text to speak.
        chat.batcher.processors.append(
            SuppressTokensLogitsProcessor(
                list(range(len(chat.tokenizer), chat.model.config.vocab_size)), device=chat.device
            )
        )
        report["job_runner"] = through_runner(chat, args.replies, args.max_tokens)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
