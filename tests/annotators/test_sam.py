"""guides sam: automatic masks identical to segment_anything's, the deterministic guide, loading and the CLI.

Random weights prove wiring and parity, not segmentation quality. Plain random SAM weights give noisy,
near-identical masks that NMS merges into one, so most parity tests use a small custom SAM whose random
mask-upscaling kernels are made spatially constant and whose hypernetwork outputs are scaled up: on an
image of flat colour blocks this gives dozens of distinct masks with a spread of predicted IoUs,
stability scores (NaN for empty masks too), areas and boxes, which exercises every filter.
ViT-B parity runs once per session with the real architecture and a checkpoint file in the public format.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry  # noqa: E402
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer  # noqa: E402
from segment_anything.utils.amg import MaskData, batched_mask_to_box, box_xyxy_to_xywh, mask_to_rle_pytorch, rle_to_mask  # noqa: E402

from guides.annotators import sam_common  # noqa: E402
from guides.annotators.sam import SamAnnotator, SamOptions  # noqa: E402
from guides.errors import UsageError  # noqa: E402
from guides.nets.sam_fast import GeneratorSettings, SamEngine, Segments, decode_tokens, remove_small_regions_and_duplicates  # noqa: E402

# ----------------------------------------------------------------------------------------- helpers


def blocks_image(height: int = 96, width: int = 128) -> np.ndarray:
    """Flat colour blocks on grey, scaled to the size."""
    image = np.full((height, width, 3), 30, dtype=np.uint8)
    for (y0, y1, x0, x1), color in (
        ((0.10, 0.52, 0.08, 0.47), (250, 40, 40)),
        ((0.42, 0.94, 0.55, 0.94), (40, 250, 40)),
        ((0.62, 0.94, 0.04, 0.31), (40, 40, 250)),
        ((0.05, 0.31, 0.62, 0.98), (250, 250, 0)),
    ):
        image[int(y0 * height):int(y1 * height), int(x0 * width):int(x1 * width)] = color
    return image


def reference_arrays(anns: list[dict]) -> dict[str, np.ndarray]:
    """SamAutomaticMaskGenerator records as arrays comparable with ``Segments``."""
    if not anns:
        return {"masks": np.zeros((0,), bool), "iou": np.zeros(0), "stability": np.zeros(0), "bbox": np.zeros((0, 4)),
                "points": np.zeros((0, 2)), "areas": np.zeros(0)}
    return {
        "masks": np.stack([a["segmentation"] for a in anns]),
        "iou": np.array([a["predicted_iou"] for a in anns]),
        "stability": np.array([a["stability_score"] for a in anns]),
        "bbox": np.array([a["bbox"] for a in anns]),
        "points": np.array([a["point_coords"][0] for a in anns]),
        "areas": np.array([a["area"] for a in anns]),
    }


def assert_same_masks(ours: Segments, anns: list[dict]) -> None:
    """Bit-identical masks, scores, boxes, prompts and order."""
    ref = reference_arrays(anns)
    assert len(ours) == len(anns), f"{len(ours)} masks, reference has {len(anns)}"
    if not anns:
        return
    differing = [(i, int((ours.masks[i] != ref["masks"][i]).sum())) for i in range(len(anns)) if not np.array_equal(ours.masks[i], ref["masks"][i])]
    assert not differing, f"masks differ from the reference (index, pixels): {differing[:10]}"
    assert np.array_equal(ours.predicted_iou.astype(np.float64), ref["iou"]), np.abs(ours.predicted_iou - ref["iou"]).max()
    assert np.array_equal(ours.stability_score.astype(np.float64), ref["stability"], equal_nan=True)
    ours_xywh = np.array([box_xyxy_to_xywh(box) for box in ours.boxes])
    assert np.array_equal(ours_xywh, ref["bbox"]), (ours_xywh[:5], ref["bbox"][:5])
    assert np.array_equal(ours.points, ref["points"])
    assert np.array_equal(ours.areas, ref["areas"])


def reference_generate(model: Sam, image: np.ndarray, settings: GeneratorSettings) -> list[dict]:
    return SamAutomaticMaskGenerator(model, **settings.reference_kwargs()).generate(image)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two label images paint the same regions (a bijection between their colours)."""
    pairs = np.unique(np.concatenate([a.reshape(-1, 3), b.reshape(-1, 3)], axis=1), axis=0)
    return len(pairs) == len(np.unique(a.reshape(-1, 3), axis=0)) == len(np.unique(b.reshape(-1, 3), axis=0))


