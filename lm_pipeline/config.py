"""The typed configuration: `params.yaml` loads into one validated `Config`.

Every number and path the pipeline uses lives in params.yaml. An unknown key or a bad value fails
here, before any compute, with a message naming the key (e.g. `train.lr`). Each field is
documented here, once: `python -m lm_pipeline.config` writes the default params.yaml with these
descriptions as its comments, and a test keeps the committed params.yaml equal to it.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lm_pipeline.text import without_url_credentials

HF_PREFIX = "hf:"  # train.init_from: hf:<folder> is a local Hugging Face model
# What the stages write, each replaced whole: none may be inside another, or the project itself.
OUTPUTS = ("data.raw_dir", "data.processed_dir", "data.report_file", "validate.report_dir",
           "filter.output_dir", "filter.report_dir",
           "train.model_dir", "train.checkpoint_dir", "train.curves_dir", "evaluate.metrics_file",
           "evaluate.report_dir", "register.record_file", "tune.model_dir", "tune.report_dir")


# A folder or an object-storage URL, kept as written (a Path would fold s3:// into s3:/).
Location = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, PurePath) else v)]


class ConfigError(ValueError):
    """params.yaml is missing, malformed, or has a bad key or value."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# What a source of a mixture may set for itself: the checks of sampled documents (code is not
# English prose). Counters over the whole corpus (lengths, duplicates) stay corpus-wide.
PER_SOURCE_THRESHOLDS = ("min_median_chars", "min_letter_share", "min_common_word_share",
                         "max_near_duplicate_ratio", "contamination_overlap", "max_contaminated_share")


class MixSource(Section):
    """One source of a data mixture."""

    source: str = Field(description="as data.source: a file or folder, local or s3://, or 'python-docs'")
    weight: float = Field(gt=0, description="its share of the mixture's characters (weights are normalized)")
    name: str | None = Field(None, description="how reports name it; the source itself by default")
    validate_: dict[str, float | int] = Field({}, alias="validate", description="its own document thresholds "
                                        f"(any of {', '.join(PER_SOURCE_THRESHOLDS)}), in place of the "
                                        "validate section's for its documents")

    @property
    def label(self) -> str:
        return self.name or self.source

    @field_validator("validate_")
    @classmethod
    def _document_thresholds_only(cls, value: dict[str, float]) -> dict[str, float]:
        if wrong := sorted(set(value) - set(PER_SOURCE_THRESHOLDS)):
            raise ValueError(f"{', '.join(wrong)}: not a per-source threshold (these are: "
                             f"{', '.join(PER_SOURCE_THRESHOLDS)})")
        # The same bounds and types as in the validate section (an int stays an int).
        return ValidateConfig(**value).model_dump(include=set(value))


def corpus_description(source: str, sources: list[MixSource]) -> str:
    """The corpus in one line: data.source, or the mixture of data.sources with its weights."""
    if not sources:
        return source
    return "mixture: " + ", ".join(f"{s.label} ({s.weight:g})" for s in sources)


class DataConfig(Section):
    """Where the corpus comes from and where its documents and tokens go."""

    source: str = Field("python-docs", description="'python-docs', or a .txt/.jsonl/.parquet file or "
                        "folder, local or in object storage (s3://bucket/prefix; endpoint and keys from "
                        "the environment)")
    sources: list[MixSource] = Field([], description="a weighted mixture, read instead of data.source "
                                     "when not empty: [{source: ..., weight: ...}, ...]; each source is "
                                     "sampled down (never repeated) so its characters make its weight's "
                                     "share")
    mix_seed: int = Field(1337, ge=0, description="seeds which documents each source of a mixture gives")
    raw_dir: Path = Field(Path("data/raw"), description="where ingest writes documents.jsonl")
    processed_dir: Path = Field(Path("data/processed"), description="tokenizer and token files")
    min_doc_chars: int = Field(1, ge=0, description="python-docs only: skip docstrings shorter than this")
    max_document_bytes: int = Field(64 << 20, ge=1, description="largest document (a .txt file, a JSONL "
                                    "line, a Parquet text) read; a larger one is a bad file or record")
    on_bad_file: Literal["fail", "skip"] = Field(
        "fail", description="an unreadable, empty, binary or non-UTF-8 file, a broken symlink")
    on_bad_record: Literal["fail", "skip"] = Field(
        "fail", description="a malformed JSONL line, a record without a string 'text'")
    report_file: Path = Field(Path("reports/ingest.json"), description="documents read, inputs skipped")
    shard_tokens: int = Field(1 << 24, ge=1024, description="tokens per shard file (the last is shorter)")
    shards_url: str | None = Field(None, description="object storage (s3://bucket/prefix) that training "
                                   "workers read the processed data from, for nodes without a shared "
                                   "filesystem: published there once per content, copied once per node")
    preprocess_on: Literal["auto", "local", "ray"] = Field(
        "auto", description="where preprocessing encodes: this machine's cores, or Ray Data on every CPU "
        "of the cluster; auto takes Ray when a cluster is configured (ray.address or RAY_ADDRESS) and "
        "documents.jsonl has at least data.ray_preprocess_min_bytes")
    ray_preprocess_min_bytes: int = Field(1 << 30, ge=0, description="smallest corpus auto encodes on Ray "
                                          "(below it, Ray's start-up costs more than it saves)")

    @field_validator("shards_url")
    @classmethod
    def _shards_url_is_a_url(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError(f"{value!r} is not a URL (s3://bucket/prefix); data.processed_dir is the "
                             "local folder")
        return value

    @model_validator(mode="after")
    def _sources_have_names(self) -> DataConfig:
        labels = [s.label for s in self.sources]
        if len(set(labels)) != len(labels):
            raise ValueError(f"data.sources: two sources share a name ({', '.join(labels)}); set `name`")
        return self


class ValidateConfig(Section):
    """The Great Expectations checks the documents must pass before anything is trained on them."""

    min_rows: int = Field(100, ge=1, description="fewest documents a corpus may have")
    min_chars: int = Field(1, ge=1, description="shortest allowed document, in characters")
    max_chars: int = Field(1_000_000, ge=1, description="longest allowed document, in characters")
    max_duplicate_ratio: float = Field(0.1, ge=0, le=1, description="largest share of duplicate texts")
    max_control_share: float = Field(0.001, ge=0, le=1, description="largest share of control "
                                     "characters (C0 but tab/newline) in one document")
    min_median_chars: int = Field(20, ge=0, description="smallest median document length")
    min_letter_share: float = Field(0.5, ge=0, le=1, description="letters among visible characters, "
                                    "in 95% of documents (charset sanity: not symbols, base64, binary)")
    min_common_word_share: float = Field(0.05, ge=0, le=1, description="language sanity: mean share of "
                                         "common English words; 0 for other languages")
    max_near_duplicate_ratio: float = Field(0.1, ge=0, le=1, description="largest share of near duplicates")
    near_duplicate_jaccard: float = Field(0.8, gt=0, le=1, description="word 5-gram Jaccard similarity "
                                          "above which two documents are near duplicates")
    contamination_ngram: int = Field(13, ge=1, description="n of the word n-grams compared test vs train")
    contamination_overlap: float = Field(0.8, gt=0, le=1, description="a test document sharing more "
                                         "of its n-grams with the training split is contaminated "
                                         "(python-docs: a few codec modules share up to 63% of their "
                                         "docstrings)")
    max_contaminated_share: float = Field(0.01, ge=0, le=1, description="largest share of "
                                          "contaminated test documents")
    sample_documents: int = Field(20_000, ge=1, description="documents whose features are checked "
                                  "one by one (a seeded sample beyond this); counters see them all")
    seed: int = Field(1337, ge=0, description="seeds the sample and the MinHash permutations")
    report_dir: Path = Field(Path("reports/validation"), description="result JSON and Data Docs")
    required: bool = Field(True, description="filter and preprocess read only the corpus the last "
                           "validation passed (by its documents' sha256); false lets them read a corpus "
                           "never validated, with a warning (benchmarks, tests of one stage)")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateConfig:
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars must not exceed max_chars")
        return self


FILTER_STEPS = ("language", "gopher_quality", "gopher_repetition", "c4", "fineweb", "pii", "exact_dedup",
                "near_dedup")


class LanguageFilter(Section):
    languages: list[str] = Field(["en"], min_length=1, description="ISO 639-1 codes to keep")
    min_confidence: float = Field(0.65, ge=0, le=1, description="lowest probability of a kept language")


class GopherQualityFilter(Section):
    """Gopher's quality rules (Rae et al. 2021, MassiveText), as datatrove implements them."""

    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: int | None = 3
    max_avg_word_length: int | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8  # datatrove's name: the least share of words with a letter
    min_stop_words: int | None = 2


class GopherRepetitionFilter(Section):
    """Gopher's repetition rules: duplicate lines and paragraphs, top and duplicated n-grams."""

    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: list[tuple[int, float]] = [(2, 0.2), (3, 0.18), (4, 0.16)]
    dup_n_grams: list[tuple[int, float]] = [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11),
                                            (10, 0.10)]


