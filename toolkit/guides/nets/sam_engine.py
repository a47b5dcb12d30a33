"""One Segment Anything model on one device, as ``guides sam`` and ``guides mask`` use it (imports torch
and segment_anything).

``SamEngine`` holds a segment_anything ``Sam`` and its ``SamPredictor``, the image embeddings of the last
few images (computed once per image, several images per encoder pass: the encoder input is always the
image padded to a 1024 px square, so any images batch together; ``guides.nets.sam_network.encode_image``),
the numeric precision (inference mode, autocast for fp16/bf16), and answers prompts (``predict``, as
``SamPredictor.predict``) and automatic masks (``generate``, as ``SamAutomaticMaskGenerator.generate``:
``guides.nets.sam_mask_generator``) on the current image.

On the CPU, a further gain (about 40% of the CPU time) comes from glibc's allocator keeping large
activations on its heap; that setting is process-wide, so this module never makes it: the caller opts in
with ``guides.tune_allocator()`` (``guides.system``) or ``GUIDES_MALLOC_TUNING=1``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from .sam_mask_generator import GeneratorSettings, Segments, generate_masks
from .sam_network import ATTENTION_CHUNK_BYTES, encode_image


@dataclasses.dataclass(frozen=True)
class ImageEmbedding:
    """The image encoder's output for one image, as ``SamPredictor`` holds it: ``features`` float32
    (1, C, h, w), the image's (height, width) and its size after the long-side resize to the encoder's
    input (``input_size``)."""

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class SamEngine:
    """One SAM model on one device: image embeddings (the last few cached), prompts, automatic masks.

    An engine holds one current image (``use``/``set_image``) for ``predict`` and ``generate``: when
    several threads or annotators share an engine, hold ``lock`` from setting the image to the last
    call that reads it.
    """

    #: Image embeddings kept (least recently used dropped first): a ViT embedding is 4 MB, and the batch
    #: engine hands each annotator of a run (``guides run sam,mask``) the same few images in turn.
    cached_images: int = 8
    #: See ``encode_image``.
    attention_chunk_bytes: int = ATTENTION_CHUNK_BYTES

    def __init__(self, model: Sam, dtype: torch.dtype = torch.float32, checkpoint: Path | None = None) -> None:
        self.model = model.eval()
        self.dtype = dtype
        #: The checkpoint file the model was loaded from (None: a model built in memory).
        self.checkpoint = checkpoint
        #: Held by whoever sets the current image until done with it (re-entrant).
        self.lock = threading.RLock()
        self.predictor = SamPredictor(self.model)
        self._embeddings: OrderedDict[tuple[Any, ...], ImageEmbedding] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        """Inference mode, plus autocast to ``dtype`` for fp16/bf16."""
        with torch.inference_mode():
            if self.dtype == torch.float32:
                yield
            else:
                with torch.autocast(self.device.type, dtype=self.dtype):
                    yield

    @staticmethod
    def _key(image: np.ndarray) -> tuple[Any, ...]:
        return (image.shape, hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest())

    def embed(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        """The embeddings of RGB uint8 (H, W, 3) images: recently seen ones (same pixels) from the cache,
        all the others in **one** encoder pass (a batch; sizes may differ: each image is resized and
        padded to the encoder's square input exactly as ``SamPredictor.set_image`` does)."""
        keys = [self._key(image) for image in images]
        found: dict[tuple[Any, ...], ImageEmbedding] = {}
        with self.lock:
            for key in keys:
                if key in self._embeddings:
                    self._embeddings.move_to_end(key)
                    found[key] = self._embeddings[key]
            missing = {key: image for key, image in zip(keys, images) if key not in found}
            if missing:
                with self._precision():
                    computed = self._encode(list(missing.values()))
                for key, embedding in zip(missing, computed):
                    found[key] = embedding
                    self._embeddings[key] = embedding
                while len(self._embeddings) > max(self.cached_images, len(missing)):
                    self._embeddings.popitem(last=False)
        return [found[key] for key in keys]

    def _encode(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        """``SamPredictor.set_image`` (RGB input) for several images at once, the encoder run by
        ``encode_image``."""
        model, transform = self.model, self.predictor.transform
        inputs, sizes = [], []
        for image in images:
            if model.image_format != "RGB":
                image = image[..., ::-1]
            transformed = transform.apply_image(image)
            tensor = torch.as_tensor(transformed, device=self.device).permute(2, 0, 1).contiguous()[None, :, :, :]
            sizes.append((tuple(image.shape[:2]), tuple(tensor.shape[-2:])))
            inputs.append(model.preprocess(tensor))
        features = encode_image(model.image_encoder, torch.cat(inputs), self.attention_chunk_bytes)
        return [
            ImageEmbedding(features[i : i + 1].float().clone(), original_size, input_size)  # type: ignore[arg-type]
            for i, (original_size, input_size) in enumerate(sizes)
        ]

    def use(self, embedding: ImageEmbedding) -> None:
        """Make ``embedding``'s image the current one for ``predict`` and ``generate``."""
        predictor = self.predictor
        predictor.reset_image()
        predictor.features = embedding.features
        predictor.original_size, predictor.input_size = embedding.original_size, embedding.input_size
        predictor.is_image_set = True

    def set_image(self, image: np.ndarray) -> None:
        """Embed an RGB uint8 (H, W, 3) image (a recent one reuses its embedding) and make it current."""
        self.use(self.embed([image])[0])

    def reset(self) -> None:
        """Forget the current image and the cached embeddings (frees their memory)."""
        with self.lock:
            self.predictor.reset_image()
            self._embeddings.clear()

    def predict(self, points: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``SamPredictor.predict(..., multimask_output=True)``: 3 bool masks (3, H, W) and their scores."""
        # SamPredictor.predict's prompt transforms, then predict_torch; the scores are converted with .float()
        # because under bf16 autocast they are bfloat16, which numpy cannot take (predict itself would fail).
        predictor = self.predictor
        if not predictor.is_image_set:
            raise RuntimeError("set_image must be called before predict")
        coords_t = labels_t = box_t = None
        if points is not None:
            coords = predictor.transform.apply_coords(points, predictor.original_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=predictor.device)[None, :, :]
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=predictor.device)[None, :]
        if box is not None:
            box_t = torch.as_tensor(predictor.transform.apply_boxes(box, predictor.original_size), dtype=torch.float, device=predictor.device)[None, :]
        with self._precision():
            masks, scores, _ = predictor.predict_torch(coords_t, labels_t, box_t, None, True, return_logits=False)
        return masks[0].cpu().numpy().astype(bool), scores[0].float().cpu().numpy()

    def generate(self, settings: GeneratorSettings = GeneratorSettings()) -> Segments:
        """Automatic masks of the current image: ``SamAutomaticMaskGenerator(model, **settings).generate``
        (``guides.nets.sam_mask_generator.generate_masks``)."""
        return generate_masks(self.model, self.predictor, settings, self._precision)