@pytest.fixture(scope="module")
def tiny(build_tiny_sam) -> Sam:
    return build_tiny_sam(seed=2)


# ------------------------------------------------------------------------- parity: small custom SAM

PARITY_CASES = {
    # name: (image size, settings for both, our points_per_batch, minimum number of reference masks)
    "all candidates, no NMS": ((96, 128), GeneratorSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0), 64, 150),
    "IoU and stability filters, NMS": ((150, 90), GeneratorSettings(points_per_side=8, pred_iou_thresh=0.08, stability_score_thresh=0.3), 64, 8),
    "small regions removed": ((150, 90), GeneratorSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.2, min_mask_region_area=40), 64, 10),
    "odd grid, NMS 0.9": ((150, 90), GeneratorSettings(points_per_side=7, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.9), 16, 10),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_tiny_masks_identical_to_segment_anything(tiny: Sam, case: str) -> None:
    size, settings, our_batch, minimum = PARITY_CASES[case]
    image = blocks_image(*size)
    anns = reference_generate(tiny, image, settings)
    assert len(anns) >= minimum, f"the case must exercise masks: the reference kept only {len(anns)}"
    engine = SamEngine(tiny)
    engine.set_image(image)
    assert torch.equal(engine.predictor.features, _reference_features(tiny, image))
    assert_same_masks(engine.generate(dataclasses.replace(settings, points_per_batch=our_batch)), anns)


def test_other_point_batches_change_scores_only_by_rounding(tiny: Sam) -> None:
    """Bit-identity needs the reference's point batches (its ``points_per_batch``, 64 by default, which is
    ours on the CPU): small token-side matrix products round differently for other batch sizes."""
    image = blocks_image(150, 90)
    settings = GeneratorSettings(points_per_side=7, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.9)
    anns = reference_generate(tiny, image, settings)
    engine = SamEngine(tiny)
    engine.set_image(image)
    ours = engine.generate(dataclasses.replace(settings, points_per_batch=5))
    ref = reference_arrays(anns)
    assert len(ours) == len(anns) >= 10
    assert np.abs(ours.predicted_iou - ref["iou"]).max() < 1e-6
    assert sum(int((m != r).sum()) for m, r in zip(ours.masks, ref["masks"])) <= 5


def _reference_features(model: Sam, image: np.ndarray) -> torch.Tensor:
    predictor = SamPredictor(model)
    predictor.set_image(image)
    return predictor.features


def test_default_thresholds_match_too(tiny: Sam) -> None:
    image = blocks_image(96, 128)
    settings = GeneratorSettings(points_per_side=6)
    engine = SamEngine(tiny)
    engine.set_image(image)
    assert_same_masks(engine.generate(settings), reference_generate(tiny, image, settings))


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 2 * 16 * 256 * 4, 1 << 30], ids=["one row", "three rows", "whole"])
def test_image_encoder_identical_with_chunked_global_attention(chunk_bytes: int, build_tiny_sam) -> None:
    """encode_image (global attention a few query rows at a time) gives ImageEncoderViT's features exactly,
    with non-zero relative-position tables (random SAM initialises them to zero)."""
    from guides.nets.sam_fast import encode_image

    model = build_tiny_sam(seed=4)
    with torch.no_grad():
        for block in model.image_encoder.blocks:
            block.attn.rel_pos_h.normal_(std=0.5)
            block.attn.rel_pos_w.normal_(std=0.5)
    image = blocks_image(70, 110)
    engine = SamEngine(model)
    engine.attention_chunk_bytes = chunk_bytes
    engine.set_image(image)
    reference = SamPredictor(model)
    reference.set_image(image)
    assert torch.equal(engine.predictor.features, reference.features)
    assert (engine.predictor.original_size, engine.predictor.input_size) == (reference.original_size, reference.input_size)
    with torch.inference_mode():
        x = model.preprocess(torch.rand(2, 3, 256, 256) * 255)
        assert torch.equal(encode_image(model.image_encoder, x, chunk_bytes), model.image_encoder(x))