class C4Filter(Section):
    """C4's rules (Raffel et al. 2020): lines without terminal punctuation or with too few words are
    dropped; lorem ipsum, curly brackets and too few sentences drop the document."""

    split_paragraph: bool = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class FineWebFilter(Section):
    """FineWeb's additions (Penedo et al. 2024)."""

    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


PiiAction = Literal["redact", "drop", "keep"]


class PiiFilter(Section):
    """Per category: redact to a typed placeholder (<EMAIL>, ...), drop the document, or keep it."""

    email: PiiAction = "redact"
    phone: PiiAction = "redact"
    ip_address: PiiAction = "redact"
    credit_card: PiiAction = "redact"
    secret: PiiAction = "drop"


class NearDedupFilter(Section):
    """MinHash LSH over word n-grams: a document sharing a band with an earlier one is removed."""

    ngram: int = Field(5, ge=1)
    bands: int = Field(14, ge=1)
    rows: int = Field(8, ge=1)
    seed: int = Field(1, ge=0)


class FilterConfig(Section):
    """The filter stage: documents removed or redacted one by one, before preprocessing."""

    steps: list[Literal[FILTER_STEPS]] = Field(
        ["language", "pii", "exact_dedup", "near_dedup"], description="the funnel, in order; also "
        "gopher_quality, gopher_repetition, c4 and fineweb: web-text rules that remove most of the "
        "Python reference docs (code, tables), so not on by default (configs/web-text.yaml sets all)")
    language: LanguageFilter = Field(LanguageFilter(), description="py3langid (its model ships in the "
                                     "package)")
    gopher_quality: GopherQualityFilter = Field(GopherQualityFilter(),
                                                description=GopherQualityFilter.__doc__)
    gopher_repetition: GopherRepetitionFilter = Field(GopherRepetitionFilter(),
                                                      description=GopherRepetitionFilter.__doc__)
    c4: C4Filter = Field(C4Filter(), description=C4Filter.__doc__)
    fineweb: FineWebFilter = Field(FineWebFilter(), description=FineWebFilter.__doc__)
    pii: PiiFilter = Field(PiiFilter(), description=PiiFilter.__doc__)
    near_dedup: NearDedupFilter = Field(NearDedupFilter(), description=NearDedupFilter.__doc__)
    examples: int = Field(5, ge=0, description="removed documents shown per step in the report")
    output_dir: Path = Field(Path("data/filtered"), description="documents.jsonl (kept) and removed.jsonl "
                             "(each with the step and reason that removed it)")
    report_dir: Path = Field(Path("reports/filter"), description="the funnel: metrics.json, report.md, "
                             "funnel.png")

    @field_validator("steps")
    @classmethod
    def _steps_once_dedup_last(cls, steps: list[str]) -> list[str]:
        twice = sorted({s for s in steps if steps.count(s) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} listed twice")
        dedup = [i for i, s in enumerate(steps) if s.endswith("_dedup")]
        if dedup and dedup[0] < len(steps) - len(dedup):
            raise ValueError("exact_dedup and near_dedup compare the whole corpus, so they come after the "
                             f"steps that judge one document at a time: {steps}")
        return steps


class TokenizerConfig(Section):
    """The tokenizer preprocess trains (fine-tuning reuses the parent's and checks it covers the corpus)."""

    kind: Literal["bpe", "char"] = Field("bpe", description="byte-level BPE or character-level")
    vocab_size: int = Field(4096, ge=64, le=1_000_000, description="BPE vocabulary size")
    min_frequency: int = Field(2, ge=1, description="BPE: fewest occurrences for a merge")
    max_train_chars: int = Field(20_000_000, ge=1000, description="train the tokenizer on a seeded "
                                 "sample of about this much text when the corpus is larger")
    max_unknown_share: float = Field(0.001, ge=0, le=1, description="fine-tuning: largest share of "
                                     "<unk> tokens the parent's tokenizer may produce on the corpus")
    min_relative_compression: float = Field(0.5, ge=0, le=1, description="fine-tuning: characters per "
                                            "token on the corpus, as a share of the parent's own")


class SplitConfig(Section):
    """The seeded split of documents into train, validation and test, by a hash of their text."""

    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="share of documents for validation")
    test_fraction: float = Field(0.05, gt=0, lt=0.5, description="share of documents for test")
    seed: int = Field(1337, ge=0, description="seeds the hash that assigns documents to splits")


