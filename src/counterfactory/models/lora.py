"""LoRA adapters on a diffusion U-Net (peft), saved in the diffusers format.

One file, ``pytorch_lora_weights.safetensors``, is what both sides read:

* our :func:`load_lora` (any ``nn.Module``: the SD-1.5 ``UNet2DConditionModel``, the compact models), and
* stock diffusers ``pipe.load_lora_weights(dir)`` for SD-family pipelines.

Key names are diffusers': ``unet.<module path>.lora.down.weight`` / ``.lora.up.weight`` (peft's ``lora_A`` /
``lora_B``). The adapter's ``LoraConfig`` (rank, alpha, targets) travels in the safetensors metadata under
diffusers' ``lora_adapter_metadata`` key, so a stock pipeline rebuilds the same scaling (alpha/rank); the
caller's own metadata (training config, damage types, ...) is stored as JSON under ``counterfactory``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, _short, input_error
from ..io.manifest import atomic_write_bytes

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "LORA_WEIGHT_NAME",
    "METADATA_KEY",
    "add_lora",
    "has_lora",
    "load_lora",
    "lora_state_dict",
    "merge_lora",
    "read_lora_metadata",
    "save_lora",
]

#: The attention projections of every diffusers ``Attention`` block (self- and cross-attention).
DEFAULT_TARGET_MODULES: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
#: diffusers' file name; ``pipe.load_lora_weights(dir)`` looks for exactly this.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: safetensors metadata key holding the caller's metadata (JSON).
METADATA_KEY = "counterfactory"
_DIFFUSERS_CONFIG_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
_PREFIX = "unet"
_LORA_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _tuner_layer_cls():
    from peft.tuners.tuners_utils import BaseTunerLayer

    return BaseTunerLayer


def _is_diffusers_peft_model(model: nn.Module) -> bool:
    from diffusers.loaders.peft import PeftAdapterMixin

    return isinstance(model, PeftAdapterMixin)


def has_lora(model: nn.Module, adapter_name: str | None = None) -> bool:
    """Whether ``model`` carries LoRA layers (of ``adapter_name``, or of any adapter when None)."""
    config = getattr(model, "peft_config", None) or {}
    return bool(config) if adapter_name is None else adapter_name in config


def _check_target_modules(model: nn.Module, target_modules: Any) -> list[str]:
    """Every target must name (as peft matches: full path or a ``.``-suffix) at least one LoRA-able layer."""
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    if (
        not isinstance(target_modules, Sequence)
        or not target_modules
        or not all(isinstance(t, str) and t.strip() for t in target_modules)
    ):
        raise input_error(
            "target_modules",
            target_modules,
            "a non-empty sequence of module names such as ('to_q', 'to_v')",
            ConfigError,
        )
    tuner = _tuner_layer_cls()
    layers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if ".base_layer" in name or ".lora_" in name:
            continue  # peft internals of an adapter added earlier
        layers[name] = module
    targets = list(dict.fromkeys(target_modules))
    for target in targets:
        hits = [m for n, m in layers.items() if n == target or n.endswith("." + target)]
        if not hits:
            leaf_names = sorted(
                {n.rsplit(".", 1)[-1] for n, m in layers.items() if isinstance(m, _LORA_LAYER_TYPES)}
            )
            raise input_error(
                "target_modules",
                target,
                f"names no module of this {type(model).__name__}; LoRA-able layer names include "
                f"{_short(', '.join(leaf_names), 160)} (dotted suffixes such as 'to_out.0' work too)",
                ConfigError,
            )
        bad = [m for m in hits if not isinstance(m, (_LORA_LAYER_TYPES, tuner))]
        if bad:
            raise input_error(
                "target_modules",
                target,
                f"names a {type(bad[0]).__name__}; LoRA targets must be Linear or Conv1d/2d/3d layers",
                ConfigError,
            )
    return targets


def _check_rank_alpha(rank: Any, alpha: Any, dropout: Any, adapter_name: Any) -> tuple[int, float, float]:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise input_error("rank", rank, "a positive integer (typical: 4-64)", ConfigError)
    if alpha is None:
        alpha = rank
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not (alpha > 0)
        or alpha == float("inf")
    ):
        raise input_error(
            "alpha", alpha, "a positive finite number, or None for alpha = rank (scale 1)", ConfigError
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not (0.0 <= dropout < 1.0):
        raise input_error("dropout", dropout, "a number in [0, 1)", ConfigError)
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise input_error("adapter_name", adapter_name, "a non-empty name without dots", ConfigError)
    return rank, alpha, float(dropout)


def _lora_parameters(model: nn.Module, adapter_name: str) -> list[nn.Parameter]:
    tags = (f".lora_A.{adapter_name}.", f".lora_B.{adapter_name}.")
    return [p for n, p in model.named_parameters() if any(t in n for t in tags)]


def _inject(model: nn.Module, config, adapter_name: str) -> None:
    """Add the adapter the way diffusers does (``add_adapter``), or with peft directly for other modules."""
    from peft import inject_adapter_in_model

    with warnings.catch_warnings():  # a second adapter is intended, not a mistake
        warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute.*")
        if _is_diffusers_peft_model(model):
            model.add_adapter(config, adapter_name=adapter_name)
            return
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
    if not isinstance(getattr(model, "peft_config", None), dict):
        model.peft_config = {}
    model.peft_config[adapter_name] = config
    tuner = _tuner_layer_cls()
    for module in model.modules():
        if isinstance(module, tuner):
            module.set_adapter(adapter_name)


def add_lora(
    unet: nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    dropout: float = 0.0,
    adapter_name: str = "default",
    *,
    seed: int | None = None,
) -> list[nn.Parameter]:
    """Freeze ``unet``'s weights, add a LoRA adapter and return its (trainable) parameters.

    Args:
        unet: any module; diffusers models (``UNet2DConditionModel``, ``UNet2DModel``, ...) are typical.
        rank: LoRA rank r (positive int).
        alpha: LoRA alpha; the update is scaled by ``alpha / rank``. None: alpha = rank (scale 1).
        target_modules: layer names as peft matches them: a full module path or a ``.``-suffix of one
            ("to_q" hits every ``...attn1.to_q`` / ``...attn2.to_q``). Linear and Conv layers
            work, so conv names ("conv1", "conv2", "conv_shortcut") are fine for the compact models. Every
            name must hit at least one layer. A single string counts as one name.
        dropout: LoRA dropout probability in [0, 1).
        adapter_name: name of the adapter (unique on this model); becomes the active adapter.
        seed: seeds LoRA A's random init (B is zero) so the adapter is a function of ``seed`` only; the
            caller's global RNG state is left untouched. None: draw from the global torch RNG.

    LoRA B starts at zero, so the model's output is unchanged until training moves it.

    Raises:
        ConfigError: bad rank / alpha / dropout / name, an unknown or non-LoRA-able target, a duplicate name.
    """
    from peft import LoraConfig

    rank, alpha, dropout = _check_rank_alpha(rank, alpha, dropout, adapter_name)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise input_error("seed", seed, "a non-negative integer, or None", ConfigError)
    targets = _check_target_modules(unet, target_modules)
    if has_lora(unet, adapter_name):
        raise input_error(
            "adapter_name", adapter_name, "a name not already used by an adapter on this model", ConfigError
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=targets,
        lora_dropout=dropout,
        init_lora_weights=True,
        bias="none",
    )
    unet.requires_grad_(False)
    if seed is None:
        _inject(unet, config, adapter_name)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _inject(unet, config, adapter_name)
    params = _lora_parameters(unet, adapter_name)
    for p in params:
        p.requires_grad_(True)
    return params


def _require_adapter(unet: nn.Module, adapter_name: str) -> None:
    if not has_lora(unet, adapter_name):
        names = sorted((getattr(unet, "peft_config", None) or {}).keys())
        raise input_error(
            "adapter_name",
            adapter_name,
            f"an adapter on this model (it has {names or 'none: call add_lora first'})",
        )


def _to_diffusers_keys(peft_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.utils import convert_state_dict_to_diffusers

    converted = convert_state_dict_to_diffusers(dict(peft_state))
    # diffusers' table renames only the attention projections; name every other layer (convs) the same way so
    # that the whole file is in one format (its loader decides the format from the first key only).
    out = {}
    for key, value in converted.items():
        key = key.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up.")
        out[f"{_PREFIX}.{key}"] = value
    return out


def lora_state_dict(unet: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's weights in the diffusers format: ``{"unet.<path>.lora.down.weight": A, ...up.weight: B}``."""
    from peft import get_peft_model_state_dict

    _require_adapter(unet, adapter_name)
    peft_state = get_peft_model_state_dict(unet, adapter_name=adapter_name, save_embedding_layers=False)
    if not peft_state:
        raise input_error("adapter_name", adapter_name, "an adapter with LoRA weights (this one has none)")
    return _to_diffusers_keys(peft_state)


