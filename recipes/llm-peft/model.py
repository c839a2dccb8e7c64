"""The llm-peft recipe's model and data: a small Llama-style causal LM built from a `transformers` config
(random init, nothing downloaded), a byte-level tokenizer, and synthetic text split unevenly across sites.

Sizes: ``tiny`` (0.4 M parameters, tests and laptops), ``small`` (~110 M, a GPT-2-small-sized model for the
benchmark or a GPU). The same seed builds the same base model in every process: the base weights never
travel, in LoRA mode only the adapters do.
"""

from __future__ import annotations

import random
import threading

import torch

SIZES = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
    "small": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
}
VOCAB = 256  # bytes
CONTEXT = 64
BASE_SEED = 1234
LORA_TARGETS = ["q_proj", "v_proj"]
_SEEDED = threading.Lock()
"""torch's global RNG is per process: sites that are threads (SimEnv, client ranks) build their models one
at a time, or their base weights would differ (they never travel, so they must match)."""


def build_model(size: str = "tiny"):
    """The base causal LM, identical in every process (fixed seed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if size not in SIZES:
        raise SystemExit(f"--size must be one of {sorted(SIZES)}, got {size!r}")
    dims = SIZES[size]
    config = LlamaConfig(
        vocab_size=VOCAB,
        max_position_embeddings=4 * CONTEXT,
        num_key_value_heads=dims["num_attention_heads"],
        tie_word_embeddings=False,
        **dims,
    )
    with _SEEDED, torch.random.fork_rng():
        torch.manual_seed(BASE_SEED)
        return LlamaForCausalLM(config)


def with_lora(model, rank: int = 4, alpha: int = 16):
    """LoRA adapters on the attention's q/v projections; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    with _SEEDED, torch.random.fork_rng():
        torch.manual_seed(BASE_SEED + 1)  # the same initial adapters everywhere
        return get_peft_model(
            model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS)
        )


def exchanged(model, mode: str) -> dict[str, torch.Tensor]:
    """What crosses the wire: the adapter weights (lora), or every weight (sft)."""
    if mode == "lora":
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_exchanged(model, params: dict, mode: str) -> None:
    if mode == "lora":
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, params)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"adapter weights the model does not have: {result.unexpected_keys[:5]}")
    else:
        model.load_state_dict(params)


def full_model_bytes(size: str = "tiny") -> int:
    return sum(p.numel() * p.element_size() for p in build_model(size).parameters())


# ---------------------------------------------------------------- data
SUBJECTS = [
    "the nurse",
    "a doctor",
    "the patient",
    "our lab",
    "the scanner",
    "a student",
    "the model",
    "my team",
]
VERBS = ["reads", "checks", "measures", "trains", "reports", "stores", "labels", "sends"]
OBJECTS = [
    "the chart",
    "a sample",
    "the image",
    "every record",
    "the result",
    "a report",
    "the dose",
    "the data",
]
ENDINGS = ["today.", "at night.", "twice.", "on time.", "with care.", "again.", "by noon.", "for the ward."]


def sentences(n: int, seed: int, skew: int = 0) -> str:
    """``n`` sentences of a small grammar; ``skew`` shifts which words a site uses most (non-IID sites)."""
    rng = random.Random(seed)

    def pick(words: list[str]) -> str:
        return words[(skew + min(int(rng.expovariate(0.7)), len(words) - 1)) % len(words)]

    return " ".join(f"{pick(SUBJECTS)} {pick(VERBS)} {pick(OBJECTS)} {pick(ENDINGS)}" for _ in range(n))


def site_text(site: str) -> str:
    """A site's own text: sizes differ (site-1 has the least) and each leans to its own words (a site not named
    site-N gets a shard derived from its name)."""
    index = int(site.rsplit("-", 1)[-1]) if site.rsplit("-", 1)[-1].isdigit() else sum(site.encode())
    return sentences(150 + 60 * index, seed=index, skew=index)


def held_out_text() -> str:
    return " ".join(sentences(40, seed=10_000 + s, skew=s) for s in range(8))


def batches(text: str, batch_size: int, seed: int):
    """Endless random windows of CONTEXT bytes (input == labels: the model shifts them itself)."""
    data = torch.tensor(list(text.encode()), dtype=torch.long)
    if data.numel() <= CONTEXT:
        raise SystemExit(f"only {data.numel()} bytes of text: need more than {CONTEXT}")
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, data.numel() - CONTEXT, (batch_size,), generator=generator)
        yield torch.stack([data[s : s + CONTEXT] for s in starts])


@torch.no_grad()
def eval_loss(model, text: str) -> float:
    """Mean next-byte loss over consecutive windows of ``text``."""
    model.eval()
    data = torch.tensor(list(text.encode()), dtype=torch.long)
    windows = data[: (data.numel() // CONTEXT) * CONTEXT].view(-1, CONTEXT)
    losses = [model(input_ids=chunk, labels=chunk).loss.item() for chunk in windows.split(32)]
    model.train()
    return sum(losses) / len(losses)
