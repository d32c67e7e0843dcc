"""Work split by prompt across processes: torchrun ranks, or array-job shards merged afterwards.

Calibration statistics are sums over prompts and a search's error is a mean over prompts, so both
split by prompt with no approximation. Three pieces make the split invisible in the result:

- **Who runs what** (`Part`): the prompt batches in order, cut into N contiguous spans; span K is
  rank K's (torchrun) or shard K's (`--shard K/N`). Each batch keeps its prompts and its seeds
  (derived from the prompt's index, not from the process), so it computes the same numbers in any
  process.
- **Sums that do not depend on order** (`Sums`): every batch's statistics are added in fp64 with a
  compensation term (Knuth's TwoSum), so a sum is the exact sum of its terms to ~1e-30 relative,
  whatever the order or grouping. Rounded to fp64 and then to fp32 at the end, one process, N ranks
  and N merged shards give the same bytes (they could differ only where an exact sum lies within
  ~1e-30 of an fp64 rounding midpoint), provided each batch computes the same terms wherever it runs:
  the same kernels (on the CPU, the tests hold the thread count equal; on CUDA, deterministic kernels).
- **The process group** (`Group`): torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR/PORT) starts `torch.distributed` with gloo on the CPU or NCCL with each rank on its
  own GPU. Ranks exchange their sums with `all_gather` (fp64) and combine them in rank order. A
  collective that fails because another rank died or raised becomes a one-line `F3Error`, so every
  rank stops with one line and rank 0 (the only writer, atomically, after the exchange) writes nothing.
  (Under NCCL a dead peer may instead surface as NCCL's own timeout; torchrun ends the other ranks.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from .errors import F3Error

TIMEOUT = timedelta(minutes=30)  # a rank that hangs (rather than dies) stops the others after this


# -- who runs what ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """Part `index` of `count`: a contiguous span of the work items (prompt batches)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Part":
        """`K/N` (0 <= K < N), as `--shard` takes it."""
        try:
            index, count = (int(x) for x in str(text).split("/"))
        except ValueError:
            raise F3Error(f"--shard {text!r} must be K/N with 0 <= K < N, e.g. 0/4") from None
        if not 0 <= index < count:
            raise F3Error(f"--shard {text!r} must be K/N with 0 <= K < N, e.g. 0/4")
        return cls(index, count)

    @property
    def whole(self) -> bool:
        return self.count == 1

    def span(self, items: int, what: str = "prompt batches") -> range:
        """The items of this part: item i belongs to part floor(i·N / items)."""
        if items < self.count:
            raise F3Error(f"{items} {what} cannot be split into {self.count} parts; use at most {items} "
                          "processes or shards (or more prompts)")
        return range(self.index * items // self.count, (self.index + 1) * items // self.count)


# -- sums that do not depend on order -------------------------------------------------------------
def _two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """s = fl(a + b) and the exact error e: a + b = s + e (Knuth; fp64, no branch on magnitudes)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


class Sums:
    """Named fp64 sums, each held as hi + lo (compensated), added to term by term or sum by sum."""

    def __init__(self, hi: dict[str, torch.Tensor] | None = None, lo: dict[str, torch.Tensor] | None = None):
        self.hi: dict[str, torch.Tensor] = dict(hi or {})
        self.lo: dict[str, torch.Tensor] = dict(lo or {})

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        """Add one term per name (any float dtype, any device; kept in fp64 on the CPU)."""
        if self.hi and set(terms) != set(self.hi):
            raise ValueError(f"terms {sorted(set(terms) ^ set(self.hi))} do not match the sums")
        for name, term in terms.items():
            term = term.detach().to("cpu", torch.float64)
            if name not in self.hi:
                self.hi[name], self.lo[name] = term.clone(), torch.zeros_like(term)
                continue
            self.hi[name], error = _two_sum(self.hi[name], term)
            self.lo[name] += error

    def merge(self, other: "Sums") -> None:
        """Add another compensated sum of the same names."""
        if not self.hi:
            self.hi = {k: v.clone() for k, v in other.hi.items()}
            self.lo = {k: v.clone() for k, v in other.lo.items()}
            return
        if set(other.hi) != set(self.hi):
            raise ValueError("the sums hold different statistics")
        for name in self.hi:
            self.hi[name], error = _two_sum(self.hi[name], other.hi[name])
            self.lo[name] += error + other.lo[name]

    def value(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The sum rounded once to fp64 (then to `dtype`)."""
        return (self.hi[name] + self.lo[name]).to(dtype)

    def values(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        return {name: self.value(name, dtype) for name in sorted(self.hi)}

    def names(self) -> list[str]:
        return sorted(self.hi)

    def flat(self) -> torch.Tensor:
        """hi then lo of every name (sorted), as one fp64 vector: what ranks exchange."""
        names = self.names()
        return torch.cat([self.hi[n].reshape(-1) for n in names] + [self.lo[n].reshape(-1) for n in names])

    def unflat(self, flat: torch.Tensor) -> "Sums":
        """Sums of this one's names and shapes read from a vector `flat` wrote."""
        names, offset = self.names(), 0
        parts: list[dict[str, torch.Tensor]] = [{}, {}]
        for part in parts:
            for name in names:
                size = self.hi[name].numel()
                part[name] = flat[offset:offset + size].reshape(self.hi[name].shape).clone()
                offset += size
        return Sums(*parts)

    def tensors(self) -> dict[str, torch.Tensor]:
        """`sum/NAME/hi` and `sum/NAME/lo` (fp64): how a shard stores its partial sums exactly."""
        out = {}
        for name in self.names():
            out[f"sum/{name}/hi"], out[f"sum/{name}/lo"] = self.hi[name].contiguous(), self.lo[name].contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], where: str) -> "Sums":
        hi, lo = {}, {}
        for key, tensor in tensors.items():
            head, _, tail = key.rpartition("/")
            if not key.startswith("sum/") or tail not in ("hi", "lo") or tensor.dtype != torch.float64:
                raise F3Error(f"{where} holds {key!r}, which is not a partial sum; re-run `f3compile calibrate --shard`")
            (hi if tail == "hi" else lo)[head[4:]] = tensor
        if set(hi) != set(lo) or any(hi[n].shape != lo[n].shape for n in hi):
            raise F3Error(f"{where}: partial sums lack halves; re-run `f3compile calibrate --shard`")
        return cls(hi, lo)


