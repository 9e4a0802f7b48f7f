"""Build a tiny random-weight Whisper model in CTranslate2 format (for tests; offline).

The real :mod:`inference.engines.asr` engine loads it exactly like a downloaded model.
Recipe (see /work/shared/FACTS.md): a byte-level BPE tokenizer with the 256 byte symbols and
no merges, Whisper's special tokens in Whisper's order, a tiny ``WhisperConfig`` whose
vocabulary is the tokenizer plus 1501 timestamp tokens, converted with CTranslate2's
``TransformersConverter``. An English-only model (no empty-string token in the vocabulary).

    python -m tests.inference.tiny_whisper /tmp/tiny-whisper
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

# Whisper's language codes, in Whisper's order (tokenizer.py LANGUAGES keys).
LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no "
    "th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw "
    "gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl "
    "mg as tt haw ln ha ba jw su yue"
).split()


def build_tiny_whisper(out_dir: Path | str, *, seed: int = 0) -> Path:
    """Write a CTranslate2 Whisper model folder to ``out_dir`` and return it (~2 MB, ~4 s)."""
    import ctranslate2
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (GenerationConfig, PreTrainedTokenizerFast, WhisperConfig,
                              WhisperFeatureExtractor, WhisperForConditionalGeneration)

    out_dir = Path(out_dir)
    if (out_dir / "model.bin").is_file():
        return out_dir

    byte_symbols = list(pre_tokenizers.ByteLevel.alphabet())
    byte_symbols.sort()
    vocab = {sym: i for i, sym in enumerate(byte_symbols)}
    specials = (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{c}|>" for c in LANGUAGES]
                + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                   "<|nocaptions|>", "<|notimestamps|>"])
    for tok in specials:
        vocab[tok] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    n_vocab = tok.get_vocab_size()
    eot = vocab["<|endoftext|>"]
    sot = vocab["<|startoftranscript|>"]
    space = vocab["Ġ"]  # the byte-level symbol for " "

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "hf"
        hf_dir.mkdir()
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                       eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                       pad_token="<|endoftext|>")
        fast.save_pretrained(hf_dir)
        config = WhisperConfig(
            vocab_size=n_vocab + 1501, num_mel_bins=80, d_model=64,
            encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=448,
            bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=sot,
            suppress_tokens=[], begin_suppress_tokens=[space, eot],
        )
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config).eval()
        gen = GenerationConfig.from_model_config(config)
        gen.suppress_tokens = []
        gen.begin_suppress_tokens = [space, eot]
        gen.decoder_start_token_id = sot
        model.generation_config = gen
        model.save_pretrained(hf_dir)
        WhisperFeatureExtractor(feature_size=80).save_pretrained(hf_dir)

        part = out_dir.with_name(out_dir.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        ctranslate2.converters.TransformersConverter(
            str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"],
        ).convert(str(part), quantization=None, force=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    part.rename(out_dir)
    return out_dir


def session_tiny_whisper(tmp_path_factory) -> Path:
    """One tiny model per pytest session (pass pytest's ``tmp_path_factory``)."""
    return build_tiny_whisper(tmp_path_factory.getbasetemp() / "tiny-whisper-shared")


if __name__ == "__main__":
    print(build_tiny_whisper(sys.argv[1] if len(sys.argv) > 1 else "tiny-whisper"))
