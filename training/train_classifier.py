"""Train the defect classifier on an imported dataset, in plain PyTorch.

Samples come from the detection labels, so one labeled dataset trains both models:
- each whole image: "good" when it has no box, else the class covering the most area;
- each labeled box with some context around it: its class;
- background crops that touch no box: "good" (what the verifier must learn to reject).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from sqlalchemy import select
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import inspection  # noqa: F401 - runtime preparation first
from db.models import Dataset as DatasetRow
from db.models import JobStatus, ModelKind, ModelVersion, TrainingJob, utcnow
from db.registry import get_model_version
from db.session import session_scope
from inspection.classifier import (
    BACKBONES,
    GOOD,
    DefectClassifier,
    crop_with_context,
    load_classifier,
    resize_square,
    save_classifier,
)
from inspection.errors import Stopped, UserError
from inspection.images import ImageDecodeError, decode_image, failed_write, write_fix
from inspection.settings import get_settings, resolve_device
from training.datasets import (
    check_folder_name,
    check_trainable,
    dataset_yaml,
    refuse_tiled_for_classifier,
    split_image_paths,
)
from training.jobs import check_runs_folder, process_start, record_job_end, this_host
from training.versions import register_model_version, registration_scope, weights_file

PROGRESS_EVERY_S = 30.0


class EpochProgress:
    """Where an epoch stands, every PROGRESS_EVERY_S: off a terminal tqdm is off (a log file or a
    service's journal would get its carriage returns), so an epoch over a large dataset printed
    nothing until it ended, and the Models page's bar moved only between epochs."""

    def __init__(
        self,
        epoch: int,
        epochs: int,
        batches: int,
        store: Callable[[float], None],
        echo: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        every_s: float | None = None,
    ) -> None:
        self.epoch, self.epochs, self.batches = epoch, epochs, max(batches, 1)
        self.store, self.clock = store, clock
        self.echo = not sys.stderr.isatty() if echo is None else echo  # (where tqdm is off)
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self.last = clock()

    def batch_done(self, losses: list[float]) -> None:
        now = self.clock()
        if now - self.last < self.every_s or len(losses) >= self.batches:
            return  # (the epoch's own line follows its last batch)
        self.last = now
        self.store((self.epoch + len(losses) / self.batches) / self.epochs)
        if self.echo:
            print(
                f"epoch {self.epoch + 1}/{self.epochs}: batch {len(losses)}/{self.batches}, "
                f"loss {np.mean(losses):.4f}",
                flush=True,
            )


def _store_progress(url: str, job_id: int, done: float) -> None:
    with session_scope(url) as session:
        job = session.get(TrainingJob, job_id)
        if job is not None:
            job.progress = done


@dataclass(frozen=True)
class Sample:
    image_index: int
    box: tuple[float, float, float, float] | None  # None: the whole image
    label: int


def read_split(
    root: Path, split: str
) -> tuple[list[np.ndarray], list[list[tuple[int, tuple[float, float, float, float]]]]]:
    """Decoded images of a split (in `split_image_paths` order) and their boxes in pixels.

    A grayscale image stays one channel (H x W): the whole split is held in memory, and
    one-channel boards (DeepPCB's) took three times the memory as RGB. Crops are
    made three channels by `resize_square`."""
    images, boxes = [], []
    for path in split_image_paths(root, split):
        try:
            pixels = decode_image(path.read_bytes()).source
        except ImageDecodeError as exc:
            # (Said without the file, "corrupt or truncated image: image file is truncated"
            # left the user to find it among the dataset's images.)
            raise UserError(
                f"dataset image {path} cannot be read: {exc}; replace it, or import the "
                "dataset again"
            ) from exc
        height, width = pixels.shape[:2]
        label_file = root / "labels" / split / f"{path.stem}.txt"
        found = []
        for line in label_file.read_text().splitlines() if label_file.exists() else []:
            if line.strip():
                c, cx, cy, w, h = (float(v) for v in line.split()[:5])
                found.append(
                    (
                        int(c),
                        (
                            (cx - w / 2) * width,
                            (cy - h / 2) * height,
                            (cx + w / 2) * width,
                            (cy + h / 2) * height,
                        ),
                    )
                )
        images.append(pixels)
        boxes.append(found)
    return images, boxes


def part_label(boxes: list[tuple[int, tuple[float, float, float, float]]]) -> int:
    """0 (good) without boxes, else 1 + the defect class covering the most area."""
    if not boxes:
        return 0
    area: dict[int, float] = {}
    for c, (x1, y1, x2, y2) in boxes:
        area[c] = area.get(c, 0.0) + (x2 - x1) * (y2 - y1)
    return 1 + max(area, key=lambda c: area[c])


def _overlaps(
    box: tuple[float, float, float, float], others: list[tuple[float, float, float, float]]
) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] and b[0] < x2 and y1 < b[3] and b[1] < y2 for b in others)


