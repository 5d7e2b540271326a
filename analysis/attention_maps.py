"""Attention maps: each head's attention over the image at one encoder or decoder layer, for the
patch of a chosen pixel, a class embedding (decoder) or the class token (encoder): the maps the
official `segm/scripts/show_attn_map.py` draws, as one PNG grid per query (docs/inference.md).

The weights are the network's own: a forward pre-hook catches the tokens the chosen block's
attention cell receives during an ordinary forward pass, and the cell's `attend` turns them into
the softmax probabilities its forward used. The image is resized as `predict` resizes it (the
config's `eval.infer_size`) and the network sees all of it; the official script crops a square at
the top left, which leaves a square image at that size unchanged (the golden test's case).
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

import numpy as np

from base.errors import UserError
from base.figures import figure, figure_png

PARTS = {"enc": "encoder", "dec": "decoder"}
KIND = "attention"  # the command named in the output folder's ownership log and lock


class AttentionError(UserError, ValueError):
    """A layer, pixel or class the attention maps cannot be made for."""


@dataclass(frozen=True)
class Layer:
    part: str  # "enc" or "dec"
    index: int  # 0-based, counted from the first block

    @property
    def name(self) -> str:
        return f"{self.part}{self.index}"

    @property
    def leading(self) -> int:
        """Tokens before the patches: the encoder's class token."""
        return 1 if self.part == "enc" else 0

    @property
    def title(self) -> str:
        return f"{PARTS[self.part]} layer {self.index}"


@dataclass(frozen=True)
class Query:
    """One row of the attention matrix: `kind` "pixel" (y, x in the source image), "class" (index
    into the class table) or "token" (the encoder's class token)."""
    kind: str
    y: int = 0
    x: int = 0
    cls: int = 0
    label: str = ""  # part of the output name and the figure's title


def parse_layer(text: str, model) -> Layer:
    """`enc:N` or `dec:N` (N from 0, or negative from the last block) for `model` (a ModelConfig)."""
    m = re.fullmatch(r"\s*(enc|dec):(-?\d+)\s*", text)
    if not m:
        raise AttentionError(f"--layer {text!r}: expected enc:N or dec:N, e.g. enc:0 or dec:-1")
    part, index = m.group(1), int(m.group(2))
    if part == "dec" and model.decoder.name != "mask_transformer":
        raise AttentionError(f"--layer {text}: the {model.decoder.name} decoder has no attention "
                             "(only mask_transformer has); choose an encoder layer enc:N")
    n = model.n_layers if part == "enc" else model.decoder.n_layers
    if not -n <= index < n:
        raise AttentionError(f"--layer {text}: the {PARTS[part]} has {n} layers: 0..{n - 1} (or -{n}..-1)")
    return Layer(part, index % n)


