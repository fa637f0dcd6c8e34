"""Detectors and the colour classifier that GenEval's rules judge (accel.evals.geneval).

A detector maps images to `accel.shapes.Detection`s named by the metadata's class names:
- `ShapesDetector`: the shapes world's exact, programmatic detector (colours included, no scores);
- `Mask2FormerDetector`: transformers' Mask2Former COCO instance segmentation, the family GenEval runs through
  mmdet (its Swin-S checkpoint); boxes from the masks as mmdet's Mask2Former makes them, score = class
  probability x mean mask probability (both as mmdet);
- `Owlv2Detector`: OWLv2 open-vocabulary detection, queried with "a photo of a <class>" for GenEval's 80 classes;
  boxes only (no masks: colour is classified on the box crop, as GenEval does for mask-less detectors).
`ClipColors` is GenEval's colour classifier: CLIP zero-shot over its 10 colours with its three prompt templates per
class, on the crop of the box with the pixels outside the mask set to grey #999.
Weights load from local folders only (safetensors, no remote code). Differences from GenEval's mmdet / open_clip
stack: docs/evals.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from accel.shapes.checker import GENEVAL_COLORS, Detection

# The 80 COCO classes as GenEval names them (its object_names.txt; COCO's category order).
GENEVAL_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "computer mouse", "tv remote", "computer keyboard", "cell phone", "microwave", "oven", "toaster",
    "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
COLOR_TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")
MASK_BACKGROUND = (153, 153, 153)  # GenEval's "#999"


class Detector(Protocol):
    """Images -> detections. `classes`: the class names it can report (the metadata's must be among them)."""

    name: str
    classes: frozenset[str]

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """images: (H, W, 3) uint8 each. Returns each image's detections (scored, or all unscored)."""
        ...


class ShapesDetector:
    """The shapes world's exact detector (accel.shapes.detect)."""

    name = "shapes"

    def __init__(self):
        from accel.shapes import SHAPES

        self.classes = frozenset(SHAPES)

    def detect(self, images):
        from accel.shapes import detect

        return [detect(img) for img in images]


def _check_folder(path, model_types: tuple[str, ...], what: str) -> Path:
    """ValueError in one line unless path is a local transformers folder of one of model_types, with safetensors."""
    path = Path(path)
    config = path / "config.json"
    a = "an" if what[0] in "AEIOU" else "a"
    if not path.is_dir():
        raise ValueError(f"{what} folder {path} does not exist")
    if not config.is_file():
        raise ValueError(f"{path} is not {a} {what} folder (no config.json)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise ValueError(f"{path} is not {a} {what} folder (config.json is not a JSON object)") from None
    if model_type not in model_types:
        raise ValueError(f"{path} is not {a} {what} folder: its config.json says model_type {model_type!r}, not "
                         f"{' or '.join(map(repr, model_types))}")
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"{path} holds no .safetensors weights (accel loads safetensors only)")
    return path


def _image_processor(path: Path, pil_name: str, name: str):
    """The PIL image processor where transformers has one (no torchvision needed), else the classic one."""
    import transformers

    cls = getattr(transformers, pil_name, None) or getattr(transformers, name)
    try:
        return cls.from_pretrained(str(path), local_files_only=True)
    except OSError as e:
        raise ValueError(f"{path} has no usable image processor config: {str(e).splitlines()[0]}") from None


def _load(cls, path: Path, device: str):
    model = cls.from_pretrained(str(path), use_safetensors=True, local_files_only=True)
    return model.eval().to(device)


def _to_pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """mmdet's mask2bbox: (x0, y0, x_last + 1, y_last + 1) of the mask's pixels."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


class Mask2FormerDetector:
    """transformers' Mask2Former instance segmentation (a COCO checkpoint folder, e.g. a conversion of
    facebook/mask2former-swin-small-coco-instance). An 80-class model is read in COCO's order with GenEval's
    names; any other reports its own id2label names."""

    name = "mask2former"

    def __init__(self, path: str | Path, device: str = "cpu"):
        import transformers

        path = _check_folder(path, ("mask2former",), "Mask2Former detector")
        self.model = _load(transformers.Mask2FormerForUniversalSegmentation, path, device)
        self.processor = _image_processor(path, "Mask2FormerImageProcessorPil", "Mask2FormerImageProcessor")
        id2label = self.model.config.id2label
        self.labels = (list(GENEVAL_CLASSES) if len(id2label) == len(GENEVAL_CLASSES)
                       else [id2label[i] for i in range(len(id2label))])
        self.classes = frozenset(self.labels)
        self.device = device

    def detect(self, images):
        import torch

        inputs = self.processor(images=[_to_pil(i) for i in images], return_tensors="pt")
        with torch.no_grad():
            outputs = self.model(**{k: v.to(self.device) for k, v in inputs.items()
                                    if k in ("pixel_values", "pixel_mask")})
        results = self.processor.post_process_instance_segmentation(
            outputs, threshold=0.0, target_sizes=[img.shape[:2] for img in images], return_binary_maps=True)
        found = []
        for res in results:
            dets = []
            if res["segments_info"]:
                masks = res["segmentation"].bool().cpu().numpy()
                for info, mask in zip(res["segments_info"], masks):
                    dets.append(Detection(self.labels[info["label_id"]], None, mask_to_box(mask), int(mask.sum()),
                                          float(info["score"]), mask))
            found.append(dets)
        return found


def nms(dets: list[Detection], max_overlap: float) -> list[Detection]:
    """Greedy per-class suppression: keep the most confident, drop those overlapping it by IoU >= max_overlap."""
    from accel.evals.geneval import compute_iou

    kept: list[Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if all(k.label != d.label or compute_iou(k.box, d.box) < max_overlap for k in kept):
            kept.append(d)
    return kept


class Owlv2Detector:
    """OWLv2 open-vocabulary detection (a local Owlv2ForObjectDetection folder with its tokenizer), queried with
    "a photo of a <class>" per class. OWLv2 proposes one box per image patch: proposals scoring below `min_score`
    are dropped and overlapping ones of a class suppressed (IoU >= 0.3, as OWL-ViT's examples do) before GenEval's
    own selection."""

    name = "owlv2"

    def __init__(self, path: str | Path, device: str = "cpu", classes: Sequence[str] = GENEVAL_CLASSES,
                 min_score: float = 0.05, max_overlap: float = 0.3):
        import transformers

        path = _check_folder(path, ("owlv2",), "OWLv2 detector")
        self.model = _load(transformers.Owlv2ForObjectDetection, path, device)
        self.processor = _image_processor(path, "Owlv2ImageProcessorPil", "Owlv2ImageProcessor")
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.labels = list(classes)
        self.classes = frozenset(classes)
        text = tokenizer([f"a photo of a {c}" for c in classes], padding="max_length",
                         max_length=self.model.config.text_config.max_position_embeddings, truncation=True,
                         return_tensors="pt")
        self.text = {k: v.to(device) for k, v in text.items() if k in ("input_ids", "attention_mask")}
        self.min_score, self.max_overlap, self.device = min_score, max_overlap, device

    def detect(self, images):
        import torch

        found = []
        for img in images:  # OWLv2 takes the text queries per image: one image a forward keeps that simple
            pixels = self.processor(images=[_to_pil(img)], return_tensors="pt")["pixel_values"].to(self.device)
            with torch.no_grad():
                outputs = self.model(pixel_values=pixels, **self.text)
            res = self.processor.post_process_object_detection(outputs, threshold=self.min_score,
                                                               target_sizes=[img.shape[:2]])[0]
            h, w = img.shape[:2]
            dets = []
            for score, label, box in zip(res["scores"].tolist(), res["labels"].tolist(), res["boxes"].tolist()):
                x0, y0, x1, y1 = np.clip(box, 0, [w, h, w, h])
                if x1 > x0 and y1 > y0:
                    dets.append(Detection(self.labels[label], None, (float(x0), float(y0), float(x1), float(y1)),
                                          int((x1 - x0) * (y1 - y0)), float(score)))
            found.append(nms(dets, self.max_overlap))
        return found


class ClipColors:
    """GenEval's colour classification with a transformers CLIP folder (GenEval uses open_clip ViT-L-14 openai, of
    which openai/clip-vit-large-patch14 is the transformers conversion): for each class, the text embedding of each
    colour is the normalised mean of its three templates' normalised embeddings; a crop takes the colour of the
    largest cosine similarity."""

    def __init__(self, path: str | Path, device: str = "cpu", colors: Sequence[str] = GENEVAL_COLORS):
        import transformers

        path = _check_folder(path, ("clip",), "CLIP")
        self.model = _load(transformers.CLIPModel, path, device)
        self.processor = _image_processor(path, "CLIPImageProcessorPil", "CLIPImageProcessor")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.colors, self.device = list(colors), device
        self._classifiers: dict[str, object] = {}

    @staticmethod
    def _features(out):
        return out if not hasattr(out, "pooler_output") else out.pooler_output  # transformers 5 wraps them

    def _classifier(self, classname: str):
        import torch

        if classname not in self._classifiers:
            weights = []
            for c in self.colors:
                text = self.tokenizer([t.format(c=c, obj=classname) for t in COLOR_TEMPLATES], padding=True,
                                      return_tensors="pt").to(self.device)
                with torch.no_grad():
                    emb = self._features(self.model.get_text_features(**text))
                emb = torch.nn.functional.normalize(emb, dim=-1).mean(0)
                weights.append(torch.nn.functional.normalize(emb, dim=-1))
            self._classifiers[classname] = torch.stack(weights, 1)  # (D, colours)
        return self._classifiers[classname]

    def crops(self, image: np.ndarray, dets: Sequence[Detection]) -> list:
        """GenEval's ImageCrops: the mask's pixels over grey, cropped to the box with its corners rounded (as PIL
        rounds them); a box thinner than a pixel keeps one (GenEval's pipeline fails on an empty crop)."""
        from PIL import Image

        pil = _to_pil(image)
        blank = Image.new("RGB", pil.size, MASK_BACKGROUND)
        out = []
        for d in dets:
            crop = pil if d.mask is None else Image.composite(pil, blank, Image.fromarray(np.asarray(d.mask, bool)))
            x0, y0, x1, y1 = (int(round(v)) for v in d.box)
            out.append(crop.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))))
        return out

    def __call__(self, image: np.ndarray, dets: Sequence[Detection], classname: str) -> list[str]:
        import torch

        if not dets:
            return []
        pixels = self.processor(images=self.crops(image, dets), return_tensors="pt")["pixel_values"].to(self.device)
        with torch.no_grad():
            feats = self._features(self.model.get_image_features(pixel_values=pixels))
        logits = torch.nn.functional.normalize(feats, dim=-1) @ self._classifier(classname)
        return [self.colors[i] for i in logits.argmax(1).tolist()]


DETECTORS = ("shapes", "mask2former", "owlv2")


def load_detector(name: str, path: str | Path | None = None, device: str = "cpu") -> Detector:
    """A detector by name: "shapes" (no folder), "mask2former" or "owlv2" (a local model folder)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; allowed: {', '.join(DETECTORS)}")
    if name == "shapes":
        if path is not None:
            raise ValueError("the shapes detector takes no model folder")
        return ShapesDetector()
    if path is None:
        raise ValueError(f"the {name} detector needs its model folder (--detector-model)")
    return Mask2FormerDetector(path, device) if name == "mask2former" else Owlv2Detector(path, device)
