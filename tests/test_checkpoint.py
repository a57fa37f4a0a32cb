"""Checkpoint layout and start-up failures that name the file and how to get it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fish_worker.engine.checkpoint import REQUIRED_FILES, CheckpointError, load_models

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture
def broken_copy(tiny_checkpoint, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, target)
    return target


def test_tiny_checkpoint_has_the_released_layout(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert set(REQUIRED_FILES) <= names
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "dual_ar"
    for key in ("dim", "n_layer", "num_codebooks", "codebook_size", "max_seq_len", "n_fast_layer", "vocab_size"):
        assert key in config
    first_line = (tiny_checkpoint / "tokenizer.tiktoken").read_text().splitlines()[0]
    token, rank = first_line.split()
    assert rank == "0" and token == "AA=="  # base64 of byte 0
    specials = json.loads((tiny_checkpoint / "special_tokens.json").read_text())
    assert specials["<|im_end|>"] == 256 + 4 and "<|semantic:63|>" in specials


def test_tiny_checkpoint_is_reproducible(tmp_path):
    from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint

    a = torch.load(write_tiny_checkpoint(tmp_path / "a", seed=3) / "model.pth")
    b = torch.load(write_tiny_checkpoint(tmp_path / "b", seed=3) / "model.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(REQUIRED_FILES))
def test_missing_file_is_named(broken_copy, name):
    (broken_copy / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name}.*huggingface-cli download fishaudio/openaudio-s1-mini"):
        load_models(broken_copy, CPU, torch.float32)


def test_truncated_weights_are_reported(broken_copy):
    data = (broken_copy / "codec.pth").read_bytes()
    (broken_copy / "codec.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cannot read .*codec\.pth"):
        load_models(broken_copy, CPU, torch.float32)


def test_weights_that_do_not_match_the_config_are_reported(broken_copy):
    config = json.loads((broken_copy / "config.json").read_text())
    config["dim"] = 128
    (broken_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json and the weights do not belong together"):
        load_models(broken_copy, CPU, torch.float32)


def test_missing_weight_is_reported(broken_copy):
    weights = torch.load(broken_copy / "model.pth")
    del weights["norm.weight"]
    torch.save(weights, broken_copy / "model.pth")
    with pytest.raises(CheckpointError, match="lacks weight 'norm.weight'"):
        load_models(broken_copy, CPU, torch.float32)


def test_worker_refuses_to_start_without_checkpoint(tmp_path):
    env = {**os.environ, "FISH_CHECKPOINT_DIR": str(tmp_path / "nowhere"), "FISH_WARMUP": "false"}
    result = subprocess.run(
        [sys.executable, "handler.py", "--test_input", '{"input": {"message": "hi"}}'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "checkpoint directory not found" in result.stderr and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr


def test_handler_test_input_runs_the_job_for_real(tiny_checkpoint):
    env = {**os.environ, "FISH_CHECKPOINT_DIR": str(tiny_checkpoint), "FISH_WARMUP": "false", "FISH_DEVICE": "cpu"}
    job = '{"input": {"message": "One. Two sentences here.", "stream": true, "max_tokens": 3, "seed": 1}}'
    result = subprocess.run(
        [sys.executable, "handler.py", "--test_input", job],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    # What RunPod stores for a streamed job: the chunks (/stream) and a summary as `output` (/status).
    assert [c["output"]["text"] for c in printed["stream"]] == ["One. Two sentences here."]
    assert len(printed["stream"][0]["output"]["audio"]) == 3 * 2048
    assert printed["output"] == {
        "text": "One. Two sentences here.",
        "duration_s": round(3 * 2048 / 44100, 3),
        "chunks": 1,
        "seed": 1,
    }


def test_worker_tries_to_download_a_missing_checkpoint_when_given_a_token(tmp_path):
    """HF_TOKEN set + empty volume → the worker fetches the weights; offline it stops, saying what to copy."""
    env = {
        **os.environ,
        "FISH_CHECKPOINT_DIR": str(tmp_path / "volume"),
        "FISH_WARMUP": "false",
        "HF_TOKEN": "hf_test",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    result = subprocess.run(
        [sys.executable, "handler.py", "--test_input", '{"input": {"message": "hi"}}'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "downloading fishaudio/openaudio-s1-mini" in result.stderr
    assert "could not download fishaudio/openaudio-s1-mini" in result.stderr and "model.pth" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("_target_: builtins.print\n", "codec_config.yaml: _target_: not a codec size this file may set"),
        (
            "quantizer:\n  post_module:\n    _target_: os.system\n",
            "codec_config.yaml: quantizer.post_module._target_: not a codec size",
        ),
        ("decoder_dim: '64'\n", "codec_config.yaml: decoder_dim: Input should be a valid integer"),
        ("decoder_dim: ${oc.env:HOME}\n", "codec_config.yaml: decoder_dim: Input should be a valid integer"),
        ("decoder_dim: .nan\n", "codec_config.yaml: decoder_dim: Input should be a valid integer"),
        ("decoder_dim: [\n", "codec_config.yaml: cannot be read as YAML"),
        ("- 1\n", "codec_config.yaml: the file: Input should be a valid dictionary"),
    ],
)
def test_codec_config_is_data_checked_against_a_whitelist(broken_copy, capsys, yaml_text, expected):
    from fish_worker.engine.checkpoint import load_codec

    (broken_copy / "codec_config.yaml").write_text(yaml_text)
    with pytest.raises(CheckpointError) as raised:
        load_codec(broken_copy, CPU)
    assert str(raised.value).startswith(expected), raised.value
    assert capsys.readouterr().out == ""  # nothing in the file was run


def test_codec_weights_that_do_not_match_name_the_codec_config(broken_copy):
    from fish_worker.engine.checkpoint import load_codec

    text = (broken_copy / "codec_config.yaml").read_text().replace("decoder_dim: 64", "decoder_dim: 128")
    (broken_copy / "codec_config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match=r"codec\.pth: weight .* codec_config\.yaml .*do not belong together"):
        load_codec(broken_copy, CPU)


def test_worker_with_a_bad_codec_config_stops_saying_so(broken_copy):
    (broken_copy / "codec_config.yaml").write_text("_target_: builtins.print\n")
    env = {**os.environ, "FISH_CHECKPOINT_DIR": str(broken_copy), "FISH_WARMUP": "false", "FISH_DEVICE": "cpu"}
    result = subprocess.run(
        [sys.executable, "handler.py", "--test_input", '{"input": {"message": "hi"}}'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "cannot start: codec_config.yaml: _target_: not a codec size" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(60)
def test_models_are_built_uninitialised_and_take_the_files_weights(tiny_checkpoint):
    """Skipping init must not hang torch's trunc_normal_ (it redraws until every value is in range)
    and must leave no trace: every parameter is the file's."""
    from fish_worker.engine.checkpoint import _weightless

    with _weightless(zero_normal=True):
        weight = torch.nn.Linear(512, 512).weight
        torch.nn.init.trunc_normal_(weight, std=0.02)
    models = load_models(tiny_checkpoint, torch.device("cpu"), torch.float32)
    for model, file in ((models.text2semantic, "model.pth"), (models.codec, "codec.pth")):
        stored = torch.load(tiny_checkpoint / file, map_location="cpu", weights_only=True)
        stored = {k.removeprefix("model."): v for k, v in stored.items()}
        params = dict(model.named_parameters())
        assert set(params) <= set(stored), file
        for name, param in params.items():
            assert torch.equal(param.detach().float(), stored[name].float()), name
