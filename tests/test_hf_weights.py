"""`sharpt_jax.hf` reads one tiny Hugging Face T5 (and BERT) saved in the three weights formats to the same
parameters; the formats' order of preference; the missing-torch error; scripts/convert_weights.py.

transformers 5 writes only safetensors (`save_pretrained` ignores `safe_serialization=False`) and ships no Flax
models, so the other two formats are written here as transformers 4 wrote them: `pytorch_model.bin` is
`torch.save(model.state_dict())`, and `flax_model.msgpack` is the Flax parameter tree of
`convert_pytorch_state_dict_to_flax` (transformers 4's modeling_flax_pytorch_utils), built from the PyTorch
modules: a Linear's `weight` [out, in] becomes `kernel` [in, out], an Embedding's `weight` becomes `embedding`,
a LayerNorm's `weight` becomes `scale` (T5's own layer norm keeps `weight`), and the tied copies of the
embedding (`*.embed_tokens`) are not parameters of the Flax model; serialised with flax.serialization.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from flax import nnx, serialization, traverse_util
from safetensors.numpy import load_file

from scripts import convert_weights
from sharpt_jax import hf, hf_weights

REPO = Path(__file__).resolve().parents[1]
CONVERT = REPO / "scripts" / "convert_weights.py"


def tiny_t5() -> transformers.T5ForConditionalGeneration:
    """A random T5 v1.1 (gated-GELU, untied lm_head) of width 16."""
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=60, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=1, num_heads=2,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
    )  # fmt: skip
    model = transformers.T5ForConditionalGeneration(config).eval()
    model.lm_head.weight = torch.nn.Parameter(torch.randn(60, 16))  # transformers 5 ties at construction.
    return model


def save_bin(model, folder: Path, dtype=torch.float32) -> Path:
    model.config.save_pretrained(folder)
    torch.save({k: v.to(dtype) for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
    return folder


def save_msgpack(model, folder: Path) -> Path:
    """`flax_model.msgpack` as transformers 4's Flax models saved it (see the module docstring)."""
    model.config.save_pretrained(folder)
    flat = {}
    for module_name, module in model.named_modules():
        for leaf, value in module.named_parameters(recurse=False):
            key = tuple(module_name.split("."))
            if ".embed_tokens" in module_name:
                continue  # A tied copy of `shared`, no Flax parameter.
            value = value.detach().numpy()
            if isinstance(module, torch.nn.Linear) and leaf == "weight":
                flat[key + ("kernel",)] = value.T
            elif isinstance(module, torch.nn.Embedding):
                flat[key + ("embedding",)] = value
            elif isinstance(module, torch.nn.LayerNorm) and leaf == "weight":
                flat[key + ("scale",)] = value
            else:  # Biases; T5LayerNorm, whose Flax module names its parameter `weight` too.
                flat[key + (leaf,)] = value
    (folder / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(traverse_util.unflatten_dict(flat)))
    return folder


def params(model) -> dict:
    return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{format: folder} of one tiny T5, and the model."""
    root = tmp_path_factory.mktemp("t5_formats")
    model = tiny_t5()
    model.save_pretrained(root / "safetensors")
    return model, {
        "safetensors": root / "safetensors",
        "msgpack": save_msgpack(model, root / "msgpack"),
        "torch": save_bin(model, root / "torch"),
    }


def test_three_formats_load_to_the_same_parameters(folders):
    model, formats = folders
    loaded = {kind: params(hf.load_t5(folder)) for kind, folder in formats.items()}
    assert {kind: hf_weights.weight_files(folder)[0] for kind, folder in formats.items()} == {k: k for k in formats}
    reference = loaded["safetensors"]
    assert np.array_equal(reference[("lm_head", "kernel")], model.lm_head.weight.detach().numpy().T)
    for kind in ("msgpack", "torch"):
        assert loaded[kind].keys() == reference.keys()
        for path, value in reference.items():
            np.testing.assert_array_equal(loaded[kind][path], value, err_msg=f"{kind}: {path}")


def test_bert_msgpack_loads_as_its_safetensors(tmp_path):
    """BERT's Flax checkpoints name LayerNorm parameters `scale`; the encoder loader reads them."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24
    )
    bert = transformers.BertModel(config).eval()
    bert.save_pretrained(tmp_path / "safetensors")
    folder = save_msgpack(bert, tmp_path / "msgpack")
    assert ("embeddings", "LayerNorm", "scale") in traverse_util.flatten_dict(
        serialization.msgpack_restore((folder / "flax_model.msgpack").read_bytes())
    )
    ours, theirs = params(hf.load_encoder(folder)), params(hf.load_encoder(tmp_path / "safetensors"))
    assert ours.keys() == theirs.keys()
    for path, value in theirs.items():
        np.testing.assert_array_equal(ours[path], value, err_msg=str(path))


