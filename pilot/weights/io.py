"""Reading, writing and loading weight files: safetensors first, pickles only as plain tensors.

Every failure is a `WeightsError` naming the file and the problem. `.ckpt/.pt/.pth/.bin` files go
through `torch.load(weights_only=True)` only, so a pickle that holds code is refused, never run.
Models are built on the meta device and filled with `load_state_dict(assign=True)`; `load_into`
checks keys and shapes first so a wrong file fails with a readable message, not a stack of torch
internals.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import pickletools
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pilot.weights.kinds import KIND_LOOKS, describe_state_dict  # describe_state_dict: as before

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# Keys that real checkpoints carry but no pilot model owns; dropped on purpose, never reported.
IGNORED_KEYS = (
    "*position_ids",  # transformers CLIP: a persistent arange buffer in older files
    "*logit_scale",  # CLIP contrastive temperature, unused for text conditioning
    "model_ema.*",  # EMA copy of the UNet in training checkpoints; the main weights are used
)

_MAX_LISTED = 10  # how many keys an error message lists before "... and N more"

# Classes besides tensors and plain containers that `torch.load(weights_only=True)` may rebuild
# here: containers of tensors that real files hold, whose unpickling runs no code of the file's.
# ParameterDict: the `string_to_param` of textual inversion embeddings saved by the original
# textual_inversion repo and early A1111 versions (one Parameter, key "*"). Any other class is
# still refused, naming it.
SAFE_GLOBALS = (nn.ParameterDict,)


class WeightsError(ValueError):
    """A weights file is missing, unreadable, unsafe, or does not fit the model."""


@dataclass
class Checkpoint:
    """The tensors of a weights file plus the scalar metadata stored next to them.

    Attributes:
        tensors: flat mapping of key to tensor (a CompVis `state_dict` is already unwrapped).
        metadata: top-level non-tensor entries, e.g. `global_step` of an original `.ckpt`, or the
            string metadata of a safetensors header.
    """

    tensors: dict[str, Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)


def read_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a weights file (safetensors or a tensors-only pickle) with its metadata.

    Args:
        path: a `.safetensors`, `.ckpt`, `.pt`, `.pth` or `.bin` file.
        device: where the tensors are placed.

    Returns:
        The tensors and metadata of the file.

    Raises:
        WeightsError: the file is missing, truncated, corrupt, holds pickled code, or has an
            unknown suffix.
    """
    path = Path(path)
    if not path.is_file():
        kind = "is a folder, not a weights file" if path.is_dir() else "does not exist"
        raise WeightsError(f"{path}: {kind}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path, device)
    if suffix in PICKLE_SUFFIXES:
        return _unwrap(_read_pickle(path, device), path)
    known = ", ".join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)
    raise WeightsError(f"{path}: unknown weights suffix {suffix!r} (expected one of {known})")