# -- the process group ----------------------------------------------------------------------------
def launched() -> bool:
    """True in a process that torchrun (or a launcher setting the same variables) started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


@dataclass
class Group:
    """The ranks of one run: `rank` of `size`, each on `device`; size 1 without a launcher."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    started: bool = False  # this object started torch.distributed (and stops it)

    @property
    def part(self) -> Part:
        return Part(self.rank, self.size)

    @property
    def writer(self) -> bool:
        """Rank 0 writes outputs and prints progress."""
        return self.rank == 0

    def all_gather(self, tensor: torch.Tensor, what: str, outcome: str = "nothing was written") -> list[torch.Tensor]:
        """Every rank's `tensor` (same shape everywhere), in rank order, on the CPU. A failure says
        `what` was under way and the `outcome`."""
        if self.size == 1:
            return [tensor]
        import torch.distributed as dist

        local = tensor.to(self.device).contiguous()
        gathered = [torch.empty_like(local) for _ in range(self.size)]
        with _Collective(self, what, outcome):
            dist.all_gather(gathered, local)
            return [t.cpu() for t in gathered]  # NCCL reports a failure here, when the result is waited for

    def reduce_sums(self, sums: Sums) -> Sums:
        """Every rank's sums added in rank order (compensated): the same on every rank."""
        if self.size == 1:
            return sums
        total = Sums()
        for flat in self.all_gather(sums.flat(), "exchanging the statistics"):
            total.merge(sums.unflat(flat))
        return total

    def gather_values(self, values: list[float], counts: list[int], what: str) -> list[float]:
        """Every rank's `values` (rank r holds counts[r] of them) concatenated in rank order."""
        if self.size == 1:
            return list(values)
        width = max(counts)
        padded = torch.zeros(width, dtype=torch.float64)
        padded[:len(values)] = torch.tensor(values, dtype=torch.float64)
        out: list[float] = []
        for rank, tensor in enumerate(self.all_gather(padded, what)):
            out += tensor[:counts[rank]].tolist()
        return out

    def check_same(self, text: str, what: str) -> None:
        """Refuse a run whose ranks were given different inputs (`text` summarises them)."""
        if self.size == 1:
            return
        import hashlib

        digest = torch.tensor(list(hashlib.sha256(text.encode()).digest()), dtype=torch.float64)
        if any(not torch.equal(other, digest) for other in self.all_gather(digest, f"comparing {what}")):
            raise F3Error(f"the {self.size} processes were given different {what}; start every rank with the same "
                          "command")

    def barrier(self, what: str, outcome: str = "nothing was written") -> None:
        if self.size == 1:
            return
        self.all_gather(torch.zeros(1), what, outcome)  # a barrier that fails like the other collectives

    def stop(self) -> None:
        if self.started:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.started = False


