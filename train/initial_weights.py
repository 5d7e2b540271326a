"""A run's starting network: from `model.pretrained` (a Google ViT .npz or a converted .ckpt), or
from scratch when it says `none`; an unset or missing file is refused when training starts."""
from __future__ import annotations

from pathlib import Path

from settings.schema import FROM_SCRATCH, Config
from train.checkpoint import TrainError

AUGREG = "https://storage.googleapis.com/vit_models/augreg/"
# The ImageNet-21k -> ImageNet-1k AugReg checkpoints the official code's backbones load (timm 0.4.12's
# default_cfgs); docs/weights.md#pretrained-weights lists them. B/8: the official code reads a local
# vit_base_patch8_384.pth it does not publish; the AugReg B/8 (224) is the published one.
IMAGENET_WEIGHTS = {
    "vit_tiny_patch16_384": "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384.npz",
    "vit_small_patch16_384": "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384.npz",
    "vit_base_patch16_384": "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384.npz",
    "vit_large_patch16_384": "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384.npz",
    "vit_base_patch8_384": "B_8-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz",
}


def _where_to_get(cfg: Config, target: str, then_set: bool = False) -> str:
    """Where the backbone's ImageNet weights come from, saved as `target`."""
    name = IMAGENET_WEIGHTS.get(cfg.model.backbone)
    source = (f"download {AUGREG}{name} and save it as {target} (mkdir -p {Path(target).parent}; wget -O {target} "
              "URL)") if name else "see docs/weights.md#pretrained-weights"
    if then_set:
        source += f", then set model.pretrained={target}"
    return f"{source}; or set model.pretrained={FROM_SCRATCH} to train from scratch"


def check_initial_weights(cfg: Config) -> None:
    """Before a new run creates anything: `model.pretrained` is `none` or names an existing file."""
    source = cfg.model.pretrained
    if source is None:
        raise TrainError(f"model.pretrained is not set: name the ImageNet weights {cfg.model.backbone} starts from "
                         f"({_where_to_get(cfg, f'pretrained/{cfg.model.backbone}.npz', then_set=True)})")
    if source != FROM_SCRATCH and not Path(source).is_file():
        raise TrainError(f"model.pretrained: {source}: file not found; {_where_to_get(cfg, source)}")


def initial_net(cfg: Config, log):
    """The network a new run starts from (`check_initial_weights` first); logs what filled it."""
    from weights.checkpoint import load_model
    from weights.convert import init_from_npz
    from model.segmenter import build_segmenter

    check_initial_weights(cfg)
    source = cfg.model.pretrained
    if source == FROM_SCRATCH:
        net = build_segmenter(cfg.model)
        log(f"initialised from scratch (model.pretrained: {FROM_SCRATCH}; random weights from seed {cfg.seed})")
        return net
    try:
        net = init_from_npz(source, cfg) if source.endswith(".npz") else load_model(source, cfg, starting=True)
    except ValueError as err:  # CheckpointError / ConfigError name the file and the mismatch
        raise TrainError(f"model.pretrained: {err}") from None
    names = [p.name for p in net.get_parameters()]
    if source.endswith(".npz"):  # every encoder tensor comes from the file (an exact match is required)
        loaded = sum(name.startswith("encoder.") for name in names)
        log(f"initialised from {loaded} tensors of {source} (the encoder; the decoder random from seed {cfg.seed})")
    else:
        log(f"initialised from {len(names)} tensors of {source}")
    return net
