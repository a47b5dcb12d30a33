"""The seven no-network union conditions (blur, tile, gray, low-quality, shuffle, color, binary): bit-exact
against their formulas written here independently with OpenCV/NumPy (and shuffle against controlnet_aux
itself), options, bad options, working-size guards, 1 x 1 and 3 x 700 images, folder runs and CLI = API."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from guides.annotators.binary import BinaryAnnotator
from guides.annotators.blur import BlurAnnotator
from guides.annotators.color import ColorAnnotator
from guides.annotators.gray import GrayAnnotator
from guides.annotators.low_quality import LowQualityAnnotator
from guides.annotators.shuffle import ShuffleAnnotator
from guides.annotators.tile import TileAnnotator
from guides.errors import InputError, UsageError
from tests.annotators.bad_folder_runs import FINE_PHOTO, write_bad_folder

CLASSES = (BlurAnnotator, TileAnnotator, GrayAnnotator, LowQualityAnnotator, ShuffleAnnotator, ColorAnnotator,
           BinaryAnnotator)
SHAPES = [(96, 128), (150, 90), (77, 203)]  # landscape, portrait, odd sizes


def build(cls, **options):
    return cls(cls.Options(**options))


def cn_resize(image: np.ndarray, resolution: int) -> np.ndarray:
    """ControlNet's resize_image, written again: short side to N, sides multiples of 64."""
    h, w = image.shape[:2]
    k = resolution / min(h, w)
    size = (int(np.round(w * k / 64.0)) * 64, int(np.round(h * k / 64.0)) * 64)
    return cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


def back(guide: np.ndarray, image: np.ndarray, interpolation: int) -> np.ndarray:
    h, w = image.shape[:2]
    return guide if guide.shape[:2] == (h, w) else cv2.resize(guide, (w, h), interpolation=interpolation)


def photos(make_photo, refs_dir: Path | None = None) -> list[np.ndarray]:
    return [make_photo(60 + i, h, w) for i, (h, w) in enumerate(SHAPES)]


def assert_same(ours: np.ndarray, expected: np.ndarray) -> None:
    assert ours.dtype == np.uint8 and ours.shape == expected.shape
    assert np.array_equal(ours, expected), f"{int((ours != expected).sum())} values differ"


# ---------------------------------------------------------------- formulas written again, independently

def blur_formula(image, sigma=9.0):
    return cv2.GaussianBlur(image, (0, 0), sigma)


