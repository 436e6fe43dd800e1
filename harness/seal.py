"""Sealed results (issue 17): a run folder that travels between labs.

``seal(run_dir)`` writes RUN/manifest.json: the SHA-256 of every file in the folder, the
suite's fingerprint (SHA-256 of run.json's redacted config as canonical JSON), the
harness version and git commit that made the run (and those of the harness that sealed
it), the lab and the inventory of every node. With an Ed25519 key it also writes
RUN/manifest.sig: the signature of manifest.json's exact bytes, base64.

``check(run_dir, pubkey)`` is the submission checker: the manifest still matches the
folder (every edited, added or removed file named), the signature verifies with the
given public key, and the records hold what a reader of the figures relies on (required
fields, energy measured in this run with its provenance, the accuracy gate passed, the
suite's repetitions, a calibration behind every roofline figure). It returns a
:class:`CheckResult`; ``run_status`` is the cheap summary reports show per run.

The folder is untrusted input: it is walked without following any symbolic link (a link
anywhere in it is refused: it could point at anything on the reader's machine), only
regular files are opened, and run.json / results.jsonl go through harness.results'
bounded readers.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
import stat
import time
from typing import Any, Optional

from harness.results import (MAX_RUN_JSON_BYTES, ResultsError, _parse_json, open_regular, read_records,
                             write_bytes_nofollow)

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MANIFEST_VERSION = 1
#: bounds on what a received folder can make the checker do
MAX_FILES = 100_000
MAX_MANIFEST_BYTES = MAX_RUN_JSON_BYTES
_CHUNK = 1 << 20

#: written into a run folder by the harness after the run, from the figures (harness
#: report's default RUN/report/, harness verify's RUN/verdicts-*.md): not sealed, so that
#: reporting on a sealed run does not break its seal. They are regenerated, never read.
DERIVED_DIRS = ("report",)
DERIVED_PREFIX, DERIVED_SUFFIX = "verdicts-", ".md"

#: provenance every energy figure must carry (harness.records.MeterEnergy)
ENERGY_METHODS = ("counter", "sampled", "external", "estimate")
#: how far (s) an energy window may sit outside its cell's own [started_at, +wall_s]:
#: both come from the same host clock (time.time()) in the same worker process
WINDOW_SLACK_S = 1.0
#: MeterEnergy fields that are figures a table prints
_ENERGY_FIGURES = ("avg_w", "j_per_prompt_token_gross", "j_per_prompt_token_net", "j_per_generated_token_gross",
                   "j_per_generated_token_net", "j_per_generated_token_e2e_gross", "j_per_generated_token_e2e_net",
                   "tokens_per_joule_gross", "tokens_per_joule_net", "energy_per_request_gross_j",
                   "energy_per_request_net_j")


class SealError(ValueError):
    """Input that cannot be sealed or checked at all (exit 2): says which file and why."""


# --- walking a folder that came from elsewhere ------------------------------------------

def _show(name: str) -> str:
    """A file name as printed: one line, no terminal escapes."""
    return name if name.isprintable() else json.dumps(name)[1:-1]


def _derived(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    return top in DERIVED_DIRS or ("/" not in rel and rel.startswith(DERIVED_PREFIX) and rel.endswith(DERIVED_SUFFIX))


@dataclass
class FolderScan:
    files: list[str] = field(default_factory=list)  # regular files, relative posix paths, sorted
    refused: list[str] = field(default_factory=list)  # links, FIFOs, devices: named, never opened
    derived: list[str] = field(default_factory=list)  # harness report / verify outputs, not sealed


def scan_folder(run_dir: Path) -> FolderScan:
    """Every entry under run_dir, without following links (os.scandir's lstat)."""
    out = FolderScan()
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = list(os.scandir(run_dir / rel_dir if rel_dir else run_dir))
        except OSError as e:
            raise SealError(f"{run_dir / rel_dir}: cannot list ({e.strerror or e})") from None
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if not rel_dir and entry.name in (MANIFEST, SIGNATURE):
                continue
            mode = entry.stat(follow_symlinks=False).st_mode
            if _derived(rel):
                out.derived.append(rel)
            elif stat.S_ISLNK(mode):
                out.refused.append(f"{_show(rel)}: is a symbolic link; not followed")
            elif stat.S_ISDIR(mode):
                stack.append(rel)
            elif stat.S_ISREG(mode):
                out.files.append(rel)
                if len(out.files) > MAX_FILES:
                    raise SealError(f"{run_dir}: more than {MAX_FILES} files; not a run folder")
            else:
                out.refused.append(f"{_show(rel)}: not a regular file (FIFO, device or socket); not read")
    out.files.sort()
    out.derived.sort()
    return out


def _open_no_follow(path: Path):
    """A regular file, never through a link (O_NOFOLLOW: the check and the open cannot race)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise SealError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SealError(f"{path}: not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def file_sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with _open_no_follow(path) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def canonical_json(data: Any) -> bytes:
    """One byte string per value: sorted keys, no spaces, UTF-8 (what is hashed and signed)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


#: suite keys that say who ran it and where it wrote, not what was measured: two labs
#: running one suite under their own `lab:` get one fingerprint
FINGERPRINT_IGNORES = ("lab", "output")


def suite_fingerprint(config: Any) -> str:
    """SHA-256 of run.json's redacted suite config (canonical JSON, without lab and output):
    two runs measured the same suite when equal."""
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in FINGERPRINT_IGNORES}
    return hashlib.sha256(canonical_json(config)).hexdigest()


