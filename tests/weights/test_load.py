"""guides.weights.load: safe reading, named key transformations, strict matching, fast meta-device start."""

from __future__ import annotations

import pickle
import random
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from guides.errors import WeightsError
from guides.weights import load_checkpoint_into, read_state_dict
from guides.weights.load import (
    build_on_meta,
    check_keys,
    drop_computed_buffers,
    strip_module_prefix,
    unwrap_model_dict,
)


class TinyNet(nn.Module):
    """Conv + norm + linear, a persistent buffer (BatchNorm stats) and a computed one (not saved)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)
        self.register_buffer("index_table", torch.arange(6).view(2, 3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x)).mean(dim=(2, 3))
        return self.head(y) + self.index_table.sum()


def trained_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():  # non-trivial running stats, so they must come from the file
        net.norm.running_mean.uniform_(-1, 1)
        net.norm.running_var.uniform_(0.5, 2)
        net.norm.num_batches_tracked.fill_(7)
    return net.eval()


def plain_load(path: Path, container: str) -> TinyNet:
    """The usual way: construct (random init), torch.load, load_state_dict."""
    obj = torch.load(path, weights_only=True)
    net = TinyNet()
    net.load_state_dict(obj["model"] if container == "model_dict" else obj)
    return net.eval()


@pytest.fixture
def reference() -> TinyNet:
    return trained_net()


@pytest.fixture
def sample() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("container", ["state_dict", "model_dict"])
def test_fast_load_gives_identical_outputs_to_the_plain_way(tmp_path, reference, sample, container):
    path = tmp_path / "net.pth"
    sd = reference.state_dict()
    torch.save({"model": sd} if container == "model_dict" else sd, path)
    fast = load_checkpoint_into(TinyNet, path, container=container)
    plain = plain_load(path, container)
    assert not fast.training
    for name, tensor in plain.state_dict().items():
        assert torch.equal(fast.state_dict()[name], tensor), name
    with torch.no_grad():
        out_fast, out_plain = fast(sample), plain(sample)
    assert torch.equal(out_fast, out_plain), (out_fast - out_plain).abs().max()
    assert all(not p.is_meta and p.device.type == "cpu" for p in fast.parameters())


def test_loaded_parameters_keep_requires_grad_and_are_parameters(tmp_path, reference):
    path = tmp_path / "net.pth"
    torch.save(reference.state_dict(), path)
    net = load_checkpoint_into(TinyNet, path, container="state_dict")
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    assert net.norm.num_batches_tracked.item() == 7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_file_is_cast_like_a_plain_load(tmp_path, reference, sample, dtype):
    path = tmp_path / "half.pth"
    torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in reference.state_dict().items()}, path)
    fast = load_checkpoint_into(TinyNet, path, container="state_dict")
    plain = plain_load(path, "state_dict")
    assert fast.conv.weight.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(fast(sample), plain(sample))


def test_legacy_non_zip_format_is_read_without_mmap(tmp_path, reference, sample):
    path = tmp_path / "legacy.pth"
    torch.save(reference.state_dict(), path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    net = load_checkpoint_into(TinyNet, path, container="state_dict")
    with torch.no_grad():
        assert torch.equal(net(sample), reference(sample))


def test_meta_build_skips_parameter_init_and_fills_computed_buffers_from_one_plain_build():
    calls = []

    class Counting(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            calls.append(self.conv.weight.is_meta)

    net = build_on_meta(Counting)
    # built on meta, then once the plain way for the computed buffer (TinyNet has no fill hook)
    assert calls == [True, False]
    assert all(p.is_meta for p in net.parameters())
    assert torch.equal(net.index_table, torch.arange(6).view(2, 3)) and net.index_table.device.type == "cpu"
    assert net.norm.running_var.is_meta  # persistent: comes from the file


def test_a_network_with_a_fill_hook_is_built_once_on_meta():
    calls = []

    class Hooked(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            calls.append(self.index_table.is_meta)

        def fill_computed_buffers(self) -> None:
            if self.index_table.is_meta:
                self.index_table = torch.arange(6).view(2, 3)

    net = build_on_meta(Hooked)
    assert calls == [True]
    assert torch.equal(net.index_table, torch.arange(6).view(2, 3))
    assert all(p.is_meta for p in net.parameters())


def test_tensor_attributes_made_on_meta_get_their_computed_values(tmp_path):
    class WithAttribute(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.offsets = torch.arange(2.0)  # neither parameter nor buffer

    torch.save(WithAttribute().state_dict(), tmp_path / "attr.pth")
    net = load_checkpoint_into(WithAttribute, tmp_path / "attr.pth", container="state_dict")
    assert not net.offsets.is_meta and torch.equal(net.offsets, torch.arange(2.0))


def test_meta_build_keeps_attributes_hung_on_parameters(tmp_path):
    class Tagged(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3), requires_grad=False)
            self.weight.no_weight_decay = True

    net = build_on_meta(Tagged)
    assert net.weight.is_meta and net.weight.no_weight_decay is True and not net.weight.requires_grad
    path = tmp_path / "tagged.pth"
    torch.save({"weight": torch.arange(3.0)}, path)
    loaded = load_checkpoint_into(Tagged, path, container="state_dict")
    assert torch.equal(loaded.weight, torch.arange(3.0)) and not loaded.weight.requires_grad


def test_meta_build_does_not_leak_to_other_threads():
    built: dict[str, bool] = {}
    inside = threading.Event()
    release = threading.Event()

    def other_thread() -> None:
        inside.wait(5)
        built["other"] = nn.Linear(2, 2).weight.is_meta
        release.set()

    def factory() -> nn.Module:
        inside.set()
        release.wait(5)  # the other thread builds while this one is inside the meta-device build
        layer = nn.Linear(2, 2)
        built["here"] = layer.weight.is_meta
        return layer

    worker = threading.Thread(target=other_thread)
    worker.start()
    build_on_meta(factory)
    worker.join(5)
    assert built == {"other": False, "here": True}
    assert not nn.Linear(2, 2).weight.is_meta


def test_loading_patches_nothing_global(tmp_path, reference):
    """torch's and timm's functions are the same objects before, during and after a load (issue 12, item 11)."""
    import timm.models.beit as timm_beit
    register_parameter = nn.Module.register_parameter
    module_setattr = nn.Module.__setattr__
    gen_index = timm_beit.gen_relative_position_index
    seen: list[bool] = []

    class Watching(TinyNet):
        def __init__(self) -> None:
            seen.append(nn.Module.register_parameter is register_parameter
                        and nn.Module.__setattr__ is module_setattr
                        and timm_beit.gen_relative_position_index is gen_index)
            super().__init__()

    path = tmp_path / "net.pth"
    torch.save(reference.state_dict(), path)
    load_checkpoint_into(Watching, path, container="state_dict")
    assert seen and all(seen), seen
    assert nn.Module.register_parameter is register_parameter and nn.Module.__setattr__ is module_setattr
    assert timm_beit.gen_relative_position_index is gen_index


# ---------------------------------------------------------------------------------- unsafe files


class _Payload:
    """Unpickling this would create a file: the canonical 'pickle runs code' attack."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("wrapped_in_torch_zip", [True, False])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, wrapped_in_torch_zip):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    if wrapped_in_torch_zip:
        torch.save({"weight": torch.zeros(2), "payload": _Payload(str(marker))}, path)
    else:
        path.write_bytes(pickle.dumps({"weight": _Payload(str(marker))}, protocol=2))
    assert not marker.exists()
    with pytest.raises(WeightsError) as caught:
        read_state_dict(path, container="state_dict")
    message = str(caught.value)
    assert str(path) in message and "refused" in message and "would call" in message, message
    assert "open" in message, message  # names what it would have run (builtins.open / io.open)
    assert not marker.exists()
    with pytest.raises(WeightsError):
        load_checkpoint_into(TinyNet, path, container="state_dict")
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 10, 200, -30])
def test_truncated_file_names_the_file_and_suggests_redownload(tmp_path, reference, keep):
    good = tmp_path / "good.pth"
    torch.save(reference.state_dict(), good)
    data = good.read_bytes()
    bad = tmp_path / "sk_model.pth"
    bad.write_bytes(data[:keep])
    with pytest.raises(WeightsError) as caught:
        load_checkpoint_into(TinyNet, bad, container="state_dict")
    message = str(caught.value)
    assert str(bad) in message, message
    assert "guides models download lineart" in message, message  # file name known: the catalog name


