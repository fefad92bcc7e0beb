"""``reclf presets [NAME]``: the recipes shipped with the package.

Without a name: one line per preset (its name and the first comment line of its file). With a
name: the preset's YAML, to read it or to start your own recipe from it
(``reclf presets demo_reclf > mine.yaml`` then ``reclf pretrain mine.yaml``).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", default=None, help="print this preset's YAML (e.g. demo_reclf)")
    parser.add_argument("--paths", action="store_true", help="also show where each preset file is installed")


def run(args: argparse.Namespace) -> int:
    from reclf.config import list_presets, preset_path

    if args.name:
        print(preset_path(args.name).read_text(), end="")
        return 0
    presets = list_presets()
    if not presets:
        raise FileNotFoundError("no presets are installed with this reclf (reclf/presets/*.yaml is missing)")
    width = max(len(p.name) for p in presets)
    for p in presets:
        line = f"{p.name:<{width}}  {p.description}"
        print(f"{line}\n{'':<{width}}  {p.path}" if args.paths else line)
    print("\nuse: reclf pretrain NAME [key=value ...]    (reclf presets NAME prints one)")
    return 0