class CanaryConfig(Section):
    """Canaries preprocess plants in the training split (Carlini et al. 2019, "The Secret
    Sharer"): evaluate measures their exposure, register gates on it (register.max_canary_exposure)."""

    count: int = Field(4, ge=0, description="random secrets ('The secret number of canary <i> is "
                       "<digits>.') planted in the training shards only, never in documents.jsonl, "
                       "validation or test; 0 plants none")
    repeats: int = Field(1, ge=1, description="how often each is planted (exposure grows with it)")
    digits: int = Field(9, ge=4, le=18, description="digits of each secret: 10^digits possible secrets, "
                        "so at most digits x log2(10) bits of exposure")
    seed: int = Field(1337, ge=0, description="seeds the secrets")


class PrivacyConfig(Section):
    """What evaluate measures of memorization: the canaries' exposure, and how much of its training
    text greedy decoding reproduces (Carlini et al. 2023, "Quantifying Memorization Across Neural
    Language Models"); register gates on both (register.max_canary_exposure, max_extraction_rate)."""

    canary_references: int = Field(1000, ge=10, description="random secrets of the canaries' form that "
                                   "each canary's likelihood is ranked among (exposure's resolution: "
                                   "about log2 of this)")
    extraction_documents: int = Field(64, ge=1, description="training and held-out documents probed for "
                                      "extraction (a seeded sample of those long enough)")
    prefix_tokens: int = Field(32, ge=1, description="extraction: tokens of a document given as prompt "
                               "(at most half the context)")
    suffix_tokens: int = Field(32, ge=1, description="extraction: the next tokens greedy decoding must "
                               "reproduce exactly")
    seed: int = Field(1337, ge=0, description="seeds the references and the sample")


class ModelConfig(Section):
    """The decoder-only Transformer: the built-in GPT, or any `transformers` causal LM (fine-tuning
    keeps the parent's shape)."""

    backend: Literal["gpt", "hf"] = Field("gpt", description="'gpt': the built-in GPT (the fields "
                                          "below); 'hf': a transformers AutoModelForCausalLM from "
                                          "hf_config, or from train.init_from: hf:<folder>")
    hf_config: dict[str, Any] | str | None = Field(
        None, description="hf from scratch: a folder with config.json, or an inline mapping with "
        "model_type (e.g. {model_type: llama, hidden_size: 128, num_hidden_layers: 4, "
        "num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 344}); vocab and special "
        "tokens come from the pipeline's tokenizer")
    n_layer: int = Field(4, ge=1, description="Transformer blocks")
    n_head: int = Field(4, ge=1, description="attention heads per block")
    n_embd: int = Field(128, ge=8, description="width of the residual stream")
    block_size: int = Field(128, ge=8, description="context length in tokens")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in attention and MLP (training only)")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class LoraConfig(Section):
    """LoRA (peft), for either backend: train low-rank adapters beside frozen weights. The export
    is the merged model, with the adapter beside it in PEFT's format."""

    r: int = Field(0, ge=0, description="adapter rank; 0 trains every weight (no LoRA)")
    alpha: float = Field(16.0, gt=0, description="scaling: the update is alpha / r * B @ A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | None = Field(
        None, description="names of the Linear layers to adapt; null: attention and MLP projections "
        "(built-in GPT: qkv, proj, fc; hf: peft's default for the family)")


