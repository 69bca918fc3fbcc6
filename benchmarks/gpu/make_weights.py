"""Random GAN weights in the official file formats, for the synth stage: `make_weights.py OUT SCALE`.

- StyleGAN2: an NVlabs-style generator state dict saved by torch.save (`stylegan2-G.pt`) with its
  upstream constructor kwargs beside it (`stylegan2-config.json`, found by the loader's sidecar
  search), as one converts an NVlabs snapshot.
- StarGAN: the official solver's `{iter}-G.ckpt`, a plain torch.save state dict (`200000-G.ckpt`).

Sizes are the bench's (`fertk.bench.models`): paper = StyleGAN2 256 px (channel_base 16384, max
512) and StarGAN 64/7/6 at 128 px; small = the golden-vector sizes. Both files are read back with
fertk's loaders (weights_only) before the paths are printed as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) != 3:
        sys.stderr.write("usage: make_weights.py OUT_DIR paper|small\n")
        raise SystemExit(2)
    out, scale = Path(sys.argv[1]), sys.argv[2]
    import torch

    from fertk.bench.models import STARGAN_CONFIGS, STYLEGAN2_CONFIGS
    from fertk.models.stargan import StarGANConfig, StarGANGenerator, load_stargan_generator, save_stargan
    from fertk.models.stylegan2 import StyleGAN2Config, StyleGAN2Generator, load_stylegan2

    out.mkdir(parents=True, exist_ok=True)
    kwargs = STYLEGAN2_CONFIGS[scale]
    generator = StyleGAN2Generator(StyleGAN2Config.from_kwargs(kwargs), seed=0)
    g_path = out / "stylegan2-G.pt"
    torch.save({k: v.detach().contiguous() for k, v in generator.state_dict().items()}, str(g_path))
    (out / "stylegan2-config.json").write_text(json.dumps(kwargs, indent=1))
    torch.manual_seed(1)
    translator = StarGANGenerator.from_config(StarGANConfig(**STARGAN_CONFIGS[scale])).eval()
    t_path = save_stargan(translator, out / "200000-G.ckpt")
    g_loaded, _ = load_stylegan2(g_path)
    t_loaded, _ = load_stargan_generator(t_path)
    params = {"stylegan2": sum(p.numel() for p in g_loaded.parameters()),
              "stargan": sum(p.numel() for p in t_loaded.parameters())}
    json.dump({"generator_weights": str(g_path), "translator_weights": str(t_path), "scale": scale,
               "parameters": params}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