def load_state_dict(
    path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Read the tensors of a weights file; see `read_checkpoint`."""
    return read_checkpoint(path, device=device).tensors


def read_keys(path: str | os.PathLike) -> list[str]:
    """The tensor names of a weights file; cheap for safetensors (header only)."""
    path = Path(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES and path.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"{path}: not a valid safetensors file: {e}") from e
    return list(read_checkpoint(path).tensors)


def _read_safetensors(path: Path, device: str | torch.device) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(
            f"{path}: not a valid safetensors file (truncated or corrupt?): {e}"
        ) from e
    return Checkpoint(tensors, metadata)


def _read_pickle(path: Path, device: str | torch.device) -> Any:
    """torch.load with weights_only=True; mmap when the file is a zip-format checkpoint."""

    def load(mmap: bool) -> Any:
        with _allowed(SAFE_GLOBALS):
            return torch.load(path, map_location=device, weights_only=True, mmap=mmap)

    try:
        try:
            return load(mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return load(mmap=False)  # legacy (pre-zip) torch.save format cannot be mmapped
    except pickle.UnpicklingError as e:
        code = _pickled_code(e, path)
        if code:
            raise WeightsError(
                f"{path}: holds pickled code or unsafe objects, refused without running it "
                f"(pilot only reads tensors with torch.load(weights_only=True)). Convert the file "
                f"to .safetensors with a tool you trust. Detail: {code}"
            ) from e
        raise WeightsError(f"{path}: not a readable torch checkpoint: {_refusal_detail(e)}") from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        # IndexError: torch's weights-only unpickler on some random bytes (an empty stack)
        raise WeightsError(
            f"{path}: not a readable torch checkpoint (truncated or corrupt?): {e}"
        ) from e


def _allowed(classes: tuple[type, ...]) -> contextlib.AbstractContextManager:
    """`torch.serialization.safe_globals(classes)`; torch 2.4, which lacks it, gets them added
    for the process (`add_safe_globals`), the same few classes every time."""
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(list(classes))
    torch.serialization.add_safe_globals(list(classes))
    return contextlib.nullcontext()


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines or [type(error).__name__])[0]


def _pickled_code(error: pickle.UnpicklingError, path: Path) -> str:
    """What code torch's weights-only unpickler refused ('' if none), found without running it.

    A torch checkpoint names the refused GLOBAL in the error. A plain pickle (protocol 4 and
    later) fails earlier, on an opcode torch does not take ("Unsupported operand 149"), as random
    bytes do; there the first pickle's opcodes are scanned (pickletools, nothing is imported)
    for imports outside torch.
    """
    detail = _refusal_detail(error)
    if "GLOBAL" in detail:
        return detail
    if not detail.startswith("Unsupported"):
        return ""
    imports = _pickle_imports(path)
    unsafe = [name for name in imports if not name.startswith(("torch", "collections"))]
    return f"the pickle imports {', '.join(unsafe)}" if unsafe else ""


def _pickle_imports(path: Path) -> list[str]:
    """`module.name` of every GLOBAL / STACK_GLOBAL in the file's first pickle; [] if unparsable."""
    imports, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    imports.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    imports.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except (ValueError, EOFError, OSError, UnicodeDecodeError, pickle.UnpicklingError):
        pass  # not a pickle past this point: what was read is all there is
    return imports


def _refusal_detail(error: pickle.UnpicklingError) -> str:
    """The line of torch's message naming what failed, never its advice to load unsafely (nor
    to allow-list the class: a user of pilot has no torch.load call to add it to)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    picked = [line for line in lines if "GLOBAL" in line or line.startswith("Unsupported")]
    if picked:
        return picked[0].split(" Please use ")[0]
    if "weights only load failed" in str(error).lower():
        return "torch.load(weights_only=True) cannot read the pickle"
    return _first_line(error)


def _unwrap(obj: Any, path: Path) -> Checkpoint:
    """Find the flat tensor dict in a pickle: CompVis ckpts nest it under `state_dict`."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    metadata: dict[str, Any] = {}
    while "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        metadata.update({k: v for k, v in obj.items() if isinstance(v, (int, float, str, bool))})
        obj = obj["state_dict"]
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors and "string_to_param" in obj:  # A1111's .pt: the vectors are one level down
        raise WeightsError(f"{path}: holds no tensors: {KIND_LOOKS['embedding']}")
    if not tensors:
        raise WeightsError(f"{path}: holds no tensors (keys: {_listing(list(obj))})")
    return Checkpoint(tensors, metadata)


def save_state_dict(
    state_dict: Mapping[str, Tensor],
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write tensors to a safetensors file atomically (temporary file, then `os.replace`).

    Tensors sharing storage with an earlier one (tied weights, views) or non-contiguous are
    copied first, so any state dict can be written; the rest are written without a copy.
    """
    from safetensors.torch import save_file

    from pilot.imageio import remove_stale_temps

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, set()
    for key, value in state_dict.items():
        value = value.detach()
        storage = (value.device, value.untyped_storage().data_ptr())
        if storage in seen or not value.is_contiguous():
            value = value.contiguous().clone()  # safetensors refuses tensors sharing memory
        seen.add(storage)
        tensors[key] = value
    remove_stale_temps([path.with_name(f"{path.name}.tmp")])  # killed writes': `.NAME.XXXXXXXX.tmp`
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=dict(metadata) if metadata else None)
        os.chmod(tmp, 0o644)  # mkstemp's (and safetensors') 0600: weights are shared outputs
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def drop_ignored(
    state_dict: Mapping[str, Tensor], patterns: Iterable[str] = IGNORED_KEYS
) -> dict[str, Tensor]:
    """State dict without the keys matching any glob in `patterns` (see `IGNORED_KEYS`)."""
    patterns = tuple(patterns)
    return {k: v for k, v in state_dict.items() if not any(fnmatchcase(k, p) for p in patterns)}


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Run a model constructor on the meta device: shapes only, no memory, no random init."""
    with torch.device("meta"):
        return factory()


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    path: str | os.PathLike,
    ignore: Iterable[str] = IGNORED_KEYS,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    file_key: Callable[[str], str] | None = None,
    looks: str | None = None,
) -> nn.Module:
    """Fill a (meta-device) model with a state dict, checking keys and shapes first.

    Args:
        model: the model, usually built with `build_on_meta`.
        state_dict: tensors keyed like `model.state_dict()`.
        path: the file the tensors came from, named in every error.
        ignore: globs of checkpoint keys dropped on purpose (default `IGNORED_KEYS`).
        dtype: floating-point dtype to convert to after loading; None keeps the file's dtype
            (float16 bound for the CPU becomes float32: CPU float16 kernels are slow).
        device: device to move to after loading; None keeps where the tensors are.
        file_key, looks: for a converted state dict, the name in the file of each of its keys
            and what the file holds, used in messages (see `check_state_dict`).

    Returns:
        The model, in eval mode.

    Raises:
        WeightsError: keys are missing or unexpected, or shapes differ; the message names the
            file, lists the keys and says what the checkpoint looks like.
    """
    state_dict = drop_ignored(state_dict, ignore)
    check_state_dict(model, state_dict, path=path, file_key=file_key, looks=looks)
    model.load_state_dict(state_dict, strict=False, assign=True)
    _materialize_buffers(model, path)
    dtype = dtype or _cpu_float16_as_float32(model, device)
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


def _cpu_float16_as_float32(
    model: nn.Module, device: str | torch.device | None
) -> torch.dtype | None:
    """float32 for a float16 model bound for the CPU (the dtype given as None), else None:
    float16 kernels on a CPU are many times slower than float32 ones (a 20-step tiny SD image:
    ~43 s against a few), so a half file loads as diffusers loads any file there."""
    params = list(model.parameters())
    if not any(t.dtype == torch.float16 for t in params):
        return None
    target = torch.device(device) if device is not None else params[0].device
    return torch.float32 if target.type == "cpu" else None


def check_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    path: str | os.PathLike,
    file_key: Callable[[str], str] | None = None,
    looks: str | None = None,
) -> None:
    """Raise a `WeightsError` unless `state_dict` has exactly the model's keys and shapes.

    Args:
        model: the model to fit.
        state_dict: tensors keyed like `model.state_dict()`.
        path: the file, named in every message.
        file_key: the name in the file of a state-dict key, when the file was converted (an
            original single file); messages name keys as the user's file does. None: as is.
        looks: what the file holds; None describes `state_dict`.
    """
    expected = model.state_dict()
    named = file_key or str
    missing = [named(k) for k in expected if k not in state_dict]
    unexpected = [named(k) for k in state_dict if k not in expected]
    name = type(model).__name__
    if missing or unexpected:
        looks = looks or describe_state_dict(state_dict)
        parts = [f"{path}: does not fit {name} ({looks})."]
        if missing:
            parts.append(f"missing {len(missing)} keys: {_listing(missing)}.")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_listing(unexpected)}.")
        raise WeightsError(" ".join(parts))
    wrong = [
        f"{named(k)}: expected {tuple(v.shape)}, found {tuple(state_dict[k].shape)}"
        for k, v in expected.items()
        if tuple(v.shape) != tuple(state_dict[k].shape)
    ]
    if wrong:
        raise WeightsError(
            f"{path}: shapes do not fit {name} (a different size of model?); "
            f"{len(wrong)} mismatches: {_listing(wrong)}"
        )


def _materialize_buffers(model: nn.Module, path) -> None:
    """Non-persistent buffers are not in any file: rebuild them on CPU from the model's config.

    Models follow the `Model(cfg)` convention, so a fresh instance gives the buffers' values.
    """
    left = [n for n, b in model.named_buffers() if b.is_meta]
    left_params = [n for n, p in model.named_parameters() if p.is_meta]
    if left_params:
        raise WeightsError(f"{path}: parameters left unloaded: {_listing(left_params)}")
    if not left:
        return
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise WeightsError(f"{path}: buffers left unloaded and no cfg to rebuild them: {left}")
    fresh = dict(type(model)(cfg).named_buffers())
    for name in left:
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        module._buffers[leaf] = fresh[name]


def _listing(items: list[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")
