"""NNET (NormalBae): the ``scannet.pt`` key layout, parity with controlnet_aux's NNET, the inference
shortcuts (BatchNorm folding, split first convolutions, head-first refinement), half precision.

Random weights prove wiring and parity, not normal quality. A default-initialised NNET has vanishing
activations (its BatchNorm statistics are 0/1 while its random convolutions shrink the signal block by
block; the denormal floats also make it ~5x slower on CPUs) and predicts an almost constant normal,
which makes any parity bound pass trivially. Here the reference's BatchNorm statistics are
*calibrated*: one train-mode forward of the test photo with cumulative statistics, as if the network
had been trained on it. Every layer then sees unit-scale activations (like a trained network) and the
predicted normals vary: the spread is asserted. (Calibrated on one photo and run on a very different
one, activations reach 1e5 in the last blocks and any float rounding is amplified chaotically: a
random network is not a trained one.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from guides.errors import WeightsError
from guides.nets.normalbae import NNET, Decoder, UpSampleBN, normalbae_network
from guides.weights.load import load_checkpoint_into

FINAL_BOUND = 1e-4
"""Max abs difference of the full-resolution unit normals from the reference (issue 4), fp32."""
INTERMEDIATE_BOUND = 1e-3
"""The 1/8, 1/4 and 1/2 predictions through the fast path. Normalising a short raw vector amplifies
float rounding (channels-last convolutions sum in another order); measured up to 1.3e-4 at 1/8."""
HALF_BOUNDS = {torch.bfloat16: (0.1, 0.01), torch.float16: (0.05, 0.005)}
"""(max, mean) abs difference of the decoder's final unit normals from fp32 (64x96 crop of the test
photo, encoder in fp32); measured (0.028, 0.0030) for bf16 and (0.017, 0.0015) for fp16. The max is
set by a few pixels whose raw normal is short (normalising it amplifies the rounding); on the uint8
guide these bounds are about 13 and 1.3 levels (max, mean) for bf16."""
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def photo_input(make_photo, height: int, width: int, seed: int = 0) -> torch.Tensor:
    image = torch.from_numpy(make_photo(seed, height, width)).permute(2, 0, 1)[None].float() / 255
    return (image - IMAGENET_MEAN) / IMAGENET_STD


@dataclass
class Reference:
    model: torch.nn.Module
    checkpoint: Path
    image: torch.Tensor
    outputs: list[torch.Tensor]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, make_photo, calibrated_normalbae) -> Reference:
    """The calibrated reference saved as ``scannet.pt`` is (``{"model": ...}``, keys with ``module.``),
    and its predictions of a 96x160 photo (non-square, every skip size a multiple of 32 / 2^k)."""
    image = photo_input(make_photo, 96, 160, seed=12)
    model = calibrated_normalbae([torch.cat([image, image.flip(3)])])
    path = tmp_path_factory.mktemp("normalbae") / "scannet.pt"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    with torch.inference_mode():
        outputs = model(image)[0]
    return Reference(model, path, image, outputs)


@pytest.fixture(scope="module")
def loaded(reference: Reference) -> NNET:
    """Our NNET loaded from the file through the weights contract (strict, ``module.`` stripped)."""
    return load_checkpoint_into(normalbae_network, reference.checkpoint, container="model_dict",
                                key_filters=("strip_module_prefix",))


def test_state_dict_layout_is_the_checkpoints(reference: Reference) -> None:
    import timm

    expected = {k: tuple(v.shape) for k, v in reference.model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in normalbae_network().state_dict().items()}
    assert got == expected
    encoder = {f"encoder.original_model.{k}": tuple(v.shape)
               for k, v in timm.create_model("tf_efficientnet_b5", pretrained=False, num_classes=0).state_dict().items()}
    assert {k: v for k, v in got.items() if k.startswith("encoder.")} == encoder and len(encoder) == 852


def test_plain_path_matches_reference(reference: Reference, loaded: NNET) -> None:
    """Before ``prepare_for_inference`` the network is the reference's computation (NCHW, unfolded)."""
    with torch.inference_mode():
        outputs = loaded(reference.image)
    for scale, (ours, theirs) in enumerate(zip(outputs, reference.outputs)):
        assert ours.shape == theirs.shape
        normal_diff = (ours[:, :3] - theirs[:, :3]).abs().max().item()
        kappa_diff = ((ours[:, 3] - theirs[:, 3]).abs() / theirs[:, 3]).max().item()
        assert normal_diff <= 1e-5 and kappa_diff <= 1e-5, f"output {scale}: normals {normal_diff:.3g}, kappa {kappa_diff:.3g}"


@pytest.fixture(scope="module")
def prepared_outputs(reference: Reference, loaded: NNET) -> list[torch.Tensor]:
    """Our predictions of the reference's photo on the path the annotator runs: folded, split, channels-last."""
    model = normalbae_network()
    model.load_state_dict(loaded.state_dict())
    model = model.prepare_for_inference().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        return model(reference.image.contiguous(memory_format=torch.channels_last))