def read_meta(run_dir: Path) -> dict:
    """run.json, bounded (harness.results' limits and JSON guards), refused if it is a link.
    Not read_run_json: a fleet run's `inventory` may be a list of nodes, which that reader,
    written for one machine, refuses."""
    path = run_dir / "run.json"
    if path.is_symlink():
        raise SealError(f"{path}: is a symbolic link; not followed")
    if not path.exists():
        raise SealError(f"{run_dir}: not a run folder (no run.json)")
    try:
        with open_regular(path) as f:
            raw = f.read(MAX_RUN_JSON_BYTES + 1)
        if len(raw) > MAX_RUN_JSON_BYTES:
            raise SealError(f"{path}: over the {MAX_RUN_JSON_BYTES // 2**20} MiB limit")
        meta = _parse_json(raw, str(path))
    except ResultsError as e:
        raise SealError(str(e)) from None
    except json.JSONDecodeError as e:
        raise SealError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(meta, dict):
        raise SealError(f"{path}: expected a JSON object")
    return meta


def nodes_of(meta: dict) -> list[dict]:
    """Every node's inventory: run.json `inventory` as one mapping (a local run, or a fleet
    run's head) or a list, then a fleet run's `nodes` ({name: inventory}, harness.fleet),
    each with its name; entries that are not mappings are dropped."""
    inv = meta.get("inventory")
    items = inv if isinstance(inv, list) else [inv] if isinstance(inv, dict) else []
    fleet = meta.get("nodes") if isinstance(meta.get("nodes"), dict) else {}
    items += [dict(n, node_name=n.get("node_name") or name) for name, n in fleet.items() if isinstance(n, dict)]
    return [n for n in items if isinstance(n, dict)]


def run_nodes(meta: dict) -> list[str]:
    """The names of the nodes that measured a run's cells: a fleet run's nodes (the names
    they gave themselves), else the hostname(s) of run.json's inventory."""
    fleet = meta.get("nodes") if isinstance(meta.get("nodes"), dict) else {}
    if fleet:
        return sorted(_show(str(name)) for name in fleet)  # names from a received file: printable
    inv = meta.get("inventory")
    items = inv if isinstance(inv, list) else [inv] if isinstance(inv, dict) else []
    return [_show(str(n.get("hostname", "?"))) for n in items if isinstance(n, dict)]


