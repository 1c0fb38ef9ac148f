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
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        settings_file, config_file = os.path.join(path, "tokenizer_config.json"), os.path.join(path, "config.json")
        settings, model_config = self._read_json(settings_file), self._read_json(config_file)
        ids = {}
        for name in ("bos", "eos", "pad"):
            ids[name] = self._special_id(settings.get(f"{name}_token"), model_config.get(f"{name}_token_id"),
                                         f"{config_file}: {name}_token_id")
        self.bos_id, self.eos_id = ids["bos"], ids["eos"]
        self.pad_id = ids["pad"] if ids["pad"] is not None else (self.eos_id if self.eos_id is not None else 0)

    @staticmethod
    def _read_json(file: str) -> dict:
        """A JSON object from `file` ({} if absent); ValueError naming the file if not a UTF-8 JSON object."""
        if not os.path.isfile(file):
            return {}
        with open(file, "rb") as f:
            raw = f.read()
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{file}: not UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: invalid JSON ({e})") from None
        except (RecursionError, ValueError) as e:
            raise ValueError(f"{file}: unreadable JSON ({type(e).__name__}: {e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{file}: must be a JSON object, got {type(data).__name__}")
        return data

    def _special_id(self, token, fallback_id, where: str) -> int | None:
        """The id of a special token string, else config.json's id (a non-negative int, or a list of them)."""
        text = _token_content(token)
        if text is not None:
            token_id = self._tokenizer.token_to_id(text)
            if token_id is not None:
                return token_id
        if isinstance(fallback_id, list):
            fallback_id = fallback_id[0] if fallback_id else None
        if fallback_id is not None and (isinstance(fallback_id, bool) or not isinstance(fallback_id, int)
                                        or fallback_id < 0):
            raise ValueError(f"{where} must be a non-negative integer token id, got {fallback_id!r}")
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