def test_prepared_channels_last_path_matches_reference(reference: Reference, prepared_outputs: list[torch.Tensor]) -> None:
    """The path the annotator runs: folded, split, channels-last."""
    outputs = prepared_outputs
    diffs = [(ours[:, :3] - theirs[:, :3]).abs().max().item() for ours, theirs in zip(outputs, reference.outputs)]
    kappa = max(((o[:, 3] - t[:, 3]).abs() / t[:, 3]).max().item() for o, t in zip(outputs, reference.outputs))
    assert diffs[-1] <= FINAL_BOUND, f"final normals differ by {diffs[-1]:.3g}"
    assert max(diffs) <= INTERMEDIATE_BOUND and kappa <= 1e-3, f"per scale {diffs}, kappa relative {kappa:.3g}"
    final = reference.outputs[-1][0, :3]
    colours = ((final + 1) * 0.5).clip(0, 1).mul(255).to(torch.uint8).reshape(3, -1).T.unique(dim=0)
    assert colours.shape[0] >= 3000, f"reference normals too uniform for a meaningful bound: {colours.shape[0]} colours"


@pytest.mark.parametrize("low, skip", [((4, 5), (8, 10)), ((5, 7), (9, 13)), ((3, 3), (7, 6))])
def test_split_upsample_block_equals_the_plain_block(low: tuple[int, int], skip: tuple[int, int]) -> None:
    """Any size ratio (the block interpolates to the skip's size), borders included."""
    torch.manual_seed(7)
    block = UpSampleBN(12 + 5, 8, skip_channels=5).eval()
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    x, s = torch.randn(2, 12, *low), torch.randn(2, 5, *skip)
    with torch.inference_mode():
        expected = block(x, s)
        block.fuse()
        got = block(x, s)
        got_cl = block(x.contiguous(memory_format=torch.channels_last), s.contiguous(memory_format=torch.channels_last))
    assert block.state_dict().keys() == UpSampleBN(17, 8, 5).state_dict().keys(), "fusing must not change the keys"
    assert (got - expected).abs().max().item() <= 1e-5
    assert (got_cl - expected).abs().max().item() <= 1e-5


def test_refinement_head_first_layer_commutes_with_upsampling() -> None:
    torch.manual_seed(8)
    decoder = Decoder()
    head = decoder.out_conv_res1
    features, coarse = torch.randn(1, 128, 6, 10), torch.randn(1, 4, 6, 10)
    with torch.inference_mode():
        upsampled = F.interpolate(torch.cat([features, coarse], 1), scale_factor=2, mode="bilinear", align_corners=True)
        raw = head(upsampled.view(1, 132, -1)).view(1, 4, 12, 20)
        got = Decoder._refine(head, features, coarse)
    from guides.nets.normalbae import normalize_prediction

    assert (got - normalize_prediction(raw)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_decoder_within_bound(reference: Reference, loaded: NNET, dtype: torch.dtype) -> None:
    """The annotator's mixed precision: encoder fp32, decoder at ``dtype`` (fp16 runs slowly on the CPU;
    the annotator refuses it there, CUDA runs it)."""
    model = normalbae_network()
    model.load_state_dict(loaded.state_dict())
    model = model.prepare_for_inference()
    crop = reference.image[..., 16:80, 32:128].contiguous()  # fp16 convolutions are slow on the CPU
    with torch.inference_mode():
        features = model.encoder(crop)
        expected = model.decoder(features)[-1][:, :3]
        got = model.decoder.to(dtype)([f.to(dtype) for f in features])[-1][:, :3].float()
    diff = (got - expected).abs()
    max_bound, mean_bound = HALF_BOUNDS[dtype]
    assert diff.max().item() <= max_bound and diff.mean().item() <= mean_bound, (
        f"{dtype}: max {diff.max().item():.4f} (bound {max_bound}), mean {diff.mean().item():.5f} (bound {mean_bound})"
    )


def test_strict_loading_names_the_wrong_keys(reference: Reference, tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in reference.model.state_dict().items()}
    del state["module.decoder.up4._net.4.running_var"]
    state["module.decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "scannet.pt"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError) as error:
        load_checkpoint_into(normalbae_network, path, container="model_dict", key_filters=("strip_module_prefix",))
    assert "decoder.up4._net.4.running_var" in str(error.value) and "decoder.extra.weight" in str(error.value)


def test_prediction_is_unit_normals(reference: Reference, prepared_outputs: list[torch.Tensor]) -> None:
    """Ours, at every scale: unit normals (channels 0..2) and kappa above its floor of 0.01 (channel 3)."""
    assert [tuple(o.shape[2:]) for o in prepared_outputs] == [(12, 20), (24, 40), (48, 80), (96, 160)]
    for scale, output in enumerate(prepared_outputs):
        lengths = output[:, :3].norm(dim=1)
        assert torch.allclose(lengths, torch.ones_like(lengths), atol=1e-5), f"output {scale}: |n| {lengths.min()}..{lengths.max()}"
        assert torch.isfinite(output).all() and (output[:, 3] > 0.01).all(), f"output {scale}: kappa"
