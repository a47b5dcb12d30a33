"""guides mask: prompts give exactly SamPredictor's best mask, the automatic rule, finishing, options, the
inpainting stage and the Python API. A small random SAM (see test_sam.py for why it is built this way)
keeps these fast; the ViT-B point check is in test_sam.py with the session's ViT-B.
"""

from __future__ import annotations

import importlib
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

torch = importlib.import_module("torch")  # in the test extra: a missing one fails
importlib.import_module("segment_anything")  # in the test extra: a missing one fails

from segment_anything import SamPredictor  # noqa: E402
from segment_anything.modeling import Sam  # noqa: E402

import guides  # noqa: E402
from guides.annotators import sam_engine_sharing, sam_prompts, segment_painting, subject_masks  # noqa: E402
from guides.annotators.composite import composite  # noqa: E402
from guides.annotators.mask import MaskAnnotator, MaskOptions  # noqa: E402
from guides.errors import InputError, UsageError  # noqa: E402
from guides.nets.sam_engine import SamEngine  # noqa: E402
from guides.nets.sam_mask_generator import GeneratorSettings, Segments  # noqa: E402


def blocks_image(height: int = 96, width: int = 128) -> np.ndarray:
    image = np.full((height, width, 3), 30, dtype=np.uint8)
    image[int(0.10 * height):int(0.52 * height), int(0.08 * width):int(0.47 * width)] = (250, 40, 40)
    image[int(0.42 * height):int(0.94 * height), int(0.55 * width):int(0.94 * width)] = (40, 250, 40)
    image[int(0.62 * height):int(0.94 * height), int(0.04 * width):int(0.31 * width)] = (40, 40, 250)
    return image


@pytest.fixture(scope="module")
def tiny(build_tiny_sam) -> Sam:
    return build_tiny_sam(seed=2)


def predictor_best(model: Sam, image: np.ndarray, points=None, labels=None, box=None) -> np.ndarray:
    """What a user of segment_anything gets: SamPredictor, multimask output, highest score."""
    predictor = SamPredictor(model)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(
        point_coords=None if points is None else np.asarray(points, dtype=np.float64),
        point_labels=None if labels is None else np.asarray(labels),
        box=None if box is None else np.asarray(box, dtype=np.float64),
        multimask_output=True,
    )
    return masks[int(np.argmax(scores))]


# ------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize(
    "prompts",
    [
        {"points": [(30, 40)]},
        {"points": [(100, 70)], "negative_points": [(20, 20)]},
        {"points": [(30, 40), (40, 30)]},
        {"box": (5, 8, 62, 52)},
        {"points": [(100, 70)], "box": (65, 38, 123, 92)},
    ],
    ids=["point", "point+negative", "two points", "box", "point+box"],
)
def test_prompts_give_samPredictors_highest_scoring_mask(tiny: Sam, prompts: dict) -> None:
    image = blocks_image()
    points = list(prompts.get("points", [])) + list(prompts.get("negative_points", []))
    labels = [1] * len(prompts.get("points", [])) + [0] * len(prompts.get("negative_points", []))
    expected = predictor_best(tiny, image, points or None, labels or None, prompts.get("box"))
    assert 0 < expected.sum() < expected.size, "the prompt must give a real subject"
    keep = MaskAnnotator(MaskOptions(**prompts), model=tiny).annotate(image)
    assert keep.dtype == np.uint8 and keep.shape == image.shape[:2] and set(np.unique(keep)) == {0, 255}
    assert np.array_equal(keep == 0, expected), f"{int(((keep == 0) != expected).sum())} pixels differ"
    repaint = MaskAnnotator(MaskOptions(invert=True, **prompts), model=tiny).annotate(image)
    assert np.array_equal(repaint == 255, expected)


def test_bf16_prompts_on_the_cpu_give_a_mask_close_to_fp32(tiny: Sam) -> None:
    """bf16 autocast on the CPU: the prompt path returns bf16 scores, which numpy cannot take (this was an
    internal error, ``Got unsupported ScalarType BFloat16``); the mask must come out and be nearly fp32's."""
    image = blocks_image()
    full = MaskAnnotator(MaskOptions(points=[(30, 40)]), model=tiny).annotate(image)
    reduced = MaskAnnotator(MaskOptions(points=[(30, 40)], precision="bf16"), model=tiny).annotate(image)
    assert reduced.dtype == np.uint8 and reduced.shape == full.shape and set(np.unique(reduced)) <= {0, 255}
    assert (reduced != full).mean() < 0.02, f"{(reduced != full).mean():.3%} of pixels differ from fp32"


