"""Tokenizers: a registry part chosen in the recipe (``data.tokenizer``), one entry per kind.

    data:
      tokenizer: rwkv_world                                          # the default: RWKV World, 65,536 tokens
      tokenizer: {name: tokenizer_json, path: mamba-130m.tokenizer/tokenizer.json}   # a local tokenizer.json
      tokenizer: {name: hf, path: /models/Qwen2-0.5B}                # a local Hugging Face tokenizer directory

A real backbone comes with its own vocabulary (Mamba: GPT-NeoX's; Llama, Qwen2 and the fla-hub models: a
``tokenizer.json`` beside the weights; ``aurora convert`` copies those files next to the converted weights). Every
tokenizer reads local files only: nothing is downloaded and no code from a model directory runs.

Each tokenizer has ``encode(text) -> ids``, ``decode(ids) -> text``, ``eos_id``, ``pad_id``, ``vocab_size`` (ids run
from 0 to ``vocab_size - 1``; it must not exceed the rows of the language model's embedding, checked before
training starts), ``spec`` (the registry spec that rebuilds it, with absolute paths: a checkpoint carries it) and
``files`` (what ``aurora export`` copies).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from aurora.registry import TOKENIZER

# the files a Hugging Face checkpoint keeps its tokenizer in (what ``aurora convert`` copies along)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "vocab.txt", "tokenizer.model", "added_tokens.json")


class TokenizerError(ValueError):
    """A tokenizer that cannot be built from the files the recipe names (missing, unreadable, remote)."""


def _trie(vocab_file: str):
    """The trie tokenizer of a vocabulary file, built once per file content (a copy of the vocabulary beside an
    export, or in a checkpoint directory, shares the one already built: building it takes seconds)."""
    import hashlib

    digest = hashlib.sha256(Path(vocab_file).read_bytes()).hexdigest()
    if digest not in _TRIES:
        from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

        _TRIES[digest] = TRIE_TOKENIZER(vocab_file)
    return _TRIES[digest]


_TRIES: dict[str, Any] = {}  # content digest -> trie tokenizer


def world_vocab_file() -> str:
    import rwkv

    return str(Path(rwkv.__file__).parent / "rwkv_vocab_v20230424.txt")


def _local(path: str | Path, what: str, want_dir: bool | None = None) -> Path:
    """``path`` resolved, refusing URLs and hub ids that are not local files (nothing is downloaded)."""
    text = str(path)
    if "://" in text:
        raise TokenizerError(f"{what} must be a local path, got the URL {text!r} (nothing is downloaded)")
    p = Path(text).expanduser()
    if not p.exists():
        raise TokenizerError(f"{what} {text!r} does not exist (a local file or directory is expected; hub names "
                             "are not downloaded)")
    if want_dir is True and not p.is_dir():
        raise TokenizerError(f"{what} {text!r} must be a directory (an HF tokenizer folder)")
    if want_dir is False and not p.is_file():
        raise TokenizerError(f"{what} {text!r} must be a file")
    return p.resolve()


@TOKENIZER.register("rwkv_world")
class RWKVWorld:
    """The RWKV World tokenizer (65,536 tokens, shipped by the rwkv package): the default. Token 0 is end-of-text.

    Args:
        vocab_file: the vocabulary (default: the rwkv package's ``rwkv_vocab_v20230424.txt``).
    """

    eos_id = 0
    pad_id = 0

    def __init__(self, vocab_file: str | None = None) -> None:
        self.vocab_file = str(_local(vocab_file, "tokenizer vocab_file", want_dir=False)) if vocab_file \
            else world_vocab_file()
        if not Path(self.vocab_file).is_file():
            raise FileNotFoundError(f"tokenizer vocabulary not found: {self.vocab_file}")
        self._tok = _trie(self.vocab_file)
        self.vocab_size = 65536

    @property
    def spec(self) -> dict[str, Any]:
        return {"name": "rwkv_world"} if self.vocab_file == world_vocab_file() else \
            {"name": "rwkv_world", "vocab_file": self.vocab_file}

    @property
    def files(self) -> list[Path]:
        return [Path(self.vocab_file)]

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self._tok.decodeBytes([i for i in ids if i != self.eos_id]).decode("utf-8", errors="replace")


def _special_token(folder: Path, key: str) -> str | None:
    """``eos_token`` / ``pad_token`` from tokenizer_config.json or special_tokens_map.json in ``folder``."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = folder / name
        if not f.is_file():
            continue
        try:
            value = json.loads(f.read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
            value = value.get("content")
        if isinstance(value, str):
            return value
    return None


@TOKENIZER.register("tokenizer_json")
class TokenizerJSON:
    """A local ``tokenizer.json`` (the Hugging Face tokenizers format: Llama, Qwen2, GPT-NeoX for Mamba, fla-hub).

    Args:
        path: the tokenizer.json file, or the folder holding it.
        eos_token: the end-of-text token (default: ``eos_token`` of a tokenizer_config.json /
            special_tokens_map.json beside it, else id 0).
        pad_token: the padding token (default: the eos token).
    """

    def __init__(self, path: str, eos_token: str | None = None, pad_token: str | None = None) -> None:
        from tokenizers import Tokenizer as HFTok

        p = _local(path, "tokenizer path")
        if p.is_dir():
            p = p / "tokenizer.json"
            if not p.is_file():
                raise TokenizerError(f"no tokenizer.json in {p.parent}")
        try:
            self._tok = HFTok.from_file(str(p))
        except Exception as e:  # noqa: BLE001  (the tokenizers library raises its own Exception type)
            raise TokenizerError(f"{p} is not a readable tokenizer.json ({type(e).__name__}: {e})") from None
        self.path = str(p)
        self._eos_token, self._pad_token = eos_token, pad_token
        eos = eos_token or _special_token(p.parent, "eos_token")
        self.eos_id = self._id(eos, "eos_token") if eos else 0
        pad = pad_token or _special_token(p.parent, "pad_token")
        self.pad_id = self._id(pad, "pad_token") if pad and self._tok.token_to_id(pad) is not None else self.eos_id
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        ids = self._tok.get_vocab(with_added_tokens=True).values()
        self.vocab_size = max(self.vocab_size, max(ids, default=-1) + 1)  # ids may have gaps: the largest decides

    def _id(self, token: str, what: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise TokenizerError(f"{what} {token!r} is not in the vocabulary of {self.path}")
        return int(i)

    @property
    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": "tokenizer_json", "path": self.path}
        if self._eos_token:
            out["eos_token"] = self._eos_token
        if self._pad_token:
            out["pad_token"] = self._pad_token
        return out

    @property
    def files(self) -> list[Path]:
        folder = Path(self.path).parent
        return [Path(self.path)] + [folder / n for n in ("tokenizer_config.json", "special_tokens_map.json")
                                    if (folder / n).is_file()]

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids if i != self.eos_id], skip_special_tokens=False)


@TOKENIZER.register("hf")
class HFTokenizer:
    """A local Hugging Face tokenizer directory through transformers' AutoTokenizer (``local_files_only``, no
    remote code): for vocabularies kept as vocab.json + merges.txt, sentencepiece models and the like.

    Args:
        path: the directory (``tokenizer_config.json`` and the vocabulary files).
    """

    def __init__(self, path: str) -> None:
        p = _local(path, "tokenizer path", want_dir=True)
        from transformers import AutoTokenizer

        try:
            self._tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001  (OSError, ValueError, or whatever the tokenizer class raises)
            raise TokenizerError(f"cannot load an HF tokenizer from {p} ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
        self.path = str(p)
        eos = self._tok.eos_token_id
        self.eos_id = int(eos) if eos is not None else 0
        pad = self._tok.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_id
        ids = self._tok.get_vocab().values()
        self.vocab_size = max(len(self._tok), max(ids, default=-1) + 1)

    @property
    def spec(self) -> dict[str, Any]:
        return {"name": "hf", "path": self.path}

    @property
    def files(self) -> list[Path]:
        return [f for n in TOKENIZER_FILES if (f := Path(self.path) / n).is_file()]

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids if i != self.eos_id], skip_special_tokens=False)