class TrainConfig(Section):
    """Ray Train: workers, the optimizer and its schedule, validation, checkpoints, early stopping."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks)")
    run_on: Literal["auto", "local", "ray"] = Field(
        "auto", description="'local': the one worker runs in the `lmp train` process (no Ray "
        "start-up, no worker processes; failed attempts retried in it from the last checkpoint); "
        "'ray': Ray Train workers; auto: local for one DDP worker when no Ray cluster is "
        "configured (ray.address, RAY_ADDRESS), else ray. Either resumes the other's checkpoints")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: one GPU per worker where "
                                                   "there are GPUs (this machine, or the Ray cluster), "
                                                   "else the CPU; cuda: a GPU each, or fail")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="replicated (DDP) or sharded (FSDP2)")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="bf16 autocast (the GPU fast "
                                                       "path) or fp32; auto: bf16 on a GPU that has it, "
                                                       "else fp32")
    compile: bool = Field(False, description="torch.compile the model")
    activation_checkpointing: bool = Field(False, description="recompute each decoder layer's "
                                           "activations in the backward pass: less memory, ~30% more compute")
    peak_tflops: float = Field(0.0, ge=0, description="per-device peak for MFU; 0 = known GPUs only")
    worker_memory_gb: float = Field(0.0, ge=0, description="memory one worker may use: the train stage "
                                    "refuses a plan that needs more per rank (`lmp plan`); 0: this "
                                    "machine's memory shared by its workers when they run here, "
                                    "unchecked on a cluster")
    cpus_per_worker: int = Field(2, ge=1, description="CPUs (and torch threads) per worker")
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the last checkpoint")
    checkpoints_to_keep: int = Field(2, ge=1, description="best checkpoints by val_loss kept on disk")
    batch_size: int = Field(32, ge=1, description="sequences per worker per micro-step")
    grad_accum_steps: int = Field(1, ge=1, description="micro-steps per optimizer step")
    max_steps: int = Field(300, ge=1, description="optimizer steps")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (AdamW)")
    min_lr: float | None = Field(None, ge=0, description="floor of the cosine schedule; null: a tenth "
                                 "of lr (whatever lr is set to)")
    warmup_steps: int = Field(30, ge=0, description="linear warmup, then cosine decay to min_lr")
    weight_decay: float = Field(0.1, ge=0, description="AdamW, on matrices only")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="of the training loss (validation "
                                   "and evaluation use the plain cross-entropy)")
    beta1: float = Field(0.9, gt=0, lt=1, description="AdamW: decay of the gradient's running mean")
    beta2: float = Field(0.95, gt=0, lt=1, description="AdamW: decay of the squared gradient's running mean")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 disables clipping")
    eval_interval: int = Field(50, ge=1, description="steps between validation losses")
    eval_batches: int = Field(4, ge=1, description="batches (of batch_size windows) per validation loss")
    checkpoint_interval: int = Field(100, ge=1, description="steps between checkpoints")
    early_stopping_patience: int = Field(0, ge=0, description="stop after this many validations "
                                         "without improvement; 0 trains all max_steps")
    min_delta: float = Field(0.0, ge=0, description="smallest drop in val_loss that counts as better")
    max_minutes: float | None = Field(None, gt=0, description="a wall-clock budget: stop at the first "
                                      "validation after this many minutes of a worker's attempt, setup "
                                      "included (an attempt resumed after a failure has its own), and "
                                      "export the best checkpoint, as early stopping does; null: none")
    init_from: str | None = Field(None, description="fine-tune: models:/<name>@<alias>, "
                                  "models:/<name>/<version>, a folder `lmp train` wrote, or hf:<folder> "
                                  "(a local Hugging Face model, with model.backend: hf); null trains "
                                  "from scratch")
    seed: int = Field(1337, ge=0, description="seeds the initial weights and every batch")
    model_dir: Path = Field(Path("models/model"), description="final safetensors, config, tokenizer")
    checkpoint_dir: Location = Field("checkpoints", description="Ray Train storage (checkpoints): a folder, "
                                     "or an object-storage URL every worker reaches (s3://bucket/prefix; "
                                     "endpoint and keys from the environment)")
    curves_dir: Path = Field(Path("reports/training"), description="loss curves as CSV (dvc plots)")

    @model_validator(mode="before")
    @classmethod
    def _floor_follows_lr(cls, data):
        if isinstance(data, dict) and "use_gpu" in data:  # a params file from before train.device
            if "device" in data:
                raise ValueError("train.use_gpu is now train.device: set device alone")
            warnings.warn("train.use_gpu is now train.device (auto, cuda or cpu): read as device "
                          f"{'cuda' if data['use_gpu'] else 'cpu'}", DeprecationWarning, stacklevel=2)
            device = "cuda" if data["use_gpu"] else "cpu"
            data = {k: v for k, v in data.items() if k != "use_gpu"} | {"device": device}
        if isinstance(data, dict) and data.get("min_lr") is None:
            try:
                lr = float(data.get("lr", cls.model_fields["lr"].default))
                # to 12 digits: a tenth of 3e-3 is 3e-4, not the float division's 3.0000000000000003e-4
                data = data | {"min_lr": float(f"{lr / 10:.12g}")}
            except (TypeError, ValueError):
                pass  # a bad lr: its own error names it
        return data

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainConfig:
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"train.warmup_steps ({self.warmup_steps}) must be smaller than train.max_steps "
                             f"({self.max_steps})")
        if self.min_lr > self.lr:
            raise ValueError(f"train.min_lr ({self.min_lr:g}) must not exceed train.lr ({self.lr:g}); leave "
                             "min_lr out (null) for a tenth of lr")
        if self.run_on == "local" and (self.num_workers > 1 or self.strategy != "ddp"):
            raise ValueError("run_on: local runs one DDP worker in this process: set num_workers: 1 "
                             "and strategy: ddp, or run_on: ray")
        return self


class EvaluateConfig(Section):
    """Test perplexity, BLEU and bias probes (evaluate modules), with bootstrap intervals; also the
    scoring of the champion comparison in register."""

    batch_size: int = Field(16, ge=1, description="sequences per forward pass")
    stride: int = Field(0, ge=0, description="perplexity sliding-window step; 0 = block_size // 2")
    bleu_documents: int = Field(32, ge=1, description="held-out documents used as BLEU prompts")
    prompt_tokens: int = Field(32, ge=1, description="tokens of each document given as prompt")
    continuation_tokens: int = Field(32, ge=1, description="tokens generated and compared")
    probes: Path = Field(Path("lm_pipeline/evaluation/data/bias_templates.json"),
                         description="counterfactual templates x term sets (JSON)")
    crows_pairs: Path = Field(Path("lm_pipeline/evaluation/data/crows_pairs_sample.csv"),
                              description="CrowS-Pairs-format CSV: sent_more, sent_less, "
                              "stereo_antistereo, bias_type")
    parallel_data: Path = Field(Path("lm_pipeline/evaluation/data/parallel_sample.jsonl"),
                                description="source/target JSONL pairs for BLEU")
    parallel_template: str = Field("{source}\n>>> ", description="prompt built from each source")
    bootstrap_resamples: int = Field(1000, ge=10, description="for confidence intervals")
    seed: int = Field(1337, ge=0, description="seeds the bootstrap")
    metrics_file: Path = Field(Path("reports/metrics.json"), description="every test metric (dvc metrics)")
    report_dir: Path = Field(Path("reports/evaluation"), description="report.md/.html, plots, CSVs")
    harness_tasks: list[str] = Field(
        ["lmp_last_word", "lmp_cloze_choice"], description="lm-evaluation-harness tasks run on the "
        "model folder (hf model class), logged as <task>/<metric>: this project's lmp_last_word and "
        "lmp_cloze_choice (built from the test split), or any of the harness's own (their datasets "
        "from the local HF datasets cache, offline); [] skips the harness")
    harness_limit: int = Field(200, ge=0, description="documents per harness task (ours: a seeded "
                               "sample of the test split's records); 0 = all")
    harness_passage_tokens: int = Field(64, ge=8, description="our harness tasks: test documents are "
                                        "cut into passages of this many tokens (at most the model's "
                                        "block_size - 1)")
    device: str = Field("auto", min_length=1, description="torch device of evaluation, the harness and "
                        "the champion comparison: auto (a GPU when there is one), cpu, cuda, cuda:0")

    @model_validator(mode="after")
    def _template_takes_source(self) -> EvaluateConfig:
        if "{source}" not in self.parallel_template:
            raise ValueError("parallel_template must contain {source}")
        return self

    @model_validator(mode="after")
    def _harness_tasks_once(self) -> EvaluateConfig:
        if len(set(self.harness_tasks)) != len(self.harness_tasks) or not all(self.harness_tasks):
            raise ValueError("harness_tasks must name each task once, none empty")
        return self


class RegisterConfig(Section):
    """The MLflow registry entry, and the gates `champion` moves on."""

    model_name: str = Field("lm-pipeline", description="registered model name: letters, digits, '.', '_' "
                            "and '-', starting with a letter or digit")
    min_improvement: float = Field(0.0, ge=0, description="bits per byte the candidate must gain over "
                                   "the champion on the same test data (and the 95% CI must exclude 0)")
    max_perplexity: float | None = Field(None, gt=0, description="gate: highest test perplexity")
    max_bias_gap: float | dict[str, float] | None = Field(
        None, description="gate: excess bias gap (nats: the mean gap over pairs of groups minus the gap "
                          "of terms shuffled between groups), for every category or per category "
                          "{name: gap}; blocks only when its 95% interval lies above the bar and 0")
    min_bleu: float | None = Field(None, ge=0, description="gate: lowest continuation BLEU")
    max_extraction_rate: float | None = Field(
        0.1, ge=0, le=1, description="gate: share of probed training documents greedy decoding "
        "reproduces (privacy.suffix_tokens exactly); blocks when its 95% interval lies above this")
    max_canary_exposure: float | None = Field(
        8.0, ge=0, description="gate: exposure in bits of the most exposed planted canary (log2 of how "
        "many secrets of its form it is more likely than); blocks when its 95% interval lies above this")
    min_task_scores: dict[str, float] = Field(
        {}, description="gates: lowest harness score per metrics key, {'<task>/<metric>': value} "
        "(e.g. {lmp_cloze_choice/acc: 0.3}), a key of reports/metrics.json from evaluate.harness_tasks "
        "('<task>/<metric>_first<N>' for a task evaluate.harness_limit cuts to its first N documents)")
    guard_documents: Path | None = Field(None, description="a documents.jsonl (the corpus before new "
                                         "data, as continuous training sets it) whose test-split "
                                         "documents the candidate may not forget")
    max_forgetting: float = Field(0.02, ge=0, description="gate with guard_documents: bits per byte the "
                                  "candidate may lose to the champion there (the 95% paired interval of "
                                  "its change must stay above minus this)")
    record_file: Path = Field(Path("reports/registry.json"), description="this run's decision and gates")

    @field_validator("model_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # It goes into MLflow search filters, models:/ URIs, lock names and the commands lmp prints.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"{value!r} is not a plain name: letters, digits, '.', '_' and '-', "
                             "starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _task_score_keys(self) -> RegisterConfig:
        malformed = [k for k in self.min_task_scores if k.count("/") != 1 or not all(k.split("/"))]
        if malformed:
            raise ValueError(f"min_task_scores keys are '<task>/<metric>', not {', '.join(malformed)}")
        for key in self.min_task_scores:
            if lower_is_better(key.split("/")[1]):
                raise ValueError(f"min_task_scores {key}: lower is better, so a minimum would pass every "
                                 "worse model; gate on a score where higher is better (acc, acc_norm, "
                                 "exact_match, ...)")
        return self


# lm-eval's metrics where lower is better (perplexities of loglikelihood_rolling tasks, bits per
# byte, translation error rate, Brier score): never a minimum.
LOWER_IS_BETTER = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter", "brier_score")


def lower_is_better(metric: str) -> bool:
    """`metric` as a metrics key names it: a filter's name and `_first<N>` may follow."""
    name = re.sub(r"_first\d+$", "", metric)
    return any(name == m or name.startswith(f"{m}_") for m in LOWER_IS_BETTER)