#: what must match between a fleet's nodes and its head: a figure measured by another
#: harness or another torch is not the figure of this suite
VERSION_KEYS = ("harness", "git commit", "torch")


def versions_of(inv: dict, harness_version: Any = None) -> dict:
    """A node's harness version, git commit and torch version from its inventory (the head's
    harness version is run.json's top-level `harness_version`); a key the inventory does not
    hold is left out, so that it is not compared."""
    out = {}
    if "harness_version" in inv or harness_version is not None:
        out["harness"] = inv.get("harness_version", harness_version)
    if "git_commit" in inv:
        out["git commit"] = inv.get("git_commit")
    packages = inv.get("packages") if isinstance(inv.get("packages"), dict) else {}
    if "torch" in packages:
        out["torch"] = packages.get("torch")
    return out


def node_drift(meta: dict, inv: dict) -> list[str]:
    """How a fleet node's versions differ from the head's (run.json `inventory` and
    `harness_version`), one "key value (head: value)" each; [] when they match."""
    head_inv = meta.get("inventory") if isinstance(meta.get("inventory"), dict) else {}
    head = versions_of(head_inv, meta.get("harness_version"))
    node = versions_of(inv)
    return [f"{k} {_show(str(node[k]))} (head: {_show(str(head[k]))})" for k in VERSION_KEYS
            if k in node and k in head and node[k] != head[k]]


def fleet_drift(meta: dict) -> dict[str, list[str]]:
    """Every fleet node whose versions differ from the head's: {node name: differences},
    recomputed from run.json's inventories (not from what the run recorded of them)."""
    fleet = meta.get("nodes") if isinstance(meta.get("nodes"), dict) else {}
    out = {}
    for name, inv in fleet.items():
        if isinstance(inv, dict) and (d := node_drift(meta, inv)):
            out[_show(str(name))] = d
    return out


def lab_of(meta: dict) -> Optional[str]:
    """The lab a run names: run.json `lab` (a --lab given to run), else the suite's `lab:`."""
    for v in (meta.get("lab"), (meta.get("config") or {}).get("lab") if isinstance(meta.get("config"), dict) else None):
        if isinstance(v, str) and v:
            return v
    return None


# --- keys ---------------------------------------------------------------------------------

def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SealError("signing needs the `cryptography` package: pip install 'accel-harness[seal]'") from None
    return serialization, ed25519


def _read_key_file(path: Path) -> bytes:
    with _open_no_follow(path) as f:
        data = f.read(65537)
    if len(data) > 65536:
        raise SealError(f"{path}: over 64 kB; not a PEM key")
    return data


def load_private_key(path: Path):
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(_read_key_file(path), password=None)
    except (ValueError, TypeError) as e:
        raise SealError(f"{path}: not an unencrypted PEM private key ({str(e).splitlines()[0] if str(e) else e})") \
            from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SealError(f"{path}: a {type(key).__name__.replace('_', '')}, expected an Ed25519 private key")
    return key


