"""`orpheus-operator`: render a voice's manifests, print the CRD, or run the operator.

    orpheus-operator render -f voice.yaml      # every manifest the voice leads to, as YAML
    orpheus-operator crd                       # the CustomResourceDefinition
    orpheus-operator run [-n NS ...]           # the operator (kopf), all namespaces by default
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Iterable, TextIO

import yaml

from .crd import API_VERSION, KIND, crd_manifest
from .plan import render
from .settings import OperatorSettings


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a dict that appears twice in full both times (no `&id001` anchors)."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _dump_all(objects: Iterable[dict], out: TextIO) -> None:
    yaml.dump_all(list(objects), out, Dumper=_NoAliasDumper, sort_keys=False, explicit_start=True)


CRD_HEADER = (
    "# Generated from operator/orpheus_operator/crd.py by `make generate` (the same text as\n"
    "# `orpheus-operator crd`): edit crd.py, not this file.\n"
)


def crd_yaml() -> str:
    """The CRD as committed in operator/crds/ and the chart's crds/, and as `crd` prints it."""
    out = io.StringIO()
    _dump_all([crd_manifest()], out)
    return CRD_HEADER + out.getvalue()


def _read_voices(paths: list[str]) -> list[dict]:
    voices = []
    for path in paths:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        for doc in yaml.safe_load_all(text):
            if doc and doc.get("apiVersion") == API_VERSION and doc.get("kind") == KIND:
                voices.append(doc)
    return voices


def cmd_render(args: argparse.Namespace) -> int:
    voices = _read_voices(args.filename)
    if not voices:
        print(f"error: no {KIND} ({API_VERSION}) found in {', '.join(args.filename)}", file=sys.stderr)
        return 2
    try:  # the running operator's defaults (images, GPU profile, cache claim) from the same variables
        settings = OperatorSettings.from_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    objects: list[dict] = []
    failed = False
    for voice in voices:
        voice.setdefault("metadata", {}).setdefault("namespace", args.namespace)
        try:
            objects += render(voice, settings)
        except ValueError as exc:  # refused: over budget, no FP8, ...
            print(f"error: {exc}", file=sys.stderr)
            failed = True
    _dump_all(objects, sys.stdout)
    return 1 if failed else 0


def cmd_crd(args: argparse.Namespace) -> int:
    sys.stdout.write(crd_yaml())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import kopf

    from . import handlers

    kopf.configure(verbose=args.verbose, debug=args.debug)
    assert handlers.RESOURCE  # importing the module registered its handlers with kopf
    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orpheus-operator", description="OrpheusVoice operator")
    sub = parser.add_subparsers(dest="command", required=True)

    render_p = sub.add_parser("render", help="print every manifest the voices lead to (build Job, Deployment, ...)")
    render_p.add_argument("-f", "--filename", action="append", required=True, help="voice YAML file ('-' for stdin); repeatable")
    render_p.add_argument("-n", "--namespace", default="default", help="namespace for voices that name none")
    render_p.set_defaults(func=cmd_render)

    crd_p = sub.add_parser("crd", help="print the OrpheusVoice CustomResourceDefinition")
    crd_p.set_defaults(func=cmd_crd)

    run_p = sub.add_parser("run", help="run the operator against the current cluster (in-cluster or kubeconfig)")
    run_p.add_argument("-n", "--namespace", action="append", default=[], help="watch only this namespace; repeatable")
    run_p.add_argument("--peering", metavar="NAME", help="kopf peering object, for several operator replicas (default: standalone)")
    run_p.add_argument("--liveness", metavar="URL", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run_p.add_argument("--verbose", action="store_true")
    run_p.add_argument("--debug", action="store_true")
    run_p.set_defaults(func=cmd_run)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