SEARCH_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")


class TuneConfig(Section):
    """The hyperparameter search: Ray Tune over model.* and train.* values, ASHA on val_loss
    (`lmp search` runs it; the `lmp tune` flow runs the data stages, it, and the gates)."""

    num_samples: int = Field(8, ge=1, description="trials (with grid values: runs of the whole grid)")
    max_concurrent_trials: int = Field(1, ge=1, description="trials at once; times workers_per_trial "
                                       "times train.cpus_per_worker must fit the cluster")
    workers_per_trial: int = Field(1, ge=1, description="Ray Train workers (DDP ranks) of each trial")
    time_budget_s: float = Field(3600, gt=0, description="wall time of the whole search; trials "
                                 "still running then are stopped")
    grace_period: int = Field(100, ge=1, description="steps every trial trains before ASHA may stop it")
    reduction_factor: float = Field(2, gt=1, description="ASHA keeps 1/reduction_factor at each rung")
    seed: int = Field(1337, ge=0, description="seeds the sampling of the space")
    space: dict[str, dict[Literal[SEARCH_KINDS], list]] = Field(
        default_factory=lambda: {"train.lr": {"loguniform": [0.001, 0.006]},
                                 "train.weight_decay": {"choice": [0.0, 0.1]},
                                 "model.n_layer": {"choice": [2, 4]},
                                 "model.n_embd": {"choice": [64, 128]},
                                 "model.dropout": {"uniform": [0.0, 0.2]}},
        description="'section.key': {choice|grid: [values]} or "
        "{uniform|loguniform|randint: [low, high]}")
    model_dir: Path = Field(Path("models/tuned"), description="the best trial's model")
    report_dir: Path = Field(Path("reports/tune"), description="best.json, trials.csv, trials.png, "
                             "and the best model's evaluation and registry record")

    @model_validator(mode="after")
    def _space_is_well_formed(self) -> TuneConfig:
        for key, spec in self.space.items():
            section, _, name = key.partition(".")
            fields = {"model": ModelConfig.model_fields, "train": TrainConfig.model_fields}.get(section, {})
            if name not in fields:
                raise ValueError(f"space.{key}: not a model.* or train.* parameter")
            if len(spec) != 1:
                raise ValueError(f"space.{key}: give exactly one of {', '.join(SEARCH_KINDS)}")
            (kind, values), = spec.items()
            if kind in ("choice", "grid") and not values:
                raise ValueError(f"space.{key}: {kind} needs a non-empty list")
            if kind not in ("choice", "grid") and (len(values) != 2 or not values[0] < values[1]):
                raise ValueError(f"space.{key}: {kind} needs [low, high] with low < high")
            if kind == "loguniform" and values[0] <= 0:
                raise ValueError(f"space.{key}: loguniform needs low > 0")
        return self


