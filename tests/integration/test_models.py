"""Real models in and out, through the real stages on real Ray: fine-tuning local Hugging Face
folders (a Llama with grouped-query attention, a GPT-2) with their own tokenizers under DDP and
FSDP, LoRA, a from-scratch HF config with exact resume, evaluation with benchmark tasks, the
registry and `mlflow models serve`. The pretrained folders are tiny models built offline here,
laid out as `hf download` leaves them; the fine-tuning and LoRA runs are the recipes in configs/,
on those folders and at this module's sizes."""

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.integration.conftest import ROOT, deep_update, make_project, tiny_params, with_prepared_corpus
from tests.integration.test_training import curve, finish, start_train, wait_for_checkpoint
from tests.services import BIN, free_port, process

pytestmark = [pytest.mark.models, pytest.mark.integration]

LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
RUN = {"model": {"block_size": 32},
       "train": {"max_steps": 30, "warmup_steps": 5, "eval_interval": 15, "checkpoint_interval": 15},
       "evaluate": {"harness_limit": 40}}


def lmp(project: Path, params: Path, *args: str) -> str:
    out = subprocess.run([str(BIN / "lmp"), "--params", str(params), *args], cwd=project,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def corpus_texts(project: Path, n: int = 300) -> list[str]:
    lines = (project / "data/raw/documents.jsonl").read_text().splitlines()[:n]
    return [json.loads(line)["text"] for line in lines]


def hub_tokenizer(texts: list[str], bos: str | None, eos: str):
    """A byte-level BPE tokenizer as a Hub model ships it, optionally adding BOS to every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [t for t in (bos, eos) if t]
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if bos:  # Llama's tokenizers add <s>: the pipeline must not (documents end with eos only)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    return tokenizer


def hub_folder(dest: Path, family: str, texts: list[str]) -> Path:
    """A pretrained model folder: config.json, model.safetensors, tokenizer.json, tokenizer_config.json."""
    from transformers import AutoConfig, AutoModelForCausalLM

    bos, eos = ("<s>", "</s>") if family == "llama" else (None, "<|endoftext|>")
    tokenizer = hub_tokenizer(texts, bos, eos)
    special = {"eos_token_id": tokenizer.token_to_id(eos), "bos_token_id": tokenizer.token_to_id(bos or eos),
               "vocab_size": tokenizer.get_vocab_size()}
    fields = {k: v for k, v in LLAMA.items() if k != "model_type"} if family == "llama" else \
        {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **fields, **special))
    model.save_pretrained(dest)
    tokenizer.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "bos_token": bos or eos}))
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory, prepared_corpus):
    """Validated documents, and two downloaded-model folders beside the project."""
    root = with_prepared_corpus(make_project(tmp_path_factory.mktemp("models"), tiny_params(RUN)),
                                prepared_corpus)
    texts = corpus_texts(root)
    hub_folder(root.parent / "hub-llama", "llama", texts)
    hub_folder(root.parent / "hub-gpt2", "gpt2", texts)
    return root


def recipe(name: str, parent: Path) -> dict:
    """configs/<name>'s model, train and lora settings, on the tiny `parent` folder and at this
    module's sizes (its corpus stays the module's; min_lr follows the recipe's lr)."""
    sections = yaml.safe_load((ROOT / "configs" / name).read_text())
    sections.pop("data", None)
    return deep_update(sections, {"model": RUN["model"],
                                  "train": RUN["train"] | {"init_from": f"hf:{parent}", "min_lr": None}})


def params_file(project: Path, name: str, **sections) -> Path:
    """params for one run, with its own data, checkpoints, model and reports."""
    params = deep_update(yaml.safe_load((project / "params.yaml").read_text()), sections)
    deep_update(params, {
        "data": {"processed_dir": f"runs/{name}/processed"},
        "train": {"checkpoint_dir": f"runs/{name}/checkpoints", "model_dir": f"runs/{name}/model",
                  "curves_dir": f"runs/{name}/curves"},
        "evaluate": {"metrics_file": f"runs/{name}/metrics.json", "report_dir": f"runs/{name}/evaluation"},
        "register": {"record_file": f"runs/{name}/registry.json"}})
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits


def test_fine_tuning_a_llama_folder_on_two_ddp_workers_then_evaluate_register_and_serve(project, tmp_path):
    parent = project.parent / "hub-llama"
    params = params_file(project, "llama", **recipe("finetune-hf.yaml", parent))
    for stage in ("preprocess", "train", "evaluate", "register"):
        lmp(project, params, "-q", stage)

    meta = json.loads((project / "runs/llama/processed/meta.json").read_text())
    assert meta["tokenizer_kind"] == "parent" and meta["eot_id"] == 1  # the folder's own </s>
    run_info = json.loads((project / "runs/llama/model/run.json").read_text())
    assert run_info["backend"] == "hf" and run_info["parent"]["weights_sha256"] == \
        hashlib.sha256((parent / "model.safetensors").read_bytes()).hexdigest()
    config = json.loads((project / "runs/llama/model/config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 2
    tokenizer = (project / "runs/llama/model/tokenizer.json").read_bytes()
    assert tokenizer == (parent / "tokenizer.json").read_bytes()
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    assert (logits(project / "runs/llama/model", ids) - logits(parent, ids)).abs().max() > 1e-3  # trained

    metrics = json.loads((project / "runs/llama/metrics.json").read_text())
    # the stages scored this model: its bits per byte are its perplexity's (one NLL), and each task's
    # accuracy is a count of right answers over the records the harness scored
    n_bytes = meta["text_bytes"]["test"] + metrics["test_documents"]
    assert metrics["bits_per_byte"] == pytest.approx(
        math.log2(metrics["perplexity"]) * metrics["test_tokens"] / n_bytes, rel=1e-9)
    scored = json.loads((project / "runs/llama/evaluation/details.json").read_text())["harness"]["documents"]
    for task in ("lmp_last_word", "lmp_cloze_choice"):
        right = metrics[f"{task}/acc"] * scored[task]
        assert scored[task] > 0 and right == pytest.approx(round(right), abs=1e-6), task
    uri = f"sqlite:///{project / 'mlflow.db'}"
    tags = mlflow.MlflowClient(uri, registry_uri=uri).get_model_version("lm-pipeline", "1").tags
    assert tags["parent_safetensors_sha256"] == run_info["parent"]["weights_sha256"]

    served = tmp_path / "served"
    checked = lmp(project, params, "verify", "models:/lm-pipeline@champion", "--download", str(served))
    assert "code and weights are the ones registered" in checked  # served below: the checked copy
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", str(served),
           "--env-manager", "local", "-h", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    with process(cmd, tmp_path / "serve.log", env=os.environ | {"MLFLOW_TRACKING_URI": uri}, cwd=project,
                 ready_url=f"{url}/ping"):
        body = json.dumps({"dataframe_records": [{"prompt": "The tuple"}, {"prompt": "A module"}],
                           "params": {"max_new_tokens": 8}}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        predictions = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
    from lm_pipeline.model.backends import load_model
    from lm_pipeline.model.generate import complete_batch

    model, hub_tokenizer = load_model(project / "runs/llama/model")  # the champion's folder
    assert predictions == complete_batch(model, hub_tokenizer, ["The tuple", "A module"], 8)


def test_lora_on_a_gpt2_folder_under_fsdp_trains_only_adapters_and_exports_peft_and_merged(project):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    parent = project.parent / "hub-gpt2"
    lora = deep_update(recipe("lora-hf.yaml", parent), {"train": {"strategy": "fsdp", "num_workers": 2}})
    params = params_file(project, "lora", **lora)
    logs = {stage: lmp(project, params, "-q", stage) for stage in ("preprocess", "train", "evaluate")}
    assert sorted(re.findall(r"\[rank (\d)\] loaded its shard of the parent", logs["train"])) == ["0", "1"]
    model = project / "runs/lora/model"

    checkpoints = sorted(p for p in (project / "runs/lora/checkpoints").glob("*/checkpoint_*") if p.is_dir())
    saved = checkpoint_keys(checkpoints[-1])
    assert saved and all(".lora_" in k for k in saved), saved  # the frozen base is never saved
    base, merged = load_file(parent / "model.safetensors"), load_file(model / "model.safetensors")
    untouched = [k for k in base if "c_attn" not in k]  # LoRA's default for GPT-2 adapts c_attn only
    assert untouched and all(torch.equal(base[k], merged[k]) for k in untouched)
    adapted = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(base[adapted], merged[adapted])

    ids = torch.tensor([[0, 40, 41, 42, 43]])
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(parent), model / "adapter").eval()
    with torch.no_grad():
        assert (peft(ids).logits - logits(model, ids)).abs().max() <= 1e-4
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(json.loads((model / "run.json").read_text())["mlflow_run_id"])
    assert int(run.data.params["model.trainable_params"]) < int(run.data.params["model.total_params"]) / 10
    assert "lmp_last_word/acc" in json.loads((project / "runs/lora/metrics.json").read_text())


@pytest.mark.metrics
def test_a_fine_tune_that_only_gets_worse_exports_its_parent(project):
    """The parent's step-0 validation is a candidate best: a learning rate that wrecks the model
    must leave the export equal to the parent, not the least bad of the wrecked steps."""
    parent = project.parent / "hub-gpt2"
    params = params_file(project, "worse", model={"backend": "hf"},
                         train={"init_from": f"hf:{parent}", "num_workers": 1, "max_steps": 4,
                                "warmup_steps": 0, "lr": 0.5, "min_lr": 0.5, "eval_interval": 2,
                                "checkpoint_interval": 4})
    for stage in ("preprocess", "train"):
        lmp(project, params, "-q", stage)
    summary = json.loads((project / "runs/worse/curves/summary.json").read_text())
    run_id = json.loads((project / "runs/worse/model/run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    val = {m.step: m.value for m in client.get_metric_history(run_id, "val_loss")}
    assert sorted(val) == [0, 2, 4] and val[0] < min(val[2], val[4]), val
    assert summary["exported_step"] == 0
    base = load_file(parent / "model.safetensors")
    exported = load_file(project / "runs/worse/model/model.safetensors")
    shared = base.keys() & exported.keys()
    assert shared and all(torch.equal(base[k], exported[k]) for k in shared)


def checkpoint_keys(checkpoint: Path) -> set[str]:
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(str(checkpoint)).read_metadata()
    return {k for k in metadata.state_dict_metadata if k.startswith("model.")}


@pytest.mark.fault_tolerance
def test_a_from_scratch_hf_config_resumes_to_the_identical_curve_on_one_worker(project):
    scratch = {"model": {"backend": "hf", "hf_config": LLAMA}, "tokenizer": {"vocab_size": 512},
               "train": {"num_workers": 1, "max_steps": 60, "checkpoint_interval": 15,
                         "activation_checkpointing": True}}
    lmp(project, params_file(project, "straight", **scratch), "-q", "preprocess")
    finish(start_train(project, project / "straight.yaml"))
    killed_params = params_file(project, "killed", **scratch)
    lmp(project, killed_params, "-q", "preprocess")
    killed = start_train(project, killed_params)
    wait_for_checkpoint(project / "runs/killed", killed)
    os.killpg(killed.pid, signal.SIGKILL)  # the whole stage: driver, Ray and workers
    killed.wait()
    out = finish(start_train(project, killed_params))
    assert "resumed from the checkpoint at step" in out
    straight, resumed = curve(project, "straight"), curve(project, "killed")
    assert [s for s, _ in resumed] == list(range(1, 61))
    assert resumed == straight  # the same floats, step for step
    assert json.loads((project / "runs/straight/model/config.json").read_text())["model_type"] == "llama"
