"""Loading checkpoints safely (never unpickle code) and fast (no wasted random initialisation).

``read_state_dict`` reads a file with ``torch.load(weights_only=True, mmap=True)`` and unwraps its
container; a safetensors file (container ``"safetensors"``) is read by ``read_safetensors``: its header
checked, the file memory-mapped once and each tensor a view into that mapping (no copy, no pickle). ``load_checkpoint_into`` builds the network on the meta device (``with torch.device("meta")``, a
thread-local mode: nothing global is patched), fills the buffers the network computes itself, applies only
the named key filters, checks the keys strictly and assigns the loaded tensors to the network
(``load_state_dict(assign=True)``), so the weights are read once and never copied into a throw-away random
initialisation.

Key filters are plain named functions ``filter(state_dict, model) -> state_dict``; each one explains one
known difference between a public file and the network we build. Anything else is an error listing keys.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from guides.errors import WeightsError

if TYPE_CHECKING:  # torch is imported lazily: `guides --help` must not pay for it
    import torch
    from torch import nn

log = logging.getLogger(__name__)

StateDict = dict[str, "torch.Tensor"]
KeyFilter = Callable[[StateDict, "nn.Module"], StateDict]
KeyFilterSpec = Union[str, KeyFilter]

CONTAINERS = ("state_dict", "model_dict", "state_dict_entry", "safetensors")
_SHOWN_KEYS = 8  # keys listed in an error message before "... and N more"


def _key_list(keys: Sequence[str] | set[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown if len(keys) <= _SHOWN_KEYS else f"{shown} ... and {len(keys) - _SHOWN_KEYS} more"


def _redownload_hint(path: Path) -> str:
    """How to get a good copy: the download command, naming the checkpoint when the file name is known."""
    from guides.weights.catalog import CHECKPOINTS

    entries = list(CHECKPOINTS.values())
    # a flat-folder name (``local_name``) is unambiguous; a hub name shared by several files is not
    names = [c.name for c in entries if Path(path).name == c.folder_name]
    if not names:
        names = [c.name for c in entries if Path(path).name == c.basename]
    name = names[0] if len(names) == 1 else "NAME"
    return f"delete it and download it again (`guides models download {name}`)"


# --------------------------------------------------------------------------------------------- reading


def _torch_load(path: Path, mmap: bool) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


_GLOBAL_PATTERN = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


def _unsafe_global(error: BaseException) -> str | None:
    """The global a weights-only unpickler refused (the file wants code run to be loaded), if any."""
    text = str(error)
    if "Weights only load failed" not in text:
        return None
    match = _GLOBAL_PATTERN.search(text)
    return match.group(1) if match else None


def _short_reason(error: BaseException) -> str:
    """The first sentence of an error, with its type when the text alone says little."""
    text = str(error).strip().splitlines()[0].strip() if str(error).strip() else ""
    sentence = text.split(". ")[0].rstrip(".")
    if len(sentence) > 160:
        sentence = sentence[:157] + "..."
    return f"{type(error).__name__}: {sentence}" if len(sentence) < 24 else sentence


def read_checkpoint_file(path: str | Path, *, mmap: bool = True) -> Any:
    """``torch.load`` the file with ``weights_only=True`` (memory-mapped when the format allows it).

    An unsafe pickle (one that needs code to run) and a truncated or corrupt file are WeightsErrors naming
    the file. Files in the legacy (pre-zip) torch format cannot be memory-mapped and are read in full.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: checkpoint file is empty (truncated download?); {_redownload_hint(path)}")
    use_mmap = mmap and zipfile.is_zipfile(path)
    try:
        return _torch_load(path, use_mmap)
    except pickle.UnpicklingError as error:
        refused = _unsafe_global(error)
        if refused is not None:
            raise WeightsError(
                f"{path}: refused to load: the file is not a plain weights file, unpickling it would call "
                f"{refused}; use the official checkpoint (or convert yours to safetensors)"
            ) from None
        raise WeightsError(
            f"{path}: cannot read checkpoint, the file is corrupt ({_short_reason(error)}); {_redownload_hint(path)}"
        ) from None
    except (EOFError, RuntimeError, ValueError, OSError, zipfile.BadZipFile, AttributeError, IndexError,
            KeyError, TypeError, UnicodeDecodeError, MemoryError) as error:
        raise WeightsError(
            f"{path}: cannot read checkpoint, the file is truncated or corrupt ({_short_reason(error)}); "
            f"{_redownload_hint(path)}"
        ) from None