@pytest.mark.parametrize("batch", [1, 3])
def test_decoder_transformer_identical_for_vit_sized_decoder(batch: int) -> None:
    """The shared-first-block transformer equals MaskDecoder's own (256 channels, 64x64 embedding)."""
    torch.manual_seed(batch)
    sam = Sam(image_encoder=torch.nn.Identity(), prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16),
              mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256)).eval()
    features = torch.randn(1, 256, 64, 64)
    points = torch.rand(batch, 2, 2) * 1024
    labels = torch.tensor([[1, 0]] * batch, dtype=torch.int)
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        hs, src = decode_tokens(sam, features, sparse, dense)
        decoder = sam.mask_decoder
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0).unsqueeze(0).expand(batch, -1, -1)
        ref_hs, ref_src = decoder.transformer(
            torch.repeat_interleave(features, batch, dim=0) + dense,
            torch.repeat_interleave(sam.prompt_encoder.get_dense_pe(), batch, dim=0),
            torch.cat((tokens, sparse), dim=1),
        )
    assert torch.equal(hs, ref_hs), (hs - ref_hs).abs().max()
    assert torch.equal(src, ref_src), (src - ref_src).abs().max()


def test_image_embedding_computed_once_per_image(tiny: Sam) -> None:
    calls = []
    handle = tiny.image_encoder.patch_embed.register_forward_hook(lambda *args: calls.append(1))
    try:
        engine = SamEngine(tiny)
        image = blocks_image(64, 64)
        engine.set_image(image)
        engine.set_image(image.copy())
        first, _ = engine.predict(np.array([[10.0, 10.0]]), np.array([1]), None)
        assert len(calls) == 1
        engine.set_image(image[::-1].copy())
        assert len(calls) == 2
        engine.set_image(image)  # recent images keep their embedding (guides run sam,mask)
        assert len(calls) == 2
        assert np.array_equal(engine.predict(np.array([[10.0, 10.0]]), np.array([1]), None)[0], first)
        for k in range(engine.cached_images):
            engine.set_image(np.full((8, 8, 3), k, np.uint8))
        engine.set_image(image)
        assert len(calls) == 3 + engine.cached_images
    finally:
        handle.remove()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_on_cpu(tiny: Sam, precision: str) -> None:
    """fp16/bf16 autocast (parity is an fp32 claim; here: it runs and the scores stay close)."""
    image = blocks_image(96, 128)
    settings = GeneratorSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    full = SamEngine(tiny)
    full.set_image(image)
    reduced = sam_common.engine_for(tiny, precision)
    try:
        reduced.set_image(image)
        segments = reduced.generate(settings)
    except RuntimeError as error:  # an op without a CPU kernel for this dtype in this torch build
        pytest.skip(f"{precision} autocast not supported on CPU here: {error}")
    reference = full.generate(settings)
    assert segments.masks.shape == reference.masks.shape and segments.masks.dtype == bool
    assert np.abs(segments.predicted_iou - reference.predicted_iou).max() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_masks_match_reference_on_cuda(tiny: Sam, build_tiny_sam) -> None:
    """On CUDA, kernels may change reduction order with batch shape: allow a few rounding pixels."""
    model = build_tiny_sam(seed=2).cuda()
    image = blocks_image(96, 128)
    settings = GeneratorSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    anns = reference_generate(model, image, settings)
    engine = SamEngine(model)
    engine.set_image(image)
    ours = engine.generate(settings)
    assert len(ours) == len(anns)
    differing = sum(int((m != a["segmentation"]).sum()) for m, a in zip(ours.masks, anns))
    assert differing <= len(anns), f"{differing} pixels differ over {len(anns)} masks"


# --------------------------------------------------------------------------------- the guide itself


