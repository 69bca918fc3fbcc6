"""StarGAN G and D: parity with the official code's golden outputs, the norm-mode contract,
checkpoint loading (inference of the architecture, typed errors), graded translation, ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fertk.core.emotions import EKMAN, STARGAN_AUTHORS_ORDER
from fertk.core.errors import CheckpointError, InvalidInputError
from fertk.core.io import sha256_file
from fertk.models.registry import get_entry, load_model
from fertk.models.stargan import (
    StarGANDiscriminator,
    StarGANGenerator,
    load_stargan_discriminator,
    load_stargan_generator,
    save_stargan,
)

ATOL = 1e-5
VARIANTS = [("stargan_small-G.ckpt", "stargan_small-io.safetensors"),
            ("stargan_small_perturbed-G.ckpt", "stargan_small_perturbed-io.safetensors")]


def _buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def _same_buffers(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("weights,io", VARIANTS)
def test_generator_matches_official_outputs_in_both_norm_modes(golden_dir: Path, weights: str, io: str) -> None:
    G, card = load_stargan_generator(golden_dir / weights)
    ref = load_file(str(golden_dir / io))
    assert (G.config.conv_dim, G.config.c_dim, G.config.repeat_num) == (16, 7, 2)  # inferred from shapes
    assert card.config["classes"] == list(STARGAN_AUTHORS_ORDER)
    assert not G.training  # loaders hand back eval-mode models ...
    before = _buffers(G)
    with torch.no_grad():
        y = G(ref["x"], ref["c"])
    # ... which still give the official (train-mode, per-sample) output, and mutate nothing.
    torch.testing.assert_close(y, ref["y"], atol=ATOL, rtol=0)
    assert _same_buffers(before, _buffers(G))
    G.train()
    with torch.no_grad():
        torch.testing.assert_close(G(ref["x"], ref["c"]), ref["y"], atol=ATOL, rtol=0)
    assert _same_buffers(before, _buffers(G)), "no_grad inference must not update running stats"

    G.eval()
    G.norm_mode = "running"  # the official model's eval-mode output, from the stored running stats
    with torch.no_grad():
        torch.testing.assert_close(G(ref["x"], ref["c"]), ref["y_eval"], atol=ATOL, rtol=0)
    assert (ref["y"] - ref["y_eval"]).abs().max() > 0.5  # the two modes really differ


def test_train_step_forward_updates_running_stats_like_the_official_code(golden_dir: Path) -> None:
    G, _ = load_stargan_generator(golden_dir / "stargan_small_perturbed-G.ckpt")
    ref = load_file(str(golden_dir / "stargan_small_perturbed-io.safetensors"))
    before = _buffers(G)
    G.train()
    y = G(ref["x"], ref["c"])  # grad enabled: a training forward
    torch.testing.assert_close(y.detach(), ref["y"], atol=ATOL, rtol=0)
    after = _buffers(G)
    # running = 0.9 * running + 0.1 * batch mean of per-sample means (first norm, checked by hand).
    x0 = torch.nn.functional.conv2d(torch.cat([ref["x"], ref["c"][:, :, None, None].expand(-1, -1, 64, 64)], 1),
                                    G.main[0].weight, padding=3)
    expected = 0.9 * before["main.1.running_mean"] + 0.1 * x0.mean(dim=(2, 3)).mean(0)
    torch.testing.assert_close(after["main.1.running_mean"], expected.detach(), atol=1e-5, rtol=1e-5)
    assert not torch.equal(before["main.9.main.4.running_var"], after["main.9.main.4.running_var"])


def test_discriminator_matches_official_outputs(golden_dir: Path) -> None:
    D, card = load_stargan_discriminator(golden_dir / "stargan_small-D.ckpt")
    ref = load_file(str(golden_dir / "stargan_small-D-io.safetensors"))
    cfg = D.config
    assert (cfg.image_size, cfg.conv_dim, cfg.c_dim, cfg.repeat_num) == (64, 16, 7, 4)
    with torch.no_grad():
        out_src, out_cls = D(ref["x"])
    torch.testing.assert_close(out_src, ref["out_src"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out_cls, ref["out_cls"], atol=ATOL, rtol=0)
    assert card.outputs[0]["shape"] == ["batch", 1, 4, 4] and card.outputs[1]["shape"] == ["batch", 7]


def test_state_dict_layout_is_the_official_one(golden_dir: Path) -> None:
    for net, model in (("G", StarGANGenerator(16, 7, 2)), ("D", StarGANDiscriminator(64, 16, 7, 4))):
        expected = json.loads((golden_dir / f"stargan_small-{net}-keys.json").read_text())
        ours = [{"key": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                for k, v in model.state_dict().items()]
        assert ours == expected


def test_registry_loads_official_checkpoints_with_cards(golden_dir: Path) -> None:
    assert get_entry("stargan").task == "translator"
    assert get_entry("stargan-d").task == "discriminator"
    path = golden_dir / "stargan_small-G.ckpt"
    G, card = load_model("stargan", weights=path)
    assert isinstance(G, StarGANGenerator)
    assert card.weights_sha256 == sha256_file(path) and card.source == str(path)
    assert [i["name"] for i in card.inputs] == ["x", "c"] and card.inputs[1]["shape"] == ["batch", 7]
    assert card.extra["classes"] == list(STARGAN_AUTHORS_ORDER) and card.extra["parameters"] == 240_400
    D, dcard = load_model("stargan-d", weights=golden_dir / "stargan_small-D.ckpt")
    assert dcard.config["image_size"] == 64 and dcard.extra["parameters"] == 188_528


def test_wrong_or_broken_checkpoints_raise_one_line_checkpoint_errors(golden_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="looks like a StarGAN discriminator") as info:
        load_stargan_generator(golden_dir / "stargan_small-D.ckpt")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="looks like a StarGAN generator"):
        load_stargan_discriminator(golden_dir / "stargan_small-G.ckpt")
    with pytest.raises(CheckpointError, match="does not match StarGANGenerator") as info:
        load_stargan_generator(golden_dir / "stargan_small-G.ckpt", {"conv_dim": 32})
    assert "\n" not in str(info.value)
    truncated = tmp_path / "100-G.ckpt"
    truncated.write_bytes((golden_dir / "stargan_small-G.ckpt").read_bytes()[:50_000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_stargan_generator(truncated)
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(CheckpointError, match="not a StarGAN generator"):
        load_stargan_generator(other)


def test_save_formats_round_trip_with_label_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    G = StarGANGenerator(8, 6, 1, classes=("happiness", "sadness", "anger", "fear", "disgust", "surprise"),
                         image_size=32)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c = torch.eye(6)[[0, 4]]
    with torch.no_grad():
        y = G(x, c)
    st = save_stargan(G, tmp_path / "7-G.safetensors")
    ckpt = save_stargan(G, tmp_path / "7-G.ckpt")
    # The .ckpt is the official format: a plain state dict that loads without unpickling code.
    plain = torch.load(str(ckpt), weights_only=True)
    assert list(plain) == list(G.state_dict())
    loaded_st, card_st = load_stargan_generator(st)
    assert loaded_st.classes == G.classes and card_st.config["image_size"] == 32  # from the header
    loaded_ckpt, card_ckpt = load_stargan_generator(ckpt)
    assert loaded_ckpt.classes == EKMAN  # a bare state dict: label order implied by c_dim 6
    for model in (loaded_st, loaded_ckpt):
        with torch.no_grad():
            torch.testing.assert_close(model(x, c), y, atol=0, rtol=0)
    assert not list(tmp_path.glob("*.tmp*"))


def test_translate_blends_target_and_source_labels(golden_dir: Path) -> None:
    G, _ = load_stargan_generator(golden_dir / "stargan_small_perturbed-G.ckpt")
    x = load_file(str(golden_dir / "stargan_small_perturbed-io.safetensors"))["x"][:2]
    neutral = torch.zeros(2, 7)
    neutral[:, STARGAN_AUTHORS_ORDER.index("neutral")] = 1
    happy = torch.zeros(2, 7)
    happy[:, STARGAN_AUTHORS_ORDER.index("happiness")] = 1
    before = _buffers(G)
    with torch.no_grad():
        full, none, half = G(x, happy), G(x, neutral), G(x, 0.3 * happy + 0.7 * neutral)
    torch.testing.assert_close(G.translate(x, "happy"), full, atol=0, rtol=0)
    torch.testing.assert_close(G.translate(x, 3, alpha=0.0), none, atol=0, rtol=0)
    torch.testing.assert_close(G.translate(x, ["happiness", "happiness"], alpha=0.3), half, atol=0, rtol=0)
    sad = STARGAN_AUTHORS_ORDER.index("sadness")
    torch.testing.assert_close(G.translate(x, "happiness", source="sad", alpha=0.5),
                               G(x, 0.5 * happy + 0.5 * torch.eye(7)[[sad, sad]]), atol=0, rtol=0)
    # Graded: the output moves monotonically away from the neutral rendering as alpha grows.
    steps = [float((G.translate(x, "happiness", alpha=a) - none).abs().mean()) for a in (0.25, 0.5, 1.0)]
    assert steps[0] < steps[1] < steps[2]
    assert _same_buffers(before, _buffers(G))
    # Without neutral in the label set the default source is all zeros.
    G6 = StarGANGenerator(8, 6, 1)
    with torch.no_grad():
        torch.testing.assert_close(G6.translate(x, "fear", alpha=0.4), G6(x, 0.4 * torch.eye(6)[[2, 2]]))
    with pytest.raises(InvalidInputError, match="not one of this generator's labels"):
        G6.translate(x, "neutral")
    with pytest.raises(InvalidInputError, match=r"expects x of shape \[N, 3, H, W\]"):
        G6(torch.zeros(2, 1, 32, 32), torch.zeros(2, 6))


def test_onnx_export_of_eval_mode_generator_matches_official_output(golden_dir: Path, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    G, _ = load_stargan_generator(golden_dir / "stargan_small-G.ckpt")
    ref = load_file(str(golden_dir / "stargan_small-io.safetensors"))
    G.eval()
    path = tmp_path / "stargan_g.onnx"
    batch = torch.export.Dim("batch")
    torch.onnx.export(G, (ref["x"][:2], ref["c"][:2]), str(path), input_names=["x", "c"], output_names=["y"],
                      opset_version=17, dynamic_shapes={"x": {0: batch}, "c": {0: batch}})
    import onnx

    graph = onnx.load(str(path))
    assert {op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")} == {17}
    assert sum(n.op_type == "InstanceNormalization" for n in graph.graph.node) == 9
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": ref["x"].numpy(), "c": ref["c"].numpy()})  # batch 4, exported at 2
    np.testing.assert_allclose(y, ref["y"].numpy(), atol=1e-4, rtol=0)


def _reference_generator(state: dict[str, torch.Tensor], x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The official G written out in torch.nn.functional from the golden README's layout facts
    (train-mode InstanceNorm: per-sample statistics, eps 1e-5), independent of fertk's module."""
    def norm(h: torch.Tensor, i: str) -> torch.Tensor:
        return F.instance_norm(h, weight=state[f"main.{i}.weight"], bias=state[f"main.{i}.bias"], eps=1e-5)

    repeat = sum(1 for k in state if k.endswith(".main.0.weight"))
    h = torch.cat([x, c[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])], dim=1)
    h = F.relu(norm(F.conv2d(h, state["main.0.weight"], padding=3), "1"))
    for conv, nrm in (("3", "4"), ("6", "7")):
        h = F.relu(norm(F.conv2d(h, state[f"main.{conv}.weight"], stride=2, padding=1), nrm))
    for block in range(9, 9 + repeat):
        r = F.relu(norm(F.conv2d(h, state[f"main.{block}.main.0.weight"], padding=1), f"{block}.main.1"))
        h = h + norm(F.conv2d(r, state[f"main.{block}.main.3.weight"], padding=1), f"{block}.main.4")
    for up in (9 + repeat, 12 + repeat):
        h = F.relu(norm(F.conv_transpose2d(h, state[f"main.{up}.weight"], stride=2, padding=1), str(up + 1)))
    return torch.tanh(F.conv2d(h, state[f"main.{15 + repeat}.weight"], padding=3))


