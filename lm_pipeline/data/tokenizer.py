"""Tokenizer training with HF `tokenizers`, saved as a standard tokenizer.json."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lm_pipeline.config import TokenizerConfig

TOKENIZER_FILE = "tokenizer.json"  # the HF standard name, in data/processed and model folders
EOT = "<|endoftext|>"  # separates documents in the token stream
# What ends a document in the tokenizers this pipeline trains or fine-tunes: ours, GPT-2's and
# Qwen's; Llama 3's; Llama 2's and Mistral's. A pretrained folder's declared eos must be one of them.
END_TOKENS = (EOT, "<|end_of_text|>", "</s>")
UNK = "<unk>"


def train_tokenizer(texts: Iterable[str], tokenizer: TokenizerConfig) -> Tokenizer:
    """Byte-level BPE (any text encodes, no unknowns) or character-level (vocab = seen chars)."""
    if tokenizer.kind == "bpe":
        trained = Tokenizer(models.BPE())
        trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trained.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=tokenizer.vocab_size,
            min_frequency=tokenizer.min_frequency,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        trained = Tokenizer(models.WordLevel(unk_token=UNK))
        trained.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        trained.decoder = decoders.Fuse()
        trainer = trainers.WordLevelTrainer(special_tokens=[EOT, UNK], show_progress=False)
    trained.train_from_iterator(texts, trainer=trainer)
    return reading_text(trained)


def read_tokenizer(path) -> Tokenizer:
    """A tokenizer.json, to encode corpus text (reading_text)."""
    return reading_text(Tokenizer.from_file(str(path)))


def reading_text(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer`, encoding text as text: a document that quotes <|endoftext|> (or </s>) gets those
    characters, not the token that ends documents, which would cut it in two in the token stream
    and let a corpus write the separator the model is trained and scored on. tokenizer.json does
    not keep this setting, so every load for corpus text sets it (read_tokenizer)."""
    tokenizer.encode_special_tokens = True
    return tokenizer


def reading_prompts(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer`, encoding a prompt as Hugging Face and vLLM do: a special token written in it is
    that token. A prompt is its writer's to format (a chat prompt formatted by hand), and a chat
    template's rendering writes the model's turn tokens."""
    tokenizer.encode_special_tokens = False
    return tokenizer


def eot_id(tokenizer: Tokenizer) -> int:
    """The token that ends (and, as context, opens) every document."""
    for token in END_TOKENS:
        if (token_id := tokenizer.token_to_id(token)) is not None:
            return token_id
    raise ValueError(f"the tokenizer has no end-of-text token (one of {', '.join(END_TOKENS)})")
