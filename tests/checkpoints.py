"""Build test checkpoints: random-weight BERTs in the exact Hugging Face / sentence-transformers layout.

Weights come from `transformers.BertModel` with a fixed seed, then every
LayerNorm and bias is re-drawn to non-trivial values (the default init of ones
and zeros would hide a swapped scale/bias or a missing transpose of a bias).
The tokenizer is a cased WordPiece vocabulary built here for Russian and
English text, so token ids spread over the whole embedding table.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import string
from pathlib import Path

from berta_jax.models.bert.config import BertConfig

BERTA_PROMPTS = {
    "search_query": "search_query: ",
    "search_document": "search_document: ",
    "paraphrase": "paraphrase: ",
    "categorize": "categorize: ",
    "categorize_sentiment": "categorize_sentiment: ",
    "categorize_topic": "categorize_topic: ",
    "categorize_entailment": "categorize_entailment: ",
}
BERTA_VOCAB_SIZE = BertConfig.berta().vocab_size
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_RU_LOWER = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
_RU = _RU_LOWER + _RU_LOWER.upper()


def wordpiece_vocab(size: int) -> list[str]:
    """A deterministic cased vocabulary of `size` tokens: characters, then 2- and 3-letter pieces."""
    chars = [c for c in string.printable if not c.isspace()] + list(_RU) + list("—«»№…–")
    words = ["search", "query", "document", "paraphrase", "categorize", "sentiment", "topic", "entailment"]
    pieces = itertools.chain(
        chars,
        words,
        ("".join(combo) for n in (2, 3) for letters in (string.ascii_lowercase, _RU_LOWER)
         for combo in itertools.product(letters, repeat=n)),
    )
    vocab = dict.fromkeys(_SPECIALS)
    for piece in pieces:
        vocab.update(dict.fromkeys([piece, "##" + piece]))
        if len(vocab) >= size:
            return list(vocab)[:size]
    raise ValueError(f"cannot build a vocabulary of {size} tokens")


def write_tokenizer(folder: Path, vocab_size: int, model_max_length: int) -> None:
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = wordpiece_vocab(vocab_size)
    tok = BertTokenizerFast(
        vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=False, strip_accents=False,
        model_max_length=model_max_length,
    )
    if len(tok) != vocab_size or "[UNK]" in tok.tokenize("Женщину спасают врачи. Hello!"):
        raise RuntimeError(f"the test tokenizer did not take the {vocab_size}-token vocabulary")
    tok.save_pretrained(str(folder))


def write_sentence_files(
    folder: Path,
    *,
    hidden: int,
    max_seq_length: int,
    pooling: str = "mean",
    normalize: bool = True,
    include_prompt: bool = True,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
) -> None:
    """modules.json, 1_Pooling/config.json, sentence_bert_config.json, config_sentence_transformers.json."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling_keys = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
                    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens"}
    pooling_cfg = {"word_embedding_dimension": hidden, **{k: (m == pooling) for m, k in pooling_keys.items()},
                   "include_prompt": include_prompt}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_cfg, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))
    st = {"prompts": prompts or {}, "default_prompt_name": default_prompt_name, "similarity_fn_name": "cosine"}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(st, indent=2))


def random_bert_state(config_kwargs: dict, seed: int):
    """(transformers BertConfig, BertModel state dict) with random, non-trivial weights."""
    import torch
    from transformers import BertConfig, BertModel

    cfg = BertConfig(**config_kwargs)
    torch.manual_seed(seed)
    model = BertModel(cfg, add_pooling_layer=True).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return cfg, model


def make_random_bert(
    folder: Path,
    *,
    seed: int = 0,
    max_seq_length: int | None = None,
    pooling: str = "mean",
    normalize: bool = True,
    include_prompt: bool = True,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    **config_kwargs,
) -> Path:
    """Write a complete sentence-transformers folder holding a random BERT of the given shape."""
    config_kwargs.setdefault("vocab_size", BERTA_VOCAB_SIZE)
    _, model = random_bert_state(config_kwargs, seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    max_pos = config_kwargs.get("max_position_embeddings", 512)
    write_tokenizer(folder, min(config_kwargs["vocab_size"], BERTA_VOCAB_SIZE), max_pos)
    write_sentence_files(
        folder,
        hidden=config_kwargs["hidden_size"],
        max_seq_length=max_seq_length or max_pos,
        pooling=pooling,
        normalize=normalize,
        include_prompt=include_prompt,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
    )
    return folder


# The BERTA shape, from the library's one preset (config.json fields a transformers BertConfig accepts).
BERTA_SHAPE = dataclasses.asdict(BertConfig.berta())
