"""`harness seal` and `harness check`: results that travel between labs (issue 17).

  harness seal RUN [--key KEY.pem] [--force]   write RUN/manifest.json (+ manifest.sig)
  harness seal --new-key DIR                   write an Ed25519 key pair into DIR
  harness check RUN [--pubkey PUB.pem]         PASS, or one failure per line

check exits 0 on PASS, 1 when a check fails, 2 when the input cannot be read at all (no
run folder, an unreadable manifest or key). harness.seal does the work.
"""
from __future__ import annotations

import argparse
from pathlib import Path
import sys

EXIT_FAILED = 1
EXIT_USER_ERROR = 2


def add_seal_commands(subparsers) -> None:
    s = subparsers.add_parser(
        "seal", help="write a run folder's manifest (SHA-256 of every file, suite fingerprint, nodes), optionally "
                     "signed with an Ed25519 key",
        description="Write RUN/manifest.json: the SHA-256 of every file in the run folder, the suite's fingerprint, "
                    "the harness version and git commit, the lab and every node's inventory. With --key, also "
                    "RUN/manifest.sig, which `harness check RUN --pubkey` verifies.")
    s.add_argument("run", nargs="?", metavar="RUN", help="run folder (results/<run-id>)")
    s.add_argument("--key", metavar="KEY.pem", help="Ed25519 private key (unencrypted PEM) to sign the manifest with")
    s.add_argument("--new-key", metavar="DIR", help="write a new key pair (harness-ed25519.pem, .pub.pem) into DIR")
    s.add_argument("--force", action="store_true", help="seal again a run that already holds a manifest")
    s.set_defaults(func=cmd_seal)

    c = subparsers.add_parser(
        "check", help="submission check of a run folder: manifest intact, signature, provenance, accuracy, "
                      "repetitions, calibration (PASS or the failures)",
        description="Prints PASS, or one failure per line naming the file or record; exit 1 when a check fails, "
                    "2 when the folder, manifest or key cannot be read.")
    c.add_argument("run", metavar="RUN", help="run folder (results/<run-id>)")
    c.add_argument("--pubkey", metavar="PUB.pem", help="Ed25519 public key the manifest must be signed with")
    c.set_defaults(func=cmd_check)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def cmd_seal(args) -> int:
    from harness.seal import SealError, new_key_pair, seal

    try:
        if args.new_key:
            priv, pub = new_key_pair(Path(args.new_key))
            print(f"wrote {priv} (private: keep it, sign with --key) and {pub} (give it to whoever checks)")
            if not args.run:
                return 0
        if not args.run:
            return _error("seal: give a run folder (harness seal RUN), or --new-key DIR")
        manifest = seal(Path(args.run), Path(args.key) if args.key else None, force=args.force)
    except SealError as e:
        return _error(str(e))
    signed = f", signed by {manifest['signer']}" if manifest.get("signer") else ", unsigned"
    print(f"sealed {args.run}: {len(manifest['files'])} files, suite {manifest['suite_fingerprint'][:12]}, "
          f"{len(manifest['nodes'])} node(s){signed}")
    return 0


def cmd_check(args) -> int:
    from harness.seal import SealError, check

    try:
        res = check(Path(args.run), Path(args.pubkey) if args.pubkey else None)
    except SealError as e:
        return _error(str(e))
    for note in res.notes:
        print(f"note: {note}")
    if res.passed:
        verified = ", signature verified" if res.signature_verified else ""
        print(f"PASS {args.run}{verified}")
        return 0
    print(f"FAIL {args.run}: {len(res.failures)} failure{'s' if len(res.failures) != 1 else ''}")
    for f in res.failures:
        print(f)
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.seal_cli seal|check ...`: the same commands outside harness.cli."""
    p = argparse.ArgumentParser(prog="harness")
    add_seal_commands(p.add_subparsers(metavar="COMMAND"))
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help(sys.stderr)
        return EXIT_USER_ERROR
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
