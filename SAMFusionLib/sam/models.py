"""The model table and model loading.

Each table entry names an architecture, so that any checkpoint is rebuilt with the right
modules: segment-anything's own ``Sam``, ``ImageEncoderViT``, ``PromptEncoder`` and
``MaskDecoder``, built with ``checkpoint=None`` and then given the state dict, loaded with
``torch.load(..., weights_only=True, map_location=...)`` so GPU-saved files load on a CPU.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.sam.weights import ensure_cached, import_file, sha256_file, weights_dir


def resources_dir() -> Path:
    """The engine's data folder (model table, embedded model files): ``$SAMFUSION_RESOURCES``, else
    ``SAMFusionLib/Resources`` where the Slicer extension installs it, else the source tree's
    top-level ``Resources/``."""
    override = os.environ.get("SAMFUSION_RESOURCES")
    if override:
        return Path(override)
    engine = Path(__file__).resolve().parents[1]
    installed = engine / "Resources"
    return installed if (installed / "models.json").is_file() else engine.parent / "Resources"


@dataclass(frozen=True)
class ModelEntry:
    """One row of the model table."""

    id: str
    title: str
    architecture: str
    url: str | None = None
    filename: str | None = None
    sha256: str | None = None
    embedded: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelTable:
    default: str
    architectures: dict[str, dict[str, Any]]
    models: dict[str, ModelEntry]

    def entry(self, model_id: str) -> ModelEntry:
        if model_id not in self.models:
            raise SamFusionError(f"unknown model {model_id!r}; known models: {', '.join(self.models)}")
        return self.models[model_id]


def load_table(path: Path | None = None) -> ModelTable:
    """Read the model table (``Resources/models.json``) plus user entries from the cache's ``custom_models.json``."""
    path = path or resources_dir() / "models.json"
    data = json.loads(Path(path).read_text())
    custom = weights_dir() / "custom_models.json"
    rows = list(data["models"])
    if custom.exists():
        rows += json.loads(custom.read_text()).get("models", [])
    known = {"id", "title", "architecture", "url", "filename", "sha256", "embedded"}
    models = {
        row["id"]: ModelEntry(**{k: v for k, v in row.items() if k in known}, extra={k: v for k, v in row.items() if k not in known})
        for row in rows
    }
    for entry in models.values():
        if entry.architecture not in data["architectures"]:
            raise SamFusionError(f"model {entry.id!r} names unknown architecture {entry.architecture!r}")
    return ModelTable(data["default"], data["architectures"], models)