def test_points_are_input_pixels_when_resizing(tiny: Sam) -> None:
    """At --resolution 64 the subject is SamPredictor's at the working size (64x64, the point scaled),
    and the mask comes out at the input size: that subject resized by nearest neighbour."""
    image = blocks_image(96, 128)
    mask = MaskAnnotator(MaskOptions(points=("64,48",), resolution=64), model=tiny).annotate(image)
    working = guides.imaging.resize_image(image, 64)
    assert working.shape[:2] == (64, 64) and mask.shape == (96, 128)
    expected = predictor_best(tiny, working, [(32.0, 32.0)], [1])
    assert 0 < expected.sum() < expected.size
    assert np.array_equal(mask == 0, segment_painting.resize_nearest(expected, 96, 128))
    assert set(np.unique(mask)) == {0, 255}


def test_mask_of_an_odd_sized_input_has_its_size_and_dilates_in_input_pixels(tiny: Sam) -> None:
    image = blocks_image(75, 113)
    options = MaskOptions(points=((90, 55),), resolution=64)
    working = guides.imaging.resize_image(image, 64)
    assert working.shape[:2] == (64, 128)
    subject = segment_painting.resize_nearest(predictor_best(tiny, working, [(90 * 128 / 113, 55 * 64 / 75)], [1]), 75, 113)
    assert 0 < subject.sum() < subject.size
    assert np.array_equal(MaskAnnotator(options, model=tiny).annotate(image), subject_masks.finish_mask(subject))
    grown = MaskAnnotator(MaskOptions(points=((90, 55),), resolution=64, dilate=3, invert=True), model=tiny).annotate(image)
    assert grown.shape == (75, 113)
    assert np.array_equal(grown, subject_masks.finish_mask(subject, invert=True, dilate=3))


def test_point_outside_the_image_fails_that_image_only(tiny: Sam) -> None:
    annotator = MaskAnnotator(MaskOptions(points=((200, 10),)), model=tiny)
    with pytest.raises(InputError, match="point 200,10 is outside the 128x96 image"):
        annotator.annotate(blocks_image(96, 128))
    assert annotator.annotate(blocks_image(96, 256)).shape == (96, 256)
    with pytest.raises(InputError, match="box"):
        MaskAnnotator(MaskOptions(box=(0, 0, 300, 50)), model=tiny).annotate(blocks_image())