def test_safetensors_is_preferred_then_msgpack(folders, tmp_path):
    _, formats = folders
    every = tmp_path / "every"
    every.mkdir()
    for folder in formats.values():
        for file in folder.iterdir():
            (every / file.name).write_bytes(file.read_bytes())
    assert hf_weights.weight_files(every) == ("safetensors", [every / "model.safetensors"])
    (every / "model.safetensors").unlink()
    assert hf_weights.weight_files(every) == ("msgpack", [every / "flax_model.msgpack"])
    (every / "flax_model.msgpack").unlink()
    assert hf_weights.weight_files(every) == ("torch", [every / "pytorch_model.bin"])


def test_missing_torch_is_one_line_naming_the_fix(folders):
    """torch made unimportable (`sys.modules['torch'] = None`) in a fresh process: the .bin folder fails with one
    line before any model is built; the msgpack folder loads without torch."""
    _, formats = folders
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from sharpt_jax import hf\n"
        f"hf.load_t5({str(formats['msgpack'])!r})\n"
        "try:\n"
        f"    hf.resolve_folder({str(formats['torch'])!r})\n"
        "except hf.CheckpointError as err:\n"
        "    print(err)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        f"{formats['torch']}: its weights are a PyTorch pickle (pytorch_model.bin), and reading it needs torch, "
        "which is not installed: pip install torch --index-url https://download.pytorch.org/whl/cpu, or convert "
        f"the folder once where torch is installed: python scripts/convert_weights.py {formats['torch']} DST_DIR"
    ]


def test_convert_writes_safetensors_that_hugging_face_reads(folders, tmp_path):
    model, formats = folders
    # The msgpack folder's other files (config.json) and a vocabulary are copied; no weights file is.
    (formats["msgpack"] / "spiece.model").write_bytes(b"vocabulary")
    result = subprocess.run(
        [sys.executable, str(CONVERT), str(formats["msgpack"]), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors", "spiece.model"]
    # transformers itself reads the file (safetensors' own parser, PyTorch names and layouts): same logits.
    converted = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    ids = torch.tensor([[5, 9, 13, 1]])
    with torch.no_grad():
        expected = model(input_ids=ids, decoder_input_ids=ids).logits
        np.testing.assert_array_equal(converted(input_ids=ids, decoder_input_ids=ids).logits, expected)
    # A second conversion into the same folder is refused in one line.
    with pytest.raises(SystemExit, match=f"^error: {tmp_path}/out/model.safetensors exists; give an empty DST_DIR$"):
        convert_weights.main([str(formats["msgpack"]), str(tmp_path / "out")])


def test_convert_keeps_bfloat16(folders, tmp_path):
    model, _ = folders
    src = save_bin(model, tmp_path / "bf16", dtype=torch.bfloat16)
    out = convert_weights.convert(str(src), tmp_path / "out")
    header_size = int.from_bytes(out.read_bytes()[:8], "little")
    header = json.loads(out.read_bytes()[8 : 8 + header_size])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    expected = {k: v.float().numpy() for k, v in model.state_dict().items()}
    read = {k: np.asarray(v, np.float32) for k, v in load_file(out).items()}
    assert read.keys() == expected.keys()
    for name, value in read.items():
        np.testing.assert_array_equal(value, torch.tensor(expected[name]).bfloat16().float().numpy(), err_msg=name)
    with pytest.raises(hf.CheckpointError, match="safetensors already"):
        convert_weights.convert(str(tmp_path / "out"), tmp_path / "again")
