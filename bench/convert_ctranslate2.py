#!/usr/bin/env python3
"""Converts attn's translation model (models/numbers-en-zh) into a CTranslate2 model through its TransformerSpec.

    python3 bench/convert_ctranslate2.py MODEL_DIR OUT_DIR [--quantization int8]

Needs the pip packages ctranslate2, numpy and safetensors (e.g. in a virtual environment:
`python3 -m venv build/ct2venv && build/ct2venv/bin/pip install ctranslate2 numpy safetensors`).

The mapping (attn: include/attn/models/transformer.h and src/models/transformer*.cc):
  - embeddings: src_embed / tgt_embed, times sqrt(d_model) (the spec's scale_embeddings), then the sinusoidal
    positions PE[pos, 2i] = sin(pos / 10000^(2i/E)), PE[pos, 2i+1] = cos(...), pos from 0. CTranslate2's own
    sinusoidal encoder is another table (positions from 1, all sines then all cosines, other frequencies), so
    attn's table is written into position_encodings.encodings ([max_len, E]; a learned table to CTranslate2).
  - layers: post-norm (pre_norm = false): x = LN(x + F(x)) for each sublayer, which is what CTranslate2 does with
    the layer_norm of an attention or feed-forward block when pre_norm is off. Self-attention: in_proj_weight
    [3E, E] is CTranslate2's fused QKV linear; cross-attention: in_proj rows [0, E) are the query linear and
    rows [E, 3E) the fused KV linear; out_proj is the last linear. norm1/norm2(/norm3) are the sublayers' norms.
  - the FINAL encoder.norm and decoder.norm of torch.nn.Transformer: the spec only declares the encoder's and
    decoder's layer_norm for pre-norm models, but CTranslate2's runtime applies <scope>/layer_norm to the last
    layer's output whenever the variable exists, independently of pre_norm (src/layers/transformer.cc:
    `_output_norm(build_optional_layer<LayerNorm>(model, scope + "/layer_norm"))`, applied after the layers in
    the encoder and before the output projection in the decoder). So the encoder and decoder specs are built with
    pre_norm=True, which declares layer_norm, and then switched to pre_norm=False (the flag is saved per scope
    and read by the runtime as "<scope>/pre_norm"): post-norm layers followed by a final LayerNorm, exactly
    attn's model. LayerNorm epsilon: 1e-5 in both (set explicitly in the config).
  - output: decoder.projection = tgt_embed.weight (tied; CTranslate2 stores it once as an alias) with
    generator.bias.
  - ReLU; 4 heads of 32 with CTranslate2's default query scale 1/sqrt(32), as attn.
  - vocabularies: attn's ids are kept; the special tokens are renamed to CTranslate2's conventions:
    0 <pad> -> <blank>, 1 <bos> -> <s>, 2 <eos> -> </s>, 3 <unk> -> <unk>. Source tokens are the English words
    (attn appends EOS to a source: add_source_eos = true, so a caller passes just the words), target tokens the
    Chinese characters (an output is its tokens joined without spaces). Decoding starts from <s> (id 1).
"""
import argparse
import json
import math
import os

import numpy as np
from safetensors.numpy import load_file

import ctranslate2
from ctranslate2.specs import common_spec, transformer_spec

SPECIALS = {"<pad>": "<blank>", "<bos>": "<s>", "<eos>": "</s>", "<unk>": "<unk>"}


