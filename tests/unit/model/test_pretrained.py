"""The exported model folder: what save_pretrained writes, load_pretrained reads back exactly."""

from lm_pipeline.config import TokenizerConfig
from lm_pipeline.data.tokenizer import EOT, eot_id, train_tokenizer
from lm_pipeline.model.backends import weights_sha256
from lm_pipeline.model.folder import (
    GENERATION_CONFIG_FILE,
    MODEL_FILES,
    RUN_FILE,
    TOKENIZER_CONFIG_FILE,
    read_run_info,
)
from lm_pipeline.model.pretrained import load_pretrained, save_pretrained
from lm_pipeline.model.transformer import GPT, GPTConfig


def test_a_saved_model_folder_loads_back_with_the_same_weights_tokenizer_and_run_info(tmp_path):
    tokenizer = train_tokenizer(["a tuple is an immutable sequence"] * 5,
                                TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=16, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config)
    run_info = {"mlflow_run_id": "abc", "step": 7}
    save_pretrained(model, tmp_path / "tokenizer.json", tmp_path / "model", run_info)

    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(
        [*MODEL_FILES, TOKENIZER_CONFIG_FILE, GENERATION_CONFIG_FILE, RUN_FILE])
    loaded, loaded_tokenizer = load_pretrained(tmp_path / "model")
    assert weights_sha256(loaded) == weights_sha256(model) and loaded.config == model.config
    assert loaded_tokenizer.to_str() == tokenizer.to_str()
    assert read_run_info(tmp_path / "model") == run_info
    assert not list(tmp_path.glob(".model.*"))  # written atomically: no temporary left beside it
    # what evaluation scores and continuous training measures is corpus text: a quoted
    # <|endoftext|> is its characters, not the token that ends the document
    quoted = loaded_tokenizer.encode(f"ends with {EOT} here", add_special_tokens=False).ids
    assert eot_id(loaded_tokenizer) not in quoted
    assert loaded_tokenizer.decode(quoted) == f"ends with {EOT} here"
