"""eval.json, eval.md (a markdown table), grid.png (dense vs pruned videos) and the sweep plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._io import atomic_dir, write_json_atomic

COLUMNS = ("variant", "granularity", "ratio", "stages", "criterion", "colour", "shape", "direction", "all",
           "Fréchet", "PSNR / SSIM vs dense", "temporal", "speedup")


FIDELITY_COLUMNS = ("variant", "granularity", "ratio", "stages", "criterion", "PSNR vs dense", "SSIM vs dense",
                    "latents rel. L2", "speedup")


def _ratio(entry: dict) -> str:
    if "ratio" not in entry:
        return "—"
    return ",".join(f"{r:g}" for r in entry["ratio"]) if isinstance(entry["ratio"], list) else f"{entry['ratio']:g}"


def _fidelity_markdown(result: dict) -> str:
    lines = [
        f"Model `{result['model']['spec']}`: {result['prompts']} prompts × {result['config']['samples']} seeds "
        f"= {result['videos_per_variant']} videos per variant, {result['config']['steps']} steps, guidance "
        f"{result['config']['guidance_scale']:g}. Fidelity to the dense model from the same noise: PSNR and SSIM of "
        "the decoded frames, relative L2 of the final latents (means over videos); speedup: the denoising loop of "
        f"the programs that made the videos, at batch {result['config']['batch']}, timed as `f3compile bench` times.",
        "",
        "| " + " | ".join(FIDELITY_COLUMNS) + " |",
        "|" + "|".join("---" for _ in FIDELITY_COLUMNS) + "|",
    ]
    for name, entry in result["results"].items():
        psnr, ssim, rel = entry["psnr_vs_dense"], entry["ssim_vs_dense"], entry["latents_rel_l2_vs_dense"]
        lines.append("| " + " | ".join([
            name, entry.get("granularity", "—"), _ratio(entry), str(entry.get("stages", "—")), entry.get("criterion", "—"),
            "—" if psnr is None else f"{psnr:.1f} dB", "—" if ssim is None else f"{ssim:.4f}",
            "—" if rel is None else f"{rel:.4f}", f"{entry['speedup']:.2f}×",
        ]) + " |")
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    if result.get("measures") == "fidelity":
        return _fidelity_markdown(result)
    ref = result["reference"]
    lines = [
        f"Model `{result['model']['spec']}`: {result['prompts']} prompts × {result['config']['samples']} seeds "
        f"= {result['videos_per_variant']} videos per variant, {result['config']['steps']} steps, "
        f"guidance {result['config']['guidance_scale']:g}. Real clips ({ref['clips']}): probe accuracy "
        f"{ref['accuracy']['all']:.1%} (all three), Fréchet between two real halves {ref['frechet_real_halves']:.2f}, "
        f"temporal consistency {ref['temporal_consistency']:.3f}. Accuracies: [95% bootstrap interval over prompts]; "
        "Fréchet: all videos pooled (seeds: mean ± sd of the per-seed distances); speedup: the denoising loop of "
        f"the programs that made the videos, at batch {result['config']['batch']}, timed as `f3compile bench` times.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    def with_ci(entry: dict, key: str) -> str:
        value = f"{entry['accuracy'][key]:.1%}"
        ci = entry.get("accuracy_ci95", {}).get(key)
        return value if ci is None else f"{value} [{ci[0]:.0%}–{ci[1]:.0%}]"

    for name, entry in result["results"].items():
        psnr = entry["psnr_vs_dense"]
        lines.append("| " + " | ".join([
            name, entry.get("granularity", "—"), _ratio(entry),
            str(entry.get("stages", "—")), entry.get("criterion", "—"),
            with_ci(entry, "color"), with_ci(entry, "shape"), with_ci(entry, "direction"), with_ci(entry, "all"),
            f"{entry['frechet']:.2f} (seeds {entry.get('frechet_seed_mean', entry['frechet']):.0f} ± {entry['frechet_spread']:.0f})",
            "—" if psnr is None else f"{psnr:.1f} dB / {entry['ssim_vs_dense']:.3f}",
            f"{entry['temporal_consistency']:.3f}", f"{entry['speedup']:.2f}×",
        ]) + " |")
    return "\n".join(lines) + "\n"


def comparison(result: dict) -> str:
    """One line per pruned variant against the dense model: speed and quality side by side."""
    dense_name = next(iter(result["results"]))
    dense = result["results"][dense_name]
    lines = []
    for name, entry in list(result["results"].items())[1:]:
        if result.get("measures") == "fidelity":
            lines.append(f"{name}: {entry['speedup']:.2f}x the speed of dense; PSNR {entry['psnr_vs_dense']:.1f} dB, SSIM "
                         f"{entry['ssim_vs_dense']:.3f} against the dense videos")
            continue
        accuracy = ", ".join(f"{key} {entry['accuracy'][key]:.0%} (dense {dense['accuracy'][key]:.0%})"
                             for key in ("color", "shape", "direction"))
        lines.append(f"{name}: {entry['speedup']:.2f}x the speed of dense; Fréchet {entry['frechet']:.0f} (dense "
                     f"{dense['frechet']:.0f} ± {dense['frechet_spread']:.0f} over seeds); {accuracy}; PSNR "
                     f"{entry['psnr_vs_dense']:.1f} dB against the dense videos")
    return "\n".join(lines)


def grid_png(result: dict, path: Path, max_variants: int = 8, scale: int = 4) -> None:
    """Rows: the first prompts (seed 0), each labelled with its whole prompt; columns: dense and up
    to `max_variants`-1 pruned variants, each cell the clip's frames side by side."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["_grid"])[:max_variants]
    prompts = result["_grid_prompts"]
    labels = ["\n".join(textwrap.wrap(prompt, 26)) for prompt in prompts]
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    fig, axes = plt.subplots(len(prompts), len(names), figsize=(1.6 + 2.6 * len(names), max(0.55, 0.16 * lines) * len(prompts) + 0.6),
                             squeeze=False)
    for column, name in enumerate(names):
        videos = result["_grid"][name].numpy()
        for row in range(len(prompts)):
            strip = np.concatenate(list(videos[row]), axis=1)
            strip = strip.repeat(scale, 0).repeat(scale, 1)
            ax = axes[row][column]
            ax.imshow(strip, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=7)
            if column == 0:
                ax.set_ylabel(labels[row], fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_plot(result: dict, path: Path) -> None:
    """Quality vs measured speedup: Fréchet and direction accuracy, one marker per plan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    markers = {"block": "s", "attention": "o", "head": "^"}
    dense = result["results"]["dense"]
    if result.get("measures") == "fidelity":
        measures = (("latents_rel_l2_vs_dense", "final latents' rel. L2 vs dense (lower is better)"),
                    ("psnr_vs_dense", "PSNR vs dense, dB (higher is better)"))
    else:
        measures = (("frechet", "Fréchet distance (lower is better)"), ("direction", "direction accuracy"))
    for ax, (key, label) in zip((left, right), measures):
        value = (lambda e, k=key: e["accuracy"]["direction"] if k == "direction" else e[k])
        if value(dense) is not None:
            ax.axhline(value(dense), color="k", lw=0.8, ls="--", label="dense")
        for name, entry in result["results"].items():
            if name == "dense":
                continue
            random = str(entry.get("criterion", "")).startswith("random")
            colour = "0.6" if random else ("C0" if entry.get("stages", 1) == 1 else "C1")
            if entry.get("criterion") == "output_norm":
                colour = "C2"
            colour = {"schedule": "C4", "budget": "C5", "search": "C3", "reuse": "C6"}.get(entry.get("kind"), colour)
            if value(entry) is None:
                continue
            ax.scatter(entry["speedup"], value(entry), marker="x" if random else markers.get(entry.get("granularity"), "o"),
                       color=colour, s=30)
            if entry.get("kind") in ("schedule", "budget", "search", "reuse") or len(result["results"]) <= 12:
                ax.annotate(name, (entry["speedup"], value(entry)), fontsize=5, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("measured denoising-loop speedup (×)")
        ax.set_ylabel(label)
    handles = [plt.Line2D([], [], marker=m, ls="", color="k", label=g) for g, m in markers.items()]
    handles += [plt.Line2D([], [], marker="o", ls="", color=c, label=l) for c, l in
                (("C0", "1 stage"), ("C1", "2+ stages"), ("C2", "output_norm"), ("0.6", "random plans"),
                 ("C4", "ratio per stage"), ("C5", "--target-speedup"), ("C3", "--search"))]
    right.legend(handles=handles, fontsize=7)
    fig.suptitle(f"{result['model']['spec']}: quality vs speedup")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(result: dict, output_dir: str | Path, sweep: bool = False) -> None:
    """eval.json, eval.md, grid.png (and sweep.png) written together: all or nothing."""
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    with atomic_dir(output_dir) as tmp:
        write_json_atomic(tmp / "eval.json", public)
        (tmp / "eval.md").write_text(markdown(result))
        grid_png(result, tmp / "grid.png")
        if sweep:
            sweep_plot(result, tmp / "sweep.png")