def _rect(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_paint_sorts_by_area_overlaps_and_leaves_uncovered_black() -> None:
    shape = (20, 30)
    small = _rect(shape, 2, 6, 2, 6)          # 16 px, inside big
    big = _rect(shape, 0, 10, 0, 10)          # 100 px
    middle = _rect(shape, 5, 12, 8, 16)       # 56 px, overlaps big
    masks = np.stack([small, big, middle])
    guide = sam_common.paint_segments(masks, seed=7)
    colors = sam_common.segment_colors(3, 7)
    assert guide.dtype == np.uint8 and guide.shape == (20, 30, 3)
    # rank 0 = largest (big), 1 = middle, 2 = small; smaller masks are painted on top
    assert (guide[small] == colors[2]).all()
    assert (guide[middle & ~small] == colors[1]).all()
    assert (guide[big & ~middle & ~small] == colors[0]).all()
    uncovered = ~(small | big | middle)
    assert uncovered.sum() > 0 and (guide[uncovered] == 0).all()
    assert len(np.unique(guide.reshape(-1, 3), axis=0)) == 4


def test_paint_equal_areas_keep_generator_order_and_empty_list_is_black() -> None:
    shape = (8, 8)
    first, second = _rect(shape, 0, 4, 0, 4), _rect(shape, 2, 6, 2, 6)   # both 16 px, overlapping
    guide = sam_common.paint_segments(np.stack([first, second]), seed=0)
    colors = sam_common.segment_colors(2, 0)
    assert (guide[2:4, 2:4] == colors[1]).all()  # the later of two equal areas lies on top, as in SamDetector
    assert not sam_common.paint_segments(np.zeros((0, 5, 7), bool)).any()
    assert sam_common.paint_segments(np.zeros((0, 5, 7), bool)).shape == (5, 7, 3)


def test_paint_matches_controlnet_aux_samdetector_regions() -> None:
    """Same regions as controlnet_aux's show_anns (which colours them at random)."""
    from controlnet_aux.segment_anything import SamDetector

    rng = np.random.default_rng(3)
    masks = np.zeros((12, 40, 50), dtype=bool)
    for mask in masks:
        y0, x0 = rng.integers(0, 30), rng.integers(0, 40)
        mask[y0:y0 + rng.integers(3, 25), x0:x0 + rng.integers(3, 25)] = True
    anns = [{"segmentation": m, "area": int(m.sum())} for m in masks]
    np.random.seed(0)
    theirs = SamDetector(None).show_anns(anns)
    ours = sam_common.paint_segments(masks, seed=1)
    assert same_partition(ours, theirs)


def test_colors_deterministic_distinct_never_black_and_prefix_stable() -> None:
    colors = sam_common.segment_colors(500, 42)
    assert np.array_equal(colors, sam_common.segment_colors(500, 42))
    assert np.array_equal(colors[:20], sam_common.segment_colors(20, 42))
    assert len(np.unique(colors, axis=0)) == 500
    assert not (colors == 0).all(axis=1).any()
    assert not np.array_equal(colors[:20], sam_common.segment_colors(20, 43))
    with pytest.raises(UsageError):
        sam_common.segment_colors(3, -1)


# ------------------------------------------------------------- NMS and small regions, synthetic masks


def _synthetic_segments(shape: tuple[int, int] = (40, 60)) -> Segments:
    masks = []
    base = _rect(shape, 5, 30, 5, 30)
    masks.append(base)                                    # clean square
    holed = base.copy(); holed[15:18, 15:18] = False      # 9 px hole
    masks.append(holed)                                   # duplicate of the square once the hole is filled
    island = _rect(shape, 10, 35, 35, 55); island[1:3, 1:3] = True   # 4 px island far away
    masks.append(island)
    masks.append(_rect(shape, 0, 40, 0, 60))              # everything
    masks.append(_rect(shape, 6, 29, 6, 31))              # near-duplicate of the square (box IoU > 0.7)
    tiny_only = np.zeros(shape, bool); tiny_only[0:2, 58:60] = True   # only a small island: kept as the largest
    masks.append(tiny_only)
    masks_np = np.stack(masks)
    boxes = batched_mask_to_box(torch.as_tensor(masks_np)).numpy()
    n = len(masks_np)
    return Segments(masks_np, boxes, np.linspace(0.9, 0.5, n).astype(np.float32), np.linspace(0.99, 0.9, n).astype(np.float32),
                    np.arange(2 * n, dtype=np.float64).reshape(n, 2))


@pytest.mark.parametrize("min_area,nms", [(5, 0.7), (10, 0.7), (10, 0.95), (1000, 0.7)])
def test_small_region_cleanup_matches_segment_anything(min_area: int, nms: float) -> None:
    segments = _synthetic_segments()
    data = MaskData(
        rles=mask_to_rle_pytorch(torch.as_tensor(segments.masks)),
        boxes=torch.as_tensor(segments.boxes),
        iou_preds=torch.as_tensor(segments.predicted_iou),
        points=torch.as_tensor(segments.points),
        stability_score=torch.as_tensor(segments.stability_score),
    )
    data.to_numpy()
    reference = SamAutomaticMaskGenerator.postprocess_small_regions(data, min_area, nms)
    ours = remove_small_regions_and_duplicates(segments, min_area, nms)
    ref_masks = np.stack([rle_to_mask(rle) for rle in reference["rles"]])
    assert 1 < len(ours) < len(segments) or min_area == 1000, f"kept {len(ours)} of {len(segments)}: the case must exercise NMS"
    assert np.array_equal(ours.masks, ref_masks)
    assert np.array_equal(ours.boxes, reference["boxes"])
    assert np.array_equal(ours.predicted_iou, reference["iou_preds"])
    assert np.array_equal(ours.points, reference["points"])


def test_generate_nms_prefers_higher_predicted_iou(tiny: Sam) -> None:
    """With NMS on, no two kept masks have a box IoU above the threshold, and the best-scored one wins."""
    from torchvision.ops import box_iou

    image = blocks_image(96, 128)
    engine = SamEngine(tiny)
    engine.set_image(image)
    everything = engine.generate(GeneratorSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.3, box_nms_thresh=1.0))
    kept = engine.generate(GeneratorSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.3, box_nms_thresh=0.5))
    assert 1 < len(kept) < len(everything)
    ious = box_iou(torch.as_tensor(kept.boxes).float(), torch.as_tensor(kept.boxes).float())
    ious.fill_diagonal_(0)
    assert float(ious.max()) <= 0.5
    assert float(kept.predicted_iou[0]) == float(everything.predicted_iou.max())
    assert list(kept.predicted_iou) == sorted(kept.predicted_iou, reverse=True)