@pytest.mark.parametrize(
    "values,message",
    [
        ({"points": ("12",)}, "a point must be 2 comma-separated numbers"),
        ({"points": ("a,b",)}, "a point must be 2"),
        ({"negative_points": ("1,nan",)}, "finite"),
        ({"box": "10,10,5,20"}, "X0 < X1"),
        ({"box": (1, 2, 3)}, "4 comma-separated"),
        ({"model": "vit_t"}, "unknown SAM model"),
        ({"feather": -1}, "feather"),
        ({"points_per_side": 300}, "points_per_side"),
    ],
)
def test_bad_options_are_usage_errors(tiny: Sam, values: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        MaskAnnotator(MaskOptions(**values), model=tiny)


def test_point_parsing_accepts_strings_pairs_and_numpy() -> None:
    assert sam_prompts.normalize_points(["1,2", (3, 4.5), np.array([5, 6])], "points") == ((1.0, 2.0), (3.0, 4.5), (5.0, 6.0))
    assert sam_prompts.normalize_points(" 7 , 8 ", "points") == ((7.0, 8.0),)
    assert sam_prompts.normalize_box("1,2,3,4") == (1.0, 2.0, 3.0, 4.0)


# ---------------------------------------------------------------------------------- automatic rule


def _segments(masks: list[np.ndarray], ious: list[float], stabilities: list[float]) -> Segments:
    n = len(masks)
    return Segments(np.stack(masks), np.zeros((n, 4), np.int64), np.asarray(ious, np.float32),
                    np.asarray(stabilities, np.float32), np.zeros((n, 2)))


def test_automatic_subject_rule_on_known_masks() -> None:
    shape = (10, 12)  # centre pixel: row 5, column 6
    whole = np.ones(shape, bool)
    left = np.zeros(shape, bool); left[:, :6] = True            # misses the centre
    centre = np.zeros(shape, bool); centre[3:8, 4:9] = True
    bigger = np.zeros(shape, bool); bigger[2:9, 3:10] = True
    segs = _segments([whole, left, centre, bigger], [0.90, 0.99, 0.95, 0.95], [0.9, 0.9, 0.96, 0.96])
    assert subject_masks.automatic_subject(segs, *shape) == 3        # tie on IoU and stability: larger area
    segs = _segments([whole, left, centre, bigger], [0.90, 0.99, 0.95, 0.95], [0.9, 0.9, 0.97, 0.96])
    assert subject_masks.automatic_subject(segs, *shape) == 2        # tie on IoU: higher stability
    segs = _segments([centre, centre.copy()], [0.9, 0.9], [0.9, 0.9])
    assert subject_masks.automatic_subject(segs, *shape) == 0        # full tie: the earlier mask
    assert subject_masks.automatic_subject(_segments([left], [0.99], [0.99]), *shape) is None
    assert subject_masks.automatic_subject(Segments.empty(*shape), *shape) is None


def test_automatic_mask_follows_the_rule_end_to_end(tiny: Sam) -> None:
    image = blocks_image(96, 128)
    image[28:67, 44:83] = 255  # a white block over the centre
    options = MaskOptions(points_per_side=8, pred_iou_thresh=0.05, stability_score_thresh=0.2)
    engine = SamEngine(tiny)
    engine.set_image(image)
    segments = engine.generate(GeneratorSettings(points_per_side=8, pred_iou_thresh=0.05, stability_score_thresh=0.2))
    chosen = subject_masks.automatic_subject(segments, 96, 128)
    covering = [i for i in range(len(segments)) if segments.masks[i, 48, 64]]
    assert chosen is not None and len(covering) >= 2, "the rule must choose between several masks"
    mask = MaskAnnotator(options, model=engine).annotate(image)
    assert np.array_equal(mask == 0, segments.masks[chosen])


def test_automatic_mask_falls_back_to_the_centre_point(tiny: Sam) -> None:
    image = blocks_image(96, 128)
    mask = MaskAnnotator(MaskOptions(points_per_side=4, pred_iou_thresh=1.0), model=tiny).annotate(image)  # no automatic mask
    assert np.array_equal(mask == 0, predictor_best(tiny, image, [(64.0, 48.0)], [1]))


# ------------------------------------------------------------------------------------- finishing


def _square(size: int = 40, start: int = 15, side: int = 10) -> np.ndarray:
    subject = np.zeros((size, size), bool)
    subject[start:start + side, start:start + side] = True
    return subject


def test_finish_mask_convention_invert_and_dilate() -> None:
    subject = _square()
    keep = subject_masks.finish_mask(subject)
    assert keep.dtype == np.uint8 and np.array_equal(keep == 0, subject) and np.array_equal(keep == 255, ~subject)
    assert np.array_equal(subject_masks.finish_mask(subject, invert=True), 255 - keep)
    grown = subject_masks.finish_mask(subject, dilate=2)      # white grows by 2 px: the kept square shrinks to 6x6
    assert np.array_equal(grown == 0, _square(start=17, side=6))
    shrunk = subject_masks.finish_mask(subject, dilate=-2)    # white shrinks: the kept square grows (disc corners)
    black = shrunk == 0
    assert black[subject].all() and black[13:27, 15:25].all() and black[15:25, 13:27].all()
    assert not black[13, 13] and black.sum() < 14 * 14
    repaint_grown = subject_masks.finish_mask(subject, invert=True, dilate=1)
    assert np.array_equal(repaint_grown == 255, _cross_grown(subject))  # a radius-1 disc is the 3x3 cross


def _cross_grown(subject: np.ndarray) -> np.ndarray:
    """The subject plus its 4-neighbours."""
    grown = subject.copy()
    grown[1:] |= subject[:-1]; grown[:-1] |= subject[1:]
    grown[:, 1:] |= subject[:, :-1]; grown[:, :-1] |= subject[:, 1:]
    return grown


def test_feather_softens_only_the_edge() -> None:
    subject = _square()
    soft = subject_masks.finish_mask(subject, feather=3)
    assert soft[20, 20] == 0 and soft[0, 0] == 255 and soft[20, 39] == 255
    assert 0 < soft[20, 15] < 255 and 0 < soft[20, 14] < 255
    row = soft[20, 5:21].astype(int)
    assert (np.diff(row) <= 0).all(), row  # falls monotonically from white outside to black inside


# ---------------------------------------------------------------------------------- wiring and API


def test_inpaint_stage_writes_mask_and_its_composite(tiny: Sam) -> None:
    from guides.cli.inpaint import InpaintTargetStage

    image = blocks_image(96, 128)
    annotator = MaskAnnotator(MaskOptions(points=((30, 40),), resolution=64, batch_size=2), model=tiny)
    stage = InpaintTargetStage(annotator, (0, 255, 0))
    assert stage.batch_size == 2 and stage.batch_key(image) == annotator.batch_key(image)
    (mask, target), = stage.annotate_batch([image])
    assert mask.shape == target.shape[:2] == (96, 128)  # the input's size, as guides mask writes it
    assert np.array_equal(mask, annotator.annotate(image))
    assert 0 < (mask == 0).sum() < mask.size
    assert np.array_equal(target[mask == 0], image[mask == 0])
    assert (target[mask == 255] == (0, 255, 0)).all()
    assert np.array_equal(target, composite(image, np.repeat(mask[:, :, None], 3, axis=2), (0, 255, 0)))


def test_cli_and_api_parse_points_and_flags(tiny: Sam, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from guides.cli.main import cli

    engine = SamEngine(tiny)
    monkeypatch.setattr(sam_engine_sharing, "load_engine", lambda *args, **kwargs: engine)
    image = blocks_image(96, 128)
    source = tmp_path / "photo.png"
    Image.fromarray(image).save(source)
    result = CliRunner().invoke(cli, ["mask", str(source), "--point", "30,40", "--negative-point", "100,70", "--invert", "-q"])
    assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(tmp_path / "photo.mask.png"))
    expected = predictor_best(tiny, image, [(30, 40), (100, 70)], [1, 0])
    assert np.array_equal(written == 255, expected)
    api = np.asarray(guides.mask(source, points=[(30, 40)], negative_points=["100,70"], invert=True))
    assert np.array_equal(api, written)
    bad = CliRunner().invoke(cli, ["mask", str(source), "--point", "30;40"])
    assert bad.exit_code == 2 and "a point must be 2 comma-separated numbers" in bad.output
    guide = guides.sam(source, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert guide.mode == "RGB" and guide.size == (128, 96)  # computed at the working size 704x512, written at the input's


def test_oversized_working_size_is_refused_before_encoding(tiny: Sam) -> None:
    """sam and mask refuse an image whose working size is over the limit (one InputError for that file),
    before the image is resized or encoded; the default limit lets ordinary images through."""
    from guides.annotators.sam import SamAnnotator, SamOptions

    strip = np.full((3, 700, 3), 90, dtype=np.uint8)
    annotator = SamAnnotator(SamOptions(resolution=512, points_per_side=4), model=tiny)
    with pytest.raises(InputError, match=r"700x3 image: working size 119488x512 at --resolution 512 has "
                                         r"61,177,856 pixels, over the sam limit of 33,554,432"):
        annotator.annotate(strip)
    assert not annotator.engine.predictor.is_image_set
    masker = MaskAnnotator(MaskOptions(points=((10, 10),), max_working_pixels=12_000), model=tiny)
    with pytest.raises(InputError, match=r"128x96 image: working size 128x96 at its own size has 12,288 pixels, over the mask limit"):
        masker.annotate(blocks_image(96, 128))
    assert MaskAnnotator(MaskOptions(points=((10, 10),)), model=tiny).annotate(blocks_image(96, 128)).shape == (96, 128)