def build_sam(params: dict[str, Any]):
    """A randomly initialised ``segment_anything.modeling.Sam`` with the given architecture, in eval mode.

    ``params["encoder"] == "tinyvit"`` gives LiteMedSAM (``sam.lite``); otherwise SAM's own ViT.
    """
    if params.get("encoder") == "tinyvit":
        from SAMFusionLib.sam.lite import build_lite_sam

        return build_lite_sam(params)
    import torch
    from segment_anything.modeling import ImageEncoderViT, Sam

    from SAMFusionLib.sam.heads import prompt_encoder_and_decoder

    img_size, patch = params["img_size"], params["patch_size"]
    embed_dim = params["prompt_embed_dim"]
    grid = img_size // patch
    # The encoder is built first, as segment-anything's own builder does (the same random init order).
    encoder = ImageEncoderViT(
        img_size=img_size,
        patch_size=patch,
        embed_dim=params["encoder_embed_dim"],
        depth=params["encoder_depth"],
        num_heads=params["encoder_num_heads"],
        mlp_ratio=4,
        out_chans=embed_dim,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=params["window_size"],
        global_attn_indexes=tuple(params["encoder_global_attn_indexes"]),
    )
    prompt_encoder, mask_decoder = prompt_encoder_and_decoder(params, img_size, grid)
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def read_state_dict(path: Path) -> dict:
    """Load a checkpoint's state dict on the CPU. Accepts a bare state dict or ``{"model": ...}``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SamFusionError(f"checkpoint file not found: {path}")
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises many types for truncated/corrupt archives
        raise SamFusionError(f"cannot read checkpoint {path}: corrupt or truncated ({type(error).__name__})") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not data:
        raise SamFusionError(f"checkpoint {path} holds no state dict")
    return data


def infer_architecture(state_dict: dict, architectures: dict[str, dict[str, Any]]) -> str:
    """Name the table architecture whose parameter shapes fit ``state_dict``, or raise."""
    for name, params in architectures.items():
        if _fits(state_dict, params):
            return name
    raise SamFusionError("checkpoint matches no known SAM architecture (" + ", ".join(architectures) + ")")


def _fits(state_dict: dict, params: dict[str, Any]) -> bool:
    if params.get("encoder") == "tinyvit":
        return "image_encoder.patch_embed.seq.0.c.weight" in state_dict and "image_encoder.neck.0.weight" in state_dict
    grid = params["img_size"] // params["patch_size"]
    pos = state_dict.get("image_encoder.pos_embed")
    blocks = {key.split(".")[2] for key in state_dict if key.startswith("image_encoder.blocks.")}
    return (
        pos is not None
        and tuple(pos.shape) == (1, grid, grid, params["encoder_embed_dim"])
        and len(blocks) == params["encoder_depth"]
    )


@dataclass
class LoadedModel:
    """A ready SAM model with the identity the embedding cache needs.

    ``fingerprint`` changes whenever the weights change (the checkpoint's SHA256); an in-memory
    model without a file gets a random one, so its embeddings are never confused with another's.
    """

    sam: Any
    model_id: str
    architecture: str
    fingerprint: str
    device: str

    @property
    def img_size(self) -> int:
        return int(self.sam.image_encoder.img_size)

    @cached_property
    def inference_encoder(self):
        """The image encoder the engine runs: ``sam.image_encoder`` with its batch norms folded
        (``encoder_fold``), built at the first encode (40 ms; a run whose embeddings are all cached
        never builds it); the encoder itself where there is nothing to fold."""
        from SAMFusionLib.sam.encoder_fold import fold_batch_norms

        return fold_batch_norms(self.sam.image_encoder)[0]


def from_module(sam, model_id: str = "in-memory", architecture: str = "custom", device: str = "cpu") -> LoadedModel:
    """Wrap an already built ``Sam`` (tests, training) without a checkpoint file."""
    return LoadedModel(sam.to(device).eval(), model_id, architecture, "mem-" + uuid.uuid4().hex, device)


def load_model(
    model_id: str | None = None,
    checkpoint: Path | None = None,
    architecture: str | None = None,
    device: str = "auto",
    table: ModelTable | None = None,
    show_progress: bool = True,
) -> LoadedModel:
    """Load a model by table id (downloading and verifying when needed) or from a checkpoint file.

    Args:
        model_id: a table id; the table's default (the fine-tuned LiteMedSAM) when both this and
            ``checkpoint`` are None.
        checkpoint: a ``.pth`` file to use directly (offline import path).
        architecture: the architecture of ``checkpoint``; inferred from its shapes when None.
        device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    """
    from SAMFusionLib.device import select_device

    if model_id is not None and checkpoint is not None:
        raise SamFusionError("give either a model name or a checkpoint file, not both")
    table = table or load_table()
    if checkpoint is not None:
        path = Path(checkpoint)
        state = read_state_dict(path)
        arch = architecture or infer_architecture(state, table.architectures)
        if arch not in table.architectures:
            raise SamFusionError(f"unknown architecture {arch!r}; known: {', '.join(table.architectures)}")
        label = path.stem
        digest = sha256_file(path)
    else:
        entry = table.entry(model_id or table.default)
        arch, label = entry.architecture, entry.id
        state, digest = _entry_state(table, entry, show_progress)
    sam = build_sam(table.architectures[arch])
    try:
        sam.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise SamFusionError(f"checkpoint {path.name} does not fit architecture {arch!r}: {first[:200]}") from None
    chosen = select_device(device)
    return LoadedModel(sam.to(chosen).eval(), label, arch, digest, chosen)


def _entry_state(table: ModelTable, entry: ModelEntry, show_progress: bool) -> tuple[dict, str]:
    """(state dict, fingerprint) of a table entry.

    An entry with a ``base`` stores only what fine-tuning changed (prompt encoder and mask decoder):
    its file is laid over the base entry's verified weights, and the fingerprint names both files.
    """
    path = _entry_path(entry, show_progress)
    digest = entry.sha256 or sha256_file(path)
    state = read_state_dict(path)
    base_id = entry.extra.get("base")
    if base_id is None:
        return state, digest
    from SAMFusionLib.sam.lite import decoder_keys

    base = table.entry(base_id)
    if base.architecture != entry.architecture:
        raise SamFusionError(f"model {entry.id!r} and its base {base_id!r} name different architectures")
    if set(decoder_keys(state)) != set(state):
        raise SamFusionError(f"{path.name} must hold only prompt-encoder and mask-decoder weights (it is laid over {base_id!r})")
    base_state, base_digest = _entry_state(table, base, show_progress)
    return {**base_state, **state}, f"{base_digest}+{digest}"


def _entry_path(entry: ModelEntry, show_progress: bool, progress: Callable | None = None, cancelled: Callable | None = None) -> Path:
    if entry.extra.get("package_file"):
        from SAMFusionLib.sam.lite import package_file

        path = package_file(entry.extra["package_file"])
        if entry.sha256 and sha256_file(path) != entry.sha256:
            raise SamFusionError(f"{path} does not match the model table's SHA256 for {entry.id!r}; reinstall its package")
        return path
    if entry.embedded:
        path = resources_dir() / entry.embedded
        if not path.is_file():
            recipe = "make lite-model" if entry.extra.get("base") else "make demo-model"
            raise SamFusionError(f"the embedded model file {path} is missing; reinstall SAMFusion, or run '{recipe}' to train it")
        if entry.sha256 and sha256_file(path) != entry.sha256:
            raise SamFusionError(f"the embedded model file {path} is corrupt (SHA256 mismatch with the model table)")
        return path
    if entry.extra.get("path"):
        return Path(entry.extra["path"])
    return ensure_cached(entry.id, entry.url, entry.filename or f"{entry.id}.pth", entry.sha256, show_progress, progress, cancelled)


def weights_on_disk(model_id: str, table: ModelTable | None = None) -> bool:
    """Whether loading table model ``model_id`` needs no download: its weights (and its base's) ship
    with SAMFusion or its packages, lie at a given path, or are in the cache. Checks presence only,
    and imports nothing heavy; the load itself verifies the SHA256."""
    table = table or load_table()
    entry = table.entry(model_id)
    base_id = entry.extra.get("base")
    if base_id is not None and not weights_on_disk(base_id, table):
        return False
    if entry.extra.get("package_file") or entry.embedded or entry.extra.get("path"):
        return True
    return (weights_dir() / (entry.filename or f"{entry.id}.pth")).is_file()


def fetch_weights(model_id: str, table: ModelTable | None = None, show_progress: bool = True,
                  progress: Callable | None = None, cancelled: Callable | None = None) -> Path:
    """The verified weights file of a table model, downloading it when needed; builds no model.
    ``progress`` and ``cancelled`` as in ``weights.download_file``."""
    table = table or load_table()
    return _entry_path(table.entry(model_id), show_progress, progress, cancelled)


def import_weights(model_id: str, source: Path, table: ModelTable | None = None) -> Path:
    """Offline path: verify ``source`` against the table's SHA256 and place it in the cache."""
    entry = (table or load_table()).entry(model_id)
    if entry.embedded or entry.extra.get("package_file"):
        raise SamFusionError(f"model {model_id!r} is shipped with SAMFusion or its packages and needs no import")
    return import_file(entry.id, Path(source), entry.filename or f"{entry.id}.pth", entry.sha256)

