"""LoRA adapters on diffusers U-Nets (``PeftAdapterMixin``), saved in the diffusers format.

``pytorch_lora_weights.safetensors`` holds ``unet.<module>.lora.down.weight`` / ``.lora.up.weight`` tensors,
the ``LoraConfig`` under diffusers' ``lora_adapter_metadata`` key (so stock ``pipe.load_lora_weights(dir)``
rebuilds the same alpha/rank scaling) and the caller's metadata as JSON under ``counterfactory``. diffusers and
peft do the adapter work; this module adds a seeded LoRA-A init (same seed, same adapter; the caller's RNG is
untouched), errors that name the bad argument, strict loading into an existing adapter, and atomic writes.
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

__all__ = ["DEFAULT_TARGET_MODULES", "LORA_WEIGHT_NAME", "METADATA_KEY", "add_lora", "load_lora", "save_lora"]

#: The attention projections of every diffusers ``Attention`` block (self- and cross-attention).
DEFAULT_TARGET_MODULES: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
#: diffusers' file name; ``pipe.load_lora_weights(dir)`` looks for exactly this.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: safetensors metadata key holding the caller's metadata (JSON).
METADATA_KEY = "counterfactory"
_CONFIG_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
_LORA_ABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _adapters(unet: nn.Module) -> dict:
    return getattr(unet, "peft_config", None) or {}


def _need(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise input_error(name, value, allowed, ConfigError)


def _check_targets(unet: nn.Module, target_modules: Any) -> list[str]:
    """Every target must name (as peft matches: a full path or a ``.``-suffix) at least one LoRA-able layer."""
    from diffusers.loaders.peft import PeftAdapterMixin
    from peft.tuners.tuners_utils import BaseTunerLayer

    _need(isinstance(unet, PeftAdapterMixin), "unet", type(unet).__name__, "a diffusers model with adapter support")
    targets = (target_modules,) if isinstance(target_modules, str) else target_modules
    _need(isinstance(targets, Sequence) and bool(targets) and all(isinstance(t, str) and t.strip() for t in targets),
          "target_modules", target_modules, "a non-empty sequence of names such as ('to_q', 'to_v')")
    layers = {n: m for n, m in unet.named_modules() if ".base_layer" not in n and ".lora_" not in n}
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in layers.items() if isinstance(m, _LORA_ABLE)})
    for target in dict.fromkeys(targets):
        hits = [m for n, m in layers.items() if n == target or n.endswith("." + target)]
        _need(bool(hits), "target_modules", target, f"names no module of this {type(unet).__name__}; LoRA-able "
              f"names include {_short(', '.join(leaves), 160)} (and dotted suffixes like 'to_out.0')")
        bad = next((m for m in hits if not isinstance(m, (*_LORA_ABLE, BaseTunerLayer))), None)
        _need(bad is None, "target_modules", target, f"names a {type(bad).__name__}; LoRA targets must be Linear "
              "or Conv1d/2d/3d layers")
    return list(dict.fromkeys(targets))


def _attach(unet: nn.Module, config, adapter_name: str, seed: int | None) -> list[nn.Parameter]:
    """diffusers' ``add_adapter`` on a frozen base, drawing LoRA A (B is zero) from ``seed`` on a forked RNG."""
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*multiple adapters.*")  # a second adapter is intended
        if seed is not None:
            torch.manual_seed(seed)
        unet.add_adapter(config, adapter_name=adapter_name)
    return _trainable(unet, adapter_name)


def _trainable(unet: nn.Module, adapter_name: str) -> list[nn.Parameter]:
    tags = (f".lora_A.{adapter_name}.", f".lora_B.{adapter_name}.")
    return [p.requires_grad_(True) for n, p in unet.named_parameters() if any(t in n for t in tags)]


def add_lora(unet: nn.Module, rank: int = 4, alpha: float | None = None,
             target_modules: Sequence[str] = DEFAULT_TARGET_MODULES, dropout: float = 0.0,
             adapter_name: str = "default", *, seed: int | None = None) -> list[nn.Parameter]:
    """Freeze ``unet``, add a LoRA adapter (made active) and return its trainable parameters.

    ``target_modules`` match as in peft (a full path or a ``.``-suffix: "to_q" hits every ``attn1.to_q`` and
    ``attn2.to_q``); Linear and Conv layers work; one string is one name. The update is scaled by
    ``alpha / rank`` (None: alpha = rank). ``seed`` makes LoRA A a function of the seed alone; None draws it from
    the global RNG's current state without advancing it. LoRA B starts at zero, so outputs are unchanged.
    Raises :class:`ConfigError` naming the bad argument; the model is then left as it was.
    """
    from peft import LoraConfig

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    alpha = rank if alpha is None else alpha
    _need(number(rank) and isinstance(rank, int) and rank >= 1, "rank", rank, "a positive integer (typical: 4-64)")
    _need(number(alpha) and 0 < alpha < float("inf"), "alpha", alpha, "a positive finite number, or None (= rank)")
    _need(number(dropout) and 0.0 <= dropout < 1.0, "dropout", dropout, "a number in [0, 1)")
    _need(seed is None or (number(seed) and isinstance(seed, int) and seed >= 0), "seed", seed,
          "a non-negative integer, or None")
    _need(isinstance(adapter_name, str) and bool(adapter_name) and "." not in adapter_name
          and adapter_name not in _adapters(unet), "adapter_name", adapter_name, "a new non-empty name without dots")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=_check_targets(unet, target_modules),
                        lora_dropout=float(dropout))
    return _attach(unet, config, adapter_name, seed)