# --------------------------------------------------------------------------- annotator and options


def test_annotator_guide_is_deterministic_and_seed_only_changes_colours(tiny: Sam, build_tiny_sam) -> None:
    image = blocks_image(96, 128)
    options = SamOptions(resolution=0, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.3, seed=5)
    annotator = SamAnnotator(options, model=tiny)
    first = annotator.annotate(image)
    again = SamAnnotator(options, model=build_tiny_sam(seed=2)).annotate(image)
    assert first.tobytes() == again.tobytes()
    other = SamAnnotator(dataclasses.replace(options, seed=6), model=tiny).annotate(image)
    assert not np.array_equal(first, other) and same_partition(first, other)
    segments = annotator.segments(image)
    assert len(segments) >= 4
    assert np.array_equal(first, sam_common.paint_segments(segments.masks, seed=5))


def test_annotator_resolution_is_the_working_size(tiny: Sam) -> None:
    annotator = SamAnnotator(SamOptions(resolution=64, points_per_side=2), model=tiny)
    assert annotator.annotate(blocks_image(96, 128)).shape == (64, 64, 3)  # ControlNet's resize: sides to multiples of 64


@pytest.mark.parametrize(
    "values,message",
    [
        ({"model": "vit_x"}, "unknown SAM model"),
        ({"points_per_side": 0}, "points_per_side"),
        ({"pred_iou_thresh": 1.5}, "pred_iou_thresh"),
        ({"stability_score_thresh": -0.1}, "stability_score_thresh"),
        ({"min_region_area": -1}, "min_region_area"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_options_are_usage_errors(tiny: Sam, values: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        SamAnnotator(SamOptions(**values), model=tiny)


def test_missing_checkpoint_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from guides.cli.main import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("GUIDES_MODELS_DIR", raising=False)
    image = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(blocks_image(64, 64)).save(image)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["sam", str(image), "--model", "vit_l", "--models-dir", str(tmp_path / "empty"), "-q"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "sam_vit_l_0b3195.pth" in err and "\n" not in err, err


# ---------------------------------------------------------------------------------- ViT-B, once


@dataclasses.dataclass
class VitB:
    reference: Sam
    annotator: SamAnnotator
    image: np.ndarray
    models_dir: Path
    _guide: np.ndarray | None = None

    @property
    def guide(self) -> np.ndarray:
        """The annotator's guide of the image (computed once)."""
        if self._guide is None:
            self._guide = self.annotator.annotate(self.image)
        return self._guide

    def reference_generator(self, settings: GeneratorSettings) -> SamAutomaticMaskGenerator:
        """The reference generator, given the image embedding our engine computed (after the weights were
        checked equal), so the session pays for the reference encoder once
        (``test_vit_b_image_embedding_identical_to_samPredictors``)."""
        generator = SamAutomaticMaskGenerator(self.reference, **settings.reference_kwargs())
        ours = self.annotator.engine.predictor

        def set_image(image: np.ndarray, image_format: str = "RGB") -> None:
            assert image.shape[:2] == tuple(ours.original_size)
            generator.predictor.reset_image()
            generator.predictor.features = ours.features
            generator.predictor.original_size = ours.original_size
            generator.predictor.input_size = ours.input_size
            generator.predictor.is_image_set = True

        generator.predictor.set_image = set_image  # type: ignore[method-assign]
        return generator


@pytest.fixture(scope="session")
def vit_b(tmp_path_factory: pytest.TempPathFactory) -> VitB:
    """Random ViT-B saved as the public ``sam_vit_b_01ec64.pth`` (a plain state dict), loaded through the
    weights contract by the annotator; the image embedded once (non-square: 320x224)."""
    torch.manual_seed(0)
    reference = sam_model_registry["vit_b"]().eval()
    with torch.no_grad():  # random SAM starts its relative-position tables at zero; make them count
        for block in reference.image_encoder.blocks:
            block.attn.rel_pos_h.normal_(std=0.1)
            block.attn.rel_pos_w.normal_(std=0.1)
    models_dir = tmp_path_factory.mktemp("sam-models")
    torch.save(reference.state_dict(), models_dir / "sam_vit_b_01ec64.pth")
    options = SamOptions(model="vit_b", models_dir=str(models_dir), device="cpu", resolution=0, points_per_side=4,
                         pred_iou_thresh=0.0, stability_score_thresh=0.0, seed=3)
    annotator = SamAnnotator(options)
    loaded = annotator.engine.model.state_dict()
    assert all(torch.equal(tensor, loaded[key]) for key, tensor in reference.state_dict().items())
    image = blocks_image(224, 320)
    annotator.engine.set_image(image)
    return VitB(reference, annotator, image, models_dir)


def test_vit_b_image_embedding_identical_to_samPredictors(vit_b: VitB) -> None:
    predictor = SamPredictor(vit_b.reference)
    predictor.set_image(vit_b.image)
    ours = vit_b.annotator.engine.predictor
    assert torch.equal(ours.features, predictor.features), (ours.features - predictor.features).abs().max()


def test_vit_b_engine_shared_by_annotators_of_the_same_model(vit_b: VitB) -> None:
    from guides.annotators.mask import MaskAnnotator, MaskOptions

    mask = MaskAnnotator(MaskOptions(model="vit_b", models_dir=str(vit_b.models_dir), device="cpu"))
    assert mask.engine is vit_b.annotator.engine  # one model in memory, one encoder pass per image


def test_vit_b_masks_identical_to_segment_anything(vit_b: VitB) -> None:
    settings = GeneratorSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    anns = vit_b.reference_generator(settings).generate(vit_b.image)
    assert len(anns) == 3 * 16  # every candidate: nothing filtered
    assert_same_masks(vit_b.annotator.engine.generate(settings), anns)


def test_vit_b_guide_is_the_painted_reference_masks(vit_b: VitB) -> None:
    """The annotator's own settings (thresholds 0, NMS 0.7): same masks after NMS, painted with the seed."""
    options = vit_b.annotator.options
    settings = GeneratorSettings(points_per_side=options.points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    anns = vit_b.reference_generator(settings).generate(vit_b.image)
    assert len(anns) >= 1
    expected = sam_common.paint_segments(np.stack([a["segmentation"] for a in anns]), seed=3)
    assert np.array_equal(vit_b.guide, expected)


def test_vit_b_mask_with_a_point_is_samPredictors_best(vit_b: VitB) -> None:
    from guides.annotators.mask import MaskAnnotator, MaskOptions

    predictor = SamPredictor(vit_b.reference)
    engine_predictor = vit_b.annotator.engine.predictor
    predictor.features, predictor.original_size, predictor.input_size = engine_predictor.features, engine_predictor.original_size, engine_predictor.input_size
    predictor.is_image_set = True
    masks, scores, _ = predictor.predict(np.array([[100.0, 60.0]]), np.array([1]), multimask_output=True)
    best = masks[int(np.argmax(scores))]
    ours = MaskAnnotator(MaskOptions(points=("100,60",), model="vit_b"), model=vit_b.annotator.engine).annotate(vit_b.image)
    assert np.array_equal(ours == 0, best), f"{int(((ours == 0) != best).sum())} pixels differ"
    assert set(np.unique(ours)) <= {0, 255}


def _use_engine(monkeypatch: pytest.MonkeyPatch, engine: SamEngine) -> None:
    """CLI runs reuse the session's loaded ViT-B and its image embedding (loading is tested above)."""
    monkeypatch.setattr(sam_common, "load_engine", lambda *args, **kwargs: engine)
    monkeypatch.setattr(engine, "reset", lambda: None)


def test_vit_b_cli_sam_writes_the_guide(vit_b: VitB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from guides.cli.main import cli

    _use_engine(monkeypatch, vit_b.annotator.engine)
    source = tmp_path / "blocks.png"
    Image.fromarray(vit_b.image).save(source)
    args = ["sam", str(source), "--model", "vit_b", "--resolution", "0", "--points-per-side", "4", "--pred-iou-thresh", "0",
            "--stability-score-thresh", "0", "--seed", "3", "-q"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(tmp_path / "blocks.sam.png").convert("RGB"))
    assert np.array_equal(written, vit_b.guide)


def test_vit_b_cli_inpaint_target_writes_mask_and_target(vit_b: VitB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from guides.annotators.composite import composite
    from guides.annotators.mask import MaskAnnotator, MaskOptions
    from guides.cli.main import cli

    _use_engine(monkeypatch, vit_b.annotator.engine)
    source = tmp_path / "in" / "blocks.png"
    source.parent.mkdir()
    Image.fromarray(vit_b.image).save(source)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["inpaint-target", str(source.parent), "--model", "vit_b", "--point", "100,60",
                                      "--background", "black", "-o", str(out), "--json", "-q"])
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(out / "mask" / "blocks.png"))
    target = np.asarray(Image.open(out / "target" / "blocks.png").convert("RGB"))
    expected = MaskAnnotator(MaskOptions(points=((100, 60),), model="vit_b"), model=vit_b.annotator.engine).annotate(vit_b.image)
    assert np.array_equal(mask, expected)
    assert np.array_equal(target, composite(vit_b.image, np.repeat(expected[:, :, None], 3, axis=2), (0, 0, 0)))
    rerun = CliRunner().invoke(cli, ["inpaint-target", str(source.parent), "--model", "vit_b", "--point", "100,60", "-o", str(out), "--json", "-q"])
    assert '"skipped": 1' in rerun.output
    refused = CliRunner().invoke(cli, ["inpaint-target", str(source), "-o", str(tmp_path / "x.png")])
    assert isinstance(refused.exception, UsageError) and "give a folder" in str(refused.exception)