class TrackingConfig(Section):
    """The MLflow store every run, metric and model version goes to."""

    tracking_uri: str = Field("sqlite:///mlflow.db", description="MLFLOW_TRACKING_URI overrides")
    experiment: str = Field("lm-pipeline", description="MLflow experiment of the pipeline's runs")

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        if "@" in urlsplit(value).netloc:  # params.yaml is committed, logged and copied to every run
            raise ValueError("holds credentials (user:password@): keep the server's address here and set "
                             "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment")
        return value


class RayConfig(Section):
    """The Ray cluster training runs on."""

    address: str | None = Field(None, description="existing cluster; RAY_ADDRESS overrides")


class ServeConfig(Section):
    """`lmp serve`: the OpenAI-compatible endpoint on Ray Serve."""

    model: str | None = Field(None, description="what to serve: models:/<name>@<alias>, "
                              "models:/<name>/<n> or a model folder (default: "
                              "models:/<register.model_name>@champion); an alias is followed: each replica "
                              "swaps to the version it moves to")
    host: str = Field("127.0.0.1", min_length=1, description="address to bind; any other than loopback needs "
                      "a bearer token in LMP_SERVE_TOKEN")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    replicas: int = Field(1, ge=1, description="model replicas (each a Ray actor holding the model)")
    cpus_per_replica: float = Field(1.0, gt=0, description="Ray CPUs each replica reserves")
    device: str = Field("auto", description="auto (a GPU if the replica has one), cpu, cuda")
    max_tokens: int = Field(256, ge=1, description="most tokens one choice may generate (a request asking "
                            "for more is refused)")
    max_n: int = Field(8, ge=1, description="most choices one request may ask for (n)")
    max_batch_size: int = Field(8, ge=1, description="requests one forward pass may batch")
    batch_wait_ms: float = Field(10.0, ge=0, description="how long a request reaching an idle model "
                                                         "waits for others to batch with")
    max_queued_requests: int = Field(64, ge=1, description="requests waiting for a replica before the "
                                     "endpoint answers 503")
    request_timeout_s: float = Field(120.0, gt=0, description="a request still unanswered after this "
                                     "gets 408")
    follow_interval_s: float = Field(5.0, gt=0, description="how often a replica checks where its alias "
                                     "points")
    log_interval_s: float = Field(30.0, gt=0, description="how often a replica logs its request statistics")


def exposure_shown(references: int) -> float:
    """The most canary exposure `references` can show (see Config._exposure_bar_within_reach)."""
    return -math.log2(1 - 0.025 ** (1 / references))


def absolute(path: Path) -> Path:
    """`path` from the working directory (the project), '..' folded, links not followed."""
    return Path(os.path.abspath(path))


def inside_project(path: Path) -> bool:
    """Whether `path` names something below the working directory (the project): relative, no '..'."""
    return not path.is_absolute() and ".." not in path.parts and path.name not in ("", ".")


