"""Record synth output digests (procedural wds/folder/npz?, GAN path) to compare across the #12 redesign."""
import hashlib, json, sys, tempfile
from pathlib import Path
import torch
sys.path.insert(0, str(Path(sys.argv[1]) / "tests"))
from synth.conftest import dataset_hashes
from fertk.synth import SynthOptions, run_synth
from fertk.synth.run import FORMATS

def dig(root):
    return hashlib.sha256(json.dumps(dataset_hashes(root), sort_keys=True).encode()).hexdigest()

out = {}
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    for fmt in FORMATS:
        run_synth(SynthOptions(out=str(d / fmt), n=9, shard_size=4, batch=3, seed=5, intensity="0.5:1", format=fmt))
        out[f"procedural-{fmt}"] = dig(d / fmt)
    run_synth(SynthOptions(out=str(d / "filt"), n=9, shard_size=4, batch=3, seed=3))
    out["procedural-default"] = dig(d / "filt")
    from fertk.models.stargan import StarGANGenerator, save_stargan
    from fertk.models.stylegan2 import build_stylegan2, save_stylegan2
    g, t = d / "g.safetensors", d / "t.safetensors"
    save_stylegan2(build_stylegan2(seed=1)[0], g)
    torch.manual_seed(2)
    save_stargan(StarGANGenerator(conv_dim=8, c_dim=7, repeat_num=1, image_size=16), t)
    for be in ("torch", "auto"):
        run_synth(SynthOptions(out=str(d / f"gan{be}"), n=3, shard_size=2, batch=2, generator="stylegan2",
                               generator_weights=str(g), translator_weights=str(t), output_size=32, backend=be))
        out[f"gan-{be}"] = dig(d / f"gan{be}")
print(json.dumps(out, indent=1))