@pytest.mark.parametrize("content", [b"hello", random.Random(0).randbytes(4096), b"\x80\x02" + random.Random(1).randbytes(4096)])
def test_garbage_file_is_called_corrupt_not_unsafe(tmp_path, content):
    path = tmp_path / "noise.bin"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as caught:
        read_state_dict(path, container="state_dict")
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot read checkpoint") and "corrupt" in message, message
    assert "refused" not in message and len(message) < 400, message


def test_numpy_pickles_are_refused_with_a_short_message(tmp_path):
    import numpy
    path = tmp_path / "numpy.pth"
    torch.save({"w": numpy.zeros(3)}, path)
    with pytest.raises(WeightsError, match=r"refused to load: .* would call numpy\.") as caught:
        read_state_dict(path, container="state_dict")
    assert len(str(caught.value)) < 300, str(caught.value)


def test_missing_file_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "nope.pth", container="state_dict")


# ---------------------------------------------------------------------------- key transformations


def test_unwrap_model_dict_returns_the_inner_state_dict_and_ignores_bookkeeping():
    inner = {"a": torch.zeros(1)}
    assert unwrap_model_dict({"model": inner, "epoch": 3}) is inner


def test_unwrap_model_dict_refuses_a_plain_state_dict():
    with pytest.raises(WeightsError, match="under 'model'"):
        unwrap_model_dict({"conv.weight": torch.zeros(1)}, path="x.pt")