def load_public_key(path: Path):
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(_read_key_file(path))
    except (ValueError, TypeError) as e:
        raise SealError(f"{path}: not a PEM public key ({str(e).splitlines()[0] if str(e) else e})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SealError(f"{path}: expected an Ed25519 public key")
    return key


def public_key_id(public_key) -> str:
    """sha256 of the raw 32-byte public key: names the signer in the manifest."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def new_key_pair(directory: Path) -> tuple[Path, Path]:
    """DIR/harness-ed25519.pem (private, mode 0600) and DIR/harness-ed25519.pub.pem; an
    existing key is never overwritten."""
    serialization, ed25519 = _crypto()
    directory.mkdir(parents=True, exist_ok=True)
    priv, pub = directory / "harness-ed25519.pem", directory / "harness-ed25519.pub.pem"
    for p in (priv, pub):
        if p.exists() or p.is_symlink():
            raise SealError(f"{p}: already exists; refusing to overwrite a key")
    key = ed25519.Ed25519PrivateKey.generate()
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    fd = os.open(pub, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


# --- seal ---------------------------------------------------------------------------------

def build_manifest(run_dir: Path, signer: Optional[str] = None) -> dict:
    from harness.inventory import git_commit
    from harness.runner import _version

    meta = read_meta(run_dir)
    scan = scan_folder(run_dir)
    if scan.refused:
        raise SealError(f"{run_dir}: cannot seal: " + "; ".join(scan.refused))
    files = {}
    for rel in scan.files:
        digest, size = file_sha256(run_dir / rel)
        files[rel] = {"sha256": digest, "bytes": size}
    return {
        "manifest_version": MANIFEST_VERSION,
        "run_id": meta.get("run_id"),
        "lab": lab_of(meta),
        "suite": meta.get("suite"),
        "suite_fingerprint": suite_fingerprint(meta.get("config")),
        # the harness that made the run, as run.json records it
        "harness_version": meta.get("harness_version"),
        "git_commit": next((n.get("git_commit") for n in nodes_of(meta) if n.get("git_commit")), None),
        "sealed_by": {"harness_version": _version(), "git_commit": git_commit(), "at": time.time()},
        "nodes": nodes_of(meta),
        "signer": signer,
        "files": files,
    }


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        write_bytes_nofollow(tmp, data)
        os.replace(tmp, path)  # replaces a link at path itself, never writes through it
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def seal(run_dir: Path, key_path: Optional[Path] = None, force: bool = False) -> dict:
    """Write RUN/manifest.json (and RUN/manifest.sig with a key); returns the manifest."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SealError(f"{run_dir}: no such run folder")
    if ((run_dir / MANIFEST).exists() or (run_dir / MANIFEST).is_symlink()) and not force:
        raise SealError(f"{run_dir / MANIFEST}: the run is already sealed; `harness check` it, or add --force "
                        "to seal what the folder holds now")
    meta = read_meta(run_dir)
    if meta.get("status") == "running":
        raise SealError(f"{run_dir / 'run.json'}: status running: a run still writing its folder cannot be sealed")
    key = load_private_key(key_path) if key_path else None
    manifest = build_manifest(run_dir, public_key_id(key.public_key()) if key else None)
    body = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"
    try:
        sig_path = run_dir / SIGNATURE
        if key is not None:
            _write_atomic(sig_path, base64.b64encode(key.sign(body)) + b"\n")
        elif sig_path.exists() or sig_path.is_symlink():
            sig_path.unlink()  # a signature of an earlier manifest would not verify, and say nothing
        _write_atomic(run_dir / MANIFEST, body)
    except OSError as e:
        raise SealError(f"{run_dir}: cannot write the manifest ({e.strerror or e})") from None
    return manifest


# --- check --------------------------------------------------------------------------------

@dataclass
class CheckResult:
    run_dir: str
    sealed: bool
    failures: list[str] = field(default_factory=list)  # one line each, naming the file / record
    notes: list[str] = field(default_factory=list)  # what was not checked, and why
    lab: Optional[str] = None
    nodes: list[str] = field(default_factory=list)  # names of the nodes that measured (run_nodes)
    signed: bool = False
    signature_verified: bool = False

    @property
    def passed(self) -> bool:
        return self.sealed and not self.failures


def _read_manifest(run_dir: Path) -> Optional[dict]:
    path = run_dir / MANIFEST
    if path.is_symlink():
        raise SealError(f"{path}: is a symbolic link; not followed")
    if not path.exists():
        return None
    with _open_no_follow(path) as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise SealError(f"{path}: over the {MAX_MANIFEST_BYTES // 2**20} MiB limit")
    try:
        data = _parse_json(raw, str(path))
    except ResultsError as e:
        raise SealError(str(e)) from None
    except json.JSONDecodeError as e:
        raise SealError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str)
                                              for v in files.values()):
        raise SealError(f"{path}: not a harness manifest (no `files` mapping of sha256 digests)")
    if data.get("manifest_version") != MANIFEST_VERSION:
        raise SealError(f"{path}: manifest_version {data.get('manifest_version')!r}: this harness reads "
                        f"{MANIFEST_VERSION}")
    return data


