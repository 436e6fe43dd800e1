"""One redaction rule for every file the harness writes (run.json, the job file, the
suite copy, records, logs, error messages).

What counts as a secret:
* the value of every entry of a ``headers`` mapping (names are kept: they say *which*
  header was sent, and are needed to reproduce a run; values may be tokens);
* the userinfo of a URL (``scheme://user:password@host``): the whole ``user:password``
  becomes ``***`` (a user name alone can identify an account);
* the value of a query parameter whose name says it is a credential (``api_key``,
  ``token``, ``access_token``, ``key``, ``password``, ``secret``, ``sig``...);
* the value of a mapping key that names a credential (``password``, ``secret``,
  ``api_key``, ``access_token``, ...), but not ``api_key_env``: that is the *name* of an
  environment variable, and the key itself is only ever read from the environment.

Everything here is bounded: nesting deeper than MAX_DEPTH is replaced by REDACTED
rather than walked (a structure that deep is not a suite), and shared nodes (YAML
aliases) are visited once.
"""
from __future__ import annotations

import re
from typing import Any, Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"
MAX_DEPTH = 64

# keys whose (string) value is a credential; `api_key_env` deliberately does not match
_SECRET_KEY = re.compile(r"^(.*[_-])?(password|passwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|"
                         r"bearer|token|credentials?)$", re.I)
_SECRET_QUERY = re.compile(r"^(.*[_-])?(password|passwd|pwd|secret|api[_-]?key|key|token|access[_-]?token|"
                           r"auth|sig|signature)$", re.I)
# scheme://userinfo@ in free text (also where urlsplit cannot parse the rest: "http://u:p@[::1")
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#@'\"]+)@")
_HEADERS_KEYS = ("headers", "header")


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.match(key))


def redact_url(url: str) -> str:
    """The URL with its userinfo and credential query values replaced by ***."""
    if not isinstance(url, str) or "://" not in url:
        return url
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", url)
    try:
        u = urlsplit(text)
        if u.query:
            q = parse_qsl(u.query, keep_blank_values=True)
            if any(_SECRET_QUERY.match(k) for k, _ in q):
                q = [(k, REDACTED if _SECRET_QUERY.match(k) else v) for k, v in q]
                text = urlunsplit((u.scheme, u.netloc, u.path, urlencode(q, safe="*"), u.fragment))
    except ValueError:  # unparseable (e.g. "http://[::1"): the userinfo is already gone
        pass
    return text


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Free text (a log line, an error message): URL credentials, and any of `secrets`
    (values known to be secret: header values, an API key) wherever they occur.
    Secrets shorter than 4 characters are not replaced: replacing "1" everywhere would
    garble the message while protecting nothing."""
    if not isinstance(text, str):
        return text
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    for s in sorted({str(s) for s in secrets if s is not None and len(str(s)) >= 4}, key=len, reverse=True):
        text = text.replace(s, REDACTED)
    return text


def _redact(obj: Any, depth: int, seen: dict) -> Any:
    if depth > MAX_DEPTH:
        return REDACTED
    if isinstance(obj, str):
        return redact_url(obj) if "://" in obj else obj
    if isinstance(obj, (dict, list, tuple)):
        if id(obj) in seen:
            return seen[id(obj)]
    if isinstance(obj, dict):
        out: dict = {}
        seen[id(obj)] = out
        for k, v in obj.items():
            if isinstance(k, str) and k.lower() in _HEADERS_KEYS and isinstance(v, dict):
                out[k] = {hk: REDACTED for hk in v}
            elif is_secret_key(k) and isinstance(v, (str, int, float)) and not isinstance(v, bool):
                out[k] = REDACTED
            else:
                out[k] = _redact(v, depth + 1, seen)
        return out
    if isinstance(obj, (list, tuple)):
        out_l: list = []
        seen[id(obj)] = out_l
        out_l.extend(_redact(v, depth + 1, seen) for v in obj)
        return out_l if isinstance(obj, list) else type(obj)(out_l) if type(obj) is tuple else out_l
    return obj


def redact_suite(mapping: Any) -> Any:
    """A redacted deep copy of a suite (or any JSON-like structure: `asdict(suite)`, a
    job's backend options, a record's `backend` description). The input is not changed."""
    return _redact(mapping, 0, {})


def secrets_of(mapping: Any) -> list[str]:
    """The secret values that redact_suite would remove (to scrub free text with
    redact_text, e.g. an error message a server echoed back)."""
    found: list[str] = []

    def walk(obj: Any, depth: int, seen: set) -> None:
        if depth > MAX_DEPTH or id(obj) in seen:
            return
        if isinstance(obj, dict):
            seen.add(id(obj))
            for k, v in obj.items():
                if isinstance(k, str) and k.lower() in _HEADERS_KEYS and isinstance(v, dict):
                    found.extend(str(x) for x in v.values() if x is not None)
                elif is_secret_key(k) and isinstance(v, (str, int, float)) and not isinstance(v, bool):
                    found.append(str(v))
                else:
                    walk(v, depth + 1, seen)
        elif isinstance(obj, (list, tuple)):
            seen.add(id(obj))
            for v in obj:
                walk(v, depth + 1, seen)
        elif isinstance(obj, str) and "://" in obj:
            for m in _URL_USERINFO.finditer(obj):
                found.append(m.group("userinfo"))
                found.extend(p for p in m.group("userinfo").split(":")[1:] if p)

    walk(mapping, 0, set())
    return found


def redact_yaml_text(text: str) -> str:
    """The suite file's text with the same values redacted in place (comments, layout and
    line numbers kept, so `file:line` messages about the copy still point at the right
    line). Uses the YAML composer's node positions; aliases are not expanded (each node
    is visited once). Text that does not parse as YAML gets the free-text rule only."""
    import yaml

    spans: list[tuple[int, int, str]] = []
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return redact_text(text)
    seen: set = set()

    def scalar(node, replacement: str) -> None:
        if isinstance(node, yaml.ScalarNode) and node.start_mark.index < node.end_mark.index:
            spans.append((node.start_mark.index, node.end_mark.index, replacement))

    def walk(node, depth: int) -> None:
        if node is None or id(node) in seen or depth > MAX_DEPTH:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else None
                if isinstance(key, str) and key.lower() in _HEADERS_KEYS and isinstance(v, yaml.MappingNode):
                    for _hk, hv in v.value:
                        if isinstance(hv, yaml.ScalarNode):
                            scalar(hv, f'"{REDACTED}"')
                        else:
                            walk(hv, depth + 1)
                elif is_secret_key(key) and isinstance(v, yaml.ScalarNode):
                    scalar(v, f'"{REDACTED}"')
                else:
                    walk(v, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                walk(v, depth + 1)
        elif isinstance(node, yaml.ScalarNode) and "://" in str(node.value):
            red = redact_url(node.value)
            if red != node.value:
                scalar(node, '"' + red.replace("\\", "\\\\").replace('"', '\\"') + '"')

    for n in nodes:
        walk(n, 0)
    out = text
    for start, end, rep in sorted(set(spans), reverse=True):
        out = out[:start] + rep + out[end:]
    return redact_text(out)  # anything the YAML walk missed (a URL inside a comment)
