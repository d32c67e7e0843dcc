"""A calibration in parts: torchrun ranks that exchange their sums, or shards that `merge` joins.

Every calibration is sums over prompt batches (`parallel.Sums`) and tensors that do not depend on
the prompts (`fixed`: the timesteps, CogVideo's gates). `conclude` ends a run: one process or N
ranks write the calibration (rank 0, atomically, after the exchange); a shard writes its partial
sums exactly (fp64 hi/lo: `sum/NAME/hi`, `sum/NAME/lo`, and `fixed/NAME`) with `shard` in its
metadata. `merge` checks that shards belong together and writes what one process would have.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import parallel
from .._io import atomic_dir, read_json, sha256_bytes, sha256_file
from ..errors import F3Error
from ..parallel import Group, Part, Sums
from .stats import META_FILE, SCHEMA, STATS_FILE, CalibrationStats

# what may differ between the shards of one calibration (everything else must be equal)
PER_SHARD = ("shard", "seconds", "stats_sha256")
FIX = "re-run that shard with `f3compile calibrate --shard K/N`"


def work_split(device, shard: Part | None, batches: int) -> tuple[Group, Part]:
    """(the process group, the part of the `batches` this process samples): torchrun's rank, a
    `--shard`, or everything. Refuses more parts than batches before any work."""
    group = parallel.group(device)
    if shard is not None and not shard.whole and group.size > 1:
        raise F3Error("--shard is for separate processes (array jobs); under torchrun the ranks split the prompts: "
                      "drop --shard")
    part = group.part if group.size > 1 else shard or Part()
    part.span(batches)
    return group, part


def conclude(meta: dict, sums: Sums, fixed: dict[str, torch.Tensor], output_dir, heatmaps: bool, group: Group,
             part: Part, mine: range) -> CalibrationStats:
    """The calibration (or, for one shard, its partial sums), written to `output_dir` when given."""
    if not part.whole and group.size == 1:  # one shard of an array job
        meta["shard"] = {"index": part.index, "count": part.count, "batches": [mine.start, mine.stop]}
        stats = CalibrationStats(meta=meta, tensors=sums.tensors() | {f"fixed/{k}": v for k, v in fixed.items()})
        if output_dir is not None:
            with atomic_dir(output_dir) as tmp:
                stats.save(tmp)
        return stats
    sums = group.reduce_sums(sums)
    stats = CalibrationStats(meta=meta, tensors=sums.values() | fixed)
    if group.size > 1:  # every rank returns the same calibration, with the sha256 rank 0's file will have
        from safetensors.torch import save

        stats.meta["stats_sha256"] = sha256_bytes(save({k: v.contiguous() for k, v in stats.tensors.items()}))
    if output_dir is not None and group.writer:
        write(stats, output_dir, heatmaps)
    if output_dir is not None:  # the other ranks end only once rank 0 has written (or say that it may not have)
        group.barrier("rank 0 wrote the calibration", outcome=f"{output_dir} was written" if group.writer
                      else f"rank 0 says whether {output_dir} was written")
    return stats


def write(stats: CalibrationStats, output_dir, heatmaps: bool) -> None:
    with atomic_dir(output_dir) as tmp:
        stats.save(tmp)
        if heatmaps and stats.meta.get("kind", "diffusion") == "diffusion":
            from .heatmaps import write_heatmaps

            write_heatmaps(stats, tmp / "heatmaps")


def read_shard(directory: str | Path) -> tuple[dict, Sums, dict[str, torch.Tensor]]:
    """(metadata, partial sums, fixed tensors) of a directory `calibrate --shard` wrote."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path, stats_path = directory / META_FILE, directory / STATS_FILE
    if not meta_path.is_file() or not stats_path.is_file():
        raise F3Error(f"{directory} is not a calibration shard (needs {META_FILE} and {STATS_FILE}); "
                      "write shards with `f3compile calibrate --shard K/N`")
    meta = read_json(meta_path, FIX)
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise F3Error(f"{meta_path} is not a {SCHEMA} file; {FIX}")
    shard = meta.get("shard")
    if not (isinstance(shard, dict) and isinstance(shard.get("index"), int) and isinstance(shard.get("count"), int)
            and 0 <= shard["index"] < shard["count"]):
        raise F3Error(f"{directory} is a whole calibration, not a shard; merge only the outputs of "
                      "`f3compile calibrate --shard K/N`")
    def count(value, least=0):
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    batches = shard.get("batches")
    if not (isinstance(batches, list) and len(batches) == 2 and all(count(b) for b in batches)
            and count((meta.get("prompts") or {}).get("count"), 1) and count((meta.get("shapes") or {}).get("batch"), 1)):
        raise F3Error(f"{meta_path} lacks the shard's batches, the prompt count or the batch size; {FIX}")
    if sha256_file(stats_path) != meta.get("stats_sha256"):
        raise F3Error(f"{stats_path} does not match the sha256 in {META_FILE} (changed or truncated); {FIX}")
    try:
        tensors = load_file(str(stats_path))
    except (SafetensorError, OSError) as exc:
        raise F3Error(f"{stats_path} is unreadable ({exc}); {FIX}") from None
    fixed = {k[6:]: v for k, v in tensors.items() if k.startswith("fixed/")}
    sums = Sums.from_tensors({k: v for k, v in tensors.items() if not k.startswith("fixed/")}, str(stats_path))
    return meta, sums, fixed