def _check_signature(run_dir: Path, pubkey: Path, manifest: dict, res: CheckResult) -> None:
    key = load_public_key(pubkey)  # an unreadable key is the user's input: SealError, exit 2
    sig_path = run_dir / SIGNATURE
    if sig_path.is_symlink():
        res.failures.append(f"{SIGNATURE}: is a symbolic link; not followed")
        return
    if not sig_path.exists():
        res.failures.append(f"{SIGNATURE}: missing: the manifest is not signed")
        return
    with _open_no_follow(sig_path) as f:
        sig_text = f.read(4097)
    with _open_no_follow(run_dir / MANIFEST) as f:
        body = f.read(MAX_MANIFEST_BYTES + 1)
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(base64.b64decode(sig_text.strip(), validate=True), body)
        res.signature_verified = True
    except (InvalidSignature, ValueError):
        signer = manifest.get("signer")
        res.failures.append(f"{SIGNATURE}: the signature does not verify with {_show(str(pubkey))} "
                            f"({public_key_id(key)}; the manifest names signer {signer or 'none'})")


def _check_files(run_dir: Path, manifest: dict, scan: FolderScan, res: CheckResult) -> None:
    sealed = manifest["files"]
    present = set(scan.files)
    for rel in scan.files:
        if rel not in sealed:
            res.failures.append(f"{_show(rel)}: added after sealing (not in the manifest)")
            continue
        try:
            digest, size = file_sha256(run_dir / rel)
        except SealError as e:
            res.failures.append(f"{_show(rel)}: {e}")
            continue
        if digest != sealed[rel]["sha256"]:
            res.failures.append(f"{_show(rel)}: edited after sealing (sha256 {digest[:12]}..., sealed "
                                f"{sealed[rel]['sha256'][:12]}...; {size} bytes, sealed {sealed[rel].get('bytes')})")
    for rel in sorted(set(sealed) - present):
        if not _derived(rel):
            res.failures.append(f"{_show(rel)}: removed after sealing (in the manifest, not in the folder)")