def _config_metadata(config) -> dict[str, Any]:
    """The LoraConfig as diffusers stores it: ``{"unet.r": ..., "unet.lora_alpha": ..., ...}``."""
    raw = config.to_dict()
    clean = {}
    for key, value in raw.items():
        if isinstance(value, set):
            value = sorted(value)
        clean[f"{_PREFIX}.{key}"] = value
    return clean


def save_lora(
    unet: nn.Module,
    directory: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
    *,
    adapter_name: str = "default",
) -> Path:
    """Write ``directory/pytorch_lora_weights.safetensors`` (atomically) and return its path.

    ``metadata`` (JSON-serialisable mapping) is stored in the file's safetensors metadata and comes back from
    :func:`load_lora` / :func:`read_lora_metadata`. The file loads with stock ``pipe.load_lora_weights(directory)``.
    """
    from ..io.tensors import safetensors_bytes  # metadata in sorted order: byte-reproducible files

    if metadata is not None and not isinstance(metadata, Mapping):
        raise input_error("metadata", metadata, "a JSON-serialisable dict, or None")
    try:
        user_json = json.dumps(dict(metadata or {}), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise input_error("metadata", metadata, f"a JSON-serialisable dict ({exc})") from exc
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise input_error("directory", str(directory), "a folder path (this is an existing file)")

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in lora_state_dict(unet, adapter_name).items()}
    header = {
        "format": "pt",
        _DIFFUSERS_CONFIG_KEY: json.dumps(_config_metadata(unet.peft_config[adapter_name]), sort_keys=True),
        METADATA_KEY: user_json,
    }
    return atomic_write_bytes(directory / LORA_WEIGHT_NAME, safetensors_bytes(tensors, header))