def sinusoid(max_len, E):
    """attn's table (src/models/transformer_layers.cc), computed in double and rounded to float32 as there."""
    pe = np.zeros((max_len, E), dtype=np.float64)
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    i = np.arange(E)
    angle = pos / np.power(10000.0, (i // 2 * 2).astype(np.float64) / E)
    pe[:, 0::2] = np.sin(angle[:, 0::2])
    pe[:, 1::2] = np.cos(angle[:, 1::2])
    return pe.astype(np.float32)


def ct2_tokens(tokens):
    if [t for t in tokens[:4]] != ["<pad>", "<bos>", "<eos>", "<unk>"]:
        raise ValueError("vocab.json: expected <pad> <bos> <eos> <unk> as ids 0..3, got %s" % tokens[:4])
    out = [SPECIALS[t] for t in tokens[:4]] + list(tokens[4:])
    if len(set(out)) != len(out):
        raise ValueError("vocab.json: duplicate tokens after renaming the special tokens")
    return out


class AttnConverter(ctranslate2.converters.Converter):
    def __init__(self, model_dir):
        self.model_dir = model_dir

    def _load(self):
        d = self.model_dir
        cfg = json.load(open(os.path.join(d, "config.json")))
        vocab = json.load(open(os.path.join(d, "vocab.json")))
        w = load_file(os.path.join(d, "model.safetensors"))
        if cfg["norm_first"] or cfg["learned_positions"] or cfg["activation"] != "relu":
            raise NotImplementedError("this converter handles post-norm, sinusoidal-position, ReLU models "
                                      "(the shipped numbers-en-zh)")
        if (cfg["pad_id"], cfg["bos_id"], cfg["eos_id"]) != (0, 1, 2):
            raise NotImplementedError("expected pad 0, bos 1, eos 2")
        E, H = cfg["d_model"], cfg["num_heads"]
        relu = common_spec.Activation.RELU

        # pre_norm=True only to declare the final layer_norm; the layers run post-norm (pre_norm=False below).
        encoder = transformer_spec.TransformerEncoderSpec(cfg["num_encoder_layers"], H, pre_norm=True,
                                                          activation=relu)
        decoder = transformer_spec.TransformerDecoderSpec(cfg["num_decoder_layers"], H, pre_norm=True,
                                                          activation=relu)
        encoder.pre_norm = False
        decoder.pre_norm = False
        spec = transformer_spec.TransformerSpec(encoder, decoder)

        def get(name):
            return np.ascontiguousarray(w[name], dtype=np.float32)

        def norm(ln, prefix):
            ln.gamma, ln.beta = get(prefix + ".weight"), get(prefix + ".bias")

        def linear(lin, weight, bias):
            lin.weight, lin.bias = np.ascontiguousarray(weight), np.ascontiguousarray(bias)

        def self_attention(att, prefix):
            linear(att.linear[0], get(prefix + ".in_proj_weight"), get(prefix + ".in_proj_bias"))
            linear(att.linear[1], get(prefix + ".out_proj.weight"), get(prefix + ".out_proj.bias"))

        def cross_attention(att, prefix):
            wi, bi = get(prefix + ".in_proj_weight"), get(prefix + ".in_proj_bias")
            linear(att.linear[0], wi[:E], bi[:E])  # queries
            linear(att.linear[1], wi[E:], bi[E:])  # keys and values, fused
            linear(att.linear[2], get(prefix + ".out_proj.weight"), get(prefix + ".out_proj.bias"))

        def ffn(f, prefix, norm_name):
            linear(f.linear_0, get(prefix + ".linear1.weight"), get(prefix + ".linear1.bias"))
            linear(f.linear_1, get(prefix + ".linear2.weight"), get(prefix + ".linear2.bias"))
            norm(f.layer_norm, prefix + "." + norm_name)

        pe = sinusoid(cfg["max_len"], E)
        encoder.embeddings[0].weight = get("src_embed.weight")
        encoder.position_encodings.encodings = pe
        for l, layer in enumerate(encoder.layer):
            p = "encoder.layers.%d" % l
            self_attention(layer.self_attention, p + ".self_attn")
            norm(layer.self_attention.layer_norm, p + ".norm1")
            ffn(layer.ffn, p, "norm2")
        norm(encoder.layer_norm, "encoder.norm")

        decoder.embeddings.weight = get("tgt_embed.weight")
        decoder.position_encodings.encodings = pe.copy()
        for l, layer in enumerate(decoder.layer):
            p = "decoder.layers.%d" % l
            self_attention(layer.self_attention, p + ".self_attn")
            norm(layer.self_attention.layer_norm, p + ".norm1")
            cross_attention(layer.attention, p + ".multihead_attn")
            norm(layer.attention.layer_norm, p + ".norm2")
            ffn(layer.ffn, p, "norm3")
        norm(decoder.layer_norm, "decoder.norm")
        gen = "tgt_embed.weight" if cfg["tie_embeddings"] else "generator.weight"
        linear(decoder.projection, get(gen), get("generator.bias"))

        spec.config.unk_token = "<unk>"
        spec.config.bos_token = "<s>"
        spec.config.eos_token = "</s>"
        spec.config.decoder_start_token = "<s>"
        spec.config.add_source_eos = True
        spec.config.layer_norm_epsilon = 1e-5
        spec.register_source_vocabulary(ct2_tokens(vocab["src"]))
        spec.register_target_vocabulary(ct2_tokens(vocab["tgt"]))
        return spec


def convert(model_dir, out_dir, quantization=None):
    return AttnConverter(model_dir).convert(out_dir, quantization=quantization, force=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="attn model directory (config.json, model.safetensors, vocab.json)")
    ap.add_argument("out_dir", help="CTranslate2 model directory to write (replaced if it exists)")
    ap.add_argument("--quantization", default=None, help="CTranslate2 weight type, e.g. int8 (default: float32)")
    a = ap.parse_args()
    print(convert(a.model_dir, a.out_dir, a.quantization))


if __name__ == "__main__":
    main()