def _window_times(energy) -> list[tuple[str, float, float]]:
    out = []
    for name, w in (energy.windows or {}).items():
        if isinstance(w, dict):
            out.append((name, w.get("t_start", w.get("start")), w.get("t_end", w.get("end"))))
    for m in energy.meters:
        for name, w in (m.windows or {}).items():
            if isinstance(w, dict) and ("t_start" in w or "t_end" in w):
                out.append((f"{m.meter}.{name}", w.get("t_start"), w.get("t_end")))
    return out


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_record(r, meta: dict, where: str) -> list[str]:
    """What a figure's reader relies on, for one record (the latest of its cell)."""
    bad: list[str] = []
    if r.failed:
        if r.error is None or not r.error.message:
            bad.append(f"{where}: failed cell without an error message")
        return bad
    for key in ("device", "tokens", "metrics", "accuracy"):
        if getattr(r, key) in (None, "", "-", {}):
            bad.append(f"{where}: required field {key} missing or empty")
    for key in ("started_at", "wall_s"):
        if not _num(getattr(r, key)):
            bad.append(f"{where}: required field {key} missing (when the cell was measured)")
    # the accuracy gate: a cell marked ok must have passed it (an endpoint backend passes on
    # its timed tokens alone: its logits are not readable)
    if r.ok:
        acc = r.accuracy or {}
        timed = acc.get("timed_output") if isinstance(acc.get("timed_output"), dict) else {}
        if not (acc.get("passed") is True or (acc.get("passed") is None and timed.get("passed") is True
                                               and acc.get("logits_passed") is None
                                               and "endpoint" in str(acc.get("status")))):
            bad.append(f"{where}: status ok without a passed accuracy gate (accuracy.status "
                       f"{acc.get('status', 'missing')!r})")
    # repetitions: batch cells time the suite's repetitions (request scenarios run one pass)
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    want = config.get("repetitions")
    if r.ok and not r.is_request_scenario and _num(want):
        reps = r.tokens.get("repetitions")
        taken = len(r.samples.get("e2e_s") or []) if isinstance(r.samples, dict) else 0
        if not _num(reps) or reps < want or taken < want:
            bad.append(f"{where}: {reps if _num(reps) else 'no'} repetitions recorded ({taken} timed samples), "
                       f"the suite asks for {want}")
    bad += _check_energy(r, meta, where)
    # roofline figures stand on a calibration of this run's device
    roof = r.roofline or {}
    sides = [s for s in ("decode", "prefill") if roof.get(f"{s}_pct") is not None]
    if sides:
        cals = meta.get("calibration") if isinstance(meta.get("calibration"), dict) else {}
        cal = cals.get(r.device)
        if not isinstance(cal, dict):
            bad.append(f"{where}: roofline {', '.join(sides)} % without a calibration of device {r.device!r} in "
                       "run.json")
        else:
            if "decode" in sides and not any(_num(cal.get(k)) for k in ("read_bandwidth_Bps", "memory_bandwidth_Bps")):
                bad.append(f"{where}: roofline decode % without a calibrated bandwidth for {r.device!r}")
            if "prefill" in sides and not isinstance(cal.get("matmul_flops"), dict):
                bad.append(f"{where}: roofline prefill % without calibrated matmul rates for {r.device!r}")
    return bad


def _check_energy(r, meta: dict, where: str) -> list[str]:
    e = r.energy
    if e is None:
        return []
    bad: list[str] = []
    with_figures = [m for m in e.meters if any(_num(getattr(m, k)) for k in _ENERGY_FIGURES)]
    for m in with_figures:
        name = m.meter or "?"
        if not m.meter:
            bad.append(f"{where}: energy figure without the meter that measured it")
        if m.method not in ENERGY_METHODS:
            bad.append(f"{where}: energy meter {name}: method {m.method!r}, expected one of "
                       f"{', '.join(ENERGY_METHODS)} (provenance)")
        if not m.scope:
            bad.append(f"{where}: energy meter {name}: no scope (what it measures: gpu-board, cpu-package, ...)")
        if not m.quality or m.quality == "unavailable":
            bad.append(f"{where}: energy meter {name}: figures with quality {m.quality!r}")
    if not with_figures:
        return bad
    # measured in this run, with this cell's timing: every energy window lies inside the
    # cell's own measurement interval, which lies inside the run's
    if not (_num(r.started_at) and _num(r.wall_s)):
        bad.append(f"{where}: energy figures but no started_at / wall_s: cannot show they were measured with "
                   "this cell's timing")
        return bad
    lo, hi = r.started_at - WINDOW_SLACK_S, r.started_at + r.wall_s + WINDOW_SLACK_S
    times = _window_times(e)
    if not times:
        bad.append(f"{where}: energy figures without window times: cannot show they were measured with this "
                   "cell's timing")
    for name, t0, t1 in times:
        if not (_num(t0) and _num(t1)) or t0 < lo or t1 > hi or t1 < t0:
            bad.append(f"{where}: energy window {name} ({t0}..{t1}) outside the cell's measurement "
                       f"({r.started_at:.3f}..{r.started_at + r.wall_s:.3f}): not measured with its timing")
            break
    run_lo, run_hi = meta.get("started_at"), meta.get("finished_at")
    if _num(run_lo) and r.started_at < run_lo - WINDOW_SLACK_S or \
            _num(run_hi) and r.started_at + r.wall_s > run_hi + WINDOW_SLACK_S:
        bad.append(f"{where}: measured outside this run's time span (run.json started_at..finished_at)")
    return bad