def tile_formula(image, factor=8.0):
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, int(w / factor)), max(1, int(h / factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def gray_formula(image):
    y = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.repeat(y[:, :, None], 3, axis=2)


def low_quality_formula(image, factor=4.0, quality=30):
    bgr = cv2.cvtColor(tile_formula(image, factor), cv2.COLOR_RGB2BGR)
    _, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1]


def color_formula(image, resolution=512):
    """The WebUI's apply_color (cv2_resize_shortest_edge, cubic down by 64, nearest up), then nearest back."""
    h, w = image.shape[:2]
    if h < w:
        size = (int(round(w / h * resolution)), resolution)
    else:
        size = (resolution, int(round(h / w * resolution)))
    work = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    wh, ww = work.shape[:2]
    palette = cv2.resize(work, (ww // 64, wh // 64), interpolation=cv2.INTER_CUBIC)
    return back(cv2.resize(palette, (ww, wh), interpolation=cv2.INTER_NEAREST), image, cv2.INTER_NEAREST)


def binary_formula(image, threshold=0):
    y = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if threshold in (0, 255):
        t = cv2.threshold(y, 0, 255, cv2.THRESH_OTSU)[0]
        return np.where(y <= t, 255, 0).astype(np.uint8)
    return np.where(y <= threshold, 255, 0).astype(np.uint8)


def shuffle_reference(image, seed=0, resolution=512):
    """controlnet_aux's ContentShuffleDetector after np.random.seed(seed) (global state restored after)."""
    from controlnet_aux.shuffle import ContentShuffleDetector

    state = np.random.get_state()
    try:
        np.random.seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = ContentShuffleDetector()(image, detect_resolution=resolution, image_resolution=resolution,
                                           output_type="np")
    finally:
        np.random.set_state(state)
    return back(out, image, cv2.INTER_LINEAR)


# ---------------------------------------------------------------- bit-exactness

@pytest.mark.parametrize("cls, formula, options", [
    (BlurAnnotator, blur_formula, {}), (BlurAnnotator, lambda x: blur_formula(x, 2.5), {"sigma": 2.5}),
    (TileAnnotator, tile_formula, {}), (TileAnnotator, lambda x: tile_formula(x, 3.0), {"factor": 3.0}),
    (GrayAnnotator, gray_formula, {}),
    (LowQualityAnnotator, low_quality_formula, {}),
    (LowQualityAnnotator, lambda x: low_quality_formula(x, 2.0, 70), {"factor": 2.0, "quality": 70}),
    (ColorAnnotator, color_formula, {}), (ColorAnnotator, lambda x: color_formula(x, 256), {"resolution": 256}),
    (BinaryAnnotator, binary_formula, {}), (BinaryAnnotator, lambda x: binary_formula(x, 255), {"threshold": 255}),
    (BinaryAnnotator, lambda x: binary_formula(x, 100), {"threshold": 100}),
    (ShuffleAnnotator, shuffle_reference, {}), (ShuffleAnnotator, lambda x: shuffle_reference(x, 7), {"seed": 7}),
], ids=lambda v: getattr(v, "name", None) or (str(v) if isinstance(v, dict) else ""))
def test_bit_exact_with_the_formula(make_photo, cls, formula, options) -> None:
    annotator = build(cls, **options)
    for image in photos(make_photo):
        assert_same(annotator.annotate(image), formula(image))


@pytest.mark.parametrize("cls, formula", [(BlurAnnotator, blur_formula), (TileAnnotator, tile_formula),
                                          (GrayAnnotator, gray_formula), (BinaryAnnotator, binary_formula),
                                          (LowQualityAnnotator, low_quality_formula)])
def test_resolution_computes_at_the_controlnet_working_size(make_photo, cls, formula) -> None:
    image = make_photo(70, 150, 90)
    interpolation = cv2.INTER_NEAREST if cls is BinaryAnnotator else cv2.INTER_CUBIC
    expected = back(formula(cn_resize(image, 256)), image, interpolation)
    assert_same(build(cls, resolution=256).annotate(image), expected)


def test_bit_exact_on_the_reference_photos(refs: Path) -> None:
    import guides

    image = guides.to_rgb_array(refs / "cutecat_init.png")
    for cls, formula in [(BlurAnnotator, blur_formula), (TileAnnotator, tile_formula), (GrayAnnotator, gray_formula),
                         (LowQualityAnnotator, low_quality_formula), (ColorAnnotator, color_formula),
                         (BinaryAnnotator, binary_formula), (ShuffleAnnotator, shuffle_reference)]:
        assert_same(cls().annotate(image), formula(image))


def test_webui_binary_and_color_at_the_working_size(make_photo) -> None:
    """The WebUI's binary at res 512 is its guide at the ControlNet working size: ours at --resolution 512
    before the nearest resize back equals it (checked on a 512-short-side image, where no resize happens)."""
    image = make_photo(71, 512, 640)
    webui = binary_formula(cn_resize(image, 512))
    assert_same(build(BinaryAnnotator, resolution=512).annotate(image), webui)


# ---------------------------------------------------------------- properties and options

def test_binary_polarity_dark_content_is_white() -> None:
    paper = np.full((64, 64, 3), 230, np.uint8)
    paper[30:34, 5:60] = 20  # a dark stroke
    guide = BinaryAnnotator().annotate(paper)
    assert guide.ndim == 2 and set(np.unique(guide)) == {0, 255}
    assert (guide[30:34, 5:60] == 255).all() and guide[:20].max() == 0
    assert (BinaryAnnotator(BinaryAnnotator.Options(threshold=100)).annotate(paper)[31, 10]) == 255


def test_gray_channels_identical_and_shapes(make_photo) -> None:
    image = make_photo(72, 77, 203)
    guide = GrayAnnotator().annotate(image)
    assert (guide[..., 0] == guide[..., 1]).all() and (guide[..., 1] == guide[..., 2]).all()
    for cls in CLASSES:
        out = cls().annotate(image)
        assert out.shape[:2] == image.shape[:2]
        assert out.shape == ((77, 203) if cls is BinaryAnnotator else (77, 203, 3))


def test_shuffle_seeded_and_touches_no_global_state(make_photo) -> None:
    image = make_photo(73, 96, 128)
    state = np.random.get_state()
    first = ShuffleAnnotator().annotate(image)
    assert np.array_equal(first, ShuffleAnnotator().annotate(image))
    assert not np.array_equal(first, build(ShuffleAnnotator, seed=1).annotate(image))
    after = np.random.get_state()
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(state, after))


def test_low_quality_jitter_depends_on_seed_and_image_only(make_photo) -> None:
    from guides.annotators.low_quality import jpeg_quality

    a, b = make_photo(74, 96, 128), make_photo(75, 96, 128)
    assert jpeg_quality(a, 30, 0, 5) == 30
    qa = [jpeg_quality(a, 30, 20, seed) for seed in range(8)]
    assert qa == [jpeg_quality(a.copy(), 30, 20, seed) for seed in range(8)]  # same image, same draw
    assert len(set(qa)) > 1 and all(10 <= q <= 50 for q in qa)
    assert [jpeg_quality(b, 30, 20, s) for s in range(8)] != qa
    jittered = build(LowQualityAnnotator, jitter=20, seed=3)
    assert_same(jittered.annotate(a), low_quality_formula(a, 4.0, jpeg_quality(a, 30, 20, 3)))
    assert_same(jittered.annotate(b), jittered.annotate(b))


def test_declarations() -> None:
    assert [m.condition for m in TileAnnotator.union_modes] == ["tile", "tile"]
    assert {m.model for m in TileAnnotator.union_modes} == {"xinsir", "instantx"}
    assert [(m.model, m.condition) for m in BlurAnnotator.union_modes] == [("instantx", "blur")]
    assert [(m.model, m.condition) for m in GrayAnnotator.union_modes] == [("instantx", "gray")]
    assert [(m.model, m.condition) for m in LowQualityAnnotator.union_modes] == [("instantx", "low quality")]
    assert ShuffleAnnotator.union_modes == ColorAnnotator.union_modes == BinaryAnnotator.union_modes == ()
    assert TileAnnotator.controlnets[0].repo == "lllyasviel/control_v11f1e_sd15_tile"
    assert ShuffleAnnotator.controlnets[0].repo == "lllyasviel/control_v11e_sd15_shuffle"
    assert all(cls.checkpoints == () for cls in CLASSES)


@pytest.mark.parametrize("cls, options, message", [
    (BlurAnnotator, {"sigma": 0}, "sigma must be between 0.01 and 1000, got 0.0"),
    (TileAnnotator, {"factor": 0.5}, "factor must be between 1 and 1024, got 0.5"),
    (LowQualityAnnotator, {"quality": 0}, "quality must be between 1 and 100, got 0"),
    (LowQualityAnnotator, {"jitter": -1}, "jitter must be between 0 and 99, got -1"),
    (ShuffleAnnotator, {"seed": -1}, "seed must be between 0 and 4.29497e+09, got -1"),
    (BinaryAnnotator, {"threshold": 256}, "threshold must be between 0 and 255, got 256"),
    (ColorAnnotator, {"resolution": -1}, "resolution must be 0 or more, got -1"),
    (GrayAnnotator, {"max_working_pixels": 0}, "max_working_pixels must be 1 or more, got 0"),
])
def test_bad_options_are_refused(cls, options, message) -> None:
    with pytest.raises(UsageError) as raised:
        cls.Options(**options)
    assert str(raised.value) == message


# ---------------------------------------------------------------- tiny and extreme images

@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_one_pixel_image(cls) -> None:
    pixel = np.array([[[200, 40, 90]]], np.uint8)
    guide = cls().annotate(pixel)
    assert guide.shape[:2] == (1, 1)
    if cls in (BlurAnnotator, TileAnnotator, ColorAnnotator, ShuffleAnnotator):
        assert (guide == pixel).all()  # a flat image stays itself
    if cls is BinaryAnnotator:
        assert guide[0, 0] == 0  # OpenCV's Otsu on a flat image gives t = 0: nothing is dark, all black


STRIP_FAILS = {
    ShuffleAnnotator: "700x3 image: working size 119488x512 at --resolution 512 has 61,177,856 pixels, over the "
                      "shuffle limit of 33,554,432 (use a smaller --resolution or raise --max-working-pixels)",
}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_three_by_seven_hundred_strip(make_photo, cls) -> None:
    strip = make_photo(76, 3, 700)
    if cls in STRIP_FAILS:
        with pytest.raises(InputError) as raised:
            cls().annotate(strip)
        assert str(raised.value) == STRIP_FAILS[cls]
        return
    assert cls().annotate(strip).shape[:2] == (3, 700)  # color: 512 x 119467 working, under its 2**28 limit


def test_working_size_guard_and_remap_limit(make_photo) -> None:
    with pytest.raises(InputError) as raised:
        build(BlurAnnotator, resolution=512, max_working_pixels=1000).annotate(make_photo(77, 3, 700))
    assert str(raised.value) == ("700x3 image: working size 119488x512 at --resolution 512 has 61,177,856 pixels, "
                                 "over the blur limit of 1,000 (use a smaller --resolution or raise "
                                 "--max-working-pixels)")
    with pytest.raises(InputError) as raised:
        build(ColorAnnotator, max_working_pixels=1000).annotate(make_photo(78, 3, 700))
    assert "working size 119467x512 at --resolution 512 has 61,167,104 pixels, over the color limit" in str(raised.value)
    with pytest.raises(InputError) as raised:
        ShuffleAnnotator().annotate(make_photo(79, 3, 200))
    assert str(raised.value) == ("working size 34112x512: OpenCV's remap takes sides under 32767 px "
                                 "(use a smaller --resolution)")


# ---------------------------------------------------------------- command line and API

@pytest.mark.parametrize("cls, args, options", [
    (BlurAnnotator, ["--sigma", "3"], {"sigma": 3.0}),
    (TileAnnotator, ["--factor", "4"], {"factor": 4.0}),
    (GrayAnnotator, [], {}),
    (LowQualityAnnotator, ["--quality", "50", "--jitter", "5", "--seed", "2"], {"quality": 50, "jitter": 5, "seed": 2}),
    (ShuffleAnnotator, ["--seed", "3"], {"seed": 3}),
    (ColorAnnotator, ["--resolution", "256"], {"resolution": 256}),
    (BinaryAnnotator, ["--threshold", "90"], {"threshold": 90}),
], ids=lambda v: getattr(v, "name", ""))
def test_cli_equals_python_api(tmp_path: Path, make_photo, cls, args, options) -> None:
    import guides
    from tests.cli_testing import invoke

    image = make_photo(80, 90, 70)
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = tmp_path / "guide.png"
    result = invoke(cls.name, str(tmp_path / "photo.png"), *args, "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(out))
    api = guides.load(cls.name, **options).annotate(image)
    assert_same(written, api)
    assert_same(api, build(cls, **options).annotate(image))
    assert invoke(cls.name, str(tmp_path / "photo.png"), "--no-such", "-o", str(out), "-q").exit_code == 2


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_folder_with_bad_files(tmp_path: Path, make_photo, cls) -> None:
    from tests.cli_testing import invoke

    folder = write_bad_folder(tmp_path, make_photo)
    out = tmp_path / "out"
    result = invoke(cls.name, str(folder), "-o", str(out), "-q")
    assert result.exit_code == 1, result.output
    failures = sorted(line for line in result.output.splitlines() if line.startswith("failed:"))
    assert failures[0].startswith(f"failed: {folder / 'bad.png'}: ")
    expected = ["fine.png", "tiny.png"] if cls in STRIP_FAILS else ["fine.png", "strip.png", "tiny.png"]
    if cls in STRIP_FAILS:
        assert failures[1:] == [f"failed: {folder / 'strip.png'}: {STRIP_FAILS[cls]}"]
    else:
        assert len(failures) == 1, result.output
    assert sorted(p.name for p in out.iterdir()) == expected
    assert_same(np.asarray(Image.open(out / "fine.png")), cls().annotate(make_photo(*FINE_PHOTO)))
