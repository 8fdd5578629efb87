"""On-disk cache of frozen-encoder features, keyed by encoder spec and item content fingerprint.

Layout: ``<cache_dir>/<spec_hash>/<fingerprint>.safetensors`` (one small file per item, tensor
``"features"``) plus ``<cache_dir>/<spec_hash>/spec.json`` for humans. Entries are written to a
temporary file and moved into place with :func:`os.replace`, so a crash never leaves a partial entry;
an unreadable entry is recomputed. Nothing is ever unpickled.

An entry may also keep the item's verdict under an input policy (the header's ``policy``, the canonical JSON of
the policy, and ``rejection``, the reason an unusable item was rejected): a usable item's entry holds its
features, a rejected item's entry an empty tensor. :meth:`FeatureCache.verdicts` reads them from the headers,
so a warm run knows which items are usable, and why the others are not, without decoding any of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_TENSOR_KEY = "features"
_POLICY_KEY = "policy"
_REJECTION_KEY = "rejection"
_READ_ERRORS = (OSError, SafetensorError, KeyError, ValueError, RuntimeError)


def default_cache_dir() -> Path:
    """The feature cache's folder when none is given: ``$MISE_CACHE/features``, by default
    ``~/.cache/mise/features``."""
    return Path(os.environ.get("MISE_CACHE", Path.home() / ".cache" / "mise")) / "features"


def canonical_spec_json(encoder_spec: dict) -> str:
    """The canonical JSON of an encoder spec: sorted keys, no whitespace, ASCII only."""
    try:
        return json.dumps(encoder_spec, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except TypeError as error:
        raise ValueError(f"encoder_spec must be JSON-serialisable: {error}") from error


def spec_hash(encoder_spec: dict) -> str:
    """First 16 hex digits of the sha256 of :func:`canonical_spec_json`."""
    return hashlib.sha256(canonical_spec_json(encoder_spec).encode("ascii")).hexdigest()[:16]


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class FeatureCache:
    """Features of a frozen encoder, computed once per (encoder spec, item content).

    Args:
        cache_dir: root folder of the cache (created when missing).
        encoder_spec: JSON-serialisable description of the encoder (e.g. ``AudioEncoder.spec()``);
            any change to it gives a new key, so stale features are never reused.
    """

    def __init__(self, cache_dir: str | os.PathLike, encoder_spec: dict):
        if not isinstance(encoder_spec, dict) or not encoder_spec:
            raise ValueError(f"encoder_spec must be a non-empty dict, got {encoder_spec!r}")
        self.encoder_spec = encoder_spec
        self.spec_hash = spec_hash(encoder_spec)
        self.directory = Path(cache_dir) / self.spec_hash
        self.last_stats: dict[str, int] = {"hits": 0, "misses": 0}
        self.directory.mkdir(parents=True, exist_ok=True)
        spec_path = self.directory / "spec.json"
        if not spec_path.is_file():
            text = json.dumps(encoder_spec, sort_keys=True, indent=2, ensure_ascii=True) + "\n"
            _atomic_write(spec_path, lambda temporary: Path(temporary).write_text(text))

    def entry_path(self, fingerprint: str) -> Path:
        """Where the features of the item with content ``fingerprint`` live."""
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError(f"fingerprint must be a non-empty string, got {fingerprint!r}")
        name = (
            fingerprint if _SAFE_NAME.match(fingerprint) else hashlib.sha256(fingerprint.encode()).hexdigest()
        )
        return self.directory / f"{name}.safetensors"

    def load(self, fingerprint: str) -> torch.Tensor | None:
        """The cached feature vector, or ``None`` when absent, unreadable (a warning names the file) or the entry
        of a rejected item."""
        entry = self._read(fingerprint)
        return None if entry is None else entry[0]

    def _read(self, fingerprint: str) -> tuple[torch.Tensor, dict[str, str]] | None:
        """An entry's ``(D,)`` features and header metadata; ``None`` when absent, unreadable or a rejection."""
        path = self.entry_path(fingerprint)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                features = handle.get_tensor(_TENSOR_KEY)
        except _READ_ERRORS as error:
            logger.warning("feature cache: %s is unreadable (%s); recomputing it", path, error)
            return None
        if _REJECTION_KEY in metadata:
            return None
        if features.ndim != 1:
            logger.warning(
                "feature cache: %s holds shape %s, expected (D,); recomputing it", path, features.shape
            )
            return None
        return features, metadata

    def store(self, fingerprint: str, features: torch.Tensor, policy: dict | None = None) -> None:
        """Write one item's ``(D,)`` features atomically; with ``policy``, the item was judged usable under it."""
        self._write(fingerprint, features.detach().cpu().contiguous().clone(), policy, None)

    def store_rejection(self, fingerprint: str, reason: str, policy: dict) -> None:
        """Record that the item was rejected under ``policy``, and why (an entry without features)."""
        self._write(fingerprint, torch.empty(0), policy, reason)

    def _write(
        self, fingerprint: str, tensor: torch.Tensor, policy: dict | None, rejection: str | None
    ) -> None:
        path = self.entry_path(fingerprint)
        metadata = {"fingerprint": fingerprint, "spec_hash": self.spec_hash}
        if policy is not None:
            metadata[_POLICY_KEY] = canonical_spec_json(policy)
        if rejection is not None:
            metadata[_REJECTION_KEY] = rejection
        _atomic_write(path, lambda temporary: save_file({_TENSOR_KEY: tensor}, temporary, metadata=metadata))

    def verdicts(self, fingerprints: Sequence[str], policy: dict) -> dict[str, str | None]:
        """The items judged under ``policy``: fingerprint -> rejection reason (``None`` for a usable item).

        Only the entries' headers are read; an item without an entry, judged under another policy or with an
        unreadable entry is left out (it has to be decoded and judged).
        """
        expected = canonical_spec_json(policy)
        found: dict[str, str | None] = {}
        for fingerprint in dict.fromkeys(fingerprints):
            path = self.entry_path(fingerprint) if fingerprint else None
            if path is None or not path.is_file():
                continue
            try:
                with safe_open(str(path), framework="pt") as handle:
                    metadata = handle.metadata() or {}
            except _READ_ERRORS:
                continue
            if metadata.get(_POLICY_KEY) == expected:
                found[fingerprint] = metadata.get(_REJECTION_KEY)
        return found

    def get_or_compute(
        self,
        fingerprints: Sequence[str],
        compute: Callable[[list[int]], Any],
        accelerator: Any = None,
        desc: str = "",
        policy: dict | None = None,
    ) -> torch.Tensor:
        """Features ``(N, D)`` for items given by their content fingerprints, computing only the misses.

        Args:
            fingerprints: one content fingerprint per item (e.g. ``CorpusItem.fingerprint``).
            compute: ``compute(indices)`` returns features ``(len(indices), D)`` (tensor or array) for
                those item indices.
            accelerator: an ``accelerate.Accelerator`` (or ``PartialState``); with several processes each
                computes ``misses[process_index::num_processes]``, writes its entries, waits for the
                others, and then every process reads all entries.
            desc: a name for the log line.
            policy: the input policy the items were judged usable under: written with computed entries, and
                added to a found entry that lacks it (see :meth:`verdicts`).

        Returns:
            Features in the order of ``fingerprints``; ``self.last_stats`` holds ``{"hits", "misses"}``.
        """
        fingerprints = list(fingerprints)
        for index, fingerprint in enumerate(fingerprints):
            if not isinstance(fingerprint, str) or not fingerprint:
                raise ValueError(f"fingerprints[{index}] must be a non-empty string, got {fingerprint!r}")
        results: list[torch.Tensor | None] = [None] * len(fingerprints)
        first_index: dict[str, int] = {}
        for index, fingerprint in enumerate(fingerprints):
            first_index.setdefault(fingerprint, index)
        loaded = self._load_found(first_index, policy)
        missing = [index for fingerprint, index in first_index.items() if fingerprint not in loaded]
        hits = sum(fingerprint in loaded for fingerprint in fingerprints)
        self.last_stats = {"hits": hits, "misses": len(fingerprints) - hits}

        distributed = accelerator is not None and accelerator.num_processes > 1
        if distributed:
            # every process decides its misses before anyone writes, so the shards agree
            accelerator.wait_for_everyone()
            mine = missing[accelerator.process_index :: accelerator.num_processes]
        else:
            mine = missing
        computed = self._compute_and_store(mine, fingerprints, compute, policy)
        loaded.update(computed)
        if distributed:
            accelerator.wait_for_everyone()
            late = []
            for index in missing:
                fingerprint = fingerprints[index]
                if fingerprint not in loaded:
                    features = self.load(fingerprint)
                    if features is None:
                        late.append(index)
                    else:
                        loaded[fingerprint] = features
            if late:
                logger.warning(
                    "feature cache: %d entries from other processes are missing; computing them", len(late)
                )
                loaded.update(self._compute_and_store(late, fingerprints, compute, policy))

        for index, fingerprint in enumerate(fingerprints):
            results[index] = loaded[fingerprint]
        logger.info(
            "feature cache%s: %d hits, %d misses (%d computed here) in %s",
            f" [{desc}]" if desc else "",
            self.last_stats["hits"],
            self.last_stats["misses"],
            len(computed),
            self.directory,
        )
        if not results:
            return torch.empty(0, 0)
        dims = {tuple(tensor.shape) for tensor in results}
        if len(dims) > 1:
            raise ValueError(f"feature cache {self.directory}: entries have different shapes {sorted(dims)}")
        return torch.stack(results)

    def _load_found(self, fingerprints: Iterable[str], policy: dict | None) -> dict[str, torch.Tensor]:
        """The readable entries among ``fingerprints``; one judged again under ``policy`` gets its verdict."""
        stamp = None if policy is None else canonical_spec_json(policy)
        loaded = {}
        for fingerprint in fingerprints:
            entry = self._read(fingerprint)
            if entry is None:
                continue
            loaded[fingerprint] = entry[0]
            if stamp is not None and entry[1].get(_POLICY_KEY) != stamp:
                self.store(fingerprint, entry[0], policy)
        return loaded

    def _compute_and_store(
        self,
        indices: list[int],
        fingerprints: list[str],
        compute: Callable[[list[int]], Any],
        policy: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        if not indices:
            return {}
        output = compute(list(indices))
        features = output if isinstance(output, torch.Tensor) else torch.as_tensor(np.asarray(output))
        if features.ndim != 2 or features.shape[0] != len(indices):
            raise ValueError(
                f"compute({len(indices)} indices) returned shape {tuple(features.shape)}, "
                f"expected ({len(indices)}, D)"
            )
        stored = {}
        for row, index in enumerate(indices):
            self.store(fingerprints[index], features[row], policy)
            stored[fingerprints[index]] = features[row].detach().cpu().clone()
        return stored
