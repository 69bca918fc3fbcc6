"""`fertk train stargan`: train a StarGAN expression translator on a dataset or procedural faces."""

from __future__ import annotations

from pathlib import Path

import typer

from fertk.cli.options import JSON_OPTION, err, out, print_json
from fertk.cli.progress import progress_display


def train_stargan_command(
    dataset: str = typer.Argument(..., help="Dataset folder (any layout fertk reads, or a `fertk synth` output), "
                                            "or the word `procedural` for built-in procedural faces."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, sample grids, losses.csv."),
    image_size: int = typer.Option(64, "--image-size", help="Training resolution (square, multiple of 4)."),
    conv_dim: int = typer.Option(64, "--conv-dim", help="Width of G's and D's first layers."),
    repeat_num: int = typer.Option(6, "--repeat-num", help="Residual blocks in G."),
    d_repeat_num: int | None = typer.Option(None, "--d-repeat-num", help="Stride-2 convs in D (default: up to 6, "
                                                                        "leaving a 2x2 map)."),
    iters: int = typer.Option(200_000, "--iters", help="Training iterations (D steps)."),
    iters_decay: int | None = typer.Option(None, "--iters-decay", help="Linear LR decay over the last N "
                                                                      "iterations (default: half of --iters)."),
    batch: int = typer.Option(16, "--batch", help="Batch size."),
    n_critic: int = typer.Option(5, "--n-critic", help="D updates per G update."),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate of G and D."),
    sample_every: int = typer.Option(1000, "--sample-every", help="Write a sample grid every N iterations."),
    save_every: int = typer.Option(10_000, "--save-every", help="Write a checkpoint every N iterations."),
    checkpoint_format: str = typer.Option("both", "--checkpoint-format",
                                          help="ckpt (official state dicts), safetensors, or both."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, batch order and augmentation."),
    with_neutral: bool = typer.Option(False, "--with-neutral", help="Train 7 labels in the StarGAN authors' "
                                                                    "order (with neutral) instead of the 6 Ekman."),
    procedural_identities: int = typer.Option(200, "--procedural-identities",
                                              help="Identities rendered when DATASET is `procedural`."),
    layout: str = typer.Option("auto", "--layout", help="Dataset layout (see the data readers)."),
    detect: str = typer.Option("auto", "--detect", help="Face detection for dataset images: auto, haar, box, none."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not draw a progress bar on stderr."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Train a StarGAN translator (WGAN-GP + domain + cycle losses) and print where its checkpoints are."""
    from fertk.train.stargan import load_training_faces, train_stargan
    from fertk.train.stargan_config import StarGANTrainConfig

    config = StarGANTrainConfig(
        image_size=image_size, conv_dim=conv_dim, repeat_num=repeat_num, d_repeat_num=d_repeat_num,
        with_neutral=with_neutral, num_iters=iters,
        num_iters_decay=iters // 2 if iters_decay is None else iters_decay,
        batch_size=batch, n_critic=n_critic, g_lr=lr, d_lr=lr, seed=seed,
        sample_every=sample_every, save_every=save_every, checkpoint_format=checkpoint_format,
        device=device, resume=resume,
    )
    with progress_display("training StarGAN", enabled=not no_progress) as progress:
        data = load_training_faces(dataset, config, procedural_identities=procedural_identities,
                                   layout=layout, detect=detect, progress=progress)
        result = train_stargan(config, data, out_dir, progress=progress)
    if json_output:
        print_json(result.to_dict())
        return
    out.print(f"trained StarGAN to iteration {result.iterations} (from {result.start_iteration}) "
              f"on {result.samples_used} faces, labels {', '.join(result.classes)} in {result.seconds:.1f} s")
    out.print(f"generator: {result.generator}")
    out.print(f"discriminator: {result.discriminator}")
    out.print(f"samples: {out_dir / 'samples'}   losses: {result.losses_csv}")
    if result.final_losses:
        out.print("final losses: " + ", ".join(f"{k}={v:.4f}" for k, v in result.final_losses.items()))
    if result.samples_dropped:
        err.print("left out (label not trained): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(result.samples_dropped.items())))