def build_samples(
    images: list[np.ndarray],
    boxes: list[list[tuple[int, tuple[float, float, float, float]]]],
    seed: int = 0,
    hard_negatives: dict[int, list[tuple[float, float, float, float]]] | None = None,
) -> list[Sample]:
    """Per image: the whole image, each labeled box, and "good" crops that touch no box.

    Good crops come in two sizes, as many of each as the image has defects: large ones, and
    ones shaped like the split's defect boxes. Without the second kind the verifier could tell
    defects from background by the crop's scale alone and confirm every small false detection.
    `hard_negatives` (image index -> boxes) adds the detector's own false detections as good."""
    rng = random.Random(seed)
    shapes = [(x2 - x1, y2 - y1) for found in boxes for _, (x1, y1, x2, y2) in found]
    samples: list[Sample] = []
    for index, (pixels, found) in enumerate(zip(images, boxes, strict=True)):
        samples.append(Sample(index, None, part_label(found)))
        for c, box in found:
            samples.append(Sample(index, box, 1 + c))
        height, width = pixels.shape[:2]
        defects = [b for _, b in found]
        for _ in range(max(1, len(found))):
            side = rng.uniform(0.15, 0.5) * min(height, width)
            crop = _random_box(rng, side, side, width, height)
            if not _overlaps(crop, defects):
                samples.append(Sample(index, crop, 0))
            if shapes:
                w, h = rng.choice(shapes)
                for _attempt in range(5):  # a few tries to land beside the defects
                    crop = _random_box(rng, min(w, width), min(h, height), width, height)
                    if not _overlaps(crop, defects):
                        samples.append(Sample(index, crop, 0))
                        break
        for box in (hard_negatives or {}).get(index, []):
            samples.append(Sample(index, box, 0))
    return samples


def _random_box(
    rng: random.Random, w: float, h: float, width: int, height: int
) -> tuple[float, float, float, float]:
    x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return (x1, y1, x1 + w, y1 + h)


def mine_hard_negatives(
    detector_weights: Path,
    paths: list[Path],
    boxes: list[list[tuple[int, tuple[float, float, float, float]]]],
    min_confidence: float = 0.05,
    per_image: int = 4,
    device: str | None = None,
) -> dict[int, list[tuple[float, float, float, float]]]:
    """The detector's most confident detections that touch no labeled defect, per image: the
    false calls a verifier exists to reject, which random background crops rarely resemble."""
    from inspection.engine import Inspector, PartInput

    inspector = Inspector.from_weights(detector_weights, {"default": min_confidence}, device=device)
    found: dict[int, list[tuple[float, float, float, float]]] = {}
    try:
        results = inspector.inspect(PartInput(p.name, p.read_bytes()) for p in paths)
        for index, result in enumerate(results):
            defects = [b for _, b in boxes[index]]
            false = sorted(
                (d for d in result.detections if not _overlaps((d.x1, d.y1, d.x2, d.y2), defects)),
                key=lambda d: -d.confidence,
            )[:per_image]
            if false:
                found[index] = [(d.x1, d.y1, d.x2, d.y2) for d in false]
    finally:
        inspector.close()
    return found