def build_tokenizer(spec: str | Mapping[str, Any] | None = None):
    """The tokenizer a recipe's ``data.tokenizer`` names (None: RWKV World)."""
    return TOKENIZER.build(spec or "rwkv_world")


def tokenizer_files(src: str | Path) -> list[Path]:
    """The tokenizer files of a checkpoint: those in ``src`` (a directory) or beside it (a weights file)."""
    src = Path(src)
    folder = src if src.is_dir() else src.parent
    return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]


def check_vocabulary(tokenizer: Any, embedding_rows: int, where: str = "the language model") -> None:
    """A tokenizer whose ids do not fit the embedding (its largest id >= the embedding's rows) is an error naming
    both sizes, before any step (it would fail as a bare ``IndexError: index out of range in self``)."""
    n = int(tokenizer.vocab_size)
    if n > int(embedding_rows):
        spec = getattr(tokenizer, "spec", {"name": type(tokenizer).__name__})
        raise ValueError(
            f"the tokenizer {spec.get('name')!r} has {n:,} tokens (ids up to {n - 1:,}) but {where}'s embedding has "
            f"{int(embedding_rows):,} rows: give the backbone its own tokenizer (data.tokenizer: {{name: "
            "tokenizer_json, path: .../tokenizer.json}, e.g. the one `aurora convert` copied beside the weights) or "
            f"a model.rnn.vocab_size of at least {n}")