def save_lora(unet: nn.Module, directory: str | os.PathLike, metadata: Mapping[str, Any] | None = None, *,
              adapter_name: str = "default") -> Path:
    """Write ``directory/pytorch_lora_weights.safetensors`` atomically; ``metadata``: a JSON-serialisable dict."""
    from peft import get_peft_model_state_dict

    from ..io.tensors import safetensors_bytes  # metadata in sorted order: byte-reproducible files

    if adapter_name not in _adapters(unet):
        raise input_error("adapter_name", adapter_name, f"an adapter of this model (it has {sorted(_adapters(unet))})")
    try:
        user = json.dumps(dict(metadata or {}), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise input_error("metadata", metadata, f"a JSON-serialisable dict, or None ({exc})") from None
    if Path(directory).is_file():
        raise input_error("directory", str(directory), "a folder path (this is an existing file)")
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name, save_embedding_layers=False)
    # diffusers' names for every layer alike (its loader picks the format from the first key)
    tensors = {"unet." + k.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up."): v.detach().cpu()
               .contiguous() for k, v in state.items()}
    config = {f"unet.{k}": sorted(v) if isinstance(v, set) else v
              for k, v in unet.peft_config[adapter_name].to_dict().items()}
    header = {"format": "pt", _CONFIG_KEY: json.dumps(config, sort_keys=True), METADATA_KEY: user}
    return atomic_write_bytes(Path(directory) / LORA_WEIGHT_NAME, safetensors_bytes(tensors, header))


def _read(dir_or_file: str | os.PathLike) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = Path(dir_or_file) / LORA_WEIGHT_NAME if Path(dir_or_file).is_dir() else Path(dir_or_file)
    if not path.is_file() or path.suffix != ".safetensors":
        raise CheckpointError(f"LoRA weights: {path} is {'not a .safetensors file' if path.is_file() else 'missing'}; "
                              f"give a folder holding {LORA_WEIGHT_NAME} (save_lora) or a .safetensors file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return path, {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:
        raise CheckpointError(f"LoRA weights: cannot read {path} ({type(exc).__name__}: {_short(str(exc))})") from exc


def _json(header: Mapping[str, str], key: str, path: Path) -> dict:
    try:
        value = json.loads(header.get(key) or "{}")
    except ValueError as exc:
        raise CheckpointError(f"LoRA weights: {path} has unreadable '{key}' metadata ({_short(str(exc))})") from exc
    return value if isinstance(value, dict) else {}


def load_lora(unet: nn.Module, dir_or_file: str | os.PathLike, *, adapter_name: str = "default") -> dict[str, Any]:
    """Load a diffusers-format U-Net LoRA into ``unet`` (trainable) and return the caller's metadata saved with it.

    Without an adapter ``adapter_name`` one is made from the file's config (else from the weights' shapes with
    alpha = rank); with one (resuming training) the weights must fit it exactly.

    Raises:
        CheckpointError: a missing or unreadable file, keys other than U-Net LoRA, weights that do not fit.
    """
    from diffusers.utils import convert_unet_state_dict_to_peft
    from diffusers.utils.peft_utils import get_peft_kwargs
    from peft import LoraConfig, set_peft_model_state_dict

    path, tensors, header = _read(dir_or_file)
    state = convert_unet_state_dict_to_peft({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
    if not state:  # other odd keys (DoRA, bias LoRA) are refused below as keys that do not fit
        raise CheckpointError(f"LoRA weights: {path} holds no 'unet.' LoRA keys (found: "
                              f"{_short(', '.join(sorted(tensors)[:3]) or 'no tensors')})")
    created = adapter_name not in _adapters(unet)
    if created:
        kwargs = {k[5:]: v for k, v in _json(header, _CONFIG_KEY, path).items() if k.startswith("unet.")}
        ranks = {f"^{k}": v.shape[1] for k, v in state.items() if ".lora_B." in k and v.ndim > 1}
        try:
            config = LoraConfig(**(kwargs or get_peft_kwargs(ranks, network_alpha_dict=None, peft_state_dict=state)))
            _check_targets(unet, sorted({k.split(".lora_")[0] for k in state}))
        except (ConfigError, TypeError, ValueError) as exc:
            raise CheckpointError(f"LoRA weights: {path} does not fit this {type(unet).__name__}: {exc}") from exc
        _attach(unet, config, adapter_name, seed=0)  # A's random init is overwritten below
    try:
        result = set_peft_model_state_dict(unet, state, adapter_name=adapter_name)
        tags = (f".lora_A.{adapter_name}.", f".lora_B.{adapter_name}.")
        problems = [f"unexpected {k}" for k in result.unexpected_keys if ".lora_" in k or ".lora." in k]
        problems += [f"missing {k}" for k in result.missing_keys if any(t in k for t in tags)]
    except RuntimeError as exc:  # size mismatch
        lines = str(exc).strip().splitlines() or [""]
        problems = [next((line.strip() for line in lines if "size mismatch" in line), lines[0])]
    if problems:
        if created:
            unet.delete_adapters(adapter_name)
        raise CheckpointError(f"LoRA weights: {path} does not fit adapter '{adapter_name}' of this "
                              f"{type(unet).__name__} ({len(problems)} problem(s), e.g. {_short(problems[0], 200)})")
    _trainable(unet, adapter_name)
    return _json(header, METADATA_KEY, path)
