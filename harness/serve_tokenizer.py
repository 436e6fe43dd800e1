"""The text side of `harness serve`: its tokenizer, its chat template, and their export
as a Hugging Face tokenizer folder (``harness serve --export-tokenizer DIR``).

The models `harness serve` runs have random (or local) weights and no tokenizer of their
own, so the server defines one that any client can reproduce exactly:

* **Text -> ids**: byte level, one token per UTF-8 byte, id = byte value (ids 0..255).
  Every zoo vocabulary has at least 256 ids; a smaller one maps byte mod vocab (not
  exportable: two bytes would share an id).
* **Ids -> text** (``/detokenize``): the inverse, bytes decoded as UTF-8 (an incomplete
  sequence becomes U+FFFD, as the `tokenizers` library's byte-level decoder does). Ids
  256 and above are model ids with no text: refused.
* **Generated text** is a rendering, not a decoding: one printable ASCII character per
  generated id (:func:`token_text`), so that a tool counting output tokens with the
  exported tokenizer (aiperf does, by default) gets exactly ``usage.completion_tokens``.
  A random model's ids decoded as bytes would be control characters and broken UTF-8.
* **Chat template**: the messages' contents joined by one newline; roles are not marked
  and no generation prompt is added. A benchmark's single user message therefore costs
  exactly its own tokens, as the same text on ``/v1/completions`` does, so chat and
  completions of one prompt are the same work and a tool's own prompt count (its
  tokenizer on the text it sent) equals ``usage.prompt_tokens``. The same template is in
  the exported ``tokenizer_config.json``, so ``apply_chat_template`` gives the server's ids.

The export needs the ``tokenizers`` package (extra ``[serve]``); nothing else here does.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

BYTE_VOCAB = 256

# The chat template as Jinja, for the exported tokenizer_config.json; render_chat below is
# the same rule in Python (the server does not need jinja2). Literal newlines are written
# as {{ '\n' }} so that transformers' trim_blocks / lstrip_blocks cannot change them.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}{% if not loop.first %}{{ '\\n' }}{% endif %}{{ p['text'] }}"
    "{% endfor %}{% endif %}{% endfor %}"
)


def encode_text(text: str, vocab: int) -> list[int]:
    """Byte level: one token per UTF-8 byte, id = byte mod vocab. ValueError for text that
    is not valid Unicode (a lone surrogate, which JSON can carry)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text is not valid Unicode ({e.reason} at character {e.start})") from None
    return [b % vocab for b in data]


def decode_ids(ids: list[Any]) -> str:
    """The text whose encode_text gives `ids` (for ids < 256). ValueError names the first id
    that is not a byte token."""
    for t in ids:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < BYTE_VOCAB:
            raise ValueError(f"token {str(t)[:40]} has no text: this server's text vocabulary is the "
                             f"{BYTE_VOCAB} byte tokens 0..{BYTE_VOCAB - 1} (higher ids are the model's only)")
    return bytes(ids).decode("utf-8", errors="replace")


def token_text(token: int) -> str:
    """One printable ASCII character per generated token id (re-encodes to exactly one token)."""
    return chr(32 + int(token) % 95)


def render_chat(messages: Any) -> str:
    """The prompt a chat request's messages make (CHAT_TEMPLATE). ValueError says what is
    wrong with them (a 400 for HTTP)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] must be an object with a string `role`")
        c = m.get("content")
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list) and c:
            parts = []
            for j, p in enumerate(c):
                if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                    raise ValueError(f"messages[{i}].content[{j}]: only text parts ({{type: text, text: ...}}) "
                                     "are served here")
                parts.append(p["text"])
            out.append("\n".join(parts))
        else:
            raise ValueError(f"messages[{i}].content must be a string or a non-empty list of text parts")
    return "\n".join(out)


# --- the Hugging Face folder ------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of the `tokenizers` ByteLevel
    pre-tokenizer and decoder (so a byte-level vocabulary is 256 such characters)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer():
    """A `tokenizers.Tokenizer` that encodes and decodes exactly as encode_text / decode_ids:
    a BPE model whose vocabulary is the 256 byte characters and no merges, behind a
    byte-level pre-tokenizer without GPT-2's word-splitting regex (one token per byte, no
    prefix space), no normalizer and no special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def export_tokenizer(directory: str | os.PathLike, *, vocab_size: int, max_model_len: int, model: str) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into
    `directory` (created if missing). Files are written beside and renamed into place,
    never through a symbolic link. ValueError for a vocabulary that cannot be exported or
    a directory that cannot be used; returns the files written."""
    if vocab_size < BYTE_VOCAB:
        raise ValueError(f"model {model!r} has {vocab_size} token ids: fewer than the {BYTE_VOCAB} byte tokens, "
                         "so its text ids are bytes mod vocab and no tokenizer file can express that")
    d = Path(directory)
    if d.is_symlink():
        raise ValueError(f"--export-tokenizer {d}: is a symbolic link; name a real directory")
    if d.exists() and not d.is_dir():
        raise ValueError(f"--export-tokenizer {d}: exists and is not a directory")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--export-tokenizer {d}: cannot create it ({e.strerror})") from None
    config = {
        # PreTrainedTokenizerFast: transformers loads tokenizer.json as it is, no Python class needed
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(max_model_len),
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,  # " ." must stay " ." for ids to round-trip
        "add_bos_token": False, "add_eos_token": False,
        "bos_token": None, "eos_token": None, "unk_token": None, "pad_token": None,
        "harness": {"served_model": model, "model_vocab_size": int(vocab_size),
                    "text_ids": "one per UTF-8 byte, id = byte value; ids >= 256 have no text",
                    "generated_text": "one printable ASCII character per generated token"},
    }
    try:
        tokenizer_json = build_tokenizer().to_str(pretty=True)
    except ImportError:
        raise ValueError("--export-tokenizer needs the tokenizers package: pip install 'accel-harness[serve]'") \
            from None
    files = {"tokenizer.json": tokenizer_json,
             "tokenizer_config.json": json.dumps(config, indent=2),
             "special_tokens_map.json": "{}"}
    written = []
    for name, text in files.items():
        target = d / name
        if target.is_symlink():
            raise ValueError(f"--export-tokenizer {target}: is a symbolic link; not writing through it")
        tmp = d / f".{name}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")
            os.replace(tmp, target)
        except OSError as e:
            raise ValueError(f"--export-tokenizer {target}: cannot write it ({e.strerror})") from None
        written.append(target)
    return written