class ContinuousConfig(Section):
    """Continuous training: drops of new documents land under ct.watch; each new one is checked on
    its own and against the corpus, then scored with the champion, and trained on only when the
    champion has drifted."""

    watch: str = Field("data/incoming", description="where drops land: a folder or an s3:// prefix. "
                       "A drop is a folder (prefix) under it, complete once it holds _SUCCESS, or a "
                       "manifest.json whose files and sha256 digests all match")
    watch_interval_s: float = Field(60.0, ge=1, description="how often the deployed watcher (`lmp deploy "
                                    "--continuous`) looks under ct.watch for new drops")
    announce_again_s: float = Field(3600.0, ge=1, description="a drop still not taken this long after the "
                                    "watcher announced it is announced again (the event was lost, or "
                                    "the run it started failed before taking the drop)")
    state_dir: Path = Field(Path("data/ct"), description="the ledger of drops seen (drops.json), the "
                            "watcher's announcements (announced.json) and each drop's checks")
    quarantine_dir: Path = Field(Path("data/quarantine"), description="bad drops, copied with their "
                                 "report; kept, never deleted, never trained on")
    archive_dir: Path = Field(Path("drops"), description="every drop a cycle trains on, with what else "
                              "it read, versioned with DVC (a .dvc file beside each, to commit; pushed "
                              "to the default DVC remote when there is one): `lmp lineage --rebuild` "
                              "trains those versions again from it. A folder in the project that git "
                              "does not ignore (DVC refuses .dvc files git ignores)")
    max_duplicate_share: float = Field(0.5, ge=0, le=1, description="largest share of a drop's documents "
                                       "that may repeat the corpus, exactly or nearly "
                                       "(validate.near_duplicate_jaccard)")
    max_leaked_test_documents: int = Field(0, ge=0, description="test-split documents a drop may contain "
                                           "(validate.contamination_ngram and contamination_overlap) "
                                           "before it is quarantined")
    min_drift_bits_per_byte: float = Field(0.05, ge=0, description="retrain only when the champion's bits "
                                           "per byte on the drop exceed those on its own test split by "
                                           "more than this (the lower end of a 95% bootstrap interval)")
    drift_documents: int = Field(256, ge=2, description="documents of the drop, and of the test split, "
                                 "scored for drift (a seeded sample of each)")
    replay_fraction: float = Field(0.5, ge=0, lt=1, description="share of a retraining's characters "
                                   "replayed from the corpus so far (the rest is the drop): what keeps "
                                   "the model from forgetting it")
    max_steps: int = Field(200, ge=1, description="training steps of one retraining (from the champion)")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget of one retraining's "
                                      "training (train.max_minutes for the cycle); null: max_steps alone")
    lr_factor: float = Field(0.3, gt=0, le=1, description="a retraining's learning rates (train.lr, "
                             "train.min_lr) times this: fine-tuning a trained model takes smaller steps")
    max_forgetting: float = Field(0.02, ge=0, description="bits per byte a retrained model may lose to the "
                                  "champion on the corpus so far (register.max_forgetting for the cycle)")
    endpoint: str | None = Field(None, description="the serving endpoint that follows the champion "
                                 "(http://host:port/v1, `lmp serve`; its token from LMP_SERVE_TOKEN): "
                                 "after a promotion the canary scores probes through it and rolls the "
                                 "champion back if it misbehaves; null: no canary")
    canary_documents: int = Field(16, ge=1, description="test documents of the new corpus the canary scores")
    canary_timeout_s: float = Field(120.0, gt=0, description="how long the endpoint may take to serve the "
                                    "new champion")
    canary_tolerance: float = Field(1e-3, ge=0, description="largest difference, in nats a token, between "
                                    "served and offline log-probabilities")
    canary_max_error_rate: float = Field(0.0, ge=0, le=1, description="share of canary requests that may "
                                         "fail")
    canary_max_p95_ms: float = Field(5000.0, gt=0, description="slowest p95 latency of the canary's requests")
    seed: int = Field(1337, ge=0, description="seeds the drift samples and their bootstrap")

    @field_validator("archive_dir")
    @classmethod
    def _inside_the_project(cls, value: Path) -> Path:
        if not inside_project(value):
            raise ValueError(f"{str(value)!r} must be a folder inside the project (relative, no '..'): "
                             "DVC versions only what is inside its repository")
        return value


class Config(Section):
    """The whole params.yaml. `validate` and `register` are read as `validate_` and `register_`
    (pydantic reserves the plain names)."""

    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    filter: FilterConfig = FilterConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    split: SplitConfig = SplitConfig()
    canaries: CanaryConfig = CanaryConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    tune: TuneConfig = TuneConfig()
    mlflow: TrackingConfig = TrackingConfig()
    ray: RayConfig = RayConfig()
    serve: ServeConfig = ServeConfig()
    ct: ContinuousConfig = ContinuousConfig()

    @model_validator(mode="after")
    def _stride_fits_context(self) -> Config:
        if self.evaluate.stride > self.model.block_size:
            raise ValueError("evaluate.stride must not exceed model.block_size (tokens would be skipped)")
        return self

    @model_validator(mode="after")
    def _exposure_bar_within_reach(self) -> Config:
        """The canary gate must be able to block. With n references, a canary more likely than
        all of them is shown at most -log2(1 - 0.025^(1/n)) bits exposed (the lower end of the
        exact 95% interval of 0 in n: about log2(n) - 1.9), and never more than its secrets'
        digits x log2(10) bits; with no canary, nothing is measured."""
        bar, n = self.register_.max_canary_exposure, self.privacy.canary_references
        if bar is None:
            return self
        off = "or set register.max_canary_exposure: null to register without this gate"
        if not self.canaries.count:
            raise ValueError(f"register.max_canary_exposure {bar:g} gates on canaries, and canaries.count is "
                             f"0: plant some, {off}")
        if bar >= (most := self.canaries.digits * math.log2(10)):
            raise ValueError(f"register.max_canary_exposure {bar:g} cannot block: a canary of "
                             f"canaries.digits {self.canaries.digits} digits is shown at most "
                             f"{most:.1f} bits exposed; lower the bar, {off}")
        if exposure_shown(n) <= bar:
            needed = math.ceil(math.log(0.025) / math.log1p(-(2.0 ** -bar)))
            needed += exposure_shown(needed) <= bar  # rounding at the boundary
            raise ValueError(f"register.max_canary_exposure {bar:g} cannot block with "
                             f"privacy.canary_references {n}: a canary more likely than every reference "
                             f"is shown at most {exposure_shown(n):.2f} bits exposed; set "
                             f"canary_references to at least {needed}, or lower the bar")
        return self

    @model_validator(mode="after")
    def _outputs_stay_apart(self) -> Config:
        """Stages replace their outputs whole: an output that is the project (`.`), outside it
        (`..`), or inside or around another stage's output would delete what it covers."""
        outputs = {key: self.path(key) for key in OUTPUTS if "://" not in self.value(key)}  # URLs: elsewhere
        project = Path.cwd()
        for key, path in outputs.items():
            if not path.is_absolute() and (path.name in ("", ".", "..") or ".." in path.parts):
                raise ValueError(f"{key}: {str(path)!r} must name a file or folder inside the project "
                                 "(not '.', '..' or empty; an absolute path to go elsewhere)")
            if (where := absolute(path)) == project or where in project.parents:
                raise ValueError(f"{key}: {str(path)!r} is the project or a folder around it, which "
                                 "the stage would replace whole")
        # Compared as absolute paths: `/path/to/project/reports` is `reports`.
        for (a, pa), (b, pb) in combinations(outputs.items(), 2):
            if (wa := absolute(pa)) == (wb := absolute(pb)) or wa in wb.parents or wb in wa.parents:
                raise ValueError(f"{a} ({os.path.normpath(pa)}) and {b} ({os.path.normpath(pb)}) overlap: "
                                 "each stage replaces its outputs whole, so one would delete the other")
        return self

    def path(self, key: str) -> Path:
        return Path(self.value(key))

    def value(self, key: str) -> str:
        section, name = key.split(".")
        return str(getattr(getattr(self, {"validate": "validate_", "register": "register_"}.get(
            section, section)), name))

    @model_validator(mode="after")
    def _search_space_builds_models(self) -> Config:
        """Every trial must build: each searched pair of heads and width must divide (checked
        here, not when a trial fails after the others have run)."""
        heads, widths = self._search_values("n_head"), self._search_values("n_embd")
        for head, width in ((h, w) for h in heads for w in widths):
            if width % head:
                raise ValueError(f"tune.space: model.n_embd {width} is not divisible by model.n_head "
                                 f"{head}: no trial with both could build its model")
        return self

    def _search_values(self, name: str) -> list[int]:
        """The values tune.space gives model.<name> (its params.yaml value when not searched)."""
        spec = self.tune.space.get(f"model.{name}")
        if not spec:
            return [getattr(self.model, name)]
        (kind, values), = spec.items()
        if kind == "randint":  # [low, high): every value
            return list(range(int(values[0]), int(values[1])))
        if kind in ("uniform", "loguniform"):
            raise ValueError(f"tune.space: model.{name} takes whole numbers: use choice, grid or randint")
        return [int(v) for v in values]

    @model_validator(mode="after")
    def _backend_has_a_model(self) -> Config:
        hf_parent = (self.train.init_from or "").startswith(HF_PREFIX)
        if hf_parent and self.model.backend != "hf":
            raise ValueError(f"train.init_from {self.train.init_from} is a Hugging Face model: set "
                             "model.backend: hf")
        if self.model.backend == "hf" and not (hf_parent or self.model.hf_config or self.train.init_from):
            raise ValueError("model.backend hf needs model.hf_config (from scratch) or train.init_from "
                             "(fine-tuning)")
        if self.lora.r and not self.train.init_from:
            raise ValueError("lora.r: LoRA adapts a pretrained model; set train.init_from (or lora.r: 0 "
                             "to train from scratch)")
        return self

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or self.mlflow.tracking_uri

    @property
    def ray_address(self) -> str | None:
        return os.environ.get("RAY_ADDRESS") or self.ray.address


