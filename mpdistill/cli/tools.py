"""The offline tools' commands: split, merge, export, checkpoints. Parse, call the library, print,
return a code of the one table (`exitcodes`)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import MpdistillError
from ..exitcodes import EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE
from .parsing import Parser, parse


def split_command(argv: list[str]) -> int:
    """`mpdistill split INPUT --chunks N --out-dir DIR`."""
    from ..tools.split import MANIFEST, split_file
    p = Parser(prog="mpdistill split", description="Split a JSONL input into N line-range chunks.")
    p.add_argument("input")
    p.add_argument("--chunks", type=int, required=True, help="number of chunks")
    p.add_argument("--out-dir", required=True, help="folder for chunk_0000.jsonl … and manifest.json")
    args = parse(p, argv)
    if isinstance(args, int):
        return args
    try:
        paths = split_file(args.input, args.chunks, args.out_dir)
    except MpdistillError as err:
        print(f"mpdistill split: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"Wrote {len(paths)} chunks and {MANIFEST} to {args.out_dir}; run each chunk with "
          f"-i {args.out_dir}/chunk_NNNN.jsonl -o {args.out_dir}/chunk_NNNN/<model>/results.jsonl")
    return EXIT_OK


def merge_command(argv: list[str]) -> int:
    """`mpdistill merge DIR [--models a b] [--merge-errors] [--input FILE]`; 3 when rows failed or are missing."""
    from ..tools.merge import merge_dir
    p = Parser(prog="mpdistill merge", description="Merge the chunks' results per model into DIR/merged/.")
    p.add_argument("dir")
    p.add_argument("--models", nargs="+", help="merge only these models (folder names)")
    p.add_argument("--merge-errors", action="store_true", help="also write merged/<model>/results.errors.jsonl")
    p.add_argument("--input", help="input to count missing rows against (default: the manifest's)")
    args = parse(p, argv)
    if isinstance(args, int):
        return args
    try:
        stats = merge_dir(args.dir, args.models, args.merge_errors, args.input)
    except MpdistillError as err:
        print(f"mpdistill merge: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    for alias, s in stats["models"].items():
        missing = "" if s["missing"] is None else f", {s['missing']} missing"
        print(f"{alias}: {s['succeeded']} succeeded, {s['failed']} failed{missing}, "
              f"{s['duplicates']} duplicates dropped -> {s['output']}")
    incomplete = any(s["failed"] or s["missing"] for s in stats["models"].values())
    return EXIT_INCOMPLETE if incomplete else EXIT_OK


def export_command(argv: list[str]) -> int:
    """`mpdistill export OUTPUT --per-item DIR`; exit 0, 2 for a usage error or a missing file,
    1 when the files cannot be written."""
    from ..tools.export import JSON_DIR, THINKING_DIR, export_per_item
    parser = Parser(prog="mpdistill export", description="Write one file per answered row of an output JSONL.")
    parser.add_argument("output", help="the run's output JSONL")
    parser.add_argument("--per-item", metavar="DIR", required=True,
                        help=f"write DIR/{JSON_DIR}/<id>_extracted.json and DIR/{THINKING_DIR}/<id>.txt")
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    if not Path(args.output).is_file():
        print(f"mpdistill export: error: no such file: {args.output}", file=sys.stderr)
        return EXIT_USAGE
    try:
        counts = export_per_item(args.output, args.per_item)
    except OSError as err:
        print(f"mpdistill export: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    skipped = f", {counts['skipped']} lines skipped" if counts["skipped"] else ""
    print(f"Exported {counts['rows']} rows to {args.per_item}: {counts['json']} in {JSON_DIR}/, "
          f"{counts['thinking']} in {THINKING_DIR}/{skipped}")
    return EXIT_OK


def checkpoints_command(argv: list[str]) -> int:
    """`checkpoints [list]`, `checkpoints clear [NAME]` (and python test_checkpoint.py …)."""
    from ..config import default_checkpoint_dir
    from ..report.checkpoints import format_checkpoints
    from ..state.checkpoint import clear_checkpoint, list_checkpoints
    p = Parser(prog="test_checkpoint.py", description="List or clear mpdistill checkpoints.")
    p.add_argument("action", nargs="?", default="list", choices=("list", "clear"))
    p.add_argument("name", nargs="?", help="with clear: only this run/model")
    p.add_argument("--checkpoint-dir", default=None)
    args = p.parse_args(argv)
    directory = args.checkpoint_dir or default_checkpoint_dir()
    if args.action == "clear":
        removed = clear_checkpoint(args.name, directory)
        what = f"checkpoint {args.name!r}" if args.name else "all checkpoints"
        print(f"Removed {len(removed)} file(s) ({what} in {directory})" if removed
              else f"No checkpoint to remove ({what} in {directory})")
        return EXIT_OK
    print(format_checkpoints(list_checkpoints(directory), directory))
    return EXIT_OK
