"""fertk's GAN generation vs the official code, same random weights, same CPU, interleaved medians.

The official code is never vendored: point the script at the user's own checkouts.

    STARGAN_SRC=~/src/stargan STYLEGAN2_SRC=~/src/stylegan2-ada-pytorch \
        python benchmarks/official/compare.py --out benchmarks/official/results/<machine>.json

What it builds (paper scale, `--scale paper`, the default):

* StyleGAN2-ADA generator, 256 px, z/w 512, mapping 8, channel_base 16384, channel_max 512,
  num_fp16_res 0 (the official code runs force_fp32 on CPU, so fp32 is the fair comparison);
  random weights from fertk's initialiser, saved once as safetensors and loaded into both the
  official `training.networks.Generator` and fertk's.
* StarGAN generator 64/7/6 (the authors' 7 labels), random weights saved once as a state dict and
  loaded into both the official `model.Generator` and fertk's; input 128 px.

What it times (seconds per identity, or per image for StyleGAN2 alone), every variant once per
round, rounds repeated (A B C A B C ...), medians over rounds:

* components: official StyleGAN2 at batch 1 and 4 vs fertk's torch and ort engines; official
  StarGAN on one identity × 6 emotions vs fertk's torch and ort engines (batch 6).
* pipeline: the official code used the way its user would (per identity: StyleGAN2 at batch 1,
  ψ 0.7, const noise → area resize 256 → 128 → StarGAN on the 6 expressions → crop / BT.601
  gray / INTER_AREA 64 px / uint8, written below as `official_pipeline`) vs fertk's fused
  generation graph (`fertk.models.pipeline`) on each backend at `--pipeline-batch` identities
  per call, and the backend `--backend auto` picks. `--precisions fp32,bf16-translator` adds
  what `fertk synth --translator-precision bf16` runs: StyleGAN2 fp32 on onnxruntime, StarGAN in
  bf16 autocast on torch (`fertk.synth.engines.open_generation_engine`'s staged engine).

`--scale small` builds tiny models (seconds, for a smoke test of the script itself).
Threads: torch.set_num_threads and the ORT session both get `--threads` (default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EMOTIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
SCALES: dict[str, dict[str, Any]] = {
    "paper": {
        "stylegan2": {"z_dim": 512, "c_dim": 0, "w_dim": 512, "img_resolution": 256, "img_channels": 3,
                      "mapping_kwargs": {"num_layers": 8},
                      "synthesis_kwargs": {"channel_base": 16384, "channel_max": 512, "num_fp16_res": 0,
                                           "conv_clamp": None}},
        "stargan": {"conv_dim": 64, "c_dim": 7, "repeat_num": 6},
        "translator_size": 128,
    },
    "small": {
        "stylegan2": {"z_dim": 64, "c_dim": 0, "w_dim": 64, "img_resolution": 32, "img_channels": 3,
                      "mapping_kwargs": {"num_layers": 2},
                      "synthesis_kwargs": {"channel_base": 1024, "channel_max": 64, "num_fp16_res": 0,
                                           "conv_clamp": None}},
        "stargan": {"conv_dim": 16, "c_dim": 7, "repeat_num": 2},
        "translator_size": 16,
    },
}
TRUNCATION = 0.7


# -- the official side --------------------------------------------------------------------------

def import_official(stargan_src: str | None, stylegan2_src: str | None) -> tuple[Any, Any]:
    """(StarGAN Generator class, StyleGAN2 Generator class) from the user's checkouts (None if absent)."""
    sg_cls = sg2_cls = None
    if stargan_src:
        sys.path.insert(0, str(Path(stargan_src).resolve()))
        from model import Generator as sg_cls  # type: ignore[no-redef]  # noqa: N813 - the official name
        sys.path.pop(0)
    if stylegan2_src:
        sys.path.insert(0, str(Path(stylegan2_src).resolve()))
        from training.networks import Generator as sg2_cls  # type: ignore[no-redef]  # noqa: N813
    return sg_cls, sg2_cls


