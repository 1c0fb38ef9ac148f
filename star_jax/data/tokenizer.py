"""Character-level tokenizer for the synthetic tasks (arithmetic scratchpads)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

_PAD, _BOS, _EOS, _UNK = 0, 1, 2, 3
_NUM_SPECIAL = 4
_CHARS = "\n" + "".join(chr(c) for c in range(32, 127))  # '\n' then printable ASCII 32..126


class CharTokenizer:
    """Character tokenizer: pad=0, bos=1, eos=2, unk=3, then '\\n' and printable ASCII 32..126 (vocab_size 100)."""

    pad_id: int = _PAD
    bos_id: int = _BOS
    eos_id: int = _EOS
    unk_id: int = _UNK
    vocab_size: int = _NUM_SPECIAL + len(_CHARS)

    def __init__(self) -> None:
        self._char_to_id = {c: i + _NUM_SPECIAL for i, c in enumerate(_CHARS)}
        self._id_to_char = {i: c for c, i in self._char_to_id.items()}

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset((self.pad_id, self.bos_id, self.eos_id, self.unk_id))

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Maps `text` to ids; a character outside the vocabulary raises ValueError."""
        ids = [self.bos_id] if add_bos else []
        table = self._char_to_id
        for i, ch in enumerate(text):
            tok = table.get(ch)
            if tok is None:
                raise ValueError(
                    f"CharTokenizer: character {ch!r} at index {i} of the text is not in the vocabulary "
                    f"('\\n' and printable ASCII 32..126); text starts {text[:40]!r}"
                )
            ids.append(tok)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(
        self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        return [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]

    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special: bool = True) -> str:
        """Maps ids back to text. Special ids are dropped when `skip_special`, else shown as <pad> etc."""
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1:
                raise ValueError(f"CharTokenizer.decode expects a 1-D array, got shape {ids.shape}")
            ids = ids.tolist()
        names = {_PAD: "<pad>", _BOS: "<bos>", _EOS: "<eos>", _UNK: "<unk>"}
        out = []
        for tok in ids:
            tok = int(tok)
            ch = self._id_to_char.get(tok)
            if ch is not None:
                out.append(ch)
            elif tok in names:
                if not skip_special:
                    out.append(names[tok])
            else:
                raise ValueError(f"CharTokenizer.decode: id {tok} is outside the vocabulary [0, {self.vocab_size})")
        return "".join(out)