def hard_negatives_note(
    found: dict[int, list[tuple[float, float, float, float]]], n_images: int, detector: str
) -> str:
    """What mining found. `found` holds only the images with a false detection: its size was
    printed as the training images ("0 false detections on 0 training images" of 33)."""
    detections = sum(map(len, found.values()))
    if not detections:
        return (
            f"hard negatives: {detector} made no false detection on the {n_images} training "
            "images, so none are learned"
        )
    return (
        f"hard negatives: {detections} false detection{'s' if detections != 1 else ''} of "
        f"{detector}, on {len(found)} of the {n_images} training images"
    )


class CropDataset(Dataset):
    def __init__(
        self, images: list[np.ndarray], samples: list[Sample], image_size: int, augment: bool
    ) -> None:
        self.images, self.samples, self.image_size, self.augment = (
            images,
            samples,
            image_size,
            augment,
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[i]
        pixels = self.images[sample.image_index]
        if sample.box is not None:
            context = random.uniform(0.1, 0.4) if self.augment else 0.25
            pixels = crop_with_context(pixels, sample.box, context)
        tensor = resize_square(pixels, self.image_size)
        if self.augment:
            if random.random() < 0.5:
                tensor = tensor[:, :, ::-1]
            if random.random() < 0.5:
                tensor = tensor[:, ::-1, :]
            gain, bias = random.uniform(0.8, 1.2), random.uniform(-0.08, 0.08)
            tensor = np.clip(tensor * gain + bias, 0.0, 1.0)
        return torch.from_numpy(np.ascontiguousarray(tensor)), sample.label


@dataclass(frozen=True)
class ClassifierTrainRequest:
    data: str
    backbone: str = "resnet18"
    epochs: int = 30
    imgsz: int = 128
    batch: int = 32
    lr: float = 1e-3
    device: str | None = None
    seed: int = 0
    name: str | None = None
    teacher: str | None = None  # classifier version to distill from
    temperature: float = 4.0
    kd_weight: float = 1.0  # Hinton's soft-target term
    feature_weight: float = 1.0  # FPN feature term
    hard_negatives_from: str | None = None  # detector version whose false detections are "good"


class ClassifierDistillation(nn.Module):
    """Hinton's temperature-scaled KL on the logits plus MSE between the FPN levels, through
    1x1 adapters (the student learns them) so that the student's features need not match the
    teacher's channel for channel. The teacher is frozen and stays in eval mode."""

    def __init__(
        self,
        teacher: DefectClassifier,
        student: DefectClassifier,
        temperature: float,
        kd_weight: float,
        feature_weight: float,
    ) -> None:
        super().__init__()
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.adapters = nn.ModuleList(
            nn.Conv2d(student.fpn_channels, teacher.fpn_channels, 1) for _ in student.attention
        )
        self.temperature, self.kd_weight, self.feature_weight = (
            temperature,
            kd_weight,
            feature_weight,
        )

    def forward(
        self, student: DefectClassifier, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(student logits, soft-target loss, feature loss)."""
        with torch.no_grad():
            teacher_features = self.teacher.features(images)
            teacher_logits = self.teacher.head(
                torch.cat([f.mean(dim=(2, 3)) for f in teacher_features], dim=1)
            )
        student_features = student.features(images)
        logits = student.head(torch.cat([f.mean(dim=(2, 3)) for f in student_features], dim=1))
        t = self.temperature
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(logits / t, dim=1),
            nn.functional.softmax(teacher_logits / t, dim=1),
            reduction="batchmean",
        ) * (t * t)
        feature = sum(
            nn.functional.mse_loss(adapter(s), tf)
            for adapter, s, tf in zip(
                self.adapters, student_features, teacher_features, strict=True
            )
        ) / len(student_features)
        return logits, soft * self.kd_weight, feature * self.feature_weight  # type: ignore[return-value]

    def train(self, mode: bool = True) -> ClassifierDistillation:
        super().train(mode)
        self.teacher.eval()
        return self


def _accuracy(model: nn.Module, loader: DataLoader, device: str) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            predictions = model(images.to(device)).argmax(dim=1).cpu()
            correct += int((predictions == labels).sum())
            total += len(labels)
    return correct / max(total, 1)


def refuse_teacher_classes(
    teacher: str, known: list[str], data: str, dataset_classes: list[str]
) -> NoReturn:
    """A classifier teacher must know the dataset's classes, in its order, after GOOD: the
    student learns its teacher's class probabilities output for output. Said with both lists,
    as a detector's refusal is: "knows other classes than 'DATA'" left the user to find which."""
    raise UserError(
        f"teacher {teacher} knows {known}, {data!r} labels {[GOOD, *dataset_classes]}: a "
        "distilled student learns its teacher's classes output for output; distill from a "
        f"classifier trained on {data!r}'s classes, or train one without a teacher"
    )


def new_run_folder(parent: Path, base: str) -> Path:
    """The first of `base`, `base-2`, ... that this process creates itself: named to the
    second alone, two trainings of the same data and backbone started in the same second wrote
    the same best.pt, and one could register the other's weights."""
    parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        folder = parent / (base if n == 1 else f"{base}-{n}")
        n += 1
        try:
            folder.mkdir()  # (atomic: one process gets it)
        except FileExistsError:
            continue
        return folder


def _remove_run_folder(run_dir: Path | None) -> Path | None:
    """Removes a run's folder that registered nothing: a classifier's training does not
    resume, so its best epoch's weights would only hold the space. The folder, if removed."""
    if run_dir is None or not run_dir.is_dir():
        return None
    shutil.rmtree(run_dir, ignore_errors=True)
    return None if run_dir.exists() else run_dir


def _run_folder_full(exc: BaseException, folder: Path, removed: bool) -> UserError | None:
    """A failed write under the run's folder (a full disk, a folder not writable, a disk
    failing its writes) in one line, with what became of the run (`removed`: the folder is
    gone) and what to do: an epoch's best written there stopped the training in torch's
    "unexpected pos 704 vs 598", naming neither, or the system's bare "[Errno 5]". None for
    any other error."""
    if not isinstance(exc, OSError) or not failed_write(exc, folder):
        return None
    return UserError(
        f"cannot write the training run's folder {folder}: {exc.strerror or exc}; nothing is "
        "registered and the training job is marked failed"
        + ("; the folder is removed" if removed else "")
        + f": {write_fix(exc)} and train again"
    )


def train_classifier(request: ClassifierTrainRequest, url: str | None = None) -> int:
    """Train, keep the epoch best on val, register it as a candidate; returns the version id."""
    settings = get_settings()
    url = url or settings.resolved_database_url
    device = resolve_device(request.device)
    torch.manual_seed(request.seed)
    random.seed(request.seed)
    if request.backbone not in BACKBONES:  # (said before a job is recorded as failed)
        raise UserError(
            f"unknown classifier backbone {request.backbone!r}; choose one of "
            f"{', '.join(BACKBONES)}"
        )
    if request.name is not None:  # (its folder in the model store: said before training)
        check_folder_name(request.name, "model version")
    check_runs_folder(settings.runs_dir / "classify")
    with session_scope(url) as session:
        dataset, data_yaml = dataset_yaml(session, request.data)
        refuse_tiled_for_classifier(data_yaml.parent, request.data, "train")
        check_trainable(dataset)
        if (
            request.name
            and session.scalars(
                select(ModelVersion.id).where(ModelVersion.name == request.name)
            ).first()
        ):  # (said now, not after the training it would throw away)
            raise UserError(f"a model version named {request.name!r} already exists")
        root, defect_classes, dataset_id = (
            data_yaml.parent,
            list(dataset.classes),
            dataset.id,
        )
        teacher_id, teacher_model = None, None
        if request.teacher:
            teacher_row = get_model_version(session, request.teacher)
            if teacher_row.kind != ModelKind.CLASSIFIER:
                raise UserError(f"{teacher_row.name} is not a classifier")
            if list(teacher_row.classes) != [GOOD, *dataset.classes]:  # (before the job)
                refuse_teacher_classes(
                    teacher_row.name, list(teacher_row.classes), request.data, list(dataset.classes)
                )
            teacher_id, teacher_path = teacher_row.id, weights_file(teacher_row)
            # Loaded before the job is recorded: a damaged teacher was refused only after it,
            # in a message of torch's about `weights_only` that named no version.
            try:
                # (Its building draws random initial weights: without the fork, a student of
                # a given seed started from other weights than before this check.)
                with torch.random.fork_rng(devices=[]):
                    teacher_model, _ = load_classifier(teacher_path, device)
            except UserError as exc:
                raise UserError(
                    f"teacher {teacher_row.name}: {exc}; restore its file "
                    "from a backup, or distill from another version"
                ) from exc
            if teacher_model.class_names != [GOOD, *dataset.classes]:  # (its file's own list)
                refuse_teacher_classes(
                    teacher_row.name, teacher_model.class_names, request.data, list(dataset.classes)
                )
        hard_negative_detector = None
        if request.hard_negatives_from:
            detector_row = get_model_version(session, request.hard_negatives_from)
            if detector_row.kind != ModelKind.DETECTOR:
                raise UserError(f"{detector_row.name} is not a detector")
            if list(detector_row.classes) != defect_classes:
                # (Both lists, as a teacher's refusal says them: "knows other classes than
                # 'DATA'" left the user to find which.)
                raise UserError(
                    f"{detector_row.name} knows {list(detector_row.classes)}, "
                    f"{request.data!r} labels {defect_classes}: hard negatives are the false "
                    "detections of the detector the verifier will stand beside; mine them with a "
                    f"detector trained on {request.data!r}'s classes, or train without "
                    "--hard-negatives-from"
                )
            hard_negative_detector = weights_file(detector_row)
        job = TrainingJob(
            kind="distill-classifier" if request.teacher else "train-classifier",
            status=JobStatus.RUNNING,
            params=request.__dict__,
            dataset_id=dataset_id,
            started_at=utcnow(),
            pid=os.getpid(),  # (without it the Models page took a running job for ended)
            host=this_host(),
            process_start=process_start(os.getpid()),
        )
        session.add(job)
        session.flush()
        job_id = job.id
    run_dir: Path | None = None
    try:
        class_names = [GOOD, *defect_classes]
        train_images, train_boxes = read_split(root, "train")
        val_images, val_boxes = read_split(root, "val")
        if not train_images:
            raise UserError(f"dataset {request.data!r} has no training images")
        hard_negatives = None
        if hard_negative_detector is not None:
            hard_negatives = mine_hard_negatives(
                hard_negative_detector, split_image_paths(root, "train"), train_boxes, device=device
            )
            print(
                hard_negatives_note(
                    hard_negatives, len(train_images), request.hard_negatives_from or ""
                )
            )
        train_set = CropDataset(
            train_images,
            build_samples(train_images, train_boxes, request.seed, hard_negatives),
            request.imgsz,
            True,
        )
        val_set = CropDataset(
            val_images or train_images,
            build_samples(val_images or train_images, val_boxes or train_boxes, 1),
            request.imgsz,
            False,
        )
        train_loader = DataLoader(
            train_set,
            batch_size=request.batch,
            shuffle=True,
            drop_last=len(train_set) > request.batch,
        )
        val_loader = DataLoader(val_set, batch_size=request.batch * 2)
        model = DefectClassifier(request.backbone, class_names).to(device)
        distillation = None
        parameters = list(model.parameters())
        if teacher_model is not None:
            distillation = ClassifierDistillation(
                teacher_model, model, request.temperature, request.kd_weight, request.feature_weight
            ).to(device)
            parameters += list(distillation.adapters.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=request.lr, weight_decay=0.05)
        steps = request.epochs * max(len(train_loader), 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
        )
        criterion = nn.CrossEntropyLoss(label_smoothing=0.05)
        run_dir = new_run_folder(
            settings.runs_dir / "classify",
            f"{request.data}-{request.backbone}-{time.strftime('%Y%m%d-%H%M%S')}",
        )
        best_path, best_accuracy, started = run_dir / "best.pt", -1.0, time.perf_counter()
        history = run_dir / "results.csv"  # (what the run keeps once its best is registered)
        history.write_text("epoch,loss,val_accuracy\n")
        distill_log: list[float] = []
        for epoch in range(request.epochs):
            model.train()
            if distillation is not None:
                distillation.train()
            losses = []
            progress = EpochProgress(
                epoch,
                request.epochs,
                len(train_loader),
                lambda done: _store_progress(url, job_id, done),
            )
            for images, labels in tqdm(
                train_loader, desc=f"epoch {epoch + 1}/{request.epochs}", leave=False, disable=None
            ):
                images, labels = images.to(device), labels.to(device)
                if distillation is None:
                    loss = criterion(model(images), labels)
                else:
                    logits, soft, feature = distillation(model, images)
                    loss = criterion(logits, labels) + soft + feature
                    distill_log.append((soft + feature).item())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                progress.batch_done(losses)
            accuracy = _accuracy(model, val_loader, device)
            if accuracy > best_accuracy:
                best_accuracy = accuracy
                save_classifier(
                    model, best_path, request.imgsz, {"val_accuracy": accuracy, "epoch": epoch + 1}
                )
            print(
                f"epoch {epoch + 1}/{request.epochs} loss {np.mean(losses):.4f} "
                f"val accuracy (parts and crops) {accuracy:.4f}",
                flush=True,
            )
            with history.open("a") as out:
                out.write(f"{epoch + 1},{np.mean(losses):.6f},{accuracy:.6f}\n")
            with session_scope(url) as session:
                job = session.get(TrainingJob, job_id)
                assert job is not None
                job.progress = (epoch + 1) / request.epochs
                job.log = (
                    (job.log or "")
                    + f"epoch {epoch + 1} loss {np.mean(losses):.4f} val accuracy (parts and crops) {accuracy:.4f}\n"
                )
        metrics: dict[str, Any] = {
            "val_accuracy": best_accuracy,
            "epochs": request.epochs,
            "train_wall_s": round(time.perf_counter() - started, 1),
            "device": str(device),  # as resolved: "auto" says nothing about where it ran
        }
        if distill_log:
            per_epoch = np.array_split(np.array(distill_log), request.epochs)
            metrics["distill_loss_per_epoch"] = [float(chunk.mean()) for chunk in per_epoch]
        with registration_scope(url) as session:
            version = register_model_version(
                session,
                best_path,
                settings.models_dir,
                kind=ModelKind.CLASSIFIER,
                architecture=f"defect-cls-{request.backbone}",
                class_names=class_names,
                image_size=request.imgsz,
                metrics=metrics,
                thresholds={"part": 0.5, "verify": 0.5},
                dataset=session.get(DatasetRow, dataset_id),
                teacher=session.get(ModelVersion, teacher_id) if teacher_id else None,
                name=request.name,
                # (A detector's notes named its loss; a classifier's teacher was recorded and
                # how it taught was in the job alone.)
                notes=(
                    f"distilled with soft targets at temperature {request.temperature:g} "
                    "and FPN features"
                    if teacher_id
                    else ""
                ),
            )
            job = session.get(TrainingJob, job_id)
            assert job is not None
            job.status, job.progress, job.finished_at = JobStatus.SUCCEEDED, 1.0, utcnow()
            job.error = None
            job.result_model_version_id = version.id
            version_id = version.id
        # The version's copy in the model store is the one kept: the run's best.pt, the same
        # bytes, held the space twice, and nothing resumes from it. Its history stays.
        with contextlib.suppress(OSError):
            best_path.unlink(missing_ok=True)
        return version_id
    except BaseException as exc:
        # (Its best epoch's weights were left behind: nothing resumes or registers them, and
        # the stop message did not mention them.)
        removed = _remove_run_folder(run_dir)
        full = _run_folder_full(exc, run_dir or settings.runs_dir / "classify", removed is not None)
        record_job_end(url, job_id, full or exc)
        if isinstance(exc, KeyboardInterrupt):  # (SIGTERM too: the CLI raises it for one)
            # (It ended on a bare "interrupted": whether anything was kept, or could be
            # resumed as a detector's training can, went unsaid.)
            print(
                "stopped: no classifier was registered"
                + (f" (its run folder {removed.name} is removed)" if removed else "")
                + "; a classifier's training does not resume, the same command trains it "
                "again from the start",
                file=sys.stderr,
            )
            raise Stopped from exc  # (said: the command line adds no "interrupted")
        if full is not None:
            raise full from exc
        raise
