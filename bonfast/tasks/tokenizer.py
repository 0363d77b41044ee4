"""A character tokenizer for the embedded `arithmetic` task.

One token per character, three special tokens, no merges, no downloads. The id layout is fixed, so a
checkpoint trained with it never needs a tokenizer file:

    0 <pad>   1 <bos>   2 <eos>   3.. the characters of `ArithmeticTokenizer.CHARS`

`encode` never adds special tokens (the task's `prompt_ids` prepends `<bos>`); `decode` stops at the first
`<eos>` and drops `<bos>` / `<pad>`, so a generated row decodes to exactly the response text.
"""
from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ArithmeticTokenizer"]


class ArithmeticTokenizer:
    """Character-level tokenizer over digits, `+ - * = ( )`, space and `?`.

    Attributes mirror the Hugging Face names the engine and trainer read: `vocab_size`, `pad_token_id` (0),
    `bos_token_id` (1), `eos_token_id` (2), `chat_template` (None: prompts are plain text).
    """

    CHARS = "0123456789+-*=() ?"
    SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    chat_template = None
    name_or_path = "bonfast/arithmetic-char"

    def __init__(self):
        offset = len(self.SPECIAL_TOKENS)
        self._char_to_id = {c: i + offset for i, c in enumerate(self.CHARS)}
        self._id_to_char = {i: c for c, i in self._char_to_id.items()}

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (21)."""
        return len(self.SPECIAL_TOKENS) + len(self.CHARS)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_token(self) -> str:
        return self.SPECIAL_TOKENS[self.pad_token_id]

    @property
    def bos_token(self) -> str:
        return self.SPECIAL_TOKENS[self.bos_token_id]

    @property
    def eos_token(self) -> str:
        return self.SPECIAL_TOKENS[self.eos_token_id]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids of the characters of `text`, no special tokens added.

        `add_special_tokens` is accepted for the Hugging Face signature and has no effect: this tokenizer adds
        none. Raises ValueError naming the first character outside `CHARS`.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        try:
            return [self._char_to_id[c] for c in text]
        except KeyError as err:
            raise ValueError(
                f"text contains {err.args[0]!r}, which ArithmeticTokenizer cannot encode; "
                f"expected only characters from {self.CHARS!r}") from None

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` up to (not including) the first `<eos>`; `<bos>` and `<pad>` are dropped.

        `ids` may be a list of ints or a 1-D tensor. With `skip_special_tokens=False` the special tokens are
        rendered by name and decoding does not stop at `<eos>` (for debugging). An id outside
        `[0, vocab_size)` raises ValueError.
        """
        if hasattr(ids, "tolist"):  # torch / numpy: one host copy, callers decode after sampling anyway
            ids = ids.tolist()
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"ids contains {i}, expected ids in [0, {self.vocab_size})")
            if i < len(self.SPECIAL_TOKENS):
                if not skip_special_tokens:
                    out.append(self.SPECIAL_TOKENS[i])
                elif i == self.eos_token_id:
                    break
                continue
            out.append(self._id_to_char[i])
        return "".join(out)

    def batch_decode(self, rows: Iterable[Iterable[int]], skip_special_tokens: bool = True) -> list[str]:
        """`decode` of every row."""
        return [self.decode(r, skip_special_tokens=skip_special_tokens) for r in rows]

    def __repr__(self) -> str:
        return f"ArithmeticTokenizer(vocab_size={self.vocab_size}, chars={self.CHARS!r})"
