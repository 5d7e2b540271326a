"""Model weights on disk: checkpoints, their configs, and import of official releases and ImageNet ViT weights with bounded readers."""
