"""Wall time of `load_model` and of `find_temporal_units` (temporal-attention discovery).

    python tools/time_discovery.py builtin:arch-modelscope [builtin:arch-latte ...] [--probe real] [--threads 1]

`--probe fake` (default) is the shape-only discovery; `--probe real` the former probe that runs
the denoiser for real at the model's size and at twice it (the baseline). Prints one line per
model: load seconds, discovery seconds, units, blocks, which probe answered.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="model specs, e.g. builtin:arch-modelscope")
    parser.add_argument("--probe", choices=("fake", "real"), default="fake")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from f3compile.models import load_model, temporal_blocks
    from f3compile.models.discovery import discovery_probe, find_temporal_units

    for spec in args.specs:
        start = time.perf_counter()
        model = load_model(spec)
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        units = find_temporal_units(model, _probe_mode=args.probe)
        discovered = time.perf_counter() - start
        probe = discovery_probe(model) if args.probe == "fake" else "real"
        print(f"{spec}: threads={torch.get_num_threads()} load={loaded:.2f}s discovery={discovered:.2f}s "
              f"(probe {probe}) units={len(units)} blocks={len(temporal_blocks(units))}", flush=True)


if __name__ == "__main__":
    main()