def check(run_dir: Path, pubkey: Optional[Path] = None) -> CheckResult:
    """The submission check of one run folder. Raises SealError only where there is nothing
    to check (no run folder, an unreadable manifest or key)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SealError(f"{run_dir}: no such run folder")
    meta = read_meta(run_dir)
    manifest = _read_manifest(run_dir)
    res = CheckResult(str(run_dir), sealed=manifest is not None, lab=lab_of(meta), nodes=run_nodes(meta))
    scan = scan_folder(run_dir)
    res.failures += scan.refused
    if scan.derived:
        res.notes.append(f"not sealed (derived from the figures; regenerate them): {', '.join(scan.derived[:5])}"
                         + (f" and {len(scan.derived) - 5} more" if len(scan.derived) > 5 else ""))
    if manifest is None:
        res.failures.append(f"{MANIFEST}: missing: the run is not sealed (harness seal {_show(str(run_dir))})")
    else:
        res.signed = (run_dir / SIGNATURE).exists()
        _check_files(run_dir, manifest, scan, res)
        fp = suite_fingerprint(meta.get("config"))
        if manifest.get("suite_fingerprint") != fp:
            res.failures.append(f"run.json: suite fingerprint {fp[:12]}... differs from the sealed "
                                f"{str(manifest.get('suite_fingerprint'))[:12]}...")
        if pubkey is not None:
            _check_signature(run_dir, pubkey, manifest, res)
        elif res.signed:
            res.notes.append(f"signed by {manifest.get('signer')}; not verified (give --pubkey)")
        elif manifest.get("signer"):  # a signed seal whose signature went missing
            res.failures.append(f"{SIGNATURE}: missing, but the manifest names signer {manifest['signer']}")
    if meta.get("status") != "complete":
        res.failures.append(f"run.json: status {meta.get('status')!r}: not a complete run")
    for name, diffs in fleet_drift(meta).items():  # measured by another harness or torch than the head's
        res.failures.append(f"run.json: node {name} runs another version than the head: {'; '.join(diffs)}")
    results = run_dir / "results.jsonl"
    if "results.jsonl" not in scan.files:
        if not results.is_symlink():
            res.failures.append("results.jsonl: missing: no cell records")
        return res
    try:
        records = read_records(results)
    except ResultsError as e:
        res.failures.append(str(e).replace(str(run_dir) + os.sep, ""))
        return res
    latest = {}
    for r in records:
        latest[r.cell_id] = r  # a resumed cell: its last record stands, as in every report
    if not latest:
        res.failures.append("results.jsonl: no cell records")
    for cid, r in latest.items():
        res.failures += check_record(r, meta, f"results.jsonl: {_show(cid)}")
    return res


# --- what reports show ----------------------------------------------------------------------

@dataclass
class RunSeal:
    """A run's lab, nodes and seal state, for the header of a report or verify listing."""

    run_dir: str
    lab: Optional[str]
    nodes: list[str]
    sealed: bool
    passed: Optional[bool]  # None: unsealed (not checked)
    failures: list[str] = field(default_factory=list)
    drift: dict[str, list[str]] = field(default_factory=dict)  # fleet nodes on other versions than the head

    @property
    def status(self) -> str:
        return "unsealed" if not self.sealed else "sealed+PASS" if self.passed else "sealed+FAIL"

    @property
    def trusted(self) -> bool:
        """False: tables mark this run's figures (unsealed, or failing its check)."""
        return bool(self.sealed and self.passed)

    @property
    def mark(self) -> str:
        """What a table puts on the label of this run's figures: MARK_UNSEALED, MARK_FAILED
        or nothing (sealed+PASS)."""
        return "" if self.trusted else MARK_FAILED if self.sealed else MARK_UNSEALED

    def status_text(self, width: int = 160) -> str:
        """The status as a table cell: a failing run says what failed first (and how many more)."""
        if self.status != "sealed+FAIL":
            return self.status
        first = (self.failures or ["check failed"])[0]
        more = f" (+{len(self.failures) - 1} more: harness check)" if len(self.failures) > 1 else ""
        first = first if len(first) <= width else first[:width - 1].rstrip() + "…"
        return f"sealed+FAIL: {first}{more}"

    def nodes_text(self) -> str:
        """The nodes that measured, each fleet node on other versions than the head flagged."""
        return ", ".join(f"{n} (VERSIONS DIFFER FROM THE HEAD: {'; '.join(self.drift[n])})" if self.drift.get(n)
                         else n for n in self.nodes) or "-"