def official_postprocess(images: torch.Tensor, box: tuple[int, int, int, int], out: int) -> np.ndarray:
    """What a user of the official code writes: crop, BT.601 gray in [0, 255], cv2 INTER_AREA, uint8."""
    import cv2

    t, lft, h, w = box
    rgb = ((images[:, :, t:t + h, lft:lft + w].clamp(-1, 1) + 1) * 127.5).numpy()
    gray = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    faces = [cv2.resize(g.astype(np.float32), (out, out), interpolation=cv2.INTER_AREA) for g in gray]
    return np.clip(np.rint(np.stack(faces)), 0, 255).astype(np.uint8)


def official_pipeline(g_sg2: nn.Module, g_star: nn.Module, z: torch.Tensor, labels: torch.Tensor,
                      size: int, box: tuple[int, int, int, int], out: int) -> np.ndarray:
    """One identity: StyleGAN2 (batch 1) → area resize → StarGAN × E → crop / gray / resize."""
    img = g_sg2(z, None, truncation_psi=TRUNCATION, noise_mode="const", force_fp32=True).clamp(-1, 1)
    if img.shape[-1] != size:
        img = F.interpolate(img, size=(size, size), mode="area")
    faces = g_star(img.expand(labels.shape[0], -1, -1, -1), labels)
    return official_postprocess(faces, box, out)


# -- fertk wrappers with specs (components alone) -------------------------------------------------

