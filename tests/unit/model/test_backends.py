"""Both backends behind one interface: built from params, exported as a standard folder, loaded
back; LoRA on either, merged for export and saved as a PEFT adapter that PEFT itself loads."""

import pytest
import torch

from lm_pipeline.config import LoraConfig, ModelConfig, TokenizerConfig
from lm_pipeline.data.tokenizer import train_tokenizer
from lm_pipeline.model import lora
from lm_pipeline.model.backends import build_model, load_model, save_model, weights_sha256
from lm_pipeline.model.generate import generate

pytestmark = pytest.mark.models

TEXT = ["a tuple is an immutable sequence, and a list is a mutable one"] * 20
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}  # grouped-query attention, RoPE, RMSNorm
GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2}  # learned absolute positions
SHAPES = {"gpt": ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32),
          "hf": ModelConfig(backend="hf", hf_config=LLAMA, block_size=32),
          "hf-gpt2": ModelConfig(backend="hf", hf_config=GPT2, block_size=32)}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    train_tokenizer(TEXT, TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1)).save(
        str(folder / "tokenizer.json"))
    return folder


def build(backend: str, tokenizer_dir, lora_cfg: LoraConfig | None = None, parent=None):
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(0)
    return build_model(SHAPES[backend], lora_cfg or LoraConfig(), vocab, 0, parent)


def randomize_adapters(model) -> None:
    """LoRA's B starts at zero (a no-op adapter); a trained one is not."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.normal_(0, 0.2)


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[0]


IDS = torch.tensor([[0, 5, 9, 22, 40, 100, 7]])


@pytest.mark.metrics
@pytest.mark.parametrize("backend", ["gpt", "hf"])
def test_an_exported_folder_loads_back_as_the_same_network(backend, tokenizer_dir, tmp_path):
    model = build(backend, tokenizer_dir).eval()
    save_model(model, tokenizer_dir, tmp_path / "model", {"mlflow_run_id": ""})
    loaded, _ = load_model(tmp_path / "model")
    assert weights_sha256(loaded) == weights_sha256(model)
    assert torch.equal(logits(loaded, IDS), logits(model, IDS))
    # the KV cache of either backend gives the uncached model's tokens, also past block_size
    # (32), through three refills of the window: greedy, and sampled with one seed
    assert torch.equal(generate(loaded, IDS, max_new_tokens=80), in_windows(loaded, IDS, 80))
    cached = sampled(loaded, IDS, 80)
    assert len(set(cached[0, IDS.shape[1]:].tolist())) >= 20  # varied enough that a wrong refill shows
    assert torch.equal(cached, in_windows(loaded, IDS, 80, seed=0))


def sampled(model, ids, steps: int, seed: int = 0) -> torch.Tensor:
    """`generate` sampling at temperature 1 with a seeded generator: an untrained model's greedy
    output repeats one token, so only varied output can show a wrong window refill."""
    return generate(model, ids, max_new_tokens=steps, temperature=1.0,
                    generator=torch.Generator().manual_seed(seed))


def in_windows(model, ids, steps, seed: int | None = None):
    """What `generate` defines past the context, computed without a cache: each token is predicted
    from the tokens since the window last filled, and when a prediction has used a full window
    (block_size tokens) the next one starts from the newest block_size // 2 tokens. Greedy, or
    sampled as `sampled(..., seed)` samples."""
    from lm_pipeline.model.generate import sample_next

    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    block = model.block_size
    start = max(0, ids.shape[1] - (block - 1))
    for _ in range(steps):
        context = ids[:, start:]
        last = logits(model, context)[:, -1]
        token = sample_next(last, 1.0, None, None, generator) if generator else last.argmax(-1, keepdim=True)
        ids = torch.cat([ids, token], dim=1)
        if context.shape[1] >= block:
            start = ids.shape[1] - block // 2
    return ids


@pytest.mark.metrics
@pytest.mark.parametrize("backend", ["gpt", "hf", "hf-gpt2"])
def test_left_padded_rows_with_an_attention_mask_compute_what_each_row_computes_alone(backend, tokenizer_dir):
    """Serving batches prompts of different lengths left-padded: each row's logits and its greedy
    continuation through the KV cache must be its own, as if it were alone."""
    from lm_pipeline.model.generate import generate_tokens

    model = spread_weights(build(backend, tokenizer_dir).eval())
    rows = [[0, 5, 9, 22, 40, 100, 7], [0, 8], [0, 17, 3, 250]]
    width = max(map(len, rows))
    padded = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    with torch.no_grad():
        batch_logits = model(padded, attention_mask=mask)[0]
    for i, row in enumerate(rows):
        torch.testing.assert_close(batch_logits[i, width - len(row):], logits(model, torch.tensor([row]))[0])
    alone = [torch.cat(list(generate_tokens(model, torch.tensor([r]), 20)), dim=1)[0].tolist() for r in rows]
    assert all(len(set(tokens)) >= 5 for tokens in alone)  # varied enough that a wrong position shows
    batched = torch.cat(list(generate_tokens(model, padded, 20, attention_mask=mask)), dim=1).tolist()
    assert batched == alone
    with pytest.raises(ValueError, match="exceed the context of 32"):
        next(generate_tokens(model, padded, 32 - width + 2, attention_mask=mask))


def spread_weights(model):
    """Weights with a large spread (std 2 / sqrt(fan-in)): an untrained model's greedy output
    repeats one token, which would hide a wrong position or mask."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 2 / p.shape[-1] ** 0.5)
    return model