@pytest.mark.parametrize("weights,io", VARIANTS)
@pytest.mark.parametrize("size", [64, 128])
def test_generator_at_a_given_size_matches_the_golden_model_at_that_size(golden_dir: Path, weights: str, io: str,
                                                                         size: int) -> None:
    """`--translator-size` → config image_size: the card says so, and at 64 px (the golden size)
    and 128 px G matches the golden weights run by an independent functional implementation."""
    state = torch.load(golden_dir / weights, weights_only=True)
    ref = load_file(str(golden_dir / io))
    G, card = load_stargan_generator(golden_dir / weights, {"image_size": size}, size_source="--translator-size")
    assert card.config["image_size"] == size and card.extra["image_size"] == size
    assert card.extra["image_size_source"] == "given (--translator-size)"
    assert card.inputs[0]["shape"] == ["batch", 3, size, size] and card.outputs[0]["shape"][2:] == [size, size]
    x = ref["x"] if size == 64 else F.interpolate(ref["x"], size=(size, size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        y = G(x, ref["c"])
        expected = _reference_generator(state, x, ref["c"])
    assert y.shape == (4, 3, size, size)
    if size == 64:
        torch.testing.assert_close(expected, ref["y"], atol=ATOL, rtol=0)  # the reference is the official output
    torch.testing.assert_close(y, expected, atol=ATOL, rtol=0)


def test_card_says_a_checkpoint_stores_no_image_size(golden_dir: Path, tmp_path: Path) -> None:
    _, card = load_stargan_generator(golden_dir / "stargan_small-G.ckpt")
    assert card.config["image_size"] == 128
    assert card.extra["image_size_source"].startswith("not stored in stargan_small-G.ckpt")
    assert "--translator-size" in card.extra["image_size_source"]
    G, _ = load_stargan_generator(golden_dir / "stargan_small-G.ckpt", {"image_size": 256})
    saved = save_stargan(G, tmp_path / "g256.safetensors")  # a fertk file stores its size
    G2, card2 = load_stargan_generator(saved)
    assert G2.config.image_size == 256 and card2.extra["image_size_source"] == "stored in g256.safetensors"