# safetensors: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
# then the tensors' bytes (offsets relative to the end of the header). Spec: huggingface/safetensors README.
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's own limit


def _safetensors_header(path: Path, file_size: int) -> tuple[dict[str, Any], int]:
    """The checked header of a safetensors file and where its tensor bytes start; ValueError saying what is
    wrong (the caller names the file)."""
    if file_size < 8:
        raise EOFError(f"{file_size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > min(file_size - 8, _SAFETENSORS_MAX_HEADER):
            raise ValueError(f"header length {length:,} does not fit a file of {file_size:,} bytes")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise ValueError(f"header is a JSON {type(header).__name__}, not an object")
    header.pop("__metadata__", None)
    start = 8 + length
    data_size = file_size - start
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"entry {name!r} is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"entry {name!r} has the unsupported dtype {dtype!r}")
        if (not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(n, int) for n in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"entry {name!r} has a malformed shape or data_offsets")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise ValueError(f"entry {name!r} starts at byte {begin}, not where the previous one ends ({end})")
        end = stop
    if end > data_size:
        raise EOFError(f"the tensors need {end:,} bytes after the header, the file has {data_size:,}")
    return header, start


def read_safetensors(path: str | Path, *, mmap: bool = True) -> StateDict:
    """The tensors of a safetensors file (name -> tensor), read without pickle.

    The header is checked first (known dtypes, byte ranges that tile the data exactly, sizes that match
    the shapes); then the file is memory-mapped once (``UntypedStorage.from_file``, a private mapping as
    ``torch.load(weights_only=True, mmap=True)`` makes) and every tensor is a view of its bytes: nothing is copied or read
    before it is used, and processes loading one file share its page cache. ``mmap=False`` reads the file
    into memory instead. A damaged file is a WeightsError naming it.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint file not found")
    file_size = path.stat().st_size
    if file_size == 0:
        raise WeightsError(f"{path}: checkpoint file is empty (truncated download?); {_redownload_hint(path)}")
    if sys.byteorder != "little":  # pragma: no cover - the format is little-endian; views would be wrong
        raise WeightsError(f"{path}: safetensors files can only be memory-mapped on little-endian machines")
    try:
        header, start = _safetensors_header(path, file_size)
    except EOFError as error:
        raise WeightsError(
            f"{path}: cannot read checkpoint, the safetensors file is truncated ({error}); {_redownload_hint(path)}"
        ) from None
    except (ValueError, OSError) as error:
        raise WeightsError(
            f"{path}: cannot read checkpoint, not a valid safetensors file ({error}); {_redownload_hint(path)}"
        ) from None
    if mmap:
        storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=file_size)
        data = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (file_size,), (1,))
    else:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    tensors: StateDict = {}
    for name, info in header.items():
        dtype = getattr(torch, _SAFETENSORS_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        begin, stop = (start + offset for offset in info["data_offsets"])
        itemsize = torch.empty((), dtype=dtype).element_size()
        count = 1
        for n in shape:
            count *= n
        if stop - begin != count * itemsize:
            raise WeightsError(f"{path}: not a valid safetensors file (entry {name!r}: {stop - begin} bytes for "
                               f"shape {list(shape)} of {info['dtype']})")
        raw = data[begin:stop]
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:  # a view where the bytes are aligned for the dtype (the format pads its header for that)
            raw = raw if begin % itemsize == 0 else raw.clone()
            tensors[name] = raw.view(dtype).view(shape)
    return tensors


def unwrap_model_dict(obj: Any, *, path: str | Path = "checkpoint") -> Any:
    """Key transformation: a ``{"model": state_dict, ...}`` container -> the state dict inside it.

    ZoeDepth (``ZoeD_M12_N.pt``) and NormalBae (``scannet.pt``) are saved that way. Other top-level entries
    (training bookkeeping) are not weights and are ignored, with a debug log.
    """
    if not isinstance(obj, Mapping) or "model" not in obj:
        found = "keys " + _key_list([str(k) for k in obj]) if isinstance(obj, Mapping) else type(obj).__name__
        raise WeightsError(f"{path}: expected a dict holding the weights under 'model', found {found}")
    others = [str(k) for k in obj if k != "model"]
    if others:
        log.debug("%s: ignoring top-level entries %s next to 'model'", path, others)
    return obj["model"]


def unwrap_state_dict_entry(obj: Any, *, path: str | Path = "checkpoint") -> Any:
    """Key transformation: a ``{"state_dict": state_dict, ...}`` container -> the state dict inside it.

    PiDiNet (``table5_pidinet.pth``) is saved that way, as training scripts save a checkpoint. Other top-level
    entries (training bookkeeping) are not weights and are ignored, with a debug log.
    """
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        found = "keys " + _key_list([str(k) for k in obj]) if isinstance(obj, Mapping) else type(obj).__name__
        raise WeightsError(f"{path}: expected a dict holding the weights under 'state_dict', found {found}")
    others = [str(k) for k in obj if k != "state_dict"]
    if others:
        log.debug("%s: ignoring top-level entries %s next to 'state_dict'", path, others)
    return obj["state_dict"]


def _check_state_dict(obj: Any, path: str | Path) -> StateDict:
    import torch

    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    if isinstance(obj.get("model"), Mapping):
        raise WeightsError(
            f"{path}: the weights are wrapped in a dict under 'model' but the catalog says plain state dict "
            f"(container='model_dict' expected)"
        )
    if isinstance(obj.get("state_dict"), Mapping):
        raise WeightsError(
            f"{path}: the weights are wrapped in a dict under 'state_dict' but the catalog says plain state "
            f"dict (container='state_dict_entry' expected)"
        )
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor) or not isinstance(k, str)]
    if not_tensors:
        raise WeightsError(f"{path}: entries that are not tensors: {_key_list(not_tensors)}")
    return dict(obj)


def read_state_dict(path: str | Path, *, container: str, mmap: bool = True) -> StateDict:
    """Read a checkpoint file safely and return its state dict (name -> tensor, memory-mapped).

    ``container`` is ``"state_dict"`` (the file is the state dict), ``"model_dict"`` (the state dict is
    under ``"model"``, unwrapped by ``unwrap_model_dict``), ``"state_dict_entry"`` (under
    ``"state_dict"``, unwrapped by ``unwrap_state_dict_entry``) or ``"safetensors"`` (a safetensors file,
    ``read_safetensors``).
    """
    if container not in CONTAINERS:
        raise ValueError(f"container must be one of {CONTAINERS}, not {container!r}")
    if container == "safetensors":
        return read_safetensors(path, mmap=mmap)
    obj = read_checkpoint_file(path, mmap=mmap)
    if container == "model_dict":
        obj = unwrap_model_dict(obj, path=path)
    elif container == "state_dict_entry":
        obj = unwrap_state_dict_entry(obj, path=path)
    return _check_state_dict(obj, path)


# ------------------------------------------------------------------------------------- key filters


def strip_module_prefix(state_dict: StateDict, model: nn.Module | None = None) -> StateDict:
    """Key transformation: drop the ``module.`` prefix that ``nn.DataParallel`` adds to every key.

    Applies only when every key carries the prefix (and the network's own keys do not); a file where only
    some keys carry it is an error, since that is not what DataParallel writes.
    """
    prefix = "module."
    prefixed = [k for k in state_dict if k.startswith(prefix)]
    if not prefixed:
        return state_dict
    if model is not None and any(k.startswith(prefix) for k in model.state_dict(keep_vars=True)):
        return state_dict
    if len(prefixed) != len(state_dict):
        plain = [k for k in state_dict if not k.startswith(prefix)]
        raise WeightsError(f"only some keys carry the 'module.' prefix; without it: {_key_list(plain)}")
    return {k[len(prefix):]: v for k, v in state_dict.items()}


def _non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers the network computes itself and leaves out of its state dict (``persistent=False``)."""
    found: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        for buffer_name in getattr(module, "_non_persistent_buffers_set", ()):
            buffer = module._buffers.get(buffer_name)
            if buffer is not None:
                found[f"{module_name}.{buffer_name}" if module_name else buffer_name] = buffer
    return found


def drop_computed_buffers(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Key transformation: drop saved copies of buffers the network computes itself, after checking them.

    Older timm saved BEiT's ``relative_position_index`` tables in the state dict (``ZoeD_M12_N.pt`` holds 24
    of them); current timm computes them and keeps them out of the state dict, so strict loading fails on
    them. Each saved copy must equal the computed buffer exactly (same shape and values), else the file does
    not describe this network and loading stops with the differing keys.
    """
    import torch

    expected = set(model.state_dict(keep_vars=True))
    computed = _non_persistent_buffers(model)
    dropped: list[str] = []
    differing: list[str] = []
    for key, saved in state_dict.items():
        if key in expected or key not in computed:
            continue
        buffer = computed[key]
        if buffer.is_meta:
            differing.append(f"{key} (not computed by the network)")
        elif saved.shape != buffer.shape or not torch.equal(saved.to(buffer.dtype), buffer):
            differing.append(f"{key} (saved {tuple(saved.shape)} differs from computed {tuple(buffer.shape)})")
        else:
            dropped.append(key)
    if differing:
        raise WeightsError(f"saved buffers differ from the ones the network computes: {_key_list(differing)}")
    if dropped:
        log.debug("dropped %d saved copies of computed buffers: %s", len(dropped), _key_list(dropped))
    return {k: v for k, v in state_dict.items() if k not in set(dropped)}


KEY_FILTERS: dict[str, KeyFilter] = {
    "strip_module_prefix": strip_module_prefix,
    "drop_computed_buffers": drop_computed_buffers,
}


def _as_filter(spec: KeyFilterSpec) -> KeyFilter:
    if callable(spec):
        return spec
    try:
        return KEY_FILTERS[spec]
    except KeyError:
        raise ValueError(f"unknown key filter {spec!r}; known: {', '.join(KEY_FILTERS)}") from None


# ------------------------------------------------------------------------------- building the network

#: The method a network (or any module in it) may define to fill, after a meta-device build, the
#: buffers it computes itself (non-persistent: not in the state dict), e.g. BEiT's index tables.
FILL_HOOK = "fill_computed_buffers"


def _meta_leftovers(model: nn.Module) -> list[str]:
    """Tensors still on the meta device that no state dict will fill: computed buffers and plain tensor
    attributes (parameters and persistent buffers come from the file)."""
    import torch

    left: list[str] = []
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_meta and name in module._non_persistent_buffers_set:
                left.append(prefix + name)
        for name, value in vars(module).items():
            if isinstance(value, torch.Tensor) and value.is_meta:
                left.append(prefix + name)
    return left


def _get_path(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    module_name, _, name = dotted.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), name


def _fill_from_plain_build(model: nn.Module, factory: Callable[[], nn.Module], names: list[str]) -> None:
    """Fallback for a network without a fill hook: build it once the plain way (on the CPU) and take the
    computed tensors from that copy. Slow, but exactly what a plain ``load_state_dict`` would keep."""
    log.debug("no %s() for %s: building the network once on the CPU for them", FILL_HOOK, _key_list(names))
    plain = factory()
    for dotted in names:
        source_module, name = _get_path(plain, dotted)
        target_module, _ = _get_path(model, dotted)
        value = getattr(source_module, name)
        if name in target_module._buffers:
            target_module._buffers[name] = value
        else:
            object.__setattr__(target_module, name, value)


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Call ``factory()`` on the meta device (``with torch.device("meta")``): no memory, no random init.

    The device context is a thread-local torch function mode: nothing global changes and networks built
    by other threads meanwhile are not affected. Parameters and persistent buffers stay on the meta
    device until a state dict is assigned. The tensors the network computes itself (non-persistent
    buffers, tensor attributes) are then filled on the CPU: by the ``fill_computed_buffers()`` method of
    each module that defines one (in the order of ``model.modules()``), and for anything still on meta by a
    single plain build of ``factory()`` whose values are taken (slow; networks in guides define the hook).
    """
    import torch

    with torch.device("meta"):
        model = factory()
    for module in list(model.modules()):
        hook = getattr(module, FILL_HOOK, None)
        if callable(hook):
            hook()
    left = _meta_leftovers(model)
    if left:
        _fill_from_plain_build(model, factory, left)
    return model


def _match_dtypes(state_dict: StateDict, targets: Mapping[str, torch.Tensor]) -> StateDict:
    """Cast floating tensors to the dtype the network declares, as a plain ``load_state_dict`` copy would."""
    out: StateDict = {}
    for key, tensor in state_dict.items():
        target = targets[key]
        if tensor.dtype != target.dtype and tensor.is_floating_point() and target.is_floating_point():
            tensor = tensor.to(target.dtype)
        out[key] = tensor
    return out


def check_keys(state_dict: Mapping[str, Any], model: nn.Module, *, path: str | Path = "checkpoint") -> None:
    """Strict key and shape match between a state dict and a network, as a WeightsError listing the keys."""
    expected = model.state_dict(keep_vars=True)
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}"
        for k in state_dict
        if k in expected and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_key_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_key_list(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} with another shape: {_key_list(wrong_shape)}")
    if problems:
        raise WeightsError(f"{path}: checkpoint does not fit the network: " + "; ".join(problems))


def load_state_dict_into(
    factory: Callable[[], nn.Module],
    state_dict: StateDict,
    *,
    key_filters: Sequence[KeyFilterSpec] = (),
    path: str | Path = "checkpoint",
) -> nn.Module:
    """Build ``factory()`` on the meta device and assign ``state_dict`` to it strictly (see module doc)."""
    from torch import nn

    model = build_on_meta(factory)
    for spec in key_filters:
        try:
            state_dict = _as_filter(spec)(state_dict, model)
        except WeightsError as error:
            raise WeightsError(f"{path}: {error}") from None
    check_keys(state_dict, model, path=path)
    state_dict = _match_dtypes(state_dict, model.state_dict(keep_vars=True))
    # nn.Module's own method, not an override: some networks (controlnet_aux's ZoeDepth) redefine
    # load_state_dict to load non-strictly; the key check above is the strict one we want.
    nn.Module.load_state_dict(model, state_dict, strict=True, assign=True)
    still_meta = [name for name, p in model.named_parameters() if p.is_meta]
    still_meta += [name for name, b in model.named_buffers() if b.is_meta]
    if still_meta:  # a parameter outside the state dict (not registered through the module tree)
        raise WeightsError(f"{path}: tensors left without weights after loading: {_key_list(still_meta)}")
    return model.eval()


def load_checkpoint_into(
    factory: Callable[[], nn.Module],
    path: str | Path,
    *,
    container: str,
    key_filters: Sequence[KeyFilterSpec] = (),
) -> nn.Module:
    """Build the network ``factory()`` returns and load the checkpoint at ``path`` into it, strictly.

    ``container``: ``"state_dict"``, ``"model_dict"``, ``"state_dict_entry"`` or ``"safetensors"``. ``key_filters``: named
    transformations (functions or their names in ``KEY_FILTERS``) applied in order before the strict key
    check. The network is built without random initialisation of its parameters and receives the
    memory-mapped tensors of the file; it is returned in eval mode on the CPU.
    """
    state_dict = read_state_dict(path, container=container)
    return load_state_dict_into(factory, state_dict, key_filters=key_filters, path=path)
