"""The tokenizer as a registry part (issue 17): RWKV World by default, a local tokenizer.json, a local HF tokenizer
directory; local files only, and a vocabulary that does not fit the embedding is named before training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from aurora.data.tokenizers import (RWKVWorld, TokenizerError, build_tokenizer, check_vocabulary,
                                    tokenizer_files)
from aurora.registry import TOKENIZER

CORPUS = [
    "User: What colour is the shape?\n", "User: What shape is it?\n", "User: Which way does it move?\n",
    "\nAssistant: red", " green", " blue", " yellow", " circle", " square", " triangle", " left", " right",
    " up", " down", "Describe the video.", "\n\n",
]


def write_tiny_tokenizer(folder: Path, vocab: int = 100) -> Path:
    """A BPE tokenizer.json of at most ``vocab`` tokens trained on the synthetic set's texts, with
    tokenizer_config.json naming its end-of-text token (as a Hugging Face checkpoint keeps them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "<unk>"]))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "unk_token": "<unk>"}))
    return folder / "tokenizer.json"


def test_the_default_is_rwkv_world_and_every_kind_is_listed():
    tok = build_tokenizer(None)
    assert isinstance(tok, RWKVWorld) and tok.vocab_size == 65536 and tok.spec == {"name": "rwkv_world"}
    assert {"rwkv_world", "tokenizer_json", "hf"} <= set(TOKENIZER.names())
    with pytest.raises(KeyError, match="unknown tokenizer 'gpt2'; known tokenizers: hf, rwkv_world, tokenizer_json"):
        build_tokenizer("gpt2")


def test_a_local_tokenizer_json_and_an_hf_directory_read_the_same_vocabulary(tmp_path):
    path = write_tiny_tokenizer(tmp_path / "tok")
    tj = build_tokenizer({"name": "tokenizer_json", "path": str(path)})
    assert 30 < tj.vocab_size <= 100 and tj.eos_id == 0  # <|endoftext|> from tokenizer_config.json
    ids = tj.encode("What colour is the shape?")
    assert ids and max(ids) < tj.vocab_size and tj.decode(ids) == "What colour is the shape?"
    assert tj.decode(ids + [tj.eos_id]) == tj.decode(ids)  # end-of-text is not text
    assert tj.spec == {"name": "tokenizer_json", "path": str(path.resolve())}
    same = build_tokenizer({"name": "tokenizer_json", "path": str(tmp_path / "tok")})  # the folder works too
    assert same.encode("red circle") == tj.encode("red circle")

    hf = build_tokenizer({"name": "hf", "path": str(tmp_path / "tok")})
    assert hf.vocab_size == tj.vocab_size and hf.eos_id == tj.eos_id
    assert hf.encode("Which way does it move?") == tj.encode("Which way does it move?")
    assert sorted(f.name for f in hf.files) == ["tokenizer.json", "tokenizer_config.json"]
    assert sorted(f.name for f in tokenizer_files(tmp_path / "tok")) == ["tokenizer.json", "tokenizer_config.json"]


def test_only_local_files_are_read(tmp_path):
    with pytest.raises(TokenizerError, match="local path.*URL"):
        build_tokenizer({"name": "tokenizer_json", "path": "https://example.com/tokenizer.json"})
    with pytest.raises(TokenizerError, match="'EleutherAI/gpt-neox-20b' does not exist.*not downloaded"):
        build_tokenizer({"name": "hf", "path": "EleutherAI/gpt-neox-20b"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a readable tokenizer.json"):
        build_tokenizer({"name": "tokenizer_json", "path": str(tmp_path / "bad.json")})


def test_a_vocabulary_larger_than_the_embedding_is_named():
    check_vocabulary(build_tokenizer(None), 65536)  # fits exactly
    with pytest.raises(ValueError, match=r"'rwkv_world' has 65,536 tokens \(ids up to 65,535\) but the rnn's "
                                         r"embedding has 100 rows"):
        check_vocabulary(build_tokenizer(None), 100, "the rnn")
