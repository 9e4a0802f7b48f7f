"""Tiny random-weight content encoders and RMVPE models in the real file formats.

- :func:`make_tiny_hubert_fairseq`: a fairseq-format HuBERT checkpoint (``{"model", "args"}`` with an
  ``argparse.Namespace`` as older fairseq files, or ``{"model", "cfg"}`` with a plain dict), real key
  names, stored in float16 like the community's ``hubert_base.pt``;
- :func:`make_tiny_hubert_transformers`: the same network as a transformers folder (``config.json`` +
  ``model.safetensors``) with RVC's ``final_proj``;
- :func:`fairseq_to_transformers_state`: the key mapping between the two (tests and bench use it to
  run the SAME weights through both loaders);
- :func:`make_tiny_rmvpe`: an ``rmvpe.pt`` state dict with upstream's key names and small channels.

Dimension 768 is kept (RVC v2 needs 768-dim features); conv channels, FFN, positional-conv width and
layer count are small. With ``layers=2`` the fairseq file is ~10 MB (each 768-dim attention block is
2.4 M parameters); ``layers=1`` gives ~5 MB.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

# conv_feature_layers with HuBERT-base's kernels and strides (frames = samples / 320) and small widths
def conv_spec(channels: int) -> str:
    return f"[({channels},10,5)] + [({channels},3,2)] * 4 + [({channels},2,2)] * 2"


def _conv_layers(channels: int) -> list[tuple[int, int, int]]:
    return [(channels, 10, 5)] + [(channels, 3, 2)] * 4 + [(channels, 2, 2)] * 2


def tiny_hubert_state(*, dim: int = 768, layers: int = 2, final_proj_dim: int | None = 256,
                      conv_channels: int = 32, ffn: int = 64, conv_pos: int = 16,
                      conv_pos_groups: int = 16, extractor_mode: str = "default",
                      n_labels: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fairseq HuBERT state dict with random weights (float32) and fairseq's key names."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=None):
        fan_in = shape[-1] if len(shape) > 1 else 1
        s = scale if scale is not None else 1.0 / (fan_in ** 0.5)
        return torch.randn(*shape, generator=g) * s

    def norm(prefix, n):
        st[prefix + ".weight"] = 1.0 + 0.1 * rnd(n, scale=1.0)
        st[prefix + ".bias"] = 0.1 * rnd(n, scale=1.0)

    st: dict[str, torch.Tensor] = {}
    c_in = 1
    for i, (c, k, _s) in enumerate(_conv_layers(conv_channels)):
        st[f"feature_extractor.conv_layers.{i}.0.weight"] = rnd(c, c_in, k, scale=(1.0 / (c_in * k)) ** 0.5)
        if extractor_mode == "layer_norm":
            norm(f"feature_extractor.conv_layers.{i}.2.1", c)
        elif i == 0:
            norm(f"feature_extractor.conv_layers.{i}.2", c)
        c_in = c
    norm("layer_norm", c_in)
    st["post_extract_proj.weight"] = rnd(dim, c_in)
    st["post_extract_proj.bias"] = 0.1 * rnd(dim, scale=1.0)
    st["mask_emb"] = rnd(dim, scale=1.0)
    st["encoder.pos_conv.0.bias"] = 0.1 * rnd(dim, scale=1.0)
    st["encoder.pos_conv.0.weight_g"] = (1.0 + 0.1 * rnd(conv_pos, scale=1.0)).view(1, 1, conv_pos)
    st["encoder.pos_conv.0.weight_v"] = rnd(dim, dim // conv_pos_groups, conv_pos, scale=1.0)
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            st[p + f"self_attn.{name}.weight"] = rnd(dim, dim)
            st[p + f"self_attn.{name}.bias"] = 0.02 * rnd(dim, scale=1.0)
        norm(p + "self_attn_layer_norm", dim)
        st[p + "fc1.weight"] = rnd(ffn, dim)
        st[p + "fc1.bias"] = 0.02 * rnd(ffn, scale=1.0)
        st[p + "fc2.weight"] = rnd(dim, ffn)
        st[p + "fc2.bias"] = 0.02 * rnd(dim, scale=1.0)
        norm(p + "final_layer_norm", dim)
    norm("encoder.layer_norm", dim)
    if final_proj_dim:
        st["final_proj.weight"] = rnd(final_proj_dim, dim)
        st["final_proj.bias"] = 0.02 * rnd(final_proj_dim, scale=1.0)
        st["label_embs_concat"] = rnd(n_labels, final_proj_dim, scale=1.0)
    return st


def hubert_model_args(*, dim: int, layers: int, ffn: int, conv_channels: int, conv_pos: int,
                      conv_pos_groups: int, extractor_mode: str = "default", heads: int = 12,
                      final_proj_dim: int | None = 256) -> dict:
    """The hyper-parameters fairseq stores for a HuBERT model (subset that matters, real names)."""
    return {
        "_name": "hubert", "label_rate": 50, "extractor_mode": extractor_mode,
        "encoder_layers": layers, "encoder_embed_dim": dim, "encoder_ffn_embed_dim": ffn,
        "encoder_attention_heads": heads, "activation_fn": "gelu", "layer_type": "transformer",
        "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.05,
        "dropout_input": 0.1, "dropout_features": 0.1, "final_dim": final_proj_dim or 0,
        "untie_final_proj": False, "layer_norm_first": False, "conv_feature_layers": conv_spec(conv_channels),
        "conv_bias": False, "logit_temp": 0.1, "target_glu": False, "feature_grad_mult": 0.1,
        "mask_length": 10, "mask_prob": 0.8, "conv_pos": conv_pos, "conv_pos_groups": conv_pos_groups,
        "latent_temp": [2.0, 0.5, 0.999995], "skip_masked": False, "skip_nomask": False,
    }


def make_tiny_hubert_fairseq(path, *, dim: int = 768, layers: int = 2, final_proj_dim: int | None = 256,
                             seed: int = 0, flavour: str = "args", conv_channels: int = 32, ffn: int = 64,
                             conv_pos: int = 16, conv_pos_groups: int = 16, heads: int = 12,
                             extractor_mode: str = "default", half: bool = True) -> Path:
    """Write a fairseq-format HuBERT checkpoint; ``flavour`` "args" (Namespace) or "cfg" (dict)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = tiny_hubert_state(dim=dim, layers=layers, final_proj_dim=final_proj_dim,
                              conv_channels=conv_channels, ffn=ffn, conv_pos=conv_pos,
                              conv_pos_groups=conv_pos_groups, extractor_mode=extractor_mode, seed=seed)
    if half:
        state = {k: v.half() for k, v in state.items()}
    margs = hubert_model_args(dim=dim, layers=layers, ffn=ffn, conv_channels=conv_channels, conv_pos=conv_pos,
                              conv_pos_groups=conv_pos_groups, extractor_mode=extractor_mode, heads=heads,
                              final_proj_dim=final_proj_dim)
    ckpt: dict = {"model": state, "optimizer_history": [], "extra_state": {}, "last_optimizer_state": None}
    if flavour == "args":
        ns = argparse.Namespace(arch="hubert", task="hubert_pretraining", sample_rate=16000,
                                normalize=False, **{k: v for k, v in margs.items() if k != "_name"})
        ckpt["args"] = ns
    elif flavour == "cfg":
        ckpt["args"] = None
        ckpt["cfg"] = {"_name": None, "common": {"fp16": True, "seed": 1337}, "model": margs,
                       "task": {"_name": "hubert_pretraining", "sample_rate": 16000, "normalize": False,
                                "labels": ["km"]}}
    else:
        raise ValueError(f"flavour must be 'args' or 'cfg', not {flavour!r}")
    torch.save(ckpt, path)
    return path


