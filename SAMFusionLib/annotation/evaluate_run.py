"""``samfusion evaluate`` as a run over a folder: one unit of work per image, resumable.

The unit of work is ``evaluate_image``: one image, every (method, protocol) still to do, scored
(``evaluate.score_*``). It runs here one image after another, or as one Dask task per image
(``batch.cluster``); either way this process alone writes, and the figures are computed over the
images in folder order, so the table does not depend on where or in which order images ran.

Resumable: each (image, method, protocol) result is kept in ``OUT/evaluate-parts/<key>.npz``
(written atomically as it arrives). The key hashes the image's pixels, its targets, the method's
model fingerprint and options, the protocol, the prompt and the target filter, so a re-run after an
interruption, or with one model more, computes only what is missing, and a changed label or option
is never answered from an old result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from SAMFusionLib.annotation import evaluate
from SAMFusionLib.annotation.detection import ImageCounts
from SAMFusionLib.annotation.labels_io import LabelError, Target, list_images, read_grey
from SAMFusionLib.errors import Cancelled, SamFusionError
from SAMFusionLib.imaging.atomic import atomic_path

PARTS_FOLDER = "evaluate-parts"


@dataclass(frozen=True)
class Method:
    """One row of the table: its prompted and automatic callables and what identifies its answers."""

    prompted: Callable
    automatic: Callable
    fingerprint: str  # the model's weights and the method's options; part of every result's key


@dataclass(frozen=True)
class MethodSpec:
    """What to evaluate, as plain values: a Dask worker builds the same methods from it."""

    model_ids: tuple[str | None, ...] = (None,)
    checkpoint: str | None = None
    device: str = "auto"
    zoom: str = "auto"
    points_per_side: int = 16
    pred_iou: float = 0.7
    stability: float = 0.85
    target_filter: evaluate.TargetFilter = evaluate.TargetFilter()
    classical: bool = True

    def build(self) -> dict[str, Method]:
        """{row name: Method}: each model (then the checkpoint), then the classical baseline."""
        from SAMFusionLib.sam.models import load_model
        from SAMFusionLib.sam.segmenter import encoder_precision

        models = [load_model(model_id, device=self.device) for model_id in self.model_ids]
        if self.checkpoint is not None:
            models.append(load_model(checkpoint=Path(self.checkpoint), device=self.device))
        methods = {}
        for model in models:
            options = (f"zoom={self.zoom};grid={self.points_per_side};iou={self.pred_iou};stability={self.stability};"
                       f"precision={encoder_precision(model)}")  # what the methods' Segmenters encode at
            methods[model.model_id] = Method(evaluate.sam_prompted(model, self.zoom),
                                             evaluate.sam_automatic(model, self.points_per_side, self.pred_iou, self.stability),
                                             f"{model.fingerprint};{options}")
        if self.classical:
            methods[evaluate.CLASSICAL] = Method(evaluate.classical_prompted(self.target_filter.dark),
                                                 evaluate.classical_automatic(self.target_filter), "classical")
        return methods


@dataclass(frozen=True)
class Job:
    """What every image is asked: the protocols, the prompt and the target filter."""

    protocols: tuple[str, ...]
    prompt: str = "point"
    target_filter: evaluate.TargetFilter = evaluate.TargetFilter()


def evaluate_image(image: np.ndarray, targets: list[Target], methods: dict[str, Method], todo: list[tuple[str, str]], job: Job) -> dict:
    """{(method, protocol): scored ``ImageResult`` without its image} for one (H, W) uint8 image."""
    results = {}
    for name, protocol in todo:
        result = evaluate.ImageResult("", image, targets)
        if protocol == "prompted":
            evaluate.score_prompted(result, [methods[name].prompted(image, t, job.prompt) for t in targets], job.prompt)
        else:
            evaluate.score_automatic(result, methods[name].automatic(image), job.target_filter)
        result.image, result.targets = None, []  # the caller has both; not shipped back from a worker
        results[(name, protocol)] = result
    return results


def result_key(image: np.ndarray, targets: list[Target], fingerprint: str, protocol: str, job: Job) -> str:
    digest = hashlib.sha256(json.dumps([fingerprint, protocol, job.prompt, asdict(job.target_filter)]).encode())
    digest.update(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    for target in targets:
        digest.update(target.category.encode())
        for array in (target.box_xyxy, target.points_xy, target.point_labels, target.mask):
            if array is not None:
                digest.update(str(np.asarray(array).dtype).encode() + str(np.shape(array)).encode())
                digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:32]


def save_part(result: evaluate.ImageResult, path: Path) -> None:
    meta = {"per_target": result.per_target, "scores": result.scores, "counts": None if result.counts is None else asdict(result.counts)}
    predictions = np.array([np.packbits(m.astype(bool)) for m in result.predictions], np.uint8)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as stream:
            np.savez_compressed(stream, predictions=predictions, meta=np.array(json.dumps(meta)))


def load_part(path: Path, name: str, image: np.ndarray, targets: list[Target]) -> evaluate.ImageResult:
    with np.load(path) as stored:
        meta = json.loads(str(stored["meta"]))
        pixels = image.shape[0] * image.shape[1]
        masks = [np.unpackbits(row)[:pixels].reshape(image.shape).astype(bool) for row in stored["predictions"]]
    counts = None if meta["counts"] is None else ImageCounts(**meta["counts"])
    return evaluate.ImageResult(name, image, targets, masks, meta["scores"], meta["per_target"], counts)


def serial_runner(methods: dict[str, Method], job: Job) -> Callable:
    """A ``runner`` that evaluates the images here, one after another."""

    def run(pending: list[tuple[int, Path, list[tuple[str, str]]]], loaded: list) -> Iterator:
        for index, _, todo in pending:
            _, image, targets, _ = loaded[index]
            try:
                yield index, evaluate_image(image, targets, methods, todo, job), None
            except Cancelled:
                raise
            except SamFusionError as error:
                yield index, None, f"{loaded[index][0]}: {error}"

    return run


def evaluate_folder(images_dir: Path, targets_of: Callable[[Path, tuple[int, int]], list[Target]], fingerprints: dict[str, str],
                    runner: Callable, job: Job, out: Path, samples: int = 1000, progress: bool = True,
                    select: Callable[[Path], bool] | None = None) -> evaluate.Evaluation:
    """Evaluate every method (``fingerprints``: row name -> fingerprint) on every readable image.

    ``runner(pending, loaded)`` yields (image index, {(method, protocol): result} or None, failure
    or None) for each pending (index, path, todo) in any order. Unreadable images or labels, and
    images whose task failed, are listed in ``failures`` (one line each), never silently dropped.
    """
    from tqdm import tqdm

    loaded, failures = [], []
    for path in list_images(images_dir):
        if select is not None and not select(path):
            continue
        try:
            image = read_grey(path)
            loaded.append((path.name, image, targets_of(path, image.shape), path))
        except LabelError as error:
            failures.append(str(error))
    if not loaded:
        raise SamFusionError("no image could be evaluated: " + "; ".join(failures[:3]))
    parts = Path(out) / PARTS_FOLDER
    parts.mkdir(parents=True, exist_ok=True)
    pairs = [(name, protocol) for name in fingerprints for protocol in job.protocols]
    part_of = {(index, pair): parts / f"{result_key(image, targets, fingerprints[pair[0]], pair[1], job)}.npz"
               for index, (_, image, targets, _) in enumerate(loaded) for pair in pairs}
    pending = []
    for index, (_, _, _, path) in enumerate(loaded):
        todo = [pair for pair in pairs if not part_of[(index, pair)].exists()]
        if todo:
            pending.append((index, path, todo))
    failed = set()
    for index, results, failure in tqdm(runner(pending, loaded), total=len(pending), desc="evaluate", unit="image", disable=not progress):
        if failure is not None:
            failures.append(failure)
            failed.add(index)
            continue
        for pair, result in results.items():
            save_part(result, part_of[(index, pair)])
    rows, examples = {}, {}
    for name, protocol in pairs:
        results = [load_part(part_of[(index, (name, protocol))], image_name, image, targets)
                   for index, (image_name, image, targets, _) in enumerate(loaded) if index not in failed]
        if not results:
            raise SamFusionError("no image could be evaluated: " + "; ".join(failures[:3]))
        figures = evaluate.prompted_figures if protocol == "prompted" else evaluate.automatic_figures
        rows.setdefault(name, {})[protocol] = figures(results, samples)
        examples[f"{name} ({protocol})"] = results
    return evaluate.Evaluation(rows, failures, examples, len(loaded) - len(failed))