def load_config(path: str | os.PathLike = "params.yaml", overrides: Iterable[str] = (),
                settings: dict[str, Any] | None = None) -> Config:
    """Read and validate params.yaml, with `section.key=value` overrides (`lmp --set`) on top, then
    `settings` (already typed: a command's own flags); raise ConfigError naming each bad key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for override in overrides:
        set_key(raw, *parse_override(override))
    for key, value in (settings or {}).items():
        set_key(raw, key.split("."), value)
    given = [f"--set {o}" for o in overrides] + [f"{key}={value}" for key, value in (settings or {}).items()]
    where = f"{path} with {' '.join(given)}" if given else str(path)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{where}: " + "; ".join(_describe(e) for e in err.errors())) from None


def parse_override(override: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (["train", "lr"], "3e-4"): the value read as YAML (numbers, true/false,
    null, [lists]); the Config then types it as it types the file."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip() or "." not in key:
        raise ConfigError(f"--set {override}: expected SECTION.KEY=VALUE (e.g. train.lr=3e-4)")
    try:
        node = yaml.compose(value) if value.strip() else None
        if value.strip() and (comment := value[node.end_mark.index if node else 0:]).strip():
            quoted = "'" + value.replace("'", "''") + "'"  # YAML's single quotes: no escapes
            raise ConfigError(f"--set {override}: {comment!r} would be read as a YAML comment and "
                              f"dropped; quote the value in YAML: {key}={quoted}")
        return key.strip().split("."), yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {override}: the value is not valid YAML: {err}") from None


def set_key(raw: dict, parts: list[str], value: Any) -> None:
    node = raw
    for depth, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or written empty (`lora:`)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[:depth + 1])} is not a section")
    node[parts[-1]] = value


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "<root>"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if isinstance(error.get("input"), dict):  # a check across a section's keys: its message names them
        return f"{key}: {error['msg'].removeprefix('Value error, ')}"
    return f"{key}: {error['msg']} (got {shown(error.get('input'))})"


def shown(value) -> str:
    """A value as an error message echoes it, URL credentials (//user:password@) masked."""
    return repr(without_url_credentials(value) if isinstance(value, str) else value)


PARAMS_HEADER = """\
Every number and path of the pipeline, with its default. Loaded into lm_pipeline.config.Config
(unknown keys and bad values fail before any compute). dvc.yaml lists the keys each stage reads,
so changing a value reruns exactly the stages that depend on it: `dvc exp run -S train.lr=1e-3`.
The comments are the field descriptions in lm_pipeline/config.py; `python -m lm_pipeline.config`
prints this file with every default."""


def default_params_yaml() -> str:
    """params.yaml with every default, each section's and field's description above it."""
    lines = [f"# {line}" for line in PARAMS_HEADER.splitlines()]
    for name, field in Config.model_fields.items():
        section: type[Section] = field.annotation
        lines += [""] + _comment(section.__doc__, "") + [f"{field.alias or name}:"]
        for key, spec in section.model_fields.items():
            value = spec.get_default(call_default_factory=True)
            if isinstance(value, BaseModel):  # a filter's thresholds: one a line
                value = value.model_dump(mode="json")
            lines += _comment(spec.description, "  ")
            if isinstance(value, dict) and value:  # one entry a line (tune.space)
                lines += [f"  {key}:"] + [f"    {k}: {_flow(v)}" for k, v in value.items()]
            else:
                lines.append(f"  {key}: {_flow(value)}")
    return "\n".join(lines) + "\n"


def _flow(value) -> str:
    value = str(value) if isinstance(value, Path) else value
    if isinstance(value, str) and "\n" in value:
        return json.dumps(value)  # a double-quoted YAML string, escapes and all
    return yaml.safe_dump(value, default_flow_style=True, width=1000).removesuffix("\n...\n").strip()


def _comment(text: str | None, indent: str, width: int = 100) -> list[str]:
    import textwrap

    return textwrap.wrap(" ".join((text or "").split()), width, initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}# ")


if __name__ == "__main__":
    print(default_params_yaml(), end="")
