"""StarGAN (Choi et al. 2018): the expression translator G and the PatchGAN critic D, in the
state-dict layout of the official yunjey/stargan code, so its `{iter}-G.ckpt` files load as is.

Normalisation. Every InstanceNorm in G is affine and tracks running stats (five state-dict
entries each). The official test path never calls eval(), so its outputs are normalised with the
statistics of each sample; the stored running stats never shape an output. Here that choice is
explicit: `norm_mode="instance"` (default) normalises with per-sample statistics whether the
module is in train or eval mode, so `model.eval()` (which exporters and users call) keeps the
official output and exports as ONNX InstanceNormalization. `norm_mode="running"` uses the stored
running stats instead, reproducing what the official model gives in eval mode (almost flat images
from a fresh model); it exists to compare against that behaviour, not to train.

Running stats are still kept up to date by training: a train-mode forward that records gradients
updates them (momentum 0.1, as the official code does), so saved checkpoints carry sensible
values. A forward under no_grad / inference_mode never touches a buffer, whatever the mode.

Expression intensity. The label vector c is tiled over the image and concatenated to it, so G
accepts any real-valued c. `StarGANGenerator.translate(x, target, source=None, alpha=1.0)` feeds
c = alpha * onehot(target) + (1 - alpha) * source, where source defaults to the neutral one-hot
when the label set has neutral and to zeros otherwise: alpha 1 is the trained expression, 0 the
source (neutral) face, values between give graded expressions (alpha > 1 extrapolates, outside
the trained range).

Input size. An official `{iter}-G.ckpt` stores no image size (G is fully convolutional, its
weights fit any size). fertk runs such a checkpoint at 128 px (the default, the paper pipeline's
size) unless told otherwise (config image_size, `--translator-size`; the authors trained at 256);
the card records the size and where it came from (`extra.image_size_source`). A fertk
safetensors file stores its size in its header.
"""
from fertk.models.stargan.io import (
    build_stargan, build_stargan_discriminator, discriminator_card, generator_card, image_size_source,
    infer_discriminator_config, infer_generator_config, load_stargan_discriminator, load_stargan_generator,
    save_stargan,
)
from fertk.models.stargan.networks import (
    DEFAULT_IMAGE_SIZE, NORM_MODES, ResidualBlock, StarGANConfig, StarGANDiscriminator, StarGANDiscriminatorConfig,
    StarGANGenerator, StarGANInstanceNorm, default_classes,
)

__all__ = [
    "DEFAULT_IMAGE_SIZE", "NORM_MODES",
    "ResidualBlock", "StarGANConfig", "StarGANDiscriminator", "StarGANDiscriminatorConfig", "StarGANGenerator",
    "StarGANInstanceNorm",
    "build_stargan", "build_stargan_discriminator", "default_classes", "discriminator_card", "generator_card",
    "image_size_source", "infer_discriminator_config", "infer_generator_config", "load_stargan_discriminator",
    "load_stargan_generator", "save_stargan",
]
