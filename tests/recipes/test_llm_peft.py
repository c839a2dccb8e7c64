"""recipes/llm-peft: federated LoRA on a transformers causal LM (adapters only on the wire), and full SFT."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "llm-peft"

pytest.importorskip("transformers")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def recipe_model():
    sys.path.insert(0, str(RECIPE))
    try:
        import model

        yield model
    finally:
        sys.path.remove(str(RECIPE))
        sys.modules.pop("model", None)


def run_job(tmp_path: Path, *flags: str) -> Path:
    out = subprocess.run(
        [
            sys.executable,
            str(RECIPE / "job.py"),
            "--env",
            "sim",
            "--job_root",
            str(tmp_path / "jobs"),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Job status: completed" in out.stdout
    (job,) = (tmp_path / "jobs").iterdir()
    return job


def sent_bytes(job: Path) -> list[int]:
    lines = []
    for site in ("site-1", "site-2"):
        lines += [json.loads(line) for line in (job / "logs" / f"{site}.jsonl").read_text().splitlines()]
    return [e["bytes"] for e in lines if e["event"] == "result_sent"]


def test_federated_lora_lowers_held_out_loss_and_only_adapters_travel(tmp_path, recipe_model):
    import torch
    from safetensors.torch import load_file

    job = run_job(tmp_path, "--mode", "lora", "--rounds", "3", "--steps", "12")
    result = load_file(str(job / "models" / "global_model.safetensors"))
    assert result and all("lora_A" in name or "lora_B" in name for name in result)  # nothing but adapters

    full = recipe_model.full_model_bytes("tiny")
    adapters = sum(t.numel() * t.element_size() for t in result.values())
    sent = sent_bytes(job)
    assert len(sent) == 2 * 3 and set(sent) == {adapters}
    assert adapters < 0.02 * full  # < 2% of the model's bytes per site and round

    held_out = recipe_model.held_out_text()
    base = recipe_model.with_lora(recipe_model.build_model("tiny"))  # initial adapters: B = 0, the base model
    before = recipe_model.eval_loss(base, held_out)
    recipe_model.load_exchanged(base, result, "lora")
    after = recipe_model.eval_loss(base, held_out)
    assert after < before - 0.2, (before, after)  # judged here, independently of what the sites reported
    assert torch.count_nonzero(next(v for k, v in result.items() if "lora_B" in k)) > 0


def test_sft_mode_exchanges_the_full_model(tmp_path, recipe_model):
    from safetensors.torch import load_file

    job = run_job(tmp_path, "--mode", "sft", "--rounds", "1", "--steps", "4")
    result = load_file(str(job / "models" / "global_model.safetensors"))
    base = recipe_model.build_model("tiny").state_dict()
    assert sorted(result) == sorted(base)
    assert set(sent_bytes(job)) == {recipe_model.full_model_bytes("tiny")}
    assert any((result[k] != base[k]).any() for k in base)  # trained
