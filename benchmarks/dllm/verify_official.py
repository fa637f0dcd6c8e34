"""Check accel's native LLaDA / Dream and its decoders against the official code, on tiny random checkpoints.

    git clone https://github.com/NVlabs/Fast-dLLM /tmp/Fast-dLLM
    git clone https://github.com/vhicrgit/Window-Diffusion /tmp/Window-Diffusion
    python benchmarks/dllm/verify_official.py --fast-dllm /tmp/Fast-dLLM --window-diffusion /tmp/Window-Diffusion

The official code is not part of accel; this script copies the modelling files it needs from those checkouts into a
temporary folder and runs them there. Fast-dLLM's llada/model and dream/model are the official LLaDA and Dream
modelling files with Fast-dLLM's caches added (their full forward is the official one). Three compatibility edits
are made to the copies, none touching the arithmetic: LLaDA's `@torch.compile()` on its attention helper is dropped
(CPU), `use_cache` / `return_dict` are passed explicitly, and transformers 4.x's default / linear rope initialisers
(which Dream's code imports; transformers 5 renamed them) are restated.

Checks (printed as JSON):
  logits:  the official model with random weights saved in the official layout, loaded by accel.dllm.native:
           the largest absolute logit difference, float32 and bfloat16, LLaDA (GQA; q/k/v biases) and Dream (GQA;
           linear rope scaling);
  fastdllm: Fast-dLLM's generate / generate_with_prefix_cache / generate_with_dual_cache on the official LLaDA vs
           accel's fast-dllm with cache none / prefix / dual, and LLaDA's one-token-per-step baseline vs `llada`:
           runs with identical tokens;
  window:  Window-Diffusion's LLaDA generate vs accel's window:plan=frozen (the mask's output row zeroed, since the
           official loop can take the mask token as its argmax and accel never does): runs with identical tokens.
Recorded results: docs/dllm.md, "How the native models were verified".
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

LLADA = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu", "alibi": False,
         "attention_dropout": 0.0, "attention_layer_norm": False, "block_type": "llama", "block_group_size": 1,
         "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "mlp_hidden_size": 96, "mlp_ratio": 4,
         "embedding_size": 128, "vocab_size": 120, "embedding_dropout": 0.0, "residual_dropout": 0.0,
         "include_bias": False, "include_qkv_bias": False, "bias_for_layer_norm": False, "layer_norm_type": "rms",
         "layer_norm_with_affine": True, "rms_norm_eps": 1e-5, "max_sequence_length": 64, "rope": True,
         "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False, "weight_tying": False,
         "input_emb_norm": False, "mask_token_id": 118, "eos_token_id": 119, "pad_token_id": 119,
         "init_device": "cpu", "flash_attention": False, "use_cache": False}
DREAM = {"architectures": ["DreamModel"], "model_type": "Dream", "vocab_size": 128, "hidden_size": 64,
         "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "hidden_act": "silu", "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
         "rope_theta": 1000000.0, "rope_scaling": None, "use_sliding_window": False, "mask_token_id": 126,
         "pad_token_id": 125, "eos_token_id": 125, "attention_dropout": 0.0}
MASK = LLADA["mask_token_id"]


def stage(fast_dllm: Path, window_diffusion: Path | None) -> Path:
    """Copies of the official files in a temporary folder, with the compatibility edits, importable."""
    root = Path(tempfile.mkdtemp(prefix="accel-official-"))
    shutil.copytree(fast_dllm / "llada" / "model", root / "model")  # Fast-dLLM's loops import `model.`
    shutil.copytree(fast_dllm / "dream" / "model", root / "dream_official")
    shutil.copy(fast_dllm / "llada" / "generate.py", root / "fastdllm_generate.py")
    modeling = root / "model" / "modeling_llada.py"
    modeling.write_text(modeling.read_text().replace("@torch.compile()\n", "\n"))
    if window_diffusion is not None:
        shutil.copy(window_diffusion / "llada" / "model" / "modeling_llada.py", root / "wd_llada.py")
    sys.path.insert(0, str(root))
    from transformers import modeling_rope_utils as rope

    def default(config, device=None, **_):  # transformers 4.46's _compute_default_rope_parameters
        dim = config.hidden_size // config.num_attention_heads
        base = config.rope_theta
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float().to(device) / dim)), 1.0

    def linear(config, device=None, **_):  # ... and _compute_linear_scaling_rope_parameters
        inv, scale = default(config, device)
        return inv / config.rope_scaling["factor"], scale

    rope.ROPE_INIT_FUNCTIONS.setdefault("default", default)
    rope.ROPE_INIT_FUNCTIONS.setdefault("linear", linear)
    return root


def randomize(model, scale: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = "norm" in name or "ln_f" in name
            p.copy_(torch.randn_like(p) * (scale if p.ndim > 1 else 0.1) + (1.0 if norm else 0.0))


def save(model, config: dict) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="accel-ckpt-"))
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def official_logits(model, ids):
    return model(input_ids=ids, use_cache=False, return_dict=True, output_hidden_states=False).logits.float()


def check_logits() -> dict:
    from accel.dllm.native import load_native

    llada_cls = importlib.import_module("model.modeling_llada").LLaDAModelLM
    llada_cfg = importlib.import_module("model.configuration_llada").LLaDAConfig
    dream_mod = importlib.import_module("dream_official.modeling_dream")
    dream_cfg = importlib.import_module("dream_official.configuration_dream").DreamConfig
    out = {}
    for name, config in [("llada", LLADA), ("llada qkv-bias", LLADA | {"include_qkv_bias": True, "n_kv_heads": 4}),
                         ("dream", DREAM), ("dream linear-rope", DREAM | {"rope_scaling": {"rope_type": "linear",
                                                                                           "factor": 2.0}})]:
        torch.manual_seed(0)
        if name.startswith("llada"):
            official = llada_cls(llada_cfg(**config), init_params=True).eval()
        else:
            conf = dream_cfg(**config)
            conf._attn_implementation = "sdpa"
            official = dream_mod.DreamModel(conf).eval()
        randomize(official, 0.02)
        ids = torch.randint(0, 118, (2, 24))
        for dtype in (torch.float32, torch.bfloat16):
            official = official.to(dtype)
            for m in official.modules():  # from_pretrained keeps Dream's rotary inv_freq in float32
                if hasattr(m, "inv_freq") and hasattr(m, "rope_init_fn"):
                    m.inv_freq = m.original_inv_freq = m.rope_init_fn(m.config, None, **m.rope_kwargs)[0]
            mine, _ = load_native(save(official, config), dtype=dtype)
            with torch.no_grad():
                diff = (official_logits(official, ids) - mine(ids).float()).abs().max().item()
            out[f"{name} {str(dtype).split('.')[-1]}"] = diff
    return out


class _Official(torch.nn.Module):
    """What the official loops call: model(x, **kw).logits / .past_key_values, and .device."""

    def __init__(self, model):
        super().__init__()
        self.m, self.device = model, torch.device("cpu")

    def forward(self, x, **kw):
        return self.m(input_ids=x, return_dict=True, output_hidden_states=False, **({"use_cache": False} | kw))


def llada_pair(zero_mask_row: bool):
    from accel.dllm.native import load_native

    llada_cls = importlib.import_module("model.modeling_llada").LLaDAModelLM
    llada_cfg = importlib.import_module("model.configuration_llada").LLaDAConfig
    torch.manual_seed(1)
    official = llada_cls(llada_cfg(**LLADA), init_params=True).eval()
    randomize(official, 0.3)  # sharp: confidences spread out
    if zero_mask_row:
        with torch.no_grad():
            official.model.transformer.ff_out.weight[MASK] = 0
    return official, load_native(save(official, LLADA))[0]


def check_fastdllm(prompts: int, gen: int, block: int) -> dict:
    from accel.dllm import generate

    fg = importlib.import_module("fastdllm_generate")
    official, mine = llada_pair(False)
    ref = _Official(official)
    same: dict[str, list[bool]] = {}
    for seed in range(prompts):
        prompt = torch.randint(0, 110, (1, 11), generator=torch.Generator().manual_seed(seed))
        for threshold in (0.3, 0.6, 0.9):
            for cache, loop in [("none", fg.generate), ("prefix", fg.generate_with_prefix_cache),
                                ("dual", fg.generate_with_dual_cache)]:
                x, _ = loop(ref, prompt, steps=gen // block, gen_length=gen, block_length=block, mask_id=MASK,
                            threshold=threshold)
                out = generate(mine, prompt[0], "fast-dllm", gen, block_length=block, threshold=threshold, cache=cache)
                same.setdefault(f"fast-dllm cache={cache}", []).append(torch.equal(x[0, 11:], out.tokens))
        x, _ = fg.generate(ref, prompt, steps=gen, gen_length=gen, block_length=block, mask_id=MASK, threshold=None)
        out = generate(mine, prompt[0], "llada", gen, block_length=block, steps=gen)
        same.setdefault("llada baseline", []).append(torch.equal(x[0, 11:], out.tokens))
    return {k: f"{sum(v)}/{len(v)}" for k, v in same.items()}


def check_window(prompts: int) -> dict:
    from accel.dllm import generate

    wd = importlib.import_module("wd_llada")
    official, mine = llada_pair(True)

    class Handle:  # what Window-Diffusion's generate reads
        model, config, device = official.model, official.config, torch.device("cpu")

    same = {}
    for refresh, window, active in [(2, 8, 4), (2, 16, 4), (32, 64, 16), (8, 8, 4), (16, 16, 8), (4, 32, 8)]:
        hits = 0
        for seed in range(prompts):
            prompt = torch.randint(0, 110, (1, 7), generator=torch.Generator().manual_seed(seed))
            x = wd.generate(Handle, prompt, steps=32, gen_length=32, mask_id=MASK, refresh_cycle=refresh,
                            window_tokens=window, active_tokens=active)
            out = generate(mine, prompt[0], "window", 32, window=window, active=active, refresh=refresh,
                           plan="frozen")
            hits += torch.equal(x[0, 7:], out.tokens)
        same[f"refresh={refresh} window={window} active={active}"] = f"{hits}/{prompts}"
    return same


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast-dllm", type=Path, required=True, help="A checkout of NVlabs/Fast-dLLM.")
    p.add_argument("--window-diffusion", type=Path, default=None, help="A checkout of vhicrgit/Window-Diffusion.")
    p.add_argument("--prompts", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    stage(args.fast_dllm, args.window_diffusion)
    result = {"logits_max_abs_diff": check_logits(), "fastdllm": check_fastdllm(args.prompts, 48, 16)}
    if args.window_diffusion is not None:
        result["window"] = check_window(args.prompts)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
