"""The Gradio Space of a pushed run: `spaces_demo/` made into an upload-ready Space folder.

The Space is `app.py`, `requirements.txt`, a `README.md` whose YAML header names the model, and the example
clips. `app.py` loads the end-to-end classifier with `trust_remote_code=True`, so the model's own code (shipped
in its Hub repository) classifies and checks the audio: the Space carries neither `modeling_mise` nor `mise`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .cards import RunFolderError, packaged_folder

_DEFAULT_MODEL_LINE = re.compile(r"^DEFAULT_MODEL = .*$", re.M)


def space_source() -> Path:
    """The Space's files: `spaces_demo/` of a source checkout, else the installed copy."""
    return packaged_folder("spaces_demo", "space_demo", "app.py")


def build_space_folder(destination: str | os.PathLike, model_id: str) -> Path:
    """Write the Space folder for the end-to-end classifier `model_id` (a Hub id) into `destination`.

    `app.py` loads `model_id` by default (`MISE_MODEL` still overrides it), the README's YAML header lists it
    under `models:`, and the example clips (with their licence note) come along. The folder is assembled under
    a temporary name and replaces `destination` only when complete; returns `destination`.
    """
    from huggingface_hub import SpaceCard

    from modeling_mise.audio import AUDIO_EXTENSIONS

    source, destination = space_source(), Path(destination)
    app = (source / "app.py").read_text()
    if len(_DEFAULT_MODEL_LINE.findall(app)) != 1:
        raise RunFolderError(
            f"{source / 'app.py'}: expected one `DEFAULT_MODEL = ...` line to point at the model"
        )
    staging = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "examples").mkdir(parents=True)
    (staging / "app.py").write_text(_DEFAULT_MODEL_LINE.sub(f"DEFAULT_MODEL = {model_id!r}", app))
    shutil.copy(source / "requirements.txt", staging / "requirements.txt")
    card = SpaceCard.load(source / "README.md")
    card.data.models = [model_id]
    card.save(staging / "README.md")
    for path in sorted((source / "examples").glob("*")):
        if path.suffix.lower() in AUDIO_EXTENSIONS or path.name == "README.md":
            shutil.copy(path, staging / "examples" / path.name)
    if destination.exists():
        shutil.rmtree(destination)
    staging.rename(destination)
    return destination
