"""Shared test settings: tiny models run fastest on one thread (and do not fight DataLoader workers); every
test writes under its tmp_path, never into the working directory (checked once for the whole session)."""

import os
from pathlib import Path

import pytest
import torch

#: Folders a test might write into by accident through a relative default (e.g. the feature cache runs/.cache).
WATCHED = ("runs", "out")


def _working_dir_files() -> set[str]:
    cwd = Path.cwd()
    found = {n for n in os.listdir(cwd) if n not in (".pytest_cache", "__pycache__")}
    for name in WATCHED:
        if (cwd / name).is_dir():
            found |= {str(p.relative_to(cwd)) for p in (cwd / name).rglob("*")}
    return found


@pytest.fixture(autouse=True, scope="session")
def _nothing_written_to_the_working_directory():
    before = _working_dir_files()
    yield
    new = sorted(_working_dir_files() - before)
    assert not new, f"tests wrote into the working directory {Path.cwd()} (write under tmp_path): {new[:10]}"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