def test_the_hf_backend_builds_the_configured_family_with_our_vocabulary(tokenizer_dir):
    from tokenizers import Tokenizer

    model = build("hf", tokenizer_dir)
    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    assert type(model.hf).__name__ == "LlamaForCausalLM"
    assert model.hf.config.num_key_value_heads == 2 and model.hf.config.vocab_size == vocab
    assert [type(m).__name__ for m in model.layers()] == ["LlamaDecoderLayer"] * 2  # what FSDP shards


@pytest.mark.parametrize("backend", ["gpt", "hf"])
def test_lora_trains_only_adapters_and_exports_merged_weights_with_a_peft_adapter(backend, tokenizer_dir,
                                                                                  tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = build(backend, tokenizer_dir).eval()
    save_model(base, tokenizer_dir, tmp_path / "base", {"mlflow_run_id": ""})
    model = build(backend, tokenizer_dir, LoraConfig(r=4), parent=tmp_path / "base")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    randomize_adapters(model)
    model.eval()
    with_adapter = logits(model, IDS)
    save_model(model, tokenizer_dir, tmp_path / "tuned", {"mlflow_run_id": ""}, LoraConfig(r=4))

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "tuned").eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                     tmp_path / "tuned" / lora.ADAPTER_DIR).eval()
    with torch.no_grad():
        assert (merged(IDS).logits - with_adapter).abs().max() <= 1e-4
        assert (peft(IDS).logits - merged(IDS).logits).abs().max() <= 1e-4
        assert (merged(IDS).logits - logits(base, IDS)).abs().max() > 1e-2  # the adapter did something


@pytest.mark.parametrize("backend", ["gpt", "hf"])
def test_the_training_step_learns_on_either_backend_with_bf16_accumulation_and_checkpointing(backend,
                                                                                            tokenizer_dir):
    import numpy as np

    from lm_pipeline.config import Config
    from lm_pipeline.training.parallel import checkpoint_activations
    from lm_pipeline.training.step import train_step

    cfg = Config.model_validate({"model": SHAPES[backend].model_dump(), "train": {
        "precision": "bf16", "grad_accum_steps": 2, "batch_size": 4, "lr": 3e-3}})
    model = build(backend, tokenizer_dir)
    names = sorted(model.state_dict())
    checkpoint_activations(model)
    assert sorted(model.state_dict()) == names  # checkpoints keep their names
    optimizer = model.configure_optimizer(3e-3, 0.0, (0.9, 0.95))
    tokens = np.tile(np.arange(1, 40), 200)  # a pattern a model learns in a few steps
    losses = [train_step(model, optimizer, tokens, [0, s], 3e-3, cfg, torch.device("cpu")) for s in range(15)]
    assert losses[-1] < losses[0] - 0.5
