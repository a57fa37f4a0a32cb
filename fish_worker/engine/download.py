"""`python -m fish_worker.engine.download`: fetch the weights into the checkpoint directory.

    python -m fish_worker.engine.download                      # openaudio-s1-mini into FISH_CHECKPOINT_DIR
    python -m fish_worker.engine.download --chat-repo Qwen/Qwen2.5-1.5B-Instruct   # and a chat model

The TTS repo is gated: accept its licence on Hugging Face and set HF_TOKEN. Without network the
command fails within seconds and says which files to put where by hand.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fish_worker.engine.checkpoint import REQUIRED_FILES
from fish_worker.settings import Settings

TTS_REPO = "fishaudio/openaudio-s1-mini"
log = logging.getLogger("fish_worker.engine.download")


class DownloadError(RuntimeError):
    pass


def download(repo: str, target: Path, files: list[str] | None, timeout_s: float) -> Path:
    """Download `repo` (only `files`, if given) into `target`; DownloadError says what to do by hand."""
    # Read at import by huggingface_hub, so set before it is imported: no long hangs on a dead network.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout_s)))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(timeout_s)))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        path = snapshot_download(
            repo, local_dir=target, allow_patterns=files, token=os.environ.get("HF_TOKEN"), etag_timeout=timeout_s
        )
    except GatedRepoError:
        raise DownloadError(
            f"{repo} is gated: accept its licence at https://huggingface.co/{repo} "
            "and set HF_TOKEN to a token of that account"
        ) from None
    except RepositoryNotFoundError:
        raise DownloadError(f"{repo} not found (or private: set HF_TOKEN)") from None
    except Exception as exc:  # no network, DNS, proxy, disk...: the same advice applies
        wanted = ", ".join(files) if files else "all files of the repository"
        raise DownloadError(
            f"could not download {repo} ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            f"Without network, copy {wanted} "
            f"from https://huggingface.co/{repo} into {target}"
        ) from None
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m fish_worker.engine.download", description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default=TTS_REPO, help=f"TTS weights repo (default {TTS_REPO})")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=settings.checkpoint_dir,
        help="where the TTS weights go (default FISH_CHECKPOINT_DIR)",
    )
    parser.add_argument("--chat-repo", help="also download this Hugging Face chat model (for chat mode)")
    parser.add_argument(
        "--chat-dir",
        type=Path,
        default=settings.chat.model_dir,
        help="where the chat model goes (default FISH_CHAT_MODEL_DIR)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="network timeout in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(levelname)s %(message)s")

    jobs: list[tuple[str, Path, list[str] | None]] = [(args.repo, args.checkpoint_dir, sorted(REQUIRED_FILES))]
    if args.chat_repo:
        if args.chat_dir is None:
            parser.error("--chat-repo needs --chat-dir or FISH_CHAT_MODEL_DIR")
        jobs.append((args.chat_repo, args.chat_dir, None))
    try:
        for repo, target, files in jobs:
            log.info("downloading %s into %s", repo, target)
            log.info("done: %s", download(repo, target, files, args.timeout))
    except DownloadError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
