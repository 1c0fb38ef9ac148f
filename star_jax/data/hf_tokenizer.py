"""A Hugging Face `tokenizer.json` behind the same interface as CharTokenizer (encode/decode/ids)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer


def _token_content(value) -> str | None:
    """tokenizer_config.json stores special tokens as "text" or {"content": "text", ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer:
    """Loads `<path>/tokenizer.json` with the `tokenizers` library (no transformers, no network).

    bos/eos/pad come from tokenizer_config.json (token strings) or config.json (ids); pad falls back to
    eos, as most causal-LM checkpoints have no pad token.
    """

    def __init__(self, path: str):
        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: not found (expected a Hugging Face tokenizer.json)")
        try:
            self._tokenizer = Tokenizer.from_file(file)
        except Exception as e:  # noqa: BLE001 (tokenizers raises a bare Exception)
            raise ValueError(f"{file}: cannot parse tokenizer ({e})") from None
        settings = self._read_json(os.path.join(path, "tokenizer_config.json"))
        model_config = self._read_json(os.path.join(path, "config.json"))
        self.bos_id = self._special_id(settings.get("bos_token"), model_config.get("bos_token_id"))
        self.eos_id = self._special_id(settings.get("eos_token"), model_config.get("eos_token_id"))
        pad = self._special_id(settings.get("pad_token"), model_config.get("pad_token_id"))
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    @staticmethod
    def _read_json(file: str) -> dict:
        if not os.path.isfile(file):
            return {}
        with open(file, encoding="utf-8") as f:
            try:
                return json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}: invalid JSON ({e})") from None

    def _special_id(self, token, fallback_id) -> int | None:
        text = _token_content(token)
        if text is not None:
            token_id = self._tokenizer.token_to_id(text)
            if token_id is not None:
                return token_id
        if isinstance(fallback_id, list):
            fallback_id = fallback_id[0] if fallback_id else None
        return fallback_id

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise ValueError("HFTokenizer: add_bos=True but the tokenizer defines no bos token")
            ids = [self.bos_id] + ids
        if add_eos:
            if self.eos_id is None:
                raise ValueError("HFTokenizer: add_eos=True but the tokenizer defines no eos token")
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special: bool = True) -> str:
        return self._tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=skip_special)