def fairseq_to_transformers_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fairseq HuBERT key names -> transformers ``HubertModel`` names (+ ``final_proj``)."""
    out: dict[str, torch.Tensor] = {}
    layer_names = {"self_attn.q_proj": "attention.q_proj", "self_attn.k_proj": "attention.k_proj",
                   "self_attn.v_proj": "attention.v_proj", "self_attn.out_proj": "attention.out_proj",
                   "self_attn_layer_norm": "layer_norm", "fc1": "feed_forward.intermediate_dense",
                   "fc2": "feed_forward.output_dense", "final_layer_norm": "final_layer_norm"}
    for k, v in state.items():
        v = v.float()
        if k.startswith("feature_extractor.conv_layers."):
            parts = k.split(".")  # feature_extractor conv_layers i sub [sub2] param
            i, sub = parts[2], parts[3:]
            if sub[0] == "0":
                out[f"feature_extractor.conv_layers.{i}.conv.{sub[-1]}"] = v
            else:
                out[f"feature_extractor.conv_layers.{i}.layer_norm.{sub[-1]}"] = v
        elif k.startswith("layer_norm."):
            out["feature_projection." + k] = v
        elif k.startswith("post_extract_proj."):
            out["feature_projection.projection." + k.split(".")[-1]] = v
        elif k == "mask_emb":
            out["masked_spec_embed"] = v
        elif k == "encoder.pos_conv.0.bias":
            out["encoder.pos_conv_embed.conv.bias"] = v
        elif k == "encoder.pos_conv.0.weight_g":
            out["encoder.pos_conv_embed.conv.parametrizations.weight.original0"] = v
        elif k == "encoder.pos_conv.0.weight_v":
            out["encoder.pos_conv_embed.conv.parametrizations.weight.original1"] = v
        elif k.startswith("encoder.layers."):
            parts = k.split(".")
            i, rest = parts[2], ".".join(parts[3:-1])
            out[f"encoder.layers.{i}.{layer_names[rest]}.{parts[-1]}"] = v
        elif k.startswith("encoder.layer_norm.") or k.startswith("final_proj."):
            out[k] = v
        # label_embs_concat: training only
    return out


def transformers_config(*, dim: int, layers: int, ffn: int, conv_channels: int, conv_pos: int,
                        conv_pos_groups: int, heads: int = 12, final_proj_dim: int | None = 256,
                        extractor_mode: str = "default") -> dict:
    conv = _conv_layers(conv_channels)
    return {
        "model_type": "hubert", "architectures": ["HubertModelWithFinalProj"],
        "hidden_size": dim, "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": ffn, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
        "conv_dim": [c for c, _, _ in conv], "conv_kernel": [k for _, k, _ in conv],
        "conv_stride": [s for _, _, s in conv], "conv_bias": False,
        "feat_extract_norm": "group" if extractor_mode == "default" else "layer",
        "feat_extract_activation": "gelu", "feat_proj_layer_norm": True, "do_stable_layer_norm": False,
        "num_conv_pos_embeddings": conv_pos, "num_conv_pos_embedding_groups": conv_pos_groups,
        "classifier_proj_size": final_proj_dim or 256, "apply_spec_augment": True,
    }


def make_tiny_hubert_transformers(folder, *, dim: int = 768, layers: int = 2, final_proj_dim: int | None = 256,
                                  seed: int = 0, conv_channels: int = 32, ffn: int = 64, conv_pos: int = 16,
                                  conv_pos_groups: int = 16, heads: int = 12, weights: str = "safetensors",
                                  state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a transformers HuBERT folder (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``). Same random weights as :func:`make_tiny_hubert_fairseq` with the same
    arguments (pass ``state`` to use a given fairseq state dict)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if state is None:
        state = tiny_hubert_state(dim=dim, layers=layers, final_proj_dim=final_proj_dim,
                                  conv_channels=conv_channels, ffn=ffn, conv_pos=conv_pos,
                                  conv_pos_groups=conv_pos_groups, seed=seed)
    hf = {k: v.contiguous() for k, v in fairseq_to_transformers_state(state).items()}
    cfg = transformers_config(dim=dim, layers=layers, ffn=ffn, conv_channels=conv_channels, conv_pos=conv_pos,
                              conv_pos_groups=conv_pos_groups, heads=heads, final_proj_dim=final_proj_dim)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    if weights == "safetensors":
        from safetensors.torch import save_file
        save_file(hf, str(folder / "model.safetensors"))
    else:
        torch.save(hf, folder / "pytorch_model.bin")
    return folder


# --------------------------------------------------------------------------------------------
# RMVPE
# --------------------------------------------------------------------------------------------


def make_tiny_rmvpe(path, *, seed: int = 0, n_blocks: int = 1, n_gru: int = 1, en_de_layers: int = 5,
                    inter_layers: int = 1, en_out_channels: int = 2, gru_hidden: int = 8,
                    full_size: bool = False) -> Path:
    """Write an ``rmvpe.pt`` state dict with random weights and upstream's key names.

    ``full_size=True`` builds upstream's E2E(4, 1, (2, 2)) sizes (16 channels, 4 inter layers,
    GRU 256) for benches.
    """
    from inference.engines.rvc.rmvpe import RmvpeNet

    if full_size:
        n_blocks, n_gru, en_de_layers, inter_layers, en_out_channels, gru_hidden = 4, 1, 5, 4, 16, 256
    torch.manual_seed(seed)
    net = RmvpeNet(n_blocks=n_blocks, n_gru=n_gru, en_de_layers=en_de_layers, inter_layers=inter_layers,
                   en_out_channels=en_out_channels, gru_hidden=gru_hidden)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial batch-norm statistics so eval mode is exercised
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
            elif name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path