class _Collective:
    """Turns a collective's failure (a rank died, raised, or hung past TIMEOUT) into one line."""

    def __init__(self, group: Group, what: str, outcome: str):
        self.group, self.what, self.outcome = group, what, outcome

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, (F3Error, KeyboardInterrupt)):
            return False
        if isinstance(error, RuntimeError):  # gloo/NCCL errors (DistBackendError, DistNetworkError, ...) are RuntimeErrors
            raise F3Error(f"rank {self.group.rank} of {self.group.size}: another rank stopped while {self.what} "
                          f"({_reason(error)}); {self.outcome}") from None
        return False


def _reason(error: BaseException) -> str:
    """The first sentence of a backend error, without gloo's source location."""
    import re

    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0]
    return text[:160]


_GROUP: Group | None = None


def group(device: str | torch.device = "cpu") -> Group:
    """This process's group: one process, or torchrun's ranks (started here on first use: gloo for
    `device` cpu, NCCL with rank r on cuda:LOCAL_RANK for cuda)."""
    global _GROUP
    if _GROUP is not None:
        return _GROUP
    from .devices import check_device

    device = check_device(device)
    if not launched():
        return Group(device=device)
    import torch.distributed as dist

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        if torch.cuda.device_count() <= local:
            raise F3Error(f"rank {rank} (local rank {local}) has no GPU of its own: this node shows "
                          f"{torch.cuda.device_count()}; start at most that many processes per node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    started = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, rank=rank, world_size=size, timeout=TIMEOUT,
                                    **({"device_id": device} if device.type == "cuda" else {}))
        except (RuntimeError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise F3Error(f"rank {rank} of {size} could not join the others ({reason}); check MASTER_ADDR/MASTER_PORT "
                          "or start with torchrun") from None
        started = True
    _GROUP = Group(rank=dist.get_rank(), size=dist.get_world_size(), device=device, started=started)
    return _GROUP


def stop() -> None:
    """Leave the process group this module started (at the end of a command)."""
    global _GROUP
    if _GROUP is not None:
        _GROUP.stop()
        _GROUP = None


def finish(code: int) -> int:
    """Leave the process group; in a process that torchrun started, end it here with `code`.

    Past the last Python line, the interpreter's teardown destroys what torch.distributed left
    behind, and gloo's threads can abort it there ("terminate called without an active
    exception", in about one run in ten here) after the work was done and written. A launched
    process therefore flushes its output and exits without that teardown; other processes get
    `code` back."""
    stop()
    if launched():
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