def merge(shards: list[str | Path], output_dir: str | Path | None = None, heatmaps: bool = True) -> CalibrationStats:
    """The calibration one process would have written, from the N shards of `calibrate --shard K/N`
    (each given once, in any order); refuses shards of different runs, repeated or missing ones."""
    if not shards:
        raise F3Error("merge needs the shard directories written by `f3compile calibrate --shard K/N`")
    parts = [(Path(path), *read_shard(path)) for path in shards]
    first_path, first, first_sums, first_fixed = parts[0]
    count = first["shard"]["count"]
    common = {k: v for k, v in first.items() if k not in PER_SHARD}
    by_index: dict[int, tuple] = {}
    for path, meta, sums, fixed in parts:
        if meta["shard"]["count"] != count:
            raise F3Error(f"{path} is shard {meta['shard']['index']}/{meta['shard']['count']} but {first_path} is one "
                          f"of {count}; merge the shards of one split")
        differs = sorted(k for k in set(common) | set(meta) if k not in PER_SHARD and meta.get(k) != common.get(k))
        if differs:
            raise F3Error(f"{path} does not belong with {first_path}: their {', '.join(differs)} differ (model, "
                          "prompts, shapes, steps, seed and settings must all match)")
        if sums.names() != first_sums.names() or any(
                sums.hi[n].shape != first_sums.hi[n].shape for n in sums.names()):
            raise F3Error(f"{path} holds other statistics than {first_path}; {FIX}")
        if sorted(fixed) != sorted(first_fixed) or any(not torch.equal(fixed[k], first_fixed[k]) for k in fixed):
            raise F3Error(f"{path} does not belong with {first_path}: their timesteps or model constants differ")
        index = meta["shard"]["index"]
        if index in by_index:
            raise F3Error(f"shard {index}/{count} is given twice ({by_index[index][0]} and {path}); give each once")
        by_index[index] = (path, meta, sums)
    missing = [str(i) for i in range(count) if i not in by_index]
    if missing:
        raise F3Error(f"shards {', '.join(f'{i}/{count}' for i in missing)} are missing; merge all {count} shards")
    batches = 0
    total = Sums()
    for index in range(count):  # in shard order: every shard's batches follow the previous one's
        path, meta, sums = by_index[index]
        start, stop = meta["shard"]["batches"]
        if start != batches or stop <= start:
            raise F3Error(f"{path} covers prompt batches {start}..{stop - 1}, but the previous shards end at batch "
                          f"{batches - 1}; {FIX}")
        batches = stop
        total.merge(sums)
    expected = -(-common["prompts"]["count"] // common["shapes"]["batch"])
    if batches != expected:
        raise F3Error(f"the shards cover {batches} prompt batches of {expected}; {FIX}")
    meta = json.loads(json.dumps(common))
    meta["seconds"] = round(sum(by_index[i][1].get("seconds", 0.0) for i in range(count)), 3)
    stats = CalibrationStats(meta=meta, tensors=total.values() | first_fixed)
    if output_dir is not None:
        write(stats, output_dir, heatmaps)
    return stats
