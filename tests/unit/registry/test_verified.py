"""`lmp verify`: what `mlflow models serve` would run is the code and weights registered, and the
copy left to serve from is the checked one."""

from pathlib import Path

import mlflow
import pytest
import torch

from lm_pipeline.config import TokenizerConfig
from lm_pipeline.data.tokenizer import train_tokenizer
from lm_pipeline.model.backends import load_model, weights_sha256
from lm_pipeline.model.pretrained import save_pretrained
from lm_pipeline.model.transformer import GPT, GPTConfig
from lm_pipeline.registry.aliases import RegistryError
from lm_pipeline.registry.pyfunc import register_pyfunc
from lm_pipeline.registry.verified import verify

pytestmark = pytest.mark.security


@pytest.fixture
def registered(tmp_path, mlflow_uri):
    """Version 1 of `tiny`, registered as the register stage does; returns its folder in the store."""
    mlflow.set_tracking_uri(mlflow_uri)
    experiment = mlflow.create_experiment("verify", artifact_location=str(tmp_path / "mlruns"))
    tokenizer = train_tokenizer(["a tuple is an immutable sequence"] * 20,
                                TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=16, n_layer=1, n_head=2,
                                  n_embd=16)), tmp_path / "tokenizer.json", tmp_path / "model", {})
    weights = weights_sha256(load_model(tmp_path / "model", "cpu")[0])
    run_id = mlflow.MlflowClient().create_run(experiment).info.run_id
    register_pyfunc(tmp_path / "model", "tiny", run_id, {"weights_sha256": weights})
    return Path(mlflow.MlflowClient().get_model_version_download_uri("tiny", "1").removeprefix("file://"))


def test_an_untouched_version_is_checked_and_its_copy_left_to_serve(registered, tmp_path):
    assert "code and weights are the ones registered" in verify("models:/tiny/1", tmp_path / "served")
    served = {p.relative_to(tmp_path / "served") for p in (tmp_path / "served").rglob("*") if p.is_file()}
    stored = {p.relative_to(registered) for p in registered.rglob("*") if p.is_file()}
    assert served == stored | {Path("registered_model_meta")}  # MLflow's client writes that one


@pytest.mark.parametrize("changed", ["MLmodel", "pyfunc_model.py", "requirements.txt",
                                     "code/lm_pipeline/model/generate.py"])
def test_a_version_whose_code_changed_in_the_store_is_refused_and_nothing_is_left(registered, tmp_path,
                                                                                    changed):
    with open(registered / changed, "a") as f:
        f.write("\nimport os; os.system('touch /tmp/pwned')\n")
    with pytest.raises(RegistryError, match=r"models:/tiny/1: its code hash .* is not the one recorded"):
        verify("models:/tiny/1", tmp_path / "served")
    assert not (tmp_path / "served").exists()


def test_changed_weights_and_a_version_without_a_code_hash_are_refused(registered):
    from safetensors.torch import load_file, save_file

    weights = next(registered.glob("artifacts/*/model.safetensors"))
    tensors = {k: v + 0.01 for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(RegistryError, match=r"weights hash .* changed after it was registered"):
        verify("models:/tiny/1")
    mlflow.MlflowClient().delete_model_version_tag("tiny", "1", "code_sha256")
    with pytest.raises(RegistryError, match=r"has no code_sha256 tag"):
        verify("models:/tiny/1")


def test_a_registered_parent_whose_weights_changed_in_the_store_is_refused(registered, tmp_path, mlflow_uri):
    """Fine-tuning from a version (continuous training fine-tunes the champion) would register the
    changed weights anew, under a hash of their own."""
    from lm_pipeline.config import Config
    from lm_pipeline.model.parent import ParentError
    from lm_pipeline.registry.downloads import fetch_parent

    cfg = Config.model_validate({"mlflow": {"tracking_uri": mlflow_uri}})
    assert fetch_parent(cfg, "models:/tiny/1", tmp_path / "parent")["version"] == "1"
    weights = next(registered.glob("artifacts/*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ParentError, match=r"models:/tiny/1: its safetensors .* not the ones registered"):
        fetch_parent(cfg, "models:/tiny/1", tmp_path / "again")
    assert not (tmp_path / "again").exists()


def swap_two_tokens(path: Path) -> None:
    """tokenizer.json with two tokens' ids swapped: it loads, the weights are untouched, and every
    text with those tokens means something else to the model."""
    import json

    tokenizer = json.loads(path.read_text())
    vocab = tokenizer["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[-2:]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(tokenizer))


def widen_layer_norm(path: Path) -> None:
    import json

    config = json.loads(path.read_text())
    path.write_text(json.dumps(config | {"layer_norm_epsilon": 0.5}))


@pytest.mark.parametrize("change", [swap_two_tokens, widen_layer_norm], ids=["tokenizer", "config"])
def test_a_version_whose_tokenizer_or_config_changed_in_the_store_is_refused_by_every_reader(
        registered, tmp_path, mlflow_uri, change):
    """The weights hash covers the weights only: a tokenizer or config changed in the store was
    served, compared with and fine-tuned from as the version registered."""
    from lm_pipeline.config import Config
    from lm_pipeline.model.parent import ParentError
    from lm_pipeline.registry.decision import load_registered
    from lm_pipeline.registry.downloads import fetch_parent
    from lm_pipeline.serving import source

    folder = next(registered.glob("artifacts/*/model.safetensors")).parent
    change(folder / ("tokenizer.json" if change is swap_two_tokens else "config.json"))
    changed = r"models:/tiny/1: its model files .* not the ones recorded at registration"
    with pytest.raises(RegistryError, match=changed):
        verify("models:/tiny/1")
    with pytest.raises(RegistryError, match=changed):
        load_registered("tiny", "1")
    with pytest.raises(RegistryError, match=changed):
        source.load("models:/tiny/1")
    with pytest.raises(ParentError, match=changed):
        fetch_parent(Config.model_validate({"mlflow": {"tracking_uri": mlflow_uri}}), "models:/tiny/1",
                     tmp_path / "parent")
    assert not (tmp_path / "parent").exists()