def _weights_file(dir_or_file: str | os.PathLike) -> Path:
    path = Path(dir_or_file)
    if path.is_dir():
        path = path / LORA_WEIGHT_NAME
        if not path.is_file():
            raise CheckpointError(
                f"LoRA weights: no {LORA_WEIGHT_NAME} in {path.parent}; save one with save_lora(unet, dir)"
            )
        return path
    if not path.is_file():
        raise CheckpointError(
            f"LoRA weights: no file or folder {path}; expected a folder holding {LORA_WEIGHT_NAME} (save_lora) "
            "or a .safetensors file"
        )
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"LoRA weights: {path} is not a .safetensors file; only safetensors weights are read"
        )
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(
            f"LoRA weights: cannot read {path} ({type(exc).__name__}: {_short(str(exc))})"
        ) from exc
    return tensors, header


def read_lora_metadata(dir_or_file: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` dict given to :func:`save_lora` (``{}`` when none), without loading any weights."""
    from safetensors import safe_open

    path = _weights_file(dir_or_file)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
    except Exception as exc:
        raise CheckpointError(
            f"LoRA weights: cannot read {path} ({type(exc).__name__}: {_short(str(exc))})"
        ) from exc
    return _user_metadata(header, path)


def _user_metadata(header: Mapping[str, str], path: Path) -> dict[str, Any]:
    raw = header.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(
            f"LoRA weights: {path} has unreadable '{METADATA_KEY}' metadata ({exc})"
        ) from exc
    return value if isinstance(value, dict) else {}


def _file_config(peft_state: Mapping[str, torch.Tensor], header: Mapping[str, str], path: Path):
    """The LoraConfig saved in the file (diffusers metadata), else inferred from the weights (alpha = rank)."""
    from peft import LoraConfig

    raw = header.get(_DIFFUSERS_CONFIG_KEY)
    if raw:
        try:
            packed = json.loads(raw)
            kwargs = {k[len(_PREFIX) + 1 :]: v for k, v in packed.items() if k.startswith(f"{_PREFIX}.")}
            if kwargs:
                return LoraConfig(**kwargs)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(
                f"LoRA weights: {path} has unreadable '{_DIFFUSERS_CONFIG_KEY}' metadata ({_short(str(exc))})"
            ) from exc
    from diffusers.utils.peft_utils import get_peft_kwargs

    ranks = {f"^{k}": v.shape[1] for k, v in peft_state.items() if "lora_B" in k and v.ndim > 1}
    if not ranks:
        raise CheckpointError(f"LoRA weights: {path} holds no lora_B (lora.up) matrices")
    return LoraConfig(**get_peft_kwargs(ranks, network_alpha_dict=None, peft_state_dict=dict(peft_state)))


def load_lora(
    unet: nn.Module, dir_or_file: str | os.PathLike, *, adapter_name: str = "default"
) -> dict[str, Any]:
    """Load LoRA weights written by :func:`save_lora` (or any diffusers-format UNet LoRA) into ``unet``.

    If ``unet`` has no adapter called ``adapter_name`` one is created from the file's config (rank, alpha,
    targets) and made active; if it has one (e.g. from :func:`add_lora` before resuming training) the weights
    are loaded into it and must match it exactly. Base weights are frozen and the adapter's parameters are left
    trainable either way. Returns the caller's metadata saved with the file (``{}`` when none).

    Raises:
        CheckpointError: missing/unreadable file, no ``unet.`` LoRA keys, or weights that do not fit this model.
    """
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict

    path = _weights_file(dir_or_file)
    tensors, header = _read(path)
    state = {k[len(_PREFIX) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{_PREFIX}.")}
    if not state:
        sample = ", ".join(sorted(tensors)[:3]) or "no tensors"
        raise CheckpointError(f"LoRA weights: {path} has no '{_PREFIX}.' LoRA keys (found: {_short(sample)})")
    peft_state = convert_unet_state_dict_to_peft(state)
    if not all(".lora_A." in k or ".lora_B." in k for k in peft_state):
        odd = next(k for k in peft_state if ".lora_A." not in k and ".lora_B." not in k)
        raise CheckpointError(
            f"LoRA weights: {path} holds a non-LoRA key '{odd}' (DoRA/bias LoRA are not supported)"
        )

    created = False
    if not has_lora(unet, adapter_name):
        config = _file_config(peft_state, header, path)
        targets = sorted({k.split(".lora_")[0] for k in peft_state})
        try:
            _check_target_modules(unet, targets)
        except ConfigError as exc:
            raise CheckpointError(
                f"LoRA weights: {path} does not fit this {type(unet).__name__}: {exc}"
            ) from exc
        unet.requires_grad_(False)
        with torch.random.fork_rng(
            devices=[]
        ):  # the random LoRA-A init is overwritten; keep the caller's RNG
            _inject(unet, config, adapter_name)
        created = True
    try:
        result = set_peft_model_state_dict(unet, peft_state, adapter_name=adapter_name)
    except RuntimeError as exc:  # size mismatch
        if created:
            _remove_adapter(unet, adapter_name)
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "size mismatch" in line), first[0] if first else "")
        raise CheckpointError(
            f"LoRA weights: {path} does not fit this {type(unet).__name__} ({_short(detail, 200)})"
        ) from exc
    unexpected = [k for k in result.unexpected_keys if ".lora_" in k]
    tags = (f".lora_A.{adapter_name}.", f".lora_B.{adapter_name}.")
    missing = [k for k in result.missing_keys if any(t in k for t in tags)]
    if unexpected or missing:
        if created:
            _remove_adapter(unet, adapter_name)
        what = (
            f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}"
            if unexpected
            else (f"{len(missing)} missing key(s), e.g. {missing[0]}")
        )
        raise CheckpointError(
            f"LoRA weights: {path} does not match adapter '{adapter_name}' of this model: {what}"
        )
    for p in _lora_parameters(unet, adapter_name):
        p.requires_grad_(True)
    return _user_metadata(header, path)


def _remove_adapter(unet: nn.Module, adapter_name: str) -> None:
    """Undo a half-finished load: drop the adapter again (and the LoRA wrappers when it was the only one)."""
    config = getattr(unet, "peft_config", None) or {}
    config.pop(adapter_name, None)
    tuner = _tuner_layer_cls()
    for module in unet.modules():
        if isinstance(module, tuner) and adapter_name in getattr(module, "lora_A", {}):
            module.delete_adapter(adapter_name)
    if not config:
        _unwrap(unet, merge=False)


def _unwrap(model: nn.Module, *, merge: bool) -> int:
    """Replace every peft layer by its base layer (after merging its active adapters when ``merge``)."""
    tuner = _tuner_layer_cls()
    replaced = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, tuner) or not name:
            continue
        if merge:
            module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
        replaced += 1
    if hasattr(model, "peft_config"):
        del model.peft_config
    if _is_diffusers_peft_model(model):
        model._hf_peft_config_loaded = False
    return replaced


def merge_lora(unet: nn.Module) -> nn.Module:
    """Fold the active LoRA adapter(s) into the base weights and remove every LoRA layer, in place.

    Afterwards ``unet`` is a plain model again (same parameter names as before :func:`add_lora`) whose outputs
    equal the adapted model's up to float rounding. Base parameters stay frozen. Returns ``unet``.

    Raises:
        InputError: ``unet`` has no LoRA adapter.
        CheckpointError: merging would produce non-finite weights.
    """
    if not has_lora(unet):
        raise input_error(
            "unet", type(unet).__name__, "a model with a LoRA adapter (call add_lora or load_lora first)"
        )
    try:
        _unwrap(unet, merge=True)
    except ValueError as exc:  # peft's safe_merge: NaN/inf in the merged weights
        raise CheckpointError(f"LoRA merge: {_short(str(exc))}") from exc
    return unet
