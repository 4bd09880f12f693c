"""``kinema4d dataset convert OLD NEW``: rewrite a dataset (any readable format version) in the current one.

``OLD`` is a dataset dir (``OLD/zarr.json``) or a root of split dirs (``OLD/<split>/zarr.json``, e.g.
``data/synth64``); ``NEW`` gets the same shape. Every episode keeps its id, arrays (bit for bit: the same stored
dtypes, checked through the per-array checksums) and attrs; ``index.json`` is rebuilt, other files of the dataset
dirs (``datagen_config.json``, previews) are copied.

Atomic and resumable: everything is written under ``<parent of NEW>/.<name of NEW>.converting/`` (its
``convert.json`` names the source) and renamed to ``NEW`` only when every split is done, so ``NEW`` is either absent
or complete. Run the same command again after an interruption: episodes already in the temp dir are kept (each
episode file is itself written atomically). A corrupt source episode is an error naming it; ``skip_corrupt=True``
(``--skip-corrupt``) leaves it out and counts it.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

from kinema4d.data import episodes as kdata
from kinema4d.geometry import save_atomic_text

STATE = "convert.json"


def source_splits(old: Path) -> dict[str, Path]:
    """{relative dir ("" for ``old`` itself): dataset dir} of the datasets under ``old``."""
    if (old / "zarr.json").is_file():
        return {"": old}
    subs = {d.name: d for d in sorted(old.iterdir()) if (d / "zarr.json").is_file()} if old.is_dir() else {}
    if not subs:
        raise FileNotFoundError(f"no kinema4d dataset at {old} (no zarr.json here or in a subdirectory)")
    return subs


def convert_dataset(old: str | os.PathLike, new: str | os.PathLike, skip_corrupt: bool = False,
                    progress: bool = True) -> dict:
    """Convert dataset (or root of splits) ``old`` into ``new`` (must not exist) in format ``kdata.VERSION``.
    Returns {"path", "version", "splits": {name: {"episodes", "converted", "skipped": [ids]}}}."""
    old, new = Path(old), Path(new)
    if new.exists():
        raise ValueError(f"{new} exists: convert writes a new directory (remove it or choose another NEW)")
    if new.resolve().is_relative_to(old.resolve()):
        raise ValueError(f"NEW ({new}) must not be inside OLD ({old})")
    splits = source_splits(old)
    tmp = new.parent / f".{new.name}.converting"
    state = {"source": str(old.resolve()), "version": kdata.VERSION}
    if (tmp / STATE).is_file():
        prev = json.loads((tmp / STATE).read_text())
        if prev != state:
            raise ValueError(f"{tmp} holds an unfinished conversion of {prev.get('source')} (version "
                             f"{prev.get('version')}), not of {old}: remove it or choose another NEW")
    elif tmp.exists():
        raise ValueError(f"{tmp} exists but is not a conversion in progress (no {STATE}): remove it")
    tmp.mkdir(parents=True, exist_ok=True)
    save_atomic_text(tmp / STATE, json.dumps(state))
    report = {}
    for name, src in splits.items():
        report[name or kdata.Dataset4D(src).split] = _convert_split(src, tmp / name, skip_corrupt, progress)
    if "" not in splits:  # files beside the split dirs
        _copy_files(old, tmp)
    (tmp / STATE).unlink()
    os.rename(tmp, new)
    return {"path": str(new), "version": kdata.VERSION, "splits": report}


def _convert_split(src: Path, dst: Path, skip_corrupt: bool, progress: bool) -> dict:
    from tqdm import tqdm

    ds = kdata.Dataset4D(src)
    kdata.init_dataset(dst, ds.split, version=kdata.VERSION)
    if kdata.dataset_version(dst) != kdata.VERSION:
        raise ValueError(f"{dst} is not a version-{kdata.VERSION} dataset: remove it")
    kdata.clean_stale(dst)
    entries, skipped, converted = {}, [], 0
    for i in tqdm(range(len(ds)), desc=f"convert {src.name}", unit="ep", disable=not progress):
        ep = ds.episode_ids[i]
        if kdata.is_complete(dst, ep):
            continue
        try:
            e = ds.read_episode(i)  # verifies the source checksums
        except kdata.CorruptEpisodeError as err:
            if not skip_corrupt:
                raise kdata.CorruptEpisodeError(err.episode, err.path, f"{err.reason} (`kinema4d dataset convert "
                                                "--skip-corrupt` leaves corrupt episodes out)") from None
            warnings.warn(f"skipping corrupt {err}", RuntimeWarning, stacklevel=2)
            skipped.append(ep)
            continue
        attrs = {k: v for k, v in e["attrs"].items() if k not in ("episode", "checksums", "shapes")}
        arrays = {k: e[k] for k in (*kdata.ARRAYS, *kdata.OPTIONAL_ARRAYS) if k in e}
        entries[ep] = kdata.write_episode(dst, ep, arrays, attrs)
        new_sums = kdata.read_attrs(dst, ep)["checksums"]
        old_sums = e["attrs"].get("checksums", {})
        if any(new_sums.get(k) != v for k, v in old_sums.items()):
            raise RuntimeError(f"episode {ep:06d}: converted arrays differ from {ds.episode_path(i)} "
                               f"(checksums {new_sums} vs {old_sums})")
        converted += 1
    kdata.write_index(dst, ds.split, entries)
    _copy_files(src, dst)
    return {"episodes": len(kdata.complete_episodes(dst)), "converted": converted, "skipped": skipped}


def _copy_files(src: Path, dst: Path) -> None:
    """Copy the regular files of ``src`` (not its dataset metadata) into ``dst``."""
    for f in src.iterdir():
        if f.is_file() and f.name not in ("zarr.json", "index.json"):
            shutil.copy2(f, dst / f.name)
