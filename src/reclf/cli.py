"""The ``reclf`` command line: one subcommand per job, each in its own module.

Subcommand modules are imported only when used, so ``reclf --help`` is instant and a command's
heavy dependencies (torch, transformers) load only for the commands that need them. Each module
provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Only commands that work are listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("reclf.data.synthetic.cli", "generate SynthCXR, the built-in synthetic benchmark"),
    "prepare": (
        "reclf.data.sources.cli",
        "turn a real data set (MIMIC-CXR, CheXpert, RSNA, SIIM, COVIDx, IU X-ray, CSV) into a study table, "
        "splits and an image cache",
    ),
    "presets": ("reclf.cli_presets", "list the shipped presets (recipes), or print one: reclf presets NAME"),
    "pretrain": ("reclf.train.cli", "train a method: Lightning, DDP, checkpoints, exact resume, export"),
    "export": ("reclf.train.export", "turn a training checkpoint into a save_pretrained folder"),
    "evaluate": (
        "reclf.evaluate.cli",
        "evaluate a model on a registered task (zeroshot, linear, segment, retrieve, relations, grounding, "
        "diagnostics, ...) or build a baseline",
    ),
    "embed": ("reclf.evaluate.embed", "embed your own PNG / JPEG / DICOM images (--local: regions too) into one file"),
    "classify": ("reclf.evaluate.classify", "zero-shot classify your own images with a model's prompts and score"),
    "tune": (
        "reclf.tune",
        "the same hyper-parameter grid for every method, chosen on the validation loss: tuning.md",
    ),
    "convert": ("reclf.methods.convert", "map released GLoRIA / MGCA checkpoints onto reclf model folders"),
    "report": ("reclf.evaluate.report", "collect results.json files into report.md with tables and figures"),
    "explain": ("reclf.evaluate.explain", "explain an image-report match: word attention, IRM weights, SRM relations"),
    "demo": ("reclf.demo.cli", "SynthCXR -> pretrain every method -> every evaluation -> runs/demo/report.md"),
}


def version_line() -> str:
    """``reclf X.Y.Z from FOLDER (python A.B.C)``: which reclf runs, and from where (as ``pip --version``)."""
    import platform
    from pathlib import Path

    import reclf

    where = Path(reclf.__file__).resolve().parent
    return f"reclf {reclf.__version__} from {where} (python {platform.python_version()})"


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that imports its module (and adds its arguments) only when that command runs.

    Some command modules import heavy packages on load (``reclf.train`` pulls in Lightning), so
    building every subparser up front made ``reclf --version`` and ``reclf --help`` take seconds.
    """

    def __init__(self, *args, command_module: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._command_module = command_module
        self._loaded = False

    def parse_known_args(self, args=None, namespace=None):
        if not self._loaded and self._command_module:  # nested sub-parsers (evaluate TASK) inherit this class
            self._loaded = True
            importlib.import_module(self._command_module).add_arguments(self)
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reclf",
        description="Relation-enhanced medical vision-language contrastive learning (RECLF) and baselines.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, command_module=module)
        p.set_defaults(_module=module)
    return parser


def _os_error_message(exc: OSError) -> str:
    """One line for a failed file operation: what failed, on which path, and what to do."""
    import errno

    where = f": {exc.filename}" if exc.filename else ""
    text = f"{exc.strerror or exc}{where}" if exc.strerror else str(exc)
    hints = {
        errno.EACCES: "check the permissions, or choose another --out",
        errno.EPERM: "check the permissions, or choose another --out",
        errno.EROFS: "the file system is read-only; choose another --out",
        errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
        errno.EISDIR: "a folder is where a file was expected; choose another path",
        errno.EEXIST: "a file is where a folder should be; choose another path",
    }
    hint = hints.get(exc.errno or 0)
    return f"{text}; {hint}" if hint else text


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during."""
    out: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and node not in out:
        out.append(node)
        node = node.__cause__ or node.__context__
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # User-facing errors (bad config, bad data, refused overwrite, an unwritable or full output folder,
        # an unreadable input file, and every error class reclf defines, which carry a message written for the
        # user): one clear line naming the file/key, no traceback. RECLF_TRACEBACK=1 shows it. Anything else
        # is a bug and keeps its traceback.
        from reclf.utils.io import DiskFullError, disk_full_error, is_disk_full

        full = is_disk_full(exc)  # in any library's words (torch's zip writer, safetensors, the OS)
        user_facing = (full or isinstance(exc, ValueError | OSError | MemoryError)
                       or type(exc).__module__.startswith("reclf."))
        if "RECLF_TRACEBACK" in __import__("os").environ or not user_facing:
            raise
        if full:
            found = next((e for e in _causes(exc) if isinstance(e, DiskFullError)), None)
            where = getattr(exc, "filename", None) or getattr(args, "out", None) or "the output folder"
            message = str(found or disk_full_error(where, exc))
        elif isinstance(exc, OSError) and exc.strerror and exc.filename:  # raised by the OS for a path
            message = _os_error_message(exc)
        else:  # raised by reclf with its own message
            message = str(exc) or type(exc).__name__
        print(f"reclf {args.command}: error: {message}", file=sys.stderr)
        from reclf.config import ConfigError

        return 2 if isinstance(exc, ConfigError) else 1  # a config the command cannot take: a usage error, as argparse


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