def parse_pixel(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(-?\d+)\s*,\s*(-?\d+)\s*", text)
    if not m:
        raise AttentionError(f"--pixel {text!r}: expected Y,X (row, column in the image), e.g. 120,400")
    return int(m.group(1)), int(m.group(2))


def make_queries(layer: Layer, pixels, classes, class_token: bool, table, height: int, width: int) -> list:
    """The queries asked for, checked against the layer, the image's size and the class table."""
    queries = []
    for y, x in pixels:
        if not (0 <= y < height and 0 <= x < width):
            raise AttentionError(f"--pixel {y},{x}: outside the image ({height}x{width}: Y in 0..{height - 1}, "
                                 f"X in 0..{width - 1})")
        queries.append(Query("pixel", y=y, x=x, label=f"y{y}x{x}"))
    if classes and layer.part != "dec":
        raise AttentionError("--class: class embeddings are decoder tokens; choose a decoder layer dec:N "
                             "(for the encoder's class token: --class-token)")
    for name in classes:
        if name not in table.names:
            raise AttentionError(f"--class {name!r}: not a class of this model ({table.dataset}: "
                                 f"{', '.join(table.names[:8])}{', ...' if table.n_cls > 8 else ''})")
        c = table.names.index(name)
        queries.append(Query("class", cls=c, label=f"class{c}-{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}"))
    if class_token:
        if layer.part != "enc":
            raise AttentionError("--class-token: the class token is an encoder token; choose enc:N "
                                 "(decoder layers take --class NAME)")
        queries.append(Query("token", label="cls"))
    if not queries:
        raise AttentionError("give at least one query: --pixel Y,X"
                             + (", --class NAME" if layer.part == "dec" else " or --class-token"))
    return queries


def prepare(cfg, table, image_path, layer_text: str, pixels, classes, class_token: bool) -> tuple:
    """(layer, queries), checked before the model loads: the layer exists, each query fits the
    image (read from its header only) and the model, and one forward at the inference size fits
    this machine's memory."""
    from analysis.memory import too_large
    from base.images import read_info
    from base.network_input import inference_size

    layer = parse_layer(layer_text, cfg.model)
    info = read_info(image_path)
    queries = make_queries(layer, [parse_pixel(p) for p in pixels], classes, class_token, table, info.height,
                           info.width)
    size = inference_size(info.height, info.width, cfg.eval.infer_size, cfg.eval.max_long_side)
    problem = too_large(cfg.model, *size)
    if problem:
        raise AttentionError(f"{image_path}: resized to {size[0]}x{size[1]}: {problem}; a smaller --infer-size "
                             "needs less")
    return layer, queries


def layer_probabilities(net, image: np.ndarray, layer: Layer) -> np.ndarray:
    """(heads, T, T) attention probabilities of `layer` for one normalized (3, H, W) image, T the
    layer's tokens: class token + patches (encoder), patches + class embeddings (decoder)."""
    import mindspore as ms

    blocks = net.encoder.blocks if layer.part == "enc" else net.decoder.blocks
    cell = blocks[layer.index].attn
    caught = []
    handle = cell.register_forward_pre_hook(lambda _cell, args: caught.append(args[0]))
    try:
        net(ms.Tensor(image[None]))
    finally:
        handle.remove()
    return cell.attend(caught[0])[0].asnumpy()[0]


def query_row(layer: Layer, query: Query, grid: tuple, cell) -> int:
    """The query's row of the layer's attention matrix; `cell`: a pixel query's patch (row, col)."""
    if query.kind == "pixel":
        return layer.leading + cell[0] * grid[1] + cell[1]
    return grid[0] * grid[1] + query.cls if query.kind == "class" else 0


def attention_maps(net, cfg, rgb: np.ndarray, layer: Layer, queries) -> tuple:
    """For one uint8 RGB image: the network input (3, H', W'), the (heads, gh, gw) float32 maps
    per query over the padded patch grid, and per query its patch (row, col) or None."""
    from base.network_input import network_input

    e = cfg.eval
    image = network_input(rgb, cfg.model.mean, cfg.model.std, e.infer_size, e.max_long_side)
    p = cfg.model.patch_size
    grid = (math.ceil(image.shape[1] / p), math.ceil(image.shape[2] / p))
    # A source pixel lies in the patch of its position scaled to the network input.
    cells = [(int(q.y * image.shape[1] / rgb.shape[0]) // p, int(q.x * image.shape[2] / rgb.shape[1]) // p)
             if q.kind == "pixel" else None for q in queries]
    probs = layer_probabilities(net, image, layer)
    first = layer.leading
    maps = [probs[:, query_row(layer, q, grid, cell), first:first + grid[0] * grid[1]].reshape(-1, *grid)
            .astype(np.float32) for q, cell in zip(queries, cells)]
    return image, maps, cells


def attention_figure(rgb: np.ndarray, maps: np.ndarray, patch: int, cell, title: str):
    """A matplotlib Figure: the network's input image, then one labelled tile per head (its
    attention on the patch grid, each head on its own colour scale); `cell`: the query's patch
    (row, col), outlined on every tile, or None."""
    from matplotlib.patches import Rectangle

    h, w = rgb.shape[:2]
    tiles = 1 + len(maps)
    cols = math.ceil(math.sqrt(tiles))
    rows = math.ceil(tiles / cols)
    side = 3.0
    fig = figure(figsize=(cols * side * max(w / h, 1.0), rows * side * max(h / w, 1.0) + 0.5), layout="constrained")
    fig.suptitle(title, wrap=True)
    for i in range(tiles):
        ax = fig.add_subplot(rows, cols, i + 1)
        if i == 0:
            ax.imshow(rgb)
            ax.set_title("input")
        else:
            full = np.repeat(np.repeat(maps[i - 1], patch, 0), patch, 1)[:h, :w]
            ax.imshow(full, cmap="viridis", interpolation="nearest")
            ax.set_title(f"head {i - 1}")
        if cell is not None:
            ax.add_patch(Rectangle((cell[1] * patch - 0.5, cell[0] * patch - 0.5), patch, patch, fill=False,
                                   edgecolor="red"))
        ax.set_axis_off()
    return fig


def output_names(stem: str, layer: Layer, queries) -> list:
    """Per query the grid and the raw maps: `{stem}_{layer}_{query}.png` and `.npy`."""
    return [(f"{stem}_{layer.name}_{q.label}.png", f"{stem}_{layer.name}_{q.label}.npy") for q in queries]


def write_attention_maps(net, cfg, rgb: np.ndarray, stem: str, layer: Layer, queries, out_dir, written,
                         source: str, table) -> list:
    """Write each query's PNG grid and its raw maps (.npy) into `out_dir` through `written` (the
    folder's ownership log); the paths written."""
    from pathlib import Path

    image, maps, cells = attention_maps(net, cfg, rgb, layer, queries)
    # The picture of what the network saw: its input with the normalization undone.
    shown = np.clip(image.transpose(1, 2, 0) * np.asarray(cfg.model.std, np.float32)
                    + np.asarray(cfg.model.mean, np.float32), 0, 255).astype(np.uint8)
    paths = []
    for query, head, cell, (png, npy) in zip(queries, maps, cells, output_names(stem, layer, queries)):
        what = {"pixel": f"pixel ({query.y}, {query.x})", "token": "the class token"}.get(
            query.kind, f"class {table.names[query.cls]}")
        fig = attention_figure(shown, head, cfg.model.patch_size, cell, f"{Path(source).name}: {layer.title}, {what}")
        raw = io.BytesIO()
        np.save(raw, head)
        for name, data in ((png, figure_png(fig)), (npy, raw.getvalue())):
            written.write_bytes(Path(out_dir) / name, data)
            paths.append(Path(out_dir) / name)
    return paths