def test_wrong_container_is_explained(tmp_path, reference):
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": reference.state_dict()}, wrapped)
    with pytest.raises(WeightsError, match="container='model_dict' expected"):
        read_state_dict(wrapped, container="state_dict")
    plain = tmp_path / "plain.pt"
    torch.save(reference.state_dict(), plain)
    with pytest.raises(WeightsError, match="under 'model'"):
        read_state_dict(plain, container="model_dict")


def test_state_dict_entry_container_unwraps_and_names_a_file_without_it(tmp_path, reference, sample):
    """``{"state_dict": ..., "epoch": ...}`` (PiDiNet's table5_pidinet.pth, with ``module.`` keys) loads;
    a file without the ``"state_dict"`` key, or a plain one, is a WeightsError naming the file."""
    path = tmp_path / "table5_pidinet.pth"
    torch.save({"epoch": 14, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    net = load_checkpoint_into(TinyNet, path, container="state_dict_entry", key_filters=["strip_module_prefix"])
    with torch.no_grad():
        assert torch.equal(net(sample), reference(sample))
    with pytest.raises(WeightsError, match="container='state_dict_entry' expected"):
        read_state_dict(path, container="state_dict")
    for name, content in (("model.pth", {"model": reference.state_dict()}), ("plain.pth", reference.state_dict())):
        lacking = tmp_path / name
        torch.save(content, lacking)
        with pytest.raises(WeightsError) as raised:
            read_state_dict(lacking, container="state_dict_entry")
        assert str(raised.value).startswith(f"{lacking}: expected a dict holding the weights under 'state_dict'")


def test_strip_module_prefix_when_every_key_has_it():
    sd = {"module.a": torch.zeros(1), "module.b.c": torch.ones(1)}
    assert list(strip_module_prefix(sd)) == ["a", "b.c"]


def test_strip_module_prefix_leaves_plain_keys_alone():
    sd = {"a": torch.zeros(1)}
    assert strip_module_prefix(sd) is sd


def test_strip_module_prefix_refuses_a_mixed_file():
    with pytest.raises(WeightsError, match="only some keys") as caught:
        strip_module_prefix({"module.a": torch.zeros(1), "b": torch.zeros(1)})
    assert "b" in str(caught.value)


def test_module_prefixed_model_dict_loads_through_the_named_filter(tmp_path, reference, sample):
    path = tmp_path / "scannet.pt"
    torch.save({"model": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    with pytest.raises(WeightsError, match="unexpected"):
        load_checkpoint_into(TinyNet, path, container="model_dict")
    net = load_checkpoint_into(TinyNet, path, container="model_dict", key_filters=["strip_module_prefix"])
    with torch.no_grad():
        assert torch.equal(net(sample), reference(sample))


def test_drop_computed_buffers_drops_exact_copies(tmp_path, reference, sample):
    path = tmp_path / "old.pt"
    torch.save({**reference.state_dict(), "index_table": torch.arange(6).view(2, 3)}, path)
    with pytest.raises(WeightsError, match="1 unexpected: index_table"):
        load_checkpoint_into(TinyNet, path, container="state_dict")
    net = load_checkpoint_into(TinyNet, path, container="state_dict", key_filters=[drop_computed_buffers])
    with torch.no_grad():
        assert torch.equal(net(sample), reference(sample))


def test_drop_computed_buffers_refuses_a_differing_copy():
    net = build_on_meta(TinyNet)
    saved = torch.arange(6).view(2, 3).flip(0)
    with pytest.raises(WeightsError, match="index_table"):
        drop_computed_buffers({"index_table": saved}, net)
    with pytest.raises(WeightsError, match="index_table"):
        drop_computed_buffers({"index_table": torch.arange(5)}, net)


def test_drop_computed_buffers_keeps_unknown_keys_for_the_strict_check():
    net = build_on_meta(TinyNet)
    sd = {"mystery": torch.zeros(1)}
    assert drop_computed_buffers(sd, net) == sd


def test_drop_computed_buffers_on_timm_beit_relative_position_index(tmp_path):
    """The ZoeDepth case: old timm saved BEiT's relative_position_index; current timm computes it."""
    import timm.models.beit as timm_beit

    def tiny_beit() -> nn.Module:
        return timm_beit.Beit(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=0,
                              use_rel_pos_bias=True, use_abs_pos_emb=False)

    torch.manual_seed(0)
    reference = tiny_beit().eval()
    sd = reference.state_dict()
    assert not any("relative_position_index" in k for k in sd)
    old_keys = {f"blocks.{i}.attn.relative_position_index": timm_beit.gen_relative_position_index((4, 4))
                for i in range(2)}
    path = tmp_path / "ZoeD_like.pt"
    torch.save({"model": {**sd, **old_keys}}, path)
    net = load_checkpoint_into(tiny_beit, path, container="model_dict", key_filters=["drop_computed_buffers"])
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))
    # a tampered table is not silently dropped
    old_keys["blocks.1.attn.relative_position_index"][0, 1] += 1
    torch.save({"model": {**sd, **old_keys}}, path)
    with pytest.raises(WeightsError, match=r"blocks\.1\.attn\.relative_position_index"):
        load_checkpoint_into(tiny_beit, path, container="model_dict", key_filters=["drop_computed_buffers"])


# ------------------------------------------------------------------------------------ strictness


def test_missing_unexpected_and_misshapen_keys_are_listed(tmp_path, reference):
    sd = reference.state_dict()
    sd.pop("head.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["conv.bias"] = torch.zeros(5)
    path = tmp_path / "bad_keys.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as caught:
        load_checkpoint_into(TinyNet, path, container="state_dict")
    message = str(caught.value)
    for expected in ("1 missing: head.bias", "1 unexpected: extra.weight", "conv.bias (5,) != (4,)", str(path)):
        assert expected in message, message


def test_key_list_is_bounded():
    net = build_on_meta(lambda: nn.Sequential(*[nn.Linear(1, 1) for _ in range(20)]))
    with pytest.raises(WeightsError, match=r"40 missing: .* and 32 more"):
        check_keys({}, net)


def test_non_tensor_entries_are_refused(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"weight": torch.zeros(1), "note": "hello"}, path)
    with pytest.raises(WeightsError, match="not tensors: note"):
        read_state_dict(path, container="state_dict")


def test_unknown_filter_name_is_a_programming_error(tmp_path, reference):
    path = tmp_path / "net.pth"
    torch.save(reference.state_dict(), path)
    with pytest.raises(ValueError, match="unknown key filter"):
        load_checkpoint_into(TinyNet, path, container="state_dict", key_filters=["strip_everything"])


def test_persistent_buffer_derived_from_a_parameter_comes_from_the_file(tmp_path):
    class Sneaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.register_buffer("derived", self.linear.weight.detach().clone())  # meta during a fast build

    torch.manual_seed(0)
    sd = Sneaky().state_dict()
    path = tmp_path / "sneaky.pth"
    torch.save(sd, path)
    net = load_checkpoint_into(Sneaky, path, container="state_dict")  # 'derived' is persistent: from the file
    assert torch.equal(net.derived, sd["derived"])


def test_computed_buffer_derived_from_a_parameter_is_what_a_plain_load_keeps(tmp_path):
    """A computed buffer derived from the initial parameters cannot come from the file: it is the plain
    build's, exactly what construct + load_state_dict would leave, and never left on the meta device."""

    class Derived(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.register_buffer("scale", self.linear.weight.detach().abs().sum(), persistent=False)

    path = tmp_path / "derived.pth"
    torch.save(Derived().state_dict(), path)
    torch.manual_seed(7)
    plain = Derived()
    plain.load_state_dict(torch.load(path, weights_only=True))
    torch.manual_seed(7)
    net = load_checkpoint_into(Derived, path, container="state_dict")
    assert not net.scale.is_meta and net.scale.device.type == "cpu"
    assert torch.equal(net.scale, plain.scale), f"{float(net.scale)} != the plain build's {float(plain.scale)}"


def test_load_named_checkpoint_applies_the_catalogs_container_and_filters(tmp_path, reference, sample):
    from guides.weights import load_named_checkpoint

    torch.save({"model": {f"module.{k}": v for k, v in reference.state_dict().items()}}, tmp_path / "scannet.pt")
    net = load_named_checkpoint("normals", TinyNet, models_dir=tmp_path)
    with torch.no_grad():
        assert torch.equal(net(sample), reference(sample))
    explicit = tmp_path / "elsewhere.pt"
    torch.save({"model": {**reference.state_dict(), "index_table": torch.arange(6).view(2, 3)}}, explicit)
    net = load_named_checkpoint("depth", TinyNet, explicit=explicit)
    with torch.no_grad():
        assert torch.equal(net(sample), reference(sample))