#: on the label of a figure whose run is unsealed / sealed but failing `harness check`
MARK_UNSEALED, MARK_FAILED = "†", "‡"


def mark_legend(seals) -> Optional[str]:
    """The legend line for the marks the given RunSeals put in tables (None: no mark)."""
    marks = {s.mark for s in seals}
    parts = []
    if MARK_UNSEALED in marks:
        parts.append(f"{MARK_UNSEALED} unsealed run: nothing shows its files are those it measured "
                     "(`harness seal RUN`, then `harness check RUN`)")
    if MARK_FAILED in marks:
        parts.append(f"{MARK_FAILED} sealed run that fails `harness check` (its first failure is in the runs table)")
    return "; ".join(parts) or None


def run_status(run_dir: str | Path) -> RunSeal:
    """Never raises: an unreadable folder is sealed+FAIL (or unsealed) with the reason.
    An unsealed run is not checked (nothing to compare with); a sealed one is checked in
    full but without a key (a signature is verified only by `harness check --pubkey`)."""
    run_dir = Path(run_dir)
    try:
        meta = read_meta(run_dir)
        lab, nodes, drift = lab_of(meta), run_nodes(meta), fleet_drift(meta)
    except SealError as e:
        return RunSeal(str(run_dir), None, [], (run_dir / MANIFEST).exists(), False, [str(e)])
    if not ((run_dir / MANIFEST).exists() or (run_dir / MANIFEST).is_symlink()):
        return RunSeal(str(run_dir), lab, nodes, False, None, drift=drift)
    try:
        res = check(run_dir)
    except (SealError, ResultsError, OSError, ValueError, TypeError, KeyError) as e:  # a hostile folder: FAIL, said
        return RunSeal(str(run_dir), lab, nodes, True, False, [str(e)], drift)
    return RunSeal(str(run_dir), lab, nodes, True, res.passed, res.failures, drift)


def runs_block(run_dirs, cells=(), markdown: bool = False) -> list[str]:
    """`harness verify`'s lines on the runs its verdicts stand on: lab, node(s) and check
    status of each, marked as report tables mark them, and the legend of the marks. The
    cells' RunSeals (harness.cells.load_runs) are reused: a sealed run is checked once."""
    from harness.report.document import md_escape

    known = {str(c.run_dir): c.seal for c in cells if getattr(c, "seal", None) is not None}
    seals = [known.get(str(Path(d))) or run_status(d) for d in run_dirs]
    # a received run.json's lab or node names: no terminal escapes, no Markdown
    esc = (lambda v: md_escape(_show(v))) if markdown else _show
    title = "Runs (lab; node(s); check status: `harness check RUN` for the details)"
    out = ["", f"## {title}", ""] if markdown else [title + ":"]
    for d, s in zip(run_dirs, seals):
        out.append(f"- {esc(Path(d).name)}{' ' + s.mark if s.mark else ''}: lab {esc(s.lab or '-')}; "
                   f"node(s) {esc(s.nodes_text())}; {esc(s.status_text())}")
    legend = mark_legend(seals)
    if legend:
        out += ["", legend] if markdown else [legend]
    return out