class StyleGAN2Images(nn.Module):
    """z → image at ψ 0.7, const noise (what the pipeline's first stage computes)."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        from fertk.core.specs import TensorSpec

        self.generator = generator
        res = int(generator.config.img_resolution)
        self.input_specs = (TensorSpec("z", "float32", ("batch", int(generator.config.z_dim))),)
        self.output_specs = (TensorSpec("img", "float32", ("batch", 3, res, res)),)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z, None, truncation_psi=TRUNCATION, noise_mode="const")


class StarGANImages(nn.Module):
    """(x, c) → translated faces."""

    def __init__(self, generator: nn.Module, size: int) -> None:
        super().__init__()
        from fertk.core.specs import TensorSpec

        self.generator = generator
        self.input_specs = (TensorSpec("x", "float32", ("batch", 3, size, size)),
                            TensorSpec("c", "float32", ("batch", int(generator.c_dim))))
        self.output_specs = (TensorSpec("y", "float32", ("batch", 3, size, size)),)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.generator(x, c)


# -- timing ---------------------------------------------------------------------------------------

def interleaved(variants: dict[str, tuple[Callable[[], Any], int]], rounds: int, log: Callable[[str], None]
                ) -> dict[str, dict[str, Any]]:
    """Each variant once per round (one warm-up call first); seconds per item, median over rounds."""
    with torch.no_grad():
        for name, (fn, _) in variants.items():
            start = time.perf_counter()
            fn()
            log(f"  warm-up {name}: {time.perf_counter() - start:.2f} s")
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(rounds):
            for name, (fn, items) in variants.items():
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) / items)
            log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {t[-1]:.3f}" for n, t in times.items()))
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                   "rounds_s": [round(v, 4) for v in t]} for name, t in times.items()}


def ratios(results: dict[str, dict[str, Any]], reference: str) -> dict[str, float]:
    """reference median / variant median (> 1: faster than the reference)."""
    ref = results[reference]["median_s"]
    return {name: round(ref / r["median_s"], 3) for name, r in results.items() if name != reference}


# -- main -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stargan-src", default=os.environ.get("STARGAN_SRC"),
                        help="yunjey/stargan checkout (env STARGAN_SRC)")
    parser.add_argument("--stylegan2-src", default=os.environ.get("STYLEGAN2_SRC"),
                        help="NVlabs/stylegan2-ada-pytorch checkout (env STYLEGAN2_SRC)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="paper")
    parser.add_argument("--parts", default="components,pipeline", help="components, pipeline or both")
    parser.add_argument("--backends", default="torch,ort", help="fertk backends to time")
    parser.add_argument("--precisions", default="fp32",
                        help="pipeline precisions to time, e.g. fp32,bf16,bf16-translator (bf16: the whole graph in torch "
                             "autocast; bf16-translator: StarGAN in bf16, StyleGAN2 fp32 on ORT; ORT runs fp32 only)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipeline-batch", type=int, default=4, help="identities per fertk pipeline call")
    parser.add_argument("--workdir", default=None, help="weights + artifact cache (default: a temp dir)")
    parser.add_argument("--note", default="", help="free text stored with the results (machine load, ...)")
    parser.add_argument("--out", default=None, help="results JSON")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    torch.set_num_threads(args.threads)
    scale = SCALES[args.scale]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fertk-official-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FERTK_CACHE_DIR", str(work / "cache"))

    from fertk.engines import choose_backend
    from fertk.export import open_engine
    from fertk.models.pipeline import DEFAULT_CROPS, PipelineConfig, build_pipeline, crop_pixels
    from fertk.models.stargan import StarGANGenerator, save_stargan
    from fertk.models.stylegan2 import StyleGAN2Generator, save_stylegan2
    from fertk.engines import machine_info

    # Same random weights for both sides, saved once.
    g_path, t_path = work / "stylegan2.safetensors", work / "stargan-G.ckpt"
    sg2_kwargs, star_kwargs, size = scale["stylegan2"], scale["stargan"], int(scale["translator_size"])
    if not g_path.is_file():
        save_stylegan2(StyleGAN2Generator(sg2_kwargs, seed=1), g_path)
    if not t_path.is_file():
        torch.manual_seed(2)
        star = StarGANGenerator(**star_kwargs, image_size=size)
        torch.save(star.state_dict(), t_path)
    from fertk.models.stargan import load_stargan_generator
    from fertk.models.stylegan2 import load_stylegan2

    fk_sg2, _ = load_stylegan2(g_path)
    fk_star, _ = load_stargan_generator(t_path)
    state_sg2 = fk_sg2.state_dict()
    state_star = torch.load(t_path, weights_only=True)

    sg_cls, sg2_cls = import_official(args.stargan_src, args.stylegan2_src)
    off_sg2 = off_star = None
    if sg2_cls is not None:
        off_sg2 = sg2_cls(**json.loads(json.dumps(sg2_kwargs)))
        off_sg2.load_state_dict(state_sg2)
        off_sg2.eval().requires_grad_(False)
    if sg_cls is not None:
        off_star = sg_cls(star_kwargs["conv_dim"], star_kwargs["c_dim"], star_kwargs["repeat_num"])
        off_star.load_state_dict(state_star)
        off_star.requires_grad_(False)  # the official test path never calls eval()

    classes = fk_star.classes
    labels = torch.zeros(len(EMOTIONS), fk_star.c_dim)
    for row, emotion in enumerate(EMOTIONS):
        labels[row, classes.index(emotion)] = 1.0
    box = crop_pixels(size, DEFAULT_CROPS["stylegan2"])
    out_side = 64
    rng = np.random.default_rng(0)
    backends = [b for b in args.backends.split(",") if b]
    ort_opts = {"intra_op_threads": args.threads}
    auto_backend = choose_backend("module", "cpu", "fp32")[0]
    report: dict[str, Any] = {
        "schema": "fertk-official-compare/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "platform": platform.platform(),
        "cpu_flags": _cpu_flags(),
        "threads": args.threads,
        "scale": args.scale,
        "configs": {"stylegan2": sg2_kwargs, "stargan": star_kwargs, "translator_size": size,
                    "truncation": TRUNCATION, "noise_mode": "const", "emotions": list(EMOTIONS)},
        "official": {"stargan_src": args.stargan_src, "stylegan2_src": args.stylegan2_src,
                     "stargan_commit": _git_head(args.stargan_src),
                     "stylegan2_commit": _git_head(args.stylegan2_src)},
        "method": "in one process, every variant once per round, rounds interleaved, median over rounds; "
                  "seconds per identity (pipeline, StarGAN) or per image (StyleGAN2)",
        "rounds": args.rounds,
        "auto_backend": auto_backend,
        "load_before": os.getloadavg(),
        "note": args.note,
    }
    engines: list[Any] = []
    parts = set(args.parts.split(","))

    if "components" in parts:
        log("components: StyleGAN2")
        sg2_wrap = StyleGAN2Images(fk_sg2).eval()
        variants: dict[str, tuple[Callable[[], Any], int]] = {}
        for batch in (1, 4):
            z = torch.from_numpy(rng.standard_normal((batch, fk_sg2.config.z_dim)).astype(np.float32))
            if off_sg2 is not None:
                variants[f"official-b{batch}"] = (
                    (lambda z=z: off_sg2(z, None, truncation_psi=TRUNCATION, noise_mode="const",
                                          force_fp32=True)), batch)
            for backend in backends:
                eng = open_engine(sg2_wrap, backend=backend, device="cpu",
                                  **(ort_opts if backend == "ort" else {}))
                engines.append(eng)
                variants[f"fertk-{backend}-b{batch}"] = ((lambda e=eng, z=z: e.run({"z": z})), batch)
        sg2_res = interleaved(variants, args.rounds, log)
        report["stylegan2"] = {"results": sg2_res}
        if off_sg2 is not None:
            report["stylegan2"]["speedup_vs_official_b1"] = ratios(sg2_res, "official-b1")
            report["stylegan2"]["speedup_vs_official_same_batch"] = {
                name: round(sg2_res[f"official-{name.rsplit('-', 1)[1]}"]["median_s"] / r["median_s"], 3)
                for name, r in sg2_res.items() if name.startswith("fertk")}
            with torch.no_grad():
                z = torch.from_numpy(rng.standard_normal((2, fk_sg2.config.z_dim)).astype(np.float32))
                a = off_sg2(z, None, truncation_psi=TRUNCATION, noise_mode="const", force_fp32=True)
                b = sg2_wrap(z)
            report["stylegan2"]["max_abs_vs_official"] = float((a - b).abs().max())

        log("components: StarGAN")
        star_wrap = StarGANImages(fk_star, size).eval()
        x = torch.from_numpy(rng.uniform(-1, 1, (len(EMOTIONS), 3, size, size)).astype(np.float32))
        variants = {}
        if off_star is not None:
            variants["official"] = ((lambda: off_star(x, labels)), 1)
        for backend in backends:
            eng = open_engine(star_wrap, backend=backend, device="cpu", **(ort_opts if backend == "ort" else {}))
            engines.append(eng)
            variants[f"fertk-{backend}"] = ((lambda e=eng: e.run({"x": x, "c": labels})), 1)
        star_res = interleaved(variants, args.rounds, log)
        report["stargan"] = {"results": star_res, "batch": len(EMOTIONS)}
        if off_star is not None:
            report["stargan"]["speedup_vs_official"] = ratios(star_res, "official")
            with torch.no_grad():
                report["stargan"]["max_abs_vs_official"] = float((off_star(x, labels) - star_wrap(x, labels)).abs().max())

    if "pipeline" in parts:
        log("pipeline")
        config = PipelineConfig(generator="stylegan2", generator_weights=str(g_path), translator_weights=str(t_path),
                                truncation=TRUNCATION, translator_size=size, emotions=EMOTIONS, output_size=out_side)
        pipeline = build_pipeline(config)
        batch = args.pipeline_batch
        z = rng.standard_normal((batch, pipeline.latent_dim)).astype(np.float32)
        alpha = np.ones((batch, len(EMOTIONS)), dtype=np.float32)
        variants = {}
        if off_sg2 is not None and off_star is not None:
            z0 = torch.from_numpy(z[:1])
            variants["official"] = ((lambda: official_pipeline(off_sg2, off_star, z0, labels, size, box, out_side)), 1)
        low_precision: dict[str, Any] = {}
        wanted = [p for p in args.precisions.split(",") if p]
        if "bf16-translator" in wanted:
            from dataclasses import replace

            from fertk.synth.engines import open_generation_engine

            staged_pipeline = build_pipeline(replace(config, translator_precision="bf16"))
            eng = open_generation_engine(staged_pipeline, backend="auto", device="cpu", precision="fp32", **ort_opts)
            engines.append(eng)
            variants["fertk-auto-bf16-translator"] = ((lambda e=eng: e.run({"latent": z, "intensity": alpha})), batch)
            low_precision["fertk-auto-bf16-translator"] = eng
        for backend in backends:
            for precision in [p for p in wanted if p != "bf16-translator"]:
                if precision != "fp32" and backend != "torch":
                    log(f"  {backend} {precision}: skipped (only the torch engine runs low precision on CPU)")
                    continue
                options = dict(ort_opts) if backend == "ort" else ({"autocast": True} if precision != "fp32" else {})
                eng = open_engine(pipeline, backend=backend, device="cpu", precision=precision, **options)
                engines.append(eng)
                name = f"fertk-{backend}" + ("" if precision == "fp32" else f"-{precision}")
                variants[name] = ((lambda e=eng: e.run({"latent": z, "intensity": alpha})), batch)
                if precision != "fp32":
                    low_precision[name] = eng
        pipe_res = interleaved(variants, args.rounds, log)
        report["pipeline"] = {"results": pipe_res, "fertk_batch": batch, "output_size": out_side,
                              "crop_pixels": list(box)}
        if "official" in pipe_res:
            report["pipeline"]["speedup_vs_official"] = ratios(pipe_res, "official")
            with torch.no_grad():
                ref = official_pipeline(off_sg2, off_star, torch.from_numpy(z[:1]), labels, size, box, out_side)
                got = pipeline(torch.from_numpy(z[:1]), torch.from_numpy(alpha[:1])).numpy()[0]
            diff = np.abs(ref.astype(int) - got.astype(int))
            report["pipeline"]["vs_official_grey_levels"] = {"max": int(diff.max()), "mean": float(diff.mean())}
        # Low precision changes what is generated: how much, on the timed batch, against fp32 fertk.
        if low_precision:
            with torch.no_grad():
                fp32_faces = pipeline(torch.from_numpy(z), torch.from_numpy(alpha)).numpy().astype(int)
            report["pipeline"]["low_precision_vs_fp32_grey_levels"] = {}
            for name, eng in low_precision.items():
                diff = np.abs(np.asarray(eng.run({"latent": z, "intensity": alpha})["faces"]).astype(int) - fp32_faces)
                report["pipeline"]["low_precision_vs_fp32_grey_levels"][name] = {
                    "max": int(diff.max()), "mean": float(diff.mean()), "share_changed": float((diff > 0).mean())}
                log(f"  {name} vs fp32: max {int(diff.max())} grey levels, {100 * float((diff > 0).mean()):.2f} % of pixels changed")

    for eng in engines:
        report.setdefault("engines", []).append(eng.describe())
        eng.close()
    report["load_after"] = os.getloadavg()
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        log(f"wrote {args.out}")
    else:
        print(text)
    return 0


def _cpu_flags() -> dict[str, bool]:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        return {}
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")}


def _git_head(src: str | None) -> str | None:
    if not src:
        return None
    head = Path(src) / ".git" / "HEAD"
    return head.read_text().strip() if head.is_file() else None


if __name__ == "__main__":
    raise SystemExit(main())
